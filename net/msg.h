/* SPDX-License-Identifier: MIT */
/*
 * Cross-shard messages: one single-producer single-consumer ring per ordered pair of shards
 * (the inbox of the consumer for messages from one producer), plus a per-peer overflow queue
 * owned by the producer for the rare moment an inbox is full.
 *
 * The ring indices are the only atomics on the data path (STYLE.md section 1). A message is a
 * small fixed-size value copied into a slot; whatever it points at is lent, not given: the
 * receiver hands the pointer back with another message and never frees it (docs/server.md,
 * "Message flow").
 *
 * Must not: lock, allocate on push/pop, or block. Waking a sleeping consumer is the caller's
 * job (kvs_ring_msg once per loop turn), not this file's.
 */
#ifndef KVS_NET_MSG_H
#define KVS_NET_MSG_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One message. type is the receiver's business; ptr is a lent pointer or NULL. */
struct msg {
    uint32_t type;
    uint32_t from; /* index of the sending shard */
    void *ptr;
};

/*
 * The ring. head is written only by the consumer, tail only by the producer; each side keeps a
 * cached copy of the other side's index so that most operations touch only its own cache line.
 * The indices run freely and are masked on use, so full is tail - head == capacity.
 */
struct msg_ring {
    alignas(64) atomic_size_t head; /* next slot to read: consumer's */
    size_t tail_cache;              /* consumer's last view of tail */
    alignas(64) atomic_size_t tail; /* next slot to write: producer's */
    size_t head_cache;              /* producer's last view of head */
    alignas(64) size_t mask;        /* capacity - 1, fixed after init */
    struct msg *slots;
};

/*
 * msg_ring_init - set up an empty ring of capacity slots (rounded up to a power of two, at
 * least 2). Call before any thread uses it. Returns 0 or -ENOMEM / -EINVAL.
 */
int msg_ring_init(struct msg_ring *r, size_t capacity);

/* msg_ring_fini - free the slots. No thread may use the ring any more. NULL is fine. */
void msg_ring_fini(struct msg_ring *r);

/* msg_ring_capacity - number of slots. */
size_t msg_ring_capacity(const struct msg_ring *r);

/*
 * msg_ring_push_mt - producer thread only: copy *m into the ring. Returns true, or false when
 * the ring is full (nothing written).
 */
bool msg_ring_push_mt(struct msg_ring *r, const struct msg *m);

/*
 * msg_ring_pop_mt - consumer thread only: move up to max messages into out[], oldest first.
 * Returns the number moved (0 when empty).
 */
size_t msg_ring_pop_mt(struct msg_ring *r, struct msg *out, size_t max);

/*
 * The producer's overflow queue towards one peer: messages that did not fit in the peer's
 * inbox wait here, in order, and later messages queue behind them so that the per-pair order
 * is never broken. Owned and used only by the producer thread.
 */
struct msg_outbox {
    struct msg *q;
    size_t head, len, cap;
};

/* msg_outbox_init / msg_outbox_fini - empty queue, no memory; fini frees. NULL is fine. */
void msg_outbox_init(struct msg_outbox *o);
void msg_outbox_fini(struct msg_outbox *o);

/*
 * msg_send - producer thread: deliver *m to ring r through outbox o, preserving order.
 * Returns 0 (in the ring or queued) or -ENOMEM when the overflow queue cannot grow.
 */
int msg_send(struct msg_outbox *o, struct msg_ring *r, const struct msg *m);

/* msg_outbox_flush - move queued messages into r while it has room. Returns how many remain. */
size_t msg_outbox_flush(struct msg_outbox *o, struct msg_ring *r);

/* msg_outbox_pending - messages still waiting in the overflow queue. */
size_t msg_outbox_pending(const struct msg_outbox *o);

#endif
