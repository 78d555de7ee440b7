/* SPDX-License-Identifier: MIT */
/*
 * What kvs-bench asks the server: which operation, which key, what value. A workload is
 * built once from the configuration and then only read by the bench threads (the verify
 * version table is the one shared, atomic part); each connection draws from its own stream.
 *
 * Keys are "key:" followed by the key id in decimal, zero-padded to 12 digits (more when the
 * keyspace needs them), the same shape as redis-benchmark's "key:__rand_int__" keys.
 *
 * Values. Without --verify a value is a run of 'x' bytes whose length is drawn from the size
 * range. With --verify a value is a pure function of (key id, version):
 *
 *     bytes  0..11  key id, 12 lowercase hex digits
 *     bytes 12..23  version, 12 lowercase hex digits (1 is the first write of a key)
 *     bytes 24..    printable filler drawn from a generator seeded by (key id, version)
 *
 * and its length is also drawn from (key id, version) within the size range, so truncation or
 * extension is detected as surely as a flipped byte. Every SET takes the next version of its
 * key from a shared per-key atomic counter *before* the request is sent. A GET reply is
 * accepted only when it is byte for byte value(k, v) for its own key k and some version
 * 1 <= v <= counter[k] read *after* the reply arrived. Because the counter only grows and was
 * raised before any server could have seen that version, this accepts exactly the values some
 * connection of this run wrote to k (any of them, since several connections may write k
 * concurrently and the server may legitimately return an older one) and rejects corrupted,
 * truncated, foreign-key and invented values. It is not a linearizability check: a stale
 * version is accepted. --verify implies --prefill, so every key holds version 1 before the
 * measured phase and a miss means the server lost a key.
 */
#ifndef KVS_PERF_WORKLOAD_H
#define KVS_PERF_WORKLOAD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs/rng.h"
#include "kvs/zipf.h"

#define KVS_WORKLOAD_MAX_KEYS    1000000000000ULL              /* 10^12: 12-digit ids, 48-bit hex */
#define KVS_WORKLOAD_MAX_VALUE   ((uint64_t)512 * 1024 * 1024) /* Redis's proto-max-bulk-len */
#define KVS_WORKLOAD_VERIFY_HDR  24 /* smallest value --verify can write */
#define KVS_WORKLOAD_KEY_MAX_LEN 24 /* "key:" + up to 20 digits */

enum kvs_workload_pattern {
    KVS_WORKLOAD_UNIFORM = 0,
    KVS_WORKLOAD_SEQUENTIAL,
    KVS_WORKLOAD_ZIPF,
};

enum kvs_workload_op {
    KVS_WORKLOAD_GET = 0,
    KVS_WORKLOAD_SET = 1,
};

/* Outcome of checking a GET value under --verify (0 means it is good). */
enum kvs_workload_verdict {
    KVS_VERIFY_OK = 0,
    KVS_VERIFY_HEADER,  /* no parsable header: not a value of this run */
    KVS_VERIFY_KEY,     /* a value written for another key */
    KVS_VERIFY_VERSION, /* a version of this key that was never issued */
    KVS_VERIFY_LENGTH,  /* length differs from the one its (key, version) implies */
    KVS_VERIFY_CONTENT, /* filler bytes differ: corruption */
    KVS_VERIFY_MISSING, /* nil reply for a key this run wrote */
};

struct kvs_workload_config {
    uint64_t keys;                     /* keyspace size, 1..KVS_WORKLOAD_MAX_KEYS */
    enum kvs_workload_pattern pattern; /* key choice */
    double zipf_s;                     /* exponent for KVS_WORKLOAD_ZIPF */
    unsigned set_ratio, get_ratio;     /* SET:GET mix, not both 0 */
    uint64_t size_min, size_max;       /* value sizes, inclusive */
    bool verify;
};

struct kvs_workload {
    struct kvs_workload_config cfg;
    struct kvs_zipf zipf;
    unsigned key_digits;        /* zero-padded width of the key id */
    uint64_t set_threshold;     /* draw < threshold (out of 2^32) means SET */
    _Atomic uint64_t *versions; /* --verify: highest version issued per key */
    char *filler;               /* size_max bytes of 'x' for unverified values */
};

/* Per-connection generator state: plain data owned by the connection's thread. */
struct kvs_workload_stream {
    struct kvs_rng rng;
    uint64_t seq_next;   /* sequential pattern: next key id */
    uint64_t seq_stride; /* sequential pattern: ids advance by the number of streams */
};

/*
 * kvs_workload_new - validate cfg and build a workload. Returns 0 and fills *out, -EINVAL for
 * an invalid configuration (with a reason in *why, a static string), or -ENOMEM.
 */
int kvs_workload_new(const struct kvs_workload_config *cfg, struct kvs_workload **out,
                     const char **why);

/* kvs_workload_free - release a workload. NULL is fine. No thread may still use it. */
void kvs_workload_free(struct kvs_workload *w);

/* kvs_workload_stream_init - set up stream `index` of `count` (one per connection) from the
 * run's seed: same seed, same index, same requests. */
void kvs_workload_stream_init(const struct kvs_workload *w, struct kvs_workload_stream *s,
                              uint64_t seed, uint64_t index, uint64_t count);

/* kvs_workload_next - draw the next operation and key id from the stream. */
enum kvs_workload_op kvs_workload_next(const struct kvs_workload *w, struct kvs_workload_stream *s,
                                       uint64_t *key);

/* kvs_workload_key - write the key for id into buf (KVS_WORKLOAD_KEY_MAX_LEN bytes); returns
 * its length. No NUL is written. */
size_t kvs_workload_key(const struct kvs_workload *w, uint64_t id, char *buf);

/*
 * kvs_workload_issue_version - under --verify, take the next version of key id (>= 1) from
 * the shared counter; any thread may call it. Returns 0 when verification is off.
 */
uint64_t kvs_workload_issue_version(struct kvs_workload *w, uint64_t id);

/* kvs_workload_value_len - a value length for an unverified SET, drawn from s within the
 * size range. */
uint64_t kvs_workload_value_len(const struct kvs_workload *w, struct kvs_workload_stream *s);

/* kvs_workload_verify_len - the length of the --verify value of (id, version): a function of
 * both, within the size range, so that the reader knows it too. */
uint64_t kvs_workload_verify_len(const struct kvs_workload *w, uint64_t id, uint64_t version);

/* kvs_workload_value_fill - write the --verify value of (id, version) of length len (which
 * must be kvs_workload_verify_len(w, id, version)) into buf. */
void kvs_workload_value_fill(const struct kvs_workload *w, uint64_t id, uint64_t version, char *buf,
                             size_t len);

/*
 * kvs_workload_value_check - check a GET reply value for key id under --verify (see the top
 * of this file). val may be NULL for a nil reply. *version is set to the version the value
 * claims when its header parses (else 0). Any thread may call it.
 */
enum kvs_workload_verdict kvs_workload_value_check(const struct kvs_workload *w, uint64_t id,
                                                   const char *val, size_t len, uint64_t *version);

/* kvs_workload_verdict_name - a short description of a verdict, for reports. */
const char *kvs_workload_verdict_name(enum kvs_workload_verdict v);

#endif
