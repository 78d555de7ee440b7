# SPDX-License-Identifier: MIT
"""What the runner reads from /proc and the system: a server's memory, CPU time and bytes
written, and the machine a report was made on.

The counters are process-wide (Linux sums every thread of the thread group, io_uring's io-wq
workers included, since they are threads of the process), so a sharded kvs-server and
redis-server with its background threads are measured the same way. Children a server forks
(Redis's AOF rewrite) are not included: the report says so.
"""

import os
import platform
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcGone(Exception):
    """The process exited before it could be measured."""


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcGone(path) from None


def status_kib(pid, field):
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM) in bytes; None if absent."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes(pid):
    return status_kib(pid, "VmRSS")


def cpu_seconds(pid):
    """User + system CPU seconds of the whole process so far (all threads)."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def write_bytes(pid):
    """Bytes this process caused to be sent to storage (/proc/PID/io write_bytes).

    The kernel counts a page when it is dirtied, so buffered writes count before writeback and
    a rewrite of a still-dirty page is not counted twice."""
    for line in _read(f"/proc/{pid}/io").splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return None


def sample(pid):
    """One snapshot of the counters the report uses."""
    return {"rss": rss_bytes(pid), "hwm": status_kib(pid, "VmHWM"),
            "cpu_s": cpu_seconds(pid), "write_bytes": write_bytes(pid)}


def dir_bytes(path):
    """Bytes allocated on disk under path (st_blocks, so sparse and preallocated files are
    counted as the filesystem holds them)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def filesystem(path):
    """(mount point, fs type, device) holding path, from /proc/self/mounts."""
    path = os.path.realpath(path)
    best = ("/", "?", "?")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return {"mount": best[0], "type": best[1], "device": best[2]}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine(source_dir=None):
    """The machine and software a report was made on."""
    m = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": _mem_total(),
        "kernel": platform.release(),
        "os": _os_name(),
        "redis_server": _version(["redis-server", "--version"]),
        "fio": _version(["fio", "--version"]),
        "python": platform.python_version(),
    }
    if source_dir:
        m["kvs_commit"] = _version(["git", "-C", source_dir, "rev-parse", "--short=12", "HEAD"])
        dirty = _version(["git", "-C", source_dir, "status", "--porcelain",
                          "--untracked-files=no"])
        if m["kvs_commit"] and dirty:
            m["kvs_commit"] += " (with uncommitted changes)"
    return m


def _os_name():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()
