"""Cached reads: a CachePolicy on execute() serves the read from the query
replica's cache sidecar; result.cache says HIT, MISS, STALE or BYPASS. A
committed write to the table (through poolside or any other program)
invalidates it, so a cached result is never older than the last write.
A write's commit_lsn passed as min_lsn to a read makes that read wait until
the write's invalidation (from the WAL) has been applied here: it sees the
write, and what it fills stays cached.

    PYTHONPATH=bazel-bin/clients/python:clients/python \
        /usr/bin/python3 clients/python/examples/cached_read.py
"""

import os

import poolside

SQL = "SELECT owner FROM accounts WHERE id = $1"


def run(addr, database="demo", token=None):
    policy = poolside.CachePolicy(ttl_ms=60000, tags=("example",))
    with poolside.QueryClient(addr, database=database, token=token, timeout=5.0) as db:
        # Start from a known state: this write invalidates every cached read of
        # accounts before it is answered (read-your-writes).
        w = db.execute("UPDATE accounts SET owner = $1 WHERE id = $2", "owner-7", 7)
        # MISS: read from PostgreSQL, stored.
        first = db.execute(SQL, 7, cache=policy, min_lsn=w.commit_lsn)
        second = db.execute(SQL, 7, cache=policy)   # HIT: from the cache
        w = db.execute("UPDATE accounts SET owner = $1 WHERE id = $2", "renamed-7", 7)
        # MISS again, with the new owner.
        third = db.execute(SQL, 7, cache=policy, min_lsn=w.commit_lsn)
        db.execute("UPDATE accounts SET owner = $1 WHERE id = $2", "owner-7", 7)
    return [(r.cache, r.scalar()) for r in (first, second, third)]


if __name__ == "__main__":
    out = run(os.environ.get("POOLSIDE_ADDR", "127.0.0.1:50051"),
              os.environ.get("POOLSIDE_DATABASE", "demo"), os.environ.get("POOLSIDE_TOKEN"))
    for outcome, owner in out:
        print(f"cache: {outcome}  owner: {owner}")
