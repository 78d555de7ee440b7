/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the unit tests: temporary directories that are removed afterwards, a
 * small deterministic random generator so that every run sees the same "random" data, opening
 * a store, and skipping a suite where io_uring is unavailable.
 */
#ifndef KVS_TESTS_TUTIL_H
#define KVS_TESTS_TUTIL_H

#include <stddef.h>
#include <stdint.h>

#include <CUnit/CUnit.h>

struct kvs_engine;
struct kvs_engine_options;

/* tutil_mkdtemp - create a fresh directory under $TMPDIR (or /tmp); returns a malloc'ed path
 * the caller frees with tutil_rmtree(). Aborts the test program if it cannot. */
char *tutil_mkdtemp(const char *tag);

/* tutil_rmtree - remove path and everything below it, then free path. NULL is fine. */
void tutil_rmtree(char *path);

/* tutil_rand - xorshift64* generator; *state must start non-zero. */
uint64_t tutil_rand(uint64_t *state);

/* tutil_fill - fill buf with len pseudo-random bytes from *state. */
void tutil_fill(uint64_t *state, void *buf, size_t len);

/* tutil_dir_bytes - total size of the regular files directly in dir, or -1. */
long long tutil_dir_bytes(const char *dir);

/* tutil_open - open the store in dir with opt; prints the error and stops the test (fatal
 * assertion) if it cannot. */
struct kvs_engine *tutil_open(const char *dir, const struct kvs_engine_options *opt);

/* tutil_need_ring - call at the end of a suite's registration: if no io_uring can be set up
 * here, say so and deactivate suite s (named name in the message). */
void tutil_need_ring(CU_pSuite s, const char *name);

#endif
