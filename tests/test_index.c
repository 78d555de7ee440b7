/* SPDX-License-Identifier: MIT */
/*
 * Tests of the engine's in-memory index (engine/index.c): the map operations, odd keys,
 * colliding hashes, a million keys, memory under churn, scans across resizes, incremental
 * resizing (a model run with resizes in progress, scans across their start and end, the
 * per-call migration bound, clear and compaction mid-resize), and the documented
 * bytes-per-key bound. Keys come from tutil_rand so every run sees the same data.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <xxhash.h>

#include "index.h"
#include "tutil.h"

#define KLEN 16

static uint64_t hash_of(const void *key, size_t klen)
{
    return XXH3_64bits(key, klen);
}

/* make_key - the 16-byte key number id: the same bytes every time it is asked for. */
static void make_key(uint64_t id, unsigned char *key)
{
    uint64_t state = id * UINT64_C(0x9E3779B97F4A7C15) + 1;

    tutil_fill(&state, key, KLEN);
}

/* loc_for - a location derived from id, so that a lookup can check it came back intact. */
static struct index_loc loc_for(uint64_t id)
{
    struct index_loc loc = {
        .seg = (uint32_t)(id % 1000),
        .off = (uint32_t)(id * 7),
        .vlen = (uint32_t)(id ^ 0x5a5a),
        .seq = id + 1,
    };
    return loc;
}

static bool loc_eq(const struct index_loc *a, const struct index_loc *b)
{
    return a->seg == b->seg && a->off == b->off && a->vlen == b->vlen && a->seq == b->seq;
}

static struct index *new_index(size_t expected)
{
    struct index *ix = NULL;

    CU_ASSERT_FATAL(index_new(expected, &ix) == 0);
    CU_ASSERT_FATAL(ix != NULL);
    return ix;
}

static int put_id(struct index *ix, uint64_t id)
{
    unsigned char key[KLEN];
    struct index_loc loc = loc_for(id);

    make_key(id, key);
    return index_put(ix, hash_of(key, KLEN), key, KLEN, &loc, NULL, NULL);
}

/* has_id - true if key id is present with the location put_id gave it. */
static bool has_id(const struct index *ix, uint64_t id)
{
    unsigned char key[KLEN];
    struct index_loc want = loc_for(id);
    struct index_loc got;

    make_key(id, key);
    return index_get(ix, hash_of(key, KLEN), key, KLEN, &got) && loc_eq(&got, &want);
}

static bool del_id(struct index *ix, uint64_t id)
{
    unsigned char key[KLEN];

    make_key(id, key);
    return index_del(ix, hash_of(key, KLEN), key, KLEN, NULL);
}

static void test_index_put_replaces_and_reports_old(void)
{
    struct index *ix = new_index(0);
    const char *key = "hello";
    uint64_t h = hash_of(key, 5);
    struct index_loc a = {.seg = 1, .off = 100, .vlen = 5, .seq = 10};
    struct index_loc b = {.seg = 2, .off = 200, .vlen = 6, .seq = 11};
    struct index_loc got, old;
    bool had_old = true;

    CU_ASSERT(!index_get(ix, h, key, 5, &got));
    CU_ASSERT(index_put(ix, h, key, 5, &a, &old, &had_old) == 0);
    CU_ASSERT(!had_old);
    CU_ASSERT(index_get(ix, h, key, 5, &got) && loc_eq(&got, &a));
    CU_ASSERT(index_count(ix) == 1);
    CU_ASSERT(index_key_bytes(ix) == 5);

    CU_ASSERT(index_put(ix, h, key, 5, &b, &old, &had_old) == 0);
    CU_ASSERT(had_old);
    CU_ASSERT(loc_eq(&old, &a));
    CU_ASSERT(index_get(ix, h, key, 5, &got) && loc_eq(&got, &b));
    CU_ASSERT(index_count(ix) == 1);
    CU_ASSERT(index_key_bytes(ix) == 5);

    /* A prefix of the key is another key. */
    CU_ASSERT(!index_get(ix, hash_of(key, 4), key, 4, &got));

    CU_ASSERT(index_del(ix, h, key, 5, &old));
    CU_ASSERT(loc_eq(&old, &b));
    CU_ASSERT(!index_get(ix, h, key, 5, &got));
    CU_ASSERT(!index_del(ix, h, key, 5, NULL));
    CU_ASSERT(index_count(ix) == 0);
    CU_ASSERT(index_key_bytes(ix) == 0);
    index_free(ix);
    index_free(NULL);
}

static void test_index_seq_keeps_low_48_bits(void)
{
    struct index *ix = new_index(0);
    struct index_loc loc = {.seg = UINT32_MAX,
                            .off = UINT32_MAX,
                            .vlen = UINT32_MAX,
                            .seq = UINT64_C(0xABCD123456789ABC)};
    struct index_loc got;

    CU_ASSERT(index_put(ix, hash_of("k", 1), "k", 1, &loc, NULL, NULL) == 0);
    CU_ASSERT(index_get(ix, hash_of("k", 1), "k", 1, &got));
    CU_ASSERT(got.seg == UINT32_MAX && got.off == UINT32_MAX && got.vlen == UINT32_MAX);
    CU_ASSERT(got.seq == UINT64_C(0x123456789ABC));
    index_free(ix);
}

static void test_index_binary_keys_with_nul_and_empty_key(void)
{
    struct index *ix = new_index(0);
    static const unsigned char k1[] = {'a', 0, 'b'};
    static const unsigned char k2[] = {'a', 0, 'c'};
    static const unsigned char k3[] = {'a', 0};
    struct index_loc l1 = loc_for(1), l2 = loc_for(2), l3 = loc_for(3), l4 = loc_for(4);
    struct index_loc got;

    CU_ASSERT(index_put(ix, hash_of(k1, 3), k1, 3, &l1, NULL, NULL) == 0);
    CU_ASSERT(index_put(ix, hash_of(k2, 3), k2, 3, &l2, NULL, NULL) == 0);
    CU_ASSERT(index_put(ix, hash_of(k3, 2), k3, 2, &l3, NULL, NULL) == 0);
    CU_ASSERT(index_put(ix, hash_of("", 0), NULL, 0, &l4, NULL, NULL) == 0);
    CU_ASSERT(index_count(ix) == 4);
    CU_ASSERT(index_key_bytes(ix) == 8);

    CU_ASSERT(index_get(ix, hash_of(k1, 3), k1, 3, &got) && loc_eq(&got, &l1));
    CU_ASSERT(index_get(ix, hash_of(k2, 3), k2, 3, &got) && loc_eq(&got, &l2));
    CU_ASSERT(index_get(ix, hash_of(k3, 2), k3, 2, &got) && loc_eq(&got, &l3));
    CU_ASSERT(index_get(ix, hash_of("", 0), "", 0, &got) && loc_eq(&got, &l4));
    /* "a" alone was never put, even though "a\0" was. */
    CU_ASSERT(!index_get(ix, hash_of("a", 1), "a", 1, &got));

    CU_ASSERT(index_del(ix, hash_of("", 0), "", 0, NULL));
    CU_ASSERT(!index_get(ix, hash_of("", 0), NULL, 0, &got));
    CU_ASSERT(index_get(ix, hash_of(k1, 3), k1, 3, &got) && loc_eq(&got, &l1));
    index_free(ix);
}

static void test_index_colliding_hashes_stay_distinct(void)
{
    struct index *ix = new_index(0);
    const uint64_t h = 0x1234567890ABCDEFULL;
    const int n = 2000;
    unsigned char key[KLEN];
    struct index_loc got;
    int ok = 0;

    /* Every key gets the same hash: the table must fall back on comparing key bytes, and
     * must keep working as the shared probe chain grows through several resizes. */
    for (int i = 0; i < n; i++) {
        struct index_loc loc = loc_for((uint64_t)i);

        make_key((uint64_t)i, key);
        CU_ASSERT(index_put(ix, h, key, KLEN, &loc, NULL, NULL) == 0);
    }
    CU_ASSERT(index_count(ix) == (uint64_t)n);
    for (int i = 0; i < n; i += 2) {
        make_key((uint64_t)i, key);
        CU_ASSERT(index_del(ix, h, key, KLEN, NULL));
    }
    for (int i = 0; i < n; i++) {
        struct index_loc want = loc_for((uint64_t)i);
        bool found;

        make_key((uint64_t)i, key);
        found = index_get(ix, h, key, KLEN, &got);
        if (i % 2 == 0 ? !found : (found && loc_eq(&got, &want)))
            ok++;
    }
    CU_ASSERT(ok == n);
    CU_ASSERT(index_count(ix) == (uint64_t)n / 2);
    index_free(ix);
}

static void test_index_replace_if_only_when_location_matches(void)
{
    struct index *ix = new_index(0);
    uint64_t h = hash_of("key", 3);
    struct index_loc a = {.seg = 3, .off = 64, .vlen = 10, .seq = 5};
    struct index_loc moved = {.seg = 9, .off = 0, .vlen = 10, .seq = 5};
    struct index_loc newer = {.seg = 4, .off = 128, .vlen = 11, .seq = 6};
    struct index_loc wrong_off = {.seg = 3, .off = 65, .vlen = 10, .seq = 5};
    struct index_loc got;

    CU_ASSERT(!index_replace_if(ix, h, "key", 3, &a, &moved));
    CU_ASSERT(index_put(ix, h, "key", 3, &a, NULL, NULL) == 0);
    CU_ASSERT(!index_replace_if(ix, h, "key", 3, &wrong_off, &moved));
    CU_ASSERT(index_get(ix, h, "key", 3, &got) && loc_eq(&got, &a));

    CU_ASSERT(index_replace_if(ix, h, "key", 3, &a, &moved));
    CU_ASSERT(index_get(ix, h, "key", 3, &got) && loc_eq(&got, &moved));

    /* A write that lands after compaction copied the record wins over the copy. */
    CU_ASSERT(index_put(ix, h, "key", 3, &newer, NULL, NULL) == 0);
    CU_ASSERT(!index_replace_if(ix, h, "key", 3, &moved, &a));
    CU_ASSERT(index_get(ix, h, "key", 3, &got) && loc_eq(&got, &newer));
    index_free(ix);
}

static void test_index_million_keys_insert_delete_half_reinsert(void)
{
    const uint64_t n = 1000000;
    struct index *ix = new_index(0);
    uint64_t bad = 0;

    for (uint64_t i = 0; i < n; i++)
        bad += put_id(ix, i) != 0;
    CU_ASSERT(bad == 0);
    CU_ASSERT(index_count(ix) == n);
    CU_ASSERT(index_key_bytes(ix) == n * KLEN);
    for (uint64_t i = 0; i < n; i++)
        bad += !has_id(ix, i);
    CU_ASSERT(bad == 0);

    for (uint64_t i = 0; i < n; i += 2)
        bad += !del_id(ix, i);
    CU_ASSERT(bad == 0);
    CU_ASSERT(index_count(ix) == n / 2);
    for (uint64_t i = 0; i < n; i++)
        bad += has_id(ix, i) != (i % 2 == 1);
    CU_ASSERT(bad == 0);

    for (uint64_t i = 0; i < n; i += 2)
        bad += put_id(ix, i) != 0;
    CU_ASSERT(bad == 0);
    CU_ASSERT(index_count(ix) == n);
    for (uint64_t i = 0; i < n; i++)
        bad += !has_id(ix, i);
    CU_ASSERT(bad == 0);
    /* Keys never inserted are absent. */
    for (uint64_t i = n; i < n + 1000; i++)
        bad += has_id(ix, i);
    CU_ASSERT(bad == 0);
    index_free(ix);
}

/* churn - fill an index made for `expected` keys with `live` keys, then replace a random one
 * `ops` times; checks the keys and returns the memory after the fill and at its peak. */
static void churn(size_t expected, int live, int ops, size_t *base, size_t *peak)
{
    struct index *ix = new_index(expected);
    uint64_t *ids = malloc((size_t)live * sizeof(*ids));
    uint64_t state = 42;
    uint64_t next = 0;
    uint64_t bad = 0;

    CU_ASSERT_FATAL(ids != NULL);
    for (int i = 0; i < live; i++) {
        ids[i] = next++;
        bad += put_id(ix, ids[i]) != 0;
    }
    *base = index_memory(ix);
    *peak = 0;
    /* Each step replaces a random live key with a new one: every deletion leaves a hole in
     * the arena and a vacated slot in the table. */
    for (int op = 0; op < ops; op++) {
        uint64_t j = tutil_rand(&state) % (uint64_t)live;
        size_t mem;

        bad += !del_id(ix, ids[j]);
        ids[j] = next++;
        bad += put_id(ix, ids[j]) != 0;
        mem = index_memory(ix);
        if (mem > *peak)
            *peak = mem;
    }
    CU_ASSERT(bad == 0);
    CU_ASSERT(index_count(ix) == (uint64_t)live);
    for (int i = 0; i < live; i++)
        bad += !has_id(ix, ids[i]);
    for (uint64_t id = 0; id < 1000; id++) {
        bool present = false;

        for (int i = 0; i < live && !present; i++)
            present = ids[i] == id;
        bad += has_id(ix, id) != present;
    }
    CU_ASSERT(bad == 0);
    free(ids);
    index_free(ix);
}

static void test_index_churn_keeps_memory_bounded(void)
{
    size_t base, peak;

    churn(0, 10000, 1000000, &base, &peak);
    printf("\n    churn: 10000 live keys, memory after fill %zu, peak over 1M replacements %zu\n",
           base, peak);
    /* Holes are compacted once they outweigh the live records, so memory stays within a
     * small factor of a freshly filled index however long the churn runs. */
    CU_ASSERT(peak <= 4 * base);
}

static void test_index_churn_in_presized_table_keeps_memory_bounded(void)
{
    size_t base, peak;

    /* A table made for 1M keys holding 1000: holes may grow to the table's size before
     * compaction (that keeps compaction amortised), but no further. */
    churn(1000000, 1000, 500000, &base, &peak);
    printf("\n    churn: 1000 live keys in a table for 1M, memory after fill %zu, peak %zu\n", base,
           peak);
    CU_ASSERT(peak <= 2 * base + (1 << 20));
}

static void test_index_new_refuses_impossible_sizes(void)
{
    struct index *ix = NULL;

    CU_ASSERT(index_new(SIZE_MAX, &ix) == -ENOMEM);
    CU_ASSERT(ix == NULL);
}

struct scan_seen {
    unsigned char *seen; /* count of visits per id below limit */
    uint64_t limit;
    uint64_t visits;
};

static void scan_count(void *ctx, const void *key, size_t klen, const struct index_loc *loc)
{
    struct scan_seen *s = ctx;
    unsigned char want[KLEN];
    /* loc_for(id) has seq = id + 1, which names the key without a reverse lookup. */
    uint64_t id = loc->seq - 1;

    s->visits++;
    if (id >= s->limit || klen != KLEN)
        return;
    make_key(id, want);
    if (memcmp(key, want, KLEN) == 0 && s->seen[id] < 255)
        s->seen[id]++;
}

static void test_index_scan_visits_each_key_once_when_unchanged(void)
{
    const uint64_t n = 5000;
    struct index *ix = new_index(0);
    struct scan_seen s = {.seen = calloc(n, 1), .limit = n};
    uint64_t cursor = 0;
    uint64_t once = 0;
    int calls = 0;

    CU_ASSERT_FATAL(s.seen != NULL);
    for (uint64_t i = 0; i < n; i++)
        CU_ASSERT(put_id(ix, i) == 0);
    do {
        cursor = index_scan(ix, cursor, 10, scan_count, &s);
        calls++;
    } while (cursor != 0);
    for (uint64_t i = 0; i < n; i++)
        once += s.seen[i] == 1;
    CU_ASSERT(once == n);
    CU_ASSERT(s.visits == n);
    CU_ASSERT(calls > 1);
    free(s.seen);
    index_free(ix);
}

static void test_index_scan_misses_nothing_when_table_grows_midway(void)
{
    const uint64_t n = 2000;
    const uint64_t extra = 200000;
    struct index *ix = new_index(0);
    struct scan_seen s = {.seen = calloc(n, 1), .limit = n};
    uint64_t cursor = 0;
    uint64_t missing = 0;

    CU_ASSERT_FATAL(s.seen != NULL);
    for (uint64_t i = 0; i < n; i++)
        CU_ASSERT(put_id(ix, i) == 0);
    /* A few calls into the scan, the table doubles several times. */
    for (int i = 0; i < 20 && (i == 0 || cursor != 0); i++)
        cursor = index_scan(ix, cursor, 10, scan_count, &s);
    CU_ASSERT_FATAL(cursor != 0);
    for (uint64_t i = n; i < n + extra; i++)
        CU_ASSERT(put_id(ix, i) == 0);
    while (cursor != 0)
        cursor = index_scan(ix, cursor, 100, scan_count, &s);
    for (uint64_t i = 0; i < n; i++)
        missing += s.seen[i] == 0;
    CU_ASSERT(missing == 0);
    free(s.seen);
    index_free(ix);
}

static void test_index_scan_misses_nothing_when_table_shrinks_midway(void)
{
    const uint64_t n = 2000;
    const uint64_t extra = 200000;
    struct index *ix = new_index(0);
    struct scan_seen s = {.seen = calloc(n, 1), .limit = n};
    uint64_t cursor = 0;
    uint64_t missing = 0;
    size_t before;

    CU_ASSERT_FATAL(s.seen != NULL);
    for (uint64_t i = 0; i < n + extra; i++)
        CU_ASSERT(put_id(ix, i) == 0);
    for (int i = 0; i < 2000 && (i == 0 || cursor != 0); i++)
        cursor = index_scan(ix, cursor, 10, scan_count, &s);
    CU_ASSERT_FATAL(cursor != 0);
    /* Deleting the extra keys shrinks the table (and compacts the arena) mid-scan. */
    before = index_memory(ix);
    for (uint64_t i = n; i < n + extra; i++)
        CU_ASSERT(del_id(ix, i));
    CU_ASSERT(index_memory(ix) < before / 4);
    while (cursor != 0)
        cursor = index_scan(ix, cursor, 10, scan_count, &s);
    for (uint64_t i = 0; i < n; i++)
        missing += s.seen[i] == 0;
    CU_ASSERT(missing == 0);
    free(s.seen);
    index_free(ix);
}

static void test_index_clear_removes_everything_and_stays_usable(void)
{
    struct index *ix = new_index(0);
    size_t empty = index_memory(ix);
    struct scan_seen s = {.seen = calloc(1, 1), .limit = 0};

    CU_ASSERT_FATAL(s.seen != NULL);
    for (uint64_t i = 0; i < 50000; i++)
        CU_ASSERT(put_id(ix, i) == 0);
    index_clear(ix);
    CU_ASSERT(index_count(ix) == 0);
    CU_ASSERT(index_key_bytes(ix) == 0);
    CU_ASSERT(index_memory(ix) <= empty);
    CU_ASSERT(!has_id(ix, 7));
    CU_ASSERT(index_scan(ix, 0, 100, scan_count, &s) == 0);
    CU_ASSERT(s.visits == 0);

    for (uint64_t i = 0; i < 1000; i++)
        CU_ASSERT(put_id(ix, i) == 0);
    CU_ASSERT(index_count(ix) == 1000);
    CU_ASSERT(has_id(ix, 999));
    CU_ASSERT(!del_id(ix, 1000));
    free(s.seen);
    index_free(ix);
}

static void test_index_large_keys_up_to_64k_and_beyond(void)
{
    struct index *ix = new_index(0);
    const size_t sizes[] = {65535, 65536, 65537, 200000, 1 << 20};
    enum { NSIZES = sizeof(sizes) / sizeof(sizes[0]), PER = 40 };
    unsigned char *key = malloc(1 << 20);
    uint64_t state = 7;
    uint64_t bad = 0;
    struct index_loc got;

    CU_ASSERT_FATAL(key != NULL);
    tutil_fill(&state, key, 1 << 20);
    /* Keys differ in their first byte; the rest is shared, so compares run the full length. */
    for (int round = 0; round < 2; round++) {
        for (size_t s = 0; s < NSIZES; s++) {
            for (int i = 0; i < PER; i++) {
                struct index_loc loc = loc_for(s * PER + (size_t)i);

                key[0] = (unsigned char)i;
                bad += index_put(ix, hash_of(key, sizes[s]), key, sizes[s], &loc, NULL, NULL) != 0;
            }
        }
        CU_ASSERT(index_count(ix) == NSIZES * PER);
        for (size_t s = 0; s < NSIZES; s++) {
            for (int i = 0; i < PER; i++) {
                struct index_loc want = loc_for(s * PER + (size_t)i);

                key[0] = (unsigned char)i;
                bad += !index_get(ix, hash_of(key, sizes[s]), key, sizes[s], &got);
                bad += !loc_eq(&got, &want);
            }
        }
        /* Removing everything exercises compaction with both shared and own-block records. */
        for (size_t s = 0; s < NSIZES; s++) {
            for (int i = 0; i < PER; i++) {
                key[0] = (unsigned char)i;
                bad += !index_del(ix, hash_of(key, sizes[s]), key, sizes[s], NULL);
            }
        }
        CU_ASSERT(index_count(ix) == 0);
    }
    CU_ASSERT(bad == 0);
    {
        struct index_loc loc = loc_for(1);

        /* Longer than INDEX_KEY_MAX: refused before the key bytes are read. */
        CU_ASSERT(index_put(ix, 1, key, (size_t)INDEX_KEY_MAX + 1, &loc, NULL, NULL) == -E2BIG);
        CU_ASSERT(!index_get(ix, 1, key, (size_t)INDEX_KEY_MAX + 1, &got));
    }
    free(key);
    index_free(ix);
}

static void test_index_compacts_arena_after_mass_deletion(void)
{
    const uint64_t n = 200000;
    struct index *ix = new_index(0);
    size_t full;
    uint64_t bad = 0;

    for (uint64_t i = 0; i < n; i++)
        bad += put_id(ix, i) != 0;
    full = index_memory(ix);
    /* Keep every tenth key: the arena must give back most of its chunks. */
    for (uint64_t i = 0; i < n; i++) {
        if (i % 10 != 0)
            bad += !del_id(ix, i);
    }
    CU_ASSERT(index_memory(ix) < full / 3);
    for (uint64_t i = 0; i < n; i++)
        bad += has_id(ix, i) != (i % 10 == 0);
    for (uint64_t i = n; i < 2 * n; i++)
        bad += put_id(ix, i) != 0;
    for (uint64_t i = 0; i < 2 * n; i++)
        bad += has_id(ix, i) != (i >= n || i % 10 == 0);
    CU_ASSERT(bad == 0);
    index_free(ix);
}

static void test_index_compaction_keeps_surviving_big_and_small_keys(void)
{
    enum { BIG = 40, SMALL = 100000, BIGLEN = 200000 };
    struct index *ix = new_index(0);
    unsigned char *key = malloc(BIGLEN);
    uint64_t state = 11;
    uint64_t bad = 0;
    struct index_loc got;
    size_t full;

    CU_ASSERT_FATAL(key != NULL);
    tutil_fill(&state, key, BIGLEN);
    /* Big keys (blocks of their own) interleaved with small ones (shared chunks). */
    for (uint64_t i = 0; i < SMALL; i++) {
        bad += put_id(ix, i) != 0;
        if (i % (SMALL / BIG) == 0) {
            struct index_loc loc = loc_for(SMALL + i);

            memcpy(key, &i, sizeof(i));
            bad += index_put(ix, hash_of(key, BIGLEN), key, BIGLEN, &loc, NULL, NULL) != 0;
        }
    }
    full = index_memory(ix);
    /* Drop 3 big keys in 4 and 9 small keys in 10: the holes outweigh what is left. */
    for (uint64_t i = 0; i < SMALL; i++) {
        if (i % 10 != 0)
            bad += !del_id(ix, i);
        if (i % (SMALL / BIG) == 0 && i / (SMALL / BIG) % 4 != 0) {
            memcpy(key, &i, sizeof(i));
            bad += !index_del(ix, hash_of(key, BIGLEN), key, BIGLEN, NULL);
        }
    }
    CU_ASSERT(index_memory(ix) < full / 2);
    for (uint64_t i = 0; i < SMALL; i++) {
        bad += has_id(ix, i) != (i % 10 == 0);
        if (i % (SMALL / BIG) == 0) {
            struct index_loc want = loc_for(SMALL + i);
            bool keep = i / (SMALL / BIG) % 4 == 0;

            memcpy(key, &i, sizeof(i));
            bad += index_get(ix, hash_of(key, BIGLEN), key, BIGLEN, &got) != keep;
            bad += keep && !loc_eq(&got, &want);
        }
    }
    CU_ASSERT(bad == 0);
    CU_ASSERT(index_count(ix) == SMALL / 10 + BIG / 4);
    free(key);
    index_free(ix);
}

/* Model test: keys of 0..299 bytes, hashes with only 16 random bits in the low half so that
 * equal bucket bits, equal tags and equal stored hashes all happen. */
enum { MODEL_IDS = 4000 };

static size_t model_key(uint64_t id, unsigned char *key)
{
    uint64_t state = id * UINT64_C(0xD1B54A32D192ED03) + 1;
    /* Ids below 8 have the short keys, one per length (the empty key included); longer
     * keys start with their id, so no two ids share a key. */
    size_t klen = id < 8 ? (size_t)id : (size_t)(8 + id % 292);

    tutil_fill(&state, key, klen);
    if (klen >= 8)
        memcpy(key, &id, sizeof(id));
    return klen;
}

static uint64_t model_hash(const unsigned char *key, size_t klen)
{
    return hash_of(key, klen) & UINT64_C(0xFFFFFFFF0000FFFF);
}

struct model_scan {
    const bool *present;
    unsigned *visits;
    uint64_t stray;
};

static void model_visit(void *ctx, const void *key, size_t klen, const struct index_loc *loc)
{
    struct model_scan *m = ctx;
    unsigned char want[300];
    uint32_t id = loc->seg;

    if (id >= MODEL_IDS || !m->present[id] || model_key(id, want) != klen ||
        (klen > 0 && memcmp(want, key, klen) != 0)) {
        m->stray++;
        return;
    }
    m->visits[id]++;
}

/* model_check - every id agrees with the model, and a full scan sees each key exactly once. */
static uint64_t model_check(const struct index *ix, const bool *present,
                            const struct index_loc *model)
{
    unsigned char key[300];
    unsigned *visits = calloc(MODEL_IDS, sizeof(*visits));
    struct model_scan m = {.present = present, .visits = visits};
    uint64_t bad = 0, count = 0, kbytes = 0, cursor = 0;
    struct index_loc got;

    CU_ASSERT_FATAL(visits != NULL);
    for (uint64_t id = 0; id < MODEL_IDS; id++) {
        size_t klen = model_key(id, key);
        bool found = index_get(ix, model_hash(key, klen), key, klen, &got);

        bad += found != present[id];
        bad += found && !loc_eq(&got, &model[id]);
        count += present[id];
        kbytes += present[id] ? klen : 0;
    }
    bad += index_count(ix) != count;
    bad += index_key_bytes(ix) != kbytes;
    do {
        cursor = index_scan(ix, cursor, 7, model_visit, &m);
    } while (cursor != 0);
    for (uint64_t id = 0; id < MODEL_IDS; id++)
        bad += visits[id] != (present[id] ? 1u : 0u);
    bad += m.stray;
    free(visits);
    return bad;
}

/* model_stats - what a model run saw of the index's resizing. */
struct model_stats {
    uint64_t resizes;         /* resizes started */
    uint64_t resizing_ops;    /* operations that found a resize in progress */
    uint64_t resizing_checks; /* full model checks made while a resize was in progress */
};

/*
 * model_run - ops random operations on an index that migrates `step` old slots per mutating
 * call, each compared with the model; a full model check every 25000 operations and, while a
 * resize is in progress, every 97. Returns the number of disagreements.
 */
static uint64_t model_run(size_t step, uint64_t seed, uint32_t ops, struct model_stats *st)
{
    struct index *ix = new_index(0);
    bool *present = calloc(MODEL_IDS, sizeof(*present));
    struct index_loc *model = calloc(MODEL_IDS, sizeof(*model));
    unsigned char key[300];
    uint64_t state = seed;
    uint64_t bad = 0;

    CU_ASSERT_FATAL(present != NULL && model != NULL);
    index_debug_set_step(ix, step);
    *st = (struct model_stats){0};
    for (uint32_t op = 1; op <= ops; op++) {
        uint64_t r = tutil_rand(&state);
        uint32_t id = (uint32_t)(r % MODEL_IDS);
        unsigned kind = (unsigned)(r >> 40) % 10;
        size_t klen = model_key(id, key);
        uint64_t h = model_hash(key, klen);
        struct index_loc loc = {.seg = id, .off = op, .vlen = op ^ id, .seq = op};
        struct index_loc old;
        bool had = false;

        st->resizing_ops += index_debug_resizing(ix);
        /* Phases: mostly puts, then mostly deletes, so the table grows, shrinks and the
         * arena is compacted several times over. */
        if ((op / 50000) % 2 == 1 && kind < 6)
            kind = 5;
        if (kind < 5) {
            bad += index_put(ix, h, key, klen, &loc, &old, &had) != 0;
            bad += had != present[id] || (had && !loc_eq(&old, &model[id]));
            present[id] = true;
            model[id] = loc;
        } else if (kind < 8) {
            bool found = index_del(ix, h, key, klen, &old);

            bad += found != present[id] || (found && !loc_eq(&old, &model[id]));
            present[id] = false;
        } else if (kind == 8) {
            struct index_loc expect = model[id];
            bool right = (r & 1) != 0;

            if (!right)
                expect.off++;
            bad += index_replace_if(ix, h, key, klen, &expect, &loc) != (present[id] && right);
            if (present[id] && right)
                model[id] = loc;
        } else if (op % 100000 == 0) {
            index_clear(ix);
            memset(present, 0, MODEL_IDS * sizeof(*present));
        }
        if (op % 25000 == 0 || (index_debug_resizing(ix) && op % 97 == 0)) {
            st->resizing_checks += index_debug_resizing(ix);
            bad += model_check(ix, present, model);
        }
    }
    st->resizes = index_debug_resizes(ix);
    free(present);
    free(model);
    index_free(ix);
    return bad;
}

static void test_index_random_operations_agree_with_a_model(void)
{
    struct model_stats st;

    CU_ASSERT(model_run(INDEX_REHASH_STEP, 2024, 400000, &st) == 0);
    printf("\n    model: %llu resizes, %llu of 400000 ops during one, %llu checks during one\n",
           (unsigned long long)st.resizes, (unsigned long long)st.resizing_ops,
           (unsigned long long)st.resizing_checks);
    /* The run must have met the two-table state, and checked everything in it. */
    CU_ASSERT(st.resizes >= 10);
    CU_ASSERT(st.resizing_ops > 0);
    CU_ASSERT(st.resizing_checks > 0);
}

static void test_index_model_agrees_while_slow_resizes_are_in_progress(void)
{
    struct model_stats st;

    /* One old slot per call: a resize spans thousands of operations, and inserts can catch
     * up with the drain, which makes the next growth finish the current resize first. */
    CU_ASSERT(model_run(1, 7, 200000, &st) == 0);
    printf("\n    step 1: %llu resizes, %llu of 200000 ops during one, %llu checks during one\n",
           (unsigned long long)st.resizes, (unsigned long long)st.resizing_ops,
           (unsigned long long)st.resizing_checks);
    CU_ASSERT(st.resizing_ops > 200000 / 10);
    CU_ASSERT(st.resizing_checks > 100);
    CU_ASSERT(model_run(5, 99, 200000, &st) == 0);
    CU_ASSERT(st.resizing_ops > 0 && st.resizing_checks > 0);
}

/* scan_churn - between two scan calls: put (grow) or delete (shrink) `n` churn keys from
 * *next, so that resizes start, progress and end under a scan in progress. */
static uint64_t scan_churn(struct index *ix, uint64_t *next, uint64_t first, bool grow, int n)
{
    uint64_t bad = 0;

    for (int i = 0; i < n; i++) {
        if (grow) {
            bad += put_id(ix, (*next)++) != 0;
        } else if (*next > first) {
            bad += !del_id(ix, --*next);
        }
    }
    return bad;
}

static void test_index_scan_misses_nothing_when_resizes_start_and_end_between_calls(void)
{
    const uint64_t n = 3000;
    const size_t steps[] = {1, 3, INDEX_REHASH_STEP};

    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        struct index *ix = new_index(0);
        struct scan_seen s = {.seen = calloc(n, 1), .limit = n};
        uint64_t next = n, cursor = 0, missing = 0, bad = 0;
        unsigned starts = 0, ends = 0, mid = 0, calls = 0;

        CU_ASSERT_FATAL(s.seen != NULL);
        index_debug_set_step(ix, steps[k]);
        for (uint64_t i = 0; i < n; i++)
            bad += put_id(ix, i) != 0;
        /* Each call visits a handful of keys; between calls the churn keys first pile up
         * (the table grows through several sizes), then go again (it shrinks). */
        do {
            bool before = index_debug_resizing(ix);

            mid += before;
            cursor = index_scan(ix, cursor, 4, scan_count, &s);
            bad += scan_churn(ix, &next, n, calls < 300, 150);
            starts += !before && index_debug_resizing(ix);
            ends += before && !index_debug_resizing(ix);
            calls++;
        } while (cursor != 0);
        for (uint64_t i = 0; i < n; i++)
            missing += s.seen[i] == 0;
        printf("\n    step %zu: %u scan calls, %u during a resize, %u resizes started and %u "
               "ended between calls",
               steps[k], calls, mid, starts, ends);
        CU_ASSERT(bad == 0);
        CU_ASSERT(missing == 0);
        CU_ASSERT(starts > 0 && ends > 0 && mid > 0);
        free(s.seen);
        index_free(ix);
    }
    printf("\n");
}

static void test_index_no_call_migrates_more_than_the_step_bound(void)
{
    const uint64_t n = 1000000;
    struct index *ix = new_index(0);
    uint64_t bad = 0, during = 0, grows;

    for (uint64_t i = 0; i < n; i++) {
        bad += put_id(ix, i) != 0;
        during += index_debug_resizing(ix);
    }
    grows = index_debug_resizes(ix);
    printf("\n    1M puts: %llu resizes, %llu puts with one in progress, most slots migrated "
           "by one call %zu\n",
           (unsigned long long)grows, (unsigned long long)during, index_debug_max_step(ix));
    /* From 16 slots to 2^21, one doubling each, all of them incremental. */
    CU_ASSERT(grows >= 17);
    CU_ASSERT(during > 0);
    CU_ASSERT(index_debug_max_step(ix) <= INDEX_REHASH_STEP);
    /* Deleting them all shrinks the table step by step under the same bound. */
    for (uint64_t i = 0; i < n; i++)
        bad += !del_id(ix, i);
    CU_ASSERT(index_debug_resizes(ix) > grows);
    CU_ASSERT(index_debug_max_step(ix) <= INDEX_REHASH_STEP);
    CU_ASSERT(index_count(ix) == 0);
    CU_ASSERT(bad == 0);
    index_free(ix);
}

static void test_index_clear_during_a_resize_abandons_it(void)
{
    struct index *ix = new_index(0);
    size_t empty = index_memory(ix);
    uint64_t i = 0, bad = 0;

    index_debug_set_step(ix, 1);
    while (i < 100000 && !(i > 5000 && index_debug_resizing(ix)))
        bad += put_id(ix, i++) != 0;
    CU_ASSERT_FATAL(index_debug_resizing(ix));
    index_clear(ix);
    CU_ASSERT(!index_debug_resizing(ix));
    CU_ASSERT(index_count(ix) == 0);
    CU_ASSERT(index_memory(ix) <= empty);
    CU_ASSERT(!has_id(ix, 0));
    for (uint64_t j = 0; j < 20000; j++)
        bad += put_id(ix, j) != 0;
    for (uint64_t j = 0; j < 20000; j++)
        bad += !has_id(ix, j);
    CU_ASSERT(index_count(ix) == 20000);
    CU_ASSERT(bad == 0);
    index_free(ix);
}

static void test_index_compaction_during_a_resize_finishes_it(void)
{
    const uint64_t n = 16000;
    struct index *ix = new_index(0);
    uint64_t bad = 0, ended_at = 0;
    size_t mem_before = 0, mem_after = 0;

    /* At one slot per call the growth at 13108 keys (16384 old slots to drain) is still
     * running at 16000, and the deletions reach the compaction threshold (holes over live
     * records, after 8000) well before it would end by itself. */
    index_debug_set_step(ix, 1);
    for (uint64_t i = 0; i < n; i++)
        bad += put_id(ix, i) != 0;
    CU_ASSERT_FATAL(index_debug_resizing(ix));
    for (uint64_t i = 0; i < n && ended_at == 0; i += 2) {
        size_t mem = index_memory(ix);

        bad += !del_id(ix, i);
        bad += !del_id(ix, i + 1) && i + 1 < n;
        if (!index_debug_resizing(ix)) {
            ended_at = i + 2;
            mem_before = mem;
            mem_after = index_memory(ix);
        }
    }
    printf("\n    resize ended after %llu deletions, memory %zu -> %zu\n",
           (unsigned long long)ended_at, mem_before, mem_after);
    /* It ended in the call that compacted: the arena gave a chunk back at that moment. */
    CU_ASSERT(ended_at > n / 2 && ended_at < n / 2 + 100);
    CU_ASSERT(mem_before - mem_after >= 256 * 1024);
    for (uint64_t i = 0; i < n; i++)
        bad += has_id(ix, i) != (i >= ended_at);
    CU_ASSERT(index_count(ix) == n - ended_at);
    CU_ASSERT(bad == 0);
    index_free(ix);
}

static void test_index_bytes_per_key_within_32_for_1m_16_byte_keys(void)
{
    const uint64_t n = 1000000;
    struct index *ix = new_index(0);
    uint64_t bad = 0;
    double per_key, peak = 0;

    for (uint64_t i = 0; i < n; i++) {
        bad += put_id(ix, i) != 0;
        /* The transient figure: both tables held during the last growth, at 838,861 keys. */
        if (i > n / 2 && index_debug_resizing(ix)) {
            double t = (double)(index_memory(ix) - index_key_bytes(ix)) / (double)(i + 1);

            peak = t > peak ? t : peak;
        }
    }
    CU_ASSERT(bad == 0);
    per_key = (double)(index_memory(ix) - index_key_bytes(ix)) / (double)index_count(ix);
    printf("\n    index: %llu keys of %d bytes, %zu bytes held, %.2f bytes/key beyond the key "
           "(%.2f at most during the last growth)\n",
           (unsigned long long)index_count(ix), KLEN, index_memory(ix), per_key, peak);
    /* The bounds documented at the top of engine/index.c: no resize is in progress at 1M. */
    CU_ASSERT(!index_debug_resizing(ix));
    CU_ASSERT(per_key <= 32.0);
    CU_ASSERT(peak > 32.0 && peak <= 40.0);
    index_free(ix);
}

void test_index_register(void);

void test_index_register(void)
{
    CU_pSuite s = CU_add_suite("index", NULL, NULL);

    if (s == NULL)
        return;
    CU_add_test(s, "put_replaces_and_reports_old", test_index_put_replaces_and_reports_old);
    CU_add_test(s, "seq_keeps_low_48_bits", test_index_seq_keeps_low_48_bits);
    CU_add_test(s, "binary_keys_with_nul_and_empty_key",
                test_index_binary_keys_with_nul_and_empty_key);
    CU_add_test(s, "colliding_hashes_stay_distinct", test_index_colliding_hashes_stay_distinct);
    CU_add_test(s, "replace_if_only_when_location_matches",
                test_index_replace_if_only_when_location_matches);
    CU_add_test(s, "million_keys_insert_delete_half_reinsert",
                test_index_million_keys_insert_delete_half_reinsert);
    CU_add_test(s, "churn_keeps_memory_bounded", test_index_churn_keeps_memory_bounded);
    CU_add_test(s, "churn_in_presized_table_keeps_memory_bounded",
                test_index_churn_in_presized_table_keeps_memory_bounded);
    CU_add_test(s, "new_refuses_impossible_sizes", test_index_new_refuses_impossible_sizes);
    CU_add_test(s, "scan_visits_each_key_once_when_unchanged",
                test_index_scan_visits_each_key_once_when_unchanged);
    CU_add_test(s, "scan_misses_nothing_when_table_grows_midway",
                test_index_scan_misses_nothing_when_table_grows_midway);
    CU_add_test(s, "scan_misses_nothing_when_table_shrinks_midway",
                test_index_scan_misses_nothing_when_table_shrinks_midway);
    CU_add_test(s, "clear_removes_everything_and_stays_usable",
                test_index_clear_removes_everything_and_stays_usable);
    CU_add_test(s, "large_keys_up_to_64k_and_beyond", test_index_large_keys_up_to_64k_and_beyond);
    CU_add_test(s, "compacts_arena_after_mass_deletion",
                test_index_compacts_arena_after_mass_deletion);
    CU_add_test(s, "compaction_keeps_surviving_big_and_small_keys",
                test_index_compaction_keeps_surviving_big_and_small_keys);
    CU_add_test(s, "random_operations_agree_with_a_model",
                test_index_random_operations_agree_with_a_model);
    CU_add_test(s, "model_agrees_while_slow_resizes_are_in_progress",
                test_index_model_agrees_while_slow_resizes_are_in_progress);
    CU_add_test(s, "scan_misses_nothing_when_resizes_start_and_end_between_calls",
                test_index_scan_misses_nothing_when_resizes_start_and_end_between_calls);
    CU_add_test(s, "no_call_migrates_more_than_the_step_bound",
                test_index_no_call_migrates_more_than_the_step_bound);
    CU_add_test(s, "clear_during_a_resize_abandons_it",
                test_index_clear_during_a_resize_abandons_it);
    CU_add_test(s, "compaction_during_a_resize_finishes_it",
                test_index_compaction_during_a_resize_finishes_it);
    CU_add_test(s, "bytes_per_key_within_32_for_1m_16_byte_keys",
                test_index_bytes_per_key_within_32_for_1m_16_byte_keys);
}
