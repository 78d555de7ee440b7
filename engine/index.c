/* SPDX-License-Identifier: MIT */
/*
 * The in-memory index: key -> location of the key's newest record. It owns its table and its
 * key arena; it does no I/O and knows nothing of the file formats (struct index_loc is all it
 * sees of a record). It must stay within a small constant number of bytes per key beyond the
 * key bytes themselves, so it never allocates per key.
 *
 * Layout
 *
 *   table: 2^k slots of 4 bytes, open addressing with linear probing, bucket = low k bits of
 *          the caller's hash. A slot is 0 (empty) or (ref | tag): ref is the record's address
 *          in the arena in the low `refbits` bits, and the bits above it hold the same bits of
 *          the key's hash as a tag, so that most probes of other keys are rejected from the
 *          slot alone, without touching the record. refbits is as small as the arena's size
 *          allows, with room for the arena to grow until the table is next resized (26
 *          bits for 1M 16-byte keys, leaving a 6-bit tag); each table has its own, a resize
 *          may widen it, and when the arena outgrows it anyway tag bits become address bits
 *          (see widen_refs). At a 4 GiB arena the tag is gone but lookups still work (they
 *          compare the hash stored in the record instead).
 *   arena: chunks of 256 KiB, numbered; address = chunk number << 18 | offset. Chunk 0 is
 *          never used so that no address is 0. A record too big to share a chunk (over half
 *          a chunk: keys over about 128 KiB) gets a block of its own that takes as many
 *          chunk numbers as it has 256 KiB pieces. Records are packed at byte granularity:
 *              hash   4  low 32 bits of the caller's hash (rehash and scan need no rehashing)
 *              seg    4
 *              off    4
 *              vlen   4
 *              seq    6  low 48 bits
 *              klen   1-5  LEB128 of klen << 1 | dead
 *              key    klen
 *          The location is updated in place by put and replace_if; del sets the dead bit and
 *          the record's bytes become a hole. When the holes outweigh the live records (and
 *          the tables, and one chunk: see index_del) the arena is compacted in place
 *          (records slide down into the chunks already held, so compaction never allocates
 *          and cannot fail) and the table is refilled. Holes thus stay under
 *          max(live records, tables, 256 KiB).
 *
 * Why this layout: the table is what doubling makes expensive (just after a doubling it is
 * half empty), so its slots are kept to 4 bytes and everything else lives once per key in the
 * dense arena. A separate fixed-size entry array would need a key pointer in each entry on
 * top of the location (about 5 more bytes a key); putting the location next to the key avoids
 * it and also puts the location and the key in the same cache line for the final compare.
 * More hash bits per slot (8-byte slots) would cost another 8 bytes a key at 1M keys; the
 * adaptive tag gets most of their benefit for free (with 1M short keys, a lookup of an absent
 * key touches 0.02 records on average, a hit touches 1.0).
 *
 * Deletion is backward-shift (no tombstones), so probe chains depend only on the current
 * load. The table doubles when an insert would take it over 0.8 full, and shrinks (to load
 * <= 0.5, by at most a factor of 8 at a time) when a deletion leaves it under 1/8 full, so
 * memory follows the key count.
 *
 * Incremental resizing. Rebuilding a table all at once costs about 40 ms per million keys, a
 * stall of the whole shard, so a resize only allocates the new table; the keys then move
 * over a few at a time. While a resize is in progress there are two tables: `old`, which
 * only ever loses keys, and `t`, which takes every new key. A key is in exactly one of them;
 * get, put, del and replace_if look in old first, then in t. Every put, del and replace_if
 * first examines up to INDEX_REHASH_STEP old slots, moving each key found to t (index_get
 * is const and migrates nothing). The old table is drained from the tail of a cluster
 * backwards: the drain first looks for an empty slot s, then walks down from s - 1, so the
 * slot it empties always has an empty slot after it and no other key's probe chain runs
 * through it; removing it needs no backward shift, just a zero. Deletions in old use the
 * usual backward shift, which never crosses the drained (empty) stretch. So both tables are
 * always valid linear-probing tables, and a resize costs at most 2 * old slots of work in
 * all (the search for s, then one pass), after which the old table is freed. The drained
 * stretch is handed back to the kernel 64 KiB at a time as it grows, so that the final free
 * is cheap too, and the drain prefetches the records and new slots of a batch of keys so
 * that moving them costs about what the sequential rebuild did.
 *
 * Bound per call: no call examines more than INDEX_REHASH_STEP (64) old slots for migration,
 * with one exception that does not arise from the rules above: if an insert needs to grow t
 * while a resize is still in progress, the current resize is finished first, in that call
 * (at most 2 * old slots). It cannot happen because the drain outruns the inserts: a growth
 * starts with t at most 0.4 full and ends within 2 * old / 64 = t / 64 mutating calls, far
 * fewer than the 0.4 * t inserts it would take to fill t; a shrink makes t at least old / 8
 * slots and at most 0.5 full, so it ends within old / 32 calls while filling t takes 0.3 * t
 * >= 0.0375 * old inserts; a resize that widens the refs (widen_refs) keeps or doubles the
 * size so that t / 32 more keys fit. The test suite checks the bound while inserting and
 * then deleting a million keys. Deletions never start a shrink while a resize is in
 * progress; a later one will. Arena compaction rebuilds the table from the arena in one pass
 * anyway, so if a resize is in progress then, it fills the new table and frees the old one:
 * compaction finishes the resize at no extra cost (compaction itself is amortised O(1) per
 * deletion, as before, but is one long call). Widening the refs is normally part of a
 * resize too; widen_refs says when it is instead one pass over the table.
 *
 * Cost per key, beyond the key bytes: 23 bytes of record (22 + 1 for keys under 64 bytes) plus
 * 4 / load bytes of table, where load is between 0.4 and 0.8, plus the unused tail of the
 * last chunk. For 1M keys of 16 bytes the table has 2^21 slots (load 0.48, 8.4 bytes a key),
 * so the total is about 31.5 bytes a key; the "index" test suite measures and asserts it
 * (<= 32; no resize is in progress at 1M keys). Across a growth cycle the table costs 5 to 10
 * bytes a key, so the overhead is 28 to 33 bytes a key for short keys. Transient peak: during
 * a growth both tables exist, old (0.8 full) and new (twice its size), so the tables cost 15
 * bytes a key instead of 10 just after it starts, about 38.3 bytes a key in all for 16-byte
 * keys (the test suite measures it), falling as the drain releases the old table, for at
 * most old / 32 mutating calls (for 16-byte keys: from 838,861 keys to 871,629 at the
 * latest; in practice about 855,000). During a shrink the old table, at most 1/8 full, is
 * kept as long as that. index_memory counts both tables whole until the old one is freed.
 *
 * Limits: keys up to INDEX_KEY_MAX bytes, an arena of at most 4 GiB (about 100M keys of 16
 * bytes) and a table of at most 2^31 slots; past them index_put returns -ENOMEM.
 */
#include "index.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK_SHIFT 18
#define CHUNK_SIZE  ((uint32_t)1 << CHUNK_SHIFT)
#define OFF_MASK    (CHUNK_SIZE - 1)
/* Records bigger than this get a block of their own; smaller ones waste at most half a
 * chunk when they do not fit in the current one. */
#define JUMBO_MIN (CHUNK_SIZE / 2)
/* Chunk numbers available in a 32-bit address. */
#define MAX_IDS ((uint32_t)1 << (32 - CHUNK_SHIFT))
/* Fixed part of a record: hash, seg, off, vlen, seq. */
#define REC_HDR 22
/* The smallest address width: chunk numbers 0 and 1. */
#define REFBITS_MIN (CHUNK_SHIFT + 1)
#define MIN_SLOTS   16
#define MAX_SLOTS   ((uint64_t)1 << 31)
#define SEQ_MASK    ((UINT64_C(1) << 48) - 1)
/* Drained old slots are handed back to the kernel this many at a time (64 KiB). */
#define RELEASE_SLOTS 16384
/* Keys the drain takes off the old table before placing them (see rehash_step). */
#define MOVE_BATCH 16

struct chunk {
    unsigned char *mem; /* NULL for the extra numbers a big block takes */
    uint32_t cap;       /* bytes allocated */
    uint32_t used;      /* bytes of records, live or dead, from the start */
};

/* One linear-probing table. Each has its own address width, so that a resize can also
 * widen the refs (see widen_refs). */
struct table {
    uint32_t *slots;  /* NULL for the old table when no resize is in progress */
    uint64_t mask;    /* slots - 1; the size is a power of two */
    unsigned refbits; /* a slot's low refbits bits are the ref, the rest the tag */
    uint32_t refmask;
};

struct index {
    struct table t;     /* the table new keys go to */
    struct table old;   /* the table being drained during a resize */
    uint64_t old_count; /* keys still in old */
    uint64_t drain;     /* old slot the drain looks at next (seeking), or emptied last */
    uint64_t released;  /* old slots [drain, released) are drained but not yet released */
    uint64_t top;       /* the empty slot the drain started below: [drain, top] is drained */
    bool seeking;       /* the drain is still looking for an empty slot to start below */
    size_t step;        /* old slots examined per mutating call (INDEX_REHASH_STEP) */
    size_t call_work;   /* old slots examined by the current call */
    size_t max_work;    /* the most call_work reached: for index_debug_max_step */
    uint64_t resizes;   /* resizes started: for index_debug_resizes */
    uint64_t min_slots; /* size chosen by index_new; shrinking stops there */
    uint64_t count;
    uint64_t key_bytes;
    uint64_t live_bytes; /* bytes of live records */
    uint64_t used_bytes; /* bytes of records, live or dead: used - live are holes */
    uint64_t arena_bytes;
    struct chunk *chunks; /* indexed by chunk number */
    uint32_t nids;        /* numbers [0, nids) are taken; 0 is reserved */
    uint32_t ids_cap;     /* entries allocated in chunks */
    uint32_t cur;         /* chunk taking small records, 0 if none */
};

/* ---- record encoding ---- */

static uint32_t rd32(const unsigned char *p)
{
    uint32_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static void wr32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, sizeof(v));
}

static unsigned varint_len(uint64_t v)
{
    unsigned n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static unsigned varint_put(unsigned char *p, uint64_t v)
{
    unsigned n = 0;

    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

static unsigned varint_get(const unsigned char *p, uint64_t *out)
{
    uint64_t v = 0;
    unsigned n = 0;
    unsigned shift = 0;

    do {
        v |= (uint64_t)(p[n] & 0x7f) << shift;
        shift += 7;
    } while (p[n++] & 0x80);
    *out = v;
    return n;
}

static uint32_t rec_hash(const unsigned char *p)
{
    return rd32(p);
}

/* rec_key - the key of the record at p: returns its length, sets *key and *dead. */
static uint32_t rec_key(const unsigned char *p, const unsigned char **key, bool *dead)
{
    uint64_t v;
    unsigned n = varint_get(p + REC_HDR, &v);

    *key = p + REC_HDR + n;
    *dead = (v & 1) != 0;
    return (uint32_t)(v >> 1);
}

static uint32_t rec_size(const unsigned char *p)
{
    const unsigned char *key;
    bool dead;
    uint32_t klen = rec_key(p, &key, &dead);

    return (uint32_t)(key - p) + klen;
}

static bool rec_is_dead(const unsigned char *p)
{
    /* The dead flag is bit 0 of the varint's value, which its first byte carries. */
    return (p[REC_HDR] & 1) != 0;
}

static void rec_load_loc(const unsigned char *p, struct index_loc *loc)
{
    uint64_t seq = 0;

    loc->seg = rd32(p + 4);
    loc->off = rd32(p + 8);
    loc->vlen = rd32(p + 12);
    for (int i = 5; i >= 0; i--)
        seq = seq << 8 | p[16 + i];
    loc->seq = seq;
}

static void rec_store_loc(unsigned char *p, const struct index_loc *loc)
{
    uint64_t seq = loc->seq & SEQ_MASK;

    wr32(p + 4, loc->seg);
    wr32(p + 8, loc->off);
    wr32(p + 12, loc->vlen);
    for (int i = 0; i < 6; i++) {
        p[16 + i] = (unsigned char)seq;
        seq >>= 8;
    }
}

static unsigned char *rec_at(const struct index *ix, uint32_t ref)
{
    return ix->chunks[ref >> CHUNK_SHIFT].mem + (ref & OFF_MASK);
}

/* ---- table ---- */

static uint64_t max_load(uint64_t slots)
{
    return slots - slots / 5;
}

static void set_refbits(struct table *tb, unsigned bits)
{
    tb->refbits = bits;
    tb->refmask = (uint32_t)(((uint64_t)1 << bits) - 1);
}

static uint32_t slot_make(const struct table *tb, uint32_t h32, uint32_t ref)
{
    return (h32 & ~tb->refmask) | ref;
}

static bool slot_tag_matches(const struct table *tb, uint32_t slot, uint32_t h32)
{
    return ((slot ^ h32) & ~tb->refmask) == 0;
}

static uint32_t slot_ref(const struct table *tb, uint32_t slot)
{
    return slot & tb->refmask;
}

static bool is_resizing(const struct index *ix)
{
    return ix->old.slots != NULL;
}

/* table_bytes - the bytes of both tables. */
static uint64_t table_bytes(const struct index *ix)
{
    uint64_t slots = ix->t.mask + 1 + (is_resizing(ix) ? ix->old.mask + 1 : 0);

    return slots * sizeof(*ix->t.slots);
}

/* find - look key up in table tb: true and its slot position in *pos; or false and in *pos
 * the empty slot that ended the search, which is where linear probing inserts the key. */
static bool find(const struct index *ix, const struct table *tb, uint32_t h32, const void *key,
                 size_t klen, uint64_t *pos)
{
    uint64_t i = h32 & tb->mask;

    /* A table is never full, so the walk ends at an empty slot. */
    for (uint32_t s; (s = tb->slots[i]) != 0; i = (i + 1) & tb->mask) {
        const unsigned char *p, *k;
        bool dead;

        if (!slot_tag_matches(tb, s, h32))
            continue;
        p = rec_at(ix, slot_ref(tb, s));
        if (rec_hash(p) != h32 || rec_key(p, &k, &dead) != klen)
            continue;
        if (klen == 0 || memcmp(k, key, klen) == 0) {
            *pos = i;
            return true;
        }
    }
    *pos = i;
    return false;
}

/* old_has_bucket - false if no key of old bucket b can be in the old table any more: b lies
 * in the drained stretch, and a key sits in the run of full slots that starts at its bucket.
 * Lookups then skip old, sparing a cache miss and keeping the drained pages unmapped. */
static bool old_has_bucket(const struct index *ix, uint64_t b)
{
    uint64_t m = ix->old.mask;

    return ix->seeking || ((ix->top - b) & m) > ((ix->top - ix->drain) & m);
}

/* find_any - look key up in both tables. If found, sets *tb to its table and *pos to its
 * slot. If not, *tb is the new table and *pos the empty slot where it would go. */
static bool find_any(struct index *ix, uint32_t h32, const void *key, size_t klen,
                     struct table **tb, uint64_t *pos)
{
    if (is_resizing(ix) && old_has_bucket(ix, h32 & ix->old.mask) &&
        find(ix, &ix->old, h32, key, klen, pos)) {
        *tb = &ix->old;
        return true;
    }
    *tb = &ix->t;
    return find(ix, &ix->t, h32, key, klen, pos);
}

static void table_place(struct table *tb, uint32_t h32, uint32_t ref)
{
    uint64_t i = h32 & tb->mask;

    assert(ref != 0 && (ref & ~tb->refmask) == 0);
    while (tb->slots[i] != 0)
        i = (i + 1) & tb->mask;
    tb->slots[i] = slot_make(tb, h32, ref);
}

/* table_erase - empty slot pos of tb, then pull later members of its cluster back so that
 * every key stays reachable from its bucket without a tombstone. */
static void table_erase(struct index *ix, struct table *tb, uint64_t pos)
{
    uint64_t hole = pos;
    uint64_t j = pos;

    for (;;) {
        uint32_t s;
        uint64_t home;

        j = (j + 1) & tb->mask;
        s = tb->slots[j];
        if (s == 0)
            break;
        home = rec_hash(rec_at(ix, slot_ref(tb, s))) & tb->mask;
        /* The key at j may fill the hole only if its bucket is not in (hole, j]. */
        if (((j - home) & tb->mask) >= ((j - hole) & tb->mask)) {
            tb->slots[hole] = s;
            hole = j;
        }
    }
    tb->slots[hole] = 0;
}

/* resize_end - drop the drained old table. */
static void resize_end(struct index *ix)
{
    free(ix->old.slots);
    ix->old = (struct table){0};
    ix->old_count = 0;
}

/*
 * release - hand the pages wholly inside slots [lo, hi] of tb back to the kernel. They are
 * drained: zero, and never written again, and an anonymous page the kernel takes back reads
 * as zeros, so the table stays valid; the free at the end of the resize then has little
 * left to unmap (freeing a touched 32 MiB table at once takes milliseconds).
 */
static void release(struct table *tb, uint64_t lo, uint64_t hi)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t mask = page > 0 ? (uintptr_t)page - 1 : 4095;
    uintptr_t a = ((uintptr_t)(tb->slots + lo) + mask) & ~mask;
    uintptr_t b = (uintptr_t)(tb->slots + hi + 1) & ~mask;

    /* Failure only leaves the pages in place until the free. */
    if (b > a)
        (void)madvise((void *)a, b - a, MADV_DONTNEED);
}

/*
 * rehash_step - move keys from the old table to the new one, examining at most budget old
 * slots; ends the resize once old is empty. Returns the slots examined. See the top of the
 * file for why emptying the slot below a known-empty one never breaks a probe chain.
 */
static size_t rehash_step(struct index *ix, size_t budget)
{
    struct table *o = &ix->old;
    size_t work = 0;

    while (is_resizing(ix)) {
        uint32_t refs[MOVE_BATCH], hashes[MOVE_BATCH];
        unsigned n = 0;

        if (ix->old_count == 0) {
            resize_end(ix);
            break;
        }
        if (work == budget)
            break;
        if (ix->seeking) {
            /* Deletions can only add empty slots, and one exists, so this ends within one
             * pass; from then on the drained stretch above the drain position is empty. */
            work++;
            if (o->slots[ix->drain] == 0) {
                ix->seeking = false;
                ix->released = ix->drain;
                ix->top = ix->drain;
            } else {
                ix->drain = (ix->drain + 1) & o->mask;
            }
            continue;
        }
        /* Take a batch of keys off the old table, then place them. Each key's home in the
         * new table needs the hash stored in its record, a random access to the arena (and
         * then one to the new table): prefetching a batch overlaps those cache misses, as
         * the sequential arena walk of a full rebuild did. */
        while (n < MOVE_BATCH && n < ix->old_count && work < budget) {
            work++;
            ix->drain = (ix->drain - 1) & o->mask;
            if (o->slots[ix->drain] != 0) {
                refs[n] = slot_ref(o, o->slots[ix->drain]);
                o->slots[ix->drain] = 0;
                __builtin_prefetch(rec_at(ix, refs[n]));
                n++;
            }
        }
        for (unsigned k = 0; k < n; k++) {
            hashes[k] = rec_hash(rec_at(ix, refs[k]));
            __builtin_prefetch(&ix->t.slots[hashes[k] & ix->t.mask]);
        }
        for (unsigned k = 0; k < n; k++)
            table_place(&ix->t, hashes[k], refs[k]);
        ix->old_count -= n;
        if (((ix->released - ix->drain) & o->mask) >= RELEASE_SLOTS) {
            /* The drained stretch [drain, released) may wrap past the end of the table. */
            if (ix->drain < ix->released) {
                release(o, ix->drain, ix->released - 1);
            } else {
                release(o, ix->drain, o->mask);
                if (ix->released > 0)
                    release(o, 0, ix->released - 1);
            }
            ix->released = ix->drain;
        }
    }
    ix->call_work += work;
    if (ix->call_work > ix->max_work)
        ix->max_work = ix->call_work;
    return work;
}

/* begin_call - every mutating call starts here: count its migration work afresh, and do
 * its share of an ongoing resize. */
static void begin_call(struct index *ix)
{
    ix->call_work = 0;
    (void)rehash_step(ix, ix->step);
}

/*
 * resize_start - make a table of `slots` slots and address width refbits the one new keys go
 * to, and start draining the current one into it. No resize may be in progress. 0, or
 * -ENOMEM with nothing changed.
 */
static int resize_start(struct index *ix, uint64_t slots, unsigned refbits)
{
    uint32_t *t;

    assert(!is_resizing(ix) && ix->count <= max_load(slots));
    if (slots > MAX_SLOTS)
        return -ENOMEM;
    /* Big tables come from mmap already zeroed, so this costs no pass over the new table:
     * its pages are touched as the keys arrive. */
    t = calloc((size_t)slots, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    ix->resizes++;
    ix->old = ix->t;
    ix->old_count = ix->count;
    ix->t = (struct table){.slots = t, .mask = slots - 1};
    set_refbits(&ix->t, refbits);
    ix->drain = 0;
    ix->seeking = true;
    if (ix->old_count == 0)
        resize_end(ix);
    return 0;
}

/*
 * refbits_for - the address width for a new table of `slots` slots: what the arena needs now,
 * or, if more, what it will need once that table is 0.8 full if records keep their current
 * average size. Steady growth then widens the refs by starting a resize with wider slots,
 * not with a pass over a big table (see widen_refs), at the price of at most about one tag
 * bit until the arena catches up.
 */
static unsigned refbits_for(const struct index *ix, uint64_t slots)
{
    uint64_t bytes = ix->used_bytes;
    uint64_t ids;
    unsigned bits = ix->t.refbits;

    if (ix->count > 0 && max_load(slots) > ix->count)
        bytes += (max_load(slots) - ix->count) * (ix->live_bytes / ix->count + 1);
    /* Records do not straddle chunks: allow 1/32 of each chunk for the unused tail. */
    ids = bytes / CHUNK_SIZE + bytes / CHUNK_SIZE / 32 + 2;
    if (ids > MAX_IDS)
        ids = MAX_IDS;
    while ((ids << CHUNK_SHIFT) > ((uint64_t)1 << bits))
        bits++;
    return bits;
}

/* table_fill - empty the new table, drop the old one and insert every live record of the
 * arena in arena order: the arena is read sequentially and no key is hashed again. */
static void table_fill(struct index *ix)
{
    if (is_resizing(ix))
        resize_end(ix);
    memset(ix->t.slots, 0, (size_t)(ix->t.mask + 1) * sizeof(*ix->t.slots));
    for (uint32_t id = 1; id < ix->nids; id++) {
        const struct chunk *c = &ix->chunks[id];

        for (uint32_t off = 0; off < c->used; off += rec_size(c->mem + off)) {
            if (!rec_is_dead(c->mem + off))
                table_place(&ix->t, rec_hash(c->mem + off), id << CHUNK_SHIFT | off);
        }
    }
}

/* slots_for - the smallest table of at least min slots holding n keys at load <= limit/10. */
static uint64_t slots_for(uint64_t n, uint64_t min, unsigned limit)
{
    uint64_t s = min;

    while (s < MAX_SLOTS && n > s * limit / 10)
        s *= 2;
    return s;
}

/* ---- arena ---- */

/*
 * widen_refs - make room in the new table for chunk numbers below nids by turning tag bits
 * into address bits (the old table of a resize gets no new refs, so it keeps its width).
 * Resizes usually leave room (refbits_for); this handles the rest. If no resize is in
 * progress and the table is at least 1/4 full, it starts one into a table of the wider
 * format, the same size or double if the drain might not finish before that size fills up,
 * so the keys are re-encoded as they move, incrementally. Otherwise (during a resize, in a
 * sparse presized table, or if that table cannot be allocated) it re-encodes the table in
 * place in one pass: a slot holds the hash's bits above refbits, and a ref is below
 * 2^refbits, so clearing bit refbits of every slot re-encodes it for refbits + 1. That pass
 * is a plain sequential AND, the one piece of table upkeep that is not incremental. Never
 * fails.
 */
static void widen_refs(struct index *ix, uint32_t nids)
{
    struct table *t = &ix->t;
    unsigned bits = t->refbits;
    uint64_t slots = t->mask + 1;

    while (((uint64_t)nids << CHUNK_SHIFT) > ((uint64_t)1 << bits))
        bits++;
    if (bits == t->refbits)
        return;
    /* The drain examines at most 2 * slots old slots, INDEX_REHASH_STEP or more a call. */
    if (ix->count + slots / 32 > max_load(slots) && slots < MAX_SLOTS)
        slots *= 2;
    if (!is_resizing(ix) && ix->count >= (t->mask + 1) / 4) {
        unsigned want = refbits_for(ix, slots);

        if (resize_start(ix, slots, want > bits ? want : bits) == 0)
            return;
    }
    while (t->refbits < bits) {
        uint32_t bit = (uint32_t)1 << t->refbits;

        for (uint64_t i = 0; i <= t->mask; i++)
            t->slots[i] &= ~bit;
        set_refbits(t, t->refbits + 1);
    }
}

/* reserve_ids - room in the chunk directory for n more numbers. 0 or -ENOMEM. */
static int reserve_ids(struct index *ix, uint32_t n)
{
    uint32_t cap;
    struct chunk *c;

    if (n > MAX_IDS - ix->nids)
        return -ENOMEM;
    if (ix->nids + n <= ix->ids_cap)
        return 0;
    cap = ix->ids_cap < 8 ? 8 : ix->ids_cap;
    while (cap < ix->nids + n)
        cap = cap > MAX_IDS / 2 ? MAX_IDS : cap * 2;
    c = realloc(ix->chunks, (size_t)cap * sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    if (ix->ids_cap == 0)
        c[0] = (struct chunk){0};
    ix->chunks = c;
    ix->ids_cap = cap;
    return 0;
}

/* arena_alloc - size bytes for a new record; sets *ref. 0 or -ENOMEM (nothing changed). */
static int arena_alloc(struct index *ix, uint32_t size, uint32_t *ref)
{
    uint32_t span = 1;
    uint32_t cap = CHUNK_SIZE;
    uint32_t id;
    unsigned char *mem;
    int ret;

    if (size <= JUMBO_MIN && ix->cur != 0 && CHUNK_SIZE - ix->chunks[ix->cur].used >= size) {
        struct chunk *c = &ix->chunks[ix->cur];

        *ref = ix->cur << CHUNK_SHIFT | c->used;
        c->used += size;
        ix->used_bytes += size;
        return 0;
    }
    if (size > JUMBO_MIN) {
        span = (uint32_t)(((uint64_t)size + CHUNK_SIZE - 1) >> CHUNK_SHIFT);
        cap = size;
    }
    ret = reserve_ids(ix, span);
    if (ret < 0)
        return ret;
    mem = malloc(cap);
    if (mem == NULL)
        return -ENOMEM;
    id = ix->nids;
    widen_refs(ix, id + span);
    ix->chunks[id] = (struct chunk){.mem = mem, .cap = cap, .used = size};
    for (uint32_t i = 1; i < span; i++)
        ix->chunks[id + i] = (struct chunk){0};
    ix->nids += span;
    ix->arena_bytes += cap;
    ix->used_bytes += size;
    /* A big block is full at once; small records keep filling the newest chunk. */
    if (span == 1 && size <= JUMBO_MIN)
        ix->cur = id;
    *ref = id << CHUNK_SHIFT;
    return 0;
}

static bool chunk_is_jumbo(const struct chunk *c)
{
    return c->used > 0 && rec_size(c->mem) > JUMBO_MIN;
}

/*
 * arena_compact - squeeze the holes out of the arena, then rebuild the table (the new one's
 * size, if a resize is in progress: that ends it).
 * Small records slide towards the start, reusing the chunks in number order: the write
 * position never passes the read position, so a chunk is only ever overwritten at or below
 * the record being read, and no memory is allocated. Big blocks are kept or freed whole.
 * Chunk numbers are reassigned densely, which may give address bits back to the tag.
 */
static void arena_compact(struct index *ix)
{
    uint32_t d = 1;  /* next chunk number to assign */
    uint32_t wb = 0; /* chunk number being written, 0 if none */
    uint64_t arena = 0;
    unsigned bits = REFBITS_MIN;

    for (uint32_t r = 1; r < ix->nids; r++) {
        struct chunk c = ix->chunks[r];
        bool adopted = false;

        if (c.mem == NULL)
            continue;
        assert(d <= r);
        if (chunk_is_jumbo(&c)) {
            if (rec_is_dead(c.mem)) {
                free(c.mem);
                continue;
            }
            /* d <= r, so this only overwrites numbers already processed or this block's. */
            uint32_t span = (uint32_t)(((uint64_t)c.cap + CHUNK_SIZE - 1) >> CHUNK_SHIFT);
            ix->chunks[d] = c;
            for (uint32_t i = 1; i < span; i++)
                ix->chunks[d + i] = (struct chunk){0};
            d += span;
            arena += c.cap;
            continue;
        }
        for (uint32_t off = 0; off < c.used;) {
            unsigned char *p = c.mem + off;
            uint32_t size = rec_size(p);

            if (!rec_is_dead(p)) {
                if (wb == 0 || CHUNK_SIZE - ix->chunks[wb].used < size) {
                    /* This chunk becomes the write chunk; writing starts at 0 <= off. */
                    ix->chunks[d] = (struct chunk){.mem = c.mem, .cap = CHUNK_SIZE, .used = 0};
                    wb = d++;
                    arena += CHUNK_SIZE;
                    adopted = true;
                }
                memmove(ix->chunks[wb].mem + ix->chunks[wb].used, p, size);
                ix->chunks[wb].used += size;
            }
            off += size;
        }
        if (!adopted)
            free(c.mem);
    }
    ix->nids = d;
    ix->cur = wb;
    ix->arena_bytes = arena;
    ix->used_bytes = ix->live_bytes;
    while (((uint64_t)d << CHUNK_SHIFT) > ((uint64_t)1 << bits))
        bits++;
    set_refbits(&ix->t, bits);
    table_fill(ix);
}

/* ---- public API ---- */

int index_new(size_t expected_keys, struct index **out)
{
    struct index *ix;

    if (expected_keys > max_load(MAX_SLOTS))
        return -ENOMEM;
    ix = calloc(1, sizeof(*ix));
    if (ix == NULL)
        return -ENOMEM;
    ix->min_slots = slots_for(expected_keys, MIN_SLOTS, 8);
    ix->t.slots = calloc((size_t)ix->min_slots, sizeof(*ix->t.slots));
    if (ix->t.slots == NULL) {
        free(ix);
        return -ENOMEM;
    }
    ix->t.mask = ix->min_slots - 1;
    ix->step = INDEX_REHASH_STEP;
    ix->nids = 1;
    set_refbits(&ix->t, REFBITS_MIN);
    *out = ix;
    return 0;
}

static void arena_free(struct index *ix)
{
    for (uint32_t id = 1; id < ix->nids; id++)
        free(ix->chunks[id].mem);
    free(ix->chunks);
    ix->chunks = NULL;
    ix->ids_cap = 0;
    ix->nids = 1;
    ix->cur = 0;
    ix->arena_bytes = 0;
    ix->used_bytes = 0;
    ix->live_bytes = 0;
}

void index_free(struct index *ix)
{
    if (ix == NULL)
        return;
    arena_free(ix);
    free(ix->old.slots);
    free(ix->t.slots);
    free(ix);
}

bool index_get(const struct index *ix, uint64_t hash, const void *key, size_t klen,
               struct index_loc *out)
{
    uint32_t h32 = (uint32_t)hash;
    const struct table *tb = &ix->old;
    uint64_t pos;

    if (klen > INDEX_KEY_MAX)
        return false;
    /* As find_any, without the const cast: a key is in old or in t, never both. */
    if (!is_resizing(ix) || !old_has_bucket(ix, h32 & tb->mask) ||
        !find(ix, tb, h32, key, klen, &pos)) {
        tb = &ix->t;
        if (!find(ix, tb, h32, key, klen, &pos))
            return false;
    }
    rec_load_loc(rec_at(ix, slot_ref(tb, tb->slots[pos])), out);
    return true;
}

int index_put(struct index *ix, uint64_t hash, const void *key, size_t klen,
              const struct index_loc *loc, struct index_loc *old, bool *had_old)
{
    uint32_t h32 = (uint32_t)hash;
    struct table *tb;
    uint64_t pos;
    uint32_t size, ref;
    unsigned char *p;
    unsigned n;
    const uint32_t *before;
    bool moved = false;
    int ret;

    if (klen > INDEX_KEY_MAX)
        return -E2BIG;
    /* Migrate first, so that the position find returns stays valid to the end. */
    begin_call(ix);
    if (find_any(ix, h32, key, klen, &tb, &pos)) {
        p = rec_at(ix, slot_ref(tb, tb->slots[pos]));
        if (old != NULL)
            rec_load_loc(p, old);
        if (had_old != NULL)
            *had_old = true;
        rec_store_loc(p, loc);
        return 0;
    }
    before = ix->t.slots;
    if (ix->count + 1 > max_load(ix->t.mask + 1)) {
        /* The drain outruns the inserts (see the top of the file), so a resize is never
         * still in progress here; if one were, finishing it keeps t from overfilling. */
        if (is_resizing(ix))
            (void)rehash_step(ix, SIZE_MAX);
        ret = resize_start(ix, (ix->t.mask + 1) * 2, refbits_for(ix, (ix->t.mask + 1) * 2));
        if (ret < 0)
            return ret;
        moved = true;
    }
    size = REC_HDR + varint_len((uint64_t)klen << 1) + (uint32_t)klen;
    ret = arena_alloc(ix, size, &ref);
    if (ret < 0 && ix->used_bytes > ix->live_bytes) {
        /* Out of address space or memory: the holes may be enough. */
        arena_compact(ix);
        moved = true;
        ret = arena_alloc(ix, size, &ref);
    }
    if (ret < 0)
        return ret;
    p = rec_at(ix, ref);
    wr32(p, h32);
    rec_store_loc(p, loc);
    n = varint_put(p + REC_HDR, (uint64_t)klen << 1);
    if (klen > 0)
        memcpy(p + REC_HDR + n, key, klen);
    /* Unless a new table was started (to grow, or by widen_refs) or the table was rebuilt,
     * the slot of t where find stopped is the place. Widening the refs in place re-encodes
     * slots but never moves them. */
    if (moved || ix->t.slots != before)
        table_place(&ix->t, h32, ref);
    else
        ix->t.slots[pos] = slot_make(&ix->t, h32, ref);
    ix->count++;
    ix->key_bytes += klen;
    ix->live_bytes += size;
    if (had_old != NULL)
        *had_old = false;
    return 0;
}

bool index_del(struct index *ix, uint64_t hash, const void *key, size_t klen, struct index_loc *old)
{
    struct table *tb;
    uint64_t pos;
    unsigned char *p;
    uint64_t slots, dead;

    if (klen > INDEX_KEY_MAX)
        return false;
    begin_call(ix);
    if (!find_any(ix, (uint32_t)hash, key, klen, &tb, &pos))
        return false;
    p = rec_at(ix, slot_ref(tb, tb->slots[pos]));
    if (old != NULL)
        rec_load_loc(p, old);
    ix->live_bytes -= rec_size(p);
    p[REC_HDR] |= 1;
    ix->count--;
    ix->key_bytes -= klen;
    table_erase(ix, tb, pos);
    if (tb == &ix->old && --ix->old_count == 0)
        resize_end(ix);

    /* Compact once the holes outweigh the live records and the tables: compaction copies
     * the live records and refills the table, so it then costs no more than the bytes the
     * deletions since the last one freed, amortised O(1) per deletion even when a big
     * preallocated table holds few keys. Holes stay below max(live, tables, one chunk). */
    dead = ix->used_bytes - ix->live_bytes;
    if (dead > ix->live_bytes && dead >= CHUNK_SIZE && dead >= table_bytes(ix))
        arena_compact(ix);
    slots = ix->t.mask + 1;
    if (!is_resizing(ix) && slots > ix->min_slots && ix->count < slots / 8) {
        /* Shrink to load <= 0.5 so that a few inserts do not grow it straight back, but to
         * no less than 1/8 of the size, which keeps the drain ahead of the inserts. A
         * failure to allocate the smaller table only leaves the bigger one in place. */
        uint64_t floor = slots / 8 > ix->min_slots ? slots / 8 : ix->min_slots;

        slots = slots_for(ix->count, floor, 5);
        (void)resize_start(ix, slots, refbits_for(ix, slots));
    }
    return true;
}

bool index_replace_if(struct index *ix, uint64_t hash, const void *key, size_t klen,
                      const struct index_loc *expect, const struct index_loc *newloc)
{
    struct table *tb;
    uint64_t pos;
    unsigned char *p;
    struct index_loc cur;

    if (klen > INDEX_KEY_MAX)
        return false;
    begin_call(ix);
    if (!find_any(ix, (uint32_t)hash, key, klen, &tb, &pos))
        return false;
    p = rec_at(ix, slot_ref(tb, tb->slots[pos]));
    rec_load_loc(p, &cur);
    if (cur.seg != expect->seg || cur.off != expect->off)
        return false;
    rec_store_loc(p, newloc);
    return true;
}

uint64_t index_count(const struct index *ix)
{
    return ix->count;
}

uint64_t index_key_bytes(const struct index *ix)
{
    return ix->key_bytes;
}

size_t index_memory(const struct index *ix)
{
    return sizeof(*ix) + (size_t)table_bytes(ix) + (size_t)ix->ids_cap * sizeof(*ix->chunks) +
           (size_t)ix->arena_bytes;
}

void index_clear(struct index *ix)
{
    uint32_t *t = NULL;

    /* Every key goes, so an ongoing resize has nothing left to move. */
    if (is_resizing(ix))
        resize_end(ix);
    arena_free(ix);
    ix->count = 0;
    ix->key_bytes = 0;
    set_refbits(&ix->t, REFBITS_MIN);
    if (ix->t.mask + 1 > ix->min_slots)
        t = calloc((size_t)ix->min_slots, sizeof(*t));
    if (t != NULL) {
        free(ix->t.slots);
        ix->t.slots = t;
        ix->t.mask = ix->min_slots - 1;
    } else {
        memset(ix->t.slots, 0, (size_t)(ix->t.mask + 1) * sizeof(*ix->t.slots));
    }
}

static uint64_t rev64(uint64_t v)
{
    v = (v >> 1 & UINT64_C(0x5555555555555555)) | (v & UINT64_C(0x5555555555555555)) << 1;
    v = (v >> 2 & UINT64_C(0x3333333333333333)) | (v & UINT64_C(0x3333333333333333)) << 2;
    v = (v >> 4 & UINT64_C(0x0f0f0f0f0f0f0f0f)) | (v & UINT64_C(0x0f0f0f0f0f0f0f0f)) << 4;
    v = (v >> 8 & UINT64_C(0x00ff00ff00ff00ff)) | (v & UINT64_C(0x00ff00ff00ff00ff)) << 8;
    v = (v >> 16 & UINT64_C(0x0000ffff0000ffff)) | (v & UINT64_C(0x0000ffff0000ffff)) << 16;
    return v >> 32 | v << 32;
}

/* visit_bucket - call fn for every key of tb whose bucket is b. With linear probing they all
 * sit between b and the next empty slot. Returns how many. */
static size_t visit_bucket(const struct index *ix, const struct table *tb, uint64_t b,
                           index_visit_fn fn, void *ctx)
{
    size_t n = 0;

    for (uint64_t i = b; tb->slots[i] != 0; i = (i + 1) & tb->mask) {
        const unsigned char *p = rec_at(ix, slot_ref(tb, tb->slots[i]));
        const unsigned char *key;
        struct index_loc loc;
        bool dead;
        uint32_t klen;

        if ((rec_hash(p) & tb->mask) != b)
            continue;
        klen = rec_key(p, &key, &dead);
        rec_load_loc(p, &loc);
        fn(ctx, key, klen, &loc);
        n++;
    }
    return n;
}

uint64_t index_scan(const struct index *ix, uint64_t cursor, size_t count, index_visit_fn fn,
                    void *ctx)
{
    const struct table *small = &ix->t;
    const struct table *large = NULL;
    size_t seen = 0;
    size_t empty_left = count < SIZE_MAX / 10 ? count * 10 + 1 : SIZE_MAX;

    if (is_resizing(ix)) {
        large = &ix->old;
        if (large->mask < small->mask) {
            large = &ix->t;
            small = &ix->old;
        }
    }
    /*
     * The cursor counts through bucket numbers with its bits reversed (Redis's dictScan):
     * buckets are visited in order of their reversed low bits. A bucket b of a table of 2^k
     * buckets splits into b and b + 2^k when the table doubles, and those are consecutive
     * in reversed order, so a cursor taken from one size is still a valid position after
     * growing or shrinking: everything visited before still lies before it. During a resize
     * the cursor steps through the smaller table's buckets, and each step also visits every
     * bucket of the larger table that agrees with it in the smaller table's bits: all the
     * places a key of that class can be, whichever table holds it at the time. So a step
     * covers the same hashes as a step over the smaller table alone, and the argument above
     * holds across resizes that start or end between calls. A key is in one table at a
     * time and nothing moves during a call, so no call visits a key twice.
     */
    do {
        uint64_t b = cursor & small->mask;
        size_t n = visit_bucket(ix, small, b, fn, ctx);

        for (uint64_t x = b; large != NULL && x <= large->mask; x += small->mask + 1)
            n += visit_bucket(ix, large, x, fn, ctx);
        seen += n;
        if (n == 0)
            empty_left--;
        cursor |= ~small->mask;
        cursor = rev64(rev64(cursor) + 1);
    } while (cursor != 0 && seen < count && empty_left > 0);
    return cursor;
}

/* ---- for tests ---- */

bool index_debug_resizing(const struct index *ix)
{
    return is_resizing(ix);
}

size_t index_debug_max_step(const struct index *ix)
{
    return ix->max_work;
}

uint64_t index_debug_resizes(const struct index *ix)
{
    return ix->resizes;
}

void index_debug_set_step(struct index *ix, size_t slots)
{
    assert(slots > 0);
    ix->step = slots;
}
