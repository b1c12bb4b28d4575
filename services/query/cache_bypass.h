#ifndef POOLSIDE_SERVICES_QUERY_CACHE_BYPASS_H_
#define POOLSIDE_SERVICES_QUERY_CACHE_BYPASS_H_

// Why a cacheable read ran on the database (outcome BYPASS), as counted in
// poolside_query_cache_bypass_total{reason}.

namespace poolside::query {

enum class CacheBypass {
  kStream,     // no invalidation stream applies (down, silent, no holder, flush pending)
  kLag,        // the stream lags past cache.wal.maxLagMs
  kToken,      // min_lsn not reached within cache.wal.tokenWaitMs (or trigger mode)
  kUnwatched,  // reads a table whose writes are not seen
  kPlan,       // not a plain read, or its plan could not be learned
  kSidecar,    // the sidecar is failing or errored
  kKeySize,    // the key is too long
  kOff,        // the database's invalidation is unavailable (walUnavailable: bypass)
  kCount,
};

// The metric's label.
inline const char* CacheBypassName(CacheBypass reason) {
  switch (reason) {
    case CacheBypass::kStream:
      return "stream";
    case CacheBypass::kLag:
      return "lag";
    case CacheBypass::kToken:
      return "token";
    case CacheBypass::kUnwatched:
      return "unwatched";
    case CacheBypass::kPlan:
      return "plan";
    case CacheBypass::kSidecar:
      return "sidecar";
    case CacheBypass::kKeySize:
      return "key_size";
    case CacheBypass::kOff:
      return "off";
    case CacheBypass::kCount:
      break;
  }
  return "unknown";
}

}  // namespace poolside::query

#endif  // POOLSIDE_SERVICES_QUERY_CACHE_BYPASS_H_
