/* SPDX-License-Identifier: MIT */
/*
 * Tests of the blocking client library (net/client.c) against scripted fake servers: a child
 * process (fork) listening on 127.0.0.1 checks the request it receives and answers with
 * chosen bytes — dribbled one byte per send, large, malformed, cut short or never — so that
 * every failure path and its message is exercised. The real server is tested end to end by
 * tests/integration/test_client.sh.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "kvs/client.h"
#include "kvs/error.h"
#include "kvs/resp.h"
#include "tutil.h"

/* A fake server's script: runs in the child on the accepted socket; returns its exit code
 * (0 when the requests it saw were the expected ones). */
typedef int (*serve_fn)(int fd);

struct fake {
    pid_t pid;
    int port;
    char addr[32];
};

/* Listen on an ephemeral port of 127.0.0.1; returns the socket and sets *port. */
static int listen_any(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Start a child serving one connection with serve. The alarm bounds a child whose parent
 * went wrong, so that no test can hang on it. */
static bool fake_start(struct fake *f, serve_fn serve)
{
    int lfd = listen_any(&f->port);

    if (lfd < 0)
        return false;
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", f->port);
    f->pid = fork();
    if (f->pid < 0) {
        close(lfd);
        return false;
    }
    if (f->pid == 0) {
        int one = 1;
        int cfd;

        alarm(20);
        cfd = accept(lfd, NULL, NULL);
        if (cfd < 0)
            _exit(3);
        (void)setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        _exit(serve(cfd));
    }
    close(lfd);
    return true;
}

/* Wait for the child; returns its exit code, or -1 if it did not exit normally. */
static int fake_wait(struct fake *f)
{
    int st = 0;

    while (waitpid(f->pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool send_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

/* Receive one request and check it is the command argv[0 .. argc). Returns true if so. */
static bool expect_request(int fd, int argc, const char *const *argv)
{
    static char buf[4096];
    static size_t len;
    struct kvs_resp_arg av[8];
    struct kvs_resp_request req;

    kvs_resp_request_init(&req, av, 8);
    for (;;) {
        ssize_t r = kvs_resp_parse_request(&req, buf, len, NULL);

        if (r > 0) {
            bool ok = req.argc == (size_t)argc;

            for (int i = 0; ok && i < argc; i++)
                ok = av[i].len == strlen(argv[i]) && memcmp(av[i].p, argv[i], av[i].len) == 0;
            memmove(buf, buf + r, len - (size_t)r);
            len -= (size_t)r;
            return ok;
        }
        if (r < 0 || len == sizeof(buf))
            return false;
        r = recv(fd, buf + len, sizeof(buf) - len, 0);
        if (r <= 0)
            return false;
        len += (size_t)r;
    }
}

static const char *const get_k[] = {"GET", "k"};

/* Run one command against a fresh fake server; returns the command's result and leaves the
 * reply in *rep and the message in err. */
static int one_command(serve_fn serve, int timeout_ms, struct kvs_resp_reply *rep, char *err,
                       size_t errlen, struct fake *f, struct kvs_client **cp)
{
    char oerr[256];
    int rc;

    CU_ASSERT_FATAL(fake_start(f, serve));
    rc = kvs_client_open(cp, f->addr, timeout_ms, oerr, sizeof(oerr));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    rc = kvs_client_command(*cp, 2, get_k, NULL, rep);
    snprintf(err, errlen, "%s", kvs_client_error(*cp));
    return rc;
}

/* ---------------------------------------------------------------------------------------- */

static int serve_dribble(int fd)
{
    static const char reply[] = "$12\r\nhello\r\nworld\r\n";

    if (!expect_request(fd, 2, get_k))
        return 1;
    /* One byte per send, so that the client sees the reply split at every byte (TCP may still
     * merge some; that is fine too). */
    for (size_t i = 0; i < sizeof(reply) - 1; i++)
        if (!send_all(fd, reply + i, 1))
            return 2;
    return 0;
}

static void test_client_reply_dribbled_byte_by_byte(void)
{
    struct fake f;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply rep;
    char err[256];
    int rc = one_command(serve_dribble, 5000, &rep, err, sizeof(err), &f, &c);

    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rep.type, KVS_RESP_BULK);
    CU_ASSERT(rep.len == 12 && memcmp(rep.str, "hello\r\nworld", 12) == 0);
    CU_ASSERT_STRING_EQUAL(err, "");
    kvs_client_close(c);
    CU_ASSERT_EQUAL(fake_wait(&f), 0);
}

#define BIG_LEN (3u << 20)

static int serve_big(int fd)
{
    uint64_t seed = 5;
    char *v = malloc(BIG_LEN);
    struct kvs_buf b;
    int rc = 0;

    if (v == NULL || !expect_request(fd, 2, get_k))
        return 1;
    tutil_fill(&seed, v, BIG_LEN);
    kvs_buf_init(&b);
    if (kvs_resp_append_bulk(&b, v, BIG_LEN) < 0 || !send_all(fd, b.p, b.len))
        rc = 2;
    kvs_buf_fini(&b);
    free(v);
    return rc;
}

static void test_client_large_reply_arrives_whole(void)
{
    struct fake f;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply rep;
    char err[256];
    uint64_t seed = 5;
    char *v = malloc(BIG_LEN);
    int rc;

    if (v == NULL)
        abort();
    tutil_fill(&seed, v, BIG_LEN);
    rc = one_command(serve_big, 5000, &rep, err, sizeof(err), &f, &c);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rep.type, KVS_RESP_BULK);
    CU_ASSERT(rep.len == BIG_LEN && memcmp(rep.str, v, BIG_LEN) == 0);
    kvs_client_close(c);
    CU_ASSERT_EQUAL(fake_wait(&f), 0);
    free(v);
}

static int serve_two_replies_at_once(int fd)
{
    static const char *const set_kv[] = {"SET", "k", "v"};
    static const char replies[] = "-ERR boom\r\n*2\r\n:1\r\n$-1\r\n";

    /* Both replies leave in one write before the second request exists: the client must keep
     * the bytes of the second reply for the second command. */
    if (!expect_request(fd, 2, get_k) || !send_all(fd, replies, sizeof(replies) - 1))
        return 1;
    if (!expect_request(fd, 3, set_kv))
        return 2;
    return 0;
}

static void test_client_error_reply_then_next_command(void)
{
    static const char *const set_kv[] = {"SET", "k", "v"};
    struct fake f;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply rep, el;
    struct kvs_resp_iter it;
    char err[256];
    int rc = one_command(serve_two_replies_at_once, 5000, &rep, err, sizeof(err), &f, &c);

    /* A server error is a reply, not a failure. */
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rep.type, KVS_RESP_ERROR);
    CU_ASSERT(rep.len == 8 && memcmp(rep.str, "ERR boom", 8) == 0);
    rc = kvs_client_command(c, 3, set_kv, NULL, &rep);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rep.type, KVS_RESP_ARRAY);
    CU_ASSERT_EQUAL(rep.count, 2);
    kvs_resp_reply_iter(&rep, &it);
    CU_ASSERT_EQUAL(kvs_resp_reply_next(&it, &el), 1);
    CU_ASSERT(el.type == KVS_RESP_INTEGER && el.integer == 1);
    CU_ASSERT_EQUAL(kvs_resp_reply_next(&it, &el), 1);
    CU_ASSERT_EQUAL(el.type, KVS_RESP_NULL);
    CU_ASSERT_EQUAL(kvs_resp_reply_next(&it, &el), 0);
    CU_ASSERT_EQUAL(kvs_client_command(c, 0, set_kv, NULL, &rep), -EINVAL);
    kvs_client_close(c);
    CU_ASSERT_EQUAL(fake_wait(&f), 0);
}

static int serve_cut_short(int fd)
{
    static const char part[] = "$10\r\nabc";

    if (!expect_request(fd, 2, get_k) || !send_all(fd, part, sizeof(part) - 1))
        return 1;
    return 0;
}

static void test_client_server_closing_mid_reply_is_reported(void)
{
    struct fake f;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply rep;
    char err[256], want[64];
    int rc = one_command(serve_cut_short, 5000, &rep, err, sizeof(err), &f, &c);

    CU_ASSERT_EQUAL(rc, -ECONNRESET);
    snprintf(want, sizeof(want), "connection closed by %s", f.addr);
    CU_ASSERT_STRING_EQUAL(err, want);
    kvs_client_close(c);
    CU_ASSERT_EQUAL(fake_wait(&f), 0);
}

static int serve_garbage(int fd)
{
    static const char junk[] = "%3\r\nwhat\r\n";

    if (!expect_request(fd, 2, get_k) || !send_all(fd, junk, sizeof(junk) - 1))
        return 1;
    return 0;
}

static void test_client_malformed_reply_is_protocol_error(void)
{
    struct fake f;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply rep;
    char err[256], want[128];
    int rc = one_command(serve_garbage, 5000, &rep, err, sizeof(err), &f, &c);

    CU_ASSERT_EQUAL(rc, KVS_EPROTO);
    snprintf(want, sizeof(want), "bad reply from %s: Protocol error: unknown reply type", f.addr);
    CU_ASSERT_STRING_EQUAL(err, want);
    kvs_client_close(c);
    CU_ASSERT_EQUAL(fake_wait(&f), 0);
}

static int serve_silence(int fd)
{
    char b[64];

    if (!expect_request(fd, 2, get_k))
        return 1;
    /* Never answer; wait for the client to give up and close. */
    while (recv(fd, b, sizeof(b), 0) > 0)
        ;
    return 0;
}

static void test_client_silent_server_times_out(void)
{
    struct fake f;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply rep;
    char err[256], want[64];
    int rc = one_command(serve_silence, 100, &rep, err, sizeof(err), &f, &c);

    CU_ASSERT_EQUAL(rc, -ETIMEDOUT);
    snprintf(want, sizeof(want), "timed out waiting for %s", f.addr);
    CU_ASSERT_STRING_EQUAL(err, want);
    kvs_client_close(c);
    CU_ASSERT_EQUAL(fake_wait(&f), 0);
}

static void test_client_refused_connection_message(void)
{
    struct kvs_client *c = NULL;
    char err[256], want[128], addr[32];
    int port = 0;
    int fd = listen_any(&port);
    int rc;

    CU_ASSERT_FATAL(fd >= 0);
    /* The port was just free and is closed again: nobody listens there. */
    close(fd);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    rc = kvs_client_open(&c, addr, 2000, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, -ECONNREFUSED);
    CU_ASSERT(c == NULL);
    snprintf(want, sizeof(want), "cannot connect to %s: Connection refused", addr);
    CU_ASSERT_STRING_EQUAL(err, want);
}

static void test_client_malformed_addresses_are_einval(void)
{
    static const char *const bad[] = {"nohost",      "127.0.0.1",      "127.0.0.1:", ":4000",
                                      "::1:4000",    "127.0.0.1:40x0", "[]:4000",    "127.0.0.1:+1",
                                      "127.0.0.1:0", "127.0.0.1:65536"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct kvs_client *c = NULL;
        char err[256], want[128];

        CU_ASSERT_EQUAL(kvs_client_open(&c, bad[i], 100, err, sizeof(err)), -EINVAL);
        CU_ASSERT(c == NULL);
        snprintf(want, sizeof(want), "invalid address '%s' (expected IP:PORT)", bad[i]);
        CU_ASSERT_STRING_EQUAL(err, want);
    }
    /* A NULL message buffer is allowed. */
    {
        struct kvs_client *c = NULL;

        CU_ASSERT_EQUAL(kvs_client_open(&c, "nohost", 100, NULL, 0), -EINVAL);
    }
    kvs_client_close(NULL);
}

void test_client_register(void);

void test_client_register(void)
{
    CU_pSuite s = CU_add_suite("client", NULL, NULL);

    CU_add_test(s, "test_client_reply_dribbled_byte_by_byte",
                test_client_reply_dribbled_byte_by_byte);
    CU_add_test(s, "test_client_large_reply_arrives_whole", test_client_large_reply_arrives_whole);
    CU_add_test(s, "test_client_error_reply_then_next_command",
                test_client_error_reply_then_next_command);
    CU_add_test(s, "test_client_server_closing_mid_reply_is_reported",
                test_client_server_closing_mid_reply_is_reported);
    CU_add_test(s, "test_client_malformed_reply_is_protocol_error",
                test_client_malformed_reply_is_protocol_error);
    CU_add_test(s, "test_client_silent_server_times_out", test_client_silent_server_times_out);
    CU_add_test(s, "test_client_refused_connection_message",
                test_client_refused_connection_message);
    CU_add_test(s, "test_client_malformed_addresses_are_einval",
                test_client_malformed_addresses_are_einval);
}
