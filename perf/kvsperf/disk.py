# SPDX-License-Identifier: MIT
"""The disk's ceilings, measured with fio in the filesystem that holds the servers' data:

  - fdatasync'd 4 KiB appends per second: the rate at which a server that syncs every write on
    its own could acknowledge them (a group commit can beat it: one sync covers many SETs);
  - sequential write bandwidth with O_DIRECT 1 MiB writes: what appending a log can reach.

Durable-write results are shown as fractions of these, so a reader sees whether a server is
disk-bound or leaves the device idle.
"""

import json
import shutil
import subprocess
import tempfile



class DiskError(Exception):
    pass


def run_fio(args, timeout):
    """Run fio with JSON output; returns the first job's results."""
    try:
        out = subprocess.run(["fio", "--output-format=json"] + args, capture_output=True,
                             text=True, timeout=timeout)
    except FileNotFoundError:
        raise DiskError("fio is not installed (Debian package fio; scripts/deps.sh test "
                        "installs it)") from None
    except subprocess.TimeoutExpired:
        raise DiskError(f"fio did not finish within {timeout:g}s") from None
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip().splitlines()
        raise DiskError(f"fio failed: {msg[-1] if msg else 'status %d' % out.returncode}")
    try:
        # fio may print notes before the JSON object.
        doc = json.loads(out.stdout[out.stdout.index("{"):])
        return doc["jobs"][0]
    except (ValueError, KeyError, IndexError) as e:
        raise DiskError(f"fio printed no usable JSON ({e})") from None


def probe(root, runtime=5.0, size_mib=1024):
    """Measure both ceilings in a temp dir under root (removed afterwards)."""
    d = tempfile.mkdtemp(prefix="kvsperf-fio-", dir=root)
    result = {"runtime_s": runtime, "size_mib": size_mib}
    timeout = runtime * 4 + 60
    try:
        common = ["--directory=" + d, f"--runtime={runtime:g}", "--ioengine=psync",
                  "--rw=write", "--end_fsync=1", "--unlink=1"]
        w = run_fio(["--name=fdatasync", "--bs=4k", "--fdatasync=1",
                     f"--size={min(size_mib, 64)}m"] + common, timeout)
        result["fdatasync_per_s"] = w["write"]["iops"]
        result["fdatasync_us"] = _sync_us(w)
        try:
            w = run_fio(["--name=seqwrite", "--bs=1m", "--direct=1", f"--size={size_mib}m"]
                        + common, timeout)
            result["seq_write_direct"] = True
        except DiskError:
            # Some filesystems refuse O_DIRECT: measure buffered writes plus the final fsync.
            w = run_fio(["--name=seqwrite", "--bs=1m", f"--size={size_mib}m"] + common,
                        timeout)
            result["seq_write_direct"] = False
        result["seq_write_bytes_per_s"] = w["write"]["bw_bytes"]
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return result


def _sync_us(job):
    """p50 and p99 of the fdatasync calls alone (fio's 'sync' section, in ns)."""
    pct = job.get("sync", {}).get("lat_ns", {}).get("percentile", {})
    out = {}
    for label, key in (("p50", "50.000000"), ("p99", "99.000000")):
        if key in pct:
            out[label] = pct[key] / 1000.0
    return out
