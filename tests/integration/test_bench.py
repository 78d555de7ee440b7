#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Integration tests of kvs-bench against real servers.

Starts a Debian redis-server (and, when $KVS_BIN/kvs-server exists, kvs-server) on 127.0.0.1
with a free port and a temporary directory, and checks that:
  - kvs-bench --requests N reports exactly N requests in its JSON, with no errors;
  - --verify passes against a correct server, with every GET checked;
  - --verify FAILS (exit 1, failures reported) against fake_corrupt_server.py, which flips a
    byte of every GET value;
  - an unreachable port gives a clear "cannot connect" message and exit status 1;
  - bad arguments give exit status 2.
Only the PIDs started here are ever killed. Stdlib only; run with /usr/bin/python3.
    KVS_BIN=build/bin /usr/bin/python3 tests/integration/test_bench.py
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("KVS_BIN", os.path.join(HERE, "..", "..", "build", "bin"))
BENCH = os.path.join(BIN, "kvs-bench")
TIMEOUT = 60  # seconds any one kvs-bench run may take before the test calls it hung

failures = []


def free_port():
    """A port nobody listens on right now: bind port 0 and let the kernel choose."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ping(port, proc, tries=100):
    """Poll PING (bounded) until the server answers +PONG; fail if it exits first."""
    for _ in range(tries):
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %d" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server on port %d did not answer PING" % port)


class Server:
    """A server process we started, always stopped (by its own PID) on exit."""

    def __init__(self, argv, port):
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def __enter__(self):
        try:
            wait_for_ping(self.port, self.proc)
        except Exception:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def bench(*args):
    """Run kvs-bench; returns (exit status, stdout, stderr)."""
    p = subprocess.run([BENCH, "--quiet", "--threads", "2"] + list(args),
                       capture_output=True, text=True, timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def check(name, cond, detail=""):
    if cond:
        print("PASS", name)
    else:
        print("FAIL", name, detail)
        failures.append(name)


def test_counts_add_up(port, tmp, label):
    out = os.path.join(tmp, "counts-%s.json" % label)
    n = 12345
    rc, so, se = bench("--addr", "127.0.0.1:%d" % port, "--requests", str(n),
                       "--clients", "10", "--pipeline", "4", "--json", out)
    check("%s: --requests exits 0" % label, rc == 0, se)
    if rc != 0:
        return
    with open(out) as f:
        j = json.load(f)
    r = j["result"]
    check("%s: JSON requests == N" % label, r["requests"] == n, r)
    check("%s: GET + SET == N" % label,
          r["get"]["requests"] + r["set"]["requests"] == n, r)
    check("%s: histogram count == N" % label, j["latency_ns"]["all"]["count"] == n)
    check("%s: bucket counts sum to N" % label,
          sum(b["count"] for b in j["histogram"]["buckets"]) == n)
    check("%s: no errors, nothing unanswered" % label,
          r["errors"] == 0 and r["unanswered"] == 0 and r["fatal"] is None, r)
    lat = j["latency_ns"]["all"]
    check("%s: percentiles ordered" % label,
          lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"],
          lat)
    check("%s: human table printed" % label, "p99.9" in so and "ALL" in so, so)


def test_verify_passes(port, tmp, label):
    out = os.path.join(tmp, "verify-%s.json" % label)
    rc, so, se = bench("--addr", "127.0.0.1:%d" % port, "--requests", "20000", "--verify",
                       "--keys", "2000", "--ratio", "1:1", "--data-size", "24-400",
                       "--key-pattern", "zipf:0.99", "--clients", "16", "--pipeline", "8",
                       "--json", out)
    check("%s: --verify exits 0" % label, rc == 0, so + se)
    if rc != 0:
        return
    with open(out) as f:
        j = json.load(f)
    v = j["verify"]
    check("%s: --verify checked every GET" % label,
          v["failures"] == 0 and v["checked_ok"] == j["result"]["get"]["requests"]
          and v["checked_ok"] > 0, v)
    check("%s: --verify prefilled every key" % label,
          j["result"]["prefill_requests"] == 2000 and j["result"]["misses"] == 0, j["result"])


def test_verify_fails_on_corruption(tmp):
    port = free_port()
    fake = os.path.join(HERE, "fake_corrupt_server.py")
    with Server(["/usr/bin/python3", fake, str(port)], port):
        out = os.path.join(tmp, "corrupt.json")
        rc, so, se = bench("--addr", "127.0.0.1:%d" % port, "--requests", "2000", "--verify",
                           "--keys", "200", "--clients", "4", "--json", out)
        check("corrupt: --verify exits 1", rc == 1, "rc=%d %s %s" % (rc, so, se))
        check("corrupt: failure reported on stderr", "verify failed" in se, se)
        check("corrupt: failure counted in the table", "failures" in so, so)
        with open(out) as f:
            j = json.load(f)
        check("corrupt: every GET flagged", j["verify"]["failures"] > 0
              and j["verify"]["checked_ok"] == 0, j["verify"])


def test_broken_servers(tmp):
    """A server that breaks the protocol or hangs up ends the run with a reason, exit 1."""
    fake = os.path.join(HERE, "fake_corrupt_server.py")
    for mode, want in (("garbage", "protocol error from"), ("hangup", "closed the connection")):
        port = free_port()
        with Server(["/usr/bin/python3", fake, str(port), mode], port):
            out = os.path.join(tmp, "broken-%s.json" % mode)
            rc, so, se = bench("--addr", "127.0.0.1:%d" % port, "--requests", "1000",
                               "--ratio", "1:1", "--clients", "4", "--json", out)
            check("%s: exit 1" % mode, rc == 1, "rc=%d %s %s" % (rc, so, se))
            check("%s: reason given" % mode, want in se, se)


def test_unreachable():
    port = free_port()
    rc, so, se = bench("--addr", "127.0.0.1:%d" % port, "--requests", "10")
    check("unreachable: exit 1", rc == 1, "rc=%d" % rc)
    want = "kvs-bench: cannot connect to 127.0.0.1:%d: Connection refused" % port
    check("unreachable: clear message", want in se, se)


def test_bad_args():
    for args in (["--clients", "0"], ["--pipeline", "abc"], ["--ratio", "1"],
                 ["--key-pattern", "zipf:0"], ["--data-size", "10-5"], ["--bogus"],
                 ["--requests", "5", "--duration", "1"], ["--data-size", "536870913"],
                 ["--addr", "localhost"], ["--verify", "--data-size", "10"], ["extra"]):
        rc, so, se = bench(*args)
        check("bad args %s: exit 2" % " ".join(args), rc == 2 and "usage" in se,
              "rc=%d %s" % (rc, se))


def main():
    if not os.access(BENCH, os.X_OK):
        print("FAIL: %s is not built" % BENCH)
        return 1
    tmp = tempfile.mkdtemp(prefix="kvs-it-bench-")
    try:
        test_bad_args()
        test_unreachable()
        test_verify_fails_on_corruption(tmp)
        test_broken_servers(tmp)
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        if os.access(redis, os.X_OK):
            port = free_port()
            rdir = os.path.join(tmp, "redis")
            os.mkdir(rdir)
            with Server([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", rdir], port):
                test_counts_add_up(port, tmp, "redis")
                test_verify_passes(port, tmp, "redis")
        else:
            print("SKIP: redis-server is not installed")
        kvs_server = os.path.join(BIN, "kvs-server")
        if os.access(kvs_server, os.X_OK):
            port = free_port()
            kdir = os.path.join(tmp, "kvs")
            os.mkdir(kdir)
            with Server([kvs_server, "--addr", "127.0.0.1:%d" % port, "--dir", kdir,
                         "--shards", "2"], port):
                test_counts_add_up(port, tmp, "kvs-server")
                test_verify_passes(port, tmp, "kvs-server")
        else:
            print("SKIP: kvs-server is not built yet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed: %s" % (len(failures), ", ".join(failures)))
        return 1
    print("all kvs-bench integration checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
