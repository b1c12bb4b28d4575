"""Query: a typed point select, a transaction, and what an error looks like.

Against `make run` (POOLSIDE_ADDR, default 127.0.0.1:50051; database demo):

    bazel build //clients/python:python
    PYTHONPATH=bazel-bin/clients/python:clients/python \
        /usr/bin/python3 clients/python/examples/query.py
"""

import os
from decimal import Decimal

import grpc

import poolside


def run(addr, database="demo", token=None):
    with poolside.QueryClient(addr, database=database, token=token, timeout=5.0) as db:
        # $1 is sent as an int64 parameter, never spliced into the SQL.
        result = db.execute("SELECT owner, balance FROM accounts WHERE id = $1", 42)
        owner, balance = result.rows[0]  # ('owner-42', Decimal('3325.98'))

        # Several statements in one transaction: all commit or none do.
        moved = db.transaction([
            ("UPDATE accounts SET balance = balance - $1 WHERE id = $2", Decimal("10.00"), 1),
            ("UPDATE accounts SET balance = balance + $1 WHERE id = $2", Decimal("10.00"), 2),
            ("SELECT sum(balance) FROM accounts WHERE id IN (1, 2)",),
        ])

        try:
            db.execute("SELEC 1")
            error = None
        except poolside.Error as e:
            # INVALID_ARGUMENT with SQLSTATE 42601 in the message: do not retry.
            error = e
    return {"owner": owner, "balance": balance,
            "updated": [r.rows_affected for r in moved[:2]], "sum": moved[2].scalar(),
            "error_code": error.code, "error_retryable": error.retryable,
            "error_message": error.message}


if __name__ == "__main__":
    out = run(os.environ.get("POOLSIDE_ADDR", "127.0.0.1:50051"),
              os.environ.get("POOLSIDE_DATABASE", "demo"), os.environ.get("POOLSIDE_TOKEN"))
    print(f"account 42: {out['owner']} {out['balance']}")
    print(f"transfer: updated {out['updated']}, sum of 1 and 2 = {out['sum']}")
    print(f"bad SQL: {out['error_code'].name}: {out['error_message']}")
    assert out["error_code"] == grpc.StatusCode.INVALID_ARGUMENT
