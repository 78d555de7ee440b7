/* SPDX-License-Identifier: MIT */
/*
 * The load generator's engine: bench threads, their rings and connections, request
 * generation, reply accounting. See kvs/bench.h for the model (closed and open loop).
 *
 * Each bench thread owns one kvs_ring (created on that thread), one provided-buffer ring for
 * multishot receives, and a slice of the connections. Per loop turn it (1) tops up every
 * connection that has free pipeline slots, stamping each new request with its start time,
 * (2) hands each connection's new requests to the kernel in a single send, (3) waits in
 * kvs_ring_run() for completions; replies are parsed straight out of the provided buffers
 * with kvs_resp_parse_reply() and only a reply split across receives is copied.
 *
 * Threads share nothing on the request path: every counter and histogram is thread-local
 * and merged by the calling thread after the threads are joined. The exceptions are a few
 * atomics read by the progress printer, the stop/fatal flags, and (--verify) the workload's
 * per-key version counters.
 */
#include "kvs/bench.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kvs/error.h"
#include "kvs/resp.h"
#include "kvs/ring.h"

#define NS_PER_S          1000000000ULL
#define IDLE_WAIT_NS      (10 * 1000 * 1000ULL) /* longest sleep, to notice stop flags */
#define CONNECT_TIMEOUT   (5 * NS_PER_S)
#define DRAIN_TIMEOUT     (2 * NS_PER_S) /* replies still owed when the run ends */
#define CLOSE_TIMEOUT     (NS_PER_S / 2)
#define LATE_NS           (1000 * 1000ULL) /* open loop: "late" = sent >1 ms after schedule */
#define PREFILL_DEPTH     64
#define PREFILL_BYTES     ((uint64_t)4 << 20) /* in-flight prefill bytes per connection */
#define RX_BUF_SIZE       16384
#define RX_BUFS_MAX       4096
#define BGID              0
#define MAX_REPORTED      5 /* messages printed per kind of problem; all are counted */
#define MAX_BUFFERED_SIZE ((uint64_t)8 << 30)

enum phase {
    PHASE_CONNECT = 0,
    PHASE_PREFILL,
    PHASE_RUN,
    PHASE_DONE,
};

/* One request in flight, oldest first (replies come back in request order). */
struct req {
    uint64_t start_ns; /* send time (closed loop) or intended send time (open loop) */
    uint64_t key;
    uint8_t op;       /* enum kvs_workload_op */
    uint8_t measured; /* counts in the statistics */
    uint8_t prefill;
};

struct bthread;

struct conn {
    struct bthread *t;
    int fd;
    bool closing;
    bool sending;
    bool queued;     /* on the thread's to-do list */
    int connect_res; /* 1 until the connect completes */
    struct req *fifo;
    unsigned fifo_cap, fifo_head, fifo_count;
    unsigned depth; /* current pipeline limit (prefill may use more than --pipeline) */
    struct kvs_buf tx[2];
    unsigned fill;     /* tx[fill] collects new requests; tx[!fill] is being sent */
    size_t sent;       /* bytes of tx[!fill] the kernel has taken */
    struct kvs_buf rx; /* a reply split across receives */
    size_t rx_need;    /* rx must reach this length before parsing can progress */
    struct kvs_workload_stream stream;
    uint64_t quota;           /* measured requests still to send (--requests), else UINT64_MAX */
    uint64_t pf_next, pf_end; /* --prefill: keys [pf_next, pf_end) still to write */
    uint64_t sched_k;         /* open loop: index of the next scheduled request */
    double sched_phase;       /* open loop: this connection's offset, in intervals */
    struct conn *next_todo;
};

/*
 * A barrier that the main thread can break: if starting the threads fails half-way, the ones
 * already waiting must be released (a pthread_barrier_t would hold them forever).
 */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned need, arrived;
    uint64_t generation;
    bool broken;
};

struct bench;

struct bthread {
    struct bench *b;
    unsigned index;
    pthread_t tid;
    bool started;
    struct kvs_ring *ring;
    struct kvs_bufring *br;
    struct conn *conns;
    unsigned nconns;
    unsigned connecting;
    struct conn *todo; /* connections with free slots or unsent bytes */
    uint64_t outstanding;
    uint64_t quota_left; /* --requests: measured requests this thread has still to send */
    char *scratch;       /* --verify: one value being built */
    uint64_t now;        /* cached clock for the current loop turn */
    enum phase phase;
    bool generating;  /* may issue new requests */
    uint64_t pf_left; /* prefill SETs not yet answered */
    /* Statistics, merged by the main thread after join. */
    struct kvs_bench_op_stats op[2];
    uint64_t warmup, prefill_done, prefill_errors, verified, unanswered, late, unsent;
    uint64_t verify_kind[8];
    uint64_t last_reply_ns;
    uint64_t *per_second;
    unsigned nseconds, seconds_cap;
    /* For the progress printer (single writer: this thread; relaxed). */
    _Atomic uint64_t prog_replies;
    _Atomic uint64_t prog_lat_ns;
    _Atomic uint64_t prog_errors;
    _Atomic uint64_t prog_prefill;
};

struct bench {
    const struct kvs_bench_config *cfg;
    struct kvs_workload *w;
    struct kvs_resp_limits lim;
    struct bthread *threads;
    unsigned nthreads;
    struct gate gate;
    double interval_ns; /* open loop: gap between one connection's scheduled requests */
    /* Written by the barrier's serial thread before the next barrier, read after it. */
    uint64_t t_run, t_warm_end, t_end;
    uint64_t t_prefill_start, t_prefill_end;
    struct rusage ru_start;
    /* Shared flags and progress. */
    _Atomic int fatal;
    char fatal_msg[256];
    _Atomic int phase; /* enum phase, for the progress printer */
    _Atomic unsigned finished;
    _Atomic unsigned reported_verify, reported_errors;
};

static _Atomic int stop_requested;

void kvs_bench_stop(void)
{
    atomic_store_explicit(&stop_requested, 1, memory_order_relaxed);
}

static bool is_stopping(void)
{
    return atomic_load_explicit(&stop_requested, memory_order_relaxed) != 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* Record the first fatal error of the run; later ones are consequences and are dropped. */
static void set_fatal(struct bench *b, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_fatal(struct bench *b, int err, const char *fmt, ...)
{
    char msg[sizeof(b->fatal_msg)];
    int expected = 0;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (atomic_compare_exchange_strong(&b->fatal, &expected, err != 0 ? err : -EIO))
        memcpy(b->fatal_msg, msg, sizeof(msg));
}

static bool is_fatal(struct bench *b)
{
    return atomic_load_explicit(&b->fatal, memory_order_relaxed) != 0;
}

static void todo_push(struct conn *c)
{
    if (c->queued || c->closing)
        return;
    c->queued = true;
    c->next_todo = c->t->todo;
    c->t->todo = c;
}

/* c is unusable (the server hung up, or I/O failed): its requests will never be answered, so
 * count them now instead of letting the drain wait for them. */
static void conn_fail(struct conn *c)
{
    struct bthread *t = c->t;

    c->closing = true;
    t->unanswered += c->fifo_count;
    t->outstanding -= c->fifo_count;
    if (t->phase == PHASE_PREFILL)
        t->pf_left -= c->fifo_count;
    c->fifo_count = 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Replies                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void count_second(struct bthread *t, uint64_t now)
{
    uint64_t sec = now > t->b->t_warm_end ? (now - t->b->t_warm_end) / NS_PER_S : 0;

    if (sec >= t->seconds_cap) {
        unsigned cap = t->seconds_cap ? t->seconds_cap : 16;
        uint64_t *p;

        while (cap <= sec)
            cap *= 2;
        p = realloc(t->per_second, cap * sizeof(*p));
        if (p == NULL)
            return; /* the per-second series is a nicety: lose it rather than the run */
        memset(p + t->seconds_cap, 0, (cap - t->seconds_cap) * sizeof(*p));
        t->per_second = p;
        t->seconds_cap = cap;
    }
    t->per_second[sec]++;
    if (sec + 1 > t->nseconds)
        t->nseconds = (unsigned)(sec + 1);
}

static void report_verify(struct bthread *t, const struct req *rq, enum kvs_workload_verdict v,
                          uint64_t version)
{
    char key[KVS_WORKLOAD_KEY_MAX_LEN + 1];
    size_t n;

    t->verify_kind[v]++;
    if (atomic_fetch_add(&t->b->reported_verify, 1) >= MAX_REPORTED)
        return;
    n = kvs_workload_key(t->b->w, rq->key, key);
    key[n] = '\0';
    fprintf(stderr, "kvs-bench: verify failed: GET %s: %s (claimed version %llu)\n", key,
            kvs_workload_verdict_name(v), (unsigned long long)version);
}

static void report_error_reply(struct bthread *t, const struct req *rq,
                               const struct kvs_resp_reply *rep)
{
    const char *op = rq->op == KVS_WORKLOAD_SET ? "SET" : "GET";

    if (atomic_fetch_add(&t->b->reported_errors, 1) >= MAX_REPORTED)
        return;
    if (rep->type == KVS_RESP_ERROR)
        fprintf(stderr, "kvs-bench: error reply to %s: %.*s\n", op,
                (int)(rep->len > 200 ? 200 : rep->len), rep->str);
    else
        fprintf(stderr, "kvs-bench: unexpected reply type %d to %s\n", (int)rep->type, op);
}

/* Account one reply against the oldest request of c. Returns false on a fatal error. */
static bool handle_reply(struct conn *c, const struct kvs_resp_reply *rep)
{
    struct bthread *t = c->t;
    struct bench *b = t->b;
    struct req rq;
    bool error = false;
    bool miss = false;

    if (c->fifo_count == 0) {
        set_fatal(b, KVS_EPROTO, "%s sent a reply to no request", b->cfg->addr_text);
        return false;
    }
    rq = c->fifo[c->fifo_head];
    c->fifo_head = (c->fifo_head + 1) % c->fifo_cap;
    c->fifo_count--;
    t->outstanding--;
    todo_push(c);

    if (rq.op == KVS_WORKLOAD_SET) {
        error = rep->type != KVS_RESP_SIMPLE;
    } else if (rep->type == KVS_RESP_NULL) {
        miss = true;
    } else if (rep->type != KVS_RESP_BULK) {
        error = true;
    }
    if (error)
        report_error_reply(t, &rq, rep);
    if (!error && rq.op == KVS_WORKLOAD_GET && b->cfg->workload.verify) {
        uint64_t version = 0;
        enum kvs_workload_verdict v = kvs_workload_value_check(b->w, rq.key, miss ? NULL : rep->str,
                                                               miss ? 0 : rep->len, &version);

        if (v == KVS_VERIFY_OK)
            t->verified++;
        else
            report_verify(t, &rq, v, version);
    }

    if (rq.prefill) {
        t->prefill_done++;
        t->pf_left--;
        atomic_store_explicit(&t->prog_prefill, t->prefill_done, memory_order_relaxed);
        if (error)
            t->prefill_errors++;
        return true;
    }
    atomic_store_explicit(&t->prog_replies,
                          atomic_load_explicit(&t->prog_replies, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&t->prog_lat_ns,
                          atomic_load_explicit(&t->prog_lat_ns, memory_order_relaxed) +
                              (t->now - rq.start_ns),
                          memory_order_relaxed);
    if (error)
        atomic_store_explicit(&t->prog_errors,
                              atomic_load_explicit(&t->prog_errors, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    if (!rq.measured) {
        t->warmup++;
        return true;
    }
    {
        struct kvs_bench_op_stats *os = &t->op[rq.op];
        /* A reply can only follow its request, but an intended send time may be stamped a
         * hair after the clock read of this turn: clamp rather than wrap. */
        uint64_t lat = t->now > rq.start_ns ? t->now - rq.start_ns : 0;

        os->completed++;
        os->errors += error;
        os->misses += miss;
        kvs_hist_record(&os->latency, lat);
        t->last_reply_ns = t->now;
        count_second(t, t->now);
    }
    return true;
}

/* Parse and account every complete reply in buf; returns the bytes consumed, or -1. */
static long parse_replies(struct conn *c, const char *buf, size_t len)
{
    struct bench *b = c->t->b;
    size_t off = 0;

    c->rx_need = 0;
    while (off < len) {
        struct kvs_resp_reply rep;
        int n = kvs_resp_parse_reply(buf + off, len - off, &b->lim, &rep);

        if (n == 0) {
            c->rx_need = rep.need;
            break;
        }
        if (n < 0) {
            set_fatal(b, KVS_EPROTO, "protocol error from %s: %s", b->cfg->addr_text,
                      rep.err != NULL ? rep.err : "malformed reply");
            return -1;
        }
        if (!handle_reply(c, &rep))
            return -1;
        off += (size_t)n;
    }
    return (long)off;
}

static void on_recv(void *ctx, int res, uint32_t flags);

static void arm_recv(struct conn *c)
{
    int ret = kvs_ring_recv_multishot(c->t->ring, c->fd, BGID, on_recv, c);

    if (ret < 0)
        set_fatal(c->t->b, ret, "cannot receive: %s", kvs_strerror(ret));
}

static void on_recv(void *ctx, int res, uint32_t flags)
{
    struct conn *c = ctx;
    struct bthread *t = c->t;
    struct bench *b = t->b;
    bool more = (flags & KVS_RING_CQE_MORE) != 0;

    if (c->closing)
        goto rearm;
    if (res == -ENOBUFS)
        goto rearm; /* every provided buffer was full: re-arm, the data waits in the socket */
    if (res < 0) {
        set_fatal(b, res, "receive from %s failed: %s", b->cfg->addr_text, kvs_strerror(res));
        conn_fail(c);
        goto rearm;
    }
    if (res == 0) {
        set_fatal(b, -ECONNRESET, "%s closed the connection", b->cfg->addr_text);
        conn_fail(c);
        goto rearm;
    }
    t->now = now_ns();
    if (flags & KVS_RING_CQE_BUFFER) {
        uint16_t bid = (uint16_t)(flags >> KVS_RING_CQE_BUFFER_SHIFT);
        const char *data = kvs_bufring_buf(t->br, bid);
        long used = 0;
        bool oom = false;

        if (c->rx.len == 0) {
            /* The common case: parse in place, keep only a trailing partial reply. */
            used = parse_replies(c, data, (size_t)res);
            oom = used >= 0 && (size_t)used < (size_t)res &&
                  kvs_buf_append(&c->rx, data + used, (size_t)res - (size_t)used) < 0;
        } else if (kvs_buf_append(&c->rx, data, (size_t)res) < 0) {
            oom = true;
        } else if (c->rx.len >= c->rx_need) {
            used = parse_replies(c, c->rx.p, c->rx.len);
            if (used > 0)
                kvs_buf_consume(&c->rx, (size_t)used);
        }
        kvs_bufring_recycle(t->br, bid);
        /* Size the buffer once for a large bulk instead of growing it per receive. */
        if (!oom && used >= 0 && c->rx_need > c->rx.len)
            oom = kvs_buf_reserve(&c->rx, c->rx_need - c->rx.len) < 0;
        if (oom)
            set_fatal(b, -ENOMEM, "out of memory buffering a reply from %s", b->cfg->addr_text);
        if (oom || used < 0)
            conn_fail(c); /* a protocol error was recorded by parse_replies() */
    }
rearm:
    if (!more && !c->closing)
        arm_recv(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static void on_send(void *ctx, int res, uint32_t flags);

static void start_send(struct conn *c)
{
    struct kvs_buf *out = &c->tx[!c->fill];
    int ret = kvs_ring_send(c->t->ring, c->fd, out->p + c->sent, out->len - c->sent, on_send, c);

    if (ret < 0) {
        set_fatal(c->t->b, ret, "cannot send: %s", kvs_strerror(ret));
        return;
    }
    c->sending = true;
}

static void on_send(void *ctx, int res, uint32_t flags)
{
    struct conn *c = ctx;
    struct kvs_buf *out = &c->tx[!c->fill];

    (void)flags;
    c->sending = false;
    if (c->closing)
        return;
    if (res < 0) {
        set_fatal(c->t->b, res, "send to %s failed: %s", c->t->b->cfg->addr_text,
                  kvs_strerror(res));
        conn_fail(c);
        return;
    }
    c->sent += (size_t)res;
    if (c->sent < out->len) {
        start_send(c); /* a short send: the socket buffer was full */
        return;
    }
    out->len = 0;
    c->sent = 0;
    if (c->tx[c->fill].len > 0)
        todo_push(c);
}

/* Append one request to c's outgoing buffer and its FIFO. Returns false on a fatal error. */
static bool queue_request(struct conn *c, enum kvs_workload_op op, uint64_t key, uint64_t start_ns,
                          bool measured, bool prefill)
{
    struct bthread *t = c->t;
    struct kvs_workload *w = t->b->w;
    char keybuf[KVS_WORKLOAD_KEY_MAX_LEN];
    const char *argv[3];
    size_t argl[3];
    struct req *rq;
    int ret;

    argl[1] = kvs_workload_key(w, key, keybuf);
    argv[1] = keybuf;
    if (op == KVS_WORKLOAD_SET) {
        uint64_t version = kvs_workload_issue_version(w, key);

        argv[0] = "SET";
        argl[0] = 3;
        if (version != 0) {
            argl[2] = (size_t)kvs_workload_verify_len(w, key, version);
            kvs_workload_value_fill(w, key, version, t->scratch, argl[2]);
            argv[2] = t->scratch;
        } else {
            argl[2] = (size_t)kvs_workload_value_len(w, &c->stream);
            argv[2] = w->filler;
        }
        ret = kvs_resp_append_command(&c->tx[c->fill], 3, argv, argl);
    } else {
        argv[0] = "GET";
        argl[0] = 3;
        ret = kvs_resp_append_command(&c->tx[c->fill], 2, argv, argl);
    }
    if (ret < 0) {
        set_fatal(t->b, ret, "cannot build a request: %s", kvs_strerror(ret));
        return false;
    }
    rq = &c->fifo[(c->fifo_head + c->fifo_count) % c->fifo_cap];
    rq->start_ns = start_ns;
    rq->key = key;
    rq->op = (uint8_t)op;
    rq->measured = measured;
    rq->prefill = prefill;
    c->fifo_count++;
    t->outstanding++;
    return true;
}

/* The intended send time of c's k-th scheduled request (open loop). */
static uint64_t sched_time(const struct conn *c, uint64_t k)
{
    const struct bench *b = c->t->b;

    return b->t_run + (uint64_t)(((double)k + c->sched_phase) * b->interval_ns);
}

/* Fill c's free pipeline slots with new requests. Returns the time the next scheduled request
 * becomes due (open loop), UINT64_MAX when nothing is scheduled. */
static uint64_t top_up(struct conn *c)
{
    struct bthread *t = c->t;
    struct bench *b = t->b;
    const struct kvs_bench_config *cfg = b->cfg;

    if (t->phase == PHASE_PREFILL) {
        while (c->fifo_count < c->depth && c->pf_next < c->pf_end) {
            if (!queue_request(c, KVS_WORKLOAD_SET, c->pf_next, t->now, false, true))
                return UINT64_MAX;
            c->pf_next++;
        }
        return UINT64_MAX;
    }
    while (t->generating && c->fifo_count < c->depth && c->quota > 0) {
        uint64_t start = t->now;
        enum kvs_workload_op op;
        uint64_t key;
        bool measured;

        if (cfg->rate > 0) {
            start = sched_time(c, c->sched_k);
            if (start > t->now)
                return start;
            if (start >= b->t_end)
                return UINT64_MAX;
            c->sched_k++;
        } else if (start >= b->t_end) {
            return UINT64_MAX;
        }
        measured = start >= b->t_warm_end;
        if (cfg->rate > 0 && measured && t->now - start > LATE_NS)
            t->late++; /* late sends of the warm-up are not reported */
        op = kvs_workload_next(b->w, &c->stream, &key);
        if (!queue_request(c, op, key, start, measured, false))
            return UINT64_MAX;
        if (measured && c->quota != UINT64_MAX) {
            c->quota--;
            t->quota_left--;
        }
    }
    /* Full (or done): a reply brings it back, nothing is due before then. */
    return UINT64_MAX;
}

/* Hand c's collected requests to the kernel unless a send is already in flight. */
static void flush(struct conn *c)
{
    if (c->sending || c->closing || c->tx[c->fill].len == 0)
        return;
    c->fill = !c->fill;
    c->sent = 0;
    start_send(c);
}

/* One loop turn's request work. Returns the next time an open-loop request is due. */
static uint64_t generate(struct bthread *t)
{
    uint64_t next_due = UINT64_MAX;

    if (t->b->cfg->rate > 0 && t->phase == PHASE_RUN && t->generating) {
        /* Open loop: due times pass without any completion, so every connection is looked at
         * each turn (a scan of this thread's connections, cheap next to the syscalls). */
        for (unsigned i = 0; i < t->nconns; i++) {
            struct conn *c = &t->conns[i];
            uint64_t due;

            if (c->closing)
                continue;
            c->queued = false;
            due = top_up(c);
            if (due < next_due)
                next_due = due;
            flush(c);
        }
        t->todo = NULL;
        return next_due;
    }
    while (t->todo != NULL) {
        struct conn *c = t->todo;

        t->todo = c->next_todo;
        c->queued = false;
        if (c->closing)
            continue;
        (void)top_up(c);
        flush(c);
    }
    return next_due;
}

/* ---------------------------------------------------------------------------------------- */
/* Thread phases                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void on_connect(void *ctx, int res, uint32_t flags)
{
    struct conn *c = ctx;

    (void)flags;
    c->connect_res = res;
    c->t->connecting--;
}

/* Open every connection of t in parallel and wait for all of them (bounded). */
static int connect_all(struct bthread *t)
{
    const struct kvs_bench_config *cfg = t->b->cfg;
    uint64_t deadline;
    int one = 1;
    int ret;

    for (unsigned i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];

        c->fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            ret = -errno;
            set_fatal(t->b, ret, "cannot create a socket: %s", kvs_strerror(ret));
            return ret;
        }
        /* Requests are small and latency is the point: never let Nagle hold one back. */
        (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->connect_res = 1;
        ret = kvs_ring_connect(t->ring, c->fd, (const struct sockaddr *)&cfg->addr, cfg->addr_len,
                               on_connect, c);
        if (ret < 0) {
            set_fatal(t->b, ret, "cannot connect to %s: %s", cfg->addr_text, kvs_strerror(ret));
            return ret;
        }
        t->connecting++;
    }
    deadline = now_ns() + CONNECT_TIMEOUT;
    while (t->connecting > 0) {
        uint64_t now = now_ns();

        if (now >= deadline) {
            set_fatal(t->b, -ETIMEDOUT, "cannot connect to %s: %s", cfg->addr_text,
                      kvs_strerror(-ETIMEDOUT));
            return -ETIMEDOUT;
        }
        if (is_stopping() || is_fatal(t->b))
            return -EINTR;
        ret =
            kvs_ring_run(t->ring, 1, deadline - now < IDLE_WAIT_NS ? deadline - now : IDLE_WAIT_NS);
        if (ret < 0) {
            set_fatal(t->b, ret, "io_uring wait failed: %s", kvs_strerror(ret));
            return ret;
        }
    }
    for (unsigned i = 0; i < t->nconns; i++) {
        if (t->conns[i].connect_res != 0) {
            ret = t->conns[i].connect_res;
            set_fatal(t->b, ret, "cannot connect to %s: %s", cfg->addr_text, kvs_strerror(ret));
            return ret;
        }
    }
    return 0;
}

/*
 * Open loop, when generation stops: requests whose intended time has passed but that were
 * never sent (their connection's pipeline stayed full) are counted, so a server that fell
 * behind cannot hide the backlog it caused.
 */
static void count_unsent(struct bthread *t)
{
    struct bench *b = t->b;
    uint64_t until = t->now < b->t_end ? t->now : b->t_end;

    if (!(b->cfg->rate > 0) || t->phase != PHASE_RUN || until <= b->t_run)
        return;
    for (unsigned i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];
        /* Scheduled indices k with sched_time(k) < until are those below kmax. */
        double kmax = (double)(until - b->t_run) / b->interval_ns - c->sched_phase;
        uint64_t n = 0;

        if (kmax > (double)c->sched_k)
            n = (uint64_t)ceil(kmax) - c->sched_k;
        t->unsent += n < c->quota ? n : c->quota;
    }
}

/*
 * Drive the ring until this phase's work is done: prefill answered, or (run) the quota sent
 * and answered / the end time reached. When generation stops because of the clock, a stop
 * request or a fatal error, replies still owed get DRAIN_TIMEOUT to arrive.
 */
static void drive(struct bthread *t)
{
    struct bench *b = t->b;
    uint64_t drain_deadline = 0;

    for (unsigned i = 0; i < t->nconns; i++)
        todo_push(&t->conns[i]);
    t->generating = true;
    for (;;) {
        uint64_t next_due;
        uint64_t wait = IDLE_WAIT_NS;
        bool work_left;
        int ret;

        t->now = now_ns();
        if (t->generating &&
            (is_stopping() || is_fatal(b) || (t->phase == PHASE_RUN && t->now >= b->t_end))) {
            t->generating = false;
            drain_deadline = t->now + DRAIN_TIMEOUT;
            count_unsent(t);
        }
        next_due = generate(t);
        if (t->phase == PHASE_PREFILL)
            work_left = t->pf_left > 0 && t->generating;
        else
            work_left = t->quota_left > 0 && t->generating;
        if (t->outstanding == 0 && !work_left)
            break;
        if (!t->generating && t->now >= drain_deadline) {
            t->unanswered += t->outstanding;
            break;
        }
        if (next_due != UINT64_MAX)
            wait = next_due > t->now ? next_due - t->now : 1;
        if (wait > IDLE_WAIT_NS)
            wait = IDLE_WAIT_NS;
        ret = kvs_ring_run(t->ring, 1, wait);
        if (ret < 0) {
            set_fatal(b, ret, "io_uring wait failed: %s", kvs_strerror(ret));
            t->generating = false;
            t->unanswered += t->outstanding;
            break;
        }
    }
    t->generating = false;
}

/* Stop every receive and wait (bounded) for the ring to let go of our buffers. */
static void close_all(struct bthread *t)
{
    uint64_t deadline = now_ns() + CLOSE_TIMEOUT;

    for (unsigned i = 0; i < t->nconns; i++) {
        struct conn *c = &t->conns[i];

        c->closing = true;
        if (c->fd >= 0)
            (void)shutdown(c->fd, SHUT_RDWR);
    }
    while (t->ring != NULL && kvs_ring_inflight(t->ring) > 0 && now_ns() < deadline)
        (void)kvs_ring_run(t->ring, 1, CLOSE_TIMEOUT / 10);
}

static int gate_init(struct gate *g, unsigned need)
{
    int ret;

    memset(g, 0, sizeof(*g));
    g->need = need;
    ret = pthread_mutex_init(&g->mu, NULL);
    if (ret != 0)
        return -ret;
    ret = pthread_cond_init(&g->cv, NULL);
    if (ret != 0) {
        pthread_mutex_destroy(&g->mu);
        return -ret;
    }
    return 0;
}

static void gate_fini(struct gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

/* Wait until `need` threads arrived. Returns true in exactly one of them (the last), which
 * publishes shared state before the next gate; false in the others and when broken. */
static bool gate_wait(struct gate *g)
{
    bool serial = false;
    uint64_t gen;

    pthread_mutex_lock(&g->mu);
    gen = g->generation;
    if (++g->arrived == g->need && !g->broken) {
        g->arrived = 0;
        g->generation++;
        serial = true;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (gen == g->generation && !g->broken)
            pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return serial;
}

static void gate_break(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->broken = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void pin(struct bthread *t)
{
    const struct kvs_bench_config *cfg = t->b->cfg;
    cpu_set_t set;
    int ret;

    if (cfg->ncpus == 0)
        return;
    CPU_ZERO(&set);
    CPU_SET(cfg->cpus[t->index % cfg->ncpus], &set);
    ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (ret != 0)
        set_fatal(t->b, -ret, "cannot pin thread %u to CPU %d: %s", t->index,
                  cfg->cpus[t->index % cfg->ncpus], kvs_strerror(-ret));
}

static int thread_setup(struct bthread *t)
{
    struct bench *b = t->b;
    unsigned nbufs = 64;
    int ret;

    pin(t);
    if (is_fatal(b))
        return -ECANCELED;
    ret = kvs_ring_new(NULL, &t->ring);
    if (ret < 0) {
        set_fatal(b, ret, "cannot create an io_uring: %s", kvs_strerror(ret));
        return ret;
    }
    /* Enough receive buffers for a few replies' worth per connection, within a bound. */
    while (nbufs < RX_BUFS_MAX && nbufs < t->nconns * 4U)
        nbufs *= 2;
    ret = kvs_ring_bufring_new(t->ring, BGID, nbufs, RX_BUF_SIZE, &t->br);
    if (ret < 0) {
        set_fatal(b, ret, "cannot set up receive buffers: %s", kvs_strerror(ret));
        return ret;
    }
    if (b->cfg->workload.verify) {
        t->scratch = malloc(b->cfg->workload.size_max);
        if (t->scratch == NULL) {
            set_fatal(b, -ENOMEM, "out of memory");
            return -ENOMEM;
        }
    }
    return connect_all(t);
}

/* The ring is this thread's (SINGLE_ISSUER): release it, and the sockets, here. */
static void thread_teardown(struct bthread *t)
{
    kvs_ring_bufring_free(t->ring, t->br);
    t->br = NULL;
    kvs_ring_free(t->ring);
    t->ring = NULL;
    for (unsigned i = 0; i < t->nconns; i++) {
        if (t->conns[i].fd >= 0)
            close(t->conns[i].fd);
        t->conns[i].fd = -1;
    }
}

static void *thread_main(void *arg)
{
    struct bthread *t = arg;
    struct bench *b = t->b;
    char name[16];
    bool ok;

    snprintf(name, sizeof(name), "bench-%u", t->index);
    (void)pthread_setname_np(pthread_self(), name);

    ok = thread_setup(t) == 0;
    /* Gate 1: everyone is connected (or has failed). Every connect failure was published
     * before its thread arrived, so all threads agree on whether to go on. The prefill start
     * time is only read by the main thread, so no second gate is needed here. */
    if (gate_wait(&b->gate)) {
        b->t_prefill_start = now_ns();
        atomic_store(&b->phase, PHASE_PREFILL);
    }
    ok = ok && !is_fatal(b) && !is_stopping();
    if (ok) {
        for (unsigned i = 0; i < t->nconns; i++)
            arm_recv(&t->conns[i]);
    }
    if (ok && b->cfg->prefill) {
        t->phase = PHASE_PREFILL;
        for (unsigned i = 0; i < t->nconns; i++)
            t->pf_left += t->conns[i].pf_end - t->conns[i].pf_next;
        drive(t);
    }
    /* Gate 2: prefill done everywhere; the last thread to arrive fixes the run's clock, and
     * gate 3 (the second wait) keeps the others from reading it before it is written. */
    if (gate_wait(&b->gate)) {
        uint64_t now = now_ns();

        b->t_prefill_end = now;
        b->t_run = now;
        b->t_warm_end = now + (uint64_t)(b->cfg->warmup_s * (double)NS_PER_S);
        b->t_end = b->cfg->requests > 0
                       ? UINT64_MAX
                       : b->t_warm_end + (uint64_t)(b->cfg->duration_s * (double)NS_PER_S);
        (void)getrusage(RUSAGE_SELF, &b->ru_start);
        atomic_store(&b->phase, PHASE_RUN);
    }
    (void)gate_wait(&b->gate);
    ok = ok && !is_fatal(b) && !is_stopping();
    if (ok) {
        t->phase = PHASE_RUN;
        for (unsigned i = 0; i < t->nconns; i++)
            t->conns[i].depth = b->cfg->pipeline;
        drive(t);
    }
    close_all(t);
    thread_teardown(t);
    t->phase = PHASE_DONE;
    atomic_fetch_add(&b->finished, 1);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up, progress, merge                                                                  */
/* ---------------------------------------------------------------------------------------- */

static int setup_conns(struct bench *b)
{
    const struct kvs_bench_config *cfg = b->cfg;
    unsigned g = 0;
    unsigned prefill_depth = PREFILL_DEPTH;
    uint64_t max_size = cfg->workload.size_max ? cfg->workload.size_max : 1;

    /* Prefill pipelines deeper than --pipeline for speed, but never buffers more than
     * PREFILL_BYTES of values per connection. */
    if ((uint64_t)prefill_depth * max_size > PREFILL_BYTES)
        prefill_depth = (unsigned)(PREFILL_BYTES / max_size) + 1;
    if (prefill_depth < cfg->pipeline)
        prefill_depth = cfg->pipeline;
    for (unsigned i = 0; i < b->nthreads; i++) {
        struct bthread *t = &b->threads[i];

        t->b = b;
        t->index = i;
        t->nconns = cfg->clients / b->nthreads + (i < cfg->clients % b->nthreads);
        t->conns = calloc(t->nconns, sizeof(*t->conns));
        if (t->conns == NULL)
            return -ENOMEM;
        for (unsigned j = 0; j < 2; j++)
            kvs_hist_init(&t->op[j].latency);
        for (unsigned j = 0; j < t->nconns; j++, g++) {
            struct conn *c = &t->conns[j];

            c->t = t;
            c->fd = -1;
            c->fifo_cap = cfg->prefill ? prefill_depth : cfg->pipeline;
            c->depth = c->fifo_cap;
            c->fifo = calloc(c->fifo_cap, sizeof(*c->fifo));
            if (c->fifo == NULL)
                return -ENOMEM;
            kvs_buf_init(&c->tx[0]);
            kvs_buf_init(&c->tx[1]);
            kvs_buf_init(&c->rx);
            kvs_workload_stream_init(b->w, &c->stream, cfg->seed, g, cfg->clients);
            if (cfg->requests > 0) {
                c->quota = cfg->requests / cfg->clients + (g < cfg->requests % cfg->clients);
                t->quota_left += c->quota;
            } else {
                c->quota = UINT64_MAX;
                t->quota_left = UINT64_MAX;
            }
            /* Prefill: a contiguous slice of the keyspace per connection. */
            /* keys <= 10^12 and g < 2^16, so the products fit in 64 bits. */
            c->pf_next = cfg->workload.keys * g / cfg->clients;
            c->pf_end = cfg->workload.keys * (g + 1) / cfg->clients;
            c->sched_phase = (double)g / (double)cfg->clients;
        }
    }
    return 0;
}

static void free_bench(struct bench *b)
{
    if (b->threads != NULL) {
        for (unsigned i = 0; i < b->nthreads; i++) {
            struct bthread *t = &b->threads[i];

            for (unsigned j = 0; t->conns != NULL && j < t->nconns; j++) {
                struct conn *c = &t->conns[j];

                free(c->fifo);
                kvs_buf_fini(&c->tx[0]);
                kvs_buf_fini(&c->tx[1]);
                kvs_buf_fini(&c->rx);
            }
            free(t->conns);
            free(t->scratch);
            free(t->per_second);
        }
        free(b->threads);
    }
    kvs_workload_free(b->w);
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Once a second until the threads finish: a progress line on stderr. */
static void watch(struct bench *b)
{
    const struct kvs_bench_config *cfg = b->cfg;
    uint64_t last_replies = 0, last_lat = 0;
    uint64_t next_tick = 0;
    int last_phase = PHASE_CONNECT;

    while (atomic_load(&b->finished) < b->nthreads) {
        struct timespec nap = {0, 20 * 1000 * 1000};
        int phase = atomic_load(&b->phase);
        uint64_t now = now_ns();

        nanosleep(&nap, NULL);
        if (cfg->quiet || phase == PHASE_CONNECT)
            continue;
        if (phase != last_phase) {
            last_phase = phase;
            next_tick = now + NS_PER_S;
            continue;
        }
        if (now < next_tick)
            continue;
        next_tick += NS_PER_S;
        if (phase == PHASE_PREFILL) {
            uint64_t done = 0;

            for (unsigned i = 0; i < b->nthreads; i++)
                done += atomic_load_explicit(&b->threads[i].prog_prefill, memory_order_relaxed);
            fprintf(stderr, "kvs-bench: [%4.0f s] prefill %llu of %llu keys\n",
                    (double)(now - b->t_prefill_start) / 1e9, (unsigned long long)done,
                    (unsigned long long)cfg->workload.keys);
        } else {
            uint64_t replies = 0, lat = 0, errors = 0;
            uint64_t dr, dl;

            for (unsigned i = 0; i < b->nthreads; i++) {
                replies += atomic_load_explicit(&b->threads[i].prog_replies, memory_order_relaxed);
                lat += atomic_load_explicit(&b->threads[i].prog_lat_ns, memory_order_relaxed);
                errors += atomic_load_explicit(&b->threads[i].prog_errors, memory_order_relaxed);
            }
            dr = replies - last_replies;
            dl = lat - last_lat;
            last_replies = replies;
            last_lat = lat;
            fprintf(stderr, "kvs-bench: [%4.0f s]%s %10llu ops/s  mean %8.1f us  %llu errors\n",
                    (double)(now - b->t_run) / 1e9, now < b->t_warm_end ? " warmup" : "",
                    (unsigned long long)dr, dr ? (double)dl / (double)dr / 1e3 : 0.0,
                    (unsigned long long)errors);
        }
    }
}

static void merge(struct bench *b, struct kvs_bench_result *res)
{
    uint64_t last = 0;
    unsigned nsec = 0;

    kvs_hist_init(&res->latency);
    for (int j = 0; j < 2; j++)
        kvs_hist_init(&res->op[j].latency);
    for (unsigned i = 0; i < b->nthreads; i++)
        if (b->threads[i].nseconds > nsec)
            nsec = b->threads[i].nseconds;
    res->per_second = calloc(nsec ? nsec : 1, sizeof(*res->per_second));
    res->nseconds = res->per_second != NULL ? nsec : 0;
    for (unsigned i = 0; i < b->nthreads; i++) {
        struct bthread *t = &b->threads[i];

        for (int j = 0; j < 2; j++) {
            res->op[j].completed += t->op[j].completed;
            res->op[j].errors += t->op[j].errors;
            res->op[j].misses += t->op[j].misses;
            kvs_hist_merge(&res->op[j].latency, &t->op[j].latency);
            kvs_hist_merge(&res->latency, &t->op[j].latency);
        }
        for (int k = 0; k < 8; k++) {
            res->verify_by_kind[k] += t->verify_kind[k];
            if (k != KVS_VERIFY_OK)
                res->verify_failures += t->verify_kind[k];
        }
        res->verified += t->verified;
        res->prefill_requests += t->prefill_done;
        res->prefill_errors += t->prefill_errors;
        res->warmup_requests += t->warmup;
        res->unanswered += t->unanswered;
        res->late_sends += t->late;
        res->unsent += t->unsent;
        if (t->last_reply_ns > last)
            last = t->last_reply_ns;
        for (unsigned s = 0; s < t->nseconds && s < res->nseconds; s++)
            res->per_second[s] += t->per_second[s];
    }
    for (int j = 0; j < 2; j++) {
        res->completed += res->op[j].completed;
        res->errors += res->op[j].errors;
        res->misses += res->op[j].misses;
    }
    res->elapsed_s = last > b->t_warm_end ? (double)(last - b->t_warm_end) / 1e9 : 0.0;
    res->throughput = res->elapsed_s > 0 ? (double)res->completed / res->elapsed_s : 0.0;
    res->prefill_s = b->cfg->prefill && b->t_prefill_end > b->t_prefill_start
                         ? (double)(b->t_prefill_end - b->t_prefill_start) / 1e9
                         : 0.0;
}

int kvs_bench_run(const struct kvs_bench_config *cfg, struct kvs_bench_result **out,
                  const char **why)
{
    struct bench b;
    struct kvs_bench_config eff;
    struct kvs_bench_result *res = NULL;
    struct rusage ru_end;
    bool gate_ready = false;
    int ret;

    memset(&b, 0, sizeof(b));
    *why = NULL;
    eff = *cfg;
    /* --verify is only sound when every key holds a value of this run (kvs/workload.h). */
    if (eff.workload.verify)
        eff.prefill = true;
    if (eff.threads == 0 || eff.threads > KVS_BENCH_MAX_THREADS) {
        *why = "--threads must be between 1 and 1024";
        return -EINVAL;
    }
    if (eff.clients == 0 || eff.clients > KVS_BENCH_MAX_CLIENTS) {
        *why = "--clients must be between 1 and 65536";
        return -EINVAL;
    }
    if (eff.pipeline == 0 || eff.pipeline > KVS_BENCH_MAX_PIPELINE) {
        *why = "--pipeline must be between 1 and 4096";
        return -EINVAL;
    }
    if (eff.requests == 0 && !(eff.duration_s > 0)) {
        *why = "--duration must be positive";
        return -EINVAL;
    }
    if (eff.warmup_s < 0 || eff.rate < 0) {
        *why = "--warmup and --rate cannot be negative";
        return -EINVAL;
    }
    if ((double)eff.clients * eff.pipeline * (double)eff.workload.size_max >
        (double)MAX_BUFFERED_SIZE) {
        *why = "--clients x --pipeline x --data-size would buffer more than 8 GiB";
        return -EINVAL;
    }
    /* More threads than connections would leave threads idle. */
    if (eff.threads > eff.clients)
        eff.threads = eff.clients;
    ret = kvs_workload_new(&eff.workload, &b.w, why);
    if (ret < 0)
        return ret;
    b.cfg = &eff;
    kvs_resp_limits_default(&b.lim);
    if (eff.rate > 0)
        b.interval_ns = (double)eff.clients / eff.rate * 1e9;
    atomic_store(&stop_requested, 0);
    b.nthreads = eff.threads;
    b.threads = calloc(b.nthreads, sizeof(*b.threads));
    res = calloc(1, sizeof(*res));
    if (b.threads == NULL || res == NULL) {
        ret = -ENOMEM;
        goto out;
    }
    ret = setup_conns(&b);
    if (ret < 0)
        goto out;
    ret = gate_init(&b.gate, b.nthreads);
    if (ret < 0)
        goto out;
    gate_ready = true;
    for (unsigned i = 0; i < b.nthreads; i++) {
        ret = -pthread_create(&b.threads[i].tid, NULL, thread_main, &b.threads[i]);
        if (ret < 0) {
            /* Release the threads already waiting at the gate; they see the fatal error. */
            set_fatal(&b, ret, "cannot start thread %u: %s", i, kvs_strerror(ret));
            gate_break(&b.gate);
            break;
        }
        b.threads[i].started = true;
    }
    if (ret == 0)
        watch(&b);
    for (unsigned i = 0; i < b.nthreads; i++)
        if (b.threads[i].started)
            pthread_join(b.threads[i].tid, NULL);
    (void)getrusage(RUSAGE_SELF, &ru_end);
    merge(&b, res);
    if (atomic_load(&b.phase) == PHASE_RUN) {
        res->cpu_user_s = tv_s(ru_end.ru_utime) - tv_s(b.ru_start.ru_utime);
        res->cpu_sys_s = tv_s(ru_end.ru_stime) - tv_s(b.ru_start.ru_stime);
    }
    res->config = eff;
    res->interrupted = is_stopping();
    res->fatal = atomic_load(&b.fatal);
    if (res->fatal != 0)
        snprintf(res->fatal_msg, sizeof(res->fatal_msg), "%s", b.fatal_msg);
    *out = res;
    res = NULL;
    ret = 0;
out:
    if (gate_ready)
        gate_fini(&b.gate);
    free_bench(&b);
    kvs_bench_result_free(res);
    return ret;
}

void kvs_bench_result_free(struct kvs_bench_result *res)
{
    if (res == NULL)
        return;
    free(res->per_second);
    free(res);
}
