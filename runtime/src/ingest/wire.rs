//! The wire side of ingest: reading a request body into events without
//! building a whole `serde_json::Value` (typed, borrowed, size-checked as it
//! goes), the field limits, and the CloudEvents header decoding.

use super::*;

/// The limits on an event's fields other than its payload, the reserved
/// topic domains and the reserved header prefix.
pub(super) fn check_fields(index: usize, event: &Event) -> Result<(), IngestError> {
    if let Some(domain) = reserved_topic_domain(&event.topic) {
        return Err(IngestError::ReservedTopic { index, topic: event.topic.clone(), domain });
    }
    let over = |field: &str, size: usize, max: usize| {
        (size > max).then(|| IngestError::FieldTooLarge { index, field: field.to_owned(), size, max })
    };
    let fields = [
        over("source", event.source.len(), MAX_SOURCE_BYTES),
        over("key", event.key.as_ref().map_or(0, String::len), MAX_KEY_BYTES),
        over("idempotency_key", event.idempotency_key.len(), MAX_IDEMPOTENCY_KEY_BYTES),
        over("content_type", event.content_type.len(), MAX_CONTENT_TYPE_BYTES),
    ];
    if let Some(error) = fields.into_iter().flatten().next() {
        return Err(error);
    }
    if event.headers.len() > MAX_HEADERS {
        return Err(IngestError::TooManyHeaders { index, max: MAX_HEADERS });
    }
    let mut total = 0usize;
    for header in &event.headers {
        if header.name.len() >= RESERVED_HEADER_PREFIX.len()
            && header.name.as_bytes()[..RESERVED_HEADER_PREFIX.len()]
                .eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes())
        {
            return Err(IngestError::ReservedHeader { index, name: header.name.clone() });
        }
        let field = format!("headers.{}", header.name.chars().take(64).collect::<String>());
        if let Some(error) = over(&format!("{field} (its name)"), header.name.len(), MAX_HEADER_NAME_BYTES)
            .or_else(|| over(&field, header.value.len(), MAX_HEADER_VALUE_BYTES))
        {
            return Err(error);
        }
        total = total.saturating_add(header.name.len() + header.value.len());
    }
    if let Some(error) = over("headers", total, MAX_HEADERS_BYTES) {
        return Err(error);
    }
    Ok(())
}

/// The length `raw` JSON has without the whitespace between its tokens:
/// about the size of the payload it becomes, known before it is parsed.
pub(super) fn compact_len(raw: &str) -> usize {
    let (mut n, mut in_string, mut escaped) = (0usize, false, false);
    for &b in raw.as_bytes() {
        if in_string {
            n += 1;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            n += 1;
            in_string = b == b'"';
        }
    }
    n
}

/// A JSON payload, refused by its size before it is parsed (a payload of
/// `[0,0,…]` takes ~35 times its size as a JSON tree).
pub(super) fn parse_payload(index: usize, raw: &RawValue, max: usize) -> Result<Value, IngestError> {
    let size = compact_len(raw.get());
    if size > max {
        return Err(IngestError::TooLarge { index, size, max });
    }
    serde_json::from_str(raw.get()).map_err(|e| IngestError::Invalid { index, source: EnvelopeError::Json(e) })
}

thread_local! {
    /// Set when a header map or attribute object went over [`MAX_HEADERS`]
    /// while being parsed (serde's error cannot say which limit it was).
    pub(super) static HEADERS_OVER: Cell<bool> = const { Cell::new(false) };
}

/// An event in the JSON envelope, as parsed: [`JsonEvent`] with its payload
/// still JSON text (borrowed from the body, never copied) and its headers
/// bounded.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireEvent<'a> {
    #[serde(default)]
    id: Option<String>,
    topic: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "bounded_headers")]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    /// Present (even as `null`) or not.
    #[serde(default, borrow, deserialize_with = "present_raw")]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

impl WireEvent<'_> {
    pub(super) fn into_json(self, index: usize, max_payload: usize) -> Result<JsonEvent, IngestError> {
        let payload = match self.payload {
            None => None,
            Some(raw) => Some(parse_payload(index, raw, max_payload)?),
        };
        Ok(JsonEvent {
            id: self.id,
            topic: self.topic,
            source: self.source,
            key: self.key,
            schema_version: self.schema_version,
            time: self.time,
            content_type: self.content_type,
            headers: self.headers,
            idempotency_key: self.idempotency_key,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            payload,
            payload_base64: self.payload_base64,
        })
    }
}

pub(super) fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A header object of at most [`MAX_HEADERS`] entries.
pub(super) fn bounded_headers<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Headers;
    impl<'de> Visitor<'de> for Headers {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string header values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut headers = BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if headers.len() >= MAX_HEADERS && !headers.contains_key(&name) {
                    HEADERS_OVER.set(true);
                    return Err(de::Error::custom(format_args!("more than {MAX_HEADERS} headers")));
                }
                headers.insert(name, value);
            }
            Ok(headers)
        }
    }
    d.deserialize_map(Headers)
}

/// A structured CloudEvent's attributes, as JSON text each, at most
/// [`MAX_HEADERS`] + 16 of them.
pub(super) struct Attributes<'a>(pub(super) Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Attributes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Attributes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CloudEvent (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes<'de>, A::Error> {
                let mut attributes: Vec<(String, &'de RawValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    // A name given twice: the last value wins, as in a JSON object.
                    if let Some(slot) = attributes.iter_mut().find(|(n, _)| *n == name) {
                        slot.1 = value;
                        continue;
                    }
                    if attributes.len() >= MAX_HEADERS + 16 {
                        HEADERS_OVER.set(true);
                        return Err(de::Error::custom(format_args!("more than {} attributes", MAX_HEADERS + 16)));
                    }
                    attributes.push((name, value));
                }
                Ok(Attributes(attributes))
            }
        }
        d.deserialize_map(Object)
    }
}

/// Why [`batch`] failed.
pub(super) enum BatchError {
    /// More than [`MAX_EVENTS_PER_REQUEST`].
    TooMany,
    /// Item `index` could not be parsed; whether it had too many headers.
    Item(usize, serde_json::Error, bool),
    /// The body as a whole is not what was expected.
    Body(serde_json::Error),
}

impl BatchError {
    pub(super) fn into_ingest(self, item: impl FnOnce(usize, serde_json::Error) -> IngestError) -> IngestError {
        match self {
            Self::TooMany => IngestError::TooManyEvents { max: MAX_EVENTS_PER_REQUEST },
            Self::Item(index, _, true) => IngestError::TooManyHeaders { index, max: MAX_HEADERS },
            Self::Item(index, e, false) => item(index, e),
            Self::Body(e) => IngestError::Body(e.to_string()),
        }
    }
}

/// An array of up to [`MAX_EVENTS_PER_REQUEST`] `T` (or, with `single`,
/// one `T` as an object), parsed straight from `body`: past the limit the
/// parse stops, so a huge batch never lives in memory whole.
pub(super) fn batch<'de, T: Deserialize<'de>>(body: &'de [u8], single: bool) -> Result<Vec<T>, BatchError> {
    struct Items<'c, T> {
        single: bool,
        at: &'c Cell<Option<usize>>,
        too_many: &'c Cell<bool>,
        item: PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<'_, T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.single { "an event (a JSON object) or an array of events" } else { "a JSON array" })
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            loop {
                if items.len() == MAX_EVENTS_PER_REQUEST {
                    if seq.next_element::<IgnoredAny>()?.is_some() {
                        self.too_many.set(true);
                        return Err(de::Error::custom("too many events"));
                    }
                    return Ok(items);
                }
                self.at.set(Some(items.len()));
                match seq.next_element::<T>()? {
                    Some(item) => items.push(item),
                    None => {
                        self.at.set(None);
                        return Ok(items);
                    }
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            if !self.single {
                return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
            }
            self.at.set(Some(0));
            let item = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
            self.at.set(None);
            Ok(vec![item])
        }
    }
    let (at, too_many) = (Cell::new(None), Cell::new(false));
    HEADERS_OVER.set(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_any(Items { single, at: &at, too_many: &too_many, item: PhantomData })
        .and_then(|items| de.end().map(|()| items));
    parsed.map_err(|e| {
        if too_many.get() {
            BatchError::TooMany
        } else if let Some(index) = at.get() {
            BatchError::Item(index, e, HEADERS_OVER.take())
        } else {
            BatchError::Body(e)
        }
    })
}

/// Decode one binary-mode `ce-*` header value (CloudEvents HTTP binding
/// §3.1.3.2): a value that starts with `"` must be an RFC 7230 quoted string,
/// whose quotes are removed and backslash escapes resolved; then every `%xy`
/// (hex digits of either case) becomes the byte `xy`; the bytes must be
/// UTF-8 (which refuses overlong forms such as `%C0%A0`). Raw bytes outside
/// ASCII are accepted as they are, as long as the result is UTF-8. The error
/// completes "`ce-<name>` …".
pub(super) fn decode_header_value(raw: &[u8]) -> Result<String, String> {
    let unquoted = if raw.first() == Some(&b'"') {
        Cow::Owned(unquote(raw).ok_or("starts with a double quote but is not a valid quoted string")?)
    } else {
        Cow::Borrowed(raw)
    };
    let mut bytes = Vec::with_capacity(unquoted.len());
    let mut rest = unquoted.as_ref();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let byte = match tail {
                [hi, lo, ..] => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
                _ => None,
            };
            let Some(byte) = byte else {
                let shown: String = String::from_utf8_lossy(&rest[..rest.len().min(3)]).into_owned();
                return Err(format!(
                    "has a malformed percent escape {shown:?}: `%` must be followed by two hex digits (write `%25` for `%`)"
                ));
            };
            bytes.push(byte);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| "is not valid UTF-8 after percent-decoding".to_owned())
}

/// The content of an RFC 7230 §3.2.6 quoted string that is all of `raw`, or
/// `None` if `raw` is not one (no closing quote, text after it, or a
/// trailing backslash).
pub(super) fn unquote(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw.strip_prefix(b"\"")?;
    loop {
        let (&first, tail) = rest.split_first()?;
        match first {
            b'"' => return tail.is_empty().then_some(out),
            b'\\' => {
                let (&escaped, tail) = tail.split_first()?;
                out.push(escaped);
                rest = tail;
            }
            other => {
                out.push(other);
                rest = tail;
            }
        }
    }
}

pub(super) fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

pub(super) fn parse_schema_version(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
