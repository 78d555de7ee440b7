/* SPDX-License-Identifier: MIT */
/*
 * Workload generation and --verify values for kvs-bench (the value format and why the check
 * is sound are documented in kvs/workload.h). Everything here is computation on caller-owned
 * state except the per-key version counters, which are the only data bench threads share.
 */
#include "kvs/workload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HEX_DIGITS 12 /* per header field: 48 bits */

/* 64 printable characters, so one 6-bit chunk of a random word picks one filler byte. */
static const char filler_alphabet[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int kvs_workload_new(const struct kvs_workload_config *cfg, struct kvs_workload **out,
                     const char **why)
{
    struct kvs_workload *w = NULL;
    uint64_t total;
    int ret;

    *why = NULL;
    if (cfg->keys == 0 || cfg->keys > KVS_WORKLOAD_MAX_KEYS) {
        *why = "--keys must be between 1 and 10^12";
        return -EINVAL;
    }
    if (cfg->set_ratio == 0 && cfg->get_ratio == 0) {
        *why = "--ratio needs a non-zero SET or GET share";
        return -EINVAL;
    }
    if (cfg->size_min > cfg->size_max || cfg->size_max > KVS_WORKLOAD_MAX_VALUE) {
        *why = "--data-size must be MIN-MAX with MIN <= MAX <= 512 MiB";
        return -EINVAL;
    }
    if (cfg->verify && cfg->size_min < KVS_WORKLOAD_VERIFY_HDR) {
        *why = "--verify needs --data-size of at least 24 bytes (the value header)";
        return -EINVAL;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return -ENOMEM;
    w->cfg = *cfg;
    if (cfg->pattern == KVS_WORKLOAD_ZIPF) {
        ret = kvs_zipf_init(&w->zipf, cfg->keys, cfg->zipf_s);
        if (ret < 0) {
            *why = "zipf exponent must be in (0, 10]";
            goto err;
        }
    }
    w->key_digits = 12;
    for (uint64_t k = cfg->keys - 1; k >= 1000000000000ULL; k /= 10)
        w->key_digits++;
    /* The op draw compares 32 random bits with a threshold: exact enough for any ratio. */
    total = (uint64_t)cfg->set_ratio + cfg->get_ratio;
    w->set_threshold = (((uint64_t)cfg->set_ratio) << 32) / total;
    if (cfg->verify) {
        w->versions = calloc(cfg->keys, sizeof(*w->versions));
        if (w->versions == NULL) {
            *why = "not enough memory for the --verify version table (8 bytes per key)";
            ret = -ENOMEM;
            goto err;
        }
    }
    w->filler = malloc(cfg->size_max > 0 ? cfg->size_max : 1);
    if (w->filler == NULL) {
        ret = -ENOMEM;
        goto err;
    }
    memset(w->filler, 'x', cfg->size_max);
    *out = w;
    return 0;
err:
    kvs_workload_free(w);
    return ret;
}

void kvs_workload_free(struct kvs_workload *w)
{
    if (w == NULL)
        return;
    free(w->versions);
    free(w->filler);
    free(w);
}

void kvs_workload_stream_init(const struct kvs_workload *w, struct kvs_workload_stream *s,
                              uint64_t seed, uint64_t index, uint64_t count)
{
    kvs_rng_derive(&s->rng, seed, index);
    /* Sequential streams interleave: stream i visits i, i + count, i + 2 count, ... so that
     * together they sweep the keyspace in order without two streams sharing a key. */
    s->seq_stride = count == 0 ? 1 : count;
    s->seq_next = index % w->cfg.keys;
}

enum kvs_workload_op kvs_workload_next(const struct kvs_workload *w, struct kvs_workload_stream *s,
                                       uint64_t *key)
{
    uint64_t r = kvs_rng_next(&s->rng);
    enum kvs_workload_op op = (r >> 32) < w->set_threshold ? KVS_WORKLOAD_SET : KVS_WORKLOAD_GET;

    switch (w->cfg.pattern) {
    case KVS_WORKLOAD_SEQUENTIAL:
        *key = s->seq_next;
        s->seq_next += s->seq_stride;
        if (s->seq_next >= w->cfg.keys)
            s->seq_next %= w->cfg.keys;
        break;
    case KVS_WORKLOAD_ZIPF:
        /* Rank 1 (the hottest) is key 0. */
        *key = kvs_zipf_next(&w->zipf, &s->rng) - 1;
        break;
    case KVS_WORKLOAD_UNIFORM:
    default:
        *key = kvs_rng_below(&s->rng, w->cfg.keys);
        break;
    }
    return op;
}

size_t kvs_workload_key(const struct kvs_workload *w, uint64_t id, char *buf)
{
    size_t n = 4 + w->key_digits;

    buf[0] = 'k';
    buf[1] = 'e';
    buf[2] = 'y';
    buf[3] = ':';
    for (size_t i = n; i > 4; i--) {
        buf[i - 1] = (char)('0' + id % 10);
        id /= 10;
    }
    return n;
}

uint64_t kvs_workload_issue_version(struct kvs_workload *w, uint64_t id)
{
    if (w->versions == NULL)
        return 0;
    /*
     * Sequentially consistent on purpose: the increment must be ordered before the SET leaves
     * this process (a syscall, which is a full barrier on Linux anyway), so that a reader that
     * saw the value on the wire also sees the counter that covers it.
     */
    return atomic_fetch_add(&w->versions[id], 1) + 1;
}

/* The seed of the filler and length of (id, version). */
static uint64_t value_seed(uint64_t id, uint64_t version)
{
    return kvs_rng_mix(id * 0x9e3779b97f4a7c15ULL ^ kvs_rng_mix(version));
}

uint64_t kvs_workload_value_len(const struct kvs_workload *w, struct kvs_workload_stream *s)
{
    uint64_t span = w->cfg.size_max - w->cfg.size_min + 1;

    return span == 1 ? w->cfg.size_min : w->cfg.size_min + kvs_rng_below(&s->rng, span);
}

uint64_t kvs_workload_verify_len(const struct kvs_workload *w, uint64_t id, uint64_t version)
{
    uint64_t span = w->cfg.size_max - w->cfg.size_min + 1;
    struct kvs_rng r;

    /* A stream of its own (not the filler's) so that length and content are independent. */
    kvs_rng_seed(&r, value_seed(id, version) ^ 0x5bd1e995ULL);
    return span == 1 ? w->cfg.size_min : w->cfg.size_min + kvs_rng_below(&r, span);
}

static void put_hex(char *p, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";

    for (int i = HEX_DIGITS - 1; i >= 0; i--) {
        p[i] = digits[v & 15];
        v >>= 4;
    }
}

/* Parses 12 hex digits; returns false on any other character. */
static bool get_hex(const char *p, uint64_t *out)
{
    uint64_t v = 0;

    for (int i = 0; i < HEX_DIGITS; i++) {
        char c = p[i];
        unsigned d;

        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

/* The filler's next 8 bytes: 6 random bits per byte mapped onto the printable alphabet. */
static void filler_word(struct kvs_rng *r, char out[8])
{
    uint64_t x = kvs_rng_next(r);

    for (int i = 0; i < 8; i++) {
        out[i] = filler_alphabet[x & 63];
        x >>= 6;
    }
}

void kvs_workload_value_fill(const struct kvs_workload *w, uint64_t id, uint64_t version, char *buf,
                             size_t len)
{
    struct kvs_rng r;
    size_t off = KVS_WORKLOAD_VERIFY_HDR;

    (void)w;
    put_hex(buf, id);
    put_hex(buf + HEX_DIGITS, version);
    kvs_rng_seed(&r, value_seed(id, version));
    while (off < len) {
        char word[8];
        size_t n = len - off < 8 ? len - off : 8;

        filler_word(&r, word);
        memcpy(buf + off, word, n);
        off += n;
    }
}

enum kvs_workload_verdict kvs_workload_value_check(const struct kvs_workload *w, uint64_t id,
                                                   const char *val, size_t len, uint64_t *version)
{
    struct kvs_rng r;
    uint64_t key;
    uint64_t ver;
    uint64_t issued;
    size_t off = KVS_WORKLOAD_VERIFY_HDR;

    *version = 0;
    if (val == NULL)
        return KVS_VERIFY_MISSING;
    if (len < KVS_WORKLOAD_VERIFY_HDR || !get_hex(val, &key) || !get_hex(val + HEX_DIGITS, &ver))
        return KVS_VERIFY_HEADER;
    *version = ver;
    if (key != id)
        return KVS_VERIFY_KEY;
    /* Read after the reply arrived: covers every version any connection had sent by then. */
    issued = w->versions != NULL ? atomic_load(&w->versions[id]) : 0;
    if (ver == 0 || ver > issued)
        return KVS_VERIFY_VERSION;
    if (len != kvs_workload_verify_len(w, id, ver))
        return KVS_VERIFY_LENGTH;
    kvs_rng_seed(&r, value_seed(id, ver));
    while (off < len) {
        char word[8];
        size_t n = len - off < 8 ? len - off : 8;

        filler_word(&r, word);
        if (memcmp(val + off, word, n) != 0)
            return KVS_VERIFY_CONTENT;
        off += n;
    }
    return KVS_VERIFY_OK;
}

const char *kvs_workload_verdict_name(enum kvs_workload_verdict v)
{
    switch (v) {
    case KVS_VERIFY_OK:
        return "ok";
    case KVS_VERIFY_HEADER:
        return "value not written by this run (bad header)";
    case KVS_VERIFY_KEY:
        return "value of another key";
    case KVS_VERIFY_VERSION:
        return "version never written";
    case KVS_VERIFY_LENGTH:
        return "wrong length";
    case KVS_VERIFY_CONTENT:
        return "corrupted bytes";
    case KVS_VERIFY_MISSING:
        return "key missing (nil) after it was written";
    }
    return "unknown";
}
