/* SPDX-License-Identifier: MIT */
/*
 * Tests of the rejection-inversion Zipf sampler (perf/bench/zipf.c): with a fixed seed, the
 * observed frequencies of the top ranks match k^-s / H(n, s) within five standard deviations
 * for s = 0.99 and 1.2 over n = 1000 and n = 10^6; every draw is in range, even for a huge
 * keyspace; the same seed gives the same draws; bad parameters are refused.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <CUnit/CUnit.h>

#include "kvs/zipf.h"

void test_zipf_register(void);

#define DRAWS 1000000
#define TOP   20

static void check_top_ranks(uint64_t n, double s, uint64_t seed)
{
    struct kvs_zipf z;
    struct kvs_rng rng;
    uint64_t counts[TOP + 1] = {0};
    uint64_t top_total = 0;
    uint64_t out_of_range = 0;
    double norm = 0.0;
    double top_p = 0.0;

    CU_ASSERT_EQUAL_FATAL(kvs_zipf_init(&z, n, s), 0);
    kvs_rng_seed(&rng, seed);
    for (int i = 0; i < DRAWS; i++) {
        uint64_t k = kvs_zipf_next(&z, &rng);

        out_of_range += k < 1 || k > n;
        if (k >= 1 && k <= TOP)
            counts[k]++;
    }
    CU_ASSERT_EQUAL(out_of_range, 0);
    /* Sum the small terms first for accuracy. */
    for (uint64_t k = n; k >= 1; k--)
        norm += pow((double)k, -s);
    for (uint64_t k = 1; k <= TOP; k++) {
        double p = pow((double)k, -s) / norm;
        double expect = p * DRAWS;
        double sigma = sqrt(DRAWS * p * (1.0 - p));

        CU_ASSERT_TRUE(fabs((double)counts[k] - expect) <= 5.0 * sigma);
        top_p += p;
        top_total += counts[k];
    }
    /* The top ranks' total mass too: a biased tail would show up here. */
    CU_ASSERT_TRUE(fabs((double)top_total - top_p * DRAWS) <=
                   5.0 * sqrt(DRAWS * top_p * (1.0 - top_p)));
}

static void test_zipf_099_over_1000_matches_theory(void)
{
    check_top_ranks(1000, 0.99, 1);
}

static void test_zipf_12_over_1000_matches_theory(void)
{
    check_top_ranks(1000, 1.2, 2);
}

static void test_zipf_099_over_million_matches_theory(void)
{
    check_top_ranks(1000000, 0.99, 3);
}

static void test_zipf_12_over_million_matches_theory(void)
{
    check_top_ranks(1000000, 1.2, 4);
}

static void test_zipf_exponent_one_matches_theory(void)
{
    /* s = 1 is where the closed forms divide by zero: the expm1/log1p forms must hold. */
    check_top_ranks(5000, 1.0, 5);
}

static void test_zipf_huge_keyspace_stays_in_range(void)
{
    struct kvs_zipf z;
    struct kvs_rng rng;
    uint64_t n = 1000000000000ULL;
    uint64_t ones = 0;
    uint64_t bad = 0;

    CU_ASSERT_EQUAL_FATAL(kvs_zipf_init(&z, n, 0.99), 0);
    kvs_rng_seed(&rng, 9);
    for (int i = 0; i < 100000; i++) {
        uint64_t k = kvs_zipf_next(&z, &rng);

        bad += k < 1 || k > n;
        ones += k == 1;
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* Rank 1 still leads: about 1/H(10^12, 0.99), roughly 3.6%. */
    CU_ASSERT_TRUE(ones > 2000 && ones < 5000);
}

static void test_zipf_same_seed_same_draws(void)
{
    struct kvs_zipf z;
    struct kvs_rng a;
    struct kvs_rng b;

    CU_ASSERT_EQUAL_FATAL(kvs_zipf_init(&z, 100000, 1.1), 0);
    kvs_rng_seed(&a, 77);
    kvs_rng_seed(&b, 77);
    for (int i = 0; i < 1000; i++)
        CU_ASSERT_EQUAL(kvs_zipf_next(&z, &a), kvs_zipf_next(&z, &b));
}

static void test_zipf_bad_parameters_are_refused(void)
{
    struct kvs_zipf z;

    CU_ASSERT_EQUAL(kvs_zipf_init(&z, 0, 1.0), -EINVAL);
    CU_ASSERT_EQUAL(kvs_zipf_init(&z, 10, 0.0), -EINVAL);
    CU_ASSERT_EQUAL(kvs_zipf_init(&z, 10, -1.0), -EINVAL);
    CU_ASSERT_EQUAL(kvs_zipf_init(&z, 10, NAN), -EINVAL);
    CU_ASSERT_EQUAL(kvs_zipf_init(&z, 10, KVS_ZIPF_MAX_S * 2), -EINVAL);
    CU_ASSERT_EQUAL(kvs_zipf_init(&z, 1, 1.0), 0);
    {
        struct kvs_rng rng;

        kvs_rng_seed(&rng, 1);
        CU_ASSERT_EQUAL(kvs_zipf_next(&z, &rng), 1);
    }
}

void test_zipf_register(void)
{
    CU_pSuite s = CU_add_suite("zipf", NULL, NULL);

    CU_add_test(s, "099_over_1000_matches_theory", test_zipf_099_over_1000_matches_theory);
    CU_add_test(s, "12_over_1000_matches_theory", test_zipf_12_over_1000_matches_theory);
    CU_add_test(s, "099_over_million_matches_theory", test_zipf_099_over_million_matches_theory);
    CU_add_test(s, "12_over_million_matches_theory", test_zipf_12_over_million_matches_theory);
    CU_add_test(s, "exponent_one_matches_theory", test_zipf_exponent_one_matches_theory);
    CU_add_test(s, "huge_keyspace_stays_in_range", test_zipf_huge_keyspace_stays_in_range);
    CU_add_test(s, "same_seed_same_draws", test_zipf_same_seed_same_draws);
    CU_add_test(s, "bad_parameters_are_refused", test_zipf_bad_parameters_are_refused);
}
