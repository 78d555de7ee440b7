/* SPDX-License-Identifier: MIT */
/*
 * A small blocking RESP2 client: one TCP connection to a kvs-server (or any Redis-protocol
 * server), one command at a time, each wait bounded by a timeout. It backs kvs-client and
 * tests; it is not for the server's data path, which never blocks.
 *
 * The client owns its socket and two byte buffers; it keeps no global state, so separate
 * clients may be used from separate threads, but one client only from one thread at a time.
 */
#ifndef KVS_NET_CLIENT_H
#define KVS_NET_CLIENT_H

#include <stddef.h>

#include "kvs/resp.h"

/* The address kvs-client uses when none is given. */
#define KVS_CLIENT_DEFAULT_ADDR "127.0.0.1:4000"

struct kvs_client;

/*
 * kvs_client_open - connect to addr, "IP:PORT" ("127.0.0.1:4000", "[::1]:4000") or
 * "HOST:PORT", waiting at most timeout_ms for the connection (<= 0: no limit). The same
 * timeout later bounds each wait for the socket while sending or receiving.
 *
 * On success returns 0 and stores the client in *out. On failure returns -EINVAL (addr is not
 * HOST:PORT), -ETIMEDOUT, another -errno from socket/connect, or -ENOMEM; *out is untouched and,
 * when err is not NULL, err receives a NUL-terminated message of at most errlen bytes naming
 * the address and the cause, e.g. "cannot connect to 127.0.0.1:4000: Connection refused".
 */
int kvs_client_open(struct kvs_client **out, const char *addr, int timeout_ms, char *err,
                    size_t errlen);

/* kvs_client_close - close the connection and free the client. NULL is fine. */
void kvs_client_close(struct kvs_client *c);

/*
 * kvs_client_command - send one command of argc arguments (argv[i] holds argvlen[i] bytes; with
 * argvlen NULL each argv[i] is a C string) and wait for its reply.
 *
 * Returns 0 with *reply filled when a whole reply arrived, whatever its type: a server error
 * is a KVS_RESP_ERROR reply, not a failure. The reply's views point into the client's buffer
 * and stay valid until the next call on c or kvs_client_close(). Returns a negative code when
 * the exchange failed: -ETIMEDOUT, -ECONNRESET (the server closed the connection), another
 * -errno from send/recv, -ENOMEM, -EINVAL (argc <= 0) or KVS_EPROTO (the reply broke the
 * protocol). kvs_client_error() then describes it. After a failure other than -EINVAL the
 * connection is out of step with the server: close it.
 */
int kvs_client_command(struct kvs_client *c, int argc, const char *const *argv,
                       const size_t *argvlen, struct kvs_resp_reply *reply);

/* kvs_client_error - the message of the last failure on c ("" if none); valid until the next
 * call on c. */
const char *kvs_client_error(const struct kvs_client *c);

#endif
