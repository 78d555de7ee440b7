/* SPDX-License-Identifier: MIT */
/*
 * The blocking RESP2 client declared in kvs/client.h: address parsing, connect with a timeout,
 * then one request out and one reply in per call, using the encoder and the reply parser of
 * net/resp.c. The socket stays non-blocking and every wait goes through poll() so that one
 * timeout bounds connect, send and receive alike.
 *
 * It owns its socket and buffers, and nothing else; it must not be used on a shard thread,
 * whose loop may never block.
 */
#include "kvs/client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvs/error.h"

/* Receive at least this much per recv() when the parser cannot say how much it needs. */
#define RECV_CHUNK (16 * 1024)

struct kvs_client {
    int fd;
    int timeout_ms;
    struct kvs_buf out; /* the request being sent */
    struct kvs_buf in;  /* received bytes; the last reply sits at its start */
    size_t reply_len;   /* bytes of the last reply, dropped at the next command */
    struct kvs_resp_limits lim;
    char addr[128];
    char err[256];
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*
 * Split "HOST:PORT" or "[HOST]:PORT" into host and port. The last colon separates the port so
 * that a bare IPv6 address needs brackets, as in URLs. Returns 0 or -EINVAL.
 */
static int split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon = strrchr(addr, ':');
    const char *h = addr;
    long pnum = 0;
    size_t hl;

    if (colon == NULL || colon[1] == '\0' || strlen(colon + 1) >= portlen)
        return -EINVAL;
    hl = (size_t)(colon - addr);
    if (hl >= 2 && addr[0] == '[' && addr[hl - 1] == ']') {
        h = addr + 1;
        hl -= 2;
    }
    if (hl == 0 || hl >= hostlen)
        return -EINVAL;
    /* An unbracketed host with a colon is an IPv6 address whose port cannot be told apart. */
    if (h == addr && memchr(h, ':', hl) != NULL)
        return -EINVAL;
    for (const char *p = colon + 1; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        pnum = pnum * 10 + (*p - '0');
        if (pnum > 65535)
            return -EINVAL;
    }
    if (pnum == 0)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memcpy(port, colon + 1, strlen(colon + 1) + 1);
    return 0;
}

/* Wait until fd is ready for events, at most timeout_ms (<= 0: forever). 0, -ETIMEDOUT or
 * -errno. */
static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    int n;

    do {
        n = poll(&pfd, 1, timeout_ms > 0 ? timeout_ms : -1);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -ETIMEDOUT;
    return 0;
}

/* Connect one socket to one resolved address, non-blocking, bounded by timeout_ms. Returns
 * the fd or -errno. */
static int connect_one(const struct addrinfo *ai, int timeout_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    int one = 1;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    int rc;

    if (fd < 0)
        return -errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) {
            rc = -errno;
            goto err;
        }
        rc = wait_fd(fd, POLLOUT, timeout_ms);
        if (rc < 0)
            goto err;
        /* Writability only says the attempt ended; SO_ERROR says how. */
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
            rc = -errno;
            goto err;
        }
        if (soerr != 0) {
            rc = -soerr;
            goto err;
        }
    }
    /* Commands are small and strictly request/reply: Nagle would only add delay. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
err:
    close(fd);
    return rc;
}

int kvs_client_open(struct kvs_client **out, const char *addr, int timeout_ms, char *err,
                    size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    struct kvs_client *c = NULL;
    char host[256], port[16];
    int fd = -EHOSTUNREACH; /* only kept if getaddrinfo() returned an empty list */
    int rc;

    if (split_addr(addr, host, sizeof(host), port, sizeof(port)) < 0) {
        set_err(err, errlen, "invalid address '%s' (expected IP:PORT)", addr);
        return -EINVAL;
    }
    /* Numeric addresses resolve without any lookup; a host name goes through the resolver,
     * which has its own timeouts (resolv.conf), not ours. */
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        set_err(err, errlen, "cannot connect to %s: %s", addr, gai_strerror(rc));
        return rc == EAI_MEMORY ? -ENOMEM : -EHOSTUNREACH;
    }
    /* Try each address in turn, keeping the first error if none works. */
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int r = connect_one(ai, timeout_ms);

        if (r >= 0) {
            fd = r;
            break;
        }
        if (ai == res)
            fd = r;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        set_err(err, errlen, "cannot connect to %s: %s", addr, strerror(-fd));
        return fd;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        set_err(err, errlen, "cannot connect to %s: %s", addr, strerror(ENOMEM));
        return -ENOMEM;
    }
    /* The socket stays non-blocking: every wait is a poll() bounded by the timeout. */
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    kvs_buf_init(&c->out);
    kvs_buf_init(&c->in);
    kvs_resp_limits_default(&c->lim);
    /* Kept for messages: the user's own spelling of the address, not the resolved one. */
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    *out = c;
    return 0;
}

void kvs_client_close(struct kvs_client *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    kvs_buf_fini(&c->out);
    kvs_buf_fini(&c->in);
    free(c);
}

const char *kvs_client_error(const struct kvs_client *c)
{
    return c->err;
}

/* Record the message for a failed exchange: "<what> <addr>: <cause>", with plainer wording
 * for the two failures a user meets most. Returns rc. */
static int fail(struct kvs_client *c, int rc, const char *what)
{
    if (rc == -ECONNRESET)
        snprintf(c->err, sizeof(c->err), "connection closed by %s", c->addr);
    else if (rc == -ETIMEDOUT)
        snprintf(c->err, sizeof(c->err), "timed out waiting for %s", c->addr);
    else
        snprintf(c->err, sizeof(c->err), "%s %s: %s", what, c->addr, kvs_strerror(rc));
    return rc;
}

/* Send all of c->out, waiting for room as needed. */
static int send_all(struct kvs_client *c)
{
    size_t off = 0;

    while (off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + off, c->out.len - off, MSG_NOSIGNAL);

        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        /* EPIPE means the server closed first: say so rather than "Broken pipe". */
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(c, errno == EPIPE ? -ECONNRESET : -errno, "cannot send to");
        n = wait_fd(c->fd, POLLOUT, c->timeout_ms);
        if (n < 0)
            return fail(c, (int)n, "cannot send to");
    }
    return 0;
}

int kvs_client_command(struct kvs_client *c, int argc, const char *const *argv,
                       const size_t *argvlen, struct kvs_resp_reply *reply)
{
    int rc;

    c->err[0] = '\0';
    if (argc <= 0) {
        snprintf(c->err, sizeof(c->err), "empty command");
        return -EINVAL;
    }
    /* The previous reply's views end here, as documented. Bytes after it (a server that
     * answered early, or more than asked) stay for this command's reply. */
    kvs_buf_consume(&c->in, c->reply_len);
    c->reply_len = 0;
    c->out.len = 0;
    rc = kvs_resp_append_command(&c->out, argc, argv, argvlen);
    if (rc < 0)
        return fail(c, rc, "cannot send to");
    rc = send_all(c);
    if (rc < 0)
        return rc;
    for (;;) {
        ssize_t r = kvs_resp_parse_reply(c->in.p, c->in.len, &c->lim, reply);
        size_t want;

        if (r > 0) {
            c->reply_len = (size_t)r;
            return 0;
        }
        if (r < 0) {
            snprintf(c->err, sizeof(c->err), "bad reply from %s: %s", c->addr,
                     reply->err != NULL ? reply->err : "protocol error");
            return (int)r;
        }
        /* Size the buffer for the whole announced bulk at once, so a large value is received
         * without re-parsing its header per chunk. need is bounded by the parser's limits,
         * and the server is the one peer this client trusts to announce sizes. */
        want = reply->need - c->in.len;
        if (want < RECV_CHUNK)
            want = RECV_CHUNK;
        rc = kvs_buf_reserve(&c->in, want);
        if (rc < 0)
            return fail(c, rc, "cannot receive from");
        r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (r > 0) {
            c->in.len += (size_t)r;
            continue;
        }
        /* End of stream before a whole reply: the server closed (or crashed) mid-way. */
        if (r == 0)
            return fail(c, -ECONNRESET, "cannot receive from");
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(c, -errno, "cannot receive from");
        rc = wait_fd(c->fd, POLLIN, c->timeout_ms);
        if (rc < 0)
            return fail(c, rc, "cannot receive from");
    }
}
