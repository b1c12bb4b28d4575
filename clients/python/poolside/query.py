"""QueryClient: SQL through poolside's query service."""

import dataclasses

import grpc

from poolside._channel import Error, _Client
from poolside._values import from_row, to_value
from proto.poolside.v1 import query_pb2, query_pb2_grpc


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """Serve this read from the cache sidecar / fill it (see README: Cached reads).

    ttl_ms: fresh this long; stale_while_revalidate_ms: then served as STALE this
    much longer while one refresh runs; tags: extra tags to invalidate by;
    bypass: skip the cache for this call.
    """

    ttl_ms: int = 60000
    stale_while_revalidate_ms: int = 0
    tags: tuple = ()
    bypass: bool = False

    def to_proto(self):
        return query_pb2.CachePolicy(ttl_ms=self.ttl_ms,
                                     stale_while_revalidate_ms=self.stale_while_revalidate_ms,
                                     tags=list(self.tags), bypass=self.bypass)


@dataclasses.dataclass
class Result:
    """One statement's result: column names, rows as tuples of Python values."""

    columns: list
    rows: list
    rows_affected: int
    command_tag: str
    # "HIT", "MISS", "STALE" or "BYPASS" (Execute only).
    cache: str = "BYPASS"
    # A write's commit position: pass it as min_lsn to a later read that must
    # see the write (read-your-writes through the cache). 0 when unknown.
    commit_lsn: int = 0
    # The position whose committed changes the result reflects (0: unknown).
    lsn: int = 0

    def dicts(self):
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def scalar(self):
        """The first column of the first row (None if there is no row)."""
        return self.rows[0][0] if self.rows else None

    @classmethod
    def from_proto(cls, result, cache=query_pb2.BYPASS, commit_lsn=0, lsn=0):
        return cls(columns=[c.name for c in result.columns],
                   rows=[from_row(r) for r in result.rows],
                   rows_affected=result.rows_affected,
                   command_tag=result.command_tag,
                   cache=query_pb2.CacheOutcome.Name(cache),
                   commit_lsn=commit_lsn, lsn=lsn)

    @classmethod
    def from_response(cls, response):
        return cls.from_proto(response.result, response.cache, response.commit_lsn,
                              response.lsn)


_ISOLATION = {
    None: query_pb2.ISOLATION_LEVEL_DEFAULT,
    "read committed": query_pb2.READ_COMMITTED,
    "repeatable read": query_pb2.REPEATABLE_READ,
    "serializable": query_pb2.SERIALIZABLE,
}


class QueryClient(_Client):
    """Runs SQL through poolside's query service (port 50051 by default).

        with QueryClient("127.0.0.1:50051", database="demo", token=TOKEN) as db:
            db.execute("SELECT owner FROM accounts WHERE id = $1", 42).scalar()

    Parameters are $1, $2, ... in the SQL, passed as further arguments. Every
    call has a deadline (`timeout=` seconds, default the client's) that also
    bounds the statement on the server. Thread-safe (gRPC channels are).
    """

    def __init__(self, target="127.0.0.1:50051", *, database="", **kwargs):
        super().__init__(target, **kwargs)
        self.database = database
        self._stub = query_pb2_grpc.QueryServiceStub(self._channel)

    def _request(self, sql, params, max_rows=0, chunk_rows=0, cache=None, named_query="",
                 min_lsn=0):
        request = query_pb2.ExecuteRequest(database=self.database, sql=sql,
                                           params=[to_value(p) for p in params],
                                           max_rows=max_rows, chunk_rows=chunk_rows,
                                           named_query=named_query, min_lsn=min_lsn)
        if cache is not None:
            request.cache.CopyFrom(cache.to_proto())
        return request

    def execute(self, sql, *params, cache=None, max_rows=0, min_lsn=0, timeout=None):
        """One statement; the whole result. `cache`: a CachePolicy for reads.
        `min_lsn`: a write's Result.commit_lsn that this read must see."""
        request = self._request(sql, params, max_rows=max_rows, cache=cache, min_lsn=min_lsn)
        return Result.from_response(self._call(self._stub.Execute, request, timeout))

    def execute_named(self, name, *params, cache=None, max_rows=0, min_lsn=0, timeout=None):
        """The server-configured statement `name` (QueryServiceConfig named_queries)
        with `params` of its declared types. Principals without the `sql` role
        may run only these."""
        request = self._request("", params, max_rows=max_rows, cache=cache, named_query=name,
                                min_lsn=min_lsn)
        return Result.from_response(self._call(self._stub.Execute, request, timeout))

    def stream(self, sql, *params, chunk_rows=0, max_rows=0, timeout=None):
        """One statement, its rows yielded as they arrive (for large results)."""
        request = self._request(sql, params, max_rows=max_rows, chunk_rows=chunk_rows)
        responses = self._stub.ExecuteStream(request, timeout=self._deadline(timeout),
                                             metadata=self._metadata)
        try:
            for chunk in responses:
                for row in chunk.rows:
                    yield from_row(row)
        except grpc.RpcError as e:
            raise Error.from_rpc_error(e) from None
        finally:
            responses.cancel()

    def transaction(self, statements, *, isolation=None, read_only=False, timeout=None):
        """Several statements, all committed or none: [(sql, param, ...), ...] or
        [sql, ...]. Returns one Result per statement. isolation: None,
        "read committed", "repeatable read" or "serializable"."""
        request = query_pb2.ExecuteTransactionRequest(
            database=self.database, isolation=_ISOLATION[isolation], read_only=read_only)
        for statement in statements:
            sql, *params = (statement,) if isinstance(statement, str) else statement
            request.statements.add(sql=sql, params=[to_value(p) for p in params])
        response = self._call(self._stub.ExecuteTransaction, request, timeout)
        return [Result.from_proto(r) for r in response.results]

    def check(self, timeout=None):
        """{database: (healthy, error)} for every configured database."""
        response = self._call(self._stub.CheckDatabases, query_pb2.CheckDatabasesRequest(),
                              timeout)
        return {d.database: (d.healthy, d.error) for d in response.databases}
