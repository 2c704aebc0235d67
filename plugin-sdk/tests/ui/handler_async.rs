use weir_sdk::prelude::*;

#[weir_sdk::handler]
async fn handle(_event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    Ok(Vec::new())
}

fn main() {}
