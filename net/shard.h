/* SPDX-License-Identifier: MIT */
/*
 * Internal to net/: the shard, its connections, requests and key operations, shared by the
 * loop (shard.c), the command table (cmd.c) and start-up (server.c).
 *
 * Ownership: everything reachable from a struct shard belongs to that shard's thread, except
 * (a) its inboxes, which peers push into through msg.h, and (b) a struct op lent to the owner
 * shard of its key between a MSG_OP and the MSG_DONE that returns it. See docs/server.md.
 */
#ifndef KVS_NET_SHARD_H
#define KVS_NET_SHARD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "kvs/engine.h"
#include "kvs/resp.h"
#include "kvs/ring.h"
#include "kvs/server.h"
#include "msg.h"

struct shard;
struct conn;
struct req;

/* Slots in each inbox ring: deep enough that a burst of forwarded ops from one peer rarely
 * spills into the producer's overflow queue. */
#define SHARD_INBOX_SLOTS 16384

/* Message types between shards (struct msg.type). */
enum {
    MSG_OP = 1,  /* ptr: struct op lent to the owner to execute */
    MSG_DONE,    /* ptr: the struct op given back, results filled in */
    MSG_FREE,    /* ptr: a result buffer the owner allocated; the owner frees it */
    MSG_DRAINED, /* the sender finished shutting down its clients and will send nothing more */
};

/* Values sent with kvs_ring_msg() to a shard's watch op. */
enum {
    WAKE_MSG = 0,  /* new messages in an inbox */
    WAKE_STOP = 1, /* shut down (from the main thread) */
};

/* What an op does on the owner shard. */
enum op_kind {
    OP_GET = 1,
    OP_SET,    /* flags: OPF_NX, OPF_XX, OPF_GET */
    OP_DEL,    /* ival: 1 if the key existed */
    OP_EXISTS, /* ival: 1 or 0 */
    OP_STRLEN, /* ival */
    OP_INCRBY, /* arg: delta; ival: new value */
    OP_APPEND, /* ival: new length */
    /* Shard-wide operations: sent to every shard (or one, for SCAN), no key. */
    OP_DBSIZE,  /* ival */
    OP_KEYS,    /* pattern in key; rval: encoded bulks, rcount */
    OP_SCAN,    /* cursor, arg: count, pattern in key (klen 0 = all); rval, rcount, cursor */
    OP_FLUSH,   /* remove every key */
    OP_STATS,   /* fills stats */
    OP_COMPACT, /* status 0 or -EBUSY */
};

#define OPF_NX    1u
#define OPF_XX    2u
#define OPF_GET   4u
#define OPF_MATCH 8u /* OP_KEYS, OP_SCAN: only keys matching the pattern in key/klen */

/* Op results beyond the engine's codes. */
#define OP_ENOTINT   (-5000) /* the value is not an integer */
#define OP_EOVERFLOW (-5001) /* increment would overflow */
#define OP_ENOTDONE  (-5002) /* SET NX/XX condition not met */

/* Per-shard figures reported by INFO (filled by the owner of the figures). */
struct shard_stats {
    struct kvs_engine_stats engine;
    uint64_t clients, connections, commands, ops_forwarded, ops_received;
    uint64_t net_in, net_out, rejected, paused;
    uint64_t mem_trims; /* malloc_trim calls after bursts of large values (shard_trim) */
};

/*
 * One operation on one key (or on one whole shard), allocated by the shard that parsed the
 * request (the origin) and lent to the key's owner until it comes back in MSG_DONE. Fields
 * above "results" are written by the origin before lending; the owner writes the results and
 * may use wait_next while it holds the op. rval is allocated by the owner and freed by it (the
 * origin sends it back with MSG_FREE when the owner is another shard).
 */
struct op {
    uint8_t kind;
    uint8_t flags;
    uint16_t origin, owner;
    struct req *req;
    struct op *wait_next; /* owner: queue of ops waiting for a key lock */
    uint64_t hash;        /* XXH3_64 of the key */
    int64_t arg;
    uint64_t cursor;
    char *key, *val; /* point into data[] */
    size_t klen, vlen;
    /* results */
    int status;
    int64_t ival;
    char *rval;
    size_t rlen;
    bool rval_borrowed; /* rval is the engine's view, valid only until finish has run */
    uint64_t rcount;
    struct shard_stats *stats; /* OP_STATS: lent storage in data[] */
    struct shard *xsh;         /* owner: the executing shard, for engine callbacks */
    char data[];
};

/* Encodes a request's reply once all its ops are done; writes to req_reply_buf(). */
typedef void (*req_finish_fn)(struct shard *sh, struct req *req);

/*
 * One client request in progress. Replies leave a connection in request order: a request
 * that completes while an earlier one is still pending keeps its reply in its own buffer
 * until every earlier one has gone out (shard.c: conn_advance).
 */
struct req {
    struct conn *conn;
    struct req *next;
    struct kvs_buf reply; /* used only when the request is not at the head of its queue */
    unsigned pending;     /* ops not yet done (+1 while dispatching) */
    bool done;
    bool dispatched; /* ops were started: the reply comes from finish */
    req_finish_fn finish;
    struct op **ops;
    unsigned nops, cap_ops;
    struct op *inline_ops[4];
    int64_t aux; /* per-command scratch */
};

struct conn {
    struct shard *sh;
    int fd;
    uint64_t id;
    unsigned refs; /* ring ops in flight + requests not yet finished + 1 while open */
    int recv_op;   /* multishot recv op id, or -1 when not armed */
    int send_op;   /* send op id while send_inflight */
    bool send_inflight;
    bool eof;         /* the peer closed its side: no more input */
    bool close_after; /* QUIT or protocol error: close once the replies are out */
    bool closed;      /* fd shut; replies are discarded */
    bool paused;      /* backpressure: input not read or processed */
    bool dirty;       /* on the shard's list of connections to send */
    bool in_proc;     /* inside conn_process_input (no re-entry) */
    bool dispatched;  /* the request being executed dispatched ops */
    struct conn *dirty_next;
    struct conn *prev, *next; /* all open connections of the shard */
    struct kvs_buf in;        /* received bytes not yet parsed */
    size_t need;              /* bytes the unparsed rest must reach before parsing again */
    struct kvs_buf out;       /* replies in order, not yet handed to the kernel */
    struct kvs_buf sending;   /* bytes of the send in flight */
    size_t sent;
    size_t held;               /* bytes of finished replies waiting behind earlier requests */
    struct req *qhead, *qtail; /* requests in arrival order */
    unsigned nreqs;
    struct kvs_resp_request parser;
    struct kvs_resp_arg *argv;
    size_t argv_cap;
    char *name; /* CLIENT SETNAME, NUL-terminated, or NULL */
    time_t created;
};

struct keylock;

struct shard {
    unsigned id;
    struct server *srv;
    pthread_t thread;
    int cpu; /* CPU to pin to, or -1 */
    struct kvs_ring *ring;
    struct kvs_engine *engine;
    struct kvs_bufring *bufring;
    int listen_fd;
    int accept_op;
    int watch_op;
    bool accept_retry;        /* accept stopped on EMFILE & co: re-arm after a pause */
    bool accept_failing;      /* that condition was logged; cleared by a good accept */
    uint64_t accept_retry_ns; /* CLOCK_MONOTONIC time of the re-arm */
    uint64_t big_freed;       /* bytes of large op buffers freed since the last trim */
    uint64_t trim_ns;         /* CLOCK_MONOTONIC time before which no trim runs */
    /* Published before the shards start talking (start-up barrier), read-only afterwards. */
    int ring_fd;
    uint64_t watch_tag;
    int start_err;
    char start_msg[256];
    /* Cross-shard messaging: inbox[j] receives from shard j; outbox[j] queues towards j. */
    struct msg_ring *inbox;
    struct msg_outbox *outbox;
    bool *wake;
    /* Connections. */
    struct conn *conns;
    struct conn *dirty;
    uint64_t next_client;
    /* Key locks: read-modify-write ops in progress, by key. */
    struct keylock **locks;
    size_t nlocks_mask;
    /* Counters (only this thread writes them; INFO reads them through OP_STATS). */
    struct shard_stats st;
    /* Shutdown. */
    bool stopping;
    bool drained_sent;
    unsigned peers_drained;
    uint64_t remote_out; /* ops lent to peers, not yet back */
    uint64_t reqs_live;  /* requests allocated and not yet freed */
    uint64_t conns_live; /* connections allocated and not yet freed */
    bool exit_loop;
    int fail;
    uint64_t stop_deadline_ns;
};

/* The whole server: configuration and the shards. */
struct server {
    struct kvs_server_config cfg;
    char addr_host[64];
    int port;
    int family;
    unsigned nshards;
    struct shard **shards;
    atomic_uint clients; /* connected clients, all shards: read and updated at accept/close only */
    time_t started;
    pthread_t main_thread;
    struct kvs_resp_limits limits;
    pthread_barrier_t barrier; /* start-up: shards ready, then main's verdict */
    bool abort_start;          /* written by main between the two barrier waits */
};

/* server_open_listener - a listening TCP socket on the server's address with SO_REUSEADDR and
 * SO_REUSEPORT (server.c). Returns the fd or -errno; msg gets a reason on failure. */
int server_open_listener(const struct server *srv, char *msg, size_t msglen);

/* server_shard_failed_mt - a shard thread hit a fatal error: ask the main thread to stop. */
void server_shard_failed_mt(struct server *srv);

/* shard_of - owner shard of a key: fast-range of XXH3_64 into nshards. */
unsigned shard_of(uint64_t hash, unsigned nshards);

/* shard_main - the shard thread's body (pthread start routine); arg is the struct shard. */
void *shard_main(void *arg);

/* ---- used by cmd.c ---- */

/* req_reply_buf - where a finished request writes its reply (the connection's output when it
 * is at the head of the queue, else its own buffer). */
struct kvs_buf *req_reply_buf(struct req *req);

/*
 * req_add_op - add an op of kind on key (copied) with optional value (copied) to req. For
 * shard-wide kinds pass the target shard in owner (key may hold a pattern). Returns the op or
 * NULL when out of memory.
 */
struct op *req_add_op(struct shard *sh, struct req *req, enum op_kind kind, const void *key,
                      size_t klen, const void *val, size_t vlen, int owner);

/* req_dispatch - start every op of req; finish runs when the last is done (maybe at once). */
void req_dispatch(struct shard *sh, struct req *req, req_finish_fn finish);

/* conn_close_after_reply - close the connection once its replies have been sent. */
void conn_close_after_reply(struct conn *c);

/* ---- cmd.c ---- */

/* cmd_execute - run one parsed request; writes its reply now or dispatches ops. */
void cmd_execute(struct shard *sh, struct req *req, size_t argc, struct kvs_resp_arg *argv);

/* cmd_glob_match - Redis glob semantics (* ? [a-z] [^x] \x), bytes, optional nocase. */
bool cmd_glob_match(const char *pat, size_t plen, const char *str, size_t slen, bool nocase);

/* cmd_parse_i64 - strict decimal integer as Redis accepts it (no spaces, no '+', no leading
 * zeros). Returns true and fills *out on success. */
bool cmd_parse_i64(const char *s, size_t len, int64_t *out);

#endif
