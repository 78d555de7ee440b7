/* SPDX-License-Identifier: MIT */
/*
 * The shard: one pinned thread running one io_uring loop for its listener, its connections,
 * its engine's log files and its inboxes. It owns its connections, the requests parsed from
 * them, the ops those requests create, its engine and its key locks.
 *
 * A loop turn: wait for completions (kvs_ring_run), which runs the callbacks (accept, recv and
 * parse, send done, engine done, peer wake-up); then drain the inboxes, resume paused
 * connections and send what each connection has gathered (one send per connection), flush the
 * engine's write batch, and wake every peer this turn sent messages to (one MSG_RING each).
 *
 * Must not: block outside kvs_ring_run, touch another shard's memory except through msg.h,
 * free memory another thread allocated.
 */
#include "shard.h"

#include <assert.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvs/error.h"
#include "kvs/log.h"

/* Provided receive buffers per shard: enough for a burst from many connections at once;
 * a recv finding none left ends with -ENOBUFS and is simply re-armed. */
#define RECV_BUFS     512
#define RECV_BUFSZ    (16 * 1024)
#define RECV_BGID     1
#define INBOX_BATCH   256
#define KEEP_BUF_MAX  (64 * 1024)   /* larger per-connection buffers are freed once empty */
#define KEEP_ARGS_MAX 1024          /* ... and larger argument arrays too */
#define TRIM_BIG      (4 * 1024)    /* op buffers of this size and larger count for a trim */
#define TRIM_AFTER    (64ULL << 20) /* malloc_trim once this many such bytes were freed ... */
#define TRIM_GAP_NS   (1000ULL * 1000 * 1000) /* ... at most once a second per shard, */
#define TRIM_IDLE     (1ULL << 20) /* or once this many were freed and the shard idles a second */

/* The shard running on this thread, for the debug-build checks that shard-owned state is
 * touched only by its own thread (STYLE.md section 1). */
static _Thread_local struct shard *tl_shard;

#define ASSERT_OWNER(sh) assert((sh) == tl_shard)

struct keylock {
    struct keylock *next;
    uint64_t hash;
    struct op *holder;
    struct op *whead, *wtail;
};

static void op_exec(struct shard *sh, struct op *op);
static void conn_advance(struct conn *c);
static void conn_mark_dirty(struct conn *c);
static void conn_unref(struct conn *c);
static void conn_close(struct conn *c);
static void conn_process_input(struct conn *c);

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Fast-range: maps the hash uniformly onto [0, n) with a multiply instead of a division.
 * The 64x64->128 product is built from 32-bit halves so that -Wpedantic needs no __int128. */
unsigned shard_of(uint64_t hash, unsigned nshards)
{
    uint64_t n = nshards;
    uint64_t lo = (hash & 0xffffffffu) * n;
    uint64_t hi = (hash >> 32) * n;

    return (unsigned)((hi + (lo >> 32)) >> 32);
}

/* ---- messages ---- */

static void shard_send(struct shard *sh, unsigned peer, uint32_t type, void *ptr)
{
    struct msg m = {.type = type, .from = sh->id, .ptr = ptr};
    struct shard *p = sh->srv->shards[peer];

    ASSERT_OWNER(sh);
    /* An overflow queue that cannot grow would lose a lent pointer for good: there is no
     * way to recover a consistent state, so stop the process loudly. */
    if (msg_send(&sh->outbox[peer], &p->inbox[sh->id], &m) < 0)
        kvs_panic("shard %u: out of memory queueing a message to shard %u", sh->id, peer);
    sh->wake[peer] = true;
}

/* ---- key locks (owner side) ---- */

static struct keylock **lock_slot(struct shard *sh, const struct op *op)
{
    struct keylock **pp = &sh->locks[op->hash & sh->nlocks_mask];

    while (*pp != NULL) {
        const struct op *h = (*pp)->holder;

        if (h->hash == op->hash && h->klen == op->klen && memcmp(h->key, op->key, op->klen) == 0)
            break;
        pp = &(*pp)->next;
    }
    return pp;
}

/* Take the key's lock for op (the caller checked that it is free). */
static bool lock_take(struct shard *sh, struct op *op)
{
    struct keylock **pp = lock_slot(sh, op);
    struct keylock *kl = calloc(1, sizeof(*kl));

    if (kl == NULL)
        return false;
    kl->holder = op;
    kl->hash = op->hash;
    *pp = kl;
    return true;
}

/* Release lock kl and run the ops that queued behind it, in arrival order. A waiter that
 * locks the key again makes the later waiters queue behind it, so order is kept. The lock is
 * found by identity, not through its holder, which may already be gone: an engine call may
 * complete the holder op inside the call that made its new value visible. */
static void lock_release_kl(struct shard *sh, struct keylock *kl)
{
    struct keylock **pp;
    struct op *w;

    if (kl == NULL)
        return;
    pp = &sh->locks[kl->hash & sh->nlocks_mask];
    while (*pp != kl)
        pp = &(*pp)->next;
    *pp = kl->next;
    w = kl->whead;
    free(kl);
    while (w != NULL) {
        struct op *next = w->wait_next;

        w->wait_next = NULL;
        op_exec(sh, w);
        w = next;
    }
}

static void lock_release(struct shard *sh, struct op *op)
{
    lock_release_kl(sh, *lock_slot(sh, op));
}

/* ---- op execution (owner side) ---- */

static void req_op_done(struct shard *sh, struct op *op);

/* The op's result is final: give it back to its origin. */
static void op_complete(struct shard *sh, struct op *op)
{
    if (op->origin == sh->id)
        req_op_done(sh, op);
    else
        shard_send(sh, op->origin, MSG_DONE, op);
}

static void op_fail(struct shard *sh, struct op *op, int status)
{
    op->status = status;
    op_complete(sh, op);
}

static void op_write_done(void *ctx, int res, const void *val, size_t vlen)
{
    struct op *op = ctx;

    (void)val;
    (void)vlen;
    if (res < 0 && op->kind == OP_DEL && res == KVS_ENOTFOUND) {
        op->ival = 0;
        res = 0;
    }
    op_fail(op->xsh, op, res < 0 ? res : 0);
}

static int copy_result(struct op *op, const void *val, size_t vlen)
{
    op->rval = malloc(vlen > 0 ? vlen : 1);
    if (op->rval == NULL)
        return -ENOMEM;
    memcpy(op->rval, val, vlen);
    op->rlen = vlen;
    return 0;
}

static void op_get_done(void *ctx, int res, const void *val, size_t vlen)
{
    struct op *op = ctx;
    struct shard *sh = op->xsh;

    /* The engine's view is valid only during this call. When the op is local and the last
     * one its request waits for, the reply is encoded before we return (req_op_done runs
     * the finish function at once), so the view can be lent instead of copied; that saves a
     * copy of every value a connection reads from its own shard. */
    if (res == 0 && op->origin == sh->id && op->req->pending == 1) {
        op->rval = (char *)(uintptr_t)val;
        op->rlen = vlen;
        op->rval_borrowed = true;
    } else if (res == 0) {
        res = copy_result(op, val, vlen);
    }
    op_fail(sh, op, res);
}

/* Formats v in decimal into buf (at least 21 bytes); returns the length. */
static size_t fmt_i64(char *buf, int64_t v)
{
    char tmp[24];
    size_t n = 0, len = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        buf[len++] = '-';
    while (n > 0)
        buf[len++] = tmp[--n];
    return len;
}

/* Second half of a read-modify-write: the current value is known; compute and store the new
 * one. The key stays locked from before the read until the new value is visible, which is as
 * soon as set_async returns, so no other op on the key can slip in between. */
static void op_rmw_got(void *ctx, int res, const void *val, size_t vlen)
{
    struct op *op = ctx;
    struct shard *sh = op->xsh;
    struct keylock *kl;
    bool exists = res == 0;
    char num[24];
    char *tmp = NULL;
    const char *nv = op->val;
    size_t nlen = op->vlen;
    int rc;

    if (res < 0 && res != KVS_ENOTFOUND) {
        rc = res;
        goto fail;
    }
    if (op->kind == OP_INCRBY) {
        int64_t cur = 0;

        if (exists && !cmd_parse_i64(val, vlen, &cur)) {
            rc = OP_ENOTINT;
            goto fail;
        }
        if ((op->arg > 0 && cur > INT64_MAX - op->arg) ||
            (op->arg < 0 && cur < INT64_MIN - op->arg)) {
            rc = OP_EOVERFLOW;
            goto fail;
        }
        op->ival = cur + op->arg;
        nlen = fmt_i64(num, op->ival);
        nv = num;
    } else if (op->kind == OP_APPEND) {
        size_t old = exists ? vlen : 0;

        tmp = malloc(old + op->vlen + 1);
        if (tmp == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        if (old > 0)
            memcpy(tmp, val, old);
        memcpy(tmp + old, op->val, op->vlen);
        nv = tmp;
        nlen = old + op->vlen;
        op->ival = (int64_t)nlen;
    } else { /* SET ... GET: reply with the old value whether or not the set happens */
        op->ival = exists;
        if (exists && (rc = copy_result(op, val, vlen)) < 0)
            goto fail;
        if (((op->flags & OPF_NX) && exists) || ((op->flags & OPF_XX) && !exists)) {
            lock_release(sh, op);
            op_fail(sh, op, 0);
            return;
        }
    }
    /* The engine copies the value before returning, and val is not used after this call.
     * op may be finished and freed inside the call, so the lock is held by pointer. */
    kl = *lock_slot(sh, op);
    rc = kvs_engine_set_async(sh->engine, op->key, op->klen, nv, nlen, op_write_done, op);
    free(tmp);
    tmp = NULL;
    if (rc < 0)
        goto fail;
    lock_release_kl(sh, kl);
    return;
fail:
    free(tmp);
    lock_release(sh, op);
    op_fail(sh, op, rc);
}

static void op_rmw_start(struct shard *sh, struct op *op)
{
    int rc;

    if (!lock_take(sh, op)) {
        op_fail(sh, op, -ENOMEM);
        return;
    }
    rc = kvs_engine_get_async(sh->engine, op->key, op->klen, op_rmw_got, op);
    if (rc < 0) {
        lock_release(sh, op);
        op_fail(sh, op, rc);
    }
}

struct keys_ctx {
    struct op *op;
    struct kvs_buf out;
    int err;
};

static void keys_visit(void *ctx, const void *key, size_t klen)
{
    struct keys_ctx *kc = ctx;
    const struct op *op = kc->op;

    if (kc->err != 0)
        return;
    if ((op->flags & OPF_MATCH) && !cmd_glob_match(op->key, op->klen, key, klen, false))
        return;
    if (kvs_resp_append_bulk(&kc->out, key, klen) < 0) {
        kc->err = -ENOMEM;
        return;
    }
    kc->op->rcount++;
}

static void compact_started(void *ctx, int res, const void *val, size_t vlen)
{
    (void)ctx;
    (void)val;
    (void)vlen;
    if (res < 0)
        KVS_WARN("compaction failed: %s", kvs_strerror(res));
}

/* Shard-wide ops: answered from this shard's index or engine as a whole. */
static void op_exec_shard(struct shard *sh, struct op *op)
{
    struct keys_ctx kc = {.op = op, .err = 0};
    int rc;

    switch (op->kind) {
    case OP_DBSIZE:
        op->ival = (int64_t)kvs_engine_count(sh->engine);
        break;
    case OP_KEYS:
    case OP_SCAN: {
        uint64_t cur = op->kind == OP_SCAN ? op->cursor : 0;
        size_t count = op->kind == OP_SCAN ? (size_t)op->arg : 4096;

        kvs_buf_init(&kc.out);
        do {
            cur = kvs_engine_scan(sh->engine, cur, count, keys_visit, &kc);
        } while (op->kind == OP_KEYS && cur != 0 && kc.err == 0);
        op->cursor = cur;
        if (kc.err != 0) {
            kvs_buf_fini(&kc.out);
            op->status = kc.err;
            break;
        }
        /* The buffer's memory becomes the result; it is freed by this shard (MSG_FREE). */
        op->rval = kc.out.p;
        op->rlen = kc.out.len;
        break;
    }
    case OP_FLUSH:
        rc = kvs_engine_clear_async(sh->engine, op_write_done, op);
        if (rc < 0)
            op->status = rc;
        else
            return;
        break;
    case OP_STATS:
        *op->stats = sh->st;
        kvs_engine_stats(sh->engine, &op->stats->engine);
        break;
    case OP_COMPACT:
        rc = kvs_engine_compact_async(sh->engine, compact_started, NULL);
        op->status = rc == -EBUSY ? 0 : rc;
        break;
    default:
        op->status = -EINVAL;
        break;
    }
    op_complete(sh, op);
}

/* Run op on this (its owner) shard. The result arrives now or from a callback. */
static void op_exec(struct shard *sh, struct op *op)
{
    struct keylock *kl;
    int64_t len;
    int rc = 0;

    ASSERT_OWNER(sh);
    op->xsh = sh;
    if (op->kind >= OP_DBSIZE) {
        op_exec_shard(sh, op);
        return;
    }
    /* Every op on a key that a read-modify-write holds waits for it, reads included: a
     * pipelined INCR k then GET k must see the increment. */
    kl = *lock_slot(sh, op);
    if (kl != NULL) {
        if (kl->wtail != NULL)
            kl->wtail->wait_next = op;
        else
            kl->whead = op;
        kl->wtail = op;
        return;
    }
    switch (op->kind) {
    case OP_GET:
        rc = kvs_engine_get_async(sh->engine, op->key, op->klen, op_get_done, op);
        break;
    case OP_SET:
        if (op->flags & OPF_GET) {
            op_rmw_start(sh, op);
            return;
        }
        /* NX/XX need no lock: the check and the set happen in this call, on this thread,
         * and the new value is visible to the next op as soon as set_async returns. */
        if (op->flags & (OPF_NX | OPF_XX)) {
            bool exists = kvs_engine_value_len(sh->engine, op->key, op->klen) >= 0;

            if (((op->flags & OPF_NX) && exists) || ((op->flags & OPF_XX) && !exists)) {
                op_fail(sh, op, OP_ENOTDONE);
                return;
            }
        }
        rc = kvs_engine_set_async(sh->engine, op->key, op->klen, op->val, op->vlen, op_write_done,
                                  op);
        break;
    case OP_DEL:
        if (kvs_engine_value_len(sh->engine, op->key, op->klen) < 0) {
            op->ival = 0;
            op_complete(sh, op);
            return;
        }
        op->ival = 1;
        rc = kvs_engine_remove_async(sh->engine, op->key, op->klen, op_write_done, op);
        break;
    case OP_EXISTS:
    case OP_STRLEN:
        len = kvs_engine_value_len(sh->engine, op->key, op->klen);
        op->ival = op->kind == OP_EXISTS ? len >= 0 : (len >= 0 ? len : 0);
        op_complete(sh, op);
        return;
    case OP_INCRBY:
    case OP_APPEND:
        op_rmw_start(sh, op);
        return;
    default:
        rc = -EINVAL;
        break;
    }
    if (rc < 0)
        op_fail(sh, op, rc);
}

/* ---- requests (origin side) ---- */

static struct req *req_new(struct conn *c)
{
    struct req *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->conn = c;
    r->ops = r->inline_ops;
    r->cap_ops = 4;
    c->refs++;
    c->sh->reqs_live++;
    if (c->qtail != NULL)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->nreqs++;
    return r;
}

static void req_free(struct shard *sh, struct req *r)
{
    for (unsigned i = 0; i < r->nops; i++) {
        struct op *op = r->ops[i];

        if (op->klen + op->vlen >= TRIM_BIG)
            sh->big_freed += op->klen + op->vlen;
        if (op->rval != NULL && !op->rval_borrowed && op->rlen >= TRIM_BIG)
            sh->big_freed += op->rlen;

        if (op->rval != NULL && !op->rval_borrowed) {
            if (op->owner == sh->id)
                free(op->rval);
            else
                shard_send(sh, op->owner, MSG_FREE, op->rval);
        }
        free(op);
    }
    if (r->ops != r->inline_ops)
        free(r->ops);
    kvs_buf_fini(&r->reply);
    sh->reqs_live--;
    free(r);
}

struct kvs_buf *req_reply_buf(struct req *req)
{
    return req->conn->qhead == req ? &req->conn->out : &req->reply;
}

/* The reply of req is complete (written by cmd_execute or by its finish function). */
static void req_complete(struct shard *sh, struct req *req)
{
    struct conn *c = req->conn;

    (void)sh;
    req->done = true;
    if (c->qhead != req)
        c->held += req->reply.len;
    conn_advance(c);
}

static void req_op_done(struct shard *sh, struct op *op)
{
    struct req *req = op->req;

    if (--req->pending > 0)
        return;
    if (req->finish != NULL)
        req->finish(sh, req);
    req_complete(sh, req);
}

struct op *req_add_op(struct shard *sh, struct req *req, enum op_kind kind, const void *key,
                      size_t klen, const void *val, size_t vlen, int owner)
{
    struct op *op;

    if (req->nops == req->cap_ops) {
        unsigned ncap = req->cap_ops * 2;
        struct op **nops = malloc(ncap * sizeof(struct op *));

        if (nops == NULL)
            return NULL;
        memcpy(nops, req->ops, req->nops * sizeof(struct op *));
        if (req->ops != req->inline_ops)
            free(req->ops);
        req->ops = nops;
        req->cap_ops = ncap;
    }
    op = malloc(sizeof(*op) + klen + vlen + (kind == OP_STATS ? sizeof(struct shard_stats) : 0) +
                16);
    if (op == NULL)
        return NULL;
    memset(op, 0, sizeof(*op));
    op->kind = (uint8_t)kind;
    op->origin = (uint16_t)sh->id;
    op->req = req;
    op->key = op->data;
    op->klen = klen;
    if (klen > 0)
        memcpy(op->key, key, klen);
    op->val = op->data + klen;
    op->vlen = vlen;
    if (vlen > 0)
        memcpy(op->val, val, vlen);
    if (kind == OP_STATS) {
        /* Align the lent stats block inside data[]. */
        uintptr_t at = ((uintptr_t)(op->data + klen + vlen) + 15) & ~(uintptr_t)15;

        op->stats = (struct shard_stats *)at;
    }
    if (owner >= 0) {
        op->owner = (uint16_t)owner;
    } else {
        op->hash = XXH3_64bits(key, klen);
        op->owner = (uint16_t)shard_of(op->hash, sh->srv->nshards);
    }
    if (kind < OP_DBSIZE && owner >= 0)
        op->hash = XXH3_64bits(key, klen);
    req->ops[req->nops++] = op;
    return op;
}

void req_dispatch(struct shard *sh, struct req *req, req_finish_fn finish)
{
    unsigned n = req->nops;

    ASSERT_OWNER(sh);
    req->finish = finish;
    req->dispatched = true;
    req->conn->dispatched = true;
    /* The extra count keeps the request from finishing while ops are still being started:
     * a local op may complete inside op_exec. */
    req->pending = n + 1;
    for (unsigned i = 0; i < n; i++) {
        struct op *op = req->ops[i];

        if (op->owner == sh->id) {
            op_exec(sh, op);
        } else {
            sh->remote_out++;
            sh->st.ops_forwarded++;
            shard_send(sh, op->owner, MSG_OP, op);
        }
    }
    if (--req->pending == 0) {
        if (req->finish != NULL)
            req->finish(sh, req);
        req_complete(sh, req);
    }
}

/* ---- connections ---- */

static size_t conn_pending_out(const struct conn *c)
{
    return c->out.len + (c->sending.len - c->sent) + c->held;
}

static bool conn_over_limits(const struct conn *c)
{
    const struct kvs_server_config *cfg = &c->sh->srv->cfg;

    return conn_pending_out(c) >= cfg->max_output || c->nreqs >= cfg->max_pipeline;
}

static void conn_on_recv(void *ctx, int res, uint32_t flags);

static void conn_arm_recv(struct conn *c)
{
    int op;

    if (c->recv_op >= 0 || c->closed || c->eof || c->close_after || c->paused)
        return;
    op = kvs_ring_recv_multishot(c->sh->ring, c->fd, RECV_BGID, conn_on_recv, c);
    if (op < 0) {
        KVS_WARN("client %llu: cannot arm recv: %s", (unsigned long long)c->id, kvs_strerror(op));
        conn_close(c);
        return;
    }
    c->recv_op = op;
    c->refs++;
}

/* Stop reading from c (backpressure or shutdown). Bytes already in flight still arrive and
 * are kept in c->in. */
static void conn_stop_recv(struct conn *c)
{
    if (c->recv_op >= 0)
        (void)kvs_ring_cancel(c->sh->ring, c->recv_op, NULL, NULL);
}

/* Queue an error reply in order, then close once it is out (protocol errors). */
static void conn_protocol_error(struct conn *c, const char *msg)
{
    struct req *req = req_new(c);

    if (req != NULL) {
        (void)kvs_resp_append_errorf(req_reply_buf(req), "ERR %s", msg);
        req_complete(c->sh, req);
    }
    conn_close_after_reply(c);
}

/* Parse and run the requests at the start of buf; returns the bytes used. Stops early when
 * the connection must pause (output or pipeline bound), after QUIT, or on a protocol error
 * (then everything is reported as used: the rest of the input is dropped). */
static size_t conn_parse(struct conn *c, char *buf, size_t len)
{
    struct shard *sh = c->sh;
    size_t off = 0;

    ASSERT_OWNER(sh);
    c->need = 0;
    while (off < len && !c->closed && !c->close_after) {
        int rc;

        if (conn_over_limits(c)) {
            if (!c->paused) {
                c->paused = true;
                sh->st.paused++;
                conn_stop_recv(c);
            }
            break;
        }
        rc = kvs_resp_parse_request(&c->parser, buf + off, len - off, &sh->srv->limits);
        if (rc == -ENOBUFS) {
            size_t ncap = c->parser.argc;
            struct kvs_resp_arg *nargv = realloc(c->argv, ncap * sizeof(*nargv));

            if (nargv == NULL) {
                conn_protocol_error(c, "out of memory for request arguments");
                return len;
            }
            c->argv = nargv;
            c->argv_cap = ncap;
            kvs_resp_request_init(&c->parser, c->argv, c->argv_cap);
            continue;
        }
        if (rc < 0) {
            conn_protocol_error(c, c->parser.err != NULL ? c->parser.err : "Protocol error");
            return len;
        }
        if (rc == 0) {
            c->need = c->parser.need; /* counted from buf + off: the unparsed rest */
            break;
        }
        off += (size_t)rc;
        if (c->parser.argc == 0)
            continue;
        struct req *req = req_new(c);

        if (req == NULL) {
            conn_protocol_error(c, "out of memory");
            return len;
        }
        sh->st.commands++;
        /* A dispatched request may be finished and freed before cmd_execute returns, so
         * whether it was dispatched is learnt from the connection, not from req. */
        c->dispatched = false;
        cmd_execute(sh, req, c->parser.argc, c->argv);
        if (!c->dispatched)
            req_complete(sh, req);
    }
    if (c->close_after)
        return len;
    return off;
}

/* Parse what c->in holds, then drop the bytes used. */
static void conn_process_input(struct conn *c)
{
    size_t used;

    if (c->in_proc || c->closed)
        return;
    c->in_proc = true;
    used = conn_parse(c, c->in.p, c->in.len);
    if (used > 0) {
        kvs_buf_consume(&c->in, used);
        /* The unparsed rest moved to the front: the parser must not resume from its old
         * position. */
        kvs_resp_request_reset(&c->parser);
    }
    /* Size the buffer once for a large request whose header has been read, so that the
     * rest arrives without reallocations (and the parser can resume where it stopped). */
    if (c->in.len == 0 && c->argv_cap > KEEP_ARGS_MAX) {
        /* One huge request (up to --max-args) must not pin its argument array for good. */
        free(c->argv);
        c->argv = NULL;
        c->argv_cap = 0;
        kvs_resp_request_init(&c->parser, NULL, 0);
    }
    if (c->in.len == 0 && c->in.cap > KEEP_BUF_MAX)
        kvs_buf_fini(&c->in);
    else if (c->in.len > 0 && c->need > c->in.len)
        (void)kvs_buf_reserve(&c->in, c->need - c->in.len);
    c->in_proc = false;
}

/* New bytes from the socket. In the common case (nothing buffered) they are parsed in place
 * in the provided buffer and only an incomplete tail is copied. */
static void conn_feed(struct conn *c, char *data, size_t n)
{
    size_t used = 0;

    if (c->in.len == 0 && !c->paused && !c->in_proc) {
        c->in_proc = true;
        used = conn_parse(c, data, n);
        c->in_proc = false;
        if (used == n || c->closed)
            return;
        kvs_resp_request_reset(&c->parser);
    }
    if (kvs_buf_append(&c->in, data + used, n - used) < 0) {
        conn_protocol_error(c, "out of memory for the query buffer");
        return;
    }
    /* A large value arriving in pieces: no point parsing until all of it is here. */
    if (!c->paused && c->in.len >= c->need)
        conn_process_input(c);
    else if (c->need > c->in.len)
        (void)kvs_buf_reserve(&c->in, c->need - c->in.len);
}

static void conn_maybe_close(struct conn *c)
{
    if (c->closed || !c->close_after)
        return;
    if (c->qhead == NULL && c->out.len == 0 && !c->send_inflight)
        conn_close(c);
}

static void conn_on_recv(void *ctx, int res, uint32_t flags)
{
    struct conn *c = ctx;
    struct shard *sh = c->sh;

    if (res > 0 && (flags & KVS_RING_CQE_BUFFER)) {
        uint16_t bid = (uint16_t)(flags >> KVS_RING_CQE_BUFFER_SHIFT);

        sh->st.net_in += (uint64_t)res;
        if (!c->closed && !c->eof && !c->close_after)
            conn_feed(c, kvs_bufring_buf(sh->bufring, bid), (size_t)res);
        kvs_bufring_recycle(sh->bufring, bid);
    }
    if (flags & KVS_RING_CQE_MORE)
        return;
    /* The multishot recv ended: the peer closed, an error, no buffers, or our cancel. */
    c->recv_op = -1;
    if (res == 0) {
        c->eof = true;
        c->close_after = true;
        conn_maybe_close(c);
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
        conn_close(c);
    } else {
        conn_arm_recv(c);
    }
    conn_mark_dirty(c);
    conn_unref(c);
}

static void conn_on_send(void *ctx, int res, uint32_t flags);

static void conn_send(struct conn *c)
{
    struct kvs_buf tmp;
    int op;

    if (c->closed || c->send_inflight || c->out.len == 0)
        return;
    /* Double buffering: the kernel reads `sending` while new replies go to `out`, which may
     * be reallocated freely. */
    tmp = c->sending;
    c->sending = c->out;
    c->out = tmp;
    c->out.len = 0;
    c->sent = 0;
    op = kvs_ring_send(c->sh->ring, c->fd, c->sending.p, c->sending.len, conn_on_send, c);
    if (op < 0) {
        conn_close(c);
        return;
    }
    c->send_op = op;
    c->send_inflight = true;
    c->refs++;
}

static void conn_on_send(void *ctx, int res, uint32_t flags)
{
    struct conn *c = ctx;

    (void)flags;
    c->send_inflight = false;
    if (res < 0) {
        if (!c->closed && res != -ECANCELED)
            KVS_DEBUG("client %llu: send: %s", (unsigned long long)c->id, kvs_strerror(res));
        conn_close(c);
    } else {
        c->sh->st.net_out += (uint64_t)res;
        c->sent += (size_t)res;
        if (c->sent < c->sending.len && !c->closed) {
            int op = kvs_ring_send(c->sh->ring, c->fd, c->sending.p + c->sent,
                                   c->sending.len - c->sent, conn_on_send, c);

            if (op >= 0) {
                c->send_op = op;
                c->send_inflight = true;
                return; /* keeps this send's reference */
            }
            conn_close(c);
        }
        c->sending.len = 0;
        c->sent = 0;
        if (c->sending.cap > KEEP_BUF_MAX)
            kvs_buf_fini(&c->sending);
    }
    conn_mark_dirty(c);
    conn_unref(c);
}

static void conn_mark_dirty(struct conn *c)
{
    if (c->dirty || c->closed)
        return;
    c->dirty = true;
    c->refs++;
    c->dirty_next = c->sh->dirty;
    c->sh->dirty = c;
}

/* Move finished replies at the head of the queue to the output, in order. */
static void conn_advance(struct conn *c)
{
    struct shard *sh = c->sh;
    unsigned popped = 0;

    while (c->qhead != NULL && c->qhead->done) {
        struct req *r = c->qhead;

        if (r->reply.len > 0) {
            c->held -= r->reply.len;
            if (!c->closed && kvs_buf_append(&c->out, r->reply.p, r->reply.len) < 0)
                conn_close(c);
        }
        c->qhead = r->next;
        if (c->qhead == NULL)
            c->qtail = NULL;
        c->nreqs--;
        req_free(sh, r);
        popped++;
    }
    conn_mark_dirty(c);
    /* Each popped request held a reference. All but the last are dropped without a check,
     * since the last one still keeps c alive; the last may free c, so nothing follows it. */
    if (popped > 0) {
        c->refs -= popped - 1;
        conn_unref(c);
    }
}

void conn_close_after_reply(struct conn *c)
{
    c->close_after = true;
    conn_stop_recv(c);
}

static void conn_new(struct shard *sh, int fd)
{
    struct conn *c = calloc(1, sizeof(*c));
    int one = 1;

    if (c == NULL) {
        close(fd);
        atomic_fetch_sub(&sh->srv->clients, 1);
        return;
    }
    /* Replies are gathered per loop turn already; Nagle would only add latency. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->sh = sh;
    c->fd = fd;
    c->recv_op = -1;
    c->send_op = -1;
    c->refs = 1; /* open */
    c->id = sh->next_client++ * sh->srv->nshards + sh->id + 1;
    c->created = time(NULL);
    kvs_resp_request_init(&c->parser, NULL, 0);
    c->next = sh->conns;
    if (sh->conns != NULL)
        sh->conns->prev = c;
    sh->conns = c;
    sh->conns_live++;
    sh->st.clients++;
    sh->st.connections++;
    conn_arm_recv(c);
}

/* Close the socket now; the struct lives until every op and request referring to it ends. */
static void conn_close(struct conn *c)
{
    struct shard *sh = c->sh;

    if (c->closed)
        return;
    c->closed = true;
    conn_stop_recv(c);
    if (c->send_inflight)
        (void)kvs_ring_cancel(sh->ring, c->send_op, NULL, NULL);
    /* Ops the kernel has already taken hold their own reference to the socket, but queued
     * ones name only the fd number, resolved at submission: a re-armed recv or the rest of a
     * short send still in the SQ would act on whatever file gets the number next (another
     * client's socket). Hand them to the kernel first; then the number can go. */
    (void)kvs_ring_submit(sh->ring);
    close(c->fd);
    c->fd = -1;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        sh->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    sh->st.clients--;
    atomic_fetch_sub(&sh->srv->clients, 1);
    /* The open reference is dropped at the end of the loop turn, by the dirty-list pass,
     * never here: callers keep using c after closing it. */
    if (!c->dirty) {
        c->dirty = true;
        c->dirty_next = sh->dirty;
        sh->dirty = c;
    } else {
        c->refs--; /* the dirty list's own reference keeps c alive */
    }
}

static void conn_unref(struct conn *c)
{
    if (--c->refs > 0)
        return;
    kvs_buf_fini(&c->in);
    kvs_buf_fini(&c->out);
    kvs_buf_fini(&c->sending);
    free(c->argv);
    free(c->name);
    c->sh->conns_live--;
    free(c);
}

/* Called at the end of every loop turn for the connections touched in it: resume input after
 * backpressure, send what was gathered, close when finished. */
static void shard_service_dirty(struct shard *sh)
{
    while (sh->dirty != NULL) {
        struct conn *list = sh->dirty;

        sh->dirty = NULL;
        while (list != NULL) {
            struct conn *c = list;

            list = c->dirty_next;
            c->dirty = false;
            if (!c->closed && c->paused && !conn_over_limits(c)) {
                c->paused = false;
                conn_process_input(c);
                conn_arm_recv(c);
            }
            conn_send(c);
            conn_maybe_close(c);
            conn_unref(c);
        }
    }
}

/* ---- accept ---- */

static void shard_on_accept(void *ctx, int res, uint32_t flags);

static void shard_arm_accept(struct shard *sh)
{
    int op = kvs_ring_accept_multishot(sh->ring, sh->listen_fd, shard_on_accept, sh);

    if (op < 0) {
        KVS_ERROR("shard %u: cannot arm accept: %s", sh->id, kvs_strerror(op));
        sh->fail = op;
        return;
    }
    sh->accept_op = op;
}

static void reject_client(int fd)
{
    static const char msg[] = "-ERR max number of clients reached\r\n";

    /* A fresh socket's send buffer is empty, so this small write does not block. */
    (void)!send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    close(fd);
}

static void shard_on_accept(void *ctx, int res, uint32_t flags)
{
    struct shard *sh = ctx;

    if (res >= 0) {
        sh->accept_failing = false;
        if (sh->stopping) {
            close(res);
        } else if (atomic_fetch_add(&sh->srv->clients, 1) >= sh->srv->cfg.max_clients) {
            atomic_fetch_sub(&sh->srv->clients, 1);
            sh->st.rejected++;
            reject_client(res);
        } else {
            conn_new(sh, res);
        }
    }
    if (flags & KVS_RING_CQE_MORE)
        return;
    sh->accept_op = -1;
    if (sh->stopping || res == -ECANCELED)
        return;
    /* Out of descriptors: pending connections stay in the backlog and accept is re-armed
     * 100 ms later by the loop, not at once (it would fail at once again, in a spin). The
     * condition is logged when it starts, not on every retry. */
    if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
        if (!sh->accept_failing)
            KVS_WARN("shard %u: accept: %s; new connections wait until descriptors free up", sh->id,
                     kvs_strerror(res));
        sh->accept_failing = true;
        sh->accept_retry = true;
        sh->accept_retry_ns = now_ns() + 100 * 1000 * 1000;
        return;
    }
    if (res < 0)
        KVS_WARN("shard %u: accept: %s", sh->id, kvs_strerror(res));
    shard_arm_accept(sh);
}

/* ---- inboxes and wake-ups ---- */

static void shard_handle_msg(struct shard *sh, const struct msg *m)
{
    switch (m->type) {
    case MSG_OP:
        sh->st.ops_received++;
        op_exec(sh, m->ptr);
        break;
    case MSG_DONE:
        sh->remote_out--;
        req_op_done(sh, m->ptr);
        break;
    case MSG_FREE:
        free(m->ptr);
        break;
    case MSG_DRAINED:
        sh->peers_drained++;
        break;
    default:
        kvs_panic("shard %u: unknown message type %u from shard %u", sh->id, m->type, m->from);
    }
}

static void shard_drain_inboxes(struct shard *sh)
{
    struct msg batch[INBOX_BATCH];
    bool again = true;

    while (again) {
        again = false;
        for (unsigned j = 0; j < sh->srv->nshards; j++) {
            size_t n;

            if (j == sh->id)
                continue;
            n = msg_ring_pop_mt(&sh->inbox[j], batch, INBOX_BATCH);
            for (size_t i = 0; i < n; i++)
                shard_handle_msg(sh, &batch[i]);
            if (n == INBOX_BATCH)
                again = true;
        }
    }
}

static bool shard_outbox_pending(struct shard *sh)
{
    bool any = false;

    for (unsigned j = 0; j < sh->srv->nshards; j++) {
        struct shard *p = sh->srv->shards[j];

        if (j == sh->id || msg_outbox_pending(&sh->outbox[j]) == 0)
            continue;
        if (msg_outbox_flush(&sh->outbox[j], &p->inbox[sh->id]) > 0)
            any = true;
        sh->wake[j] = true;
    }
    return any;
}

/* One MSG_RING per peer per turn, however many messages went to it: the peer drains its whole
 * inbox when it wakes. With DEFER_TASKRUN the peer sees it when it next waits in the kernel. */
static void shard_wake_peers(struct shard *sh)
{
    for (unsigned j = 0; j < sh->srv->nshards; j++) {
        struct shard *p = sh->srv->shards[j];
        int rc;

        if (!sh->wake[j])
            continue;
        sh->wake[j] = false;
        rc = kvs_ring_msg(sh->ring, p->ring_fd, p->watch_tag, WAKE_MSG, NULL, NULL);
        if (rc < 0)
            kvs_panic("shard %u: cannot wake shard %u: %s", sh->id, j, kvs_strerror(rc));
    }
}

/* ---- shutdown ---- */

static void shard_begin_stop(struct shard *sh)
{
    if (sh->stopping)
        return;
    sh->stopping = true;
    sh->stop_deadline_ns = now_ns() + (uint64_t)sh->srv->cfg.shutdown_timeout_ms * 1000000u;
    if (sh->accept_op >= 0)
        (void)kvs_ring_cancel(sh->ring, sh->accept_op, NULL, NULL);
    /* Stop reading from every client; requests already parsed are answered. */
    for (struct conn *c = sh->conns; c != NULL; c = c->next) {
        c->eof = true;
        conn_close_after_reply(c);
        conn_mark_dirty(c);
    }
}

static void shard_stop_progress(struct shard *sh)
{
    if (!sh->drained_sent && sh->conns != NULL && now_ns() > sh->stop_deadline_ns) {
        KVS_WARN("shard %u: closing %llu client(s) that did not read their replies in time", sh->id,
                 (unsigned long long)sh->st.clients);
        while (sh->conns != NULL)
            conn_close(sh->conns);
    }
    if (!sh->drained_sent && sh->conns_live == 0 && sh->reqs_live == 0) {
        /* Nothing of ours is lent out any more (every request is freed, so every op came
         * back and every result buffer was returned). Tell the peers; this is the last
         * message we send them. */
        for (unsigned j = 0; j < sh->srv->nshards; j++)
            if (j != sh->id)
                shard_send(sh, j, MSG_DRAINED, NULL);
        sh->drained_sent = true;
    }
    if (sh->drained_sent && sh->peers_drained == sh->srv->nshards - 1 && !shard_outbox_pending(sh))
        sh->exit_loop = true;
}

static void shard_on_watch(void *ctx, int res, uint32_t flags)
{
    struct shard *sh = ctx;

    (void)flags;
    if (res == WAKE_STOP)
        shard_begin_stop(sh);
}

/* ---- the loop ---- */

/*
 * shard_trim - give freed heap memory back to the system after a burst of large values.
 * Every large SET value and GET result passes through a heap buffer of its own; after a deep
 * pipeline of them glibc keeps the freed chunks (its dynamic mmap threshold has risen past
 * them), and RSS stays at the burst's peak: 200 MiB after 50 clients pipelined 32 SETs of
 * 64 KiB each, 13 MiB after a malloc_trim. Trimming once TRIM_AFTER bytes of such buffers
 * were freed, at most once a second, costs one walk of the free lists per burst instead of
 * an mmap per buffer (M_MMAP_THRESHOLD at 64 KiB made that workload 40% slower). The end of
 * a burst is caught by idling: with TRIM_IDLE bytes freed the loop waits at most a second,
 * and trims when that second passed without a completion.
 */
static void shard_trim(struct shard *sh, bool idle)
{
    uint64_t now;

    if (sh->big_freed < (idle ? TRIM_IDLE : TRIM_AFTER))
        return;
    now = now_ns();
    if (now < sh->trim_ns)
        return;
    sh->big_freed = 0;
    sh->trim_ns = now + TRIM_GAP_NS;
    sh->st.mem_trims++;
    (void)malloc_trim(0);
}

static int shard_loop(struct shard *sh)
{
    while (!sh->exit_loop) {
        uint64_t timeout = 0;
        bool backlog = shard_outbox_pending(sh);
        int rc;

        /* Normally sleep until a completion arrives (peers wake us with MSG_RING). Poll
         * with a short timeout only while a peer's inbox is full, while an accept waits to
         * be re-armed, and while shutting down. */
        if (backlog)
            timeout = 100 * 1000;
        else if (sh->accept_retry)
            timeout = 100 * 1000 * 1000;
        else if (sh->stopping)
            timeout = 10 * 1000 * 1000;
        else if (sh->big_freed >= TRIM_IDLE)
            timeout = TRIM_GAP_NS;
        rc = kvs_ring_run(sh->ring, 1, timeout);
        if (rc < 0) {
            KVS_ERROR("shard %u: ring wait failed: %s", sh->id, kvs_strerror(rc));
            return rc;
        }
        shard_trim(sh, rc == 0 && timeout == TRIM_GAP_NS);
        if (sh->accept_retry && !sh->stopping && now_ns() >= sh->accept_retry_ns) {
            sh->accept_retry = false;
            shard_arm_accept(sh);
        }
        shard_drain_inboxes(sh);
        shard_service_dirty(sh);
        kvs_engine_flush(sh->engine);
        if (sh->stopping)
            shard_stop_progress(sh);
        (void)shard_outbox_pending(sh);
        shard_wake_peers(sh);
        if (sh->fail != 0)
            return sh->fail;
    }
    return 0;
}

/* ---- thread ---- */

static int shard_setup(struct shard *sh)
{
    struct server *srv = sh->srv;
    struct kvs_ring_options ropt = {.entries = 1024, .fixed_buffers = 64};
    struct kvs_engine_options eopt;
    char dir[4096];
    int rc;

    rc = kvs_ring_new(&ropt, &sh->ring);
    if (rc < 0) {
        snprintf(sh->start_msg, sizeof(sh->start_msg), "cannot create io_uring: %s",
                 kvs_strerror(rc));
        return rc;
    }
    rc = kvs_ring_bufring_new(sh->ring, RECV_BGID, RECV_BUFS, RECV_BUFSZ, &sh->bufring);
    if (rc < 0) {
        snprintf(sh->start_msg, sizeof(sh->start_msg),
                 "cannot register provided receive buffers: %s", kvs_strerror(rc));
        return rc;
    }
    kvs_engine_options_init(&eopt);
    eopt.fsync = srv->cfg.fsync;
    eopt.max_key = srv->cfg.max_key;
    eopt.max_value = srv->cfg.max_value;
    eopt.salvage = srv->cfg.salvage;
    eopt.compact_rate = srv->cfg.compact_rate;
    eopt.ring = sh->ring;
    snprintf(dir, sizeof(dir), "%s/shard-%03u", srv->cfg.dir, sh->id);
    rc = kvs_engine_open(dir, &eopt, &sh->engine, sh->start_msg, sizeof(sh->start_msg));
    if (rc < 0) {
        size_t n = strlen(sh->start_msg);

        if (n == 0)
            snprintf(sh->start_msg, sizeof(sh->start_msg), "cannot open %.150s: %s", dir,
                     kvs_strerror(rc));
        return rc;
    }
    rc = server_open_listener(srv, sh->start_msg, sizeof(sh->start_msg));
    if (rc < 0)
        return rc;
    sh->listen_fd = rc;
    rc = kvs_ring_watch(sh->ring, shard_on_watch, sh);
    if (rc < 0) {
        snprintf(sh->start_msg, sizeof(sh->start_msg), "cannot set up wake-ups: %s",
                 kvs_strerror(rc));
        return rc;
    }
    sh->watch_op = rc;
    sh->watch_tag = kvs_ring_watch_tag(sh->ring, rc);
    sh->ring_fd = kvs_ring_fd(sh->ring);
    return 0;
}

static void shard_teardown(struct shard *sh)
{
    int rc;

    if (sh->watch_op >= 0)
        kvs_ring_unwatch(sh->ring, sh->watch_op);
    if (sh->listen_fd >= 0)
        close(sh->listen_fd);
    sh->listen_fd = -1;
    if (sh->engine != NULL) {
        /* Writes the last batch and fdatasyncs whatever the fsync policy. */
        rc = kvs_engine_close(sh->engine);
        if (rc < 0) {
            KVS_ERROR("shard %u: closing the store failed: %s", sh->id, kvs_strerror(rc));
            if (sh->fail == 0)
                sh->fail = rc;
        }
        sh->engine = NULL;
    }
    if (sh->bufring != NULL)
        kvs_ring_bufring_free(sh->ring, sh->bufring);
    sh->bufring = NULL;
    kvs_ring_free(sh->ring);
    sh->ring = NULL;
}

void *shard_main(void *arg)
{
    struct shard *sh = arg;
    struct server *srv = sh->srv;
    char name[16];
    int rc;

    tl_shard = sh;
    snprintf(name, sizeof(name), "shard-%03u", sh->id);
    pthread_setname_np(pthread_self(), name);
    if (sh->cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(sh->cpu, &set);
        rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
        if (rc != 0)
            KVS_WARN("shard %u: cannot pin to CPU %d: %s", sh->id, sh->cpu, strerror(rc));
    }
    sh->start_err = shard_setup(sh);
    pthread_barrier_wait(&srv->barrier);
    /* Main looks at every shard's start_err, then lets everyone go or stop. */
    pthread_barrier_wait(&srv->barrier);
    if (srv->abort_start || sh->start_err != 0)
        goto out;
    shard_arm_accept(sh);
    rc = shard_loop(sh);
    if (rc < 0) {
        sh->fail = rc;
        server_shard_failed_mt(srv);
    }
out:
    shard_teardown(sh);
    return NULL;
}
