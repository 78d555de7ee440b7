/* SPDX-License-Identifier: MIT */
/*
 * Tests of the ring executor (engine/ring.c): file I/O with plain and registered buffers,
 * linked write + fdatasync, timers and cancellation, stale-tag dropping, MSG_RING wake-ups
 * between rings, multishot accept and multishot recv with a provided-buffer ring.
 * When the kernel refuses io_uring the suite is deactivated with "SKIP: <reason>".
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "kvs/ring.h"
#include "tutil.h"

struct result {
    bool done;
    int res;
    uint32_t flags;
    int calls;
};

static void on_done(void *ctx, int res, uint32_t flags)
{
    struct result *r = ctx;

    r->done = true;
    r->res = res;
    r->flags = flags;
    r->calls++;
}

static struct kvs_ring *new_ring(void)
{
    struct kvs_ring *r = NULL;

    CU_ASSERT_FATAL(kvs_ring_new(NULL, &r) == 0);
    return r;
}

static int open_tmpfile(char **dir)
{
    char path[512];
    int fd;

    *dir = tutil_mkdtemp("ring");
    snprintf(path, sizeof(path), "%s/f", *dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    return fd;
}

static void test_ring_write_then_read_roundtrip(void)
{
    struct kvs_ring *r = new_ring();
    struct result w = {0}, rd = {0};
    char *dir = NULL;
    int fd = open_tmpfile(&dir);
    char out[64];

    CU_ASSERT(kvs_ring_write(r, fd, "hello ring", 10, 0, on_done, &w) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &w.done) == 0);
    CU_ASSERT_EQUAL(w.res, 10);
    CU_ASSERT(kvs_ring_read(r, fd, out, sizeof(out), 0, on_done, &rd) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &rd.done) == 0);
    CU_ASSERT_EQUAL(rd.res, 10);
    CU_ASSERT(memcmp(out, "hello ring", 10) == 0);
    CU_ASSERT_EQUAL(kvs_ring_inflight(r), 0);
    close(fd);
    kvs_ring_free(r);
    tutil_rmtree(dir);
}

static void test_ring_fixed_write_linked_to_fdatasync(void)
{
    struct kvs_ring *r = new_ring();
    struct result w = {0}, s = {0}, rd = {0};
    char *dir = NULL;
    int fd = open_tmpfile(&dir);
    char *buf = malloc(8192);
    int bi;

    CU_ASSERT_FATAL(buf != NULL);
    memset(buf, 'x', 8192);
    bi = kvs_ring_buffer_add(r, buf, 8192);
    CU_ASSERT_FATAL(bi >= 0);
    CU_ASSERT(kvs_ring_write_fixed(r, fd, buf + 100, 4000, 0, bi, on_done, &w) >= 0);
    kvs_ring_link(r);
    CU_ASSERT(kvs_ring_fsync(r, fd, true, on_done, &s) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &s.done) == 0);
    CU_ASSERT(w.done);
    CU_ASSERT_EQUAL(w.res, 4000);
    CU_ASSERT_EQUAL(s.res, 0);
    memset(buf, 0, 8192);
    CU_ASSERT(kvs_ring_read_fixed(r, fd, buf, 4000, 0, bi, on_done, &rd) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &rd.done) == 0);
    CU_ASSERT_EQUAL(rd.res, 4000);
    CU_ASSERT(buf[0] == 'x' && buf[3999] == 'x');
    /* An unregistered index is refused up front. */
    CU_ASSERT_EQUAL(kvs_ring_write_fixed(r, fd, buf, 1, 0, bi + 1, on_done, &w), -EINVAL);
    kvs_ring_buffer_remove(r, bi);
    CU_ASSERT_EQUAL(kvs_ring_read_fixed(r, fd, buf, 1, 0, bi, on_done, &rd), -EINVAL);
    free(buf);
    close(fd);
    kvs_ring_free(r);
    tutil_rmtree(dir);
}

static void test_ring_directory_ops_open_rename_sync_unlink(void)
{
    struct kvs_ring *r = new_ring();
    struct result o = {0}, rn = {0}, s = {0}, u = {0}, miss = {0};
    char *dir = tutil_mkdtemp("ringdir");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;

    CU_ASSERT_FATAL(dfd >= 0);
    CU_ASSERT(kvs_ring_openat(r, dfd, "a.tmp", O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644,
                              on_done, &o) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &o.done) == 0);
    CU_ASSERT_FATAL(o.res >= 0);
    close(o.res);
    CU_ASSERT(kvs_ring_renameat(r, dfd, "a.tmp", "a", on_done, &rn) >= 0);
    kvs_ring_link(r);
    CU_ASSERT(kvs_ring_fsync(r, dfd, false, on_done, &s) >= 0); /* the rename's entry */
    CU_ASSERT(kvs_ring_run_until(r, &s.done) == 0);
    CU_ASSERT_EQUAL(rn.res, 0);
    CU_ASSERT_EQUAL(s.res, 0);
    CU_ASSERT(fstatat(dfd, "a", &st, 0) == 0);
    CU_ASSERT(fstatat(dfd, "a.tmp", &st, 0) != 0);
    CU_ASSERT(kvs_ring_unlinkat(r, dfd, "a", on_done, &u) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &u.done) == 0);
    CU_ASSERT_EQUAL(u.res, 0);
    CU_ASSERT(kvs_ring_unlinkat(r, dfd, "a", on_done, &miss) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &miss.done) == 0);
    CU_ASSERT_EQUAL(miss.res, -ENOENT);
    close(dfd);
    kvs_ring_free(r);
    tutil_rmtree(dir);
}

static void test_ring_failed_link_cancels_next(void)
{
    struct kvs_ring *r = new_ring();
    struct result w = {0}, s = {0};

    /* A write to a bad fd fails, so the linked fsync must not run. */
    CU_ASSERT(kvs_ring_write(r, -1, "x", 1, 0, on_done, &w) >= 0);
    kvs_ring_link(r);
    CU_ASSERT(kvs_ring_fsync(r, -1, true, on_done, &s) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &s.done) == 0);
    CU_ASSERT(kvs_ring_run_until(r, &w.done) == 0);
    CU_ASSERT_EQUAL(w.res, -EBADF);
    CU_ASSERT_EQUAL(s.res, -ECANCELED);
    kvs_ring_free(r);
}

/*
 * A link chain never straddles a submission: with one free SQE left, the ring submits what
 * is queued before the chain's first op, so the kernel sees write and fsync together and the
 * failed write still cancels the fsync (split across two submissions, the fsync would run
 * on its own and succeed).
 */
static void test_ring_link_chain_not_split_by_a_full_sq(void)
{
    struct kvs_ring_options o = {.entries = 8};
    struct kvs_ring *r = NULL;
    struct result t[7], w = {0}, s = {0};
    char *dir = NULL;
    int fd = open_tmpfile(&dir), ops[7];

    CU_ASSERT_FATAL(kvs_ring_new(&o, &r) == 0);
    memset(t, 0, sizeof(t));
    for (int i = 0; i < 7; i++) {
        ops[i] = kvs_ring_timeout(r, 3600ULL * 1000000000ULL, on_done, &t[i]);
        CU_ASSERT_FATAL(ops[i] >= 0);
    }
    CU_ASSERT(kvs_ring_write(r, -1, "x", 1, 0, on_done, &w) >= 0);
    kvs_ring_link(r);
    CU_ASSERT(kvs_ring_fsync(r, fd, true, on_done, &s) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &s.done) == 0);
    CU_ASSERT(kvs_ring_run_until(r, &w.done) == 0);
    CU_ASSERT_EQUAL(w.res, -EBADF);
    CU_ASSERT_EQUAL(s.res, -ECANCELED);
    for (int i = 0; i < 7; i++) {
        CU_ASSERT(kvs_ring_cancel(r, ops[i], NULL, NULL) >= 0);
        CU_ASSERT(kvs_ring_run_until(r, &t[i].done) == 0);
        CU_ASSERT_EQUAL(t[i].res, -ECANCELED);
    }
    CU_ASSERT_EQUAL(kvs_ring_inflight(r), 0);
    close(fd);
    kvs_ring_free(r);
    tutil_rmtree(dir);
}

static void test_ring_timeout_fires_and_cancel_stops_it(void)
{
    struct kvs_ring *r = new_ring();
    struct result t1 = {0}, t2 = {0}, c = {0};
    int op;

    CU_ASSERT(kvs_ring_timeout(r, 1000000, on_done, &t1) >= 0); /* 1 ms */
    CU_ASSERT(kvs_ring_run_until(r, &t1.done) == 0);
    CU_ASSERT_EQUAL(t1.res, -ETIME);
    op = kvs_ring_timeout(r, 3600ULL * 1000000000ULL, on_done, &t2); /* an hour */
    CU_ASSERT_FATAL(op >= 0);
    CU_ASSERT(kvs_ring_cancel(r, op, on_done, &c) >= 0);
    CU_ASSERT(kvs_ring_run_until(r, &t2.done) == 0);
    CU_ASSERT(kvs_ring_run_until(r, &c.done) == 0);
    CU_ASSERT_EQUAL(t2.res, -ECANCELED);
    CU_ASSERT_EQUAL(c.res, 0);
    CU_ASSERT_EQUAL(kvs_ring_inflight(r), 0);
    /* Nothing in flight: waiting for a flag nobody can set is reported, not a hang. */
    CU_ASSERT_EQUAL(kvs_ring_run_until(r, &c.done), 0);
    c.done = false;
    CU_ASSERT_EQUAL(kvs_ring_run_until(r, &c.done), -EDEADLK);
    kvs_ring_free(r);
}

static void test_ring_msg_wakes_watcher_on_other_ring(void)
{
    struct kvs_ring *a = new_ring();
    struct kvs_ring *b = new_ring();
    struct result got = {0}, sent = {0};
    int w = kvs_ring_watch(b, on_done, &got);

    CU_ASSERT_FATAL(w >= 0);
    for (int i = 1; i <= 3; i++) {
        got.done = false;
        sent.done = false;
        CU_ASSERT(
            kvs_ring_msg(a, kvs_ring_fd(b), kvs_ring_watch_tag(b, w), 40 + i, on_done, &sent) >= 0);
        CU_ASSERT(kvs_ring_run_until(a, &sent.done) == 0);
        CU_ASSERT_EQUAL(sent.res, 0);
        /* The watcher is not "in flight", so wait with a bounded run instead of run_until. */
        while (!got.done)
            CU_ASSERT_FATAL(kvs_ring_run(b, 1, 0) >= 0);
        CU_ASSERT_EQUAL(got.res, 40 + i);
    }
    CU_ASSERT_EQUAL(got.calls, 3);
    kvs_ring_unwatch(b, w);
    kvs_ring_free(a);
    kvs_ring_free(b);
}

struct accepted {
    int fds[4];
    int n;
    bool ended;
};

static void on_accept(void *ctx, int res, uint32_t flags)
{
    struct accepted *a = ctx;

    if (res >= 0 && a->n < 4)
        a->fds[a->n++] = res;
    if (!(flags & KVS_RING_CQE_MORE))
        a->ended = true;
}

struct received {
    struct kvs_bufring *br;
    char data[256];
    size_t len;
    int shots;
    bool ended;
    int last_res;
};

static void on_recv(void *ctx, int res, uint32_t flags)
{
    struct received *rc = ctx;

    rc->last_res = res;
    if (res > 0 && (flags & KVS_RING_CQE_BUFFER)) {
        uint16_t bid = (uint16_t)(flags >> KVS_RING_CQE_BUFFER_SHIFT);
        size_t n = (size_t)res;

        if (rc->len + n <= sizeof(rc->data)) {
            memcpy(rc->data + rc->len, kvs_bufring_buf(rc->br, bid), n);
            rc->len += n;
        }
        kvs_bufring_recycle(rc->br, bid);
        rc->shots++;
    }
    if (!(flags & KVS_RING_CQE_MORE))
        rc->ended = true;
}

static void test_ring_multishot_accept_and_recv_with_buffer_ring(void)
{
    struct kvs_ring *r = new_ring();
    struct accepted acc = {.n = 0};
    struct received rc = {.len = 0};
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int c1 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int c2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int op;

    CU_ASSERT_FATAL(lfd >= 0 && c1 >= 0 && c2 >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_FATAL(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CU_ASSERT_FATAL(listen(lfd, 16) == 0);
    CU_ASSERT_FATAL(getsockname(lfd, (struct sockaddr *)&sa, &salen) == 0);
    op = kvs_ring_accept_multishot(r, lfd, on_accept, &acc);
    CU_ASSERT_FATAL(op >= 0);
    CU_ASSERT_FATAL(kvs_ring_submit(r) >= 0);
    /* Blocking connects complete against the listen backlog without the ring's help. */
    CU_ASSERT_FATAL(connect(c1, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CU_ASSERT_FATAL(connect(c2, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    while (acc.n < 2)
        CU_ASSERT_FATAL(kvs_ring_run(r, 1, 0) >= 0);
    CU_ASSERT_FALSE(acc.ended);

    /* Tiny buffers force one message to span several provided buffers. */
    CU_ASSERT_FATAL(kvs_ring_bufring_new(r, 7, 4, 8, &rc.br) == 0);
    CU_ASSERT_EQUAL(kvs_bufring_bufsz(rc.br), 8);
    CU_ASSERT_FATAL(kvs_ring_recv_multishot(r, acc.fds[0], 7, on_recv, &rc) >= 0);
    CU_ASSERT_FATAL(write(c1, "0123456789abcdefghij", 20) == 20);
    while (rc.len < 20)
        CU_ASSERT_FATAL(kvs_ring_run(r, 1, 0) >= 0);
    CU_ASSERT(memcmp(rc.data, "0123456789abcdefghij", 20) == 0);
    CU_ASSERT(rc.shots >= 3);
    /* The peer closing ends the multishot recv with res 0 and no MORE flag. */
    close(c1);
    while (!rc.ended)
        CU_ASSERT_FATAL(kvs_ring_run(r, 1, 0) >= 0);
    CU_ASSERT_EQUAL(rc.last_res, 0);

    /* Cancelling the multishot accept ends it. */
    CU_ASSERT(kvs_ring_cancel(r, op, NULL, NULL) >= 0);
    while (!acc.ended)
        CU_ASSERT_FATAL(kvs_ring_run(r, 1, 0) >= 0);
    while (kvs_ring_inflight(r) > 0)
        CU_ASSERT_FATAL(kvs_ring_run(r, 1, 0) >= 0);
    kvs_ring_bufring_free(r, rc.br);
    for (int i = 0; i < acc.n; i++)
        close(acc.fds[i]);
    close(c2);
    close(lfd);
    kvs_ring_free(r);
}

struct counter {
    int calls;
};

static void on_count(void *ctx, int res, uint32_t flags)
{
    struct counter *c = ctx;

    (void)res;
    (void)flags;
    c->calls++;
}

static void test_ring_many_ops_grow_slot_table_and_overflow_sq(void)
{
    struct kvs_ring_options opt = {.entries = 8};
    struct kvs_ring *r = NULL;
    struct counter c = {0};
    char *dir = NULL;
    int fd = open_tmpfile(&dir);
    static char buf[5000];

    CU_ASSERT_FATAL(kvs_ring_new(&opt, &r) == 0);
    /* More ops than SQ entries (forces early submits) and than one slot chunk (1024). */
    for (int i = 0; i < 5000; i++)
        CU_ASSERT_FATAL(kvs_ring_write(r, fd, buf + i, 1, (uint64_t)i, on_count, &c) >= 0);
    while (kvs_ring_inflight(r) > 0)
        CU_ASSERT_FATAL(kvs_ring_run(r, 1, 0) >= 0);
    CU_ASSERT_EQUAL(c.calls, 5000);
    CU_ASSERT_EQUAL(lseek(fd, 0, SEEK_END), 5000);
    close(fd);
    kvs_ring_free(r);
    tutil_rmtree(dir);
}

static void test_ring_options_are_validated(void)
{
    struct kvs_ring_options opt = {.entries = 1U << 20};
    struct kvs_ring *r = NULL;
    struct kvs_bufring *br = NULL;

    CU_ASSERT_EQUAL(kvs_ring_new(&opt, &r), -EINVAL);
    CU_ASSERT_PTR_NULL(r);
    r = new_ring();
    CU_ASSERT_EQUAL(kvs_ring_bufring_new(r, 1, 3, 64, &br), -EINVAL); /* not a power of two */
    CU_ASSERT_EQUAL(kvs_ring_bufring_new(r, 1, 4, 0, &br), -EINVAL);
    CU_ASSERT_PTR_NULL(br);
    CU_ASSERT_EQUAL(kvs_ring_cancel(r, 12345, NULL, NULL), -ENOENT);
    kvs_ring_free(r);
}

void test_ring_register(void);

void test_ring_register(void)
{
    CU_pSuite s = CU_add_suite("ring", NULL, NULL);
    struct kvs_ring *probe = NULL;
    int ret = kvs_ring_new(NULL, &probe);

    CU_add_test(s, "test_ring_write_then_read_roundtrip", test_ring_write_then_read_roundtrip);
    CU_add_test(s, "test_ring_fixed_write_linked_to_fdatasync",
                test_ring_fixed_write_linked_to_fdatasync);
    CU_add_test(s, "test_ring_failed_link_cancels_next", test_ring_failed_link_cancels_next);
    CU_add_test(s, "test_ring_link_chain_not_split_by_a_full_sq",
                test_ring_link_chain_not_split_by_a_full_sq);
    CU_add_test(s, "test_ring_directory_ops_open_rename_sync_unlink",
                test_ring_directory_ops_open_rename_sync_unlink);
    CU_add_test(s, "test_ring_timeout_fires_and_cancel_stops_it",
                test_ring_timeout_fires_and_cancel_stops_it);
    CU_add_test(s, "test_ring_msg_wakes_watcher_on_other_ring",
                test_ring_msg_wakes_watcher_on_other_ring);
    CU_add_test(s, "test_ring_multishot_accept_and_recv_with_buffer_ring",
                test_ring_multishot_accept_and_recv_with_buffer_ring);
    CU_add_test(s, "test_ring_many_ops_grow_slot_table_and_overflow_sq",
                test_ring_many_ops_grow_slot_table_and_overflow_sq);
    CU_add_test(s, "test_ring_options_are_validated", test_ring_options_are_validated);
    if (ret < 0) {
        printf("SKIP: ring: io_uring unavailable: %s\n", strerror(-ret));
        CU_set_suite_active(s, CU_FALSE);
    }
    kvs_ring_free(probe);
}
