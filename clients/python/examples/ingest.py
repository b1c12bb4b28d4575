"""Ingest: rows written with COPY in batches, acknowledged only once committed;
an idempotency key makes a retry safe, and bad rows come back with reasons
while the good ones commit.

    PYTHONPATH=bazel-bin/clients/python:clients/python \
        /usr/bin/python3 clients/python/examples/ingest.py
(POOLSIDE_INGEST_ADDR, default 127.0.0.1:50053; table demo.events.)
"""

import datetime
import os
from decimal import Decimal

import poolside

COLUMNS = ["id", "account_id", "kind", "amount", "at"]


def run(ingest_addr, query_addr, database="demo", token=None, first_id=1001):
    at = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.timezone.utc)
    rows = [
        (first_id, 42, "deposit", Decimal("12.50"), at),
        (first_id + 1, 42, None, Decimal("1.00"), at),  # kind is NOT NULL: rejected
        (first_id + 2, 7, "withdrawal", None, at + datetime.timedelta(minutes=1)),
    ]
    key = f"python-example-{first_id}"
    with poolside.IngestClient(ingest_addr, database=database, token=token) as ingest:
        first = ingest.write("events", COLUMNS, rows, idempotency_key=key)
        # A retry with the same key (after a timeout, say) writes nothing twice.
        retry = ingest.write("events", COLUMNS, rows, idempotency_key=key)
        # Many requests on one stream, acknowledged together once committed.
        streamed = ingest.write_stream(
            "events", COLUMNS,
            ([(first_id + 10 + 10 * b + i, b, "tick", Decimal(i), at) for i in range(10)]
             for b in range(5)),
            key_prefix=f"python-example-stream-{first_id}-")
    with poolside.QueryClient(query_addr, database=database, token=token) as db:
        stored = db.execute("SELECT id, kind, amount FROM events WHERE id BETWEEN $1 AND $2 "
                            "ORDER BY id", first_id, first_id + 2).rows
        count = db.execute("SELECT count(*) FROM events WHERE id >= $1 AND id < $2",
                           first_id, first_id + 100).scalar()
    return {"written": first.rows_written, "rejected": first.rejected,
            "retry_duplicate": retry.duplicate, "retry_written": retry.rows_written,
            "streamed": streamed, "stored": stored, "count": count}


if __name__ == "__main__":
    out = run(os.environ.get("POOLSIDE_INGEST_ADDR", "127.0.0.1:50053"),
              os.environ.get("POOLSIDE_ADDR", "127.0.0.1:50051"),
              os.environ.get("POOLSIDE_DATABASE", "demo"), os.environ.get("POOLSIDE_TOKEN"),
              int(os.environ.get("POOLSIDE_EXAMPLE_FIRST_ID", "1001")))
    print(f"written {out['written']}, rejected {out['rejected']}")
    print(f"retry: duplicate={out['retry_duplicate']}")
    print(f"stream: written, rejected, duplicates = {out['streamed']}")
    print(f"events now: {out['count']}")
