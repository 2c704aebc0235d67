use weir_sdk::prelude::*;

#[weir_sdk::handler]
fn handle(_event: &Event, _ctx: &mut Context) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
