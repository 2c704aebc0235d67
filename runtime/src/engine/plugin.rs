//! Loading a module into a [`Plugin`]: compile (through the artifact cache),
//! then check imports, exports and the ABI version before anything runs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{ExternType, InstancePre, Linker, Module, ValType};
use weir_abi::{ABI_VERSION, HOST_MODULE, PluginDescription, exports, imports};

use super::Engine;
use super::guest::Probe;
use super::host::{self, HostState};
use crate::error::LoadError;
use crate::names::ContentHash;

/// One import of a module, as `weir inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportInfo {
    /// Import module.
    pub module: String,
    /// Import name.
    pub name: String,
    /// Its type, e.g. `func(i32, i32, i32)`.
    pub ty: String,
}

/// One export of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name.
    pub name: String,
    /// Its type, e.g. `func(i32) -> i32` or `memory`.
    pub ty: String,
}

/// What the host learned about a plugin while loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Hex sha256 of the module bytes: the plugin's version identity.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: usize,
    /// The ABI version the module speaks.
    pub abi_version: u32,
    /// What `weir_describe` said, when exported.
    pub description: Option<PluginDescription>,
    /// Whether the module exports `weir_init`.
    pub has_init: bool,
    /// Imports.
    pub imports: Vec<ImportInfo>,
    /// Exports.
    pub exports: Vec<ExportInfo>,
    /// Whether the compiled code came from the artifact cache.
    pub from_cache: bool,
    /// Time spent compiling or loading the artifact.
    pub compile_time: Duration,
}

impl PluginInfo {
    /// Whether the module imports any `weir::state_*` function: a stateful
    /// handler, whose subscription lends it state on every invocation.
    #[must_use]
    pub fn uses_state(&self) -> bool {
        self.imports.iter().any(|i| i.module == HOST_MODULE && super::state::is_state_import(&i.name))
    }

    /// Whether the module exports `weir_decide` and `weir_evolve`: an
    /// aggregate, which decides commands on an entity type's streams.
    #[must_use]
    pub fn is_aggregate(&self) -> bool {
        self.exports.iter().any(|e| e.name == exports::DECIDE) && self.exports.iter().any(|e| e.name == exports::EVOLVE)
    }

    /// The plugin's name from its description, or `sha256[..12]`.
    #[must_use]
    pub fn name(&self) -> String {
        match &self.description {
            Some(d) if !d.name.is_empty() => d.name.clone(),
            _ => self.sha256.chars().take(12).collect(),
        }
    }
}

/// A compiled, validated plugin module. Cheap to clone. Instantiate it into
/// [`Handler`](crate::Handler)s with [`Plugin::handler`].
#[derive(Clone)]
pub struct Plugin {
    pub(super) inner: Arc<PluginInner>,
}

pub(super) struct PluginInner {
    pub(super) engine: Engine,
    pub(super) pre: InstancePre<HostState>,
    pub(super) info: PluginInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.inner.info).finish_non_exhaustive()
    }
}

const REQUIRED: [(&str, &str); 4] = [
    (exports::ABI_VERSION, "func() -> i32"),
    (exports::ALLOC, "func(i32) -> i32"),
    (exports::DEALLOC, "func(i32, i32)"),
    (exports::HANDLE, "func(i32, i32) -> i64"),
];
const OPTIONAL: [(&str, &str); 5] = [
    (exports::INIT, "func(i32, i32) -> i64"),
    (exports::DESCRIBE, "func() -> i64"),
    // An aggregate's (docs/abi.md): both or neither.
    (exports::DECIDE, "func(i32, i32) -> i64"),
    (exports::EVOLVE, "func(i32, i32) -> i64"),
    // An upcaster's (docs/abi.md §15).
    (exports::UPCAST, "func(i32, i32) -> i64"),
];
const LOG_TYPE: &str = "func(i32, i32, i32)";

/// `weir::log`, or one of the `weir::state_*` or `weir::timer_*` functions,
/// with its type.
fn is_allowed_import(import: &ImportInfo) -> bool {
    import.module == HOST_MODULE
        && ((import.name == imports::LOG && import.ty == LOG_TYPE)
            || super::state::IMPORT_TYPES.iter().any(|(name, ty)| import.name == *name && import.ty == *ty)
            || super::timer::IMPORT_TYPES.iter().any(|(name, ty)| import.name == *name && import.ty == *ty))
}

impl Engine {
    /// Read, compile and validate the module at `path`.
    ///
    /// # Errors
    ///
    /// See [`Engine::load`]; also [`LoadError::Io`].
    pub fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Io { path: path.to_owned(), error })?;
        self.load(&bytes)
    }

    /// Compile (or fetch from the artifact cache) and validate a module:
    /// only host imports, the required exports with their types, ABI version
    /// 1, and a decodable description. Nothing from the module runs before
    /// the imports are checked.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] whose [`code`](LoadError::code) names the problem.
    pub fn load(&self, bytes: &[u8]) -> Result<Plugin, LoadError> {
        check_magic(bytes)?;
        check_sizes(bytes, self.config())?;
        let sha256 = String::from(ContentHash::of(bytes));
        let started = Instant::now();
        let (module, from_cache) = self.compile(bytes, &sha256)?;
        let compile_time = started.elapsed();
        let (import_list, export_list) = describe_module(&module);

        let forbidden: Vec<String> = import_list
            .iter()
            .filter(|i| !is_allowed_import(i))
            .map(|i| format!("{}::{} ({})", i.module, i.name, i.ty))
            .collect();
        if !forbidden.is_empty() {
            return Err(LoadError::ForbiddenImport { imports: forbidden });
        }
        check_export(&export_list, "memory", "memory")?;
        // The version export is checked first: a module of another ABI may
        // have other exports, and "wrong version" is the useful message.
        check_export(&export_list, REQUIRED[0].0, REQUIRED[0].1)?;

        let mut linker: Linker<HostState> = Linker::new(self.wasmtime());
        host::define_host_functions(&mut linker)
            .map_err(|e| LoadError::InvalidModule { reason: format!("cannot link host functions: {e:#}") })?;
        let pre = linker.instantiate_pre(&module).map_err(|e| LoadError::InvalidModule { reason: format!("{e:#}") })?;

        let has_init = export_list.iter().any(|e| e.name == exports::INIT);
        let mut info = PluginInfo {
            sha256,
            size: bytes.len(),
            abi_version: 0,
            description: None,
            has_init,
            imports: import_list,
            exports: export_list,
            from_cache,
            compile_time,
        };

        // Probe instance with default limits: ask the version, then the rest.
        let mut probe = Probe::new(self, &pre).map_err(|error| LoadError::Sandbox { stage: "instantiate", error })?;
        let version = probe.abi_version().map_err(|error| LoadError::Sandbox { stage: "weir_abi_version", error })?;
        if u32::try_from(version).ok() != Some(ABI_VERSION) {
            return Err(LoadError::AbiMismatch { found: version, expected: ABI_VERSION });
        }
        info.abi_version = ABI_VERSION;
        for (name, ty) in &REQUIRED[1..] {
            check_export(&info.exports, name, ty)?;
        }
        for (name, ty) in OPTIONAL {
            if info.exports.iter().any(|e| e.name == name) {
                check_export(&info.exports, name, ty)?;
            }
        }
        let has = |name| info.exports.iter().any(|e| e.name == name);
        for (name, other) in [(exports::DECIDE, exports::EVOLVE), (exports::EVOLVE, exports::DECIDE)] {
            if has(name) && !has(other) {
                return Err(LoadError::BadExport {
                    name: other,
                    expected: "func(i32, i32) -> i64",
                    problem: format!("is missing while `{name}` is exported (an aggregate exports both)"),
                });
            }
        }
        if info.exports.iter().any(|e| e.name == exports::DESCRIBE) {
            let described = probe.describe().map_err(|error| LoadError::Sandbox { stage: "weir_describe", error })?;
            info.description = Some(bounded_description(described));
        }
        // Only a module that passed validation (imports, exports, version, description) is cached.
        if !info.from_cache
            && let Some(cache) = self.cache()
        {
            cache.put(&module, &info.sha256);
        }
        Ok(Plugin { inner: Arc::new(PluginInner { engine: self.clone(), pre, info }) })
    }

    fn compile(&self, bytes: &[u8], sha256: &str) -> Result<(Module, bool), LoadError> {
        if let Some(module) = self.cache().and_then(|c| c.get(self.wasmtime(), sha256)) {
            return Ok((module, true));
        }
        // One compile at a time: each may take hundreds of MB.
        let _compiling = self.compile_lock();
        let module =
            Module::new(self.wasmtime(), bytes).map_err(|e| LoadError::InvalidModule { reason: format!("{e:#}") })?;
        Ok((module, false))
    }
}

impl Plugin {
    /// What loading found out.
    #[must_use]
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }
}

/// A description with every plugin-chosen text escaped and cut to its
/// documented size (`text.rs`): the name becomes a metric label, a log field
/// and a column of `weir status`.
fn bounded_description(d: PluginDescription) -> PluginDescription {
    use super::text::{MAX_DESCRIBED_ITEMS, MAX_DESCRIPTION_BYTES, MAX_NAME_BYTES, MAX_VERSION_BYTES, bounded};
    PluginDescription {
        name: bounded(&d.name, MAX_NAME_BYTES),
        version: bounded(&d.version, MAX_VERSION_BYTES),
        description: bounded(&d.description, MAX_DESCRIPTION_BYTES),
        topics: d.topics.iter().take(MAX_DESCRIBED_ITEMS).map(|t| bounded(t, MAX_NAME_BYTES)).collect(),
        schema_versions: d.schema_versions.into_iter().take(MAX_DESCRIBED_ITEMS).collect(),
    }
}

fn check_magic(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm { reason: "the file does not start with the Wasm magic bytes `\\0asm`".into() });
    }
    if bytes[4..8] != [1, 0, 0, 0] {
        return Err(LoadError::NotWasm {
            reason: "not a core module (version field is not 1): components and other layers are not plugins".into(),
        });
    }
    Ok(())
}

/// The module's size and its largest function body against the engine's
/// limits, read with wasmparser before anything is compiled. A module that
/// does not parse is left to the compiler, which names the problem.
fn check_sizes(bytes: &[u8], config: &super::EngineConfig) -> Result<(), LoadError> {
    if bytes.len() > config.max_module_bytes {
        return Err(LoadError::ModuleTooLarge { size: bytes.len(), limit: config.max_module_bytes });
    }
    let mut index = 0;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return Ok(()) };
        if let wasmparser::Payload::CodeSectionEntry(body) = payload {
            let size = body.range().len();
            if size > config.max_function_bytes {
                return Err(LoadError::FunctionTooLarge { index, size, limit: config.max_function_bytes });
            }
            index += 1;
        }
    }
    Ok(())
}

fn check_export(exports: &[ExportInfo], name: &'static str, expected: &'static str) -> Result<(), LoadError> {
    match exports.iter().find(|e| e.name == name) {
        None => Err(LoadError::BadExport { name, expected, problem: "is missing".into() }),
        Some(e) if e.ty != expected => {
            Err(LoadError::BadExport { name, expected, problem: format!("has type `{}`", e.ty) })
        }
        Some(_) => Ok(()),
    }
}

/// Imports and exports of a compiled module, with readable types.
fn describe_module(module: &Module) -> (Vec<ImportInfo>, Vec<ExportInfo>) {
    let imports = module
        .imports()
        .map(|i| ImportInfo { module: i.module().to_owned(), name: i.name().to_owned(), ty: type_name(&i.ty()) })
        .collect();
    let exports = module.exports().map(|e| ExportInfo { name: e.name().to_owned(), ty: type_name(&e.ty()) }).collect();
    (imports, exports)
}

/// Imports and exports of raw module bytes, for `weir inspect` on a module
/// that failed validation (it must still compile).
///
/// # Errors
///
/// [`LoadError::NotWasm`] or [`LoadError::InvalidModule`].
pub fn inspect_imports_exports(engine: &Engine, bytes: &[u8]) -> Result<(Vec<ImportInfo>, Vec<ExportInfo>), LoadError> {
    check_magic(bytes)?;
    check_sizes(bytes, engine.config())?;
    let sha256 = String::from(ContentHash::of(bytes));
    let (module, _) = engine.compile(bytes, &sha256)?;
    Ok(describe_module(&module))
}

fn type_name(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let params: Vec<String> = f.params().map(|p| val_name(&p)).collect();
            let results: Vec<String> = f.results().map(|r| val_name(&r)).collect();
            match results.len() {
                0 => format!("func({})", params.join(", ")),
                1 => format!("func({}) -> {}", params.join(", "), results[0]),
                _ => format!("func({}) -> ({})", params.join(", "), results.join(", ")),
            }
        }
        ExternType::Memory(m) => {
            if m.is_64() {
                "memory64".into()
            } else {
                "memory".into()
            }
        }
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        _ => "other".into(),
    }
}

fn val_name(v: &ValType) -> String {
    match v {
        ValType::I32 => "i32".into(),
        ValType::I64 => "i64".into(),
        ValType::F32 => "f32".into(),
        ValType::F64 => "f64".into(),
        ValType::V128 => "v128".into(),
        ValType::Ref(_) => "ref".into(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
