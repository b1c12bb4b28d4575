#!/usr/bin/env python3
"""Alternating A/B runs of ingest builds against `psql \\copy`, on a throwaway
PostgreSQL with durable commits.

    bench/ingest_ab.py --loadgen bazel-bin/bench/ingest_loadgen \\
        --server old=/tmp/ingest_server.old --server new=bazel-bin/services/ingest/ingest_server \\
        [--server big=bazel-bin/services/ingest/ingest_server,maxRows=50000] \\
        [--rounds 3] [--rows 1000000] [--copy_connections 2] [--no_copy]

Each round loads the same rows once by `psql \\copy` (the CSV ingest_loadgen
writes) and once through each server (ingest_loadgen, 8 producers, after a
50,000-row warm-up), each into the emptied table after a CHECKPOINT, so that
a busy machine slows every variant of a round alike. Prints one JSON line per
run: rows/s, wall, PostgreSQL CPU per row (utime + stime of the postmaster
and its children, with the exited ones' through the postmaster's cutime and
cstime), the server's own CPU per row, and the batches the server committed
and joined during the run. Run it as root on an otherwise idle machine;
PostgreSQL runs as the `postgres` user (Debian's postgresql package).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time

TCK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid):
    """(own, reaped children's) CPU seconds of `pid`; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / TCK, (int(fields[13]) + int(fields[14])) / TCK


class Postgres:
    def __init__(self, workdir, port):
        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.data, self.port, self.workdir = os.path.join(workdir, "pg"), port, workdir
        os.makedirs(self.data)
        shutil.chown(self.data, "postgres", "postgres")
        os.chmod(workdir, 0o777)
        self.as_postgres("initdb", "-D", self.data, "-U", "postgres", "-A", "trust")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{workdir}'\n"
                    "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                    "max_wal_size = 4GB\nshared_buffers = 256MB\n")
        self.as_postgres("pg_ctl", "-D", self.data, "-l", os.path.join(self.data, "log"), "-w",
                         "start")
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "demo"],
                       check=True)

    def as_postgres(self, program, *args):
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, program), *args],
                       check=True, stdout=subprocess.DEVNULL)

    def psql(self, *args):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", "demo", "-Atq", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    def cpu(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            pm = int(f.readline())
        own, reaped = cpu_of(pm)
        kids = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True).stdout
        return own + reaped + sum(cpu_of(int(k))[0] for k in kids.split())

    def stop(self):
        self.as_postgres("pg_ctl", "-D", self.data, "-m", "fast", "stop")


def start_server(path, name, workdir, pg, batch):
    config, port_file = os.path.join(workdir, f"{name}.json"), os.path.join(workdir, f"{name}.port")
    with open(config, "w") as f:
        json.dump({"auth": {"disabled": True},
                   "server": {"listen": "127.0.0.1:0", "tls": {"plaintext": True},
                              "portFile": port_file},
                   "databases": [{"name": "demo", "allowPrivilegedRole": True,
                                  "dsn": f"host=127.0.0.1 port={pg.port} dbname=demo user=postgres"}],
                   "tables": [{"database": "demo", "tables": ["t"]}],
                   "batch": batch}, f)
    proc = subprocess.Popen([path, f"--config={config}", "--log_level=warning"],
                            stdout=open(os.path.join(workdir, f"{name}.log"), "w"),
                            stderr=subprocess.STDOUT)
    for _ in range(300):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return proc, open(port_file).read().strip()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{name}: ingest_server did not start (see {workdir}/{name}.log)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--server", action="append", default=[], required=True,
                    metavar="NAME=PATH[,BATCH_SETTING=N...]",
                    help="an ingest_server build, with batch settings of its own "
                    "(e.g. new=bazel-bin/services/ingest/ingest_server,maxRows=50000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--copy_connections", type=int, default=2)
    ap.add_argument("--no_copy", action="store_true")
    ap.add_argument("--port", type=int, default=29990, help="below the ephemeral port range")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ingest-ab-")
    pg = Postgres(workdir, args.port)
    servers, seen = {}, {}
    try:
        pg.psql("-c", "CREATE TABLE t (id int8 PRIMARY KEY, device text NOT NULL, "
                "at timestamptz NOT NULL, value float8, payload text)")
        csv = os.path.join(workdir, "rows.csv")
        subprocess.run([args.loadgen, f"--rows={args.rows}", f"--write_csv={csv}"], check=True)
        for spec in args.server:
            name, rest = spec.split("=", 1)
            path, *settings = rest.split(",")
            batch = {"copyConnections": args.copy_connections}
            for setting in settings:  # batch settings of this server, e.g. maxRows=50000
                key, value = setting.split("=", 1)
                batch[key] = int(value)
            servers[name] = start_server(path, name, workdir, pg, batch)
        variants = ([] if args.no_copy else ["copy"]) + list(servers)
        for r in range(args.rounds):
            for v in variants:
                pg.psql("-c", "TRUNCATE t")
                server_cpu, out = 0.0, {}
                if v == "copy":
                    pg.psql("-c", "CHECKPOINT")
                    c0, t0 = pg.cpu(), time.time()
                    pg.psql("-c", f"\\copy t (id, device, at, value, payload) FROM '{csv}' "
                            "WITH (FORMAT csv)")
                    wall = time.time() - t0
                    time.sleep(0.5)  # the backend reaped: its CPU in the postmaster's cutime
                else:
                    proc, port = servers[v]
                    loadgen = [args.loadgen, f"--addr=127.0.0.1:{port}", "--table=t"]
                    subprocess.run([*loadgen, "--rows=50000", f"--key_prefix=warm-{r}"],
                                   check=True, stdout=subprocess.DEVNULL)
                    pg.psql("-c", "TRUNCATE t")
                    pg.psql("-c", "CHECKPOINT")
                    s0, c0, t0 = sum(cpu_of(proc.pid)), pg.cpu(), time.time()
                    out = json.loads(subprocess.run([*loadgen, f"--rows={args.rows}"], check=True,
                                                    capture_output=True, text=True).stdout)
                    wall = time.time() - t0
                    server_cpu = sum(cpu_of(proc.pid)) - s0
                pg_cpu = pg.cpu() - c0
                count = int(pg.psql("-c", "SELECT count(*) FROM t"))
                if count != args.rows:
                    raise SystemExit(f"{v}: {count} rows in t, not {args.rows}")
                line = {"round": r, "variant": v, "rows_per_sec": round(args.rows / wall),
                        "seconds": round(wall, 3),
                        "pg_cpu_us_per_row": round(pg_cpu / args.rows * 1e6, 3),
                        "server_cpu_us_per_row": round(server_cpu / args.rows * 1e6, 3),
                        "load_average": os.getloadavg()[0]}
                if out:
                    # The server's counters are cumulative (warm-up runs included).
                    now = (out["server_batches"], out.get("server_batches_joined", 0))
                    before = seen.get(v, (0, 0))
                    seen[v] = now
                    line["batches"], line["batches_joined"] = now[0] - before[0], now[1] - before[1]
                print(json.dumps(line), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
