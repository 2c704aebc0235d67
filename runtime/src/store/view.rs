//! Views: a projection's state read together with the log position it
//! reflects, in one read transaction, so the answer and its position agree.
//!
//! The position is the subscription's committed cursor, or the first event
//! still parked for a retry when that is earlier: every event before it has
//! been handled (its writes are in the state) or dead-lettered.

use redb::{ReadTransaction, ReadableTable};

use super::state::{Entry, KIND_KEY, STATE, resolve};
use super::subscription::{CURSORS, PARKED};
use super::{Store, StoreError, storage};

/// One key of a view: its entries, and whether they were cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViewValue {
    pub(crate) entries: Vec<Entry>,
    pub(crate) truncated: bool,
}

/// Keys of a view with their values, and whether there may be more.
pub(crate) type ViewPage = (Vec<(String, ViewValue)>, bool);

/// A read of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViewRead<T> {
    pub(crate) value: T,
    /// Every event before this seq is reflected.
    pub(crate) position: u64,
}

fn position(read: &ReadTransaction, subscription: &str) -> Result<u64, StoreError> {
    let cursor =
        read.open_table(CURSORS).map_err(storage)?.get(subscription).map_err(storage)?.map_or(0, |v| v.value());
    let parked = read.open_table(PARKED).map_err(storage)?;
    let first = parked.range((subscription, 0)..=(subscription, u64::MAX)).map_err(storage)?.next();
    let first = first.transpose().map_err(storage)?.map(|(k, _)| k.value().1);
    Ok(first.map_or(cursor, |seq| seq.min(cursor)))
}

/// The entries of one key scope, at most `max_entries` and about
/// `max_bytes`.
fn scope<T: ReadableTable<(&'static str, u8, &'static str, &'static [u8]), &'static [u8]>>(
    table: &T,
    subscription: &str,
    key: &str,
    max_entries: usize,
    max_bytes: &mut usize,
) -> Result<ViewValue, StoreError> {
    let mut entries = Vec::new();
    let mut truncated = false;
    for entry in table.range((subscription, KIND_KEY, key, &[][..])..).map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (sub, kind, name, state_key) = k.value();
        if sub != subscription || kind != KIND_KEY || name != key {
            break;
        }
        let cost = state_key.len() + v.value().len();
        if entries.len() == max_entries || cost > *max_bytes {
            truncated = true;
            break;
        }
        *max_bytes -= cost;
        entries.push((state_key.to_vec(), v.value().to_vec()));
    }
    Ok(ViewValue { entries, truncated })
}

impl Store {
    /// The position `subscription`'s state reflects.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn view_position(&self, subscription: &str) -> Result<u64, StoreError> {
        position(&self.shared.begin_read()?, subscription)
    }

    /// The state of one event key of `subscription`, with its position;
    /// `None` when the key has no state.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn view_get(
        &self,
        subscription: &str,
        key: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ViewRead<Option<ViewValue>>, StoreError> {
        let read = self.shared.begin_read()?;
        let ns = resolve(&read, subscription.into())?;
        let table = read.open_table(STATE).map_err(storage)?;
        let mut budget = max_bytes;
        let value = scope(&table, &ns, key, max_entries, &mut budget)?;
        let value = (!value.entries.is_empty() || value.truncated).then_some(value);
        Ok(ViewRead { value, position: position(&read, subscription)? })
    }

    /// The event keys of `subscription` that start with `prefix`, after
    /// `after`, each with its state: at most `limit` keys and about
    /// `max_bytes` in all (the last key's entries may be cut). Answers the
    /// keys, whether there may be more, and the position.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn view_list(
        &self,
        subscription: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ViewRead<ViewPage>, StoreError> {
        let read = self.shared.begin_read()?;
        let ns = resolve(&read, subscription.into())?;
        let table = read.open_table(STATE).map_err(storage)?;
        let mut out: Vec<(String, ViewValue)> = Vec::new();
        let mut budget = max_bytes;
        // The least key after `a` is `a` and a NUL.
        let mut from = match after {
            Some(a) if a >= prefix => format!("{a}\0"),
            _ => prefix.to_owned(),
        };
        let mut more = false;
        loop {
            let next = table
                .range((ns.as_str(), KIND_KEY, from.as_str(), &[][..])..)
                .map_err(storage)?
                .next()
                .transpose()
                .map_err(storage)?;
            let Some((k, _)) = next else { break };
            let (sub, kind, name, _) = k.value();
            if sub != ns || kind != KIND_KEY || !name.starts_with(prefix) {
                break;
            }
            let name = name.to_owned();
            if out.len() == limit || budget == 0 {
                more = true;
                break;
            }
            let value = scope(&table, &ns, &name, max_entries, &mut budget)?;
            from = format!("{name}\0");
            out.push((name, value));
        }
        Ok(ViewRead { value: (out, more), position: position(&read, subscription)? })
    }
}
