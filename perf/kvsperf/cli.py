# SPDX-License-Identifier: MIT
"""`scripts/perf`: argument parsing, the checks made before anything starts, signal handling,
and exit codes (0 all ran, 1 some job failed, 2 bad usage or job file, 130 interrupted).

User errors (a bad job file, a missing binary, an unusable --out) are printed as one line per
problem, never as a traceback.
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import time

from . import disk, jobfile, procfs, report, runner, servers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)


def _on_signal(signum, _frame):
    # Further signals are ignored so that the cleanup they would interrupt (stopping servers,
    # removing data dirs, writing the partial report) can finish; it is bounded by timeouts.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def _parser():
    p = argparse.ArgumentParser(
        prog="scripts/perf",
        description="Run fio-style kvs/Redis performance jobs side by side and write "
                    "DIR/results.json, DIR/report.md and PNG plots. See docs/perf.md.",
        epilog="example: scripts/perf perf/jobs/get-set.job perf/jobs/durable.job")
    p.add_argument("jobfiles", nargs="*", metavar="JOBFILE", help="job files (perf/jobs/*.job)")
    p.add_argument("--out", metavar="DIR",
                   help="where results go (default: build/perf/<UTC date-time>)")
    p.add_argument("--bin", metavar="DIR",
                   help="where kvs-server and kvs-bench are (default: build/bin)")
    p.add_argument("--redis-server", metavar="PATH", default="redis-server",
                   help="the redis-server binary (default: redis-server from PATH)")
    p.add_argument("--data-root", metavar="DIR", default="/var/tmp",
                   help="servers' temp data dirs and fio's files go under DIR; it decides "
                        "which disk is measured (default: /var/tmp)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the job files and print the commands; run nothing")
    p.add_argument("--no-fio", action="store_true", help="skip the fio disk probe")
    p.add_argument("--fio-runtime", metavar="SEC", type=float, default=5.0,
                   help="seconds per fio probe (two probes; default 5)")
    p.add_argument("--no-plots", action="store_true", help="skip gnuplot")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the servers' data dirs (their paths are in results.json)")
    p.add_argument("--report-only", metavar="DIR",
                   help="rebuild DIR/report.md and plots from DIR/results.json")
    return p


def _fail(msgs, located=False):
    """Print user errors; job-file errors (located=True) already start with file:line."""
    for m in msgs if isinstance(msgs, list) else [msgs]:
        print(m if located else f"scripts/perf: {m}", file=sys.stderr)
    return EXIT_USAGE


def _binaries(args, files, repo):
    """Paths of the programs the jobs need, or a list of errors saying how to get them."""
    bin_dir = os.path.abspath(args.bin or os.path.join(repo, "build", "bin"))
    servers_used = {j["server"] for f in files for j in f.jobs}
    bins = {"kvs-server": os.path.join(bin_dir, "kvs-server"),
            "kvs-bench": os.path.join(bin_dir, "kvs-bench"),
            "redis-server": shutil.which(args.redis_server) or args.redis_server}
    errors = []
    need = ["kvs-bench"] + (["kvs-server"] if "kvs" in servers_used else [])
    for name in need:
        path = bins[name]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            how = ("build it: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && "
                   "cmake --build build -j" if not args.bin else "check --bin")
            errors.append(f"{path} not found or not executable; {how}")
    if "redis" in servers_used and not shutil.which(bins["redis-server"]):
        errors.append(f"{args.redis_server} not found (Debian package redis-server; "
                      "bash scripts/deps.sh test installs it)")
    uses_cpus = any(j["server_cpus"] is not None or j["client_cpus"] is not None
                    for f in files for j in f.jobs)
    if uses_cpus and not shutil.which("taskset"):
        errors.append("taskset not found (Debian package util-linux), needed for *_cpus keys")
    return bins, errors


def _out_dir(args, repo):
    if args.out:
        return args.out
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join(repo, "build", "perf", stamp)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_only(d):
    path = os.path.join(d, "results.json")
    try:
        with open(path) as fh:
            results = json.load(fh)
    except (OSError, ValueError) as e:
        return _fail(f"cannot read {path}: {e}")
    for w in report.write_all(results, d):
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {os.path.join(d, 'report.md')}")
    return EXIT_OK


def main(argv, repo):
    args = _parser().parse_args(argv)
    if args.report_only:
        return report_only(args.report_only)
    if not args.jobfiles:
        return _fail("no job files given (try perf/jobs/get-set.job; see --help)")
    if not 0.5 <= args.fio_runtime <= 120:
        return _fail("--fio-runtime must be between 0.5 and 120 seconds")
    try:
        files = jobfile.parse_files(args.jobfiles)
    except jobfile.JobFileError as e:
        return _fail(e.errors, located=True)
    errors = runner.check_cpus(files)
    if errors:
        return _fail(errors, located=True)
    bins, errors = _binaries(args, files, repo)
    if args.dry_run:
        for e in errors:
            print(f"note: {e}")
        runner.dry_run(files, bins)
        return EXIT_OK
    if errors:
        return _fail(errors)
    if not os.path.isdir(args.data_root):
        return _fail(f"--data-root {args.data_root} is not a directory")
    out = _out_dir(args, repo)
    if os.path.exists(os.path.join(out, "results.json")):
        return _fail(f"{out} already holds results.json; choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        return _fail(f"cannot create {out}: {e.strerror}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    t_start = time.monotonic()
    results = {
        "version": 1,
        "command": "scripts/perf " + " ".join(shlex.quote(a) for a in argv),
        "started": _now(), "finished": None, "interrupted": False,
        "out_dir": os.path.abspath(out), "data_root": os.path.abspath(args.data_root),
        "data_filesystem": procfs.filesystem(args.data_root),
        "machine": procfs.machine(repo), "disk": None, "files": [],
    }
    code = EXIT_OK
    try:
        if not args.no_fio:
            print(f"fio: measuring the disk under {args.data_root} "
                  f"(2 × {args.fio_runtime:g} s) ...", flush=True)
            try:
                results["disk"] = disk.probe(args.data_root, runtime=args.fio_runtime)
                d = results["disk"]
                print(f"fio: {d['fdatasync_per_s']:,.0f} fdatasync/s, sequential write "
                      f"{d['seq_write_bytes_per_s'] / 2**20:,.0f} MiB/s", flush=True)
            except disk.DiskError as e:
                results["disk"] = {"error": str(e)}
                print(f"warning: {e}", file=sys.stderr)
        r = runner.Runner(bins, out, args.data_root, keep_data=args.keep_data,
                          say=lambda s: print(s, flush=True))
        r.run_files(files, results)
        if r.failed:
            code = EXIT_FAILED
    except Interrupted as e:
        results["interrupted"] = True
        print(f"\nscripts/perf: {e}: stopped; writing the partial report", file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        servers.stop_all()
    results["finished"] = _now() if not results["interrupted"] else None
    results["elapsed_s"] = time.monotonic() - t_start
    try:
        for w in report.write_all(results, out, plots_on=not args.no_plots):
            print(f"warning: {w}", file=sys.stderr)
    except Interrupted:
        print("scripts/perf: interrupted while writing the report", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {os.path.join(out, 'report.md')} and results.json "
          f"({results['elapsed_s'] / 60:.1f} min)")
    if code == EXIT_FAILED:
        print("scripts/perf: some jobs failed: see 'Failures' in the report", file=sys.stderr)
    return code


def run(argv, repo):
    """main() for scripts/perf: also turns a closed stdout (scripts/perf ... | head) into a
    quiet exit instead of a traceback."""
    try:
        return main(argv, repo)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
