#!/usr/bin/env python3
"""Where PostgreSQL's CPU goes, by backend: a diagnostic beside bench/run.sh
(whose CPU per operation counts the postmaster's whole tree as one number).

  pg_cpu_by_backend.py PORT [USER [DATABASE]] > samples.log
      every second, one line: <unix time> {"category": cumulative CPU s, ...}
      Category: the backend's application_name up to its first '/' (poolside
      names its connections poolside-query/<db>, poolside-cache-relay/<db>,
      poolside-cache-slot/<db> for the WAL sender, poolside-listener/<db>,
      poolside-token-fence/<db>; pgbench names its own), else the backend
      type (walwriter, checkpointer, autovacuum worker, ...). A backend that
      ended keeps its last value. Runs until killed.

  pg_cpu_by_backend.py --per-op SAMPLES BENCH_LOG
      BENCH_LOG: bench/run.sh's stderr with each line prefixed by its unix
      time (`... 2>&1 | while IFS= read -r l; do echo "$(date +%s.%N) $l"; done`).
      For each measured point of the log, CPU µs per operation by category
      over the point's window (1.5 s trimmed at each end).
"""
import json
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def sample(port, user, database):
    seen = {}  # pid -> [category, last cpu s]
    query = ("SELECT pid, coalesce(nullif(split_part(application_name, '/', 1), ''), "
             "backend_type) FROM pg_stat_activity")
    while True:
        try:
            out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", user, "-d", database,
                                  "-Atc", query], capture_output=True, text=True,
                                 timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            pid, _, category = line.partition("|")
            if category == "client backend":
                category = "other client"
            seen.setdefault(int(pid), [category, 0.0])[0] = category
        totals = {}
        for pid, entry in seen.items():
            now = cpu_s(pid)
            if now is not None:
                entry[1] = now
            totals[entry[0]] = totals.get(entry[0], 0.0) + entry[1]
        print(time.time(), json.dumps(totals), flush=True)
        time.sleep(1)


def per_op(samples_path, log_path):
    samples = []
    with open(samples_path) as f:
        for line in f:
            t, _, j = line.partition(" ")
            samples.append((float(t), json.loads(j)))
    with open(log_path) as f:
        lines = f.read().splitlines()
    start = None
    for line in lines:
        t, _, rest = line.partition(" ")
        if rest.startswith("== "):
            start = float(t)
        elif rest.startswith("{") and '"scenario"' in rest and start is not None:
            point = json.loads(rest)
            a, b = start + 1.5, float(t) - 1.5
            sa = min(samples, key=lambda s: abs(s[0] - a))
            sb = min(samples, key=lambda s: abs(s[0] - b))
            if abs(sa[0] - a) > 1.5 or abs(sb[0] - b) > 1.5 or sb[0] <= sa[0]:
                continue
            ops = point["ops_per_sec"] * (sb[0] - sa[0])
            us = {k: (sb[1].get(k, 0) - sa[1].get(k, 0)) / ops * 1e6 for k in sb[1]}
            us = {k: round(v, 1) for k, v in sorted(us.items(), key=lambda kv: -kv[1]) if v >= 0.5}
            print(f"{point['scenario']} c={point['concurrency']} {point['ops_per_sec']:.0f} ops/s; "
                  f"µs/op by backend: {json.dumps(us, ensure_ascii=False)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--per-op":
        per_op(sys.argv[2], sys.argv[3])
    elif 2 <= len(sys.argv) <= 4 and sys.argv[1].isdigit():
        sample(sys.argv[1], *(sys.argv[2:] + ["postgres", "demo"][len(sys.argv) - 2:]))
    else:
        sys.exit(__doc__)
