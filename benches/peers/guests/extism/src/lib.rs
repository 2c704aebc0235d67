//! The filter and the order validator as one Extism plug-in. Input: the
//! event's payload (JSON bytes). `filter` returns the payload when the order
//! passes and nothing when it is dropped; `validate` returns the
//! `orders.order.validated` payload, or fails with the rejection's reason.

#[path = "../../logic.rs"]
mod logic;

use extism_pdk::{Error, FnResult, plugin_fn};

#[plugin_fn]
pub fn filter(payload: Vec<u8>) -> FnResult<Vec<u8>> {
    match logic::filter(&payload).map_err(Error::msg)? {
        Some(_topic) => Ok(payload),
        None => Ok(Vec::new()),
    }
}

#[plugin_fn]
pub fn validate(payload: Vec<u8>) -> FnResult<Vec<u8>> {
    let (validated, line) = logic::validate(&payload).map_err(Error::msg)?;
    // Weir's validator logs this line through its host; so does this one.
    extism_pdk::debug!("{line}");
    Ok(validated)
}
