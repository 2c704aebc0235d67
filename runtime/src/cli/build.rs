//! `weir build`: build the plugin crate in the current directory to Wasm
//! with the plugin profile, and say what came out.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;

use super::CacheArgs;

const TARGET: &str = "wasm32-unknown-unknown";

/// The plugin profile, for a crate whose workspace does not define one
/// (`weir new` writes it into Cargo.toml; the values are the same).
const PROFILE: &[&str] = &[
    "profile.plugin.inherits=\"release\"",
    "profile.plugin.opt-level=3",
    "profile.plugin.lto=true",
    "profile.plugin.codegen-units=1",
    "profile.plugin.panic=\"abort\"",
    "profile.plugin.debug=false",
    "profile.plugin.strip=true",
];

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The plugin crate's Cargo.toml [default: ./Cargo.toml].
    #[arg(long, value_name = "FILE")]
    manifest_path: Option<PathBuf>,
    /// Build this package of a workspace (passed to cargo as `-p`).
    #[arg(short, long, value_name = "SPEC")]
    package: Option<String>,
    /// Print the inspection of each module as JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(crate) fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let manifest = args.manifest_path.clone().unwrap_or_else(|| PathBuf::from("Cargo.toml"));
    if !manifest.is_file() {
        bail!(
            "no {} here: run `weir build` in a plugin crate (see `weir new`), or pass --manifest-path",
            manifest.display()
        );
    }
    ensure_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--profile", "plugin", "--target", TARGET, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest);
    if let Some(package) = &args.package {
        cmd.args(["-p", package]);
    }
    if !defines_plugin_profile(&cargo, &manifest)? {
        for setting in PROFILE {
            cmd.args(["--config", setting]);
        }
    }
    // Diagnostics and progress go to our stderr as cargo prints them; the
    // JSON messages on stdout name the artifacts.
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("cannot run cargo")?;
    let mut modules: Vec<PathBuf> = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("reading cargo's output")?;
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            for file in message["filenames"].as_array().into_iter().flatten().filter_map(|f| f.as_str()) {
                if Path::new(file).extension().is_some_and(|e| e == "wasm") {
                    modules.push(PathBuf::from(file));
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    if modules.is_empty() {
        bail!("the build made no .wasm: is the crate's `[lib] crate-type` missing \"cdylib\"?");
    }
    let mut accepted = true;
    for module in &modules {
        let size = std::fs::metadata(module).map(|m| m.len()).unwrap_or(0);
        eprintln!("==> {} ({size} bytes)", module.display());
        accepted &= super::inspect::inspect(module, &args.cache, args.json)?;
    }
    Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Add the Wasm target with rustup when it is missing. Without rustup, let
/// cargo say what is wrong.
fn ensure_target() -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup").args(["target", "list", "--installed"]).output() else {
        return Ok(());
    };
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    eprintln!("==> adding the {TARGET} target (rustup target add {TARGET})");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status().context("cannot run rustup")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed ({status})");
    }
    Ok(())
}

/// Whether the workspace root's manifest defines `[profile.plugin]`.
fn defines_plugin_profile(cargo: &std::ffi::OsStr, manifest: &Path) -> anyhow::Result<bool> {
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed for {} ({})", manifest.display(), out.status);
    }
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata's answer")?;
    let Some(root) = metadata["workspace_root"].as_str() else { return Ok(false) };
    let text = std::fs::read_to_string(Path::new(root).join("Cargo.toml")).unwrap_or_default();
    let parsed: toml::Table = text.parse().unwrap_or_default();
    Ok(parsed.get("profile").and_then(|p| p.get("plugin")).is_some())
}
