/* SPDX-License-Identifier: MIT */
/* Test helpers: temporary directories, deterministic pseudo-random data, opening stores. */
#include "tutil.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvs/engine.h"
#include "kvs/error.h"
#include "kvs/ring.h"

char *tutil_mkdtemp(const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    char *path = NULL;

    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    if (asprintf(&path, "%s/kvs-test-%s-XXXXXX", tmp, tag) < 0)
        abort();
    if (mkdtemp(path) == NULL) {
        perror("mkdtemp");
        abort();
    }
    return path;
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

void tutil_rmtree(char *path)
{
    if (path == NULL)
        return;
    (void)nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(path);
}

uint64_t tutil_rand(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void tutil_fill(uint64_t *state, void *buf, size_t len)
{
    unsigned char *p = buf;

    while (len > 0) {
        uint64_t r = tutil_rand(state);
        size_t n = len < sizeof(r) ? len : sizeof(r);

        memcpy(p, &r, n);
        p += n;
        len -= n;
    }
}

long long tutil_dir_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    long long total = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        char *p = NULL;

        if (de->d_name[0] == '.')
            continue;
        if (asprintf(&p, "%s/%s", dir, de->d_name) < 0)
            break;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            total += st.st_size;
        free(p);
    }
    closedir(d);
    return total;
}

struct kvs_engine *tutil_open(const char *dir, const struct kvs_engine_options *opt)
{
    struct kvs_engine *e = NULL;
    char err[256];
    int rc = kvs_engine_open(dir, opt, &e, err, sizeof(err));

    if (rc != 0)
        fprintf(stderr, "open %s: %s (%s)\n", dir, kvs_strerror(rc), err);
    CU_ASSERT_FATAL(rc == 0);
    return e;
}

void tutil_need_ring(CU_pSuite s, const char *name)
{
    struct kvs_ring *r = NULL;
    int rc = kvs_ring_new(NULL, &r);

    if (rc < 0) {
        printf("SKIP: %s suite: io_uring unavailable: %s\n", name, kvs_strerror(rc));
        CU_set_suite_active(s, CU_FALSE);
    }
    kvs_ring_free(r);
}
