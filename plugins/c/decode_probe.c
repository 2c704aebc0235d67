/*
 * A test plugin for weir.h's decoder and encoder (tests/all/c_plugin.rs).
 *
 * The payload of each event is taken as an encoded Delivery, perhaps a
 * damaged one. The probe copies it to the very end of linear memory, so
 * that a read past its end traps, and decodes it with weir_decode_delivery:
 *
 * - bytes that do not decode: Reject("decode: <field>: <problem> at byte N");
 * - a delivery to subscription "probe/retry": Retry("asked to retry");
 * - any other delivery: one emit on `probe.delivery.decoded` whose payload
 *   is the delivery encoded again with the weir_wire_* functions, and whose
 *   other fields come from the decoded event: its key, schema version,
 *   content type, headers (plus `probe-id-text`, the id's ULID text, and
 *   `probe-found`, the first `probe-lookup` header, if any), its
 *   idempotency key, and its correlation and causation ids as they were.
 */
#define WEIR_IMPLEMENTATION
#include "weir.h"

#define PAGE 65536u

/* Pages this probe grew itself: [region_start, region_end). The allocator
   leaves them alone, because it did not grow them. */
static uint64_t region_start, region_end;

/* A copy of `b` that ends exactly where linear memory ends. */
static const uint8_t *at_end_of_memory(weir_bytes b) {
    uint64_t memory_end = (uint64_t)__builtin_wasm_memory_size(0) * PAGE;
    if (region_end != memory_end || region_end - region_start < b.len) {
        uint64_t pages = b.len / PAGE + 1;
        size_t old = __builtin_wasm_memory_grow(0, (size_t)pages);
        if (old == (size_t)-1) weir_panic(WEIR_STR("the probe cannot grow memory"));
        region_start = (uint64_t)old * PAGE;
        region_end = region_start + pages * PAGE;
    }
    uint8_t *copy = (uint8_t *)(uintptr_t)(region_end - b.len);
    __builtin_memcpy(copy, b.ptr, b.len);
    return copy;
}

static void wire_delivery(weir_buf *b, const weir_delivery *d) {
    const weir_event *e = &d->event;
    weir_headers it = e->headers;
    weir_header h;
    weir_wire_id(b, &e->id);
    weir_wire_str(b, e->topic);
    weir_wire_str(b, e->source);
    weir_wire_option_str(b, e->has_key, e->key);
    weir_wire_varint(b, e->schema_version);
    weir_wire_zigzag(b, e->time);
    weir_wire_str(b, e->content_type);
    weir_wire_varint(b, e->headers.count);
    while (weir_headers_next(&it, &h)) {
        weir_wire_str(b, h.name);
        weir_wire_str(b, h.value);
    }
    weir_wire_str(b, e->idempotency_key);
    weir_wire_option_id(b, e->has_correlation_id, &e->correlation_id);
    weir_wire_option_id(b, e->has_causation_id, &e->causation_id);
    weir_wire_bytes(b, e->payload);
    weir_wire_str(b, d->subscription);
    weir_wire_varint(b, d->attempt);
}

static void handle(const weir_delivery *carrier, weir_outcome *out) {
    weir_bytes bytes = carrier->event.payload;
    const uint8_t *copy = at_end_of_memory(bytes);
    weir_delivery d;
    weir_decode_error error;
    if (!weir_decode_delivery(copy, bytes.len, &d, &error)) {
        weir_buf *why = weir_reject_text(out);
        weir_put_cstr(why, "decode: ");
        weir_put_cstr(why, error.field);
        weir_put_cstr(why, ": ");
        weir_put_cstr(why, error.problem);
        weir_put_cstr(why, " at byte ");
        weir_put_u64(why, error.offset);
        return;
    }
    if (weir_str_eq(d.subscription, WEIR_STR("probe/retry"))) {
        weir_retry(out, WEIR_STR("asked to retry"));
        return;
    }

    weir_buf line = {0};
    weir_put_cstr(&line, "probe decoded ");
    weir_put_u64(&line, bytes.len);
    weir_put_cstr(&line, " bytes");
    weir_log(WEIR_INFO, weir_buf_str(&line));
    weir_buf_free(&line);

    /* The headers as they came, then the probe's own. */
    weir_header *headers = (weir_header *)weir_malloc(((size_t)d.event.headers.count + 2) * sizeof(weir_header));
    if (headers == NULL) weir_panic(WEIR_STR("out of memory for the headers"));
    uint32_t n = 0;
    weir_headers it = d.event.headers;
    while (weir_headers_next(&it, &headers[n])) n++;
    char id_text[26];
    weir_id_text(&d.event.id, id_text);
    headers[n++] = (weir_header){WEIR_STR("probe-id-text"), {id_text, 26}};
    weir_str found;
    if (weir_headers_get(d.event.headers, WEIR_STR("probe-lookup"), &found)) {
        headers[n++] = (weir_header){WEIR_STR("probe-found"), found};
    }

    weir_buf again = {0};
    wire_delivery(&again, &d);

    weir_emit e = weir_emit_new(WEIR_STR("probe.delivery.decoded"));
    e.has_key = d.event.has_key;
    e.key = d.event.key;
    e.schema_version = d.event.schema_version;
    e.content_type = d.event.content_type;
    e.headers = headers;
    e.header_count = n;
    e.has_idempotency_key = true;
    e.idempotency_key = d.event.idempotency_key;
    e.has_correlation_id = d.event.has_correlation_id;
    e.correlation_id = d.event.correlation_id;
    e.has_causation_id = d.event.has_causation_id;
    e.causation_id = d.event.causation_id;
    e.payload = weir_buf_bytes(&again);
    weir_emit_add(out, &e);

    weir_buf_free(&again);
    weir_free(headers);
}

WEIR_HANDLER(handle)
