/*
 * Order validator, in C: the twin of plugins/order-validator (Rust), with
 * the same behaviour, reasons and output bytes. It checks a new order and
 * emits `orders.order.validated` with its total, or rejects it with the
 * reason (the host dead-letters it).
 *
 * Configuration (all optional):
 * { "currencies": ["EUR", "USD", "GBP"], "max_total_cents": 100000000 }
 *
 * The Rust twin reads JSON with serde_json; this file carries a small JSON
 * reader of its own that accepts what serde_json accepts: strict RFC 8259,
 * with values of unknown fields skipped the way serde_json skips them (no
 * nesting limit, no UTF-8 check inside their strings). Two differences:
 * the error messages after "invalid JSON payload: " are worded by each
 * reader, and an order written as a JSON array (serde accepts one for a
 * struct) is refused. tests/all/c_plugin.rs holds the two to the same
 * answers, byte for byte.
 *
 * Build: see docs/abi.md section 12 (tests/build.rs runs the same command).
 */
#define WEIR_IMPLEMENTATION
#include "weir.h"

/* ---- a small JSON reader ------------------------------------------------ */

typedef struct json {
    const uint8_t *text; /* the original, for error positions */
    uint8_t *s;          /* a copy: strings are unescaped in place */
    uint32_t len;
    uint32_t pos;
    weir_buf *error; /* the message of the first error */
} json;

/* Start reading `text`. Out of memory, panic: the host reports
   `memory_limit`, as for the Rust twin. */
static void json_open(json *j, weir_bytes text, weir_buf *error) {
    j->text = text.ptr;
    j->s = (uint8_t *)weir_malloc(text.len);
    j->len = text.len;
    j->pos = 0;
    j->error = error;
    if (j->s == NULL) weir_panic(WEIR_STR("out of memory for a copy of the JSON text"));
    __builtin_memcpy(j->s, text.ptr, text.len);
}

static void json_close(json *j) {
    weir_free(j->s);
    j->s = NULL;
}

/* Record an error: a + b + c, and where. Always false. */
static bool fail3(json *j, const char *a, weir_str b, const char *c) {
    uint32_t line = 1, column = 0;
    for (uint32_t i = 0; i < j->pos && i < j->len; i++) {
        if (j->text[i] == '\n') {
            line++;
            column = 0;
        } else {
            column++;
        }
    }
    weir_put_cstr(j->error, a);
    weir_put_str(j->error, b);
    weir_put_cstr(j->error, c);
    weir_put_cstr(j->error, " at line ");
    weir_put_u64(j->error, line);
    weir_put_cstr(j->error, " column ");
    weir_put_u64(j->error, column);
    return false;
}

static bool fail(json *j, const char *message) {
    return fail3(j, message, WEIR_STR(""), "");
}

static int peek(const json *j) {
    return j->pos < j->len ? j->s[j->pos] : -1;
}

static void ws(json *j) {
    while (j->pos < j->len) {
        uint8_t c = j->s[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        j->pos++;
    }
}

/* What a value starting with `c` is, for "invalid type" messages. */
static weir_str kind_of(int c) {
    switch (c) {
    case '"': return WEIR_STR("a string");
    case '{': return WEIR_STR("a map");
    case '[': return WEIR_STR("a sequence");
    case 't':
    case 'f': return WEIR_STR("a boolean");
    case 'n': return WEIR_STR("null");
    default: return WEIR_STR("a number");
    }
}

static bool starts_value(int c) {
    return c == '"' || c == '{' || c == '[' || c == 't' || c == 'f' || c == 'n' || c == '-' || (c >= '0' && c <= '9');
}

/* After whitespace, the value must start with `open`; `expected` names
   what was wanted. */
static bool expect(json *j, int open, const char *expected) {
    ws(j);
    int c = peek(j);
    if (c == open) return true;
    if (c < 0) return fail(j, "EOF while parsing a value");
    if (!starts_value(c)) return fail(j, "expected value");
    return fail3(j, "invalid type: ", kind_of(c), expected);
}

static bool hex4(json *j, uint32_t *out) {
    if (j->len - j->pos < 4) return fail(j, "EOF while parsing a string");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = j->s[j->pos++];
        uint32_t d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return fail(j, "invalid escape");
        v = (v << 4) | d;
    }
    *out = v;
    return true;
}

/* A string, at its opening quote. Escapes are decoded in place: the
   decoded form is never longer than the text it comes from. */
static bool string(json *j, weir_str *out) {
    j->pos++;
    uint32_t start = j->pos, w = j->pos;
    for (;;) {
        if (j->pos >= j->len) return fail(j, "EOF while parsing a string");
        uint8_t c = j->s[j->pos++];
        if (c == '"') break;
        if (c < 0x20) return fail(j, "control character (\\u0000-\\u001F) found while parsing a string");
        if (c != '\\') {
            j->s[w++] = c;
            continue;
        }
        if (j->pos >= j->len) return fail(j, "EOF while parsing a string");
        c = j->s[j->pos++];
        switch (c) {
        case '"':
        case '\\':
        case '/': j->s[w++] = c; break;
        case 'b': j->s[w++] = '\b'; break;
        case 'f': j->s[w++] = '\f'; break;
        case 'n': j->s[w++] = '\n'; break;
        case 'r': j->s[w++] = '\r'; break;
        case 't': j->s[w++] = '\t'; break;
        case 'u': {
            uint32_t cp, low;
            if (!hex4(j, &cp)) return false;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(j, "lone trailing surrogate in hex escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (j->len - j->pos < 2 || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u')
                    return fail(j, "lone leading surrogate in hex escape");
                j->pos += 2;
                if (!hex4(j, &low)) return false;
                if (low < 0xDC00 || low > 0xDFFF) return fail(j, "lone leading surrogate in hex escape");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            if (cp < 0x80) {
                j->s[w++] = (uint8_t)cp;
            } else if (cp < 0x800) {
                j->s[w++] = (uint8_t)(0xC0 | (cp >> 6));
                j->s[w++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                j->s[w++] = (uint8_t)(0xE0 | (cp >> 12));
                j->s[w++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                j->s[w++] = (uint8_t)(0x80 | (cp & 0x3F));
            } else {
                j->s[w++] = (uint8_t)(0xF0 | (cp >> 18));
                j->s[w++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
                j->s[w++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
                j->s[w++] = (uint8_t)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: return fail(j, "invalid escape");
        }
    }
    *out = (weir_str){(const char *)j->s + start, w - start};
    /* Escapes decode to whole characters, so this checks the raw bytes. */
    if (!weir_utf8_valid(*out)) return fail(j, "invalid unicode code point");
    return true;
}

/* A string value. */
static bool string_value(json *j, weir_str *out) {
    return expect(j, '"', ", expected a string") && string(j, out);
}

/* A number, at its first character. Integers without a fraction or an
   exponent that fit a u64 come back in *v; anything else is *is_float. */
static bool number(json *j, bool *negative, uint64_t *v, bool *is_float) {
    *negative = false;
    *is_float = false;
    *v = 0;
    if (peek(j) == '-') {
        *negative = true;
        j->pos++;
    }
    int c = peek(j);
    if (c < '0' || c > '9') return fail(j, "invalid number");
    if (c == '0') {
        /* serde_json reads -0 as the float -0.0 */
        if (*negative) *is_float = true;
        j->pos++;
        c = peek(j);
        if (c >= '0' && c <= '9') return fail(j, "invalid number");
    } else {
        while ((c = peek(j)) >= '0' && c <= '9') {
            uint64_t d = (uint64_t)(c - '0');
            if (*v > (UINT64_MAX - d) / 10) *is_float = true; /* serde_json reads it as a float */
            else *v = *v * 10 + d;
            j->pos++;
        }
    }
    if (peek(j) == '.') {
        *is_float = true;
        j->pos++;
        if ((c = peek(j)) < '0' || c > '9') return fail(j, "invalid number");
        while ((c = peek(j)) >= '0' && c <= '9') j->pos++;
    }
    if (peek(j) == 'e' || peek(j) == 'E') {
        *is_float = true;
        j->pos++;
        if (peek(j) == '+' || peek(j) == '-') j->pos++;
        if ((c = peek(j)) < '0' || c > '9') return fail(j, "invalid number");
        while ((c = peek(j)) >= '0' && c <= '9') j->pos++;
    }
    return true;
}

/* An unsigned integer of at most `max`; `expected` is ", expected u32"
   or ", expected u64". */
static bool uint_value(json *j, uint64_t max, const char *expected, uint64_t *out) {
    ws(j);
    int c = peek(j);
    if (c < 0) return fail(j, "EOF while parsing a value");
    if (c != '-' && (c < '0' || c > '9')) {
        if (!starts_value(c)) return fail(j, "expected value");
        return fail3(j, "invalid type: ", kind_of(c), expected);
    }
    bool negative, is_float;
    uint64_t v;
    if (!number(j, &negative, &v, &is_float)) return false;
    if (is_float) return fail3(j, "invalid type: floating point", WEIR_STR(""), expected);
    if (negative) return fail3(j, "invalid value: a negative integer", WEIR_STR(""), expected);
    if (v > max) return fail3(j, "invalid value: integer out of range", WEIR_STR(""), expected);
    *out = v;
    return true;
}

static bool literal(json *j, const char *word) {
    for (const char *p = word; *p; p++) {
        if (peek(j) != (uint8_t)*p) return peek(j) < 0 ? fail(j, "EOF while parsing a value") : fail(j, "expected ident");
        j->pos++;
    }
    return true;
}

/* Enter an object or array, at its opening bracket. The order's own
   structure nests three deep, so there is no depth to limit. */
static bool enter(json *j) {
    j->pos++;
    return true;
}

/* The next member of an object: *key, or *end at the closing brace.
   `index` counts the members read so far. */
static bool member(json *j, uint32_t index, weir_str *key, bool *end) {
    ws(j);
    int c = peek(j);
    *end = false;
    if (c == '}') {
        j->pos++;
        *end = true;
        return true;
    }
    if (index > 0) {
        if (c != ',') return c < 0 ? fail(j, "EOF while parsing an object") : fail(j, "expected `,` or `}`");
        j->pos++;
        ws(j);
        c = peek(j);
        if (c == '}') return fail(j, "trailing comma");
    }
    if (c != '"') return c < 0 ? fail(j, "EOF while parsing an object") : fail(j, "key must be a string");
    if (!string(j, key)) return false;
    ws(j);
    if (peek(j) != ':') return peek(j) < 0 ? fail(j, "EOF while parsing an object") : fail(j, "expected `:`");
    j->pos++;
    return true;
}

/* Whether another element of an array follows (false, with *end, at the
   closing bracket). */
static bool element(json *j, uint32_t index, bool *end) {
    ws(j);
    int c = peek(j);
    *end = false;
    if (c == ']') {
        j->pos++;
        *end = true;
        return true;
    }
    if (index > 0) {
        if (c != ',') return c < 0 ? fail(j, "EOF while parsing a list") : fail(j, "expected `,` or `]`");
        j->pos++;
        ws(j);
        if (peek(j) == ']') return fail(j, "trailing comma");
    }
    return true;
}

/* A string that is skipped, at its opening quote: like serde_json, check
   the escapes and control characters, but not UTF-8 or surrogates. */
static bool skip_string(json *j) {
    uint32_t ignored;
    j->pos++;
    for (;;) {
        if (j->pos >= j->len) return fail(j, "EOF while parsing a string");
        uint8_t c = j->s[j->pos++];
        if (c == '"') return true;
        if (c < 0x20) return fail(j, "control character (\\u0000-\\u001F) found while parsing a string");
        if (c != '\\') continue;
        if (j->pos >= j->len) return fail(j, "EOF while parsing a string");
        c = j->s[j->pos++];
        if (c == 'u') {
            if (!hex4(j, &ignored)) return false;
        } else if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' && c != 't') {
            return fail(j, "invalid escape");
        }
    }
}

/* Any value, read and thrown away (unknown fields). Like serde_json, with
   a stack of the open brackets in memory rather than by recursion, so
   nesting is limited only by the length of the text. */
static bool skip_in(json *j, weir_buf *open) {
    for (;;) {
        /* A value. */
        ws(j);
        int c = peek(j);
        bool negative, is_float;
        uint64_t v;
        switch (c) {
        case -1: return fail(j, "EOF while parsing a value");
        case '"':
            if (!skip_string(j)) return false;
            break;
        case 't':
            if (!literal(j, "true")) return false;
            break;
        case 'f':
            if (!literal(j, "false")) return false;
            break;
        case 'n':
            if (!literal(j, "null")) return false;
            break;
        case '[':
        case '{':
            j->pos++;
            ws(j);
            if (peek(j) == (c == '[' ? ']' : '}')) {
                j->pos++;
                break;
            }
            weir_put_byte(open, (uint8_t)c);
            if (c == '[') continue;
            /* the first key of an object */
            if (peek(j) != '"') return peek(j) < 0 ? fail(j, "EOF while parsing an object") : fail(j, "key must be a string");
            if (!skip_string(j)) return false;
            ws(j);
            if (peek(j) != ':') return peek(j) < 0 ? fail(j, "EOF while parsing an object") : fail(j, "expected `:`");
            j->pos++;
            continue;
        default:
            if (c != '-' && (c < '0' || c > '9')) return fail(j, "expected value");
            if (!number(j, &negative, &v, &is_float)) return false;
        }
        /* After a value: close brackets, or go on to the next element. */
        for (;;) {
            if (open->len == 0) return true;
            uint8_t top = open->ptr[open->len - 1];
            ws(j);
            c = peek(j);
            if (c == (top == '[' ? ']' : '}')) {
                j->pos++;
                open->len--;
                continue;
            }
            if (c != ',') {
                if (c < 0) return fail(j, top == '[' ? "EOF while parsing a list" : "EOF while parsing an object");
                return fail(j, top == '[' ? "expected `,` or `]`" : "expected `,` or `}`");
            }
            j->pos++;
            ws(j);
            if (top == '{') {
                if (peek(j) == '}') return fail(j, "trailing comma");
                if (peek(j) != '"') return peek(j) < 0 ? fail(j, "EOF while parsing an object") : fail(j, "key must be a string");
                if (!skip_string(j)) return false;
                ws(j);
                if (peek(j) != ':') return peek(j) < 0 ? fail(j, "EOF while parsing an object") : fail(j, "expected `:`");
                j->pos++;
            } else if (peek(j) == ']') {
                return fail(j, "trailing comma");
            }
            break;
        }
    }
}

static bool skip(json *j) {
    weir_buf open = {0};
    bool ok = skip_in(j, &open);
    weir_buf_free(&open);
    return ok;
}

/* The value must be the whole text. */
static bool finish(json *j) {
    ws(j);
    return j->pos == j->len || fail(j, "trailing characters");
}

static bool duplicate(json *j, const char *field) {
    return fail3(j, "duplicate field `", weir_cstr(field), "`");
}

static bool missing(json *j, const char *field) {
    return fail3(j, "missing field `", weir_cstr(field), "`");
}

/* ---- the order ---------------------------------------------------------- */

typedef struct order {
    weir_str order_id;
    weir_str customer;
    weir_str currency;
    uint32_t item_count;
    uint64_t total;
    /* The first item that fails the checks, found while reading: the Rust
       twin checks items in order once the whole order is read. */
    bool item_failed;
    bool zero_quantity; /* else: the total overflows */
    weir_str failed_sku;
} order;

static bool item(json *j, order *o) {
    weir_str key, sku = {"", 0};
    uint64_t qty = 0, price = 0;
    bool has_sku = false, has_qty = false, has_price = false, end;
    if (!expect(j, '{', ", expected struct Item") || !enter(j)) return false;
    for (uint32_t i = 0;; i++) {
        if (!member(j, i, &key, &end)) return false;
        if (end) break;
        if (weir_str_eq(key, WEIR_STR("sku"))) {
            if (has_sku) return duplicate(j, "sku");
            if (!string_value(j, &sku)) return false;
            has_sku = true;
        } else if (weir_str_eq(key, WEIR_STR("qty"))) {
            if (has_qty) return duplicate(j, "qty");
            if (!uint_value(j, UINT32_MAX, ", expected u32", &qty)) return false;
            has_qty = true;
        } else if (weir_str_eq(key, WEIR_STR("price_cents"))) {
            if (has_price) return duplicate(j, "price_cents");
            if (!uint_value(j, UINT64_MAX, ", expected u64", &price)) return false;
            has_price = true;
        } else if (!skip(j)) {
            return false;
        }
    }
    if (!has_sku) return missing(j, "sku");
    if (!has_qty) return missing(j, "qty");
    if (!has_price) return missing(j, "price_cents");
    o->item_count++;
    if (!o->item_failed) {
        uint64_t line;
        if (qty == 0) {
            o->item_failed = true;
            o->zero_quantity = true;
            o->failed_sku = sku;
        } else if (__builtin_mul_overflow(qty, price, &line) || __builtin_add_overflow(o->total, line, &o->total)) {
            o->item_failed = true;
            o->zero_quantity = false;
        }
    }
    return true;
}

static bool read_order(json *j, order *o) {
    weir_str key;
    bool has_id = false, has_customer = false, has_currency = false, has_items = false, end;
    __builtin_memset(o, 0, sizeof *o);
    if (!expect(j, '{', ", expected struct Order") || !enter(j)) return false;
    for (uint32_t i = 0;; i++) {
        if (!member(j, i, &key, &end)) return false;
        if (end) break;
        if (weir_str_eq(key, WEIR_STR("order_id"))) {
            if (has_id) return duplicate(j, "order_id");
            if (!string_value(j, &o->order_id)) return false;
            has_id = true;
        } else if (weir_str_eq(key, WEIR_STR("customer"))) {
            if (has_customer) return duplicate(j, "customer");
            if (!string_value(j, &o->customer)) return false;
            has_customer = true;
        } else if (weir_str_eq(key, WEIR_STR("currency"))) {
            if (has_currency) return duplicate(j, "currency");
            if (!string_value(j, &o->currency)) return false;
            has_currency = true;
        } else if (weir_str_eq(key, WEIR_STR("items"))) {
            if (has_items) return duplicate(j, "items");
            if (!expect(j, '[', ", expected a sequence") || !enter(j)) return false;
            for (uint32_t k = 0;; k++) {
                if (!element(j, k, &end)) return false;
                if (end) break;
                if (!item(j, o)) return false;
            }
            has_items = true;
        } else if (!skip(j)) {
            return false;
        }
    }
    if (!has_id) return missing(j, "order_id");
    if (!has_customer) return missing(j, "customer");
    if (!has_currency) return missing(j, "currency");
    if (!has_items) return missing(j, "items");
    return finish(j);
}

/* ---- the configuration -------------------------------------------------- */

static const weir_str default_currencies[] = {WEIR_STR_INIT("EUR"), WEIR_STR_INIT("USD"), WEIR_STR_INIT("GBP")};
#define DEFAULT_MAX_TOTAL_CENTS 100000000u

/* The settings in force: the defaults until weir_init accepts others. */
static const weir_str *currencies = default_currencies;
static uint32_t currency_count = 3;
static uint64_t max_total_cents = DEFAULT_MAX_TOTAL_CENTS;
/* What the configured currencies point into. */
static uint8_t *config_text;
static weir_buf config_list;

static bool read_settings(json *j, weir_buf *list, uint64_t *max_total) {
    weir_str key, currency;
    bool has_currencies = false, has_max = false, end;
    *max_total = DEFAULT_MAX_TOTAL_CENTS;
    if (!expect(j, '{', ", expected struct Settings") || !enter(j)) return false;
    for (uint32_t i = 0;; i++) {
        if (!member(j, i, &key, &end)) return false;
        if (end) break;
        if (weir_str_eq(key, WEIR_STR("currencies"))) {
            if (has_currencies) return duplicate(j, "currencies");
            if (!expect(j, '[', ", expected a sequence") || !enter(j)) return false;
            for (uint32_t k = 0;; k++) {
                if (!element(j, k, &end)) return false;
                if (end) break;
                if (!string_value(j, &currency)) return false;
                weir_put(list, &currency, sizeof currency);
            }
            has_currencies = true;
        } else if (weir_str_eq(key, WEIR_STR("max_total_cents"))) {
            if (has_max) return duplicate(j, "max_total_cents");
            if (!uint_value(j, UINT64_MAX, ", expected u64", max_total)) return false;
            has_max = true;
        } else {
            return fail3(j, "unknown field `", key, "`, expected `currencies` or `max_total_cents`");
        }
    }
    if (!has_currencies) {
        weir_put(list, default_currencies, sizeof default_currencies);
    }
    return finish(j);
}

static bool init(weir_bytes config, weir_buf *reason) {
    /* No configuration reads as {}, as in the Rust SDK. */
    if (config.len == 0) config = (weir_bytes){(const uint8_t *)"{}", 2};
    weir_buf error = {0}, list = {0};
    uint64_t max_total;
    json j;
    json_open(&j, config, &error);
    bool ok = read_settings(&j, &list, &max_total);
    uint32_t count = list.len / (uint32_t)sizeof(weir_str);
    if (!ok) {
        weir_put_cstr(reason, "invalid plugin config: ");
        weir_put_str(reason, weir_buf_str(&error));
    } else if (count == 0) {
        weir_put_cstr(reason, "`currencies` must name at least one currency");
        ok = false;
    }
    weir_buf_free(&error);
    if (!ok) {
        json_close(&j);
        weir_buf_free(&list);
        return false;
    }
    /* Keep the text the currencies point into for the instance's life. */
    weir_free(config_text);
    weir_buf_free(&config_list);
    config_text = j.s;
    config_list = list;
    currencies = (const weir_str *)config_list.ptr;
    currency_count = count;
    max_total_cents = max_total;
    return true;
}

WEIR_INIT(init)

/* ---- the handler -------------------------------------------------------- */

/* Whether `s` is empty or only white space, as Rust's str::trim sees it. */
static bool blank(weir_str s) {
    const uint8_t *p = (const uint8_t *)s.ptr;
    uint32_t i = 0;
    while (i < s.len) {
        uint32_t cp, n;
        if (p[i] < 0x80) cp = p[i], n = 1;
        else if (p[i] < 0xE0) cp = (uint32_t)(p[i] & 0x1F) << 6 | (p[i + 1] & 0x3F), n = 2;
        else if (p[i] < 0xF0) cp = (uint32_t)(p[i] & 0x0F) << 12 | (uint32_t)(p[i + 1] & 0x3F) << 6 | (p[i + 2] & 0x3F), n = 3;
        else return false; /* nothing above U+FFFF is white space */
        bool space = (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
                     (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
                     cp == 0x205F || cp == 0x3000;
        if (!space) return false;
        i += n;
    }
    return true;
}

/* `s` in double quotes, escaped as Rust's {:?} escapes plain text. */
static void put_debug_str(weir_buf *b, weir_str s) {
    static const char hex[] = "0123456789abcdef";
    weir_put_byte(b, '"');
    for (uint32_t i = 0; i < s.len; i++) {
        uint8_t c = (uint8_t)s.ptr[i];
        switch (c) {
        case '"': weir_put_cstr(b, "\\\""); break;
        case '\\': weir_put_cstr(b, "\\\\"); break;
        case '\n': weir_put_cstr(b, "\\n"); break;
        case '\r': weir_put_cstr(b, "\\r"); break;
        case '\t': weir_put_cstr(b, "\\t"); break;
        case 0: weir_put_cstr(b, "\\0"); break;
        default:
            if (c < 0x20 || c == 0x7F) {
                weir_put_cstr(b, "\\u{");
                if (c >> 4) weir_put_byte(b, (uint8_t)hex[c >> 4]);
                weir_put_byte(b, (uint8_t)hex[c & 15]);
                weir_put_byte(b, '}');
            } else {
                weir_put_byte(b, c);
            }
        }
    }
    weir_put_byte(b, '"');
}

static bool accepted(weir_str currency) {
    for (uint32_t i = 0; i < currency_count; i++) {
        if (weir_str_eq(currencies[i], currency)) return true;
    }
    return false;
}

/* The checks, in the Rust twin's order; false after a rejection. */
static bool check(const order *o, weir_outcome *out) {
    weir_buf *why;
    if (blank(o->order_id)) {
        weir_reject(out, WEIR_STR("order_id is empty"));
        return false;
    }
    if (o->item_count == 0) {
        why = weir_reject_text(out);
        weir_put_cstr(why, "order ");
        weir_put_str(why, o->order_id);
        weir_put_cstr(why, " has no items");
        return false;
    }
    if (!accepted(o->currency)) {
        why = weir_reject_text(out);
        weir_put_cstr(why, "order ");
        weir_put_str(why, o->order_id);
        weir_put_cstr(why, ": currency ");
        put_debug_str(why, o->currency);
        weir_put_cstr(why, " is not accepted (accepted: ");
        for (uint32_t i = 0; i < currency_count; i++) {
            if (i > 0) weir_put_cstr(why, ", ");
            weir_put_str(why, currencies[i]);
        }
        weir_put_cstr(why, ")");
        return false;
    }
    if (o->item_failed) {
        why = weir_reject_text(out);
        weir_put_cstr(why, "order ");
        weir_put_str(why, o->order_id);
        if (o->zero_quantity) {
            weir_put_cstr(why, ": item ");
            weir_put_str(why, o->failed_sku);
            weir_put_cstr(why, " has quantity 0");
        } else {
            weir_put_cstr(why, ": total overflows");
        }
        return false;
    }
    if (o->total > max_total_cents) {
        why = weir_reject_text(out);
        weir_put_cstr(why, "order ");
        weir_put_str(why, o->order_id);
        weir_put_cstr(why, ": total ");
        weir_put_u64(why, o->total);
        weir_put_cstr(why, " exceeds the limit ");
        weir_put_u64(why, max_total_cents);
        return false;
    }
    return true;
}

static void handle(const weir_delivery *d, weir_outcome *out) {
    weir_buf error = {0};
    json j;
    order o;
    json_open(&j, d->event.payload, &error);
    if (!read_order(&j, &o)) {
        weir_buf *why = weir_reject_text(out);
        weir_put_cstr(why, "invalid JSON payload: ");
        weir_put_str(why, weir_buf_str(&error));
    } else if (check(&o, out)) {
        weir_buf line = {0}, payload = {0};
        weir_put_cstr(&line, "order ");
        weir_put_str(&line, o.order_id);
        weir_put_cstr(&line, " valid, total ");
        weir_put_u64(&line, o.total);
        weir_log(WEIR_DEBUG, weir_buf_str(&line));

        /* The fields of the Rust twin's `Validated`, in its order. */
        weir_put_cstr(&payload, "{\"order_id\":");
        weir_put_json_str(&payload, o.order_id);
        weir_put_cstr(&payload, ",\"customer\":");
        weir_put_json_str(&payload, o.customer);
        weir_put_cstr(&payload, ",\"total_cents\":");
        weir_put_u64(&payload, o.total);
        weir_put_cstr(&payload, ",\"currency\":");
        weir_put_json_str(&payload, o.currency);
        weir_put_cstr(&payload, ",\"item_count\":");
        weir_put_u64(&payload, o.item_count);
        weir_put_byte(&payload, '}');

        weir_emit e = weir_emit_caused_by(&d->event, WEIR_STR("orders.order.validated"));
        e.payload = weir_buf_bytes(&payload);
        weir_emit_add(out, &e);
        weir_buf_free(&line);
        weir_buf_free(&payload);
    }
    weir_buf_free(&error);
    json_close(&j);
}

WEIR_HANDLER(handle)

static const weir_str topics[] = {WEIR_STR_INIT("orders.order.created")};
static const uint32_t schema_versions[] = {1};
static const weir_description description = {
    .name = WEIR_STR_INIT("order-validator-c"),
    .version = WEIR_STR_INIT("0.1.0"),
    .description = WEIR_STR_INIT("Validates new orders (in C): emits orders.order.validated or rejects with the reason"),
    .topics = topics,
    .topic_count = 1,
    .schema_versions = schema_versions,
    .schema_version_count = 1,
};

WEIR_DESCRIBE(description)
