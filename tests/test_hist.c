/* SPDX-License-Identifier: MIT */
/*
 * Tests of kvs-bench's log-linear latency histogram (perf/bench/hist.c): percentiles stay
 * within the stated 1% of the exact order statistics on a constant, a uniform and an
 * exponential-like distribution; buckets tile the value range; merging two histograms equals
 * recording everything into one; min, max and overflow stay exact.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <CUnit/CUnit.h>

#include "kvs/hist.h"
#include "tutil.h"

void test_hist_register(void);

static const double test_pcts[] = {1, 10, 25, 50, 75, 90, 99, 99.9, 99.99};

/* malloc that cannot return NULL (the analyzer does not know CUnit's _FATAL asserts jump). */
static void *xmalloc(size_t n)
{
    void *p = malloc(n);

    if (p == NULL)
        abort();
    return p;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* The exact p-th percentile of sorted v[0..n): the smallest value with >= p% at or below. */
static uint64_t exact_percentile(const uint64_t *v, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);

    if (rank < 1)
        rank = 1;
    return v[rank - 1];
}

static bool within(uint64_t got, uint64_t want, double rel)
{
    double d = fabs((double)got - (double)want);

    return d <= rel * (double)want + 0.5;
}

/* Record v[0..n) and compare every test percentile with the exact one. */
static void check_against_exact(uint64_t *v, size_t n)
{
    struct kvs_hist *h = xmalloc(sizeof(*h));

    kvs_hist_init(h);
    for (size_t i = 0; i < n; i++)
        kvs_hist_record(h, v[i]);
    qsort(v, n, sizeof(*v), cmp_u64);
    CU_ASSERT_EQUAL(h->total, n);
    CU_ASSERT_EQUAL(h->min, v[0]);
    CU_ASSERT_EQUAL(h->max, v[n - 1]);
    CU_ASSERT_EQUAL(kvs_hist_percentile(h, 0), v[0]);
    CU_ASSERT_EQUAL(kvs_hist_percentile(h, 100), v[n - 1]);
    for (size_t i = 0; i < sizeof(test_pcts) / sizeof(test_pcts[0]); i++) {
        uint64_t want = exact_percentile(v, n, test_pcts[i]);
        uint64_t got = kvs_hist_percentile(h, test_pcts[i]);

        CU_ASSERT_TRUE(within(got, want, 0.01));
    }
    free(h);
}

static void test_hist_constant_is_exact_at_every_percentile(void)
{
    struct kvs_hist *h = xmalloc(sizeof(*h));

    kvs_hist_init(h);
    kvs_hist_record_n(h, 123457, 1000);
    CU_ASSERT_EQUAL(h->total, 1000);
    for (size_t i = 0; i < sizeof(test_pcts) / sizeof(test_pcts[0]); i++)
        CU_ASSERT_EQUAL(kvs_hist_percentile(h, test_pcts[i]), 123457);
    CU_ASSERT_DOUBLE_EQUAL(kvs_hist_mean(h), 123457.0, 1e-6);
    free(h);
}

static void test_hist_uniform_within_one_percent(void)
{
    size_t n = 200000;
    uint64_t *v = xmalloc(n * sizeof(*v));
    uint64_t st = 42;

    /* 1 us .. 10 ms in ns: spans many power-of-two blocks. */
    for (size_t i = 0; i < n; i++)
        v[i] = 1000 + tutil_rand(&st) % 10000000;
    check_against_exact(v, n);
    free(v);
}

static void test_hist_exponential_within_one_percent(void)
{
    size_t n = 200000;
    uint64_t *v = xmalloc(n * sizeof(*v));
    uint64_t st = 7;

    /* Exponential with a 50 us mean plus a 20 us floor: a long, latency-like tail. */
    for (size_t i = 0; i < n; i++) {
        double u = ((double)(tutil_rand(&st) >> 11) + 0.5) * 0x1.0p-53;

        v[i] = 20000 + (uint64_t)(-log(u) * 50000.0);
    }
    check_against_exact(v, n);
    free(v);
}

static void test_hist_small_values_are_exact(void)
{
    for (uint64_t x = 0; x < 256; x++) {
        uint64_t lo;
        uint64_t hi;

        kvs_hist_bucket_bounds(kvs_hist_bucket_index(x), &lo, &hi);
        CU_ASSERT_EQUAL(lo, x);
        CU_ASSERT_EQUAL(hi, x);
    }
}

static void test_hist_buckets_tile_the_range(void)
{
    uint64_t prev_hi = 0;

    for (size_t i = 0; i < KVS_HIST_BUCKETS; i++) {
        uint64_t lo;
        uint64_t hi;

        kvs_hist_bucket_bounds(i, &lo, &hi);
        if (i > 0)
            CU_ASSERT_EQUAL(lo, prev_hi + 1);
        CU_ASSERT_TRUE(hi >= lo);
        /* The width bound that the 1% promise rests on. */
        CU_ASSERT_TRUE((double)(hi - lo + 1) <= (double)lo / 128.0 + 1.0);
        CU_ASSERT_EQUAL(kvs_hist_bucket_index(lo), i);
        CU_ASSERT_EQUAL(kvs_hist_bucket_index(hi), i);
        prev_hi = hi;
    }
    CU_ASSERT_EQUAL(prev_hi, ((uint64_t)1 << KVS_HIST_MAX_BITS) - 1);
}

static void test_hist_merge_equals_recording_into_one(void)
{
    struct kvs_hist *a = xmalloc(sizeof(*a));
    struct kvs_hist *b = xmalloc(sizeof(*b));
    struct kvs_hist *all = xmalloc(sizeof(*all));
    uint64_t st = 99;

    kvs_hist_init(a);
    kvs_hist_init(b);
    kvs_hist_init(all);
    for (int i = 0; i < 50000; i++) {
        uint64_t x = 500 + tutil_rand(&st) % 100000;
        uint64_t y = 1000000 + tutil_rand(&st) % 5000000;

        kvs_hist_record(a, x);
        kvs_hist_record(b, y);
        kvs_hist_record(all, x);
        kvs_hist_record(all, y);
    }
    kvs_hist_merge(a, b);
    CU_ASSERT_EQUAL(a->total, all->total);
    CU_ASSERT_EQUAL(a->min, all->min);
    CU_ASSERT_EQUAL(a->max, all->max);
    CU_ASSERT_DOUBLE_EQUAL(a->sum, all->sum, 1e-6 * all->sum);
    for (size_t i = 0; i < KVS_HIST_BUCKETS; i++)
        CU_ASSERT_EQUAL(a->counts[i], all->counts[i]);
    for (size_t i = 0; i < sizeof(test_pcts) / sizeof(test_pcts[0]); i++)
        CU_ASSERT_EQUAL(kvs_hist_percentile(a, test_pcts[i]),
                        kvs_hist_percentile(all, test_pcts[i]));
    /* Merging an empty histogram changes nothing, min included. */
    kvs_hist_init(b);
    kvs_hist_merge(a, b);
    CU_ASSERT_EQUAL(a->total, all->total);
    CU_ASSERT_EQUAL(a->min, all->min);
    free(a);
    free(b);
    free(all);
}

static void test_hist_min_max_and_overflow_stay_exact(void)
{
    struct kvs_hist *h = xmalloc(sizeof(*h));
    uint64_t huge = (uint64_t)1 << 50;

    kvs_hist_init(h);
    CU_ASSERT_EQUAL(kvs_hist_percentile(h, 50), 0);
    CU_ASSERT_EQUAL(kvs_hist_mean(h), 0.0);
    kvs_hist_record(h, 3);
    kvs_hist_record(h, 1000001);
    kvs_hist_record(h, huge);
    CU_ASSERT_EQUAL(h->min, 3);
    CU_ASSERT_EQUAL(h->max, huge);
    CU_ASSERT_EQUAL(h->overflow, 1);
    CU_ASSERT_EQUAL(kvs_hist_percentile(h, 0), 3);
    CU_ASSERT_EQUAL(kvs_hist_percentile(h, 30), 3);
    CU_ASSERT_TRUE(within(kvs_hist_percentile(h, 50), 1000001, 0.01));
    CU_ASSERT_EQUAL(kvs_hist_percentile(h, 100), huge);
    free(h);
}

void test_hist_register(void)
{
    CU_pSuite s = CU_add_suite("hist", NULL, NULL);

    CU_add_test(s, "constant_is_exact_at_every_percentile",
                test_hist_constant_is_exact_at_every_percentile);
    CU_add_test(s, "uniform_within_one_percent", test_hist_uniform_within_one_percent);
    CU_add_test(s, "exponential_within_one_percent", test_hist_exponential_within_one_percent);
    CU_add_test(s, "small_values_are_exact", test_hist_small_values_are_exact);
    CU_add_test(s, "buckets_tile_the_range", test_hist_buckets_tile_the_range);
    CU_add_test(s, "merge_equals_recording_into_one", test_hist_merge_equals_recording_into_one);
    CU_add_test(s, "min_max_and_overflow_stay_exact", test_hist_min_max_and_overflow_stay_exact);
}
