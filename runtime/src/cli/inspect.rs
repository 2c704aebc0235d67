//! `weir inspect`: what a module is and whether the runtime accepts it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_runtime::{ExportInfo, ImportInfo, InstanceMode, Limits, LoadError, inspect_imports_exports};

use super::CacheArgs;

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The module (.wasm).
    #[arg(value_name = "FILE")]
    module: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also run the plugin's `weir_init` with this configuration (a JSON
    /// value, as in weir.toml's `config`), under the default limits, so a
    /// configuration it refuses shows before a deploy. A path to a `.toml`
    /// file is the runtime's configuration instead: then inspect says
    /// whether every version that can arrive on the topics the module is
    /// subscribed to (or, if no handler there runs it, the topics it
    /// declares) reaches a version it accepts through the `[[upcasters]]`.
    #[arg(long, value_name = "JSON", conflicts_with = "config_file")]
    config: Option<String>,
    /// As --config, read from a JSON file.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(crate) fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    if let Some(toml) = args.config.as_deref().map(Path::new).filter(|p| is_toml_file(p)) {
        let config = weir_runtime::Config::load(toml)?;
        let accepted = inspect_reach(&args.module, &args.cache, args.json, &config)?;
        return Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let init = super::plugin_config(args.config.as_deref(), args.config_file.as_deref())?;
    let accepted = inspect_with(&args.module, &args.cache, args.json, init)?;
    Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Print what `module` is and whether the runtime accepts it; answers
/// whether it does. Shared with `weir build`.
pub(crate) fn inspect(module: &Path, cache: &CacheArgs, as_json: bool) -> anyhow::Result<bool> {
    inspect_with(module, cache, as_json, None)
}

/// As [`inspect`]; with `init`, also run `weir_init` with that
/// configuration and report its refusal like a load refusal.
fn inspect_with(module: &Path, cache: &CacheArgs, as_json: bool, init: Option<Vec<u8>>) -> anyhow::Result<bool> {
    let bytes = std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let engine = super::engine(cache, |_| {})?;
    let sha256: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let mut report = json!({
        "file": module.display().to_string(),
        "size": bytes.len(),
        "sha256": sha256,
    });
    let accepted = match engine.load(&bytes) {
        Ok(plugin) => {
            let info = plugin.info();
            report["abi_version"] = json!(info.abi_version);
            report["imports"] = imports_json(&info.imports);
            report["exports"] = exports_json(&info.exports);
            report["init"] = json!(info.has_init);
            report["accepts"] = json!(info.description.as_ref().map(|d| d.schema_versions.clone()).unwrap_or_default());
            report["upcaster"] = json!(info.is_upcaster());
            if let Some(d) = &info.description {
                report["plugin"] = json!({
                    "name": d.name, "version": d.version, "description": d.description,
                    "topics": d.topics, "schema_versions": d.schema_versions,
                });
            }
            match init.map(|config| plugin.handler(Limits::default(), config, InstanceMode::Reuse)) {
                None => {
                    report["accepted"] = json!(true);
                    true
                }
                Some(Ok(_)) => {
                    report["init_config"] = json!("accepted");
                    report["accepted"] = json!(true);
                    true
                }
                Some(Err(error)) => {
                    report["init_config"] = json!("refused");
                    report["accepted"] = json!(false);
                    report["code"] = json!(error.code());
                    report["stage"] = json!(error.stage());
                    report["reason"] = json!(error.to_string());
                    false
                }
            }
        }
        Err(error) => {
            if let LoadError::AbiMismatch { found, .. } = &error {
                report["abi_version"] = json!(found);
            }
            if let Ok((imports, exports)) = inspect_imports_exports(&engine, &bytes) {
                report["imports"] = imports_json(&imports);
                report["exports"] = exports_json(&exports);
            }
            report["accepted"] = json!(false);
            report["code"] = json!(error.code());
            report["stage"] = json!(error.stage());
            report["reason"] = json!(error.to_string());
            false
        }
    };
    if as_json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(accepted)
}

fn is_toml_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml") && path.is_file()
}

/// [`inspect_with`], then the reach check against `config`'s upcasters.
fn inspect_reach(
    module: &Path,
    cache: &CacheArgs,
    as_json: bool,
    config: &weir_runtime::Config,
) -> anyhow::Result<bool> {
    let bytes = std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let engine = super::engine(cache, |_| {})?;
    let plugin = match engine.load(&bytes) {
        Ok(plugin) => plugin,
        Err(_) => return inspect_with(module, cache, as_json, None),
    };
    let description = plugin.info().description.clone().unwrap_or_default();
    let accepts = description.schema_versions.clone();
    // The pipelines whose handlers run this file; else the declared topics.
    let here = std::fs::canonicalize(module).ok();
    let mut patterns: Vec<weir_runtime::TopicPattern> = config
        .pipelines
        .iter()
        .filter(|p| p.handlers.iter().any(|h| std::fs::canonicalize(&h.plugin).ok() == here))
        .flat_map(|p| p.topics.iter().cloned())
        .collect();
    if patterns.is_empty() {
        patterns = description.topics.iter().filter_map(|t| weir_runtime::TopicPattern::parse(t).ok()).collect();
    }
    let reach: Vec<Value> = patterns
        .iter()
        .map(|p| match weir_runtime::check_accepts(config, p, &accepts) {
            Ok(()) => json!({ "pattern": p.to_string(), "ok": true }),
            Err(reason) => json!({ "pattern": p.to_string(), "ok": false, "reason": reason }),
        })
        .collect();
    let ok = reach.iter().all(|r| r["ok"] == true);
    if as_json {
        let report = json!({
            "file": module.display().to_string(),
            "sha256": plugin.info().sha256,
            "accepts": accepts,
            "upcaster": plugin.info().is_upcaster(),
            "reach": reach,
            "accepted": ok,
        });
        println!("{report}");
    } else {
        inspect_with(module, cache, false, None)?;
        for r in &reach {
            match r["reason"].as_str() {
                None => println!("reach:        {} ok", r["pattern"].as_str().unwrap_or_default()),
                Some(reason) => println!("reach:        {} NO: {reason}", r["pattern"].as_str().unwrap_or_default()),
            }
        }
    }
    Ok(ok)
}

fn accepts_text(accepts: &[u32]) -> String {
    if accepts.is_empty() {
        "any schema version (as stored)".to_owned()
    } else {
        accepts.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    }
}

fn imports_json(imports: &[ImportInfo]) -> Value {
    imports.iter().map(|i| json!({ "module": i.module, "name": i.name, "type": i.ty })).collect()
}

fn exports_json(exports: &[ExportInfo]) -> Value {
    exports.iter().map(|e| json!({ "name": e.name, "type": e.ty })).collect()
}

fn print_text(report: &Value) {
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!("file:         {}", s(&report["file"]));
    println!("size:         {} bytes", report["size"]);
    println!("sha256:       {}", s(&report["sha256"]));
    if !report["abi_version"].is_null() {
        println!("abi version:  {}", report["abi_version"]);
    }
    if let Some(p) = report.get("plugin") {
        println!("plugin:       {} {} — {}", s(&p["name"]), s(&p["version"]), s(&p["description"]));
        if let Some(topics) = p["topics"].as_array().filter(|t| !t.is_empty()) {
            println!("topics:       {}", topics.iter().map(s).collect::<Vec<_>>().join(", "));
        }
    }
    if let Some(accepts) = report.get("accepts").and_then(Value::as_array) {
        let versions: Vec<u32> =
            accepts.iter().filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok())).collect();
        if report["upcaster"] == true {
            println!("upcaster:     versions {}", versions.iter().map(u32::to_string).collect::<Vec<_>>().join(" → "));
        } else {
            println!("accepts:      {}", accepts_text(&versions));
        }
    }
    if let Some(init) = report.get("init") {
        println!("init hook:    {}", if init.as_bool() == Some(true) { "yes" } else { "no" });
    }
    if let Some(config) = report.get("init_config") {
        println!("init config:  {}", s(config));
    }
    for (title, key) in [("imports", "imports"), ("exports", "exports")] {
        if let Some(list) = report[key].as_array() {
            println!("{title}:{}", if list.is_empty() { "      (none)" } else { "" });
            for item in list {
                match item.get("module") {
                    Some(m) => println!("  {}::{}  {}", s(m), s(&item["name"]), s(&item["type"])),
                    None => println!("  {}  {}", s(&item["name"]), s(&item["type"])),
                }
            }
        }
    }
    if report["accepted"].as_bool() == Some(true) {
        println!("accepted:     yes");
    } else {
        println!("refused at:   {}", s(&report["stage"]));
        println!("accepted:     no [{}] {}", s(&report["code"]), s(&report["reason"]));
    }
}
