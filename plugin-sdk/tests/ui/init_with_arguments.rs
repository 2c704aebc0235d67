use weir_sdk::prelude::*;

#[weir_sdk::init(eager)]
fn init(_config: &Config) -> Result<(), String> {
    Ok(())
}

fn main() {}
