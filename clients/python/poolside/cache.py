"""CacheClient: statistics and invalidation on a query replica's cache sidecar."""

from poolside._channel import _Client
from proto.poolside.v1 import cache_pb2, cache_pb2_grpc


class CacheClient(_Client):
    """The cache sidecar (port 50052 or unix:/run/poolside/cache.sock). Reads
    are cached by QueryClient.execute(..., cache=CachePolicy(...)); this client
    is for operators: stats() and invalidate()."""

    def __init__(self, target="127.0.0.1:50052", **kwargs):
        super().__init__(target, **kwargs)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)

    def stats(self, timeout=None):
        """The sidecar's CacheStats message (entries, bytes, hits, misses, ...)."""
        return self._call(self._stub.GetStats, cache_pb2.CacheGetStatsRequest(), timeout)

    def invalidate(self, *, tags=(), prefixes=(), flush_all=False, timeout=None):
        """Drops entries carrying any of `tags` or keyed under any of `prefixes`;
        flush_all drops everything. Returns how many entries were removed."""
        # Keys (and so prefixes) are bytes on the wire; text is sent as UTF-8.
        prefixes = [p.encode() if isinstance(p, str) else p for p in prefixes]
        request = cache_pb2.CacheInvalidateRequest(tags=list(tags), prefixes=prefixes,
                                                   flush_all=flush_all, source="python")
        return self._call(self._stub.Invalidate, request, timeout).removed
