//! `weir new`: scaffold a handler crate that builds and tests out of the box.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

/// (path in the new crate, template). The templates live in
/// runtime/templates/ so they can be read and edited as files.
const HANDLER: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/handler/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("../../templates/handler/src/lib.rs.tmpl")),
    ("samples.jsonl", include_str!("../../templates/handler/samples.jsonl.tmpl")),
    ("README.md", include_str!("../../templates/handler/README.md.tmpl")),
    (".gitignore", include_str!("../../templates/handler/gitignore.tmpl")),
];

/// The plugin-sdk directory of the checkout this binary was built from.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// Name of the crate (and of the directory made for it): lowercase
    /// letters, digits, `-` and `_`, starting with a letter.
    #[arg(value_name = "NAME")]
    name: String,
    /// What kind of plugin to scaffold. Handlers are the one kind today.
    #[arg(long, value_enum, default_value_t = Kind::Handler)]
    kind: Kind,
    /// Make the crate here instead of `./<NAME>`.
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// Where the weir-sdk crate is: a path to Weir's `plugin-sdk` directory
    /// [default: the one of the checkout this `weir` was built from].
    #[arg(long, value_name = "DIR")]
    sdk_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// A handler: events in, events out (`#[weir_sdk::handler]`).
    Handler,
}

pub(crate) fn run(args: &NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args.path.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
        bail!("{} already exists and is not empty; choose another name or --path", dir.display());
    }
    let sdk = sdk_dir(args.sdk_path.as_deref())?;
    let sdk_dep = format!("path = {}", toml_string(&sdk.display().to_string()));
    let crate_name = args.name.replace('-', "_");
    let Kind::Handler = args.kind;
    for (file, template) in HANDLER {
        let text =
            template.replace("{{name}}", &args.name).replace("{{crate}}", &crate_name).replace("{{sdk}}", &sdk_dep);
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("Created handler crate `{}` in {}", args.name, dir.display());
    println!();
    println!("Next:");
    println!("  cd {}", dir.display());
    println!("  cargo test          # the handler's unit tests, natively");
    println!("  weir build          # build the .wasm and inspect it");
    println!("  weir exec --plugin target/wasm32-unknown-unknown/plugin/{crate_name}.wasm --input samples.jsonl");
    Ok(ExitCode::SUCCESS)
}

/// Cargo's rules for a package name, narrowed to what is also a fine
/// directory and Wasm file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!("{name:?} is not a plugin name: use 1-64 lowercase letters, digits, `-` and `_`, starting with a letter");
    }
    Ok(())
}

fn sdk_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = given.map_or_else(|| PathBuf::from(BUILT_SDK), Path::to_path_buf);
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "no weir-sdk crate at {} (expected a Cargo.toml there); pass --sdk-path <Weir checkout>/plugin-sdk",
            dir.display()
        );
    }
    dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))
}

/// A TOML basic string: quotes and backslashes escaped.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
