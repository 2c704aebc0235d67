//! A saga participant for the orchestrated-saga example (docs/sagas.md):
//! one module, configured as the payment, inventory or shipping service.
//!
//! It receives a coordinator's commands (`saga-phase: forward`) and
//! compensations (`saga-phase: compensate`), applies the effect once per
//! stable key (`saga-idempotency-key`, the same for every attempt), and
//! replies with the command's key and saga headers on the topic its
//! configuration names for the outcome.
//!
//! Configuration:
//! `{ "service": "payment", "done": "<topic>", "failed": "<topic>", "undone": "<topic>", "undo_failed": "<topic>" }`
//!
//! What fails, from the saga's input (the start event's payload):
//! - `"card": "declined"`: payment fails;
//! - `"item": "out-of-stock"`: inventory fails;
//! - `"address": "nowhere"`: shipping fails (no courier);
//! - `"fail": ["<service>", …]`: that service fails;
//! - `"silent": ["<service>", …]`: that service never replies to the step;
//! - `"undo_fail": ["<service>", …]`: its compensation always fails;
//! - `"undo_flaky": ["<service>", …]`: its compensation fails on the first
//!   attempt only.
//!
//! Its state, per saga id, counts what it did: `received:<phase>` (commands
//! delivered) and `effects:<phase>` (effects applied); a test reads them to
//! check that no step and no compensation took effect twice.

use std::sync::OnceLock;

use serde::Deserialize;
use weir_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    service: String,
    done: String,
    failed: Option<String>,
    undone: Option<String>,
    undo_failed: Option<String>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Read the service's name and reply topics.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    let settings: Settings = config.json()?;
    let _ = SETTINGS.set(settings);
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    card: Option<String>,
    #[serde(default)]
    item: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    fail: Vec<String>,
    #[serde(default)]
    silent: Vec<String>,
    #[serde(default)]
    undo_fail: Vec<String>,
    #[serde(default)]
    undo_flaky: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Command {
    #[serde(default)]
    input: Option<serde_json::Value>,
}

fn bump(ctx: &mut Context, key: &str) -> Result<u64, HandlerError> {
    let n = ctx.state().get::<u64>(key)?.unwrap_or(0) + 1;
    ctx.state().put(key, &n)?;
    Ok(n)
}

/// Handle one command or compensation.
#[weir_sdk::handler]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let Some(settings) = SETTINGS.get() else { return Err(HandlerError::reject("not configured")) };
    let service = settings.service.as_str();
    let phase = event.header("saga-phase").unwrap_or("forward").to_owned();
    let stable = event.header("saga-idempotency-key").unwrap_or_default().to_owned();
    let command: Command = event.json()?;
    let input: Input = command.input.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    bump(ctx, &format!("received:{phase}"))?;
    let has = |list: &[String]| list.iter().any(|s| s == service);
    let (ok, reason, reply) = if phase == "compensate" {
        let tries = bump(ctx, &format!("undo_tries:{stable}"))?;
        let fails = has(&input.undo_fail) || (has(&input.undo_flaky) && tries == 1);
        (
            !fails,
            fails.then_some("compensation refused"),
            if fails { settings.undo_failed.clone() } else { settings.undone.clone() },
        )
    } else {
        if has(&input.silent) {
            return Ok(Vec::new());
        }
        let reason = match service {
            "payment" if input.card.as_deref() == Some("declined") => Some("card declined"),
            "inventory" if input.item.as_deref() == Some("out-of-stock") => Some("out of stock"),
            "shipping" if input.address.as_deref() == Some("nowhere") => Some("no courier"),
            _ if has(&input.fail) => Some("failed as asked"),
            _ => None,
        };
        let topic = if reason.is_some() { settings.failed.clone() } else { Some(settings.done.clone()) };
        (reason.is_none(), reason, topic)
    };
    // The effect, once per stable key whatever the attempts.
    if ok && ctx.state().get::<bool>(&format!("applied:{stable}"))?.is_none() {
        ctx.state().put(&format!("applied:{stable}"), &true)?;
        bump(ctx, &format!("effects:{phase}"))?;
    }
    let Some(topic) = reply else { return Ok(Vec::new()) };
    let mut emit = event.emit(topic).json(&serde_json::json!({
        "service": service, "ok": ok, "reason": reason,
    }))?;
    for h in ["saga-id", "saga-name", "saga-step", "saga-attempt", "saga-phase"] {
        if let Some(v) = event.header(h) {
            emit = emit.header(h, v);
        }
    }
    Ok(vec![emit])
}
