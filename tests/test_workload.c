/* SPDX-License-Identifier: MIT */
/*
 * Tests of kvs-bench's workload generator (perf/bench/workload.c): key format, the SET:GET
 * mix, sequential and seeded streams, and the --verify value round trip: a value written for
 * (key, version) checks good, and every corruption the check promises to catch is caught
 * (flipped byte anywhere, truncation, extension, another key's value, a version never issued,
 * a nil reply), also with several threads writing the same keys concurrently (marker for the
 * ThreadSanitizer build: KVS_TEST_THREADS).
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "kvs/workload.h"

void test_workload_register(void);

static struct kvs_workload *mk(uint64_t keys, unsigned set, unsigned get, uint64_t lo, uint64_t hi,
                               bool verify)
{
    struct kvs_workload_config cfg = {
        .keys = keys,
        .pattern = KVS_WORKLOAD_UNIFORM,
        .set_ratio = set,
        .get_ratio = get,
        .size_min = lo,
        .size_max = hi,
        .verify = verify,
    };
    struct kvs_workload *w = NULL;
    const char *why = NULL;

    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), 0);
    return w;
}

static void test_workload_keys_look_like_redis_benchmark(void)
{
    struct kvs_workload *w = mk(100000, 1, 1, 10, 10, false);
    char buf[KVS_WORKLOAD_KEY_MAX_LEN];
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    n = kvs_workload_key(w, 42, buf);
    CU_ASSERT_EQUAL(n, 16);
    CU_ASSERT_EQUAL(memcmp(buf, "key:000000000042", n), 0);
    kvs_workload_free(w);
    /* A keyspace beyond 12 digits widens the id rather than wrapping it. */
    w = mk(1000000000000ULL, 1, 1, 10, 10, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    n = kvs_workload_key(w, 999999999999ULL, buf);
    CU_ASSERT_EQUAL(n, 16);
    CU_ASSERT_EQUAL(memcmp(buf, "key:999999999999", n), 0);
    kvs_workload_free(w);
}

static void test_workload_ratio_is_respected(void)
{
    struct kvs_workload *w = mk(1000, 1, 10, 10, 10, false);
    struct kvs_workload_stream s;
    int sets = 0;
    int n = 110000;

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    kvs_workload_stream_init(w, &s, 1, 0, 1);
    for (int i = 0; i < n; i++) {
        uint64_t key;

        sets += kvs_workload_next(w, &s, &key) == KVS_WORKLOAD_SET;
        CU_ASSERT(key < 1000);
    }
    /* Expect 10000 SETs; sigma is about 95. */
    CU_ASSERT(sets > 9500 && sets < 10500);
    kvs_workload_free(w);

    w = mk(1000, 0, 1, 10, 10, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    kvs_workload_stream_init(w, &s, 1, 0, 1);
    for (int i = 0; i < 1000; i++) {
        uint64_t key;

        CU_ASSERT_EQUAL(kvs_workload_next(w, &s, &key), KVS_WORKLOAD_GET);
    }
    kvs_workload_free(w);

    w = mk(1000, 1, 0, 10, 10, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    kvs_workload_stream_init(w, &s, 1, 0, 1);
    for (int i = 0; i < 1000; i++) {
        uint64_t key;

        CU_ASSERT_EQUAL(kvs_workload_next(w, &s, &key), KVS_WORKLOAD_SET);
    }
    kvs_workload_free(w);
}

static void test_workload_sequential_streams_interleave(void)
{
    struct kvs_workload_config cfg = {.keys = 10,
                                      .pattern = KVS_WORKLOAD_SEQUENTIAL,
                                      .set_ratio = 1,
                                      .size_min = 1,
                                      .size_max = 1};
    struct kvs_workload *w = NULL;
    struct kvs_workload_stream s0;
    struct kvs_workload_stream s1;
    const char *why;
    uint64_t key;

    CU_ASSERT_EQUAL_FATAL(kvs_workload_new(&cfg, &w, &why), 0);
    kvs_workload_stream_init(w, &s0, 5, 0, 2);
    kvs_workload_stream_init(w, &s1, 5, 1, 2);
    for (uint64_t i = 0; i < 5; i++) {
        (void)kvs_workload_next(w, &s0, &key);
        CU_ASSERT_EQUAL(key, 2 * i);
        (void)kvs_workload_next(w, &s1, &key);
        CU_ASSERT_EQUAL(key, 2 * i + 1);
    }
    /* Then both wrap around the keyspace. */
    (void)kvs_workload_next(w, &s0, &key);
    CU_ASSERT_EQUAL(key, 0);
    kvs_workload_free(w);
}

static void test_workload_same_seed_same_stream(void)
{
    struct kvs_workload *w = mk(1000000, 1, 3, 10, 1000, false);
    struct kvs_workload_stream a;
    struct kvs_workload_stream b;
    struct kvs_workload_stream c;
    int same_as_other = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    kvs_workload_stream_init(w, &a, 11, 3, 8);
    kvs_workload_stream_init(w, &b, 11, 3, 8);
    kvs_workload_stream_init(w, &c, 11, 4, 8);
    for (int i = 0; i < 1000; i++) {
        uint64_t ka;
        uint64_t kb;
        uint64_t kc;

        CU_ASSERT_EQUAL(kvs_workload_next(w, &a, &ka), kvs_workload_next(w, &b, &kb));
        CU_ASSERT_EQUAL(ka, kb);
        (void)kvs_workload_next(w, &c, &kc);
        same_as_other += ka == kc;
        CU_ASSERT_EQUAL(kvs_workload_value_len(w, &a), kvs_workload_value_len(w, &b));
    }
    CU_ASSERT(same_as_other < 5);
    kvs_workload_free(w);
}

/* Build the value of the next version of key id, as a SET would. */
static char *make_value(struct kvs_workload *w, uint64_t id, uint64_t *version, size_t *len)
{
    char *v;

    *version = kvs_workload_issue_version(w, id);
    *len = (size_t)kvs_workload_verify_len(w, id, *version);
    v = malloc(*len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    kvs_workload_value_fill(w, id, *version, v, *len);
    return v;
}

static void test_workload_verify_round_trip(void)
{
    struct kvs_workload *w = mk(1000, 1, 1, 24, 300, true);
    uint64_t got;

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (uint64_t id = 0; id < 1000; id += 7) {
        for (int round = 0; round < 3; round++) {
            uint64_t ver;
            size_t len;
            char *v = make_value(w, id, &ver, &len);

            CU_ASSERT_EQUAL(ver, (uint64_t)round + 1);
            CU_ASSERT(len >= 24 && len <= 300);
            /* Deterministic: the same (key, version) always has the same length. */
            CU_ASSERT_EQUAL(kvs_workload_verify_len(w, id, ver), len);
            CU_ASSERT_EQUAL(kvs_workload_value_check(w, id, v, len, &got), KVS_VERIFY_OK);
            CU_ASSERT_EQUAL(got, ver);
            free(v);
        }
    }
    kvs_workload_free(w);
}

static void test_workload_verify_catches_every_flipped_byte(void)
{
    struct kvs_workload *w = mk(10, 1, 1, 100, 100, true);
    uint64_t ver;
    uint64_t got;
    size_t len;
    char *v;

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    v = make_value(w, 3, &ver, &len);
    for (size_t i = 0; i < len; i++) {
        v[i] ^= 0x01;
        CU_ASSERT_NOT_EQUAL(kvs_workload_value_check(w, 3, v, len, &got), KVS_VERIFY_OK);
        v[i] ^= 0x01;
    }
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 3, v, len, &got), KVS_VERIFY_OK);
    free(v);
    kvs_workload_free(w);
}

static void test_workload_verify_catches_wrong_values(void)
{
    struct kvs_workload *w = mk(10, 1, 1, 40, 60, true);
    uint64_t ver;
    uint64_t got;
    size_t len;
    char *v;
    char *other;
    size_t olen;
    uint64_t over;

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    v = make_value(w, 5, &ver, &len);
    other = make_value(w, 6, &over, &olen);
    /* Truncated and extended. */
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, v, len - 1, &got), KVS_VERIFY_LENGTH);
    v[len] = 'A';
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, v, len + 1, &got), KVS_VERIFY_LENGTH);
    /* Another key's (valid) value. */
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, other, olen, &got), KVS_VERIFY_KEY);
    /* Nil, garbage, too short for a header. */
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, NULL, 0, &got), KVS_VERIFY_MISSING);
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, "hello", 5, &got), KVS_VERIFY_HEADER);
    memset(other, 'x', olen);
    CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, other, olen, &got), KVS_VERIFY_HEADER);
    free(other);
    /* A version of key 5 that was never issued (forged with the generator itself). */
    {
        size_t flen = (size_t)kvs_workload_verify_len(w, 5, ver + 1);
        char *f = malloc(flen);

        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        kvs_workload_value_fill(w, 5, ver + 1, f, flen);
        CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, f, flen, &got), KVS_VERIFY_VERSION);
        /* Once a writer takes that version, the same bytes become legitimate. */
        CU_ASSERT_EQUAL(kvs_workload_issue_version(w, 5), ver + 1);
        CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, f, flen, &got), KVS_VERIFY_OK);
        /* And the older version stays acceptable (a concurrent writer may have lost). */
        CU_ASSERT_EQUAL(kvs_workload_value_check(w, 5, v, len, &got), KVS_VERIFY_OK);
        free(f);
    }
    free(v);
    kvs_workload_free(w);
}

struct writer {
    struct kvs_workload *w;
    int bad; /* values a concurrent reader would have rejected */
};

/* Write every key of a small keyspace many times, checking each value right after, while
 * another thread does the same: the shared version counters must keep every value valid. */
static void *writer_main(void *arg)
{
    struct writer *wr = arg;
    char buf[64];

    for (int round = 0; round < 2000; round++) {
        for (uint64_t id = 0; id < 8; id++) {
            uint64_t ver = kvs_workload_issue_version(wr->w, id);
            size_t len = (size_t)kvs_workload_verify_len(wr->w, id, ver);
            uint64_t got;

            kvs_workload_value_fill(wr->w, id, ver, buf, len);
            wr->bad += kvs_workload_value_check(wr->w, id, buf, len, &got) != KVS_VERIFY_OK;
        }
    }
    return NULL;
}

static void test_workload_verify_concurrent_writers_are_accepted(void)
{
    struct kvs_workload *w = mk(8, 1, 1, 24, 64, true);
    struct writer wr[2] = {{w, 0}, {w, 0}};
    pthread_t tid[2];

    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (int i = 0; i < 2; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&tid[i], NULL, writer_main, &wr[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(tid[i], NULL);
    CU_ASSERT_EQUAL(wr[0].bad + wr[1].bad, 0);
    /* Every version was issued exactly once: 2 threads x 2000 rounds per key. */
    for (uint64_t id = 0; id < 8; id++)
        CU_ASSERT_EQUAL(kvs_workload_issue_version(w, id), 4001);
    kvs_workload_free(w);
}

static void test_workload_bad_configs_are_refused(void)
{
    struct kvs_workload_config cfg = {
        .keys = 10, .set_ratio = 1, .get_ratio = 1, .size_min = 10, .size_max = 10};
    struct kvs_workload *w = NULL;
    const char *why = NULL;

    cfg.keys = 0;
    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(why);
    cfg.keys = 10;
    cfg.set_ratio = cfg.get_ratio = 0;
    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), -EINVAL);
    cfg.set_ratio = 1;
    cfg.size_min = 20;
    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), -EINVAL);
    cfg.size_min = 10;
    cfg.size_max = KVS_WORKLOAD_MAX_VALUE + 1;
    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), -EINVAL);
    cfg.size_max = 10;
    cfg.verify = true; /* 10 bytes cannot hold the 24-byte header */
    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), -EINVAL);
    cfg.pattern = KVS_WORKLOAD_ZIPF;
    cfg.verify = false;
    cfg.zipf_s = 0;
    CU_ASSERT_EQUAL(kvs_workload_new(&cfg, &w, &why), -EINVAL);
    CU_ASSERT_PTR_NULL(w);
}

void test_workload_register(void)
{
    CU_pSuite s = CU_add_suite("workload", NULL, NULL);

    CU_add_test(s, "keys_look_like_redis_benchmark", test_workload_keys_look_like_redis_benchmark);
    CU_add_test(s, "ratio_is_respected", test_workload_ratio_is_respected);
    CU_add_test(s, "sequential_streams_interleave", test_workload_sequential_streams_interleave);
    CU_add_test(s, "same_seed_same_stream", test_workload_same_seed_same_stream);
    CU_add_test(s, "verify_round_trip", test_workload_verify_round_trip);
    CU_add_test(s, "verify_catches_every_flipped_byte",
                test_workload_verify_catches_every_flipped_byte);
    CU_add_test(s, "verify_catches_wrong_values", test_workload_verify_catches_wrong_values);
    CU_add_test(s, "verify_concurrent_writers_are_accepted",
                test_workload_verify_concurrent_writers_are_accepted);
    CU_add_test(s, "bad_configs_are_refused", test_workload_bad_configs_are_refused);
}
