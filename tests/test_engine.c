/* SPDX-License-Identifier: MIT */
/*
 * Suite "engine": the public engine API on a temporary directory, driven synchronously and
 * asynchronously: persistence, overwrite, remove, binary data, limits, locking, group commit,
 * fsync=always, FLUSHALL, index-only queries.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <CUnit/CUnit.h>

#include "kvs/engine.h"
#include "kvs/error.h"
#include "kvs/ring.h"
#include "tutil.h"

static void expect_value(struct kvs_engine *e, const void *key, size_t klen, const void *val,
                         size_t vlen)
{
    const void *v = NULL;
    size_t n = 0;
    int rc = kvs_engine_get(e, key, klen, &v, &n);

    CU_ASSERT_EQUAL(rc, 0);
    if (rc == 0) {
        CU_ASSERT_EQUAL(n, vlen);
        if (n == vlen)
            CU_ASSERT(vlen == 0 || (v != NULL && val != NULL && memcmp(v, val, vlen) == 0));
    }
}

static void expect_missing(struct kvs_engine *e, const void *key, size_t klen)
{
    const void *v;
    size_t n;

    CU_ASSERT_EQUAL(kvs_engine_get(e, key, klen, &v, &n), KVS_ENOTFOUND);
}

static void test_engine_persists_across_reopen(void)
{
    char *dir = tutil_mkdtemp("persist");
    struct kvs_engine *e = tutil_open(dir, NULL);

    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, "one", 3), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "b", 1, "two", 3), 0);
    expect_value(e, "a", 1, "one", 3);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, NULL);
    expect_value(e, "a", 1, "one", 3);
    expect_value(e, "b", 1, "two", 3);
    expect_missing(e, "c", 1);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 2);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_overwrite_keeps_newest(void)
{
    char *dir = tutil_mkdtemp("overwrite");
    struct kvs_engine *e = tutil_open(dir, NULL);

    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, "v1", 2), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, "value2", 6), 0);
    expect_value(e, "k", 1, "value2", 6);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, NULL);
    expect_value(e, "k", 1, "value2", 6);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_remove_then_reopen(void)
{
    char *dir = tutil_mkdtemp("remove");
    struct kvs_engine *e = tutil_open(dir, NULL);

    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, "v", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "keep", 4, "v", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "k", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "k", 1), KVS_ENOTFOUND);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "never", 5), KVS_ENOTFOUND);
    expect_missing(e, "k", 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, NULL);
    expect_missing(e, "k", 1);
    expect_value(e, "keep", 4, "v", 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

#define RANDOM_KEYS 100000

static void make_kv(uint64_t i, char *key, size_t *klen, uint8_t *val, size_t *vlen)
{
    uint64_t st = i * 2654435761ULL + 1;

    *klen = (size_t)snprintf(key, 32, "key-%llu-%llx", (unsigned long long)i,
                             (unsigned long long)tutil_rand(&st));
    *vlen = (size_t)(tutil_rand(&st) % 200);
    tutil_fill(&st, val, *vlen);
}

static void test_engine_random_keys_survive_reopen(void)
{
    char *dir = tutil_mkdtemp("random");
    struct kvs_engine_options opt;
    struct kvs_engine *e;
    char key[32];
    uint8_t val[256];
    size_t klen, vlen;

    kvs_engine_options_init(&opt);
    opt.segment_size = 4 << 20; /* several segments, so rotation and hints are exercised */
    opt.fsync = KVS_FSYNC_NEVER;
    e = tutil_open(dir, &opt);
    for (uint64_t i = 0; i < RANDOM_KEYS; i++) {
        make_kv(i, key, &klen, val, &vlen);
        CU_ASSERT_EQUAL_FATAL(kvs_engine_set_async(e, key, klen, val, vlen, NULL, NULL), 0);
        if (i % 64 == 63)
            kvs_engine_flush(e);
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), RANDOM_KEYS);
    for (uint64_t i = 0; i < RANDOM_KEYS; i++) {
        make_kv(i, key, &klen, val, &vlen);
        expect_value(e, key, klen, val, vlen);
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_binary_and_empty(void)
{
    char *dir = tutil_mkdtemp("binary");
    struct kvs_engine *e = tutil_open(dir, NULL);
    const char k1[] = {'a', 0, 'b'}, v1[] = {0, 0, 1, 0};
    const char k2[] = {'a', 0, 'c'};

    CU_ASSERT_EQUAL(kvs_engine_set(e, k1, 3, v1, 4), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, k2, 3, "", 0), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "", 0, "empty key", 9), 0);
    CU_ASSERT_EQUAL(kvs_engine_value_len(e, k2, 3), 0);
    CU_ASSERT_EQUAL(kvs_engine_value_len(e, k1, 3), 4);
    CU_ASSERT_EQUAL(kvs_engine_value_len(e, "a", 1), KVS_ENOTFOUND);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, NULL);
    expect_value(e, k1, 3, v1, 4);
    expect_value(e, k2, 3, "", 0);
    expect_value(e, "", 0, "empty key", 9);
    expect_missing(e, "a", 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_large_value(void)
{
    char *dir = tutil_mkdtemp("large");
    struct kvs_engine *e = tutil_open(dir, NULL);
    size_t n = 10u << 20;
    uint8_t *big = malloc(n);
    uint64_t st = 42;

    CU_ASSERT_FATAL(big != NULL);
    tutil_fill(&st, big, n);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "big", 3, big, n), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "small", 5, "x", 1), 0);
    expect_value(e, "big", 3, big, n);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, NULL);
    expect_value(e, "big", 3, big, n);
    expect_value(e, "small", 5, "x", 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    free(big);
    tutil_rmtree(dir);
}

static void test_engine_second_opener_refused(void)
{
    char *dir = tutil_mkdtemp("lock");
    struct kvs_engine *e = tutil_open(dir, NULL), *e2 = NULL;
    char err[256] = "";

    CU_ASSERT_EQUAL(kvs_engine_open(dir, NULL, &e2, err, sizeof(err)), KVS_ELOCKED);
    CU_ASSERT_PTR_NULL(e2);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "locked"));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, NULL); /* the lock is released by close */
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_limits_and_options(void)
{
    char *dir = tutil_mkdtemp("limits");
    struct kvs_engine_options opt;
    struct kvs_engine *e = NULL;
    char err[256] = "";
    char key[65];
    const void *v;
    size_t n;

    kvs_engine_options_init(&opt);
    opt.max_key = 64;
    opt.max_value = 100;
    e = tutil_open(dir, &opt);
    memset(key, 'k', sizeof(key));
    CU_ASSERT_EQUAL(kvs_engine_set(e, key, 65, "v", 1), KVS_ETOOBIG);
    CU_ASSERT_EQUAL(kvs_engine_set(e, key, 64, "v", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, key, 65), 0);
    {
        uint8_t big[101] = {0};

        CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, big, 101), KVS_ETOOBIG);
        CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, big, 100), 0);
    }
    CU_ASSERT_EQUAL(kvs_engine_get(e, key, 65, &v, &n), KVS_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(kvs_strerror(KVS_ETOOBIG), "key or value too large");
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);

    kvs_engine_options_init(&opt);
    opt.segment_size = 4ULL << 30;
    CU_ASSERT_EQUAL(kvs_engine_open(dir, &opt, &e, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "segment_size"));
    kvs_engine_options_init(&opt);
    opt.max_value = 3ULL << 30;
    CU_ASSERT_EQUAL(kvs_engine_open(dir, &opt, &e, err, sizeof(err)), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "max_value"));
    kvs_engine_options_init(&opt);
    opt.compact_dead_ratio = 2.0;
    CU_ASSERT_EQUAL(kvs_engine_open(dir, &opt, &e, err, sizeof(err)), -EINVAL);
    kvs_engine_options_init(&opt);
    opt.create = false;
    CU_ASSERT_EQUAL(kvs_engine_open("/nonexistent/kvs-dir", &opt, &e, err, sizeof(err)), -ENOENT);
    tutil_rmtree(dir);
}

struct counter {
    int calls, errors;
    int last;
};

static void count_done(void *ctx, int res, const void *val, size_t vlen)
{
    struct counter *c = ctx;

    (void)val;
    (void)vlen;
    c->calls++;
    c->last = res;
    if (res != 0)
        c->errors++;
}

static void test_engine_group_commit_batches(void)
{
    char *dir = tutil_mkdtemp("group");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine *e;
    struct kvs_engine_stats st;
    struct counter c = {0, 0, 0};
    char key[16];

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    kvs_engine_options_init(&opt);
    opt.ring = ring;
    opt.fsync = KVS_FSYNC_ALWAYS;
    e = tutil_open(dir, &opt);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        CU_ASSERT_EQUAL(kvs_engine_set_async(e, key, strlen(key), "value", 5, count_done, &c), 0);
    }
    /* Visible at once (served from the write buffer), completed only after the write. */
    expect_value(e, "k7", 2, "value", 5);
    CU_ASSERT_EQUAL(c.calls, 0);
    kvs_engine_flush(e);
    while (c.calls < 100)
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    CU_ASSERT_EQUAL(c.errors, 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.batches, 1);
    CU_ASSERT_EQUAL(st.batched_records, 100);
    CU_ASSERT(st.fsyncs >= 1);
    CU_ASSERT_EQUAL(st.sets, 100);
    CU_ASSERT(kvs_engine_idle(e));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    expect_value(e, "k99", 3, "value", 5);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 100);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

static void test_engine_fsync_always_sync_sets(void)
{
    char *dir = tutil_mkdtemp("always");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;

    kvs_engine_options_init(&opt);
    opt.fsync = KVS_FSYNC_ALWAYS;
    opt.segment_size = 1024; /* rotation under always: the directory is synced too */
    e = tutil_open(dir, &opt);
    for (int i = 0; i < 50; i++) {
        char key[16];

        snprintf(key, sizeof(key), "k%d", i);
        CU_ASSERT_EQUAL(
            kvs_engine_set(e, key, strlen(key), "0123456789012345678901234567890123456789", 40), 0);
    }
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.batches, 50);
    CU_ASSERT(st.fsyncs >= 50);
    CU_ASSERT(st.segments > 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 50);
    expect_value(e, "k49", 3, "0123456789012345678901234567890123456789", 40);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_clear_is_durable(void)
{
    char *dir = tutil_mkdtemp("clear");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine *e;
    struct counter c = {0, 0, 0};

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    kvs_engine_options_init(&opt);
    opt.ring = ring;
    opt.segment_size = 1024;
    e = tutil_open(dir, &opt);
    for (int i = 0; i < 100; i++) {
        char key[16];

        snprintf(key, sizeof(key), "k%d", i);
        CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), "v", 1), 0);
    }
    CU_ASSERT_EQUAL(kvs_engine_clear_async(e, count_done, &c), 0);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 0);
    kvs_engine_flush(e);
    while (c.calls == 0)
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    CU_ASSERT_EQUAL(c.last, 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "after", 5, "yes", 3), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 1);
    expect_missing(e, "k5", 2);
    expect_value(e, "after", 5, "yes", 3);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

struct keyset {
    int seen[10];
    int total;
};

static void scan_key(void *ctx, const void *key, size_t klen)
{
    struct keyset *ks = ctx;
    const char *k = key;

    if (klen == 2 && k[0] == 'k' && k[1] >= '0' && k[1] <= '9')
        ks->seen[k[1] - '0']++;
    ks->total++;
}

static void test_engine_scan_count_stats(void)
{
    char *dir = tutil_mkdtemp("scan");
    struct kvs_engine *e = tutil_open(dir, NULL);
    struct kvs_engine_stats st;
    struct keyset ks;
    uint64_t cur = 0;

    memset(&ks, 0, sizeof(ks));
    for (int i = 0; i < 10; i++) {
        char key[3] = {'k', (char)('0' + i), 0};

        CU_ASSERT_EQUAL(kvs_engine_set(e, key, 2, "abc", 3), 0);
    }
    CU_ASSERT_EQUAL(kvs_engine_set(e, "k3", 2, "abcd", 4), 0);
    do
        cur = kvs_engine_scan(e, cur, 3, scan_key, &ks);
    while (cur != 0);
    for (int i = 0; i < 10; i++)
        CU_ASSERT(ks.seen[i] >= 1);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 10);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.keys, 10);
    CU_ASSERT_EQUAL(st.key_bytes, 20);
    CU_ASSERT(st.index_bytes_per_key > 0);
    CU_ASSERT_EQUAL(st.live_bytes, 10 * (28 + 2) + 9 * 3 + 4);
    CU_ASSERT_EQUAL(st.dead_bytes, 28 + 2 + 3);
    CU_ASSERT_EQUAL(st.sets, 11);
    CU_ASSERT_EQUAL(st.next_seq, 12);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_write_error_makes_store_read_only(void)
{
    char *dir = tutil_mkdtemp("wfail");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    struct rlimit old, lim;
    uint8_t val[8192];

    memset(val, 'v', sizeof(val));
    kvs_engine_options_init(&opt);
    opt.fsync = KVS_FSYNC_ALWAYS;
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "before", 6, "ok", 2), 0);
    /* A file size limit makes the next write fail with EFBIG, like a full disk would. */
    CU_ASSERT_FATAL(getrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 4096;
    CU_ASSERT_FATAL(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "big", 3, val, sizeof(val)), -EFBIG);
    CU_ASSERT_FATAL(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, SIG_DFL);
    kvs_engine_stats(e, &st);
    CU_ASSERT(st.failed);
    /* Never retried: later writes are refused, reads keep working. */
    CU_ASSERT_EQUAL(kvs_engine_set(e, "after", 5, "no", 2), KVS_EFAILED);
    CU_ASSERT_EQUAL(kvs_engine_remove(e, "before", 6), KVS_EFAILED);
    expect_value(e, "before", 6, "ok", 2);
    {
        /* The failed record is still in the index but not on disk: said as such, not as a
         * checksum error. */
        const void *v;
        size_t n;

        CU_ASSERT_EQUAL(kvs_engine_get(e, "big", 3, &v, &n), KVS_EFAILED);
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), KVS_EFAILED);
    /* What was acknowledged survives; the failed write left at most a torn tail. */
    e = tutil_open(dir, &opt);
    expect_value(e, "before", 6, "ok", 2);
    expect_missing(e, "after", 5);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_engine_everysec_syncs_after_a_write(void)
{
    char *dir = tutil_mkdtemp("everysec");
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine_stats st;
    struct kvs_engine *e;

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    kvs_engine_options_init(&opt);
    opt.ring = ring;
    opt.fsync = KVS_FSYNC_EVERYSEC;
    e = tutil_open(dir, &opt);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.fsyncs, 0);
    /* The set completes once written, before any sync ... */
    CU_ASSERT_EQUAL(kvs_engine_set(e, "k", 1, "v", 1), 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.fsyncs, 0);
    CU_ASSERT(kvs_engine_idle(e)); /* the armed timer does not count as work */
    /* ... and the engine's own timer then syncs it (the ring wakes when it fires). */
    while (st.fsyncs == 0) {
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
        kvs_engine_stats(e, &st);
    }
    CU_ASSERT_EQUAL(st.fsyncs, 1);
    CU_ASSERT_EQUAL(st.presyncs, 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

static void test_engine_everysec_syncs_segment_before_the_next(void)
{
    char *dir = tutil_mkdtemp("everyrot");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    uint8_t val[100];

    memset(val, 'r', sizeof(val));
    kvs_engine_options_init(&opt);
    opt.segment_size = 1024;
    e = tutil_open(dir, &opt);
    for (int i = 0; i < 40; i++) {
        char key[16];

        snprintf(key, sizeof(key), "k%d", i);
        CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), val, sizeof(val)), 0);
    }
    /* The first batch of every new segment waited for an fdatasync of the one before. */
    kvs_engine_stats(e, &st);
    CU_ASSERT(st.segments >= 4);
    CU_ASSERT(st.fsyncs >= st.segments - 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 40);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

/* Write 100-byte values under new keys until the store holds at least bytes. */
static void fill_until(struct kvs_engine *e, int *next, uint64_t bytes)
{
    struct kvs_engine_stats st;
    uint8_t val[100];
    char key[16];

    memset(val, 'p', sizeof(val));
    for (;;) {
        kvs_engine_stats(e, &st);
        if (st.disk_bytes >= bytes)
            return;
        snprintf(key, sizeof(key), "p%d", (*next)++);
        CU_ASSERT_FATAL(kvs_engine_set(e, key, strlen(key), val, sizeof(val)) == 0);
    }
}

/*
 * everysec: in the last eighth of the active segment the engine syncs it early and
 * continuously, so the sync that the next segment's first batch waits for is short; before
 * that point it syncs only on its timer (which never counts as early), and under never not at
 * all.
 */
static void test_engine_everysec_presyncs_a_nearly_full_segment(void)
{
    char *dir = tutil_mkdtemp("presync");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    int next = 0;

    kvs_engine_options_init(&opt);
    opt.segment_size = 64 << 10;
    opt.compact_min_dead = 0;
    e = tutil_open(dir, &opt);
    fill_until(e, &next, (64 << 10) - (8 << 10) - 200);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.segments, 1);
    CU_ASSERT_EQUAL(st.presyncs, 0);
    fill_until(e, &next, 64 << 10); /* the rest of the segment, up to its rotation */
    kvs_engine_stats(e, &st);
    CU_ASSERT(st.presyncs >= 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);

    dir = tutil_mkdtemp("presync-never");
    opt.fsync = KVS_FSYNC_NEVER;
    next = 0;
    e = tutil_open(dir, &opt);
    fill_until(e, &next, 128 << 10);
    kvs_engine_stats(e, &st);
    CU_ASSERT(st.segments >= 2);
    CU_ASSERT_EQUAL(st.presyncs, 0);
    CU_ASSERT_EQUAL(st.fsyncs, 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), (uint64_t)next);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

/* Count the NNNNNN.seg files in dir (not .seg.tmp or hints). */
static int count_seg_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);

        n += len > 4 && strcmp(de->d_name + len - 4, ".seg") == 0;
    }
    closedir(d);
    return n;
}

/*
 * Rotation under the async API: the next segment is created on the ring ahead of time. Sets
 * issued in one go (the ring not run, so the spare is still opening) overrun the full segment
 * instead of waiting; sets with the ring run to idle between them rotate into pre-opened
 * segments. Every
 * set completes, every key survives a reopen, and close leaves no unused spare segment.
 */
static void test_engine_rotation_on_the_ring(void)
{
    char *dir = tutil_mkdtemp("rotring");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_ring *ring = NULL;
    struct kvs_engine *e;
    struct counter c = {0, 0, 0};
    int segs;
    uint8_t val[100];
    char key[16];

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &ring) == 0);
    memset(val, 'q', sizeof(val));
    kvs_engine_options_init(&opt);
    opt.ring = ring;
    opt.segment_size = 4096;
    opt.compact_min_dead = 0;
    e = tutil_open(dir, &opt);
    /* Phase 1: 200 sets without a ring turn: the spare's openat cannot have completed. */
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "a%d", i);
        CU_ASSERT_EQUAL(kvs_engine_set_async(e, key, strlen(key), val, sizeof(val), count_done, &c),
                        0);
    }
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.segments, 1);
    /* Draining counts the spare's openat too (it is in flight like any engine op). */
    while (!kvs_engine_idle(e)) {
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    }
    /* Phase 2: a few sets, then the ring runs until the engine is idle again: whenever the
     * active segment is full, its spare has been created already. */
    for (int i = 0; i < 400; i++) {
        snprintf(key, sizeof(key), "b%d", i);
        CU_ASSERT_EQUAL(kvs_engine_set_async(e, key, strlen(key), val, sizeof(val), count_done, &c),
                        0);
        if (i % 4 == 3) {
            while (!kvs_engine_idle(e)) {
                kvs_engine_flush(e);
                CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
            }
        }
    }
    while (!kvs_engine_idle(e)) {
        kvs_engine_flush(e);
        CU_ASSERT_FATAL(kvs_ring_run(ring, 1, 0) >= 0);
    }
    CU_ASSERT_EQUAL(c.calls, 600);
    CU_ASSERT_EQUAL(c.errors, 0);
    kvs_engine_stats(e, &st);
    CU_ASSERT_FALSE(st.failed);
    CU_ASSERT(st.segments >= 10); /* 400 x 131 bytes in 4 KiB segments, all rotated in time */
    segs = (int)st.segments;
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    CU_ASSERT_EQUAL(count_seg_files(dir), segs); /* the unused spare was removed */
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 600);
    expect_value(e, "a0", 2, val, sizeof(val));
    expect_value(e, "a199", 4, val, sizeof(val));
    expect_value(e, "b399", 4, val, sizeof(val));
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    kvs_ring_free(ring);
    tutil_rmtree(dir);
}

static void test_engine_parse_fsync(void)
{
    enum kvs_fsync f;

    CU_ASSERT_EQUAL(kvs_engine_parse_fsync("always", &f), 0);
    CU_ASSERT_EQUAL(f, KVS_FSYNC_ALWAYS);
    CU_ASSERT_EQUAL(kvs_engine_parse_fsync("never", &f), 0);
    CU_ASSERT_EQUAL(f, KVS_FSYNC_NEVER);
    CU_ASSERT_EQUAL(kvs_engine_parse_fsync("everysec", &f), 0);
    CU_ASSERT_EQUAL(f, KVS_FSYNC_EVERYSEC);
    CU_ASSERT_EQUAL(kvs_engine_parse_fsync("sometimes", &f), -EINVAL);
    CU_ASSERT_STRING_EQUAL(kvs_engine_fsync_name(KVS_FSYNC_EVERYSEC), "everysec");
}

void test_engine_register(void);

void test_engine_register(void)
{
    CU_pSuite s = CU_add_suite("engine", NULL, NULL);

    CU_add_test(s, "test_engine_persists_across_reopen", test_engine_persists_across_reopen);
    CU_add_test(s, "test_engine_everysec_presyncs_a_nearly_full_segment",
                test_engine_everysec_presyncs_a_nearly_full_segment);
    CU_add_test(s, "test_engine_overwrite_keeps_newest", test_engine_overwrite_keeps_newest);
    CU_add_test(s, "test_engine_remove_then_reopen", test_engine_remove_then_reopen);
    CU_add_test(s, "test_engine_random_keys_survive_reopen",
                test_engine_random_keys_survive_reopen);
    CU_add_test(s, "test_engine_binary_and_empty", test_engine_binary_and_empty);
    CU_add_test(s, "test_engine_large_value", test_engine_large_value);
    CU_add_test(s, "test_engine_second_opener_refused", test_engine_second_opener_refused);
    CU_add_test(s, "test_engine_limits_and_options", test_engine_limits_and_options);
    CU_add_test(s, "test_engine_group_commit_batches", test_engine_group_commit_batches);
    CU_add_test(s, "test_engine_fsync_always_sync_sets", test_engine_fsync_always_sync_sets);
    CU_add_test(s, "test_engine_clear_is_durable", test_engine_clear_is_durable);
    CU_add_test(s, "test_engine_scan_count_stats", test_engine_scan_count_stats);
    CU_add_test(s, "test_engine_write_error_makes_store_read_only",
                test_engine_write_error_makes_store_read_only);
    CU_add_test(s, "test_engine_everysec_syncs_after_a_write",
                test_engine_everysec_syncs_after_a_write);
    CU_add_test(s, "test_engine_everysec_syncs_segment_before_the_next",
                test_engine_everysec_syncs_segment_before_the_next);
    CU_add_test(s, "test_engine_rotation_on_the_ring", test_engine_rotation_on_the_ring);
    CU_add_test(s, "test_engine_parse_fsync", test_engine_parse_fsync);
    tutil_need_ring(s, "engine");
}
