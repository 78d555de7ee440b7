/* SPDX-License-Identifier: MIT */
/*
 * Suite "compact": compaction shrinks the directory and keeps every value; removed keys stay
 * removed (no tombstone resurrection, also across a crash in the middle of the unlinks);
 * compaction interleaves with async gets, sets and removes on the ring; automatic trigger;
 * records larger than a compaction step; newest-wins by sequence number after compaction.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "kvs/engine.h"
#include "kvs/error.h"
#include "kvs/ring.h"
#include "record.h"
#include "tutil.h"

static bool has_value(struct kvs_engine *e, const void *key, size_t klen, const void *val,
                      size_t vlen)
{
    const void *v;
    size_t n;

    if (kvs_engine_get(e, key, klen, &v, &n) != 0 || n != vlen)
        return false;
    return vlen == 0 || (v != NULL && val != NULL && memcmp(v, val, n) == 0);
}

static bool is_missing(struct kvs_engine *e, const char *key)
{
    const void *v;
    size_t n;

    return kvs_engine_get(e, key, strlen(key), &v, &n) == KVS_ENOTFOUND;
}

static void small_opts(struct kvs_engine_options *opt)
{
    kvs_engine_options_init(opt);
    opt->segment_size = 64 << 10;
    opt->compact_step = 16 << 10;
    opt->compact_min_dead = 0; /* only explicit compactions unless a test says otherwise */
    opt->fsync = KVS_FSYNC_NEVER;
}

static void value_of(int key, int round, char *buf)
{
    memset(buf, 'a' + (round % 26), 100);
    snprintf(buf, 100, "k%d-r%d", key, round);
}

static void test_compact_overwrites_shrink_directory(void)
{
    char *dir = tutil_mkdtemp("shrink");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    long long before, after;
    char key[16], val[100];

    small_opts(&opt);
    e = tutil_open(dir, &opt);
    for (int round = 0; round < 100; round++) {
        for (int k = 0; k < 100; k++) {
            snprintf(key, sizeof(key), "key%d", k);
            value_of(k, round, val);
            CU_ASSERT_EQUAL_FATAL(kvs_engine_set_async(e, key, strlen(key), val, 100, NULL, NULL),
                                  0);
        }
        kvs_engine_flush(e);
    }
    CU_ASSERT_EQUAL(kvs_engine_set(e, "flush", 5, "", 0), 0);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "flush", 5), 0);
    before = tutil_dir_bytes(dir);
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    after = tutil_dir_bytes(dir);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.compactions, 1);
    CU_ASSERT(after * 10 < before);
    CU_ASSERT_EQUAL(st.dead_bytes, 0);
    CU_ASSERT_EQUAL(st.live_bytes, 10 * (28 + 4 + 100) + 90 * (28 + 5 + 100));
    for (int k = 0; k < 100; k++) {
        snprintf(key, sizeof(key), "key%d", k);
        value_of(k, 99, val);
        CU_ASSERT(has_value(e, key, strlen(key), val, 100));
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 100);
    CU_ASSERT(is_missing(e, "flush"));
    for (int k = 0; k < 100; k++) {
        snprintf(key, sizeof(key), "key%d", k);
        value_of(k, 99, val);
        CU_ASSERT(has_value(e, key, strlen(key), val, 100));
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_compact_newest_wins_by_seq_after_compaction(void)
{
    char *dir = tutil_mkdtemp("seqwins");
    struct kvs_engine_options opt;
    struct kvs_engine *e;

    small_opts(&opt);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, "old", 3), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "gone", 4, "x", 1), 0);
    /* The outputs get file numbers above the new active segment ... */
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    /* ... which then receives newer records: recovery must go by seq, not file order. */
    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, "new", 3), 0);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "gone", 4), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT(has_value(e, "k", 1, "new", 3));
    CU_ASSERT(is_missing(e, "gone"));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static uint8_t *slurp(const char *dir, const char *name, size_t *len)
{
    char *p = NULL;
    struct stat st;
    uint8_t *buf = NULL;
    int fd;

    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    fd = open(p, O_RDONLY);
    free(p);
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) == 0) {
        buf = malloc((size_t)st.st_size + 1);
        if (buf != NULL && read(fd, buf, (size_t)st.st_size) != st.st_size) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)st.st_size;
    }
    close(fd);
    return buf;
}

static void spill(const char *dir, const char *name, const void *buf, size_t len)
{
    char *p = NULL;
    int fd;

    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    free(p);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, buf, len) == (ssize_t)len);
    close(fd);
}

static bool dir_has(const char *dir, const char *name);

static void test_compact_removed_key_never_resurrects(void)
{
    char *dir = tutil_mkdtemp("resurrect");
    struct kvs_engine_options opt;
    struct kvs_engine *e;
    uint8_t *seg1, *seg2, *marker;
    size_t len1 = 0, len2 = 0, mlen = 0;
    uint32_t ids[2] = {1, 2};
    char val[100];

    small_opts(&opt);
    opt.segment_size = 4096;
    e = tutil_open(dir, &opt);
    /* The value in segment 1, its tombstone in segment 2, filler around both. */
    CU_ASSERT_EQUAL(kvs_engine_set(e, "victim", 6, "alive", 5), 0);
    memset(val, 'f', sizeof(val));
    for (int i = 0; i < 40; i++) {
        char key[16];

        snprintf(key, sizeof(key), "fill%d", i);
        CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), val, sizeof(val)), 0);
    }
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "victim", 6), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    seg1 = slurp(dir, "000001.seg", &len1);
    seg2 = slurp(dir, "000002.seg", &len2);
    CU_ASSERT_FATAL(seg1 != NULL && seg2 != NULL);

    e = tutil_open(dir, &opt);
    CU_ASSERT(is_missing(e, "victim"));
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    CU_ASSERT(is_missing(e, "victim"));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT(is_missing(e, "victim"));
    CU_ASSERT_EQUAL(kvs_engine_count(e), 40);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);

    /* A crash after the MERGE marker was made durable but before the old segments were all
     * unlinked: the segment with the value survived, the one with the tombstone did not. */
    spill(dir, "000001.seg", seg1, len1);
    marker = merge_encode(ids, 2, &mlen);
    CU_ASSERT_FATAL(marker != NULL);
    spill(dir, "MERGE", marker, mlen);
    e = tutil_open(dir, &opt);
    CU_ASSERT(is_missing(e, "victim"));
    CU_ASSERT_EQUAL(kvs_engine_count(e), 40);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    CU_ASSERT_PTR_NULL(slurp(dir, "000001.seg", &len1));
    CU_ASSERT_PTR_NULL(slurp(dir, "MERGE", &mlen));

    /* Open cannot remove a file the marker names (here a directory in its place): it refuses
     * to start and keeps MERGE, instead of loading what it could not delete. */
    {
        struct kvs_engine *bad = NULL;
        char path[512];

        snprintf(path, sizeof(path), "%s/000001.seg", dir);
        CU_ASSERT_FATAL(mkdir(path, 0755) == 0);
        spill(dir, "MERGE", marker, mlen);
        CU_ASSERT(kvs_engine_open(dir, &opt, &bad, NULL, 0) < 0);
        CU_ASSERT_PTR_NULL(bad);
        CU_ASSERT(dir_has(dir, "MERGE"));
        CU_ASSERT(rmdir(path) == 0);
        spill(dir, "000001.seg", seg1, len1);
        e = tutil_open(dir, &opt);
        CU_ASSERT(is_missing(e, "victim"));
        CU_ASSERT_EQUAL(kvs_engine_count(e), 40);
        CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
        CU_ASSERT_FALSE(dir_has(dir, "MERGE"));
    }
    free(marker);
    free(seg1);
    free(seg2);
    tutil_rmtree(dir);
}

static void test_compact_keeps_tombstone_for_active_value(void)
{
    char *dir = tutil_mkdtemp("keeptomb");
    struct kvs_engine_options opt;
    struct kvs_engine *e;
    char val[100];

    small_opts(&opt);
    opt.segment_size = 2048;
    e = tutil_open(dir, &opt);
    memset(val, 'v', sizeof(val));
    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, val, sizeof(val)), 0);
    for (int i = 0; i < 60; i++)
        CU_ASSERT_EQUAL(kvs_engine_set(e, "churn", 5, val, sizeof(val)), 0);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "a", 1), 0);
    for (int i = 0; i < 60; i++)
        CU_ASSERT_EQUAL(kvs_engine_set(e, "churn", 5, val, sizeof(val)), 0);
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0); /* a second run over the first one's output */
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT(is_missing(e, "a"));
    CU_ASSERT(has_value(e, "churn", 5, val, sizeof(val)));
    CU_ASSERT_EQUAL(kvs_engine_count(e), 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

/* ---- async interleaving ---- */

#define NKEYS 300

struct model {
    int version[NKEYS]; /* -1 = absent */
    int next_version;   /* versions never repeat, so a resurrected old value is caught */
    int gets_ok, gets_bad, sets_done, errors;
};

struct get_check {
    struct model *m;
    int key;
    int want; /* version expected at issue time, -1 = absent */
};

static void fill_val(int key, int version, char *buf, size_t *len)
{
    *len = 40 + (size_t)((key * 7 + version) % 90);
    memset(buf, 'A' + (version % 26), *len);
    snprintf(buf, *len, "%d:%d", key, version);
}

static void get_checked(void *ctx, int res, const void *val, size_t vlen)
{
    struct get_check *g = ctx;
    char want[160];
    size_t wl;

    if (g->want < 0) {
        if (res == KVS_ENOTFOUND)
            g->m->gets_ok++;
        else
            g->m->gets_bad++;
    } else {
        fill_val(g->key, g->want, want, &wl);
        if (res == 0 && vlen == wl && memcmp(val, want, wl) == 0)
            g->m->gets_ok++;
        else
            g->m->gets_bad++;
    }
    free(g);
}

static void write_done(void *ctx, int res, const void *val, size_t vlen)
{
    struct model *m = ctx;

    (void)val;
    (void)vlen;
    m->sets_done++;
    if (res != 0 && res != KVS_ENOTFOUND)
        m->errors++;
}

struct flag {
    bool done;
    int res;
};

static void flag_done(void *ctx, int res, const void *val, size_t vlen)
{
    struct flag *f = ctx;

    (void)val;
    (void)vlen;
    f->done = true;
    f->res = res;
}

static void random_op(struct kvs_engine *e, struct model *m, uint64_t *rng)
{
    int key = (int)(tutil_rand(rng) % NKEYS);
    int what = (int)(tutil_rand(rng) % 10);
    char k[16], v[160];
    size_t vl;

    snprintf(k, sizeof(k), "key%d", key);
    if (what < 4) {
        struct get_check *g = malloc(sizeof(*g));

        CU_ASSERT_FATAL(g != NULL);
        if (g == NULL)
            return;
        g->m = m;
        g->key = key;
        g->want = m->version[key];
        CU_ASSERT_EQUAL(kvs_engine_get_async(e, k, strlen(k), get_checked, g), 0);
    } else if (what < 9) {
        int ver = ++m->next_version;

        fill_val(key, ver, v, &vl);
        CU_ASSERT_EQUAL(kvs_engine_set_async(e, k, strlen(k), v, vl, write_done, m), 0);
        m->version[key] = ver;
    } else {
        CU_ASSERT_EQUAL(kvs_engine_remove_async(e, k, strlen(k), write_done, m), 0);
        m->version[key] = -1;
    }
}

static void test_compact_interleaves_with_async_ops(void)
{
    char *dir = tutil_mkdtemp("interleave");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    struct model m;
    struct flag f = {false, 0};
    uint64_t rng = 12345;
    int turns = 0;
    char k[16], v[160];
    size_t vl;

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    small_opts(&opt);
    opt.ring = ring;
    opt.segment_size = 8 << 10;
    opt.compact_step = 4 << 10;
    e = tutil_open(dir, &opt);
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < NKEYS; i++)
        m.version[i] = -1;
    /* Preload: several versions of every key, so there is a lot to compact. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < NKEYS; i++) {
            snprintf(k, sizeof(k), "key%d", i);
            m.version[i] = ++m.next_version;
            fill_val(i, m.version[i], v, &vl);
            CU_ASSERT_EQUAL(kvs_engine_set(e, k, strlen(k), v, vl), 0);
        }
    }
    CU_ASSERT_EQUAL(kvs_engine_compact_async(e, flag_done, &f), 0);
    CU_ASSERT_EQUAL(kvs_engine_compact_async(e, flag_done, &f), -EBUSY);
    /* The shard-loop pattern: a few requests, one flush, one ring turn. */
    while (!f.done) {
        for (int i = 0; i < 8; i++)
            random_op(e, &m, &rng);
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
        turns++;
    }
    CU_ASSERT_EQUAL(f.res, 0);
    CU_ASSERT(turns > 1); /* it ran in steps between the requests, not in one go */
    while (!kvs_engine_idle(e)) {
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    }
    CU_ASSERT_EQUAL(m.gets_bad, 0);
    CU_ASSERT(m.gets_ok > 0);
    CU_ASSERT_EQUAL(m.errors, 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.compactions, 1);
    CU_ASSERT_FALSE(st.compacting);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < NKEYS; i++) {
            snprintf(k, sizeof(k), "key%d", i);
            if (m.version[i] < 0) {
                CU_ASSERT(is_missing(e, k));
            } else {
                fill_val(i, m.version[i], v, &vl);
                CU_ASSERT(has_value(e, k, strlen(k), v, vl));
            }
        }
        CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
        e = tutil_open(dir, &opt);
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

/* Whether file name exists in dir (any type). */
static bool dir_has(const char *dir, const char *name)
{
    char path[512];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return lstat(path, &st) == 0;
}

/* Preload NKEYS keys, three versions each, through the synchronous API (model kept in m). */
static void preload(struct kvs_engine *e, struct model *m)
{
    char k[16], v[160];
    size_t vl;

    memset(m, 0, sizeof(*m));
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < NKEYS; i++) {
            snprintf(k, sizeof(k), "key%d", i);
            m->version[i] = ++m->next_version;
            fill_val(i, m->version[i], v, &vl);
            CU_ASSERT_EQUAL(kvs_engine_set(e, k, strlen(k), v, vl), 0);
        }
    }
}

/* Every key of the model has its value (or is missing) in e. */
static void check_model(struct kvs_engine *e, const struct model *m)
{
    char k[16], v[160];
    size_t vl;
    int bad = 0;

    for (int i = 0; i < NKEYS; i++) {
        snprintf(k, sizeof(k), "key%d", i);
        if (m->version[i] < 0) {
            bad += !is_missing(e, k);
        } else {
            fill_val(i, m->version[i], v, &vl);
            bad += !has_value(e, k, strlen(k), v, vl);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
}

/*
 * The finish of a compaction (directory syncs, MERGE marker, renames, unlinks) is a chain of
 * ring steps: the marker exists on disk across loop turns in which gets and sets are served,
 * and the result is correct before and after a reopen.
 */
static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 100 keys overwritten 30 times, queued without ring turns: about 400 KiB, 13 KiB of it
 * live. */
static void write_rounds(struct kvs_engine *e, int rounds)
{
    char key[16], val[100];

    for (int round = 0; round < rounds; round++) {
        for (int k = 0; k < 100; k++) {
            snprintf(key, sizeof(key), "key%d", k);
            value_of(k, round, val);
            CU_ASSERT_EQUAL_FATAL(kvs_engine_set_async(e, key, strlen(key), val, 100, NULL, NULL),
                                  0);
        }
        kvs_engine_flush(e);
    }
    CU_ASSERT_EQUAL(kvs_engine_set(e, "flush", 5, "", 0), 0);
}

static void expect_round(struct kvs_engine *e, int round)
{
    char key[16], val[100];

    for (int k = 0; k < 100; k++) {
        snprintf(key, sizeof(key), "key%d", k);
        value_of(k, round, val);
        CU_ASSERT(has_value(e, key, strlen(key), val, 100));
    }
}

/* After a reopen: the 100 keys of write_rounds() hold round's values, plus "flush". */
static void reopen_expect_round(const char *dir, const struct kvs_engine_options *opt, int round)
{
    struct kvs_engine *e = tutil_open(dir, opt);

    CU_ASSERT_EQUAL(kvs_engine_count(e), 101);
    expect_round(e, round);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
}

/* compact_rate spreads compaction's reads in time; the result is the same. At 8 MiB/s the
 * 400 KiB take about 50 ms. */
static void test_compact_rate_limited_same_result(void)
{
    char *dir = tutil_mkdtemp("rate");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    long long before, after;
    double t0, elapsed;
    uint64_t input;

    small_opts(&opt);
    opt.compact_step = 4 << 10;
    opt.compact_rate = 8 << 20;
    e = tutil_open(dir, &opt);
    write_rounds(e, 30);
    before = tutil_dir_bytes(dir);
    kvs_engine_stats(e, &st);
    input = st.disk_bytes; /* every segment: an explicit compaction rotates first */
    t0 = now_s();
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    elapsed = now_s() - t0;
    after = tutil_dir_bytes(dir);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.compactions, 1);
    CU_ASSERT(after * 10 < before);
    /* A lower bound only (a slow machine takes longer, never shorter): reading the inputs
     * at 8 MiB/s, less the one step the bucket starts with. */
    CU_ASSERT(elapsed >= (double)(input - (4 << 10)) / (8 << 20) * 0.95);
    expect_round(e, 29);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    reopen_expect_round(dir, &opt, 29);
    tutil_rmtree(dir);
}

/* At 1 byte/s every step after the first waits (4 KiB would take over an hour): close must
 * cancel that wait, stop the compaction at the step boundary and lose nothing. */
static void test_compact_rate_close_cancels_the_wait(void)
{
    char *dir = tutil_mkdtemp("ratecl");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    struct flag f = {false, 0};

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    small_opts(&opt);
    opt.ring = ring;
    opt.compact_step = 4 << 10;
    opt.compact_rate = 1;
    e = tutil_open(dir, &opt);
    write_rounds(e, 30);
    CU_ASSERT_EQUAL(kvs_engine_compact_async(e, flag_done, &f), 0);
    do {
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
        kvs_engine_stats(e, &st);
    } while (st.compact_throttles == 0 && !f.done);
    CU_ASSERT_FALSE(f.done);
    CU_ASSERT_EQUAL(st.compact_throttles, 1);
    CU_ASSERT(st.compacting);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    CU_ASSERT(f.done);
    CU_ASSERT_EQUAL(f.res, KVS_ECLOSED);
    reopen_expect_round(dir, &opt, 29);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

/* Open fds of this process on deleted segment files (blocks still allocated). */
static int deleted_segment_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int n = 0;

    CU_ASSERT_FATAL(d != NULL);
    while ((de = readdir(d)) != NULL) {
        char path[300], target[512];
        ssize_t len;

        snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strstr(target, ".seg (deleted)") != NULL;
    }
    closedir(d);
    return n;
}

/* everysec (the default): an explicit compaction on an idle store rotates, and the new active
 * segment has no batch yet that would sync the old one; once the old one is compacted away
 * its file must really go, not stay open until the next write. */
static void test_compact_everysec_idle_frees_inputs(void)
{
    char *dir = tutil_mkdtemp("evidle");
    struct kvs_engine_options opt;
    struct kvs_engine *e;

    small_opts(&opt);
    opt.fsync = KVS_FSYNC_EVERYSEC;
    e = tutil_open(dir, &opt);
    write_rounds(e, 30);
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    CU_ASSERT_EQUAL(deleted_segment_fds(), 0);
    expect_round(e, 29);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    reopen_expect_round(dir, &opt, 29);
    tutil_rmtree(dir);
}

/* A record that fails its checksum during compaction (its segment was loaded from a hint, so
 * open did not read it) stops that compaction with KVS_ECORRUPT; the store keeps serving, and
 * the dead-bytes trigger does not start the same failing copy again after every batch. */
static void test_compact_corrupt_record_stops_auto_compaction(void)
{
    char *dir = tutil_mkdtemp("corrupt");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    uint8_t *seg;
    size_t len;

    small_opts(&opt);
    e = tutil_open(dir, &opt);
    /* One set at a time, so the ring turns and segments rotate (each gets its hint). */
    for (int round = 0; round < 30; round++) {
        for (int k = 0; k < 100; k++) {
            char key[16], val[100];

            snprintf(key, sizeof(key), "key%d", k);
            value_of(k, round, val);
            CU_ASSERT_EQUAL_FATAL(kvs_engine_set(e, key, strlen(key), val, 100), 0);
        }
    }
    CU_ASSERT_EQUAL(kvs_engine_set(e, "flush", 5, "", 0), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    CU_ASSERT_FATAL(dir_has(dir, "000001.hint"));
    seg = slurp(dir, "000001.seg", &len);
    CU_ASSERT_FATAL(seg != NULL && len > 100);
    seg[28 + 4 + 50] ^= 0x5a; /* inside the first record's value */
    spill(dir, "000001.seg", seg, len);
    free(seg);
    opt.compact_min_dead = 1;
    opt.compact_dead_ratio = 0.01;
    e = tutil_open(dir, &opt); /* 000001 comes from its hint: not read */
    CU_ASSERT_EQUAL(kvs_engine_compact(e), KVS_ECORRUPT);
    for (int i = 0; i < 20; i++) {
        CU_ASSERT_EQUAL(kvs_engine_set(e, "more", 4, "x", 1), 0);
        kvs_engine_stats(e, &st);
        CU_ASSERT_FALSE(st.compacting);
    }
    CU_ASSERT_EQUAL(st.compactions, 0);
    expect_round(e, 29); /* the newest values are intact, only an old copy was damaged */
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    /* The bad segment's hint is gone: open reads the segment and names the bad record, and
     * salvage then skips it and compaction succeeds. */
    CU_ASSERT_FALSE(dir_has(dir, "000001.hint"));
    {
        struct kvs_engine *bad = NULL;

        CU_ASSERT_EQUAL(kvs_engine_open(dir, &opt, &bad, NULL, 0), KVS_ECORRUPT);
    }
    opt.salvage = true;
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    expect_round(e, 29);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_compact_finish_chain_runs_in_ring_steps(void)
{
    char *dir = tutil_mkdtemp("finchain");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    struct model m;
    struct flag f = {false, 0};
    uint64_t rng = 777;
    int merge_turns = 0;

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    small_opts(&opt);
    opt.ring = ring;
    opt.segment_size = 8 << 10;
    opt.compact_step = 4 << 10;
    opt.fsync = KVS_FSYNC_ALWAYS; /* every directory sync really happens */
    e = tutil_open(dir, &opt);
    preload(e, &m);
    CU_ASSERT_EQUAL(kvs_engine_compact_async(e, flag_done, &f), 0);
    while (!f.done) {
        /* Requests are served in every turn, also the turns of the finish chain. */
        if (dir_has(dir, "MERGE") || dir_has(dir, "MERGE.tmp"))
            merge_turns++;
        for (int i = 0; i < 4; i++)
            random_op(e, &m, &rng);
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    }
    CU_ASSERT_EQUAL(f.res, 0);
    CU_ASSERT(merge_turns > 0);
    CU_ASSERT_FALSE(dir_has(dir, "MERGE"));
    CU_ASSERT_FALSE(dir_has(dir, "MERGE.tmp"));
    while (!kvs_engine_idle(e)) {
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    }
    CU_ASSERT_EQUAL(m.gets_bad, 0);
    CU_ASSERT_EQUAL(m.errors, 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.compactions, 1);
    CU_ASSERT_FALSE(st.failed);
    check_model(e, &m);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    check_model(e, &m);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

/*
 * A step of the finish chain fails (a directory sits where the marker or its final name must
 * go; root ignores permissions, not file types): the compaction reports the error, the store
 * keeps serving every key, and after the fault is gone it reopens with every key correct and
 * compacts normally.
 */
static void compact_finish_fault(const char *fault, const char *inner)
{
    char *dir = tutil_mkdtemp("finfault");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    char path[512], sub[600];
    struct model m;

    small_opts(&opt);
    opt.segment_size = 8 << 10;
    opt.compact_step = 4 << 10;
    opt.fsync = KVS_FSYNC_ALWAYS;
    e = tutil_open(dir, &opt);
    preload(e, &m);
    snprintf(path, sizeof(path), "%s/%s", dir, fault);
    CU_ASSERT_FATAL(mkdir(path, 0755) == 0);
    snprintf(sub, sizeof(sub), "%s/%s", path, inner);
    if (inner[0] != '\0')
        CU_ASSERT_FATAL(mkdir(sub, 0755) == 0);
    CU_ASSERT(kvs_engine_compact(e) < 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.compactions, 0);
    CU_ASSERT_FALSE(st.failed); /* no sync failed: the store stays writable */
    check_model(e, &m);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "key0", 4, "after", 5), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    if (inner[0] != '\0')
        CU_ASSERT(rmdir(sub) == 0);
    CU_ASSERT(rmdir(path) == 0);
    for (int pass = 0; pass < 2; pass++) {
        e = tutil_open(dir, &opt);
        CU_ASSERT(has_value(e, "key0", 4, "after", 5));
        for (int i = 1; i < NKEYS; i++) {
            char k[16], v[160];
            size_t vl;

            snprintf(k, sizeof(k), "key%d", i);
            fill_val(i, m.version[i], v, &vl);
            CU_ASSERT(has_value(e, k, strlen(k), v, vl));
        }
        if (pass == 0)
            CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
        CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    }
    tutil_rmtree(dir);
}

static void test_compact_failed_marker_open_keeps_every_key(void)
{
    compact_finish_fault("MERGE.tmp", "");
}

static void test_compact_failed_marker_rename_keeps_every_key(void)
{
    compact_finish_fault("MERGE", "x");
}

/* Random sets, removes, clears, compactions and reopens against a model of the store. */
static void test_compact_random_history_matches_model(void)
{
    char *dir = tutil_mkdtemp("model");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine *e;
    struct model m;
    const char *seed = getenv("KVS_TEST_SEED"); /* to explore other histories by hand */
    uint64_t rng = seed != NULL ? strtoull(seed, NULL, 10) | 1 : 99;
    char k[16], v[160];
    size_t vl;
    int bad = 0;

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    small_opts(&opt);
    opt.ring = ring;
    opt.segment_size = 4096;
    opt.compact_step = 4096;
    opt.compact_min_dead = 8192; /* automatic compactions too */
    e = tutil_open(dir, &opt);
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < NKEYS; i++)
        m.version[i] = -1;
    for (int round = 0; round < 12; round++) {
        struct flag f = {false, 0};
        int what = (int)(tutil_rand(&rng) % 4);

        for (int i = 0; i < 400; i++) {
            random_op(e, &m, &rng);
            if (i % 16 == 15) {
                kvs_engine_flush(e);
                CU_ASSERT_FATAL(kvs_ring_run(ring, 0, 0) >= 0);
            }
        }
        if (what == 0 && kvs_engine_compact_async(e, flag_done, &f) == 0) {
            while (!f.done) {
                random_op(e, &m, &rng);
                kvs_engine_flush(e);
                CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
            }
            CU_ASSERT_EQUAL(f.res, 0);
        } else if (what == 1 && round % 5 == 1) {
            f.done = false;
            CU_ASSERT_EQUAL(kvs_engine_clear_async(e, flag_done, &f), 0);
            for (int i = 0; i < NKEYS; i++)
                m.version[i] = -1;
        }
        while (!kvs_engine_idle(e)) {
            kvs_engine_flush(e);
            CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
        }
        if (what >= 2) {
            struct kvs_engine_stats before, after;

            /* Live bytes are kept incrementally while running and recounted from the index at
             * open: both must agree, or the compaction trigger works from wrong numbers. */
            kvs_engine_stats(e, &before);
            CU_ASSERT(before.live_bytes <= before.disk_bytes);
            CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
            e = tutil_open(dir, &opt);
            kvs_engine_stats(e, &after);
            CU_ASSERT_EQUAL(after.live_bytes, before.live_bytes);
            CU_ASSERT_EQUAL(after.keys, before.keys);
        }
        for (int i = 0; i < NKEYS; i++) {
            snprintf(k, sizeof(k), "key%d", i);
            if (m.version[i] < 0) {
                bad += !is_missing(e, k);
            } else {
                fill_val(i, m.version[i], v, &vl);
                bad += !has_value(e, k, strlen(k), v, vl);
            }
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(m.gets_bad, 0);
    CU_ASSERT_EQUAL(m.errors, 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

static void test_compact_starts_automatically(void)
{
    char *dir = tutil_mkdtemp("auto");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_ring *ring = NULL;
    struct kvs_engine *e;
    char val[100];

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    small_opts(&opt);
    opt.ring = ring;
    opt.segment_size = 4096;
    opt.compact_min_dead = 16 << 10;
    opt.compact_dead_ratio = 0.5;
    e = tutil_open(dir, &opt);
    memset(val, 'x', sizeof(val));
    for (int i = 0; i < 2000; i++) {
        char key[16];

        snprintf(key, sizeof(key), "k%d", i % 10);
        CU_ASSERT_EQUAL_FATAL(kvs_engine_set(e, key, strlen(key), val, sizeof(val)), 0);
    }
    /* Compaction advances only as the ring turns: let it catch up, as a shard loop would. */
    for (int i = 0; i < 20; i++) {
        CU_ASSERT_EQUAL_FATAL(kvs_engine_set(e, "tick", 4, "", 0), 0);
        while (!kvs_engine_idle(e))
            CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    }
    kvs_engine_stats(e, &st);
    CU_ASSERT(st.compactions >= 1);
    CU_ASSERT(st.disk_bytes < 2000 * 130 / 4);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 11);
    CU_ASSERT(has_value(e, "k3", 2, val, sizeof(val)));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

static void test_compact_record_larger_than_step(void)
{
    char *dir = tutil_mkdtemp("bigrec");
    struct kvs_engine_options opt;
    struct kvs_engine *e;
    size_t n = 100 << 10;
    uint8_t *big = malloc(n);
    uint64_t rng = 7;

    CU_ASSERT_FATAL(big != NULL);
    tutil_fill(&rng, big, n);
    small_opts(&opt);
    opt.compact_step = 4096;
    opt.segment_size = 8192;
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "big", 3, big, n), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "big2", 4, big, n / 2), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "small", 5, "s", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "big2", 4, big, n / 3), 0);
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    CU_ASSERT(has_value(e, "big", 3, big, n));
    CU_ASSERT(has_value(e, "big2", 4, big, n / 3));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT(has_value(e, "big", 3, big, n));
    CU_ASSERT(has_value(e, "big2", 4, big, n / 3));
    CU_ASSERT(has_value(e, "small", 5, "s", 1));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    free(big);
    tutil_rmtree(dir);
}

static void test_compact_switches_many_records_in_batches(void)
{
    char *dir = tutil_mkdtemp("manysw");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    char key[16], val[16];
    int bad = 0;

    small_opts(&opt);
    opt.segment_size = 4 << 20; /* one output holds all 20000 live records */
    e = tutil_open(dir, &opt);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 20000; i++) {
            snprintf(key, sizeof(key), "k%d", i);
            snprintf(val, sizeof(val), "v%d-%d", i, round);
            CU_ASSERT_EQUAL_FATAL(
                kvs_engine_set_async(e, key, strlen(key), val, strlen(val), NULL, NULL), 0);
            if (i % 256 == 255)
                kvs_engine_flush(e);
        }
    }
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.dead_bytes, 0);
    CU_ASSERT_EQUAL(st.keys, 20000);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(val, sizeof(val), "v%d-1", i);
        if (!has_value(e, key, strlen(key), val, strlen(val)))
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

void test_compact_register(void);

void test_compact_register(void)
{
    CU_pSuite s = CU_add_suite("compact", NULL, NULL);

    CU_add_test(s, "test_compact_rate_limited_same_result", test_compact_rate_limited_same_result);
    CU_add_test(s, "test_compact_corrupt_record_stops_auto_compaction",
                test_compact_corrupt_record_stops_auto_compaction);
    CU_add_test(s, "test_compact_everysec_idle_frees_inputs",
                test_compact_everysec_idle_frees_inputs);
    CU_add_test(s, "test_compact_rate_close_cancels_the_wait",
                test_compact_rate_close_cancels_the_wait);
    CU_add_test(s, "test_compact_overwrites_shrink_directory",
                test_compact_overwrites_shrink_directory);
    CU_add_test(s, "test_compact_newest_wins_by_seq_after_compaction",
                test_compact_newest_wins_by_seq_after_compaction);
    CU_add_test(s, "test_compact_removed_key_never_resurrects",
                test_compact_removed_key_never_resurrects);
    CU_add_test(s, "test_compact_keeps_tombstone_for_active_value",
                test_compact_keeps_tombstone_for_active_value);
    CU_add_test(s, "test_compact_interleaves_with_async_ops",
                test_compact_interleaves_with_async_ops);
    CU_add_test(s, "test_compact_starts_automatically", test_compact_starts_automatically);
    CU_add_test(s, "test_compact_finish_chain_runs_in_ring_steps",
                test_compact_finish_chain_runs_in_ring_steps);
    CU_add_test(s, "test_compact_failed_marker_open_keeps_every_key",
                test_compact_failed_marker_open_keeps_every_key);
    CU_add_test(s, "test_compact_failed_marker_rename_keeps_every_key",
                test_compact_failed_marker_rename_keeps_every_key);
    CU_add_test(s, "test_compact_random_history_matches_model",
                test_compact_random_history_matches_model);
    CU_add_test(s, "test_compact_record_larger_than_step", test_compact_record_larger_than_step);
    CU_add_test(s, "test_compact_switches_many_records_in_batches",
                test_compact_switches_many_records_in_batches);
    tutil_need_ring(s, "compact");
}
