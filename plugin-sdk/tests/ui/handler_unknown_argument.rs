use weir_sdk::prelude::*;

#[weir_sdk::handler(nmae = "typo")]
fn handle(_event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    Ok(Vec::new())
}

fn main() {}
