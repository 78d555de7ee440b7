/* SPDX-License-Identifier: MIT */
/*
 * The on-disk record, hint-file and format-file encodings (docs/format.md is the spec; this file
 * and record.c implement it). Pure functions over bytes: no I/O, no allocation except in the
 * hint builder. Everything is little-endian.
 */
#ifndef KVS_ENGINE_RECORD_H
#define KVS_ENGINE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs/engine.h"

/* Version of the directory layout, record and hint encodings (docs/format.md). */
#define RECORD_FORMAT_VERSION 1

/* Record: checksum u64 | seq u64 | klen u32 | vlen u32 | flags u8 | reserved u8[3] | key | value */
#define RECORD_HDR       28
#define RECORD_F_TOMB    0x01u /* tombstone: the key is removed; vlen is 0 */
#define RECORD_F_CLEAR   0x02u /* every record with a smaller seq is removed; klen = vlen = 0 */
#define RECORD_F_ALL     (RECORD_F_TOMB | RECORD_F_CLEAR)
#define RECORD_SEQ_MASK  ((UINT64_C(1) << 48) - 1) /* seqs are < 2^48 (the index keeps 48 bits) */
#define RECORD_KEY_LIMIT KVS_ENGINE_KEY_LIMIT      /* hard cap on max_key */
#define RECORD_VAL_LIMIT KVS_ENGINE_VALUE_LIMIT    /* hard cap on max_value */

struct record_hdr {
    uint64_t checksum;
    uint64_t seq;
    uint32_t klen;
    uint32_t vlen;
    uint8_t flags;
};

/* record_size - bytes of a record with these lengths. */
static inline uint64_t record_size(uint64_t klen, uint64_t vlen)
{
    return RECORD_HDR + klen + vlen;
}

/* record_encode - write a complete record (header, key, value) into dst, which must hold
 * record_size(klen, vlen) bytes, checksum included. */
void record_encode(void *dst, uint64_t seq, uint8_t flags, const void *key, uint32_t klen,
                   const void *val, uint32_t vlen);

/*
 * record_decode_hdr - parse the fixed header at src (RECORD_HDR bytes) into *h and check that it
 * is plausible: known flags, zero reserved bytes, seq in 1..2^48-1, lengths under the hard caps,
 * tombstones without value. Returns true when plausible (the checksum is not checked here).
 */
bool record_decode_hdr(const void *src, struct record_hdr *h);

/* record_verify - true when the checksum of the complete record at rec (record_size bytes,
 * header already decoded into h) matches. */
bool record_verify(const void *rec, const struct record_hdr *h);

/* ---- hint files ---- */

/* Hint file: header (32 bytes) | entries | footer (XXH3-64 of everything before, 8 bytes).
 * Entry: seq u64 | off u32 | klen u32 | vlen u32 | flags u8 | key */
#define HINT_HDR   32
#define HINT_ENTRY 21
#define HINT_FOOT  8

struct hint_buf {
    uint8_t *data;
    size_t len, cap;
    uint64_t count;
};

/* hint_init - start an empty hint (header space reserved). Returns 0 or -ENOMEM. */
int hint_init(struct hint_buf *hb);
void hint_fini(struct hint_buf *hb);
/* hint_add - append one entry. Returns 0 or -ENOMEM. */
int hint_add(struct hint_buf *hb, uint64_t seq, uint32_t off, uint32_t klen, uint32_t vlen,
             uint8_t flags, const void *key);
/* hint_finish - write the header for segment seg of seg_size bytes and append the footer.
 * Returns 0 or -ENOMEM; afterwards data/len are the file's bytes. */
int hint_finish(struct hint_buf *hb, uint32_t seg, uint64_t seg_size);

struct hint_entry {
    uint64_t seq;
    uint32_t off, klen, vlen;
    uint8_t flags;
    const uint8_t *key;
};

/*
 * hint_check - validate a whole hint file image: magic, version, segment id, recorded segment
 * size equal to seg_size, footer checksum, and every entry inside the segment. Returns the
 * entry count (>= 0) or -1 when the hint must not be used.
 */
int64_t hint_check(const void *data, size_t len, uint32_t seg, uint64_t seg_size);
/* hint_next - decode the entry at *pos (after a successful hint_check), advance *pos. */
void hint_next(const void *data, size_t *pos, struct hint_entry *e);

/* ---- the format file (KVS-FORMAT) and the merge marker (MERGE) ---- */

#define FORMAT_FILE_SIZE 16
/* format_encode - the 16 bytes of KVS-FORMAT for RECORD_FORMAT_VERSION. */
void format_encode(uint8_t out[FORMAT_FILE_SIZE]);
/* format_check - 0 when buf holds a valid KVS-FORMAT of our version; else KVS_EFORMAT, with the
 * version found in *version (0 when the file is not a kvs format file at all). */
int format_check(const void *buf, size_t len, uint32_t *version);

/* Merge marker: magic u64 | count u32 | ids u32[count] | XXH3-64 of everything before. */
/* merge_encode - allocate and fill the marker for ids[0..n); returns NULL on -ENOMEM. */
uint8_t *merge_encode(const uint32_t *ids, uint32_t n, size_t *len);
/* merge_check - the number of ids (>= 0) in a valid marker image, or -1. */
int64_t merge_check(const void *buf, size_t len);
/* merge_id - id number i of a checked marker. */
uint32_t merge_id(const void *buf, uint32_t i);

/* Little-endian helpers. */
static inline void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#endif
