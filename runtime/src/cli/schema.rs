//! `weir schema`: the `[[schemas]]` of a config (list, show, check, offline)
//! and what the log of a running server holds (stats).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use weir_runtime::models::{LOG_PAGE_MAX, LogReadResponse, StatusResponse};
use weir_runtime::{Config, TopicSchemas};

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  weir schema list --config weir.toml
  weir schema show --config weir.toml --topic orders.order.created --version 2
  weir schema check --config weir.toml
  weir schema check --config weir.toml --topic orders.order.created --version 2 --payload order.json
  weir schema stats --limit 100000          # from the log of a running server
docs/schemas.md explains versions, the JSON Schema subset, compatibility and lean events.")]
pub(crate) struct SchemaArgs {
    #[command(subcommand)]
    command: SchemaCommand,
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// The `[[schemas]]` entries of a config: pattern, compatibility,
    /// payload limit, versions.
    List {
        /// The config file.
        #[arg(long, short = 'c', default_value = "weir.toml")]
        config: PathBuf,
    },
    /// The schema of a topic's version (the newest by default).
    #[command(disable_version_flag = true)]
    Show {
        /// The config file.
        #[arg(long, short = 'c', default_value = "weir.toml")]
        config: PathBuf,
        /// A topic (or an entry's pattern as written).
        #[arg(long, short = 't')]
        topic: String,
        /// The version [default: the newest].
        #[arg(long, short = 'v')]
        version: Option<u32>,
    },
    /// Check a config's schemas and their compatibility offline (exit 0, or
    /// 1 with the key and the reason); with `--payload`, validate a JSON file
    /// against a topic's version as ingest would.
    #[command(disable_version_flag = true)]
    Check {
        /// The config file.
        #[arg(long, short = 'c', default_value = "weir.toml")]
        config: PathBuf,
        /// The topic the payload is for.
        #[arg(long, short = 't', requires = "payload")]
        topic: Option<String>,
        /// Its schema version.
        #[arg(long, short = 'v', default_value_t = 1)]
        version: u32,
        /// A file holding the payload (JSON).
        #[arg(long, short = 'p', requires = "topic")]
        payload: Option<PathBuf>,
    },
    /// Payload sizes per topic and version, and which top-level fields of
    /// JSON object payloads appear in how many events, from the log of a
    /// running server (the first `--limit` events, or those after `--after`).
    Stats {
        /// Only these topics: patterns, comma-separated.
        #[arg(long, short = 't')]
        topics: Option<String>,
        /// Start after this position.
        #[arg(long)]
        after: Option<u64>,
        /// Read at most this many events.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn run(args: &SchemaArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        SchemaCommand::List { config } => list(&load(config)?),
        SchemaCommand::Show { config, topic, version } => show(&load(config)?, topic, *version),
        SchemaCommand::Check { config, topic, version, payload } => {
            let config = match Config::load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let versions: usize = config.schemas.entries().iter().map(|e| e.versions.len()).sum();
            println!(
                "ok: {} [[schemas]] entries, {versions} versions, each compatible with the earlier ones as configured",
                config.schemas.entries().len()
            );
            match (topic, payload) {
                (Some(topic), Some(payload)) => check_payload(&config, topic, *version, payload),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        SchemaCommand::Stats { topics, after, limit, json, server } => {
            stats(&Client::new(server), topics.as_deref(), *after, *limit, *json)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn list(config: &Config) -> anyhow::Result<ExitCode> {
    let entries = config.schemas.entries();
    if entries.is_empty() {
        eprintln!("no [[schemas]] in {}", config.source.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<32} {:<14} {:>17}  VERSIONS", "TOPICS", "COMPATIBILITY", "MAX_PAYLOAD_BYTES")?;
    for e in entries {
        let versions: Vec<String> = e
            .versions
            .iter()
            .map(|v| if v.schema.is_some() { v.version.to_string() } else { format!("{} (no schema)", v.version) })
            .collect();
        let max = e.max_payload_bytes.map_or_else(|| "-".to_owned(), |m| m.to_string());
        // `Pattern`'s Display ignores widths: pad its text.
        let pattern = e.pattern.to_string();
        writeln!(out, "{pattern:<32} {:<14} {max:>17}  {}", e.compatibility.as_str(), versions.join(", "))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn entry<'c>(config: &'c Config, topic: &str) -> anyhow::Result<&'c TopicSchemas> {
    let found = config.schemas.entries().iter().find(|e| e.pattern.to_string() == topic);
    match found.or_else(|| config.schemas.find(topic)) {
        Some(e) => Ok(e),
        None => bail!("no [[schemas]] entry covers {topic:?} in {}", config.source.display()),
    }
}

fn show(config: &Config, topic: &str, version: Option<u32>) -> anyhow::Result<ExitCode> {
    let e = entry(config, topic)?;
    let Some(version) = version.or_else(|| e.latest()) else {
        bail!("{} declares no versions", e.pattern);
    };
    let Some(v) = e.version(version) else {
        let declared: Vec<String> = e.versions.iter().map(|v| v.version.to_string()).collect();
        bail!("{} has no version {version} (declared: {})", e.pattern, declared.join(", "));
    };
    eprintln!(
        "{} version {version} ({}; compatibility {})",
        e.pattern,
        v.origin.as_deref().unwrap_or("no schema: any payload"),
        e.compatibility.as_str()
    );
    if let Some(text) = &v.text {
        let pretty = serde_json::from_str::<serde_json::Value>(text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| text.clone());
        println!("{pretty}");
    }
    Ok(ExitCode::SUCCESS)
}

fn check_payload(config: &Config, topic: &str, version: u32, path: &Path) -> anyhow::Result<ExitCode> {
    let payload = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    weir_runtime::validate_topic(topic)?;
    match config.schemas.check(topic, version, &payload) {
        Ok(()) => {
            println!("valid: {} for {topic} version {version}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("invalid ({}): {e}", e.code());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Most (topic, version) groups and fields per group the stats keep: a log
/// of invented topics or field names costs bounded memory.
const MAX_GROUPS: usize = 1000;
const MAX_FIELDS: usize = 256;

#[derive(Debug, Default, serde::Serialize)]
struct Group {
    events: u64,
    bytes: u64,
    min: u64,
    max: u64,
    /// Events whose payload is a JSON object.
    objects: u64,
    fields: BTreeMap<String, u64>,
    /// Field names not counted once `MAX_FIELDS` were.
    other_fields: u64,
}

fn stats(
    client: &Client,
    topics: Option<&str>,
    mut after: Option<u64>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let head = client.get::<StatusResponse>("/v1/status").map(|s| s.head).unwrap_or(0);
    let total = (head.saturating_sub(after.map_or(0, |a| a + 1))).min(limit as u64);
    let bar = if std::io::stderr().is_terminal() && total > 10 * LOG_PAGE_MAX as u64 {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut groups: BTreeMap<(String, u32), Group> = BTreeMap::new();
    let mut dropped_groups = 0u64;
    let mut scanned = 0usize;
    while scanned < limit {
        let want = (limit - scanned).min(LOG_PAGE_MAX);
        let mut query = vec![format!("limit={want}")];
        if let Some(after) = after {
            query.push(format!("after={after}"));
        }
        if let Some(topics) = topics {
            query.push(format!("topics={}", encode(topics)));
        }
        let page: LogReadResponse = client.get(&format!("/v1/log?{}", query.join("&")))?;
        for entry in &page.events {
            let e = &entry.event;
            let key = (e.topic.clone(), e.schema_version.unwrap_or(1));
            if !groups.contains_key(&key) && groups.len() >= MAX_GROUPS {
                dropped_groups += 1;
                continue;
            }
            let g = groups.entry(key).or_default();
            let size = match (&e.payload, &e.payload_base64) {
                (Some(v), _) => serde_json::to_vec(v).map_or(0, |b| b.len() as u64),
                (None, Some(b64)) => {
                    base64::engine::general_purpose::STANDARD.decode(b64).map_or(0, |b| b.len() as u64)
                }
                (None, None) => 0,
            };
            g.min = if g.events == 0 { size } else { g.min.min(size) };
            g.max = g.max.max(size);
            g.events += 1;
            g.bytes += size;
            if let Some(serde_json::Value::Object(map)) = &e.payload {
                g.objects += 1;
                for name in map.keys() {
                    if let Some(n) = g.fields.get_mut(name) {
                        *n += 1;
                    } else if g.fields.len() < MAX_FIELDS {
                        g.fields.insert(name.clone(), 1);
                    } else {
                        g.other_fields += 1;
                    }
                }
            }
        }
        scanned += page.events.len();
        bar.set_position(scanned as u64);
        after = page.next.or(after);
        if page.caught_up || page.events.is_empty() {
            break;
        }
    }
    bar.finish_and_clear();
    if json {
        let groups: Vec<serde_json::Value> = groups
            .iter()
            .map(|((topic, version), g)| serde_json::json!({"topic": topic, "schema_version": version, "stats": g}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"scanned": scanned, "next": after, "groups": groups, "groups_not_counted": dropped_groups})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "scanned {scanned} events{}", after.map_or_else(String::new, |a| format!(" (up to position {a})")))?;
    for ((topic, version), g) in &groups {
        let mean = g.bytes.checked_div(g.events).unwrap_or(0);
        writeln!(
            out,
            "{topic} v{version}: {} events, payload bytes min {} mean {mean} max {} total {}",
            g.events, g.min, g.max, g.bytes
        )?;
        if g.objects > 0 {
            let mut fields: Vec<(&String, &u64)> = g.fields.iter().collect();
            fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (name, n) in fields {
                writeln!(
                    out,
                    "    {name:<32} {n:>10} of {} ({:.0}%)",
                    g.objects,
                    *n as f64 * 100.0 / g.objects as f64
                )?;
            }
            if g.other_fields > 0 {
                writeln!(
                    out,
                    "    ({} occurrences of fields past the first {MAX_FIELDS} not counted)",
                    g.other_fields
                )?;
            }
        }
    }
    if dropped_groups > 0 {
        writeln!(out, "({dropped_groups} events of topics/versions past the first {MAX_GROUPS} not counted)")?;
    }
    if scanned >= limit {
        writeln!(out, "(stopped at --limit {limit}; continue with --after {})", after.unwrap_or(0))?;
    }
    Ok(ExitCode::SUCCESS)
}
