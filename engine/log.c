/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr. Each message is formatted into one buffer and written with one write(2)
 * so that lines from different shard threads never interleave. The level is a plain global,
 * written once at start-up before threads exist.
 */
#include "kvs/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum kvs_log_level min_level = KVS_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void kvs_log_set_level(enum kvs_log_level level)
{
    min_level = level;
}

int kvs_log_parse_level(const char *name, enum kvs_log_level *out)
{
    for (int i = 0; i <= (int)KVS_LOG_OFF; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum kvs_log_level)i;
            return 0;
        }
    }
    if (strcmp(name, "warning") == 0) {
        *out = KVS_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

bool kvs_log_enabled(enum kvs_log_level level)
{
    return level >= min_level && level < KVS_LOG_OFF;
}

__attribute__((format(printf, 2, 0))) static void vlog(const char *level, const char *fmt,
                                                       va_list ap)
{
    char line[1024];
    char thread[16] = "";
    struct timespec ts;
    struct tm tm;
    size_t n;
    int k;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    (void)pthread_getname_np(pthread_self(), thread, sizeof(thread));
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    k = snprintf(line + n, sizeof(line) - n, ".%03ldZ %s [%s] ", ts.tv_nsec / 1000000L, level,
                 thread);
    if (k > 0)
        n += (size_t)k < sizeof(line) - n ? (size_t)k : sizeof(line) - n - 1;
    /* The analyzer loses track of va_start across the noreturn kvs_panic() caller. */
    // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized)
    k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    if (k > 0)
        n += (size_t)k < sizeof(line) - n ? (size_t)k : sizeof(line) - n - 1;
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line; a short write to stderr is not worth retrying. */
    (void)!write(STDERR_FILENO, line, n);
}

void kvs_log(enum kvs_log_level level, const char *fmt, ...)
{
    va_list ap;

    if (!kvs_log_enabled(level))
        return;
    va_start(ap, fmt);
    vlog(level_names[level], fmt, ap);
    va_end(ap);
}

void kvs_panic(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog("PANIC", fmt, ap);
    va_end(ap);
    abort();
}
