# SPDX-License-Identifier: MIT
"""kvsperf: fio-style performance jobs for kvs-server and redis-server.

Modules:
  jobfile   the job-file parser (INI like fio) and the table of every key
  resp      a tiny RESP client: PING, COMPACT, sentinel SET/GET
  procfs    what the runner reads from /proc: RSS, CPU time, bytes written, the machine
  servers   starting and stopping kvs-server / redis-server, temp data dirs, cleanup
  bench     the kvs-bench command line and the fields read from its --json output
  disk      the fio probes for the disk's ceilings
  runner    runs the jobs of the files (interleaved repeats) and collects results
  report    results.json, report.md and the gnuplot PNGs
  cli       `scripts/perf` argument parsing and exit codes

Only the Python standard library is used, so the scripts run with Debian's /usr/bin/python3.
"""
