//! A hand-written decoder of one message type, [`Delivery`]: the one every
//! handler invocation decodes in the guest. It reads the same bytes as the
//! serde path of [`encoding::decode`](crate::encoding::decode) (bincode's
//! standard configuration, docs/abi.md) and builds the same value, without
//! serde's per-field visitor calls: straight reads of varints, strings and
//! byte strings from the slice. The wire format does not change.
//!
//! Tests check both decoders against each other: equal values on every
//! encoding, and the same refusals on truncated and corrupted ones.
//!
//! The host uses the same reader for the events of its log (stored in the
//! same encoding, `docs/operations.md`), and the writer here for the events
//! it stores and the deliveries it hands to guests: both are per-event work
//! on the host's hottest path (issue 18), and tests check the writer's bytes
//! against serde's.

use crate::encoding::DecodeError;
use crate::{Delivery, DeliveryRef, Event, EventId, Header};

/// bincode's varint markers: a value below 251 is its own byte; 251, 252 and
/// 253 introduce a little-endian u16, u32 and u64.
const U16_MARKER: u8 = 251;
const U32_MARKER: u8 = 252;
const U64_MARKER: u8 = 253;

struct Reader<'a> {
    bytes: &'a [u8],
}

fn err(what: &str) -> DecodeError {
    DecodeError::new(format!("malformed message: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(err("unexpected end of input"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A varint of at most 64 bits (`wide`) or 32 bits.
    fn varint(&mut self, wide: bool) -> Result<u64, DecodeError> {
        match self.byte()? {
            b @ 0..=250 => Ok(u64::from(b)),
            U16_MARKER => Ok(u64::from(u16::from_le_bytes(self.array()?))),
            U32_MARKER => Ok(u64::from(u32::from_le_bytes(self.array()?))),
            U64_MARKER if wide => Ok(u64::from_le_bytes(self.array()?)),
            other => Err(err(&format!("invalid integer marker {other}"))),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        // A 32-bit varint never carries more than 32 bits.
        u32::try_from(self.varint(false)?).map_err(|_| err("u32 out of range"))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let n = self.varint(true)?;
        // Zigzag: even numbers are the non-negative values.
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint(true)?;
        usize::try_from(n).map_err(|_| err("length out of range"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.len()?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        text(self.bytes()?).map(str::to_owned)
    }

    fn is_some(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(err(&format!("invalid option tag {other}"))),
        }
    }

    fn option_string(&mut self) -> Result<Option<String>, DecodeError> {
        if self.is_some()? { self.string().map(Some) } else { Ok(None) }
    }

    fn option_id(&mut self) -> Result<Option<EventId>, DecodeError> {
        if self.is_some()? { Ok(Some(EventId(self.array()?))) } else { Ok(None) }
    }

    fn headers(&mut self) -> Result<Vec<Header>, DecodeError> {
        let count = self.len()?;
        // A header takes at least two bytes on the wire: a lying count
        // cannot make this allocate more than the input justifies.
        let mut headers = Vec::with_capacity(count.min(self.bytes.len() / 2));
        for _ in 0..count {
            crate::encoding::charge(core::mem::size_of::<Header>()).map_err(|e| err(&e.to_string()))?;
            let name = self.string()?;
            let value = self.string()?;
            headers.push(Header { name, value });
        }
        Ok(headers)
    }

    fn event(&mut self) -> Result<Event, DecodeError> {
        // Field order is the wire order: see `Event`.
        Ok(Event {
            id: EventId(self.array()?),
            topic: self.string()?,
            source: self.string()?,
            key: self.option_string()?,
            schema_version: self.u32()?,
            time: self.i64()?,
            content_type: self.string()?,
            headers: self.headers()?,
            idempotency_key: self.string()?,
            correlation_id: self.option_id()?,
            causation_id: self.option_id()?,
            payload: self.bytes()?.to_vec(),
        })
    }
}

/// Decode a [`Delivery`] that fills `bytes` exactly: the value
/// [`encoding::decode`](crate::encoding::decode) gives, faster.
///
/// # Errors
///
/// [`DecodeError`] on malformed input, trailing bytes, or a message longer
/// than [`DECODE_LIMIT`](crate::encoding::DECODE_LIMIT).
pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery, DecodeError> {
    if bytes.len() > crate::encoding::DECODE_LIMIT {
        return Err(err("message over the decode limit"));
    }
    let mut r = Reader { bytes };
    let event = r.event()?;
    let subscription = r.string()?;
    let attempt = r.u32()?;
    if !r.bytes.is_empty() {
        return Err(err(&format!("{} trailing bytes after the message", r.bytes.len())));
    }
    Ok(Delivery { event, subscription, attempt })
}

/// Decode an [`Event`] that fills `bytes` exactly: the value
/// [`encoding::decode`](crate::encoding::decode) gives, faster. No length
/// limit: nothing allocated exceeds the input's own size.
///
/// # Errors
///
/// [`DecodeError`] on malformed input or trailing bytes.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader { bytes };
    let event = r.event()?;
    if !r.bytes.is_empty() {
        return Err(err(&format!("{} trailing bytes after the message", r.bytes.len())));
    }
    Ok(event)
}

/// The topic of an encoded [`Event`], borrowed, without decoding the rest:
/// the id (16 bytes) and the topic lead the wire order.
///
/// # Errors
///
/// [`DecodeError`] when no topic decodes there.
pub fn event_topic(bytes: &[u8]) -> Result<&str, DecodeError> {
    let mut r = Reader { bytes };
    r.take(16)?;
    text(r.bytes()?)
}

/// The topic and key of an encoded [`Event`], borrowed, without decoding
/// the rest (they lead the wire order, with only the source between).
///
/// # Errors
///
/// [`DecodeError`] when they do not decode there.
pub fn event_topic_and_key(bytes: &[u8]) -> Result<(&str, Option<&str>), DecodeError> {
    let mut r = Reader { bytes };
    r.take(16)?;
    let topic = text(r.bytes()?)?;
    r.bytes()?;
    let key = if r.is_some()? { Some(text(r.bytes()?)?) } else { None };
    Ok((topic, key))
}

fn text(bytes: &[u8]) -> Result<&str, DecodeError> {
    core::str::from_utf8(bytes).map_err(|e| err(&format!("invalid UTF-8: {e}")))
}

/// Append `event`'s encoding to `out`: the bytes
/// [`encoding::encode_into`](crate::encoding::encode_into) writes for it.
pub fn encode_event_into(event: &Event, out: &mut Vec<u8>) {
    put_event(out, event, &|_| false);
}

/// The encoding of `event` with the headers `hide` names left out.
fn put_event(out: &mut Vec<u8>, event: &Event, hide: &dyn Fn(&str) -> bool) {
    out.extend_from_slice(&event.id.0);
    put_str(out, &event.topic);
    put_str(out, &event.source);
    put_option_str(out, event.key.as_deref());
    put_varint(out, u64::from(event.schema_version));
    // Zigzag, as bincode writes signed integers.
    put_varint(out, ((event.time << 1) ^ (event.time >> 63)) as u64);
    put_str(out, &event.content_type);
    let shown = || event.headers.iter().filter(|h| !hide(&h.name));
    put_varint(out, shown().count() as u64);
    for header in shown() {
        put_str(out, &header.name);
        put_str(out, &header.value);
    }
    put_str(out, &event.idempotency_key);
    put_option_id(out, event.correlation_id);
    put_option_id(out, event.causation_id);
    put_bytes(out, &event.payload);
}

/// Append `delivery`'s encoding to `out`: the bytes
/// [`encoding::encode_into`](crate::encoding::encode_into) writes for it.
pub fn encode_delivery_into(delivery: DeliveryRef<'_>, out: &mut Vec<u8>) {
    encode_delivery_hiding(delivery, out, &|_| false);
}

/// Append `delivery`'s encoding to `out` with the event's headers `hide`
/// names left out: the bytes of the delivery of the event without them,
/// written without copying the event (the host keeps its own bookkeeping
/// headers from handlers this way).
pub fn encode_delivery_hiding(delivery: DeliveryRef<'_>, out: &mut Vec<u8>, hide: &dyn Fn(&str) -> bool) {
    put_event(out, delivery.event, hide);
    put_str(out, delivery.subscription);
    put_varint(out, u64::from(delivery.attempt));
}

fn put_varint(out: &mut Vec<u8>, n: u64) {
    if n < u64::from(U16_MARKER) {
        out.push(n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(U16_MARKER);
        out.extend_from_slice(&n.to_le_bytes());
    } else if let Ok(n) = u32::try_from(n) {
        out.push(U32_MARKER);
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(U64_MARKER);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_option_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_option_id(out: &mut Vec<u8>, id: Option<EventId>) {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            out.extend_from_slice(&id.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::encoding::{decode, encode};

    fn delivery(
        key: Option<String>,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
        time: i64,
        numbers: (u32, u32),
        ids: (u128, Option<u128>, Option<u128>),
        text: String,
    ) -> Delivery {
        Delivery {
            event: Event {
                id: EventId::from_u128(ids.0),
                topic: format!("orders.order.{text}"),
                source: text.clone(),
                key,
                schema_version: numbers.0,
                time,
                content_type: "application/json".into(),
                headers: headers.into_iter().map(|(n, v)| Header::new(n, v)).collect(),
                idempotency_key: text.repeat(3),
                correlation_id: ids.1.map(EventId::from_u128),
                causation_id: ids.2.map(EventId::from_u128),
                payload,
            },
            subscription: format!("p/{text}"),
            attempt: numbers.1,
        }
    }

    fn any_delivery() -> impl Strategy<Value = Delivery> {
        (
            proptest::option::of(".{0,300}"),
            proptest::collection::vec((".{0,8}", ".{0,300}"), 0..3),
            proptest::collection::vec(any::<u8>(), 0..70_000),
            any::<i64>(),
            (any::<u32>(), any::<u32>()),
            (any::<u128>(), proptest::option::of(any::<u128>()), proptest::option::of(any::<u128>())),
            ".{0,20}",
        )
            .prop_map(|(k, h, p, t, n, i, s)| delivery(k, h, p, t, n, i, s))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn decodes_what_serde_decodes(d in any_delivery()) {
            let bytes = encode(&d).unwrap();
            prop_assert_eq!(decode_delivery(&bytes).unwrap(), d.clone());
            let event = encode(&d.event).unwrap();
            prop_assert_eq!(decode_event(&event).unwrap(), d.event.clone());
            prop_assert_eq!(event_topic(&event).unwrap(), d.event.topic.as_str());
            let (topic, key) = event_topic_and_key(&event).unwrap();
            prop_assert_eq!((topic, key), (d.event.topic.as_str(), d.event.key.as_deref()));
        }

        /// The writer's bytes are serde's, for events and deliveries.
        #[test]
        fn encodes_what_serde_encodes(d in any_delivery()) {
            let mut event = vec![7];
            encode_event_into(&d.event, &mut event);
            prop_assert_eq!(&event[1..], &encode(&d.event).unwrap()[..]);
            let mut delivery = Vec::new();
            let borrowed = DeliveryRef { event: &d.event, subscription: &d.subscription, attempt: d.attempt };
            encode_delivery_into(borrowed, &mut delivery);
            prop_assert_eq!(delivery, encode(&d).unwrap());
            // Hiding headers by name writes the delivery of the event
            // without them.
            let hidden = d.event.headers.first().map(|h| h.name.clone());
            let hide = |name: &str| hidden.as_deref() == Some(name);
            let mut without = d.clone();
            without.event.headers.retain(|h| !hide(&h.name));
            let mut delivery = Vec::new();
            encode_delivery_hiding(borrowed, &mut delivery, &hide);
            prop_assert_eq!(delivery, encode(&without).unwrap());
        }

        /// Truncated or corrupted encodings: both decoders refuse the same
        /// ones, and agree on the value where both accept.
        #[test]
        fn agrees_with_serde_on_damaged_input(
            d in any_delivery(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            flips_again in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let bytes = damaged(encode(&d).unwrap(), &flips);
            agree(&bytes, cut, decode::<Delivery>, decode_delivery)?;
            // The event alone: its encoding is the delivery's prefix.
            let event = damaged(encode(&d.event).unwrap(), &flips_again);
            agree(&event, cut, decode::<Event>, decode_event)?;
        }
    }

    /// `bytes` with the bytes `flips` picks set to its values.
    fn damaged(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)]) -> Vec<u8> {
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        bytes
    }

    /// On `bytes` and on its prefix `cut` picks, serde's decoder and the
    /// hand-written one refuse the same inputs and agree where both accept.
    fn agree<T: PartialEq + core::fmt::Debug>(
        bytes: &[u8],
        cut: prop::sample::Index,
        serde: impl Fn(&[u8]) -> Result<T, DecodeError>,
        fast: impl Fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<(), TestCaseError> {
        for input in [bytes, &bytes[..cut.index(bytes.len() + 1)]] {
            let (serde, fast) = (serde(input), fast(input));
            prop_assert_eq!(
                serde.is_ok(),
                fast.is_ok(),
                "serde {:?} fast {:?}",
                serde.as_ref().err(),
                fast.as_ref().err()
            );
            if let (Ok(a), Ok(b)) = (serde, fast) {
                prop_assert_eq!(a, b);
            }
        }
        Ok(())
    }

    #[test]
    fn wide_integer_forms_decode_as_serde_does() {
        // bincode accepts a value in a wider form than needed (251 + u16 for
        // 5); the attempt's u32 refuses the u64 form; trailing bytes fail.
        let d = delivery(None, vec![], vec![1, 2, 3], -5, (1, 5), (7, None, None), "x".into());
        let bytes = encode(&d).unwrap();
        let mut wide = bytes.clone();
        let last = wide.len() - 1;
        assert_eq!(wide[last], 5);
        wide.splice(last.., [U16_MARKER, 5, 0]);
        assert_eq!(decode_delivery(&wide).unwrap(), decode::<Delivery>(&wide).unwrap());
        let mut too_wide = bytes.clone();
        too_wide.splice(last.., [U64_MARKER, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert!(decode::<Delivery>(&too_wide).is_err());
        assert!(decode_delivery(&too_wide).is_err());
        let mut trailing = bytes;
        trailing.push(0);
        assert!(decode_delivery(&trailing).unwrap_err().to_string().contains("trailing"));
    }
}
