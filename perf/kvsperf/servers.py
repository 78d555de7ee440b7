# SPDX-License-Identifier: MIT
"""Starting, waiting for and stopping the servers under test, and the cleanup that must happen
even when the runner is interrupted.

Every process the runner starts goes through spawn(), which records it in CHILDREN; cleanup
only ever signals PIDs from that set (never a name or a process group), so a Redis or kvs the
user runs next to the benchmark is never touched. Children get their own session so that a
Ctrl-C in the terminal reaches only the runner, which then stops them in order (the server last,
so it can finish in-flight work and sync) instead of everyone dying at once mid-write.
"""

import os
import signal
import socket
import subprocess
import time

from . import resp

CHILDREN = set()
STOP_TIMEOUT = 30.0


class StartError(Exception):
    """A server did not start or did not answer in time; the message says why."""


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, log_path):
    """Start argv with stdout and stderr appended to log_path; record it for cleanup."""
    log = open(log_path, "ab")
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        raise StartError(f"cannot start {argv[0]}: {e.strerror}") from None
    finally:
        log.close()
    CHILDREN.add(p)
    return p


def stop(p, timeout=STOP_TIMEOUT):
    """SIGTERM, wait up to timeout, then SIGKILL. Returns (exit status, killed?)."""
    killed = False
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            p.kill()
            p.wait()
    CHILDREN.discard(p)
    return p.returncode, killed


def stop_all():
    """Stop every child still running (interrupt or error path). Safe to call twice."""
    for p in list(CHILDREN):
        stop(p, timeout=10.0)


def log_tail(path, lines=15):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + t for t in tail)


class Server:
    """One server under test on a data directory that outlives restarts."""

    def __init__(self, job, bins, data_dir, log_path):
        self.job = job
        self.bins = bins
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None
        self.port = None
        self.argv = None

    @property
    def pid(self):
        return self.proc.pid

    def command(self, port):
        """The exact command line for this job's server on port (also used by --dry-run)."""
        j = self.job
        if j["server"] == "kvs":
            argv = [self.bins["kvs-server"], "--addr", f"127.0.0.1:{port}",
                    "--dir", self.data_dir]
            if j["shards"] is not None:
                argv += ["--shards", str(j["shards"])]
            if j["fsync"] is not None:
                argv += ["--fsync", j["fsync"]]
        else:
            aof = j["appendonly"] if j["appendonly"] is not None else j["appendfsync"] is not None
            # No RDB snapshots (--save ""): persistence is only what the job asks for, and
            # a background save must not fork in the middle of a measurement.
            argv = [self.bins["redis-server"], "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "yes" if aof else "no",
                    "--appendfsync", j["appendfsync"] or "everysec",
                    "--dir", self.data_dir, "--daemonize", "no", "--logfile", ""]
        argv += j["server_args"]
        if j["server_cpus"] is not None:
            # taskset execs the server, so the PID we get is the server's own.
            argv = ["taskset", "-c", ",".join(map(str, j["server_cpus"]))] + argv
        return argv

    def start(self):
        """Start on a fresh port; returns the time the process was started (monotonic)."""
        self.port = free_port()
        self.argv = self.command(self.port)
        t0 = time.monotonic()
        self.proc = spawn(self.argv, self.log_path)
        return t0

    def _dead_message(self):
        return (f"{self.job['server']} server exited with status {self.proc.returncode} "
                f"before answering; command: {' '.join(self.argv)}\n"
                f"  last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    def wait_until(self, probe, timeout):
        """Call probe(port) until it returns True; raise StartError when the server dies or
        timeout passes. Polls every 2 ms at first (startup time is measured with this), then
        backs off to 50 ms so a slow start does not become a busy loop."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        last = "no answer"
        while True:
            if self.proc.poll() is not None:
                raise StartError(self._dead_message())
            try:
                if probe(self.port):
                    return time.monotonic()
            except (resp.RespError, resp.ServerError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise StartError(f"{self.job['server']} server did not answer on "
                                 f"127.0.0.1:{self.port} within {timeout:g}s (last: {last}); "
                                 f"log: {self.log_path}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def wait_ready(self, timeout):
        """Wait for an answer to PING. Redis answers -LOADING while it reads its AOF, which
        counts as not ready; any other reply means the server is serving."""
        def ping(port):
            with resp.Conn(port, timeout=2.0) as c:
                try:
                    c.call("PING")
                except resp.ServerError as e:
                    if str(e).startswith("LOADING"):
                        raise
            return True
        return self.wait_until(ping, timeout)

    def stop(self):
        code, killed = stop(self.proc)
        return {"exit": code, "killed": killed}
