/* SPDX-License-Identifier: MIT */
/*
 * The log-linear histogram (see kvs/hist.h for the bucket layout and its error bound).
 * Pure computation: no allocation, no I/O, no threads.
 */
#include "kvs/hist.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#define SUB_COUNT ((uint64_t)1 << KVS_HIST_SUB_BITS)

void kvs_hist_init(struct kvs_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

size_t kvs_hist_bucket_index(uint64_t value)
{
    unsigned e;

    /* Small values get one bucket each: the first two blocks are both exact. */
    if (value < SUB_COUNT)
        return (size_t)value;
    e = 63U - (unsigned)__builtin_clzll(value);
    if (e >= KVS_HIST_MAX_BITS)
        return KVS_HIST_BUCKETS - 1;
    /*
     * Block (e - SUB_BITS + 1) holds [2^e, 2^(e+1)); within it the top SUB_BITS bits below
     * the leading one pick one of SUB_COUNT equal slices.
     */
    return (size_t)(((uint64_t)(e - KVS_HIST_SUB_BITS + 1) << KVS_HIST_SUB_BITS) +
                    ((value >> (e - KVS_HIST_SUB_BITS)) - SUB_COUNT));
}

void kvs_hist_bucket_bounds(size_t i, uint64_t *lo, uint64_t *hi)
{
    uint64_t block = (uint64_t)i >> KVS_HIST_SUB_BITS;
    uint64_t sub = (uint64_t)i & (SUB_COUNT - 1);
    unsigned shift;

    assert(i < KVS_HIST_BUCKETS);
    if (block == 0) {
        *lo = sub;
        *hi = sub;
        return;
    }
    shift = (unsigned)(block - 1);
    *lo = (SUB_COUNT + sub) << shift;
    *hi = *lo + (((uint64_t)1 << shift) - 1);
}

void kvs_hist_record_n(struct kvs_hist *h, uint64_t value, uint64_t n)
{
    if (n == 0)
        return;
    h->counts[kvs_hist_bucket_index(value)] += n;
    h->total += n;
    if (value >> KVS_HIST_MAX_BITS)
        h->overflow += n;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
    h->sum += (double)value * (double)n;
}

void kvs_hist_record(struct kvs_hist *h, uint64_t value)
{
    kvs_hist_record_n(h, value, 1);
}

void kvs_hist_merge(struct kvs_hist *dst, const struct kvs_hist *src)
{
    if (src->total == 0)
        return;
    for (size_t i = 0; i < KVS_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->overflow += src->overflow;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t kvs_hist_percentile(const struct kvs_hist *h, double p)
{
    uint64_t rank;
    uint64_t seen = 0;

    if (h->total == 0)
        return 0;
    if (!(p > 0.0))
        return h->min;
    if (p >= 100.0)
        return h->max;
    /* The rank-th smallest value (1-based) is the first with at least p% at or below it. */
    rank = (uint64_t)ceil(p / 100.0 * (double)h->total);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    for (size_t i = 0; i < KVS_HIST_BUCKETS; i++) {
        uint64_t lo;
        uint64_t hi;
        uint64_t mid;

        seen += h->counts[i];
        if (seen < rank)
            continue;
        kvs_hist_bucket_bounds(i, &lo, &hi);
        /* The midpoint halves the worst-case error; the exact extremes tighten the ends. */
        mid = lo + (hi - lo) / 2;
        if (mid < h->min)
            mid = h->min;
        if (mid > h->max)
            mid = h->max;
        return mid;
    }
    return h->max;
}

double kvs_hist_mean(const struct kvs_hist *h)
{
    return h->total == 0 ? 0.0 : h->sum / (double)h->total;
}
