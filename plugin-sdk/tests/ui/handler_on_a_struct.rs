#[weir_sdk::handler]
struct NotAFunction;

fn main() {}
