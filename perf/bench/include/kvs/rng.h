/* SPDX-License-Identifier: MIT */
/*
 * The pseudo-random generator kvs-bench draws keys, operations and value sizes from: SplitMix64
 * (a Weyl sequence passed through a 64-bit finaliser). It is tiny, fast, has a full 2^64 period
 * and passes BigCrush, which is plenty for a workload generator; it is not for cryptography.
 * A generator is plain data owned by one thread (or one connection); streams for threads and
 * connections are derived from the user's --seed with kvs_rng_derive() so that a run with the
 * same seed and the same configuration issues the same requests.
 */
#ifndef KVS_PERF_RNG_H
#define KVS_PERF_RNG_H

#include <stdint.h>

struct kvs_rng {
    uint64_t state;
};

/* kvs_rng_mix - the SplitMix64 finaliser: a bijective 64-bit hash with good avalanche. */
static inline uint64_t kvs_rng_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* kvs_rng_seed - start a stream from a seed (any value, 0 included). */
static inline void kvs_rng_seed(struct kvs_rng *r, uint64_t seed)
{
    r->state = seed;
}

/* kvs_rng_derive - seed a sub-stream `index` of `seed`: streams of different indices do not
 * overlap in practice because their starting points are scattered by the finaliser. */
static inline void kvs_rng_derive(struct kvs_rng *r, uint64_t seed, uint64_t index)
{
    r->state = kvs_rng_mix(seed ^ kvs_rng_mix(index + 0x9e3779b97f4a7c15ULL));
}

/* kvs_rng_next - the next 64 random bits. */
static inline uint64_t kvs_rng_next(struct kvs_rng *r)
{
    r->state += 0x9e3779b97f4a7c15ULL;
    return kvs_rng_mix(r->state);
}

/* kvs_rng_double - uniform in [0, 1) with 53 random bits. */
static inline double kvs_rng_double(struct kvs_rng *r)
{
    return (double)(kvs_rng_next(r) >> 11) * 0x1.0p-53;
}

/* kvs_rng_below - uniform in [0, n) for n >= 1, by Lemire's multiply-shift. The bias is at most
 * n / 2^64, far below anything a benchmark can observe, so there is no rejection loop. */
static inline uint64_t kvs_rng_below(struct kvs_rng *r, uint64_t n)
{
    /* The high 64 bits of the 128-bit product, from 32-bit halves (ISO C has no 128-bit type;
     * compilers fold this into one mul instruction). */
    uint64_t x = kvs_rng_next(r);
    uint64_t xl = x & 0xffffffffU, xh = x >> 32;
    uint64_t nl = n & 0xffffffffU, nh = n >> 32;
    uint64_t ll = xl * nl, lh = xl * nh, hl = xh * nl, hh = xh * nh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffU) + (hl & 0xffffffffU);

    return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

#endif
