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

Every *-point command takes --cpu FILE (bench/cpu_window.py's measurement of
the run: the point gets server CPU per operation) and --setting TEXT (the
setting the row ran with, shown in the table).
"""

import argparse
import glob
import json
import re
import sys

# scenario -> its baseline: the first of these measured in the run
BASELINES = {
    "pgbouncer_simple": ["direct_simple"],
    "poolside_execute": ["pgbouncer_simple"],
    # cache section: the sidecar's Get against redis-benchmark GET (the same
    # number of requests in flight; the pipelined rows are shown beside)
    "cache_get_tcp": ["redis_get"],
    "cache_get_unix": ["redis_get"],
    # cached point selects through query against pgpool-II's query cache, or
    # else against the same selects uncached
    "query_cached": ["pgpool_cached", "query_uncached"],
    "query_cached_writes": ["pgpool_cached_writes", "query_uncached_writes"],
    # writetax section: writers' UPDATEs of a cached table against an identical
    # table nobody caches, on the same server with the same services running
    "write_cached": ["write_uncached"],
    # replicas section: reads routed over two streaming replicas against the
    # same reads through a query_server configured with the primary alone
    "replicas_routed": ["replicas_single_primary"],
    # the routed service with every read forced to the primary: the routing
    # machinery's own cost, without spreading reads over three servers
    "replicas_routed_primary": ["replicas_single_primary"],
    # ingest section: rows/s against psql \copy of the same rows
    "ingest_poolside": ["ingest_psql_copy"],
    "ingest_pgbench_insert": ["ingest_psql_copy"],
}

# Above this share of CPU in use by others around a point, the point is flagged.
BUSY_LIMIT = 15

TITLES = {
    "direct_prepared": "pgbench -S -M prepared, direct",
    "direct_simple": "pgbench -S -M simple, direct",
    "pgbouncer_simple": "pgbench -S -M simple, via PgBouncer",
    "pgbouncer_sweep": "pgbench -S -M simple, via PgBouncer (pool size sweep)",
    "poolside_execute": "poolside Execute (loadgen)",
    "redis_get": "cache: redis-benchmark -t get",
    "redis_get_pipelined": "cache: redis-benchmark -t get, pipelined",
    "cache_get_tcp": "cache: sidecar Get over TCP (cache_loadgen)",
    "cache_get_unix": "cache: sidecar Get over unix socket (cache_loadgen)",
    "query_uncached": "cache: query Execute, hot keys, no cache policy (loadgen)",
    "query_cached": "cache: query Execute, hot keys, cached (loadgen --cache_ttl_ms)",
    "query_uncached_writes": "cache: query Execute, hot keys, no cache policy, with writes",
    "query_cached_writes": "cache: query Execute, hot keys, cached, with writes",
    "pgpool_cached": "cache: pgpool-II query cache, hot keys (pgbench)",
    "pgpool_cached_writes": "cache: pgpool-II query cache, hot keys, with writes",
    "write_uncached": "write tax: pgbench single-row UPDATE, uncached table",
    "write_cached": "write tax: pgbench single-row UPDATE, cached table",
    "replicas_single_primary": "replicas: query Execute, primary alone (loadgen)",
    "replicas_routed": "replicas: query Execute, routed over 2 replicas (loadgen)",
    "replicas_routed_primary": "replicas: query Execute, topology, forced to the primary (loadgen)",
    "ingest_psql_copy": "ingest: psql \\copy, rows/s",
    "ingest_pgbench_insert": "ingest: single-row INSERT per transaction (pgbench), rows/s",
    "ingest_poolside": "ingest: poolside Channel (ingest_loadgen), rows/s",
}


def emit(point, args):
    """Adds what every point carries (setting, CPU per operation) and prints it."""
    if getattr(args, "setting", None):
        point["setting"] = args.setting
    if getattr(args, "pool_size", None) is not None:
        point["pool_size"] = args.pool_size
    if getattr(args, "writes_per_sec", None) is not None:
        point["writes_per_sec"] = args.writes_per_sec
    if getattr(args, "cache_hits", None) is not None:
        # pgpool's cache hits during the run ÷ the SELECTs pgbench completed.
        point["cache_hits"] = args.cache_hits
        point["cache_misses_counted"] = args.cache_selects
        if point.get("transactions"):
            ratio = args.cache_hits / point["transactions"]
            # With the extended protocol pgpool counts more hits than reads: no ratio.
            point["cache_hit_ratio"] = round(ratio, 4) if ratio <= 1 else None
    before, after = getattr(args, "delay_before", None), getattr(args, "delay_after", None)
    if before and after:
        point.update(delay_quantiles(before, after))
    before, after = getattr(args, "routed_before", None), getattr(args, "routed_after", None)
    if before and after:
        point["routed_calls"] = routed_calls(before, after)
    cpu_file = getattr(args, "cpu", None)
    if cpu_file:
        try:
            with open(cpu_file) as f:
                cpu = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"cannot read the CPU measurement {cpu_file}: {e}")
        point["cpu"] = cpu
        ops = point.get("ops_per_sec")
        server = cpu.get("server_cores")
        # Server CPU (all busy CPU minus the load generators') per operation.
        point["cpu_us_per_op"] = (round(server / ops * 1e6, 1)
                                  if ops and server is not None else None)
        procs = cpu.get("processes") or {}
        point["cpu_us_per_op_by_process"] = {
            name: (round(cores / ops * 1e6, 1) if ops and cores is not None else None)
            for name, cores in procs.items()}
    print(json.dumps(point))


DELAY_METRIC = "poolside_query_cache_invalidation_delay_seconds"


def histogram_buckets(path):
    """Cumulative bucket counts {le: count} of DELAY_METRIC in a Prometheus
    text scrape (summed over label sets other than le)."""
    buckets = {}
    with open(path) as f:
        for line in f:
            if not line.startswith(DELAY_METRIC + "_bucket{"):
                continue
            m = re.search(r'le="([^"]+)"\}\s+([0-9.eE+-]+)', line)
            if m:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                buckets[le] = buckets.get(le, 0) + float(m.group(2))
    return buckets


def delay_quantiles(before_path, after_path):
    """Invalidation delay (commit on the server -> applied in this replica) over
    the run: p50 and p99 in ms from the histogram's growth between two scrapes,
    interpolated linearly within a bucket (as Prometheus's histogram_quantile)."""
    b0, b1 = histogram_buckets(before_path), histogram_buckets(after_path)
    bounds = sorted(b1)
    cum = [b1[le] - b0.get(le, 0) for le in bounds]
    total = cum[-1] if cum else 0
    out = {"invalidations": int(total)}
    if total <= 0:
        out["invalidation_delay_p50_ms"] = out["invalidation_delay_p99_ms"] = None
        return out
    for q, key in ((0.5, "invalidation_delay_p50_ms"), (0.99, "invalidation_delay_p99_ms")):
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        value = None
        for le, c in zip(bounds, cum):
            if c >= rank:
                if le == float("inf"):
                    value = prev_le  # beyond the last bound: at least that
                else:
                    frac = (rank - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    value = prev_le + (le - prev_le) * frac
                break
            prev_le, prev_c = le, c
        out[key] = None if value is None else round(value * 1000, 2)
    return out


ROUTED_METRIC = "poolside_query_member_routed_total"


def metric_by_label(path, metric, label):
    """{label value: sample} of one counter in a Prometheus text scrape."""
    out = {}
    with open(path) as f:
        for line in f:
            if not line.startswith(metric + "{"):
                continue
            m = re.search(label + r'="([^"]*)".*\}\s+([0-9.eE+-]+)', line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


def routed_calls(before_path, after_path):
    """Calls the query_server routed to each member between two scrapes of its
    /metrics ({} for a service without a topology)."""
    b0 = metric_by_label(before_path, ROUTED_METRIC, "member")
    b1 = metric_by_label(after_path, ROUTED_METRIC, "member")
    return {member: int(v - b0.get(member, 0)) for member, v in sorted(b1.items())}


def redis_rate(args):
    """Prints the GET rate of a redis-benchmark --csv output."""
    import csv
    with open(args.output) as f:
        rows = [r for r in csv.reader(f) if r]
    header = next((r for r in rows if r[0] == "test"), None)
    row = next((r for r in rows if r[0].startswith("GET")), None)
    if header is None or row is None:
        sys.exit("redis-benchmark printed no GET row")
    print(dict(zip(header, row))["rps"])


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
    m3 = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
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
        "transactions": int(m3.group(1)) if m3 else None,
        "loadavg_after": args.loadavg,
        "other_cpu_busy_pct_before": args.busy,
        "other_cpu_busy_pct_after": args.busy_after,
    }
    emit(point, args)


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
        if r["ops"]:
            point["cache_hit_ratio"] = round(1 - int(r["not_hits"]) / r["ops"], 4)
    emit(point, args)


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
    emit(point, args)


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
    if pool and copy and pool.get("cpu_us_per_op") and copy.get("cpu_us_per_op"):
        out.append(f"Server CPU per row: poolside {cpu_split(pool, 2)}; psql \\copy "
                   f"{cpu_split(copy, 2)}; "
                   f"ratio {pool['cpu_us_per_op'] / copy['cpu_us_per_op']:.2f}.")
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
    emit(point, args)


def not_measured(text):
    return not text or text.startswith("not measured")


def cache_notes(settings, points):
    out = []
    if not not_measured(settings.get("cache")):
        out += ["", "Cache: " + settings["cache"] + ". DESIGN target: sidecar Get ≥ 0.6x Redis "
                "GET with p99 under 1 ms at 32 callers (the unix socket is the sidecar's "
                "transport). The ratio compares with redis-benchmark without pipelining (one "
                "request in flight per client, as the sidecar's callers); the pipelined rows "
                "are Redis at its best."]
        by = {(p["scenario"], p["concurrency"]): p for p in points}
        lines = []
        for c in sorted({p["concurrency"] for p in points if p["scenario"] == "redis_get"}):
            cells = []
            for scenario, name in (("redis_get", "redis-server"),
                                   ("redis_get_pipelined", "redis-server pipelined"),
                                   ("cache_get_tcp", "cache_server over TCP"),
                                   ("cache_get_unix", "cache_server over the unix socket")):
                p = by.get((scenario, c))
                v = ((p or {}).get("cpu_us_per_op_by_process") or {}).get(
                    "redis_server" if scenario.startswith("redis") else "cache_server")
                if v is not None:
                    cells.append(f"{name} {v:.1f}")
            if cells:
                lines.append(f"- {c} clients: " + ", ".join(cells))
        if lines:
            out += ["", "CPU per GET of the cache process alone, µs (the server CPU column "
                    "also counts the kernel's loopback work and anything else running):"]
            out += lines
    if not not_measured(settings.get("query_cache")):
        out += ["", "Cached reads through query: " + settings["query_cache"] +
                ". Target: cached ≥ 2x uncached."]
        by = {(p["scenario"], p["concurrency"]): p for p in points}
        for (scenario, c), k in sorted(by.items(), key=lambda kv: kv[0][1]):
            u = by.get(("query_uncached", c))
            if scenario == "query_cached" and u and u["ops_per_sec"]:
                out.append(f"- {c} callers: cached ÷ uncached = "
                           f"{k['ops_per_sec'] / u['ops_per_sec']:.2f}")
        writes = cached_writes_notes(points)
        if writes:
            out += ["", "Cached reads beside writes (invalidation from the WAL):"] + writes
        rows = query_cache_cpu_rows(points)
        if rows:
            out += ["", "Server CPU per read by process (the median runs above), µs: "
                    "query_server + cache_server + PostgreSQL; and the load generator's own.", "",
                    "| scenario | callers | server µs | query_server | cache_server | PostgreSQL "
                    "| client µs |", "|---|---:|---:|---:|---:|---:|---:|"]
            out.extend(rows)
    if not not_measured(settings.get("pgpool")):
        out += ["", "pgpool-II: " + settings["pgpool"] + ". The query rows' baseline is "
                "pgpool-II at the same concurrency (read-only against read-only, with writes "
                "against with writes)."]
    return out


def cached_writes_notes(points):
    """The cached reads beside writes against the issue's targets: hit ratio ≥ 0.9,
    cached ≥ 2x uncached, invalidation delay p99 ≤ 10 ms."""
    by = {(p["scenario"], p["concurrency"]): p for p in points}
    out = []
    for (scenario, c), p in sorted(by.items(), key=lambda kv: kv[0][1]):
        if scenario != "query_cached_writes":
            continue
        u = by.get(("query_uncached_writes", c))
        parts = []
        if p.get("writes_per_sec") is not None:
            parts.append(f"{float(p['writes_per_sec']):,.0f} writes/s reached")
        if p.get("cache_hit_ratio") is not None:
            parts.append(f"hit ratio {p['cache_hit_ratio']:.3f} (target ≥ 0.9)")
        if u and u["ops_per_sec"]:
            parts.append(f"cached ÷ uncached, both beside the writer, "
                         f"{p['ops_per_sec'] / u['ops_per_sec']:.2f} (target ≥ 2)")
        if p.get("invalidation_delay_p99_ms") is not None:
            parts.append(f"invalidation delay p50 {p['invalidation_delay_p50_ms']:.1f} ms, "
                         f"p99 {p['invalidation_delay_p99_ms']:.1f} ms over "
                         f"{p['invalidations']:,} relayed batches (target p99 ≤ 10 ms)")
        if parts:
            out.append(f"- {c} callers: " + "; ".join(parts))
    return out


def writetax_notes(settings, points):
    if not_measured(settings.get("writetax")):
        return []
    out = ["", "Write tax: " + settings["writetax"] + ". Target: cached ÷ uncached ≥ 0.95."]
    by = {(p["scenario"], p["concurrency"]): p for p in points}
    for (scenario, c), p in sorted(by.items(), key=lambda kv: kv[0][1]):
        u = by.get(("write_uncached", c))
        if scenario == "write_cached" and u and u["ops_per_sec"]:
            line = (f"- {c} clients: {fmt_int(p['ops_per_sec'])} ÷ {fmt_int(u['ops_per_sec'])} "
                    f"UPDATEs/s = {p['ops_per_sec'] / u['ops_per_sec']:.2f}")
            if p.get("cpu_us_per_op") and u.get("cpu_us_per_op"):
                line += (f"; server CPU per UPDATE {cpu_split(p)} against {cpu_split(u)}")
            out.append(line)
    return out


def replicas_notes(settings, points):
    """Routed reads against the primary alone: routing overhead per read (issue
    23's target: CPU per read within 5% of single-primary reads), the server CPU
    split by process, and where the routed reads went."""
    if not_measured(settings.get("replicas")):
        return []
    out = ["", "Replicas: " + settings["replicas"] + ". All three PostgreSQL servers, the "
           "service and the load generator share this machine's cores, so routing reads to "
           "replicas cannot add capacity here: the rows show what routing costs per read "
           "(server CPU per read beside ops/s), not read scaling, which needs replicas on "
           "hosts of their own. Target: routed CPU per read within 5% of the primary alone "
           "(CPU/op ratio ≤ 1.05)."]
    by = {(p["scenario"], p["concurrency"]): p for p in points}
    for (scenario, c), p in sorted(by.items(), key=lambda kv: kv[0][1]):
        single = by.get(("replicas_single_primary", c))
        if scenario not in ("replicas_routed", "replicas_routed_primary") or not single:
            continue
        parts = []
        if single["ops_per_sec"]:
            parts.append(f"ops/s {p['ops_per_sec'] / single['ops_per_sec']:.2f}x")
        if p.get("cpu_us_per_op") and single.get("cpu_us_per_op"):
            r = p["cpu_us_per_op"] / single["cpu_us_per_op"]
            parts.append(f"routing overhead {100 * (r - 1):+.1f}% server CPU per read "
                         f"({'within' if r <= 1.05 else 'outside'} the 5% target): routed "
                         f"{cpu_split(p)} against {cpu_split(single)}")
        qr = (p.get("cpu_us_per_op_by_process") or {}).get("query_server")
        qs = (single.get("cpu_us_per_op_by_process") or {}).get("query_server")
        if qr and qs:
            parts.append(f"query_server alone {qr:.1f} against {qs:.1f} µs per read "
                         f"({100 * (qr / qs - 1):+.1f}%)")
        routed = p.get("routed_calls") or {}
        total = sum(routed.values())
        if total:
            primary = settings.get("replicas_primary")
            parts.append("calls per member " + ", ".join(
                f"{m}{' (primary)' if m == primary else ''} {n / total:.0%}"
                for m, n in routed.items()))
        if parts:
            what = ("routed over the replicas" if scenario == "replicas_routed"
                    else "with a topology, every read forced to the primary")
            out.append(f"- {c} callers, {what}: " + "; ".join(parts))
    return out


def query_cache_cpu_rows(points):
    rows = []
    for p in sorted(points, key=lambda p: (p["concurrency"], p["scenario"])):
        if not p["scenario"].startswith("query_") or p.get("cpu_us_per_op") is None:
            continue
        by = p.get("cpu_us_per_op_by_process") or {}

        def f(v):
            return "—" if v is None else f"{v:.1f}"
        client = (p["client_cpu_cores"] / p["ops_per_sec"] * 1e6
                  if p.get("client_cpu_cores") is not None and p["ops_per_sec"] else None)
        rows.append(f"| {p['scenario']} | {p['concurrency']} | {f(p['cpu_us_per_op'])} | "
                    f"{f(by.get('query_server'))} | {f(by.get('cache_server'))} | "
                    f"{f(by.get('postgres'))} | {f(client)} |")
    return rows
# --- end of cache section -------------------------------------------------------


# --- switchover (bench/switchover.sh, not part of make bench) ---------------------
def switchover_report(args):
    """bench/switchover_bench's JSON lines as a table (bench/results/switchover-*.md)."""
    rounds = []
    with open(args.results) as f:
        for line in f:
            if line.strip():
                rounds.append(json.loads(line))

    def failed(c):
        return sum(c["failed_by_code"].values())

    def codes(c):
        return ", ".join(f"{k} {v}" for k, v in c["failed_by_code"].items()) or "—"

    def ms(v):
        return "—" if v is None else f"{v:,.0f}"

    out = ["# Switchover and failover under load through query", "",
           f"- Command: `{args.command}`",
           f"- Machine: nproc={os_nproc()}, load average after {args.loadavg}; etcd, three "
           "Patroni members, their PostgreSQL servers, query_server and the load share these "
           "cores.",
           "- Each round: a fresh Patroni cluster (tests/fixtures/patroni_cluster), a "
           "query_server with `patroniEndpoints` (default probes, `failoverBufferMs` 30000), "
           "open-loop point reads (routed to replicas) and single-row INSERTs (primary) at "
           "fixed rates, each call with a 60 s deadline; `switchover` is `patronictl "
           "switchover --force`, `failover` SIGKILLs the leader's Patroni and PostgreSQL "
           "(synchronous_mode, TTL 5 s).",
           "- held calls and mean held time: the query_server's "
           "`poolside_query_failover_held_total` and `_held_seconds_total` over the round "
           "(exact); held p50/p99/max: from the service's histogram "
           "`poolside_query_failover_held_duration_seconds` over the round (p50/p99 "
           "interpolated within a bucket; max an upper bound: the highest bucket's upper "
           "bound or the slowest call's latency, the lower), or, marked "
           "(estimate), the slowest N calls' latencies as the client saw them, N = held calls.",
           "- write outage: from the event (patronictl started, or the kill) to the first "
           "write acknowledged by the new leader."]
    if args.note:
        out.append(f"- {args.note}")
    out += ["",
           "| mode | reads/s, writes/s | reads sent | reads failed | writes sent | writes failed "
           "(codes) | acked writes missing | new leader after ms | write outage ms | held "
           "calls | held mean ms | held p50 / p99 / max ms | write p99 / max ms | "
           "read p99 / max ms |",
           "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rounds:
        # Rounds from before the service's histogram carry only the estimate.
        h = r.get("held_time") or dict(r["held_estimate"], source="client_estimate")
        w, rd = r["write_latency"], r["read_latency"]
        held_note = " (estimate)" if h.get("source") != "histogram" else ""
        out.append(
            f"| {r['mode']} | {r['read_rate']:g}, {r['write_rate']:g} | {r['reads']['sent']:,} | "
            f"{failed(r['reads'])} | {r['writes']['sent']:,} | {failed(r['writes'])} "
            f"({codes(r['writes'])}) | {r['acked_writes_missing']} | "
            f"{ms(r['new_leader_after_ms'])} | {ms(r['write_outage_ms'])} | {r['held_calls']} "
            f"({r['held_timeouts']} timed out) | "
            f"{ms(r['held_mean_ms'])} | {ms(h['p50_ms'])} / {ms(h['p99_ms'])} / "
            f"{ms(h['max_ms'])}{held_note} | {ms(w['p99_ms'])} / {ms(w['max_ms'])} | "
            f"{ms(rd['p99_ms'])} / {ms(rd['max_ms'])} |")
    failures = [r for r in rounds if r.get("failures")]
    if failures:
        out += ["", "What the failed calls were told (up to 5 distinct messages a round):"]
        for r in failures:
            out.append(f"- {r['mode']} round {r['round']}: " +
                       "; ".join(f"`{m}`" for m in r["failures"]))
    with open(args.md, "w") as f:
        f.write("\n".join(out) + "\n")


def os_nproc():
    import os
    return os.cpu_count()
# --- end of switchover ------------------------------------------------------------


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


def sweep_rows(sweep):
    """The PgBouncer pool size sweep: ops/s (CPU/op µs) per pool size and concurrency."""
    sizes = sorted({p["pool_size"] for p in sweep})
    conc = sorted({p["concurrency"] for p in sweep})
    by = {(p["pool_size"], p["concurrency"]): p for p in sweep}
    best = {c: max((p for p in sweep if p["concurrency"] == c), key=lambda p: p["ops_per_sec"])
            for c in conc}
    out = ["| default_pool_size | " + " | ".join(f"{c} clients: ops/s (CPU/op µs)" for c in conc)
           + " |", "|---:|" + "---:|" * len(conc)]
    for size in sizes:
        cells = []
        for c in conc:
            p = by.get((size, c))
            if p is None:
                cells.append("—")
                continue
            cpu = p.get("cpu_us_per_op")
            cell = f"{fmt_int(p['ops_per_sec'])} ({'—' if cpu is None else f'{cpu:.1f}'})"
            if best[c] is p:
                cell = f"**{cell}**"
            cells.append(cell)
        out.append(f"| {size} | " + " | ".join(cells) + " |")
    return out


def cpu_split(p, digits=1):
    """CPU/op and, where measured, its split by process: "52.1 µs (postgres 20.3, ...)"."""
    by = p.get("cpu_us_per_op_by_process") or {}
    parts = [f"{name} {v:.{digits}f}" for name, v in sorted(by.items()) if v is not None]
    return f"{p['cpu_us_per_op']:.{digits}f} µs" + (f" ({', '.join(parts)})" if parts else "")


def cpu_target_notes(points):
    """poolside's server CPU per read against PgBouncer's and direct prepared pgbench's."""
    by = {(p["scenario"], p["concurrency"]): p for p in points}
    out = []
    for (scenario, c), p in sorted(by.items(), key=lambda kv: kv[0][1]):
        if scenario != "poolside_execute" or p.get("cpu_us_per_op") is None:
            continue
        parts = []
        for base, target in (("pgbouncer_simple", 0.8), ("direct_prepared", 1.5)):
            b = by.get((base, c))
            if b and b.get("cpu_us_per_op"):
                r = p["cpu_us_per_op"] / b["cpu_us_per_op"]
                parts.append(f"{r:.2f}x {TITLES[base]}'s {cpu_split(b)} (target ≤ {target}x"
                             f"{'' if r <= target else ', missed'})")
        if parts:
            out.append(f"- {c} callers: poolside server CPU per read {cpu_split(p)} = "
                       + "; ".join(parts))
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
    sweep = [p for p in points if p["scenario"] == "pgbouncer_sweep"]
    pgpool_sweep = [p for p in points if p["scenario"] == "pgpool_sweep"]
    points = median_runs([p for p in points if not p["scenario"].endswith("_sweep")])
    by_key = {(p["scenario"], p["concurrency"]): p for p in points}
    for p in points:
        c = p.get("baseline_concurrency", p["concurrency"])
        base = next((b for b in BASELINES.get(p["scenario"], []) if (b, c) in by_key), None)
        b = by_key.get((base, c)) if base else None
        p["title"] = TITLES.get(p["scenario"], p["scenario"])
        p["baseline"] = base
        p["baseline_ops_per_sec"] = b["ops_per_sec"] if b else None
        p["ratio"] = (round(p["ops_per_sec"] / b["ops_per_sec"], 3)
                      if b and b["ops_per_sec"] else None)
        p["cpu_ratio"] = (round(p["cpu_us_per_op"] / b["cpu_us_per_op"], 3)
                          if b and p.get("cpu_us_per_op") and b.get("cpu_us_per_op") else None)
    result = dict(meta)
    result["results"] = points
    result["pgbouncer_sweep"] = sweep
    result["pgpool_sweep"] = pgpool_sweep
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    m = meta
    s = m["settings"]
    out = []
    out.append("# poolside benchmark — latest run")
    out.append("")
    out.append(f"- Date: {m['date']}")
    out.append(f"- Command: `{m['command']}`")
    out.append(f"- Sections: {', '.join(s.get('sections', []))}")
    mach = m["machine"]
    out.append(f"- Machine: nproc={mach['nproc']}, {mach['cpu']}, {mach['kernel']}; "
               f"load average before {mach['loadavg_start']}, after {mach['loadavg_end']}"
               " (1/5/15 min; the run's own processes raise it). Everything — PostgreSQL, "
               "the pooler or query service, and the client — shares these cores over "
               "loopback TCP.")
    out.append(f"- {s['seconds']} s per run (loadgen: +{s['warmup']} s warm-up); each compared "
               f"point ran {s.get('rounds', 1)} times, alternating with its baseline, and the "
               "table shows the median run (all runs' ops/s in the last column); "
               f"pgbench scale {s['scale']} ({s['scale'] * 100000:,} accounts), "
               f"random `aid`, `-j {s['pgbench_threads']}`.")
    durability = s.get("postgres_durability", "?")
    out.append(f"- PostgreSQL {s['postgres_version']} ({s['postgres_source']}), "
               f"{durability}" + (" — fast settings (BENCH_FAST), not durable" if s.get("fast")
                                  else "") + ".")
    if s.get("pgbouncer_version"):
        sizes = s.get("pgbouncer_pool_sizes", [])
        tuned = (f"default_pool_size swept over {'/'.join(str(x) for x in sizes)} at each "
                 "concurrency and the best measured against poolside (setting column; the "
                 "sweep below)" if len(sizes) > 1 else
                 f"default_pool_size={sizes[0] if sizes else '?'} (not swept)")
        out.append(f"- PgBouncer {s['pgbouncer_version']}: pool_mode=transaction, TCP to "
                   f"PostgreSQL; {tuned}.")
    out.append(f"- poolside query service: {s['query_service']}; loadgen: "
               f"{s['loadgen']}.")
    out.append("")
    busy_points = 0
    out.append("| scenario | setting | concurrency | ops/s | p50 µs | p99 µs | CPU/op µs | "
               "baseline | baseline ops/s | ratio | CPU/op ratio | runs (ops/s) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for p in points:
        base_title = TITLES.get(p["baseline"], "") if p["baseline"] else ""
        ratio = "—" if p["ratio"] is None else f"{p['ratio']:.2f}"
        cpu_ratio = "—" if p.get("cpu_ratio") is None else f"{p['cpu_ratio']:.2f}"
        cpu = "—" if p.get("cpu_us_per_op") is None else f"{p['cpu_us_per_op']:.1f}"
        errs = f" ({p['errors']} errors)" if p.get("errors") else ""
        if p.get("writes_per_sec") is not None:
            errs += f" ({float(p['writes_per_sec']):,.0f} writes/s)"
        if p.get("cache_hit_ratio") is not None:
            errs += f" ({p['cache_hit_ratio']:.0%} hits)"
        if p.get("invalidation_delay_p99_ms") is not None:
            errs += (f" (invalidation delay p50 {p['invalidation_delay_p50_ms']:.1f} ms, "
                     f"p99 {p['invalidation_delay_p99_ms']:.1f} ms)")
        if max(p.get("other_cpu_busy_pct_before") or 0,
               p.get("other_cpu_busy_pct_after") or 0) > BUSY_LIMIT:
            errs += " ⚠"
            busy_points += 1
        out.append(
            f"| {p['title']}{errs} | {p.get('setting', '')} | {p['concurrency']} | "
            f"{fmt_int(p['ops_per_sec'])} | {fmt_int(p['p50_us'])} | {fmt_int(p['p99_us'])} | "
            f"{cpu} | {base_title or '—'} | {fmt_int(p['baseline_ops_per_sec'])} | {ratio} | "
            f"{cpu_ratio} | {', '.join(fmt_int(v) for v in p['runs_ops_per_sec'])} |")
    out.append("")
    out.append("Ratio = ops/s ÷ baseline ops/s at the same concurrency, measured in the same "
               "run. The DESIGN target is poolside ÷ PgBouncer ≥ 1.0 at 32 and 64 callers.")
    out.append("CPU/op = server CPU per operation (per row for ingest): all busy CPU of the "
               "machine over the measured window (/proc/stat) minus the load generators' own "
               "(and the measuring script's), ÷ operations — PostgreSQL plus the pooler, "
               "service or cache, and anything else running. CPU/op ratio = CPU/op ÷ the "
               "baseline's. Only meaningful on an otherwise idle machine.")
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
    cpu_notes = cpu_target_notes(points)
    if cpu_notes:
        out += ["", "Server CPU per point read (targets: poolside ≤ 0.8x PgBouncer + "
                "PostgreSQL, ≤ 1.5x direct prepared pgbench):"] + cpu_notes
    if sweep:
        out += ["", "PgBouncer default_pool_size sweep (one run each, before the compared "
                "runs; the best, in bold, is the baseline above):", ""] + sweep_rows(sweep)
    out.extend(ingest_notes(points, s))
    out.extend(cache_notes(s, points))  # cache section
    out.extend(writetax_notes(s, points))  # writetax section
    out.extend(replicas_notes(s, points))  # replicas section
    if pgpool_sweep:
        out += ["", "pgpool-II pgbench mode, one read-only run each before the compared runs "
                "(the faster is used above):"]
        for c in sorted({p["concurrency"] for p in pgpool_sweep}):
            out.append(f"- {c} clients: " + ", ".join(
                f"{p['setting'].split(' -j')[0]} {fmt_int(p['ops_per_sec'])} ops/s"
                for p in pgpool_sweep if p["concurrency"] == c))
    for n in m.get("notes", []):
        out.append(f"- {n}")
    with open(args.md, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)

    def point_parser(name):
        sp = sub.add_parser(name)
        sp.add_argument("--scenario", required=True)
        sp.add_argument("--concurrency", type=int, required=True)
        sp.add_argument("--loadavg", default="")
        sp.add_argument("--busy", type=int, default=None,
                        help="%% CPU in use (by others) in the second before the point")
        sp.add_argument("--busy-after", type=int, default=None,
                        help="%% CPU in use (by others) in the second after it")
        sp.add_argument("--cpu", default=None,
                        help="bench/cpu_window.py's JSON for the run")
        sp.add_argument("--setting", default=None, help="the setting the row ran with")
        sp.add_argument("--pool-size", type=int, default=None)
        sp.add_argument("--writes-per-sec", type=float, default=None,
                        help="writes/s done beside the reads")
        sp.add_argument("--cache-hits", type=int, default=None,
                        help="pgpool query cache hits during the run")
        sp.add_argument("--cache-selects", type=int, default=None,
                        help="pgpool's num_selects (SELECTs not answered from its cache)")
        sp.add_argument("--delay-before", default=None,
                        help="query_server's /metrics before the run (invalidation delay)")
        sp.add_argument("--delay-after", default=None,
                        help="query_server's /metrics after the run")
        sp.add_argument("--routed-before", default=None,
                        help="query_server's /metrics before the run (calls per member)")
        sp.add_argument("--routed-after", default=None,
                        help="query_server's /metrics after the run")
        return sp

    sp = point_parser("redis-point")  # cache section
    sp.add_argument("--output", required=True)
    sp = sub.add_parser("redis-rate")
    sp.add_argument("--output", required=True)
    sp = point_parser("pgbench-point")
    sp.add_argument("--output", required=True)
    sp.add_argument("--log-prefix", required=True)
    sp = point_parser("loadgen-point")
    sp.add_argument("--output", required=True)
    sp = point_parser("ingest-point")  # ingest section
    sp.add_argument("--rows", type=float, required=True)
    sp.add_argument("--seconds", type=float, required=True)
    sp = sub.add_parser("switchover")
    sp.add_argument("--results", required=True)
    sp.add_argument("--md", required=True)
    sp.add_argument("--command", required=True)
    sp.add_argument("--loadavg", default="")
    sp.add_argument("--note", default="")
    sp = sub.add_parser("report")
    sp.add_argument("--points", required=True)
    sp.add_argument("--meta", required=True)
    sp.add_argument("--json", required=True)
    sp.add_argument("--md", required=True)
    args = ap.parse_args()
    {"pgbench-point": pgbench_point, "loadgen-point": loadgen_point,
     "redis-point": redis_point, "redis-rate": redis_rate,
     "ingest-point": ingest_point, "switchover": switchover_report,
     "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
