/* SPDX-License-Identifier: MIT */
/*
 * kvs-bench configuration helpers: defaults, and parsers for the option values that are more
 * than a number (addresses and CPU lists). Pure functions on the caller's config; the main in
 * cli/kvs_bench.c does the rest of the argument parsing.
 */
#include "kvs/bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

void kvs_bench_config_default(struct kvs_bench_config *cfg)
{
    cpu_set_t set;
    int ncpu = 1;

    memset(cfg, 0, sizeof(*cfg));
    /* One thread per CPU this process may run on (taskset/cgroups respected). */
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        ncpu = CPU_COUNT(&set);
    cfg->threads = ncpu > 0 ? (unsigned)ncpu : 1;
    cfg->clients = 50;
    cfg->pipeline = 1;
    cfg->duration_s = 10;
    cfg->seed = 1;
    cfg->workload.keys = 100000;
    cfg->workload.pattern = KVS_WORKLOAD_UNIFORM;
    cfg->workload.set_ratio = 1;
    cfg->workload.get_ratio = 10;
    cfg->workload.size_min = 100;
    cfg->workload.size_max = 100;
    (void)kvs_bench_parse_addr(cfg, "127.0.0.1:4000");
}

/* Parse a decimal port 1..65535 from the whole of s. */
static int parse_port(const char *s, uint16_t *out)
{
    char *end;
    unsigned long v;

    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0 || v > 65535)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int kvs_bench_parse_addr(struct kvs_bench_config *cfg, const char *text)
{
    char host[64];
    const char *colon;
    const char *port_text;
    size_t hlen;
    uint16_t port;

    if (strlen(text) >= sizeof(cfg->addr_text))
        return -EINVAL;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');

        if (close == NULL || close[1] != ':')
            return -EINVAL;
        hlen = (size_t)(close - text - 1);
        memcpy(host, text + 1, hlen);
        port_text = close + 2;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return -EINVAL;
        hlen = (size_t)(colon - text);
        memcpy(host, text, hlen);
        port_text = colon + 1;
    }
    host[hlen] = '\0';
    if (parse_port(port_text, &port) < 0)
        return -EINVAL;
    memset(&cfg->addr, 0, sizeof(cfg->addr));
    if (text[0] != '[') {
        struct sockaddr_in *sin = (struct sockaddr_in *)&cfg->addr;

        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return -EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        cfg->addr_len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&cfg->addr;

        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return -EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        cfg->addr_len = sizeof(*sin6);
    }
    strcpy(cfg->addr_text, text);
    return 0;
}

/* Parse a CPU number 0..CPU_SETSIZE-1 at *p, advancing *p past it. */
static int parse_cpu(const char **p, int *out)
{
    char *end;
    long v;

    if (**p < '0' || **p > '9')
        return -EINVAL;
    errno = 0;
    v = strtol(*p, &end, 10);
    if (errno != 0 || v < 0 || v >= CPU_SETSIZE)
        return -EINVAL;
    *out = (int)v;
    *p = end;
    return 0;
}

int kvs_bench_parse_cpus(struct kvs_bench_config *cfg, const char *text)
{
    const char *p = text;
    unsigned n = 0;

    for (;;) {
        int lo;
        int hi;

        if (parse_cpu(&p, &lo) < 0)
            return -EINVAL;
        hi = lo;
        if (*p == '-') {
            p++;
            if (parse_cpu(&p, &hi) < 0 || hi < lo)
                return -EINVAL;
        }
        for (int c = lo; c <= hi; c++) {
            if (n == KVS_BENCH_MAX_CPUS)
                return -EINVAL;
            cfg->cpus[n++] = c;
        }
        if (*p == '\0')
            break;
        if (*p != ',')
            return -EINVAL;
        p++;
    }
    cfg->ncpus = n;
    return 0;
}
