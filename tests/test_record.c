/* SPDX-License-Identifier: MIT */
/*
 * Suite "record": the byte encodings of docs/format.md. Record round trip and layout,
 * checksum failure on any flipped byte, implausible headers rejected, hint file round trip
 * and damage detection, the format file and the merge marker.
 */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "record.h"

static void test_record_layout_and_round_trip(void)
{
    uint8_t buf[64];
    struct record_hdr h;

    record_encode(buf, 0x0102030405ULL, 0, "key", 3, "value", 5);
    /* Little-endian fixed header: seq at 8, klen at 16, vlen at 20, flags at 24. */
    CU_ASSERT_EQUAL(buf[8], 0x05);
    CU_ASSERT_EQUAL(buf[12], 0x01);
    CU_ASSERT_EQUAL(buf[16], 3);
    CU_ASSERT_EQUAL(buf[20], 5);
    CU_ASSERT_EQUAL(buf[24], 0);
    CU_ASSERT_EQUAL(memcmp(buf + RECORD_HDR, "keyvalue", 8), 0);
    CU_ASSERT(record_decode_hdr(buf, &h));
    CU_ASSERT_EQUAL(h.seq, 0x0102030405ULL);
    CU_ASSERT_EQUAL(h.klen, 3);
    CU_ASSERT_EQUAL(h.vlen, 5);
    CU_ASSERT_EQUAL(h.flags, 0);
    CU_ASSERT(record_verify(buf, &h));
    CU_ASSERT_EQUAL(record_size(3, 5), 36);
}

static void test_record_any_flipped_byte_fails(void)
{
    uint8_t buf[64];
    size_t n = (size_t)record_size(4, 10);

    record_encode(buf, 7, 0, "abcd", 4, "0123456789", 10);
    for (size_t i = 0; i < n; i++) {
        struct record_hdr h;

        buf[i] ^= 0x01;
        CU_ASSERT_FALSE(record_decode_hdr(buf, &h) && record_size(h.klen, h.vlen) == n &&
                        record_verify(buf, &h));
        buf[i] ^= 0x01;
    }
}

static void test_record_tombstone_and_clear(void)
{
    uint8_t buf[64];
    struct record_hdr h;

    record_encode(buf, 9, RECORD_F_TOMB, "k", 1, NULL, 0);
    CU_ASSERT(record_decode_hdr(buf, &h));
    CU_ASSERT_EQUAL(h.flags, RECORD_F_TOMB);
    CU_ASSERT(record_verify(buf, &h));
    record_encode(buf, 10, RECORD_F_CLEAR, NULL, 0, NULL, 0);
    CU_ASSERT(record_decode_hdr(buf, &h));
    CU_ASSERT(record_verify(buf, &h));
}

static void test_record_implausible_headers_rejected(void)
{
    uint8_t buf[64];
    struct record_hdr h;

    memset(buf, 0, sizeof(buf));
    CU_ASSERT_FALSE(record_decode_hdr(buf, &h)); /* seq 0: zero-filled space is not a record */
    record_encode(buf, 1, 0, "k", 1, "v", 1);
    buf[24] = 0x80; /* unknown flag */
    CU_ASSERT_FALSE(record_decode_hdr(buf, &h));
    record_encode(buf, 1, 0, "k", 1, "v", 1);
    buf[26] = 1; /* reserved byte */
    CU_ASSERT_FALSE(record_decode_hdr(buf, &h));
    record_encode(buf, 1, 0, "k", 1, "v", 1);
    put_u32(buf + 16, RECORD_KEY_LIMIT + 1);
    CU_ASSERT_FALSE(record_decode_hdr(buf, &h));
    record_encode(buf, RECORD_SEQ_MASK + 1, 0, "k", 1, "v", 1);
    CU_ASSERT_FALSE(record_decode_hdr(buf, &h));
    record_encode(buf, 1, RECORD_F_TOMB, "k", 1, "v", 1); /* a tombstone with a value */
    CU_ASSERT_FALSE(record_decode_hdr(buf, &h));
}

static void test_record_hint_round_trip_and_damage(void)
{
    struct hint_buf hb;
    struct hint_entry he;
    size_t pos = HINT_HDR;

    CU_ASSERT_FATAL(hint_init(&hb) == 0);
    CU_ASSERT(hint_add(&hb, 5, 0, 3, 10, 0, "one") == 0);
    CU_ASSERT(hint_add(&hb, 6, 41, 3, 0, RECORD_F_TOMB, "two") == 0);
    CU_ASSERT(hint_finish(&hb, 7, 72) == 0);
    CU_ASSERT_EQUAL(hb.len, HINT_HDR + 2 * (HINT_ENTRY + 3) + HINT_FOOT);
    CU_ASSERT_EQUAL(hint_check(hb.data, hb.len, 7, 72), 2);
    hint_next(hb.data, &pos, &he);
    CU_ASSERT_EQUAL(he.seq, 5);
    CU_ASSERT_EQUAL(he.vlen, 10);
    CU_ASSERT_EQUAL(memcmp(he.key, "one", 3), 0);
    hint_next(hb.data, &pos, &he);
    CU_ASSERT_EQUAL(he.off, 41);
    CU_ASSERT_EQUAL(he.flags, RECORD_F_TOMB);
    /* Wrong segment, wrong size, truncation and any flipped byte all reject the hint. */
    CU_ASSERT_EQUAL(hint_check(hb.data, hb.len, 8, 72), -1);
    CU_ASSERT_EQUAL(hint_check(hb.data, hb.len, 7, 73), -1);
    CU_ASSERT_EQUAL(hint_check(hb.data, hb.len - 1, 7, 72), -1);
    for (size_t i = 0; i < hb.len; i++) {
        hb.data[i] ^= 0x10;
        CU_ASSERT_EQUAL(hint_check(hb.data, hb.len, 7, 72), -1);
        hb.data[i] ^= 0x10;
    }
    hint_fini(&hb);
}

static void test_record_format_and_merge_marker(void)
{
    uint8_t f[FORMAT_FILE_SIZE];
    uint32_t version = 0, ids[3] = {4, 5, 9};
    size_t len = 0;
    uint8_t *m;

    format_encode(f);
    CU_ASSERT_EQUAL(format_check(f, sizeof(f), &version), 0);
    CU_ASSERT_EQUAL(version, RECORD_FORMAT_VERSION);
    f[8] = 2;
    CU_ASSERT(format_check(f, sizeof(f), &version) < 0);
    m = merge_encode(ids, 3, &len);
    CU_ASSERT_FATAL(m != NULL);
    if (m == NULL)
        return;
    CU_ASSERT_EQUAL(merge_check(m, len), 3);
    CU_ASSERT_EQUAL(merge_id(m, 2), 9);
    m[13] ^= 1;
    CU_ASSERT_EQUAL(merge_check(m, len), -1);
    free(m);
}

void test_record_register(void);

void test_record_register(void)
{
    CU_pSuite s = CU_add_suite("record", NULL, NULL);

    CU_add_test(s, "test_record_layout_and_round_trip", test_record_layout_and_round_trip);
    CU_add_test(s, "test_record_any_flipped_byte_fails", test_record_any_flipped_byte_fails);
    CU_add_test(s, "test_record_tombstone_and_clear", test_record_tombstone_and_clear);
    CU_add_test(s, "test_record_implausible_headers_rejected",
                test_record_implausible_headers_rejected);
    CU_add_test(s, "test_record_hint_round_trip_and_damage",
                test_record_hint_round_trip_and_damage);
    CU_add_test(s, "test_record_format_and_merge_marker", test_record_format_and_merge_marker);
}
