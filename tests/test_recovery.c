/* SPDX-License-Identifier: MIT */
/*
 * Suite "recovery": opening a store after crashes and damage. A torn tail at every byte
 * offset of the last record, a checksum failure in the newest and in an older segment (with
 * and without salvage), hint files used and a corrupt one ignored, format-file checks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "kvs/engine.h"
#include "kvs/error.h"
#include "kvs/log.h"
#include "kvs/ring.h"
#include "tutil.h"

static char *path_of(const char *dir, const char *name)
{
    char *p = NULL;

    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

static uint8_t *read_file(const char *dir, const char *name, size_t *len)
{
    char *p = path_of(dir, name);
    struct stat st;
    uint8_t *buf = NULL;
    int fd = open(p, O_RDONLY);

    free(p);
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf != NULL && read(fd, buf, (size_t)st.st_size) != st.st_size) {
        free(buf);
        buf = NULL;
    }
    *len = (size_t)st.st_size;
    close(fd);
    return buf;
}

static void write_file(const char *dir, const char *name, const void *buf, size_t len)
{
    char *p = path_of(dir, name);
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);

    free(p);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, buf, len) == (ssize_t)len);
    close(fd);
}

static void flip_byte(const char *dir, const char *name, size_t off)
{
    size_t len = 0;
    uint8_t *buf = read_file(dir, name, &len);

    CU_ASSERT_FATAL(buf != NULL && off < len);
    buf[off] ^= 0x40;
    write_file(dir, name, buf, len);
    free(buf);
}

static long long file_size(const char *dir, const char *name)
{
    char *p = path_of(dir, name);
    struct stat st;
    int rc = stat(p, &st);

    free(p);
    return rc == 0 ? (long long)st.st_size : -1;
}

static void remove_file(const char *dir, const char *name)
{
    char *p = path_of(dir, name);

    (void)unlink(p);
    free(p);
}

static bool has_value(struct kvs_engine *e, const char *key, const char *val)
{
    const void *v;
    size_t n;

    return kvs_engine_get(e, key, strlen(key), &v, &n) == 0 && n == strlen(val) &&
           memcmp(v, val, n) == 0;
}

static void value_for(int i, char *buf, size_t len)
{
    snprintf(buf, len, "value-%03d-%040d", i, 0); /* exactly 50 bytes */
}

static void test_recovery_torn_tail_every_offset(void)
{
    char *tmpl = tutil_mkdtemp("torn-tmpl");
    struct kvs_engine *e = tutil_open(tmpl, NULL);
    struct kvs_engine_stats st;
    uint8_t *seg, *fmt;
    size_t seglen = 0, fmtlen = 0;
    uint64_t before;
    char val[64];

    kvs_log_set_level(KVS_LOG_ERROR); /* one warning per cut is expected */
    for (int i = 0; i < 5; i++) {
        char key[16];

        snprintf(key, sizeof(key), "key%d", i);
        value_for(i, val, sizeof(val));
        CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), val, strlen(val)), 0);
    }
    kvs_engine_stats(e, &st);
    before = st.disk_bytes;
    CU_ASSERT_EQUAL(kvs_engine_set(e, "last", 4, "the-last-value", 14), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    seg = read_file(tmpl, "000001.seg", &seglen);
    fmt = read_file(tmpl, "KVS-FORMAT", &fmtlen);
    CU_ASSERT_FATAL(seg != NULL && fmt != NULL);
    CU_ASSERT_EQUAL_FATAL(seglen, before + 28 + 4 + 14);

    /* Every cut inside the last record must recover exactly the first five records. */
    for (size_t cut = before; cut < seglen; cut++) {
        char *dir = tutil_mkdtemp("torn");

        write_file(dir, "KVS-FORMAT", fmt, fmtlen);
        write_file(dir, "000001.seg", seg, cut);
        e = tutil_open(dir, NULL);
        kvs_engine_stats(e, &st);
        CU_ASSERT_EQUAL(st.keys, 5);
        CU_ASSERT_EQUAL(st.recovered_torn_bytes, cut - before);
        value_for(4, val, sizeof(val));
        CU_ASSERT(has_value(e, "key4", val));
        CU_ASSERT(!has_value(e, "last", "the-last-value"));
        /* The store keeps working after the cut: the next record lands at the cut. */
        CU_ASSERT_EQUAL(kvs_engine_set(e, "again", 5, "ok", 2), 0);
        CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
        CU_ASSERT_EQUAL(file_size(dir, "000001.seg"), (long long)(before + 28 + 5 + 2));
        e = tutil_open(dir, NULL);
        CU_ASSERT_EQUAL(kvs_engine_count(e), 6);
        CU_ASSERT(has_value(e, "again", "ok"));
        CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
        tutil_rmtree(dir);
    }
    kvs_log_set_level(KVS_LOG_INFO);
    free(seg);
    free(fmt);
    tutil_rmtree(tmpl);
}

static void test_recovery_bad_checksum_at_tail_is_cut(void)
{
    char *dir = tutil_mkdtemp("tailsum");
    struct kvs_engine *e = tutil_open(dir, NULL);
    struct kvs_engine_stats st;

    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, "1", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "b", 1, "2", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    flip_byte(dir, "000001.seg", 30 + 29); /* the key byte of the second (last) record */
    e = tutil_open(dir, NULL);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.recovered_torn_bytes, 30);
    CU_ASSERT(has_value(e, "a", "1"));
    CU_ASSERT_EQUAL(kvs_engine_count(e), 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_recovery_torn_tail_before_empty_newest(void)
{
    char *dir = tutil_mkdtemp("tornrot");
    struct kvs_engine *e = tutil_open(dir, NULL);
    struct kvs_engine_stats st;
    uint8_t *seg;
    size_t len = 0;

    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, "1", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "b", 1, "2", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    /* A crash right after a rotation: the new segment exists but is empty, the previous
     * segment's last batch was cut short and its hint was never written. */
    seg = read_file(dir, "000001.seg", &len);
    CU_ASSERT_FATAL(seg != NULL && len == 60);
    write_file(dir, "000001.seg", seg, 45);
    write_file(dir, "000002.seg", "", 0);
    e = tutil_open(dir, NULL);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.recovered_torn_bytes, 15);
    CU_ASSERT(has_value(e, "a", "1"));
    CU_ASSERT_EQUAL(kvs_engine_count(e), 1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    free(seg);
    tutil_rmtree(dir);
}

/* Fill a store with 100 records of 84 bytes in 1 KiB segments (13 per segment). */
static void fill_segments(const char *dir, struct kvs_engine_options *opt)
{
    struct kvs_engine *e;
    char key[16], val[64];

    kvs_engine_options_init(opt);
    opt->segment_size = 1024;
    e = tutil_open(dir, opt);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "key%03d", i);
        value_for(i, val, sizeof(val));
        CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), val, 50), 0);
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
}

static void test_recovery_flipped_byte_in_older_segment(void)
{
    char *dir = tutil_mkdtemp("flip");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e = NULL;
    char err[256] = "", key[16], val[64];
    int missing = 0;

    fill_segments(dir, &opt);
    /* Without its hint the segment is scanned and every checksum verified. */
    remove_file(dir, "000002.hint");
    flip_byte(dir, "000002.seg", 84 + 40);
    CU_ASSERT_EQUAL(kvs_engine_open(dir, &opt, &e, err, sizeof(err)), KVS_ECORRUPT);
    CU_ASSERT_PTR_NULL(e);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "000002.seg"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "offset 84"));

    opt.salvage = true;
    e = tutil_open(dir, &opt);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.salvage_dropped_bytes, 84);
    CU_ASSERT_EQUAL(st.keys, 99);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "key%03d", i);
        value_for(i, val, sizeof(val));
        if (!has_value(e, key, val))
            missing++;
    }
    CU_ASSERT_EQUAL(missing, 1);
    /* Compaction skips the dropped range, after which the store opens without salvage. */
    CU_ASSERT_EQUAL(kvs_engine_compact(e), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    opt.salvage = false;
    e = tutil_open(dir, &opt);
    CU_ASSERT_EQUAL(kvs_engine_count(e), 99);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

static void test_recovery_corrupt_newest_middle_is_reported(void)
{
    char *dir = tutil_mkdtemp("newmid");
    struct kvs_engine *e = NULL;
    char err[256] = "";

    e = tutil_open(dir, NULL);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, "1", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "b", 1, "2", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_set(e, "c", 1, "3", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    /* Damage followed by a valid record is not a torn write: it must not be cut silently. */
    flip_byte(dir, "000001.seg", 30 + 29);
    CU_ASSERT_EQUAL(kvs_engine_open(dir, NULL, &e, err, sizeof(err)), KVS_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "000001.seg"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "offset 30"));
    tutil_rmtree(dir);
}

static void test_recovery_uses_hints_and_ignores_corrupt_ones(void)
{
    char *dir = tutil_mkdtemp("hints");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    uint64_t used;
    char key[16], val[64];

    fill_segments(dir, &opt);
    e = tutil_open(dir, &opt);
    kvs_engine_stats(e, &st);
    used = st.hint_files_used;
    CU_ASSERT_EQUAL(used, st.segments - 1); /* every segment but the active one */
    CU_ASSERT(used >= 5);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);

    flip_byte(dir, "000003.hint", 40);
    e = tutil_open(dir, &opt);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.hint_files_used, used - 1);
    CU_ASSERT_EQUAL(st.keys, 100);
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "key%03d", i);
        value_for(i, val, sizeof(val));
        CU_ASSERT(has_value(e, key, val));
    }
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    /* The scan rewrote the hint: the next open uses it again. */
    e = tutil_open(dir, &opt);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.hint_files_used, used);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

/*
 * Live bytes are accounted while records load (not recounted afterwards): overwrites across
 * segments, tombstones in newer segments hiding older values, and a clear all leave exactly
 * the live bytes of the surviving records, whether the segments are scanned or hinted.
 */
static void test_recovery_live_bytes_exact_after_load(void)
{
    char *dir = tutil_mkdtemp("livebytes");
    struct kvs_engine_options opt;
    struct kvs_engine_stats st;
    struct kvs_engine *e;
    char key[16], val[100];
    uint64_t want = 0;

    kvs_engine_options_init(&opt);
    opt.segment_size = 2048;
    opt.compact_min_dead = 0;
    memset(val, 'l', sizeof(val));
    e = tutil_open(dir, &opt);
    for (int i = 0; i < 60; i++) { /* all of these go with the clear */
        snprintf(key, sizeof(key), "old%02d", i);
        CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), val, sizeof(val)), 0);
    }
    CU_ASSERT_EQUAL(kvs_engine_clear_async(e, NULL, NULL), 0); /* the next set waits for it */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 40; i++) {
            snprintf(key, sizeof(key), "k%02d", i);
            CU_ASSERT_EQUAL(kvs_engine_set(e, key, strlen(key), val, sizeof(val) - (size_t)round),
                            0);
        }
    }
    for (int i = 0; i < 40; i += 3) {
        snprintf(key, sizeof(key), "k%02d", i);
        CU_ASSERT_EQUAL(kvs_engine_remove(e, key, strlen(key)), 0);
    }
    for (int i = 0; i < 40; i++)
        if (i % 3 != 0)
            want += 28 + 3 + (sizeof(val) - 2);
    kvs_engine_stats(e, &st);
    CU_ASSERT_EQUAL(st.live_bytes, want);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    for (int pass = 0; pass < 2; pass++) { /* first open scans and writes hints, then hints */
        e = tutil_open(dir, &opt);
        kvs_engine_stats(e, &st);
        CU_ASSERT_EQUAL(st.live_bytes, want);
        CU_ASSERT_EQUAL(st.dead_bytes, st.disk_bytes - want);
        if (pass == 1)
            CU_ASSERT(st.hint_files_used > 0);
        CU_ASSERT_EQUAL(kvs_engine_count(e), 40 - 14);
        CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    }
    tutil_rmtree(dir);
}

static void test_recovery_format_file_checked(void)
{
    char *dir = tutil_mkdtemp("format");
    struct kvs_engine *e = tutil_open(dir, NULL);
    char err[256] = "";
    size_t len = 0;
    uint8_t *fmt;

    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, "1", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    fmt = read_file(dir, "KVS-FORMAT", &len);
    CU_ASSERT_FATAL(fmt != NULL && len == 16);
    CU_ASSERT_EQUAL(memcmp(fmt, "KVSFORM\n", 8), 0);
    CU_ASSERT_EQUAL(fmt[8], 1); /* version 1, little-endian */
    fmt[8] = 9;
    write_file(dir, "KVS-FORMAT", fmt, len);
    CU_ASSERT_EQUAL(kvs_engine_open(dir, NULL, &e, err, sizeof(err)), KVS_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "KVS-FORMAT"));
    remove_file(dir, "KVS-FORMAT");
    CU_ASSERT_EQUAL(kvs_engine_open(dir, NULL, &e, err, sizeof(err)), KVS_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "not a kvs store"));
    free(fmt);
    tutil_rmtree(dir);
}

static void test_recovery_leftover_temp_files_removed(void)
{
    char *dir = tutil_mkdtemp("leftover");
    struct kvs_engine *e = tutil_open(dir, NULL);

    CU_ASSERT_EQUAL(kvs_engine_set(e, "a", 1, "1", 1), 0);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    /* An unfinished compaction output and a hint with no segment, as after a crash. */
    write_file(dir, "000007.seg.tmp", "garbage", 7);
    write_file(dir, "000008.hint", "garbage", 7);
    e = tutil_open(dir, NULL);
    CU_ASSERT(has_value(e, "a", "1"));
    CU_ASSERT_EQUAL(file_size(dir, "000007.seg.tmp"), -1);
    CU_ASSERT_EQUAL(file_size(dir, "000008.hint"), -1);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

/* Child: set key0, key1, ... with fsync=always and report each acknowledged index on fd. */
static void writer_child(const char *dir, int fd)
{
    struct kvs_engine_options opt;
    struct kvs_engine *e = NULL;

    kvs_engine_options_init(&opt);
    opt.fsync = KVS_FSYNC_ALWAYS;
    opt.segment_size = 4096; /* rotations and hint writes happen while we are killed */
    if (kvs_engine_open(dir, &opt, &e, NULL, 0) != 0)
        _exit(2);
    for (uint32_t i = 0;; i++) {
        char key[16], val[64];

        snprintf(key, sizeof(key), "key%u", i);
        value_for((int)(i % 1000), val, sizeof(val));
        if (kvs_engine_set(e, key, strlen(key), val, strlen(val)) != 0)
            _exit(3);
        if (write(fd, &i, sizeof(i)) != sizeof(i))
            _exit(4);
    }
}

static void test_recovery_after_kill_keeps_acknowledged_sets(void)
{
    char *dir = tutil_mkdtemp("kill");
    struct kvs_engine *e;
    uint32_t acked = 0, got;
    int fds[2], status, missing = 0;
    pid_t pid;

    CU_ASSERT_FATAL(pipe(fds) == 0);
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        writer_child(dir, fds[1]);
    }
    close(fds[1]);
    /* Kill it in the middle of its work, once 300 sets were acknowledged. */
    while (acked < 300 && read(fds[0], &got, sizeof(got)) == sizeof(got))
        acked = got + 1;
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    close(fds[0]);
    CU_ASSERT_EQUAL(acked, 300);
    e = tutil_open(dir, NULL);
    for (uint32_t i = 0; i < acked; i++) {
        char key[16], val[64];

        snprintf(key, sizeof(key), "key%u", i);
        value_for((int)(i % 1000), val, sizeof(val));
        if (!has_value(e, key, val))
            missing++;
    }
    CU_ASSERT_EQUAL(missing, 0);
    CU_ASSERT(kvs_engine_count(e) >= acked);
    CU_ASSERT_EQUAL(kvs_engine_close(e), 0);
    tutil_rmtree(dir);
}

void test_recovery_register(void);

void test_recovery_register(void)
{
    CU_pSuite s = CU_add_suite("recovery", NULL, NULL);

    CU_add_test(s, "test_recovery_torn_tail_every_offset", test_recovery_torn_tail_every_offset);
    CU_add_test(s, "test_recovery_bad_checksum_at_tail_is_cut",
                test_recovery_bad_checksum_at_tail_is_cut);
    CU_add_test(s, "test_recovery_torn_tail_before_empty_newest",
                test_recovery_torn_tail_before_empty_newest);
    CU_add_test(s, "test_recovery_flipped_byte_in_older_segment",
                test_recovery_flipped_byte_in_older_segment);
    CU_add_test(s, "test_recovery_corrupt_newest_middle_is_reported",
                test_recovery_corrupt_newest_middle_is_reported);
    CU_add_test(s, "test_recovery_uses_hints_and_ignores_corrupt_ones",
                test_recovery_uses_hints_and_ignores_corrupt_ones);
    CU_add_test(s, "test_recovery_after_kill_keeps_acknowledged_sets",
                test_recovery_after_kill_keeps_acknowledged_sets);
    CU_add_test(s, "test_recovery_live_bytes_exact_after_load",
                test_recovery_live_bytes_exact_after_load);
    CU_add_test(s, "test_recovery_format_file_checked", test_recovery_format_file_checked);
    CU_add_test(s, "test_recovery_leftover_temp_files_removed",
                test_recovery_leftover_temp_files_removed);
    tutil_need_ring(s, "recovery");
}
