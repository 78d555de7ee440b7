/* SPDX-License-Identifier: MIT */
/*
 * The engine's in-memory index: every live key of one engine instance mapped to the location
 * of its newest record (segment, offset, value length, sequence number). It is an
 * open-addressing hash table keyed by the caller's 64-bit XXH3 hash of the key; the key bytes
 * themselves are kept in an arena owned by the index, never in one allocation per key.
 * index.c documents the memory layout and its cost per key.
 *
 * Internal to engine/: the server and the CLI reach it only through kvs/engine.h. One index is
 * owned by one engine instance and so by one thread; nothing here is thread-safe. All key
 * pointers passed in are borrowed for the call only. The hash argument must be the same
 * function of the key bytes on every call (the engine passes XXH3_64bits(key, klen)); the
 * index uses its low bits to pick a bucket because the server uses the high bits to pick a
 * shard, and it stores the low 32 bits so that it never has to hash a key again.
 */
#ifndef KVS_ENGINE_INDEX_H
#define KVS_ENGINE_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest key the index accepts; index_put returns -E2BIG above it. */
#define INDEX_KEY_MAX (UINT32_MAX / 2)

/*
 * Resizing is incremental (index.c explains how): while a resize is in progress, each
 * index_put, index_del and index_replace_if moves keys from the old table to the new one,
 * examining at most this many old slots, so no call pays for rebuilding the whole table.
 */
#define INDEX_REHASH_STEP 64

struct index;

/* Where a key's newest record lives. */
struct index_loc {
    uint32_t seg;  /* segment number */
    uint32_t off;  /* byte offset of the record in the segment */
    uint32_t vlen; /* value length */
    uint64_t seq;  /* record sequence number; the index keeps only the low 48 bits */
};

/*
 * index_new - make an empty index sized so that expected_keys keys fit without growing
 * (0 is fine: it starts small and grows). Returns 0 and sets *out, or -ENOMEM.
 */
int index_new(size_t expected_keys, struct index **out);

/* index_free - release the index and everything it holds. NULL is fine. */
void index_free(struct index *ix);

/*
 * index_get - look key (klen bytes, hash as described above) up. Returns true and fills *out
 * (seq reduced to its low 48 bits) if present, false otherwise.
 */
bool index_get(const struct index *ix, uint64_t hash, const void *key, size_t klen,
               struct index_loc *out);

/*
 * index_put - insert key -> *loc, or replace the location of an existing key. If the key
 * existed, *old receives its previous location and *had_old is set to true; otherwise
 * *had_old is set to false (old and had_old may each be NULL). Returns 0, -E2BIG if klen is
 * over INDEX_KEY_MAX, or -ENOMEM (the index then holds the same keys and locations). It may
 * start a resize, or do a bounded share of one in progress, as a side effect.
 */
int index_put(struct index *ix, uint64_t hash, const void *key, size_t klen,
              const struct index_loc *loc, struct index_loc *old, bool *had_old);

/*
 * index_del - remove key. Returns true and fills *old (may be NULL) if it was present, false
 * if not. Never fails; it may start shrinking the table, do a bounded share of a resize in
 * progress, or compact the key arena (which also finishes a resize) as a side effect.
 */
bool index_del(struct index *ix, uint64_t hash, const void *key, size_t klen,
               struct index_loc *old);

/*
 * index_replace_if - for compaction: point key at *newloc only if it still points at
 * (expect->seg, expect->off), i.e. no newer write has superseded the copied record. Returns
 * true if the location was switched.
 */
bool index_replace_if(struct index *ix, uint64_t hash, const void *key, size_t klen,
                      const struct index_loc *expect, const struct index_loc *newloc);

/* index_count - number of keys present. */
uint64_t index_count(const struct index *ix);

/* index_key_bytes - sum of the lengths of the keys present. */
uint64_t index_key_bytes(const struct index *ix);

/*
 * index_memory - every byte the index holds from the allocator: the struct, the table (both
 * tables while a resize is in progress), the arena chunks (their full capacity, used or not)
 * and the chunk directory.
 */
size_t index_memory(const struct index *ix);

/* index_clear - remove every key; the index stays usable. Releases the arena, abandons a
 * resize in progress and shrinks the table back to the size index_new chose. */
void index_clear(struct index *ix);

/*
 * Called by index_scan for each key: the key view is valid only during the call, and the
 * callback must not modify the index.
 */
typedef void (*index_visit_fn)(void *ctx, const void *key, size_t klen,
                               const struct index_loc *loc);

/*
 * index_scan - visit keys in the manner of Redis SCAN: start with cursor 0, pass each returned
 * cursor to the next call, stop when it returns 0. Each call visits at least the keys of one
 * bucket and stops once it has visited count keys (or examined 10 * count empty buckets), so
 * it may visit a few more than count. A key present for the whole scan is visited at least
 * once even if the table grows or shrinks, or a resize starts, progresses or ends, between
 * calls; a key may be visited twice. One call visits a key at most once.
 */
uint64_t index_scan(const struct index *ix, uint64_t cursor, size_t count, index_visit_fn fn,
                    void *ctx);

/*
 * For tests only (tests/test_index.c); the engine must not call these.
 *
 * index_debug_resizing - true while a resize is in progress (two tables exist).
 * index_debug_max_step - the most old-table slots any single call has examined to migrate
 *     keys since index_new; INDEX_REHASH_STEP or less unless a resize had to be finished at
 *     once (see index.c).
 * index_debug_resizes - the number of resizes started since index_new.
 * index_debug_set_step - examine `slots` (> 0) old slots per mutating call instead of
 *     INDEX_REHASH_STEP, so that tests can keep resizes in progress for longer.
 */
bool index_debug_resizing(const struct index *ix);
size_t index_debug_max_step(const struct index *ix);
uint64_t index_debug_resizes(const struct index *ix);
void index_debug_set_step(struct index *ix, size_t slots);

#endif
