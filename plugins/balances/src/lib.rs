//! Balances: a projection of the bank account's events (the aggregate of
//! `plugins/bank-account`) into the view `balances`. Per account (the
//! event's key) its state holds `balance`, in cents, and `movements`, the
//! number of deposits and withdrawals: `GET /v1/views/balances/<account>`
//! answers `{"balance": 7000, "movements": 2}`.
//!
//! It computes the balance from the amounts, not from the `balance` the
//! events carry, so it is a read model of its own that replaying rebuilds
//! from the log. Events of other kinds, or without a key, change nothing.

use serde::Deserialize;
use weir_sdk::prelude::*;

#[derive(Debug, Deserialize)]
struct Moved {
    amount: u64,
}

/// Apply one account event to the account's balance.
#[weir_sdk::handler(topics = ["accounts.account.*"])]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.is_none() {
        return Ok(vec![]);
    }
    let kind = event.topic.rsplit('.').next().unwrap_or_default();
    let balance = ctx.state().get::<u64>("balance")?.unwrap_or(0);
    let movements = ctx.state().get::<u64>("movements")?.unwrap_or(0);
    let balance = match kind {
        "opened" => balance,
        "deposited" => balance.saturating_add(event.json::<Moved>()?.amount),
        "withdrew" => balance.saturating_sub(event.json::<Moved>()?.amount),
        _ => return Ok(vec![]),
    };
    let movements = if kind == "opened" { movements } else { movements + 1 };
    ctx.state().put("balance", &balance)?;
    ctx.state().put("movements", &movements)?;
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::event;

    use super::*;

    fn account(ctx: &mut Context, key: &str) -> (Option<u64>, Option<u64>) {
        let state = ctx.state_of(Some(key));
        (state.get::<u64>("balance").unwrap(), state.get::<u64>("movements").unwrap())
    }

    #[test]
    fn deposits_and_withdrawals_move_the_balance_per_account() {
        let mut ctx = Context::new("accounts/balances", 1);
        let on = |topic: &str, key: &str, amount: u64| {
            event(topic).key(key).json(&json!({ "amount": amount, "balance": 0 })).build()
        };
        ctx.handle(handle, &event("accounts.account.opened").key("a").json(&json!({})).build()).unwrap();
        assert_eq!(account(&mut ctx, "a"), (Some(0), Some(0)));
        ctx.handle(handle, &on("accounts.account.deposited", "a", 10_000)).unwrap();
        ctx.handle(handle, &on("accounts.account.withdrew", "a", 3_000)).unwrap();
        ctx.handle(handle, &on("accounts.account.deposited", "b", 500)).unwrap();
        assert_eq!(account(&mut ctx, "a"), (Some(7_000), Some(2)));
        assert_eq!(account(&mut ctx, "b"), (Some(500), Some(1)));
    }

    #[test]
    fn other_events_change_nothing_and_a_bad_amount_is_rejected_without_a_write() {
        let mut ctx = Context::new("accounts/balances", 1);
        ctx.handle(handle, &event("accounts.account.renamed").key("a").json(&json!({})).build()).unwrap();
        assert_eq!(account(&mut ctx, "a"), (None, None));
        let bad = event("accounts.account.deposited").key("a").json(&json!({ "amount": "ten" })).build();
        assert!(ctx.handle(handle, &bad).is_err());
        assert_eq!(account(&mut ctx, "a"), (None, None));
    }
}
