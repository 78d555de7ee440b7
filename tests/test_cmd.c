/* SPDX-License-Identifier: MIT */
/*
 * Tests of the server's pure helpers in net/cmd.c and net/shard.c: Redis glob matching (KEYS,
 * SCAN MATCH, CONFIG GET), Redis's strict integer parsing (INCRBY, SELECT), and the key to
 * shard mapping (fast-range).
 */
#include <stdint.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "shard.h"
#include "tutil.h"

void test_cmd_register(void);

static bool gm(const char *pat, const char *s)
{
    return cmd_glob_match(pat, strlen(pat), s, strlen(s), false);
}

static void test_cmd_glob_matches_like_redis(void)
{
    CU_ASSERT_TRUE(gm("*", ""));
    CU_ASSERT_TRUE(gm("*", "anything"));
    CU_ASSERT_TRUE(gm("h?llo", "hello"));
    CU_ASSERT_FALSE(gm("h?llo", "hllo"));
    CU_ASSERT_TRUE(gm("h*llo", "hllo"));
    CU_ASSERT_TRUE(gm("h*llo", "heeeello"));
    CU_ASSERT_TRUE(gm("h[ae]llo", "hallo"));
    CU_ASSERT_FALSE(gm("h[ae]llo", "hillo"));
    CU_ASSERT_TRUE(gm("h[^e]llo", "hallo"));
    CU_ASSERT_FALSE(gm("h[^e]llo", "hello"));
    CU_ASSERT_TRUE(gm("h[a-b]llo", "hbllo"));
    CU_ASSERT_TRUE(gm("h[b-a]llo", "hbllo")); /* reversed range, as Redis */
    CU_ASSERT_FALSE(gm("h[a-b]llo", "hcllo"));
    CU_ASSERT_TRUE(gm("a\\*b", "a*b"));
    CU_ASSERT_FALSE(gm("a\\*b", "axb"));
    CU_ASSERT_TRUE(gm("[\\]]", "]"));
    CU_ASSERT_TRUE(gm("user:*:name", "user:42:name"));
    CU_ASSERT_FALSE(gm("user:*:name", "user:42:mail"));
    CU_ASSERT_TRUE(gm("*a*b*c", "xxaxxbxxc"));
    CU_ASSERT_FALSE(gm("*a*b*c", "xxaxxbxx"));
    CU_ASSERT_FALSE(gm("abc", "abcd"));
    CU_ASSERT_TRUE(gm("abc*", "abc"));
    CU_ASSERT_TRUE(cmd_glob_match("APPEND*", 7, "appendonly", 10, true));
    CU_ASSERT_FALSE(cmd_glob_match("APPEND*", 7, "appendonly", 10, false));
    /* Binary bytes, NUL included. */
    CU_ASSERT_TRUE(cmd_glob_match("a?c", 3, "a\0c", 3, false));
}

/* A pattern that makes a naive recursive matcher exponential must still finish at once. */
static void test_cmd_glob_is_not_exponential(void)
{
    char pat[128], str[128];

    for (int i = 0; i < 60; i += 2) {
        pat[i] = 'a';
        pat[i + 1] = '*';
    }
    pat[60] = 'b';
    memset(str, 'a', 100);
    CU_ASSERT_FALSE(cmd_glob_match(pat, 61, str, 100, false));
}

static void test_cmd_parse_i64_is_strict(void)
{
    int64_t v;

    CU_ASSERT_TRUE(cmd_parse_i64("0", 1, &v) && v == 0);
    CU_ASSERT_TRUE(cmd_parse_i64("-17", 3, &v) && v == -17);
    CU_ASSERT_TRUE(cmd_parse_i64("9223372036854775807", 19, &v) && v == INT64_MAX);
    CU_ASSERT_TRUE(cmd_parse_i64("-9223372036854775808", 20, &v) && v == INT64_MIN);
    CU_ASSERT_FALSE(cmd_parse_i64("9223372036854775808", 19, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("-9223372036854775809", 20, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("", 0, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("-", 1, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("-0", 2, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("01", 2, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("+1", 2, &v));
    CU_ASSERT_FALSE(cmd_parse_i64(" 1", 2, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("1 ", 2, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("1a", 2, &v));
    CU_ASSERT_FALSE(cmd_parse_i64("1\0", 2, &v));
}

/* fast-range must cover every shard, stay in range, and spread keys roughly evenly. */
static void test_cmd_shard_of_spreads_keys(void)
{
    uint64_t seed = 12345;
    unsigned counts[7] = {0};

    CU_ASSERT_EQUAL(shard_of(0, 7), 0);
    CU_ASSERT_EQUAL(shard_of(UINT64_MAX, 7), 6);
    CU_ASSERT_EQUAL(shard_of(UINT64_MAX, 1), 0);
    CU_ASSERT_EQUAL(shard_of(UINT64_MAX / 2, 2), 0);
    CU_ASSERT_EQUAL(shard_of(UINT64_MAX / 2 + 1, 2), 1);
    for (int i = 0; i < 70000; i++) {
        unsigned s = shard_of(tutil_rand(&seed), 7);

        CU_ASSERT_FATAL(s < 7);
        counts[s]++;
    }
    for (int s = 0; s < 7; s++) {
        CU_ASSERT(counts[s] > 9000);
        CU_ASSERT(counts[s] < 11000);
    }
}

void test_cmd_register(void)
{
    CU_pSuite s = CU_add_suite("cmd", NULL, NULL);

    CU_add_test(s, "glob_matches_like_redis", test_cmd_glob_matches_like_redis);
    CU_add_test(s, "glob_is_not_exponential", test_cmd_glob_is_not_exponential);
    CU_add_test(s, "parse_i64_is_strict", test_cmd_parse_i64_is_strict);
    CU_add_test(s, "shard_of_spreads_keys", test_cmd_shard_of_spreads_keys);
}
