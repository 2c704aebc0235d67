//! A plugin written from `docs/abi.md` alone: no SDK, no serde, no bincode.
//! It proves the document is complete — every byte below follows a rule
//! written there.
//!
//! Behaviour: each event is echoed on `raw.event.echoed` with the same key and
//! payload, schema version and content type, plus a header
//! `raw-echo-of: <subscription>#<attempt>`, and one info log line. An event
//! whose key is `reject-me` is rejected with the reason `asked to reject`.

#![allow(unsafe_code)]

/// A decoding failure: where and what.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// A cursor over the encoded bytes (docs/abi.md, "Encoding").
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Start reading at the beginning of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed("length overflow"))?;
        let out = self.bytes.get(self.pos..end).ok_or(Malformed("unexpected end of input"))?;
        self.pos = end;
        Ok(out)
    }

    /// One raw byte (`u8`, option tags).
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned varint: < 251 is the value; 251/252/253 announce a
    /// little-endian u16/u32/u64.
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        let first = self.u8()?;
        Ok(match first {
            0..=250 => u64::from(first),
            251 => u64::from(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| Malformed("u16"))?)),
            252 => u64::from(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Malformed("u32"))?)),
            253 => u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Malformed("u64"))?),
            _ => return Err(Malformed("varint marker out of range")),
        })
    }

    /// A signed varint: zigzag (0, -1, 1, -2 … → 0, 1, 2, 3 …) then varint.
    pub fn zigzag(&mut self) -> Result<i64, Malformed> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed("length"))?;
        self.take(len)
    }

    /// A length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<&'a str, Malformed> {
        core::str::from_utf8(self.bytes()?).map_err(|_| Malformed("string is not UTF-8"))
    }

    /// An option tag: 0 = none, 1 = some.
    pub fn option(&mut self) -> Result<bool, Malformed> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("option tag is not 0 or 1")),
        }
    }

    /// An event id: 16 raw bytes.
    pub fn id(&mut self) -> Result<[u8; 16], Malformed> {
        self.take(16)?.try_into().map_err(|_| Malformed("id"))
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// The parts of a delivery this plugin uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Event id.
    pub id: [u8; 16],
    /// Event topic.
    pub topic: &'a str,
    /// Event key.
    pub key: Option<&'a str>,
    /// Schema version.
    pub schema_version: u64,
    /// Content type.
    pub content_type: &'a str,
    /// Correlation id.
    pub correlation_id: Option<[u8; 16]>,
    /// Payload.
    pub payload: &'a [u8],
    /// Subscription.
    pub subscription: &'a str,
    /// Attempt.
    pub attempt: u64,
}

/// Decode a delivery, field by field in the documented order.
///
/// # Errors
///
/// [`Malformed`] naming the first problem.
pub fn parse(input: &[u8]) -> Result<Parsed<'_>, Malformed> {
    let mut r = Reader::new(input);
    let id = r.id()?;
    let topic = r.string()?;
    let _source = r.string()?;
    let key = if r.option()? { Some(r.string()?) } else { None };
    let schema_version = r.varint()?;
    let _time = r.zigzag()?;
    let content_type = r.string()?;
    for _ in 0..r.varint()? {
        let _name = r.string()?;
        let _value = r.string()?;
    }
    let _idempotency_key = r.string()?;
    let correlation_id = if r.option()? { Some(r.id()?) } else { None };
    let _causation_id = if r.option()? { Some(r.id()?) } else { None };
    let payload = r.bytes()?;
    let subscription = r.string()?;
    let attempt = r.varint()?;
    if !r.done() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(Parsed { id, topic, key, schema_version, content_type, correlation_id, payload, subscription, attempt })
}

/// Append an unsigned varint.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xFFFF => {
            out.push(251);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(252);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        _ => {
            out.push(253);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Append a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The encoded outcome for one delivery.
pub fn respond(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let d = match parse(input) {
        Ok(d) => d,
        Err(Malformed(why)) => {
            out.push(2); // Outcome::Reject
            put_bytes(&mut out, format!("raw-abi could not parse the delivery: {why}").as_bytes());
            return out;
        }
    };
    if d.key == Some("reject-me") {
        out.push(2); // Outcome::Reject
        put_bytes(&mut out, b"asked to reject");
        return out;
    }
    out.push(0); // Outcome::Ok
    put_varint(&mut out, 1); // one emit
    put_bytes(&mut out, b"raw.event.echoed"); // topic
    match d.key {
        Some(k) => {
            out.push(1);
            put_bytes(&mut out, k.as_bytes());
        }
        None => out.push(0),
    }
    put_varint(&mut out, d.schema_version);
    put_bytes(&mut out, d.content_type.as_bytes());
    put_varint(&mut out, 1); // one header
    put_bytes(&mut out, b"raw-echo-of");
    put_bytes(&mut out, format!("{}#{}", d.subscription, d.attempt).as_bytes());
    out.push(0); // idempotency_key: none, the host derives one
    out.push(1); // correlation_id: some
    out.extend_from_slice(&d.correlation_id.unwrap_or(d.id));
    out.push(1); // causation_id: some
    out.extend_from_slice(&d.id);
    put_bytes(&mut out, d.payload);
    let _ = d.topic;
    out
}

#[cfg(target_arch = "wasm32")]
mod exports {
    use std::alloc::{Layout, alloc, dealloc};

    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        fn log(level: i32, ptr: i32, len: i32);
    }

    #[unsafe(no_mangle)]
    extern "C" fn weir_abi_version() -> i32 {
        1
    }

    #[unsafe(no_mangle)]
    extern "C" fn weir_alloc(len: i32) -> i32 {
        match Layout::from_size_align(len as usize, 1) {
            // SAFETY: non-zero size checked.
            Ok(layout) if len > 0 => unsafe { alloc(layout) as usize as i32 },
            _ => 0,
        }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn weir_dealloc(ptr: i32, len: i32) {
        if let (Ok(layout), true) = (Layout::from_size_align(len as usize, 1), len > 0 && ptr != 0) {
            // SAFETY: buffers come from weir_alloc or weir_handle with layout (len, 1).
            unsafe { dealloc(ptr as usize as *mut u8, layout) }
        }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn weir_handle(ptr: i32, len: i32) -> i64 {
        // SAFETY: the host's input buffer, valid during the call.
        let input = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
        let line = b"raw-abi handling one event";
        // SAFETY: the line is a live static buffer.
        unsafe { log(2, line.as_ptr() as i32, line.len() as i32) };
        let out = super::respond(input).into_boxed_slice();
        let out_len = out.len() as u64;
        let out_ptr = Box::into_raw(out) as *mut u8 as usize as u64;
        ((out_ptr << 32) | out_len) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_documented_thresholds() {
        let mut out = Vec::new();
        for v in [0u64, 250, 251, 65_535, 65_536, u64::from(u32::MAX) + 1] {
            out.clear();
            put_varint(&mut out, v);
            assert_eq!(Reader::new(&out).varint(), Ok(v));
        }
        out.clear();
        put_varint(&mut out, 251);
        assert_eq!(out, vec![251, 251, 0]);
    }

    #[test]
    fn zigzag_decodes_negative_numbers() {
        assert_eq!(Reader::new(&[3]).zigzag(), Ok(-2));
        assert_eq!(Reader::new(&[4]).zigzag(), Ok(2));
    }

    #[test]
    fn garbage_is_rejected_in_the_outcome() {
        assert_eq!(respond(b"\x01")[0], 2);
    }
}
