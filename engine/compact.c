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
    int mergefd;
    uint8_t *merge;
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

/* Give up: drop the unfinished output; finished outputs are valid segments and stay. */
static void fail(struct compaction *cp, int err)
{
    struct kvs_engine *e = cp->e;
    char name[32];

    if (err != KVS_ECLOSED)
        KVS_ERROR("engine %s: compaction stopped: %s", e->dir, kvs_strerror(err));
    if (cp->out != NULL) {
        out_name(name, sizeof(name), cp->out->id);
        (void)unlinkat(e->dirfd, name, 0);
        store_seg_name(name, sizeof(name), cp->out->id, "hint");
        (void)unlinkat(e->dirfd, name, 0);
        close(cp->out->fd);
        free(cp->out);
        cp->out = NULL;
    }
    for (size_t i = 0; i < cp->nin; i++)
        store_seg_unref(e, cp->in[i]);
    complete(cp, err);
}

/* A record of the current input failed its checks: name it and stop (inputs stay). */
static void corrupt(struct compaction *cp, uint64_t off)
{
    KVS_ERROR("engine %s: %06u.seg: corrupt record at offset %llu found by compaction", cp->e->dir,
              cp->in[cp->cur]->id, (unsigned long long)off);
    fail(cp, KVS_ECORRUPT);
}

/* Open a new output segment (NNNNNN.seg.tmp) when none is being written. */
static int ensure_out(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    char name[32];
    int fd;

    if (cp->out != NULL)
        return 0;
    out_name(name, sizeof(name), e->next_id);
    fd = openat(e->dirfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    cp->out = store_seg_new(e->next_id, fd, 0);
    if (cp->out == NULL) {
        close(fd);
        (void)unlinkat(e->dirfd, name, 0);
        return -ENOMEM;
    }
    e->next_id++;
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
static void out_done(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    char from[32], to[32];
    int rc = 0;

    close(cp->hintfd);
    cp->hintfd = -1;
    for (int i = 0; i < 3; i++)
        if (cp->r[i] < 0 && rc == 0)
            rc = cp->r[i];
    if (rc == 0 && (size_t)cp->r[1] != cp->oh.len)
        rc = -EIO;
    if (rc == 0) {
        out_name(from, sizeof(from), cp->out->id);
        store_seg_name(to, sizeof(to), cp->out->id, "seg");
        if (renameat(e->dirfd, from, e->dirfd, to) != 0)
            rc = -errno;
    }
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

/* fdatasync the output, then write and fdatasync its hint (one linked chain). */
static void finish_out(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    char name[32];
    int rc;

    rc = hint_finish(&cp->oh, cp->out->id, cp->out->size);
    if (rc < 0)
        goto err;
    store_seg_name(name, sizeof(name), cp->out->id, "hint");
    cp->hintfd = openat(e->dirfd, name, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (cp->hintfd < 0) {
        rc = -errno;
        goto err;
    }
    cp->pending = 0;
    cp->r[0] = cp->r[1] = cp->r[2] = 0;
    rc = kvs_ring_fsync(e->ring, cp->out->fd, true, out_sync_cb, cp);
    if (rc < 0)
        goto err;
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
    return;
err:
    if (cp->hintfd >= 0)
        close(cp->hintfd);
    cp->hintfd = -1;
    fail(cp, rc);
}

/* ---- the end: marker, unlink, done ---- */

static void merge_written(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    int rc = 0;

    close(cp->mergefd);
    for (int i = 0; i < 2; i++)
        if (cp->r[i] < 0 && rc == 0)
            rc = cp->r[i];
    if (rc == 0 && renameat(e->dirfd, "MERGE.tmp", e->dirfd, "MERGE") != 0)
        rc = -errno;
    if (rc < 0) {
        /* The outputs are in use and correct; the old segments stay until next time. */
        (void)unlinkat(e->dirfd, "MERGE.tmp", 0);
        fail(cp, rc);
        return;
    }
    store_fsync_dir(e);
    for (size_t i = 0; i < cp->nin; i++) {
        struct seg *s = cp->in[i];
        char name[32];

        store_seg_name(name, sizeof(name), s->id, "seg");
        (void)unlinkat(e->dirfd, name, 0);
        store_seg_name(name, sizeof(name), s->id, "hint");
        (void)unlinkat(e->dirfd, name, 0);
        s->refs--;
        store_seg_remove(e, s); /* closes now, or after the last read in flight */
    }
    store_fsync_dir(e);
    (void)unlinkat(e->dirfd, "MERGE", 0);
    e->st.compactions++;
    e->st.fsyncs++;
    KVS_DEBUG("engine %s: compaction removed %zu segments", e->dir, cp->nin);
    cp->nin = 0;
    complete(cp, 0);
}

/* Completions of the merge marker's write and linked fdatasync. */
static void merge_cb(void *ctx, int res, uint32_t flags)
{
    struct compaction *cp = ctx;

    (void)flags;
    cp->r[cp->pending == 2 ? 0 : 1] = res;
    if (--cp->pending == 0)
        merge_written(cp);
}

/* Every input is copied: make the MERGE marker durable, then merge_written() unlinks. */
static void finish(struct compaction *cp)
{
    struct kvs_engine *e = cp->e;
    uint32_t *ids = malloc((cp->nin + 1) * sizeof(*ids));
    size_t len = 0;
    int rc;

    if (ids == NULL) {
        fail(cp, -ENOMEM);
        return;
    }
    for (size_t i = 0; i < cp->nin; i++)
        ids[i] = cp->in[i]->id;
    cp->merge = merge_encode(ids, (uint32_t)cp->nin, &len);
    free(ids);
    if (cp->merge == NULL) {
        fail(cp, -ENOMEM);
        return;
    }
    /* The renames of the outputs must be durable before the marker can name their inputs. */
    store_fsync_dir(e);
    cp->mergefd = openat(e->dirfd, "MERGE.tmp", O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (cp->mergefd < 0) {
        fail(cp, -errno);
        return;
    }
    cp->pending = 0;
    cp->r[0] = cp->r[1] = 0;
    rc = kvs_ring_write(e->ring, cp->mergefd, cp->merge, len, 0, merge_cb, cp);
    if (rc < 0) {
        close(cp->mergefd);
        fail(cp, rc);
        return;
    }
    cp->pending = 2;
    kvs_ring_link(e->ring);
    rc = kvs_ring_fsync(e->ring, cp->mergefd, true, merge_cb, cp);
    if (rc < 0) {
        cp->r[1] = rc;
        cp->pending = 1;
    }
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
        if (limit > cp->cap)
            limit = cp->cap;
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

    if (cp == NULL || !cp->waiting)
        return;
    if (e->closing || e->failed) {
        complete(cp, e->closing ? KVS_ECLOSED : KVS_EFAILED);
        return;
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
    cp->hintfd = cp->mergefd = -1;
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
        if (rc < 0) {
            free(cp->w);
            free(cp);
            return rc;
        }
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

    if (e->cp != NULL || e->failed || e->closing || e->opt.compact_min_dead == 0)
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
