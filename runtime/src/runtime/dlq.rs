//! Dead-letter queue operations: list, redrive through the current
//! handler, purge.

use std::collections::BTreeMap;
use std::sync::mpsc;

use serde::Serialize;

use super::{Runtime, RuntimeError};
use crate::delivery::Control;
use crate::store::{DlqEntry, DlqFilter, DlqPage, Redriven, StoreError};

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
    /// subscription's current handler. A source's entry (`sources/<name>`,
    /// a message that made no event) is mapped again with the source's
    /// current configuration and appended to the log if it now makes an
    /// event.
    ///
    /// # Idempotency
    ///
    /// An entry is moved out of the DLQ and into the subscription's parked
    /// events in one transaction: redriving twice moves it once. The
    /// subscription's idempotency check still applies when it runs. A
    /// source's entry is removed in the transaction that appends its event.
    ///
    /// # Errors
    ///
    /// Storage errors, an unknown subscription in the filter, or source
    /// entries that still make no event (they stay; the others selected
    /// are redriven, and the error says how many).
    pub fn redrive(&self, filter: &DlqFilter) -> Result<RedriveReport, RuntimeError> {
        if let Some(name) = &filter.subscription
            && !self.subs.iter().any(|s| &*s.name == name)
            && !name.starts_with(crate::consumer::DLQ_PREFIX)
            && !name.starts_with(crate::config::SOURCE_PREFIX)
        {
            return Err(RuntimeError::UnknownSubscription(name.clone()));
        }
        let mut by_sub: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut sources: Vec<DlqEntry> = Vec::new();
        for entry in self.store.dlq(filter)? {
            if entry.subscription.starts_with(crate::config::SOURCE_PREFIX) {
                sources.push(entry);
            } else {
                by_sub.entry(entry.subscription).or_default().push(entry.seq);
            }
        }
        let mut report = RedriveReport::default();
        let refused = self.redrive_sources(sources, &mut report)?;
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
        if !refused.is_empty() {
            return Err(RuntimeError::SourceRedrive { redriven: report.redriven, refused });
        }
        Ok(report)
    }

    /// Map each source entry again with its source's current configuration
    /// and append what now makes an event; answers why the others stay.
    fn redrive_sources(&self, entries: Vec<DlqEntry>, report: &mut RedriveReport) -> Result<Vec<String>, StoreError> {
        let mut refused = Vec::new();
        for entry in entries {
            let name = entry.subscription.strip_prefix(crate::config::SOURCE_PREFIX).unwrap_or_default();
            let Some(source) = self.config.sources.iter().find(|s| s.name == name) else {
                refused.push(format!("{} #{}: no source {name:?} is configured", entry.subscription, entry.seq));
                continue;
            };
            let schemas = &self.config.schemas;
            let event = match crate::source::remap(source, &self.ids, self.config.max_payload_bytes, schemas, &entry) {
                Ok(event) => event,
                Err(why) => {
                    refused.push(why.to_string());
                    continue;
                }
            };
            let position = entry.event.idempotency_key.clone();
            match self.store.source_redrive_blocking(entry.subscription.clone(), entry.seq, position, event)? {
                Redriven::Missing => report.missing += 1,
                Redriven::Appended(published) => {
                    tracing::info!(subscription = %entry.subscription, seq = entry.seq, log_seq = published.seq, duplicate = published.duplicate, "source message redriven");
                    report.redriven += 1;
                }
            }
        }
        Ok(refused)
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
