# SPDX-License-Identifier: MIT
"""Runs the jobs of parsed job files and collects their results.

A *unit* is one repetition of one job: a fresh server on a fresh temp data dir, optional
prefill, the measured run (or a peak run and a rate sweep), optional restart, then the server
is stopped and the dir removed. The units of a file run interleaved (A1 B1 A2 B2 ...), so that
slow drift of the machine (thermal, page cache, other tenants) hits every job alike rather than
whichever job happened to run last.

Server-side numbers come from /proc around each kvs-bench invocation: CPU seconds and bytes
written are deltas over that invocation only (the prefill runs in an invocation of its own), and
are divided by every reply of the invocation, warm-up included, because the server did that
work during the delta too.
"""

import os
import secrets
import shutil
import tempfile
import threading
import time

from . import bench, jobfile, procfs, resp, servers
from .servers import Server, StartError


def job_config(job):
    """The job's resolved keys as plain JSON values (for results.json and the report)."""
    out = {}
    for key, v in job.values.items():
        if key == "ratio":
            v = "%d:%d" % v
        elif key == "data_size":
            v = str(v[0]) if v[0] == v[1] else f"{v[0]}-{v[1]}"
        elif key == "rate_sweep" and v is not None:
            v = dict(v)
        out[key] = v
    if job["server"] == "redis":
        out["appendonly"] = (job["appendonly"] if job["appendonly"] is not None
                             else job["appendfsync"] is not None)
    return out


def is_measured(job):
    return job["duration"] > 0 or job["requests"] is not None


def plan(jobfile):
    """The order of a file's units: round r runs every job that still has repeats left."""
    units = []
    rounds = max(j["repeat"] for j in jobfile.jobs)
    for r in range(rounds):
        for j in jobfile.jobs:
            if r < j["repeat"]:
                units.append((j, r))
    return units


def estimate_seconds(job):
    """A rough wall-clock estimate of one unit, for the --dry-run summary."""
    t = 1.0 + job["prefill"] * bench.expected_seconds(job, prefill=True)
    if is_measured(job):
        runs = 1 if jobfile.rate_percent(job["rate"]) is None else 2
        if job["rate_sweep"]:
            runs += len(job["rate_sweep"]["points"])
        t += runs * (bench.expected_seconds(job) + 0.5)
    if job["restart"]:
        t += 2.0 + job["keys"] / 1e6
    return t


def check_cpus(files):
    """Job CPU lists must name CPUs this process may run on (else taskset fails later)."""
    allowed = os.sched_getaffinity(0)
    errors = []
    for f in files:
        for j in f.jobs:
            for key in ("server_cpus", "client_cpus"):
                cpus = j[key]
                if cpus is not None and not set(cpus) <= allowed:
                    bad = ",".join(str(c) for c in cpus if c not in allowed)
                    errors.append(f"{j.loc(key)}: key '{key}': CPU {bad} is not available "
                                  f"here (usable: {_cpulist(allowed)})")
    return errors


def _cpulist(cpus):
    return ",".join(str(c) for c in sorted(cpus))


class Runner:
    def __init__(self, bins, out_dir, data_root, keep_data=False, say=print):
        self.bins = bins
        self.out_dir = out_dir
        self.data_root = data_root
        self.keep_data = keep_data
        self.say = say
        self.failed = 0
        for sub in ("logs", "runs"):
            os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

    def _path(self, sub, name):
        return os.path.join(self.out_dir, sub, name)

    def run_files(self, files, results):
        """Run every unit of every file, appending to results["files"] as units finish so an
        interrupted run still leaves a partial report."""
        total = sum(len(plan(f)) for f in files)
        done = 0
        for f in files:
            entry = {"path": f.path, "description": f.description, "jobs": []}
            by_name = {}
            for j in f.jobs:
                je = {"name": j.name, "line": j.line, "description": j.description,
                      "config": job_config(j), "units": []}
                entry["jobs"].append(je)
                by_name[j.name] = je
            results["files"].append(entry)
            stem = os.path.splitext(os.path.basename(f.path))[0]
            for job, rep in plan(f):
                done += 1
                label = f"[{done}/{total}] {os.path.basename(f.path)} [{job.name}] " \
                        f"r{rep + 1}/{job['repeat']}"
                self.say(f"{label}: {job['server']} ...")
                unit = self.run_unit(stem, job, rep, label)
                by_name[job.name]["units"].append(unit)
                if not unit["ok"]:
                    self.failed += 1
                    self.say(f"{label}: FAILED: {unit['error']}")

    def run_unit(self, stem, job, rep, label):
        tag = f"{stem}-{job.name}-r{rep + 1}"
        unit = {"repeat": rep + 1, "ok": False, "error": None, "warnings": []}
        try:
            data_dir = tempfile.mkdtemp(prefix=f"kvsperf-{job.name}-", dir=self.data_root)
        except OSError as e:
            unit["error"] = f"cannot create a data dir under {self.data_root}: {e.strerror}"
            return unit
        unit["data_dir"] = data_dir
        srv = Server(job, self.bins, data_dir, self._path("logs", tag + ".server.log"))
        try:
            t0 = srv.start()
            t1 = srv.wait_ready(job["startup_timeout"])
            unit["server_argv"] = srv.argv
            unit["server_pid"] = srv.pid
            unit["startup_s"] = t1 - t0
            unit["rss_start"] = procfs.rss_bytes(srv.pid)
            if job["prefill"]:
                unit["prefill"] = self.prefill(srv, job, tag, unit["rss_start"])
                pf = unit["prefill"]
                self.say(f"{label}: prefilled {job['keys']:,} keys × {job['prefill']} in "
                         f"{pf['seconds']:.1f} s; RSS {pf['rss'] / 2**20:,.1f} MiB "
                         f"({pf['bytes_per_key']:,.0f} bytes/key), "
                         f"{pf['data_dir_bytes'] / 2**20:,.1f} MiB on disk")
                unit["persistence_after_prefill"] = _persistence(srv.port)
            if is_measured(job):
                self.measured(srv, job, tag, unit, label)
            unit["persistence_end"] = _persistence(srv.port)
            end = procfs.sample(srv.pid)
            unit["rss_end"], unit["hwm_end"] = end["rss"], end["hwm"]
            unit["data_dir_bytes"] = procfs.dir_bytes(data_dir)
            if job["restart"]:
                unit["restart"] = self.restart(srv, job)
                self.say(f"{label}: restart to first answered GET "
                         f"{unit['restart']['seconds']:.3f} s")
            unit["ok"] = True
        except (StartError, bench.BenchError, resp.RespError, resp.ServerError) as e:
            unit["error"] = str(e)
        except procfs.ProcGone:
            unit["error"] = self._died(srv)
        finally:
            if srv.proc is not None:
                died = srv.proc.poll() is not None
                unit["stop"] = srv.stop()
                if died and unit["ok"]:
                    unit["ok"], unit["error"] = False, self._died(srv)
                elif unit["stop"]["killed"]:
                    unit["warnings"].append("server did not stop within "
                                            f"{servers.STOP_TIMEOUT:g}s of SIGTERM: killed")
                elif unit["stop"]["exit"] not in (0, None):
                    unit["warnings"].append(f"server exited with status "
                                            f"{unit['stop']['exit']} after SIGTERM")
            if not self.keep_data:
                shutil.rmtree(data_dir, ignore_errors=True)
        return unit

    def _died(self, srv):
        return (f"{srv.job['server']} server (pid {srv.pid}) died during the run, status "
                f"{srv.proc.returncode}; last lines of {srv.log_path}:\n"
                f"{servers.log_tail(srv.log_path)}")

    def prefill(self, srv, job, tag, rss_start):
        """SET every key job['prefill'] times (passes after the first overwrite, leaving
        dead data behind for compaction jobs)."""
        t0 = time.monotonic()
        for i in range(job["prefill"]):
            name = f"{tag}-prefill{i + 1}"
            jp = self._path("runs", name + ".json")
            argv = bench.command(job, self.bins["kvs-bench"], srv.port, jp, prefill=True)
            bench.run(argv, self._path("logs", name + ".bench.log"),
                      bench.expected_seconds(job, prefill=True) * 4 + job["timeout"])
            m = bench.load(jp)
            if m.get("prefill_errors"):
                raise bench.BenchError(f"prefill got {m['prefill_errors']} error replies; "
                                       f"log: {self._path('logs', name + '.bench.log')}")
        rss = procfs.rss_bytes(srv.pid)
        return {"passes": job["prefill"], "seconds": time.monotonic() - t0, "rss": rss,
                "bytes_per_key": (rss - rss_start) / job["keys"],
                "data_dir_bytes": procfs.dir_bytes(srv.data_dir)}

    def measured(self, srv, job, tag, unit, label):
        """The measured run. A rate sweep or a rate given in % of the peak first runs flat
        out to find that peak (on the same server and data), then runs at the derived rates."""
        sweep = job["rate_sweep"]
        pct = jobfile.rate_percent(job["rate"])
        if not sweep and pct is None:
            unit["main"] = self.measure(srv, job, tag, rate=job["rate"], during=job["during"])
            self.say(f"{label}: {_summary(unit['main'])}")
            return
        peak = self.measure(srv, job, tag + "-peak", rate=None, during="none")
        self.say(f"{label}: peak {_summary(peak)}")
        if pct is not None:
            rate = max(1, round(peak["throughput"] * pct / 100.0))
            unit["peak"] = peak
            unit["main"] = self.measure(srv, job, tag, rate=rate, during=job["during"])
            self.say(f"{label}: offered {pct:g}% of peak = {rate:,} ops/s: "
                     f"{_summary(unit['main'])}")
            return
        # A sweep's peak run is the job's main result: the table shows the peak beside the
        # other jobs' flat-out runs, and the sweep table the points.
        unit["main"] = peak
        unit["sweep"] = []
        for i, x in enumerate(sweep["points"]):
            rate = max(1, round(peak["throughput"] * x / 100.0)) if sweep["unit"] == "%" \
                else int(x)
            m = self.measure(srv, job, f"{tag}-sweep{i + 1}", rate=rate, during="none")
            m["offered_point"] = x
            unit["sweep"].append(m)
            what = f"{x:g}% of peak = {rate:,} ops/s" if sweep["unit"] == "%" \
                else f"{rate:,} ops/s"
            self.say(f"{label}: offered {what}: {_summary(m)}")

    def measure(self, srv, job, tag, rate, during):
        jp = self._path("runs", tag + ".json")
        log = self._path("logs", tag + ".bench.log")
        argv = bench.command(job, self.bins["kvs-bench"], srv.port, jp, rate=rate)
        event = Event(srv.port, srv.job["server"]) if during == "compact" else None
        before = procfs.sample(srv.pid)
        if event:
            event.start(job["warmup"], job["during_at"], job["timeout"])
        try:
            bench.run(argv, log, bench.expected_seconds(job) + job["timeout"])
            after = procfs.sample(srv.pid)
        finally:
            if event:
                event.finish(job["timeout"])
        m = bench.load(jp)
        total = m["ops"] + m["warmup_ops"] + m["prefill_ops"]
        cpu = after["cpu_s"] - before["cpu_s"]
        wb = after["write_bytes"] - before["write_bytes"]
        m.update({
            "offered": rate or None,
            "server_cpu_s": cpu,
            "cpu_s_per_mop": cpu / total * 1e6 if total else None,
            "write_bytes": wb,
            "disk_bytes_per_op": wb / total if total else None,
            "bench_json": os.path.relpath(jp, self.out_dir),
            "bench_argv": argv,
        })
        if event:
            m["event"] = event.result
        return m

    def restart(self, srv, job):
        """Stop the server gracefully and time a restart on the same data to the first GET
        answered with the value written just before the stop."""
        token = secrets.token_hex(8)
        resp.call(srv.port, "SET", "kvsperf:restart", token, timeout=30.0)
        t0 = time.monotonic()
        st = srv.stop()
        stop_s = time.monotonic() - t0
        if st["killed"]:
            raise StartError(f"server did not stop within {servers.STOP_TIMEOUT:g}s of "
                             "SIGTERM, restart not measured")

        def probe(port):
            with resp.Conn(port, timeout=5.0) as c:
                v = c.call("GET", "kvsperf:restart")
            if v is None:
                raise resp.RespError("GET kvsperf:restart answered nil (key not loaded?)")
            if v != token.encode():
                raise resp.RespError(f"GET kvsperf:restart answered {v[:40]!r}, "
                                     f"not {token!r}")
            return True

        t0 = srv.start()
        t1 = srv.wait_until(probe, job["startup_timeout"])
        return {"seconds": t1 - t0, "stop_s": stop_s, "stop_exit": st["exit"],
                "rss": procfs.rss_bytes(srv.pid),
                "data_dir_bytes": procfs.dir_bytes(srv.data_dir)}


class Event:
    """A command sent to the server mid-run from a helper thread: COMPACT for kvs,
    BGREWRITEAOF for Redis (its analogue: rewrite the log without dead entries). Both answer
    at once and work in the background, so the thread then polls INFO persistence (20 times a
    second, negligible next to the load) until the work is over, to report how long it ran."""

    # The INFO persistence field that is 1 while the background work runs.
    BUSY_FIELD = {"kvs": "compacting", "redis": "aof_rewrite_in_progress"}

    def __init__(self, port, server):
        self.port = port
        self.server = server
        self.command = "COMPACT" if server == "kvs" else "BGREWRITEAOF"
        self.result = {"command": self.command}
        self.thread = None
        self.stop = threading.Event()
        self.t0 = None

    def start(self, warmup, at, timeout):
        """Send the command `at` seconds into the measured run, which begins after kvs-bench's
        warm-up (its connection set-up takes a few milliseconds, small against `at`)."""
        self.t0 = time.monotonic() + warmup
        self.thread = threading.Thread(target=self._fire, args=(warmup + at, timeout),
                                       daemon=True)
        self.thread.start()

    def _fire(self, delay, timeout):
        if self.stop.wait(delay):
            self.result["error"] = "the run ended before the event was due"
            return
        sent = time.monotonic()
        self.result["sent_at_s"] = sent - self.t0
        try:
            r = resp.call(self.port, self.command, timeout=timeout)
            self.result["reply"] = r.decode(errors="replace") if isinstance(r, bytes) else r
            self.result["reply_after_s"] = time.monotonic() - sent
            self._watch(sent, timeout)
        except (resp.RespError, resp.ServerError) as e:
            self.result["error"] = str(e)

    def _watch(self, sent, timeout):
        field = self.BUSY_FIELD[self.server]
        deadline = sent + timeout
        while time.monotonic() < deadline:
            busy = resp.info(self.port, "persistence").get(field)
            if busy is None:
                return
            if busy == "0":
                self.result["done_after_s"] = time.monotonic() - sent
                return
            self.result["seen_running"] = True
            time.sleep(0.05)

    def finish(self, timeout):
        """Wait (bounded) for the background work to end so the next run starts clean."""
        self.stop.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.result["error"] = f"still running {timeout:g}s after the run"


def _persistence(port):
    """INFO persistence as numbers where they are numbers (kvs: disk_bytes, dead_bytes,
    compactions, fsyncs ...; Redis: aof_current_size, aof_rewrites ...), for results.json."""
    out = {}
    for k, v in resp.info(port, "persistence", timeout=30.0).items():
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def _summary(m):
    lat = m["latency_us"]
    s = f"{m['throughput']:,.0f} ops/s  p50 {lat['p50']:,.0f} us  p99 {lat['p99']:,.0f} us"
    if m["errors"]:
        s += f"  errors {m['errors']:,}"
    if m.get("unsent"):
        s += f"  unsent {m['unsent']:,} (the offered rate was not reached)"
    return s


def dry_run(files, bins, say=print):
    """Print what would run, with placeholders for ports and temp dirs."""
    grand = 0.0
    for f in files:
        say(f"== {f.path}" + (f": {f.description}" if f.description else ""))
        for job, rep in plan(f):
            srv = Server(job, bins, "DATA", "/dev/null")
            say(f"[{job.name}] r{rep + 1}/{job['repeat']}  (from {job.path}:{job.line})")
            grand += estimate_seconds(job)
            if rep > 0:
                continue
            say("  server: " + " ".join(_quote(a) for a in srv.command("PORT")))
            for _ in range(job["prefill"]):
                say("  prefill: " + " ".join(bench.command(job, bins["kvs-bench"], "PORT",
                                                           "OUT.json", prefill=True)))
            if is_measured(job):
                if job["rate_sweep"]:
                    say("  peak: " + " ".join(bench.command(job, bins["kvs-bench"], "PORT",
                                                            "OUT.json")))
                    sw = job["rate_sweep"]
                    pts = ", ".join(f"{p:g}{'%' if sw['unit'] == '%' else ''}"
                                    for p in sw["points"])
                    say(f"  then --rate at {pts}" + (" of the peak" if sw["unit"] == "%"
                                                      else " ops/s"))
                elif jobfile.rate_percent(job["rate"]) is not None:
                    say("  peak: " + " ".join(bench.command(job, bins["kvs-bench"], "PORT",
                                                            "OUT.json")))
                    say(f"  then --rate at {job['rate']} of the peak")
                else:
                    say("  run: " + " ".join(bench.command(job, bins["kvs-bench"], "PORT",
                                                           "OUT.json", rate=job["rate"])))
                if job["during"] != "none":
                    cmd = "COMPACT" if job["server"] == "kvs" else "BGREWRITEAOF"
                    say(f"  at {job['during_at']:g}s into the measured run: {cmd}")
            if job["restart"]:
                say("  then: stop, restart on the same data, time to first answered GET")
    say(f"estimated time: about {grand / 60:.1f} min (plus fio, about 15 s)")


def _quote(a):
    return a if a and all(c.isalnum() or c in "-_./:=," for c in a) else repr(a)

