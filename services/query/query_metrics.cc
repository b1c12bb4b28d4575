#include "services/query/query_metrics.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/telemetry/metrics_family.h"
#include "common/telemetry/metrics_pool.h"
#include "common/telemetry/status_page.h"
#include "services/query/near_cache.h"

namespace poolside::query {
namespace {

using telemetry::AddCounter;
using telemetry::AddGauge;
using telemetry::AddHistogram;
using telemetry::AppendCounter;
using telemetry::AppendGauge;
using telemetry::CounterFamily;
using telemetry::GaugeFamily;
using telemetry::HistogramFamily;
using Families = std::vector<prometheus::MetricFamily>;

constexpr size_t kSlowestShown = 10;

telemetry::Histogram::Snapshot FromProto(const v1::Histogram& h) {
  telemetry::Histogram::Snapshot s;
  s.bounds.assign(h.bounds_seconds().begin(), h.bounds_seconds().end());
  s.cumulative_counts.assign(h.counts().begin(), h.counts().end());
  s.count = h.count();
  s.sum = h.sum_seconds();
  // The proto carries no max: bound Percentile() by the highest used bucket.
  uint64_t below = 0;
  for (size_t i = 0; i < s.bounds.size() && i < s.cumulative_counts.size(); ++i) {
    if (s.cumulative_counts[i] > below) s.max = s.bounds[i];
    below = s.cumulative_counts[i];
  }
  if (s.count > below && !s.bounds.empty()) s.max = s.bounds.back();
  return s;
}

std::vector<v1::PoolStats> PoolStats(QueryEngine* engine) {
  v1::GetPoolStatsResponse response;
  if (!engine->GetPoolStats({}, &response).ok()) return {};
  return {response.pools().begin(), response.pools().end()};
}

// A pool's "database" label: the database, the role for a role's pool
// ("app/app_read"), and the member for a member's pool ("app@db-1:5432").
std::string PoolName(const v1::PoolStats& p) {
  std::string name = p.role().empty() ? p.database() : absl::StrCat(p.database(), "/", p.role());
  if (!p.member().empty()) absl::StrAppend(&name, "@", p.member());
  return name;
}

std::vector<v1::MemberStats> MemberStats(QueryEngine* engine) {
  v1::GetPoolStatsResponse response;
  if (!engine->GetPoolStats({}, &response).ok()) return {};
  return {response.members().begin(), response.members().end()};
}

// Each topology member's role, health, lag and routed calls, and each
// database's waits for a replica to replay a read's token.
void CollectMembers(QueryEngine* engine, Families* out) {
  prometheus::MetricFamily role = GaugeFamily(
      "poolside_query_member_role", "1 for the member's current role (primary, replica, unknown).");
  prometheus::MetricFamily healthy =
      GaugeFamily("poolside_query_member_healthy", "1 while the member's probes succeed.");
  prometheus::MetricFamily banned =
      GaugeFamily("poolside_query_member_banned", "1 while the replica gets no reads for its lag.");
  prometheus::MetricFamily lag_seconds =
      GaugeFamily("poolside_query_member_lag_seconds",
                  "How long ago the primary had WAL the replica has not replayed.");
  prometheus::MetricFamily lag_bytes =
      GaugeFamily("poolside_query_member_lag_bytes",
                  "The primary's WAL position minus the replica's replay position.");
  prometheus::MetricFamily outstanding =
      GaugeFamily("poolside_query_member_outstanding_calls", "Calls running on the member.");
  prometheus::MetricFamily routed =
      CounterFamily("poolside_query_member_routed_total", "Calls routed to the member.");
  prometheus::MetricFamily bans =
      CounterFamily("poolside_query_member_bans_total", "Times the replica was banned for lag.");
  for (const v1::MemberStats& m : MemberStats(engine)) {
    const telemetry::MetricLabels labels = {{"database", m.database()}, {"member", m.member()}};
    for (const char* r : {"primary", "replica", "unknown"}) {
      AddGauge(&role, {{"database", m.database()}, {"member", m.member()}, {"role", r}},
               m.role() == r ? 1 : 0);
    }
    AddGauge(&healthy, labels, m.healthy() ? 1 : 0);
    AddGauge(&banned, labels, m.banned() ? 1 : 0);
    AddGauge(&lag_seconds, labels, m.lag_seconds());
    AddGauge(&lag_bytes, labels, double(m.lag_bytes()));
    AddGauge(&outstanding, labels, double(m.outstanding()));
    AddCounter(&routed, labels, double(m.routed_total()));
    AddCounter(&bans, labels, double(m.bans_total()));
  }
  prometheus::MetricFamily waits = CounterFamily(
      "poolside_query_replica_token_waits_total",
      "Reads that waited for a replica to replay their min_lsn, by whether one did in time.");
  prometheus::MetricFamily read_retries = CounterFamily(
      "poolside_query_read_retries_total",
      "Reads that failed on a replica before any row reached the caller (its connection failed) "
      "and ran again on another member, by why.");
  std::vector<std::pair<std::string, db::ManagedDatabase::HoldStats>> holds;
  for (const auto& [name, replicas] : engine->replicas()) {
    for (ReadRetryReason reason : kReadRetryReasons) {
      AddCounter(&read_retries, {{"database", name}, {"reason", ReadRetryReasonName(reason)}},
                 double(replicas->read_retries(reason)));
    }
    holds.emplace_back(name, replicas->hold_stats());
    const uint64_t reached = replicas->token_waits_reached();
    AddCounter(&waits, {{"database", name}, {"result", "reached"}}, double(reached));
    AddCounter(&waits, {{"database", name}, {"result", "timeout"}},
               double(replicas->token_waits() - std::min(reached, replicas->token_waits())));
  }
  for (auto* f : {&role, &healthy, &banned, &lag_seconds, &lag_bytes, &outstanding, &routed, &bans,
                  &waits, &read_retries}) {
    out->push_back(std::move(*f));
  }
  telemetry::AppendHoldMetrics("poolside_query", "calls", "Calls for the primary", holds, out);
}

telemetry::StatusTable MembersTable(QueryEngine* engine) {
  telemetry::StatusTable t;
  t.title = "Database members";
  t.empty_text = "no database has replicas configured";
  t.columns = {"database",  "member",      "role",   "state", "LSN",  "lag",
               "lag bytes", "outstanding", "routed", "bans",  "error"};
  for (const v1::MemberStats& m : MemberStats(engine)) {
    t.rows.push_back({m.database(), m.member(), m.role(),
                      !m.healthy() ? "unhealthy"
                      : m.banned() ? "banned (lag)"
                                   : "routable",
                      absl::StrFormat("%X/%X", m.lsn() >> 32, m.lsn() & 0xffffffffu),
                      m.role() == "replica" ? telemetry::FormatSeconds(m.lag_seconds()) : "—",
                      m.role() == "replica" ? telemetry::FormatBytes(double(m.lag_bytes())) : "—",
                      absl::StrCat(m.outstanding()),
                      telemetry::FormatCount(double(m.routed_total())),
                      absl::StrCat(m.bans_total()), m.error()});
  }
  return t;
}

// Each database with a topology: calls held for a primary (failover
// buffering) and how long they were held.
telemetry::StatusTable HoldsTable(QueryEngine* engine) {
  telemetry::StatusTable t;
  t.title = "Failover holds";
  t.empty_text = "no database has a topology";
  t.columns = {"database", "held now", "held", "timed out", "held time", "held p50", "held p99"};
  std::vector<std::string> names;
  for (const auto& [name, replicas] : engine->replicas()) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const db::ManagedDatabase::HoldStats h = engine->replicas().at(name)->hold_stats();
    const bool any = h.durations.count > 0;
    t.rows.push_back({name, absl::StrCat(h.now), telemetry::FormatCount(double(h.total)),
                      telemetry::FormatCount(double(h.timeouts)),
                      telemetry::FormatSeconds(h.durations.sum),
                      any ? telemetry::FormatSeconds(h.durations.Percentile(0.5)) : "—",
                      any ? telemetry::FormatSeconds(h.durations.Percentile(0.99)) : "—"});
  }
  return t;
}

// The engine reports pools as protos; the shared pool series take the pool's
// own struct.
telemetry::NamedPoolStats Named(const std::vector<v1::PoolStats>& pools) {
  telemetry::NamedPoolStats out;
  for (const auto& p : pools) {
    pool::PoolStats s;
    s.size = p.size();
    s.idle = p.idle();
    s.in_use = p.in_use();
    s.waiters = p.waiters();
    s.min_idle = p.min_idle();
    s.max_size = p.max_size();
    s.max_overflow = p.max_overflow();
    s.overflow_in_use = p.overflow_in_use();
    s.overflow_created = p.overflow_created_total();
    s.acquired = p.acquired_total();
    s.timeouts = p.timeouts_total();
    s.created = p.created_total();
    s.closed = p.closed_total();
    s.recycled = p.recycled_total();
    s.broken = p.broken_total();
    s.leaks = p.leaks_total();
    s.create_failures = p.create_failures_total();
    s.acquire_wait = FromProto(p.acquire_wait());
    out.emplace_back(PoolName(p), std::move(s));
  }
  return out;
}

void CollectPools(QueryEngine* engine, Families* out) {
  const std::vector<v1::PoolStats> pools = PoolStats(engine);
  telemetry::AppendPoolMetrics(Named(pools), out);
  prometheus::MetricFamily queued =
      GaugeFamily("poolside_query_queued_calls", "Calls waiting for a worker of the database.");
  prometheus::MetricFamily pipelines = CounterFamily("poolside_query_pipelines_total",
                                                     "Round trips that carried single statements.");
  prometheus::MetricFamily pipelined = CounterFamily("poolside_query_pipelined_statements_total",
                                                     "Statements those round trips carried.");
  prometheus::MetricFamily reruns =
      CounterFamily("poolside_query_pipeline_reruns_total",
                    "Reads run again alone because a read sharing their transaction failed.");
  for (const auto& p : pools) {
    AddGauge(&queued, {{"database", PoolName(p)}}, double(p.queued()));
    AddCounter(&pipelines, {{"database", PoolName(p)}}, double(p.pipelines_total()));
    AddCounter(&pipelined, {{"database", PoolName(p)}}, double(p.pipelined_statements_total()));
    AddCounter(&reruns, {{"database", PoolName(p)}}, double(p.pipeline_reruns_total()));
  }
  out->push_back(std::move(queued));
  out->push_back(std::move(pipelines));
  out->push_back(std::move(pipelined));
  out->push_back(std::move(reruns));
}

void CollectStatements(QueryEngine* engine, Families* out) {
  prometheus::MetricFamily latency = HistogramFamily(
      "poolside_statement_duration_seconds",
      "Statement latency as callers see it (queue, connection, execution; cache hits included).");
  for (const auto& [db, h] : engine->statement_stats().LatencyByDatabase()) {
    AddHistogram(&latency, {{"database", db}}, h);
  }
  out->push_back(std::move(latency));
  struct Totals {
    uint64_t calls = 0, errors = 0, rows = 0;
  };
  std::map<std::string, Totals> by_db;
  for (const auto& s : engine->statement_stats().Snapshot("", 0)) {
    Totals& t = by_db[s.database()];
    t.calls += s.calls();
    t.errors += s.errors();
    t.rows += s.rows();
  }
  prometheus::MetricFamily calls = CounterFamily("poolside_statements_total", "Statements run.");
  prometheus::MetricFamily errors =
      CounterFamily("poolside_statement_errors_total", "Statements that failed.");
  prometheus::MetricFamily rows =
      CounterFamily("poolside_statement_rows_total", "Rows returned or affected.");
  for (const auto& [db, t] : by_db) {
    AddCounter(&calls, {{"database", db}}, double(t.calls));
    AddCounter(&errors, {{"database", db}}, double(t.errors));
    AddCounter(&rows, {{"database", db}}, double(t.rows));
  }
  out->push_back(std::move(calls));
  out->push_back(std::move(errors));
  out->push_back(std::move(rows));
}

// The near cache's own statistics (its hits are
// poolside_query_cache_near_hits_total, counted by the read cache).
void CollectNearCache(const NearCache* near, Families* out) {
  if (near == nullptr) return;  // cache.near.capacityBytes = 0
  const NearCache::Stats s = near->GetStats();
  AppendGauge(out, "poolside_query_cache_near_entries", "Results held by the near cache.",
              s.entries);
  AppendGauge(out, "poolside_query_cache_near_bytes", "Bytes the near cache's entries are charged.",
              s.bytes);
  AppendGauge(out, "poolside_query_cache_near_capacity_bytes", "The near cache's memory budget.",
              s.capacity_bytes);
  AppendGauge(out, "poolside_query_cache_near_serving",
              "1 while the near cache serves (the sidecar's invalidation watch "
              "is up), else 0.",
              s.serving ? 1 : 0);
  AppendCounter(out, "poolside_query_cache_near_misses_total",
                "Near-cache lookups that found nothing fresh (while serving).", s.misses);
  AppendCounter(out, "poolside_query_cache_near_fills_total", "Results stored in the near cache.",
                s.fills);
  AppendCounter(out, "poolside_query_cache_near_fills_refused_total",
                "Near-cache fills refused (an invalidation came after the "
                "read, or too large).",
                s.fills_refused);
  AppendCounter(out, "poolside_query_cache_near_evictions_total",
                "Near-cache entries evicted to make room.", s.evictions);
  AppendCounter(out, "poolside_query_cache_near_invalidations_total",
                "Invalidations applied to the near cache: this replica's own, "
                "those received over "
                "the sidecar's watch, and the flush of each (re)subscription.",
                s.invalidations);
  AppendCounter(out, "poolside_query_cache_near_watch_events_total",
                "Invalidations and deletes received over the sidecar's watch "
                "(this replica's own "
                "come back this way too, once the sidecar applied them).",
                s.watch_events);
  AppendCounter(out, "poolside_query_cache_near_subscriptions_total",
                "Times the sidecar's watch was (re)established (each empties "
                "the near cache).",
                s.subscriptions);
  // A generation is a value, not a count: a gauge (poolside_cache_generation
  // on the sidecar is its counterpart).
  AppendGauge(out, "poolside_query_cache_near_watch_generation",
              "The sidecar generation of the newest invalidation received over "
              "the current watch "
              "(0 until one arrived): it trails the sidecar's "
              "poolside_cache_generation by the "
              "invalidations still on their way.",
              s.watch_generation);
}

void CollectCache(QueryEngine* engine, Families* out) {
  const ReadCache* cache = engine->read_cache();
  if (cache == nullptr) return;
  const ReadCache::Counters& c = cache->counters();
  auto load = [](const std::atomic<uint64_t>& v) {
    return double(v.load(std::memory_order_relaxed));
  };
  prometheus::MetricFamily requests = CounterFamily(
      "poolside_query_cache_requests_total", "Cacheable reads by what the cache did for them.");
  AddCounter(&requests, {{"outcome", "hit"}}, load(c.hits));
  AddCounter(&requests, {{"outcome", "stale"}}, load(c.stale));
  AddCounter(&requests, {{"outcome", "miss"}}, load(c.misses));
  AddCounter(&requests, {{"outcome", "bypass"}}, load(c.bypass));
  out->push_back(std::move(requests));
  AppendCounter(out, "poolside_query_cache_near_hits_total",
                "Hits answered by the in-process near cache, without a sidecar "
                "call (also in "
                "poolside_query_cache_requests_total{outcome=\"hit\"}).",
                load(c.near_hits));
  AppendCounter(out, "poolside_query_cache_coalesced_total",
                "Misses that joined an identical query already in flight.", load(c.coalesced));
  AppendCounter(out, "poolside_query_cache_fills_total", "Results stored in the sidecar.",
                load(c.fills));
  AppendCounter(out, "poolside_query_cache_fills_refused_total",
                "Fills the sidecar refused (an invalidation came after the read).",
                load(c.fills_refused));
  AppendCounter(out, "poolside_query_cache_sidecar_errors_total",
                "Sidecar calls that failed or timed out.", load(c.sidecar_errors));
  prometheus::MetricFamily inval = CounterFamily(
      "poolside_query_cache_invalidations_total",
      "Invalidations sent to the sidecar, by source: NOTIFY from a committed write anywhere, a "
      "write through this replica, a flush after (re)subscribing.");
  AddCounter(&inval, {{"source", "notify"}}, load(c.notifications));
  AddCounter(&inval, {{"source", "write"}}, load(c.write_invalidations));
  AddCounter(&inval, {{"source", "flush"}}, load(c.flushes));
  out->push_back(std::move(inval));
  prometheus::MetricFamily bypass = CounterFamily(
      "poolside_query_cache_bypass_total",
      "Reads asking for the cache that ran on the database, by reason: stream (the database's "
      "invalidation stream is down, silent, unknown or being flushed), lag (it trails the WAL "
      "past cache.wal.maxLagMs), token (min_lsn not reached in time, or a flight too old to "
      "join), unwatched (reads a table whose writes are not seen), plan (not a plain read), "
      "sidecar, key_size, off (cache.walUnavailable: bypass).");
  for (int r = 0; r < static_cast<int>(ReadCache::Bypass::kCount); ++r) {
    AddCounter(&bypass, {{"reason", ReadCache::BypassName(static_cast<ReadCache::Bypass>(r))}},
               load(c.bypass_by_reason[r]));
  }
  out->push_back(std::move(bypass));
  AppendCounter(out, "poolside_query_cache_keyed_fills_total",
                "Fills tagged with their row's primary key (invalidated by changes to that row "
                "only; also in poolside_query_cache_fills_total).",
                load(c.keyed_fills));
  prometheus::MetricFamily waits = CounterFamily(
      "poolside_query_cache_token_waits_total",
      "Reads whose min_lsn this replica had not applied yet, by whether the stream reached it "
      "within cache.wal.tokenWaitMs.");
  AddCounter(&waits, {{"result", "reached"}}, load(c.token_waits_reached));
  AddCounter(&waits, {{"result", "timeout"}}, load(c.token_waits) - load(c.token_waits_reached));
  out->push_back(std::move(waits));

  prometheus::MetricFamily mode =
      GaugeFamily("poolside_query_cache_invalidation_mode",
                  "1 for how each database's cache learns of writes: wal, trigger, off.");
  prometheus::MetricFamily ready =
      GaugeFamily("poolside_query_cache_invalidation_ready",
                  "1 while the database's reads use the cache (its invalidations are up to date).");
  prometheus::MetricFamily holder =
      GaugeFamily("poolside_query_cache_wal_holder",
                  "1 while this replica holds the database's replication slot and relays its WAL.");
  prometheus::MetricFamily applied =
      GaugeFamily("poolside_query_cache_wal_applied_lsn",
                  "Every commit before this WAL position (as a number) is invalidated here.");
  prometheus::MetricFamily heard =
      GaugeFamily("poolside_query_cache_wal_silence_seconds",
                  "Time since the holder's last message reached this replica.");
  prometheus::MetricFamily lag =
      GaugeFamily("poolside_query_cache_wal_lag_seconds",
                  "Holder only: how long ago the server's flushed WAL was where decoding is now.");
  prometheus::MetricFamily streams = CounterFamily(
      "poolside_query_cache_wal_streams_total",
      "Streams this replica applied (each begins with a flush of the database's entries: a "
      "takeover, a restart).");
  prometheus::MetricFamily terms = CounterFamily("poolside_query_cache_wal_terms_total",
                                                 "Times this replica became the holder.");
  prometheus::MetricFamily invisible = CounterFamily(
      "poolside_query_cache_wal_visibility_retries_total",
      "Holder: times a relayed batch was held back and tried again because its transactions, "
      "though decoded, were not yet visible to new snapshots.");
  prometheus::MetricFamily own =
      CounterFamily("poolside_query_cache_wal_own_write_skips_total",
                    "Relayed changes of a table not applied again: writes through this replica had "
                    "invalidated the table after every transaction of the change was visible.");
  prometheus::MetricFamily fences = CounterFamily(
      "poolside_query_cache_wal_token_fences_total",
      "Fences this replica ran so that reads waiting for a min_lsn past the last commit to a "
      "cached table need not wait for the holder's heartbeat, by result.");
  prometheus::MetricFamily ddl_trigger = GaugeFamily(
      "poolside_query_cache_wal_ddl_trigger",
      "Holder only: 1 when the DDL event trigger is installed (views, policies and grants "
      "redefined invalidate the database's entries), 0 when it could not be (docs/cache.md).");
  prometheus::MetricFamily ddl = CounterFamily(
      "poolside_query_cache_wal_ddl_total",
      "Holder: committed DDL transactions decoded, each relayed as a flush of the database's "
      "entries and learned plans.");
  prometheus::MetricFamily delay = HistogramFamily(
      "poolside_query_cache_invalidation_delay_seconds",
      "From a relayed batch's oldest commit (the server's commit time) to its invalidation "
      "applied in this replica's near cache and sidecar.");
  for (const ReadCache::InvalidationState& st : cache->InvalidationStates()) {
    const telemetry::MetricLabels db = {{"database", st.database}};
    for (const char* m : {"wal", "trigger", "off"}) {
      AddGauge(&mode, {{"database", st.database}, {"mode", m}}, st.mode == m ? 1 : 0);
    }
    AddGauge(&ready, db, st.ready ? 1 : 0);
    if (st.mode != "wal" && st.relay.terms == 0) continue;
    AddGauge(&holder, db, st.holder ? 1 : 0);
    AddGauge(&applied, db, double(st.applied_lsn));
    AddGauge(
        &heard, db,
        st.since_heard == absl::InfiniteDuration() ? -1 : absl::ToDoubleSeconds(st.since_heard));
    if (st.holder) {
      AddGauge(&lag, db, absl::ToDoubleSeconds(st.relay.lag));
      AddGauge(&ddl_trigger, db, st.relay.ddl_trigger ? 1 : 0);
    }
    AddCounter(&ddl, db, double(st.relay.ddl));
    AddCounter(&streams, db, double(st.streams_seen));
    AddCounter(&terms, db, double(st.relay.terms));
    AddCounter(&invisible, db, double(st.relay.visibility_retries));
    AddCounter(&own, db, double(st.own_write_skips));
    AddCounter(&fences, {{"database", st.database}, {"result", "committed"}},
               double(st.fence.fences));
    AddCounter(&fences, {{"database", st.database}, {"result", "failed"}},
               double(st.fence.failures));
    AddHistogram(&delay, db, st.delay);
  }
  for (auto* f : {&mode, &ready, &holder, &applied, &heard, &lag, &streams, &terms, &invisible,
                  &own, &fences, &ddl_trigger, &ddl, &delay}) {
    out->push_back(std::move(*f));
  }
  CollectNearCache(cache->near_cache(), out);
}

telemetry::StatusTable InvalidationTable(QueryEngine* engine) {
  const ReadCache* cache = engine->read_cache();
  telemetry::StatusTable t;
  t.title = "Cache invalidation";
  t.empty_text = "no cached tables configured";
  if (cache == nullptr) return t;
  t.columns = {"database",  "mode",      "state",   "applied LSN", "last heard",
               "delay p50", "delay p99", "streams", "watched",     "note"};
  for (const ReadCache::InvalidationState& st : cache->InvalidationStates()) {
    std::string state = st.ready ? "ready" : "bypassing";
    if (st.mode == "wal") {
      absl::StrAppend(&state, st.holder ? ", holder" : ", follower");
      if (st.lagging) absl::StrAppend(&state, ", lagging");
      if (st.holder) {
        absl::StrAppend(&state, " (lag ",
                        telemetry::FormatSeconds(absl::ToDoubleSeconds(st.relay.lag)), ")");
      }
    }
    const bool wal = st.mode == "wal";
    t.rows.push_back(
        {st.database, st.mode, state,
         wal ? absl::StrFormat("%X/%X", st.applied_lsn >> 32, st.applied_lsn & 0xffffffffu) : "—",
         wal && st.since_heard != absl::InfiniteDuration()
             ? telemetry::FormatSeconds(absl::ToDoubleSeconds(st.since_heard))
             : "—",
         st.delay.count > 0 ? telemetry::FormatSeconds(st.delay.Percentile(0.5)) : "—",
         st.delay.count > 0 ? telemetry::FormatSeconds(st.delay.Percentile(0.99)) : "—",
         absl::StrCat(st.streams_seen), absl::StrJoin(st.watched, ", "),
         st.mode == "trigger"
             ? absl::StrCat("NOTIFY triggers: every writer of these tables pays; DDL (a view "
                            "redefined) is not seen. ",
                            st.note)
         : st.holder && !st.relay.ddl_trigger
             ? absl::StrCat("DDL event trigger not installed (needs a superuser once): a view, "
                            "policy or grant redefined is not seen. ",
                            st.note)
             : st.note});
  }
  return t;
}

telemetry::StatusTable PoolsTable(QueryEngine* engine) {
  const std::vector<v1::PoolStats> pools = PoolStats(engine);
  telemetry::StatusTable t = telemetry::PoolsTable(Named(pools));
  t.columns.push_back("queued");
  for (size_t i = 0; i < pools.size() && i < t.rows.size(); ++i) {
    t.rows[i].push_back(absl::StrCat(pools[i].queued()));
  }
  return t;
}

telemetry::StatusTable CacheTable(QueryEngine* engine) {
  telemetry::StatusTable t;
  t.title = "Read cache";
  t.empty_text = "no cache sidecar configured";
  const ReadCache* cache = engine->read_cache();
  if (cache == nullptr) return t;
  const ReadCache::Counters& c = cache->counters();
  const double hits = double(c.hits.load()), stale = double(c.stale.load());
  const double misses = double(c.misses.load());
  t.columns = {"layer",     "hit ratio", "hits",    "stale",         "misses",         "bypass",
               "coalesced", "fills",     "refused", "invalidations", "sidecar errors", "size"};
  t.rows.push_back({"all cached reads", telemetry::FormatRatio(hits + stale, hits + stale + misses),
                    telemetry::FormatCount(hits), telemetry::FormatCount(stale),
                    telemetry::FormatCount(misses), telemetry::FormatCount(double(c.bypass.load())),
                    telemetry::FormatCount(double(c.coalesced.load())),
                    telemetry::FormatCount(double(c.fills.load())),
                    telemetry::FormatCount(double(c.fills_refused.load())),
                    telemetry::FormatCount(double(c.notifications.load() +
                                                  c.write_invalidations.load() + c.flushes.load())),
                    telemetry::FormatCount(double(c.sidecar_errors.load())), "—"});
  if (const NearCache* near = cache->near_cache(); near != nullptr) {
    // The in-process near cache in front of the sidecar: its hits are part of
    // the row above.
    const NearCache::Stats n = near->GetStats();
    t.rows.push_back({n.serving ? "near cache" : "near cache (not serving: sidecar watch down)",
                      telemetry::FormatRatio(double(n.hits), double(n.hits + n.misses)),
                      telemetry::FormatCount(double(n.hits)), "—",
                      telemetry::FormatCount(double(n.misses)), "—", "—",
                      telemetry::FormatCount(double(n.fills)),
                      telemetry::FormatCount(double(n.fills_refused)),
                      telemetry::FormatCount(double(n.invalidations)), "—",
                      absl::StrCat(telemetry::FormatBytes(double(n.bytes)), " of ",
                                   telemetry::FormatBytes(double(n.capacity_bytes)))});
  }
  return t;
}

telemetry::StatusTable SlowestTable(QueryEngine* engine) {
  telemetry::StatusTable t;
  t.title = "Slowest statements";
  t.code_first_column = true;
  t.columns = {"statement", "database", "calls", "mean", "p99", "max", "rows", "errors"};
  std::vector<v1::StatementStats> all = engine->statement_stats().Snapshot("", 0);
  std::sort(all.begin(), all.end(),
            [](const auto& a, const auto& b) { return a.mean_ms() > b.mean_ms(); });
  if (all.size() > kSlowestShown) all.resize(kSlowestShown);
  for (const auto& s : all) {
    t.rows.push_back({s.statement(), s.database(), telemetry::FormatCount(double(s.calls())),
                      telemetry::FormatSeconds(s.mean_ms() / 1000),
                      telemetry::FormatSeconds(s.p99_ms() / 1000),
                      telemetry::FormatSeconds(s.max_ms() / 1000),
                      telemetry::FormatCount(double(s.rows())), absl::StrCat(s.errors())});
  }
  t.empty_text = "no statements yet";
  return t;
}

}  // namespace

absl::Duration SlowStatementThreshold(const v1::LogConfig& config) {
  if (!config.has_slow_statement_ms()) return absl::Seconds(1);
  return absl::Milliseconds(config.slow_statement_ms());
}

QueryMetrics::QueryMetrics(QueryEngine* engine, telemetry::MetricsRegistry* registry,
                           const v1::TelemetryConfig& config)
    : engine_(engine) {
  engine_->statement_stats().SetSlowThreshold(SlowStatementThreshold(config.log()));
  collector_ = registry->AddCollector([engine](Families* out) {
    CollectPools(engine, out);
    CollectMembers(engine, out);
    CollectStatements(engine, out);
    CollectCache(engine, out);
  });
  pools_ = registry->AddStatusSection([engine] { return PoolsTable(engine); });
  members_ = registry->AddStatusSection([engine] { return MembersTable(engine); });
  holds_ = registry->AddStatusSection([engine] { return HoldsTable(engine); });
  cache_ = registry->AddStatusSection([engine] { return CacheTable(engine); });
  invalidation_ = registry->AddStatusSection([engine] { return InvalidationTable(engine); });
  statements_ = registry->AddStatusSection([engine] { return SlowestTable(engine); });
}

}  // namespace poolside::query
