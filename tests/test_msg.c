/* SPDX-License-Identifier: MIT */
/*
 * Tests of the cross-shard message rings (net/msg.c): order, full and empty rings, index
 * wrap-around, the producer's overflow queue, and a two-thread producer/consumer stress run
 * that ThreadSanitizer checks (marker for the TSan build: KVS_TEST_THREADS).
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

#include <CUnit/CUnit.h>

#include "msg.h"

void test_msg_register(void);

static struct msg mk(uint32_t type, uintptr_t v)
{
    struct msg m = {.type = type, .from = 7, .ptr = (void *)v};

    return m;
}

static void test_msg_push_pop_keeps_order(void)
{
    struct msg_ring r;
    struct msg out[8];

    CU_ASSERT_EQUAL_FATAL(msg_ring_init(&r, 8), 0);
    CU_ASSERT_EQUAL(msg_ring_pop_mt(&r, out, 8), 0);
    for (uintptr_t i = 0; i < 5; i++) {
        struct msg m = mk(1, i);

        CU_ASSERT_TRUE(msg_ring_push_mt(&r, &m));
    }
    CU_ASSERT_EQUAL(msg_ring_pop_mt(&r, out, 3), 3);
    for (uintptr_t i = 0; i < 3; i++)
        CU_ASSERT_EQUAL((uintptr_t)out[i].ptr, i);
    CU_ASSERT_EQUAL(msg_ring_pop_mt(&r, out, 8), 2);
    CU_ASSERT_EQUAL((uintptr_t)out[0].ptr, 3);
    CU_ASSERT_EQUAL((uintptr_t)out[1].ptr, 4);
    CU_ASSERT_EQUAL(out[1].from, 7);
    msg_ring_fini(&r);
}

static void test_msg_full_ring_refuses_push(void)
{
    struct msg_ring r;
    struct msg m = mk(2, 0);
    struct msg out[1];

    CU_ASSERT_EQUAL_FATAL(msg_ring_init(&r, 3), 0);
    CU_ASSERT_EQUAL(msg_ring_capacity(&r), 4);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_TRUE(msg_ring_push_mt(&r, &m));
    CU_ASSERT_FALSE(msg_ring_push_mt(&r, &m));
    CU_ASSERT_EQUAL(msg_ring_pop_mt(&r, out, 1), 1);
    CU_ASSERT_TRUE(msg_ring_push_mt(&r, &m));
    CU_ASSERT_FALSE(msg_ring_push_mt(&r, &m));
    msg_ring_fini(&r);
}

static void test_msg_indices_wrap_around(void)
{
    struct msg_ring r;
    struct msg out[4];
    uintptr_t next_in = 0, next_out = 0;

    CU_ASSERT_EQUAL_FATAL(msg_ring_init(&r, 4), 0);
    for (int round = 0; round < 1000; round++) {
        for (int i = 0; i < 3; i++) {
            struct msg m = mk(3, next_in++);

            CU_ASSERT_TRUE(msg_ring_push_mt(&r, &m));
        }
        size_t n = msg_ring_pop_mt(&r, out, 4);

        CU_ASSERT_EQUAL(n, 3);
        for (size_t i = 0; i < n; i++)
            CU_ASSERT_EQUAL((uintptr_t)out[i].ptr, next_out++);
    }
    msg_ring_fini(&r);
}

static void test_msg_outbox_keeps_order_when_ring_full(void)
{
    struct msg_ring r;
    struct msg_outbox o;
    struct msg out[16];
    uintptr_t expect = 0;
    size_t n;

    CU_ASSERT_EQUAL_FATAL(msg_ring_init(&r, 4), 0);
    msg_outbox_init(&o);
    for (uintptr_t i = 0; i < 200; i++) {
        struct msg m = mk(4, i);

        CU_ASSERT_EQUAL(msg_send(&o, &r, &m), 0);
    }
    CU_ASSERT_EQUAL(msg_outbox_pending(&o), 196);
    /* Drain and flush alternately: the consumer must see 0..199 in order. */
    while ((n = msg_ring_pop_mt(&r, out, 16)) > 0) {
        for (size_t i = 0; i < n; i++)
            CU_ASSERT_EQUAL((uintptr_t)out[i].ptr, expect++);
        /* A message sent while others wait must queue behind them. */
        if (expect == 8) {
            struct msg m = mk(4, 200);

            CU_ASSERT_EQUAL(msg_send(&o, &r, &m), 0);
        }
        msg_outbox_flush(&o, &r);
    }
    CU_ASSERT_EQUAL(expect, 201);
    CU_ASSERT_EQUAL(msg_outbox_pending(&o), 0);
    msg_outbox_fini(&o);
    msg_ring_fini(&r);
}

#define STRESS_COUNT 200000u

struct stress {
    struct msg_ring ring;
    uintptr_t received;
    int errors;
};

static void *stress_producer(void *arg)
{
    struct stress *s = arg;
    struct msg_outbox o;

    msg_outbox_init(&o);
    for (uintptr_t i = 1; i <= STRESS_COUNT; i++) {
        struct msg m = mk(5, i);

        if (msg_send(&o, &s->ring, &m) != 0)
            abort();
        if (msg_outbox_pending(&o) > 1024)
            while (msg_outbox_flush(&o, &s->ring) > 0)
                sched_yield();
    }
    while (msg_outbox_flush(&o, &s->ring) > 0)
        sched_yield();
    msg_outbox_fini(&o);
    return NULL;
}

/* Two threads: one producer, the main thread consuming. Every message must arrive exactly
 * once and in order; a small ring forces many full/empty transitions. The loop is bounded
 * by the message count, not by time. */
static void test_msg_two_threads_deliver_all_in_order(void)
{
    struct stress s = {.received = 0, .errors = 0};
    struct msg out[32];
    pthread_t t;
    uintptr_t expect = 1;

    CU_ASSERT_EQUAL_FATAL(msg_ring_init(&s.ring, 64), 0);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, stress_producer, &s), 0);
    while (expect <= STRESS_COUNT) {
        size_t n = msg_ring_pop_mt(&s.ring, out, 32);

        if (n == 0) {
            sched_yield();
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            if ((uintptr_t)out[i].ptr != expect || out[i].type != 5)
                s.errors++;
            expect++;
        }
    }
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(s.errors, 0);
    CU_ASSERT_EQUAL(msg_ring_pop_mt(&s.ring, out, 32), 0);
    msg_ring_fini(&s.ring);
}

void test_msg_register(void)
{
    CU_pSuite s = CU_add_suite("msg", NULL, NULL);

    CU_add_test(s, "push_pop_keeps_order", test_msg_push_pop_keeps_order);
    CU_add_test(s, "full_ring_refuses_push", test_msg_full_ring_refuses_push);
    CU_add_test(s, "indices_wrap_around", test_msg_indices_wrap_around);
    CU_add_test(s, "outbox_keeps_order_when_ring_full", test_msg_outbox_keeps_order_when_ring_full);
    CU_add_test(s, "two_threads_deliver_all_in_order", test_msg_two_threads_deliver_all_in_order);
}
