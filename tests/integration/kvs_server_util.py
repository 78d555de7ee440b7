# SPDX-License-Identifier: MIT
"""Helpers for the kvs-server integration tests: a free port on 127.0.0.1, a temporary data
directory, and a server process that is always stopped (by its own PID) when the test ends.
Waits are bounded (readiness, exit), and no test outcome depends on how long anything takes."""
import os
import signal
import socket
import subprocess
import tempfile
import time

BIN = os.environ.get("KVS_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin"))
SERVER = os.path.join(BIN, "kvs-server")


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """Resident set size of pid in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    """One kvs-server process on 127.0.0.1:port with its data in dir."""

    def __init__(self, dir=None, port=None, args=()):
        self.tmp = None
        if dir is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="kvs-it-")
            dir = self.tmp.name
        self.dir = dir
        self.port = port or free_port()
        self.args = list(args)
        self.proc = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"kvs-it-{os.getpid()}-{self.port}.log")

    def start(self, wait=True, nofile=None):
        """Start the server; nofile lowers its descriptor limit (RLIMIT_NOFILE)."""
        self.log = open(self.log_path, "w+b")
        cmd = [SERVER, "--addr", f"127.0.0.1:{self.port}", "--dir", self.dir] + self.args
        pre = None
        if nofile is not None:
            import resource

            def pre():
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pre)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvs-server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("kvs-server did not become ready:\n" + self.output())

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def send_signal(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout=120):
        """Wait for exit and return the exit status."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("kvs-server did not exit in time:\n" + self.output())

    def stop(self, sig=signal.SIGTERM):
        """Stop the server and return its exit status (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        rc = self.wait()
        return rc

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "log"):
            self.log.close()
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)
        if self.tmp is not None:
            self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.proc is not None:
            print("---- kvs-server output ----\n" + self.output())
        self.cleanup()


def run_server(dir, port, args=(), timeout=60):
    """Run a kvs-server expected to fail at start; returns (exit status, output)."""
    cmd = [SERVER, "--addr", f"127.0.0.1:{port}", "--dir", dir] + list(args)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace")
