# SPDX-License-Identifier: MIT
"""The kvs-bench side: its command line for a job, running it with a time bound, and the
fields the report reads from its --json output (docs/kvs-bench.md describes that file).

kvs-bench's own --prefill is used for prefilling (it SETs every key exactly once, which a
sequential SET run cannot promise when connections run at different speeds), in an invocation
of its own so that the server's CPU and disk counters of the measured run exclude it.
"""

import json
import signal
import subprocess

from . import servers

# The percentiles the report shows, as (label, key inside kvs-bench's latency_ns.<op>).
PERCENTILES = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p99.9"),
               ("p99.99", "p99.99"), ("max", "max")]


class BenchError(Exception):
    """kvs-bench failed, hung, or wrote a JSON file without the expected fields."""


def _size(lo_hi):
    lo, hi = lo_hi
    return str(lo) if lo == hi else f"{lo}-{hi}"


def command(job, bench_bin, port, json_path, rate=None, prefill=False):
    """The kvs-bench command line. prefill=True gives the prefill-only invocation (one pass
    of SETs over the keyspace and a single measured GET, which the report ignores)."""
    j = job
    argv = [bench_bin, "--addr", f"127.0.0.1:{port}", "--clients", str(j["clients"]),
            "--keys", str(j["keys"]), "--data-size", _size(j["data_size"]),
            "--seed", str(j["seed"]), "--json", json_path, "--quiet"]
    if j["threads"] is not None:
        argv += ["--threads", str(j["threads"])]
    if prefill:
        # Deep pipelines make the prefill fast; it is not measured.
        argv += ["--prefill", "--pipeline", str(max(j["pipeline"], 32)), "--requests", "1",
                 "--warmup", "0", "--ratio", "0:1", "--key-pattern", "uniform"]
    else:
        argv += ["--pipeline", str(j["pipeline"]), "--ratio", "%d:%d" % j["ratio"],
                 "--key-pattern", j["key_pattern"], "--warmup", "%g" % j["warmup"]]
        if j["requests"] is not None:
            argv += ["--requests", str(j["requests"])]
        else:
            argv += ["--duration", "%g" % j["duration"]]
        if rate:
            argv += ["--rate", str(int(rate))]
        if j["verify"]:
            argv += ["--verify"]
        argv += j["bench_args"]
    if j["client_cpus"] is not None:
        argv = ["taskset", "-c", ",".join(map(str, j["client_cpus"]))] + argv
    return argv


def expected_seconds(job, prefill=False):
    """How long one invocation should take, for the time bound and the --dry-run estimate."""
    if prefill:
        # kvs-bench prefills at a few hundred thousand SETs/s on 2 cores (deep pipelines).
        return 2.0 + job["keys"] / 200000.0
    if job["requests"] is not None:
        return job["warmup"] + job["requests"] / 20000.0
    return job["warmup"] + job["duration"]


def run(argv, log_path, timeout):
    """Run kvs-bench to completion within timeout seconds; its output goes to log_path."""
    p = servers.spawn(argv, log_path)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        # SIGINT first: kvs-bench stops and still writes what it measured.
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        servers.CHILDREN.discard(p)
        raise BenchError(f"kvs-bench did not finish within {timeout:g}s; log: {log_path}")
    finally:
        if p.poll() is None:
            servers.stop(p, timeout=10.0)
        servers.CHILDREN.discard(p)
    if p.returncode != 0:
        raise BenchError(f"kvs-bench exited with status {p.returncode}; command: "
                         f"{' '.join(argv)}\n  last lines of {log_path}:\n"
                         f"{servers.log_tail(log_path)}")


def _get(doc, path, what, json_path, kind=(int, float)):
    cur = doc
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            raise BenchError(f"{json_path}: no '{'.'.join(path)}' ({what}) in kvs-bench's JSON")
        cur = cur[part]
    if not isinstance(cur, kind) or isinstance(cur, bool) and bool not in kind:
        raise BenchError(f"{json_path}: '{'.'.join(path)}' ({what}) is not a number")
    return cur


def load(json_path):
    """Read a kvs-bench --json file into the flat metrics the report uses."""
    try:
        with open(json_path) as f:
            doc = json.load(f)
    except OSError as e:
        raise BenchError(f"kvs-bench wrote no JSON ({json_path}: {e.strerror})") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{json_path}: not JSON ({e})") from None
    return extract(doc, json_path)


def extract(doc, json_path="kvs-bench JSON"):
    """The fields of one kvs-bench result (docs/kvs-bench.md). kvs-bench records latencies in
    ns; the report uses microseconds."""
    r = ["result"]
    fatal = doc.get("result", {}).get("fatal") if isinstance(doc, dict) else None
    if fatal:
        raise BenchError(f"{json_path}: kvs-bench failed: {fatal}")
    m = {
        "ops": _get(doc, r + ["requests"], "measured replies", json_path),
        "elapsed_s": _get(doc, r + ["elapsed_s"], "measured seconds", json_path),
        "throughput": _get(doc, r + ["throughput"], "replies per second", json_path),
        "errors": _get(doc, r + ["errors"], "error replies", json_path),
        "misses": _get(doc, r + ["misses"], "GET misses", json_path),
        "warmup_ops": _get(doc, r + ["warmup_requests"], "warm-up replies", json_path),
        # --verify makes kvs-bench write every key itself before measuring (in the same call,
        # so inside the runner's CPU and disk counters).
        "prefill_ops": doc.get("result", {}).get("prefill_requests", 0),
        "unanswered": _get(doc, r + ["unanswered"], "unanswered requests", json_path),
        "late_sends": _get(doc, r + ["late_sends"], "late sends", json_path),
        # Open loop: requests whose intended time passed but were never sent (the server fell
        # behind), so the offered rate was not achieved. Newer kvs-bench only, hence .get.
        "unsent": doc.get("result", {}).get("unsent", 0),
        "prefill_s": _get(doc, r + ["prefill_s"], "prefill seconds", json_path),
        "prefill_errors": _get(doc, r + ["prefill_errors"], "prefill errors", json_path),
        "latency_us": _latency(doc, "all", json_path),
        "latency_us_by_op": {},
    }
    for op in ("get", "set"):
        hist = doc.get("latency_ns", {}).get(op)
        if isinstance(hist, dict) and hist.get("count"):
            m["latency_us_by_op"][op] = _latency(doc, op, json_path)
    return m


def _latency(doc, op, json_path):
    out = {}
    for label, key in PERCENTILES + [("mean", "mean")]:
        ns = _get(doc, ["latency_ns", op, key], f"{op} latency {label}", json_path)
        out[label] = ns / 1000.0
    return out
