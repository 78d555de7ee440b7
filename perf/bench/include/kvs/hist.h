/* SPDX-License-Identifier: MIT */
/*
 * A log-linear latency histogram in the spirit of HdrHistogram, used by kvs-bench.
 *
 * Values are unsigned 64-bit integers (kvs-bench records nanoseconds). Values below
 * 2^KVS_HIST_SUB_BITS are counted exactly; above that every power-of-two range [2^e, 2^(e+1))
 * is cut into 2^KVS_HIST_SUB_BITS equal buckets, so a bucket is never wider than 1/128 of the
 * values it holds. Reported percentiles are the midpoint of their bucket, clamped to the exact
 * minimum and maximum, which bounds the relative error of every percentile by 1/256 (0.4%);
 * the documented promise is the rounder "within 1%". Values up to 2^KVS_HIST_MAX_BITS - 1
 * (about 73 minutes in ns) are bucketed; larger ones are clamped into the last bucket and
 * counted in `overflow`, while min/max keep the exact values.
 *
 * The struct is plain data (no heap, about 36 KiB) so that each bench thread embeds its own
 * and the main thread merges them after the threads have finished. Nothing here is atomic:
 * a histogram belongs to one thread at a time.
 */
#ifndef KVS_PERF_HIST_H
#define KVS_PERF_HIST_H

#include <stddef.h>
#include <stdint.h>

#define KVS_HIST_SUB_BITS 7  /* 128 linear buckets per power of two */
#define KVS_HIST_MAX_BITS 42 /* values < 2^42 ns (~73 min) are bucketed */
#define KVS_HIST_BUCKETS  ((KVS_HIST_MAX_BITS - KVS_HIST_SUB_BITS + 1) << KVS_HIST_SUB_BITS)

struct kvs_hist {
    uint64_t counts[KVS_HIST_BUCKETS];
    uint64_t total;    /* number of recorded values */
    uint64_t overflow; /* values >= 2^KVS_HIST_MAX_BITS, counted in the last bucket */
    uint64_t min;      /* exact smallest value; UINT64_MAX when empty */
    uint64_t max;      /* exact largest value; 0 when empty */
    double sum;        /* for the mean; a double so that it cannot wrap */
};

/* kvs_hist_init - make h empty. Embedded struct, no resources, so there is no _fini. */
void kvs_hist_init(struct kvs_hist *h);

/* kvs_hist_record - count one value. */
void kvs_hist_record(struct kvs_hist *h, uint64_t value);

/* kvs_hist_record_n - count the same value n times. */
void kvs_hist_record_n(struct kvs_hist *h, uint64_t value, uint64_t n);

/* kvs_hist_merge - add every count of src into dst (src is unchanged). */
void kvs_hist_merge(struct kvs_hist *dst, const struct kvs_hist *src);

/*
 * kvs_hist_percentile - the value at percentile p (0 <= p <= 100): the smallest recorded value
 * v such that at least p% of the values are <= v, to within the error stated above.
 * p = 0 gives the minimum and p = 100 the maximum (both exact). Returns 0 when h is empty.
 */
uint64_t kvs_hist_percentile(const struct kvs_hist *h, double p);

/* kvs_hist_mean - arithmetic mean of the recorded values (exact up to double rounding); 0 when
 * empty. */
double kvs_hist_mean(const struct kvs_hist *h);

/* kvs_hist_bucket_index - the bucket a value falls in (clamped to the last bucket). */
size_t kvs_hist_bucket_index(uint64_t value);

/* kvs_hist_bucket_bounds - the values bucket i holds: [*lo, *hi] inclusive. i must be
 * < KVS_HIST_BUCKETS. */
void kvs_hist_bucket_bounds(size_t i, uint64_t *lo, uint64_t *hi);

#endif
