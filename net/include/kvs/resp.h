/* SPDX-License-Identifier: MIT */
/*
 * RESP2, the Redis wire protocol, as pure functions over bytes: a request parser for the server
 * (arrays of bulk strings and inline commands), reply encoders for the server, a reply parser
 * and a request encoder for clients and the load generator, and the growable byte buffer they
 * all write into. Wire-level rules and limits are documented in docs/protocol.md.
 *
 * Nothing here does I/O, keeps global state or allocates memory because of a size a peer
 * announced: parsers return views into the caller's buffer and check every length against
 * struct kvs_resp_limits before trusting it. Only struct kvs_buf allocates, and only for bytes
 * the caller appends. Every function may be called from any thread on objects that thread owns.
 */
#ifndef KVS_NET_RESP_H
#define KVS_NET_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Default limits, the same as Redis's proto-max-bulk-len, its multibulk cap and
 * PROTO_INLINE_MAX_SIZE. */
#define KVS_RESP_MAX_BULK_DEFAULT   ((size_t)512 * 1024 * 1024)
#define KVS_RESP_MAX_ARRAY_DEFAULT  ((size_t)1024 * 1024)
#define KVS_RESP_MAX_INLINE_DEFAULT ((size_t)64 * 1024)

/* An initializer for struct kvs_resp_limits holding the defaults above. */
#define KVS_RESP_LIMITS_DEFAULT                                                                    \
    {                                                                                              \
        KVS_RESP_MAX_BULK_DEFAULT, KVS_RESP_MAX_ARRAY_DEFAULT, KVS_RESP_MAX_INLINE_DEFAULT         \
    }

/*
 * Bounds on every size a peer controls. A length over its bound is a protocol error reported
 * as soon as the offending header has been seen, before any of the data it announces arrives.
 * Functions taking a limits pointer accept NULL for the defaults.
 */
struct kvs_resp_limits {
    size_t max_bulk_len;   /* longest bulk string ($N); 0 allows only empty bulks */
    size_t max_array_len;  /* most elements in one array (*N), requests and replies alike */
    size_t max_inline_len; /* longest inline request line or simple/error reply line, counting
                            * its terminating "\r\n" or "\n" */
};

/* kvs_resp_limits_default - fill *lim with the KVS_RESP_*_DEFAULT values. */
void kvs_resp_limits_default(struct kvs_resp_limits *lim);

/* ---------------------------------------------------------------------------------------- */
/* Growable byte buffer                                                                     */
/* ---------------------------------------------------------------------------------------- */

/*
 * A growable byte buffer: bytes [0, len) of p are valid, cap bytes are allocated. A zeroed
 * struct (or kvs_buf_init()) is an empty buffer with no allocation. The owner may read p and
 * len directly, may write into p[len .. cap) after kvs_buf_reserve() and then raise len, and may
 * lower len to drop bytes from the end (0 empties the buffer and keeps the allocation).
 * Appending may move p: pointers into the buffer do not survive an append.
 */
struct kvs_buf {
    char *p;
    size_t len, cap;
};

/* kvs_buf_init - make *b an empty buffer that owns no memory. */
void kvs_buf_init(struct kvs_buf *b);

/* kvs_buf_fini - free the buffer's memory and leave it empty (reusable). NULL is fine. */
void kvs_buf_fini(struct kvs_buf *b);

/*
 * kvs_buf_reserve - make room for at least extra more bytes after len, growing the allocation
 * geometrically. Returns 0, or -ENOMEM (the buffer is unchanged) when memory or size_t runs out.
 */
int kvs_buf_reserve(struct kvs_buf *b, size_t extra);

/* kvs_buf_append - append n bytes from p (which must not point into b). 0 or -ENOMEM. */
int kvs_buf_append(struct kvs_buf *b, const void *p, size_t n);

/* kvs_buf_consume - drop the first n bytes (n <= len) by moving the rest to the front. */
void kvs_buf_consume(struct kvs_buf *b, size_t n);

/* ---------------------------------------------------------------------------------------- */
/* Request parser (server side)                                                             */
/* ---------------------------------------------------------------------------------------- */

/* One argument of a request: a view of len bytes at p, not NUL-terminated, may hold any byte. */
struct kvs_resp_arg {
    char *p;
    size_t len;
};

/*
 * Parser state for the requests of one connection. Set it up with kvs_resp_request_init(); the
 * caller reads argc, argv[], need and err after each call; the st_ fields are private.
 *
 * The parser resumes where it stopped: after a need-more return, the next call continues from
 * the last complete element instead of re-reading the whole request, provided the caller passes
 * the same buffer address with the bytes already seen unchanged (more bytes appended are the
 * point). If the buffer moved, shrank, or the argv array changed, the parser notices and starts
 * the request again from its first byte, so a caller that compacts or reallocates its buffer
 * between calls stays correct, merely slower. kvs_resp_request_reset() forces a fresh start.
 */
struct kvs_resp_request {
    struct kvs_resp_arg *argv; /* caller's array of argv_cap entries */
    size_t argv_cap;
    size_t argc;      /* out: arguments of the parsed request; on -ENOBUFS the count needed */
    size_t need;      /* out, on need-more: the buffer must hold at least this many bytes
                       * (counted from buf) before another call can make progress */
    const char *err;  /* out, on KVS_EPROTO: Redis-worded message without "-ERR " or CRLF;
                       * points into this struct or at a static string */
    char st_err[64];  /* private: storage for formatted messages */
    int st_active;    /* private: a multibulk request is partially parsed */
    uintptr_t st_buf; /* private: address of the buffer it is being parsed from */
    uintptr_t st_argv;
    size_t st_cap;
    size_t st_nargs; /* private: element count announced by the *N header */
    size_t st_argi;  /* private: elements complete so far */
    size_t st_pos;   /* private: offset of the next element's header */
};

/* kvs_resp_request_init - set up *req with the caller's argv array of cap entries (cap may be
 * 0 with argv NULL: every request then returns -ENOBUFS with the count it needs). */
void kvs_resp_request_init(struct kvs_resp_request *req, struct kvs_resp_arg *argv, size_t cap);

/* kvs_resp_request_reset - forget a partially parsed request; the next call starts afresh. */
void kvs_resp_request_reset(struct kvs_resp_request *req);

/*
 * kvs_resp_parse_request - parse the request at the start of buf[0 .. len).
 *
 * buf holds zero or more pipelined requests, the first one starting at buf[0]. A request is
 * either a RESP array of bulk strings ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") or, when the first
 * byte is not '*', an inline command line ("GET k\r\n" or "GET k\n", Redis quoting rules).
 *
 * Returns:
 *   > 0        bytes consumed. If req->argc > 0, one complete request was parsed and
 *              req->argv[0 .. argc) are views into buf valid until the caller changes or frees
 *              those bytes. If req->argc == 0, the bytes were one empty request (an empty
 *              or blank line, "*0\r\n" or "*-1\r\n"), which Redis ignores without a reply:
 *              drop them and call again. The count is a ssize_t because a request may pass
 *              INT_MAX bytes when the limits allow it; do not narrow it to int.
 *   0          need more bytes: nothing consumed; req->need (> len) is the minimum length
 *              buf must reach before a new call can make progress. Once a bulk header "$N"
 *              has been read, need covers its whole data, so a caller receiving a large value
 *              can size its buffer once and wait without re-parsing each chunk.
 *   -ENOBUFS   the complete request has more arguments than argv_cap: req->argc holds the
 *              count needed (at most max_array_len). Nothing was consumed and buf was not
 *              written; give a larger array with kvs_resp_request_init() and call again.
 *   KVS_EPROTO the bytes break the protocol or a limit; req->err holds the Redis-worded
 *              message (e.g. "Protocol error: invalid bulk length"), valid until the next
 *              call on req. The connection is not recoverable: reply with the error and close
 *              it.
 *
 * buf is written to only for inline commands whose quoted arguments contain escapes or quotes:
 * they are unescaped in place, inside the bytes of that request, and only on a > 0 return.
 * Array (RESP) requests are never written to. Every byte sequence is safe to pass.
 */
ssize_t kvs_resp_parse_request(struct kvs_resp_request *req, char *buf, size_t len,
                               const struct kvs_resp_limits *lim);

/* ---------------------------------------------------------------------------------------- */
/* Reply encoder (server side). Each function appends one complete RESP2 value to b and       */
/* returns 0 or -ENOMEM; on -ENOMEM b is left as it was before the call.                      */
/* ---------------------------------------------------------------------------------------- */

/* kvs_resp_append_simple - "+s\r\n". CR and LF inside s are replaced by spaces, as Redis does,
 * since they would end the line early and desynchronise the client. */
int kvs_resp_append_simple(struct kvs_buf *b, const char *s, size_t len);

/* kvs_resp_append_ok - "+OK\r\n", the most common reply. */
int kvs_resp_append_ok(struct kvs_buf *b);

/*
 * kvs_resp_append_error - "-msg\r\n". msg starts with the error code word and carries no '-':
 * "ERR unknown command 'foo'", "WRONGTYPE ...". CR and LF inside msg become spaces.
 */
int kvs_resp_append_error(struct kvs_buf *b, const char *msg, size_t len);

/* kvs_resp_append_errorf - kvs_resp_append_error() with a printf format; messages longer than
 * 1 KiB are truncated. */
int kvs_resp_append_errorf(struct kvs_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* kvs_resp_append_int - ":v\r\n". */
int kvs_resp_append_int(struct kvs_buf *b, long long v);

/* kvs_resp_append_bulk - "$len\r\n" + len bytes from p + "\r\n". p must not point into b. */
int kvs_resp_append_bulk(struct kvs_buf *b, const void *p, size_t len);

/*
 * kvs_resp_append_bulk_header - only "$len\r\n". The caller then appends exactly len bytes and
 * "\r\n" itself; this lets a value be read straight into the reply buffer (reserve len + 2,
 * read into b->p + b->len, raise b->len, append "\r\n").
 */
int kvs_resp_append_bulk_header(struct kvs_buf *b, size_t len);

/* kvs_resp_append_null - the null bulk "$-1\r\n" (GET of a missing key). */
int kvs_resp_append_null(struct kvs_buf *b);

/* kvs_resp_append_array - the header "*n\r\n"; the caller appends the n elements after it. */
int kvs_resp_append_array(struct kvs_buf *b, size_t n);

/* kvs_resp_append_null_array - the null array "*-1\r\n". */
int kvs_resp_append_null_array(struct kvs_buf *b);

/* ---------------------------------------------------------------------------------------- */
/* Request encoder (client side)                                                            */
/* ---------------------------------------------------------------------------------------- */

/*
 * kvs_resp_append_command - append one request as a RESP array of argc bulk strings.
 * argv[i] holds argvlen[i] bytes (any bytes); with argvlen NULL each argv[i] is a C string.
 * argc must be > 0. Returns 0, -EINVAL for argc <= 0, or -ENOMEM (b unchanged).
 */
int kvs_resp_append_command(struct kvs_buf *b, int argc, const char *const *argv,
                            const size_t *argvlen);

/* ---------------------------------------------------------------------------------------- */
/* Reply parser (client side, load generator)                                               */
/* ---------------------------------------------------------------------------------------- */

enum kvs_resp_type {
    KVS_RESP_SIMPLE = 1, /* +OK: str/len */
    KVS_RESP_ERROR,      /* -ERR ...: str/len (without the '-') */
    KVS_RESP_INTEGER,    /* :42: integer */
    KVS_RESP_BULK,       /* $3 foo: str/len */
    KVS_RESP_NULL,       /* $-1 or *-1 */
    KVS_RESP_ARRAY,      /* *N: count elements in the span str/len, walk with an iterator */
};

/*
 * One parsed reply. All pointers are views into the buffer given to the parser and stay valid
 * as long as those bytes do.
 */
struct kvs_resp_reply {
    enum kvs_resp_type type;
    const char *str;   /* SIMPLE, ERROR, BULK: the payload; ARRAY: the first element's bytes */
    size_t len;        /* payload length; ARRAY: byte length of all elements together */
    long long integer; /* INTEGER: the value */
    size_t count;      /* ARRAY: number of elements (nested arrays count as one) */
    size_t need;       /* out, on need-more: minimum buffer length for progress (> len) */
    const char *err;   /* out, on KVS_EPROTO: a static message */
};

/*
 * kvs_resp_parse_reply - parse the one reply at the start of buf[0 .. len).
 *
 * An array is validated and consumed whole, nested arrays included (walked iteratively, so
 * nesting depth costs no stack). Returns:
 *   > 0        bytes consumed; *out describes the reply;
 *   0          need more bytes: out->need is the minimum length buf must reach (a bulk's whole
 *              data once its header is seen), so a client can wait for it without re-parsing;
 *   KVS_EPROTO malformed or over a limit; out->err says why.
 * Safe against every byte sequence and against replies split at any byte.
 */
ssize_t kvs_resp_parse_reply(const char *buf, size_t len, const struct kvs_resp_limits *lim,
                             struct kvs_resp_reply *out);

/* Cursor over the elements of an ARRAY reply. */
struct kvs_resp_iter {
    const char *p, *end; /* remaining element bytes */
    size_t left;         /* elements left */
};

/* kvs_resp_reply_iter - start walking the elements of arr, which must be a KVS_RESP_ARRAY
 * returned by kvs_resp_parse_reply() or kvs_resp_reply_next(). */
void kvs_resp_reply_iter(const struct kvs_resp_reply *arr, struct kvs_resp_iter *it);

/*
 * kvs_resp_reply_next - the next element into *out. A nested array comes back as one
 * KVS_RESP_ARRAY element; walk it with its own iterator. Returns 1 with *out filled, 0 when no
 * elements are left, KVS_EPROTO only if the span was not produced by the reply parser.
 */
int kvs_resp_reply_next(struct kvs_resp_iter *it, struct kvs_resp_reply *out);

#endif
