/* SPDX-License-Identifier: MIT */
/*
 * kvs-bench: an io_uring load generator for any Redis-protocol server. This main only parses
 * arguments into a struct kvs_bench_config, runs kvs_bench_run() (perf/bench/) and maps the
 * outcome to an exit code: 0 success, 1 the run failed (cannot connect, connection lost,
 * protocol error, --verify failures or error replies under --verify), 2 bad arguments,
 * 130 interrupted by SIGINT (the partial results are still printed).
 *
 *   kvs-bench --addr 127.0.0.1:6379 --clients 50 --pipeline 16 --duration 10 --ratio 1:10
 *   kvs-bench --requests 100000 --verify --json out.json
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs/bench.h"
#include "kvs/error.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-bench [options]\n"
               "  --addr IP:PORT         server address (default 127.0.0.1:4000)\n"
               "  --threads N            bench threads, one io_uring each (default: one per CPU)\n"
               "  --clients N            connections in total (default 50)\n"
               "  --pipeline N           requests in flight per connection (default 1)\n"
               "  --requests N           measured requests in total, then stop\n"
               "  --duration SECONDS     measured time (default 10; not with --requests)\n"
               "  --warmup SECONDS       run this long first, excluded from the results\n"
               "  --ratio SET:GET        operation mix (default 1:10)\n"
               "  --keys N               keyspace size (default 100000)\n"
               "  --key-pattern P        uniform | sequential | zipf:S (default uniform)\n"
               "  --data-size N|MIN-MAX  value size in bytes (default 100, at most 512 MiB)\n"
               "  --rate OPS             open loop at OPS requests/s in total (default: closed)\n"
               "  --seed N               random seed; same seed, same requests (default 1)\n"
               "  --prefill              SET every key once before measuring\n"
               "  --verify               write checkable values and check every GET (implies\n"
               "                         --prefill); any bad value makes the exit status 1\n"
               "  --json FILE            also write the results as JSON (- for stdout)\n"
               "  --cpu LIST             pin threads to CPUs, e.g. 0-3,6\n"
               "  --quiet                no progress line per second\n"
               "  -V, --version          print the version\n"
               "  -h, --help             this help\n");
}

/* What a bad command line gets: the synopsis and where to find the rest. */
static void short_usage(void)
{
    fprintf(
        stderr,
        "usage: kvs-bench [--addr IP:PORT] [--threads N] [--clients N] [--pipeline N]\n"
        "                 [--requests N | --duration SECONDS] [--warmup SECONDS]\n"
        "                 [--ratio SET:GET] [--keys N] [--key-pattern uniform|sequential|zipf:S]\n"
        "                 [--data-size N|MIN-MAX] [--rate OPS] [--seed N] [--prefill] [--verify]\n"
        "                 [--json FILE] [--cpu LIST] [--quiet] [-V] [--help]\n"
        "Try 'kvs-bench --help' for details.\n");
}

static void on_signal(int sig)
{
    (void)sig;
    kvs_bench_stop();
}

/* Whole-string unsigned integer in [lo, hi]. */
static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_unsigned(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    uint64_t v;
    int ret = parse_u64(s, lo, hi, &v);

    if (ret == 0)
        *out = (unsigned)v;
    return ret;
}

/* Whole-string finite double in [lo, hi]. */
static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_ratio(const char *s, struct kvs_workload_config *w)
{
    char buf[64];
    char *colon;

    if (strlen(s) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, s);
    colon = strchr(buf, ':');
    if (colon == NULL)
        return -EINVAL;
    *colon = '\0';
    if (parse_unsigned(buf, 0, 1000000, &w->set_ratio) < 0 ||
        parse_unsigned(colon + 1, 0, 1000000, &w->get_ratio) < 0)
        return -EINVAL;
    return w->set_ratio + w->get_ratio > 0 ? 0 : -EINVAL;
}

static int parse_pattern(const char *s, struct kvs_workload_config *w)
{
    if (strcmp(s, "uniform") == 0) {
        w->pattern = KVS_WORKLOAD_UNIFORM;
    } else if (strcmp(s, "sequential") == 0) {
        w->pattern = KVS_WORKLOAD_SEQUENTIAL;
    } else if (strncmp(s, "zipf:", 5) == 0) {
        w->pattern = KVS_WORKLOAD_ZIPF;
        if (parse_double(s + 5, 1e-9, KVS_ZIPF_MAX_S, &w->zipf_s) < 0)
            return -EINVAL;
    } else {
        return -EINVAL;
    }
    return 0;
}

static int parse_size(const char *s, struct kvs_workload_config *w)
{
    char buf[64];
    char *dash;

    if (strlen(s) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, s);
    dash = strchr(buf, '-');
    if (dash != NULL)
        *dash = '\0';
    if (parse_u64(buf, 0, KVS_WORKLOAD_MAX_VALUE, &w->size_min) < 0)
        return -EINVAL;
    w->size_max = w->size_min;
    if (dash != NULL && parse_u64(dash + 1, w->size_min, KVS_WORKLOAD_MAX_VALUE, &w->size_max) < 0)
        return -EINVAL;
    return 0;
}

enum {
    OPT_ADDR = 256,
    OPT_THREADS,
    OPT_CLIENTS,
    OPT_PIPELINE,
    OPT_REQUESTS,
    OPT_DURATION,
    OPT_WARMUP,
    OPT_RATIO,
    OPT_KEYS,
    OPT_PATTERN,
    OPT_SIZE,
    OPT_RATE,
    OPT_SEED,
    OPT_PREFILL,
    OPT_VERIFY,
    OPT_JSON,
    OPT_CPU,
    OPT_QUIET,
};

static const struct option options[] = {
    {"addr", required_argument, NULL, OPT_ADDR},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"clients", required_argument, NULL, OPT_CLIENTS},
    {"pipeline", required_argument, NULL, OPT_PIPELINE},
    {"requests", required_argument, NULL, OPT_REQUESTS},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"ratio", required_argument, NULL, OPT_RATIO},
    {"keys", required_argument, NULL, OPT_KEYS},
    {"key-pattern", required_argument, NULL, OPT_PATTERN},
    {"data-size", required_argument, NULL, OPT_SIZE},
    {"rate", required_argument, NULL, OPT_RATE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"prefill", no_argument, NULL, OPT_PREFILL},
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"json", required_argument, NULL, OPT_JSON},
    {"cpu", required_argument, NULL, OPT_CPU},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Parse argv into cfg. Returns 0, 1 when the program should exit 0 (help/version shown), or
 * -EINVAL after printing what was wrong. */
static int parse_args(int argc, char **argv, struct kvs_bench_config *cfg, const char **json)
{
    bool have_threads = false, have_requests = false, have_duration = false;
    int longindex = -1;
    int opt;

    opterr = 0;
    while ((opt = getopt_long(argc, argv, "Vh", options, &longindex)) != -1) {
        int bad = 0;

        switch (opt) {
        case OPT_ADDR:
            bad = kvs_bench_parse_addr(cfg, optarg);
            break;
        case OPT_THREADS:
            bad = parse_unsigned(optarg, 1, KVS_BENCH_MAX_THREADS, &cfg->threads);
            have_threads = true;
            break;
        case OPT_CLIENTS:
            bad = parse_unsigned(optarg, 1, KVS_BENCH_MAX_CLIENTS, &cfg->clients);
            break;
        case OPT_PIPELINE:
            bad = parse_unsigned(optarg, 1, KVS_BENCH_MAX_PIPELINE, &cfg->pipeline);
            break;
        case OPT_REQUESTS:
            bad = parse_u64(optarg, 1, UINT64_MAX / 2, &cfg->requests);
            have_requests = true;
            break;
        case OPT_DURATION:
            bad = parse_double(optarg, 0.001, 1e7, &cfg->duration_s);
            have_duration = true;
            break;
        case OPT_WARMUP:
            bad = parse_double(optarg, 0, 1e7, &cfg->warmup_s);
            break;
        case OPT_RATIO:
            bad = parse_ratio(optarg, &cfg->workload);
            break;
        case OPT_KEYS:
            bad = parse_u64(optarg, 1, KVS_WORKLOAD_MAX_KEYS, &cfg->workload.keys);
            break;
        case OPT_PATTERN:
            bad = parse_pattern(optarg, &cfg->workload);
            break;
        case OPT_SIZE:
            bad = parse_size(optarg, &cfg->workload);
            break;
        case OPT_RATE:
            bad = parse_double(optarg, 1e-3, 1e10, &cfg->rate);
            break;
        case OPT_SEED:
            bad = parse_u64(optarg, 0, UINT64_MAX, &cfg->seed);
            break;
        case OPT_PREFILL:
            cfg->prefill = true;
            break;
        case OPT_VERIFY:
            cfg->workload.verify = true;
            break;
        case OPT_JSON:
            *json = optarg;
            break;
        case OPT_CPU:
            bad = kvs_bench_parse_cpus(cfg, optarg);
            break;
        case OPT_QUIET:
            cfg->quiet = true;
            break;
        case 'V':
            printf("kvs-bench %s\n", KVS_VERSION);
            return 1;
        case 'h':
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "kvs-bench: unknown option or missing value: %s\n", argv[optind - 1]);
            short_usage();
            return -EINVAL;
        }
        if (bad != 0) {
            fprintf(stderr, "kvs-bench: invalid value for --%s: '%s'\n", options[longindex].name,
                    optarg);
            short_usage();
            return -EINVAL;
        }
        longindex = -1;
    }
    if (optind < argc) {
        fprintf(stderr, "kvs-bench: unexpected argument: %s\n", argv[optind]);
        short_usage();
        return -EINVAL;
    }
    if (have_requests && have_duration) {
        fprintf(stderr, "kvs-bench: --requests and --duration cannot be combined\n");
        short_usage();
        return -EINVAL;
    }
    /* With --cpu and no --threads, one thread per listed CPU. */
    if (cfg->ncpus > 0 && !have_threads)
        cfg->threads = cfg->ncpus;
    return 0;
}

int main(int argc, char **argv)
{
    struct kvs_bench_config cfg;
    struct kvs_bench_result *res = NULL;
    const char *json = NULL;
    const char *why = NULL;
    struct sigaction sa;
    int status = 0;
    int ret;

    kvs_bench_config_default(&cfg);
    ret = parse_args(argc, argv, &cfg, &json);
    if (ret != 0)
        return ret > 0 ? 0 : 2;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A server that hangs up is reported from the send's result, not by dying of SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);

    ret = kvs_bench_run(&cfg, &res, &why);
    if (ret == -EINVAL) {
        fprintf(stderr, "kvs-bench: %s\n", why != NULL ? why : "invalid configuration");
        short_usage();
        return 2;
    }
    if (ret < 0) {
        fprintf(stderr, "kvs-bench: %s\n", why != NULL ? why : kvs_strerror(ret));
        return 1;
    }
    /* Nothing was measured when the run failed before it started: just say why. */
    if (res->fatal != 0 && res->completed == 0 && res->prefill_requests == 0) {
        fprintf(stderr, "kvs-bench: %s\n", res->fatal_msg);
        kvs_bench_result_free(res);
        return 1;
    }
    kvs_bench_report_text(stdout, &res->config, res);
    fflush(stdout);
    if (json != NULL) {
        ret = kvs_bench_report_json(json, &res->config, res);
        if (ret < 0) {
            fprintf(stderr, "kvs-bench: cannot write %s: %s\n", json, kvs_strerror(ret));
            status = 1;
        }
    }
    if (res->fatal != 0) {
        fprintf(stderr, "kvs-bench: %s\n", res->fatal_msg);
        status = 1;
    }
    if (res->verify_failures > 0) {
        fprintf(stderr, "kvs-bench: verify: %llu bad values\n",
                (unsigned long long)res->verify_failures);
        status = 1;
    }
    if (res->config.workload.verify && (res->errors > 0 || res->prefill_errors > 0)) {
        fprintf(stderr, "kvs-bench: verify: error replies make the run unverifiable\n");
        status = 1;
    }
    if (status == 0 && res->interrupted)
        status = 130;
    kvs_bench_result_free(res);
    return status;
}
