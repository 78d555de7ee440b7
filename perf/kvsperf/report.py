# SPDX-License-Identifier: MIT
"""results.json, report.md and the gnuplot PNGs, all made from the results dict alone (so a
report can be rebuilt from a results.json with `scripts/perf --report-only DIR`).

Every number is the median over a job's successful repetitions; where there were several and
they differ, the table shows "median (min–max)" so a reader sees the spread next to the value.
"""

import json
import os
import shutil
import statistics
import subprocess

PCTS = ["p50", "p90", "p99", "p99.9", "p99.99"]
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Statistics over repetitions.

def stat(values):
    """{median, min, max, n} of the numbers in values (None entries are skipped); None when
    there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}


def _main(u, *path):
    cur = u.get("main")
    for p in path:
        if cur is None:
            return None
        cur = cur.get(p)
    return cur


def summarize(job):
    """Per-job statistics over its successful units, stored back as job['summary']."""
    ok = [u for u in job["units"] if u["ok"]]
    s = {"runs": len(job["units"]), "ok": len(ok)}
    s["throughput"] = stat(_main(u, "throughput") for u in ok)
    s["offered"] = stat(_main(u, "offered") for u in ok)
    s["peak"] = stat(u["peak"]["throughput"] for u in ok if u.get("peak"))
    for p in PCTS + ["max"]:
        s[p] = stat(_main(u, "latency_us", p) for u in ok)
    s["cpu_s_per_mop"] = stat(_main(u, "cpu_s_per_mop") for u in ok)
    s["disk_bytes_per_op"] = stat(_main(u, "disk_bytes_per_op") for u in ok)
    s["errors"] = stat(_main(u, "errors") for u in ok)
    s["rss_end"] = stat(u.get("rss_end") for u in ok)
    s["data_dir_bytes"] = stat(u.get("data_dir_bytes") for u in ok)
    s["startup_s"] = stat(u.get("startup_s") for u in ok)
    pre = [u["prefill"] for u in ok if u.get("prefill")]
    if pre:
        s["prefill"] = {k: stat(p[k] for p in pre)
                        for k in ("seconds", "rss", "bytes_per_key", "data_dir_bytes")}
    rs = [u["restart"] for u in ok if u.get("restart")]
    if rs:
        s["restart"] = {k: stat(r[k] for r in rs) for k in ("seconds", "stop_s", "rss",
                                                             "data_dir_bytes")}
    sw = [u["sweep"] for u in ok if u.get("sweep")]
    if sw:
        points = []
        for i in range(min(len(x) for x in sw)):
            pts = [x[i] for x in sw]
            points.append({
                "point": pts[0]["offered_point"],
                "offered": stat(p["offered"] for p in pts),
                "throughput": stat(p["throughput"] for p in pts),
                **{p: stat(q["latency_us"][p] for q in pts) for p in ("p50", "p99", "p99.9")},
                "unsent": stat(q.get("unsent", 0) for q in pts),
            })
        s["sweep"] = points
    ev = []
    for u in ok:
        e = _main(u, "event")
        if not e:
            continue
        ev.append(dict(e, repeat=u["repeat"]))
    if ev:
        s["events"] = ev
    # What the store did during the job (kvs: dead bytes and compactions; Redis: AOF
    # rewrites), from INFO persistence after the prefill and at the end: shows whether an
    # event did the work and whether anything else (automatic compaction) did too.
    pairs = [(u.get("persistence_after_prefill"), u.get("persistence_end")) for u in ok]
    pairs = [(a, b) for a, b in pairs if a and b]
    store = {}
    for key in ("dead_bytes", "compactions", "aof_rewrites"):
        vals = [(a[key], b[key]) for a, b in pairs
                if isinstance(a.get(key), int) and isinstance(b.get(key), int)]
        if not vals:
            continue
        if key == "dead_bytes":
            store[key] = [statistics.median(v[0] for v in vals),
                          statistics.median(v[1] for v in vals)]
        else:
            store[key] = statistics.median(v[1] - v[0] for v in vals)
    if store:
        s["store"] = store
    job["summary"] = s
    return s


# ---------------------------------------------------------------------------------------------
# Formatting.

def _num(v, unit=""):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 100:
        t = f"{v:,.0f}"
    elif a >= 10:
        t = f"{v:.1f}"
    elif a >= 1:
        t = f"{v:.2f}"
    elif a == 0:
        t = "0"
    else:
        t = f"{v:.3f}"
    return t + unit


def cell(st, scale=1.0, unit=""):
    """'median' or 'median (min–max)' of a stat, divided by scale."""
    if st is None:
        return "—"
    med = _num(st["median"] / scale, unit)
    if st["n"] > 1 and st["min"] != st["max"]:
        return f"{med} ({_num(st['min'] / scale)}–{_num(st['max'] / scale)})"
    return med


def _med(st):
    return st["median"] if st else None


def _ratio(a, b):
    if a is None or not b:
        return "—"
    return f"{a / b:.2f}×"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _server_desc(cfg):
    if cfg["server"] == "kvs":
        parts = ["kvs"]
        if cfg.get("shards"):
            parts.append(f"{cfg['shards']} shard{'s' if cfg['shards'] > 1 else ''}")
        parts.append(f"fsync {cfg.get('fsync') or 'everysec'}")
    else:
        parts = ["redis"]
        if cfg.get("appendonly"):
            parts.append(f"AOF {cfg.get('appendfsync') or 'everysec'}")
        else:
            parts.append("no persistence")
    if cfg.get("server_cpus") is not None:
        parts.append("CPU " + ",".join(map(str, cfg["server_cpus"])))
    return ", ".join(parts)


def _load_desc(cfg, summary=None):
    length = (f"{cfg['requests']:,} req" if cfg.get("requests") is not None
              else f"{cfg['duration']:g} s")
    s = (f"{cfg['clients']} conn × pipeline {cfg['pipeline']}, SET:GET {cfg['ratio']}, "
         f"{cfg['keys']:,} keys {cfg['key_pattern']}, {cfg['data_size']} B, {length}")
    rate = cfg.get("rate")
    if isinstance(rate, str):
        s += f", offered {rate} of the peak"
        if summary and summary.get("peak"):
            s += (f" ({cell(summary['offered'])} of {cell(summary['peak'])} ops/s)")
    elif rate:
        s += f", {rate:,} ops/s offered"
    if cfg.get("client_cpus") is not None:
        s += ", bench on CPU " + ",".join(map(str, cfg["client_cpus"]))
    return s


def is_durable(cfg):
    if cfg["server"] == "kvs":
        return cfg.get("fsync") == "always"
    return bool(cfg.get("appendonly")) and cfg.get("appendfsync") == "always"


# ---------------------------------------------------------------------------------------------
# report.md

def write_markdown(results, out_dir, plots):
    m = results["machine"]
    lines = ["# kvs performance report", ""]
    lines.append(f"Made by `{results['command']}` from {results['started']} to "
                 f"{results.get('finished') or '(interrupted)'}.")
    if results.get("interrupted"):
        lines += ["", "**The run was interrupted: the tables hold what finished.**"]
    lines += ["", "## Machine", ""]
    mem = f", {m['memory_bytes'] / 1024**3:.1f} GiB memory" if m.get("memory_bytes") else ""
    lines.append(f"- CPU: {m['cpu_model']}, {m['cpus']} CPUs ({m['cpus_usable']} usable)"
                 f"{mem}")
    lines.append(f"- Kernel {m['kernel']}, {m['os']}")
    lines.append(f"- Software: kvs {m.get('kvs_commit') or '(commit unknown)'}, "
                 f"{m.get('redis_server') or 'redis-server not found'}, "
                 f"{m.get('fio') or 'fio not found'}")
    fs = results.get("data_filesystem") or {}
    lines.append(f"- Data directories under `{results['data_root']}`: {fs.get('type', '?')} "
                 f"on {fs.get('device', '?')} (mounted at {fs.get('mount', '?')})")
    if fs.get("type") in ("tmpfs", "ramfs"):
        lines.append("- **Warning: the data directories are in memory (tmpfs); fsync costs "
                     "nothing there and durable results mean little. Use --data-root.**")
    disk = results.get("disk")
    if disk and not disk.get("error"):
        sync = disk.get("fdatasync_us") or {}
        lat = f" (fdatasync p50 {_num(sync.get('p50'))} µs, p99 {_num(sync.get('p99'))} µs)" \
            if sync else ""
        lines.append(f"- Disk ceilings (fio, same filesystem): "
                     f"{disk['fdatasync_per_s']:,.0f} fdatasync'd 4 KiB writes/s{lat}; "
                     f"sequential write {disk['seq_write_bytes_per_s'] / MIB:,.0f} MiB/s "
                     f"({'O_DIRECT' if disk.get('seq_write_direct') else 'buffered'} 1 MiB "
                     "writes)")
    elif disk:
        lines.append(f"- Disk ceilings: not measured ({disk['error']})")
    else:
        lines.append("- Disk ceilings: not measured (--no-fio)")

    for f in results["files"]:
        lines += ["", f"## {f['path']}", ""]
        if f.get("description"):
            lines += [f["description"], ""]
        lines += _file_section(f, disk, plots.get(f["path"], []))
    lines += ["", "## How to read this", "", READING_GUIDE]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write(text)
    return text


READING_GUIDE = """\
- **ops/s** is replies per second in the measured phase (warm-up excluded), as kvs-bench
  counted them; **× first** divides it by the first job of the same file.
- **p50/p99/p99.9** are request latencies in microseconds from kvs-bench's histogram (closed
  loop: from send to reply; with a rate: from the intended send time, so queueing counts).
- **RSS** is the server's resident memory at the end of the job (/proc/PID/status VmRSS).
- **CPU s/Mop** is server CPU seconds (user + system, all threads, from /proc/PID/stat) per
  million requests, warm-up included. Lower means more work per core; on a machine where the
  client shares the CPUs it is the fairer comparison than ops/s.
- **disk B/op** is /proc/PID/io write_bytes per request: what the server made the kernel
  write. For a GET-only job it should be 0; for SETs it shows log record or AOF overhead.
  Redis's AOF rewrite runs in a forked child, whose writes are not counted.
- Several repetitions run interleaved (A B A B ...); a cell reads "median (min–max)". A spread
  of more than a few percent means the machine was noisy: rerun before drawing conclusions.
- Durable writes are compared with the disk's ceilings: a server that syncs each write alone
  cannot exceed the fdatasync rate; group commit (one sync for many SETs) can.
"""


def _file_section(f, disk, plots):
    jobs = f["jobs"]
    for j in jobs:
        summarize(j)
    out = []
    measured = [j for j in jobs if j["summary"]["throughput"]]
    if measured:
        first = _med(measured[0]["summary"]["throughput"])
        rows = []
        for j in measured:
            s, cfg = j["summary"], j["config"]
            rows.append([f"`{j['name']}`", _server_desc(cfg), cell(s["throughput"]),
                         _ratio(_med(s["throughput"]), first), cell(s["p50"]),
                         cell(s["p99"]), cell(s["p99.9"]), cell(s["rss_end"], MIB),
                         cell(s["cpu_s_per_mop"]), cell(s["disk_bytes_per_op"]),
                         _num(_med(s["errors"]))])
        out.append(_table(["job", "server", "ops/s", "× first", "p50 µs", "p99 µs",
                           "p99.9 µs", "RSS MiB", "CPU s/Mop", "disk B/op", "errors"], rows))
        n = max(j["summary"]["ok"] for j in measured)
        out += ["", f"Median of {n} run{'s' if n > 1 else ''} per job"
                + (" (min–max)." if n > 1 else ".") + " Loads:", ""]
        for j in measured:
            out.append(f"- `{j['name']}`: {_load_desc(j['config'], j['summary'])}"
                       + (f" — {j['description']}" if j.get("description") else ""))
    durable = [j for j in measured if is_durable(j["config"])]
    if durable and disk and not disk.get("error"):
        out += ["", "Durable writes against the disk's ceilings:", ""]
        rows = []
        for j in durable:
            s, cfg = j["summary"], j["config"]
            sets, gets = (int(x) for x in cfg["ratio"].split(":"))
            set_rate = _med(s["throughput"]) * sets / (sets + gets)
            bps = _med(s["throughput"]) * (_med(s["disk_bytes_per_op"]) or 0)
            rows.append([f"`{j['name']}`", _num(set_rate),
                         f"{set_rate / disk['fdatasync_per_s']:.2f}×",
                         _num(bps / MIB), f"{100 * bps / disk['seq_write_bytes_per_s']:.1f}%"])
        out.append(_table(["job", "SETs/s", "÷ fdatasync/s", "disk MiB/s", "of seq. write bw"],
                          rows))
    pre = [j for j in jobs if j["summary"].get("prefill")]
    if pre:
        out += ["", "After the prefill (memory and disk per key):", ""]
        rows = []
        for j in pre:
            p, cfg = j["summary"]["prefill"], j["config"]
            keys = cfg["keys"]
            rows.append([f"`{j['name']}`", _server_desc(cfg), f"{keys:,}", str(cfg["prefill"]),
                         cell(p["seconds"], unit=" s"), cell(p["rss"], MIB),
                         cell(p["bytes_per_key"]), cell(p["data_dir_bytes"], MIB),
                         _num(_med(p["data_dir_bytes"]) / keys)])
        out.append(_table(["job", "server", "keys", "passes", "prefill time", "RSS MiB",
                           "RSS bytes/key", "on disk MiB", "disk bytes/key"], rows))
        out += ["", "RSS bytes/key is (RSS after the prefill − RSS at start) ÷ keys: index, "
                "allocator overhead and, for Redis, the values themselves."]
    rs = [j for j in jobs if j["summary"].get("restart")]
    if rs:
        out += ["", "Restart: time from starting the server on the data to the first GET "
                "answered with the right value:", ""]
        first = _med(rs[0]["summary"]["restart"]["seconds"])
        rows = []
        for j in rs:
            r, cfg = j["summary"]["restart"], j["config"]
            rows.append([f"`{j['name']}`", _server_desc(cfg), f"{cfg['keys']:,}",
                         cell(r["data_dir_bytes"], MIB), cell(r["seconds"], unit=" s"),
                         _ratio(_med(r["seconds"]), first), cell(r["stop_s"], unit=" s"),
                         cell(r["rss"], MIB)])
        out.append(_table(["job", "server", "keys", "data MiB", "restart", "× first",
                           "graceful stop", "RSS MiB after"], rows))
    for j in jobs:
        sw = j["summary"].get("sweep")
        if not sw:
            continue
        unit = (j["config"].get("rate_sweep") or {}).get("unit", "ops")
        out += ["", f"Rate sweep of `{j['name']}` ({_server_desc(j['config'])}; peak "
                f"{cell(j['summary']['throughput'])} ops/s):", ""]
        rows = [[f"{p['point']:g}%" if unit == "%" else f"{p['point']:,.0f}",
                 cell(p["offered"]), cell(p["throughput"]), cell(p["p50"]), cell(p["p99"]),
                 cell(p["p99.9"]), _num(_med(p.get("unsent")))] for p in sw]
        out.append(_table(["offered", "offered ops/s", "achieved ops/s", "p50 µs", "p99 µs",
                           "p99.9 µs", "unsent"], rows))
        out += ["", "*unsent*: requests whose send time passed without a free connection slot; "
                "above 0 the offered rate was not reached there."]
    for j in jobs:
        for e in j["summary"].get("events", []):
            what = e.get("reply", e.get("error", "?"))
            when = f" {e['sent_at_s']:.1f} s into the measured run" if "sent_at_s" in e else ""
            if "done_after_s" in e:
                took = f"; the background work ended {e['done_after_s']:.2f} s after it was sent"
            elif e.get("error"):
                took = ""
            else:
                took = "; its end was not observed"
            out += ["", f"`{j['name']}` run {e.get('repeat', '?')}: sent {e['command']}{when} "
                    f"({what}){took}."]
    if any(j["summary"].get("events") for j in jobs):
        out += ["", "What the stores did during each job (INFO persistence after the prefill → "
                "at the end; median). A job without an event should show no compaction or "
                "rewrite of its own.", ""]
        rows = []
        for j in jobs:
            st = j["summary"].get("store") or {}
            dead = st.get("dead_bytes")
            rows.append([f"`{j['name']}`",
                         f"{_num(dead[0] / MIB)} → {_num(dead[1] / MIB)}" if dead else "—",
                         f"{st['compactions']:g}" if "compactions" in st else "—",
                         f"{st['aof_rewrites']:g}" if "aof_rewrites" in st else "—"])
        out.append(_table(["job", "kvs dead data MiB", "kvs compactions", "Redis AOF rewrites"],
                          rows))
    failed = [(j, u) for j in jobs for u in j["units"] if not u["ok"]]
    if failed:
        out += ["", "Failures:", ""]
        for j, u in failed:
            msg = (u["error"] or "?").splitlines()[0]
            out.append(f"- `{j['name']}` run {u['repeat']}: {msg}")
    warns = [(j, u, w) for j in jobs for u in j["units"] for w in u.get("warnings", [])]
    if warns:
        out += ["", "Warnings:", ""]
        out += [f"- `{j['name']}` run {u['repeat']}: {w}" for j, u, w in warns]
    if plots:
        out.append("")
        out += [f"![{title}]({name})" for name, title in plots]
    return out


# ---------------------------------------------------------------------------------------------
# Plots (gnuplot). Each plot is a .dat and a .gp file in DIR/plots and a PNG in DIR.

def _gp_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _terminal():
    """pngcairo where the gnuplot build has it (smoother, small files), else plain png."""
    try:
        r = subprocess.run(["gnuplot", "-e", "set terminal pngcairo"], capture_output=True,
                           text=True, timeout=20)
        if r.returncode == 0 and not r.stderr.strip():
            return 'pngcairo size {w},380 font ",9" noenhanced'
    except (OSError, subprocess.SubprocessError):
        pass
    return "png size {w},380 small noenhanced"


def _plot(out_dir, name, title, script_body, data, width=760):
    plots_dir = os.path.join(out_dir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    dat = os.path.join(plots_dir, name + ".dat")
    with open(dat, "w") as fh:
        fh.write(data)
    gp = os.path.join(plots_dir, name + ".gp")
    with open(gp, "w") as fh:
        fh.write(f"set terminal {_terminal.cached.format(w=width)}\n")
        fh.write(f"set output {_gp_str(os.path.join('..', name + '.png'))}\n")
        fh.write(f"set title {_gp_str(title)}\n")
        fh.write(f"data = {_gp_str(name + '.dat')}\n")
        fh.write(script_body)
    try:
        r = subprocess.run(["gnuplot", name + ".gp"], cwd=plots_dir, capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"gnuplot timed out on {gp}"
    if r.returncode != 0:
        return f"gnuplot failed on {gp}: {r.stderr.strip().splitlines()[-1:]}"
    return None


def make_plots(results, out_dir):
    """PNG plots per job file. Returns ({file path: [(png, title)]}, [warnings])."""
    if shutil.which("gnuplot") is None:
        return {}, ["gnuplot not found (Debian package gnuplot-nox): no plots"]
    _terminal.cached = _terminal()
    plots, warnings = {}, []
    for f in results["files"]:
        stem = os.path.splitext(os.path.basename(f["path"]))[0]
        made = []
        jobs = f["jobs"]
        for j in jobs:
            if "summary" not in j:
                summarize(j)
        measured = [j for j in jobs if j["summary"]["throughput"]]
        if measured:
            # Wide enough that every job's name stays readable under its bar.
            width = max(760, 120 + 45 * len(measured))
            name = f"{stem}-throughput"
            rows = []
            for j in measured:
                t = j["summary"]["throughput"]
                color = 1 if j["config"]["server"] == "kvs" else 2
                rows.append(f"{j['name']} {t['median']:.1f} {t['min']:.1f} {t['max']:.1f} "
                            f"{color}")
            top = max(j["summary"]["throughput"]["max"] for j in measured)
            yfmt, label = ("%.0s%c", 'sprintf("%.0fk", $2 / 1000)') if top >= 10000 \
                else ("%.0f", 'sprintf("%.0f", $2)')
            body = (
                "set style fill solid 0.7 border -1\nset boxwidth 0.6\nset ylabel \"ops/s\"\n"
                "set yrange [0:*]\nset grid ytics\nset xtics rotate by -35 nomirror\n"
                f"set format y \"{yfmt}\"\nset key top left\n"
                "set offsets 0.5, 0.5, graph 0.15, 0\nset bmargin 8\nset rmargin 10\n"
                "plot data using 0:2:5:xtic(1) with boxes lc variable notitle, \\\n"
                "     data using 0:2:3:4 with yerrorbars lc rgb \"black\" pt 7 ps 0.4 "
                "notitle, \\\n"
                f"     data using 0:4:({label}) with labels rotate by 90 left "
                "offset 0,0.5 notitle, \\\n"
                "     NaN with boxes lc 1 title \"kvs\", NaN with boxes lc 2 title \"redis\"\n")
            err = _plot(out_dir, name, f"{stem}: throughput (median, min–max)", body,
                        "\n".join(rows) + "\n", width)
            if err:
                warnings.append(err)
            else:
                made.append((name + ".png", f"{stem}: throughput"))
            # Clustered bars (p50, p99, p99.9 per job) stay readable with many jobs, where
            # one line per job does not.
            name = f"{stem}-latency"
            shown = ["p50", "p99", "p99.9"]
            rows = ["job " + " ".join(shown)]
            for j in measured:
                rows.append(j["name"] + " " + " ".join(
                    f"{_med(j['summary'][p]):.3f}" if j["summary"][p] else "NaN"
                    for p in shown))
            body = (
                "set logscale y\nset ylabel \"latency µs (log)\"\nset grid ytics\n"
                "set style data histogram\nset style histogram clustered gap 1\n"
                "set style fill solid 0.8 border -1\nset boxwidth 0.9\n"
                "set xtics rotate by -35 nomirror\nset key top left\nset bmargin 8\nset rmargin 10\n"
                "set yrange [*:*]\n"
                "plot data using 2:xtic(1) title \"p50\" lc rgb \"#a6cee3\", \\\n"
                "     '' using 3 title \"p99\" lc rgb \"#1f78b4\", \\\n"
                "     '' using 4 title \"p99.9\" lc rgb \"#08306b\"\n")
            err = _plot(out_dir, name, f"{stem}: latency percentiles (median)", body,
                        "\n".join(rows) + "\n", width)
            if err:
                warnings.append(err)
            else:
                made.append((name + ".png", f"{stem}: latency percentiles"))
        sweeps = [j for j in jobs if j["summary"].get("sweep")]
        if sweeps:
            name = f"{stem}-sweep"
            blocks, clauses = [], []
            for i, j in enumerate(sweeps):
                rows = [f"{_med(p['offered']):.1f} {_med(p['p99']):.3f} {_med(p['p50']):.3f} "
                        f"{_med(p['throughput']):.1f}" for p in j["summary"]["sweep"]]
                blocks.append("\n".join(rows))
                clauses.append(f"data index {i} using 1:2 with linespoints lc {i + 1} "
                               f"title {_gp_str(j['name'] + ' p99')}")
                clauses.append(f"data index {i} using 1:3 with linespoints dt 2 lc {i + 1} "
                               f"title {_gp_str(j['name'] + ' p50')}")
            body = ("set logscale y\nset ylabel \"latency µs (log)\"\n"
                    "set xlabel \"offered load, ops/s\"\nset format x \"%.1s%c\"\n"
                    "set xrange [0:*]\n"
                    "set grid\nset key outside right\n"
                    "plot " + ", \\\n     ".join(clauses) + "\n")
            err = _plot(out_dir, name, f"{stem}: latency against offered load", body,
                        "\n\n\n".join(blocks) + "\n")
            if err:
                warnings.append(err)
            else:
                made.append((name + ".png", f"{stem}: latency against offered load"))
        if made:
            plots[f["path"]] = made
    return plots, warnings


def write_all(results, out_dir, plots_on=True):
    """Summaries, plots, report.md and results.json. Returns the warnings to print."""
    for f in results["files"]:
        for j in f["jobs"]:
            summarize(j)
    warnings = []
    plots = {}
    if plots_on:
        plots, warnings = make_plots(results, out_dir)
    write_markdown(results, out_dir, plots)
    tmp = os.path.join(out_dir, "results.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, os.path.join(out_dir, "results.json"))
    return warnings
