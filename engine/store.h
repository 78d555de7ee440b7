/* SPDX-License-Identifier: MIT */
/*
 * Internal definition of the engine object shared by store.c (open/close, writes, reads,
 * group commit, fsync policy), recover.c (recovery at open) and compact.c (merge). Nothing
 * outside engine/ includes this; the public contract is kvs/engine.h.
 */
#ifndef KVS_ENGINE_STORE_H
#define KVS_ENGINE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs/engine.h"
#include "kvs/ring.h"
#include "index.h"
#include "record.h"

/* A byte range of a segment that salvage skipped: compaction must skip it too. */
struct bad_range {
    uint64_t start, end;
};

/* One segment file. Immutable once it is no longer the active segment. */
struct seg {
    uint32_t id;
    int fd;
    uint64_t size;         /* logical size: bytes on disk plus bytes queued in chunks */
    uint64_t live;         /* bytes of records the index points at */
    uint64_t min_seq;      /* smallest record seq in the segment, UINT64_MAX when none */
    unsigned refs;         /* in-flight reads, hint writes, compaction use: fd must stay open */
    unsigned pending;      /* queued or in-flight write chunks targeting this segment */
    bool hint_busy;        /* its hint file is being written */
    bool has_hint;         /* a valid hint file exists (or is being written) */
    bool dirsync;          /* created since the directory was last fsync'ed */
    bool unsynced;         /* written since its last fdatasync */
    struct hint_buf *hint; /* entries of a rotated segment, waiting for its last write */
    struct bad_range *bad; /* salvage-skipped ranges, sorted */
    size_t nbad;
    struct seg *next_doomed; /* on the engine's doomed list after compaction removed it */
    struct seg *prev;        /* segment active before this one, to sync before our first
                                batch (everysec), holding a ref; NULL afterwards */
};

struct waiter {
    kvs_engine_done_fn done;
    void *ctx;
};

/* A run of records queued for one write at the end of a segment (one group-commit batch). */
struct chunk {
    struct kvs_engine *e;
    struct chunk *next;
    struct seg *seg;
    uint64_t off; /* file offset of data[0] */
    uint8_t *data;
    size_t len, cap, written;
    int buf_index;    /* registered buffer index, or -1: written with a plain write */
    struct wbuf *wb;  /* the engine write buffer holding data, or NULL (heap) */
    struct waiter *w; /* completions to fire once written (and synced) */
    size_t nw, capw;
    uint32_t nrec;
    int pending; /* CQEs outstanding for the current submission */
    int wres, sres, dres, pres;
    bool sealed, sync, dsync;
    struct seg *pseg; /* previous segment synced (linked) before this batch, holding a ref */
};

/* A registered write buffer. */
struct wbuf {
    uint8_t *mem;
    size_t cap;
    int index; /* fixed-buffer index or -1 when registration failed */
    bool busy;
};

struct compaction;

struct kvs_engine {
    struct kvs_ring *ring;
    bool own_ring;
    struct kvs_engine_options opt;
    char *dir;
    int dirfd, lockfd;
    struct index *ix;

    struct seg **segs; /* sorted by id */
    size_t nsegs, capsegs;
    struct seg *active;
    struct hint_buf ahint; /* hint entries of the active segment */
    struct seg *doomed;    /* removed segments whose fd is still referenced */
    uint32_t next_id;
    uint64_t next_seq;

    struct chunk *chead, *ctail;
    struct wbuf wbufs[2];
    bool writing;      /* a chunk write is in flight */
    unsigned inflight; /* reads, hint writes, syncs in flight (not the timer) */

    bool timer_armed, dirty, syncing, dir_dirty;
    bool compact_broken; /* compaction met a corrupt record: no automatic one until an
                            explicit compaction or a reopen */
    int timer_op;

    /* The next segment, created on the ring ahead of rotation (docs/design.md, "Rotation"). */
    int spare_fd;        /* open, empty NNNNNN.seg ready to become active, or -1 */
    uint32_t spare_id;   /* its id (reserved from next_id when the open was issued) */
    bool spare_opening;  /* its openat is in flight */
    char spare_name[32]; /* its name; the openat reads it until the completion */

    bool failed, closing;
    bool ready; /* kvs_engine_open returned: no blocking syscall may run from now on */
    uint8_t *getbuf;
    size_t getcap;
    struct compaction *cp;
    struct kvs_engine_stats st;
};

/* store.c */
/* The segment with this id, or NULL. */
struct seg *store_seg_find(const struct kvs_engine *e, uint32_t id);
/* Add s to the id-sorted table (and raise next_id past it). 0 or -ENOMEM. */
int store_seg_insert(struct kvs_engine *e, struct seg *s);
/* Take s out of the table; it is freed (fd closed) now or when its last ref goes. */
void store_seg_remove(struct kvs_engine *e, struct seg *s);
/* A new segment object for an open fd (no I/O). NULL on -ENOMEM. */
struct seg *store_seg_new(uint32_t id, int fd, uint64_t size);
/* Drop one ref taken for an in-flight operation; frees a removed segment on the last one. */
void store_seg_unref(struct kvs_engine *e, struct seg *s);
/* "NNNNNN.ext" for segment id. */
void store_seg_name(char *buf, size_t len, uint32_t id, const char *ext);
/* Enter the failed, read-only state (logged once, with what failed and why). */
void store_fail(struct kvs_engine *e, int err, const char *what);
/* Write s's hint file (taking ownership of s->hint) after its last batch; 0 or -errno. */
int store_write_hint(struct kvs_engine *e, struct seg *s);
/* Make a new active segment out of the spare; the old one becomes immutable. 0, -EAGAIN when
 * no spare is open yet (one is requested; rotate again after it opened), or -errno. During
 * open (recovery) the segment is created with a plain openat instead. */
int store_rotate(struct kvs_engine *e);
/* Start creating the spare segment on the ring unless one is open or opening. 0 or -errno. */
int store_spare_request(struct kvs_engine *e);
/* Close fd on the ring once the engine serves (a plain close during open and close);
 * the completion is counted in e->inflight. Never fails: falls back to close(). */
void store_close_fd(struct kvs_engine *e, int fd);
/* Unlink name (relative to the store directory) on the ring, like store_close_fd. A failure is
 * logged (ENOENT is not a failure). */
void store_unlink(struct kvs_engine *e, const char *name);
/* Read through the ring and wait (setup time only). Bytes read or -errno. */
int store_ring_pread(struct kvs_engine *e, int fd, void *buf, size_t len, uint64_t off);
/* fsync the store directory with a plain syscall (open time only). */
void store_fsync_dir(struct kvs_engine *e);

/* recover.c */
/* Load the directory into e (segments, index, active segment); see docs/design.md. 0, or an
 * error with a message naming file and offset in errbuf. */
int recover_open(struct kvs_engine *e, char *errbuf, size_t errlen);

/* compact.c */
/* Start a compaction (rotating the active segment first if rotate); -EBUSY if one runs. */
int compact_start(struct kvs_engine *e, bool rotate, kvs_engine_done_fn done, void *ctx);
/* Start one if the dead-bytes trigger holds. Called after every batch and rotation. */
void compact_maybe(struct kvs_engine *e);
/* A segment finished its writes: a compaction waiting for quiet may begin now. */
void compact_kick(struct kvs_engine *e);
/* A compaction is waiting or running. */
bool compact_busy(const struct kvs_engine *e);

#endif
