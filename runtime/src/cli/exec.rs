//! `weir exec`: run a plugin over JSON-lines events.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};
use weir_abi::DeliveryRef;
use weir_runtime::JsonEvent;
use weir_runtime::{IdGenerator, InstanceMode, Limits, LoadError, MemoryState, MemoryWrite, TimerCall};

use super::CacheArgs;

#[derive(Debug, Args)]
#[command(after_help = "\
Each input line is one event in the JSON form of docs/events.md; only `topic` is required:
  {\"topic\":\"orders.order.created\",\"key\":\"o-1\",\"payload\":{\"order_id\":\"o-1\"}}
Each output line is one outcome:
  {\"line\":1,\"event_id\":\"…\",\"topic\":\"…\",\"outcome\":\"ok\",\"emits\":[…],\"duration_us\":9}
  {\"line\":2,\"event_id\":\"…\",\"topic\":\"…\",\"outcome\":\"failed\",\"code\":\"handler_reject\",\"reason\":\"…\"}
  {\"line\":3,\"outcome\":\"invalid_input\",\"code\":\"invalid_json\",\"reason\":\"…\"}
A handled event that schedules or cancels durable timers also has \"timers\":
  [{\"op\":\"schedule\",\"key\",\"fire_at_ms\",\"fire_at\",\"emit\"}, {\"op\":\"cancel\",\"key\"}] (nothing fires during the run).
Exit status: 0 when every line was a valid event (whatever the handler answered), 1 when a line
was invalid or the plugin could not be loaded, 2 on a usage error.")]
pub(crate) struct ExecArgs {
    /// The plugin module (.wasm).
    #[arg(long, short = 'p', value_name = "FILE")]
    plugin: PathBuf,
    /// JSON-lines events to handle; `-` reads standard input.
    #[arg(long, short = 'i', value_name = "FILE", default_value = "-")]
    input: String,
    /// Plugin configuration as a JSON object, passed to the plugin's init hook.
    #[arg(long, value_name = "JSON", conflicts_with = "config_file")]
    config: Option<String>,
    /// Read the plugin configuration from a JSON file.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Subscription name handed to the plugin [default: exec/<plugin name>].
    #[arg(long, value_name = "NAME")]
    subscription: Option<String>,
    /// Attempt number handed to the plugin.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: u32,
    /// Wall-clock deadline per event, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    deadline_ms: u64,
    /// Fuel budget per event (deterministic CPU limit); off by default.
    #[arg(long, value_name = "UNITS")]
    fuel: Option<u64>,
    /// Linear memory cap, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory_mib: usize,
    /// Cap on one outcome's encoded size, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = weir_runtime::DEFAULT_MAX_OUTPUT_BYTES)]
    max_output_bytes: usize,
    /// Cap on events emitted per invocation.
    #[arg(long, value_name = "N", default_value_t = weir_runtime::DEFAULT_MAX_EMITS)]
    max_emits: usize,
    /// A fresh instance for every event (pooling allocator) instead of one
    /// reused instance.
    #[arg(long)]
    fresh_instance: bool,
    /// When the plugin is refused (at load or in `weir_init`), print the
    /// refusal as one JSON object on stdout, `{"outcome":"refused","code",
    /// "stage","message"}`, as `weir inspect --json` and a deploy's 422 do.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Report a plugin that could not be loaded or started: its stable code,
/// the stage that refused it and the reason (stated once). Exit 1.
pub(crate) fn refused(path: &std::path::Path, e: &LoadError, as_json: bool) -> ExitCode {
    if as_json {
        let record = json!({ "outcome": "refused", "code": e.code(), "stage": e.stage(), "message": e.to_string() });
        println!("{record}");
    } else {
        eprintln!("error: plugin {} was refused [{}]: {e}", path.display(), e.code());
    }
    ExitCode::FAILURE
}

pub(crate) fn run(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let config = super::plugin_config(args.config.as_deref(), args.config_file.as_deref())?.unwrap_or_default();
    let memory_bytes = args.memory_mib.checked_mul(1 << 20).context("--memory-mib is too large")?;
    let limits = Limits::builder()
        .deadline(Duration::from_millis(args.deadline_ms))
        .fuel(args.fuel)
        .memory_bytes(memory_bytes)
        .max_output_bytes(args.max_output_bytes)
        .max_emits(args.max_emits)
        .build();
    let engine = super::engine(&args.cache, |c| {
        c.consume_fuel = args.fuel.is_some();
        c.pooling = args.fresh_instance;
        c.pool_max_memory_bytes = memory_bytes;
    })?;
    let mode = if args.fresh_instance { InstanceMode::FreshPerEvent } else { InstanceMode::Reuse };
    let started = engine.load_file(&args.plugin).and_then(|plugin| Ok((plugin.handler(limits, config, mode)?, plugin)));
    let (mut handler, plugin) = match started {
        Ok(started) => started,
        Err(e) => return Ok(refused(&args.plugin, &e, args.json)),
    };
    let subscription = args.subscription.clone().unwrap_or_else(|| format!("exec/{}", plugin.info().name()));

    let reader: Box<dyn BufRead> = if args.input == "-" {
        if io::stdin().is_terminal() {
            eprintln!("reading events from standard input, one JSON object per line; end with Ctrl-D");
        }
        Box::new(BufReader::new(io::stdin()))
    } else {
        let file = File::open(&args.input).with_context(|| format!("cannot open input file {}", args.input))?;
        Box::new(BufReader::new(file))
    };

    let ids = IdGenerator::new();
    // A stateful plugin gets state kept in memory for the run: each event
    // sees what the events before it wrote, as in a subscription.
    let mut state = plugin.info().uses_state().then(MemoryState::new);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let (mut ok, mut failed, mut invalid) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("cannot read line {number} of {}", args.input))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = match JsonEvent::from_json_line(&line).and_then(|e| e.into_event(&ids, "weir:exec")) {
            Ok(event) => event,
            Err(e) => {
                invalid += 1;
                eprintln!("error: {}:{number}: {e}", args.input);
                let record =
                    json!({ "line": number, "outcome": "invalid_input", "code": e.code(), "reason": e.to_string() });
                writeln!(out, "{record}")?;
                continue;
            }
        };
        let t = Instant::now();
        let delivery = DeliveryRef { event: &event, subscription: &subscription, attempt: args.attempt };
        let (invocation, lent) = match state.take() {
            Some(mut memory) => {
                memory.begin(event.key.as_deref());
                let (invocation, lent) = handler.invoke_with_state(delivery, Some(Box::new(memory)));
                let lent: Option<Box<dyn std::any::Any>> = lent.map(|l| l as Box<dyn std::any::Any>);
                (invocation, lent.and_then(|l| l.downcast::<MemoryState>().ok()))
            }
            None => (handler.invoke(delivery), None),
        };
        let duration_us = t.elapsed().as_micros() as u64;
        // Keep the state's writes only when the event was handled, as a
        // subscription commits them only with a successful outcome.
        let mut writes = Vec::new();
        if let Some(mut memory) = lent {
            if invocation.result.is_ok() {
                writes = memory.commit();
            } else {
                memory.discard();
            }
            state = Some(*memory);
        }
        let mut record = json!({ "line": number, "event_id": event.id.to_string(), "topic": event.topic });
        match &invocation.result {
            Ok(emits) => {
                ok += 1;
                record["outcome"] = json!("ok");
                record["emits"] = emits.iter().map(emit_json).collect::<Result<Value, _>>()?;
            }
            Err(e) => {
                failed += 1;
                record["outcome"] = json!("failed");
                record["code"] = json!(e.code());
                record["reason"] = json!(e.message());
            }
        }
        record["duration_us"] = json!(duration_us);
        if let Some(fuel) = invocation.fuel_used {
            record["fuel_used"] = json!(fuel);
        }
        if !invocation.logs.is_empty() {
            record["logs"] =
                invocation.logs.iter().map(|l| json!({ "level": l.level.as_str(), "message": l.message })).collect();
        }
        if invocation.logs_dropped > 0 {
            record["logs_dropped"] = json!(invocation.logs_dropped);
        }
        if !writes.is_empty() {
            record["state"] = writes.iter().map(state_json).collect();
        }
        // Only a handled event's, as a subscription stores them only with
        // a successful outcome.
        if invocation.result.is_ok() && !invocation.timers.is_empty() {
            record["timers"] = invocation.timers.iter().map(timer_json).collect::<Result<Value, _>>()?;
        }
        writeln!(out, "{record}")?;
    }
    out.flush()?;
    eprintln!(
        "{} events in {:.3}s: {ok} ok, {failed} failed, {invalid} invalid line(s)",
        ok + failed,
        started.elapsed().as_secs_f64()
    );
    Ok(if invalid > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// An emit exactly as the plugin returned it: the JSON envelope, with the
/// headers as an ordered list of `{"name","value"}` (a repeated name is kept,
/// the plugin's order is kept), not the envelope's object.
fn emit_json(emit: &weir_abi::Emit) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(JsonEvent::from_emit(emit))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("headers");
        if !emit.headers.is_empty() {
            let headers = emit.headers.iter().map(|h| json!({ "name": h.name, "value": h.value })).collect();
            object.insert("headers".into(), Value::Array(headers));
        }
    }
    Ok(value)
}

/// A timer operation as `weir exec` prints it: a schedule with its key,
/// when it would fire (Unix ms and RFC 3339) and the event it would append,
/// as the emit the plugin gave (the host sets its id, time and source when
/// it fires, docs/abi.md §15.2); a cancel with its key.
fn timer_json(op: &TimerCall) -> Result<Value, serde_json::Error> {
    Ok(match op {
        TimerCall::Schedule { key, fire_at_ms, emit } => {
            let nanos = i64::try_from(*fire_at_ms).unwrap_or(i64::MAX).saturating_mul(1_000_000);
            json!({
                "op": "schedule",
                "key": key,
                "fire_at_ms": fire_at_ms,
                "fire_at": weir_runtime::format_time(nanos),
                "emit": emit_json(emit)?,
            })
        }
        TimerCall::Cancel { key } => json!({ "op": "cancel", "key": key }),
    })
}

/// One state write as `weir exec` prints it: the scope (the event's key, or
/// null for the shared scope), the key and value as text when they are
/// UTF-8 (JSON values as JSON), else base64.
fn state_json(write: &MemoryWrite) -> Value {
    fn text(bytes: &[u8]) -> Value {
        match std::str::from_utf8(bytes) {
            Ok(s) => json!(s),
            Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
        }
    }
    let value = match &write.value {
        None => Value::Null,
        Some(v) => serde_json::from_slice::<Value>(v).unwrap_or_else(|_| text(v)),
    };
    json!({ "scope": write.scope, "key": text(&write.key), "value": value, "deleted": write.value.is_none() })
}
