/* SPDX-License-Identifier: MIT */
/*
 * kvs-server: parse the command line into a struct kvs_server_config and run the server
 * (net/server.c). Only argument handling and exit codes live here.
 *
 *   kvs-server --addr 127.0.0.1:4000 --dir /var/lib/kvs --fsync always
 *   redis-cli -p 4000 set greeting hello
 *
 * Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on a start-up or runtime error,
 * 2 on bad arguments.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs/engine.h"
#include "kvs/log.h"
#include "kvs/server.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-server [options]\n"
               "  --addr IP:PORT        address to listen on (default 127.0.0.1:4000)\n"
               "  --dir DIR             data directory (default .)\n"
               "  --engine NAME         storage engine (default and only: kvs)\n"
               "  --shards N            shard threads (default: CPUs this process may use)\n"
               "  --fsync POLICY        always | everysec | never (default everysec)\n"
               "  --max-clients N       connections at once (default 10000)\n"
               "  --max-bulk SIZE       longest bulk string in a request (default 512m)\n"
               "  --max-args N          most arguments in one request (default 1048576)\n"
               "  --max-inline SIZE     longest inline request line (default 64k)\n"
               "  --max-key SIZE        longest key (default 64k)\n"
               "  --max-value SIZE      longest value (default 512m)\n"
               "  --max-output SIZE     unsent reply bytes per client before its input pauses "
               "(default 64m)\n"
               "  --max-pipeline N      requests in progress per client before its input pauses "
               "(default 256)\n"
               "  --compact-rate SIZE   most bytes per second each shard's compaction reads\n"
               "                        (default 0: no limit)\n"
               "  --shutdown-timeout MS how long shutdown waits for slow clients (default 10000)\n"
               "  --repartition         if the data directory has another shard count, copy the\n"
               "                        data to --shards N shards first (offline, crash-safe)\n"
               "  --salvage             start even if an older log segment has a bad record,\n"
               "                        skipping it (logged); default: refuse to start\n"
               "  --log-level LEVEL     debug | info | warn | error | off (default info)\n"
               "  -V, --version         print the version and exit\n"
               "  -h, --help            print this help and exit\n"
               "SIZE takes an optional k, m or g suffix (powers of 1024).\n");
}

/* A size with an optional k/m/g suffix; false when malformed or over max. */
static bool parse_size(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    unsigned long long v, mul = 1;

    errno = 0;
    if (*s == '-' || *s == '\0')
        return false;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s)
        return false;
    if (*end == 'k' || *end == 'K')
        mul = 1024ULL;
    else if (*end == 'm' || *end == 'M')
        mul = 1024ULL * 1024;
    else if (*end == 'g' || *end == 'G')
        mul = 1024ULL * 1024 * 1024;
    else if (*end != '\0')
        return false;
    if (mul != 1 && end[1] != '\0')
        return false;
    if (v > max / mul)
        return false;
    *out = v * mul;
    return true;
}

enum {
    OPT_ADDR = 256,
    OPT_DIR,
    OPT_ENGINE,
    OPT_SHARDS,
    OPT_FSYNC,
    OPT_MAX_CLIENTS,
    OPT_MAX_BULK,
    OPT_MAX_ARGS,
    OPT_MAX_INLINE,
    OPT_MAX_KEY,
    OPT_MAX_VALUE,
    OPT_MAX_OUTPUT,
    OPT_MAX_PIPELINE,
    OPT_SHUTDOWN_TIMEOUT,
    OPT_LOG_LEVEL,
    OPT_SALVAGE,
    OPT_REPARTITION,
    OPT_COMPACT_RATE,
};

static const struct option long_opts[] = {
    {"addr", required_argument, NULL, OPT_ADDR},
    {"dir", required_argument, NULL, OPT_DIR},
    {"engine", required_argument, NULL, OPT_ENGINE},
    {"shards", required_argument, NULL, OPT_SHARDS},
    {"fsync", required_argument, NULL, OPT_FSYNC},
    {"max-clients", required_argument, NULL, OPT_MAX_CLIENTS},
    {"max-bulk", required_argument, NULL, OPT_MAX_BULK},
    {"max-args", required_argument, NULL, OPT_MAX_ARGS},
    {"max-inline", required_argument, NULL, OPT_MAX_INLINE},
    {"max-key", required_argument, NULL, OPT_MAX_KEY},
    {"max-value", required_argument, NULL, OPT_MAX_VALUE},
    {"max-output", required_argument, NULL, OPT_MAX_OUTPUT},
    {"max-pipeline", required_argument, NULL, OPT_MAX_PIPELINE},
    {"compact-rate", required_argument, NULL, OPT_COMPACT_RATE},
    {"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN_TIMEOUT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"salvage", no_argument, NULL, OPT_SALVAGE},
    {"repartition", no_argument, NULL, OPT_REPARTITION},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int bad(const char *opt, const char *val)
{
    fprintf(stderr, "kvs-server: bad value '%s' for --%s\n", val, opt);
    usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    struct kvs_server_config cfg;
    enum kvs_log_level level = KVS_LOG_INFO;
    unsigned long long v;
    int opt, rc;

    kvs_server_config_init(&cfg);
    while ((opt = getopt_long(argc, argv, "Vh", long_opts, NULL)) != -1) {
        switch (opt) {
        case OPT_ADDR:
            cfg.addr = optarg;
            break;
        case OPT_DIR:
            cfg.dir = optarg;
            break;
        case OPT_ENGINE:
            cfg.engine = optarg;
            break;
        case OPT_SHARDS:
            if (!parse_size(optarg, KVS_SERVER_MAX_SHARDS, &v) || v == 0 ||
                optarg[strlen(optarg) - 1] > '9')
                return bad("shards", optarg);
            cfg.shards = (unsigned)v;
            break;
        case OPT_FSYNC:
            if (kvs_engine_parse_fsync(optarg, &cfg.fsync) < 0)
                return bad("fsync", optarg);
            break;
        case OPT_MAX_CLIENTS:
            if (!parse_size(optarg, 1000000, &v) || v == 0)
                return bad("max-clients", optarg);
            cfg.max_clients = (unsigned)v;
            break;
        case OPT_MAX_BULK:
            if (!parse_size(optarg, 1ULL << 32, &v) || v < 16)
                return bad("max-bulk", optarg);
            cfg.max_bulk = (size_t)v;
            break;
        case OPT_MAX_ARGS:
            if (!parse_size(optarg, 1ULL << 30, &v) || v == 0)
                return bad("max-args", optarg);
            cfg.max_args = (size_t)v;
            break;
        case OPT_MAX_INLINE:
            if (!parse_size(optarg, 1ULL << 30, &v) || v < 16)
                return bad("max-inline", optarg);
            cfg.max_inline = (size_t)v;
            break;
        case OPT_MAX_KEY:
            if (!parse_size(optarg, KVS_ENGINE_KEY_LIMIT, &v) || v == 0)
                return bad("max-key", optarg);
            cfg.max_key = (uint32_t)v;
            break;
        case OPT_MAX_VALUE:
            if (!parse_size(optarg, KVS_ENGINE_VALUE_LIMIT, &v))
                return bad("max-value", optarg);
            cfg.max_value = v;
            break;
        case OPT_MAX_OUTPUT:
            if (!parse_size(optarg, 1ULL << 40, &v) || v == 0)
                return bad("max-output", optarg);
            cfg.max_output = (size_t)v;
            break;
        case OPT_COMPACT_RATE:
            if (!parse_size(optarg, 1ULL << 40, &v))
                return bad("compact-rate", optarg);
            cfg.compact_rate = v;
            break;
        case OPT_MAX_PIPELINE:
            if (!parse_size(optarg, 1000000, &v) || v == 0)
                return bad("max-pipeline", optarg);
            cfg.max_pipeline = (unsigned)v;
            break;
        case OPT_SHUTDOWN_TIMEOUT:
            if (!parse_size(optarg, 3600000, &v))
                return bad("shutdown-timeout", optarg);
            cfg.shutdown_timeout_ms = (unsigned)v;
            break;
        case OPT_REPARTITION:
            cfg.repartition = true;
            break;
        case OPT_SALVAGE:
            cfg.salvage = true;
            break;
        case OPT_LOG_LEVEL:
            if (kvs_log_parse_level(optarg, &level) < 0)
                return bad("log-level", optarg);
            break;
        case 'V':
            printf("kvs-server %s\n", KVS_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvs-server: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    /* No value or key can be longer than the longest bulk string a request may carry. */
    if (cfg.max_value > cfg.max_bulk)
        cfg.max_value = cfg.max_bulk;
    if (cfg.max_key > cfg.max_bulk)
        cfg.max_key = (uint32_t)cfg.max_bulk;
    kvs_log_set_level(level);
    rc = kvs_server_run(&cfg);
    /* Shard threads may still be running (second signal, stuck shard): leave now, without
     * exit handlers that would free what they use. */
    if (rc == -EINTR || rc == -ETIMEDOUT)
        _exit(1);
    return rc == 0 ? 0 : 1;
}
