//! `weir`: the command-line interface of the Weir runtime.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
