//! Per-subscription counters: (subscription, counter) → value.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{ReadableTable, Table, TableDefinition};

use super::command::Fatal;
use super::{Store, StoreError, SubscriptionStats, storage};

/// (subscription, counter) → value.
pub(super) const STATS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("stats");

/// The counters of a [`SubscriptionStats`] with their names in [`STATS`]:
/// the one place that names them.
fn named(stats: &mut SubscriptionStats) -> [(&'static str, &mut u64); 5] {
    [
        ("handled", &mut stats.handled),
        ("duplicates", &mut stats.duplicates),
        ("retries", &mut stats.retries),
        ("dead_lettered", &mut stats.dead_lettered),
        ("emitted", &mut stats.emitted),
    ]
}

/// Counter increments of one group, per subscription: written once at the
/// end of the group, one read and one write per counter that moved, however
/// many events moved it.
#[derive(Debug, Default)]
pub(super) struct Tally(HashMap<Arc<str>, SubscriptionStats>);

impl Tally {
    /// Add one command's counts.
    pub(super) fn add(&mut self, subscription: &Arc<str>, counts: &SubscriptionStats) {
        if *counts == SubscriptionStats::default() {
            return;
        }
        let total = match self.0.get_mut(&**subscription) {
            Some(total) => total,
            None => self.0.entry(Arc::clone(subscription)).or_default(),
        };
        total.handled += counts.handled;
        total.duplicates += counts.duplicates;
        total.retries += counts.retries;
        total.dead_lettered += counts.dead_lettered;
        total.emitted += counts.emitted;
    }

    pub(super) fn write(mut self, table: &mut Table<'_, (&'static str, &'static str), u64>) -> Result<(), Fatal> {
        for (subscription, counts) in &mut self.0 {
            for (name, add) in named(counts) {
                if *add == 0 {
                    continue;
                }
                let key = (&**subscription, name);
                let current = table.get(key)?.map_or(0, |v| v.value());
                table.insert(key, current + *add)?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Per-subscription counters.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn stats(&self, subscription: &str) -> Result<SubscriptionStats, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(STATS).map_err(storage)?;
        let mut stats = SubscriptionStats::default();
        for (name, value) in named(&mut stats) {
            *value = table.get((subscription, name)).map_err(storage)?.map_or(0, |v| v.value());
        }
        Ok(stats)
    }
}
