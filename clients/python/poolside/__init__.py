"""Python client for poolside's gRPC services.

    import poolside

    with poolside.QueryClient("127.0.0.1:50051", database="demo") as db:
        result = db.execute("SELECT owner, balance FROM accounts WHERE id = $1", 42)
        print(result.rows[0])          # ('owner-42', Decimal('3325.98'))

Values travel typed, never interpolated: None, bool, int, float, str, bytes,
datetime (timezone-aware), decimal.Decimal and poolside.Json map to the
poolside.v1.Value kinds and back. Failed calls raise poolside.Error, whose
`code` is the grpc.StatusCode and `retryable` says whether retrying can help.
"""

from poolside._channel import Error
from poolside._values import Json, from_value, to_value
from poolside.cache import CacheClient
from poolside.ingest import IngestClient, WriteResult
from poolside.query import CachePolicy, QueryClient, Result

__all__ = [
    "CacheClient",
    "CachePolicy",
    "Error",
    "IngestClient",
    "Json",
    "QueryClient",
    "Result",
    "WriteResult",
    "from_value",
    "to_value",
]
