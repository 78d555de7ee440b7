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
 *          allows (26 bits for 1M 16-byte keys, leaving a 6-bit tag); when the arena needs
 *          more address bits, one tag bit becomes an address bit in a single pass over the
 *          table, and at a 4 GiB arena the tag is gone but lookups still work (they compare
 *          the hash stored in the record instead).
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
 *          the table, and one chunk: see index_del) the arena is compacted in place
 *          (records slide down into the chunks already held, so compaction never allocates
 *          and cannot fail) and the table is refilled. Holes thus stay under
 *          max(live records, table, 256 KiB).
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
 * Cost per key, beyond the key bytes: 23 bytes of record (22 + 1 for keys under 64 bytes) plus
 * 4 / load bytes of table, where load is between 0.4 and 0.8 (grow at 0.8 by doubling), plus
 * the unused tail of the last chunk. For 1M keys of 16 bytes the table has 2^21 slots (load
 * 0.48, 8.4 bytes a key), so the total is about 31.5 bytes a key; the "index" test suite
 * measures and asserts it (<= 32). Across a growth cycle the table costs 5 to 10 bytes a key,
 * so the overhead is 28 to 33 bytes a key for short keys.
 *
 * Limits: keys up to INDEX_KEY_MAX bytes, an arena of at most 4 GiB (about 100M keys of 16
 * bytes) and a table of at most 2^31 slots; past them index_put returns -ENOMEM.
 *
 * Deletion is backward-shift (no tombstones), so probe chains depend only on the current
 * load. The table shrinks (to load <= 0.5) when it falls under 1/8 full, so memory follows
 * the key count.
 *
 * Resizing refills the new table from a sequential walk of the arena (the stored hash means
 * no key is hashed again), all at once: about 40 ms per million keys on the development
 * machine. There is no incremental rehash, so callers that know the key count (recovery from
 * hint files) should pass it to index_new.
 */
#include "index.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

struct chunk {
    unsigned char *mem; /* NULL for the extra numbers a big block takes */
    uint32_t cap;       /* bytes allocated */
    uint32_t used;      /* bytes of records, live or dead, from the start */
};

struct index {
    uint32_t *slots;
    uint64_t mask;      /* slots - 1; the table size is a power of two */
    uint64_t min_slots; /* size chosen by index_new; shrinking stops there */
    uint64_t count;
    uint64_t key_bytes;
    uint64_t live_bytes; /* bytes of live records */
    uint64_t used_bytes; /* bytes of records, live or dead: used - live are holes */
    uint64_t arena_bytes;
    unsigned refbits;
    uint32_t refmask;
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

static void set_refbits(struct index *ix, unsigned bits)
{
    ix->refbits = bits;
    ix->refmask = (uint32_t)(((uint64_t)1 << bits) - 1);
}

static uint32_t slot_make(const struct index *ix, uint32_t h32, uint32_t ref)
{
    return (h32 & ~ix->refmask) | ref;
}

static bool slot_tag_matches(const struct index *ix, uint32_t slot, uint32_t h32)
{
    return ((slot ^ h32) & ~ix->refmask) == 0;
}

static uint32_t slot_ref(const struct index *ix, uint32_t slot)
{
    return slot & ix->refmask;
}

/* find - true and the slot position of key in *pos; or false and in *pos the empty slot that
 * ended the search, which is where linear probing inserts the key. */
static bool find(const struct index *ix, uint32_t h32, const void *key, size_t klen, uint64_t *pos)
{
    uint64_t i = h32 & ix->mask;

    /* The table is never full, so the walk ends at an empty slot. */
    for (uint32_t s; (s = ix->slots[i]) != 0; i = (i + 1) & ix->mask) {
        const unsigned char *p, *k;
        bool dead;

        if (!slot_tag_matches(ix, s, h32))
            continue;
        p = rec_at(ix, slot_ref(ix, s));
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

static void table_place(struct index *ix, uint32_t h32, uint32_t ref)
{
    uint64_t i = h32 & ix->mask;

    assert(ref != 0 && (ref & ~ix->refmask) == 0);
    while (ix->slots[i] != 0)
        i = (i + 1) & ix->mask;
    ix->slots[i] = slot_make(ix, h32, ref);
}

/* table_erase - empty slot pos, then pull later members of its cluster back so that every
 * key stays reachable from its bucket without a tombstone. */
static void table_erase(struct index *ix, uint64_t pos)
{
    uint64_t hole = pos;
    uint64_t j = pos;

    for (;;) {
        uint32_t s;
        uint64_t home;

        j = (j + 1) & ix->mask;
        s = ix->slots[j];
        if (s == 0)
            break;
        home = rec_hash(rec_at(ix, slot_ref(ix, s))) & ix->mask;
        /* The key at j may fill the hole only if its bucket is not in (hole, j]. */
        if (((j - home) & ix->mask) >= ((j - hole) & ix->mask)) {
            ix->slots[hole] = s;
            hole = j;
        }
    }
    ix->slots[hole] = 0;
}

/* table_fill - empty the table and insert every live record of the arena, in arena order:
 * the arena is read sequentially and no key is hashed again. */
static void table_fill(struct index *ix)
{
    memset(ix->slots, 0, (size_t)(ix->mask + 1) * sizeof(*ix->slots));
    for (uint32_t id = 1; id < ix->nids; id++) {
        const struct chunk *c = &ix->chunks[id];

        for (uint32_t off = 0; off < c->used; off += rec_size(c->mem + off)) {
            if (!rec_is_dead(c->mem + off))
                table_place(ix, rec_hash(c->mem + off), id << CHUNK_SHIFT | off);
        }
    }
}

static int table_resize(struct index *ix, uint64_t slots)
{
    uint32_t *t;

    if (slots > MAX_SLOTS)
        return -ENOMEM;
    t = calloc((size_t)slots, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    free(ix->slots);
    ix->slots = t;
    ix->mask = slots - 1;
    table_fill(ix);
    return 0;
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

/* widen_refs - make room for chunk numbers below nids by turning tag bits into address bits.
 * A slot holds the hash's bits above refbits, and a ref is below 2^refbits, so clearing bit
 * refbits of every slot re-encodes it for refbits + 1. */
static void widen_refs(struct index *ix, uint32_t nids)
{
    while (((uint64_t)nids << CHUNK_SHIFT) > ((uint64_t)1 << ix->refbits)) {
        uint32_t bit = (uint32_t)1 << ix->refbits;

        for (uint64_t i = 0; i <= ix->mask; i++)
            ix->slots[i] &= ~bit;
        set_refbits(ix, ix->refbits + 1);
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
 * arena_compact - squeeze the holes out of the arena, then rebuild the table (same size).
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
    set_refbits(ix, bits);
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
    ix->slots = calloc((size_t)ix->min_slots, sizeof(*ix->slots));
    if (ix->slots == NULL) {
        free(ix);
        return -ENOMEM;
    }
    ix->mask = ix->min_slots - 1;
    ix->nids = 1;
    set_refbits(ix, REFBITS_MIN);
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
    free(ix->slots);
    free(ix);
}

bool index_get(const struct index *ix, uint64_t hash, const void *key, size_t klen,
               struct index_loc *out)
{
    uint64_t pos;

    if (klen > INDEX_KEY_MAX || !find(ix, (uint32_t)hash, key, klen, &pos))
        return false;
    rec_load_loc(rec_at(ix, slot_ref(ix, ix->slots[pos])), out);
    return true;
}

int index_put(struct index *ix, uint64_t hash, const void *key, size_t klen,
              const struct index_loc *loc, struct index_loc *old, bool *had_old)
{
    uint32_t h32 = (uint32_t)hash;
    uint64_t pos;
    uint32_t size, ref;
    unsigned char *p;
    unsigned n;
    bool moved = false;
    int ret;

    if (klen > INDEX_KEY_MAX)
        return -E2BIG;
    if (find(ix, h32, key, klen, &pos)) {
        p = rec_at(ix, slot_ref(ix, ix->slots[pos]));
        if (old != NULL)
            rec_load_loc(p, old);
        if (had_old != NULL)
            *had_old = true;
        rec_store_loc(p, loc);
        return 0;
    }
    if (ix->count + 1 > max_load(ix->mask + 1)) {
        ret = table_resize(ix, (ix->mask + 1) * 2);
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
    /* Unless the table was rebuilt, the slot where find stopped is the place. Widening the
     * refs re-encodes slots but never moves them. */
    if (moved)
        table_place(ix, h32, ref);
    else
        ix->slots[pos] = slot_make(ix, h32, ref);
    ix->count++;
    ix->key_bytes += klen;
    ix->live_bytes += size;
    if (had_old != NULL)
        *had_old = false;
    return 0;
}

bool index_del(struct index *ix, uint64_t hash, const void *key, size_t klen, struct index_loc *old)
{
    uint64_t pos;
    unsigned char *p;
    uint64_t slots, dead;

    if (klen > INDEX_KEY_MAX || !find(ix, (uint32_t)hash, key, klen, &pos))
        return false;
    p = rec_at(ix, slot_ref(ix, ix->slots[pos]));
    if (old != NULL)
        rec_load_loc(p, old);
    ix->live_bytes -= rec_size(p);
    p[REC_HDR] |= 1;
    ix->count--;
    ix->key_bytes -= klen;
    table_erase(ix, pos);

    /* Compact once the holes outweigh the live records and the table: compaction copies
     * the live records and refills the table, so it then costs no more than the bytes the
     * deletions since the last one freed, amortised O(1) per deletion even when a big
     * preallocated table holds few keys. Holes stay below max(live, table, one chunk). */
    dead = ix->used_bytes - ix->live_bytes;
    if (dead > ix->live_bytes && dead >= CHUNK_SIZE && dead >= (ix->mask + 1) * sizeof(*ix->slots))
        arena_compact(ix);
    slots = ix->mask + 1;
    if (slots > ix->min_slots && ix->count < slots / 8) {
        /* Shrink to load <= 0.5 so that a few inserts do not grow it straight back. A
         * failure to allocate the smaller table only leaves the bigger one in place. */
        (void)table_resize(ix, slots_for(ix->count, ix->min_slots, 5));
    }
    return true;
}

bool index_replace_if(struct index *ix, uint64_t hash, const void *key, size_t klen,
                      const struct index_loc *expect, const struct index_loc *newloc)
{
    uint64_t pos;
    unsigned char *p;
    struct index_loc cur;

    if (klen > INDEX_KEY_MAX || !find(ix, (uint32_t)hash, key, klen, &pos))
        return false;
    p = rec_at(ix, slot_ref(ix, ix->slots[pos]));
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
    return sizeof(*ix) + (size_t)(ix->mask + 1) * sizeof(*ix->slots) +
           (size_t)ix->ids_cap * sizeof(*ix->chunks) + (size_t)ix->arena_bytes;
}

void index_clear(struct index *ix)
{
    uint32_t *t = NULL;

    arena_free(ix);
    ix->count = 0;
    ix->key_bytes = 0;
    set_refbits(ix, REFBITS_MIN);
    if (ix->mask + 1 > ix->min_slots)
        t = calloc((size_t)ix->min_slots, sizeof(*t));
    if (t != NULL) {
        free(ix->slots);
        ix->slots = t;
        ix->mask = ix->min_slots - 1;
    } else {
        memset(ix->slots, 0, (size_t)(ix->mask + 1) * sizeof(*ix->slots));
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

/* visit_bucket - call fn for every key whose bucket is b. With linear probing they all sit
 * between b and the next empty slot. Returns how many. */
static size_t visit_bucket(const struct index *ix, uint64_t b, index_visit_fn fn, void *ctx)
{
    size_t n = 0;

    for (uint64_t i = b; ix->slots[i] != 0; i = (i + 1) & ix->mask) {
        const unsigned char *p = rec_at(ix, slot_ref(ix, ix->slots[i]));
        const unsigned char *key;
        struct index_loc loc;
        bool dead;
        uint32_t klen;

        if ((rec_hash(p) & ix->mask) != b)
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
    uint64_t mask = ix->mask;
    size_t seen = 0;
    size_t empty_left = count < SIZE_MAX / 10 ? count * 10 + 1 : SIZE_MAX;

    /*
     * The cursor counts through bucket numbers with its bits reversed (Redis's dictScan):
     * buckets are visited in order of their reversed low bits. A bucket b of a table of 2^k
     * buckets splits into b and b + 2^k when the table doubles, and those are consecutive
     * in reversed order, so a cursor taken from one size is still a valid position after
     * growing or shrinking: everything visited before still lies before it.
     */
    do {
        size_t n = visit_bucket(ix, cursor & mask, fn, ctx);

        seen += n;
        if (n == 0)
            empty_left--;
        cursor |= ~mask;
        cursor = rev64(rev64(cursor) + 1);
    } while (cursor != 0 && seen < count && empty_left > 0);
    return cursor;
}
