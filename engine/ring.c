/* SPDX-License-Identifier: MIT */
/*
 * The ring executor: the one place in kvs that includes <liburing.h>. It owns one io_uring,
 * a table of in-flight operations (callback + context, addressed by a {slot, generation} tag
 * in user_data), the sparse registered-buffer table and the provided-buffer rings.
 *
 * It does not know what the operations are for: the engine, the shard loop and the load
 * generator all prepare ops here and get their completions back through callbacks. It must not
 * block anywhere except in kvs_ring_run() / kvs_ring_run_until(), where the caller asked to.
 *
 * Kernel feature fallbacks live here and only here: SINGLE_ISSUER + DEFER_TASKRUN, else
 * COOP_TASKRUN, else a plain ring.
 */
#include "kvs/ring.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <liburing.h>

#include "kvs/log.h"

/*
 * Slots live in fixed-size chunks that never move once allocated: a timeout's timespec is
 * stored in its slot and the kernel reads it at submission time, which may come after the
 * table has grown.
 */
#define SLOT_CHUNK_SHIFT 10
#define SLOT_CHUNK       (1U << SLOT_CHUNK_SHIFT)
#define SLOT_NONE        UINT32_MAX
#define CQE_BATCH        64
#define RUN_MAX_CQES     4096

enum slot_state {
    SLOT_FREE = 0,
    SLOT_ONESHOT, /* released by its (only) completion */
    SLOT_MULTI,   /* released by the completion that lacks IORING_CQE_F_MORE */
    SLOT_WATCH,   /* never released by completions: target of kvs_ring_msg() */
};

struct slot {
    kvs_ring_cb_fn cb;
    void *ctx;
    uint32_t gen;
    uint32_t next_free;
    uint8_t state;
    struct __kernel_timespec ts;
};

struct kvs_bufring {
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    char *bufs;
    size_t bufsz;
    unsigned nbufs;
    int mask;
    uint16_t bgid;
};

struct kvs_ring {
    struct io_uring uring;
    unsigned features;
    struct slot **chunks;
    uint32_t nchunks;
    uint32_t free_head;
    unsigned inflight;
    bool dispatching;
    struct io_uring_sqe *last_sqe;
    bool in_chain; /* last_sqe is linked to the next op, which must join its submission */
    /* Sparse registered-buffer table; used[i] tells whether index i holds a buffer. */
    bool *fixed_used;
    unsigned nfixed;
};

static struct slot *slot_at(const struct kvs_ring *r, uint32_t idx)
{
    return &r->chunks[idx >> SLOT_CHUNK_SHIFT][idx & (SLOT_CHUNK - 1)];
}

static uint64_t slot_tag(const struct kvs_ring *r, uint32_t idx)
{
    return ((uint64_t)slot_at(r, idx)->gen << 32) | idx;
}

/* Add one chunk of free slots; -ENOMEM when memory or the 32-bit index space runs out. */
static int slots_grow(struct kvs_ring *r)
{
    struct slot **chunks;
    struct slot *chunk;
    uint32_t base = r->nchunks * SLOT_CHUNK;

    if (r->nchunks >= (UINT32_MAX >> SLOT_CHUNK_SHIFT) - 1)
        return -ENOMEM;
    chunks = realloc(r->chunks, (r->nchunks + 1) * sizeof(struct slot *));
    if (chunks == NULL)
        return -ENOMEM;
    r->chunks = chunks;
    chunk = calloc(SLOT_CHUNK, sizeof(*chunk));
    if (chunk == NULL)
        return -ENOMEM;
    r->chunks[r->nchunks++] = chunk;
    /* Thread the new slots onto the free list in index order. */
    for (uint32_t i = 0; i < SLOT_CHUNK; i++) {
        chunk[i].gen = 1;
        chunk[i].next_free = i + 1 < SLOT_CHUNK ? base + i + 1 : r->free_head;
    }
    r->free_head = base;
    return 0;
}

static int slot_alloc(struct kvs_ring *r, kvs_ring_cb_fn cb, void *ctx, enum slot_state state)
{
    struct slot *s;
    uint32_t idx;
    int ret;

    if (r->free_head == SLOT_NONE) {
        ret = slots_grow(r);
        if (ret < 0)
            return ret;
    }
    idx = r->free_head;
    s = slot_at(r, idx);
    r->free_head = s->next_free;
    s->cb = cb;
    s->ctx = ctx;
    s->state = (uint8_t)state;
    s->next_free = SLOT_NONE;
    return (int)idx;
}

static void slot_release(struct kvs_ring *r, uint32_t idx)
{
    struct slot *s = slot_at(r, idx);

    /* A new generation makes late completions for the old op unrecognisable. */
    s->gen++;
    if (s->gen == 0)
        s->gen = 1;
    s->state = SLOT_FREE;
    s->cb = NULL;
    s->ctx = NULL;
    s->next_free = r->free_head;
    r->free_head = idx;
}

static struct io_uring_sqe *get_sqe(struct kvs_ring *r)
{
    struct io_uring_sqe *sqe;

    /* Making room submits what is queued, and a link chain split across two submissions is
     * no chain: the kernel runs its first half as if unlinked. So an op that may start a
     * chain gets room for a whole one first; ops inside a chain then always find an SQE. */
    if (!r->in_chain && io_uring_sq_space_left(&r->uring) < KVS_RING_MAX_CHAIN)
        (void)io_uring_submit(&r->uring);
    sqe = io_uring_get_sqe(&r->uring);
    if (sqe == NULL) {
        (void)io_uring_submit(&r->uring);
        sqe = io_uring_get_sqe(&r->uring);
    }
    return sqe;
}

/* The op after kvs_ring_link() could not be prepared: unlink the one before it, or the next
 * unrelated op would be chained behind it (and cancelled if it fails). */
static void chain_broken(struct kvs_ring *r)
{
    if (r->in_chain && r->last_sqe != NULL)
        r->last_sqe->flags &= (__u8)~IOSQE_IO_LINK;
    r->in_chain = false;
}

/*
 * Reserve a slot and an SQE for a new op. The caller fills the SQE with an io_uring_prep_*
 * call and then calls finish(), which sets user_data (prep functions may clear fields).
 */
static int begin(struct kvs_ring *r, kvs_ring_cb_fn cb, void *ctx, enum slot_state state,
                 struct io_uring_sqe **sqep)
{
    int idx = slot_alloc(r, cb, ctx, state);

    if (idx < 0) {
        chain_broken(r);
        return idx;
    }
    *sqep = get_sqe(r);
    if (*sqep == NULL) {
        slot_release(r, (uint32_t)idx);
        chain_broken(r);
        return -EBUSY;
    }
    return idx;
}

static int finish(struct kvs_ring *r, struct io_uring_sqe *sqe, int idx)
{
    io_uring_sqe_set_data64(sqe, slot_tag(r, (uint32_t)idx));
    r->last_sqe = sqe;
    r->in_chain = false; /* until kvs_ring_link() links it to the next */
    r->inflight++;
    return idx;
}

int kvs_ring_new(const struct kvs_ring_options *opt, struct kvs_ring **out)
{
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    struct kvs_ring_options defaults = {0};
    struct kvs_ring *r = NULL;
    unsigned entries;
    int ret = -EINVAL;

    if (opt == NULL)
        opt = &defaults;
    entries = opt->entries != 0 ? opt->entries : 256;
    if (entries > 32768)
        return -EINVAL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    r->free_head = SLOT_NONE;
    r->nfixed = opt->fixed_buffers != 0 ? opt->fixed_buffers : 64;

    for (size_t i = opt->no_single_issuer ? 1 : 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        struct io_uring_params p;

        memset(&p, 0, sizeof(p));
        /* A deep CQ: multishot recv/accept can post many completions per submission. */
        p.flags = tries[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
        p.cq_entries = entries * 4;
        ret = io_uring_queue_init_params(entries, &r->uring, &p);
        if (ret == -EINVAL && i + 1 < sizeof(tries) / sizeof(tries[0]))
            continue; /* flag unknown to this kernel: try the next combination */
        if (ret < 0)
            goto err;
        if (tries[i] & IORING_SETUP_SINGLE_ISSUER)
            r->features |= KVS_RING_FEAT_SINGLE_ISSUER | KVS_RING_FEAT_DEFER_TASKRUN;
        if (tries[i] & IORING_SETUP_COOP_TASKRUN)
            r->features |= KVS_RING_FEAT_COOP_TASKRUN;
        break;
    }
    if (ret < 0)
        goto err;

    r->fixed_used = calloc(r->nfixed, sizeof(*r->fixed_used));
    if (r->fixed_used == NULL) {
        io_uring_queue_exit(&r->uring);
        ret = -ENOMEM;
        goto err;
    }
    ret = io_uring_register_buffers_sparse(&r->uring, r->nfixed);
    if (ret < 0) {
        /* Without a sparse table, fixed-buffer ops are unavailable; report it at add time. */
        KVS_WARN("io_uring: cannot register a sparse buffer table: %s", strerror(-ret));
        r->nfixed = 0;
    }
    *out = r;
    return 0;
err:
    free(r);
    return ret;
}

void kvs_ring_free(struct kvs_ring *r)
{
    if (r == NULL)
        return;
    io_uring_queue_exit(&r->uring);
    for (uint32_t i = 0; i < r->nchunks; i++)
        free(r->chunks[i]);
    free(r->chunks);
    free(r->fixed_used);
    free(r);
}

int kvs_ring_fd(const struct kvs_ring *r)
{
    return r->uring.ring_fd;
}

unsigned kvs_ring_features(const struct kvs_ring *r)
{
    return r->features;
}

unsigned kvs_ring_inflight(const struct kvs_ring *r)
{
    return r->inflight;
}

int kvs_ring_read(struct kvs_ring *r, int fd, void *buf, size_t len, uint64_t off,
                  kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_read(sqe, fd, buf, (unsigned)len, off);
    return finish(r, sqe, idx);
}

int kvs_ring_write(struct kvs_ring *r, int fd, const void *buf, size_t len, uint64_t off,
                   kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_write(sqe, fd, buf, (unsigned)len, off);
    return finish(r, sqe, idx);
}

int kvs_ring_read_fixed(struct kvs_ring *r, int fd, void *buf, size_t len, uint64_t off,
                        int buf_index, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx;

    if (buf_index < 0 || (unsigned)buf_index >= r->nfixed || !r->fixed_used[buf_index])
        return -EINVAL;
    idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);
    if (idx < 0)
        return idx;
    io_uring_prep_read_fixed(sqe, fd, buf, (unsigned)len, off, buf_index);
    return finish(r, sqe, idx);
}

int kvs_ring_write_fixed(struct kvs_ring *r, int fd, const void *buf, size_t len, uint64_t off,
                         int buf_index, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx;

    if (buf_index < 0 || (unsigned)buf_index >= r->nfixed || !r->fixed_used[buf_index])
        return -EINVAL;
    idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);
    if (idx < 0)
        return idx;
    io_uring_prep_write_fixed(sqe, fd, buf, (unsigned)len, off, buf_index);
    return finish(r, sqe, idx);
}

int kvs_ring_fsync(struct kvs_ring *r, int fd, bool datasync, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    return finish(r, sqe, idx);
}

int kvs_ring_accept_multishot(struct kvs_ring *r, int listen_fd, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_MULTI, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
    return finish(r, sqe, idx);
}

int kvs_ring_recv_multishot(struct kvs_ring *r, int fd, uint16_t bgid, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_MULTI, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = bgid;
    return finish(r, sqe, idx);
}

int kvs_ring_recv(struct kvs_ring *r, int fd, void *buf, size_t len, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_recv(sqe, fd, buf, len, 0);
    return finish(r, sqe, idx);
}

int kvs_ring_send(struct kvs_ring *r, int fd, const void *buf, size_t len, kvs_ring_cb_fn cb,
                  void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    /* MSG_NOSIGNAL: a peer that went away is an -EPIPE completion, not a SIGPIPE. */
    io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
    return finish(r, sqe, idx);
}

int kvs_ring_sendmsg(struct kvs_ring *r, int fd, const struct msghdr *msg, kvs_ring_cb_fn cb,
                     void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
    return finish(r, sqe, idx);
}

int kvs_ring_connect(struct kvs_ring *r, int fd, const struct sockaddr *addr, socklen_t len,
                     kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_connect(sqe, fd, addr, len);
    return finish(r, sqe, idx);
}

int kvs_ring_close(struct kvs_ring *r, int fd, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_close(sqe, fd);
    /* In a worker: the last close of a file does its release work (for an unlinked file,
     * freeing its blocks) in the task that closes it. */
    sqe->flags |= IOSQE_ASYNC;
    return finish(r, sqe, idx);
}

int kvs_ring_openat(struct kvs_ring *r, int dirfd, const char *path, int flags, unsigned mode,
                    kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_openat(sqe, dirfd, path, flags, mode);
    return finish(r, sqe, idx);
}

int kvs_ring_renameat(struct kvs_ring *r, int dirfd, const char *from, const char *to,
                      kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_renameat(sqe, dirfd, from, dirfd, to, 0);
    return finish(r, sqe, idx);
}

int kvs_ring_unlinkat(struct kvs_ring *r, int dirfd, const char *path, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_unlinkat(sqe, dirfd, path, 0);
    return finish(r, sqe, idx);
}

int kvs_ring_timeout(struct kvs_ring *r, uint64_t ns, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    struct slot *s;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    /* The timespec lives in the slot, which stays put until the completion. */
    s = slot_at(r, (uint32_t)idx);
    s->ts.tv_sec = (long long)(ns / 1000000000ULL);
    s->ts.tv_nsec = (long long)(ns % 1000000000ULL);
    io_uring_prep_timeout(sqe, &s->ts, 0, 0);
    return finish(r, sqe, idx);
}

int kvs_ring_cancel(struct kvs_ring *r, int op, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    uint64_t target;
    int idx;

    if (op < 0 || (uint32_t)op >= r->nchunks * SLOT_CHUNK ||
        slot_at(r, (uint32_t)op)->state == SLOT_FREE)
        return -ENOENT;
    target = slot_tag(r, (uint32_t)op);
    idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);
    if (idx < 0)
        return idx;
    io_uring_prep_cancel64(sqe, target, 0);
    return finish(r, sqe, idx);
}

int kvs_ring_cancel_fd(struct kvs_ring *r, int fd, kvs_ring_cb_fn cb, void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    return finish(r, sqe, idx);
}

void kvs_ring_link(struct kvs_ring *r)
{
    assert(r->last_sqe != NULL);
    r->last_sqe->flags |= IOSQE_IO_LINK;
    r->in_chain = true;
}

int kvs_ring_watch(struct kvs_ring *r, kvs_ring_cb_fn cb, void *ctx)
{
    return slot_alloc(r, cb, ctx, SLOT_WATCH);
}

uint64_t kvs_ring_watch_tag(const struct kvs_ring *r, int op)
{
    return slot_tag(r, (uint32_t)op);
}

void kvs_ring_unwatch(struct kvs_ring *r, int op)
{
    if (op < 0 || (uint32_t)op >= r->nchunks * SLOT_CHUNK)
        return;
    if (slot_at(r, (uint32_t)op)->state == SLOT_WATCH)
        slot_release(r, (uint32_t)op);
}

int kvs_ring_msg(struct kvs_ring *r, int target_fd, uint64_t tag, int32_t value, kvs_ring_cb_fn cb,
                 void *ctx)
{
    struct io_uring_sqe *sqe;
    int idx = begin(r, cb, ctx, SLOT_ONESHOT, &sqe);

    if (idx < 0)
        return idx;
    /* The target ring sees a CQE with user_data = tag and res = value. */
    io_uring_prep_msg_ring(sqe, target_fd, (unsigned)value, tag, 0);
    return finish(r, sqe, idx);
}

int kvs_ring_buffer_add(struct kvs_ring *r, void *base, size_t len)
{
    struct iovec iov = {.iov_base = base, .iov_len = len};
    __u64 tag = 0;
    int ret;

    if (r->nfixed == 0)
        return -EOPNOTSUPP;
    for (unsigned i = 0; i < r->nfixed; i++) {
        if (r->fixed_used[i])
            continue;
        ret = io_uring_register_buffers_update_tag(&r->uring, i, &iov, &tag, 1);
        if (ret < 0)
            return ret;
        r->fixed_used[i] = true;
        return (int)i;
    }
    return -ENOSPC;
}

void kvs_ring_buffer_remove(struct kvs_ring *r, int buf_index)
{
    struct iovec iov = {.iov_base = NULL, .iov_len = 0};
    __u64 tag = 0;

    if (buf_index < 0 || (unsigned)buf_index >= r->nfixed || !r->fixed_used[buf_index])
        return;
    /* Unregistering an index in use by an in-flight op is safe: the kernel keeps its own
     * reference until that op completes. */
    (void)io_uring_register_buffers_update_tag(&r->uring, (unsigned)buf_index, &iov, &tag, 1);
    r->fixed_used[buf_index] = false;
}

int kvs_ring_bufring_new(struct kvs_ring *r, uint16_t bgid, unsigned nbufs, size_t bufsz,
                         struct kvs_bufring **out)
{
    struct io_uring_buf_reg reg;
    struct kvs_bufring *br = NULL;
    void *mem;
    int ret;

    if (nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1)) != 0 || bufsz == 0 ||
        bufsz > UINT32_MAX)
        return -EINVAL;
    br = calloc(1, sizeof(*br));
    if (br == NULL)
        return -ENOMEM;
    /* The ring itself must be page aligned: the kernel maps it. */
    br->br_bytes = nbufs * sizeof(struct io_uring_buf);
    mem = mmap(NULL, br->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        ret = -errno;
        goto err;
    }
    br->br = mem;
    br->bufs = malloc(nbufs * bufsz);
    if (br->bufs == NULL) {
        ret = -ENOMEM;
        goto err_unmap;
    }
    br->bufsz = bufsz;
    br->nbufs = nbufs;
    br->mask = io_uring_buf_ring_mask(nbufs);
    br->bgid = bgid;

    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)br->br;
    reg.ring_entries = nbufs;
    reg.bgid = bgid;
    ret = io_uring_register_buf_ring(&r->uring, &reg, 0);
    if (ret < 0)
        goto err_free;
    io_uring_buf_ring_init(br->br);
    for (unsigned i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(br->br, br->bufs + (size_t)i * bufsz, (unsigned)bufsz,
                              (unsigned short)i, br->mask, (int)i);
    io_uring_buf_ring_advance(br->br, (int)nbufs);
    *out = br;
    return 0;
err_free:
    free(br->bufs);
err_unmap:
    munmap(br->br, br->br_bytes);
err:
    free(br);
    return ret;
}

void kvs_ring_bufring_free(struct kvs_ring *r, struct kvs_bufring *br)
{
    if (br == NULL)
        return;
    (void)io_uring_unregister_buf_ring(&r->uring, br->bgid);
    munmap(br->br, br->br_bytes);
    free(br->bufs);
    free(br);
}

void *kvs_bufring_buf(const struct kvs_bufring *br, uint16_t bid)
{
    assert(bid < br->nbufs);
    return br->bufs + (size_t)bid * br->bufsz;
}

size_t kvs_bufring_bufsz(const struct kvs_bufring *br)
{
    return br->bufsz;
}

void kvs_bufring_recycle(struct kvs_bufring *br, uint16_t bid)
{
    assert(bid < br->nbufs);
    io_uring_buf_ring_add(br->br, kvs_bufring_buf(br, bid), (unsigned)br->bufsz, bid, br->mask, 0);
    io_uring_buf_ring_advance(br->br, 1);
}

int kvs_ring_submit(struct kvs_ring *r)
{
    return io_uring_submit(&r->uring);
}

/* Look up a completion's slot and run its callback, releasing the slot first when this is
 * the op's last completion (so the callback may reuse it). Stale tags are dropped. */
static void dispatch(struct kvs_ring *r, uint64_t ud, int res, uint32_t flags)
{
    uint32_t idx = (uint32_t)ud;
    uint32_t gen = (uint32_t)(ud >> 32);
    struct slot *s;
    kvs_ring_cb_fn cb;
    void *ctx;

    if (idx >= r->nchunks * SLOT_CHUNK)
        return;
    s = slot_at(r, idx);
    if (s->state == SLOT_FREE || s->gen != gen)
        return;
    cb = s->cb;
    ctx = s->ctx;
    if (s->state == SLOT_ONESHOT || (s->state == SLOT_MULTI && !(flags & IORING_CQE_F_MORE))) {
        slot_release(r, idx);
        r->inflight--;
    }
    if (cb != NULL)
        cb(ctx, res, flags);
}

/* Reap and dispatch what the CQ holds now, in batches copied out before the callbacks run so
 * that callbacks may prepare and submit freely. */
static int reap(struct kvs_ring *r)
{
    struct {
        uint64_t ud;
        int res;
        uint32_t flags;
    } batch[CQE_BATCH];
    int total = 0;

    while (total < RUN_MAX_CQES) {
        struct io_uring_cqe *cqe;
        unsigned head;
        unsigned n = 0;

        io_uring_for_each_cqe(&r->uring, head, cqe)
        {
            batch[n].ud = cqe->user_data;
            batch[n].res = cqe->res;
            batch[n].flags = cqe->flags;
            if (++n == CQE_BATCH)
                break;
        }
        if (n == 0)
            break;
        io_uring_cq_advance(&r->uring, n);
        for (unsigned i = 0; i < n; i++)
            dispatch(r, batch[i].ud, batch[i].res, batch[i].flags);
        total += (int)n;
    }
    return total;
}

int kvs_ring_run(struct kvs_ring *r, unsigned min_complete, uint64_t timeout_ns)
{
    int ret;
    int n;

    assert(!r->dispatching); /* callbacks must never drive the ring they run on */
    if (min_complete == 0) {
        /* Never block; with DEFER_TASKRUN completions are only posted when we enter the
         * kernel, so always enter it (submit_and_get_events) rather than just peeking. */
        ret = io_uring_submit_and_get_events(&r->uring);
    } else if (timeout_ns == 0) {
        ret = io_uring_submit_and_wait(&r->uring, min_complete);
    } else {
        struct __kernel_timespec ts = {
            .tv_sec = (long long)(timeout_ns / 1000000000ULL),
            .tv_nsec = (long long)(timeout_ns % 1000000000ULL),
        };
        struct io_uring_cqe *cqe = NULL;

        ret = io_uring_submit_and_wait_timeout(&r->uring, &cqe, min_complete, &ts, NULL);
    }
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
        return ret;
    r->dispatching = true;
    n = reap(r);
    r->dispatching = false;
    return n;
}

int kvs_ring_run_until(struct kvs_ring *r, const bool *done)
{
    while (!*done) {
        int ret;

        if (r->inflight == 0)
            return -EDEADLK; /* nothing can ever set *done: a caller bug, not a hang */
        ret = kvs_ring_run(r, 1, 0);
        if (ret < 0)
            return ret;
    }
    return 0;
}
