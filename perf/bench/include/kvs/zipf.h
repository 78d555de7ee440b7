/* SPDX-License-Identifier: MIT */
/*
 * A Zipf sampler for kvs-bench's `--key-pattern zipf:S`: draws ranks k in 1..n with
 * P(k) proportional to k^-s, in O(1) memory and expected O(1) time per draw for any n up to
 * 2^53, by rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to generate
 * variates from monotone discrete distributions", 1996). No O(n) table is built, so a keyspace
 * of a billion keys costs the same as a thousand.
 *
 * The sampler is immutable after kvs_zipf_init(), so threads may share one; the randomness
 * comes from the caller's generator.
 */
#ifndef KVS_PERF_ZIPF_H
#define KVS_PERF_ZIPF_H

#include <stdint.h>

#include "kvs/rng.h"

#define KVS_ZIPF_MAX_S 10.0 /* larger exponents put (nearly) every draw on rank 1 anyway */

struct kvs_zipf {
    uint64_t n;     /* ranks are 1..n */
    double s;       /* exponent, 0 < s <= KVS_ZIPF_MAX_S */
    double y_lo;    /* lower end of the area interval sampled: H(1.5) - h(1) */
    double y_hi;    /* upper end: H(n + 0.5) */
    double squeeze; /* k - x <= squeeze accepts without evaluating the exact test */
};

/* kvs_zipf_init - prepare a sampler over ranks 1..n with exponent s. Returns 0, or -EINVAL
 * when n is 0 or above 2^53 or s is not in (0, KVS_ZIPF_MAX_S]. */
int kvs_zipf_init(struct kvs_zipf *z, uint64_t n, double s);

/* kvs_zipf_next - one rank in 1..n (1 is the most frequent). */
uint64_t kvs_zipf_next(const struct kvs_zipf *z, struct kvs_rng *rng);

#endif
