/* SPDX-License-Identifier: MIT */
/*
 * Compaction ("merge"): copy the live records of every immutable segment into new segments and
 * delete the old ones. It runs as a chain of ring operations, one bounded step at a time
 * (read compact_step bytes with READ_FIXED, keep the live records, WRITE_FIXED them out), so
 * gets and sets interleave with it. Each finished output is fdatasync'ed, gets a synced hint
 * file, is renamed from NNNNNN.seg.tmp to NNNNNN.seg, and only then are index entries switched
 * to it -- and only those that still point at the copied record. At the end a MERGE marker
 * naming the old segments is made durable before they are unlinked, so that a crash in the
 * middle of the unlinks can never leave a value without the tombstone that deleted it
 * (docs/design.md, "Compaction").
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvs/error.h"
#include "kvs/log.h"
#include "store.h"

/* One copied record whose index entry is switched once its output segment is durable. */
struct cmove {
    uint64_t hash;
    uint64_t seq;
    size_t key_pos; /* offset of the key in the output's hint buffer */
    uint32_t old_seg, old_off, new_off, klen, vlen;
};

struct compaction {
    struct kvs_engine *e;
    bool waiting; /* started, waiting for the segments to become quiescent */
    struct waiter *w;
    size_t nw;

    struct seg **in; /* the segments being compacted away, each holding a ref */
    size_t nin, cur;
    uint64_t in_off;
    uint64_t keep_above; /* a tombstone with a seq above this must be kept */

    uint8_t *ibuf, *obuf;
    size_t cap, olen;
    int iidx, oidx;
    uint8_t *big; /* a record larger than the buffers */
    struct record_hdr bigh;

    struct seg *out; /* output being written (NNNNNN.seg.tmp), not yet in the table */
    struct hint_buf oh;
    struct cmove *mv;
    size_t nmv, capmv;
    struct seg *sw; /* finished output whose index entries are being switched */
    size_t swpos;
    int hintfd, pending, r[3];
    char from[32], to[32]; /* names read by a ring rename/openat until its completion */

    /* The next output, created on the ring before the step that may need it (-1: none). */
    int nextfd;
    uint32_t next_id;
    bool next_opening;
    char next_name[32];
    bool need_rotate; /* an explicit compaction waits for the spare segment to rotate into */

    /* compact_rate, a token bucket of at most one step: bytes that may be read now (negative
     * after a record larger than a step), refilled at compact_rate from last_ns. */
    double tokens;
    uint64_t last_ns; /* CLOCK_MONOTONIC; 0 until the first read */
    int throttle_op;  /* the pending throttle timeout, or -1 */
    bool throttle_cancelled;

    /* The finish chain (enum fin_stage): stage, first error, sync error of a linked pair. */
    int fin, fres, syncerr;
    int mergefd;
    bool keep_merge; /* an input's unlink failed: MERGE stays so that open removes it */
    uint8_t *merge;
    size_t mlen;
    char (*names)[32]; /* inputs' .seg and .hint names, for the unlinks */
    size_t nnames;
};

static void step(struct compaction *cp);

bool compact_busy(const struct kvs_engine *e)
{
    return e->cp != NULL;
}

/* Name of an output segment while it is being written. */
static void out_name(char *buf, size_t len, uint32_t id)
{
    snprintf(buf, len, "%06u.seg.tmp", id);
}

/* Close and unlink the pre-opened output file if it was not used. */
static void drop_next(struct compaction *cp)
{
    if (cp->nextfd < 0)
        return;
    store_unlink(cp->e, cp->next_name);
    store_close_fd(cp->e, cp->nextfd);
    cp->nextfd = -1;
}

/* Release the compaction's buffers and report res to whoever asked for it. */
static void complete(struct compaction *cp, int res)
{
    struct kvs_engine *e = cp->e;

    if (cp->iidx >= 0)
        kvs_ring_buffer_remove(e->ring, cp->iidx);
    if (cp->oidx >= 0)
        kvs_ring_buffer_remove(e->ring, cp->oidx);
    free(cp->ibuf);
    free(cp->obuf);
    free(cp->big);
    free(cp->merge);
    free(cp->names);
    hint_fini(&cp->oh);
    free(cp->mv);
    free(cp->in);
    e->cp = NULL;
    for (size_t i = 0; i < cp->nw; i++)
        if (cp->w[i].done != NULL)
            cp->w[i].done(cp->w[i].ctx, res, NULL, 0);
    free(cp->w);
    free(cp);
}

/* Give up: drop the unfinished output and an unused pre-opened one; finished outputs are valid
 * segments and stay. The file-system clean-up goes on the ring like everything else. */
static void fail(struct compaction *cp, int err)
{
    struct kvs_engine *e = cp->e;
    char name[32];

    if (err != KVS_ECLOSED)
        KVS_ERROR("engine %s: compaction stopped: %s", e->dir, kvs_strerror(err));
    if (cp->out != NULL) {
        out_name(name, sizeof(name), cp->out->id);
        store_unlink(e, name);
        store_seg_name(name, sizeof(name), cp->out->id, "hint");
        store_unlink(e, name);
        store_close_fd(e, cp->out->fd);
        free(cp->out);
        cp->out = NULL;
    }
    if (cp->hintfd >= 0)
        store_close_fd(e, cp->hintfd);
    cp->hintfd = -1;
    drop_next(cp);
    for (size_t i = 0; i < cp->nin; i++)
        store_seg_unref(e, cp->in[i]);
    complete(cp, err);
}

/* A record of the current input failed its checks: name it and stop (inputs stay). */
static void corrupt(struct compaction *cp, uint64_t off)
{
    struct seg *s = cp->in[cp->cur];

    KVS_ERROR("engine %s: %06u.seg: corrupt record at offset %llu found by compaction; "
              "automatic compaction is off until an explicit one or a reopen",
              cp->e->dir, s->id, (unsigned long long)off);
    /* Otherwise the dead-bytes trigger would start the same failing copy after every batch. */
    cp->e->compact_broken = true;
    if (s->has_hint) {
        /* The next open must read the segment itself (and report or, with salvage, skip the
         * bad record) instead of trusting the hint. */
        char name[32];

        store_seg_name(name, sizeof(name), s->id, "hint");
        store_unlink(cp->e, name);
        s->has_hint = false;
    }
    fail(cp, KVS_ECORRUPT);
}

/* Make the pre-opened file (see next_open_cb) the output segment when none is being written. */
static int ensure_out(struct compaction *cp)
{
    if (cp->out != NULL)
        return 0;
    if (cp->nextfd < 0)
        return -EINVAL; /* step() opens it before every read that may need it */
    cp->out = store_seg_new(cp->next_id, cp->nextfd, 0);
    if (cp->out == NULL)
        return -ENOMEM;
    cp->nextfd = -1;
    return hint_init(&cp->oh);
}
/* Should the record (header h, source offset off in the current input) be copied? */
static bool wanted(struct compaction *cp, const uint8_t *rec, const struct record_hdr *h,
                   uint64_t off, uint64_t *hash)
{
    struct index_loc loc;

    if (h->flags != 0) {
        /* A tombstone (or CLEAR) may only go when no segment outside this run can hold an
         * older value it hides; otherwise it is copied like a value. */
        return h->seq > cp->keep_above;
    }
    *hash = XXH3_64bits(rec + RECORD_HDR, h->klen);
    return index_get(cp->e->ix, *hash, rec + RECORD_HDR, h->klen, &loc) &&
           loc.seg == cp->in[cp->cur]->id && loc.off == off;
}

/* Note a record appended to the output at new_off: hint entry and pending index switch. */
static int note_copy(struct compaction *cp, const uint8_t *rec, const struct record_hdr *h,
                     uint64_t src_off, uint64_t new_off, uint64_t hash)
{
    struct cmove *m;
    int rc =
        hint_add(&cp->oh, h->seq, (uint32_t)new_off, h->klen, h->vlen, h->flags, rec + RECORD_HDR);

    if (rc < 0)
        return rc;
    if (h->seq < cp->out->min_seq)
        cp->out->min_seq = h->seq;
    if (h->flags != 0)
        return 0;
    if (cp->nmv == cp->capmv) {
        size_t cap = cp->capmv ? cp->capmv * 2 : 1024;

        m = realloc(cp->mv, cap * sizeof(*m));
        if (m == NULL)
            return -ENOMEM;
        cp->mv = m;
        cp->capmv = cap;
    }
    m = &cp->mv[cp->nmv++];
    m->hash = hash;
    m->seq = h->seq;
    m->key_pos = cp->oh.len - h->klen;
    m->old_seg = cp->in[cp->cur]->id;
    m->old_off = (uint32_t)src_off;
    m->new_off = (uint32_t)new_off;
    m->klen = h->klen;
    m->vlen = h->vlen;
    return 0;
}

/* ---- finishing an output segment ---- */

/* Index switches done per loop turn: an output of small records can hold hundreds of
 * thousands, and the shard must keep answering requests meanwhile. */
#define SWITCH_BATCH 8192

static void switch_cb(void *ctx, int res, uint32_t flags);

/* Switch the copied records cp->mv[swpos .. end) of the finished output cp->sw. */
static void switch_range(struct compaction *cp, size_t end)
{
    struct kvs_engine *e = cp->e;

    for (; cp->swpos < end; cp->swpos++) {
        const struct cmove *m = &cp->mv[cp->swpos];
        const uint8_t *key = cp->oh.data + m->key_pos;
        struct index_loc expect = {m->old_seg, m->old_off, m->vlen, m->seq};
        struct index_loc loc = {cp->sw->id, m->new_off, m->vlen, m->seq};
        uint64_t sz = record_size(m->klen, m->vlen);

        /* Only where the key still points at the copy we made: a set or remove that came
         * in meanwhile wins, and our copy is dead weight for the next compaction. */
        if (index_replace_if(e->ix, m->hash, key, m->klen, &expect, &loc)) {
            struct seg *os = store_seg_find(e, m->old_seg);

            if (os != NULL)
                os->live -= sz;
            cp->sw->live += sz;
        }
    }
}

/*
 * Switch the next SWITCH_BATCH entries; when more remain, yield to the ring with a zero
 * timeout and continue from its completion. The output is durable and renamed by now, so a
 * switched entry never points at a file that could still be deleted.
 */
static void switch_some(struct compaction *cp)
{
    size_t end = cp->swpos + SWITCH_BATCH < cp->nmv ? cp->swpos + SWITCH_BATCH : cp->nmv;

    switch_range(cp, end);
    if (cp->swpos < cp->nmv) {
        if (kvs_ring_timeout(cp->e->ring, 0, switch_cb, cp) >= 0)
            return;
        switch_range(cp, cp->nmv); /* cannot yield: finish in one go */
    }
    cp->nmv = 0;
    cp->swpos = 0;
    cp->sw = NULL;
    hint_fini(&cp->oh);
    step(cp);
}

static void switch_cb(void *ctx, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    switch_some(ctx);
}

/* The output, its hint and the hint's sync are durable: rename it into place (the commit
 * point of this output), add it to the table, then switch the index to it. */
/* The rename of the output to NNNNNN.seg completed: the commit point of this output. Add it to
 * the table, then switch the index to it. */
static void rename_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;
    struct kvs_engine *e = cp->e;
    int rc = res;

    (void)flags;
    if (rc == 0)
        rc = store_seg_insert(e, cp->out);
    if (rc < 0) {
        fail(cp, rc);
        return;
    }
    e->st.fsyncs += 2;
    cp->out->has_hint = true;
    /* From here the output belongs to the segment table; fail() must not touch it. */
    cp->sw = cp->out;
    cp->out = NULL;
    cp->swpos = 0;
    switch_some(cp);
}

/* The output, its hint and the hint's sync are durable: rename it into place on the ring. */
static void out_done(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    int rc = 0;

    store_close_fd(e, cp->hintfd);
    cp->hintfd = -1;
    for (int i = 0; i < 3; i++)
        if (cp->r[i] < 0 && rc == 0)
            rc = cp->r[i];
    if (rc == 0 && (size_t)cp->r[1] != cp->oh.len)
        rc = -EIO;
    if (rc == 0) {
        out_name(cp->from, sizeof(cp->from), cp->out->id);
        store_seg_name(cp->to, sizeof(cp->to), cp->out->id, "seg");
        rc = kvs_ring_renameat(e->ring, e->dirfd, cp->from, cp->to, rename_cb, cp);
    }
    if (rc < 0)
        fail(cp, rc);
}

/* One of the three completions of finish_out(); the last one continues. */
static void out_cb(struct compaction *cp, int i, int res)
{
    cp->r[i] = res;
    if (--cp->pending == 0)
        out_done(cp);
}

static void out_sync_cb(void *ctx, int res, uint32_t flags)
{
    (void)flags;
    out_cb(ctx, 0, res);
}

static void out_hint_cb(void *ctx, int res, uint32_t flags)
{
    (void)flags;
    out_cb(ctx, 1, res);
}

static void out_hsync_cb(void *ctx, int res, uint32_t flags)
{
    (void)flags;
    out_cb(ctx, 2, res);
}

/* The output's hint file is open: fdatasync the output, then write and fdatasync its hint
 * (one linked chain). */
static void hint_open_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;
    struct kvs_engine *e = cp->e;
    int rc;

    (void)flags;
    if (res < 0) {
        fail(cp, res);
        return;
    }
    cp->hintfd = res;
    cp->pending = 0;
    cp->r[0] = cp->r[1] = cp->r[2] = 0;
    rc = kvs_ring_fsync(e->ring, cp->out->fd, true, out_sync_cb, cp);
    if (rc < 0) {
        fail(cp, rc);
        return;
    }
    cp->pending++;
    kvs_ring_link(e->ring);
    rc = kvs_ring_write(e->ring, cp->hintfd, cp->oh.data, cp->oh.len, 0, out_hint_cb, cp);
    if (rc < 0) {
        cp->r[1] = rc;
        return;
    }
    cp->pending++;
    kvs_ring_link(e->ring);
    rc = kvs_ring_fsync(e->ring, cp->hintfd, true, out_hsync_cb, cp);
    if (rc < 0) {
        cp->r[2] = rc;
        return;
    }
    cp->pending++;
}

/* The output is complete: create its hint file on the ring (hint_open_cb goes on). */
static void finish_out(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    int rc;

    rc = hint_finish(&cp->oh, cp->out->id, cp->out->size);
    if (rc == 0) {
        store_seg_name(cp->to, sizeof(cp->to), cp->out->id, "hint");
        rc = kvs_ring_openat(e->ring, e->dirfd, cp->to, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC,
                             0644, hint_open_cb, cp);
    }
    if (rc < 0)
        fail(cp, rc);
}

/* ---- the end: marker, unlink, done ---- */

/*
 * The end of a compaction is one ordered chain of ring steps (docs/design.md, "Compaction");
 * fin_cb moves from one to the next when every completion of the current one is in:
 *
 *   FIN_DIRSYNC   fsync of the directory: the outputs' renames are durable
 *   FIN_OPEN      openat MERGE.tmp
 *   FIN_WRITE     write the marker, linked fdatasync
 *   FIN_RENAME    rename MERGE.tmp -> MERGE, linked fsync of the directory: marker durable
 *   FIN_UNLINK    unlink every input and its hint (in parallel; failures only logged)
 *   FIN_DIRSYNC2  fsync of the directory: the unlinks are durable
 *   FIN_UNMERGE   unlink MERGE
 */
enum fin_stage {
    FIN_DIRSYNC,
    FIN_OPEN,
    FIN_WRITE,
    FIN_RENAME,
    FIN_UNLINK,
    FIN_DIRSYNC2,
    FIN_UNMERGE
};

static void fin_cb(void *ctx, int res, uint32_t flags);

/* Queue the ops of stage st; returns 0 or -errno (ops queued before an error still complete
 * and are counted in cp->pending). */
static int fin_stage(struct compaction *cp, enum fin_stage st)
{
    struct kvs_engine *e = cp->e;
    int rc = 0;

    cp->fin = (int)st;
    cp->fres = 0;
    cp->syncerr = 0;
    cp->pending = 0;
    switch (st) {
    case FIN_DIRSYNC:
    case FIN_DIRSYNC2:
        rc = kvs_ring_fsync(e->ring, e->dirfd, false, fin_cb, cp);
        break;
    case FIN_OPEN:
        rc = kvs_ring_openat(e->ring, e->dirfd, "MERGE.tmp",
                             O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644, fin_cb, cp);
        break;
    case FIN_WRITE:
        rc = kvs_ring_write(e->ring, cp->mergefd, cp->merge, cp->mlen, 0, fin_cb, cp);
        if (rc < 0)
            break;
        cp->pending++;
        kvs_ring_link(e->ring);
        rc = kvs_ring_fsync(e->ring, cp->mergefd, true, fin_cb, cp);
        break;
    case FIN_RENAME:
        rc = kvs_ring_renameat(e->ring, e->dirfd, "MERGE.tmp", "MERGE", fin_cb, cp);
        if (rc < 0)
            break;
        cp->pending++;
        kvs_ring_link(e->ring);
        rc = kvs_ring_fsync(e->ring, e->dirfd, false, fin_cb, cp);
        break;
    case FIN_UNLINK:
        for (size_t i = 0; i < cp->nnames && rc >= 0; i++) {
            rc = kvs_ring_unlinkat(e->ring, e->dirfd, cp->names[i], fin_cb, cp);
            if (rc >= 0)
                cp->pending++;
        }
        return rc < 0 ? rc : 0;
    case FIN_UNMERGE:
        rc = kvs_ring_unlinkat(e->ring, e->dirfd, "MERGE", fin_cb, cp);
        break;
    }
    if (rc >= 0)
        cp->pending++;
    return rc < 0 ? rc : 0;
}

/* Take the inputs out of the table (their fds close on the ring, or after the last read in
 * flight) and name their files for FIN_UNLINK. */
static int fin_drop_inputs(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;

    cp->names = calloc(cp->nin * 2 + 1, sizeof(*cp->names));
    if (cp->names == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < cp->nin; i++) {
        struct seg *s = cp->in[i];

        store_seg_name(cp->names[cp->nnames++], sizeof(cp->names[0]), s->id, "seg");
        store_seg_name(cp->names[cp->nnames++], sizeof(cp->names[0]), s->id, "hint");
        s->refs--;
        if (e->active->prev == s) {
            /* The active segment's first batch would have synced s first (everysec); with s
             * deleted that order is moot, and the reference would keep its blocks allocated
             * until the next write. */
            e->active->prev = NULL;
            s->refs--;
        }
        store_seg_remove(e, s);
    }
    KVS_DEBUG("engine %s: compaction removed %zu segments", e->dir, cp->nin);
    cp->nin = 0;
    return 0;
}

/* Every completion of the current finish stage is in (cp->fres holds the first error). */
static void fin_next(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    enum fin_stage st = (enum fin_stage)cp->fin;
    int rc = cp->fres;

    switch (st) {
    case FIN_DIRSYNC:
        if (rc < 0) {
            store_fail(e, rc, "directory fsync after compaction");
            break;
        }
        rc = fin_stage(cp, FIN_OPEN);
        break;
    case FIN_OPEN:
        if (rc >= 0)
            rc = fin_stage(cp, FIN_WRITE);
        break;
    case FIN_WRITE:
    case FIN_RENAME:
        if (rc < 0)
            break;
        if (st == FIN_WRITE) {
            store_close_fd(e, cp->mergefd);
            cp->mergefd = -1;
            rc = fin_stage(cp, FIN_RENAME);
            break;
        }
        e->st.fsyncs += 2;
        /* The marker is durable: from here the inputs are gone whatever happens. */
        rc = fin_drop_inputs(cp);
        if (rc == 0)
            rc = fin_stage(cp, FIN_UNLINK);
        break;
    case FIN_UNLINK:
        /* A failed unlink leaves a dead file that the marker names: MERGE must stay, or the
         * file's values of removed keys (their tombstones are gone) would come back at the
         * next open. That open removes it (or refuses to start, naming it). */
        if (rc < 0)
            cp->keep_merge = true;
        rc = fin_stage(cp, FIN_DIRSYNC2);
        break;
    case FIN_DIRSYNC2:
        if (rc < 0) {
            /* The unlinks may not be durable: MERGE must stay so that open finishes them. */
            store_fail(e, rc, "directory fsync after compaction");
            break;
        }
        e->st.fsyncs++;
        if (cp->keep_merge) {
            KVS_WARN("engine %s: compaction left old files behind; MERGE stays and the next "
                     "open removes them",
                     e->dir);
            e->st.compactions++;
            complete(cp, 0);
            return;
        }
        rc = fin_stage(cp, FIN_UNMERGE);
        break;
    case FIN_UNMERGE:
        e->st.compactions++;
        complete(cp, 0);
        return;
    }
    if (rc < 0 && cp->pending > 0) {
        cp->fres = rc; /* wait for what was queued */
        return;
    }
    if (rc < 0) {
        /* A failed fsync leaves durability unknown: the engine fails rather than retry. */
        if (cp->syncerr < 0)
            store_fail(e, cp->syncerr, "fsync of the compaction marker");
        if (st <= FIN_RENAME && cp->nin > 0) {
            /* Before the marker is durable: the outputs are in use and correct, the inputs
             * stay until next time. */
            if (cp->mergefd >= 0)
                store_close_fd(e, cp->mergefd);
            cp->mergefd = -1;
            if (st >= FIN_OPEN)
                store_unlink(e, "MERGE.tmp");
        }
        fail(cp, rc);
    }
}

static void fin_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;

    (void)flags;
    if (cp->fin == FIN_OPEN && res >= 0) {
        cp->mergefd = res;
        res = 0;
    }
    /* FIN_WRITE and FIN_RENAME are linked pairs: the second CQE (pending 1) is the sync. */
    if (cp->fin == FIN_WRITE && cp->pending == 2 && res >= 0 && (size_t)res != cp->mlen)
        res = -EIO;
    if ((cp->fin == FIN_WRITE || cp->fin == FIN_RENAME) && cp->pending == 1 && res < 0 &&
        res != -ECANCELED)
        cp->syncerr = res;
    if (cp->fin == FIN_UNLINK && res < 0 && res != -ENOENT) {
        KVS_WARN("engine %s: compaction could not unlink an old file: %s", cp->e->dir,
                 kvs_strerror(res));
        cp->keep_merge = true;
    } else if (res < 0 && cp->fres == 0 && cp->fin != FIN_UNLINK)
        cp->fres = res;
    if (--cp->pending == 0)
        fin_next(cp);
}

/* Every input is copied: start the finish chain (see enum fin_stage). */
static void finish(struct compaction *cp)
{
    uint32_t *ids = malloc((cp->nin + 1) * sizeof(*ids));
    int rc;

    drop_next(cp);
    if (ids == NULL) {
        fail(cp, -ENOMEM);
        return;
    }
    for (size_t i = 0; i < cp->nin; i++)
        ids[i] = cp->in[i]->id;
    cp->merge = merge_encode(ids, (uint32_t)cp->nin, &cp->mlen);
    free(ids);
    if (cp->merge == NULL) {
        fail(cp, -ENOMEM);
        return;
    }
    /* The renames of the outputs must be durable before the marker can name their inputs. */
    rc = fin_stage(cp, FIN_DIRSYNC);
    if (rc < 0)
        fail(cp, rc);
}

/* ---- the copy loop ---- */

static void after_write(struct compaction *cp)
{
    if (cp->out != NULL && cp->out->size >= cp->e->opt.segment_size)
        finish_out(cp);
    else
        step(cp);
}

/* A step's WRITE_FIXED of kept records completed. */
static void write_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;

    (void)flags;
    if (res < 0 || (size_t)res != cp->olen) {
        fail(cp, res < 0 ? res : -EIO);
        return;
    }
    cp->out->size += cp->olen;
    cp->e->st.compact_bytes_written += cp->olen;
    cp->olen = 0;
    after_write(cp);
}

/* Write the records kept by this step (if any) at the end of the output. */
static void write_out(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    int rc;

    if (cp->olen == 0 || cp->out == NULL) {
        after_write(cp);
        return;
    }
    if (cp->oidx >= 0)
        rc = kvs_ring_write_fixed(e->ring, cp->out->fd, cp->obuf, cp->olen, cp->out->size, cp->oidx,
                                  write_cb, cp);
    else
        rc = kvs_ring_write(e->ring, cp->out->fd, cp->obuf, cp->olen, cp->out->size, write_cb, cp);
    if (rc < 0)
        fail(cp, rc);
}

/* A record larger than the step buffer was copied on its own. */
static void big_write_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;
    uint64_t sz = record_size(cp->bigh.klen, cp->bigh.vlen);

    (void)flags;
    if (res < 0 || (uint64_t)res != sz) {
        fail(cp, res < 0 ? res : -EIO);
        return;
    }
    cp->out->size += sz;
    cp->e->st.compact_bytes_written += sz;
    cp->in_off += sz;
    free(cp->big);
    cp->big = NULL;
    after_write(cp);
}

/* A record larger than the step buffer was read whole: verify it, keep it or skip it. */
static void big_read_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;
    struct record_hdr *h = &cp->bigh;
    uint64_t sz = record_size(h->klen, h->vlen), hash = 0;
    int rc;

    (void)flags;
    if (res < 0 || (uint64_t)res != sz) {
        fail(cp, res < 0 ? res : -EIO);
        return;
    }
    if (!record_verify(cp->big, h)) {
        corrupt(cp, cp->in_off);
        return;
    }
    if (!wanted(cp, cp->big, h, cp->in_off, &hash)) {
        free(cp->big);
        cp->big = NULL;
        cp->in_off += sz;
        step(cp);
        return;
    }
    rc = ensure_out(cp);
    if (rc == 0 && cp->out == NULL)
        rc = -EINVAL;
    if (rc == 0)
        rc = note_copy(cp, cp->big, h, cp->in_off, cp->out->size, hash);
    if (rc == 0)
        rc = kvs_ring_write(cp->e->ring, cp->out->fd, cp->big, (size_t)sz, cp->out->size,
                            big_write_cb, cp);
    if (rc < 0)
        fail(cp, rc);
}

/* A step's READ_FIXED completed: verify and filter the complete records in the buffer. A
 * partial record at the end is read again by the next step; one that does not fit the
 * buffer at all takes the big-record path. */
static void read_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;
    struct kvs_engine *e = cp->e;
    size_t pos = 0, n;
    bool full = false;
    int rc;

    (void)flags;
    if (res <= 0) {
        fail(cp, res < 0 ? res : -EIO);
        return;
    }
    n = (size_t)res;
    while (n - pos >= RECORD_HDR) {
        const uint8_t *rec = cp->ibuf + pos;
        struct record_hdr h;
        uint64_t sz, hash = 0;

        if (!record_decode_hdr(rec, &h)) {
            corrupt(cp, cp->in_off + pos);
            return;
        }
        sz = record_size(h.klen, h.vlen);
        if (sz > n - pos)
            break;
        if (!record_verify(rec, &h)) {
            corrupt(cp, cp->in_off + pos);
            return;
        }
        if (cp->out != NULL && cp->out->size + cp->olen >= e->opt.segment_size) {
            full = true;
            break;
        }
        if (wanted(cp, rec, &h, cp->in_off + pos, &hash)) {
            rc = ensure_out(cp);
            if (rc == 0 && cp->out == NULL)
                rc = -EINVAL;
            if (rc == 0)
                rc = note_copy(cp, rec, &h, cp->in_off + pos, cp->out->size + cp->olen, hash);
            if (rc < 0) {
                fail(cp, rc);
                return;
            }
            memcpy(cp->obuf + cp->olen, rec, (size_t)sz);
            cp->olen += (size_t)sz;
        }
        pos += (size_t)sz;
    }
    if (pos == 0 && !full) {
        struct seg *s = cp->in[cp->cur];

        if (n < RECORD_HDR || !record_decode_hdr(cp->ibuf, &cp->bigh) ||
            cp->in_off + record_size(cp->bigh.klen, cp->bigh.vlen) > s->size) {
            corrupt(cp, cp->in_off);
            return;
        }
        /* A record larger than the step buffer: read it whole into its own buffer. */
        cp->big = malloc((size_t)record_size(cp->bigh.klen, cp->bigh.vlen));
        if (cp->big == NULL) {
            fail(cp, -ENOMEM);
            return;
        }
        /* Charged to the bucket: the next step waits until it is paid off. */
        cp->tokens -= (double)record_size(cp->bigh.klen, cp->bigh.vlen);
        rc = kvs_ring_read(e->ring, s->fd, cp->big,
                           (size_t)record_size(cp->bigh.klen, cp->bigh.vlen), cp->in_off,
                           big_read_cb, cp);
        if (rc < 0)
            fail(cp, rc);
        return;
    }
    cp->in_off += pos;
    write_out(cp);
}

/* The pre-opened output's openat completed: continue the step it was opened for. */
static void next_open_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;

    (void)flags;
    cp->next_opening = false;
    if (res < 0) {
        fail(cp, res);
        return;
    }
    cp->nextfd = res;
    step(cp);
}

/* Create the next output file NNNNNN.seg.tmp on the ring, so that the copy loop (which finds
 * out only record by record whether it needs an output) never waits for the file system. */
static int open_next(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    int rc;

    cp->next_id = e->next_id;
    out_name(cp->next_name, sizeof(cp->next_name), cp->next_id);
    rc = kvs_ring_openat(e->ring, e->dirfd, cp->next_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC,
                         0644, next_open_cb, cp);
    if (rc < 0)
        return rc;
    e->next_id++;
    cp->next_opening = true;
    return 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void throttle_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;

    (void)res;
    (void)flags;
    cp->throttle_op = -1;
    step(cp); /* after a cancel by close, step() sees e->closing and stops */
}

/*
 * throttle - with compact_rate set, may the next want (<= one step) input bytes be read now?
 * If not, a ring timeout resumes the step when they may (returns true). A token bucket that
 * holds at most one step's worth: reads (and therefore compaction's writes and the discards
 * of the inputs it frees) average at most compact_rate, time spent elsewhere (syncs, index
 * switches) earns no burst, and the rest of the disk's bandwidth stays with the log.
 */
static bool throttle(struct compaction *cp, uint64_t want)
{
    struct kvs_engine *e = cp->e;
    uint64_t now, rate = e->opt.compact_rate;
    double wait_ns;

    if (rate == 0)
        return false;
    now = mono_ns();
    if (cp->last_ns == 0)
        cp->tokens = (double)cp->cap;
    else
        cp->tokens += (double)(now - cp->last_ns) * (double)rate / 1e9;
    if (cp->tokens > (double)cp->cap)
        cp->tokens = (double)cp->cap;
    cp->last_ns = now;
    if (cp->tokens >= (double)want) {
        cp->tokens -= (double)want;
        return false;
    }
    wait_ns = ((double)want - cp->tokens) * 1e9 / (double)rate;
    cp->throttle_op = kvs_ring_timeout(e->ring, (uint64_t)wait_ns + 1, throttle_cb, cp);
    if (cp->throttle_op < 0) {
        cp->throttle_op = -1;
        cp->tokens -= (double)want; /* out of ring slots: go on rather than stall */
        return false;
    }
    e->st.compact_throttles++;
    return true;
}

/* One bounded step: read the next compact_step bytes of the current input. */
static void step(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;

    for (;;) {
        struct seg *s;
        uint64_t limit;
        bool skipped = false;
        int rc;

        if (e->closing) {
            fail(cp, KVS_ECLOSED);
            return;
        }
        if (e->failed) {
            fail(cp, KVS_EFAILED);
            return;
        }
        if (cp->cur == cp->nin) {
            if (cp->out != NULL)
                finish_out(cp);
            else
                finish(cp);
            return;
        }
        s = cp->in[cp->cur];
        if (cp->in_off >= s->size) {
            cp->cur++;
            cp->in_off = 0;
            continue;
        }
        limit = s->size - cp->in_off;
        for (size_t i = 0; i < s->nbad; i++) {
            if (cp->in_off >= s->bad[i].start && cp->in_off < s->bad[i].end) {
                cp->in_off = s->bad[i].end; /* dropped by salvage at open */
                skipped = true;
                break;
            }
            if (s->bad[i].start > cp->in_off && s->bad[i].start - cp->in_off < limit)
                limit = s->bad[i].start - cp->in_off;
        }
        if (skipped)
            continue;
        if (cp->out == NULL && cp->nextfd < 0) {
            rc = open_next(cp);
            if (rc < 0)
                fail(cp, rc);
            return;
        }
        if (limit > cp->cap)
            limit = cp->cap;
        if (throttle(cp, limit))
            return;
        if (cp->iidx >= 0)
            rc = kvs_ring_read_fixed(e->ring, s->fd, cp->ibuf, (size_t)limit, cp->in_off, cp->iidx,
                                     read_cb, cp);
        else
            rc = kvs_ring_read(e->ring, s->fd, cp->ibuf, (size_t)limit, cp->in_off, read_cb, cp);
        if (rc < 0)
            fail(cp, rc);
        return;
    }
}

/* ---- starting ---- */

/* True when no immutable segment has a write or a hint in flight or pending. */
static bool quiescent(const struct kvs_engine *e)
{
    for (size_t i = 0; i < e->nsegs; i++) {
        const struct seg *s = e->segs[i];

        if (s != e->active && (s->pending > 0 || s->hint_busy || s->hint != NULL))
            return false;
    }
    return true;
}

/* Choose the inputs and start the first step. */
static void begin(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    size_t n = 0;

    cp->waiting = false;
    cp->keep_above = UINT64_MAX;
    cp->in = calloc(e->nsegs + 1, sizeof(struct seg *));
    if (cp->in == NULL) {
        complete(cp, -ENOMEM);
        return;
    }
    /* Every immutable segment: then everything outside the run (the active segment) is newer
     * than everything inside, and tombstones can go -- the rule is still checked per record. */
    for (size_t i = 0; i < e->nsegs; i++) {
        struct seg *s = e->segs[i];

        if (s == e->active) {
            if (s->min_seq < cp->keep_above)
                cp->keep_above = s->min_seq;
            continue;
        }
        s->refs++;
        cp->in[n++] = s;
    }
    cp->nin = n;
    if (n == 0) {
        complete(cp, 0);
        return;
    }
    cp->cap = e->opt.compact_step;
    cp->ibuf = aligned_alloc(4096, (cp->cap + 4095) & ~(size_t)4095);
    cp->obuf = aligned_alloc(4096, (cp->cap + 4095) & ~(size_t)4095);
    if (cp->ibuf == NULL || cp->obuf == NULL) {
        fail(cp, -ENOMEM);
        return;
    }
    cp->iidx = kvs_ring_buffer_add(e->ring, cp->ibuf, cp->cap);
    cp->oidx = kvs_ring_buffer_add(e->ring, cp->obuf, cp->cap);
    if (cp->iidx < 0)
        cp->iidx = -1;
    if (cp->oidx < 0)
        cp->oidx = -1;
    KVS_DEBUG("engine %s: compacting %zu segments", e->dir, n);
    step(cp);
}

void compact_kick(struct kvs_engine *e)
{
    struct compaction *cp = e->cp;

    /* close does not wait out a throttle delay (up to compact_step / compact_rate). */
    if (cp != NULL && cp->throttle_op >= 0 && e->closing && !cp->throttle_cancelled) {
        cp->throttle_cancelled = true;
        (void)kvs_ring_cancel(e->ring, cp->throttle_op, NULL, NULL);
    }
    if (cp == NULL || !cp->waiting)
        return;
    if (e->closing || e->failed) {
        complete(cp, e->closing ? KVS_ECLOSED : KVS_EFAILED);
        return;
    }
    if (cp->need_rotate) {
        /* Rotation needs the spare segment, created on the ring: when it is still opening,
         * its completion kicks again. */
        int rc = e->active->size > 0 ? store_rotate(e) : 0;

        if (rc == -EAGAIN)
            return;
        if (rc < 0) {
            complete(cp, rc);
            return;
        }
        cp->need_rotate = false;
        kvs_engine_flush(e);
    }
    if (quiescent(e))
        begin(cp);
}

int compact_start(struct kvs_engine *e, bool rotate, kvs_engine_done_fn done, void *ctx)
{
    struct compaction *cp;
    int rc;

    if (e->cp != NULL)
        return -EBUSY;
    if (rotate)
        e->compact_broken = false; /* an operator asked: try again (and report again) */
    if (e->failed) {
        if (done != NULL)
            done(ctx, KVS_EFAILED, NULL, 0);
        return 0;
    }
    cp = calloc(1, sizeof(*cp));
    if (cp == NULL)
        return -ENOMEM;
    cp->e = e;
    cp->iidx = cp->oidx = -1;
    cp->hintfd = cp->mergefd = cp->nextfd = -1;
    cp->throttle_op = -1;
    if (done != NULL) {
        cp->w = malloc(sizeof(*cp->w));
        if (cp->w == NULL) {
            free(cp);
            return -ENOMEM;
        }
        cp->w[0].done = done;
        cp->w[0].ctx = ctx;
        cp->nw = 1;
    }
    /* An explicit compaction also covers what is in the active segment now. */
    if (rotate && e->active->size > 0) {
        rc = store_rotate(e);
        if (rc < 0 && rc != -EAGAIN) {
            free(cp->w);
            free(cp);
            return rc;
        }
        cp->need_rotate = rc == -EAGAIN; /* compact_kick rotates once the spare is open */
    }
    cp->waiting = true;
    e->cp = cp;
    kvs_engine_flush(e);
    compact_kick(e);
    return 0;
}

void compact_maybe(struct kvs_engine *e)
{
    uint64_t dead = 0, total = 0;

    if (e->cp != NULL || e->failed || e->closing || e->compact_broken ||
        e->opt.compact_min_dead == 0)
        return;
    for (size_t i = 0; i < e->nsegs; i++) {
        const struct seg *s = e->segs[i];

        if (s == e->active)
            continue;
        total += s->size;
        dead += s->size - s->live;
    }
    if (total == 0 || dead < e->opt.compact_min_dead ||
        (double)dead < e->opt.compact_dead_ratio * (double)total)
        return;
    KVS_DEBUG("engine %s: auto compaction: %llu dead of %llu bytes", e->dir,
              (unsigned long long)dead, (unsigned long long)total);
    (void)compact_start(e, false, NULL, NULL);
}
