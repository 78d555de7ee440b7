#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Unit tests of scripts/perf's job-file parser (perf/kvsperf/jobfile.py): good files, the
override order [global] < job, and every kind of bad line with the exact `file:line: ...` it
must produce. Also: the shipped perf/jobs/*.job files parse, docs/perf.md names every key, the
command line turns user errors into messages (exit 2, no traceback), and the report is built
from a synthetic results dict (no server needed).

Run by CTest with Debian's python3 (KVS_SOURCE = repo root); alone:
    /usr/bin/python3 tests/integration/test_perf_jobfile.py -v
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

SOURCE = os.environ.get("KVS_SOURCE") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SOURCE, "perf"))

from kvsperf import jobfile, report, runner  # noqa: E402
from kvsperf.jobfile import JobFileError, parse_text_file  # noqa: E402

PATH = "perf/jobs/x.job"


def parse(text):
    return parse_text_file(text, PATH)


class ParseErrors(unittest.TestCase):
    """Each bad input must give exactly the expected message(s)."""

    def errors(self, text):
        with self.assertRaises(JobFileError) as cm:
            parse(text)
        return cm.exception.errors

    def assertError(self, text, expected):
        errs = self.errors(text)
        self.assertEqual(len(errs), 1, errs)
        self.assertTrue(errs[0].startswith(expected), f"\n got: {errs[0]}\nwant: {expected}")

    def test_unknown_key_names_file_line_key_and_suggests(self):
        self.assertError("[global]\nclients=5\n\n[a]\ncleints=4\n",
                         "perf/jobs/x.job:5: unknown key 'cleints' (did you mean 'clients'?)")

    def test_unknown_key_without_close_match(self):
        self.assertError("[a]\nzzzzzz=1\n", "perf/jobs/x.job:2: unknown key 'zzzzzz'")
        self.assertNotIn("did you mean", self.errors("[a]\nzzzzzz=1\n")[0])

    def test_keys_are_case_sensitive(self):
        self.assertError("[a]\nClients=4\n", "perf/jobs/x.job:2: unknown key 'Clients'")

    def test_key_outside_section(self):
        self.assertError("# comment\nclients=4\n[a]\n",
                         "perf/jobs/x.job:2: key 'clients' outside a section")

    def test_duplicate_key_in_section(self):
        self.assertError("[a]\nclients=4\npipeline=2\nclients=5\n",
                         "perf/jobs/x.job:4: duplicate key 'clients' in [a] (first set on "
                         "line 2)")

    def test_same_key_in_global_and_job_is_not_a_duplicate(self):
        f = parse("[global]\nclients=4\n[a]\nclients=5\n")
        self.assertEqual(f.jobs[0]["clients"], 5)

    def test_duplicate_section(self):
        self.assertError("[a]\nclients=1\n[b]\n[a]\n",
                         "perf/jobs/x.job:4: duplicate section [a] (first on line 1)")

    def test_keys_after_a_bad_header_are_not_reported_again(self):
        errs = self.errors("[a]\n[a]\nclients=oops\ncleints=3\n[b]\n")
        self.assertEqual(errs, ["perf/jobs/x.job:2: duplicate section [a] (first on line 1)"])

    def test_global_after_a_job(self):
        self.assertError("[a]\n[global]\nclients=3\n",
                         "perf/jobs/x.job:2: [global] must come before the first job")

    def test_header_without_closing_bracket(self):
        self.assertError("[a\nclients=3\n",
                         "perf/jobs/x.job:1: section header without closing ']'")

    def test_bad_section_name(self):
        self.assertError("[a b]\n", "perf/jobs/x.job:1: bad section name '[a b]'")
        self.assertError("[]\n", "perf/jobs/x.job:1: bad section name '[]'")
        self.assertError("[" + "x" * 65 + "]\n", "perf/jobs/x.job:1: bad section name")

    def test_line_without_equals(self):
        self.assertError("[a]\nclients 4\n",
                         "perf/jobs/x.job:2: expected 'key=value', '[section]' or a comment, "
                         "got 'clients 4'")

    def test_missing_key(self):
        self.assertError("[a]\n=4\n", "perf/jobs/x.job:2: missing key before '='")

    def test_empty_value(self):
        self.assertError("[a]\nclients=\n", "perf/jobs/x.job:2: key 'clients' has no value")

    def test_empty_value_allowed_for_word_lists(self):
        self.assertEqual(parse("[a]\nserver_args=\n").jobs[0]["server_args"], [])

    def test_bad_values_name_key_value_and_expectation(self):
        cases = [
            ("clients=four", "key 'clients': bad value 'four': expected a whole number"),
            ("clients=0", "key 'clients': bad value '0': expected a whole number from 1"),
            ("clients=1.5", "key 'clients': bad value '1.5'"),
            ("clients=-3", "key 'clients': bad value '-3'"),
            ("keys=1X", "key 'keys': bad value '1X'"),
            ("pipeline=100000", "key 'pipeline': bad value '100000'"),
            ("data_size=4q", "key 'data_size': bad value '4q': expected a size"),
            ("data_size=0", "key 'data_size': bad value '0'"),
            ("data_size=1G", "key 'data_size': bad value '1G'"),
            ("data_size=4k-100", "key 'data_size': bad value '4k-100': expected a range "
             "MIN-MAX with MIN <= MAX"),
            ("data_size=1-2-3", "key 'data_size': bad value '1-2-3'"),
            ("duration=5x", "key 'duration': bad value '5x': expected a duration"),
            ("duration=-1", "key 'duration': bad value '-1'"),
            ("warmup=2d", "key 'warmup': bad value '2d'"),
            ("server=memcached", "key 'server': bad value 'memcached': expected 'kvs' or "
             "'redis'"),
            ("fsync=sometimes", "key 'fsync': bad value 'sometimes': expected 'always' or "
             "'everysec' or 'never'"),
            ("ratio=1", "key 'ratio': bad value '1': expected SET:GET weights"),
            ("ratio=0:0", "key 'ratio': bad value '0:0'"),
            ("ratio=a:b", "key 'ratio': bad value 'a:b'"),
            ("key_pattern=random", "key 'key_pattern': bad value 'random'"),
            ("key_pattern=zipf", "key 'key_pattern': bad value 'zipf'"),
            ("key_pattern=zipf:0", "key 'key_pattern': bad value 'zipf:0'"),
            ("server_cpus=0-", "key 'server_cpus': bad value '0-': expected a CPU list"),
            ("server_cpus=3-1", "key 'server_cpus': bad value '3-1'"),
            ("client_cpus=a", "key 'client_cpus': bad value 'a'"),
            ("verify=maybe", "key 'verify': bad value 'maybe': expected yes or no"),
            ("prefill=lots", "key 'prefill': bad value 'lots'"),
            ("prefill=101", "key 'prefill': bad value '101'"),
            ("rate=fast", "key 'rate': bad value 'fast': expected a whole number"),
            ("rate=0%", "key 'rate': bad value '0%': expected ops/s (20k) or a percentage"),
            ("rate=5x%", "key 'rate': bad value '5x%'"),
            ("rate_sweep=10%:90%", "key 'rate_sweep': bad value '10%:90%'"),
            ("rate_sweep=10%:9000:10%", "key 'rate_sweep': bad value '10%:9000:10%'"),
            ("rate_sweep=90%:10%:10%", "key 'rate_sweep': bad value '90%:10%:10%'"),
            ("rate_sweep=10%:90%:0%", "key 'rate_sweep': bad value '10%:90%:0%'"),
            ("rate_sweep=1%:100%:1%", "key 'rate_sweep': bad value '1%:100%:1%'"),
            ("server_args=--x 'open", "key 'server_args': bad value '--x 'open': expected "
             "command-line words with balanced quotes"),
            ("during=flush", "key 'during': bad value 'flush'"),
            ("repeat=0", "key 'repeat': bad value '0'"),
            ("restart=perhaps", "key 'restart': bad value 'perhaps'"),
            ("timeout=0", "key 'timeout': bad value '0'"),
        ]
        for line, want in cases:
            with self.subTest(line=line):
                self.assertError(f"[global]\n\n[a]\n{line}\n", f"perf/jobs/x.job:4: {want}")

    def test_kvs_only_key_in_redis_job(self):
        self.assertError("[a]\nserver=redis\nfsync=always\n",
                         "perf/jobs/x.job:3: key 'fsync' applies to server=kvs only, but [a] "
                         "runs server=redis")

    def test_redis_only_key_in_kvs_job(self):
        self.assertError("[a]\nappendfsync=always\n",
                         "perf/jobs/x.job:2: key 'appendfsync' applies to server=redis only, "
                         "but [a] runs server=kvs")

    def test_server_specific_key_from_global_is_ignored_by_other_servers(self):
        f = parse("[global]\nfsync=always\nappendfsync=always\n[k]\n[r]\nserver=redis\n")
        k, r = f.jobs
        self.assertEqual((k["fsync"], k["appendfsync"]), ("always", None))
        self.assertEqual((r["fsync"], r["appendfsync"]), (None, "always"))

    def test_exclusive_keys_in_one_section(self):
        self.assertError("[a]\nduration=5\nrequests=1000\n",
                         "perf/jobs/x.job:3: key 'requests' conflicts with 'duration' on line "
                         "2: set only one of them")
        self.assertError("[a]\nrate_sweep=10%:50%:10%\nrate=5\n",
                         "perf/jobs/x.job:3: key 'rate' conflicts with 'rate_sweep' on line 2")

    def test_during_at_outside_the_run(self):
        self.assertError("[a]\nduration=5\nduring=compact\nduring_at=5s\n",
                         "perf/jobs/x.job:4: key 'during_at': during_at=5s is not inside the "
                         "measured run (duration=5s)")

    def test_during_default_time_outside_a_short_run(self):
        self.assertError("[a]\nduration=1\nduring=compact\n",
                         "perf/jobs/x.job:3: key 'during': during_at=1s is not inside")

    def test_verify_with_event_refused(self):
        self.assertError("[a]\nduration=5\nverify=yes\nduring=compact\n",
                         "perf/jobs/x.job:4: key 'during': cannot be combined with verify=yes")

    def test_sweep_without_measured_run(self):
        errs = self.errors("[a]\nduration=0\nprefill=1\nrate_sweep=10%:50%:20%\n")
        self.assertEqual(errs, ["perf/jobs/x.job:4: key 'rate_sweep' needs a measured run, "
                                "but [a] has duration=0"])

    def test_job_that_does_nothing(self):
        self.assertError("[global]\n[a]\nduration=0\n",
                         "perf/jobs/x.job:3: [a] does nothing: duration=0 without prefill or "
                         "restart")

    def test_appendfsync_with_appendonly_no(self):
        self.assertError("[a]\nserver=redis\nappendonly=no\nappendfsync=always\n",
                         "perf/jobs/x.job:4: key 'appendfsync' has no effect with "
                         "appendonly=no")

    def test_no_jobs(self):
        self.assertEqual(self.errors("[global]\nclients=3\n"),
                         ["perf/jobs/x.job: no jobs: add a [jobname] section after [global]"])
        self.assertEqual(self.errors("# nothing\n"),
                         ["perf/jobs/x.job: no jobs: add a [jobname] section after [global]"])

    def test_every_error_is_reported_in_file_order(self):
        errs = self.errors("clients=3\n[a]\ncleints=3\npipeline=x\npipeline=2\n[a]\n")
        self.assertEqual([e.split(": ")[0] for e in errs],
                         ["perf/jobs/x.job:1", "perf/jobs/x.job:3", "perf/jobs/x.job:4",
                          "perf/jobs/x.job:6"])

    def test_unreadable_and_binary_files(self):
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "nope.job")
            with self.assertRaises(JobFileError) as cm:
                jobfile.parse_file(missing)
            self.assertEqual(str(cm.exception), f"{missing}: cannot read: No such file or "
                                                 "directory")
            binary = os.path.join(d, "bin.job")
            with open(binary, "wb") as f:
                f.write(b"[a]\nclients=\xff\n")
            with self.assertRaises(JobFileError) as cm:
                jobfile.parse_file(binary)
            self.assertTrue(str(cm.exception).startswith(f"{binary}: not UTF-8 text"))

    def test_errors_of_several_files_are_all_reported(self):
        with tempfile.TemporaryDirectory() as d:
            a, b = os.path.join(d, "a.job"), os.path.join(d, "b.job")
            with open(a, "w") as f:
                f.write("[x]\nclients=0\n")
            with open(b, "w") as f:
                f.write("[y]\nbogus=1\n")
            with self.assertRaises(JobFileError) as cm:
                jobfile.parse_files([a, b])
            self.assertEqual(len(cm.exception.errors), 2)
            self.assertTrue(cm.exception.errors[0].startswith(f"{a}:2: key 'clients'"))
            self.assertTrue(cm.exception.errors[1].startswith(f"{b}:2: unknown key 'bogus'"))


class ParseGood(unittest.TestCase):
    GOOD = """\
# A comment, and a blank line below.

; also a comment
[global]
description = the file's description
clients = 10
pipeline=4
duration=3s
keys=1M
data_size=100-4k
ratio=1:3
server_cpus=0
repeat=2

[alpha]
description=first job
server=kvs
shards=2
fsync=always
pipeline=16

[beta-2.x]
server=redis
appendfsync=everysec
key_pattern=zipf:0.99
server_args=--maxmemory "1 gb" --x\\ y
requests=500k
rate=12k
"""

    def test_values_types_and_units(self):
        f = parse(self.GOOD)
        self.assertEqual(f.path, PATH)
        self.assertEqual(f.description, "the file's description")
        self.assertEqual([j.name for j in f.jobs], ["alpha", "beta-2.x"])
        a, b = f.jobs
        self.assertEqual(a["keys"], 1000000)
        self.assertEqual(a["data_size"], (100, 4096))
        self.assertEqual(a["ratio"], (1, 3))
        self.assertEqual(a["duration"], 3.0)
        self.assertEqual(a["server_cpus"], [0])
        self.assertEqual(a["shards"], 2)
        self.assertEqual(a["fsync"], "always")
        self.assertEqual(b["server_args"], ["--maxmemory", "1 gb", "--x y"])
        self.assertEqual(b["key_pattern"], "zipf:0.99")
        self.assertEqual(b["rate"], 12000)
        self.assertEqual(b["appendfsync"], "everysec")

    def test_job_overrides_global_and_global_overrides_defaults(self):
        a, b = parse(self.GOOD).jobs
        self.assertEqual(a["pipeline"], 16)                 # job over global
        self.assertEqual(b["pipeline"], 4)                  # global over default
        self.assertEqual(a["clients"], 10)
        self.assertEqual(a["warmup"], jobfile.KEYS["warmup"].default)  # default
        self.assertEqual(a["repeat"], 2)

    def test_where_records_the_line_that_set_each_key(self):
        a, b = parse(self.GOOD).jobs
        self.assertEqual(a.where["pipeline"], 20)
        self.assertEqual(b.where["pipeline"], 7)
        self.assertIsNone(a.where["warmup"])
        self.assertEqual(a.loc("pipeline"), "perf/jobs/x.job:20")
        self.assertEqual(a.loc(), "perf/jobs/x.job:15")

    def test_description_is_not_inherited(self):
        a, b = parse(self.GOOD).jobs
        self.assertEqual(a.description, "first job")
        self.assertEqual(b.description, "")

    def test_cpus_all_undoes_global_pinning(self):
        a, b = parse("[global]\nserver_cpus=0\nclient_cpus=1\n[a]\n[b]\nserver_cpus=all\n"
                     "client_cpus=all\n").jobs
        self.assertEqual((a["server_cpus"], a["client_cpus"]), ([0], [1]))
        self.assertEqual((b["server_cpus"], b["client_cpus"]), (None, None))
        self.assertEqual(b.where["server_cpus"], 6)

    def test_requests_in_job_replaces_global_duration(self):
        b = parse(self.GOOD).jobs[1]
        self.assertEqual(b["requests"], 500000)
        self.assertIsNone(b.where["duration"])

    def test_rate_sweep_in_job_replaces_global_rate(self):
        f = parse("[global]\nrate=1000\n[a]\nrate_sweep=10%:90%:20%\n[b]\n")
        a, b = f.jobs
        self.assertEqual(a["rate"], 0)
        self.assertEqual(a["rate_sweep"], {"unit": "%", "points": [10, 30, 50, 70, 90]})
        self.assertEqual(b["rate"], 1000)

    def test_rate_in_percent_of_peak(self):
        j = parse("[a]\nrate=50%\n").jobs[0]
        self.assertEqual(j["rate"], "50%")
        self.assertEqual(jobfile.rate_percent(j["rate"]), 50.0)
        self.assertIsNone(jobfile.rate_percent(parse("[a]\nrate=20k\n").jobs[0]["rate"]))

    def test_rate_sweep_in_ops(self):
        f = parse("[a]\nrate_sweep=1k:3k:1k\n")
        self.assertEqual(f.jobs[0]["rate_sweep"], {"unit": "ops", "points": [1000, 2000, 3000]})

    def test_units(self):
        P = jobfile
        self.assertEqual(P.parse_duration("500ms"), 0.5)
        self.assertEqual(P.parse_duration("2m"), 120)
        self.assertEqual(P.parse_duration("1h"), 3600)
        self.assertEqual(P.parse_size("64KiB"), 65536)
        self.assertEqual(P.parse_size("1M"), 1 << 20)
        self.assertEqual(P.parse_count("1.5M"), 1500000)
        self.assertEqual(P.parse_count("10k"), 10000)
        self.assertEqual(P.parse_cpus("0,2-3"), [0, 2, 3])
        self.assertEqual(P.parse_prefill("yes"), 1)
        self.assertEqual(P.parse_prefill("5"), 5)
        self.assertEqual(P.parse_prefill("no"), 0)

    def test_defaults(self):
        j = parse("[a]\n").jobs[0]
        for key, spec in jobfile.KEYS.items():
            self.assertEqual(j[key], spec.default, key)

    def test_duration_zero_with_prefill_is_a_load_only_job(self):
        j = parse("[a]\nduration=0\nprefill=yes\nkeys=5M\n").jobs[0]
        self.assertFalse(runner.is_measured(j))
        self.assertEqual(j["prefill"], 1)

    def test_crlf_and_spaces(self):
        f = parse("[global]\r\n  clients = 7  \r\n[a]\r\n")
        self.assertEqual(f.jobs[0]["clients"], 7)

    def test_interleaved_plan(self):
        f = parse("[global]\nrepeat=2\n[a]\n[b]\nrepeat=3\n[c]\nrepeat=1\n")
        order = [(j.name, r) for j, r in runner.plan(f)]
        self.assertEqual(order, [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("b", 2)])


class ShippedFiles(unittest.TestCase):
    def test_shipped_job_files_parse(self):
        files = sorted(glob.glob(os.path.join(SOURCE, "perf", "jobs", "*.job")))
        names = {os.path.basename(p) for p in files}
        for want in ("get-set.job", "durable.job", "values.job", "latency.job",
                     "compaction.job", "memory.job", "restart.job"):
            self.assertIn(want, names)
        for p in files:
            with self.subTest(file=os.path.basename(p)):
                f = jobfile.parse_file(p)
                self.assertTrue(f.jobs)
                self.assertTrue(f.description, "every shipped file describes itself")

    def test_docs_name_every_key(self):
        with open(os.path.join(SOURCE, "docs", "perf.md")) as f:
            doc = f.read()
        for key in jobfile.KEYS:
            self.assertIn(f"`{key}`", doc, f"docs/perf.md does not document '{key}'")


class CommandLine(unittest.TestCase):
    """scripts/perf itself: user errors are messages with exit status 2, never tracebacks."""

    def perf(self, *args):
        return subprocess.run([sys.executable, os.path.join(SOURCE, "scripts", "perf")]
                              + list(args), capture_output=True, text=True, timeout=60,
                              cwd=SOURCE)

    def test_bad_job_file(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "bad.job")
            with open(p, "w") as f:
                f.write("[global]\n[a]\ncleints=3\n")
            r = self.perf("--dry-run", p)
            self.assertEqual(r.returncode, 2)
            self.assertEqual(r.stderr, f"{p}:3: unknown key 'cleints' (did you mean "
                                       "'clients'?)\n")
            self.assertNotIn("Traceback", r.stdout + r.stderr)

    def test_missing_file_and_no_files(self):
        r = self.perf("/nonexistent/x.job")
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent/x.job: cannot read", r.stderr)
        r = self.perf()
        self.assertEqual(r.returncode, 2)
        self.assertIn("no job files given", r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_unavailable_cpu(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "cpu.job")
            with open(p, "w") as f:
                f.write("[a]\nserver_cpus=4000\n")
            r = self.perf("--dry-run", p)
            self.assertEqual(r.returncode, 2)
            self.assertTrue(r.stderr.startswith(f"{p}:2: key 'server_cpus': CPU 4000 is not "
                                                "available here"), r.stderr)

    def test_missing_binaries_say_how_to_build(self):
        with tempfile.TemporaryDirectory() as d:
            r = self.perf("--bin", d, "--out", os.path.join(d, "out"), "--no-fio",
                          os.path.join(SOURCE, "perf", "jobs", "durable.job"))
            self.assertEqual(r.returncode, 2)
            self.assertIn("kvs-server not found", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "out")))

    def test_dry_run_of_shipped_files(self):
        r = self.perf("--dry-run", *sorted(glob.glob(os.path.join(SOURCE, "perf", "jobs",
                                                                   "*.job"))))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--key-pattern", r.stdout)
        self.assertIn("redis-server --port PORT --bind 127.0.0.1 --save ''", r.stdout)
        self.assertIn("estimated time", r.stdout)


class ReportFromSyntheticResults(unittest.TestCase):
    """The report is a pure function of results.json: check it without any server."""

    def unit(self, rep, tput, p99, ok=True, sweep=False):
        lat = {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "p99.9": p99 * 2,
               "p99.99": p99 * 3, "max": p99 * 10}
        main = {"throughput": tput, "latency_us": lat, "errors": 0, "ops": tput * 5,
                "warmup_ops": tput, "cpu_s_per_mop": 3.5, "disk_bytes_per_op": 120.0,
                "offered": None}
        u = {"repeat": rep, "ok": ok, "error": None if ok else "boom", "warnings": [],
                "main": main if ok else None, "rss_end": 50 * 2**20, "data_dir_bytes": 2**20,
                "startup_s": 0.01,
                "prefill": {"passes": 1, "seconds": 2.0, "rss": 40 * 2**20,
                            "bytes_per_key": 64.0, "data_dir_bytes": 2**20}}
        if sweep:
            u["sweep"] = [{"offered_point": 10, "offered": 1000, "throughput": 999,
                           "latency_us": lat}]
        return u

    def results(self):
        cfg_a = runner.job_config(parse("[a]\nfsync=always\nrate_sweep=10%:10%:10%\n").jobs[0])
        cfg_b = runner.job_config(parse("[b]\nserver=redis\n").jobs[0])
        return {
            "command": "scripts/perf x.job", "started": "now", "finished": "later",
            "data_root": "/var/tmp",
            "data_filesystem": {"type": "ext4", "device": "/dev/x", "mount": "/"},
            "machine": {"cpu_model": "Test CPU", "cpus": 2, "cpus_usable": 2,
                        "memory_bytes": 2**33, "kernel": "6.x", "os": "Debian"},
            "disk": {"fdatasync_per_s": 5000.0, "seq_write_bytes_per_s": 300 * 2**20,
                     "seq_write_direct": True, "fdatasync_us": {"p50": 170, "p99": 300}},
            "files": [{"path": "x.job", "description": "a test file", "jobs": [
                {"name": "a", "line": 1, "description": "", "config": cfg_a,
                 "units": [self.unit(1, 1000.0, 100.0, sweep=True),
                           self.unit(2, 1200.0, 80.0, sweep=True),
                           self.unit(3, 1100.0, 90.0, sweep=True)]},
                {"name": "b", "line": 5, "description": "", "config": cfg_b,
                 "units": [self.unit(1, 550.0, 200.0), self.unit(2, 0, 0, ok=False)]},
            ]}],
        }

    def test_report_tables_and_json(self):
        d = tempfile.mkdtemp()
        try:
            report.write_all(self.results(), d, plots_on=shutil.which("gnuplot") is not None)
            with open(os.path.join(d, "report.md")) as f:
                md = f.read()
            self.assertIn("| `a` | kvs, fsync always | 1,100 (1,000–1,200) | 1.00× |", md)
            self.assertIn("| `b` | redis, no persistence | 550 | 0.50× |", md)
            self.assertIn("5,000 fdatasync'd 4 KiB writes/s", md)
            self.assertIn("Durable writes against the disk's ceilings", md)
            self.assertIn("- `b` run 2: boom", md)
            self.assertIn("Rate sweep of `a`", md)
            with open(os.path.join(d, "results.json")) as f:
                res = json.load(f)
            s = res["files"][0]["jobs"][0]["summary"]
            self.assertEqual(s["throughput"], {"median": 1100.0, "min": 1000.0,
                                               "max": 1200.0, "n": 3})
            if shutil.which("gnuplot"):
                for png in ("x-throughput.png", "x-latency.png", "x-sweep.png"):
                    p = os.path.join(d, png)
                    self.assertTrue(os.path.getsize(p) > 1000, png)
                    self.assertLess(os.path.getsize(p), 200 * 1024, png)
                    self.assertIn(f"]({png})", md)
        finally:
            shutil.rmtree(d)


if __name__ == "__main__":
    unittest.main(verbosity=1)
