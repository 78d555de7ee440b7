/* SPDX-License-Identifier: MIT */
/*
 * Tests of the RESP2 functions (net/resp.c): the request parser fed whole, byte by byte and at
 * random split points, with the buffer kept in place (resumed parsing), compacted between
 * reads (restarted parsing) and copied to exact-size allocations (so ASan sees any read past
 * the end); inline commands and their quoting; hostile headers that must fail at once; argv
 * growth; the reply parser on every type, nested, split at every byte; encoder round trips;
 * and a fixed-seed fuzz loop. Nothing here measures time.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "kvs/error.h"
#include "kvs/resp.h"
#include "tutil.h"

#define S(lit) lit, sizeof(lit) - 1

/* Allocation for the tests themselves: failing here is not what is under test. */
static void *xmalloc(size_t n)
{
    void *p = malloc(n > 0 ? n : 1);

    if (p == NULL)
        abort();
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n > 0 ? n : 1, size);

    if (p == NULL)
        abort();
    return p;
}

/* Copy the C string s with its NUL into buf; returns its length without the NUL. */
static size_t put(char *buf, const char *s)
{
    size_t n = strlen(s);

    memcpy(buf, s, n + 1);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* A simulated connection: feeds input in chunks and records what the parser made of it.     */
/* ---------------------------------------------------------------------------------------- */

enum feed_mode {
    FEED_STABLE,  /* one buffer that never moves: partial requests resume */
    FEED_COMPACT, /* consumed bytes are removed after each read: the parser restarts */
    FEED_EXACT,   /* every call gets a fresh allocation of exactly the unconsumed bytes */
};

struct chunker {
    size_t step;   /* fixed chunk size; 0 = everything at once */
    uint64_t seed; /* non-zero: random chunk sizes 1 .. max */
    size_t max;
};

static size_t next_chunk(struct chunker *c, size_t left)
{
    size_t n;

    if (c->seed != 0)
        n = 1 + (size_t)(tutil_rand(&c->seed) % c->max);
    else if (c->step == 0)
        n = left;
    else
        n = c->step;
    return n < left ? n : left;
}

/*
 * Feed in[0 .. len) like a server connection would and append a transcript to out: each
 * request re-encoded with kvs_resp_append_command, then "E:<message>" on a protocol error or
 * "P:<n>" for n unconsumed bytes at the end. Checks on the way that need-more always asks for
 * more than it has and that need never exceeds valid_len (the bytes of complete requests in
 * the input, when the caller knows them; 0 to skip this check).
 */
static void transcript(const char *in, size_t len, struct chunker ch, enum feed_mode mode,
                       const struct kvs_resp_limits *lim, size_t cap, size_t valid_len,
                       struct kvs_buf *out)
{
    struct kvs_resp_request req;
    struct kvs_resp_arg *argv = xcalloc(cap, sizeof(*argv));
    struct kvs_buf conn;
    size_t fed = 0;   /* bytes of in handed to the connection */
    size_t start = 0; /* offset in conn.p of the first unconsumed byte (FEED_STABLE) */
    size_t base = 0;  /* offset in in of conn.p[start] */
    bool failed = false;

    kvs_buf_init(&conn);
    kvs_resp_request_init(&req, argv, cap);
    if (mode == FEED_STABLE)
        CU_ASSERT_FATAL(kvs_buf_reserve(&conn, len + 1) == 0);
    while (fed < len && !failed) {
        size_t n = next_chunk(&ch, len - fed);

        CU_ASSERT_FATAL(kvs_buf_append(&conn, in + fed, n) == 0);
        fed += n;
        for (;;) {
            char *exact = NULL;
            char *p = conn.p + start;
            size_t avail = conn.len - start;
            ssize_t r;

            if (mode == FEED_EXACT) {
                exact = xmalloc(avail);
                memcpy(exact, p, avail);
                p = exact;
            }
            r = kvs_resp_parse_request(&req, p, avail, lim);
            if (r == -ENOBUFS) {
                size_t ncap = req.argc;

                CU_ASSERT(ncap > cap);
                /* The bytes must be untouched so that a second parse sees the same request. */
                CU_ASSERT(memcmp(p, in + base, avail) == 0);
                free(argv);
                cap = ncap;
                argv = xcalloc(cap, sizeof(*argv));
                kvs_resp_request_init(&req, argv, cap);
                free(exact);
                continue;
            }
            if (r == 0) {
                CU_ASSERT(req.need > avail);
                if (valid_len > 0 && base < valid_len)
                    CU_ASSERT(base + req.need <= valid_len);
                free(exact);
                break;
            }
            if (r < 0) {
                CU_ASSERT(r == KVS_EPROTO);
                CU_ASSERT(req.err != NULL);
                kvs_buf_append(out, "E:", 2);
                if (req.err != NULL)
                    kvs_buf_append(out, req.err, strlen(req.err));
                failed = true;
                free(exact);
                break;
            }
            CU_ASSERT((size_t)r <= avail);
            CU_ASSERT(req.argc <= cap);
            if (req.argc > 0) {
                const char *vp[64];
                size_t vl[64];
                const char **pp = req.argc <= 64 ? vp : xmalloc(req.argc * sizeof(*pp));
                size_t *pl = req.argc <= 64 ? vl : xmalloc(req.argc * sizeof(*pl));

                for (size_t i = 0; i < req.argc; i++) {
                    pp[i] = argv[i].p;
                    pl[i] = argv[i].len;
                    /* Views must lie inside the bytes this request consumed. */
                    CU_ASSERT(argv[i].p >= p && argv[i].p + argv[i].len <= p + r);
                }
                CU_ASSERT(kvs_resp_append_command(out, (int)req.argc, pp, pl) == 0);
                if (pp != vp)
                    free(pp);
                if (pl != vl)
                    free(pl);
            }
            free(exact);
            base += (size_t)r;
            if (mode == FEED_STABLE) {
                start += (size_t)r;
            } else {
                kvs_buf_consume(&conn, (size_t)r);
            }
        }
    }
    if (!failed && conn.len - start > 0) {
        char tail[32];
        int n = snprintf(tail, sizeof(tail), "P:%zu", conn.len - start);

        kvs_buf_append(out, tail, (size_t)n);
    }
    kvs_buf_fini(&conn);
    free(argv);
}

/* Transcript of in fed whole into a stable buffer: the reference every other feeding must
 * reproduce. */
static void reference(const char *in, size_t len, const struct kvs_resp_limits *lim,
                      struct kvs_buf *out)
{
    struct chunker whole = {0, 0, 0};

    transcript(in, len, whole, FEED_STABLE, lim, 8, 0, out);
}

/* Check that every way of feeding in (whole, byte by byte, random splits, in all three buffer
 * modes) yields the same transcript as expected (expected_len bytes). */
static void check_all_feeds(const char *in, size_t len, const struct kvs_resp_limits *lim,
                            const char *expected, size_t expected_len, size_t valid_len)
{
    static const enum feed_mode modes[] = {FEED_STABLE, FEED_COMPACT, FEED_EXACT};

    for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
        for (int k = 0; k < 6; k++) {
            struct chunker ch = {0, 0, 0};
            struct kvs_buf got;

            if (k == 1)
                ch.step = 1;
            else if (k == 2)
                ch.step = 7;
            else if (k >= 3) {
                ch.seed = 0x9e3779b97f4a7c15ULL + (uint64_t)k;
                ch.max = k == 3 ? 3 : 64;
            }
            kvs_buf_init(&got);
            transcript(in, len, ch, modes[m], lim, k == 5 ? 1 : 8, valid_len, &got);
            CU_ASSERT_EQUAL(got.len, expected_len);
            if (got.len == expected_len)
                CU_ASSERT(memcmp(got.p, expected, expected_len) == 0);
            if (got.len != expected_len || memcmp(got.p, expected, expected_len) != 0)
                fprintf(stderr, "\nmode %zu feed %d: got [%.*s]\n  want [%.*s]\n", m, k,
                        (int)got.len, got.p, (int)expected_len, expected);
            kvs_buf_fini(&got);
        }
    }
}

/* Build the expected transcript from a list of requests given as C-string argument arrays. */
static void expect_cmd(struct kvs_buf *out, int argc, const char *const *argv)
{
    CU_ASSERT(kvs_resp_append_command(out, argc, argv, NULL) == 0);
}

/* Parse one complete request from a private copy of s; returns the parse result and fills
 * argv (capacity cap). */
static ssize_t parse_one(const char *s, size_t len, struct kvs_resp_request *req,
                         struct kvs_resp_arg *argv, size_t cap, char **copy)
{
    *copy = xmalloc(len);
    memcpy(*copy, s, len);
    kvs_resp_request_init(req, argv, cap);
    return kvs_resp_parse_request(req, *copy, len, NULL);
}

static bool arg_is(const struct kvs_resp_arg *a, const char *s, size_t len)
{
    return a->len == len && memcmp(a->p, s, len) == 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Request parser                                                                           */
/* ---------------------------------------------------------------------------------------- */

static void test_resp_request_array_whole(void)
{
    static const char in[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[4];
    char *copy;
    ssize_t r = parse_one(S(in), &req, argv, 4, &copy);

    CU_ASSERT_EQUAL(r, (ssize_t)sizeof(in) - 1);
    CU_ASSERT_EQUAL(req.argc, 2);
    CU_ASSERT(arg_is(&argv[0], S("GET")));
    CU_ASSERT(arg_is(&argv[1], S("k")));
    /* Array requests are never written to. */
    CU_ASSERT(memcmp(copy, in, sizeof(in) - 1) == 0);
    free(copy);
}

static void test_resp_request_every_split_matches_whole(void)
{
    static const char in[] = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n"
                             "*1\r\n$4\r\nPING\r\n"
                             "*2\r\n$3\r\nGET\r\n$0\r\n\r\n";
    static const char *const c1[] = {"SET", "key", "0123456789"};
    static const char *const c2[] = {"PING"};
    static const char *const c3[] = {"GET", ""};
    struct kvs_buf want, ref;

    kvs_buf_init(&want);
    kvs_buf_init(&ref);
    expect_cmd(&want, 3, c1);
    expect_cmd(&want, 1, c2);
    expect_cmd(&want, 2, c3);
    reference(S(in), NULL, &ref);
    CU_ASSERT(ref.len == want.len && memcmp(ref.p, want.p, want.len) == 0);
    check_all_feeds(S(in), NULL, want.p, want.len, sizeof(in) - 1);
    kvs_buf_fini(&want);
    kvs_buf_fini(&ref);
}

static void test_resp_request_every_prefix_needs_more(void)
{
    static const char in[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    size_t len = sizeof(in) - 1;

    /* Each proper prefix, parsed fresh from an exact-size copy, is need-more with a need
     * that is more than it has and no more than the whole request. */
    for (size_t k = 0; k < len; k++) {
        struct kvs_resp_request req;
        struct kvs_resp_arg argv[4];
        char *copy;
        ssize_t r = parse_one(in, k, &req, argv, 4, &copy);

        CU_ASSERT_EQUAL(r, 0);
        CU_ASSERT(req.need > k && req.need <= len);
        free(copy);
    }
}

static void test_resp_request_pipelined_mixed_with_inline(void)
{
    static const char in[] = "PING\r\n"
                             "*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n"
                             "SET k v\n"
                             "\r\n"
                             "*0\r\n"
                             "*-1\r\n"
                             "   \t \r\n"
                             "\n"
                             "GET k\r\n";
    static const char *const c1[] = {"PING"};
    static const char *const c2[] = {"ECHO", "hi"};
    static const char *const c3[] = {"SET", "k", "v"};
    static const char *const c4[] = {"GET", "k"};
    struct kvs_buf want;

    kvs_buf_init(&want);
    expect_cmd(&want, 1, c1);
    expect_cmd(&want, 2, c2);
    expect_cmd(&want, 3, c3);
    expect_cmd(&want, 2, c4);
    check_all_feeds(S(in), NULL, want.p, want.len, sizeof(in) - 1);
    kvs_buf_fini(&want);
}

static void test_resp_request_empty_requests_are_skipped_with_argc_zero(void)
{
    static const char *const skips[] = {"\r\n", "\n", "*0\r\n", "*-1\r\n", "  \r\n"};

    for (size_t i = 0; i < sizeof(skips) / sizeof(skips[0]); i++) {
        struct kvs_resp_request req;
        struct kvs_resp_arg argv[2];
        char *copy;
        ssize_t r = parse_one(skips[i], strlen(skips[i]), &req, argv, 2, &copy);

        CU_ASSERT_EQUAL(r, (ssize_t)strlen(skips[i]));
        CU_ASSERT_EQUAL(req.argc, 0);
        free(copy);
    }
}

static void test_resp_request_inline_quotes_and_escapes(void)
{
    static const char in[] = "SET \"a b\\x41\\x4a\\n\\r\\t\\b\\a\\\\\\\"q\" 'it\\'s \\n'\r\n"
                             "  x\"y z\"  \"\"  ''\r\n"
                             "\"\\xZZ\\x4\"\n"
                             "ECHO a\vb\f \v\fc\n";
    static const char *const c1[] = {"SET", "a bAJ\n\r\t\b\a\\\"q", "it's \\n"};
    static const char *const c2[] = {"xy z", "", ""};
    static const char *const c3[] = {"xZZx4"};
    static const char *const c4[] = {"ECHO", "a\vb\f", "c"};
    struct kvs_buf want;

    kvs_buf_init(&want);
    expect_cmd(&want, 3, c1);
    expect_cmd(&want, 3, c2);
    expect_cmd(&want, 1, c3);
    expect_cmd(&want, 3, c4);
    check_all_feeds(S(in), NULL, want.p, want.len, sizeof(in) - 1);
    kvs_buf_fini(&want);
}

static void test_resp_request_inline_unbalanced_quotes_fail(void)
{
    static const char *const bad[] = {
        "SET \"abc\r\n", "SET 'abc\r\n", "SET \"abc\"def\r\n", "SET 'a'b\r\n", "GET \"a\\\"\n",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct kvs_resp_request req;
        struct kvs_resp_arg argv[4];
        char *copy;
        ssize_t r = parse_one(bad[i], strlen(bad[i]), &req, argv, 4, &copy);

        CU_ASSERT_EQUAL(r, KVS_EPROTO);
        CU_ASSERT_STRING_EQUAL(req.err, "Protocol error: unbalanced quotes in request");
        free(copy);
    }
}

static void test_resp_request_binary_bulks_keep_nul_and_crlf(void)
{
    static const char in[] = "*3\r\n$3\r\nSET\r\n$3\r\nk\0y\r\n$6\r\n\r\n\0\r\n\n\r\n";
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[4];
    char *copy;
    ssize_t r = parse_one(S(in), &req, argv, 4, &copy);
    struct kvs_buf want;
    const char *pv[3] = {"SET", "k\0y", "\r\n\0\r\n\n"};
    size_t pl[3] = {3, 3, 6};

    CU_ASSERT_EQUAL(r, (ssize_t)sizeof(in) - 1);
    CU_ASSERT_EQUAL(req.argc, 3);
    CU_ASSERT(arg_is(&argv[1], "k\0y", 3));
    CU_ASSERT(arg_is(&argv[2], "\r\n\0\r\n\n", 6));
    free(copy);
    kvs_buf_init(&want);
    CU_ASSERT(kvs_resp_append_command(&want, 3, pv, pl) == 0);
    check_all_feeds(S(in), NULL, want.p, want.len, sizeof(in) - 1);
    kvs_buf_fini(&want);
}

/* Expect prefix (possibly incomplete) to fail with msg, parsed whole and byte by byte: the
 * error must come as soon as the offending header bytes are there. */
static void expect_proto_error(const char *in, size_t len, const char *msg)
{
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[4];
    char *copy;
    ssize_t r = parse_one(in, len, &req, argv, 4, &copy);

    CU_ASSERT_EQUAL(r, KVS_EPROTO);
    if (r == KVS_EPROTO)
        CU_ASSERT_STRING_EQUAL(req.err, msg);
    if (r != KVS_EPROTO || strcmp(req.err, msg) != 0)
        fprintf(stderr, "\ninput [%.*s]: r=%zd err=%s\n", (int)(len < 80 ? len : 80), in, r,
                req.err != NULL ? req.err : "(none)");
    free(copy);
}

static void test_resp_request_hostile_lengths_fail_at_once(void)
{
    char big[100 * 1024];

    /* Lengths over the limits fail without CRLF and without any data. */
    expect_proto_error(S("*1\r\n$1099511627776"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$1099511627776\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$536870913"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1000000000"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*1048577\r\n"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*99999999999999999999999999"),
                       "Protocol error: invalid multibulk length");
    /* Negative and malformed lengths. */
    expect_proto_error(S("*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$-1\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*-5\r\n"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*-2"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*-1x"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*abc\r\n"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*\r\n"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*01\r\n"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*1\rX"), "Protocol error: invalid multibulk length");
    expect_proto_error(S("*1\r\n$abc\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$ 3\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$+3\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$03\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$\r\n"), "Protocol error: invalid bulk length");
    expect_proto_error(S("*1\r\n$3\n"), "Protocol error: invalid bulk length");
    /* Framing. */
    expect_proto_error(S("*2\r\n$3\r\nGET\r\nx"), "Protocol error: expected '$', got 'x'");
    expect_proto_error(S("*1\r\n:3\r\n"), "Protocol error: expected '$', got ':'");
    expect_proto_error(S("*1\r\n\r\n"), "Protocol error: expected '$', got '\\x0d'");
    expect_proto_error(S("*1\r\n$3\r\nGETxx"), "Protocol error: expected CRLF after bulk data");
    expect_proto_error(S("*1\r\n$3\r\nGET\rx"), "Protocol error: expected CRLF after bulk data");
    /* An endless inline line fails once it reaches the limit, with no newline in sight. */
    memset(big, 'a', sizeof(big));
    expect_proto_error(big, sizeof(big), "Protocol error: too big inline request");
    expect_proto_error(big, 64 * 1024, "Protocol error: too big inline request");
    big[64 * 1024] = '\n';
    expect_proto_error(big, 64 * 1024 + 1, "Protocol error: too big inline request");
}

static void test_resp_request_inline_line_at_limit_is_accepted(void)
{
    size_t len = 64 * 1024;
    char *in = xmalloc(len);
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[2];
    char *copy;
    ssize_t r;

    /* "ECHO aaaa...\n": the line with its newline is exactly max_inline_len bytes. */
    put(in, "ECHO ");
    memset(in + 5, 'a', len - 5);
    in[len - 1] = '\n';
    r = parse_one(in, len, &req, argv, 2, &copy);
    CU_ASSERT_EQUAL(r, (ssize_t)len);
    CU_ASSERT_EQUAL(req.argc, 2);
    CU_ASSERT_EQUAL(argv[1].len, len - 6);
    free(copy);
    /* One byte short of the newline: still waiting, not failing. */
    r = parse_one(in, len - 1, &req, argv, 2, &copy);
    CU_ASSERT_EQUAL(r, 0);
    free(copy);
    free(in);
}

static void test_resp_request_custom_limits(void)
{
    struct kvs_resp_limits lim = {.max_bulk_len = 4, .max_array_len = 2, .max_inline_len = 8};
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[4];
    char buf[64];

    kvs_resp_request_init(&req, argv, 4);
    put(buf, "*1\r\n$4\r\nabcd\r\n");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 14, &lim), 14);
    put(buf, "*1\r\n$5");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 6, &lim), KVS_EPROTO);
    put(buf, "*3");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 2, &lim), KVS_EPROTO);
    put(buf, "A B C\n");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 6, &lim), KVS_EPROTO);
    CU_ASSERT_STRING_EQUAL(req.err, "Protocol error: invalid multibulk length");
    put(buf, "A B   \n");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 7, &lim), 7);
    put(buf, "A B    \n");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 8, &lim), 8);
    put(buf, "A B     \n");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 9, &lim), KVS_EPROTO);
    CU_ASSERT_STRING_EQUAL(req.err, "Protocol error: too big inline request");
    /* A zero bulk limit still allows empty bulks. */
    lim.max_bulk_len = 0;
    put(buf, "*1\r\n$0\r\n\r\n");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 10, &lim), 10);
    put(buf, "*1\r\n$1");
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, buf, 6, &lim), KVS_EPROTO);
}

static void test_resp_request_argv_too_small_reports_count(void)
{
    struct kvs_buf in;
    struct kvs_resp_request req;
    struct kvs_resp_arg small[4];
    struct kvs_resp_arg *big;
    const char *args[20];
    char names[20][8];
    char inl[] = "MSET \"a\\x41\" b c d e f\r\n";
    char saved[sizeof(inl)];
    ssize_t r;

    kvs_buf_init(&in);
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof(names[i]), "a%d", i);
        args[i] = names[i];
    }
    CU_ASSERT(kvs_resp_append_command(&in, 20, args, NULL) == 0);
    kvs_resp_request_init(&req, small, 4);
    /* Incomplete: need-more, not -ENOBUFS, so nobody allocates for bytes that are not here. */
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, in.p, in.len - 1, NULL), 0);
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, in.p, in.len, NULL), -ENOBUFS);
    CU_ASSERT_EQUAL(req.argc, 20);
    big = xcalloc(req.argc, sizeof(*big));
    kvs_resp_request_init(&req, big, 20);
    r = kvs_resp_parse_request(&req, in.p, in.len, NULL);
    CU_ASSERT_EQUAL(r, (ssize_t)in.len);
    CU_ASSERT_EQUAL(req.argc, 20);
    CU_ASSERT(arg_is(&big[19], S("a19")));

    /* Inline: -ENOBUFS must leave the escapes in place for the second parse. */
    memcpy(saved, inl, sizeof(inl));
    kvs_resp_request_init(&req, small, 4);
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, inl, sizeof(inl) - 1, NULL), -ENOBUFS);
    CU_ASSERT_EQUAL(req.argc, 7);
    CU_ASSERT(memcmp(inl, saved, sizeof(inl)) == 0);
    kvs_resp_request_init(&req, big, 20);
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, inl, sizeof(inl) - 1, NULL),
                    (ssize_t)sizeof(inl) - 1);
    CU_ASSERT_EQUAL(req.argc, 7);
    CU_ASSERT(arg_is(&big[1], S("aA")));
    CU_ASSERT(arg_is(&big[6], S("f")));

    /* No argv at all: every request reports its count. */
    kvs_resp_request_init(&req, NULL, 0);
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, in.p, in.len, NULL), -ENOBUFS);
    CU_ASSERT_EQUAL(req.argc, 20);
    free(big);
    kvs_buf_fini(&in);
}

static void test_resp_request_need_covers_whole_bulk(void)
{
    size_t vlen = 1 << 20;
    struct kvs_buf in;
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[3];
    char *val = xmalloc(vlen);
    const char *args[3] = {"SET", "key", val};
    size_t lens[3] = {3, 3, vlen};
    size_t hdr;
    ssize_t r;

    memset(val, 'v', vlen);
    kvs_buf_init(&in);
    CU_ASSERT(kvs_resp_append_command(&in, 3, args, lens) == 0);
    hdr = in.len - vlen - 2;
    kvs_resp_request_init(&req, argv, 3);
    /* Once the "$1048576\r\n" header is in, need is the exact end of the request. */
    r = kvs_resp_parse_request(&req, in.p, hdr, NULL);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT_EQUAL(req.need, in.len);
    r = kvs_resp_parse_request(&req, in.p, hdr + 16384, NULL);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT_EQUAL(req.need, in.len);
    r = kvs_resp_parse_request(&req, in.p, in.len, NULL);
    CU_ASSERT_EQUAL(r, (ssize_t)in.len);
    CU_ASSERT_EQUAL(argv[2].len, vlen);
    CU_ASSERT(argv[2].p == in.p + hdr);
    /* An announced array's remaining elements count at least 6 bytes each. */
    r = kvs_resp_parse_request(&req, in.p, 4, NULL);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT(req.need >= 4 + 3 * 6);
    kvs_resp_request_reset(&req);
    free(val);
    kvs_buf_fini(&in);
}

static void test_resp_request_resume_survives_moved_buffer(void)
{
    static const char in[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    size_t len = sizeof(in) - 1;
    struct kvs_resp_request req;
    struct kvs_resp_arg argv[4];
    char *a = xmalloc(len);
    char *b = xmalloc(len);
    ssize_t r;

    memcpy(a, in, len);
    kvs_resp_request_init(&req, argv, 4);
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, a, 20, NULL), 0);
    /* The caller moved the bytes: the parser must start over in the new place, and no view
     * may point into the old one. */
    memcpy(b, a, len);
    memset(a, 'X', len);
    r = kvs_resp_parse_request(&req, b, len, NULL);
    CU_ASSERT_EQUAL(r, (ssize_t)len);
    CU_ASSERT(arg_is(&argv[0], S("SET")) && argv[0].p >= b && argv[0].p < b + len);
    CU_ASSERT(arg_is(&argv[2], S("hello")));
    free(a);
    free(b);
}

static void test_resp_request_random_commands_roundtrip(void)
{
    uint64_t seed = 42;
    struct kvs_buf in, want;

    kvs_buf_init(&in);
    kvs_buf_init(&want);
    /* A pipeline of random binary commands; the reference transcript is the input itself,
     * since it was built with the same encoder. */
    for (int c = 0; c < 200; c++) {
        const char *av[12];
        size_t al[12];
        char data[12][40];
        int argc = 1 + (int)(tutil_rand(&seed) % 12);

        for (int i = 0; i < argc; i++) {
            al[i] = (size_t)(tutil_rand(&seed) % 40);
            tutil_fill(&seed, data[i], al[i]);
            av[i] = data[i];
        }
        CU_ASSERT(kvs_resp_append_command(&in, argc, av, al) == 0);
    }
    check_all_feeds(in.p, in.len, NULL, in.p, in.len, in.len);
    kvs_buf_fini(&in);
    kvs_buf_fini(&want);
}

static void test_resp_request_error_after_good_requests(void)
{
    static const char in[] = "*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n";
    static const char *const c1[] = {"PING"};
    struct kvs_buf want;

    kvs_buf_init(&want);
    expect_cmd(&want, 1, c1);
    expect_cmd(&want, 1, c1);
    kvs_buf_append(&want, S("E:Protocol error: expected CRLF after bulk data"));
    check_all_feeds(S(in), NULL, want.p, want.len, 0);
    kvs_buf_fini(&want);
}

/* ---------------------------------------------------------------------------------------- */
/* Encoders                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static void test_resp_encode_every_reply_type(void)
{
    struct kvs_buf b;
    static const char want[] = "+OK\r\n+hi  there\r\n-ERR unknown command 'x y'\r\n"
                               "-ERR bad 7\r\n:0\r\n:7\r\n:10\r\n:-1\r\n:1234567890\r\n"
                               ":-9223372036854775808\r\n:9223372036854775807\r\n"
                               "$0\r\n\r\n$3\r\nabc\r\n$12\r\nhello world!\r\n$-1\r\n"
                               "*2\r\n*0\r\n*-1\r\n$5\r\n";

    kvs_buf_init(&b);
    CU_ASSERT(kvs_resp_append_ok(&b) == 0);
    CU_ASSERT(kvs_resp_append_simple(&b, S("hi\r\nthere")) == 0);
    CU_ASSERT(kvs_resp_append_error(&b, S("ERR unknown command 'x\ny'")) == 0);
    CU_ASSERT(kvs_resp_append_errorf(&b, "ERR %s %d", "bad", 7) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, 0) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, 7) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, 10) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, -1) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, 1234567890) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, LLONG_MIN) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, LLONG_MAX) == 0);
    CU_ASSERT(kvs_resp_append_bulk(&b, "", 0) == 0);
    CU_ASSERT(kvs_resp_append_bulk(&b, S("abc")) == 0);
    CU_ASSERT(kvs_resp_append_bulk(&b, S("hello world!")) == 0);
    CU_ASSERT(kvs_resp_append_null(&b) == 0);
    CU_ASSERT(kvs_resp_append_array(&b, 2) == 0);
    CU_ASSERT(kvs_resp_append_array(&b, 0) == 0);
    CU_ASSERT(kvs_resp_append_null_array(&b) == 0);
    CU_ASSERT(kvs_resp_append_bulk_header(&b, 5) == 0);
    CU_ASSERT_EQUAL(b.len, sizeof(want) - 1);
    CU_ASSERT(b.len == sizeof(want) - 1 && memcmp(b.p, want, b.len) == 0);
    kvs_buf_fini(&b);
    kvs_buf_fini(&b);
    kvs_buf_fini(NULL);
}

static void test_resp_encode_ints_roundtrip_through_reply_parser(void)
{
    uint64_t seed = 7;
    struct kvs_buf b;

    kvs_buf_init(&b);
    for (int i = 0; i < 2000; i++) {
        long long v;
        struct kvs_resp_reply rep;

        if (i < 200)
            v = i - 100;
        else if (i < 240)
            v = (long long)((1ULL << (i - 200)) % (unsigned long long)LLONG_MAX);
        else
            v = (long long)tutil_rand(&seed);
        b.len = 0;
        CU_ASSERT(kvs_resp_append_int(&b, v) == 0);
        CU_ASSERT_EQUAL(kvs_resp_parse_reply(b.p, b.len, NULL, &rep), (ssize_t)b.len);
        CU_ASSERT_EQUAL(rep.type, KVS_RESP_INTEGER);
        CU_ASSERT_EQUAL(rep.integer, v);
    }
    kvs_buf_fini(&b);
}

static void test_resp_encode_bulks_roundtrip_through_reply_parser(void)
{
    uint64_t seed = 11;
    struct kvs_buf b;
    char *data = xmalloc(70000);

    kvs_buf_init(&b);
    for (size_t n = 0; n < 70000; n = n < 200 ? n + 1 : n * 3 / 2) {
        struct kvs_resp_reply rep;

        tutil_fill(&seed, data, n);
        b.len = 0;
        CU_ASSERT(kvs_resp_append_bulk(&b, data, n) == 0);
        CU_ASSERT_EQUAL(kvs_resp_parse_reply(b.p, b.len, NULL, &rep), (ssize_t)b.len);
        CU_ASSERT_EQUAL(rep.type, KVS_RESP_BULK);
        CU_ASSERT_EQUAL(rep.len, n);
        CU_ASSERT(n == 0 || memcmp(rep.str, data, n) == 0);
    }
    free(data);
    kvs_buf_fini(&b);
}

static void test_resp_buf_reserve_append_consume(void)
{
    struct kvs_buf b = {0};

    CU_ASSERT(kvs_buf_append(&b, "", 0) == 0);
    CU_ASSERT(b.p == NULL);
    CU_ASSERT(kvs_buf_append(&b, S("hello")) == 0);
    CU_ASSERT(kvs_buf_reserve(&b, 1000) == 0);
    CU_ASSERT(b.cap - b.len >= 1000);
    CU_ASSERT(kvs_buf_reserve(&b, SIZE_MAX) == -ENOMEM);
    CU_ASSERT(b.len == 5 && memcmp(b.p, "hello", 5) == 0);
    kvs_buf_consume(&b, 2);
    CU_ASSERT(b.len == 3 && memcmp(b.p, "llo", 3) == 0);
    kvs_buf_consume(&b, 3);
    CU_ASSERT_EQUAL(b.len, 0);
    CU_ASSERT(kvs_resp_append_command(&b, 0, NULL, NULL) == -EINVAL);
    kvs_buf_fini(&b);
}

/* ---------------------------------------------------------------------------------------- */
/* Reply parser                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Describe one reply (recursively for arrays) in a readable canonical form. */
static void describe(const struct kvs_resp_reply *r, struct kvs_buf *out)
{
    char tmp[64];
    int n;

    switch (r->type) {
    case KVS_RESP_SIMPLE:
    case KVS_RESP_ERROR:
    case KVS_RESP_BULK:
        n = snprintf(tmp, sizeof(tmp), "%c%zu:",
                     r->type == KVS_RESP_SIMPLE  ? 'S'
                     : r->type == KVS_RESP_ERROR ? 'E'
                                                 : 'B',
                     r->len);
        kvs_buf_append(out, tmp, (size_t)n);
        kvs_buf_append(out, r->str, r->len);
        break;
    case KVS_RESP_INTEGER:
        n = snprintf(tmp, sizeof(tmp), "I%lld", r->integer);
        kvs_buf_append(out, tmp, (size_t)n);
        break;
    case KVS_RESP_NULL:
        kvs_buf_append(out, "N", 1);
        break;
    case KVS_RESP_ARRAY: {
        struct kvs_resp_iter it;
        struct kvs_resp_reply el;
        size_t seen = 0;
        int rc;

        n = snprintf(tmp, sizeof(tmp), "A%zu[", r->count);
        kvs_buf_append(out, tmp, (size_t)n);
        kvs_resp_reply_iter(r, &it);
        while ((rc = kvs_resp_reply_next(&it, &el)) == 1) {
            describe(&el, out);
            kvs_buf_append(out, ",", 1);
            seen++;
        }
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_EQUAL(seen, r->count);
        kvs_buf_append(out, "]", 1);
        break;
    }
    }
    kvs_buf_append(out, ";", 1);
}

/* Parse a stream of replies fed in chunks (each parse on an exact-size copy of the unconsumed
 * bytes), describing every reply; a protocol error appends "X:<msg>". */
static void reply_transcript(const char *in, size_t len, struct chunker ch, bool valid,
                             struct kvs_buf *out)
{
    size_t fed = 0, done = 0;

    while (fed < len) {
        fed += next_chunk(&ch, len - fed);
        for (;;) {
            size_t avail = fed - done;
            char *copy = xmalloc(avail);
            struct kvs_resp_reply rep;
            ssize_t r;

            memcpy(copy, in + done, avail);
            r = kvs_resp_parse_reply(copy, avail, NULL, &rep);
            if (r > 0) {
                describe(&rep, out);
                done += (size_t)r;
            } else if (r == 0) {
                CU_ASSERT(rep.need > avail);
                /* In a stream of whole replies, need never asks past its end. */
                CU_ASSERT(!valid || done == len || done + rep.need <= len);
            } else {
                CU_ASSERT_EQUAL(r, KVS_EPROTO);
                kvs_buf_append(out, "X:", 2);
                if (rep.err != NULL)
                    kvs_buf_append(out, rep.err, strlen(rep.err));
                fed = len;
            }
            free(copy);
            if (r <= 0)
                break;
        }
    }
}

static void check_reply_stream(const char *in, size_t len, const char *want)
{
    struct chunker whole = {0, 0, 0};
    struct kvs_buf ref;

    kvs_buf_init(&ref);
    reply_transcript(in, len, whole, true, &ref);
    CU_ASSERT(ref.len == strlen(want) && memcmp(ref.p, want, ref.len) == 0);
    if (ref.len != strlen(want) || memcmp(ref.p, want, ref.len) != 0)
        fprintf(stderr, "\ngot  [%.*s]\nwant [%s]\n", (int)ref.len, ref.p, want);
    /* Every split into two reads, then byte by byte and random. */
    for (size_t k = 0; k <= len + 3; k++) {
        struct chunker ch = {k < len ? k : 0, 0, 0};
        struct kvs_buf got;

        if (k == len + 1)
            ch.step = 1;
        if (k >= len + 2) {
            ch.seed = 1234 + k;
            ch.max = 5;
        }
        kvs_buf_init(&got);
        reply_transcript(in, len, ch, true, &got);
        CU_ASSERT(got.len == ref.len && memcmp(got.p, ref.p, ref.len) == 0);
        kvs_buf_fini(&got);
    }
    kvs_buf_fini(&ref);
}

static void test_resp_reply_every_type_split_at_every_byte(void)
{
    static const char in[] = "+OK\r\n-ERR no such key\r\n:42\r\n:-7\r\n$5\r\nhello\r\n$0\r\n\r\n"
                             "$-1\r\n*-1\r\n*0\r\n*3\r\n$1\r\na\r\n:1\r\n$-1\r\n"
                             "$4\r\na\r\nb\r\n+\r\n";

    check_reply_stream(S(in), "S2:OK;E15:ERR no such key;I42;I-7;B5:hello;B0:;N;N;A0[];"
                              "A3[B1:a;,I1;,N;,];B4:a\r\nb;S0:;");
}

static void test_resp_reply_nested_arrays(void)
{
    static const char in[] = "*2\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n*0\r\n:9\r\n"
                             "*1\r\n*1\r\n*1\r\n*1\r\n+deep\r\n";

    check_reply_stream(S(in),
                       "A2[A2[I1;,A1[B1:x;,];,];,A0[];,];I9;A1[A1[A1[A1[S4:deep;,];,];,];,];");
}

static void test_resp_reply_deep_nesting_uses_no_stack(void)
{
    size_t depth = 200000;
    struct kvs_buf b;
    struct kvs_resp_reply rep;

    kvs_buf_init(&b);
    for (size_t i = 0; i < depth; i++)
        CU_ASSERT(kvs_resp_append_array(&b, 1) == 0);
    CU_ASSERT(kvs_resp_append_int(&b, 5) == 0);
    CU_ASSERT_EQUAL(kvs_resp_parse_reply(b.p, b.len, NULL, &rep), (ssize_t)b.len);
    CU_ASSERT_EQUAL(rep.type, KVS_RESP_ARRAY);
    CU_ASSERT_EQUAL(kvs_resp_parse_reply(b.p, b.len - 1, NULL, &rep), 0);
    kvs_buf_fini(&b);
}

static void test_resp_reply_large_bulk_and_need(void)
{
    size_t vlen = 1 << 20;
    uint64_t seed = 99;
    char *val = xmalloc(vlen);
    struct kvs_buf b;
    struct kvs_resp_reply rep;
    ssize_t r;

    tutil_fill(&seed, val, vlen);
    kvs_buf_init(&b);
    CU_ASSERT(kvs_resp_append_bulk(&b, val, vlen) == 0);
    r = kvs_resp_parse_reply(b.p, 4, NULL, &rep);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT_EQUAL(rep.need, 5);
    r = kvs_resp_parse_reply(b.p, 10, NULL, &rep);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT_EQUAL(rep.need, b.len);
    r = kvs_resp_parse_reply(b.p, b.len - 1, NULL, &rep);
    CU_ASSERT_EQUAL(r, 0);
    CU_ASSERT_EQUAL(rep.need, b.len);
    r = kvs_resp_parse_reply(b.p, b.len, NULL, &rep);
    CU_ASSERT_EQUAL(r, (ssize_t)b.len);
    CU_ASSERT_EQUAL(rep.type, KVS_RESP_BULK);
    CU_ASSERT(rep.len == vlen && memcmp(rep.str, val, vlen) == 0);
    free(val);
    kvs_buf_fini(&b);
}

static void expect_reply_error(const char *in, size_t len, const struct kvs_resp_limits *lim)
{
    char *copy = xmalloc(len);
    struct kvs_resp_reply rep;
    ssize_t r;

    memcpy(copy, in, len);
    r = kvs_resp_parse_reply(copy, len, lim, &rep);
    CU_ASSERT_EQUAL(r, KVS_EPROTO);
    CU_ASSERT(r != KVS_EPROTO || rep.err != NULL);
    if (r != KVS_EPROTO)
        fprintf(stderr, "\nreply [%.*s] gave %zd\n", (int)len, in, r);
    free(copy);
}

static void test_resp_reply_malformed_fails(void)
{
    struct kvs_resp_limits small = {16, 4, 16};
    char line[70000];

    expect_reply_error(S("?x\r\n"), NULL);
    expect_reply_error(S("%1\r\n"), NULL);
    expect_reply_error(S(":\r\n"), NULL);
    expect_reply_error(S(":-\r\n"), NULL);
    expect_reply_error(S(":12a\r\n"), NULL);
    expect_reply_error(S(":9223372036854775808\r\n"), NULL);
    expect_reply_error(S(":99999999999999999999999"), NULL);
    expect_reply_error(S(":1\rx"), NULL);
    expect_reply_error(S("+OK\rx"), NULL);
    expect_reply_error(S("$-2\r\n"), NULL);
    expect_reply_error(S("$1099511627776"), NULL);
    expect_reply_error(S("$3\r\nabcde"), NULL);
    expect_reply_error(S("*-2\r\n"), NULL);
    expect_reply_error(S("*2\r\n:1\r\n?"), NULL);
    expect_reply_error(S("*5"), &small);
    expect_reply_error(S("$17"), &small);
    expect_reply_error(S("+0123456789abcdef"), &small);
    memset(line, 'a', sizeof(line));
    line[0] = '-';
    expect_reply_error(line, sizeof(line), NULL);
}

static void test_resp_reply_integer_extremes(void)
{
    struct kvs_resp_reply rep;

    CU_ASSERT_EQUAL(kvs_resp_parse_reply(S(":-9223372036854775808\r\n"), NULL, &rep), 23);
    CU_ASSERT_EQUAL(rep.integer, LLONG_MIN);
    CU_ASSERT_EQUAL(kvs_resp_parse_reply(S(":9223372036854775807\r\n"), NULL, &rep), 22);
    CU_ASSERT_EQUAL(rep.integer, LLONG_MAX);
    CU_ASSERT_EQUAL(kvs_resp_parse_reply(S(":-0\r\n"), NULL, &rep), 5);
    CU_ASSERT_EQUAL(rep.integer, 0);
    CU_ASSERT_EQUAL(kvs_resp_parse_reply(S(":-"), NULL, &rep), 0);
}

static void test_resp_reply_iter_on_non_array_is_empty(void)
{
    struct kvs_resp_reply rep, el;
    struct kvs_resp_iter it;

    CU_ASSERT_EQUAL(kvs_resp_parse_reply(S("+OK\r\n"), NULL, &rep), 5);
    kvs_resp_reply_iter(&rep, &it);
    CU_ASSERT_EQUAL(kvs_resp_reply_next(&it, &el), 0);
}

static void test_resp_command_encoder_roundtrip_through_request_parser(void)
{
    const char *argv[] = {"SET", "k\r\n", ""};
    size_t lens[] = {3, 3, 0};
    struct kvs_buf b;
    struct kvs_resp_request req;
    struct kvs_resp_arg av[3];
    static const char want[] = "*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n";

    kvs_buf_init(&b);
    CU_ASSERT(kvs_resp_append_command(&b, 3, argv, lens) == 0);
    CU_ASSERT(b.len == sizeof(want) - 1 && memcmp(b.p, want, b.len) == 0);
    kvs_resp_request_init(&req, av, 3);
    CU_ASSERT_EQUAL(kvs_resp_parse_request(&req, b.p, b.len, NULL), (ssize_t)b.len);
    CU_ASSERT(arg_is(&av[1], S("k\r\n")) && av[2].len == 0);
    kvs_buf_fini(&b);
}

/* ---------------------------------------------------------------------------------------- */
/* Fuzz                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Random input biased towards protocol bytes, so that the fuzz reaches deep states. */
static size_t fuzz_input(uint64_t *seed, char *buf, size_t max)
{
    static const char alphabet[] = "*$+-:\r\n\r\n0123456789-1\"'\\x ab";
    size_t len = (size_t)(tutil_rand(seed) % max);

    for (size_t i = 0; i < len; i++) {
        uint64_t r = tutil_rand(seed);

        buf[i] = (r & 3) == 0 ? (char)(r >> 8) : alphabet[(r >> 8) % (sizeof(alphabet) - 1)];
    }
    return len;
}

static void test_resp_fuzz_random_bytes_never_crash(void)
{
    uint64_t seed = 0xfeedULL;
    struct kvs_resp_limits lim = {100, 8, 64};

    for (int iter = 0; iter < 30000; iter++) {
        char tmp[96];
        size_t len = fuzz_input(&seed, tmp, sizeof(tmp));
        char *buf = xmalloc(len);
        struct kvs_resp_arg argv[3];
        struct kvs_resp_request req;
        struct kvs_resp_reply rep;
        const struct kvs_resp_limits *l = (iter & 1) ? &lim : NULL;
        size_t off = 0;

        memcpy(buf, tmp, len);
        kvs_resp_request_init(&req, argv, 3);
        for (;;) {
            ssize_t r = kvs_resp_parse_request(&req, buf + off, len - off, l);

            if (r <= 0) {
                CU_ASSERT(r == 0 || r == KVS_EPROTO || r == -ENOBUFS);
                CU_ASSERT(r != 0 || req.need > len - off);
                CU_ASSERT(r != KVS_EPROTO || req.err != NULL);
                break;
            }
            CU_ASSERT((size_t)r <= len - off);
            off += (size_t)r;
        }
        off = 0;
        for (;;) {
            ssize_t r = kvs_resp_parse_reply(buf + off, len - off, l, &rep);

            if (r <= 0) {
                CU_ASSERT(r == 0 || r == KVS_EPROTO);
                break;
            }
            if (rep.type == KVS_RESP_ARRAY) {
                struct kvs_buf d;

                kvs_buf_init(&d);
                describe(&rep, &d);
                kvs_buf_fini(&d);
            }
            off += (size_t)r;
        }
        free(buf);
    }
}

static void test_resp_fuzz_mutated_valid_stream(void)
{
    uint64_t seed = 0xabcdefULL;
    struct kvs_buf good;
    static const char *const cmd[] = {"SET", "key", "value"};

    kvs_buf_init(&good);
    for (int i = 0; i < 4; i++)
        expect_cmd(&good, 3, cmd);
    kvs_buf_append(&good, S("GET \"a\\x41\" 'b'\r\n"));
    kvs_resp_append_array(&good, 2);
    kvs_resp_append_bulk(&good, S("xy"));
    kvs_resp_append_int(&good, -3);
    for (int iter = 0; iter < 3000; iter++) {
        char *buf = xmalloc(good.len);
        int flips = 1 + (int)(tutil_rand(&seed) % 3);
        struct kvs_buf t;
        struct chunker ch = {0, 0, 0};

        memcpy(buf, good.p, good.len);
        for (int f = 0; f < flips; f++)
            buf[tutil_rand(&seed) % good.len] = (char)tutil_rand(&seed);
        kvs_buf_init(&t);
        ch.seed = 1 + tutil_rand(&seed) % 1000;
        ch.max = 9;
        transcript(buf, good.len, ch, FEED_EXACT, NULL, 2, 0, &t);
        kvs_buf_fini(&t);
        kvs_buf_init(&t);
        reply_transcript(buf, good.len, ch, false, &t);
        kvs_buf_fini(&t);
        free(buf);
    }
    kvs_buf_fini(&good);
}

void test_resp_register(void);

void test_resp_register(void)
{
    CU_pSuite s = CU_add_suite("resp", NULL, NULL);

#define ADD(fn) CU_add_test(s, #fn, fn)
    ADD(test_resp_request_array_whole);
    ADD(test_resp_request_every_split_matches_whole);
    ADD(test_resp_request_every_prefix_needs_more);
    ADD(test_resp_request_pipelined_mixed_with_inline);
    ADD(test_resp_request_empty_requests_are_skipped_with_argc_zero);
    ADD(test_resp_request_inline_quotes_and_escapes);
    ADD(test_resp_request_inline_unbalanced_quotes_fail);
    ADD(test_resp_request_binary_bulks_keep_nul_and_crlf);
    ADD(test_resp_request_hostile_lengths_fail_at_once);
    ADD(test_resp_request_inline_line_at_limit_is_accepted);
    ADD(test_resp_request_custom_limits);
    ADD(test_resp_request_argv_too_small_reports_count);
    ADD(test_resp_request_need_covers_whole_bulk);
    ADD(test_resp_request_resume_survives_moved_buffer);
    ADD(test_resp_request_random_commands_roundtrip);
    ADD(test_resp_request_error_after_good_requests);
    ADD(test_resp_encode_every_reply_type);
    ADD(test_resp_encode_ints_roundtrip_through_reply_parser);
    ADD(test_resp_encode_bulks_roundtrip_through_reply_parser);
    ADD(test_resp_buf_reserve_append_consume);
    ADD(test_resp_reply_every_type_split_at_every_byte);
    ADD(test_resp_reply_nested_arrays);
    ADD(test_resp_reply_deep_nesting_uses_no_stack);
    ADD(test_resp_reply_large_bulk_and_need);
    ADD(test_resp_reply_malformed_fails);
    ADD(test_resp_reply_integer_extremes);
    ADD(test_resp_reply_iter_on_non_array_is_empty);
    ADD(test_resp_command_encoder_roundtrip_through_request_parser);
    ADD(test_resp_fuzz_random_bytes_never_crash);
    ADD(test_resp_fuzz_mutated_valid_stream);
#undef ADD
}
