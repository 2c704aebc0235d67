//! The filter as a Fluvio SmartModule: keeps the record when the order
//! passes, drops it otherwise; a payload that is not an order is an error.

#[path = "../../logic.rs"]
#[allow(dead_code)]
mod logic;

use fluvio_smartmodule::{Result, SmartModuleRecord, eyre, smartmodule};

#[smartmodule(filter)]
pub fn filter(record: &SmartModuleRecord) -> Result<bool> {
    Ok(logic::filter(record.value.as_ref()).map_err(|e| eyre!(e))?.is_some())
}
