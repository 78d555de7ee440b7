/* SPDX-License-Identifier: MIT */
/*
 * kvs-bench output: the human summary table and the --json document (config, machine,
 * throughput, latency percentiles, non-empty histogram buckets, error/miss/verify counts).
 * Reads a finished result only; does no measuring of its own beyond describing the machine.
 */
#include "kvs/bench.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "kvs/hist.h"

static const double pcts[] = {50, 90, 99, 99.9, 99.99};
static const char *const pct_names[] = {"p50", "p90", "p99", "p99.9", "p99.99"};
#define NPCTS (sizeof(pcts) / sizeof(pcts[0]))

static const char *pattern_name(enum kvs_workload_pattern p)
{
    switch (p) {
    case KVS_WORKLOAD_SEQUENTIAL:
        return "sequential";
    case KVS_WORKLOAD_ZIPF:
        return "zipf";
    case KVS_WORKLOAD_UNIFORM:
        break;
    }
    return "uniform";
}

/* The "model name" line of /proc/cpuinfo, or "unknown". */
static void cpu_model(char *buf, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];

    snprintf(buf, len, "unknown");
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *colon;

        if (strncmp(line, "model name", 10) != 0 || (colon = strchr(line, ':')) == NULL)
            continue;
        colon++;
        while (*colon == ' ' || *colon == '\t')
            colon++;
        colon[strcspn(colon, "\n")] = '\0';
        snprintf(buf, len, "%s", colon);
        break;
    }
    fclose(f);
}

static double us(uint64_t ns)
{
    return (double)ns / 1e3;
}

static void text_row(FILE *f, const char *name, uint64_t count, uint64_t errors, uint64_t misses,
                     double elapsed, const struct kvs_hist *h)
{
    fprintf(f, "%-4s %12llu %12.1f %8llu %8llu", name, (unsigned long long)count,
            elapsed > 0 ? (double)count / elapsed : 0.0, (unsigned long long)errors,
            (unsigned long long)misses);
    fprintf(f, " %9.1f", us(h->total ? kvs_hist_percentile(h, 0) : 0));
    for (size_t i = 0; i < NPCTS; i++)
        fprintf(f, " %9.1f", us(kvs_hist_percentile(h, pcts[i])));
    fprintf(f, " %9.1f %9.1f\n", us(h->total ? h->max : 0), kvs_hist_mean(h) / 1e3);
}

void kvs_bench_report_text(FILE *f, const struct kvs_bench_config *cfg,
                           const struct kvs_bench_result *res)
{
    const struct kvs_workload_config *w = &cfg->workload;
    double cpu = res->cpu_user_s + res->cpu_sys_s;

    fprintf(f, "\nkvs-bench %s: %s, %u threads, %u clients, pipeline %u, ", KVS_VERSION,
            cfg->addr_text, cfg->threads, cfg->clients, cfg->pipeline);
    if (cfg->rate > 0)
        fprintf(f, "open loop at %.0f ops/s\n", cfg->rate);
    else
        fprintf(f, "closed loop\n");
    fprintf(f, "workload: SET:GET %u:%u, %llu keys %s", w->set_ratio, w->get_ratio,
            (unsigned long long)w->keys, pattern_name(w->pattern));
    if (w->pattern == KVS_WORKLOAD_ZIPF)
        fprintf(f, " (s=%g)", w->zipf_s);
    if (w->size_min == w->size_max)
        fprintf(f, ", values %llu bytes", (unsigned long long)w->size_min);
    else
        fprintf(f, ", values %llu-%llu bytes", (unsigned long long)w->size_min,
                (unsigned long long)w->size_max);
    fprintf(f, ", seed %llu%s\n", (unsigned long long)cfg->seed, w->verify ? ", verify" : "");
    if (res->prefill_requests > 0)
        fprintf(f, "prefill: %llu keys in %.2f s, %llu errors\n",
                (unsigned long long)res->prefill_requests, res->prefill_s,
                (unsigned long long)res->prefill_errors);
    fprintf(f, "measured: %llu requests in %.2f s = %.1f ops/s", (unsigned long long)res->completed,
            res->elapsed_s, res->throughput);
    if (res->warmup_requests > 0)
        fprintf(f, " (%llu warm-up requests excluded)", (unsigned long long)res->warmup_requests);
    fprintf(f, "\n");
    if (cpu > 0)
        fprintf(f, "client CPU: %.2f s user + %.2f s sys = %.0f requests per CPU-second\n",
                res->cpu_user_s, res->cpu_sys_s, (double)res->completed / cpu);
    fprintf(f, "\nlatency in microseconds (histogram error < 1%%)\n");
    fprintf(f, "%-4s %12s %12s %8s %8s %9s", "op", "requests", "ops/s", "errors", "misses", "min");
    for (size_t i = 0; i < NPCTS; i++)
        fprintf(f, " %9s", pct_names[i]);
    fprintf(f, " %9s %9s\n", "max", "mean");
    if (w->get_ratio > 0)
        text_row(f, "GET", res->op[KVS_WORKLOAD_GET].completed, res->op[KVS_WORKLOAD_GET].errors,
                 res->op[KVS_WORKLOAD_GET].misses, res->elapsed_s,
                 &res->op[KVS_WORKLOAD_GET].latency);
    if (w->set_ratio > 0)
        text_row(f, "SET", res->op[KVS_WORKLOAD_SET].completed, res->op[KVS_WORKLOAD_SET].errors, 0,
                 res->elapsed_s, &res->op[KVS_WORKLOAD_SET].latency);
    text_row(f, "ALL", res->completed, res->errors, res->misses, res->elapsed_s, &res->latency);
    if (res->late_sends > 0)
        fprintf(f,
                "open loop: %llu requests left more than 1 ms after their intended time "
                "(latency counts from the intended time)\n",
                (unsigned long long)res->late_sends);
    if (res->unsent > 0)
        fprintf(f,
                "open loop: %llu requests were due but never sent: the server fell behind "
                "the requested rate\n",
                (unsigned long long)res->unsent);
    if (w->verify) {
        fprintf(f, "verify: %llu GET values checked good, %llu failures",
                (unsigned long long)res->verified, (unsigned long long)res->verify_failures);
        for (int k = 1; k < 8; k++)
            if (res->verify_by_kind[k] > 0)
                fprintf(f, "; %llu %s", (unsigned long long)res->verify_by_kind[k],
                        kvs_workload_verdict_name((enum kvs_workload_verdict)k));
        fprintf(f, "\n");
    }
    if (res->unanswered > 0)
        fprintf(f, "unanswered: %llu requests got no reply before the run ended\n",
                (unsigned long long)res->unanswered);
    if (res->interrupted)
        fprintf(f, "interrupted: the run was stopped early (SIGINT)\n");
    if (res->fatal != 0)
        fprintf(f, "failed: %s\n", res->fatal_msg);
}

/* Write s as a JSON string literal. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_latency(FILE *f, const char *name, const struct kvs_hist *h, bool last)
{
    fprintf(f, "    \"%s\": {\"count\": %llu, \"min\": %llu, \"mean\": %.1f", name,
            (unsigned long long)h->total, (unsigned long long)(h->total ? h->min : 0),
            kvs_hist_mean(h));
    for (size_t i = 0; i < NPCTS; i++)
        fprintf(f, ", \"%s\": %llu", pct_names[i],
                (unsigned long long)kvs_hist_percentile(h, pcts[i]));
    fprintf(f, ", \"max\": %llu}%s\n", (unsigned long long)h->max, last ? "" : ",");
}

static void json_body(FILE *f, const struct kvs_bench_config *cfg,
                      const struct kvs_bench_result *res)
{
    const struct kvs_workload_config *w = &cfg->workload;
    double cpu = res->cpu_user_s + res->cpu_sys_s;
    struct utsname un;
    char model[256];
    bool first = true;

    cpu_model(model, sizeof(model));
    if (uname(&un) != 0)
        memset(&un, 0, sizeof(un));
    fprintf(f, "{\n  \"tool\": \"kvs-bench\",\n  \"version\": \"%s\",\n", KVS_VERSION);
    fprintf(f, "  \"config\": {\n    \"addr\": ");
    json_str(f, cfg->addr_text);
    fprintf(f, ",\n    \"threads\": %u,\n    \"clients\": %u,\n    \"pipeline\": %u,\n",
            cfg->threads, cfg->clients, cfg->pipeline);
    fprintf(f, "    \"requests\": %llu,\n    \"duration_s\": %g,\n    \"warmup_s\": %g,\n",
            (unsigned long long)cfg->requests, cfg->requests ? 0.0 : cfg->duration_s,
            cfg->warmup_s);
    fprintf(f, "    \"rate\": %g,\n    \"ratio\": {\"set\": %u, \"get\": %u},\n", cfg->rate,
            w->set_ratio, w->get_ratio);
    fprintf(f, "    \"keys\": %llu,\n    \"key_pattern\": \"%s\",\n    \"zipf_s\": %g,\n",
            (unsigned long long)w->keys, pattern_name(w->pattern),
            w->pattern == KVS_WORKLOAD_ZIPF ? w->zipf_s : 0.0);
    fprintf(f, "    \"data_size\": {\"min\": %llu, \"max\": %llu},\n",
            (unsigned long long)w->size_min, (unsigned long long)w->size_max);
    fprintf(f, "    \"seed\": %llu,\n    \"prefill\": %s,\n    \"verify\": %s,\n    \"cpus\": [",
            (unsigned long long)cfg->seed, cfg->prefill || w->verify ? "true" : "false",
            w->verify ? "true" : "false");
    for (unsigned i = 0; i < cfg->ncpus; i++)
        fprintf(f, "%s%d", i ? ", " : "", cfg->cpus[i]);
    fprintf(f, "]\n  },\n  \"machine\": {\n    \"cpu_model\": ");
    json_str(f, model);
    fprintf(f, ",\n    \"cpus_online\": %ld,\n    \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN));
    {
        char kernel[3 * sizeof(un.release) + 4];

        snprintf(kernel, sizeof(kernel), "%s %s %s", un.sysname, un.release, un.machine);
        json_str(f, kernel);
    }
    fprintf(f, ",\n    \"kernel_version\": ");
    json_str(f, un.version);
    fprintf(f, ",\n    \"hostname\": ");
    json_str(f, un.nodename);
    fprintf(f, "\n  },\n  \"result\": {\n");
    fprintf(f, "    \"requests\": %llu,\n    \"elapsed_s\": %.6f,\n    \"throughput\": %.1f,\n",
            (unsigned long long)res->completed, res->elapsed_s, res->throughput);
    fprintf(f, "    \"errors\": %llu,\n    \"misses\": %llu,\n", (unsigned long long)res->errors,
            (unsigned long long)res->misses);
    fprintf(f, "    \"get\": {\"requests\": %llu, \"errors\": %llu, \"misses\": %llu},\n",
            (unsigned long long)res->op[KVS_WORKLOAD_GET].completed,
            (unsigned long long)res->op[KVS_WORKLOAD_GET].errors,
            (unsigned long long)res->op[KVS_WORKLOAD_GET].misses);
    fprintf(f, "    \"set\": {\"requests\": %llu, \"errors\": %llu},\n",
            (unsigned long long)res->op[KVS_WORKLOAD_SET].completed,
            (unsigned long long)res->op[KVS_WORKLOAD_SET].errors);
    fprintf(f, "    \"warmup_requests\": %llu,\n    \"prefill_requests\": %llu,\n",
            (unsigned long long)res->warmup_requests, (unsigned long long)res->prefill_requests);
    fprintf(f, "    \"prefill_errors\": %llu,\n    \"prefill_s\": %.6f,\n",
            (unsigned long long)res->prefill_errors, res->prefill_s);
    fprintf(f, "    \"unanswered\": %llu,\n    \"late_sends\": %llu,\n    \"unsent\": %llu,\n",
            (unsigned long long)res->unanswered, (unsigned long long)res->late_sends,
            (unsigned long long)res->unsent);
    fprintf(f, "    \"interrupted\": %s,\n    \"fatal\": ", res->interrupted ? "true" : "false");
    if (res->fatal != 0)
        json_str(f, res->fatal_msg);
    else
        fprintf(f, "null");
    fprintf(f,
            ",\n    \"cpu\": {\"user_s\": %.3f, \"sys_s\": %.3f, \"requests_per_cpu_s\": %.1f},\n",
            res->cpu_user_s, res->cpu_sys_s, cpu > 0 ? (double)res->completed / cpu : 0.0);
    fprintf(f, "    \"per_second\": [");
    for (unsigned i = 0; i < res->nseconds; i++)
        fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)res->per_second[i]);
    fprintf(f, "]\n  },\n  \"verify\": {\"enabled\": %s, \"checked_ok\": %llu, \"failures\": %llu",
            w->verify ? "true" : "false", (unsigned long long)res->verified,
            (unsigned long long)res->verify_failures);
    fprintf(f, ", \"by_kind\": {");
    for (int k = 1; k < 8; k++) {
        if (res->verify_by_kind[k] == 0)
            continue;
        fprintf(f, "%s", first ? "" : ", ");
        json_str(f, kvs_workload_verdict_name((enum kvs_workload_verdict)k));
        fprintf(f, ": %llu", (unsigned long long)res->verify_by_kind[k]);
        first = false;
    }
    fprintf(f, "}},\n  \"latency_ns\": {\n");
    json_latency(f, "all", &res->latency, false);
    json_latency(f, "get", &res->op[KVS_WORKLOAD_GET].latency, false);
    json_latency(f, "set", &res->op[KVS_WORKLOAD_SET].latency, true);
    fprintf(f, "  },\n  \"histogram\": {\n    \"unit\": \"ns\",\n"
               "    \"relative_error\": 0.01,\n    \"buckets\": [");
    first = true;
    for (size_t i = 0; i < KVS_HIST_BUCKETS; i++) {
        uint64_t lo;
        uint64_t hi;

        if (res->latency.counts[i] == 0)
            continue;
        kvs_hist_bucket_bounds(i, &lo, &hi);
        fprintf(f, "%s\n      {\"lo\": %llu, \"hi\": %llu, \"count\": %llu}", first ? "" : ",",
                (unsigned long long)lo, (unsigned long long)hi,
                (unsigned long long)res->latency.counts[i]);
        first = false;
    }
    fprintf(f, "\n    ]\n  }\n}\n");
}

int kvs_bench_report_json(const char *path, const struct kvs_bench_config *cfg,
                          const struct kvs_bench_result *res)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    int ret = 0;

    if (f == NULL)
        return -errno;
    json_body(f, cfg, res);
    if (fflush(f) != 0 || ferror(f))
        ret = -errno;
    if (f != stdout && fclose(f) != 0 && ret == 0)
        ret = -errno;
    return ret != 0 ? ret : 0;
}
