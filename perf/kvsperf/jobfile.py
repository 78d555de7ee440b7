# SPDX-License-Identifier: MIT
"""The job-file parser: INI like fio, with errors that name file, line and key.

A job file is a `[global]` section (optional, first) and one section per job. Each line is
`key=value`, a `[section]` header, a blank line, or a comment starting with `#` or `;`. A job
gets every key from [global] and then its own keys, so a job's key overrides the global one.

configparser is not used on purpose: it merges duplicate sections, forgives duplicate keys only
in lenient mode, knows nothing of per-key value types and reports errors without the key, while
users need `perf/jobs/x.job:12: unknown key 'cleints'` and nothing else.

Every key is described once in KEYS below (type, default, which server it applies to); the
runner, the report and docs/perf.md all follow that table, and the unit test checks that the
documentation names every key.
"""

import difflib
import os
import re
import shlex

# Bounds on what a job may ask for: a typo such as `keys=1000000000000` should be an error
# at parse time, not an out-of-memory server an hour into a run.
MAX_COUNT = 10**10
MAX_CLIENTS = 10000
MAX_PIPELINE = 10000
MAX_DATA_SIZE = 64 * 1024 * 1024
MAX_DURATION = 24 * 3600.0
MAX_REPEAT = 100
MAX_PREFILL = 100
MAX_SWEEP_POINTS = 50
MAX_FILE_BYTES = 1024 * 1024

SECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class JobFileError(Exception):
    """One or more errors in job files; str() is one `file:line: message` per line."""

    def __init__(self, errors):
        super().__init__("\n".join(errors))
        self.errors = list(errors)


class BadValue(ValueError):
    """Raised by a value parser; the message says what was expected."""


# ---------------------------------------------------------------------------------------------
# Value parsers. Each takes the raw string (already stripped) and returns the parsed value or
# raises BadValue with a message that completes "expected ...".

_COUNT_SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6, "g": 10**9, "G": 10**9}
_SIZE_SUFFIX = {
    "": 1, "b": 1, "B": 1,
    "k": 1024, "K": 1024, "KiB": 1024, "kib": 1024,
    "m": 1024**2, "M": 1024**2, "MiB": 1024**2, "mib": 1024**2,
    "g": 1024**3, "G": 1024**3, "GiB": 1024**3, "gib": 1024**3,
}
_DURATION_SUFFIX = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$")


def _scaled(text, suffixes, what):
    m = _NUM_RE.match(text)
    if not m or m.group(2) not in suffixes:
        raise BadValue(what)
    return float(m.group(1)) * suffixes[m.group(2)]


def parse_count(text, lo=0, hi=MAX_COUNT):
    """A whole number with an optional decimal suffix: 500, 10k, 1M, 1.5M (k/M/G = 10^3/6/9)."""
    what = f"a whole number from {lo} to {hi:,}, optionally with k, M or G (10k, 1M)"
    v = _scaled(text, _COUNT_SUFFIX, what)
    if v != int(v) or not lo <= v <= hi:
        raise BadValue(what)
    return int(v)


def parse_size(text, lo=1, hi=MAX_DATA_SIZE):
    """A byte count with an optional binary suffix: 100, 4k, 4KiB, 1M (k/M/G = 2^10/20/30)."""
    what = f"a size in bytes from {lo} to {hi:,}, optionally with k/KiB, M/MiB (4k = 4096)"
    v = _scaled(text, _SIZE_SUFFIX, what)
    if v != int(v) or not lo <= v <= hi:
        raise BadValue(what)
    return int(v)


def parse_duration(text, lo=0.0, hi=MAX_DURATION):
    """Seconds with an optional unit: 5, 5s, 500ms, 2m, 1h."""
    what = f"a duration such as 5s, 500ms or 2m (from {lo:g}s to {hi:g}s)"
    v = _scaled(text, _DURATION_SUFFIX, what)
    if not lo <= v <= hi:
        raise BadValue(what)
    return v


def parse_bool(text):
    t = text.lower()
    if t in ("yes", "true", "on", "1"):
        return True
    if t in ("no", "false", "off", "0"):
        return False
    raise BadValue("yes or no")


def parse_enum(*choices):
    def parse(text):
        if text not in choices:
            raise BadValue(" or ".join(f"'{c}'" for c in choices))
        return text
    parse.choices = choices
    return parse


def parse_cpus(text):
    """A CPU list as taskset -c takes it: 0, 0-3, 0,2,4-5; returns the sorted CPU numbers.
    'all' returns None (not pinned), so that a job can undo a [global] pinning."""
    what = "a CPU list such as 0, 1-3 or 0,2, or 'all' (not pinned)"
    if text == "all":
        return None
    cpus = set()
    for part in text.split(","):
        m = re.match(r"^(\d+)(?:-(\d+))?$", part.strip())
        if not m:
            raise BadValue(what)
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a or b >= 4096:
            raise BadValue(what)
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def parse_ratio(text):
    """SET:GET weights, e.g. 1:10 (one SET per ten GETs), 1:0 (SET only), 0:1 (GET only)."""
    what = "SET:GET weights such as 1:10, 1:0 or 0:1"
    m = re.match(r"^(\d{1,6}):(\d{1,6})$", text)
    if not m:
        raise BadValue(what)
    s, g = int(m.group(1)), int(m.group(2))
    if s == 0 and g == 0:
        raise BadValue(what + " (not both 0)")
    return (s, g)


def parse_key_pattern(text):
    """uniform, sequential or zipf:S with 0 < S <= 5 (the skew; 0.99 is the YCSB default)."""
    what = "'uniform', 'sequential' or 'zipf:S' with 0 < S <= 5 (e.g. zipf:0.99)"
    if text in ("uniform", "sequential"):
        return text
    m = re.match(r"^zipf:(\d+(?:\.\d+)?)$", text)
    if not m or not 0 < float(m.group(1)) <= 5:
        raise BadValue(what)
    return text


def parse_data_size(text):
    """A value size or a range MIN-MAX of sizes (uniformly drawn by kvs-bench)."""
    parts = text.split("-")
    if len(parts) == 1:
        n = parse_size(text)
        return (n, n)
    if len(parts) != 2:
        raise BadValue("a size such as 100 or 4k, or a range MIN-MAX such as 100-4k")
    lo, hi = parse_size(parts[0].strip()), parse_size(parts[1].strip())
    if lo > hi:
        raise BadValue("a range MIN-MAX with MIN <= MAX")
    return (lo, hi)


def parse_rate_sweep(text):
    """START:STOP:STEP, all in percent of the measured peak (10%:90%:20%) or all in ops/s.

    Returns {"unit": "%"|"ops", "points": [...]}; STOP is included when the steps land on it.
    """
    what = "START:STOP:STEP, all percentages of the peak (10%:90%:20%) or all ops/s"
    parts = text.split(":")
    if len(parts) != 3:
        raise BadValue(what)
    pct = [p.strip().endswith("%") for p in parts]
    if any(pct) and not all(pct):
        raise BadValue(what + " (do not mix % and ops/s)")
    nums = []
    for p in parts:
        p = p.strip().rstrip("%").strip()
        if all(pct):
            if not re.match(r"^\d+(\.\d+)?$", p):
                raise BadValue(what)
            nums.append(float(p))
        else:
            nums.append(float(parse_count(p, lo=1)))
    start, stop, step = nums
    if all(pct) and not (0 < start <= stop <= 1000):
        raise BadValue(what + " (0 < START <= STOP <= 1000%)")
    if step <= 0 or start > stop:
        raise BadValue(what + " (START <= STOP, STEP > 0)")
    points = []
    x = start
    # A small epsilon so that 10%:90%:20% includes 90% despite float steps.
    while x <= stop + 1e-9 and len(points) <= MAX_SWEEP_POINTS:
        points.append(round(x, 6))
        x += step
    if len(points) > MAX_SWEEP_POINTS:
        raise BadValue(what + f" (at most {MAX_SWEEP_POINTS} points)")
    return {"unit": "%" if all(pct) else "ops", "points": points}


def parse_rate(text):
    """Offered ops/s in total (0 = flat out), or a percentage of the job's peak such as 50%,
    which makes the runner measure the peak first. Returns an int, or the text 'N%'."""
    if text.endswith("%"):
        m = re.match(r"^(\d+(?:\.\d+)?)%$", text)
        if not m or not 0 < float(m.group(1)) <= 1000:
            raise BadValue("ops/s (20k) or a percentage of the peak from 0% to 1000% (50%)")
        return f"{float(m.group(1)):g}%"
    return parse_count(text, lo=0)


def rate_percent(rate):
    """The percentage of a 'N%' rate, else None."""
    return float(rate[:-1]) if isinstance(rate, str) else None


def parse_prefill(text):
    """yes (one pass), no (none) or the number of passes over the keyspace (0..100)."""
    try:
        return 1 if parse_bool(text) else 0
    except BadValue:
        pass
    if not re.match(r"^\d+$", text) or int(text) > MAX_PREFILL:
        raise BadValue(f"yes, no or a number of passes from 0 to {MAX_PREFILL}")
    return int(text)


def parse_words(text):
    """Extra command-line words, split like a POSIX shell would (quotes, backslashes)."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise BadValue(f"command-line words with balanced quotes ({e})") from None


def parse_text(text):
    return text


def _ranged_int(lo, hi):
    def parse(text):
        return parse_count(text, lo=lo, hi=hi)
    return parse


def _ranged_duration(lo):
    def parse(text):
        return parse_duration(text, lo=lo)
    return parse


# ---------------------------------------------------------------------------------------------
# The table of keys. `server` is None when the key applies to every server, else the one
# server it applies to. `default` is the value a job gets when neither [global] nor its own
# section sets the key; None means "not set" (the runner then leaves the option out and the
# program's own default applies).


class Key:
    def __init__(self, name, parse, default, doc, server=None, empty_ok=False):
        self.name = name
        self.parse = parse
        self.default = default
        self.doc = doc
        self.server = server
        self.empty_ok = empty_ok


KEYS = {k.name: k for k in [
    # What the section is.
    Key("description", parse_text, "", "free text shown in the report (not inherited: in "
        "[global] it describes the file)", empty_ok=True),
    # The server.
    Key("server", parse_enum("kvs", "redis"), "kvs", "the server to start"),
    Key("server_args", parse_words, [], "extra command-line words for the server",
        empty_ok=True),
    Key("shards", _ranged_int(1, 1024), None, "kvs-server --shards (default: its CPUs)",
        server="kvs"),
    Key("fsync", parse_enum("always", "everysec", "never"), None,
        "kvs-server --fsync (default: the server's, everysec)", server="kvs"),
    Key("appendonly", parse_bool, None,
        "redis-server --appendonly (default: yes when appendfsync is set, else no)",
        server="redis"),
    Key("appendfsync", parse_enum("always", "everysec", "no"), None,
        "redis-server --appendfsync (implies appendonly=yes; default everysec)",
        server="redis"),
    Key("server_cpus", parse_cpus, None,
        "pin the server with taskset -c; 'all' = unpinned (the default)"),
    Key("startup_timeout", _ranged_duration(0.1), 60.0,
        "how long to wait for the first answer after a (re)start"),
    # The load: kvs-bench options.
    Key("clients", _ranged_int(1, MAX_CLIENTS), 50, "kvs-bench --clients (connections)"),
    Key("threads", _ranged_int(1, 256), 1, "kvs-bench --threads"),
    Key("pipeline", _ranged_int(1, MAX_PIPELINE), 1,
        "kvs-bench --pipeline (requests in flight per connection)"),
    Key("ratio", parse_ratio, (1, 10), "kvs-bench --ratio SET:GET"),
    Key("keys", _ranged_int(1, MAX_COUNT), 100000, "kvs-bench --keys (size of the keyspace)"),
    Key("key_pattern", parse_key_pattern, "uniform", "kvs-bench --key-pattern"),
    Key("data_size", parse_data_size, (100, 100), "kvs-bench --data-size (value bytes)"),
    Key("duration", parse_duration, 5.0,
        "length of the measured run; 0 = no measured run (prefill/restart/memory only)"),
    Key("requests", _ranged_int(1, MAX_COUNT), None,
        "length of the measured run in requests (instead of duration)"),
    Key("warmup", parse_duration, 1.0,
        "load before the measured run, not counted (a separate kvs-bench run)"),
    Key("rate", parse_rate, 0, "kvs-bench --rate: ops/s in total (0 = as fast as possible) or "
        "a percentage of the peak, measured first (50%)"),
    Key("rate_sweep", parse_rate_sweep, None,
        "measure the peak, then run at each offered rate START:STOP:STEP"),
    Key("prefill", parse_prefill, 0,
        "SET every key this many times before the run (yes = 1; 5 = 80% dead data)"),
    Key("seed", _ranged_int(0, 2**63 - 1), 1, "kvs-bench --seed"),
    Key("verify", parse_bool, False, "kvs-bench --verify (check GET replies)"),
    Key("client_cpus", parse_cpus, None,
        "pin kvs-bench with taskset -c; 'all' = unpinned (the default)"),
    Key("bench_args", parse_words, [], "extra command-line words for kvs-bench",
        empty_ok=True),
    Key("timeout", _ranged_duration(1.0), 300.0,
        "bound on one kvs-bench run beyond its expected length"),
    # Events and measurements around the run.
    Key("during", parse_enum("none", "compact"), "none",
        "an event during the measured run: compact = COMPACT (kvs) / BGREWRITEAOF (redis)"),
    Key("during_at", parse_duration, 1.0, "when the event is sent, from the measured run's "
        "start"),
    Key("restart", parse_bool, False,
        "after the run, stop the server and time a restart to the first answered GET"),
    Key("repeat", _ranged_int(1, MAX_REPEAT), 1,
        "how many times the job runs (interleaved with the file's other jobs)"),
]}

# Pairs of keys that say the same thing two ways: a section that sets one of them replaces
# the other as inherited from [global]; setting both in one section is an error.
EXCLUSIVE = [("duration", "requests"), ("rate", "rate_sweep")]


class Job:
    """One resolved job: every key of KEYS has a value; `where[key]` is the (file, line) that
    set it, or None for a default."""

    def __init__(self, path, name, line, values, where, description):
        self.path = path
        self.name = name
        self.line = line
        self.values = values
        self.where = where
        self.description = description

    def __getitem__(self, key):
        return self.values[key]

    def loc(self, key=None):
        """`file:line` of the key's setting (or of the section header)."""
        w = self.where.get(key) if key else None
        return f"{self.path}:{w if w else self.line}"

    def __repr__(self):
        return f"Job({self.path}:{self.line} [{self.name}])"


class JobFile:
    def __init__(self, path, description, jobs):
        self.path = path
        self.description = description
        self.jobs = jobs


_BROKEN = ("", 0, {})


def _unknown_key_message(key):
    close = difflib.get_close_matches(key, KEYS.keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}"


def parse_text_file(text, path):
    """Parse the text of one job file; `path` is used in messages. Returns a JobFile or raises
    JobFileError with every error found (one per line, in file order)."""
    errors = []
    sections = []          # [(name, line, {key: (value, line)})]
    seen_sections = {}
    # None before the first header; BROKEN after a header that was itself an error, whose
    # keys are skipped (the header's error already explains them).
    current = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                errors.append(f"{path}:{lineno}: section header without closing ']': '{line}'")
                current = _BROKEN
                continue
            name = line[1:-1].strip()
            if not SECTION_RE.match(name):
                errors.append(f"{path}:{lineno}: bad section name '[{name}]': use letters, "
                              "digits, '_', '-' and '.', up to 64 characters")
                current = _BROKEN
                continue
            if name in seen_sections:
                errors.append(f"{path}:{lineno}: duplicate section [{name}] (first on line "
                              f"{seen_sections[name]})")
                current = _BROKEN
                continue
            if name == "global" and sections:
                errors.append(f"{path}:{lineno}: [global] must come before the first job")
            seen_sections[name] = lineno
            current = (name, lineno, {})
            sections.append(current)
            continue
        if "=" not in line:
            errors.append(f"{path}:{lineno}: expected 'key=value', '[section]' or a comment, "
                          f"got '{line}'")
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if not key:
            errors.append(f"{path}:{lineno}: missing key before '='")
            continue
        if current is _BROKEN:
            continue
        if current is None:
            errors.append(f"{path}:{lineno}: key '{key}' outside a section (put [global] or "
                          "[jobname] above it)")
            continue
        spec = KEYS.get(key)
        if spec is None:
            errors.append(f"{path}:{lineno}: {_unknown_key_message(key)}")
            continue
        keys = current[2]
        if key in keys:
            errors.append(f"{path}:{lineno}: duplicate key '{key}' in [{current[0]}] (first "
                          f"set on line {keys[key][1]})")
            continue
        for group in EXCLUSIVE:
            if key in group:
                for other in group:
                    if other != key and other in keys:
                        errors.append(f"{path}:{lineno}: key '{key}' conflicts with '{other}' "
                                      f"on line {keys[other][1]}: set only one of them")
        if value == "" and not spec.empty_ok:
            errors.append(f"{path}:{lineno}: key '{key}' has no value")
            continue
        try:
            parsed = spec.parse(value)
        except BadValue as e:
            errors.append(f"{path}:{lineno}: key '{key}': bad value '{value}': expected {e}")
            continue
        keys[key] = (parsed, lineno)
    if errors:
        raise JobFileError(errors)
    return _resolve(path, sections)


def _resolve(path, sections):
    """Apply [global] then each job's own keys, then check what only a whole job can show."""
    errors = []
    glob = {}
    description = ""
    jobs = []
    for name, line, keys in sections:
        if name == "global":
            glob = dict(keys)
            if "description" in glob:
                description = glob.pop("description")[0]
            continue
        merged = dict(glob)
        for group in EXCLUSIVE:
            for key in group:
                if key in keys:
                    for other in group:
                        if other != key:
                            merged.pop(other, None)
        merged.update(keys)
        server = merged["server"][0] if "server" in merged else KEYS["server"].default
        values, where = {}, {}
        for key, spec in KEYS.items():
            if key in merged and (key != "description" or key in keys):
                if spec.server and spec.server != server:
                    if key in keys:
                        errors.append(f"{path}:{keys[key][1]}: key '{key}' applies to "
                                      f"server={spec.server} only, but [{name}] runs "
                                      f"server={server}")
                    # From [global] it simply does not apply to this job's server.
                    values[key], where[key] = spec.default, None
                    continue
                values[key], where[key] = merged[key]
            else:
                values[key], where[key] = spec.default, None
        job = Job(path, name, line, values, where, values["description"])
        errors.extend(_check_job(job))
        jobs.append(job)
    if not errors and not jobs:
        errors.append(f"{path}: no jobs: add a [jobname] section after [global]")
    if errors:
        raise JobFileError(errors)
    return JobFile(path, description, jobs)


def _check_job(job):
    """Checks across keys. Each error points at the line of the key that makes it wrong."""
    errs = []
    measured = job["duration"] > 0 or job["requests"] is not None
    for key in ("rate_sweep", "during"):
        if not measured and job.where[key] and job[key] not in (None, "none"):
            errs.append(f"{job.loc(key)}: key '{key}' needs a measured run, but [{job.name}] "
                        "has duration=0")
    if job["rate"] and not measured:
        errs.append(f"{job.loc('rate')}: key 'rate' needs a measured run, but [{job.name}] "
                    "has duration=0")
    if (job["during"] != "none" and job["requests"] is None
            and job["during_at"] >= job["duration"] > 0):
        k = "during_at" if job.where["during_at"] else "during"
        errs.append(f"{job.loc(k)}: key '{k}': during_at={job['during_at']:g}s is not inside "
                    f"the measured run (duration={job['duration']:g}s)")
    if job["verify"] and job["during"] != "none":
        errs.append(f"{job.loc('during')}: key 'during': cannot be combined with verify=yes "
                    "(kvs-bench --verify prefills inside the measured call, so the event's "
                    "timing would not be from the measured run's start)")
    if job["server"] == "redis" and job["appendonly"] is False and job["appendfsync"]:
        errs.append(f"{job.loc('appendfsync')}: key 'appendfsync' has no effect with "
                    "appendonly=no")
    if not measured and not job["prefill"] and not job["restart"]:
        errs.append(f"{job.loc('duration')}: [{job.name}] does nothing: duration=0 without "
                    "prefill or restart")
    return errs


def parse_file(path):
    """Read and parse one job file. Raises JobFileError (also for an unreadable file)."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise JobFileError([f"{path}: too large ({size} bytes; a job file is at most "
                                f"{MAX_FILE_BYTES})"])
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise JobFileError([f"{path}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise JobFileError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    return parse_text_file(text, path)


def parse_files(paths):
    """Parse several files; every error of every file is collected before raising."""
    errors, files = [], []
    for p in paths:
        try:
            files.append(parse_file(p))
        except JobFileError as e:
            errors.extend(e.errors)
    if errors:
        raise JobFileError(errors)
    return files
