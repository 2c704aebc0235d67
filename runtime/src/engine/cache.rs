//! The compiled-artifact cache: serialized modules on disk, keyed by the
//! module's sha256 and the engine's compatibility fingerprint, so a restart
//! (or a second `weir exec`) skips Cranelift.
//!
//! # Trust
//!
//! Loading a serialized artifact runs native code that wasmtime produced, so
//! nothing is loaded on the word of the file system alone:
//!
//! - The directory is created with mode 0700 and refused (an
//!   [`EngineError::CacheDirInsecure`]) when it is not owned by the user
//!   running Weir or is writable by its group or by others.
//! - Every artifact is bound to its content: the file starts with an
//!   HMAC-SHA256 over the engine fingerprint, the module's sha256 and the
//!   artifact bytes, under a 32-byte random key kept *outside* the directory
//!   in `<dir>.key` (mode 0600, created on first use). The tag is checked
//!   before the artifact is deserialized; an artifact copied from another
//!   module's name, another cache, or edited in place is refused, deleted
//!   and recompiled.
//! - Files are opened with `O_NOFOLLOW` and must be regular files owned by
//!   the user and not writable by others: a symlink planted at an artifact's
//!   name is refused and replaced, never followed.
//! - Artifacts are written to a temp file with an unpredictable name,
//!   created exclusively (`O_EXCL`, `O_NOFOLLOW`, mode 0600), then renamed
//!   into place (a rename replaces a symlink, it does not follow it).
//! - Only modules that passed validation are cached (`plugin.rs`).
//! - [`Engine::evict_artifacts`](super::Engine::evict_artifacts) removes
//!   the artifacts of modules nobody uses any more; the runtime calls it
//!   with the versions its registry keeps.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wasmtime::Module;

use crate::error::EngineError;
use crate::hmac::{constant_time_eq, hmac_sha256};

/// First bytes of every artifact file: the format of the header below.
const MAGIC: &[u8; 8] = b"WEIRCA01";
/// Length of the HMAC-SHA256 tag after the magic.
const TAG_LEN: usize = 32;
/// Largest artifact file read back. A compiled plugin is a few MiB; a bigger
/// file is not ours.
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;
/// Temp files older than this are leftovers of a crash, removed by eviction.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// A directory of `<sha256>-<fingerprint>.cwasm` files.
#[derive(Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
    key: [u8; 32],
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache").field("dir", &self.dir).field("fingerprint", &self.fingerprint).finish()
    }
}

/// Why an artifact was not loaded (logged, then the module is recompiled).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("{0}")]
    Unsafe(String),
    #[error("its tag does not match its content (tampered with, or from another module or cache)")]
    Tag,
    #[error("wasmtime cannot load it: {0}")]
    Deserialize(String),
}

impl ArtifactCache {
    /// Open (creating it if needed) the cache in `dir` and its key in
    /// `<dir>.key`.
    ///
    /// # Errors
    ///
    /// [`EngineError::CacheDir`] when the directory or key cannot be created
    /// or read, [`EngineError::CacheDirInsecure`] when either is not the
    /// user's own or is writable by others.
    pub(crate) fn open(dir: PathBuf, fingerprint: String) -> Result<Self, EngineError> {
        create_private_dir(&dir)?;
        check_private(&dir, true)?;
        let key = load_or_create_key(&key_path(&dir))?;
        Ok(Self { dir, fingerprint, key })
    }

    pub(crate) fn path_for(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}-{}.cwasm", self.fingerprint))
    }

    /// The cached module, if an artifact exists and proves to be ours.
    pub(crate) fn get(&self, engine: &wasmtime::Engine, sha256_hex: &str) -> Option<Module> {
        let path = self.path_for(sha256_hex);
        match self.try_get(engine, &path, sha256_hex) {
            Ok(module) => module,
            Err(refused) => {
                tracing::warn!(path = %path.display(), reason = %refused, "refusing a compiled artifact; recompiling");
                // Remove the file (or symlink itself, never its target).
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn try_get(&self, engine: &wasmtime::Engine, path: &Path, sha256_hex: &str) -> Result<Option<Module>, Refused> {
        let mut file = match open_no_follow(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Refused::Open(e)),
        };
        let meta = file.metadata().map_err(Refused::Open)?;
        if !meta.is_file() {
            return Err(Refused::Unsafe("not a regular file".into()));
        }
        check_owner_and_mode(&meta, 0o022).map_err(Refused::Unsafe)?;
        if meta.len() > MAX_ARTIFACT_BYTES {
            return Err(Refused::Unsafe(format!("{} bytes, over the cap of {MAX_ARTIFACT_BYTES}", meta.len())));
        }
        // Read into memory rather than `deserialize_file`: that one maps the
        // file, and anyone truncating it meanwhile (another process
        // rewriting the cache, a full disk) would kill us with SIGBUS. And
        // the bytes checked are then the bytes loaded.
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(Refused::Open)?;
        let header = MAGIC.len() + TAG_LEN;
        if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
            return Err(Refused::Tag);
        }
        let (tag, artifact) = bytes[MAGIC.len()..].split_at(TAG_LEN);
        let expected = self.tag(sha256_hex, artifact);
        if !constant_time_eq(tag, &expected) {
            return Err(Refused::Tag);
        }
        // SAFETY: the bytes are exactly what `put` wrote from
        // `Module::serialize` of this engine configuration: the HMAC under
        // our private key covers the fingerprint, the module's hash and every
        // byte, and was checked just above on the bytes in memory. wasmtime
        // checks the header and the compatibility hash again. The crate
        // denies unsafe code; loading a precompiled artifact is one of its
        // exceptions.
        #[allow(unsafe_code)]
        let loaded = unsafe { Module::deserialize(engine, artifact) };
        let module = loaded.map_err(|e| Refused::Deserialize(format!("{e:#}")))?;
        // Its modification time is its last use, for age-based eviction.
        let _ = file.set_modified(SystemTime::now());
        Ok(Some(module))
    }

    /// Store `module`'s artifact. Failure only costs a recompile next time,
    /// so it is logged, not returned.
    pub(crate) fn put(&self, module: &Module, sha256_hex: &str) {
        if let Err(e) = self.try_put(module, sha256_hex) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write compiled artifact to the cache");
        }
    }

    fn try_put(&self, module: &Module, sha256_hex: &str) -> std::io::Result<()> {
        let artifact = module.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
        let tag = self.tag(sha256_hex, &artifact);
        let path = self.path_for(sha256_hex);
        // An unpredictable name, created exclusively and never through a
        // symlink; then renamed over the final name, so a reader never sees
        // half an artifact.
        let tmp = self.dir.join(format!(".tmp-{:032x}", rand::random::<u128>()));
        let written = (|| {
            let mut file = create_exclusive(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&tag)?;
            file.write_all(&artifact)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// HMAC-SHA256 under the cache key of everything an artifact answers
    /// for.
    fn tag(&self, sha256_hex: &str, artifact: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.key, &[self.fingerprint.as_bytes(), b"\0", sha256_hex.as_bytes(), b"\0", artifact])
    }

    /// Remove every artifact that is not for one of `keep` (module sha256s)
    /// with this engine's fingerprint, every artifact of another
    /// fingerprint (another wasmtime or configuration), and temp files left
    /// by a crash. Answers how many files were removed.
    pub(crate) fn evict_except(&self, keep: &HashSet<&str>) -> std::io::Result<usize> {
        self.evict(|sha, fingerprint, _| !(fingerprint == self.fingerprint && keep.contains(sha)))
    }

    /// Remove every artifact not loaded (or written) for `max_age`, and every
    /// artifact of another fingerprint. Answers how many files were removed.
    pub(crate) fn evict_unused_for(&self, max_age: Duration) -> std::io::Result<usize> {
        self.evict(|_, fingerprint, age| fingerprint != self.fingerprint || age >= max_age)
    }

    fn evict(&self, remove: impl Fn(&str, &str, Duration) -> bool) -> std::io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let meta = entry.metadata()?;
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            let gone = if name.starts_with(".tmp-") {
                age >= STALE_TEMP
            } else if let Some((sha, fingerprint)) = name.strip_suffix(".cwasm").and_then(|s| s.split_once('-')) {
                remove(sha, fingerprint, age)
            } else {
                false
            };
            if gone && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Where the key of the cache in `dir` lives: beside it, not in it.
fn key_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "artifacts".into());
    name.push(".key");
    dir.with_file_name(name)
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |error| EngineError::CacheDir { path: path.to_owned(), error }
}

fn insecure(path: &Path, reason: String) -> EngineError {
    EngineError::CacheDirInsecure { path: path.to_owned(), reason }
}

/// Create `dir` with mode 0700 (its parents as usual), unless it exists.
fn create_private_dir(dir: &Path) -> Result<(), EngineError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(cache_err(dir))?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cache_err(dir)(e)),
    }
}

/// Refuse `path` unless it is owned by this user and nobody else may write
/// it. A directory readable by others is tightened to 0700 (an older Weir
/// created it with the umask).
fn check_private(path: &Path, is_dir: bool) -> Result<(), EngineError> {
    let meta = fs::metadata(path).map_err(cache_err(path))?;
    if is_dir && !meta.is_dir() {
        return Err(insecure(path, "not a directory".into()));
    }
    check_owner_and_mode(&meta, 0o022).map_err(|reason| insecure(path, reason))?;
    #[cfg(unix)]
    if is_dir && meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(cache_err(path))?;
    }
    Ok(())
}

/// Whether `meta` is owned by the effective user and has none of `forbidden`
/// mode bits.
#[cfg(unix)]
fn check_owner_and_mode(meta: &fs::Metadata, forbidden: u32) -> Result<(), String> {
    let me = effective_uid();
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not by this user (uid {me})", meta.uid()));
    }
    if meta.mode() & forbidden != 0 {
        return Err(format!("mode {:o} lets others write it", meta.mode() & 0o7777));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_and_mode(_meta: &fs::Metadata, _forbidden: u32) -> Result<(), String> {
    Ok(())
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail. The crate denies
    // unsafe code; this call is one of its exceptions.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

fn open_no_follow(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    options.custom_flags(libc::O_NOFOLLOW);
    options.open(path)
}

fn create_exclusive(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    options.open(path)
}

/// The cache key: 32 random bytes in `path`, created with mode 0600 on first
/// use; refused when it is not this user's own, readable by others, or not
/// 32 bytes.
fn load_or_create_key(path: &Path) -> Result<[u8; 32], EngineError> {
    match create_exclusive(path) {
        Ok(mut file) => {
            let key: [u8; 32] = rand::random();
            file.write_all(&key).and_then(|()| file.sync_all()).map_err(cache_err(path))?;
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(cache_err(path)(e)),
    }
    let mut file = open_no_follow(path).map_err(|e| insecure(path, format!("cannot open the cache key: {e}")))?;
    let meta = file.metadata().map_err(cache_err(path))?;
    if !meta.is_file() {
        return Err(insecure(path, "the cache key is not a regular file".into()));
    }
    check_owner_and_mode(&meta, 0o077).map_err(|reason| insecure(path, format!("the cache key is {reason}")))?;
    let mut key = [0u8; 32];
    let mut rest = Vec::new();
    file.read_exact(&mut key)
        .and_then(|()| file.read_to_end(&mut rest))
        .map_err(|e| insecure(path, format!("the cache key is not 32 bytes: {e}")))?;
    if !rest.is_empty() {
        return Err(insecure(path, "the cache key is not 32 bytes".into()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_1() {
        let tag = hmac_sha256(&[0x0b; 20], &[b"Hi ", b"There"]);
        assert_eq!(crate::engine::hex(&tag), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_is_private_and_a_shared_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let cache = ArtifactCache::open(dir.clone(), "f".into()).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(key_path(&dir)).unwrap().mode() & 0o777, 0o600);
        // The same key on the next open.
        assert_eq!(ArtifactCache::open(dir.clone(), "f".into()).unwrap().key, cache.key);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ArtifactCache::open(dir.clone(), "f".into()).unwrap_err();
        assert_eq!(err.code(), "cache_dir_insecure", "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ArtifactCache::open(dir.clone(), "f".into()).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700, "tightened");

        fs::set_permissions(key_path(&dir), fs::Permissions::from_mode(0o644)).unwrap();
        let err = ArtifactCache::open(dir, "f".into()).unwrap_err();
        assert_eq!(err.code(), "cache_dir_insecure", "{err}");
    }
}
