/* SPDX-License-Identifier: MIT */
/*
 * Recovery at open: finish or drop an interrupted compaction, load every segment's records
 * into the index (from its hint file when valid, else by scanning the segment and verifying
 * each checksum), cut a torn tail off the newest segment, and pick the active segment.
 * Record order on disk does not matter: per key the record with the highest sequence number
 * wins, tombstones included (docs/design.md, "Recovery"). Runs once, at open, on the
 * caller's thread; it reads through the ring and uses plain syscalls only for directory work.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvs/error.h"
#include "kvs/log.h"
#include "store.h"

#define SCAN_WINDOW (1U << 20)

struct recovery {
    struct kvs_engine *e;
    struct index *tombs; /* newest tombstone seq per key, only while recovering */
    uint64_t clear_seq;  /* newest CLEAR record */
    uint64_t max_seq;
    char *errbuf;
    size_t errlen;
};

/* Apply one record found on disk (from a scan or a hint) to the index. */
/* The record at cur (key of klen bytes) is no longer indexed: take it off its segment's live
 * bytes. Live bytes are kept this way while loading rather than counted by a scan of the whole
 * index afterwards: that scan visits the table in bit-reversed bucket order (cache misses on
 * every slot) and was most of the time of an open from hint files. */
static void unlive(struct kvs_engine *e, const struct index_loc *cur, size_t klen)
{
    struct seg *os = store_seg_find(e, cur->seg);

    if (os != NULL)
        os->live -= record_size(klen, cur->vlen);
}

static int apply(struct recovery *rv, struct seg *s, uint64_t seq, uint32_t off, uint8_t flags,
                 const void *key, uint32_t klen, uint32_t vlen)
{
    struct kvs_engine *e = rv->e;
    struct index_loc cur, loc;
    uint64_t h;
    int rc;

    if (seq > rv->max_seq)
        rv->max_seq = seq;
    if (seq < s->min_seq)
        s->min_seq = seq;
    if (flags & RECORD_F_CLEAR) {
        if (seq > rv->clear_seq)
            rv->clear_seq = seq;
        return 0;
    }
    h = XXH3_64bits(key, klen);
    loc.seg = s->id;
    loc.off = off;
    loc.vlen = vlen;
    loc.seq = seq;
    if (flags & RECORD_F_TOMB) {
        if (index_get(e->ix, h, key, klen, &cur) && cur.seq < seq) {
            (void)index_del(e->ix, h, key, klen, NULL);
            unlive(e, &cur, klen);
        }
        if (index_get(rv->tombs, h, key, klen, &cur) && cur.seq >= seq)
            return 0;
        return index_put(rv->tombs, h, key, klen, &loc, NULL, NULL);
    }
    /* A newer tombstone seen earlier (segments load in any order) hides this value. */
    if (index_get(rv->tombs, h, key, klen, &cur) && cur.seq > seq)
        return 0;
    if (index_get(e->ix, h, key, klen, &cur)) {
        if (cur.seq >= seq)
            return 0;
        unlive(e, &cur, klen);
    }
    rc = index_put(e->ix, h, key, klen, &loc, NULL, NULL);
    if (rc == 0)
        s->live += record_size(klen, vlen);
    return rc;
}

/* A read window over one segment file. */
struct window {
    struct kvs_engine *e;
    int fd;
    uint64_t size;
    uint8_t *buf;
    size_t cap;
    uint64_t start;
    size_t len;
};

/* Make [off, off+n) available in the window; returns a pointer or NULL with *err set. */
static const uint8_t *win_get(struct window *w, uint64_t off, size_t n, int *err)
{
    size_t want;
    int rc;

    if (off >= w->start && off + n <= w->start + w->len)
        return w->buf + (off - w->start);
    want = n > SCAN_WINDOW ? n : SCAN_WINDOW;
    if (want > w->size - off)
        want = (size_t)(w->size - off);
    if (want > w->cap) {
        uint8_t *p = realloc(w->buf, want);

        if (p == NULL) {
            *err = -ENOMEM;
            return NULL;
        }
        w->buf = p;
        w->cap = want;
    }
    rc = store_ring_pread(w->e, w->fd, w->buf, want, off);
    if (rc < 0) {
        *err = rc;
        return NULL;
    }
    w->start = off;
    w->len = (size_t)rc;
    if ((size_t)rc < n) {
        *err = -EIO;
        return NULL;
    }
    return w->buf;
}

/* Is there a complete, checksum-valid record at off? Fills *h. */
static int valid_at(struct window *w, uint64_t off, struct record_hdr *h)
{
    const uint8_t *p;
    int err = 0;

    if (w->size - off < RECORD_HDR)
        return 0;
    p = win_get(w, off, RECORD_HDR, &err);
    if (p == NULL)
        return err;
    if (!record_decode_hdr(p, h) || record_size(h->klen, h->vlen) > w->size - off)
        return 0;
    p = win_get(w, off, (size_t)record_size(h->klen, h->vlen), &err);
    if (p == NULL)
        return err;
    return record_verify(p, h) ? 1 : 0;
}

/* Remember a range salvage dropped, so that compaction skips it instead of failing on it. */
static int add_bad(struct seg *s, uint64_t start, uint64_t end)
{
    struct bad_range *b = realloc(s->bad, (s->nbad + 1) * sizeof(*b));

    if (b == NULL)
        return -ENOMEM;
    s->bad = b;
    s->bad[s->nbad].start = start;
    s->bad[s->nbad].end = end;
    s->nbad++;
    return 0;
}

/*
 * Scan segment s record by record, verifying checksums, applying each record and adding it to
 * hb (the rebuilt hint). On a bad record: resynchronise by looking for the next valid record.
 * In the newest segment a bad stretch with no valid record after it is a torn tail (a crash
 * mid-write) and is cut off; anything else is corruption: KVS_ECORRUPT, or with salvage the
 * stretch is skipped, counted and remembered so that compaction skips it too.
 */
static int scan_segment(struct recovery *rv, struct seg *s, bool newest, struct hint_buf *hb)
{
    struct kvs_engine *e = rv->e;
    struct window w = {e, s->fd, s->size, NULL, 0, 0, 0};
    struct record_hdr h;
    uint64_t off = 0;
    int rc = 0;

    while (off < s->size) {
        uint64_t bad, next;
        int ok = valid_at(&w, off, &h);

        if (ok < 0) {
            rc = ok;
            goto out;
        }
        if (ok == 1) {
            const uint8_t *p = w.buf + (off - w.start);

            rc = apply(rv, s, h.seq, (uint32_t)off, h.flags, p + RECORD_HDR, h.klen, h.vlen);
            if (rc == 0 && hb != NULL)
                rc = hint_add(hb, h.seq, (uint32_t)off, h.klen, h.vlen, h.flags, p + RECORD_HDR);
            if (rc < 0)
                goto out;
            off += record_size(h.klen, h.vlen);
            continue;
        }
        bad = off;
        for (next = off + 1; next < s->size; next++) {
            ok = valid_at(&w, next, &h);
            if (ok < 0) {
                rc = ok;
                goto out;
            }
            if (ok == 1)
                break;
        }
        if (newest && next >= s->size) {
            KVS_WARN("engine %s: %06u.seg: torn tail of %llu bytes at offset %llu cut off "
                     "(incomplete write before a crash)",
                     e->dir, s->id, (unsigned long long)(s->size - bad), (unsigned long long)bad);
            if (ftruncate(s->fd, (off_t)bad) != 0) {
                rc = -errno;
                snprintf(rv->errbuf, rv->errlen, "%s/%06u.seg: cannot truncate torn tail: %s",
                         e->dir, s->id, strerror(errno));
                goto out;
            }
            e->st.recovered_torn_bytes += s->size - bad;
            s->size = bad;
            break;
        }
        if (!e->opt.salvage) {
            snprintf(rv->errbuf, rv->errlen,
                     "%s/%06u.seg: corrupt record at offset %llu (bad checksum or header); "
                     "open with salvage to keep the valid records",
                     e->dir, s->id, (unsigned long long)bad);
            rc = KVS_ECORRUPT;
            goto out;
        }
        KVS_WARN("engine %s: %06u.seg: salvage dropped %llu bytes at offset %llu", e->dir, s->id,
                 (unsigned long long)(next - bad), (unsigned long long)bad);
        e->st.salvage_dropped_bytes += next - bad;
        rc = add_bad(s, bad, next);
        if (rc < 0)
            goto out;
        off = next;
    }
out:
    free(w.buf);
    return rc;
}

/* Load s from its hint file. Returns 1 when used, 0 when absent or invalid. */
static int load_hint(struct recovery *rv, struct seg *s)
{
    struct kvs_engine *e = rv->e;
    uint8_t *buf = NULL;
    struct stat st;
    char name[32];
    int64_t n;
    int fd, rc = 0;
    size_t pos = HINT_HDR;

    store_seg_name(name, sizeof(name), s->id, "hint");
    fd = openat(e->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (fstat(fd, &st) != 0 || st.st_size < HINT_HDR + HINT_FOOT || st.st_size > (1LL << 32))
        goto bad;
    buf = malloc((size_t)st.st_size);
    if (buf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (store_ring_pread(e, fd, buf, (size_t)st.st_size, 0) != st.st_size)
        goto bad;
    n = hint_check(buf, (size_t)st.st_size, s->id, s->size);
    if (n < 0)
        goto bad;
    for (int64_t i = 0; i < n; i++) {
        struct hint_entry he;

        hint_next(buf, &pos, &he);
        rc = apply(rv, s, he.seq, he.off, he.flags, he.key, he.klen, he.vlen);
        if (rc < 0)
            goto out;
    }
    s->has_hint = true;
    e->st.hint_files_used++;
    rc = 1;
    goto out;
bad:
    KVS_WARN("engine %s: %s is invalid or does not match its segment; scanning %06u.seg", e->dir,
             name, s->id);
    (void)unlinkat(e->dirfd, name, 0);
    rc = 0;
out:
    free(buf);
    close(fd);
    return rc;
}

/* An interrupted compaction: MERGE names the segments it replaced; finish deleting them. */
static int finish_merge(struct kvs_engine *e)
{
    uint8_t *buf = NULL;
    struct stat st;
    int64_t n;
    int fd, rc;

    fd = openat(e->dirfd, "MERGE", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    if (fstat(fd, &st) == 0 && st.st_size > 0 && st.st_size < (1 << 26)) {
        buf = malloc((size_t)st.st_size);
        if (buf != NULL && store_ring_pread(e, fd, buf, (size_t)st.st_size, 0) == st.st_size &&
            (n = merge_check(buf, (size_t)st.st_size)) >= 0) {
            for (uint32_t i = 0; i < 2 * (uint32_t)n; i++) {
                char name[32];

                store_seg_name(name, sizeof(name), merge_id(buf, i / 2), i % 2 ? "hint" : "seg");
                if (unlinkat(e->dirfd, name, 0) < 0 && errno != ENOENT) {
                    /* Loading it would bring back values of removed keys: refuse to open. */
                    rc = -errno;
                    KVS_ERROR("engine %s: cannot remove %s left by a compaction: %s", e->dir, name,
                              kvs_strerror(rc));
                    free(buf);
                    close(fd);
                    return rc;
                }
            }
            KVS_INFO("engine %s: finished an interrupted compaction (%lld old segments removed)",
                     e->dir, (long long)n);
            store_fsync_dir(e);
        }
    }
    free(buf);
    close(fd);
    (void)unlinkat(e->dirfd, "MERGE", 0);
    store_fsync_dir(e);
    return 0;
}

/* qsort order for segment ids. */
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

/* List segment ids; remove leftovers of interrupted work (*.tmp, hints without segment). */
static int list_segments(struct kvs_engine *e, uint32_t **ids, size_t *n)
{
    DIR *d;
    struct dirent *de;
    size_t cap = 0;
    int dfd = dup(e->dirfd);

    *ids = NULL;
    *n = 0;
    if (dfd < 0)
        return -errno;
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return -errno;
    }
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        char *end;
        unsigned long id;

        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        id = strtoul(de->d_name, &end, 10);
        if (id == 0 || id > UINT32_MAX)
            continue;
        if (strcmp(end, ".seg.tmp") == 0) {
            /* An unfinished compaction output: the old segments are all still there. */
            (void)unlinkat(e->dirfd, de->d_name, 0);
            continue;
        }
        if (strcmp(end, ".seg") != 0)
            continue;
        if (*n == cap) {
            uint32_t *p;

            cap = cap ? cap * 2 : 64;
            p = realloc(*ids, cap * sizeof(*p));
            if (p == NULL) {
                closedir(d);
                return -ENOMEM;
            }
            *ids = p;
        }
        (*ids)[(*n)++] = (uint32_t)id;
    }
    closedir(d);
    if (*n > 0)
        qsort(*ids, *n, sizeof(**ids), cmp_u32);
    return 0;
}

/* Delete hint files whose segment no longer exists (a crash between two unlinks). */
static void remove_orphan_hints(struct kvs_engine *e)
{
    DIR *d;
    struct dirent *de;
    int dfd = dup(e->dirfd);

    if (dfd < 0)
        return;
    d = fdopendir(dfd);
    if (d == NULL) {
        close(dfd);
        return;
    }
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        char *end;
        unsigned long id = strtoul(de->d_name, &end, 10);

        if (de->d_name[0] >= '0' && de->d_name[0] <= '9' && strcmp(end, ".hint") == 0 &&
            (id > UINT32_MAX || store_seg_find(e, (uint32_t)id) == NULL))
            (void)unlinkat(e->dirfd, de->d_name, 0);
    }
    closedir(d);
}

struct key_vec {
    struct kvs_engine *e;
    uint64_t below;
    uint8_t *keys;
    size_t len, cap;
    int err;
};

/* Index visitor: copy out keys older than a CLEAR record (deleting while scanning would
 * disturb the scan). */
static void collect_old(void *ctx, const void *key, size_t klen, const struct index_loc *loc)
{
    struct key_vec *kv = ctx;

    if (loc->seq >= kv->below || kv->err != 0)
        return;
    if (kv->len + klen + 4 > kv->cap) {
        size_t cap = kv->cap ? kv->cap * 2 : 4096;
        uint8_t *p;

        while (cap < kv->len + klen + 4)
            cap *= 2;
        p = realloc(kv->keys, cap);
        if (p == NULL) {
            kv->err = -ENOMEM;
            return;
        }
        kv->keys = p;
        kv->cap = cap;
    }
    put_u32(kv->keys + kv->len, (uint32_t)klen);
    memcpy(kv->keys + kv->len + 4, key, klen);
    kv->len += 4 + klen;
}

/* Remove every key older than the newest CLEAR record. */
static int apply_clear(struct kvs_engine *e, uint64_t clear_seq)
{
    struct key_vec kv = {e, clear_seq, NULL, 0, 0, 0};
    uint64_t cur = 0;

    do
        cur = index_scan(e->ix, cur, 1024, collect_old, &kv);
    while (cur != 0);
    for (size_t pos = 0; kv.err == 0 && pos < kv.len;) {
        uint32_t klen = get_u32(kv.keys + pos);
        const uint8_t *k = kv.keys + pos + 4;

        struct index_loc old;

        if (index_del(e->ix, XXH3_64bits(k, klen), k, klen, &old))
            unlive(e, &old, klen);
        pos += 4 + klen;
    }
    free(kv.keys);
    return kv.err;
}

int recover_open(struct kvs_engine *e, char *errbuf, size_t errlen)
{
    struct recovery rv = {e, NULL, 0, 0, errbuf, errlen};
    struct hint_buf *hints = NULL; /* rebuilt hints of scanned segments, by table position */
    uint32_t *ids = NULL;
    size_t n = 0;
    bool newest_seen = false, newest_empty = false;
    struct seg *top = NULL;
    int rc;

    rc = finish_merge(e);
    if (rc < 0)
        goto out;
    rc = list_segments(e, &ids, &n);
    if (rc < 0)
        goto out;
    rc = index_new(0, &rv.tombs);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        char name[32];
        struct stat st;
        struct seg *s;
        int fd;

        store_seg_name(name, sizeof(name), ids[i], "seg");
        fd = openat(e->dirfd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) != 0) {
            rc = -errno;
            snprintf(errbuf, errlen, "%s/%s: %s", e->dir, name, strerror(errno));
            if (fd >= 0)
                close(fd);
            goto out;
        }
        s = store_seg_new(ids[i], fd, (uint64_t)st.st_size);
        if (s == NULL || store_seg_insert(e, s) < 0) {
            if (s != NULL)
                free(s);
            close(fd);
            rc = -ENOMEM;
            goto out;
        }
    }
    hints = calloc(e->nsegs + 1, sizeof(*hints));
    if (hints == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    /* Newest first: the first segment without a usable hint is the one that was active
     * (compaction outputs and rotated segments carry hints; the active one never does). */
    for (size_t i = e->nsegs; i-- > 0;) {
        struct seg *s = e->segs[i];
        bool newest;

        rc = load_hint(&rv, s);
        if (rc < 0)
            goto out;
        if (rc == 1)
            continue;
        /* An empty newest segment: a crash right after a rotation, while the previous
         * segment's last batch was in flight. That one may have the torn tail then. */
        newest = !newest_seen || newest_empty;
        newest_seen = true;
        newest_empty = newest && s->size == 0;
        rc = hint_init(&hints[i]);
        if (rc == 0)
            rc = scan_segment(&rv, s, newest, &hints[i]);
        if (rc < 0)
            goto out;
    }
    if (rv.clear_seq > 0) {
        rc = apply_clear(e, rv.clear_seq);
        if (rc < 0)
            goto out;
    }
    e->next_seq = rv.max_seq + 1;

    /* Keep appending to the last segment if it was the active one and has room; otherwise
     * start a new one. Scanned immutable segments get their hint files written now. */
    top = e->nsegs > 0 ? e->segs[e->nsegs - 1] : NULL;
    if (top != NULL && !top->has_hint && top->size < e->opt.segment_size && top->nbad == 0) {
        hint_fini(&e->ahint);
        e->ahint = hints[e->nsegs - 1];
        memset(&hints[e->nsegs - 1], 0, sizeof(hints[0]));
        e->active = top;
    } else {
        rc = store_rotate(e);
        if (rc < 0) {
            snprintf(errbuf, errlen, "%s: cannot create a segment: %s", e->dir, kvs_strerror(rc));
            goto out;
        }
    }
    for (size_t i = 0; i < e->nsegs; i++) {
        struct seg *s = e->segs[i];

        if (s == e->active || s->has_hint || hints[i].data == NULL || s->nbad > 0)
            continue;
        s->hint = malloc(sizeof(*s->hint));
        if (s->hint == NULL)
            continue;
        *s->hint = hints[i];
        memset(&hints[i], 0, sizeof(hints[0]));
        s->unsynced = true;
        (void)store_write_hint(e, s);
    }
    while (e->inflight > 0) {
        rc = kvs_ring_run(e->ring, 1, 0);
        if (rc < 0)
            goto out;
    }
    remove_orphan_hints(e);
    if (e->failed) {
        rc = KVS_EFAILED;
        snprintf(errbuf, errlen, "%s: syncing recovered segments failed", e->dir);
        goto out;
    }
    rc = 0;
    KVS_DEBUG("engine %s: opened: %zu segments, %llu keys, next seq %llu", e->dir, e->nsegs,
              (unsigned long long)index_count(e->ix), (unsigned long long)e->next_seq);
out:
    if (hints != NULL) {
        for (size_t i = 0; i <= n && i < e->nsegs + 1; i++)
            hint_fini(&hints[i]);
        free(hints);
    }
    index_free(rv.tombs);
    free(ids);
    return rc;
}
