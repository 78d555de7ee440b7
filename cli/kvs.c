/* SPDX-License-Identifier: MIT */
/*
 * kvs: the storage engine on a directory, without a server. Parses arguments, opens the
 * engine synchronously, runs one command, maps the result to an exit code. No logic lives
 * here beyond argument handling.
 *
 *   kvs set greeting hello          # no output, exit 0
 *   kvs get greeting                # prints "hello"; a missing key prints "Key not found"
 *   kvs rm greeting                 # no output; a missing key: "Key not found", exit 1
 *   kvs --dir /var/lib/kvs stats    # human-readable statistics
 *   kvs compact                     # full compaction of the store
 *   kvs -V                          # "kvs 0.1.0"
 *
 * Exit codes: 0 success, 1 error (message on stderr) or rm of a missing key, 2 usage error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs/engine.h"
#include "kvs/error.h"
#include "kvs/log.h"

static void usage(void)
{
    fprintf(stderr, "usage: kvs [--dir DIR] [--fsync always|everysec|never] [--salvage] COMMAND\n"
                    "commands:\n"
                    "  set KEY VALUE   store VALUE under KEY\n"
                    "  get KEY         print the value of KEY (\"Key not found\" if absent)\n"
                    "  rm KEY          remove KEY (exit 1 and \"Key not found\" if absent)\n"
                    "  compact         rewrite the store without dead records\n"
                    "  stats           print store statistics\n"
                    "  -V, --version   print the version\n"
                    "DIR defaults to the current directory.\n");
}

static void print_stats(struct kvs_engine *e, const char *dir)
{
    struct kvs_engine_stats st;

    kvs_engine_stats(e, &st);
    printf("directory:           %s\n", dir);
    printf("keys:                %llu\n", (unsigned long long)st.keys);
    printf("key bytes:           %llu\n", (unsigned long long)st.key_bytes);
    printf("index bytes:         %llu\n", (unsigned long long)st.index_bytes);
    printf("index bytes/key:     %.1f (beyond the key itself)\n", st.index_bytes_per_key);
    printf("segments:            %llu\n", (unsigned long long)st.segments);
    printf("disk bytes:          %llu\n", (unsigned long long)st.disk_bytes);
    printf("live bytes:          %llu\n", (unsigned long long)st.live_bytes);
    printf("dead bytes:          %llu\n", (unsigned long long)st.dead_bytes);
    printf("hint files used:     %llu\n", (unsigned long long)st.hint_files_used);
    printf("torn bytes cut:      %llu\n", (unsigned long long)st.recovered_torn_bytes);
    printf("salvage dropped:     %llu\n", (unsigned long long)st.salvage_dropped_bytes);
    printf("next sequence:       %llu\n", (unsigned long long)st.next_seq);
}

int main(int argc, char **argv)
{
    struct kvs_engine_options opt;
    struct kvs_engine *e = NULL;
    const char *dir = ".";
    const char *pos[4] = {"", "", "", ""};
    int npos = 0, rc, status = 0;
    char err[512];

    kvs_engine_options_init(&opt);
    kvs_log_set_level(KVS_LOG_WARN);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            if (argc != 2) {
                usage();
                return 2;
            }
            printf("kvs %s\n", KVS_VERSION);
            return 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            return 0;
        } else if (strcmp(a, "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(a, "--fsync") == 0 && i + 1 < argc) {
            if (kvs_engine_parse_fsync(argv[++i], &opt.fsync) != 0) {
                fprintf(stderr, "kvs: unknown fsync policy '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--salvage") == 0) {
            opt.salvage = true;
        } else if (strcmp(a, "--") == 0) {
            for (i++; i < argc && npos < 4; i++)
                pos[npos++] = argv[i];
            if (i < argc)
                npos = 4;
            break;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "kvs: unknown option '%s'\n", a);
            usage();
            return 2;
        } else if (npos < 4) {
            pos[npos++] = a;
        } else {
            npos = 4; /* too many: reported below */
        }
    }
    if (npos == 0 || npos == 4) {
        usage();
        return 2;
    }
    if (!((strcmp(pos[0], "set") == 0 && npos == 3) || (strcmp(pos[0], "get") == 0 && npos == 2) ||
          (strcmp(pos[0], "rm") == 0 && npos == 2) ||
          (strcmp(pos[0], "compact") == 0 && npos == 1) ||
          (strcmp(pos[0], "stats") == 0 && npos == 1))) {
        usage();
        return 2;
    }
    rc = kvs_engine_open(dir, &opt, &e, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "kvs: %s\n", err[0] ? err : kvs_strerror(rc));
        return 1;
    }
    if (strcmp(pos[0], "set") == 0) {
        rc = kvs_engine_set(e, pos[1], strlen(pos[1]), pos[2], strlen(pos[2]));
    } else if (strcmp(pos[0], "get") == 0) {
        const void *val;
        size_t vlen;

        rc = kvs_engine_get(e, pos[1], strlen(pos[1]), &val, &vlen);
        if (rc == 0) {
            fwrite(val, 1, vlen, stdout);
            putchar('\n');
        } else if (rc == KVS_ENOTFOUND) {
            printf("Key not found\n");
            rc = 0;
        }
    } else if (strcmp(pos[0], "rm") == 0) {
        rc = kvs_engine_remove(e, pos[1], strlen(pos[1]));
        if (rc == KVS_ENOTFOUND) {
            printf("Key not found\n");
            status = 1;
            rc = 0;
        }
    } else if (strcmp(pos[0], "compact") == 0) {
        rc = kvs_engine_compact(e);
    } else {
        print_stats(e, dir);
    }
    if (rc == KVS_ETOOBIG) {
        fprintf(stderr,
                "kvs: %s: key of %zu bytes or value of %zu bytes is over the limit "
                "(max_key %u, max_value %llu bytes)\n",
                pos[0], strlen(pos[1]), npos > 2 ? strlen(pos[2]) : (size_t)0, opt.max_key,
                (unsigned long long)opt.max_value);
        status = 1;
    } else if (rc < 0) {
        fprintf(stderr, "kvs: %s: %s\n", pos[0], kvs_strerror(rc));
        status = 1;
    }
    rc = kvs_engine_close(e);
    if (rc < 0 && status == 0) {
        fprintf(stderr, "kvs: closing the store: %s\n", kvs_strerror(rc));
        status = 1;
    }
    if (fflush(stdout) != 0)
        status = 1;
    return status;
}
