//! State hog: goes over the bounds of handler state on purpose, chosen by
//! the event's key. Used to prove that each bound holds and fails the event
//! as `state_limit` without touching the committed state.
//!
//! - `big-value`: puts one value of `value_bytes` bytes (config, default
//!   65,537: one over the default bound).
//! - `many-keys`: puts `keys` new keys (config, default 10,001).
//! - `write-flood`: overwrites one key with 60,000-byte values until the
//!   host stops it (the bytes written per invocation are bounded).
//! - `long-key`: puts a key of 1,025 bytes.
//! - anything else: puts `seen` = true and emits nothing.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use weir_sdk::prelude::*;

static VALUE_BYTES: AtomicUsize = AtomicUsize::new(65_537);
static KEYS: AtomicUsize = AtomicUsize::new(10_001);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    value_bytes: Option<usize>,
    keys: Option<usize>,
}

/// Read `value_bytes` and `keys`.
#[weir_sdk::init]
pub fn init(config: &Config) -> Result<(), String> {
    let settings: Settings = config.json()?;
    VALUE_BYTES.store(settings.value_bytes.unwrap_or(65_537), Ordering::Relaxed);
    KEYS.store(settings.keys.unwrap_or(10_001), Ordering::Relaxed);
    Ok(())
}

/// Go over a bound.
#[weir_sdk::handler]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    match event.key.as_deref() {
        Some("big-value") => ctx.state().put_bytes("v", &vec![b'x'; VALUE_BYTES.load(Ordering::Relaxed)]),
        Some("many-keys") => {
            for i in 0..KEYS.load(Ordering::Relaxed) {
                ctx.state().put_bytes(&format!("k{i:06}"), b"1");
            }
        }
        Some("write-flood") => {
            for _ in 0..1_000_000 {
                ctx.state().put_bytes("v", &[b'x'; 60_000]);
            }
        }
        Some("long-key") => ctx.state().put_bytes(&"k".repeat(1025), b"1"),
        _ => ctx.state().put("seen", &true)?,
    }
    Ok(Vec::new())
}
