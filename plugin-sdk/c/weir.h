/*
 * weir.h: a single-header C SDK for Weir plugins, guest ABI version 1.
 *
 * Everything here follows docs/abi.md byte for byte. The header has no
 * dependencies: no libc, no WASI, only the compiler's freestanding headers
 * (stdbool.h, stddef.h, stdint.h).
 *
 * Use it like this, in exactly one .c file of the plugin:
 *
 *     #define WEIR_IMPLEMENTATION
 *     #include "weir.h"
 *
 *     static void handle(const weir_delivery *d, weir_outcome *out) {
 *         weir_emit e = weir_emit_caused_by(&d->event, WEIR_STR("orders.order.seen"));
 *         e.payload = d->event.payload;
 *         weir_emit_add(out, &e);
 *     }
 *     WEIR_HANDLER(handle)
 *
 * and build it with
 *
 *     clang --target=wasm32-unknown-unknown -std=c11 -O2 -ffreestanding -nostdlib \
 *           -Wl,--no-entry -Wl,--stack-first -Wl,-z,stack-size=1048576 \
 *           -I plugin-sdk/c -o plugin.wasm plugin.c
 *
 * What the implementation gives you:
 *
 * - the exports: memory (the linker's), weir_abi_version, weir_alloc and
 *   weir_dealloc; weir_handle, weir_init and weir_describe through the
 *   WEIR_HANDLER, WEIR_INIT and WEIR_DESCRIBE macros;
 * - an allocator (weir_malloc, weir_realloc, weir_free): free lists by
 *   power-of-two size class, on memory from __heap_base up, grown with
 *   memory.grow;
 * - decoding of a Delivery with no copies: strings and the payload point
 *   into the host's input buffer, valid until the handler returns. Every
 *   read is bounds-checked, and strings are checked to be UTF-8, so hostile
 *   bytes give a decode error, never a read out of range;
 * - encoding of the Outcome (Ok with emits, Retry, Reject), the InitOutcome
 *   and the PluginDescription, and the wire primitives they are made of;
 * - the weir::log import (weir_log) and a byte buffer for text (weir_buf);
 * - memcpy, memmove, memset and memcmp, which clang may call even when you
 *   do not (define WEIR_NO_MEM_FUNCTIONS if you bring your own), and
 *   compiler-rt's __multi3, which 64-bit overflow checks turn into
 *   (define WEIR_NO_MULTI3 if you link compiler-rt).
 *
 * Strings (weir_str) are UTF-8 and not NUL-terminated. Functions that take
 * a NUL-terminated string say so ("cstr").
 */
#ifndef WEIR_H
#define WEIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header speaks (docs/abi.md section 10). */
#define WEIR_ABI_VERSION 1

/* ------------------------------------------------------------------------ */
/* Basic types                                                              */
/* ------------------------------------------------------------------------ */

/* A UTF-8 string: `len` bytes at `ptr`, no terminator. */
typedef struct weir_str {
    const char *ptr;
    uint32_t len;
} weir_str;

/* Raw bytes: `len` bytes at `ptr`. */
typedef struct weir_bytes {
    const uint8_t *ptr;
    uint32_t len;
} weir_bytes;

/* An event id: a ULID as 16 raw big-endian bytes (docs/abi.md 6.7). */
typedef struct weir_id {
    uint8_t bytes[16];
} weir_id;

/* One header: a name and a value. */
typedef struct weir_header {
    weir_str name;
    weir_str value;
} weir_header;

/* A weir_str for a string literal (not for a `const char *`), and the same
   as an initializer, for static data. */
#define WEIR_STR(literal) ((weir_str){(literal), (uint32_t)(sizeof(literal) - 1)})
#define WEIR_STR_INIT(literal) {(literal), (uint32_t)(sizeof(literal) - 1)}

/* A weir_str over a NUL-terminated string. */
weir_str weir_cstr(const char *s);
/* Whether two strings have the same bytes. */
bool weir_str_eq(weir_str a, weir_str b);
/* Whether `s` is UTF-8 by Rust's rules (no overlong forms, no surrogates,
   nothing above U+10FFFF), as the host checks every string it decodes. */
bool weir_utf8_valid(weir_str s);
/* The 26-character ULID text of an id (Crockford base32, upper case), as
   the host writes it. `out` is not NUL-terminated. */
void weir_id_text(const weir_id *id, char out[26]);

/* ------------------------------------------------------------------------ */
/* Memory                                                                   */
/* ------------------------------------------------------------------------ */

/* Like malloc: 8-byte aligned memory, or NULL when the memory cannot grow.
   weir_malloc(0) returns a unique non-NULL pointer. */
void *weir_malloc(size_t size);
/* Like realloc; the old block is kept when the new size still fits it. */
void *weir_realloc(void *ptr, size_t size);
/* Like free; NULL is ignored. Freeing anything else than a live block from
   weir_malloc/weir_realloc is a bug: the plugin traps with a message. */
void weir_free(void *ptr);

/* ------------------------------------------------------------------------ */
/* Logging (the weir::log import, docs/abi.md section 8)                    */
/* ------------------------------------------------------------------------ */

enum {
    WEIR_TRACE = 0,
    WEIR_DEBUG = 1,
    WEIR_INFO = 2,
    WEIR_WARN = 3,
    WEIR_ERROR = 4
};

/* Write one log line. The host drops (and counts) lines over its
   per-invocation budget (64 KiB by default). Do not log from a start
   function. */
void weir_log(int32_t level, weir_str line);
/* weir_log for a NUL-terminated line. */
void weir_log_cstr(int32_t level, const char *line);
/* Log "plugin panicked: <message>" at level error, then trap. The host
   attaches that line to the `trap` failure. */
_Noreturn void weir_panic(weir_str message);

/* ------------------------------------------------------------------------ */
/* A growable byte buffer, for text and for encoding                        */
/* ------------------------------------------------------------------------ */

/* Start with `weir_buf b = {0};`, free with weir_buf_free. The weir_put_*
   and weir_wire_* functions grow it with weir_realloc; if the memory cannot
   grow they panic ("out of memory") and the host reports `memory_limit`. */
typedef struct weir_buf {
    uint8_t *ptr;
    uint32_t len;
    uint32_t cap;
} weir_buf;

void weir_buf_free(weir_buf *b);
/* Forget the contents, keep the memory. */
void weir_buf_clear(weir_buf *b);
/* Views of the contents; valid until the buffer is changed or freed. */
weir_str weir_buf_str(const weir_buf *b);
weir_bytes weir_buf_bytes(const weir_buf *b);

/* Append raw bytes, one byte, a string, a NUL-terminated string. */
void weir_put(weir_buf *b, const void *bytes, uint32_t len);
void weir_put_byte(weir_buf *b, uint8_t byte);
void weir_put_str(weir_buf *b, weir_str s);
void weir_put_cstr(weir_buf *b, const char *s);
/* Append a number in decimal. */
void weir_put_u64(weir_buf *b, uint64_t v);
void weir_put_i64(weir_buf *b, int64_t v);
/* Append `s` as a JSON string, quotes included, escaped the way serde_json
   does it: \" \\ \b \f \n \r \t, other control characters as \u00XX. */
void weir_put_json_str(weir_buf *b, weir_str s);

/* ------------------------------------------------------------------------ */
/* The wire encoding (docs/abi.md section 5)                                */
/* ------------------------------------------------------------------------ */

/* An unsigned varint in its shortest form: < 251 as one byte, else a marker
   (251, 252, 253) and a little-endian u16, u32 or u64. */
void weir_wire_varint(weir_buf *b, uint64_t v);
/* A signed integer: zigzag, then varint. */
void weir_wire_zigzag(weir_buf *b, int64_t v);
/* A string or a byte string: varint length, then the bytes. */
void weir_wire_str(weir_buf *b, weir_str s);
void weir_wire_bytes(weir_buf *b, weir_bytes s);
/* An id: 16 raw bytes. */
void weir_wire_id(weir_buf *b, const weir_id *id);
/* An Option: 00, or 01 and the value. */
void weir_wire_option_str(weir_buf *b, bool present, weir_str s);
void weir_wire_option_id(weir_buf *b, bool present, const weir_id *id);

/* ------------------------------------------------------------------------ */
/* The delivery (docs/abi.md 6.1 and 6.2)                                   */
/* ------------------------------------------------------------------------ */

/* The headers of a decoded event, still encoded (decoding does not
   allocate). Iterate over a copy:

       weir_headers it = event->headers;
       weir_header h;
       while (weir_headers_next(&it, &h)) { ... }
*/
typedef struct weir_headers {
    const uint8_t *encoded;
    uint32_t len;   /* bytes left at `encoded` */
    uint32_t count; /* headers left */
} weir_headers;

/* The next header, or false at the end. */
bool weir_headers_next(weir_headers *it, weir_header *out);
/* The value of the first header called `name`, if any. */
bool weir_headers_get(weir_headers headers, weir_str name, weir_str *value);

/* An event. Every weir_str and the payload point into the input. */
typedef struct weir_event {
    weir_id id;
    weir_str topic;
    weir_str source;
    bool has_key;
    weir_str key;
    uint32_t schema_version;
    int64_t time; /* nanoseconds since the Unix epoch, UTC */
    weir_str content_type;
    weir_headers headers;
    weir_str idempotency_key;
    bool has_correlation_id;
    weir_id correlation_id;
    bool has_causation_id;
    weir_id causation_id;
    weir_bytes payload;
} weir_event;

/* What weir_handle receives: an event for a subscription, on an attempt. */
typedef struct weir_delivery {
    weir_event event;
    weir_str subscription; /* <pipeline>/<handler> */
    uint32_t attempt;      /* 1 on the first attempt */
} weir_delivery;

/* Why decoding failed: the field, the problem, and the offset of the byte
   at which it was found. The strings are static. */
typedef struct weir_decode_error {
    const char *field;
    const char *problem;
    uint32_t offset;
} weir_decode_error;

/* Decode a Delivery that fills `len` bytes exactly. Returns false and fills
   `error` (if not NULL) on malformed input, including trailing bytes. Never
   reads outside [bytes, bytes + len) and never allocates. WEIR_HANDLER
   calls this for you. */
bool weir_decode_delivery(const void *bytes, uint32_t len, weir_delivery *out, weir_decode_error *error);

/* ------------------------------------------------------------------------ */
/* The outcome (docs/abi.md 6.3 and 6.4)                                    */
/* ------------------------------------------------------------------------ */

/* An event for the host to append. Zero means: no key, no headers, no
   idempotency key (the host derives one), no correlation or causation id
   (the host fills them in from the event being handled). */
typedef struct weir_emit {
    weir_str topic;
    bool has_key;
    weir_str key;
    uint32_t schema_version;
    weir_str content_type;
    const weir_header *headers;
    uint32_t header_count;
    bool has_idempotency_key;
    weir_str idempotency_key;
    bool has_correlation_id;
    weir_id correlation_id;
    bool has_causation_id;
    weir_id causation_id;
    weir_bytes payload;
} weir_emit;

/* An emit on `topic`: schema version 1, content type application/json, no
   key, an empty payload. */
weir_emit weir_emit_new(weir_str topic);
/* weir_emit_new, caused by `event`: its key, its correlation id (or its id
   when it starts the flow), and its id as the causation id. The same as
   `event.emit(topic)` in the Rust SDK. */
weir_emit weir_emit_caused_by(const weir_event *event, weir_str topic);
/* Append the encoding of `e` (docs/abi.md 6.3). */
void weir_wire_emit(weir_buf *b, const weir_emit *e);

/* The handler's answer. WEIR_HANDLER hands you one that says Ok with no
   emits. Its fields are private. */
typedef struct weir_outcome {
    uint32_t kind_; /* 0 Ok, 1 Retry, 2 Reject */
    uint32_t emit_count_;
    weir_buf emits_;
    weir_buf reason_;
} weir_outcome;

/* Add an emit to an Ok outcome. Everything `e` points to is copied, so it
   may be freed afterwards. Every string of `e` must be UTF-8 (the plugin
   panics, naming the field, if one is not). After weir_retry or
   weir_reject, emits are ignored. */
void weir_emit_add(weir_outcome *out, const weir_emit *e);
/* Answer Retry (a transient failure, the host tries again with backoff) or
   Reject (a permanent failure, dead-lettered now), with a reason. The last
   call wins. Invalid UTF-8 in the reason is replaced by U+FFFD. */
void weir_retry(weir_outcome *out, weir_str reason);
void weir_reject(weir_outcome *out, weir_str reason);
/* Like weir_retry/weir_reject, with an empty reason and the buffer to write
   it into: weir_put_cstr(weir_reject_text(out), "no items"); */
weir_buf *weir_retry_text(weir_outcome *out);
weir_buf *weir_reject_text(weir_outcome *out);

/* ------------------------------------------------------------------------ */
/* The description (docs/abi.md 6.6)                                        */
/* ------------------------------------------------------------------------ */

typedef struct weir_description {
    weir_str name;
    weir_str version;
    weir_str description;
    const weir_str *topics;
    uint32_t topic_count;
    const uint32_t *schema_versions; /* empty means any */
    uint32_t schema_version_count;
} weir_description;

/* ------------------------------------------------------------------------ */
/* The exports                                                              */
/* ------------------------------------------------------------------------ */

/* void fn(const weir_delivery *delivery, weir_outcome *out) */
typedef void (*weir_handler_fn)(const weir_delivery *delivery, weir_outcome *out);
/* bool fn(weir_bytes config, weir_buf *reason): true for Ready; false for
   Failed, with the reason written into `reason`. An empty configuration
   has len 0. */
typedef bool (*weir_init_fn)(weir_bytes config, weir_buf *reason);

/* Export `weir_handle`, which decodes the delivery and calls `fn`. A
   delivery that does not decode is rejected with the reason. */
#define WEIR_HANDLER(fn)                                                                 \
    __attribute__((export_name("weir_handle"))) int64_t weir_handle(int32_t ptr, int32_t len); \
    int64_t weir_handle(int32_t ptr, int32_t len) { return weir_handle_with_(ptr, len, (fn)); }

/* Export `weir_init`, which calls `fn` with the configuration bytes. */
#define WEIR_INIT(fn)                                                                \
    __attribute__((export_name("weir_init"))) int64_t weir_init(int32_t ptr, int32_t len); \
    int64_t weir_init(int32_t ptr, int32_t len) { return weir_init_with_(ptr, len, (fn)); }

/* Export `weir_describe`, answering with `desc` (a weir_description). */
#define WEIR_DESCRIBE(desc)                                                   \
    __attribute__((export_name("weir_describe"))) int64_t weir_describe(void); \
    int64_t weir_describe(void) { return weir_describe_with_(&(desc)); }

/* Used by the macros above. */
int64_t weir_handle_with_(int32_t ptr, int32_t len, weir_handler_fn fn);
int64_t weir_init_with_(int32_t ptr, int32_t len, weir_init_fn fn);
int64_t weir_describe_with_(const weir_description *desc);

#ifdef __cplusplus
}
#endif

#endif /* WEIR_H */

/* ======================================================================== */
/* Implementation                                                           */
/* ======================================================================== */

#if defined(WEIR_IMPLEMENTATION) && !defined(WEIR_IMPLEMENTATION_INCLUDED_)
#define WEIR_IMPLEMENTATION_INCLUDED_

#ifndef __wasm32__
#error "weir.h implements a wasm32 plugin: build with clang --target=wasm32-unknown-unknown"
#endif

/* ---- memcpy and friends ------------------------------------------------ */

/* With -nostdlib there is no libc, but clang still turns struct copies and
   some loops into calls to memcpy/memset (and the C standard lets it). The
   attribute stops clang from turning these very loops into calls to
   themselves. */
#ifndef WEIR_NO_MEM_FUNCTIONS
__attribute__((no_builtin)) void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
    return dst;
}

__attribute__((no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else if (d > s) {
        while (n--) d[n] = s[n];
    }
    return dst;
}

__attribute__((no_builtin)) void *memset(void *dst, int c, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

__attribute__((no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a;
    const uint8_t *y = (const uint8_t *)b;
    for (; n; n--, x++, y++) {
        if (*x != *y) return *x < *y ? -1 : 1;
    }
    return 0;
}
#endif

/* LLVM lowers 64-bit overflow checks (__builtin_mul_overflow on uint64_t,
   and even `a > UINT64_MAX / b`) to a 128-bit multiply: a call to
   compiler-rt's __multi3 on wasm32. -nostdlib leaves compiler-rt out, so
   here is __multi3, built from 64-bit multiplies. */
#ifndef WEIR_NO_MULTI3
__int128 __multi3(__int128 a, __int128 b) {
    uint64_t a_lo = (uint64_t)a, a_hi = (uint64_t)((unsigned __int128)a >> 64);
    uint64_t b_lo = (uint64_t)b, b_hi = (uint64_t)((unsigned __int128)b >> 64);
    uint64_t x0 = a_lo & 0xFFFFFFFFu, x1 = a_lo >> 32, y0 = b_lo & 0xFFFFFFFFu, y1 = b_lo >> 32;
    uint64_t p00 = x0 * y0, p01 = x0 * y1, p10 = x1 * y0, p11 = x1 * y1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xFFFFFFFFu) + (p10 & 0xFFFFFFFFu);
    uint64_t lo = (p00 & 0xFFFFFFFFu) | (mid << 32);
    uint64_t hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32) + a_hi * b_lo + a_lo * b_hi;
    return (__int128)(((unsigned __int128)hi << 64) | lo);
}
#endif

/* ---- strings ----------------------------------------------------------- */

weir_str weir_cstr(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return (weir_str){s, n};
}

bool weir_str_eq(weir_str a, weir_str b) {
    return a.len == b.len && (a.len == 0 || __builtin_memcmp(a.ptr, b.ptr, a.len) == 0);
}

void weir_id_text(const weir_id *id, char out[26]) {
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 8; i++) hi = (hi << 8) | id->bytes[i];
    for (int i = 8; i < 16; i++) lo = (lo << 8) | id->bytes[i];
    /* 130 bits (two zero bits, then the 128) read 5 at a time from the
       least significant end. */
    for (int i = 25; i >= 0; i--) {
        out[i] = alphabet[lo & 31];
        lo = (lo >> 5) | (hi << 59);
        hi >>= 5;
    }
}

/* The length of the longest prefix of `s` that is UTF-8 by Rust's rules. */
static uint32_t weir_utf8_prefix_(const uint8_t *s, uint32_t len) {
    uint32_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        uint32_t need;
        uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return i;
        }
        if (len - i - 1 < need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (uint32_t k = 2; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
        }
        i += need + 1;
    }
    return len;
}

bool weir_utf8_valid(weir_str s) {
    return weir_utf8_prefix_((const uint8_t *)s.ptr, s.len) == s.len;
}

/* ---- logging and panics ------------------------------------------------ */

__attribute__((import_module("weir"), import_name("log"))) void weir_host_log_(int32_t level, const void *ptr,
                                                                               uint32_t len);

void weir_log(int32_t level, weir_str line) {
    weir_host_log_(level, line.ptr, line.len);
}

void weir_log_cstr(int32_t level, const char *line) {
    weir_log(level, weir_cstr(line));
}

_Noreturn void weir_panic(weir_str message) {
    /* Without a buffer: a panic may be about memory running out. */
    static const char prefix[] = "plugin panicked: ";
    static char line[512];
    uint32_t n = sizeof(prefix) - 1;
    __builtin_memcpy(line, prefix, n);
    uint32_t take = message.len < sizeof(line) - n ? message.len : (uint32_t)(sizeof(line) - n);
    __builtin_memcpy(line + n, message.ptr, take);
    weir_host_log_(WEIR_ERROR, line, n + take);
    __builtin_trap();
}

/* ---- the allocator ----------------------------------------------------- */

/* Blocks of 2^k bytes (k = 4 .. 31) with an 8-byte header in front; a free
   list per k. Freed blocks are reused for the same size class and never
   merged, so a steady stream of similar events reaches a fixed footprint.
   New blocks are cut from [top, end): the memory from __heap_base up at
   first, then pages added with memory.grow. Pages that someone else grew
   (the plugin itself, with __builtin_wasm_memory_grow) are left alone. */

#define WEIR_PAGE_ 65536u
#define WEIR_MIN_CLASS_ 4u
#define WEIR_MAX_CLASS_ 31u
#define WEIR_LIVE_ 0x4c495645u /* "LIVE" */
#define WEIR_FREE_ 0x46524545u /* "FREE" */

typedef struct weir_block_ {
    uint32_t size_class;
    uint32_t state;
} weir_block_;

extern unsigned char __heap_base; /* defined by wasm-ld: the first free byte */

static void *weir_free_lists_[WEIR_MAX_CLASS_ + 1];
static uint64_t weir_top_, weir_end_;

static void *weir_bump_(uint64_t total) {
    if (weir_end_ == 0) {
        weir_top_ = ((uint64_t)(uintptr_t)&__heap_base + 7) & ~(uint64_t)7;
        weir_end_ = (uint64_t)__builtin_wasm_memory_size(0) * WEIR_PAGE_;
    }
    while (weir_top_ + total > weir_end_) {
        uint64_t missing = weir_top_ + total - weir_end_;
        uint64_t pages = (missing + WEIR_PAGE_ - 1) / WEIR_PAGE_;
        if (pages > 65536) return NULL;
        size_t old = __builtin_wasm_memory_grow(0, (size_t)pages);
        if (old == (size_t)-1) return NULL; /* refused: the host's memory cap */
        uint64_t start = (uint64_t)old * WEIR_PAGE_;
        if (start != weir_end_) weir_top_ = start; /* not contiguous with ours */
        weir_end_ = start + pages * WEIR_PAGE_;
    }
    void *p = (void *)(uintptr_t)weir_top_;
    weir_top_ += total;
    return p;
}

static weir_block_ *weir_block_of_(void *ptr) {
    weir_block_ *b = (weir_block_ *)ptr - 1;
    if (((uintptr_t)ptr & 7) != 0 || b->state != WEIR_LIVE_ || b->size_class < WEIR_MIN_CLASS_ ||
        b->size_class > WEIR_MAX_CLASS_) {
        weir_panic(WEIR_STR("weir_free/weir_realloc: not a live block (freed twice, or not from weir_malloc)"));
    }
    return b;
}

void *weir_malloc(size_t size) {
    if ((uint64_t)size > ((uint64_t)1 << WEIR_MAX_CLASS_)) return NULL;
    uint32_t k = WEIR_MIN_CLASS_;
    while (((uint64_t)1 << k) < (uint64_t)size) k++;
    weir_block_ *b;
    void *p = weir_free_lists_[k];
    if (p != NULL) {
        void *next;
        __builtin_memcpy(&next, p, sizeof next);
        weir_free_lists_[k] = next;
        b = (weir_block_ *)p - 1;
    } else {
        b = (weir_block_ *)weir_bump_(sizeof(weir_block_) + ((uint64_t)1 << k));
        if (b == NULL) return NULL;
        b->size_class = k;
    }
    b->state = WEIR_LIVE_;
    return b + 1;
}

void weir_free(void *ptr) {
    if (ptr == NULL) return;
    weir_block_ *b = weir_block_of_(ptr);
    b->state = WEIR_FREE_;
    void *next = weir_free_lists_[b->size_class];
    __builtin_memcpy(ptr, &next, sizeof next);
    weir_free_lists_[b->size_class] = ptr;
}

void *weir_realloc(void *ptr, size_t size) {
    if (ptr == NULL) return weir_malloc(size);
    weir_block_ *b = weir_block_of_(ptr);
    uint64_t have = (uint64_t)1 << b->size_class;
    if ((uint64_t)size <= have) return ptr;
    void *fresh = weir_malloc(size);
    if (fresh == NULL) return NULL;
    __builtin_memcpy(fresh, ptr, (size_t)have);
    weir_free(ptr);
    return fresh;
}

/* ---- the byte buffer --------------------------------------------------- */

static void weir_reserve_(weir_buf *b, uint32_t extra) {
    if (b->cap - b->len >= extra) return;
    uint64_t want = (uint64_t)b->len + extra;
    uint64_t cap = b->cap ? (uint64_t)b->cap * 2 : 64;
    if (cap < want) cap = want;
    if (cap > 0xFFFFFFFFu) cap = 0xFFFFFFFFu;
    if (want > cap) weir_panic(WEIR_STR("out of memory: a buffer would exceed 4 GiB"));
    uint8_t *p = (uint8_t *)weir_realloc(b->ptr, (size_t)cap);
    if (p == NULL) weir_panic(WEIR_STR("out of memory: the host refused to grow the memory"));
    b->ptr = p;
    b->cap = (uint32_t)cap;
}

void weir_buf_free(weir_buf *b) {
    weir_free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}

void weir_buf_clear(weir_buf *b) {
    b->len = 0;
}

weir_str weir_buf_str(const weir_buf *b) {
    return (weir_str){(const char *)b->ptr, b->len};
}

weir_bytes weir_buf_bytes(const weir_buf *b) {
    return (weir_bytes){b->ptr, b->len};
}

void weir_put(weir_buf *b, const void *bytes, uint32_t len) {
    if (len == 0) return;
    weir_reserve_(b, len);
    __builtin_memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
}

void weir_put_byte(weir_buf *b, uint8_t byte) {
    weir_reserve_(b, 1);
    b->ptr[b->len++] = byte;
}

void weir_put_str(weir_buf *b, weir_str s) {
    weir_put(b, s.ptr, s.len);
}

void weir_put_cstr(weir_buf *b, const char *s) {
    weir_put_str(b, weir_cstr(s));
}

void weir_put_u64(weir_buf *b, uint64_t v) {
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    weir_reserve_(b, (uint32_t)n);
    while (n > 0) b->ptr[b->len++] = (uint8_t)digits[--n];
}

void weir_put_i64(weir_buf *b, int64_t v) {
    if (v < 0) {
        weir_put_byte(b, '-');
        weir_put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        weir_put_u64(b, (uint64_t)v);
    }
}

void weir_put_json_str(weir_buf *b, weir_str s) {
    static const char hex[] = "0123456789abcdef";
    weir_put_byte(b, '"');
    uint32_t start = 0;
    for (uint32_t i = 0; i < s.len; i++) {
        uint8_t c = (uint8_t)s.ptr[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c >= 0x20) continue;
        }
        weir_put(b, s.ptr + start, i - start);
        start = i + 1;
        if (esc != NULL) {
            weir_put_cstr(b, esc);
        } else {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            weir_put(b, u, sizeof u);
        }
    }
    weir_put(b, s.ptr + start, s.len - start);
    weir_put_byte(b, '"');
}

/* Append `s` with every invalid UTF-8 byte replaced by U+FFFD. */
static void weir_put_lossy_(weir_buf *b, weir_str s) {
    const uint8_t *p = (const uint8_t *)s.ptr;
    uint32_t len = s.len;
    while (len > 0) {
        uint32_t ok = weir_utf8_prefix_(p, len);
        weir_put(b, p, ok);
        if (ok == len) break;
        weir_put(b, "\xEF\xBF\xBD", 3);
        p += ok + 1;
        len -= ok + 1;
    }
}

/* ---- wire encoding ----------------------------------------------------- */

void weir_wire_varint(weir_buf *b, uint64_t v) {
    uint8_t out[9];
    uint32_t n;
    if (v <= 250) {
        out[0] = (uint8_t)v;
        n = 1;
    } else if (v <= 0xFFFF) {
        out[0] = 251;
        n = 3;
    } else if (v <= 0xFFFFFFFFu) {
        out[0] = 252;
        n = 5;
    } else {
        out[0] = 253;
        n = 9;
    }
    for (uint32_t i = 1; i < n; i++) out[i] = (uint8_t)(v >> (8 * (i - 1)));
    weir_put(b, out, n);
}

void weir_wire_zigzag(weir_buf *b, int64_t v) {
    uint64_t u = (uint64_t)v;
    weir_wire_varint(b, (u << 1) ^ (v < 0 ? ~(uint64_t)0 : 0));
}

void weir_wire_str(weir_buf *b, weir_str s) {
    weir_wire_varint(b, s.len);
    weir_put(b, s.ptr, s.len);
}

void weir_wire_bytes(weir_buf *b, weir_bytes s) {
    weir_wire_varint(b, s.len);
    weir_put(b, s.ptr, s.len);
}

void weir_wire_id(weir_buf *b, const weir_id *id) {
    weir_put(b, id->bytes, 16);
}

void weir_wire_option_str(weir_buf *b, bool present, weir_str s) {
    weir_put_byte(b, present ? 1 : 0);
    if (present) weir_wire_str(b, s);
}

void weir_wire_option_id(weir_buf *b, bool present, const weir_id *id) {
    weir_put_byte(b, present ? 1 : 0);
    if (present) weir_wire_id(b, id);
}

/* ---- decoding ---------------------------------------------------------- */

/* A cursor over [base, base + len): every read checks `len - pos` first. */
typedef struct weir_reader_ {
    const uint8_t *base;
    uint32_t len;
    uint32_t pos;
    const char *field;
    weir_decode_error *error;
} weir_reader_;

static bool weir_fail_(weir_reader_ *r, const char *problem) {
    if (r->error != NULL) {
        r->error->field = r->field;
        r->error->problem = problem;
        r->error->offset = r->pos;
    }
    return false;
}

static bool weir_take_(weir_reader_ *r, uint64_t n, const uint8_t **out) {
    if (n > (uint64_t)(r->len - r->pos)) return weir_fail_(r, "unexpected end of input");
    *out = r->base + r->pos;
    r->pos += (uint32_t)n;
    return true;
}

static bool weir_read_u8_(weir_reader_ *r, uint8_t *out) {
    const uint8_t *p;
    if (!weir_take_(r, 1, &p)) return false;
    *out = *p;
    return true;
}

/* A varint whose marker may be at most `max_marker`: 252 for a u32, 253
   for a u64 or a length (bincode refuses a wider marker). */
static bool weir_read_varint_(weir_reader_ *r, uint8_t max_marker, uint64_t *out) {
    uint8_t first;
    if (!weir_read_u8_(r, &first)) return false;
    if (first <= 250) {
        *out = first;
        return true;
    }
    if (first > max_marker) {
        r->pos--;
        return weir_fail_(r, first == 255 ? "varint marker 255 is reserved" : "varint marker too wide for the field");
    }
    uint32_t n = first == 251 ? 2 : first == 252 ? 4 : 8;
    const uint8_t *p;
    if (!weir_take_(r, n, &p)) return false;
    uint64_t v = 0;
    for (uint32_t i = n; i > 0; i--) v = (v << 8) | p[i - 1];
    *out = v;
    return true;
}

static bool weir_read_u32_(weir_reader_ *r, const char *field, uint32_t *out) {
    uint64_t v;
    r->field = field;
    if (!weir_read_varint_(r, 252, &v)) return false;
    *out = (uint32_t)v;
    return true;
}

static bool weir_read_bytes_(weir_reader_ *r, const char *field, weir_bytes *out) {
    uint64_t n;
    const uint8_t *p;
    r->field = field;
    if (!weir_read_varint_(r, 253, &n) || !weir_take_(r, n, &p)) return false;
    *out = (weir_bytes){p, (uint32_t)n};
    return true;
}

static bool weir_read_str_(weir_reader_ *r, const char *field, weir_str *out) {
    weir_bytes b;
    if (!weir_read_bytes_(r, field, &b)) return false;
    uint32_t ok = weir_utf8_prefix_(b.ptr, b.len);
    if (ok != b.len) {
        r->pos = (uint32_t)(b.ptr - r->base) + ok;
        return weir_fail_(r, "invalid UTF-8");
    }
    *out = (weir_str){(const char *)b.ptr, b.len};
    return true;
}

static bool weir_read_option_(weir_reader_ *r, const char *field, bool *present) {
    uint8_t tag;
    r->field = field;
    if (!weir_read_u8_(r, &tag)) return false;
    if (tag > 1) {
        r->pos--;
        return weir_fail_(r, "option tag is not 0 or 1");
    }
    *present = tag == 1;
    return true;
}

static bool weir_read_id_(weir_reader_ *r, const char *field, weir_id *out) {
    const uint8_t *p;
    r->field = field;
    if (!weir_take_(r, 16, &p)) return false;
    __builtin_memcpy(out->bytes, p, 16);
    return true;
}

static bool weir_read_option_str_(weir_reader_ *r, const char *field, bool *present, weir_str *out) {
    *out = (weir_str){"", 0};
    return weir_read_option_(r, field, present) && (!*present || weir_read_str_(r, field, out));
}

static bool weir_read_option_id_(weir_reader_ *r, const char *field, bool *present, weir_id *out) {
    __builtin_memset(out->bytes, 0, 16);
    return weir_read_option_(r, field, present) && (!*present || weir_read_id_(r, field, out));
}

static bool weir_read_headers_(weir_reader_ *r, weir_headers *out) {
    uint64_t count;
    r->field = "event.headers";
    if (!weir_read_varint_(r, 253, &count)) return false;
    /* A header takes at least two bytes: a bigger count is a lie. */
    if (count > (uint64_t)(r->len - r->pos) / 2) return weir_fail_(r, "header count exceeds the input");
    uint32_t start = r->pos;
    for (uint64_t i = 0; i < count; i++) {
        weir_str ignored;
        if (!weir_read_str_(r, "event.headers.name", &ignored) || !weir_read_str_(r, "event.headers.value", &ignored))
            return false;
    }
    *out = (weir_headers){r->base + start, r->pos - start, (uint32_t)count};
    return true;
}

bool weir_decode_delivery(const void *bytes, uint32_t len, weir_delivery *out, weir_decode_error *error) {
    weir_reader_ r = {(const uint8_t *)bytes, len, 0, "", error};
    weir_event *e = &out->event;
    uint64_t zigzag;
    if (!weir_read_id_(&r, "event.id", &e->id) || !weir_read_str_(&r, "event.topic", &e->topic) ||
        !weir_read_str_(&r, "event.source", &e->source) ||
        !weir_read_option_str_(&r, "event.key", &e->has_key, &e->key) ||
        !weir_read_u32_(&r, "event.schema_version", &e->schema_version))
        return false;
    r.field = "event.time";
    if (!weir_read_varint_(&r, 253, &zigzag)) return false;
    e->time = (int64_t)(zigzag >> 1) ^ -(int64_t)(zigzag & 1);
    if (!weir_read_str_(&r, "event.content_type", &e->content_type) || !weir_read_headers_(&r, &e->headers) ||
        !weir_read_str_(&r, "event.idempotency_key", &e->idempotency_key) ||
        !weir_read_option_id_(&r, "event.correlation_id", &e->has_correlation_id, &e->correlation_id) ||
        !weir_read_option_id_(&r, "event.causation_id", &e->has_causation_id, &e->causation_id) ||
        !weir_read_bytes_(&r, "event.payload", &e->payload) ||
        !weir_read_str_(&r, "subscription", &out->subscription) ||
        !weir_read_u32_(&r, "attempt", &out->attempt))
        return false;
    if (r.pos != r.len) {
        r.field = "delivery";
        return weir_fail_(&r, "trailing bytes after the delivery");
    }
    return true;
}

bool weir_headers_next(weir_headers *it, weir_header *out) {
    if (it->count == 0) return false;
    /* The bytes were checked when the delivery was decoded; read them with
       the same bounds checks anyway, in case `it` was made by hand. */
    weir_reader_ r = {it->encoded, it->len, 0, "", NULL};
    weir_bytes name, value;
    if (!weir_read_bytes_(&r, "", &name) || !weir_read_bytes_(&r, "", &value)) {
        it->count = 0;
        return false;
    }
    out->name = (weir_str){(const char *)name.ptr, name.len};
    out->value = (weir_str){(const char *)value.ptr, value.len};
    it->encoded += r.pos;
    it->len -= r.pos;
    it->count--;
    return true;
}

bool weir_headers_get(weir_headers headers, weir_str name, weir_str *value) {
    weir_header h;
    while (weir_headers_next(&headers, &h)) {
        if (weir_str_eq(h.name, name)) {
            *value = h.value;
            return true;
        }
    }
    return false;
}

/* ---- emits and outcomes ------------------------------------------------ */

weir_emit weir_emit_new(weir_str topic) {
    weir_emit e;
    __builtin_memset(&e, 0, sizeof e);
    e.topic = topic;
    e.schema_version = 1;
    e.content_type = WEIR_STR("application/json");
    e.payload = (weir_bytes){(const uint8_t *)"", 0};
    return e;
}

weir_emit weir_emit_caused_by(const weir_event *event, weir_str topic) {
    weir_emit e = weir_emit_new(topic);
    e.has_key = event->has_key;
    e.key = event->key;
    e.has_correlation_id = true;
    e.correlation_id = event->has_correlation_id ? event->correlation_id : event->id;
    e.has_causation_id = true;
    e.causation_id = event->id;
    return e;
}

void weir_wire_emit(weir_buf *b, const weir_emit *e) {
    weir_wire_str(b, e->topic);
    weir_wire_option_str(b, e->has_key, e->key);
    weir_wire_varint(b, e->schema_version);
    weir_wire_str(b, e->content_type);
    weir_wire_varint(b, e->header_count);
    for (uint32_t i = 0; i < e->header_count; i++) {
        weir_wire_str(b, e->headers[i].name);
        weir_wire_str(b, e->headers[i].value);
    }
    weir_wire_option_str(b, e->has_idempotency_key, e->idempotency_key);
    weir_wire_option_id(b, e->has_correlation_id, &e->correlation_id);
    weir_wire_option_id(b, e->has_causation_id, &e->causation_id);
    weir_wire_bytes(b, e->payload);
}

static void weir_check_utf8_(weir_str s, const char *what) {
    if (!weir_utf8_valid(s)) {
        char line[96];
        weir_buf msg = {(uint8_t *)line, 0, sizeof line};
        /* A fixed buffer: the message fits, so weir_put never grows it. */
        weir_put_cstr(&msg, "weir_emit_add: ");
        weir_put_cstr(&msg, what);
        weir_put_cstr(&msg, " is not valid UTF-8");
        weir_panic(weir_buf_str(&msg));
    }
}

void weir_emit_add(weir_outcome *out, const weir_emit *e) {
    if (out->kind_ != 0) return;
    weir_check_utf8_(e->topic, "topic");
    if (e->has_key) weir_check_utf8_(e->key, "key");
    weir_check_utf8_(e->content_type, "content_type");
    for (uint32_t i = 0; i < e->header_count; i++) {
        weir_check_utf8_(e->headers[i].name, "a header name");
        weir_check_utf8_(e->headers[i].value, "a header value");
    }
    if (e->has_idempotency_key) weir_check_utf8_(e->idempotency_key, "idempotency_key");
    weir_wire_emit(&out->emits_, e);
    out->emit_count_++;
}

weir_buf *weir_retry_text(weir_outcome *out) {
    out->kind_ = 1;
    weir_buf_clear(&out->reason_);
    return &out->reason_;
}

weir_buf *weir_reject_text(weir_outcome *out) {
    out->kind_ = 2;
    weir_buf_clear(&out->reason_);
    return &out->reason_;
}

void weir_retry(weir_outcome *out, weir_str reason) {
    weir_put_str(weir_retry_text(out), reason);
}

void weir_reject(weir_outcome *out, weir_str reason) {
    weir_put_str(weir_reject_text(out), reason);
}

/* ---- the exports ------------------------------------------------------- */

static inline int64_t weir_pack_(const void *ptr, uint32_t len) {
    return (int64_t)(((uint64_t)(uintptr_t)ptr << 32) | len);
}

/* Hand `b` to the host: an output must hold exactly the message, so copy it
   into a block of its own, which the host frees with weir_dealloc. */
static int64_t weir_output_(weir_buf *b) {
    void *out = weir_malloc(b->len);
    if (out == NULL) weir_panic(WEIR_STR("out of memory: no room for the output"));
    __builtin_memcpy(out, b->ptr, b->len);
    int64_t packed = weir_pack_(out, b->len);
    weir_buf_free(b);
    return packed;
}

__attribute__((export_name("weir_abi_version"))) int32_t weir_abi_version(void);
int32_t weir_abi_version(void) {
    return WEIR_ABI_VERSION;
}

__attribute__((export_name("weir_alloc"))) int32_t weir_alloc(int32_t len);
int32_t weir_alloc(int32_t len) {
    if (len == 0) return 0;
    return (int32_t)(uintptr_t)weir_malloc((uint32_t)len);
}

__attribute__((export_name("weir_dealloc"))) void weir_dealloc(int32_t ptr, int32_t len);
void weir_dealloc(int32_t ptr, int32_t len) {
    (void)len; /* the block header knows the size */
    weir_free((void *)(uintptr_t)(uint32_t)ptr);
}

int64_t weir_handle_with_(int32_t ptr, int32_t len, weir_handler_fn fn) {
    weir_delivery delivery;
    weir_decode_error error;
    weir_outcome out;
    __builtin_memset(&out, 0, sizeof out);
    if (weir_decode_delivery((const void *)(uintptr_t)(uint32_t)ptr, (uint32_t)len, &delivery, &error)) {
        fn(&delivery, &out);
    } else {
        weir_buf *why = weir_reject_text(&out);
        weir_put_cstr(why, "plugin could not decode the delivery: ");
        weir_put_cstr(why, error.field);
        weir_put_cstr(why, ": ");
        weir_put_cstr(why, error.problem);
        weir_put_cstr(why, " at byte ");
        weir_put_u64(why, error.offset);
    }
    weir_buf msg = {0};
    weir_wire_varint(&msg, out.kind_);
    if (out.kind_ == 0) {
        weir_wire_varint(&msg, out.emit_count_);
        weir_put(&msg, out.emits_.ptr, out.emits_.len);
    } else {
        weir_buf reason = {0};
        weir_put_lossy_(&reason, weir_buf_str(&out.reason_));
        weir_wire_str(&msg, weir_buf_str(&reason));
        weir_buf_free(&reason);
    }
    weir_buf_free(&out.emits_);
    weir_buf_free(&out.reason_);
    return weir_output_(&msg);
}

int64_t weir_init_with_(int32_t ptr, int32_t len, weir_init_fn fn) {
    weir_bytes config = {(const uint8_t *)(uintptr_t)(uint32_t)ptr, (uint32_t)len};
    if (config.len == 0) config.ptr = (const uint8_t *)"";
    weir_buf reason = {0};
    bool ready = fn(config, &reason);
    weir_buf msg = {0};
    if (ready) {
        weir_put_byte(&msg, 0); /* InitOutcome::Ready */
    } else {
        weir_buf clean = {0};
        if (reason.len == 0) weir_put_cstr(&reason, "the plugin refused its configuration");
        weir_put_lossy_(&clean, weir_buf_str(&reason));
        weir_put_byte(&msg, 1); /* InitOutcome::Failed */
        weir_wire_str(&msg, weir_buf_str(&clean));
        weir_buf_free(&clean);
    }
    weir_buf_free(&reason);
    return weir_output_(&msg);
}

int64_t weir_describe_with_(const weir_description *d) {
    weir_buf msg = {0};
    weir_wire_str(&msg, d->name);
    weir_wire_str(&msg, d->version);
    weir_wire_str(&msg, d->description);
    weir_wire_varint(&msg, d->topic_count);
    for (uint32_t i = 0; i < d->topic_count; i++) weir_wire_str(&msg, d->topics[i]);
    weir_wire_varint(&msg, d->schema_version_count);
    for (uint32_t i = 0; i < d->schema_version_count; i++) weir_wire_varint(&msg, d->schema_versions[i]);
    return weir_output_(&msg);
}

#endif /* WEIR_IMPLEMENTATION */
