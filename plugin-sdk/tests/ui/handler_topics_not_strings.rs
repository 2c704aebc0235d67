use weir_sdk::prelude::*;

#[weir_sdk::handler(topics = [1, 2])]
fn handle(_event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    Ok(Vec::new())
}

fn main() {}
