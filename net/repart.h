/* SPDX-License-Identifier: MIT */
/*
 * Offline re-partitioning of a data directory to another shard count, for server.c. Runs on
 * the main thread at start-up, with the directory locked and no shard running; uses the
 * engine's synchronous API. See docs/server.md, "Re-partitioning".
 */
#ifndef KVS_NET_REPART_H
#define KVS_NET_REPART_H

#include <stdbool.h>

#include "kvs/server.h"

/*
 * repart_copy - copy every key of dir/shard-000 .. shard-(old_n-1) into new shards
 * dir/repartition-new/shard-000 .. (new_n-1), placed by fast-range over new_n, then fdatasync
 * them and check that the key counts match. The old shards are only read. Returns 0, or a
 * negative error (logged) after removing the staging directory.
 */
int repart_copy(const char *dir, const struct kvs_server_config *cfg, unsigned old_n,
                unsigned new_n);

/*
 * repart_swap - move the old shards into dir/repartition-old and the staged ones into their
 * place. Idempotent: safe to run again after a crash at any point. 0 or -errno.
 */
int repart_swap(const char *dir, unsigned old_n, unsigned new_n);

/* repart_cleanup - remove dir/repartition-new and dir/repartition-old if present (with a
 * warning about the first when warn is set: it means a copy was interrupted). 0 or -errno. */
int repart_cleanup(const char *dir, bool warn);

#endif
