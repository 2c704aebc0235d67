//! The compiled-artifact cache: serialized modules on disk, keyed by the
//! module's sha256 and the engine's compatibility fingerprint, so a restart
//! (or a second `weir exec`) skips Cranelift.
//!
//! # Trust
//!
//! Loading a serialized artifact runs native code that wasmtime produced; the
//! cache directory must be writable only by the user running Weir. The key
//! includes the engine fingerprint, so artifacts from another wasmtime
//! version or configuration are never used; an artifact that fails to load
//! is recompiled and replaced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Module;

/// A directory of `<sha256>-<fingerprint>.cwasm` files.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, fingerprint: String) -> Self {
        Self { dir, fingerprint }
    }

    pub(crate) fn path_for(&self, sha256_hex: &str) -> PathBuf {
        self.dir.join(format!("{sha256_hex}-{}.cwasm", self.fingerprint))
    }

    /// The cached module, if a usable artifact exists.
    pub(crate) fn get(&self, engine: &wasmtime::Engine, sha256_hex: &str) -> Option<Module> {
        let path = self.path_for(sha256_hex);
        if !path.is_file() {
            return None;
        }
        // Read into memory rather than `deserialize_file`: that one maps the
        // file, and anyone truncating it meanwhile (another process
        // rewriting the cache, a full disk) would kill us with SIGBUS.
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read compiled artifact");
                return None;
            }
        };
        // SAFETY: the file was written by `put` below from `Module::serialize`
        // of this engine configuration (the fingerprint is in the name), in a
        // directory the operator owns (see the module docs). wasmtime checks
        // the header and the compatibility hash again and errors on mismatch.
        // The crate denies unsafe code; loading a precompiled artifact is one
        // of its two exceptions.
        #[allow(unsafe_code)]
        let loaded = unsafe { Module::deserialize(engine, &bytes) };
        match loaded {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled artifact");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Store `module`'s artifact. Failure only costs a recompile next time,
    /// so it is logged, not returned.
    pub(crate) fn put(&self, module: &Module, sha256_hex: &str) {
        if let Err(e) = self.try_put(module, sha256_hex) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write compiled artifact to the cache");
        }
    }

    fn try_put(&self, module: &Module, sha256_hex: &str) -> std::io::Result<()> {
        let bytes = module.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = self.path_for(sha256_hex);
        // Write then rename, so a reader never sees half an artifact.
        let tmp = tmp_path(&path);
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}
