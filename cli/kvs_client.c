/* SPDX-License-Identifier: MIT */
/*
 * kvs-client: the command-line client. It parses its arguments, sends one command to a
 * kvs-server (or any Redis-protocol server) with the client library of kvs/client.h, prints the
 * result and maps it to an exit code: 0 done, 1 failed (server unreachable, server error, rm of
 * a missing key), 2 bad usage. All logic worth testing lives in the library.
 *
 *   kvs-client set greeting hello              # no output, exit 0
 *   kvs-client get greeting                    # prints "hello"
 *   kvs-client get nosuchkey                   # prints "Key not found", exit 0
 *   kvs-client rm greeting --addr 127.0.0.1:4000
 *   kvs-client rm greeting                     # "Key not found" on stderr, exit 1
 *   kvs-client set k -- -5                     # "--" ends options: the value is "-5"
 *   kvs-client -V                              # "kvs-client 0.1.0"
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs/client.h"

/* Connect and per-wait timeout. Generous, since a get of a large value on a loaded server is
 * not a failure; an unreachable local port fails at once anyway. */
#define TIMEOUT_MS 10000

#define EXIT_USAGE 2

enum op { OP_SET, OP_GET, OP_RM };

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-client set KEY VALUE [--addr IP:PORT]\n"
               "       kvs-client get KEY [--addr IP:PORT]\n"
               "       kvs-client rm KEY [--addr IP:PORT]\n"
               "       kvs-client -V | --version\n"
               "       kvs-client -h | --help\n"
               "The default address is " KVS_CLIENT_DEFAULT_ADDR
               ". Options may come before or after the\n"
               "arguments; \"--\" ends options.\n");
}

static int bad_usage(const char *msg, const char *arg)
{
    if (arg != NULL)
        fprintf(stderr, "kvs-client: %s '%s'\n", msg, arg);
    else
        fprintf(stderr, "kvs-client: %s\n", msg);
    usage(stderr);
    return EXIT_USAGE;
}

/* Print a reply the command did not expect: an error reply as the server worded it. */
static int unexpected(const struct kvs_resp_reply *r)
{
    if (r->type == KVS_RESP_ERROR)
        fprintf(stderr, "kvs-client: %.*s\n", (int)r->len, r->str);
    else
        fprintf(stderr, "kvs-client: unexpected reply from server\n");
    return 1;
}

int main(int argc, char **argv)
{
    const char *addr = KVS_CLIENT_DEFAULT_ADDR;
    const char *pos[4];
    int npos = 0;
    bool opts = true;
    struct kvs_client *c = NULL;
    struct kvs_resp_reply r;
    const char *cmd[3];
    enum op op;
    int want, rc;
    char err[256];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (opts && strcmp(a, "--") == 0) {
            opts = false;
        } else if (opts && (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0)) {
            printf("kvs-client %s\n", KVS_VERSION);
            return 0;
        } else if (opts && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
            usage(stdout);
            return 0;
        } else if (opts && strcmp(a, "--addr") == 0) {
            if (i + 1 >= argc)
                return bad_usage("missing value for", a);
            addr = argv[++i];
        } else if (opts && strncmp(a, "--addr=", 7) == 0) {
            addr = a + 7;
        } else if (opts && a[0] == '-' && a[1] != '\0') {
            return bad_usage("unknown option", a);
        } else {
            if (npos == (int)(sizeof(pos) / sizeof(pos[0])))
                return bad_usage("too many arguments", NULL);
            pos[npos++] = a;
        }
    }
    if (npos == 0)
        return bad_usage("missing command", NULL);
    if (strcmp(pos[0], "set") == 0) {
        op = OP_SET;
        want = 3;
        cmd[0] = "SET";
    } else if (strcmp(pos[0], "get") == 0) {
        op = OP_GET;
        want = 2;
        cmd[0] = "GET";
    } else if (strcmp(pos[0], "rm") == 0) {
        op = OP_RM;
        want = 2;
        cmd[0] = "DEL";
    } else {
        return bad_usage("unknown command", pos[0]);
    }
    if (npos != want)
        return bad_usage(npos < want ? "missing arguments for" : "too many arguments for", pos[0]);
    for (int i = 1; i < want; i++)
        cmd[i] = pos[i];

    rc = kvs_client_open(&c, addr, TIMEOUT_MS, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "kvs-client: %s\n", err);
        /* A malformed --addr is a usage error; a well-formed but unreachable one is not. */
        if (rc == -EINVAL) {
            usage(stderr);
            return EXIT_USAGE;
        }
        return 1;
    }
    rc = kvs_client_command(c, want, cmd, NULL, &r);
    if (rc < 0) {
        fprintf(stderr, "kvs-client: %s\n", kvs_client_error(c));
        kvs_client_close(c);
        return 1;
    }

    if (op == OP_SET) {
        rc = r.type == KVS_RESP_SIMPLE ? 0 : unexpected(&r);
    } else if (op == OP_GET) {
        if (r.type == KVS_RESP_BULK) {
            fwrite(r.str, 1, r.len, stdout);
            putchar('\n');
            rc = 0;
        } else if (r.type == KVS_RESP_NULL) {
            puts("Key not found");
            rc = 0;
        } else {
            rc = unexpected(&r);
        }
    } else {
        if (r.type == KVS_RESP_INTEGER && r.integer > 0) {
            rc = 0;
        } else if (r.type == KVS_RESP_INTEGER && r.integer == 0) {
            fputs("Key not found\n", stderr);
            rc = 1;
        } else {
            rc = unexpected(&r);
        }
    }
    kvs_client_close(c);
    /* A value that could not be written out (a closed pipe, a full disk) is a failure. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "kvs-client: cannot write output: %s\n", strerror(errno));
        return 1;
    }
    return rc;
}
