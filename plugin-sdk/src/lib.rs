#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod aggregate;
mod context;
mod emit;
mod error;
mod event;
pub mod log;
pub mod state;
pub mod testing;
pub mod timer;
pub mod upcast;

#[doc(hidden)]
pub mod __private;

pub use aggregate::{Aggregate, CommandContext, Rejection, decode_command};
pub use context::{Config, Context};
pub use emit::Emit;
pub use error::HandlerError;
pub use event::EventExt;
pub use state::State;
/// The wire types and encoding shared with the host, re-exported.
pub use weir_abi as abi;
pub use weir_abi::{Event, EventId, Header, LogLevel, PluginDescription};
/// Marks an `impl Aggregate for T` and generates the Wasm exports of an
/// aggregate: `weir_decide` and `weir_evolve` beside the required ones
/// (its `weir_handle` rejects every delivery). Optional arguments describe
/// the plugin as for [`handler`]: `name`, `version`, `description`.
pub use weir_sdk_macros::aggregate;
/// Marks the one handler function of a plugin and generates its Wasm exports.
///
/// The function must have the signature
/// `fn(&Event, &mut Context) -> Result<Vec<Emit>, HandlerError>`. Optional
/// arguments describe the plugin: `name`, `version`, `description` (strings,
/// defaulting to the crate's package name, version and description),
/// `topics = ["orders.order.*"]` and `schema_versions = [1, 2]`.
pub use weir_sdk_macros::handler;
/// Marks the plugin's optional init hook: `fn(&Config) -> Result<(), String>`,
/// called once per instance with the plugin configuration from the runtime's
/// config file, before any event.
pub use weir_sdk_macros::init;
/// Marks the one upcaster function of a plugin and generates its Wasm
/// exports: `weir_upcast` beside the required ones (its `weir_handle`
/// rejects every delivery). The function must have the signature
/// `fn(&Event) -> Result<Vec<Upcast>, String>`; the arguments
/// `topic = "…"`, `from = N` and `to = M` are required (the plugin
/// describes itself with them, and the host refuses a module whose
/// versions differ from its `[[upcasters]]` entry), `name`, `version` and
/// `description` optional.
pub use weir_sdk_macros::upcaster;

/// Everything a handler usually needs, in one `use`.
pub mod prelude {
    pub use crate::upcast::{Upcast, UpcastExt};
    pub use crate::upcaster;
    pub use crate::{Aggregate, CommandContext, Rejection, aggregate};
    pub use crate::{Config, Context, Emit, Event, EventExt, EventId, HandlerError, Header, handler, init};
    pub use crate::{debug, error, info, trace, warn};
}
