/* SPDX-License-Identifier: MIT */
/*
 * The engine object: open/close, options, the segment table, group-commit writes, reads, the
 * fsync policy and the synchronous wrappers. Recovery lives in recover.c, compaction in
 * compact.c. All log I/O goes through the ring executor (kvs/ring.h), and once open has
 * returned so do openat, unlink, close and the directory fsync: the engine runs inside a shard
 * loop, where a blocking syscall stalls every client. Plain syscalls are left at open and
 * close (and the rotation fallback in rotate_for_write). docs/design.md explains the choices.
 */
#include "kvs/engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvs/error.h"
#include "kvs/log.h"
#include "store.h"

#define FORMAT_NAME "KVS-FORMAT"
#define LOCK_NAME   "LOCK"
#define NS_PER_SEC  1000000000ULL

static const uint8_t empty_byte[1];

int kvs_engine_parse_fsync(const char *name, enum kvs_fsync *out)
{
    if (strcmp(name, "always") == 0)
        *out = KVS_FSYNC_ALWAYS;
    else if (strcmp(name, "everysec") == 0)
        *out = KVS_FSYNC_EVERYSEC;
    else if (strcmp(name, "never") == 0)
        *out = KVS_FSYNC_NEVER;
    else
        return -EINVAL;
    return 0;
}

const char *kvs_engine_fsync_name(enum kvs_fsync policy)
{
    switch (policy) {
    case KVS_FSYNC_ALWAYS:
        return "always";
    case KVS_FSYNC_EVERYSEC:
        return "everysec";
    case KVS_FSYNC_NEVER:
        return "never";
    }
    return "unknown";
}

void kvs_engine_options_init(struct kvs_engine_options *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->fsync = KVS_FSYNC_EVERYSEC;
    opt->segment_size = 64ULL << 20;
    opt->max_key = 64U << 10;
    opt->max_value = 512ULL << 20;
    opt->write_buffer = 1U << 20;
    opt->compact_min_dead = 64ULL << 20;
    opt->compact_dead_ratio = 0.5;
    opt->compact_step = 1U << 20;
    opt->salvage = false;
    opt->create = true;
    opt->ring = NULL;
}

/* errf - format an error message into the caller's errbuf (which may be NULL). */
static void errf(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errf(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    /* The analyzer loses track of va_start here (as in log.c); ap is initialised above. */
    if (errbuf != NULL && errlen > 0)
        // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized)
        vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

/* Offsets in the index are 32-bit, so a segment (which may pass segment_size by its last
 * record) must stay below 4 GiB; every other bound keeps buffers sane. */
static int check_options(const struct kvs_engine_options *o, char *errbuf, size_t errlen)
{
    if (o->fsync != KVS_FSYNC_NEVER && o->fsync != KVS_FSYNC_EVERYSEC &&
        o->fsync != KVS_FSYNC_ALWAYS) {
        errf(errbuf, errlen, "invalid fsync policy %d", (int)o->fsync);
        return -EINVAL;
    }
    if (o->max_key > RECORD_KEY_LIMIT) {
        errf(errbuf, errlen, "max_key %u is over the limit of %u bytes", o->max_key,
             RECORD_KEY_LIMIT);
        return -EINVAL;
    }
    if (o->max_value > RECORD_VAL_LIMIT) {
        errf(errbuf, errlen, "max_value %llu is over the limit of %u bytes",
             (unsigned long long)o->max_value, RECORD_VAL_LIMIT);
        return -EINVAL;
    }
    if (o->segment_size < 1024 ||
        o->segment_size + record_size(o->max_key, o->max_value) > UINT32_MAX) {
        errf(errbuf, errlen,
             "segment_size %llu invalid: need >= 1024 and segment_size + largest record "
             "(max_key + max_value + %d) < 4 GiB",
             (unsigned long long)o->segment_size, RECORD_HDR);
        return -EINVAL;
    }
    if (o->write_buffer < 4096 || o->write_buffer > (1U << 30)) {
        errf(errbuf, errlen, "write_buffer %u invalid: need 4 KiB .. 1 GiB", o->write_buffer);
        return -EINVAL;
    }
    if (o->compact_step < 4096 || o->compact_step > (1U << 30)) {
        errf(errbuf, errlen, "compact_step %u invalid: need 4 KiB .. 1 GiB", o->compact_step);
        return -EINVAL;
    }
    if (!(o->compact_dead_ratio >= 0.0 && o->compact_dead_ratio <= 1.0)) {
        errf(errbuf, errlen, "compact_dead_ratio %g invalid: need 0 .. 1", o->compact_dead_ratio);
        return -EINVAL;
    }
    return 0;
}

/* ---- segment table ---- */

void store_seg_name(char *buf, size_t len, uint32_t id, const char *ext)
{
    snprintf(buf, len, "%06u.%s", id, ext);
}

struct seg *store_seg_new(uint32_t id, int fd, uint64_t size)
{
    struct seg *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->id = id;
    s->fd = fd;
    s->size = size;
    s->min_seq = UINT64_MAX;
    return s;
}

/* Close and free a segment object (never its files on disk). e is NULL at engine_free, where
 * the fd is closed with a plain syscall. */
static void seg_free(struct kvs_engine *e, struct seg *s)
{
    if (s == NULL)
        return;
    if (s->fd >= 0 && e != NULL)
        store_close_fd(e, s->fd);
    else if (s->fd >= 0)
        close(s->fd);
    if (s->hint != NULL) {
        hint_fini(s->hint);
        free(s->hint);
    }
    free(s->bad);
    free(s);
}

/* Index of the first segment with an id >= id in the sorted table (binary search: the
 * table is consulted on every set to account the bytes of the replaced record). */
static size_t seg_lower(const struct kvs_engine *e, uint32_t id)
{
    size_t lo = 0, hi = e->nsegs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (e->segs[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct seg *store_seg_find(const struct kvs_engine *e, uint32_t id)
{
    size_t i = seg_lower(e, id);

    return i < e->nsegs && e->segs[i]->id == id ? e->segs[i] : NULL;
}

int store_seg_insert(struct kvs_engine *e, struct seg *s)
{
    size_t i;

    if (e->nsegs == e->capsegs) {
        size_t cap = e->capsegs ? e->capsegs * 2 : 16;
        struct seg **n = realloc(e->segs, cap * sizeof(struct seg *));

        if (n == NULL)
            return -ENOMEM;
        e->segs = n;
        e->capsegs = cap;
    }
    i = seg_lower(e, s->id);
    memmove(e->segs + i + 1, e->segs + i, (e->nsegs - i) * sizeof(struct seg *));
    e->segs[i] = s;
    e->nsegs++;
    if (s->id >= e->next_id)
        e->next_id = s->id + 1;
    return 0;
}

/* store_seg_remove - take s out of the table; its fd is closed now, or when the last
 * in-flight operation that uses it completes. */
void store_seg_remove(struct kvs_engine *e, struct seg *s)
{
    size_t i = seg_lower(e, s->id);

    if (i < e->nsegs && e->segs[i] == s) {
        memmove(e->segs + i, e->segs + i + 1, (e->nsegs - i - 1) * sizeof(struct seg *));
        e->nsegs--;
    }
    if (s->refs == 0) {
        seg_free(e, s);
        return;
    }
    s->next_doomed = e->doomed;
    e->doomed = s;
}

void store_seg_unref(struct kvs_engine *e, struct seg *s)
{
    struct seg **pp;

    s->refs--;
    if (s->refs > 0)
        return;
    for (pp = &e->doomed; *pp != NULL; pp = &(*pp)->next_doomed) {
        if (*pp == s) {
            *pp = s->next_doomed;
            seg_free(e, s);
            return;
        }
    }
}

void store_fail(struct kvs_engine *e, int err, const char *what)
{
    if (e->failed)
        return;
    e->failed = true;
    KVS_ERROR("engine %s: %s failed: %s; the store is now read-only", e->dir, what,
              kvs_strerror(err));
}

void store_fsync_dir(struct kvs_engine *e)
{
    /* Directory entries (new, renamed, unlinked files) are only durable after an fsync of the
     * directory. A plain syscall at open only; once the engine serves, the directory is
     * synced on the ring (compact.c, sync_start). */
    if (fsync(e->dirfd) != 0)
        KVS_WARN("engine %s: fsync of the directory failed: %s", e->dir, strerror(errno));
}

/* ---- fire-and-forget file-system ops on the ring ---- */

/* A close or unlink issued on the ring; the name must outlive the op, so it lives here. */
struct fs_op {
    struct kvs_engine *e;
    bool unlink;
    char name[32];
};

/* Completion of a background close or unlink: only failures worth knowing are logged. */
static void fs_op_cb(void *ctx, int res, uint32_t flags)
{
    struct fs_op *op = ctx;

    (void)flags;
    op->e->inflight--;
    if (op->unlink && res < 0 && res != -ENOENT)
        KVS_WARN("engine %s: unlink of %s failed: %s", op->e->dir, op->name, kvs_strerror(res));
    free(op);
}

/* Whether file-system work must go through the ring (the engine serves a loop). */
static bool use_ring(const struct kvs_engine *e)
{
    return e->ready && !e->closing && e->ring != NULL;
}

void store_close_fd(struct kvs_engine *e, int fd)
{
    struct fs_op *op;

    if (fd < 0)
        return;
    /* The last close of an unlinked file frees its blocks: on the ring that is not the
     * loop's time. Out of memory or slots, a plain close is the only way left. */
    op = use_ring(e) ? calloc(1, sizeof(*op)) : NULL;
    if (op != NULL) {
        op->e = e;
        if (kvs_ring_close(e->ring, fd, fs_op_cb, op) >= 0) {
            e->inflight++;
            return;
        }
        free(op);
    }
    close(fd);
}

void store_unlink(struct kvs_engine *e, const char *name)
{
    struct fs_op *op = use_ring(e) ? calloc(1, sizeof(*op)) : NULL;

    if (op != NULL) {
        op->e = e;
        op->unlink = true;
        snprintf(op->name, sizeof(op->name), "%s", name);
        if (kvs_ring_unlinkat(e->ring, e->dirfd, op->name, fs_op_cb, op) >= 0) {
            e->inflight++;
            return;
        }
        free(op);
    }
    (void)unlinkat(e->dirfd, name, 0);
}

/* ---- synchronous helpers over the ring ---- */

struct sync_io {
    bool done;
    int res;
};

/* Completion of a synchronous helper read: record the result and stop run_until. */
static void sync_io_cb(void *ctx, int res, uint32_t flags)
{
    struct sync_io *s = ctx;

    (void)flags;
    s->res = res;
    s->done = true;
}

/* store_ring_pread - read up to len bytes at off through the ring, waiting for them. Returns
 * the bytes read (less than len only at end of file) or -errno. Setup time only. */
int store_ring_pread(struct kvs_engine *e, int fd, void *buf, size_t len, uint64_t off)
{
    size_t got = 0;

    while (got < len) {
        struct sync_io s = {false, 0};
        size_t n = len - got > (1U << 30) ? (1U << 30) : len - got;
        int rc = kvs_ring_read(e->ring, fd, (uint8_t *)buf + got, n, off + got, sync_io_cb, &s);

        if (rc < 0)
            return rc;
        rc = kvs_ring_run_until(e->ring, &s.done);
        if (rc < 0)
            return rc;
        if (s.res < 0)
            return s.res;
        if (s.res == 0)
            break;
        got += (size_t)s.res;
    }
    return (int)got;
}

/* ---- background syncs and hint files ---- */

struct sync_op {
    struct kvs_engine *e;
    struct seg *seg; /* NULL for the directory */
};

/* A background fdatasync (everysec timer, close) finished. A failure means durability of
 * already acknowledged writes is unknown: the engine fails, it does not retry. */
static void sync_op_cb(void *ctx, int res, uint32_t flags)
{
    struct sync_op *op = ctx;
    struct kvs_engine *e = op->e;

    (void)flags;
    e->inflight--;
    if (op->seg != NULL) {
        e->syncing = false;
        store_seg_unref(e, op->seg);
    }
    if (res < 0)
        store_fail(e, res, "fdatasync");
    else
        e->st.fsyncs++;
    free(op);
}

/* Queue an fdatasync of s (or of the directory when s is NULL). */
static int sync_start(struct kvs_engine *e, struct seg *s)
{
    struct sync_op *op = malloc(sizeof(*op));
    int rc;

    if (op == NULL)
        return -ENOMEM;
    op->e = e;
    op->seg = s;
    rc = kvs_ring_fsync(e->ring, s != NULL ? s->fd : e->dirfd, s != NULL, sync_op_cb, op);
    if (rc < 0) {
        free(op);
        return rc;
    }
    e->inflight++;
    if (s != NULL) {
        s->refs++;
        s->unsynced = false;
        e->syncing = true;
    }
    return 0;
}

static void arm_timer(struct kvs_engine *e);

/* The everysec timer fired (or was cancelled by close). */
static void timer_cb(void *ctx, int res, uint32_t flags)
{
    struct kvs_engine *e = ctx;

    (void)res;
    (void)flags;
    e->timer_armed = false;
    if (e->closing || e->failed)
        return;
    /* everysec: one fdatasync per second at most, and only when something was written. */
    if (e->dirty && !e->syncing) {
        e->dirty = false;
        if (sync_start(e, e->active) < 0)
            store_fail(e, -ENOMEM, "fdatasync");
    }
    if (e->dir_dirty) {
        e->dir_dirty = false;
        if (sync_start(e, NULL) < 0)
            store_fail(e, -ENOMEM, "directory fsync");
    }
    /* A sync was still running: look again in a second rather than wait for the next write. */
    if (e->dirty)
        arm_timer(e);
}

/* Arm the everysec timer unless armed: only after a write, so an idle engine leaves nothing
 * pending in the ring and synchronous callers are never kept waiting by it. */
static void arm_timer(struct kvs_engine *e)
{
    int op;

    if (e->timer_armed || e->closing || e->opt.fsync != KVS_FSYNC_EVERYSEC)
        return;
    op = kvs_ring_timeout(e->ring, NS_PER_SEC, timer_cb, e);
    if (op < 0) {
        KVS_WARN("engine %s: cannot arm the everysec timer: %s", e->dir, kvs_strerror(op));
        return;
    }
    e->timer_op = op;
    e->timer_armed = true;
}

struct hint_op {
    struct kvs_engine *e;
    struct seg *seg;
    struct hint_buf *hb;
    int fd, pending, sres, wres;
    char name[32]; /* NNNNNN.hint: read by the ring's openat until its completion */
};

/* Every completion of a rotation hint (open, segment sync, hint write) is in. kick: let a
 * compaction waiting for quiet segments begin (not when called from store_write_hint itself,
 * which runs inside rotation and batch completion). */
static void hint_op_done(struct hint_op *op, bool kick)
{
    struct kvs_engine *e = op->e;
    struct seg *s = op->seg;

    store_close_fd(e, op->fd);
    if (op->sres < 0)
        store_fail(e, op->sres, "fdatasync of a finished segment");
    if (op->wres < 0 || (size_t)op->wres != op->hb->len) {
        /* The hint is only an accelerator: without it recovery scans the segment. */
        if (op->sres >= 0)
            KVS_WARN("engine %s: writing %s failed (%s); recovery will scan the segment", e->dir,
                     op->name, op->wres < 0 ? kvs_strerror(op->wres) : "short write");
        if (op->fd >= 0)
            store_unlink(e, op->name);
    } else {
        s->has_hint = true;
    }
    hint_fini(op->hb);
    free(op->hb);
    s->hint_busy = false;
    e->inflight--;
    store_seg_unref(e, s);
    free(op);
    if (kick)
        compact_kick(e);
}

/* The fdatasync of the finished segment that precedes its hint. */
static void hint_sync_cb(void *ctx, int res, uint32_t flags)
{
    struct hint_op *op = ctx;

    (void)flags;
    op->sres = res;
    if (res >= 0)
        op->e->st.fsyncs++;
    if (--op->pending == 0)
        hint_op_done(op, true);
}

/* The write of the hint file itself (cancelled if the sync before it failed). */
static void hint_write_cb(void *ctx, int res, uint32_t flags)
{
    struct hint_op *op = ctx;

    (void)flags;
    op->wres = res;
    if (--op->pending == 0)
        hint_op_done(op, true);
}

/* The hint file is open (op->fd): fdatasync the segment (unless the policy is never) linked to
 * the write of the hint. Returns false when nothing could be queued (op->wres says why). */
static bool hint_io(struct hint_op *op)
{
    struct kvs_engine *e = op->e;
    struct seg *s = op->seg;
    int rc;

    if (e->opt.fsync != KVS_FSYNC_NEVER) {
        /* The hint must never describe bytes that are not durable: sync the segment first,
         * always (an fdatasync already started, e.g. a presync, may not cover the last
         * batch; one that finds nothing to flush is cheap). */
        rc = kvs_ring_fsync(e->ring, s->fd, true, hint_sync_cb, op);
        if (rc < 0) {
            op->wres = rc;
            return false;
        }
        op->pending++;
        s->unsynced = false;
        kvs_ring_link(e->ring);
    }
    rc = kvs_ring_write(e->ring, op->fd, op->hb->data, op->hb->len, 0, hint_write_cb, op);
    if (rc < 0)
        op->wres = rc; /* a linked sync that is queued finishes the op when it completes */
    else
        op->pending++;
    return op->pending > 0;
}

/* The hint file's openat on the ring completed. */
static void hint_open_cb(void *ctx, int res, uint32_t flags)
{
    struct hint_op *op = ctx;

    (void)flags;
    if (res < 0) {
        op->wres = res;
        hint_op_done(op, true);
        return;
    }
    op->fd = res;
    if (!hint_io(op))
        hint_op_done(op, true);
}

/*
 * store_write_hint - s was rotated out and all its writes are done: create its hint file (on
 * the ring once the engine serves), then fdatasync s (unless the policy is never) linked to
 * the write of the hint, built while its records were appended. Takes ownership of s->hint.
 * Returns 0 (failures after this point are logged, the segment just has no hint), or a
 * negative error after dropping the hint.
 */
int store_write_hint(struct kvs_engine *e, struct seg *s)
{
    struct hint_op *op = NULL;
    struct hint_buf *hb = s->hint;
    int rc, fd;

    s->hint = NULL;
    if (hb == NULL)
        return 0;
    if (e->failed) {
        /* After a failed write or sync the segment's bytes are of unknown durability: a hint
         * would let the next open trust them without a checksum scan. */
        hint_fini(hb);
        free(hb);
        return KVS_EFAILED;
    }
    rc = hint_finish(hb, s->id, s->size);
    if (rc < 0)
        goto err;
    op = calloc(1, sizeof(*op));
    if (op == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    op->e = e;
    op->seg = s;
    op->hb = hb;
    op->fd = -1;
    store_seg_name(op->name, sizeof(op->name), s->id, "hint");
    s->refs++;
    s->hint_busy = true;
    e->inflight++;
    if (use_ring(e)) {
        rc = kvs_ring_openat(e->ring, e->dirfd, op->name, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC,
                             0644, hint_open_cb, op);
        if (rc >= 0)
            return 0;
        op->wres = rc;
        hint_op_done(op, false);
        return rc;
    }
    /* During open (hints rewritten by recovery) a plain openat is fine. */
    fd = openat(e->dirfd, op->name, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        op->wres = rc;
        hint_op_done(op, false);
        return rc;
    }
    op->fd = fd;
    if (!hint_io(op)) {
        rc = op->wres;
        hint_op_done(op, false);
        return rc;
    }
    return 0;
err:
    KVS_WARN("engine %s: cannot write the hint of segment %u: %s", e->dir, s->id, kvs_strerror(rc));
    free(op);
    hint_fini(hb);
    free(hb);
    return rc;
}

/* ---- group commit ---- */

/*
 * presync - everysec: s just got a batch. In the last eighth of the active segment keep one
 * background fdatasync of it running (a new one as soon as the previous one is done) instead
 * of one per second. The first batch of the next segment waits for s to be synced (see
 * chunk_submit()); this way that sync finds only the last few milliseconds of writes instead
 * of up to a second of them, and SETs arriving at a rotation are not held for a long flush.
 */
static void presync(struct kvs_engine *e, struct seg *s)
{
    if (s != e->active || e->syncing || e->closing || !s->unsynced ||
        s->size < e->opt.segment_size - e->opt.segment_size / 8)
        return;
    if (sync_start(e, s) == 0) {
        e->dirty = false;
        e->st.presyncs++;
    }
}

/* Give a finished chunk's buffer back and, when it was the last write of a rotated
 * segment, write that segment's hint now that every byte it describes is on disk. */
static void chunk_release(struct kvs_engine *e, struct chunk *c)
{
    struct seg *s = c->seg;

    if (c->wb != NULL)
        c->wb->busy = false;
    else
        free(c->data);
    free(c->w);
    free(c);
    s->pending--;
    if (s != e->active && s->pending == 0 && s->hint != NULL)
        (void)store_write_hint(e, s);
}

/* Unlink the head chunk c from the write queue. */
static void chunk_pop(struct kvs_engine *e, struct chunk *c)
{
    e->chead = c->next;
    if (e->chead == NULL)
        e->ctail = NULL;
}

/* Complete every set/remove/clear of the batch with res. */
static void chunk_fire(struct chunk *c, int res)
{
    for (size_t i = 0; i < c->nw; i++)
        if (c->w[i].done != NULL)
            c->w[i].done(c->w[i].ctx, res, NULL, 0);
}

static void chunk_submit(struct kvs_engine *e, struct chunk *c);

/* All completions of one batch are in: decide, fire the batch's callbacks, start the next. */
static void chunk_finish(struct kvs_engine *e, struct chunk *c)
{
    int res = 0;

    if (c->pseg != NULL && c->pres < 0) {
        res = c->pres; /* the write behind it was cancelled */
        store_fail(e, res, "fdatasync of the previous segment");
    } else if (c->wres < 0) {
        res = c->wres;
        store_fail(e, res, "write");
    } else {
        c->written += (size_t)c->wres;
        if (c->written < c->len) {
            if (c->wres == 0) {
                res = -EIO;
                store_fail(e, res, "write");
            } else {
                /* A short write: the linked sync was cancelled; write the rest. */
                chunk_submit(e, c);
                return;
            }
        } else if (c->sync && c->sres < 0) {
            res = c->sres;
            store_fail(e, res, "fdatasync");
        } else if (c->dsync && c->dres < 0) {
            res = c->dres;
            store_fail(e, res, "directory fsync");
        }
    }
    if (res == 0) {
        if (c->dsync)
            c->seg->dirsync = false; /* only once the directory sync really happened */
        e->st.batches++;
        e->st.batched_records += c->nrec;
        if (c->sync)
            e->st.fsyncs++;
        else
            c->seg->unsynced = true;
        if (c->pseg != NULL)
            e->st.fsyncs++;
        if (!c->sync && e->opt.fsync == KVS_FSYNC_EVERYSEC) {
            e->dirty = true;
            arm_timer(e);
            presync(e, c->seg);
        }
    }
    e->writing = false;
    if (c->pseg != NULL) {
        store_seg_unref(e, c->pseg);
        c->pseg = NULL;
    }
    chunk_pop(e, c);
    chunk_fire(c, res);
    chunk_release(e, c);
    if (e->failed) {
        /* Nothing queued behind a failed write may reach the disk: it would leave a hole. */
        while (e->chead != NULL && !e->writing) {
            struct chunk *n = e->chead;

            chunk_pop(e, n);
            chunk_fire(n, KVS_EFAILED);
            chunk_release(e, n);
        }
        compact_kick(e);
        return;
    }
    /* Sets that arrived during the write go out at once: natural group commit. */
    kvs_engine_flush(e);
    compact_maybe(e);
    compact_kick(e);
}

/* The three completions of a batch: write, linked fdatasync, linked directory fsync. Each
 * records its result; the last one to arrive decides (CQE order is not relied upon). */
static void chunk_write_cb(void *ctx, int res, uint32_t flags)
{
    struct chunk *c = ctx;

    (void)flags;
    c->wres = res;
    if (--c->pending == 0)
        chunk_finish(c->e, c);
}

static void chunk_sync_cb(void *ctx, int res, uint32_t flags)
{
    struct chunk *c = ctx;

    (void)flags;
    c->sres = res;
    if (--c->pending == 0)
        chunk_finish(c->e, c);
}

static void chunk_psync_cb(void *ctx, int res, uint32_t flags)
{
    struct chunk *c = ctx;

    (void)flags;
    c->pres = res;
    if (--c->pending == 0)
        chunk_finish(c->e, c);
}

static void chunk_dsync_cb(void *ctx, int res, uint32_t flags)
{
    struct chunk *c = ctx;

    (void)flags;
    c->dres = res;
    if (--c->pending == 0)
        chunk_finish(c->e, c);
}

/*
 * Write (the rest of) chunk c at its place in its segment: WRITE_FIXED out of a registered
 * buffer (a plain write for a heap chunk), under fsync=always linked to an fdatasync, and for
 * the first batch of a new segment also to an fsync of the directory that names it.
 */
static void chunk_submit(struct kvs_engine *e, struct chunk *c)
{
    size_t n = c->len - c->written;
    const uint8_t *p = c->data + c->written;
    uint64_t off = c->off + c->written;
    int rc;

    c->sealed = true;
    c->pending = 0;
    c->wres = c->sres = c->dres = 0;
    c->sync = e->opt.fsync == KVS_FSYNC_ALWAYS;
    c->dsync = c->sync && c->seg->dirsync;
    if (c->seg->prev != NULL) {
        struct seg *ps = c->seg->prev;

        /* The first batch of a segment starts only once the previous segment is durable, so
         * a crash can tear only the newest segment that has data (docs/design.md). */
        c->seg->prev = NULL;
        rc = kvs_ring_fsync(e->ring, ps->fd, true, chunk_psync_cb, c);
        if (rc < 0) {
            store_seg_unref(e, ps);
            goto err;
        }
        ps->unsynced = false;
        c->pseg = ps;
        c->pending++;
        kvs_ring_link(e->ring);
    }
    if (c->buf_index >= 0)
        rc = kvs_ring_write_fixed(e->ring, c->seg->fd, p, n, off, c->buf_index, chunk_write_cb, c);
    else
        rc = kvs_ring_write(e->ring, c->seg->fd, p, n, off, chunk_write_cb, c);
    if (rc < 0) {
        if (c->pending > 0) {
            c->wres = rc; /* the linked sync is queued: finish when it completes */
            e->writing = true;
            return;
        }
        goto err;
    }
    c->pending++;
    e->writing = true;
    if (c->sync) {
        kvs_ring_link(e->ring);
        rc = kvs_ring_fsync(e->ring, c->seg->fd, true, chunk_sync_cb, c);
        if (rc < 0) {
            c->sres = rc;
            return;
        }
        c->pending++;
    }
    if (c->dsync) {
        kvs_ring_link(e->ring);
        rc = kvs_ring_fsync(e->ring, e->dirfd, false, chunk_dsync_cb, c);
        if (rc < 0) {
            c->dres = rc;
            return;
        }
        c->pending++;
    }
    return;
err:
    c->wres = rc;
    chunk_finish(e, c);
}

void kvs_engine_flush(struct kvs_engine *e)
{
    struct chunk *c;

    if (e->writing)
        return;
    /* Drop empty chunks (a set that failed after its chunk was made leaves one). */
    while ((c = e->chead) != NULL && c->len == 0 && (c->sealed || c != e->ctail)) {
        chunk_pop(e, c);
        chunk_release(e, c);
    }
    if (c == NULL || c->len == 0)
        return;
    /* One batch in flight at a time keeps the file append-ordered and the logic simple. */
    chunk_submit(e, c);
}

/* The chunk a record of size bytes goes into: the open tail chunk if it has room, else a new
 * one (a free registered buffer, a heap buffer, or for an oversized record its own copy). */
static struct chunk *chunk_for(struct kvs_engine *e, size_t size)
{
    struct chunk *c = e->ctail;

    if (c != NULL && !c->sealed && c->seg == e->active && c->len + size <= c->cap)
        return c;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->e = e;
    c->seg = e->active;
    c->off = e->active->size;
    c->buf_index = -1;
    if (size <= e->opt.write_buffer) {
        for (int i = 0; i < 2; i++) {
            struct wbuf *wb = &e->wbufs[i];

            if (!wb->busy && wb->mem != NULL) {
                wb->busy = true;
                c->wb = wb;
                c->data = wb->mem;
                c->cap = wb->cap;
                c->buf_index = wb->index;
                break;
            }
        }
    }
    if (c->data == NULL) {
        c->cap = size > e->opt.write_buffer ? size : e->opt.write_buffer;
        c->data = malloc(c->cap);
        if (c->data == NULL) {
            free(c);
            return NULL;
        }
    }
    if (e->ctail != NULL)
        e->ctail->sealed = true;
    if (e->ctail != NULL)
        e->ctail->next = c;
    else
        e->chead = c;
    e->ctail = c;
    e->active->pending++;
    return c;
}

/* The spare segment's openat completed. A failure fails the engine: the write path has nowhere
 * to go once the active segment is full, and a file system refusing to create a file is not
 * something to paper over. */
static void spare_cb(void *ctx, int res, uint32_t flags)
{
    struct kvs_engine *e = ctx;

    (void)flags;
    e->inflight--;
    e->spare_opening = false;
    if (res < 0)
        store_fail(e, res, "creating the next segment");
    else
        e->spare_fd = res;
    /* A compaction may be waiting for this segment to rotate into. */
    compact_kick(e);
}

int store_spare_request(struct kvs_engine *e)
{
    int rc;

    if (e->spare_fd >= 0 || e->spare_opening || e->failed || e->closing)
        return 0;
    e->spare_id = e->next_id;
    store_seg_name(e->spare_name, sizeof(e->spare_name), e->spare_id, "seg");
    rc = kvs_ring_openat(e->ring, e->dirfd, e->spare_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC,
                         0644, spare_cb, e);
    if (rc < 0)
        return rc;
    /* The id is taken now: compaction outputs created meanwhile get the next ones. */
    e->next_id++;
    e->spare_opening = true;
    e->inflight++;
    return 0;
}

/* Create segment id with a plain openat: during open, and the last resort of a writer that
 * cannot overrun the full active segment any further while the spare is still opening. */
static int create_seg_sync(struct kvs_engine *e, uint32_t *id)
{
    char name[32];
    int fd;

    *id = e->next_id;
    store_seg_name(name, sizeof(name), *id, "seg");
    fd = openat(e->dirfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) {
        fd = -errno;
        KVS_ERROR("engine %s: cannot create segment %s: %s", e->dir, name, strerror(-fd));
        return fd;
    }
    e->next_id++;
    return fd;
}

/* Make an active segment of file fd (id); the old active segment becomes immutable. */
static int rotate_to(struct kvs_engine *e, int fd, uint32_t id)
{
    struct hint_buf *hb = NULL;
    struct seg *s = NULL, *old = e->active;
    int rc;

    hb = malloc(sizeof(*hb));
    s = store_seg_new(id, fd, 0);
    if (hb == NULL || s == NULL || store_seg_insert(e, s) < 0) {
        free(hb);
        free(s);
        return -ENOMEM;
    }
    /* The rotated segment keeps the hint entries built while it was active. */
    *hb = e->ahint;
    rc = hint_init(&e->ahint);
    if (rc < 0) {
        e->ahint = *hb;
        s->fd = -1; /* the caller still owns fd */
        store_seg_remove(e, s);
        free(hb);
        return rc;
    }
    s->dirsync = true;
    e->dir_dirty = true;
    if (old != NULL) {
        old->hint = hb;
        if (e->ctail != NULL && e->ctail->seg == old)
            e->ctail->sealed = true;
    } else {
        hint_fini(hb);
        free(hb);
    }
    e->active = s;
    /* everysec: sync the old segment before the new one gets data (under always every batch
     * is synced already; under never nothing is promised). */
    if (old != NULL && e->opt.fsync == KVS_FSYNC_EVERYSEC) {
        s->prev = old;
        old->refs++;
    }
    if (old != NULL && old->pending == 0)
        (void)store_write_hint(e, old);
    return 0;
}

int store_rotate(struct kvs_engine *e)
{
    char name[32];
    uint32_t id;
    int fd, rc;

    if (e->spare_fd >= 0) {
        /* The usual case once the engine serves: the file was created on the ring already. */
        rc = rotate_to(e, e->spare_fd, e->spare_id);
        if (rc == 0)
            e->spare_fd = -1;
        return rc;
    }
    if (e->ready) {
        rc = store_spare_request(e);
        if (rc < 0)
            return rc;
        return e->failed ? KVS_EFAILED : -EAGAIN;
    }
    fd = create_seg_sync(e, &id);
    if (fd < 0)
        return fd;
    rc = rotate_to(e, fd, id);
    if (rc < 0) {
        close(fd);
        store_seg_name(name, sizeof(name), id, "seg");
        (void)unlinkat(e->dirfd, name, 0);
    }
    return rc;
}

/* The active segment is full: rotate. While the spare segment is still being created on the
 * ring, records keep going to the full segment, up to the largest record past segment_size
 * (the bound check_options keeps below 4 GiB); only past that does the writer create the
 * segment itself, with a plain openat. Returns 0 or -errno. */
static int rotate_for_write(struct kvs_engine *e, uint64_t size)
{
    uint64_t bound = e->opt.segment_size + record_size(e->opt.max_key, e->opt.max_value);
    uint32_t id;
    int rc = store_rotate(e), fd;

    if (rc != -EAGAIN)
        return rc;
    if (e->active->size + size <= bound)
        return 0;
    KVS_DEBUG("engine %s: next segment not open yet; creating it synchronously", e->dir);
    fd = create_seg_sync(e, &id);
    if (fd < 0)
        return fd;
    rc = rotate_to(e, fd, id);
    if (rc < 0)
        close(fd);
    return rc;
}

/*
 * Append one record to the write queue and update the index. Returns 0 (done is then called
 * once the batch holding the record is durable per the policy) or a negative error with
 * nothing changed. *had/ *old report the previous location of key.
 */
static int queue_record(struct kvs_engine *e, uint8_t flags, const void *key, uint32_t klen,
                        const void *val, uint32_t vlen, kvs_engine_done_fn done, void *ctx)
{
    uint64_t size = record_size(klen, vlen);
    uint64_t hash = XXH3_64bits(key, klen);
    struct index_loc loc, old;
    struct seg *os;
    struct chunk *c;
    bool had = false;
    size_t hlen;
    int rc;

    if (e->active->size > 0 && e->active->size >= e->opt.segment_size) {
        rc = rotate_for_write(e, size);
        if (rc < 0)
            return rc;
        compact_maybe(e);
    }
    c = chunk_for(e, (size_t)size);
    if (c == NULL)
        return -ENOMEM;
    if (c->nw == c->capw) {
        size_t cap = c->capw ? c->capw * 2 : 16;
        struct waiter *w = realloc(c->w, cap * sizeof(*w));

        if (w == NULL)
            return -ENOMEM;
        c->w = w;
        c->capw = cap;
    }
    loc.seg = e->active->id;
    loc.off = (uint32_t)e->active->size;
    loc.vlen = vlen;
    loc.seq = e->next_seq;
    hlen = e->ahint.len;
    rc = hint_add(&e->ahint, loc.seq, loc.off, klen, vlen, flags, key);
    if (rc < 0)
        return rc;
    /* The index changes before the bytes are written: a get right after a set sees the new
     * value, served from the chunk until the write completes. */
    if (flags == 0) {
        rc = index_put(e->ix, hash, key, klen, &loc, &old, &had);
        if (rc < 0) {
            e->ahint.len = hlen;
            e->ahint.count--;
            return rc;
        }
        e->active->live += size;
    } else if (flags == RECORD_F_TOMB) {
        had = index_del(e->ix, hash, key, klen, &old);
    } else {
        index_clear(e->ix);
        for (size_t i = 0; i < e->nsegs; i++)
            e->segs[i]->live = 0;
    }
    if (had) {
        os = store_seg_find(e, old.seg);
        if (os != NULL)
            os->live -= record_size(klen, old.vlen);
    }
    record_encode(c->data + c->len, loc.seq, flags, key, klen, val, vlen);
    c->len += (size_t)size;
    c->nrec++;
    c->w[c->nw].done = done;
    c->w[c->nw].ctx = ctx;
    c->nw++;
    if (c->len == c->cap || size > e->opt.write_buffer)
        c->sealed = true;
    if (e->active->min_seq == UINT64_MAX)
        e->active->min_seq = loc.seq;
    e->active->size += size;
    e->next_seq++;
    /* Past half of the segment, create the next one on the ring, so that rotation finds it
     * open and the write path never waits for the file system (docs/design.md, "Rotation"). */
    if (e->active->size >= e->opt.segment_size / 2)
        (void)store_spare_request(e);
    return 0;
}

/* ---- asynchronous API ---- */

/* A done callback may be NULL for writes whose outcome the caller does not need. */
static void call_done(kvs_engine_done_fn done, void *ctx, int res, const void *val, size_t vlen)
{
    if (done != NULL)
        done(ctx, res, val, vlen);
}

/* Checks shared by the write operations. Returns 0 to go on, 1 when done was already called
 * with the outcome (limit, failed store), or KVS_ECLOSED (done not called). */
static int check_op(struct kvs_engine *e, size_t klen, size_t vlen, kvs_engine_done_fn done,
                    void *ctx)
{
    if (e->closing)
        return KVS_ECLOSED;
    if (klen > e->opt.max_key) {
        KVS_DEBUG("engine %s: key of %zu bytes is over max_key %u", e->dir, klen, e->opt.max_key);
        call_done(done, ctx, KVS_ETOOBIG, NULL, 0);
        return 1;
    }
    if (vlen > e->opt.max_value) {
        KVS_DEBUG("engine %s: value of %zu bytes is over max_value %llu", e->dir, vlen,
                  (unsigned long long)e->opt.max_value);
        call_done(done, ctx, KVS_ETOOBIG, NULL, 0);
        return 1;
    }
    if (e->failed) {
        call_done(done, ctx, KVS_EFAILED, NULL, 0);
        return 1;
    }
    return 0;
}

int kvs_engine_set_async(struct kvs_engine *e, const void *key, size_t klen, const void *val,
                         size_t vlen, kvs_engine_done_fn done, void *ctx)
{
    int rc = check_op(e, klen, vlen, done, ctx);

    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (key == NULL)
        key = empty_byte;
    if (val == NULL)
        val = empty_byte;
    rc = queue_record(e, 0, key, (uint32_t)klen, val, (uint32_t)vlen, done, ctx);
    if (rc < 0)
        return rc;
    e->st.sets++;
    return 0;
}

int kvs_engine_remove_async(struct kvs_engine *e, const void *key, size_t klen,
                            kvs_engine_done_fn done, void *ctx)
{
    struct index_loc loc;
    int rc = check_op(e, klen, 0, done, ctx);

    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (key == NULL)
        key = empty_byte;
    if (!index_get(e->ix, XXH3_64bits(key, klen), key, klen, &loc)) {
        call_done(done, ctx, KVS_ENOTFOUND, NULL, 0);
        return 0;
    }
    rc = queue_record(e, RECORD_F_TOMB, key, (uint32_t)klen, NULL, 0, done, ctx);
    if (rc < 0)
        return rc;
    e->st.removes++;
    return 0;
}

int kvs_engine_clear_async(struct kvs_engine *e, kvs_engine_done_fn done, void *ctx)
{
    int rc = check_op(e, 0, 0, done, ctx);

    if (rc != 0)
        return rc < 0 ? rc : 0;
    return queue_record(e, RECORD_F_CLEAR, empty_byte, 0, NULL, 0, done, ctx);
}

struct get_op {
    struct kvs_engine *e;
    struct seg *seg;
    uint8_t *buf;
    size_t len, got;
    uint64_t off;
    kvs_engine_done_fn done;
    void *ctx;
    bool borrowed; /* buf is the engine's getbuf (synchronous get) */
};

/* Grow the engine-owned buffer that synchronous gets return views into. */
static int ensure_getbuf(struct kvs_engine *e, size_t n)
{
    uint8_t *p;

    if (n <= e->getcap && e->getbuf != NULL)
        return 0;
    p = realloc(e->getbuf, n > 64 ? n : 64);
    if (p == NULL)
        return -ENOMEM;
    e->getbuf = p;
    e->getcap = n > 64 ? n : 64;
    return 0;
}

/* Completion of a value read; loops on short reads, then completes the get. */
static void get_cb(void *ctx, int res, uint32_t flags)
{
    struct get_op *op = ctx;
    struct kvs_engine *e = op->e;
    int rc;

    (void)flags;
    if (res > 0) {
        op->got += (size_t)res;
        if (op->got < op->len) {
            /* Short read (rare on regular files): ask for the rest. */
            rc = kvs_ring_read(e->ring, op->seg->fd, op->buf + op->got, op->len - op->got,
                               op->off + op->got, get_cb, op);
            if (rc >= 0)
                return;
            res = rc;
        }
    } else if (res == 0) {
        /* The index points past the end of the file: a record whose write failed (visible
         * until reopen, see store_fail), else damage. */
        res = e->failed ? KVS_EFAILED : KVS_ECORRUPT;
    }
    e->inflight--;
    store_seg_unref(e, op->seg);
    op->done(op->ctx, res < 0 ? res : 0, res < 0 ? NULL : op->buf, res < 0 ? 0 : op->len);
    if (!op->borrowed)
        free(op->buf);
    free(op);
}

/* The value bytes at (s, off) if they are still in a queued chunk, else NULL. */
static const uint8_t *chunk_lookup(const struct kvs_engine *e, const struct seg *s, uint64_t off,
                                   size_t len)
{
    for (const struct chunk *c = e->chead; c != NULL; c = c->next)
        if (c->seg == s && off >= c->off && off + len <= c->off + c->len)
            return c->data + (off - c->off);
    return NULL;
}

/* The get path shared by both APIs. sync: read into getbuf, whose view outlives the
 * callback until the next engine call; async: a private buffer freed after the callback. */
static int get_start(struct kvs_engine *e, const void *key, size_t klen, kvs_engine_done_fn done,
                     void *ctx, bool sync)
{
    struct index_loc loc;
    struct get_op *op;
    const uint8_t *mem;
    struct seg *s;
    uint64_t voff;
    int rc;

    if (done == NULL)
        return -EINVAL;
    if (e->closing)
        return KVS_ECLOSED;
    if (klen > e->opt.max_key) {
        call_done(done, ctx, KVS_ETOOBIG, NULL, 0);
        return 0;
    }
    if (key == NULL)
        key = empty_byte;
    e->st.gets++;
    if (!index_get(e->ix, XXH3_64bits(key, klen), key, klen, &loc)) {
        call_done(done, ctx, KVS_ENOTFOUND, NULL, 0);
        return 0;
    }
    s = store_seg_find(e, loc.seg);
    if (s == NULL)
        kvs_panic("engine %s: index points at missing segment %u", e->dir, loc.seg);
    voff = (uint64_t)loc.off + RECORD_HDR + klen;
    mem = loc.vlen == 0 ? empty_byte : chunk_lookup(e, s, voff, loc.vlen);
    if (mem != NULL) {
        if (sync && loc.vlen > 0) {
            if (ensure_getbuf(e, loc.vlen) < 0)
                return -ENOMEM;
            memcpy(e->getbuf, mem, loc.vlen);
            mem = e->getbuf;
        }
        call_done(done, ctx, 0, mem, loc.vlen);
        return 0;
    }
    op = calloc(1, sizeof(*op));
    if (op == NULL)
        return -ENOMEM;
    op->e = e;
    op->seg = s;
    op->len = loc.vlen;
    op->off = voff;
    op->done = done;
    op->ctx = ctx;
    op->borrowed = sync;
    if (sync) {
        if (ensure_getbuf(e, loc.vlen) < 0) {
            free(op);
            return -ENOMEM;
        }
        op->buf = e->getbuf;
    } else {
        op->buf = malloc(loc.vlen);
        if (op->buf == NULL) {
            free(op);
            return -ENOMEM;
        }
    }
    /* Exactly the value bytes: one read, no checksum (docs/design.md explains why). */
    rc = kvs_ring_read(e->ring, s->fd, op->buf, op->len, voff, get_cb, op);
    if (rc < 0) {
        if (!sync)
            free(op->buf);
        free(op);
        return rc;
    }
    s->refs++;
    e->inflight++;
    return 0;
}

int kvs_engine_get_async(struct kvs_engine *e, const void *key, size_t klen,
                         kvs_engine_done_fn done, void *ctx)
{
    return get_start(e, key, klen, done, ctx, false);
}

int kvs_engine_compact_async(struct kvs_engine *e, kvs_engine_done_fn done, void *ctx)
{
    if (e->closing)
        return KVS_ECLOSED;
    return compact_start(e, true, done, ctx);
}

bool kvs_engine_idle(const struct kvs_engine *e)
{
    return !e->writing && e->chead == NULL && e->inflight == 0 && !compact_busy(e);
}

/* ---- synchronous API ---- */

struct sync_wait {
    bool done;
    int res;
    const void *val;
    size_t vlen;
};

/* Done callback of the synchronous wrappers: remember the outcome and stop run_until. */
static void sync_done(void *ctx, int res, const void *val, size_t vlen)
{
    struct sync_wait *w = ctx;

    w->done = true;
    w->res = res;
    w->val = val;
    w->vlen = vlen;
}

/* Finish a synchronous call: submit the batch (group commit of one) and run the ring until
 * the operation completed. rc is what the _async call returned. */
static int sync_finish(struct kvs_engine *e, struct sync_wait *w, int rc)
{
    if (rc < 0)
        return rc;
    kvs_engine_flush(e);
    if (!w->done) {
        rc = kvs_ring_run_until(e->ring, &w->done);
        if (rc < 0)
            return rc;
    }
    return w->res;
}

int kvs_engine_get(struct kvs_engine *e, const void *key, size_t klen, const void **val,
                   size_t *vlen)
{
    struct sync_wait w = {false, 0, NULL, 0};
    int rc = sync_finish(e, &w, get_start(e, key, klen, sync_done, &w, true));

    if (rc == 0) {
        *val = w.val;
        *vlen = w.vlen;
    }
    return rc;
}

int kvs_engine_set(struct kvs_engine *e, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct sync_wait w = {false, 0, NULL, 0};

    return sync_finish(e, &w, kvs_engine_set_async(e, key, klen, val, vlen, sync_done, &w));
}

int kvs_engine_remove(struct kvs_engine *e, const void *key, size_t klen)
{
    struct sync_wait w = {false, 0, NULL, 0};

    return sync_finish(e, &w, kvs_engine_remove_async(e, key, klen, sync_done, &w));
}

int kvs_engine_compact(struct kvs_engine *e)
{
    struct sync_wait w = {false, 0, NULL, 0};
    int rc = compact_start(e, true, sync_done, &w);

    if (rc == -EBUSY) {
        /* One is running already: wait for it, then run a full one. */
        while (compact_busy(e) && rc == -EBUSY) {
            int r = kvs_ring_run(e->ring, 1, 0);

            if (r < 0)
                return r;
        }
        rc = compact_start(e, true, sync_done, &w);
    }
    return sync_finish(e, &w, rc);
}

/* ---- index-only queries ---- */

int64_t kvs_engine_value_len(const struct kvs_engine *e, const void *key, size_t klen)
{
    struct index_loc loc;

    if (key == NULL)
        key = empty_byte;
    if (!index_get(e->ix, XXH3_64bits(key, klen), key, klen, &loc))
        return KVS_ENOTFOUND;
    return loc.vlen;
}

uint64_t kvs_engine_count(const struct kvs_engine *e)
{
    return index_count(e->ix);
}

struct scan_ctx {
    kvs_engine_key_fn fn;
    void *ctx;
};

/* Adapter from the index's visitor to the public key callback. */
static void scan_visit(void *ctx, const void *key, size_t klen, const struct index_loc *loc)
{
    struct scan_ctx *sc = ctx;

    (void)loc;
    sc->fn(sc->ctx, key, klen);
}

uint64_t kvs_engine_scan(const struct kvs_engine *e, uint64_t cursor, size_t count,
                         kvs_engine_key_fn fn, void *ctx)
{
    struct scan_ctx sc = {fn, ctx};

    return index_scan(e->ix, cursor, count, scan_visit, &sc);
}

void kvs_engine_stats(const struct kvs_engine *e, struct kvs_engine_stats *st)
{
    *st = e->st;
    st->keys = index_count(e->ix);
    st->key_bytes = index_key_bytes(e->ix);
    st->index_bytes = index_memory(e->ix);
    st->index_bytes_per_key =
        st->keys > 0 ? (double)(st->index_bytes - st->key_bytes) / (double)st->keys : 0.0;
    st->segments = e->nsegs;
    st->disk_bytes = 0;
    st->live_bytes = 0;
    for (size_t i = 0; i < e->nsegs; i++) {
        st->disk_bytes += e->segs[i]->size;
        st->live_bytes += e->segs[i]->live;
    }
    st->dead_bytes = st->disk_bytes - st->live_bytes;
    st->compacting = compact_busy(e);
    st->failed = e->failed;
    st->next_seq = e->next_seq;
}

/* ---- open / close ---- */

static int take_lock(struct kvs_engine *e, char *errbuf, size_t errlen)
{
    e->lockfd = openat(e->dirfd, LOCK_NAME, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (e->lockfd < 0) {
        int rc = -errno;

        errf(errbuf, errlen, "%s/%s: cannot open lock file: %s", e->dir, LOCK_NAME,
             strerror(errno));
        return rc;
    }
    /* flock locks belong to the open file description, so a second open in this process is
     * refused too. The lock goes away with the process: no stale lock files. */
    if (flock(e->lockfd, LOCK_EX | LOCK_NB) != 0) {
        int rc = errno == EWOULDBLOCK ? KVS_ELOCKED : -errno;

        errf(errbuf, errlen, "%s: %s", e->dir,
             rc == KVS_ELOCKED ? "the store is locked by another process (or another open "
                                 "engine in this one)"
                               : strerror(errno));
        return rc;
    }
    return 0;
}

static bool dir_has_segments(struct kvs_engine *e)
{
    /* A directory with data but no format file is not one of ours (or lost its format file):
     * refuse it rather than guess. */
    int dfd = dup(e->dirfd);
    struct dirent *de;
    bool found = false;
    DIR *d;

    if (dfd < 0)
        return false;
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return false;
    }
    rewinddir(d);
    while (!found && (de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);

        found = n > 4 && strcmp(de->d_name + n - 4, ".seg") == 0;
    }
    closedir(d);
    return found;
}

/* Check KVS-FORMAT, or write it for a new, empty store (setup-time plain syscalls). */
static int check_format(struct kvs_engine *e, char *errbuf, size_t errlen)
{
    uint8_t buf[FORMAT_FILE_SIZE + 1];
    uint32_t version;
    ssize_t n;
    int fd, rc;

    fd = openat(e->dirfd, FORMAT_NAME, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        if (dir_has_segments(e)) {
            errf(errbuf, errlen, "%s: segment files but no %s file: not a kvs store", e->dir,
                 FORMAT_NAME);
            return KVS_EFORMAT;
        }
        /* New store: write the format file once, durably, before any segment exists. */
        format_encode(buf);
        errno = 0; /* a short write sets none: the ENOENT of the first openat must not show */
        fd = openat(e->dirfd, FORMAT_NAME ".tmp", O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, buf, FORMAT_FILE_SIZE) != FORMAT_FILE_SIZE || fsync(fd) != 0 ||
            renameat(e->dirfd, FORMAT_NAME ".tmp", e->dirfd, FORMAT_NAME) != 0) {
            rc = errno ? -errno : -EIO;
            errf(errbuf, errlen, "%s/%s: cannot create: %s", e->dir, FORMAT_NAME, strerror(-rc));
            if (fd >= 0) {
                close(fd);
                (void)unlinkat(e->dirfd, FORMAT_NAME ".tmp", 0);
            }
            return rc;
        }
        close(fd);
        store_fsync_dir(e);
        return 0;
    }
    if (fd < 0) {
        rc = -errno;
        errf(errbuf, errlen, "%s/%s: %s", e->dir, FORMAT_NAME, strerror(errno));
        return rc;
    }
    n = read(fd, buf, sizeof(buf));
    close(fd);
    rc = format_check(buf, n < 0 ? 0 : (size_t)n, &version);
    if (rc < 0) {
        if (version != 0)
            errf(errbuf, errlen, "%s/%s: format version %u, this kvs reads version %u", e->dir,
                 FORMAT_NAME, version, RECORD_FORMAT_VERSION);
        else
            errf(errbuf, errlen, "%s/%s: not a kvs format file", e->dir, FORMAT_NAME);
    }
    return rc;
}

/* Release everything; nothing of this engine may be in flight on the ring any more. */
static void engine_free(struct kvs_engine *e)
{
    while (e->chead != NULL) {
        struct chunk *c = e->chead;

        chunk_pop(e, c);
        chunk_release(e, c);
    }
    for (size_t i = 0; i < e->nsegs; i++)
        seg_free(NULL, e->segs[i]);
    while (e->doomed != NULL) {
        struct seg *s = e->doomed;

        e->doomed = s->next_doomed;
        seg_free(NULL, s);
    }
    free(e->segs);
    hint_fini(&e->ahint);
    for (int i = 0; i < 2; i++) {
        if (e->wbufs[i].index >= 0 && e->ring != NULL)
            kvs_ring_buffer_remove(e->ring, e->wbufs[i].index);
        free(e->wbufs[i].mem);
    }
    index_free(e->ix);
    if (e->own_ring)
        kvs_ring_free(e->ring);
    if (e->lockfd >= 0)
        close(e->lockfd);
    if (e->dirfd >= 0)
        close(e->dirfd);
    free(e->getbuf);
    free(e->dir);
    free(e);
}

int kvs_engine_open(const char *dir, const struct kvs_engine_options *opt, struct kvs_engine **out,
                    char *errbuf, size_t errlen)
{
    struct kvs_engine_options defaults;
    struct kvs_engine *e;
    int rc;

    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    if (opt == NULL) {
        kvs_engine_options_init(&defaults);
        opt = &defaults;
    }
    rc = check_options(opt, errbuf, errlen);
    if (rc < 0)
        return rc;
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return -ENOMEM;
    e->opt = *opt;
    e->dirfd = e->lockfd = e->spare_fd = -1;
    e->wbufs[0].index = e->wbufs[1].index = -1;
    e->next_id = 1;
    e->next_seq = 1;
    e->dir = strdup(dir);
    if (e->dir == NULL || hint_init(&e->ahint) < 0) {
        rc = -ENOMEM;
        goto err;
    }
    if (opt->create && mkdir(dir, 0755) != 0 && errno != EEXIST) {
        rc = -errno;
        errf(errbuf, errlen, "%s: cannot create directory: %s", dir, strerror(errno));
        goto err;
    }
    e->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (e->dirfd < 0) {
        rc = -errno;
        errf(errbuf, errlen, "%s: %s", dir, strerror(errno));
        goto err;
    }
    rc = take_lock(e, errbuf, errlen);
    if (rc < 0)
        goto err;
    rc = check_format(e, errbuf, errlen);
    if (rc < 0)
        goto err;
    if (opt->ring != NULL) {
        e->ring = opt->ring;
    } else {
        rc = kvs_ring_new(NULL, &e->ring);
        if (rc < 0) {
            errf(errbuf, errlen, "cannot create an io_uring: %s", kvs_strerror(rc));
            goto err;
        }
        e->own_ring = true;
    }
    rc = index_new(0, &e->ix);
    if (rc < 0)
        goto err;
    rc = recover_open(e, errbuf, errlen);
    if (rc < 0)
        goto err;
    for (int i = 0; i < 2; i++) {
        struct wbuf *wb = &e->wbufs[i];

        wb->cap = opt->write_buffer;
        wb->mem = aligned_alloc(4096, (wb->cap + 4095) & ~(size_t)4095);
        if (wb->mem == NULL) {
            rc = -ENOMEM;
            goto err;
        }
        /* Without a free registered slot the buffer still works, with plain writes. */
        wb->index = kvs_ring_buffer_add(e->ring, wb->mem, wb->cap);
        if (wb->index < 0) {
            KVS_DEBUG("engine %s: write buffer not registered: %s", dir, kvs_strerror(wb->index));
            wb->index = -1;
        }
    }
    e->ready = true;
    *out = e;
    return 0;
err:
    if (errbuf != NULL && errlen > 0 && errbuf[0] == '\0')
        errf(errbuf, errlen, "%s: %s", dir, kvs_strerror(rc));
    /* Nothing may still be in flight on a shared ring that references this engine. */
    while (e->ring != NULL && e->inflight > 0)
        if (kvs_ring_run(e->ring, 1, 0) < 0)
            break;
    engine_free(e);
    return rc;
}

/* Run the ring until pred holds (close only). */
static int run_while_busy(struct kvs_engine *e)
{
    while (e->writing || e->chead != NULL || e->inflight > 0 || compact_busy(e)) {
        int rc;

        kvs_engine_flush(e);
        compact_kick(e);
        if (!(e->writing || e->chead != NULL || e->inflight > 0 || compact_busy(e)))
            break;
        rc = kvs_ring_run(e->ring, 1, 0);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int kvs_engine_close(struct kvs_engine *e)
{
    int rc = 0, r;

    if (e == NULL)
        return 0;
    e->closing = true;
    r = run_while_busy(e);
    if (r < 0 && rc == 0)
        rc = r;
    /* The spare segment was never used: it goes (a crash leaves it, recovery treats an empty
     * newest segment as the active one). The directory sync below makes that durable. */
    if (e->spare_fd >= 0) {
        close(e->spare_fd);
        e->spare_fd = -1;
        (void)unlinkat(e->dirfd, e->spare_name, 0);
    }
    if (e->timer_armed) {
        (void)kvs_ring_cancel(e->ring, e->timer_op, NULL, NULL);
        while (e->timer_armed)
            if (kvs_ring_run(e->ring, 1, 0) < 0)
                break;
    }
    /* Whatever the policy, a clean close leaves every written byte durable. */
    if (!e->failed) {
        for (size_t i = 0; i < e->nsegs; i++) {
            if (e->segs[i]->unsynced) {
                r = sync_start(e, e->segs[i]);
                if (r < 0 && rc == 0)
                    rc = r;
            }
        }
        r = sync_start(e, NULL);
        if (r < 0 && rc == 0)
            rc = r;
        r = run_while_busy(e);
        if (r < 0 && rc == 0)
            rc = r;
    }
    if (e->failed && rc == 0)
        rc = KVS_EFAILED;
    engine_free(e);
    return rc;
}
