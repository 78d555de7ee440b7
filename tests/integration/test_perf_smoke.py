#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""End-to-end smoke test of scripts/perf: one tiny job (kvs only, 1 s, 1000 keys, no fio) run
into a temp dir; report.md and results.json must exist and hold numbers, and nothing may be
left behind (server process, data dir). A second run is interrupted with SIGINT mid-job and
must stop its server, remove its data dir, write a partial report and exit 130.

Needs $KVS_BIN/kvs-server and $KVS_BIN/kvs-bench: without them it fails (it never passes
silently). About 5 seconds. Alone:
    KVS_BIN=build/bin /usr/bin/python3 tests/integration/test_perf_smoke.py -v
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE = os.environ.get("KVS_SOURCE") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("KVS_BIN") or os.path.join(SOURCE, "build", "bin")
PERF = os.path.join(SOURCE, "scripts", "perf")

JOB = """\
[global]
description=smoke test: one tiny kvs job
keys=1000
clients=4
threads=1
warmup=0.2s
prefill=yes

[kvs-smoke]
server=kvs
shards=1
duration={duration}
ratio=1:1
"""


def alive(pid):
    """True if pid is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid):
    """Direct children of pid, from /proc/PID/task/*/children."""
    out = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


class PerfSmoke(unittest.TestCase):
    def setUp(self):
        for prog in ("kvs-server", "kvs-bench"):
            path = os.path.join(BIN, prog)
            self.assertTrue(os.access(path, os.X_OK),
                            f"{path} is missing: build it first (cmake --build build); this "
                            "test needs the real server and load generator")
        self.tmp = tempfile.mkdtemp(prefix="kvsperf-smoke-")
        self.data_root = os.path.join(self.tmp, "data")
        os.mkdir(self.data_root)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write_job(self, duration):
        path = os.path.join(self.tmp, "smoke.job")
        with open(path, "w") as f:
            f.write(JOB.format(duration=duration))
        return path

    def argv(self, out, job):
        return [sys.executable, PERF, "--bin", BIN, "--out", out, "--no-fio",
                "--data-root", self.data_root, job]

    def test_tiny_job_end_to_end(self):
        out = os.path.join(self.tmp, "out")
        t0 = time.monotonic()
        r = subprocess.run(self.argv(out, self.write_job("1s")), capture_output=True,
                           text=True, timeout=120)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        self.assertNotIn("Traceback", r.stderr)
        self.assertLess(took, 30, "the smoke run should take a few seconds")

        with open(os.path.join(out, "results.json")) as f:
            res = json.load(f)
        job = res["files"][0]["jobs"][0]
        self.assertEqual(job["name"], "kvs-smoke")
        unit = job["units"][0]
        self.assertTrue(unit["ok"], unit.get("error"))
        main = unit["main"]
        self.assertGreater(main["throughput"], 0)
        self.assertGreater(main["ops"], 0)
        self.assertEqual(main["errors"], 0)
        for p in ("p50", "p99", "p99.9"):
            self.assertGreater(main["latency_us"][p], 0, p)
        self.assertGreater(main["cpu_s_per_mop"], 0)
        self.assertGreaterEqual(main["disk_bytes_per_op"], 0)
        self.assertGreater(unit["rss_end"], 0)
        self.assertGreater(unit["prefill"]["bytes_per_key"], 0)
        self.assertGreater(job["summary"]["throughput"]["median"], 0)
        self.assertIsNone(res["disk"], "--no-fio must skip fio")
        self.assertTrue(res["machine"]["cpu_model"])

        with open(os.path.join(out, "report.md")) as f:
            md = f.read()
        # The main table's row: job, server, ops/s, × first, p50 ... all numbers.
        self.assertRegex(md, r"\n\| `kvs-smoke` \| kvs, 1 shard, fsync everysec \| [\d,]+ \| "
                             r"1\.00× \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \|")
        self.assertIn("## Machine", md)
        if shutil.which("gnuplot"):
            self.assertTrue(os.path.getsize(os.path.join(out, "smoke-throughput.png")) > 0)

        # Nothing left behind: the server is gone and its data dir removed.
        self.assertFalse(alive(unit["server_pid"]), "server still running")
        self.assertEqual(os.listdir(self.data_root), [])

    def test_interrupt_cleans_up(self):
        out = os.path.join(self.tmp, "out")
        p = subprocess.Popen(self.argv(out, self.write_job("20s")), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            # Wait for the measured run: the runner then has two children, server and bench.
            deadline = time.monotonic() + 20
            kids = set()
            while time.monotonic() < deadline and p.poll() is None:
                logs = os.path.join(out, "logs")
                started = os.path.isdir(logs) and any(
                    re.search(r"-r1\.bench\.log$", n) for n in os.listdir(logs))
                kids = children(p.pid)
                if started and len(kids) >= 2:
                    break
                time.sleep(0.05)
            self.assertIsNone(p.poll(), "scripts/perf ended before it could be interrupted")
            self.assertTrue(os.listdir(self.data_root), "no data dir while the job runs")
            time.sleep(0.3)
            p.send_signal(signal.SIGINT)
            stdout, stderr = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 130, f"stdout:\n{stdout}\nstderr:\n{stderr}")
        self.assertNotIn("Traceback", stderr)
        for pid in kids:
            self.assertFalse(alive(pid), f"child {pid} of scripts/perf is still running")
        self.assertEqual(os.listdir(self.data_root), [])
        with open(os.path.join(out, "report.md")) as f:
            self.assertIn("interrupted", f.read())
        with open(os.path.join(out, "results.json")) as f:
            self.assertTrue(json.load(f)["interrupted"])


if __name__ == "__main__":
    unittest.main(verbosity=1)
