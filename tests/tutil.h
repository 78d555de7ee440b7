/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the unit tests: temporary directories that are removed afterwards, and a
 * small deterministic random generator so that every run sees the same "random" data.
 */
#ifndef KVS_TESTS_TUTIL_H
#define KVS_TESTS_TUTIL_H

#include <stddef.h>
#include <stdint.h>

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

#endif
