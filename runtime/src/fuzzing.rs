//! Entry points for the fuzz targets (`fuzz/`, see docs/security.md). Not a
//! stable API: each function takes hostile bytes and runs the host's own
//! decoding of one boundary on them. None may panic, abort, hang or
//! allocate without bound; results are dropped, since any answer, `Ok` or a
//! classified error, is a correct one.

use weir_abi::encoding::decode_with_budget;

use crate::DEFAULT_MAX_OUTPUT_BYTES;
use weir_abi::{InitOutcome, Outcome, PluginDescription};

use crate::{IdGenerator, Ingest};

/// The host's decoding of guest output: the first byte picks the message
/// (`Outcome` of `weir_handle`, `InitOutcome` of `weir_init`,
/// `PluginDescription` of `weir_describe`), the rest is what the guest
/// returned. Decoded as the host does: with a memory budget equal to the
/// output cap (`max_output_bytes`, at its default).
pub fn guest_output(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let budget = DEFAULT_MAX_OUTPUT_BYTES;
    match kind % 3 {
        0 => drop(decode_with_budget::<Outcome>(bytes, budget)),
        1 => drop(decode_with_budget::<InitOutcome>(bytes, budget)),
        _ => drop(decode_with_budget::<PluginDescription>(bytes, budget)),
    }
}

/// Ingest: the first byte picks the form (JSON envelope or batch,
/// CloudEvents structured, CloudEvents batch, CloudEvents binary mode). In
/// binary mode the input is `name: value` header lines, an empty line, then
/// the body.
pub fn ingest(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else { return };
    let ids = IdGenerator::new();
    let ingest = Ingest { ids: &ids, source: "weir:fuzz", max_payload_bytes: 1 << 20, schemas: None };
    match kind % 4 {
        0 => drop(ingest.json(bytes)),
        1 => drop(ingest.cloudevent(bytes)),
        2 => drop(ingest.cloudevent_batch(bytes)),
        _ => {
            let split = bytes.windows(2).position(|w| w == b"\n\n");
            let (head, body) = match split {
                Some(at) => (&bytes[..at], bytes[at + 2..].to_vec()),
                None => (bytes, Vec::new()),
            };
            let mut headers: Vec<(&str, &[u8])> = Vec::new();
            for line in head.split(|&b| b == b'\n') {
                let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
                let Ok(name) = std::str::from_utf8(&line[..colon]) else { continue };
                let value = &line[colon + 1..];
                headers.push((name, value.strip_prefix(b" ").unwrap_or(value)));
            }
            drop(ingest.cloudevent_binary(&headers, body));
        }
    }
}

/// The store's record decoding, for every table's value type: the first
/// byte picks the type.
pub fn store_record(data: &[u8]) {
    crate::store::fuzz_record(data);
}
