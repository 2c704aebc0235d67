//! Adversarial: an aggregate that fails on demand, so the host's
//! classification of `weir_decide` and `weir_evolve` failures can be tested.
//! Its state counts the events folded.
//!
//! Commands: `ok` (one event `<type>.happened`), `panic` (traps), `loop`
//! (never returns), `foreign` (an event of another entity type), `poison`
//! (an event `<type>.poisoned`, whose fold panics).

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// The state: how many events were folded.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Count {
    /// Events folded.
    pub events: u64,
}

/// The commands.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Accepted with one event.
    Ok,
    /// Panics.
    Panic,
    /// Loops forever.
    Loop,
    /// Accepted with an event of another entity type.
    Foreign,
    /// Accepted with an event whose fold panics.
    Poison,
}

/// The aggregate.
#[derive(Debug)]
pub struct Faulty;

#[weir_sdk::aggregate]
impl Aggregate for Faulty {
    type State = Count;
    type Command = Command;

    #[allow(clippy::panic)]
    fn decide(_: &Count, command: &Command, ctx: &CommandContext) -> Result<Vec<Emit>, Rejection> {
        match command {
            Command::Ok => Ok(vec![ctx.event("happened")]),
            Command::Panic => panic!("asked to panic"),
            Command::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Command::Foreign => Ok(vec![Emit::new("other.thing.happened").key(ctx.key())]),
            Command::Poison => Ok(vec![ctx.event("poisoned")]),
        }
    }

    #[allow(clippy::panic)]
    fn evolve(mut state: Count, event: &Event) -> Count {
        if event.topic.ends_with(".poisoned") {
            panic!("cannot fold a poisoned event");
        }
        state.events += 1;
        state
    }
}
