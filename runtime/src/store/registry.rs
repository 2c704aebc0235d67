//! The plugin registry: module bytes by sha256, each handler's deploy
//! history and its active version.

use std::collections::{HashMap, HashSet, VecDeque};

use redb::{ReadableTable, TableDefinition};

use super::codec::{Encoded, Records, decode};
use super::command::{Apply, Command, Failure, Fatal, Order, next_record};
use super::writer::Writes;
use super::{Store, StoreError, VersionRecord, storage};

/// sha256 (hex) → module bytes: the plugin registry's content store.
pub(super) const MODULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("modules");
/// (handler, n) → encoded [`VersionRecord`]: each handler's deploy history.
pub(super) const VERSIONS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("versions");
/// handler → sha256 of its active module.
pub(super) const ACTIVE: TableDefinition<'_, &str, &str> = TableDefinition::new("active");

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    crate::names::ContentHash::of(bytes).into()
}

/// Record a deployed module: its bytes (once per sha256), a new entry of
/// the handler's history, and the handler's active version.
pub(super) struct Deploy {
    pub(super) handler: String,
    pub(super) record: Box<VersionRecord>,
    pub(super) module: Vec<u8>,
    /// Each handler's latest history entries that keep their module
    /// ([`super::StoreOptions::keep_versions`]).
    pub(super) keep: usize,
}

/// What the check of a [`Deploy`] read.
pub(super) struct Deploying {
    /// Whether the stored copy of the module is there and intact.
    intact: bool,
    /// The number the version gets in the handler's history.
    number: u64,
}

impl Apply for Deploy {
    /// The version's number in the handler's history.
    type Answer = u64;
    type Checked = Deploying;

    fn check(&self, w: &Writes<'_>, encoded: &mut Encoded) -> Result<Deploying, Failure> {
        // The registry's tables are opened here only to read: a check
        // writes nothing.
        let modules = w.txn.open_table(MODULES)?;
        // Stored once per sha256; a stored copy that no longer hashes to it
        // (damage) is replaced by the good one.
        let intact = modules
            .get(self.record.sha256.as_str())?
            .is_some_and(|stored| sha256_hex(stored.value()) == self.record.sha256);
        let versions = w.txn.open_table(VERSIONS)?;
        let handler = self.handler.as_str();
        let number = versions
            .range((handler, 0)..=(handler, u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(1, |(k, _)| k.value().1 + 1);
        encoded.push(&*self.record)?;
        Ok(Deploying { intact, number })
    }

    fn write(self, checked: Deploying, w: &mut Writes<'_>, mut records: Records<'_>) -> Result<u64, Fatal> {
        let handler = self.handler.as_str();
        let sha256 = self.record.sha256.as_str();
        if !checked.intact {
            w.txn.open_table(MODULES)?.insert(sha256, self.module.as_slice())?;
        }
        w.txn.open_table(VERSIONS)?.insert((handler, checked.number), next_record(&mut records)?)?;
        w.txn.open_table(ACTIVE)?.insert(handler, sha256)?;
        let pruned = prune(w, self.keep)?;
        if pruned > 0 {
            tracing::info!(pruned, keep_versions = self.keep, "deleted plugin modules no recent version uses");
        }
        Ok(checked.number)
    }
}

/// Delete the modules that neither an active version nor one of each
/// handler's latest `keep` history entries uses; answers how many. The
/// history entries stay (they are small); rolling back to one whose module
/// is gone is refused. A history entry that does not decode stops the
/// pruning: what it names cannot be known.
fn prune(w: &mut Writes<'_>, keep: usize) -> Result<usize, Fatal> {
    let mut latest: HashMap<String, VecDeque<String>> = HashMap::new();
    {
        let versions = w.txn.open_table(VERSIONS)?;
        for entry in versions.iter()? {
            let (k, v) = entry?;
            let (handler, n) = k.value();
            let Ok(record) = decode::<VersionRecord>(v.value(), || format!("deploy history {handler} #{n}")) else {
                tracing::warn!(handler, n, "a damaged deploy history entry: no plugin module is pruned");
                return Ok(0);
            };
            let shas = latest.entry(handler.to_owned()).or_default();
            shas.push_back(record.sha256);
            if shas.len() > keep {
                shas.pop_front();
            }
        }
    }
    let mut used: HashSet<String> = latest.into_values().flatten().collect();
    for entry in w.txn.open_table(ACTIVE)?.iter()? {
        used.insert(entry?.1.value().to_owned());
    }
    let doomed: Vec<String> = {
        let modules = w.txn.open_table(MODULES)?;
        let mut doomed = Vec::new();
        for entry in modules.iter()? {
            let (k, _) = entry?;
            if !used.contains(k.value()) {
                doomed.push(k.value().to_owned());
            }
        }
        doomed
    };
    let mut modules = w.txn.open_table(MODULES)?;
    for sha256 in &doomed {
        modules.remove(sha256.as_str())?;
    }
    Ok(doomed.len())
}

impl Store {
    /// Record a deployed module: store its bytes (once per sha256), append
    /// `record` to the handler's history and make it the active version, in
    /// one transaction. Answers the version's number in the history.
    ///
    /// # Errors
    ///
    /// The commit's error.
    pub(crate) fn deploy_blocking(
        &self,
        handler: &str,
        record: VersionRecord,
        module: Vec<u8>,
    ) -> Result<u64, StoreError> {
        let deploy =
            Deploy { handler: handler.to_owned(), record: Box::new(record), module, keep: self.shared.keep_versions };
        self.ask(|reply| Command::Deploy(Order::new(deploy, reply)))
    }

    /// The sha256 of a handler's active module, if it has one.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn active_version(&self, handler: &str) -> Result<Option<String>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(ACTIVE).map_err(storage)?;
        Ok(table.get(handler).map_err(storage)?.map(|v| v.value().to_owned()))
    }

    /// A stored module's bytes, verified against the sha256 they are stored
    /// under.
    ///
    /// # Errors
    ///
    /// Storage errors; [`StoreError::ModuleCorrupt`] when the bytes do not
    /// hash to `sha256` (the file was damaged after the deploy).
    pub fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(MODULES).map_err(storage)?;
        let Some(bytes) = table.get(sha256).map_err(storage)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(StoreError::ModuleCorrupt { expected: sha256.to_owned(), actual });
        }
        Ok(Some(bytes))
    }

    /// A handler's deploy history, oldest first, with version numbers.
    ///
    /// # Errors
    ///
    /// Storage or decoding errors.
    pub fn history(&self, handler: &str) -> Result<Vec<(u64, VersionRecord)>, StoreError> {
        let read = self.shared.begin_read()?;
        let table = read.open_table(VERSIONS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.range((handler, 0)..=(handler, u64::MAX)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            out.push((k.value().1, decode(v.value(), || format!("deploy history {handler} #{}", k.value().1))?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata as _;

    use super::*;
    use crate::store::StoreOptions;
    use crate::store::testing::{temp_store, write_at};

    fn version(module: &[u8], action: &str) -> VersionRecord {
        VersionRecord {
            sha256: sha256_hex(module),
            size: module.len() as u64,
            abi_version: 1,
            description: None,
            deployed_at_ms: 0,
            deployed_by: "test".into(),
            action: action.into(),
        }
    }

    #[test]
    fn each_handlers_history_is_numbered_from_one_and_stores_a_module_once() {
        let (_dir, store) = temp_store();
        let (one, two) = (b"module one".as_slice(), b"module two".as_slice());
        let deploy = |handler: &str, module: &[u8], action: &str| {
            store.deploy_blocking(handler, version(module, action), module.to_vec()).unwrap()
        };
        assert_eq!(deploy("orders/validator", one, "config"), 1);
        assert_eq!(deploy("orders/validator", two, "deploy"), 2);
        assert_eq!(deploy("orders/audit", one, "config"), 1);
        // A rollback is a new entry of the history, not an old number again.
        assert_eq!(deploy("orders/validator", one, "rollback"), 3);

        let history = store.history("orders/validator").unwrap();
        let entries: Vec<(u64, &str)> = history.iter().map(|(n, v)| (*n, v.action.as_str())).collect();
        assert_eq!(entries, [(1, "config"), (2, "deploy"), (3, "rollback")]);
        assert_eq!(store.history("orders/audit").unwrap().len(), 1);
        assert_eq!(store.active_version("orders/validator").unwrap(), Some(sha256_hex(one)));
        assert_eq!(store.active_version("orders/audit").unwrap(), Some(sha256_hex(one)));
        let read = store.shared.begin_read().unwrap();
        assert_eq!(read.open_table(MODULES).unwrap().len().unwrap(), 2);
    }

    #[test]
    fn modules_beyond_each_handlers_latest_versions_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { keep_versions: 2, ..StoreOptions::default() };
        let store = Store::open(&dir.path().join("weir.redb"), options).unwrap();
        let modules: Vec<Vec<u8>> = (0..5).map(|i| format!("module {i}").into_bytes()).collect();
        let deploy = |handler: &str, i: usize| {
            store.deploy_blocking(handler, version(&modules[i], "deploy"), modules[i].clone()).unwrap();
        };
        // Another handler's only version is module 0: it stays.
        deploy("orders/audit", 0);
        for i in 0..5 {
            deploy("orders/validator", i);
        }
        let stored = |store: &Store| -> Vec<bool> {
            modules.iter().map(|m| store.module(&sha256_hex(m)).unwrap().is_some()).collect()
        };
        assert_eq!(stored(&store), [true, false, false, true, true], "the validator keeps its latest two");
        // The history itself is kept whole.
        assert_eq!(store.history("orders/validator").unwrap().len(), 5);
        // A rollback to module 3 (a new entry) keeps 3 and 4 in reach.
        deploy("orders/validator", 3);
        assert_eq!(stored(&store), [true, false, false, true, true]);
        // Deploying module 1 again stores it again.
        deploy("orders/validator", 1);
        assert_eq!(stored(&store), [true, true, false, true, false]);
    }

    #[test]
    fn a_damaged_stored_copy_is_replaced_by_the_next_deploy_of_its_module() {
        let (_dir, store) = temp_store();
        let module = b"module one".as_slice();
        let sha256 = sha256_hex(module);
        store.deploy_blocking("orders/validator", version(module, "config"), module.to_vec()).unwrap();
        write_at(&store, 0, |w| {
            w.txn.open_table(MODULES)?.insert(sha256.as_str(), b"module on3".as_slice())?;
            Ok(())
        });
        assert_eq!(store.module(&sha256).unwrap_err().code(), "store_module_corrupt");

        let number = store.deploy_blocking("orders/validator", version(module, "deploy"), module.to_vec()).unwrap();
        assert_eq!(number, 2);
        assert_eq!(store.module(&sha256).unwrap().as_deref(), Some(module));
    }
}
