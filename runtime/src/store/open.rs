//! Opening a store file without trusting it: a missing file is the only
//! new store, redb's open errors are sorted into "locked", "the
//! environment's" and "damaged", and a panic inside redb on a damaged page
//! becomes [`StoreError::Corrupt`] instead of taking the process down.

use std::path::Path;

use super::StoreError;

/// The first bytes of every redb file (redb's `MAGICNUMBER`, which redb
/// does not export): a file that does not start with them is not a store.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Whether `path` holds a store to open (`true`) or names a new one
/// (`false`). Only a missing file means a new store: redb would initialise
/// an empty file as a new database, and a store that existed (a 0-byte
/// `weir.redb` left by a failed copy or a full disk) would silently start
/// again from nothing.
pub(super) fn existing_store(path: &Path) -> Result<bool, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_owned(), reason };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::Storage(format!("{}: {e}", path.display()))),
    };
    if meta.is_dir() {
        return Err(StoreError::Storage(format!("{} is a directory, not a store file", path.display())));
    }
    if meta.len() == 0 {
        return Err(corrupt(
            "the file is empty (0 bytes), so the store that was there is gone. Weir starts a new store only where \
             no file exists: restore the file from a backup, or delete it to start again with an empty store"
                .into(),
        ));
    }
    let mut magic = [0_u8; REDB_MAGIC.len()];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read as _;
        let mut filled = 0;
        while filled < magic.len() {
            match f.read(&mut magic[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    });
    match read {
        Ok(n) if n == REDB_MAGIC.len() && magic == REDB_MAGIC => Ok(true),
        Ok(_) => Err(corrupt("it is not a redb database (it does not start with redb's file header)".into())),
        Err(e) => Err(StoreError::Storage(format!("{}: {e}", path.display()))),
    }
}

/// Create the empty file of a new store, readable and writable by its
/// owner only (0600): redb would create it with the process's umask
/// (usually 0644), and the store holds every event.
pub(super) fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        // Created in between by someone else: opening it decides.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Storage(format!("{}: {e}", path.display()))),
    }
}

pub(super) fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: path.to_owned() },
        // Permission and path problems are the environment's; any other
        // I/O error at open is redb failing to read the file as a store.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            StoreError::Storage(format!("{}: {e}", path.display()))
        }
        e => StoreError::Corrupt { path: path.to_owned(), reason: e.to_string() },
    }
}

thread_local! {
    /// Set while [`contain_panics`] runs on this thread: the panic hook
    /// stores the message here instead of printing it.
    static CAPTURED_PANIC: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// Run `f`, turning a panic inside it (redb meeting a damaged page it did
/// not expect) into [`StoreError::Corrupt`] with the panic's message. The
/// process-wide panic hook is wrapped once; it stays silent only for the
/// thread inside this function, so other threads' panics print as before.
pub(super) fn contain_panics<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURED_PANIC.with(|slot| match slot.try_borrow_mut() {
                Ok(mut slot) if slot.is_some() => {
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic inside the storage engine".to_owned());
                    *slot = Some(Some(message));
                    true
                }
                _ => false,
            });
            if !captured {
                previous(info);
            }
        }));
    });
    CAPTURED_PANIC.with(|slot| *slot.borrow_mut() = Some(None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let message = CAPTURED_PANIC.with(|slot| slot.borrow_mut().take()).flatten();
    match result {
        Ok(result) => result,
        Err(_) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("the storage engine failed reading it ({})", message.as_deref().unwrap_or("no message")),
        }),
    }
}
