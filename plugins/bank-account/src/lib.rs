//! The bank account: an aggregate on the entity type `accounts.account`.
//!
//! Commands (`POST /v1/commands/accounts.account/<id>`):
//! - `open` `{"owner": "…"}` (owner optional): opens the account once;
//! - `deposit` `{"amount": n}`: n ≥ 1, on an open account;
//! - `withdraw` `{"amount": n}`: n ≥ 1, at most the balance.
//!
//! Events: `accounts.account.opened` `{"owner"}`, `accounts.account.deposited`
//! `{"amount", "balance"}`, `accounts.account.withdrew` `{"amount", "balance"}`
//! (the balance after the movement, so a statement reads without a fold).

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// The account's state, stored by the host as JSON.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Whether `open` was accepted.
    pub open: bool,
    /// Who owns it, as given to `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The balance, in the smallest unit.
    pub balance: u64,
    /// How many deposits and withdrawals it has seen.
    pub movements: u64,
}

/// The commands an account accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Open the account.
    Open {
        /// Its owner.
        #[serde(default)]
        owner: Option<String>,
    },
    /// Put money in.
    Deposit {
        /// How much (≥ 1).
        amount: u64,
    },
    /// Take money out (at most the balance).
    Withdraw {
        /// How much (≥ 1).
        amount: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Opened {
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Moved {
    amount: u64,
    /// Informational: the fold needs only the amount (an event appended
    /// outside commands may leave it out).
    #[serde(default)]
    balance: u64,
}

/// The aggregate.
#[derive(Debug)]
pub struct BankAccount;

#[weir_sdk::aggregate(description = "A bank account: open, deposit, withdraw (never below zero)")]
impl Aggregate for BankAccount {
    type State = Account;
    type Command = Command;

    fn decide(state: &Account, command: &Command, ctx: &CommandContext) -> Result<Vec<Emit>, Rejection> {
        match command {
            Command::Open { owner } => {
                if state.open {
                    return Err(Rejection::new("the account is already open"));
                }
                Ok(vec![ctx.event("opened").json(&Opened { owner: owner.clone() })?])
            }
            Command::Deposit { amount } => {
                if !state.open {
                    return Err(Rejection::new("the account is not open"));
                }
                if *amount == 0 {
                    return Err(Rejection::new("a deposit is at least 1"));
                }
                let balance =
                    state.balance.checked_add(*amount).ok_or_else(|| Rejection::new("the balance would overflow"))?;
                Ok(vec![ctx.event("deposited").json(&Moved { amount: *amount, balance })?])
            }
            Command::Withdraw { amount } => {
                if !state.open {
                    return Err(Rejection::new("the account is not open"));
                }
                if *amount == 0 {
                    return Err(Rejection::new("a withdrawal is at least 1"));
                }
                let Some(balance) = state.balance.checked_sub(*amount) else {
                    return Err(Rejection::new(format!(
                        "insufficient funds: the balance is {}, the withdrawal {amount}",
                        state.balance
                    )));
                };
                Ok(vec![ctx.event("withdrew").json(&Moved { amount: *amount, balance })?])
            }
        }
    }

    fn evolve(mut state: Account, event: &Event) -> Account {
        match event.topic.rsplit('.').next() {
            Some("opened") => {
                state.open = true;
                state.owner = event.json::<Opened>().ok().and_then(|o| o.owner);
            }
            Some("deposited") => {
                if let Ok(m) = event.json::<Moved>() {
                    state.balance = state.balance.saturating_add(m.amount);
                    state.movements += 1;
                }
            }
            Some("withdrew") => {
                if let Ok(m) = event.json::<Moved>() {
                    state.balance = state.balance.saturating_sub(m.amount);
                    state.movements += 1;
                }
            }
            // Events of the type this version does not know leave the
            // state as it is.
            _ => {}
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_sdk::testing::{event, given};

    use super::*;

    fn opened() -> Event {
        event("accounts.account.opened").key("a-1").json(&json!({ "owner": "ada" })).build()
    }

    fn deposited(amount: u64, balance: u64) -> Event {
        event("accounts.account.deposited").key("a-1").json(&json!({ "amount": amount, "balance": balance })).build()
    }

    #[test]
    fn an_account_opens_once() {
        given::<BankAccount>([])
            .entity("accounts.account", "a-1")
            .when(Command::Open { owner: Some("ada".into()) })
            .then_emits(&[("accounts.account.opened", json!({ "owner": "ada" }))]);
        given::<BankAccount>([opened()]).when(Command::Open { owner: None }).then_rejects("already open");
    }

    #[test]
    fn deposits_add_up_and_a_withdrawal_takes_at_most_the_balance() {
        let state = given::<BankAccount>([opened(), deposited(70, 70)])
            .when(Command::Deposit { amount: 30 })
            .then_emits(&[("accounts.account.deposited", json!({ "amount": 30, "balance": 100 }))]);
        assert_eq!(state.balance, 100);
        given::<BankAccount>([opened(), deposited(70, 70), deposited(30, 100)])
            .when(Command::Withdraw { amount: 100 })
            .then_emits(&[("accounts.account.withdrew", json!({ "amount": 100, "balance": 0 }))]);
        given::<BankAccount>([opened(), deposited(70, 70)])
            .when(Command::Withdraw { amount: 71 })
            .then_rejects("insufficient funds: the balance is 70, the withdrawal 71");
    }

    #[test]
    fn nothing_moves_on_an_account_not_open_nor_for_nothing() {
        given::<BankAccount>([]).when(Command::Deposit { amount: 5 }).then_rejects("not open");
        given::<BankAccount>([]).when(Command::Withdraw { amount: 5 }).then_rejects("not open");
        given::<BankAccount>([opened()]).when(Command::Deposit { amount: 0 }).then_rejects("at least 1");
    }

    #[test]
    fn commands_decode_from_their_name_and_payload() {
        assert_eq!(
            weir_sdk::decode_command::<Command>("deposit", br#"{"amount": 5}"#).unwrap(),
            Command::Deposit { amount: 5 }
        );
        assert_eq!(weir_sdk::decode_command::<Command>("open", b"{}").unwrap(), Command::Open { owner: None });
        assert_eq!(weir_sdk::decode_command::<Command>("open", b"").unwrap(), Command::Open { owner: None });
        assert_eq!(weir_sdk::decode_command::<Command>("open", b"null").unwrap(), Command::Open { owner: None });
        assert!(weir_sdk::decode_command::<Command>("close", b"{}").is_err());
    }
}
