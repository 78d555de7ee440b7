/* SPDX-License-Identifier: MIT */
/*
 * The ring executor: a thin layer over one io_uring that every kvs component shares. The
 * engine submits its log I/O through it; the server's shard loop submits socket operations on
 * the same ring and drives it; `kvs`, kvs-bench and the tests drive it too.
 *
 * Model: every operation is prepared with a completion callback and a context pointer. The
 * executor keeps them in a slot table and puts a packed tag {slot, generation} in the SQE's
 * user_data, never a raw pointer; a completion whose generation no longer matches its slot
 * (the op was forgotten) is dropped. A one-shot op's slot is released just before its callback
 * runs; a multishot op keeps its slot while the kernel sets KVS_RING_CQE_MORE.
 *
 * Threading: a ring belongs to the thread that created it (SINGLE_ISSUER). Every function
 * here must be called on that thread, except kvs_ring_fd() which just reads an int.
 *
 * Everything an SQE references (buffers, iovecs, msghdr) must stay valid until its callback
 * has run. Only engine/ring.c includes <liburing.h>.
 */
#ifndef KVS_ENGINE_RING_H
#define KVS_ENGINE_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct kvs_ring;
struct kvs_bufring;

/* CQE flags passed to callbacks (same values as the kernel's IORING_CQE_F_*). */
#define KVS_RING_CQE_BUFFER       (1U << 0) /* a provided buffer was used: id in flags >> 16 */
#define KVS_RING_CQE_MORE         (1U << 1) /* a multishot op stays armed */
#define KVS_RING_CQE_BUFFER_SHIFT 16

/* Features found at setup, reported by kvs_ring_features(). */
#define KVS_RING_FEAT_SINGLE_ISSUER (1U << 0) /* IORING_SETUP_SINGLE_ISSUER accepted */
#define KVS_RING_FEAT_DEFER_TASKRUN (1U << 1) /* IORING_SETUP_DEFER_TASKRUN accepted */
#define KVS_RING_FEAT_COOP_TASKRUN  (1U << 2) /* IORING_SETUP_COOP_TASKRUN accepted */

/*
 * Completion callback: res is the CQE's result (bytes, fd, or -errno), flags its KVS_RING_CQE_*
 * flags. Runs on the ring's thread from kvs_ring_run(); it may prepare new ops.
 */
typedef void (*kvs_ring_cb_fn)(void *ctx, int res, uint32_t flags);

struct kvs_ring_options {
    unsigned entries;       /* SQ entries; 0 means 256. Rounded up to a power of two. */
    unsigned fixed_buffers; /* sparse registered-buffer table size; 0 means 64 */
    bool no_single_issuer;  /* do not try SINGLE_ISSUER|DEFER_TASKRUN (e.g. shared rings) */
};

/*
 * kvs_ring_new - create a ring on the calling thread, trying SINGLE_ISSUER + DEFER_TASKRUN,
 * then COOP_TASKRUN, then plain, and registering a sparse fixed-buffer table.
 * opt may be NULL for defaults. On success fills *out and returns 0; otherwise -errno
 * (-ENOSYS or -EPERM when io_uring is unavailable) and *out is untouched.
 */
int kvs_ring_new(const struct kvs_ring_options *opt, struct kvs_ring **out);

/* kvs_ring_free - close the ring. Pending ops are abandoned without callbacks. NULL is fine. */
void kvs_ring_free(struct kvs_ring *r);

/* kvs_ring_fd - the ring's file descriptor, the target for kvs_ring_msg() from other rings. */
int kvs_ring_fd(const struct kvs_ring *r);

/* kvs_ring_features - KVS_RING_FEAT_* bits found at setup. */
unsigned kvs_ring_features(const struct kvs_ring *r);

/* kvs_ring_inflight - ops prepared whose final completion has not yet been dispatched. */
unsigned kvs_ring_inflight(const struct kvs_ring *r);

/*
 * Preparing ops. Each returns an op id >= 0 (usable with kvs_ring_cancel()) or -errno
 * (-ENOMEM when the slot table cannot grow). When the submission queue is full the pending
 * entries are submitted first, so preparing never fails for lack of SQEs. Ops are only queued;
 * kvs_ring_submit() or kvs_ring_run() hands them to the kernel. cb may be NULL to ignore the
 * completion.
 */
int kvs_ring_read(struct kvs_ring *r, int fd, void *buf, size_t len, uint64_t off,
                  kvs_ring_cb_fn cb, void *ctx);
int kvs_ring_write(struct kvs_ring *r, int fd, const void *buf, size_t len, uint64_t off,
                   kvs_ring_cb_fn cb, void *ctx);
/* buf must lie inside fixed buffer buf_index (see kvs_ring_buffer_add()). */
int kvs_ring_read_fixed(struct kvs_ring *r, int fd, void *buf, size_t len, uint64_t off,
                        int buf_index, kvs_ring_cb_fn cb, void *ctx);
int kvs_ring_write_fixed(struct kvs_ring *r, int fd, const void *buf, size_t len, uint64_t off,
                         int buf_index, kvs_ring_cb_fn cb, void *ctx);
/* datasync true: fdatasync semantics; false: fsync. */
int kvs_ring_fsync(struct kvs_ring *r, int fd, bool datasync, kvs_ring_cb_fn cb, void *ctx);
/* Multishot accept: one callback per accepted connection (res = new fd) while MORE is set. */
int kvs_ring_accept_multishot(struct kvs_ring *r, int listen_fd, kvs_ring_cb_fn cb, void *ctx);
/* Multishot recv with buffer selection from provided-buffer group bgid. */
int kvs_ring_recv_multishot(struct kvs_ring *r, int fd, uint16_t bgid, kvs_ring_cb_fn cb,
                            void *ctx);
int kvs_ring_recv(struct kvs_ring *r, int fd, void *buf, size_t len, kvs_ring_cb_fn cb, void *ctx);
int kvs_ring_send(struct kvs_ring *r, int fd, const void *buf, size_t len, kvs_ring_cb_fn cb,
                  void *ctx);
/* msg (and the iovecs it points at) must stay valid until the callback. */
int kvs_ring_sendmsg(struct kvs_ring *r, int fd, const struct msghdr *msg, kvs_ring_cb_fn cb,
                     void *ctx);
int kvs_ring_connect(struct kvs_ring *r, int fd, const struct sockaddr *addr, socklen_t len,
                     kvs_ring_cb_fn cb, void *ctx);
/* Runs in an io-wq worker (IOSQE_ASYNC): the last close of an unlinked file frees its blocks,
 * and with the discard mount option waits for the device, in the task that closes it. */
int kvs_ring_close(struct kvs_ring *r, int fd, kvs_ring_cb_fn cb, void *ctx);
/*
 * Directory operations on the ring, so that a shard's loop never blocks on the file system:
 * openat (res = new fd), renameat and unlinkat (res = 0), all relative to dirfd. The path
 * strings must stay valid until the callback. A directory fd passed to kvs_ring_fsync() syncs
 * the directory's entries.
 */
int kvs_ring_openat(struct kvs_ring *r, int dirfd, const char *path, int flags, unsigned mode,
                    kvs_ring_cb_fn cb, void *ctx);
int kvs_ring_renameat(struct kvs_ring *r, int dirfd, const char *from, const char *to,
                      kvs_ring_cb_fn cb, void *ctx);
int kvs_ring_unlinkat(struct kvs_ring *r, int dirfd, const char *path, kvs_ring_cb_fn cb,
                      void *ctx);
/* A timer: completes with -ETIME after ns nanoseconds (relative), or -ECANCELED. */
int kvs_ring_timeout(struct kvs_ring *r, uint64_t ns, kvs_ring_cb_fn cb, void *ctx);
/* Cancel one op by id (its callback still runs, normally with -ECANCELED). */
int kvs_ring_cancel(struct kvs_ring *r, int op, kvs_ring_cb_fn cb, void *ctx);
/* Cancel every op on fd. */
int kvs_ring_cancel_fd(struct kvs_ring *r, int fd, kvs_ring_cb_fn cb, void *ctx);

/*
 * kvs_ring_link - link the op prepared last to the next one (IOSQE_IO_LINK): the next starts
 * only after it succeeds, and fails with -ECANCELED if it does not. Used for WRITE_FIXED then
 * fdatasync. Must be called right after preparing the op, before preparing the next. A chain
 * has at most KVS_RING_MAX_CHAIN ops: the ring keeps that many SQEs free before an op that
 * may start one, so that a chain is never split across two submissions. If preparing the
 * next op fails, the link is taken back.
 */
#define KVS_RING_MAX_CHAIN 4
void kvs_ring_link(struct kvs_ring *r);

/*
 * Cross-ring wake-ups. A receiving ring creates a persistent op with kvs_ring_watch(): its
 * callback runs (res = the sender's value) every time another ring posts to its tag with
 * kvs_ring_msg(), and it is never released until kvs_ring_unwatch().
 * kvs_ring_watch returns an op id >= 0; kvs_ring_watch_tag gives the 64-bit tag to send.
 */
int kvs_ring_watch(struct kvs_ring *r, kvs_ring_cb_fn cb, void *ctx);
uint64_t kvs_ring_watch_tag(const struct kvs_ring *r, int op);
void kvs_ring_unwatch(struct kvs_ring *r, int op);
/* Post a completion {user_data = tag, res = value} into the ring whose fd is target_fd
 * (IORING_OP_MSG_RING). The sender's own completion goes to cb (may be NULL). */
int kvs_ring_msg(struct kvs_ring *r, int target_fd, uint64_t tag, int32_t value, kvs_ring_cb_fn cb,
                 void *ctx);

/*
 * Registered (fixed) buffers: the ring registers a sparse table at setup; each component adds
 * its own buffers. kvs_ring_buffer_add returns the buffer index >= 0 or -errno (-ENOSPC when
 * the table is full). The memory stays owned by the caller and must outlive the registration.
 */
int kvs_ring_buffer_add(struct kvs_ring *r, void *base, size_t len);
void kvs_ring_buffer_remove(struct kvs_ring *r, int buf_index);

/*
 * Provided-buffer rings for multishot recv. nbufs must be a power of two (<= 32768); each
 * buffer is bufsz bytes, allocated by the executor. Returns 0 and fills *out, or -errno.
 */
int kvs_ring_bufring_new(struct kvs_ring *r, uint16_t bgid, unsigned nbufs, size_t bufsz,
                         struct kvs_bufring **out);
void kvs_ring_bufring_free(struct kvs_ring *r, struct kvs_bufring *br);
/* The memory of buffer bid (bufsz bytes). */
void *kvs_bufring_buf(const struct kvs_bufring *br, uint16_t bid);
size_t kvs_bufring_bufsz(const struct kvs_bufring *br);
/* Give buffer bid back to the kernel. Call once per buffer consumed from a completion. */
void kvs_bufring_recycle(struct kvs_bufring *br, uint16_t bid);

/* kvs_ring_submit - hand queued ops to the kernel. Returns the number submitted or -errno. */
int kvs_ring_submit(struct kvs_ring *r);

/*
 * kvs_ring_run - submit queued ops, wait until at least min_complete completions are
 * available or timeout_ns passes (0 = no time limit; with min_complete 0 it never blocks),
 * then dispatch every available completion to its callback (also ones that arrive while
 * dispatching, up to a bound per call). Returns the number dispatched (>= 0) or -errno;
 * a timeout or signal (-ETIME, -EINTR) is not an error and returns the count.
 */
int kvs_ring_run(struct kvs_ring *r, unsigned min_complete, uint64_t timeout_ns);

/*
 * kvs_ring_run_until - synchronous drivers (kvs CLI, tests, sync engine API): run the ring
 * until *done becomes true. Returns 0, or -errno if waiting failed.
 */
int kvs_ring_run_until(struct kvs_ring *r, const bool *done);

#endif
