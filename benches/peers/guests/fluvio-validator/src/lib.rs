//! The order validator as a Fluvio SmartModule `map`: the record becomes the
//! `orders.order.validated` payload under the same key; a rejected order is
//! an error (Fluvio stops the batch there and reports the record).

#[path = "../../logic.rs"]
#[allow(dead_code)]
mod logic;

use fluvio_smartmodule::{RecordData, Result, SmartModuleRecord, eyre, smartmodule};

#[smartmodule(map)]
pub fn map(record: &SmartModuleRecord) -> Result<(Option<RecordData>, RecordData)> {
    let (validated, line) = logic::validate(record.value.as_ref()).map_err(|e| eyre!(e))?;
    // A SmartModule has no log import: the line is formatted as in the
    // other two and dropped.
    std::hint::black_box(line);
    Ok((record.key.clone(), validated.into()))
}
