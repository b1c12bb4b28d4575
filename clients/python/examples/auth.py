"""Auth: a bearer token per caller. A principal with the `read` role only runs
the named queries the server configures (no raw SQL, inside read-only
transactions) and cannot ingest; a call without a token is UNAUTHENTICATED.

Needs services with principals configured (README: Security); the tokens come
from POOLSIDE_TOKEN (full access) and POOLSIDE_READER_TOKEN (read only):

    PYTHONPATH=bazel-bin/clients/python:clients/python \\
        /usr/bin/python3 clients/python/examples/auth.py
"""

import os

import grpc

import poolside


def code_of(call):
    """The gRPC status code a call fails with (None if it succeeds)."""
    try:
        call()
        return None
    except poolside.Error as e:
        return e.code


def run(addr, ingest_addr, database, token, reader_token):
    out = {}
    with poolside.QueryClient(addr, database=database) as anonymous:
        out["no_token"] = code_of(lambda: anonymous.execute("SELECT 1"))
    with poolside.QueryClient(addr, database=database, token="not-a-real-token") as stranger:
        out["bad_token"] = code_of(lambda: stranger.execute("SELECT 1"))
    with poolside.QueryClient(addr, database=database, token=reader_token) as reader:
        # Named queries are configured on the server with typed parameters.
        out["reader_named"] = reader.execute_named("account_owner", 42).rows[0]
        out["reader_raw_sql"] = code_of(lambda: reader.execute("SELECT owner FROM accounts"))
    with poolside.IngestClient(ingest_addr, database=database, token=reader_token) as ingest:
        out["reader_ingest"] = code_of(lambda: ingest.write("events", ["id"], [(1,)]))
    with poolside.QueryClient(addr, database=database, token=token) as app:
        out["app_raw_sql"] = app.execute("SELECT count(*) FROM accounts").scalar()
    return out


if __name__ == "__main__":
    out = run(os.environ.get("POOLSIDE_ADDR", "127.0.0.1:50051"),
              os.environ.get("POOLSIDE_INGEST_ADDR", "127.0.0.1:50053"),
              os.environ.get("POOLSIDE_DATABASE", "demo"),
              os.environ["POOLSIDE_TOKEN"], os.environ["POOLSIDE_READER_TOKEN"])
    for what, result in out.items():
        print(f"{what}: {result.name if isinstance(result, grpc.StatusCode) else result}")
