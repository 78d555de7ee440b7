/* SPDX-License-Identifier: MIT */
/*
 * RESP2 over bytes: the request parser (arrays of bulk strings and inline commands), the reply
 * encoders, the request encoder and the reply parser declared in kvs/resp.h, plus struct
 * kvs_buf. The wire rules implemented here are written down in docs/protocol.md.
 *
 * This file owns no state and does no I/O. Parsers never allocate and never trust a length a
 * peer sent before checking it against struct kvs_resp_limits; every read is bounded by the
 * length the caller passed, so any byte sequence is safe input. Only kvs_buf allocates, for
 * bytes its owner appends.
 */
#include "kvs/resp.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs/error.h"

/* Error messages, worded like Redis's so that clients and tests written for Redis match. */
#define ERR_BULK       "Protocol error: invalid bulk length"
#define ERR_MBULK      "Protocol error: invalid multibulk length"
#define ERR_INLINE_BIG "Protocol error: too big inline request"
#define ERR_QUOTES     "Protocol error: unbalanced quotes in request"
/* Redis skips the two bytes after bulk data without looking; we check them, because anything
 * else there means the peer's framing is off and every later request would be misread. */
#define ERR_BULK_CRLF   "Protocol error: expected CRLF after bulk data"
#define ERR_REPLY_TYPE  "Protocol error: unknown reply type"
#define ERR_REPLY_LINE  "Protocol error: invalid reply line"
#define ERR_REPLY_BIG   "Protocol error: too big reply line"
#define ERR_REPLY_INT   "Protocol error: invalid integer reply"
#define ERR_REPLY_BULK  "Protocol error: invalid bulk length in reply"
#define ERR_REPLY_MBULK "Protocol error: invalid multibulk length in reply"
#define ERR_REPLY_SPAN  "Protocol error: truncated array span"

/* The smallest possible request element is "$0\r\n\r\n". */
#define MIN_BULK_BYTES 6

static const struct kvs_resp_limits default_limits = KVS_RESP_LIMITS_DEFAULT;

/* Limits used when walking an array span that the parser already validated under the
 * caller's limits: only the span's own bounds matter then. */
static const struct kvs_resp_limits no_limits = {SIZE_MAX, SIZE_MAX, SIZE_MAX};

void kvs_resp_limits_default(struct kvs_resp_limits *lim)
{
    *lim = default_limits;
}

static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static size_t sat_mul(size_t a, size_t b)
{
    return b != 0 && a > SIZE_MAX / b ? SIZE_MAX : a * b;
}

/* ---------------------------------------------------------------------------------------- */
/* struct kvs_buf                                                                           */
/* ---------------------------------------------------------------------------------------- */

void kvs_buf_init(struct kvs_buf *b)
{
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
}

void kvs_buf_fini(struct kvs_buf *b)
{
    if (b == NULL)
        return;
    free(b->p);
    kvs_buf_init(b);
}

/* The slow path of reserve, kept out of line so that the common "it fits" test inlines. */
static int buf_grow(struct kvs_buf *b, size_t extra)
{
    size_t want, cap;
    char *p;

    if (extra > SIZE_MAX - b->len)
        return -ENOMEM;
    want = b->len + extra;
    cap = b->cap != 0 ? b->cap : 64;
    /* Doubling keeps appends amortised O(1); past SIZE_MAX / 2 just take what is needed. */
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(struct kvs_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    return buf_grow(b, extra);
}

int kvs_buf_reserve(struct kvs_buf *b, size_t extra)
{
    return buf_reserve(b, extra);
}

int kvs_buf_append(struct kvs_buf *b, const void *p, size_t n)
{
    int rc;

    if (n == 0)
        return 0;
    rc = buf_reserve(b, n);
    if (rc < 0)
        return rc;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void kvs_buf_consume(struct kvs_buf *b, size_t n)
{
    assert(n <= b->len);
    if (n == 0)
        return;
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoders                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Longest "<type><-digits>\r\n" line for a 64-bit value: 1 + 20 + 2. */
#define NUM_LINE_MAX 24

static const char digit_pairs[201] = "00010203040506070809"
                                     "10111213141516171819"
                                     "20212223242526272829"
                                     "30313233343536373839"
                                     "40414243444546474849"
                                     "50515253545556575859"
                                     "60616263646566676869"
                                     "70717273747576777879"
                                     "80818283848586878889"
                                     "90919293949596979899";

/* Write the decimal digits of v so that they end just before end; returns the first digit.
 * Two digits per division halves the divisions on the reply hot path. */
static char *put_digits(char *end, uint64_t v)
{
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;

        v /= 100;
        *--end = digit_pairs[d + 1];
        *--end = digit_pairs[d];
    }
    if (v >= 10) {
        unsigned d = (unsigned)v * 2;

        *--end = digit_pairs[d + 1];
        *--end = digit_pairs[d];
    } else {
        *--end = (char)('0' + v);
    }
    return end;
}

/* Write "<type>[-]digits\r\n" at dst (which has NUM_LINE_MAX bytes); returns bytes written. */
static size_t put_num_line(char *dst, char type, uint64_t mag, bool neg)
{
    char tmp[NUM_LINE_MAX];
    char *end = tmp + sizeof(tmp);
    char *s;

    end[-2] = '\r';
    end[-1] = '\n';
    s = put_digits(end - 2, mag);
    if (neg)
        *--s = '-';
    *--s = type;
    memcpy(dst, s, (size_t)(end - s));
    return (size_t)(end - s);
}

static int append_num_line(struct kvs_buf *b, char type, uint64_t mag, bool neg)
{
    int rc = buf_reserve(b, NUM_LINE_MAX);

    if (rc < 0)
        return rc;
    /* Single digits (0/1 from DEL, EXISTS, short bulk lengths) skip the general path. */
    if (mag < 10 && !neg) {
        char *d = b->p + b->len;

        d[0] = type;
        d[1] = (char)('0' + mag);
        d[2] = '\r';
        d[3] = '\n';
        b->len += 4;
        return 0;
    }
    b->len += put_num_line(b->p + b->len, type, mag, neg);
    return 0;
}

/* Append type + s + CRLF with CR and LF in s turned into spaces: a bare line ending inside a
 * simple string or error would cut the reply short and desynchronise the client. */
static int append_line(struct kvs_buf *b, char type, const char *s, size_t len)
{
    char *d;
    int rc;

    if (len > SIZE_MAX - 3)
        return -ENOMEM;
    rc = buf_reserve(b, len + 3);
    if (rc < 0)
        return rc;
    d = b->p + b->len;
    *d++ = type;
    for (size_t i = 0; i < len; i++)
        d[i] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
    d[len] = '\r';
    d[len + 1] = '\n';
    b->len += len + 3;
    return 0;
}

int kvs_resp_append_simple(struct kvs_buf *b, const char *s, size_t len)
{
    return append_line(b, '+', s, len);
}

int kvs_resp_append_ok(struct kvs_buf *b)
{
    return kvs_buf_append(b, "+OK\r\n", 5);
}

int kvs_resp_append_error(struct kvs_buf *b, const char *msg, size_t len)
{
    return append_line(b, '-', msg, len);
}

int kvs_resp_append_errorf(struct kvs_buf *b, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = (int)sizeof(msg) - 1;
    return append_line(b, '-', msg, (size_t)n);
}

int kvs_resp_append_int(struct kvs_buf *b, long long v)
{
    /* Negate in unsigned arithmetic so that LLONG_MIN has a magnitude too. */
    if (v < 0)
        return append_num_line(b, ':', -(uint64_t)v, true);
    return append_num_line(b, ':', (uint64_t)v, false);
}

int kvs_resp_append_bulk_header(struct kvs_buf *b, size_t len)
{
    return append_num_line(b, '$', len, false);
}

int kvs_resp_append_bulk(struct kvs_buf *b, const void *p, size_t len)
{
    char *d;
    int rc;

    /* One reservation for header, data and trailer, so the value is copied exactly once. */
    if (len > SIZE_MAX - NUM_LINE_MAX - 2)
        return -ENOMEM;
    rc = buf_reserve(b, NUM_LINE_MAX + len + 2);
    if (rc < 0)
        return rc;
    d = b->p + b->len;
    if (len < 10) {
        d[0] = '$';
        d[1] = (char)('0' + len);
        d[2] = '\r';
        d[3] = '\n';
        d += 4;
    } else {
        d += put_num_line(d, '$', len, false);
    }
    if (len > 0)
        memcpy(d, p, len);
    d[len] = '\r';
    d[len + 1] = '\n';
    b->len = (size_t)(d - b->p) + len + 2;
    return 0;
}

int kvs_resp_append_null(struct kvs_buf *b)
{
    return kvs_buf_append(b, "$-1\r\n", 5);
}

int kvs_resp_append_array(struct kvs_buf *b, size_t n)
{
    return append_num_line(b, '*', n, false);
}

int kvs_resp_append_null_array(struct kvs_buf *b)
{
    return kvs_buf_append(b, "*-1\r\n", 5);
}

int kvs_resp_append_command(struct kvs_buf *b, int argc, const char *const *argv,
                            const size_t *argvlen)
{
    size_t total = NUM_LINE_MAX;
    size_t start = b->len;
    int rc;

    if (argc <= 0)
        return -EINVAL;
    /* Size the whole request first: one allocation, then plain stores. */
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);

        total = sat_add(total, sat_add(n, NUM_LINE_MAX + 2));
    }
    if (total == SIZE_MAX)
        return -ENOMEM;
    rc = buf_reserve(b, total);
    if (rc < 0)
        return rc;
    b->len += put_num_line(b->p + b->len, '*', (uint64_t)argc, false);
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);

        rc = kvs_resp_append_bulk(b, argv[i], n);
        /* Cannot fail: the space was reserved above. */
        assert(rc == 0);
        if (rc < 0) {
            b->len = start;
            return rc;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Length headers                                                                           */
/* ---------------------------------------------------------------------------------------- */

enum len_result { LEN_BAD = -1, LEN_MORE = 0, LEN_OK = 1 };

/*
 * Parse the decimal length of a "$N\r\n" or "*N\r\n" header; p points just after the type byte
 * and avail bytes are readable. Only canonical decimals are accepted (no sign, no leading
 * zeros, no spaces), plus exactly "-1" when allow_null. Every prefix is checked as it arrives,
 * so "$1099511627776" is refused at the digit that passes max rather than once the line ends,
 * and a header can never grow long enough to need buffering. On LEN_OK, *val holds the value,
 * *is_null says "-1", and *used the header bytes after the type byte, CRLF included.
 */
static enum len_result parse_len(const char *p, size_t avail, size_t max, bool allow_null,
                                 size_t *val, bool *is_null, size_t *used)
{
    size_t i = 0;
    size_t v = 0;

    *is_null = false;
    if (avail == 0)
        return LEN_MORE;
    if (p[0] == '-') {
        static const char null_hdr[] = "-1\r\n";

        if (!allow_null)
            return LEN_BAD;
        if (avail < 4)
            return memcmp(p, null_hdr, avail) == 0 ? LEN_MORE : LEN_BAD;
        if (memcmp(p, null_hdr, 4) != 0)
            return LEN_BAD;
        *val = 0;
        *is_null = true;
        *used = 4;
        return LEN_OK;
    }
    for (; i < avail; i++) {
        /* Unsigned wrap-around turns every non-digit into a value above 9: one test. */
        unsigned d = (unsigned char)p[i] - (unsigned)'0';

        if (d > 9)
            break;
        /* A leading zero may only be the whole number, as in Redis's string2ll(). */
        if (i == 1 && p[0] == '0')
            return LEN_BAD;
        /* v * 10 + d <= max, rearranged so that it cannot overflow. */
        if (d > max || v > (max - d) / 10)
            return LEN_BAD;
        v = v * 10 + d;
    }
    /* Every byte so far was a digit: the header may still be valid, wait. */
    if (i == avail)
        return LEN_MORE;
    if (i == 0 || p[i] != '\r')
        return LEN_BAD;
    if (i + 1 == avail)
        return LEN_MORE;
    if (p[i + 1] != '\n')
        return LEN_BAD;
    *val = v;
    *used = i + 2;
    return LEN_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Request parser                                                                           */
/* ---------------------------------------------------------------------------------------- */

void kvs_resp_request_reset(struct kvs_resp_request *req)
{
    req->st_active = 0;
    req->st_buf = 0;
    req->st_argv = 0;
    req->st_cap = 0;
    req->st_nargs = 0;
    req->st_argi = 0;
    req->st_pos = 0;
}

void kvs_resp_request_init(struct kvs_resp_request *req, struct kvs_resp_arg *argv, size_t cap)
{
    memset(req, 0, sizeof(*req));
    /* A NULL array with a non-zero capacity would be written through: treat it as empty. */
    req->argv = argv;
    req->argv_cap = argv != NULL ? cap : 0;
    kvs_resp_request_reset(req);
}

/* A protocol error ends the connection, so the partial state is dropped with it; a caller
 * that calls again anyway starts from a clean parser. */
static int proto_err(struct kvs_resp_request *req, const char *msg)
{
    kvs_resp_request_reset(req);
    req->err = msg;
    return KVS_EPROTO;
}

/* "expected '$', got 'x'" as Redis words it; a byte that is not printable ASCII is shown as
 * \xHH, since a raw control byte (a CR above all) cannot travel inside an error reply. */
static int proto_err_expected_dollar(struct kvs_resp_request *req, unsigned char c)
{
    if (c >= 0x20 && c < 0x7f)
        snprintf(req->st_err, sizeof(req->st_err), "Protocol error: expected '$', got '%c'", c);
    else
        snprintf(req->st_err, sizeof(req->st_err), "Protocol error: expected '$', got '\\x%02x'",
                 c);
    kvs_resp_request_reset(req);
    req->err = req->st_err;
    return KVS_EPROTO;
}

/*
 * The array request at buf[0] (buf[0] == '*'), resuming from req's state when it is active.
 * The state records the offset of the next element and how many elements are done; argv
 * entries already filled stay valid because resuming requires the same buffer address.
 */
static ssize_t parse_multibulk(struct kvs_resp_request *req, char *buf, size_t len,
                               const struct kvs_resp_limits *lim)
{
    size_t pos, used, n;
    bool is_null;

    if (!req->st_active) {
        switch (parse_len(buf + 1, len - 1, lim->max_array_len, true, &n, &is_null, &used)) {
        case LEN_BAD:
            return proto_err(req, ERR_MBULK);
        case LEN_MORE:
            req->need = len + 1;
            return 0;
        case LEN_OK:
            break;
        }
        /* "*0" and "*-1" are empty requests that Redis reads and ignores. */
        if (is_null || n == 0) {
            req->argc = 0;
            return (ssize_t)(1 + used);
        }
        req->st_active = 1;
        req->st_buf = (uintptr_t)buf;
        req->st_argv = (uintptr_t)req->argv;
        req->st_cap = req->argv_cap;
        req->st_nargs = n;
        req->st_argi = 0;
        req->st_pos = 1 + used;
    }

    pos = req->st_pos;
    while (req->st_argi < req->st_nargs) {
        size_t left = req->st_nargs - req->st_argi;
        size_t blen, data;

        if (pos == len) {
            req->need = sat_add(pos, sat_mul(left, MIN_BULK_BYTES));
            return 0;
        }
        if (buf[pos] != '$')
            return proto_err_expected_dollar(req, (unsigned char)buf[pos]);
        switch (parse_len(buf + pos + 1, len - pos - 1, lim->max_bulk_len, false, &blen, &is_null,
                          &used)) {
        case LEN_BAD:
            return proto_err(req, ERR_BULK);
        case LEN_MORE:
            req->need = sat_add(len + 1, sat_mul(left - 1, MIN_BULK_BYTES));
            return 0;
        case LEN_OK:
            break;
        }
        data = pos + 1 + used;
        /* Wait for the whole bulk and its CRLF; need tells the caller how much that is, so a
         * 100 MiB value costs one header parse, not one per received chunk. */
        if (len - data < 2 || len - data - 2 < blen) {
            req->need = sat_add(sat_add(data, sat_add(blen, 2)), sat_mul(left - 1, MIN_BULK_BYTES));
            return 0;
        }
        if (buf[data + blen] != '\r' || buf[data + blen + 1] != '\n')
            return proto_err(req, ERR_BULK_CRLF);
        if (req->st_argi < req->argv_cap) {
            req->argv[req->st_argi].p = buf + data;
            req->argv[req->st_argi].len = blen;
        }
        pos = data + blen + 2;
        req->st_argi++;
        req->st_pos = pos;
    }

    n = req->st_nargs;
    kvs_resp_request_reset(req);
    req->argc = n;
    if (n > req->argv_cap)
        return -ENOBUFS;
    return (ssize_t)pos;
}

/* White space between inline arguments, and after a closing quote (C's isspace()). */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* The bytes that end an unquoted inline argument. Redis skips vertical tab and form feed
 * between arguments but keeps them inside one ("a\vb" is one argument); so do we. */
static bool ends_arg(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Split an inline line s[0 .. n) into arguments with Redis's quoting rules: arguments are
 * separated by white space (see ends_arg()); "..." understands \xHH, \n, \r, \t, \b, \a and \<any>
 * escapes;
 * '...' understands only \'; a closing quote must be followed by white space or the end of the
 * line; a quote may open in the middle of an argument (a"b c" is one argument). Unlike Redis,
 * which works on C strings, a NUL byte is an ordinary byte here.
 *
 * With write false nothing is stored or written: the return value is the argument count, or -1
 * for unbalanced quotes. With write true the arguments are also unescaped in place and stored
 * in argv, which must have room for all of them. Each argument's output starts at its first
 * input byte and never outgrows its input, so arguments cannot overlap.
 */
static long split_inline(char *s, size_t n, struct kvs_resp_arg *argv, bool write)
{
    size_t i = 0;
    long argc = 0;

    for (;;) {
        size_t start, w;
        char quote = 0;

        while (i < n && is_space(s[i]))
            i++;
        if (i == n)
            return argc;
        start = i;
        w = i;
        for (;;) {
            char c;

            if (i == n) {
                if (quote != 0)
                    return -1;
                break;
            }
            c = s[i];
            if (quote == '"') {
                /* \x with fewer than two hex digits after it falls through to the generic
                 * "\<any>" rule below and yields a plain 'x', as in Redis. */
                if (c == '\\' && i + 3 < n && s[i + 1] == 'x' && hex_val(s[i + 2]) >= 0 &&
                    hex_val(s[i + 3]) >= 0) {
                    c = (char)(hex_val(s[i + 2]) * 16 + hex_val(s[i + 3]));
                    i += 3;
                } else if (c == '\\' && i + 1 < n) {
                    i++;
                    switch (s[i]) {
                    case 'n':
                        c = '\n';
                        break;
                    case 'r':
                        c = '\r';
                        break;
                    case 't':
                        c = '\t';
                        break;
                    case 'b':
                        c = '\b';
                        break;
                    case 'a':
                        c = '\a';
                        break;
                    default:
                        c = s[i];
                        break;
                    }
                } else if (c == '"') {
                    if (i + 1 < n && !is_space(s[i + 1]))
                        return -1;
                    i++;
                    break;
                }
            } else if (quote == '\'') {
                if (c == '\\' && i + 1 < n && s[i + 1] == '\'') {
                    c = '\'';
                    i++;
                } else if (c == '\'') {
                    if (i + 1 < n && !is_space(s[i + 1]))
                        return -1;
                    i++;
                    break;
                }
            } else if (ends_arg(c)) {
                break;
            } else if (c == '"' || c == '\'') {
                quote = c;
                i++;
                continue;
            }
            /* c is one output byte. The write cursor never passes the read cursor because
             * every output byte consumed at least one input byte. */
            if (write && w != i)
                s[w] = c;
            w++;
            i++;
        }
        if (write) {
            argv[argc].p = s + start;
            argv[argc].len = w - start;
        }
        argc++;
    }
}

/* An inline request: one line ending in "\n" (a "\r" before it is dropped). */
static ssize_t parse_inline(struct kvs_resp_request *req, char *buf, size_t len,
                            const struct kvs_resp_limits *lim)
{
    size_t scan = len < lim->max_inline_len ? len : lim->max_inline_len;
    const char *nl = memchr(buf, '\n', scan);
    size_t line, consumed;
    long argc;

    if (nl == NULL) {
        /* The line cannot end within the limit any more: refuse now rather than buffer an
         * endless line. */
        if (len >= lim->max_inline_len)
            return proto_err(req, ERR_INLINE_BIG);
        req->need = len + 1;
        return 0;
    }
    line = (size_t)(nl - buf);
    consumed = line + 1;
    if (line > 0 && buf[line - 1] == '\r')
        line--;
    /* Count first without writing, so that -ENOBUFS leaves the bytes as they were and the
     * caller can parse them again with a larger argv. */
    argc = split_inline(buf, line, NULL, false);
    if (argc < 0)
        return proto_err(req, ERR_QUOTES);
    if ((size_t)argc > lim->max_array_len)
        return proto_err(req, ERR_MBULK);
    req->argc = (size_t)argc;
    if ((size_t)argc > req->argv_cap)
        return -ENOBUFS;
    if (argc > 0)
        split_inline(buf, line, req->argv, true);
    return (ssize_t)consumed;
}

ssize_t kvs_resp_parse_request(struct kvs_resp_request *req, char *buf, size_t len,
                               const struct kvs_resp_limits *lim)
{
    if (lim == NULL)
        lim = &default_limits;
    req->argc = 0;
    req->need = 0;
    req->err = NULL;
    /* Resuming is only sound on the very bytes seen before; anything else starts over. */
    if (req->st_active && (req->st_buf != (uintptr_t)buf || req->st_argv != (uintptr_t)req->argv ||
                           req->st_cap != req->argv_cap || len < req->st_pos))
        kvs_resp_request_reset(req);
    if (req->st_active)
        return parse_multibulk(req, buf, len, lim);
    if (len == 0) {
        req->need = 1;
        return 0;
    }
    if (buf[0] == '*')
        return parse_multibulk(req, buf, len, lim);
    return parse_inline(req, buf, len, lim);
}

/* ---------------------------------------------------------------------------------------- */
/* Reply parser                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* One reply element at buf[pos]: scalars whole, arrays only their header (out->count set,
 * out->str/len not yet). Returns LEN_OK with *next after the element, LEN_MORE with *need, or
 * LEN_BAD with out->err. */
static enum len_result reply_elem(const char *buf, size_t len, size_t pos,
                                  const struct kvs_resp_limits *lim, struct kvs_resp_reply *out,
                                  size_t *next, size_t *need)
{
    const char *p = buf + pos + 1;
    size_t avail = len - pos - 1;
    size_t n, used;
    bool is_null;
    enum len_result r;

    switch (buf[pos]) {
    case '+':
    case '-': {
        size_t scan = avail < lim->max_inline_len ? avail : lim->max_inline_len;
        const char *cr = memchr(p, '\r', scan);

        if (cr == NULL) {
            if (avail >= lim->max_inline_len) {
                out->err = ERR_REPLY_BIG;
                return LEN_BAD;
            }
            *need = len + 1;
            return LEN_MORE;
        }
        n = (size_t)(cr - p);
        if (n + 1 == avail) {
            *need = len + 1;
            return LEN_MORE;
        }
        if (cr[1] != '\n') {
            out->err = ERR_REPLY_LINE;
            return LEN_BAD;
        }
        out->type = buf[pos] == '+' ? KVS_RESP_SIMPLE : KVS_RESP_ERROR;
        out->str = p;
        out->len = n;
        *next = pos + 1 + n + 2;
        return LEN_OK;
    }
    case ':': {
        size_t i = 0;
        bool neg = false;
        uint64_t v = 0;
        uint64_t max;

        /* Unlike lengths, integer replies are signed and may take any 64-bit value. */
        if (avail > 0 && p[0] == '-') {
            neg = true;
            i = 1;
        }
        /* LLONG_MIN's magnitude is one more than LLONG_MAX's. */
        max = neg ? (uint64_t)LLONG_MAX + 1 : (uint64_t)LLONG_MAX;
        for (; i < avail; i++) {
            unsigned d = (unsigned char)p[i] - (unsigned)'0';

            if (d > 9)
                break;
            if (v > (max - d) / 10) {
                out->err = ERR_REPLY_INT;
                return LEN_BAD;
            }
            v = v * 10 + d;
        }
        /* Digits up to the end, or a CR as the very last byte: the line may still end well. */
        if (i == avail || (i + 1 == avail && p[i] == '\r')) {
            *need = len + 1;
            return LEN_MORE;
        }
        if (i == (neg ? 1u : 0u) || p[i] != '\r' || p[i + 1] != '\n') {
            out->err = ERR_REPLY_INT;
            return LEN_BAD;
        }
        out->type = KVS_RESP_INTEGER;
        if (!neg)
            out->integer = (long long)v;
        else if (v == (uint64_t)LLONG_MAX + 1)
            out->integer = LLONG_MIN;
        else
            out->integer = -(long long)v;
        *next = pos + 1 + i + 2;
        return LEN_OK;
    }
    case '$':
        r = parse_len(p, avail, lim->max_bulk_len, true, &n, &is_null, &used);
        if (r == LEN_BAD)
            out->err = ERR_REPLY_BULK;
        if (r != LEN_OK) {
            *need = len + 1;
            return r;
        }
        if (is_null) {
            out->type = KVS_RESP_NULL;
            *next = pos + 1 + used;
            return LEN_OK;
        }
        if (avail - used < 2 || avail - used - 2 < n) {
            *need = sat_add(pos + 1 + used, sat_add(n, 2));
            return LEN_MORE;
        }
        if (p[used + n] != '\r' || p[used + n + 1] != '\n') {
            out->err = ERR_BULK_CRLF;
            return LEN_BAD;
        }
        out->type = KVS_RESP_BULK;
        out->str = p + used;
        out->len = n;
        *next = pos + 1 + used + n + 2;
        return LEN_OK;
    case '*':
        r = parse_len(p, avail, lim->max_array_len, true, &n, &is_null, &used);
        if (r == LEN_BAD)
            out->err = ERR_REPLY_MBULK;
        if (r != LEN_OK) {
            *need = len + 1;
            return r;
        }
        out->type = is_null ? KVS_RESP_NULL : KVS_RESP_ARRAY;
        out->count = n;
        *next = pos + 1 + used;
        return LEN_OK;
    default:
        out->err = ERR_REPLY_TYPE;
        return LEN_BAD;
    }
}

/*
 * One whole reply at buf[pos]. An array is validated by counting elements still owed rather
 * than by recursion: each nested header adds its count, each element pays one. No stack grows
 * with nesting, and the count is bounded by the bytes, since every element takes at least 3.
 */
static enum len_result reply_whole(const char *buf, size_t len, size_t pos,
                                   const struct kvs_resp_limits *lim, struct kvs_resp_reply *out,
                                   size_t *next, size_t *need)
{
    struct kvs_resp_reply el;
    size_t owed, start;
    enum len_result r;

    if (pos == len) {
        *need = len + 1;
        return LEN_MORE;
    }
    r = reply_elem(buf, len, pos, lim, out, next, need);
    if (r != LEN_OK || out->type != KVS_RESP_ARRAY)
        return r;
    start = *next;
    owed = out->count;
    pos = start;
    el.err = NULL;
    while (owed > 0) {
        if (pos == len) {
            *need = len + 1;
            return LEN_MORE;
        }
        r = reply_elem(buf, len, pos, lim, &el, &pos, need);
        if (r == LEN_BAD)
            out->err = el.err;
        if (r != LEN_OK)
            return r;
        owed--;
        if (el.type == KVS_RESP_ARRAY) {
            if (el.count > SIZE_MAX - owed) {
                out->err = ERR_REPLY_MBULK;
                return LEN_BAD;
            }
            owed += el.count;
        }
    }
    out->str = buf + start;
    out->len = pos - start;
    *next = pos;
    return LEN_OK;
}

ssize_t kvs_resp_parse_reply(const char *buf, size_t len, const struct kvs_resp_limits *lim,
                             struct kvs_resp_reply *out)
{
    size_t next = 0, need = 0;
    enum len_result r;

    if (lim == NULL)
        lim = &default_limits;
    memset(out, 0, sizeof(*out));
    r = reply_whole(buf, len, 0, lim, out, &next, &need);
    if (r == LEN_BAD)
        return KVS_EPROTO;
    if (r == LEN_MORE) {
        out->need = need > len ? need : len + 1;
        return 0;
    }
    return (ssize_t)next;
}

void kvs_resp_reply_iter(const struct kvs_resp_reply *arr, struct kvs_resp_iter *it)
{
    if (arr->type != KVS_RESP_ARRAY) {
        it->p = it->end = NULL;
        it->left = 0;
        return;
    }
    it->p = arr->str;
    it->end = arr->str + arr->len;
    it->left = arr->count;
}

int kvs_resp_reply_next(struct kvs_resp_iter *it, struct kvs_resp_reply *out)
{
    size_t next = 0, need = 0;
    enum len_result r;

    if (it->left == 0)
        return 0;
    memset(out, 0, sizeof(*out));
    /* The span was validated under the caller's limits already; only its bounds matter. */
    r = reply_whole(it->p, (size_t)(it->end - it->p), 0, &no_limits, out, &next, &need);
    if (r != LEN_OK) {
        if (r == LEN_MORE)
            out->err = ERR_REPLY_SPAN;
        it->left = 0;
        return KVS_EPROTO;
    }
    it->p += next;
    it->left--;
    return 1;
}
