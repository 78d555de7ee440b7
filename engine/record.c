/* SPDX-License-Identifier: MIT */
/*
 * Record, hint-file, format-file and merge-marker encodings; docs/format.md is the
 * specification. Pure byte manipulation: no I/O here.
 */
#include "record.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "kvs/error.h"

static const uint8_t hint_magic[8] = {'K', 'V', 'S', 'H', 'I', 'N', 'T', '\n'};
static const uint8_t format_magic[8] = {'K', 'V', 'S', 'F', 'O', 'R', 'M', '\n'};
static const uint8_t merge_magic[8] = {'K', 'V', 'S', 'M', 'E', 'R', 'G', '\n'};

void record_encode(void *dst, uint64_t seq, uint8_t flags, const void *key, uint32_t klen,
                   const void *val, uint32_t vlen)
{
    uint8_t *p = dst;
    size_t body = (size_t)record_size(klen, vlen) - 8;

    put_u64(p + 8, seq);
    put_u32(p + 16, klen);
    put_u32(p + 20, vlen);
    p[24] = flags;
    p[25] = p[26] = p[27] = 0;
    if (klen > 0)
        memcpy(p + RECORD_HDR, key, klen);
    if (vlen > 0)
        memcpy(p + RECORD_HDR + klen, val, vlen);
    /* The checksum covers every byte after itself, so a torn or shifted record fails it. */
    put_u64(p, XXH3_64bits(p + 8, body));
}

bool record_decode_hdr(const void *src, struct record_hdr *h)
{
    const uint8_t *p = src;

    h->checksum = get_u64(p);
    h->seq = get_u64(p + 8);
    h->klen = get_u32(p + 16);
    h->vlen = get_u32(p + 20);
    h->flags = p[24];
    if ((h->flags & ~RECORD_F_ALL) != 0 || p[25] != 0 || p[26] != 0 || p[27] != 0)
        return false;
    if (h->seq == 0 || h->seq > RECORD_SEQ_MASK)
        return false;
    if (h->klen > RECORD_KEY_LIMIT || h->vlen > RECORD_VAL_LIMIT)
        return false;
    if ((h->flags & RECORD_F_TOMB) != 0 && h->vlen != 0)
        return false;
    if ((h->flags & RECORD_F_CLEAR) != 0 &&
        (h->klen != 0 || h->vlen != 0 || h->flags != RECORD_F_CLEAR))
        return false;
    return true;
}

bool record_verify(const void *rec, const struct record_hdr *h)
{
    const uint8_t *p = rec;

    return XXH3_64bits(p + 8, (size_t)record_size(h->klen, h->vlen) - 8) == h->checksum;
}

/* Make room for more bytes in a hint buffer (doubling). */
static int hint_reserve(struct hint_buf *hb, size_t more)
{
    size_t cap = hb->cap;
    uint8_t *n;

    if (hb->len + more <= cap)
        return 0;
    while (cap < hb->len + more)
        cap = cap < 4096 ? 4096 : cap * 2;
    n = realloc(hb->data, cap);
    if (n == NULL)
        return -ENOMEM;
    hb->data = n;
    hb->cap = cap;
    return 0;
}

int hint_init(struct hint_buf *hb)
{
    memset(hb, 0, sizeof(*hb));
    if (hint_reserve(hb, HINT_HDR) != 0)
        return -ENOMEM;
    memset(hb->data, 0, HINT_HDR);
    hb->len = HINT_HDR;
    return 0;
}

void hint_fini(struct hint_buf *hb)
{
    free(hb->data);
    memset(hb, 0, sizeof(*hb));
}

int hint_add(struct hint_buf *hb, uint64_t seq, uint32_t off, uint32_t klen, uint32_t vlen,
             uint8_t flags, const void *key)
{
    uint8_t *p;

    if (hint_reserve(hb, HINT_ENTRY + (size_t)klen) != 0)
        return -ENOMEM;
    p = hb->data + hb->len;
    put_u64(p, seq);
    put_u32(p + 8, off);
    put_u32(p + 12, klen);
    put_u32(p + 16, vlen);
    p[20] = flags;
    if (klen > 0)
        memcpy(p + HINT_ENTRY, key, klen);
    hb->len += HINT_ENTRY + (size_t)klen;
    hb->count++;
    return 0;
}

int hint_finish(struct hint_buf *hb, uint32_t seg, uint64_t seg_size)
{
    uint8_t *p;

    if (hint_reserve(hb, HINT_FOOT) != 0)
        return -ENOMEM;
    p = hb->data;
    memcpy(p, hint_magic, 8);
    put_u32(p + 8, RECORD_FORMAT_VERSION);
    put_u32(p + 12, seg);
    put_u64(p + 16, seg_size);
    put_u64(p + 24, hb->count);
    put_u64(p + hb->len, XXH3_64bits(p, hb->len));
    hb->len += HINT_FOOT;
    return 0;
}

int64_t hint_check(const void *data, size_t len, uint32_t seg, uint64_t seg_size)
{
    const uint8_t *p = data;
    uint64_t count;
    size_t pos = HINT_HDR;

    if (len < HINT_HDR + HINT_FOOT || memcmp(p, hint_magic, 8) != 0)
        return -1;
    if (get_u32(p + 8) != RECORD_FORMAT_VERSION || get_u32(p + 12) != seg ||
        get_u64(p + 16) != seg_size)
        return -1;
    if (XXH3_64bits(p, len - HINT_FOOT) != get_u64(p + len - HINT_FOOT))
        return -1;
    count = get_u64(p + 24);
    /* Walk the entries once so that the loader can trust every length and offset. */
    for (uint64_t i = 0; i < count; i++) {
        uint32_t off, klen, vlen;

        if (len - HINT_FOOT - pos < HINT_ENTRY)
            return -1;
        off = get_u32(p + pos + 8);
        klen = get_u32(p + pos + 12);
        vlen = get_u32(p + pos + 16);
        if (klen > RECORD_KEY_LIMIT || len - HINT_FOOT - pos - HINT_ENTRY < klen)
            return -1;
        if ((uint64_t)off + record_size(klen, vlen) > seg_size)
            return -1;
        if ((p[pos + 20] & ~RECORD_F_ALL) != 0)
            return -1;
        pos += HINT_ENTRY + klen;
    }
    if (pos != len - HINT_FOOT || count > INT64_MAX)
        return -1;
    return (int64_t)count;
}

void hint_next(const void *data, size_t *pos, struct hint_entry *e)
{
    const uint8_t *p = (const uint8_t *)data + *pos;

    e->seq = get_u64(p);
    e->off = get_u32(p + 8);
    e->klen = get_u32(p + 12);
    e->vlen = get_u32(p + 16);
    e->flags = p[20];
    e->key = p + HINT_ENTRY;
    *pos += HINT_ENTRY + e->klen;
}

void format_encode(uint8_t out[FORMAT_FILE_SIZE])
{
    memcpy(out, format_magic, 8);
    put_u32(out + 8, RECORD_FORMAT_VERSION);
    put_u32(out + 12, (uint32_t)XXH3_64bits(out, 12));
}

int format_check(const void *buf, size_t len, uint32_t *version)
{
    const uint8_t *p = buf;

    *version = 0;
    if (len != FORMAT_FILE_SIZE || memcmp(p, format_magic, 8) != 0 ||
        get_u32(p + 12) != (uint32_t)XXH3_64bits(p, 12))
        return KVS_EFORMAT;
    *version = get_u32(p + 8);
    return *version == RECORD_FORMAT_VERSION ? 0 : KVS_EFORMAT;
}

uint8_t *merge_encode(const uint32_t *ids, uint32_t n, size_t *len)
{
    size_t sz = 12 + (size_t)n * 4 + 8;
    uint8_t *p = malloc(sz);

    if (p == NULL)
        return NULL;
    memcpy(p, merge_magic, 8);
    put_u32(p + 8, n);
    for (uint32_t i = 0; i < n; i++)
        put_u32(p + 12 + (size_t)i * 4, ids[i]);
    put_u64(p + sz - 8, XXH3_64bits(p, sz - 8));
    *len = sz;
    return p;
}

int64_t merge_check(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint32_t n;

    if (len < 20 || memcmp(p, merge_magic, 8) != 0)
        return -1;
    n = get_u32(p + 8);
    if (len != 12 + (size_t)n * 4 + 8 || XXH3_64bits(p, len - 8) != get_u64(p + len - 8))
        return -1;
    return n;
}

uint32_t merge_id(const void *buf, uint32_t i)
{
    return get_u32((const uint8_t *)buf + 12 + (size_t)i * 4);
}
