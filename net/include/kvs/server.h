/* SPDX-License-Identifier: MIT */
/*
 * kvs-server as a library: per-core shards (one pinned thread, one io_uring, one engine, one
 * slice of the keyspace each) serving the Redis protocol on one TCP address. cli/kvs_server.c
 * parses options into struct kvs_server_config and calls kvs_server_run(); docs/server.md
 * describes the threading model, docs/operations.md the options.
 */
#ifndef KVS_NET_SERVER_H
#define KVS_NET_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs/engine.h"

/* Format version of the data directory layout written by the server (the meta file and the
 * shard-NNN sub-directories), independent of the engine's own record format. */
#define KVS_SERVER_DIR_FORMAT 1

/* Most shards a data directory can have (shard-NNN names). */
#define KVS_SERVER_MAX_SHARDS 256

struct kvs_server_config {
    const char *addr;             /* "IP:PORT" or "[IPv6]:PORT"; default "127.0.0.1:4000" */
    const char *dir;              /* data directory; default "." */
    const char *engine;           /* engine name; only KVS_ENGINE_NAME exists */
    unsigned shards;              /* 0: one per CPU in the affinity mask */
    enum kvs_fsync fsync;         /* default KVS_FSYNC_EVERYSEC */
    unsigned max_clients;         /* connections across all shards; default 10000 */
    size_t max_bulk;              /* longest bulk string in a request; default 512 MiB */
    size_t max_args;              /* most arguments in one request; default 1048576 */
    size_t max_inline;            /* longest inline request line; default 64 KiB */
    uint32_t max_key;             /* longest key; default 64 KiB */
    uint64_t max_value;           /* longest value; default 512 MiB */
    size_t max_output;            /* unsent reply bytes per connection before its input is paused;
                                     default 64 MiB */
    unsigned max_pipeline;        /* requests in progress per connection before its input is paused;
                                     default 256 */
    unsigned shutdown_timeout_ms; /* how long shutdown waits for slow clients; default 10000 */
    uint64_t compact_rate;        /* bytes/s each shard's compaction may read; 0 = no limit */
    bool salvage;     /* open stores past bad records in older segments (see docs/operations.md) */
    bool repartition; /* a directory with another shard count is re-partitioned to shards */
};

/* kvs_server_config_init - fill *cfg with the defaults above. */
void kvs_server_config_init(struct kvs_server_config *cfg);

/*
 * kvs_server_run - check and record the data directory, bind the address, start the shards and
 * serve until SIGINT or SIGTERM; then stop accepting, answer requests in flight, flush and
 * fdatasync every shard, and return. Must be called from the main thread before any other
 * thread exists: it blocks SIGINT/SIGTERM/SIGUSR1 for every thread and waits for them itself,
 * and ignores SIGPIPE. Messages for the operator go to the log (kvs/log.h).
 *
 * Returns 0 after a clean shutdown; -EADDRINUSE (the address is taken, by another kvs-server
 * too), KVS_ELOCKED (another server uses the directory), KVS_EFORMAT (the directory was made
 * with another engine, format or shard count: the log says what to do), -EINVAL (bad config),
 * or another -errno / KVS_E* code from start-up or a shard failing.
 *
 * Two returns leave shard threads running, on purpose: -EINTR (a second SIGINT/SIGTERM asked
 * for an immediate exit) and -ETIMEDOUT (after a shard failed, the others did not stop in
 * time). The caller must then end the process at once with _exit(); the server's memory is
 * left in place for the threads until then.
 */
int kvs_server_run(const struct kvs_server_config *cfg);

#endif
