#!/usr/bin/env python3
"""Runs a load generator and measures the server CPU it caused: the one place
bench/run.sh measures CPU per operation.

  cpu_window.py --out FILE [--offset S] [--length S] [--client PID ...]
                [--proc NAME=PID ...] [--tree NAME=PID ...] -- COMMAND [ARG ...]

Starts COMMAND (the load generator, with this script's stdin/stdout/stderr),
and over a window from --offset seconds after the start to --offset + --length
(or to COMMAND's exit, whichever comes first; no --length: to the exit) reads

  - the busy CPU time of the whole machine (/proc/stat: user, nice, system, irq,
    softirq; not idle, iowait or steal),
  - the CPU time of COMMAND itself (all its threads: /proc/PID/stat while it
    runs, its rusage once it has exited), of every --client PID (other load
    generators, e.g. a background writer) and of this script,

and writes to FILE one JSON object:

  command_s      seconds COMMAND ran (start to exit)
  window_s       seconds of the window
  busy_cores     machine busy CPU ÷ window
  client_cores   load generators' and this script's CPU ÷ window
  server_cores   busy_cores - client_cores: what the servers (and anything else
                 running on the machine) spent
  processes      {NAME: cores} for each --proc (the process alone) and --tree
                 (the process and its children, live or ended: a PostgreSQL
                 postmaster and its backends)

CPU per operation is then server_cores ÷ operations per second. Exits with
COMMAND's status (128 + signal if it was killed); SIGTERM or SIGINT to this
script is passed on to COMMAND.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest
    # time is already counted in user.
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / HZ


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or
    None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()


def proc_s(pid):
    """utime + stime of PID (all threads), or None."""
    f = stat_fields(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / HZ


def children(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def tree_s(pid):
    """CPU of PID, of its ended children (cutime + cstime: the kernel adds a
    child's time there when it is reaped) and of its live children, so a child
    that ends within a window is neither lost nor counted twice."""
    f = stat_fields(pid)
    if f is None:
        return None
    t = sum(int(x) for x in f[11:15]) / HZ
    for c in children(pid):
        t += proc_s(c) or 0.0
    return t


class Sample:
    def __init__(self, child_pid, clients, procs, trees, child_rusage=None):
        self.t = time.monotonic()
        self.busy = machine_busy_s()
        own = os.times()
        self.self_s = own.user + own.system
        if child_rusage is not None:
            self.child = child_rusage.ru_utime + child_rusage.ru_stime
        else:
            self.child = proc_s(child_pid)
        self.clients = {p: proc_s(p) for p in clients}
        self.procs = {n: proc_s(p) for n, p in procs}
        self.trees = {n: tree_s(p) for n, p in trees}


def delta(a, b):
    return None if a is None or b is None else b - a


def named_pids(values):
    out = []
    for v in values:
        name, _, pid = v.partition("=")
        if not name or not pid.isdigit():
            sys.exit(f"cpu_window: expected NAME=PID, got {v!r}")
        out.append((name, int(pid)))
    return out


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--offset", type=float, default=0.0)
    ap.add_argument("--length", type=float, default=None)
    ap.add_argument("--client", type=int, action="append", default=[])
    ap.add_argument("--proc", action="append", default=[])
    ap.add_argument("--tree", action="append", default=[])
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        sys.exit("cpu_window: no command given")
    procs, trees = named_pids(args.proc), named_pids(args.tree)

    start = time.monotonic()
    child = subprocess.Popen(cmd)

    def forward(sig, _frame):
        try:
            child.send_signal(sig)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    status = None
    rusage = None
    ended = None

    def wait_until(deadline):
        """Polls for the child's exit until deadline (None: forever)."""
        nonlocal status, rusage, ended
        while status is None:
            pid, st, ru = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                status, rusage, ended = st, ru, time.monotonic()
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    wait_until(start + args.offset)
    a = Sample(child.pid, args.client, procs, trees,
               rusage if status is not None else None)
    end = None if args.length is None else start + args.offset + args.length
    wait_until(end)
    b = Sample(child.pid, args.client, procs, trees,
               rusage if status is not None else None)
    wait_until(None)

    window = b.t - a.t
    if window < 0.05:  # too short for 10 ms clock ticks to mean anything
        window = None
    client = delta(a.child, b.child) or 0.0
    client += b.self_s - a.self_s
    for p in args.client:
        client += delta(a.clients[p], b.clients[p]) or 0.0
    busy = b.busy - a.busy
    result = {
        "command_s": round(ended - start, 3),
        "window_s": round(b.t - a.t, 3),
        "busy_cores": round(busy / window, 4) if window else None,
        "client_cores": round(client / window, 4) if window else None,
        "server_cores": round((busy - client) / window, 4) if window else None,
        "processes": {},
    }
    for name, _ in procs:
        d = delta(a.procs[name], b.procs[name])
        result["processes"][name] = round(d / window, 4) if window and d is not None else None
    for name, _ in trees:
        d = delta(a.trees[name], b.trees[name])
        result["processes"][name] = round(d / window, 4) if window and d is not None else None
    with open(args.out, "w") as f:
        json.dump(result, f)
        f.write("\n")
    if os.WIFSIGNALED(status):
        sys.exit(128 + os.WTERMSIG(status))
    sys.exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
