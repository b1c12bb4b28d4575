"""IngestClient: batched, acknowledged-after-commit writes through poolside's ingest service."""

import dataclasses

from poolside._channel import _Client
from poolside._values import to_row
from proto.poolside.v1 import ingest_pb2, ingest_pb2_grpc


@dataclasses.dataclass
class WriteResult:
    """rows_written committed; rejected: [(row_index, reason, sqlstate)] left out;
    duplicate: this key was already committed, nothing was written this time."""

    rows_written: int
    rejected: list
    duplicate: bool

    @classmethod
    def from_proto(cls, r):
        return cls(rows_written=r.rows_written,
                   rejected=[(e.row_index, e.reason, e.sqlstate) for e in r.rejected],
                   duplicate=r.duplicate)


class IngestClient(_Client):
    """Writes rows through poolside's ingest service (port 50053 by default).

        with IngestClient("127.0.0.1:50053", database="demo") as ingest:
            result = ingest.write("events", ["id", "kind"], [(1, "signup")],
                                  idempotency_key="import-7/chunk-0")

    A returned result means the rows are committed. On an error with
    `retryable` set, send the same rows again with the same idempotency_key:
    they are written once. Thread-safe.
    """

    def __init__(self, target="127.0.0.1:50053", *, database="", **kwargs):
        super().__init__(target, **kwargs)
        self.database = database
        self._stub = ingest_pb2_grpc.IngestServiceStub(self._channel)

    def _request(self, table, columns, rows, idempotency_key):
        return ingest_pb2.WriteRequest(database=self.database, table=table,
                                       columns=list(columns), rows=[to_row(r) for r in rows],
                                       idempotency_key=idempotency_key or "")

    def write(self, table, columns, rows, *, idempotency_key=None, timeout=None):
        """One request (unary Write); returns a WriteResult once committed."""
        response = self._call(self._stub.Write,
                              self._request(table, columns, rows, idempotency_key), timeout)
        return WriteResult.from_proto(response)

    def write_stream(self, table, columns, batches, *, key_prefix=None, timeout=None):
        """Many requests on one client stream (WriteStream): `batches` is an
        iterable of row lists, each one request (keyed key_prefix + index when
        key_prefix is given). Returns (rows_written, rows_rejected, duplicates)."""

        def requests():
            for i, rows in enumerate(batches):
                key = f"{key_prefix}{i}" if key_prefix is not None else None
                yield self._request(table, columns, rows, key)

        response = self._call(self._stub.WriteStream, requests(), timeout)
        return response.rows_written, response.rows_rejected, response.duplicates
