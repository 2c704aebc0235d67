//! Statements: a projection of the bank account's events (the aggregate of
//! `plugins/bank-account`) into the view `statements`. Per account (the
//! event's key) its state holds each movement under `m:<revision>`, the
//! stream revision zero-padded to 12 digits so that the keys sort in order
//! and a statement lists by the prefix `m:`; the value is small JSON:
//! `{"kind": "deposit", "amount": 5000, "balance": 5000}`. `revision` holds
//! the revision of the last event seen (the account's `opened` is 0), from
//! which the next movement's number follows.
//!
//! A statement grows by one entry per movement: the host's
//! `max_state_keys_per_scope` bounds it, and `GET /v1/views/statements/…`
//! shows at most 1,000 entries (the state API pages through the rest).

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// One line of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// `deposit` or `withdrawal`.
    pub kind: String,
    /// In cents.
    pub amount: u64,
    /// The balance after it, in cents.
    pub balance: u64,
}

#[derive(Debug, Deserialize)]
struct Moved {
    amount: u64,
}

/// The state key of the movement at `revision`.
#[must_use]
pub fn movement_key(revision: u64) -> String {
    format!("m:{revision:012}")
}

/// Add the event's movement to its account's statement.
#[weir_sdk::handler(topics = ["accounts.account.*"])]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.is_none() {
        return Ok(vec![]);
    }
    let kind = match event.topic.rsplit('.').next() {
        Some("opened") => {
            ctx.state().put("revision", &0u64)?;
            return Ok(vec![]);
        }
        Some("deposited") => "deposit",
        Some("withdrew") => "withdrawal",
        _ => return Ok(vec![]),
    };
    let amount = event.json::<Moved>()?.amount;
    let Some(last) = ctx.state().get::<u64>("revision")? else {
        return Err(HandlerError::reject("a movement of an account whose opening this statement has not seen"));
    };
    let balance = match ctx.state().get::<Movement>(&movement_key(last))? {
        Some(previous) => previous.balance,
        None => 0,
    };
    let balance = if kind == "deposit" { balance.saturating_add(amount) } else { balance.saturating_sub(amount) };
    let revision = last + 1;
    ctx.state().put(&movement_key(revision), &Movement { kind: kind.into(), amount, balance })?;
    ctx.state().put("revision", &revision)?;
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::event;

    use super::*;

    fn moved(topic: &str, key: &str, amount: u64) -> Event {
        event(topic).key(key).json(&json!({ "amount": amount, "balance": 0 })).build()
    }

    #[test]
    fn a_statement_lists_its_movements_in_order() {
        let mut ctx = Context::new("accounts/statements", 1);
        ctx.handle(handle, &event("accounts.account.opened").key("a").json(&json!({})).build()).unwrap();
        ctx.handle(handle, &moved("accounts.account.deposited", "a", 10_000)).unwrap();
        ctx.handle(handle, &moved("accounts.account.withdrew", "a", 3_000)).unwrap();
        let lines = ctx.state_of(Some("a")).scan::<Movement>("m:").unwrap();
        let m = |kind: &str, amount, balance| Movement { kind: kind.into(), amount, balance };
        assert_eq!(
            lines,
            vec![
                ("m:000000000001".to_owned(), m("deposit", 10_000, 10_000)),
                ("m:000000000002".to_owned(), m("withdrawal", 3_000, 7_000)),
            ]
        );
        assert_eq!(ctx.state_of(Some("a")).get::<u64>("revision").unwrap(), Some(2));
    }

    #[test]
    fn keys_sort_by_revision_past_nine() {
        assert!(movement_key(9) < movement_key(10));
        assert!(movement_key(99_999) < movement_key(100_000));
    }

    #[test]
    fn a_movement_before_the_opening_is_rejected_and_writes_nothing() {
        let mut ctx = Context::new("accounts/statements", 1);
        assert!(ctx.handle(handle, &moved("accounts.account.deposited", "a", 5)).is_err());
        assert!(ctx.state_of(Some("a")).scan::<Movement>("").unwrap().is_empty());
    }
}
