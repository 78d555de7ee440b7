/* SPDX-License-Identifier: MIT */
/*
 * The command table and every command: argument checking with Redis's wording, then either
 * an immediate reply or ops dispatched to the owner shards of the keys, with a finish function
 * that encodes the reply once all ops are back. docs/protocol.md ("Commands") lists them.
 *
 * Runs on the shard that parsed the request. Must not: touch the engine (only ops do, on the
 * owner shard), or write a reply anywhere but req_reply_buf().
 */
#include "shard.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "kvs/error.h"

typedef void (*cmd_fn)(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv);

struct cmd {
    const char *name;
    size_t len; /* strlen(name), so that lookup compares lengths first */
    cmd_fn fn;
    const char *flags; /* space-separated, for COMMAND */
    int arity;         /* Redis convention: N exactly, -N at least N (the name counts) */
    int first_key, last_key, step;
};

static const struct cmd *cmd_lookup(const char *name, size_t len);

/* ---- helpers ---- */

static struct kvs_buf *out(struct req *req)
{
    return req_reply_buf(req);
}

static void reply_error(struct req *req, const char *msg)
{
    (void)kvs_resp_append_error(out(req), msg, strlen(msg));
}

static bool arg_is(const struct kvs_resp_arg *a, const char *s)
{
    size_t n = strlen(s);

    return a->len == n && strncasecmp(a->p, s, n) == 0;
}

static const char *cmd_error_text(int status)
{
    switch (status) {
    case KVS_ETOOBIG:
        return "ERR string exceeds maximum allowed size";
    case KVS_EFAILED:
        return "ERR the store failed a write or sync and is read-only; see the server log";
    case KVS_ECORRUPT:
        return "ERR a stored record failed its checksum; see the server log";
    case KVS_ECLOSED:
        return "ERR the server is shutting down";
    case OP_ENOTINT:
        return "ERR value is not an integer or out of range";
    case OP_EOVERFLOW:
        return "ERR increment or decrement would overflow";
    case -ENOMEM:
        return "ERR out of memory";
    default:
        return NULL;
    }
}

static void reply_status_error(struct req *req, int status)
{
    const char *t = cmd_error_text(status);

    if (t != NULL)
        reply_error(req, t);
    else
        (void)kvs_resp_append_errorf(out(req), "ERR %s", kvs_strerror(status));
}

/*
 * reply_oom_since - a reply could not be built whole (out of memory): drop what was appended
 * since mark and answer with an error instead. If even that fails, close the connection after
 * the replies before this one, so that the client never reads a short array as complete.
 */
static void reply_oom_since(struct req *req, size_t mark)
{
    struct kvs_buf *b = out(req);

    b->len = mark;
    if (kvs_resp_append_error(b, "ERR out of memory", sizeof("ERR out of memory") - 1) < 0)
        conn_close_after_reply(req->conn);
}

/* The first op error of a request, or 0. Missing keys and unmet conditions are not errors. */
static int first_error(const struct req *req)
{
    for (unsigned i = 0; i < req->nops; i++) {
        int st = req->ops[i]->status;

        if (st < 0 && st != KVS_ENOTFOUND && st != OP_ENOTDONE)
            return st;
    }
    return 0;
}

bool cmd_parse_i64(const char *s, size_t len, int64_t *out_v)
{
    uint64_t v = 0, lim;
    bool neg = false;
    size_t i = 0;

    /* Same acceptance as Redis's string2ll: no sign but '-', no spaces, no leading zeros,
     * "0" alone, at most 20 characters. */
    if (len == 0 || len > 20)
        return false;
    if (len == 1 && s[0] == '0') {
        *out_v = 0;
        return true;
    }
    if (s[0] == '-') {
        neg = true;
        i = 1;
        if (len == 1)
            return false;
    }
    if (s[i] < '1' || s[i] > '9')
        return false;
    lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        unsigned d;

        if (s[i] < '0' || s[i] > '9')
            return false;
        d = (unsigned)(s[i] - '0');
        if (v > (lim - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out_v = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out_v)
{
    uint64_t v = 0;

    if (len == 0 || len > 20)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned d;

        if (s[i] < '0' || s[i] > '9')
            return false;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out_v = v;
    return true;
}

static bool key_ok_or_reply(struct shard *sh, struct req *req, const struct kvs_resp_arg *k)
{
    if (k->len <= sh->srv->cfg.max_key)
        return true;
    (void)kvs_resp_append_errorf(out(req), "ERR key is too large (%zu bytes; the limit is %u)",
                                 k->len, (unsigned)sh->srv->cfg.max_key);
    return false;
}

static bool value_ok_or_reply(struct shard *sh, struct req *req, const struct kvs_resp_arg *v)
{
    if (v->len <= sh->srv->cfg.max_value)
        return true;
    reply_status_error(req, KVS_ETOOBIG);
    return false;
}

/* Adds one key op; on allocation failure replies and returns NULL. */
static struct op *add_key_op(struct shard *sh, struct req *req, enum op_kind kind,
                             const struct kvs_resp_arg *k, const struct kvs_resp_arg *v)
{
    struct op *op = req_add_op(sh, req, kind, k->p, k->len, v != NULL ? v->p : NULL,
                               v != NULL ? v->len : 0, -1);

    if (op == NULL)
        reply_error(req, "ERR out of memory");
    return op;
}

/* Adds one shard-wide op per shard; false (after replying) when out of memory. */
static bool add_all_shards(struct shard *sh, struct req *req, enum op_kind kind, const char *pat,
                           size_t plen)
{
    for (unsigned i = 0; i < sh->srv->nshards; i++) {
        if (req_add_op(sh, req, kind, pat, plen, NULL, 0, (int)i) == NULL) {
            reply_error(req, "ERR out of memory");
            return false;
        }
    }
    return true;
}

/* ---- glob ---- */

static unsigned char fold(unsigned char c, bool nocase)
{
    return nocase && c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Matches one pattern element at pat[*pi] (not '*') against c; advances *pi past it. */
static bool glob_one(const char *pat, size_t plen, size_t *pi, unsigned char c, bool nocase)
{
    size_t p = *pi;
    unsigned char pc = (unsigned char)pat[p];

    if (pc == '?') {
        *pi = p + 1;
        return true;
    }
    if (pc == '\\' && p + 1 < plen) {
        *pi = p + 2;
        return fold((unsigned char)pat[p + 1], nocase) == fold(c, nocase);
    }
    if (pc == '[') {
        bool neg = false, hit = false;

        p++;
        if (p < plen && pat[p] == '^') {
            neg = true;
            p++;
        }
        /* As in Redis, a class missing its ']' runs to the end of the pattern. */
        while (p < plen && pat[p] != ']') {
            if (pat[p] == '\\' && p + 1 < plen) {
                p++;
                if (fold((unsigned char)pat[p], nocase) == fold(c, nocase))
                    hit = true;
                p++;
            } else if (p + 2 < plen && pat[p + 1] == '-') {
                unsigned char lo = fold((unsigned char)pat[p], nocase);
                unsigned char hi = fold((unsigned char)pat[p + 2], nocase);
                unsigned char fc = fold(c, nocase);

                if (lo > hi) {
                    unsigned char t = lo;

                    lo = hi;
                    hi = t;
                }
                if (fc >= lo && fc <= hi)
                    hit = true;
                p += 3;
            } else {
                if (fold((unsigned char)pat[p], nocase) == fold(c, nocase))
                    hit = true;
                p++;
            }
        }
        if (p < plen)
            p++; /* the ']' */
        *pi = p;
        return neg ? !hit : hit;
    }
    *pi = p + 1;
    return fold(pc, nocase) == fold(c, nocase);
}

/* Iterative glob with one backtrack point (the last '*'): linear in practice and never
 * exponential, unlike a naive recursive matcher fed "a*a*a*a*...b". */
bool cmd_glob_match(const char *pat, size_t plen, const char *str, size_t slen, bool nocase)
{
    size_t p = 0, s = 0, star_p = 0, star_s = 0;
    bool have_star = false;

    while (s < slen) {
        if (p < plen && pat[p] == '*') {
            while (p < plen && pat[p] == '*')
                p++;
            if (p == plen)
                return true;
            have_star = true;
            star_p = p;
            star_s = s;
            continue;
        }
        if (p < plen) {
            size_t np = p;

            if (glob_one(pat, plen, &np, (unsigned char)str[s], nocase)) {
                p = np;
                s++;
                continue;
            }
        }
        if (!have_star)
            return false;
        p = star_p;
        s = ++star_s;
    }
    while (p < plen && pat[p] == '*')
        p++;
    return p == plen;
}

/* ---- connection and server commands ---- */

static void cmd_ping(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)sh;
    if (argc > 2) {
        reply_error(req, "ERR wrong number of arguments for 'ping' command");
        return;
    }
    if (argc == 2)
        (void)kvs_resp_append_bulk(out(req), argv[1].p, argv[1].len);
    else
        (void)kvs_resp_append_simple(out(req), "PONG", 4);
}

static void cmd_echo(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)sh;
    (void)argc;
    (void)kvs_resp_append_bulk(out(req), argv[1].p, argv[1].len);
}

static void cmd_quit(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)sh;
    (void)argc;
    (void)argv;
    (void)kvs_resp_append_ok(out(req));
    conn_close_after_reply(req->conn);
}

static void cmd_select(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    int64_t db;

    (void)sh;
    (void)argc;
    if (!cmd_parse_i64(argv[1].p, argv[1].len, &db))
        reply_status_error(req, OP_ENOTINT);
    else if (db != 0)
        reply_error(req, "ERR DB index is out of range");
    else
        (void)kvs_resp_append_ok(out(req));
}

static void append_cstr_bulk(struct kvs_buf *b, const char *s)
{
    (void)kvs_resp_append_bulk(b, s, strlen(s));
}

/* CLIENT SETNAME and HELLO SETNAME: name the connection (an empty name clears it); on a bad
 * name or no memory reply with the error and return false. */
static bool conn_setname_or_reply(struct req *req, const struct kvs_resp_arg *a)
{
    struct conn *c = req->conn;
    char *name = NULL;

    for (size_t i = 0; i < a->len; i++) {
        if (a->p[i] <= ' ' || a->p[i] > '~') {
            reply_error(req, "ERR Client names cannot contain spaces, newlines or special "
                             "characters.");
            return false;
        }
    }
    if (a->len > 0) {
        name = malloc(a->len + 1);
        if (name == NULL) {
            reply_error(req, "ERR out of memory");
            return false;
        }
        memcpy(name, a->p, a->len);
        name[a->len] = '\0';
    }
    free(c->name);
    c->name = name;
    return true;
}

static void cmd_hello(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    const struct kvs_resp_arg *setname = NULL;
    struct kvs_buf *b;
    size_t i = 2;
    int64_t ver = 2;

    (void)sh;
    if (argc >= 2) {
        if (!cmd_parse_i64(argv[1].p, argv[1].len, &ver)) {
            reply_error(req, "ERR Protocol version is not an integer or out of range");
            return;
        }
        if (ver != 2) {
            reply_error(req, "NOPROTO unsupported protocol version");
            return;
        }
    }
    for (; i < argc; i++) {
        if (arg_is(&argv[i], "AUTH") && i + 2 < argc) {
            i += 2; /* no authentication configured: any credentials are accepted */
        } else if (arg_is(&argv[i], "SETNAME") && i + 1 < argc) {
            setname = &argv[++i]; /* applied once every option parsed */
        } else {
            (void)kvs_resp_append_errorf(out(req), "ERR Syntax error in HELLO option '%.*s'",
                                         (int)(argv[i].len > 128 ? 128 : argv[i].len), argv[i].p);
            return;
        }
    }
    if (setname != NULL && !conn_setname_or_reply(req, setname))
        return;
    b = out(req);
    (void)kvs_resp_append_array(b, 14);
    append_cstr_bulk(b, "server");
    append_cstr_bulk(b, "kvs");
    append_cstr_bulk(b, "version");
    append_cstr_bulk(b, KVS_VERSION);
    append_cstr_bulk(b, "proto");
    (void)kvs_resp_append_int(b, 2);
    append_cstr_bulk(b, "id");
    (void)kvs_resp_append_int(b, (long long)req->conn->id);
    append_cstr_bulk(b, "mode");
    append_cstr_bulk(b, "standalone");
    append_cstr_bulk(b, "role");
    append_cstr_bulk(b, "master");
    append_cstr_bulk(b, "modules");
    (void)kvs_resp_append_array(b, 0);
}

static void cmd_client(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    struct conn *c = req->conn;

    (void)sh;
    if (arg_is(&argv[1], "ID") && argc == 2) {
        (void)kvs_resp_append_int(out(req), (long long)c->id);
    } else if (arg_is(&argv[1], "GETNAME") && argc == 2) {
        if (c->name != NULL)
            append_cstr_bulk(out(req), c->name);
        else
            (void)kvs_resp_append_null(out(req));
    } else if (arg_is(&argv[1], "SETNAME") && argc == 3) {
        if (conn_setname_or_reply(req, &argv[2]))
            (void)kvs_resp_append_ok(out(req));
    } else if (arg_is(&argv[1], "SETINFO") && argc == 4) {
        if (!arg_is(&argv[2], "LIB-NAME") && !arg_is(&argv[2], "LIB-VER")) {
            (void)kvs_resp_append_errorf(out(req), "ERR Unrecognized option '%.*s'",
                                         (int)(argv[2].len > 128 ? 128 : argv[2].len), argv[2].p);
            return;
        }
        (void)kvs_resp_append_ok(out(req));
    } else if (arg_is(&argv[1], "SETNAME") || arg_is(&argv[1], "GETNAME") ||
               arg_is(&argv[1], "ID") || arg_is(&argv[1], "SETINFO")) {
        (void)kvs_resp_append_errorf(out(req),
                                     "ERR wrong number of arguments for 'client|%.*s' command",
                                     (int)argv[1].len, argv[1].p);
    } else {
        (void)kvs_resp_append_errorf(out(req), "ERR unknown subcommand '%.*s'. Try CLIENT HELP.",
                                     (int)(argv[1].len > 128 ? 128 : argv[1].len), argv[1].p);
    }
}

static void cmd_config(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    const struct kvs_server_config *cfg = &sh->srv->cfg;
    char maxclients[24], port[24];
    const char *params[][2] = {
        {"save", ""},
        {"appendonly", cfg->fsync == KVS_FSYNC_NEVER ? "no" : "yes"},
        {"appendfsync", kvs_engine_fsync_name(cfg->fsync)},
        {"databases", "1"},
        {"maxclients", maxclients},
        {"port", port},
        {"dir", cfg->dir},
    };
    size_t nparams = sizeof(params) / sizeof(params[0]);
    struct kvs_buf *b;
    size_t hits = 0;

    if (arg_is(&argv[1], "RESETSTAT") && argc == 2) {
        (void)kvs_resp_append_ok(out(req));
        return;
    }
    if (!arg_is(&argv[1], "GET")) {
        (void)kvs_resp_append_errorf(out(req), "ERR CONFIG %.*s is not supported by kvs",
                                     (int)(argv[1].len > 32 ? 32 : argv[1].len), argv[1].p);
        return;
    }
    if (argc < 3) {
        reply_error(req, "ERR wrong number of arguments for 'config|get' command");
        return;
    }
    snprintf(maxclients, sizeof(maxclients), "%u", cfg->max_clients);
    snprintf(port, sizeof(port), "%d", sh->srv->port);
    for (size_t i = 0; i < nparams; i++)
        for (size_t a = 2; a < argc; a++)
            if (cmd_glob_match(argv[a].p, argv[a].len, params[i][0], strlen(params[i][0]), true)) {
                hits++;
                break;
            }
    b = out(req);
    (void)kvs_resp_append_array(b, hits * 2);
    for (size_t i = 0; i < nparams; i++)
        for (size_t a = 2; a < argc; a++)
            if (cmd_glob_match(argv[a].p, argv[a].len, params[i][0], strlen(params[i][0]), true)) {
                append_cstr_bulk(b, params[i][0]);
                append_cstr_bulk(b, params[i][1]);
                break;
            }
}

/* ---- string commands ---- */

static void finish_get(struct shard *sh, struct req *req)
{
    const struct op *op = req->ops[0];

    (void)sh;
    if (op->status == 0)
        (void)kvs_resp_append_bulk(out(req), op->rval, op->rlen);
    else if (op->status == KVS_ENOTFOUND)
        (void)kvs_resp_append_null(out(req));
    else
        reply_status_error(req, op->status);
}

static void cmd_get(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    if (!key_ok_or_reply(sh, req, &argv[1]) || add_key_op(sh, req, OP_GET, &argv[1], NULL) == NULL)
        return;
    req_dispatch(sh, req, finish_get);
}

static void finish_set(struct shard *sh, struct req *req)
{
    const struct op *op = req->ops[0];

    (void)sh;
    if (op->flags & OPF_GET) {
        if (op->status < 0)
            reply_status_error(req, op->status);
        else if (op->ival)
            (void)kvs_resp_append_bulk(out(req), op->rval, op->rlen);
        else
            (void)kvs_resp_append_null(out(req));
    } else if (op->status == 0) {
        (void)kvs_resp_append_ok(out(req));
    } else if (op->status == OP_ENOTDONE) {
        (void)kvs_resp_append_null(out(req));
    } else {
        reply_status_error(req, op->status);
    }
}

/* SET, SETNX, GETSET: one SET op on argv[1] = argv[2] with the given OPF_* flags. */
static void cmd_set_generic(struct shard *sh, struct req *req, struct kvs_resp_arg *argv,
                            unsigned flags, req_finish_fn finish)
{
    struct op *op;

    if (!key_ok_or_reply(sh, req, &argv[1]) || !value_ok_or_reply(sh, req, &argv[2]))
        return;
    op = add_key_op(sh, req, OP_SET, &argv[1], &argv[2]);
    if (op == NULL)
        return;
    op->flags = (uint8_t)flags;
    req_dispatch(sh, req, finish);
}

static void cmd_set(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    unsigned flags = 0;

    for (size_t i = 3; i < argc; i++) {
        if (arg_is(&argv[i], "NX") && !(flags & OPF_XX)) {
            flags |= OPF_NX;
        } else if (arg_is(&argv[i], "XX") && !(flags & OPF_NX)) {
            flags |= OPF_XX;
        } else if (arg_is(&argv[i], "GET")) {
            flags |= OPF_GET;
        } else if (arg_is(&argv[i], "KEEPTTL")) {
            /* Keys never expire in kvs, so keeping "the" TTL is what always happens. */
        } else if (arg_is(&argv[i], "EX") || arg_is(&argv[i], "PX") || arg_is(&argv[i], "EXAT") ||
                   arg_is(&argv[i], "PXAT")) {
            reply_error(req, "ERR key expiry (EX/PX/EXAT/PXAT) is not supported by kvs");
            return;
        } else {
            reply_error(req, "ERR syntax error");
            return;
        }
    }
    cmd_set_generic(sh, req, argv, flags, finish_set);
}

static void finish_setnx(struct shard *sh, struct req *req)
{
    const struct op *op = req->ops[0];

    (void)sh;
    if (op->status == 0 || op->status == OP_ENOTDONE)
        (void)kvs_resp_append_int(out(req), op->status == 0);
    else
        reply_status_error(req, op->status);
}

static void cmd_setnx(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    cmd_set_generic(sh, req, argv, OPF_NX, finish_setnx);
}

/* DEL, EXISTS: the sum of the per-key answers. */
static void finish_sum(struct shard *sh, struct req *req)
{
    int64_t sum = 0;
    int err = first_error(req);

    (void)sh;
    if (err != 0) {
        reply_status_error(req, err);
        return;
    }
    for (unsigned i = 0; i < req->nops; i++)
        sum += req->ops[i]->ival;
    (void)kvs_resp_append_int(out(req), sum);
}

static void multi_key(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv,
                      enum op_kind kind, req_finish_fn finish)
{
    for (size_t i = 1; i < argc; i++)
        if (!key_ok_or_reply(sh, req, &argv[i]))
            return;
    for (size_t i = 1; i < argc; i++)
        if (add_key_op(sh, req, kind, &argv[i], NULL) == NULL)
            return;
    req_dispatch(sh, req, finish);
}

static void cmd_del(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    multi_key(sh, req, argc, argv, OP_DEL, finish_sum);
}

static void cmd_exists(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    multi_key(sh, req, argc, argv, OP_EXISTS, finish_sum);
}

static void finish_mget(struct shard *sh, struct req *req)
{
    struct kvs_buf *b = out(req);
    size_t mark = b->len;
    int err = first_error(req), rc;

    (void)sh;
    if (err != 0) {
        reply_status_error(req, err);
        return;
    }
    rc = kvs_resp_append_array(b, req->nops);

    for (unsigned i = 0; i < req->nops && rc >= 0; i++) {
        const struct op *op = req->ops[i];

        rc =
            op->status == 0 ? kvs_resp_append_bulk(b, op->rval, op->rlen) : kvs_resp_append_null(b);
    }
    if (rc < 0)
        reply_oom_since(req, mark);
}

static void cmd_mget(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    multi_key(sh, req, argc, argv, OP_GET, finish_mget);
}

static void finish_ok(struct shard *sh, struct req *req)
{
    int err = first_error(req);

    (void)sh;
    if (err != 0)
        reply_status_error(req, err);
    else
        (void)kvs_resp_append_ok(out(req));
}

static void cmd_mset(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    if (argc % 2 == 0) {
        reply_error(req, "ERR wrong number of arguments for 'mset' command");
        return;
    }
    for (size_t i = 1; i < argc; i += 2)
        if (!key_ok_or_reply(sh, req, &argv[i]) || !value_ok_or_reply(sh, req, &argv[i + 1]))
            return;
    /* Pairs for one owner travel in order through one inbox, so a key given twice ends
     * with its last value, as in Redis. */
    for (size_t i = 1; i < argc; i += 2)
        if (add_key_op(sh, req, OP_SET, &argv[i], &argv[i + 1]) == NULL)
            return;
    req_dispatch(sh, req, finish_ok);
}

static void finish_int(struct shard *sh, struct req *req)
{
    const struct op *op = req->ops[0];

    (void)sh;
    if (op->status == 0)
        (void)kvs_resp_append_int(out(req), op->ival);
    else
        reply_status_error(req, op->status);
}

static void cmd_strlen(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    if (!key_ok_or_reply(sh, req, &argv[1]) ||
        add_key_op(sh, req, OP_STRLEN, &argv[1], NULL) == NULL)
        return;
    req_dispatch(sh, req, finish_int);
}

static void cmd_append(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    if (!key_ok_or_reply(sh, req, &argv[1]) || !value_ok_or_reply(sh, req, &argv[2]) ||
        add_key_op(sh, req, OP_APPEND, &argv[1], &argv[2]) == NULL)
        return;
    req_dispatch(sh, req, finish_int);
}

static void incr_generic(struct shard *sh, struct req *req, const struct kvs_resp_arg *key,
                         int64_t delta)
{
    struct op *op;

    if (!key_ok_or_reply(sh, req, key))
        return;
    op = add_key_op(sh, req, OP_INCRBY, key, NULL);
    if (op == NULL)
        return;
    op->arg = delta;
    req_dispatch(sh, req, finish_int);
}

static void cmd_incr(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    incr_generic(sh, req, &argv[1], 1);
}

static void cmd_decr(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    incr_generic(sh, req, &argv[1], -1);
}

static void cmd_incrby(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    int64_t d;

    (void)argc;
    if (!cmd_parse_i64(argv[2].p, argv[2].len, &d)) {
        reply_status_error(req, OP_ENOTINT);
        return;
    }
    incr_generic(sh, req, &argv[1], d);
}

static void cmd_decrby(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    int64_t d;

    (void)argc;
    if (!cmd_parse_i64(argv[2].p, argv[2].len, &d)) {
        reply_status_error(req, OP_ENOTINT);
        return;
    }
    if (d == INT64_MIN) {
        reply_error(req, "ERR decrement would overflow");
        return;
    }
    incr_generic(sh, req, &argv[1], -d);
}

static void cmd_getset(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    cmd_set_generic(sh, req, argv, OPF_GET, finish_set);
}

/* TYPE, TTL, PTTL: every kvs key is a string without expiry, so existence decides. */
static void finish_type(struct shard *sh, struct req *req)
{
    const struct op *op = req->ops[0];

    (void)sh;
    if (op->status < 0)
        reply_status_error(req, op->status);
    else if (req->aux == 0)
        (void)kvs_resp_append_simple(out(req), op->ival ? "string" : "none", op->ival ? 6 : 4);
    else
        (void)kvs_resp_append_int(out(req), op->ival ? -1 : -2);
}

static void cmd_type(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    req->aux = !arg_is(&argv[0], "TYPE");
    if (!key_ok_or_reply(sh, req, &argv[1]) ||
        add_key_op(sh, req, OP_EXISTS, &argv[1], NULL) == NULL)
        return;
    req_dispatch(sh, req, finish_type);
}

static void cmd_time(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    struct timespec ts;
    char sec[24], usec[24];
    int ns, nu;

    (void)sh;
    (void)argc;
    (void)argv;
    clock_gettime(CLOCK_REALTIME, &ts);
    ns = snprintf(sec, sizeof(sec), "%lld", (long long)ts.tv_sec);
    nu = snprintf(usec, sizeof(usec), "%ld", ts.tv_nsec / 1000);
    (void)kvs_resp_append_array(out(req), 2);
    (void)kvs_resp_append_bulk(out(req), sec, (size_t)ns);
    (void)kvs_resp_append_bulk(out(req), usec, (size_t)nu);
}

/* ---- keyspace commands ---- */

static void cmd_dbsize(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    (void)argv;
    if (add_all_shards(sh, req, OP_DBSIZE, NULL, 0))
        req_dispatch(sh, req, finish_sum);
}

static void finish_keys(struct shard *sh, struct req *req)
{
    struct kvs_buf *b = out(req);
    size_t mark = b->len;
    uint64_t n = 0;
    int err = first_error(req), rc;

    (void)sh;
    if (err != 0) {
        reply_status_error(req, err);
        return;
    }
    for (unsigned i = 0; i < req->nops; i++)
        n += req->ops[i]->rcount;
    rc = kvs_resp_append_array(b, n);
    /* Each shard sent its keys already encoded as bulk strings. */
    for (unsigned i = 0; i < req->nops && rc >= 0; i++)
        if (req->ops[i]->rlen > 0)
            rc = kvs_buf_append(b, req->ops[i]->rval, req->ops[i]->rlen);
    if (rc < 0)
        reply_oom_since(req, mark);
}

static void cmd_keys(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    /* "*" matches everything: send no pattern so the owners skip matching. An empty pattern
     * is a pattern (it matches the empty key), hence OPF_MATCH rather than a length test. */
    bool all = argv[1].len == 1 && argv[1].p[0] == '*';

    (void)argc;
    if (!add_all_shards(sh, req, OP_KEYS, argv[1].p, all ? 0 : argv[1].len))
        return;
    for (unsigned i = 0; i < req->nops && !all; i++)
        req->ops[i]->flags |= OPF_MATCH;
    req_dispatch(sh, req, finish_keys);
}

static void finish_scan(struct shard *sh, struct req *req)
{
    const struct op *op = req->ops[0];
    struct kvs_buf *b = out(req);
    size_t mark = b->len;
    unsigned n = sh->srv->nshards;
    uint64_t next;
    char num[24];
    int len;

    if (op->status < 0) {
        reply_status_error(req, op->status);
        return;
    }
    /* The cursor given to the client is engine_cursor * nshards + shard: a shard that is
     * finished hands over to the next one at its cursor 0. */
    if (op->cursor == 0)
        next = op->owner + 1u < n ? op->owner + 1u : 0;
    else
        next = op->cursor * n + op->owner;
    len = snprintf(num, sizeof(num), "%" PRIu64, next);
    if (kvs_resp_append_array(b, 2) < 0 || kvs_resp_append_bulk(b, num, (size_t)len) < 0 ||
        kvs_resp_append_array(b, op->rcount) < 0 ||
        (op->rlen > 0 && kvs_buf_append(b, op->rval, op->rlen) < 0))
        reply_oom_since(req, mark);
}

static void cmd_scan(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    uint64_t cursor, n = sh->srv->nshards;
    int64_t count = 10;
    const struct kvs_resp_arg *match = NULL;
    bool no_keys = false;
    struct op *op;

    if (!parse_u64(argv[1].p, argv[1].len, &cursor)) {
        reply_error(req, "ERR invalid cursor");
        return;
    }
    for (size_t i = 2; i < argc; i++) {
        if (arg_is(&argv[i], "MATCH") && i + 1 < argc) {
            match = &argv[++i];
        } else if (arg_is(&argv[i], "COUNT") && i + 1 < argc) {
            if (!cmd_parse_i64(argv[i + 1].p, argv[i + 1].len, &count)) {
                reply_status_error(req, OP_ENOTINT);
                return;
            }
            if (count < 1) {
                reply_error(req, "ERR syntax error");
                return;
            }
            i++;
        } else if (arg_is(&argv[i], "TYPE") && i + 1 < argc) {
            /* Every kvs value is a string. */
            no_keys = !arg_is(&argv[++i], "string");
        } else {
            reply_error(req, "ERR syntax error");
            return;
        }
    }
    if (no_keys) {
        /* A type no key has: nothing to walk, the scan is done at once. */
        struct kvs_buf *b = out(req);

        (void)kvs_resp_append_array(b, 2);
        (void)kvs_resp_append_bulk(b, "0", 1);
        (void)kvs_resp_append_array(b, 0);
        return;
    }
    if (match != NULL && match->len == 1 && match->p[0] == '*')
        match = NULL;
    op = req_add_op(sh, req, OP_SCAN, match != NULL ? match->p : NULL,
                    match != NULL ? match->len : 0, NULL, 0, (int)(cursor % n));
    if (op == NULL) {
        reply_error(req, "ERR out of memory");
        return;
    }
    if (match != NULL)
        op->flags |= OPF_MATCH;
    op->cursor = cursor / n;
    op->arg = count > 1000000 ? 1000000 : count;
    req_dispatch(sh, req, finish_scan);
}

static void cmd_flushall(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    if (argc > 2 || (argc == 2 && !arg_is(&argv[1], "SYNC") && !arg_is(&argv[1], "ASYNC"))) {
        reply_error(req, "ERR syntax error");
        return;
    }
    if (add_all_shards(sh, req, OP_FLUSH, NULL, 0))
        req_dispatch(sh, req, finish_ok);
}

static void finish_compact(struct shard *sh, struct req *req)
{
    int err = first_error(req);

    (void)sh;
    if (err != 0)
        reply_status_error(req, err);
    else if (req->aux)
        (void)kvs_resp_append_simple(out(req), "Background append only file rewriting started", 46);
    else
        (void)kvs_resp_append_simple(out(req), "Background compaction started", 29);
}

static void cmd_compact(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    (void)argc;
    req->aux = arg_is(&argv[0], "BGREWRITEAOF");
    if (add_all_shards(sh, req, OP_COMPACT, NULL, 0))
        req_dispatch(sh, req, finish_compact);
}

/* ---- INFO ---- */

static bool info_wants(const struct req *req, const char *section)
{
    const char *want = (const char *)req->ops[0]->val;
    size_t wlen = req->ops[0]->vlen;

    /* The sections asked for travel as a space-separated list in the first op's value. */
    if (wlen == 0)
        return true;
    for (size_t i = 0; i < wlen;) {
        size_t j = i;

        while (j < wlen && want[j] != ' ')
            j++;
        if ((j - i == strlen(section) && strncasecmp(want + i, section, j - i) == 0) ||
            (j - i == 3 && strncasecmp(want + i, "all", 3) == 0) ||
            (j - i == 7 && strncasecmp(want + i, "default", 7) == 0) ||
            (j - i == 10 && strncasecmp(want + i, "everything", 10) == 0))
            return true;
        i = j + 1;
    }
    return false;
}

static void info_line(struct kvs_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void info_line(struct kvs_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    if (kvs_buf_reserve(b, 512) < 0) {
        va_end(ap);
        return;
    }
    /* The analyzer loses track of va_start in a function declared with a format attribute. */
    // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized)
    n = vsnprintf(b->p + b->len, 510, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > 509)
        n = 509;
    b->len += (size_t)n;
    b->p[b->len++] = '\r';
    b->p[b->len++] = '\n';
}

static void finish_info(struct shard *sh, struct req *req)
{
    const struct server *srv = sh->srv;
    struct kvs_buf t;
    struct shard_stats sum;
    struct utsname un;
    long long uptime = (long long)(time(NULL) - srv->started);

    kvs_buf_init(&t);
    memset(&sum, 0, sizeof(sum));
    for (unsigned i = 0; i < req->nops; i++) {
        const struct shard_stats *s = req->ops[i]->stats;

        sum.clients += s->clients;
        sum.connections += s->connections;
        sum.commands += s->commands;
        sum.ops_forwarded += s->ops_forwarded;
        sum.net_in += s->net_in;
        sum.net_out += s->net_out;
        sum.rejected += s->rejected;
        sum.paused += s->paused;
        sum.mem_trims += s->mem_trims;
        sum.engine.keys += s->engine.keys;
        sum.engine.disk_bytes += s->engine.disk_bytes;
        sum.engine.dead_bytes += s->engine.dead_bytes;
        sum.engine.index_bytes += s->engine.index_bytes;
        sum.engine.segments += s->engine.segments;
        sum.engine.fsyncs += s->engine.fsyncs;
        sum.engine.presyncs += s->engine.presyncs;
        sum.engine.batches += s->engine.batches;
        sum.engine.compactions += s->engine.compactions;
        sum.engine.compact_throttles += s->engine.compact_throttles;
        sum.engine.compacting |= s->engine.compacting;
        sum.engine.failed |= s->engine.failed;
    }
    if (info_wants(req, "server")) {
        if (uname(&un) != 0)
            memset(&un, 0, sizeof(un));
        info_line(&t, "# Server");
        info_line(&t, "redis_version:7.0.0");
        info_line(&t, "kvs_version:%s", KVS_VERSION);
        info_line(&t, "redis_mode:standalone");
        info_line(&t, "os:%s %s %s", un.sysname, un.release, un.machine);
        info_line(&t, "arch_bits:%d", (int)(sizeof(void *) * 8));
        info_line(&t, "process_id:%ld", (long)getpid());
        info_line(&t, "tcp_port:%d", srv->port);
        info_line(&t, "uptime_in_seconds:%lld", uptime);
        info_line(&t, "uptime_in_days:%lld", uptime / 86400);
        info_line(&t, "engine:%s", srv->cfg.engine);
        info_line(&t, "shards:%u", srv->nshards);
        info_line(&t, "data_dir:%s", srv->cfg.dir);
        info_line(&t, "%s", "");
    }
    if (info_wants(req, "clients")) {
        info_line(&t, "# Clients");
        info_line(&t, "connected_clients:%llu", (unsigned long long)sum.clients);
        info_line(&t, "maxclients:%u", srv->cfg.max_clients);
        info_line(&t, "paused_for_backpressure_total:%llu", (unsigned long long)sum.paused);
        info_line(&t, "%s", "");
    }
    if (info_wants(req, "memory")) {
        unsigned long long pages = 0, rss = 0;
        FILE *fp = fopen("/proc/self/statm", "re");

        /* procfs answers from memory: a cheap read, even on a shard thread. */
        if (fp != NULL) {
            if (fscanf(fp, "%llu %llu", &pages, &rss) != 2)
                rss = 0;
            fclose(fp);
        }
        info_line(&t, "# Memory");
        info_line(&t, "used_memory_rss:%llu", rss * (unsigned long long)sysconf(_SC_PAGESIZE));
        info_line(&t, "index_bytes:%llu", (unsigned long long)sum.engine.index_bytes);
        info_line(&t, "mem_trims:%llu", (unsigned long long)sum.mem_trims);
        info_line(&t, "%s", "");
    }
    if (info_wants(req, "persistence")) {
        info_line(&t, "# Persistence");
        info_line(&t, "loading:0");
        info_line(&t, "fsync:%s", kvs_engine_fsync_name(srv->cfg.fsync));
        info_line(&t, "aof_enabled:%d", srv->cfg.fsync != KVS_FSYNC_NEVER);
        info_line(&t, "segments:%llu", (unsigned long long)sum.engine.segments);
        info_line(&t, "disk_bytes:%llu", (unsigned long long)sum.engine.disk_bytes);
        info_line(&t, "dead_bytes:%llu", (unsigned long long)sum.engine.dead_bytes);
        info_line(&t, "group_commits:%llu", (unsigned long long)sum.engine.batches);
        info_line(&t, "fsyncs:%llu", (unsigned long long)sum.engine.fsyncs);
        info_line(&t, "fsyncs_early:%llu", (unsigned long long)sum.engine.presyncs);
        info_line(&t, "compactions:%llu", (unsigned long long)sum.engine.compactions);
        info_line(&t, "compact_throttles:%llu", (unsigned long long)sum.engine.compact_throttles);
        info_line(&t, "compacting:%d", sum.engine.compacting ? 1 : 0);
        info_line(&t, "store_failed:%d", sum.engine.failed ? 1 : 0);
        info_line(&t, "%s", "");
    }
    if (info_wants(req, "stats")) {
        info_line(&t, "# Stats");
        info_line(&t, "total_connections_received:%llu", (unsigned long long)sum.connections);
        info_line(&t, "total_commands_processed:%llu", (unsigned long long)sum.commands);
        info_line(&t, "total_net_input_bytes:%llu", (unsigned long long)sum.net_in);
        info_line(&t, "total_net_output_bytes:%llu", (unsigned long long)sum.net_out);
        info_line(&t, "rejected_connections:%llu", (unsigned long long)sum.rejected);
        info_line(&t, "forwarded_ops:%llu", (unsigned long long)sum.ops_forwarded);
        info_line(&t, "%s", "");
    }
    if (info_wants(req, "shards")) {
        info_line(&t, "# Shards");
        for (unsigned i = 0; i < req->nops; i++) {
            const struct shard_stats *s = req->ops[i]->stats;

            info_line(&t,
                      "shard%u:keys=%llu,clients=%llu,commands=%llu,forwarded=%llu,"
                      "received=%llu,segments=%llu,disk_bytes=%llu,dead_bytes=%llu,"
                      "index_bytes_per_key=%.1f,fsyncs=%llu,compacting=%d,failed=%d",
                      req->ops[i]->owner, (unsigned long long)s->engine.keys,
                      (unsigned long long)s->clients, (unsigned long long)s->commands,
                      (unsigned long long)s->ops_forwarded, (unsigned long long)s->ops_received,
                      (unsigned long long)s->engine.segments,
                      (unsigned long long)s->engine.disk_bytes,
                      (unsigned long long)s->engine.dead_bytes, s->engine.index_bytes_per_key,
                      (unsigned long long)s->engine.fsyncs, s->engine.compacting ? 1 : 0,
                      s->engine.failed ? 1 : 0);
        }
        info_line(&t, "%s", "");
    }
    if (info_wants(req, "keyspace")) {
        info_line(&t, "# Keyspace");
        if (sum.engine.keys > 0)
            info_line(&t, "db0:keys=%llu,expires=0,avg_ttl=0", (unsigned long long)sum.engine.keys);
        info_line(&t, "%s", "");
    }
    if (t.len >= 2)
        t.len -= 2; /* no blank line after the last section */
    (void)kvs_resp_append_bulk(out(req), t.p != NULL ? t.p : "", t.len);
    kvs_buf_fini(&t);
}

static void cmd_info(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    struct kvs_buf want;

    kvs_buf_init(&want);
    for (size_t i = 1; i < argc; i++) {
        if (i > 1 && kvs_buf_append(&want, " ", 1) < 0)
            goto oom;
        if (kvs_buf_append(&want, argv[i].p, argv[i].len) < 0)
            goto oom;
    }
    for (unsigned i = 0; i < sh->srv->nshards; i++) {
        if (req_add_op(sh, req, OP_STATS, NULL, 0, i == 0 ? want.p : NULL, i == 0 ? want.len : 0,
                       (int)i) == NULL)
            goto oom;
    }
    kvs_buf_fini(&want);
    req_dispatch(sh, req, finish_info);
    return;
oom:
    kvs_buf_fini(&want);
    reply_error(req, "ERR out of memory");
}

/* ---- COMMAND ---- */

static const struct cmd cmd_table[] = {
    {"append", sizeof("append") - 1, cmd_append, "write", 3, 1, 1, 1},
    {"bgrewriteaof", sizeof("bgrewriteaof") - 1, cmd_compact, "admin noscript", 1, 0, 0, 0},
    {"client", sizeof("client") - 1, cmd_client, "admin noscript loading stale", -2, 0, 0, 0},
    {"command", sizeof("command") - 1, NULL, "loading stale", -1, 0, 0, 0},
    {"compact", sizeof("compact") - 1, cmd_compact, "admin noscript", 1, 0, 0, 0},
    {"config", sizeof("config") - 1, cmd_config, "admin noscript loading stale", -2, 0, 0, 0},
    {"dbsize", sizeof("dbsize") - 1, cmd_dbsize, "readonly fast", 1, 0, 0, 0},
    {"decr", sizeof("decr") - 1, cmd_decr, "write denyoom fast", 2, 1, 1, 1},
    {"decrby", sizeof("decrby") - 1, cmd_decrby, "write denyoom fast", 3, 1, 1, 1},
    {"del", sizeof("del") - 1, cmd_del, "write", -2, 1, -1, 1},
    {"echo", sizeof("echo") - 1, cmd_echo, "fast", 2, 0, 0, 0},
    {"exists", sizeof("exists") - 1, cmd_exists, "readonly fast", -2, 1, -1, 1},
    {"flushall", sizeof("flushall") - 1, cmd_flushall, "write", -1, 0, 0, 0},
    {"flushdb", sizeof("flushdb") - 1, cmd_flushall, "write", -1, 0, 0, 0},
    {"get", sizeof("get") - 1, cmd_get, "readonly fast", 2, 1, 1, 1},
    {"getset", sizeof("getset") - 1, cmd_getset, "write denyoom fast", 3, 1, 1, 1},
    {"hello", sizeof("hello") - 1, cmd_hello, "noscript loading stale fast", -1, 0, 0, 0},
    {"incr", sizeof("incr") - 1, cmd_incr, "write denyoom fast", 2, 1, 1, 1},
    {"incrby", sizeof("incrby") - 1, cmd_incrby, "write denyoom fast", 3, 1, 1, 1},
    {"info", sizeof("info") - 1, cmd_info, "loading stale", -1, 0, 0, 0},
    {"keys", sizeof("keys") - 1, cmd_keys, "readonly", 2, 0, 0, 0},
    {"mget", sizeof("mget") - 1, cmd_mget, "readonly fast", -2, 1, -1, 1},
    {"mset", sizeof("mset") - 1, cmd_mset, "write denyoom", -3, 1, -1, 2},
    {"ping", sizeof("ping") - 1, cmd_ping, "fast", -1, 0, 0, 0},
    {"pttl", sizeof("pttl") - 1, cmd_type, "readonly fast", 2, 1, 1, 1},
    {"quit", sizeof("quit") - 1, cmd_quit, "fast", -1, 0, 0, 0},
    {"scan", sizeof("scan") - 1, cmd_scan, "readonly", -2, 0, 0, 0},
    {"select", sizeof("select") - 1, cmd_select, "loading stale fast", 2, 0, 0, 0},
    {"set", sizeof("set") - 1, cmd_set, "write denyoom", -3, 1, 1, 1},
    {"setnx", sizeof("setnx") - 1, cmd_setnx, "write denyoom fast", 3, 1, 1, 1},
    {"strlen", sizeof("strlen") - 1, cmd_strlen, "readonly fast", 2, 1, 1, 1},
    {"time", sizeof("time") - 1, cmd_time, "loading stale fast", 1, 0, 0, 0},
    {"ttl", sizeof("ttl") - 1, cmd_type, "readonly fast", 2, 1, 1, 1},
    {"type", sizeof("type") - 1, cmd_type, "readonly fast", 2, 1, 1, 1},
    {"unlink", sizeof("unlink") - 1, cmd_del, "write fast", -2, 1, -1, 1},
};

#define NCMDS (sizeof(cmd_table) / sizeof(cmd_table[0]))

static const struct cmd *cmd_lookup(const char *name, size_t len)
{
    for (size_t i = 0; i < NCMDS; i++)
        if (cmd_table[i].len == len && strncasecmp(cmd_table[i].name, name, len) == 0)
            return &cmd_table[i];
    return NULL;
}

/* One COMMAND entry in the Redis 7 shape: name, arity, flags, first key, last key, step,
 * ACL categories, tips, key specs, subcommands (the last four left empty). */
static void command_entry(struct kvs_buf *b, const struct cmd *c)
{
    size_t nflags = 0;
    const char *f = c->flags;

    (void)kvs_resp_append_array(b, 10);
    append_cstr_bulk(b, c->name);
    (void)kvs_resp_append_int(b, c->arity);
    for (const char *p = f; *p != '\0'; p++)
        if (p == f || p[-1] == ' ')
            nflags++;
    (void)kvs_resp_append_array(b, nflags);
    while (*f != '\0') {
        const char *e = strchr(f, ' ');
        size_t n = e != NULL ? (size_t)(e - f) : strlen(f);

        (void)kvs_resp_append_simple(b, f, n);
        f += n;
        if (*f == ' ')
            f++;
    }
    (void)kvs_resp_append_int(b, c->first_key);
    (void)kvs_resp_append_int(b, c->last_key);
    (void)kvs_resp_append_int(b, c->step);
    for (int i = 0; i < 4; i++)
        (void)kvs_resp_append_array(b, 0);
}

static void cmd_command(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    struct kvs_buf *b = out(req);

    (void)sh;
    if (argc == 1) {
        (void)kvs_resp_append_array(b, NCMDS);
        for (size_t i = 0; i < NCMDS; i++)
            command_entry(b, &cmd_table[i]);
    } else if (arg_is(&argv[1], "COUNT") && argc == 2) {
        (void)kvs_resp_append_int(b, (long long)NCMDS);
    } else if (arg_is(&argv[1], "DOCS")) {
        /* redis-cli asks for docs to drive its hints; an empty map means "none". */
        (void)kvs_resp_append_array(b, 0);
    } else if (arg_is(&argv[1], "LIST") && argc == 2) {
        (void)kvs_resp_append_array(b, NCMDS);
        for (size_t i = 0; i < NCMDS; i++)
            append_cstr_bulk(b, cmd_table[i].name);
    } else if (arg_is(&argv[1], "INFO")) {
        (void)kvs_resp_append_array(b, argc - 2);
        for (size_t i = 2; i < argc; i++) {
            const struct cmd *c = cmd_lookup(argv[i].p, argv[i].len);

            if (c != NULL)
                command_entry(b, c);
            else
                (void)kvs_resp_append_null_array(b);
        }
    } else {
        (void)kvs_resp_append_errorf(b, "ERR unknown subcommand '%.*s'. Try COMMAND HELP.",
                                     (int)(argv[1].len > 128 ? 128 : argv[1].len), argv[1].p);
    }
}

static void reply_unknown(struct req *req, size_t argc, const struct kvs_resp_arg *argv)
{
    char args[512];
    size_t n = 0;

    /* Redis's wording: up to 128 characters of arguments, each quoted, then a space. */
    args[0] = '\0';
    for (size_t i = 1; i < argc && n < 128; i++) {
        int k = snprintf(args + n, sizeof(args) - n, "'%.*s' ",
                         (int)(argv[i].len < 128 - n ? argv[i].len : 128 - n), argv[i].p);

        if (k < 0)
            break;
        n += (size_t)k;
    }
    (void)kvs_resp_append_errorf(out(req),
                                 "ERR unknown command '%.*s', with args beginning with: %s",
                                 (int)(argv[0].len > 128 ? 128 : argv[0].len), argv[0].p, args);
}

void cmd_execute(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv)
{
    const struct cmd *c = cmd_lookup(argv[0].p, argv[0].len);

    if (c == NULL) {
        reply_unknown(req, argc, argv);
        return;
    }
    if ((c->arity > 0 && argc != (size_t)c->arity) || (c->arity < 0 && argc < (size_t)-c->arity)) {
        (void)kvs_resp_append_errorf(out(req), "ERR wrong number of arguments for '%s' command",
                                     c->name);
        return;
    }
    if (c->fn == NULL)
        cmd_command(sh, req, argc, argv);
    else
        c->fn(sh, req, argc, argv);
}
