/* SPDX-License-Identifier: MIT */
/*
 * Offline re-partitioning of a data directory to another shard count (kvs-server
 * --repartition), run by the main thread at start-up before any shard exists.
 *
 * Keys live on shard fast-range(XXH3_64(key), N), so a new N moves most keys. The copy goes
 * to a staging directory first and the switch is made crash-safe by the meta file
 * (docs/server.md, "Re-partitioning"): until the meta file says "swap_to M" the old shards are
 * the truth and the staging directory is garbage; once it says so, the staged shards are
 * complete and any start finishes the switch. Must not: touch the old shards' contents.
 */
#include "repart.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "kvs/error.h"
#include "kvs/log.h"
#include "shard.h"

#define STAGE_NEW "repartition-new"
#define STAGE_OLD "repartition-old"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? -1 : 0;
}

/* Remove path and everything below it; a missing path is fine. */
static int rmtree(const char *path)
{
    struct stat st;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) < 0)
        return -errno;
    return 0;
}

static bool exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

int repart_cleanup(const char *dir, bool warn)
{
    char path[4096];
    int rc;

    snprintf(path, sizeof(path), "%s/%s", dir, STAGE_NEW);
    if (warn && exists(path))
        KVS_WARN("removing %s left by an interrupted re-partition", path);
    rc = rmtree(path);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/%s", dir, STAGE_OLD);
    return rmtree(path);
}

/* Keys of one scan step, copied out of the engine's views: [u32 length][bytes] ... */
struct keybatch {
    char *p;
    size_t len, cap;
    int err;
};

static void collect(void *ctx, const void *key, size_t klen)
{
    struct keybatch *kb = ctx;
    uint32_t l = (uint32_t)klen;

    if (kb->err != 0)
        return;
    if (kb->len + sizeof(l) + klen > kb->cap) {
        size_t ncap = (kb->cap + sizeof(l) + klen) * 2;
        char *np = realloc(kb->p, ncap);

        if (np == NULL) {
            kb->err = -ENOMEM;
            return;
        }
        kb->p = np;
        kb->cap = ncap;
    }
    memcpy(kb->p + kb->len, &l, sizeof(l));
    memcpy(kb->p + kb->len + sizeof(l), key, klen);
    kb->len += sizeof(l) + klen;
}

/* Copy every key of src into the new shard that owns it. */
static int copy_shard(struct kvs_engine *src, struct kvs_engine **dst, unsigned new_n)
{
    struct keybatch kb = {.p = NULL, .len = 0, .cap = 0, .err = 0};
    uint64_t cur = 0;
    int rc = 0;

    do {
        kb.len = 0;
        cur = kvs_engine_scan(src, cur, 1024, collect, &kb);
        if (kb.err != 0) {
            rc = kb.err;
            break;
        }
        for (size_t off = 0; off < kb.len && rc == 0;) {
            uint32_t klen;
            const char *k;
            const void *val;
            size_t vlen;

            memcpy(&klen, kb.p + off, sizeof(klen));
            k = kb.p + off + sizeof(klen);
            off += sizeof(klen) + klen;
            /* The value view lives until the next call on src; the set is on another
             * engine. A scan may visit a key twice: setting it again is harmless. */
            rc = kvs_engine_get(src, k, klen, &val, &vlen);
            if (rc == KVS_ENOTFOUND) {
                rc = 0;
                continue;
            }
            if (rc == 0)
                rc = kvs_engine_set(dst[shard_of(XXH3_64bits(k, klen), new_n)], k, klen, val, vlen);
        }
    } while (rc == 0 && cur != 0);
    free(kb.p);
    return rc;
}

int repart_copy(const char *dir, const struct kvs_server_config *cfg, unsigned old_n,
                unsigned new_n)
{
    struct kvs_engine **dst = NULL;
    struct kvs_engine_options opt;
    char path[4096], err[256];
    uint64_t old_keys = 0, new_keys = 0;
    int rc;

    rc = repart_cleanup(dir, true);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof(path), "%s/%s", dir, STAGE_NEW);
    if (mkdir(path, 0755) < 0)
        return -errno;
    dst = calloc(new_n, sizeof(struct kvs_engine *));
    if (dst == NULL)
        return -ENOMEM;
    kvs_engine_options_init(&opt);
    /* Nothing is acknowledged to anyone during the copy: sync once, at close. */
    opt.fsync = KVS_FSYNC_NEVER;
    opt.max_key = cfg->max_key;
    opt.max_value = cfg->max_value;
    for (unsigned j = 0; j < new_n; j++) {
        snprintf(path, sizeof(path), "%s/%s/shard-%03u", dir, STAGE_NEW, j);
        err[0] = '\0';
        rc = kvs_engine_open(path, &opt, &dst[j], err, sizeof(err));
        if (rc < 0) {
            KVS_ERROR("re-partition: cannot create %s: %s", path, err[0] ? err : kvs_strerror(rc));
            goto out;
        }
    }
    for (unsigned i = 0; i < old_n; i++) {
        struct kvs_engine *src = NULL;
        struct kvs_engine_options sopt;

        kvs_engine_options_init(&sopt);
        sopt.create = false;
        sopt.salvage = cfg->salvage;
        sopt.max_key = cfg->max_key;
        sopt.max_value = cfg->max_value;
        snprintf(path, sizeof(path), "%s/shard-%03u", dir, i);
        err[0] = '\0';
        rc = kvs_engine_open(path, &sopt, &src, err, sizeof(err));
        if (rc < 0) {
            KVS_ERROR("re-partition: cannot open %s: %s", path, err[0] ? err : kvs_strerror(rc));
            goto out;
        }
        old_keys += kvs_engine_count(src);
        rc = copy_shard(src, dst, new_n);
        kvs_engine_close(src);
        if (rc < 0) {
            KVS_ERROR("re-partition: copying %s failed: %s", path, kvs_strerror(rc));
            goto out;
        }
        KVS_INFO("re-partition: copied shard %u of %u", i + 1, old_n);
    }
    for (unsigned j = 0; j < new_n; j++)
        new_keys += kvs_engine_count(dst[j]);
    if (new_keys != old_keys) {
        KVS_ERROR("re-partition: %llu keys before, %llu after; keeping the old shards",
                  (unsigned long long)old_keys, (unsigned long long)new_keys);
        rc = KVS_ECORRUPT;
        goto out;
    }
    KVS_INFO("re-partition: %llu keys copied into %u shards", (unsigned long long)new_keys, new_n);
out:
    /* Closing writes and fdatasyncs each new shard: after this they are durable. */
    for (unsigned j = 0; j < new_n; j++) {
        int crc = kvs_engine_close(dst[j]);

        if (crc < 0 && rc == 0)
            rc = crc;
    }
    free(dst);
    if (rc < 0)
        (void)repart_cleanup(dir, false);
    return rc;
}

int repart_swap(const char *dir, unsigned old_n, unsigned new_n)
{
    char from[4096], to[4096];

    /* Idempotent, so that a start after a crash anywhere in here can simply run it again.
     * Step 1 moves the old shards aside; it is complete before step 2 moves any new shard
     * in, so a shard-NNN whose old copy is already aside must be a new one. */
    snprintf(to, sizeof(to), "%s/%s", dir, STAGE_OLD);
    if (mkdir(to, 0755) < 0 && errno != EEXIST)
        return -errno;
    for (unsigned i = 0; i < old_n; i++) {
        snprintf(from, sizeof(from), "%s/shard-%03u", dir, i);
        snprintf(to, sizeof(to), "%s/%s/shard-%03u", dir, STAGE_OLD, i);
        if (!exists(to) && exists(from) && rename(from, to) < 0)
            return -errno;
    }
    for (unsigned j = 0; j < new_n; j++) {
        snprintf(from, sizeof(from), "%s/%s/shard-%03u", dir, STAGE_NEW, j);
        snprintf(to, sizeof(to), "%s/shard-%03u", dir, j);
        if (exists(from) && rename(from, to) < 0)
            return -errno;
    }
    return 0;
}
