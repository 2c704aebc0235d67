use weir_sdk::prelude::*;

#[weir_sdk::handler]
fn handle(event: &Event) -> Result<Vec<Emit>, HandlerError> {
    Ok(vec![event.emit("a.b.c")])
}

fn main() {}
