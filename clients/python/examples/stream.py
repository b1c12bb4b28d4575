"""Streaming: rows of a large result as they arrive (ExecuteStream), memory
bounded however large the result.

    PYTHONPATH=bazel-bin/clients/python:clients/python \
        /usr/bin/python3 clients/python/examples/stream.py
"""

import os

import poolside


def run(addr, database="demo", token=None):
    count, total, first, last = 0, 0, None, None
    with poolside.QueryClient(addr, database=database, token=token, timeout=30.0) as db:
        for account_id, owner in db.stream("SELECT id, owner FROM accounts ORDER BY id",
                                           chunk_rows=100):
            count += 1
            total += account_id
            first = first or (account_id, owner)
            last = (account_id, owner)
    return {"rows": count, "id_sum": total, "first": first, "last": last}


if __name__ == "__main__":
    out = run(os.environ.get("POOLSIDE_ADDR", "127.0.0.1:50051"),
              os.environ.get("POOLSIDE_DATABASE", "demo"), os.environ.get("POOLSIDE_TOKEN"))
    print(f"streamed {out['rows']} rows, first {out['first']}, last {out['last']}")
