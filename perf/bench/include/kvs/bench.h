/* SPDX-License-Identifier: MIT */
/*
 * kvs-bench, the load generator, as a library: the main in cli/kvs_bench.c parses arguments
 * into struct kvs_bench_config and calls kvs_bench_run(), then prints the result with
 * kvs_bench_report_text() / kvs_bench_report_json().
 *
 * A run starts `threads` threads; each creates its own io_uring (kvs_ring_new on that thread)
 * and drives its share of the `clients` connections, each with up to `pipeline` requests in
 * flight. Nothing is shared between bench threads on the request path except, under --verify,
 * the per-key version counters (atomics). The calling thread prints progress once a second
 * and merges the threads' histograms and counters when they are done.
 *
 * Closed loop (default): a connection sends a new request as soon as one of its `pipeline`
 * slots frees up; latency runs from the moment the request is handed to the kernel.
 * Open loop (rate > 0): every connection owns an evenly spaced schedule of intended send
 * times adding up to `rate` requests per second; a request is sent at (or, when its
 * connection's pipeline is full, after) its intended time and its latency is measured from
 * the intended time, so a stalled server is charged for the requests it delayed (no
 * coordinated omission).
 */
#ifndef KVS_PERF_BENCH_H
#define KVS_PERF_BENCH_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "kvs/hist.h"
#include "kvs/workload.h"

#define KVS_BENCH_MAX_THREADS  1024
#define KVS_BENCH_MAX_CLIENTS  65536
#define KVS_BENCH_MAX_PIPELINE 4096
#define KVS_BENCH_MAX_CPUS     1024

struct kvs_bench_config {
    char addr_text[64];           /* as given, for messages: "127.0.0.1:4000" */
    struct sockaddr_storage addr; /* resolved address */
    socklen_t addr_len;
    unsigned threads;  /* >= 1 */
    unsigned clients;  /* connections in total, >= threads is not required */
    unsigned pipeline; /* requests in flight per connection, >= 1 */
    uint64_t requests; /* measured requests in total; 0 = run for duration_s */
    double duration_s; /* measured phase length when requests == 0 */
    double warmup_s;   /* excluded from statistics */
    double rate;       /* total requests per second; 0 = closed loop */
    uint64_t seed;
    bool prefill; /* SET every key once before measuring */
    bool quiet;   /* no progress lines */
    struct kvs_workload_config workload;
    int cpus[KVS_BENCH_MAX_CPUS]; /* --cpu: thread i runs on cpus[i % ncpus] */
    unsigned ncpus;               /* 0: no pinning */
};

/* Per-operation counters (index by enum kvs_workload_op). */
struct kvs_bench_op_stats {
    uint64_t completed; /* measured replies received */
    uint64_t errors;    /* error replies (-ERR ...) and replies of the wrong type */
    uint64_t misses;    /* GET: nil replies */
    struct kvs_hist latency;
};

struct kvs_bench_result {
    struct kvs_bench_config config;  /* what actually ran: threads capped at clients, prefill
                                      * implied by verify; report this one */
    struct kvs_bench_op_stats op[2]; /* [KVS_WORKLOAD_GET], [KVS_WORKLOAD_SET] */
    struct kvs_hist latency;         /* all measured requests */
    uint64_t completed;              /* measured replies, all ops */
    uint64_t errors;                 /* measured error replies, all ops */
    uint64_t misses;                 /* measured GET misses */
    uint64_t verify_failures;        /* --verify: bad GET values (measured or not) */
    uint64_t verify_by_kind[8];      /* indexed by enum kvs_workload_verdict */
    uint64_t verified;               /* --verify: GET values checked and found good */
    uint64_t prefill_requests;       /* SETs sent by --prefill */
    uint64_t prefill_errors;         /* error replies during --prefill */
    uint64_t warmup_requests;        /* replies received during --warmup */
    uint64_t unanswered;             /* requests still in flight when the run was cut off */
    uint64_t late_sends;             /* open loop: requests sent after their intended time
                                      * because the connection's pipeline was full */
    uint64_t unsent;                 /* open loop: requests due before the end but never sent
                                      * because the server fell behind the schedule */
    double elapsed_s;                /* measured phase: first measured send to last reply */
    double prefill_s;                /* time the prefill took */
    double throughput;               /* completed / elapsed_s */
    double cpu_user_s, cpu_sys_s;    /* this process during the measured phase */
    uint64_t *per_second;            /* replies per second of the measured phase */
    unsigned nseconds;
    bool interrupted;    /* SIGINT cut the run short */
    int fatal;           /* 0, or the -errno / KVS_E* code that ended the run */
    char fatal_msg[256]; /* what failed, e.g. "cannot connect to ...: ..." */
};

/*
 * kvs_bench_run - run the benchmark described by cfg. Blocks until it is done, its time is
 * up, or kvs_bench_stop() is called. Returns 0 and fills *out (free with kvs_bench_result_free)
 * whenever there is something to report, even if the run ended early; (*out)->fatal then says
 * why. Returns -EINVAL (message in *why) for a bad configuration, -ENOMEM, or another -errno
 * when threads could not be started. Call from the main thread only, one run at a time.
 */
int kvs_bench_run(const struct kvs_bench_config *cfg, struct kvs_bench_result **out,
                  const char **why);

/* kvs_bench_stop - ask the running benchmark to stop (it still reports what it measured).
 * Async-signal-safe: meant for a SIGINT handler. */
void kvs_bench_stop(void);

/* kvs_bench_result_free - release a result. NULL is fine. */
void kvs_bench_result_free(struct kvs_bench_result *res);

/* kvs_bench_parse_addr - parse "IP:PORT" (IPv4, or [IPv6]:PORT) into cfg->addr. 0 or -EINVAL. */
int kvs_bench_parse_addr(struct kvs_bench_config *cfg, const char *text);

/* kvs_bench_parse_cpus - parse a CPU list "0-3,6" into cfg->cpus. 0 or -EINVAL. */
int kvs_bench_parse_cpus(struct kvs_bench_config *cfg, const char *text);

/* kvs_bench_config_default - fill cfg with the documented defaults (one thread per CPU the
 * process may run on, 50 clients, pipeline 1, 10 s, SET:GET 1:10, 100000 keys, 100 bytes). */
void kvs_bench_config_default(struct kvs_bench_config *cfg);

/* kvs_bench_report_text - the human-readable summary table. */
void kvs_bench_report_text(FILE *f, const struct kvs_bench_config *cfg,
                           const struct kvs_bench_result *res);

/* kvs_bench_report_json - write config, machine, throughput, percentiles, non-empty
 * histogram buckets and counters as one JSON object to path. Returns 0 or -errno. */
int kvs_bench_report_json(const char *path, const struct kvs_bench_config *cfg,
                          const struct kvs_bench_result *res);

#endif
