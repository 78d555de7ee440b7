/* SPDX-License-Identifier: MIT */
/*
 * Server start-up and shutdown: the data directory (its lock and its meta file), the address
 * guard that keeps a second server off our port, the shard threads, and the signals.
 *
 * Runs on the main thread, except server_open_listener (each shard opens its own listener)
 * and server_shard_failed_mt. Must not: take part in the data path; after start-up the main
 * thread only waits for a signal and then tells the shards to stop.
 */
#include "kvs/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvs/error.h"
#include "kvs/log.h"
#include "repart.h"
#include "shard.h"

#define META_NAME "kvs-server.meta"
#define LOCK_NAME "kvs-server.lock"

void kvs_server_config_init(struct kvs_server_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->addr = "127.0.0.1:4000";
    cfg->dir = ".";
    cfg->engine = KVS_ENGINE_NAME;
    cfg->shards = 0;
    cfg->fsync = KVS_FSYNC_EVERYSEC;
    cfg->max_clients = 10000;
    cfg->max_bulk = KVS_RESP_MAX_BULK_DEFAULT;
    cfg->max_args = KVS_RESP_MAX_ARRAY_DEFAULT;
    cfg->max_inline = KVS_RESP_MAX_INLINE_DEFAULT;
    cfg->max_key = 64 * 1024;
    cfg->max_value = (uint64_t)512 * 1024 * 1024;
    cfg->max_output = (size_t)64 * 1024 * 1024;
    cfg->max_pipeline = 256;
    cfg->shutdown_timeout_ms = 10000;
}

/* ---- address ---- */

static int parse_addr(struct server *srv)
{
    const char *a = srv->cfg.addr;
    const char *colon;
    size_t hlen;
    char *end;
    long port;

    if (a[0] == '[') {
        const char *close = strchr(a, ']');

        if (close == NULL || close[1] != ':')
            return -EINVAL;
        hlen = (size_t)(close - a - 1);
        a++;
        colon = close + 1;
        srv->family = AF_INET6;
    } else {
        colon = strrchr(a, ':');
        if (colon == NULL)
            return -EINVAL;
        hlen = (size_t)(colon - a);
        srv->family = AF_INET;
    }
    if (hlen == 0 || hlen >= sizeof(srv->addr_host))
        return -EINVAL;
    memcpy(srv->addr_host, a, hlen);
    srv->addr_host[hlen] = '\0';
    /* Numeric addresses only (no resolver at start-up), but "localhost" is common enough. */
    if (srv->family == AF_INET && strcmp(srv->addr_host, "localhost") == 0)
        strcpy(srv->addr_host, "127.0.0.1");
    {
        unsigned char tmp[sizeof(struct in6_addr)];

        if (inet_pton(srv->family, srv->addr_host, tmp) != 1)
            return -EINVAL;
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || end == colon + 1 || port < 1 || port > 65535)
        return -EINVAL;
    srv->port = (int)port;
    return 0;
}

static socklen_t make_sockaddr(const struct server *srv, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (srv->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)srv->port);
        if (inet_pton(AF_INET6, srv->addr_host, &s6->sin6_addr) != 1)
            return 0;
        return sizeof(*s6);
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)srv->port);
    if (inet_pton(AF_INET, srv->addr_host, &s4->sin_addr) != 1)
        return 0;
    return sizeof(*s4);
}

/* A socket bound to the address, with SO_REUSEADDR (rebinding at once after a restart, past
 * TIME_WAIT) and optionally SO_REUSEPORT. Returns the fd or -errno. */
static int bind_socket(const struct server *srv, bool reuseport)
{
    struct sockaddr_storage ss;
    socklen_t len = make_sockaddr(srv, &ss);
    int one = 1;
    int fd, rc;

    if (len == 0)
        return -EINVAL;
    fd = socket(srv->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, (struct sockaddr *)&ss, len) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int server_open_listener(const struct server *srv, char *msg, size_t msglen)
{
    int fd = bind_socket(srv, true);

    if (fd >= 0 && listen(fd, 4096) < 0) {
        int rc = -errno;

        close(fd);
        fd = rc;
    }
    if (fd < 0)
        snprintf(msg, msglen, "cannot listen on %s: %s", srv->cfg.addr, kvs_strerror(fd));
    return fd;
}

/*
 * The port guard. SO_REUSEPORT lets any socket of the same user join our port, a second
 * kvs-server included, and the kernel would then split connections between the two. So:
 * before the shards bind, a probe socket binds the address WITHOUT SO_REUSEPORT: it fails if
 * anyone listens there, whatever their options. That leaves a window between closing the
 * probe and binding the shards; after binding, listening_inodes() checks that every listener
 * on our port is one of ours, so two servers racing through the window both see the other
 * and both exit instead of sharing. docs/server.md explains the choice.
 */
/*
 * A server killed with SIGKILL leaves its listeners (and connections) behind for a moment:
 * they belong to its io_uring instances, which the kernel tears down asynchronously after the
 * process is gone (about 30 ms measured here). A restart "at once" must not mistake those
 * for another server, so an address in use is probed again for up to PROBE_WAIT_MS before
 * it is reported. A real second server is still refused, only that much later.
 */
#define PROBE_WAIT_MS  2000
#define PROBE_RETRY_MS 20

static int probe_port(const struct server *srv)
{
    const struct timespec pause = {.tv_sec = 0, .tv_nsec = PROBE_RETRY_MS * 1000000L};
    int fd = -EADDRINUSE;

    for (int waited = 0; waited <= PROBE_WAIT_MS; waited += PROBE_RETRY_MS) {
        fd = bind_socket(srv, false);
        if (fd != -EADDRINUSE)
            break;
        nanosleep(&pause, NULL);
    }
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

/* Counts the listening TCP sockets on port whose inode is not in ours[0..n). -errno when
 * /proc cannot be read. */
static int foreign_listeners(int port, const unsigned long *ours, size_t n)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int foreign = 0;

    for (size_t f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "re");
        char line[512];

        if (fp == NULL) {
            if (errno == ENOENT)
                continue;
            return -errno;
        }
        /* Columns: sl local_address rem_address st ... inode; ports and state in hex. */
        while (fgets(line, sizeof(line), fp) != NULL) {
            char local[64];
            unsigned st, lport;
            unsigned long inode;
            const char *c;
            bool mine = false;

            if (sscanf(line, " %*s %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st, &inode) != 3)
                continue;
            c = strrchr(local, ':');
            if (c == NULL || sscanf(c + 1, "%x", &lport) != 1)
                continue;
            if (st != 0x0A || (int)lport != port)
                continue;
            for (size_t i = 0; i < n; i++)
                if (ours[i] == inode)
                    mine = true;
            if (!mine)
                foreign++;
        }
        fclose(fp);
    }
    return foreign;
}

/* ---- data directory ---- */

/* swap_to != 0 records that a re-partition to swap_to shards is complete in the staging
 * directory and must be switched in (docs/server.md, "Re-partitioning"). */
static int write_meta(const char *dir, const char *engine, unsigned shards, unsigned swap_to)
{
    char path[4096], tmp[4112], text[256];
    int fd = -1, dfd = -1, rc = 0;
    int len;

    snprintf(path, sizeof(path), "%s/%s", dir, META_NAME);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    len = snprintf(text, sizeof(text),
                   "# kvs-server data directory; do not edit\nengine %s\nformat %d\nshards %u\n",
                   engine, KVS_SERVER_DIR_FORMAT, shards);
    if (swap_to != 0)
        len += snprintf(text + len, sizeof(text) - (size_t)len, "swap_to %u\n", swap_to);
    /* tmp + fsync + rename + fsync(dir): after a crash the meta file is either absent or
     * whole, never half-written. */
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if (write(fd, text, (size_t)len) != len || fsync(fd) < 0) {
        rc = errno != 0 ? -errno : -EIO;
        goto out;
    }
    if (rename(tmp, path) < 0) {
        rc = -errno;
        goto out;
    }
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) < 0)
        rc = -errno;
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    if (rc < 0)
        (void)unlink(tmp);
    return rc;
}

/* Reads the meta file. Returns 1 when found (fields filled), 0 when absent, or an error. */
static int read_meta(const char *dir, char *engine, size_t elen, int *format, unsigned *shards,
                     unsigned *swap_to)
{
    char path[4096], line[256];
    FILE *fp;
    int seen = 0;

    snprintf(path, sizeof(path), "%s/%s", dir, META_NAME);
    fp = fopen(path, "re");
    if (fp == NULL)
        return errno == ENOENT ? 0 : -errno;
    engine[0] = '\0';
    while (fgets(line, sizeof(line), fp) != NULL) {
        char val[128];
        unsigned u;

        if (sscanf(line, "engine %127s", val) == 1) {
            snprintf(engine, elen, "%s", val);
            seen |= 1;
        } else if (sscanf(line, "format %u", &u) == 1) {
            *format = (int)u;
            seen |= 2;
        } else if (sscanf(line, "shards %u", &u) == 1) {
            *shards = u;
            seen |= 4;
        } else if (sscanf(line, "swap_to %u", &u) == 1) {
            *swap_to = u;
        }
    }
    fclose(fp);
    return seen == 7 ? 1 : KVS_EFORMAT;
}

/* Number of shard-NNN sub-directories (a directory used before without a meta file). */
static int count_shard_dirs(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return -errno;
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, "shard-", 6) == 0)
            n++;
    closedir(d);
    return n;
}

/* Switch the staged shards in, record the new count, and drop the old copies. */
static int finish_swap(const struct kvs_server_config *cfg, unsigned old_n, unsigned new_n)
{
    int rc = repart_swap(cfg->dir, old_n, new_n);

    if (rc == 0)
        rc = write_meta(cfg->dir, cfg->engine, new_n, 0);
    if (rc < 0) {
        KVS_ERROR("cannot switch %s to its re-partitioned shards: %s; start again to retry",
                  cfg->dir, kvs_strerror(rc));
        return rc;
    }
    rc = repart_cleanup(cfg->dir, false);
    if (rc < 0)
        KVS_WARN("cannot remove the old shards of %s: %s", cfg->dir, kvs_strerror(rc));
    return 0;
}

static int check_dir(const struct server *srv)
{
    const struct kvs_server_config *cfg = &srv->cfg;
    char engine[128];
    int format = 0, rc;
    unsigned shards = 0, swap_to = 0;

    rc = read_meta(cfg->dir, engine, sizeof(engine), &format, &shards, &swap_to);
    if (rc == KVS_EFORMAT) {
        KVS_ERROR("%s/%s is damaged or incomplete; restore it or start with an empty data "
                  "directory",
                  cfg->dir, META_NAME);
        return rc;
    }
    if (rc < 0) {
        KVS_ERROR("cannot read %s/%s: %s", cfg->dir, META_NAME, kvs_strerror(rc));
        return rc;
    }
    if (rc == 0) {
        int n = count_shard_dirs(cfg->dir);

        if (n > 0) {
            KVS_ERROR("data directory %s holds %d shard directories but no %s; refusing to "
                      "guess how it was created",
                      cfg->dir, n, META_NAME);
            return KVS_EFORMAT;
        }
        rc = write_meta(cfg->dir, cfg->engine, srv->nshards, 0);
        if (rc < 0)
            KVS_ERROR("cannot write %s/%s: %s", cfg->dir, META_NAME, kvs_strerror(rc));
        return rc;
    }
    if (strcmp(engine, cfg->engine) != 0) {
        KVS_ERROR("data directory %s was created with engine '%s', not '%s'; start with "
                  "--engine %s or use another directory",
                  cfg->dir, engine, cfg->engine, engine);
        return KVS_EFORMAT;
    }
    if (format != KVS_SERVER_DIR_FORMAT) {
        KVS_ERROR("data directory %s has layout format %d; this kvs-server reads format %d",
                  cfg->dir, format, KVS_SERVER_DIR_FORMAT);
        return KVS_EFORMAT;
    }
    if (swap_to != 0 && swap_to <= KVS_SERVER_MAX_SHARDS && shards <= KVS_SERVER_MAX_SHARDS) {
        KVS_WARN("finishing an interrupted re-partition of %s from %u to %u shards", cfg->dir,
                 shards, swap_to);
        rc = finish_swap(cfg, shards, swap_to);
        if (rc < 0)
            return rc;
        shards = swap_to;
    } else {
        rc = repart_cleanup(cfg->dir, true);
        if (rc < 0) {
            KVS_ERROR("cannot remove re-partition leftovers in %s: %s", cfg->dir, kvs_strerror(rc));
            return rc;
        }
    }
    if (shards != srv->nshards && cfg->repartition) {
        KVS_INFO("re-partitioning %s from %u to %u shards", cfg->dir, shards, srv->nshards);
        rc = repart_copy(cfg->dir, cfg, shards, srv->nshards);
        if (rc < 0) {
            KVS_ERROR("re-partitioning failed: %s; the data is unchanged in %u shards",
                      kvs_strerror(rc), shards);
            return rc;
        }
        /* The copy is complete and durable: from this write on, the switch is what any
         * start will finish. */
        rc = write_meta(cfg->dir, cfg->engine, shards, srv->nshards);
        if (rc < 0) {
            KVS_ERROR("cannot write %s/%s: %s", cfg->dir, META_NAME, kvs_strerror(rc));
            return rc;
        }
        rc = finish_swap(cfg, shards, srv->nshards);
        if (rc < 0)
            return rc;
        KVS_INFO("re-partition of %s to %u shards complete", cfg->dir, srv->nshards);
        shards = srv->nshards;
    }
    if (shards != srv->nshards) {
        KVS_ERROR("data directory %s has %u shards; start with --shards %u, or add "
                  "--repartition to move the data to %u shards",
                  cfg->dir, shards, shards, srv->nshards);
        return KVS_EFORMAT;
    }
    return 0;
}

static int lock_dir(const char *dir, int *out)
{
    char path[4096];
    int fd, rc;

    snprintf(path, sizeof(path), "%s/%s", dir, LOCK_NAME);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? KVS_ELOCKED : -errno;
        close(fd);
        return rc;
    }
    *out = fd;
    return 0;
}

/* ---- shards ---- */

static unsigned cpus_allowed(int *cpu_list, unsigned max)
{
    cpu_set_t set;
    unsigned n = 0;

    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return 0;
    for (int c = 0; c < CPU_SETSIZE && n < max; c++)
        if (CPU_ISSET(c, &set)) {
            if (cpu_list != NULL)
                cpu_list[n] = c;
            n++;
        }
    return n;
}

void server_shard_failed_mt(struct server *srv)
{
    pthread_kill(srv->main_thread, SIGUSR1);
}

static void free_shards(struct server *srv)
{
    if (srv->shards == NULL)
        return;
    for (unsigned i = 0; i < srv->nshards; i++) {
        struct shard *sh = srv->shards[i];

        if (sh == NULL)
            continue;
        for (unsigned j = 0; j < srv->nshards; j++) {
            msg_ring_fini(&sh->inbox[j]);
            msg_outbox_fini(&sh->outbox[j]);
        }
        free(sh->inbox);
        free(sh->outbox);
        free(sh->wake);
        free(sh->locks);
        free(sh);
    }
    free(srv->shards);
    srv->shards = NULL;
}

static int alloc_shards(struct server *srv, const int *cpus, unsigned ncpus)
{
    unsigned n = srv->nshards;

    srv->shards = calloc(n, sizeof(struct shard *));
    if (srv->shards == NULL)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        struct shard *sh = calloc(1, sizeof(*sh));

        if (sh == NULL)
            return -ENOMEM;
        srv->shards[i] = sh;
        sh->id = i;
        sh->srv = srv;
        sh->cpu = ncpus > 0 ? cpus[i % ncpus] : -1;
        sh->listen_fd = -1;
        sh->accept_op = -1;
        sh->watch_op = -1;
        sh->inbox = calloc(n, sizeof(*sh->inbox));
        sh->outbox = calloc(n, sizeof(*sh->outbox));
        sh->wake = calloc(n, sizeof(*sh->wake));
        sh->nlocks_mask = 1023;
        sh->locks = calloc(sh->nlocks_mask + 1, sizeof(struct keylock *));
        if (sh->inbox == NULL || sh->outbox == NULL || sh->wake == NULL || sh->locks == NULL)
            return -ENOMEM;
        for (unsigned j = 0; j < n; j++) {
            msg_outbox_init(&sh->outbox[j]);
            if (j != i && msg_ring_init(&sh->inbox[j], SHARD_INBOX_SLOTS) < 0)
                return -ENOMEM;
        }
    }
    return 0;
}

/* Tell every shard to stop, through its ring (a MSG_RING from a small ring of our own). */
static int stop_shards(struct server *srv, struct kvs_ring *ring)
{
    int rc;

    for (unsigned i = 0; i < srv->nshards; i++) {
        struct shard *sh = srv->shards[i];

        rc = kvs_ring_msg(ring, sh->ring_fd, sh->watch_tag, WAKE_STOP, NULL, NULL);
        if (rc < 0)
            return rc;
    }
    rc = kvs_ring_submit(ring);
    if (rc < 0)
        return rc;
    return kvs_ring_run(ring, srv->nshards, 0) < 0 ? -EIO : 0;
}

static int wait_signal(const sigset_t *set)
{
    int sig = 0;

    while (sigwait(set, &sig) != 0)
        ;
    return sig;
}

int kvs_server_run(const struct kvs_server_config *cfg)
{
    struct server *srv = calloc(1, sizeof(struct server));
    struct kvs_ring *ctl = NULL;
    struct kvs_ring_options ropt = {.entries = 64, .no_single_issuer = true};
    sigset_t set;
    int cpus[KVS_SERVER_MAX_SHARDS];
    unsigned ncpus, started = 0;
    int lock_fd = -1, rc = 0, sig, foreign;
    unsigned long inodes[KVS_SERVER_MAX_SHARDS];
    bool barrier_ready = false;

    if (srv == NULL)
        return -ENOMEM;
    srv->cfg = *cfg;
    srv->main_thread = pthread_self();
    srv->started = time(NULL);
    atomic_init(&srv->clients, 0);
    srv->limits.max_bulk_len = cfg->max_bulk;
    srv->limits.max_array_len = cfg->max_args;
    srv->limits.max_inline_len = cfg->max_inline;
    if (parse_addr(srv) < 0) {
        KVS_ERROR("bad address '%s': expected IP:PORT, e.g. 127.0.0.1:4000", cfg->addr);
        rc = -EINVAL;
        goto out;
    }
    if (strcmp(cfg->engine, KVS_ENGINE_NAME) != 0) {
        KVS_ERROR("unknown engine '%s'; this build has only '%s'", cfg->engine, KVS_ENGINE_NAME);
        rc = -EINVAL;
        goto out;
    }
    ncpus = cpus_allowed(cpus, KVS_SERVER_MAX_SHARDS);
    srv->nshards = cfg->shards != 0 ? cfg->shards : (ncpus > 0 ? ncpus : 1);
    if (srv->nshards > KVS_SERVER_MAX_SHARDS) {
        KVS_ERROR("--shards %u is over the limit of %d", srv->nshards, KVS_SERVER_MAX_SHARDS);
        rc = -EINVAL;
        goto out;
    }

    /* Signals: every thread inherits this mask, so only sigwait() below sees them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (mkdir(cfg->dir, 0755) < 0 && errno != EEXIST) {
        rc = -errno;
        KVS_ERROR("cannot create data directory %s: %s", cfg->dir, kvs_strerror(rc));
        goto out;
    }
    rc = lock_dir(cfg->dir, &lock_fd);
    if (rc < 0) {
        if (rc == KVS_ELOCKED)
            KVS_ERROR("data directory %s is in use by another kvs-server", cfg->dir);
        else
            KVS_ERROR("cannot lock data directory %s: %s", cfg->dir, kvs_strerror(rc));
        goto out;
    }
    rc = check_dir(srv);
    if (rc < 0)
        goto out;
    rc = probe_port(srv);
    if (rc < 0) {
        if (rc == -EADDRINUSE)
            KVS_ERROR("address %s is already in use (is another kvs-server running?)", cfg->addr);
        else
            KVS_ERROR("cannot bind %s: %s", cfg->addr, kvs_strerror(rc));
        goto out;
    }
    rc = kvs_ring_new(&ropt, &ctl);
    if (rc < 0) {
        KVS_ERROR("cannot create io_uring: %s", kvs_strerror(rc));
        goto out;
    }
    rc = alloc_shards(srv, cpus, ncpus);
    if (rc < 0) {
        KVS_ERROR("out of memory setting up %u shards", srv->nshards);
        goto out;
    }
    if (pthread_barrier_init(&srv->barrier, NULL, srv->nshards + 1) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    barrier_ready = true;
    for (; started < srv->nshards; started++) {
        int e =
            pthread_create(&srv->shards[started]->thread, NULL, shard_main, srv->shards[started]);

        if (e != 0) {
            /* The barrier counts every shard: without them all, start-up cannot go on. */
            kvs_panic("cannot start shard thread %u: %s", started, strerror(e));
        }
    }
    pthread_barrier_wait(&srv->barrier);
    rc = 0;
    for (unsigned i = 0; i < srv->nshards; i++) {
        struct shard *sh = srv->shards[i];
        struct stat st;

        if (sh->start_err != 0 && rc == 0) {
            rc = sh->start_err;
            KVS_ERROR("shard %u: %s", i, sh->start_msg);
        }
        inodes[i] = sh->listen_fd >= 0 && fstat(sh->listen_fd, &st) == 0 ? st.st_ino : 0;
    }
    if (rc == 0) {
        foreign = foreign_listeners(srv->port, inodes, srv->nshards);
        if (foreign > 0) {
            KVS_ERROR("address %s is already in use: another process listens on port %d "
                      "(is another kvs-server running?)",
                      cfg->addr, srv->port);
            rc = -EADDRINUSE;
        } else if (foreign < 0) {
            KVS_WARN("cannot check for other listeners on port %d: %s", srv->port,
                     kvs_strerror(foreign));
        }
    }
    srv->abort_start = rc != 0;
    pthread_barrier_wait(&srv->barrier);
    if (rc != 0)
        goto join;

    KVS_INFO("kvs-server %s listening on %s, %u shard(s), fsync %s, engine %s, data in %s",
             KVS_VERSION, cfg->addr, srv->nshards, kvs_engine_fsync_name(cfg->fsync), cfg->engine,
             cfg->dir);
    sig = wait_signal(&set);
    if (sig == SIGUSR1) {
        KVS_ERROR("a shard failed; shutting down");
        rc = -EIO;
    } else {
        KVS_INFO("received %s; finishing requests in flight, then syncing and exiting",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    if (stop_shards(srv, ctl) < 0)
        KVS_ERROR("cannot tell the shards to stop");
join:
    /* Wait for the shards while still listening for signals: a second SIGINT/SIGTERM means
     * "now", and after a shard failure the others may wait forever for answers it will never
     * send, so that case is bounded by the shutdown timeout. */
    if (started > 0 && !srv->abort_start) {
        uint64_t waited_ms = 0, limit_ms = (uint64_t)cfg->shutdown_timeout_ms + 5000;
        struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};

        for (unsigned i = 0; i < started;) {
            if (pthread_tryjoin_np(srv->shards[i]->thread, NULL) == 0) {
                if (srv->shards[i]->fail != 0 && rc == 0)
                    rc = srv->shards[i]->fail;
                i++;
                continue;
            }
            sig = sigtimedwait(&set, NULL, &tick);
            if (sig == SIGINT || sig == SIGTERM) {
                KVS_WARN("second %s: exiting at once, without waiting for the shards to sync",
                         sig == SIGINT ? "SIGINT" : "SIGTERM");
                return -EINTR; /* srv stays allocated: the shards still use it */
            }
            waited_ms += 100;
            if (rc == -EIO && waited_ms > limit_ms) {
                KVS_ERROR("shard %u does not stop; exiting without a clean shutdown", i);
                return -ETIMEDOUT; /* srv stays allocated, as above */
            }
        }
    } else {
        for (unsigned i = 0; i < started; i++)
            pthread_join(srv->shards[i]->thread, NULL);
    }
    if (rc == 0)
        KVS_INFO("all shards synced; bye");
out:
    if (barrier_ready)
        pthread_barrier_destroy(&srv->barrier);
    free_shards(srv);
    kvs_ring_free(ctl);
    if (lock_fd >= 0)
        close(lock_fd);
    free(srv);
    return rc;
}
