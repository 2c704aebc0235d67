//! Dead-letter queue operations: list, redrive through the current
//! handler, purge.

use std::collections::BTreeMap;
use std::sync::mpsc;

use serde::Serialize;

use super::{Runtime, RuntimeError};
use crate::delivery::Control;
use crate::store::{DlqEntry, DlqFilter, DlqPage, StoreError};

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedriveReport {
    /// Entries moved back to their subscription.
    pub redriven: usize,
    /// Entries that matched but were gone by the time (already redriven or
    /// purged).
    pub missing: usize,
}

impl Runtime {
    /// DLQ entries passing `filter`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, StoreError> {
        self.store.dlq(filter)
    }

    /// A page of the DLQ entries passing `filter`: up to `limit`, after
    /// the entry `after` (exclusive), and where the next page starts when
    /// there is one ([`Store::dlq_page`](crate::Store::dlq_page)).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq_page(
        &self,
        filter: &DlqFilter,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<DlqPage, StoreError> {
        self.store.dlq_page(filter, after, limit)
    }

    /// One DLQ entry, looked up by its key.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq_entry(&self, subscription: &str, seq: u64) -> Result<Option<DlqEntry>, StoreError> {
        self.store.dlq_entry(subscription, seq)
    }

    /// Send the DLQ entries passing `filter` back through their
    /// subscription's current handler.
    ///
    /// # Idempotency
    ///
    /// An entry is moved out of the DLQ and into the subscription's parked
    /// events in one transaction: redriving twice moves it once. The
    /// subscription's idempotency check still applies when it runs.
    ///
    /// # Errors
    ///
    /// Storage errors, or an unknown subscription in the filter.
    pub fn redrive(&self, filter: &DlqFilter) -> Result<RedriveReport, RuntimeError> {
        if let Some(name) = &filter.subscription
            && !self.subs.iter().any(|s| &*s.name == name)
            && !name.starts_with(crate::consumer::DLQ_PREFIX)
        {
            return Err(RuntimeError::UnknownSubscription(name.clone()));
        }
        let mut by_sub: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for entry in self.store.dlq(filter)? {
            by_sub.entry(entry.subscription).or_default().push(entry.seq);
        }
        let mut report = RedriveReport::default();
        for (name, seqs) in by_sub {
            // A durable consumer's entries go back to its pending deliveries.
            if let Some(consumer) = name.strip_prefix(crate::consumer::DLQ_PREFIX) {
                let total = seqs.len();
                let moved = match self.consumers.redrive_blocking(consumer, seqs) {
                    Ok(moved) => moved,
                    Err(crate::consumer::ConsumerError::NotFound(_)) => 0,
                    Err(crate::consumer::ConsumerError::Store(e)) => return Err(RuntimeError::Store(e)),
                    Err(e) => return Err(RuntimeError::Worker(format!("{name}: {e}"))),
                };
                report.redriven += moved;
                report.missing += total - moved;
                continue;
            }
            let Some(sub) = self.subs.iter().find(|s| *s.name == name) else {
                // A subscription removed from the config: nothing can run it.
                report.missing += seqs.len();
                continue;
            };
            let (tx, rx) = mpsc::channel();
            let total = seqs.len();
            sub.control
                .send(Control::Redrive { seqs, reply: tx })
                .map_err(|_| RuntimeError::Worker(format!("{name} is not running")))?;
            let moved = rx.recv().map_err(|_| RuntimeError::Worker(format!("{name} stopped")))??;
            report.redriven += moved;
            report.missing += total - moved;
        }
        Ok(report)
    }

    /// Delete the DLQ entries passing `filter`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn purge(&self, filter: DlqFilter) -> Result<usize, StoreError> {
        self.store.purge_blocking(filter)
    }
}
