#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""kvs-bench vs redis-benchmark on the same workload against the same redis-server.

Starts one redis-server (persistence off) pinned to the last CPU, prefills the keyspace once,
then for each workload runs redis-benchmark and kvs-bench alternately (REPS times each), both
pinned to CPU 0 with one thread, and measures each client's CPU time (user + sys, from
wait4 rusage of the child, i.e. what /usr/bin/time reports). Prints a Markdown table with the
medians: throughput, requests per client CPU-second, p50/p99 latency as each tool reports it.
Only the redis-server PID started here is killed. Used for docs/benchmarks.md.

    KVS_BIN=build-release/bin /usr/bin/python3 perf/bench/vs_redis_benchmark.py [REPS]
"""
import csv
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import shutil
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
from kvsperf import procfs, resp  # noqa: E402
from kvsperf.servers import free_port  # noqa: E402

BIN = os.environ.get("KVS_BIN", "build/bin")
BENCH = os.path.join(BIN, "kvs-bench")
CLIENTS = 50
KEYS = 100000
SIZE = 100
# (name, redis-benchmark test, kvs-bench ratio, pipeline, requests)
WORKLOADS = [
    ("GET, pipeline 1", "get", "0:1", 1, 200000),
    ("GET, pipeline 16", "get", "0:1", 16, 2000000),
    ("SET, pipeline 1", "set", "1:0", 1, 200000),
    ("SET, pipeline 16", "set", "1:0", 16, 2000000),
]


def wait_for_ping(server, port, timeout=10.0):
    """Until redis-server answers PING; raises if it exits first or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit("redis-server exited with status %d" % server.returncode)
        try:
            if resp.call(port, "PING", timeout=1.0) in ("PONG", b"PONG"):
                return
        except (OSError, resp.RespError, resp.ServerError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("redis-server did not answer PING within %g s" % timeout)
        time.sleep(0.05)


def run_timed(argv):
    """Run argv to completion; returns (stdout, stderr, exit status)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    return out, err, p.returncode


def cpu_children():
    """CPU seconds (user + sys) of all reaped children so far: the delta around one run is
    that client's CPU time (taskset execs the client, so it is the same process)."""
    r = os.times()
    return r.children_user + r.children_system


def redis_benchmark(port, test, pipeline, n):
    before = cpu_children()
    out, err, rc = run_timed(["taskset", "-c", "0", "redis-benchmark", "-h", "127.0.0.1",
                              "-p", str(port), "-c", str(CLIENTS), "-P", str(pipeline),
                              "-d", str(SIZE), "-r", str(KEYS), "-n", str(n), "-t", test,
                              "--threads", "1", "--csv"])
    cpu = cpu_children() - before
    if rc != 0:
        raise RuntimeError("redis-benchmark failed: " + err)
    rows = list(csv.reader(io.StringIO(out)))
    head, vals = rows[0], rows[1]
    row = dict(zip(head, vals))
    return {"ops": float(row["rps"]), "cpu": cpu, "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"])}


def kvs_bench(port, ratio, pipeline, n, tmp):
    js = os.path.join(tmp, "kb.json")
    before = cpu_children()
    out, err, rc = run_timed(["taskset", "-c", "0", BENCH, "--addr", "127.0.0.1:%d" % port,
                              "--threads", "1", "--clients", str(CLIENTS), "--pipeline",
                              str(pipeline), "--data-size", str(SIZE), "--keys", str(KEYS),
                              "--ratio", ratio, "--requests", str(n), "--quiet", "--json", js])
    cpu = cpu_children() - before
    if rc != 0:
        raise RuntimeError("kvs-bench failed: " + out + err)
    with open(js) as f:
        j = json.load(f)
    lat = j["latency_ns"]["all"]
    return {"ops": j["result"]["throughput"], "cpu": cpu, "p50_ms": lat["p50"] / 1e6,
            "p99_ms": lat["p99"] / 1e6, "errors": j["result"]["errors"],
            "misses": j["result"]["misses"]}


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ncpu = os.cpu_count()
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="kvs-vs-rb-")
    server = subprocess.Popen(["taskset", "-c", str(ncpu - 1), "redis-server", "--port",
                               str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                               "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    try:
        wait_for_ping(server, port)
        # Every key once, so that GETs hit in both tools.
        subprocess.run([BENCH, "--addr", "127.0.0.1:%d" % port, "--prefill", "--keys",
                        str(KEYS), "--data-size", str(SIZE), "--requests", "1", "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        print("machine: %s, %d CPUs, %s %s; load average before: %s" % (
            procfs.cpu_model(), ncpu, platform.system(), platform.release(),
            " ".join("%.2f" % x for x in os.getloadavg())))
        print()
        print("| workload | tool | requests/s | client CPU s | requests per client CPU-s "
              "| p50 ms | p99 ms |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, test, ratio, pipeline, n in WORKLOADS:
            rb, kb = [], []
            for _ in range(reps):
                rb.append(redis_benchmark(port, test, pipeline, n))
                kb.append(kvs_bench(port, ratio, pipeline, n, tmp))
                if kb[-1]["errors"] or kb[-1]["misses"]:
                    raise RuntimeError("kvs-bench saw errors or misses: %r" % kb[-1])
            for tool, runs in (("redis-benchmark", rb), ("kvs-bench", kb)):
                med = {k: statistics.median(r[k] for r in runs)
                       for k in ("ops", "cpu", "p50_ms", "p99_ms")}
                per_cpu = statistics.median(n / r["cpu"] for r in runs)
                print("| %s | %s | %.0f | %.2f | %.0f | %.3f | %.3f |" % (
                    name, tool, med["ops"], med["cpu"], per_cpu, med["p50_ms"],
                    med["p99_ms"]))
        print()
        print("load average after: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
