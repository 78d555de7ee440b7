/* SPDX-License-Identifier: MIT */
/*
 * The kvs storage engine: a Bitcask-style log of checksummed records in numbered segment
 * files, an in-memory hash index of every live key, group-commit writes through registered
 * buffers, crash recovery and incremental compaction. docs/format.md specifies the bytes on
 * disk; docs/design.md explains the engine.
 *
 * One engine instance owns one directory and is used by one thread: the thread that owns the
 * ring it was opened with (the server runs one engine per shard on the shard's ring). No
 * function here is thread-safe. Keys and values are arbitrary bytes; NUL is allowed; an empty
 * value is valid; an empty key is valid.
 *
 * Two ways to use it:
 *  - synchronous (the `kvs` CLI, tests): kvs_engine_get/set/remove/compact run the ring until
 *    their operation is done.
 *  - asynchronous (the server's shard loop): kvs_engine_*_async queue the operation and call
 *    back later from kvs_ring_run(); the loop calls kvs_engine_flush() once per loop turn so
 *    that all sets of the turn go to disk in one write (group commit).
 * Never mix a synchronous call into a loop that is dispatching the same ring's completions.
 */
#ifndef KVS_ENGINE_ENGINE_H
#define KVS_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs/ring.h"

struct kvs_engine;

/* Name of this engine, recorded by the server in its data directory. */
#define KVS_ENGINE_NAME "kvs"

enum kvs_fsync {
    KVS_FSYNC_NEVER = 0,    /* leave syncing to the OS */
    KVS_FSYNC_EVERYSEC = 1, /* fdatasync about once a second (default) */
    KVS_FSYNC_ALWAYS = 2,   /* a set completes only after its batch is fdatasync'ed */
};

/* kvs_engine_parse_fsync - "always" | "everysec" | "never" -> 0 and *out, else -EINVAL. */
int kvs_engine_parse_fsync(const char *name, enum kvs_fsync *out);
const char *kvs_engine_fsync_name(enum kvs_fsync policy);

/* Hard caps of the record format (docs/format.md): max_key and max_value may not exceed them. */
#define KVS_ENGINE_KEY_LIMIT   (UINT32_C(16) << 20) /* 16 MiB */
#define KVS_ENGINE_VALUE_LIMIT (UINT32_C(1) << 30)  /* 1 GiB */

struct kvs_engine_options {
    enum kvs_fsync fsync;      /* default KVS_FSYNC_EVERYSEC */
    uint64_t segment_size;     /* rotate the active segment past this; default 64 MiB */
    uint32_t max_key;          /* largest key in bytes; default 64 KiB */
    uint64_t max_value;        /* largest value in bytes; default 512 MiB */
    uint32_t write_buffer;     /* group-commit buffer bytes; default 1 MiB */
    uint64_t compact_min_dead; /* auto-compact when dead bytes in immutable segments >= this
                                  and ratio below holds; 0 disables; default 64 MiB */
    double compact_dead_ratio; /* ... and dead/total of immutable segments >= this (0.5) */
    uint32_t compact_step;     /* bytes copied per compaction step; default 1 MiB */
    uint64_t compact_rate;     /* most bytes/s compaction reads (and so writes); 0 = no limit
                                  (default) */
    bool salvage;              /* on a bad checksum in an older segment keep going */
    bool create;               /* create the directory if missing; default true */
    struct kvs_ring *ring;     /* ring to run on; NULL: the engine makes and owns one */
};

/* kvs_engine_options_init - fill every field with its default. */
void kvs_engine_options_init(struct kvs_engine_options *opt);

/*
 * kvs_engine_open - open (creating if allowed) the store in dir, take its lock (flock), and
 * recover: load hint files or scan segments, cut a torn tail off the newest segment (logged
 * with its byte count). errbuf (errlen bytes, may be NULL) receives a message naming file and
 * offset on failure. Returns 0 and fills *out; or KVS_ELOCKED (another process has it open),
 * KVS_ECORRUPT (bad checksum in an older segment and salvage is off), KVS_EFORMAT, -errno.
 */
int kvs_engine_open(const char *dir, const struct kvs_engine_options *opt, struct kvs_engine **out,
                    char *errbuf, size_t errlen);

/*
 * kvs_engine_close - finish pending writes, fdatasync (any policy), release the lock, free.
 * Runs the ring until done. Returns 0 or the first error met (the engine is freed anyway).
 * NULL is fine.
 */
int kvs_engine_close(struct kvs_engine *e);

/* ---- synchronous API ---- */

/*
 * kvs_engine_get - look key up. On success returns 0 and sets *val / *vlen to a view owned by
 * the engine, valid until the next call on this engine. KVS_ENOTFOUND if absent, KVS_ETOOBIG
 * if klen is over max_key, -errno on I/O error, KVS_ECORRUPT if the index points past the end
 * of its segment. Only the value bytes are read; their checksum is not verified on this path
 * (records are verified at recovery scans and by every compaction; docs/design.md).
 */
int kvs_engine_get(struct kvs_engine *e, const void *key, size_t klen, const void **val,
                   size_t *vlen);
/* kvs_engine_set - store key -> val durably per the fsync policy. KVS_ETOOBIG over limits,
 * KVS_EFAILED after an earlier write/sync error, -errno. */
int kvs_engine_set(struct kvs_engine *e, const void *key, size_t klen, const void *val,
                   size_t vlen);
/* kvs_engine_remove - write a tombstone. KVS_ENOTFOUND if the key was absent (nothing written). */
int kvs_engine_remove(struct kvs_engine *e, const void *key, size_t klen);
/* kvs_engine_compact - rotate the active segment, then compact every immutable segment, to
 * completion (waiting first for a compaction already running). 0, KVS_ECORRUPT (a record of
 * an old segment failed its checksum; the log names file and offset), KVS_EFAILED, -errno. */
int kvs_engine_compact(struct kvs_engine *e);

/* ---- asynchronous API (shard loop) ---- */

/*
 * Completion of an async op. res: 0 on success, else an error as for the sync calls.
 * For gets, val/vlen is the value, valid only during the callback. Called from kvs_ring_run()
 * on the ring's thread, or directly inside the *_async call when the answer is known at once
 * (a get of a value still in memory, a miss, a limit error) -- callers must allow both.
 */
typedef void (*kvs_engine_done_fn)(void *ctx, int res, const void *val, size_t vlen);

/*
 * key and val are copied before the call returns. Return 0 when accepted: done will then be
 * called exactly once, with the operation's outcome -- 0, KVS_ENOTFOUND (get of a missing key,
 * remove of a missing key: nothing is written), KVS_ETOOBIG (over max_key / max_value),
 * KVS_EFAILED (the store failed earlier), -errno (I/O). Such outcomes known at once are
 * reported through done before the call returns. A negative return means nothing was queued
 * and done is not called: -ENOMEM, KVS_ECLOSED (kvs_engine_close has started).
 * done may be NULL for set/remove/clear/compact when the outcome is not needed; a get needs
 * one (-EINVAL without).
 */
int kvs_engine_get_async(struct kvs_engine *e, const void *key, size_t klen,
                         kvs_engine_done_fn done, void *ctx);
/* done fires after the record's bytes are written (and fdatasync'ed under ALWAYS). The new
 * value is visible to gets as soon as this returns 0. */
int kvs_engine_set_async(struct kvs_engine *e, const void *key, size_t klen, const void *val,
                         size_t vlen, kvs_engine_done_fn done, void *ctx);
int kvs_engine_remove_async(struct kvs_engine *e, const void *key, size_t klen,
                            kvs_engine_done_fn done, void *ctx);
/* Remove every key (FLUSHALL): durable like a set; done fires once. */
int kvs_engine_clear_async(struct kvs_engine *e, kvs_engine_done_fn done, void *ctx);
/* Start a compaction if none runs; it proceeds in bounded steps on the ring. It first rotates
 * the active segment so that everything written so far is included. Returns 0 (done fires when
 * it finishes, with 0 or an error: KVS_ECORRUPT -- the log names file and offset --, -errno,
 * KVS_ECLOSED if close interrupted it) or -EBUSY (one is running; done is not called). */
int kvs_engine_compact_async(struct kvs_engine *e, kvs_engine_done_fn done, void *ctx);

/* kvs_engine_flush - submit the write batch collected so far (one WRITE_FIXED, linked
 * fdatasync under ALWAYS). The shard loop calls it once per loop turn. Never blocks. */
void kvs_engine_flush(struct kvs_engine *e);

/* kvs_engine_idle - true when no engine op is queued or in flight (used at shutdown). The
 * everysec timer does not count: kvs_engine_close cancels it. */
bool kvs_engine_idle(const struct kvs_engine *e);

/* ---- index-only queries: answered from memory, no I/O ---- */

/* kvs_engine_value_len - length of key's value (>= 0), or KVS_ENOTFOUND. */
int64_t kvs_engine_value_len(const struct kvs_engine *e, const void *key, size_t klen);
/* Number of live keys. */
uint64_t kvs_engine_count(const struct kvs_engine *e);

/*
 * kvs_engine_scan - visit up to count keys starting at cursor (0 = start), calling fn for each
 * (key view valid during the call). Returns the next cursor, 0 when the scan is complete.
 * A key present for the whole scan is visited at least once, even if the index grows between
 * calls (as with Redis SCAN); keys may be visited more than once.
 */
typedef void (*kvs_engine_key_fn)(void *ctx, const void *key, size_t klen);
uint64_t kvs_engine_scan(const struct kvs_engine *e, uint64_t cursor, size_t count,
                         kvs_engine_key_fn fn, void *ctx);

struct kvs_engine_stats {
    uint64_t keys;                /* live keys */
    uint64_t key_bytes;           /* sum of live key lengths */
    uint64_t index_bytes;         /* memory of the index (table + arena), bytes */
    double index_bytes_per_key;   /* (index_bytes - key_bytes) / keys */
    uint64_t segments;            /* segment files */
    uint64_t disk_bytes;          /* bytes in segment files */
    uint64_t live_bytes;          /* bytes of records the index points at */
    uint64_t dead_bytes;          /* disk_bytes - live_bytes */
    uint64_t sets, gets, removes; /* operations since open */
    uint64_t batches;             /* group-commit writes since open */
    uint64_t batched_records;     /* records written in those batches */
    uint64_t fsyncs;              /* fdatasync calls completed since open */
    uint64_t presyncs;            /* fdatasyncs started early, in a nearly full segment */
    uint64_t compactions;         /* compactions finished since open */
    uint64_t compact_bytes_written;
    uint64_t compact_throttles;     /* compaction steps delayed by compact_rate */
    bool compacting;                /* a compaction is running */
    bool failed;                    /* read-only after a write or sync error */
    uint64_t recovered_torn_bytes;  /* bytes cut off the newest segment at open */
    uint64_t salvage_dropped_bytes; /* bytes skipped by salvage at open */
    uint64_t next_seq;              /* sequence number the next record gets */
    uint64_t hint_files_used;       /* segments loaded from their hint file at open */
};

/* kvs_engine_stats - fill *st. Never fails. */
void kvs_engine_stats(const struct kvs_engine *e, struct kvs_engine_stats *st);

#endif
