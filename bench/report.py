#!/usr/bin/env python3
"""Helpers for bench/run.sh: turns raw measurements into result points and the
points into bench/results/latest.{json,md}.

  report.py pgbench-point --scenario S --concurrency C --output FILE --log-prefix P
      Parses pgbench's stdout (FILE) and its sampled per-transaction logs
      (P.*) into one JSON point on stdout.
  report.py loadgen-point --scenario S --concurrency C --output FILE
      Wraps loadgen's one-line JSON (FILE) into a JSON point on stdout.
  report.py report --points FILE --meta FILE --json OUT --md OUT
      Pairs every point with its baseline at the same concurrency and writes
      the result files.
"""

import argparse
import glob
import json
import re
import sys

# scenario -> (baseline scenario, what the ratio means)
BASELINES = {
    "pgbouncer_simple": "direct_simple",
    "poolside_execute": "pgbouncer_simple",
    # cache section: the sidecar's Get against redis-benchmark GET
    "cache_get_tcp": "redis_get",
    "cache_get_unix": "redis_get",
    # cached point selects through query against the same selects uncached
    "query_cached": "query_uncached",
    # ingest section: rows/s against psql \copy of the same rows
    "ingest_poolside": "ingest_psql_copy",
    "ingest_pgbench_insert": "ingest_psql_copy",
}

# Above this share of CPU in use by others around a point, the point is flagged.
BUSY_LIMIT = 15

TITLES = {
    "direct_prepared": "pgbench -S -M prepared, direct",
    "direct_simple": "pgbench -S -M simple, direct",
    "pgbouncer_simple": "pgbench -S -M simple, via PgBouncer",
    "poolside_execute": "poolside Execute (loadgen)",
    "redis_get": "cache: redis-benchmark -t get",
    "cache_get_tcp": "cache: sidecar Get over TCP (cache_loadgen)",
    "cache_get_unix": "cache: sidecar Get over unix socket (cache_loadgen)",
    "query_uncached": "cache: query Execute, hot keys, no cache policy (loadgen)",
    "query_cached": "cache: query Execute, hot keys, cached (loadgen --cache_ttl_ms)",
    "ingest_psql_copy": "ingest: psql \\copy, rows/s",
    "ingest_pgbench_insert": "ingest: single-row INSERT per transaction (pgbench), rows/s",
    "ingest_poolside": "ingest: poolside Channel (ingest_loadgen), rows/s",
}


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = int(round(q * (len(sorted_values) - 1)))
    return sorted_values[min(i, len(sorted_values) - 1)]


def pgbench_point(args):
    with open(args.output) as f:
        text = f.read()
    m = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", text, re.M)
    if not m:
        sys.exit("pgbench output has no tps line:\n" + text[-2000:])
    failed = 0
    m2 = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    if m2:
        failed = int(m2.group(1))
    lat = []
    # Log lines: client_id transaction_no time_us script_no epoch epoch_us [...]
    for path in glob.glob(args.log_prefix + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    point = {
        "scenario": args.scenario,
        "concurrency": args.concurrency,
        "ops_per_sec": round(float(m.group(1)), 1),
        "p50_us": percentile(lat, 0.50),
        "p99_us": percentile(lat, 0.99),
        "latency_samples": len(lat),
        "errors": failed,
        "loadavg_after": args.loadavg,
        "other_cpu_busy_pct_before": args.busy,
        "other_cpu_busy_pct_after": args.busy_after,
    }
    print(json.dumps(point))


def loadgen_point(args):
    with open(args.output) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    if not lines:
        sys.exit("loadgen printed no result")
    r = json.loads(lines[-1])
    point = {
        "scenario": args.scenario,
        "concurrency": args.concurrency,
        "ops_per_sec": r["ops_per_sec"],
        "p50_us": r["p50_us"],
        "p99_us": r["p99_us"],
        "latency_samples": r["ops"],
        "errors": r["errors"],
        "loadavg_after": args.loadavg,
        "other_cpu_busy_pct_before": args.busy,
        "other_cpu_busy_pct_after": args.busy_after,
        "channels": r["channels"],
        "client_threads": r["threads"],
        "client_cpu_cores": r["client_cpu_cores"],
    }
    if "not_hits" in r:
        point["not_hits"] = r["not_hits"]
    if args.server_cpu_cores is not None:
        # What the server side spends per call, whatever the client costs.
        point["server_cpu_cores"] = args.server_cpu_cores
        point["db_cpu_cores"] = args.db_cpu_cores
        ops = r["ops_per_sec"]
        point["server_cpu_us_per_call"] = (
            round((args.server_cpu_cores + (args.db_cpu_cores or 0)) / ops * 1e6, 1)
            if ops else None)
    print(json.dumps(point))


# --- ingest section -------------------------------------------------------------
def ingest_point(args):
    point = {
        "scenario": args.scenario,
        "concurrency": args.concurrency,
        "ops_per_sec": round(args.rows / args.seconds, 1) if args.seconds > 0 else None,
        "rows": args.rows,
        "seconds": args.seconds,
        "p50_us": None,
        "p99_us": None,
        "errors": 0,
        "loadavg_after": args.loadavg,
        "other_cpu_busy_pct_before": args.busy,
        "other_cpu_busy_pct_after": args.busy_after,
    }
    if args.scenario != "ingest_psql_copy":
        point["baseline_concurrency"] = 1  # psql \copy is one client
    print(json.dumps(point))


def ingest_notes(points, settings):
    by = {p["scenario"]: p for p in points if p["scenario"].startswith("ingest_")}
    if not by:
        return []
    out = ["", "Ingest: " + settings.get("ingest", "") + "."]
    pool, copy, ins = (by.get("ingest_poolside"), by.get("ingest_psql_copy"),
                       by.get("ingest_pgbench_insert"))
    if pool and copy and copy["ops_per_sec"]:
        out.append(f"Ingest through poolside reaches {pool['ops_per_sec'] / copy['ops_per_sec']:.2f}x "
                   "psql \\copy rows/s with acknowledgement after COMMIT (DESIGN target: >= 0.7).")
    if pool and ins and ins["ops_per_sec"]:
        out.append(f"Batching gain: poolside ingest writes {pool['ops_per_sec'] / ins['ops_per_sec']:.1f}x "
                   "the rows/s of single-row INSERT transactions at the same client concurrency.")
    return out
# --- end of ingest section ------------------------------------------------------


# --- cache section --------------------------------------------------------------
def redis_point(args):
    """redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms",
    "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"."""
    import csv
    with open(args.output) as f:
        rows = [r for r in csv.reader(f) if r]
    header = next((r for r in rows if r[0] == "test"), None)
    row = next((r for r in rows if r[0].startswith("GET")), None)
    if header is None or row is None:
        sys.exit("redis-benchmark printed no GET row:\n" + "\n".join(",".join(r) for r in rows)[-2000:])
    rec = dict(zip(header, row))

    def us(name):
        return round(float(rec[name]) * 1000) if name in rec else None

    point = {
        "scenario": args.scenario,
        "concurrency": args.concurrency,
        "ops_per_sec": round(float(rec["rps"]), 1),
        "p50_us": us("p50_latency_ms"),
        "p99_us": us("p99_latency_ms"),
        "errors": 0,
        "loadavg_after": args.loadavg,
        "other_cpu_busy_pct_before": args.busy,
        "other_cpu_busy_pct_after": args.busy_after,
    }
    print(json.dumps(point))


def cache_notes(settings, points):
    if not settings.get("cache") or settings["cache"].startswith("not measured"):
        return []
    out = ["", "Cache: " + settings["cache"] + ". DESIGN target: sidecar Get ≥ 0.6x Redis GET "
           "with p99 under 1 ms at 32 callers (the unix socket is the sidecar's transport)."]
    if settings.get("query_cache") and not settings["query_cache"].startswith("not measured"):
        out.append("")
        out.append("Cached reads through query: " + settings["query_cache"] +
                   ". Target: cached ≥ 2x uncached.")
        rows = query_cache_cpu_rows(points)
        if rows:
            out.append("")
            out.append("Server CPU per read (the median runs above): query_server's and "
                       "PostgreSQL's CPU time over the measured window ÷ calls, and the "
                       "load generator's, which shares the same two cores.")
            out.append("")
            out.append("| callers | uncached: query_server + PostgreSQL µs | cached: query_server "
                       "+ PostgreSQL µs | uncached ÷ cached | client µs uncached / cached |")
            out.append("|---:|---:|---:|---:|---:|")
            out.extend(rows)
    return out


def query_cache_cpu_rows(points):
    by = {(p["scenario"], p["concurrency"]): p for p in points}
    rows = []
    for (scenario, c), u in sorted(by.items(), key=lambda kv: kv[0][1]):
        k = by.get(("query_cached", c))
        if scenario != "query_uncached" or k is None:
            continue
        if u.get("server_cpu_us_per_call") is None or k.get("server_cpu_us_per_call") is None:
            continue

        def split(p):
            ops = p["ops_per_sec"]
            return (f"{p['server_cpu_us_per_call']:.1f} ({p['server_cpu_cores'] / ops * 1e6:.1f} "
                    f"+ {(p['db_cpu_cores'] or 0) / ops * 1e6:.1f})")

        def client(p):
            return p["client_cpu_cores"] / p["ops_per_sec"] * 1e6
        ratio = u["server_cpu_us_per_call"] / k["server_cpu_us_per_call"]
        rows.append(f"| {c} | {split(u)} | {split(k)} | {ratio:.2f} | "
                    f"{client(u):.1f} / {client(k):.1f} |")
    return rows
# --- end of cache section -------------------------------------------------------


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def median_runs(points):
    """One point per (scenario, concurrency): the run with the median ops/s, plus the
    ops/s of every run (run.sh alternates compared points with their baselines)."""
    groups = {}
    for p in points:
        groups.setdefault((p["scenario"], p["concurrency"]), []).append(p)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda p: p["ops_per_sec"])
        m = dict(ranked[(len(ranked) - 1) // 2])
        m["runs_ops_per_sec"] = [p["ops_per_sec"] for p in runs]
        for k in ("other_cpu_busy_pct_before", "other_cpu_busy_pct_after"):
            m[k] = max((p.get(k) or 0) for p in runs)
        m["errors"] = sum(p.get("errors") or 0 for p in runs)
        out.append(m)
    return out


def report(args):
    with open(args.meta) as f:
        meta = json.load(f)
    points = []
    with open(args.points) as f:
        for line in f:
            line = line.strip()
            if line:
                points.append(json.loads(line))
    points = median_runs(points)
    by_key = {(p["scenario"], p["concurrency"]): p for p in points}
    for p in points:
        base = BASELINES.get(p["scenario"])
        b = (by_key.get((base, p.get("baseline_concurrency", p["concurrency"])))
             if base else None)
        p["title"] = TITLES.get(p["scenario"], p["scenario"])
        p["baseline"] = base
        p["baseline_ops_per_sec"] = b["ops_per_sec"] if b else None
        p["ratio"] = (round(p["ops_per_sec"] / b["ops_per_sec"], 3)
                      if b and b["ops_per_sec"] else None)
    result = dict(meta)
    result["results"] = points
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    m = meta
    out = []
    out.append("# poolside benchmark — latest run")
    out.append("")
    out.append(f"- Date: {m['date']}")
    out.append(f"- Command: `{m['command']}`")
    mach = m["machine"]
    out.append(f"- Machine: nproc={mach['nproc']}, {mach['cpu']}, {mach['kernel']}; "
               f"load average before {mach['loadavg_start']}, after {mach['loadavg_end']}"
               " (1/5/15 min; the run's own processes raise it). Everything — PostgreSQL, "
               "the pooler or query service, and the client — shares these cores over "
               "loopback TCP.")
    s = m["settings"]
    out.append(f"- {s['seconds']} s per run (loadgen: +{s['warmup']} s warm-up); each compared "
               f"point ran {s.get('rounds', 1)} times, alternating with its baseline, and the "
               "table shows the median run (all runs' ops/s in the last column); "
               f"pgbench scale {s['scale']} ({s['scale'] * 100000:,} accounts), "
               f"random `aid`, `-j {s['pgbench_threads']}`.")
    out.append(f"- PostgreSQL {s['postgres_version']} ({s['postgres_source']}). PgBouncer {s['pgbouncer_version']}: "
               f"pool_mode=transaction, default_pool_size={s['pgbouncer_pool_size']}, "
               "TCP to PostgreSQL.")
    out.append(f"- poolside query service: {s['query_service']}; loadgen: "
               f"{s['loadgen']}.")
    out.append("")
    busy_points = 0
    out.append("| scenario | concurrency | ops/s | p50 µs | p99 µs | baseline | baseline ops/s | ratio | runs (ops/s) |")
    out.append("|---|---:|---:|---:|---:|---|---:|---:|---|")
    for p in points:
        base_title = TITLES.get(p["baseline"], "") if p["baseline"] else ""
        ratio = "—" if p["ratio"] is None else f"{p['ratio']:.2f}"
        errs = f" ({p['errors']} errors)" if p.get("errors") else ""
        if max(p.get("other_cpu_busy_pct_before") or 0,
               p.get("other_cpu_busy_pct_after") or 0) > BUSY_LIMIT:
            errs += " ⚠"
            busy_points += 1
        out.append(
            f"| {p['title']}{errs} | {p['concurrency']} | {fmt_int(p['ops_per_sec'])} | "
            f"{fmt_int(p['p50_us'])} | {fmt_int(p['p99_us'])} | {base_title or '—'} | "
            f"{fmt_int(p['baseline_ops_per_sec'])} | {ratio} | "
            f"{', '.join(fmt_int(v) for v in p['runs_ops_per_sec'])} |")
    out.append("")
    out.append("Ratio = ops/s ÷ baseline ops/s at the same concurrency, measured in the same "
               "run. The DESIGN target is poolside ÷ PgBouncer ≥ 1.0 at 32 and 64 callers.")
    out.append("pgbench latencies come from its per-transaction log sampled at "
               f"{s['pgbench_sampling_rate']}; loadgen's from every measured call (start to "
               "completion dequeued; queued completions are all timed before new calls "
               "start).")
    if busy_points:
        out.append(f"⚠ {busy_points} point(s) had other work using more than {BUSY_LIMIT}% "
                   "of the CPU just before or after them: treat them as noise and re-run "
                   "on an idle machine.")
    else:
        out.append(f"No point had other work using more than {BUSY_LIMIT}% of the CPU in the "
                   "second before or after it.")
    out.extend(ingest_notes(points, s))
    out.extend(cache_notes(s, points))  # cache section
    for n in m.get("notes", []):
        out.append(f"- {n}")
    with open(args.md, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("redis-point")  # cache section
    sp.add_argument("--scenario", required=True)
    sp.add_argument("--concurrency", type=int, required=True)
    sp.add_argument("--output", required=True)
    sp.add_argument("--loadavg", default="")
    sp.add_argument("--busy", type=int, default=None)
    sp.add_argument("--busy-after", type=int, default=None)
    for name in ("pgbench-point", "loadgen-point"):
        sp = sub.add_parser(name)
        sp.add_argument("--scenario", required=True)
        sp.add_argument("--concurrency", type=int, required=True)
        sp.add_argument("--output", required=True)
        sp.add_argument("--loadavg", default="")
        sp.add_argument("--busy", type=int, default=None,
                        help="%% CPU in use (by others) in the second before the point")
        sp.add_argument("--busy-after", type=int, default=None,
                        help="%% CPU in use (by others) in the second after it")
        if name == "pgbench-point":
            sp.add_argument("--log-prefix", required=True)
        else:
            sp.add_argument("--server-cpu-cores", type=float, default=None,
                            help="cores the measured server used in the window")
            sp.add_argument("--db-cpu-cores", type=float, default=None,
                            help="cores PostgreSQL used in the window")
    sp = sub.add_parser("ingest-point")  # ingest section
    sp.add_argument("--scenario", required=True)
    sp.add_argument("--concurrency", type=int, required=True)
    sp.add_argument("--rows", type=float, required=True)
    sp.add_argument("--seconds", type=float, required=True)
    sp.add_argument("--loadavg", default="")
    sp.add_argument("--busy", type=int, default=None)
    sp.add_argument("--busy-after", type=int, default=None)
    sp = sub.add_parser("report")
    sp.add_argument("--points", required=True)
    sp.add_argument("--meta", required=True)
    sp.add_argument("--json", required=True)
    sp.add_argument("--md", required=True)
    args = ap.parse_args()
    {"pgbench-point": pgbench_point, "loadgen-point": loadgen_point,
     "redis-point": redis_point,
     "ingest-point": ingest_point,
     "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
