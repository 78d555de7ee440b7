/* SPDX-License-Identifier: MIT */
/*
 * engine_bench: the kvs engine against LMDB on the same machine, in the same run. For values
 * of 100 B and 4 KiB and fsync never / always: N sets of random keys, then N gets of random
 * existing keys; throughput and p50/p99 latency per operation, and the kvs/LMDB ratio.
 *
 * Set modes: "1/op" issues one set and waits for it (kvs: a synchronous set = one write
 * batch, plus one fdatasync under always; LMDB: one put per write transaction). "B/batch"
 * issues B sets before waiting (kvs: B async sets, one kvs_engine_flush = one group-commit
 * write; LMDB: B puts in one transaction). Under always the one-at-a-time runs use only -s
 * operations (each one waits for the disk). Everything else uses -n keys. Gets are
 * synchronous point reads (LMDB: one read transaction each, reset and renewed).
 *
 *   build/bin/engine_bench                   # 100000 keys, batches of 64, in $TMPDIR
 *   build/bin/engine_bench -n 20000 -b 128 -s 1000 -d /mnt/fast/bench
 *
 * It only writes under its directory (a fresh subdirectory per run, removed at the end).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvs/engine.h"
#include "kvs/error.h"
#include "kvs/log.h"
#include "kvs/ring.h"

#ifdef KVS_HAVE_LMDB
#include <lmdb.h>
#endif

#define KEY_LEN 16

struct result {
    char name[96];
    uint64_t ops;
    double secs;
    double p50_us, p99_us;
};

static struct result results[64];
static int nresults;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Key i: 16 bytes derived from a hash, so inserts arrive in random key order. */
static void key_of(uint64_t i, char *key)
{
    snprintf(key, KEY_LEN + 1, "%016llx", (unsigned long long)mix(i));
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static void record(const char *name, uint64_t ops, uint64_t t0, uint64_t t1, uint64_t *lat)
{
    struct result *r = &results[nresults++];

    qsort(lat, ops, sizeof(*lat), cmp_u64);
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->ops = ops;
    r->secs = (double)(t1 - t0) / 1e9;
    {
        uint64_t i50 = ops / 2, i99 = ops * 99 / 100;

        r->p50_us = (double)lat[i50] / 1e3;
        r->p99_us = (double)lat[i99] / 1e3;
    }
    printf("%-44s %8llu ops %12.0f ops/s  p50 %9.1f us  p99 %9.1f us\n", r->name,
           (unsigned long long)ops, (double)ops / r->secs, r->p50_us, r->p99_us);
    fflush(stdout);
}

static const struct result *find(const char *name)
{
    for (int i = 0; i < nresults; i++)
        if (strcmp(results[i].name, name) == 0)
            return &results[i];
    return NULL;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

/* ---- kvs ---- */

/* Completion bookkeeping of the batched kvs run (the done callbacks get the op index). */
struct pending {
    uint64_t *lat;
    uint64_t *done;
    int err;
};

static uint64_t *g_starts;

static struct pending *g_pend;

static void batch_done(void *ctx, int res, const void *val, size_t vlen)
{
    uint64_t i = (uint64_t)(uintptr_t)ctx;

    (void)val;
    (void)vlen;
    if (res != 0)
        g_pend->err = res;
    g_pend->lat[i] = now_ns() - g_starts[i];
    (*g_pend->done)++;
}

static int kvs_run(const char *base, size_t vsize, enum kvs_fsync policy, uint64_t n,
                   uint64_t single, unsigned batch, const uint8_t *val, uint64_t *lat)
{
    struct kvs_engine_options opt;
    struct kvs_ring *ring = NULL;
    struct kvs_engine *e = NULL;
    struct pending p = {lat, NULL, 0};
    char dir[512], key[KEY_LEN + 1], name[96], err[256];
    const char *pol = kvs_engine_fsync_name(policy);
    uint64_t done = 0, t0, t1;
    int rc;

    p.done = &done;
    g_pend = &p;
    rc = kvs_ring_new(NULL, &ring);
    if (rc < 0)
        return rc;
    kvs_engine_options_init(&opt);
    opt.fsync = policy;
    opt.ring = ring;
    opt.compact_min_dead = 0;
    opt.write_buffer = 4u << 20;

    /* One at a time. */
    snprintf(dir, sizeof(dir), "%s/kvs-%zu-%s-single", base, vsize, pol);
    rc = kvs_engine_open(dir, &opt, &e, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        goto out;
    }
    t0 = now_ns();
    for (uint64_t i = 0; i < single; i++) {
        uint64_t s = now_ns();

        key_of(i, key);
        rc = kvs_engine_set(e, key, KEY_LEN, val, vsize);
        if (rc < 0)
            goto out;
        lat[i] = now_ns() - s;
    }
    t1 = now_ns();
    snprintf(name, sizeof(name), "kvs  set %4zuB fsync=%-6s 1/op", vsize, pol);
    record(name, single, t0, t1, lat);
    rc = kvs_engine_close(e);
    e = NULL;
    if (rc < 0)
        goto out;

    /* Batched: the shard-loop pattern, batch async sets then one flush. */
    snprintf(dir, sizeof(dir), "%s/kvs-%zu-%s", base, vsize, pol);
    rc = kvs_engine_open(dir, &opt, &e, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "engine_bench: %s\n", err);
        goto out;
    }
    t0 = now_ns();
    for (uint64_t i = 0; i < n;) {
        uint64_t end = i + batch < n ? i + batch : n;

        for (; i < end; i++) {
            key_of(i, key);
            g_starts[i] = now_ns();
            rc =
                kvs_engine_set_async(e, key, KEY_LEN, val, vsize, batch_done, (void *)(uintptr_t)i);
            if (rc < 0)
                goto out;
        }
        kvs_engine_flush(e);
        while (done < end) {
            rc = kvs_ring_run(ring, 1, 0);
            if (rc < 0)
                goto out;
        }
        if (p.err != 0) {
            rc = p.err;
            goto out;
        }
    }
    t1 = now_ns();
    snprintf(name, sizeof(name), "kvs  set %4zuB fsync=%-6s %u/batch", vsize, pol, batch);
    record(name, n, t0, t1, lat);

    /* Gets of random existing keys. */
    t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        const void *v;
        size_t vl;
        uint64_t s = now_ns();

        key_of(mix(i ^ 0x5555) % n, key);
        rc = kvs_engine_get(e, key, KEY_LEN, &v, &vl);
        if (rc < 0 || vl != vsize) {
            rc = rc < 0 ? rc : -EIO;
            goto out;
        }
        lat[i] = now_ns() - s;
    }
    t1 = now_ns();
    snprintf(name, sizeof(name), "kvs  get %4zuB fsync=%-6s", vsize, pol);
    record(name, n, t0, t1, lat);
    {
        struct kvs_engine_stats st;

        kvs_engine_stats(e, &st);
        printf("     (kvs: %llu batches for %llu records, %llu fdatasyncs, index %.1f B/key "
               "beyond the key)\n",
               (unsigned long long)st.batches, (unsigned long long)st.batched_records,
               (unsigned long long)st.fsyncs, st.index_bytes_per_key);
    }
    rc = 0;
out:
    if (rc < 0)
        fprintf(stderr, "engine_bench: kvs %zu %s: %s\n", vsize, pol, kvs_strerror(rc));
    kvs_engine_close(e);
    kvs_ring_free(ring);
    return rc;
}

/* ---- LMDB ---- */

#ifdef KVS_HAVE_LMDB
static int lmdb_open(const char *dir, bool durable, MDB_env **env, MDB_dbi *dbi)
{
    MDB_txn *txn;
    int rc;

    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return -errno;
    rc = mdb_env_create(env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(*env, 8ULL << 30);
    if (rc == 0)
        rc = mdb_env_open(*env, dir, durable ? 0 : MDB_NOSYNC, 0644);
    if (rc == 0)
        rc = mdb_txn_begin(*env, NULL, 0, &txn);
    if (rc == 0) {
        rc = mdb_dbi_open(txn, NULL, 0, dbi);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
    }
    if (rc != 0)
        fprintf(stderr, "engine_bench: lmdb %s: %s\n", dir, mdb_strerror(rc));
    return rc == 0 ? 0 : -EIO;
}

static int lmdb_put_batch(MDB_env *env, MDB_dbi dbi, uint64_t from, uint64_t to, size_t vsize,
                          const uint8_t *val)
{
    MDB_txn *txn;
    char key[KEY_LEN + 1];
    int rc = mdb_txn_begin(env, NULL, 0, &txn);

    for (uint64_t i = from; rc == 0 && i < to; i++) {
        MDB_val k = {KEY_LEN, key}, v = {vsize, (void *)val};

        key_of(i, key);
        rc = mdb_put(txn, dbi, &k, &v, 0);
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    return rc;
}

static int lmdb_run(const char *base, size_t vsize, bool durable, uint64_t n, uint64_t single,
                    unsigned batch, const uint8_t *val, uint64_t *lat)
{
    const char *pol = durable ? "always" : "never";
    MDB_env *env = NULL;
    MDB_dbi dbi = 0;
    MDB_txn *rtxn = NULL;
    char dir[512], key[KEY_LEN + 1], name[96];
    uint64_t t0, t1;
    int rc;

    snprintf(dir, sizeof(dir), "%s/lmdb-%zu-%s-single", base, vsize, pol);
    if (lmdb_open(dir, durable, &env, &dbi) != 0)
        return -EIO;
    t0 = now_ns();
    for (uint64_t i = 0; i < single; i++) {
        uint64_t s = now_ns();

        if (lmdb_put_batch(env, dbi, i, i + 1, vsize, val) != 0)
            goto fail;
        lat[i] = now_ns() - s;
    }
    t1 = now_ns();
    snprintf(name, sizeof(name), "lmdb set %4zuB fsync=%-6s 1/op", vsize, pol);
    record(name, single, t0, t1, lat);
    mdb_env_close(env);

    snprintf(dir, sizeof(dir), "%s/lmdb-%zu-%s", base, vsize, pol);
    if (lmdb_open(dir, durable, &env, &dbi) != 0)
        return -EIO;
    t0 = now_ns();
    for (uint64_t i = 0; i < n; i += batch) {
        uint64_t end = i + batch < n ? i + batch : n;
        uint64_t s = now_ns(), d;

        if (lmdb_put_batch(env, dbi, i, end, vsize, val) != 0)
            goto fail;
        /* Every put of the transaction completes when it commits. */
        d = now_ns();
        for (uint64_t j = i; j < end; j++)
            lat[j] = d - s;
    }
    t1 = now_ns();
    snprintf(name, sizeof(name), "lmdb set %4zuB fsync=%-6s %u/batch", vsize, pol, batch);
    record(name, n, t0, t1, lat);

    rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &rtxn);
    if (rc != 0)
        goto fail;
    mdb_txn_reset(rtxn);
    t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        MDB_val k = {KEY_LEN, key}, v;
        uint64_t s = now_ns();

        key_of(mix(i ^ 0x5555) % n, key);
        rc = mdb_txn_renew(rtxn);
        if (rc == 0)
            rc = mdb_get(rtxn, dbi, &k, &v);
        mdb_txn_reset(rtxn);
        if (rc != 0 || v.mv_size != vsize)
            goto fail;
        lat[i] = now_ns() - s;
    }
    t1 = now_ns();
    snprintf(name, sizeof(name), "lmdb get %4zuB fsync=%-6s", vsize, pol);
    record(name, n, t0, t1, lat);
    mdb_txn_abort(rtxn);
    mdb_env_close(env);
    return 0;
fail:
    fprintf(stderr, "engine_bench: lmdb failed\n");
    if (rtxn != NULL)
        mdb_txn_abort(rtxn);
    mdb_env_close(env);
    return -EIO;
}
#endif

static void ratio(const char *what)
{
    char a[96], b[96];
    const struct result *k, *l;

    snprintf(a, sizeof(a), "kvs  %s", what);
    snprintf(b, sizeof(b), "lmdb %s", what);
    k = find(a);
    l = find(b);
    if (k != NULL && l != NULL)
        printf("%-40s kvs/lmdb throughput %6.2fx   p99 %9.1f vs %9.1f us\n", what,
               ((double)k->ops / k->secs) / ((double)l->ops / l->secs), k->p99_us, l->p99_us);
}

/* A whole decimal number <= max, nothing else; false otherwise. */
static bool parse_count(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

static int bad_arg(char opt, const char *val)
{
    fprintf(stderr, "engine_bench: bad value '%s' for -%c\n", val, opt);
    return 2;
}

int main(int argc, char **argv)
{
    uint64_t n = 100000, single_always = 2000;
    unsigned batch = 64;
    const char *tmp = getenv("TMPDIR");
    char base[512];
    const size_t sizes[2] = {100, 4096};
    uint8_t *val;
    uint64_t *lat;
    int c, rc = 0;

    snprintf(base, sizeof(base), "%s", tmp != NULL && tmp[0] ? tmp : "/tmp");
    while ((c = getopt(argc, argv, "n:b:s:d:h")) != -1) {
        switch (c) {
        case 'n':
            if (!parse_count(optarg, UINT64_MAX, &n))
                return bad_arg('n', optarg);
            break;
        case 'b': {
            uint64_t v;

            if (!parse_count(optarg, UINT32_MAX, &v))
                return bad_arg('b', optarg);
            batch = (unsigned)v;
            break;
        }
        case 's':
            if (!parse_count(optarg, UINT64_MAX, &single_always))
                return bad_arg('s', optarg);
            break;
        case 'd':
            snprintf(base, sizeof(base), "%s", optarg);
            break;
        default:
            fprintf(stderr, "usage: engine_bench [-n keys] [-b batch] [-s single-always] "
                            "[-d dir]\n");
            return 2;
        }
    }
    if (n == 0 || batch == 0 || single_always == 0 || single_always > n) {
        fprintf(stderr, "engine_bench: need n > 0, batch > 0, 0 < single-always <= n\n");
        return 2;
    }
    kvs_log_set_level(KVS_LOG_WARN);
    strncat(base, "/engine_bench-XXXXXX", sizeof(base) - strlen(base) - 1);
    if (mkdtemp(base) == NULL) {
        perror("engine_bench: mkdtemp");
        return 1;
    }
    val = malloc(4096);
    lat = calloc(n, sizeof(*lat));
    g_starts = calloc(n, sizeof(*g_starts));
    if (val == NULL || lat == NULL || g_starts == NULL) {
        free(val);
        free(lat);
        free(g_starts);
        return 1;
    }
    for (size_t i = 0; i < 4096; i++)
        val[i] = (uint8_t)mix(i);
    printf("engine_bench: %llu keys of %d bytes, batch %u, one-at-a-time under always: %llu, "
           "dir %s\n",
           (unsigned long long)n, KEY_LEN, batch, (unsigned long long)single_always, base);
    for (int s = 0; s < 2 && rc == 0; s++) {
        for (int durable = 0; durable < 2 && rc == 0; durable++) {
            uint64_t single = durable ? single_always : n;

            rc = kvs_run(base, sizes[s], durable ? KVS_FSYNC_ALWAYS : KVS_FSYNC_NEVER, n, single,
                         batch, val, lat);
#ifdef KVS_HAVE_LMDB
            if (rc == 0)
                rc = lmdb_run(base, sizes[s], durable != 0, n, single, batch, val, lat);
#endif
        }
    }
    printf("\nratios (kvs ops/s divided by LMDB ops/s, same workload):\n");
    for (int s = 0; s < 2; s++) {
        for (int d = 0; d < 2; d++) {
            char what[96];
            const char *pol = d ? "always" : "never";

            snprintf(what, sizeof(what), "set %4zuB fsync=%-6s 1/op", sizes[s], pol);
            ratio(what);
            snprintf(what, sizeof(what), "set %4zuB fsync=%-6s %u/batch", sizes[s], pol, batch);
            ratio(what);
            snprintf(what, sizeof(what), "get %4zuB fsync=%-6s", sizes[s], pol);
            ratio(what);
        }
    }
    (void)nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(val);
    free(lat);
    free(g_starts);
    return rc == 0 ? 0 : 1;
}
