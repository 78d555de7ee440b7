/* SPDX-License-Identifier: MIT */
/*
 * Lock-free single-producer single-consumer message rings between shards, and the producer's
 * overflow queue. See msg.h for the contract.
 *
 * Memory ordering: the producer writes a slot, then publishes it with a release store of tail;
 * the consumer reads tail with acquire before reading slots, and after copying them out releases
 * the slots with a release store of head, which the producer reads with acquire before reusing
 * them. Each side reads its own index relaxed: only it ever writes it.
 */
#include "msg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int msg_ring_init(struct msg_ring *r, size_t capacity)
{
    size_t cap = 2;

    if (capacity > ((size_t)1 << 30))
        return -EINVAL;
    while (cap < capacity)
        cap <<= 1;
    memset(r, 0, sizeof(*r));
    r->slots = calloc(cap, sizeof(*r->slots));
    if (r->slots == NULL)
        return -ENOMEM;
    r->mask = cap - 1;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    return 0;
}

void msg_ring_fini(struct msg_ring *r)
{
    if (r == NULL)
        return;
    free(r->slots);
    r->slots = NULL;
}

size_t msg_ring_capacity(const struct msg_ring *r)
{
    return r->mask + 1;
}

bool msg_ring_push_mt(struct msg_ring *r, const struct msg *m)
{
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);

    /* Only re-read the consumer's index when the cached one says the ring is full: in the
     * common case the push touches no cache line the consumer writes. */
    if (tail - r->head_cache > r->mask) {
        r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
        if (tail - r->head_cache > r->mask)
            return false;
    }
    r->slots[tail & r->mask] = *m;
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
    return true;
}

size_t msg_ring_pop_mt(struct msg_ring *r, struct msg *out, size_t max)
{
    size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t n;

    if (r->tail_cache == head)
        r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
    n = r->tail_cache - head;
    if (n > max)
        n = max;
    for (size_t i = 0; i < n; i++)
        out[i] = r->slots[(head + i) & r->mask];
    if (n > 0)
        atomic_store_explicit(&r->head, head + n, memory_order_release);
    return n;
}

void msg_outbox_init(struct msg_outbox *o)
{
    memset(o, 0, sizeof(*o));
}

void msg_outbox_fini(struct msg_outbox *o)
{
    if (o == NULL)
        return;
    free(o->q);
    memset(o, 0, sizeof(*o));
}

size_t msg_outbox_pending(const struct msg_outbox *o)
{
    return o->len;
}

size_t msg_outbox_flush(struct msg_outbox *o, struct msg_ring *r)
{
    while (o->len > 0) {
        if (!msg_ring_push_mt(r, &o->q[o->head]))
            break;
        o->head = (o->head + 1) % o->cap;
        o->len--;
    }
    if (o->len == 0)
        o->head = 0;
    return o->len;
}

/* Grow the circular queue, unrolling it so that the oldest message lands at index 0. */
static int outbox_grow(struct msg_outbox *o)
{
    size_t ncap = o->cap != 0 ? o->cap * 2 : 64;
    struct msg *nq = malloc(ncap * sizeof(*nq));

    if (nq == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < o->len; i++)
        nq[i] = o->q[(o->head + i) % o->cap];
    free(o->q);
    o->q = nq;
    o->cap = ncap;
    o->head = 0;
    return 0;
}

int msg_send(struct msg_outbox *o, struct msg_ring *r, const struct msg *m)
{
    /* Anything already waiting must go first, or the peer would see messages reordered. */
    if (o->len > 0 && msg_outbox_flush(o, r) > 0)
        goto queue;
    if (msg_ring_push_mt(r, m))
        return 0;
queue:
    if (o->len == o->cap) {
        int rc = outbox_grow(o);

        if (rc < 0)
            return rc;
    }
    o->q[(o->head + o->len) % o->cap] = *m;
    o->len++;
    return 0;
}
