/* SPDX-License-Identifier: MIT */
/*
 * Logging for every kvs program: one line per message on stderr with a timestamp, the level
 * and the calling thread's name. The level is set once at start-up, before any thread is
 * started, and only read afterwards.
 */
#ifndef KVS_ENGINE_LOG_H
#define KVS_ENGINE_LOG_H

#include <stdbool.h>

enum kvs_log_level {
    KVS_LOG_DEBUG = 0,
    KVS_LOG_INFO = 1,
    KVS_LOG_WARN = 2,
    KVS_LOG_ERROR = 3,
    KVS_LOG_OFF = 4,
};

/* kvs_log_set_level - set the minimum level that is printed (default KVS_LOG_INFO).
 * Call before starting threads. */
void kvs_log_set_level(enum kvs_log_level level);

/* kvs_log_parse_level - parse "debug", "info", "warn", "error" or "off".
 * Returns 0 and fills *out, or -EINVAL. */
int kvs_log_parse_level(const char *name, enum kvs_log_level *out);

/* kvs_log_enabled - true when messages at this level are printed. */
bool kvs_log_enabled(enum kvs_log_level level);

/* kvs_log - print one message (printf format) if level is enabled. Any thread. */
void kvs_log(enum kvs_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* kvs_panic - print the message and abort. For states the kernel promised cannot happen. */
void kvs_panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define KVS_DEBUG(...) kvs_log(KVS_LOG_DEBUG, __VA_ARGS__)
#define KVS_INFO(...)  kvs_log(KVS_LOG_INFO, __VA_ARGS__)
#define KVS_WARN(...)  kvs_log(KVS_LOG_WARN, __VA_ARGS__)
#define KVS_ERROR(...) kvs_log(KVS_LOG_ERROR, __VA_ARGS__)

#endif
