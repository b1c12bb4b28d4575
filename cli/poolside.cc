// `poolside`: command-line client for the query service. See UsageText() in
// cli/command_line.cc for commands and options.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/cache_command.h"
#include "cli/command_line.h"
#include "cli/connection.h"
#include "cli/ingest_command.h"
#include "cli/table.h"
#include "cli/value_format.h"
#include "common/telemetry/otlp_exporter.h"
#include "common/telemetry/trace.h"
#include "proto/poolside/v1/query.grpc.pb.h"

namespace poolside::cli {
namespace {

namespace v1 = ::poolside::v1;

int PrintError(const absl::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return kExitError;
}

// gRPC's codes are Abseil's.
int PrintError(const grpc::Status& status) {
  return PrintError(
      absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message()));
}

void Print(const std::string& text) { std::fwrite(text.data(), 1, text.size(), stdout); }

std::unique_ptr<grpc::ClientContext> NewContext(const Invocation& inv) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + inv.timeout));
  return ctx;
}

std::vector<std::string> ColumnNames(
    const google::protobuf::RepeatedPtrField<v1::Column>& columns) {
  std::vector<std::string> names;
  for (const v1::Column& c : columns) names.push_back(EscapeForCell(c.name()));
  return names;
}

void AddResultRow(const v1::Row& row, TextTable* table) {
  std::vector<std::string> cells;
  std::vector<bool> right;
  for (const v1::Value& v : row.values()) {
    cells.push_back(EscapeForCell(FormatValue(v)));
    right.push_back(IsNumeric(v));
  }
  table->AddRow(std::move(cells), std::move(right));
}

std::string RowCount(int64_t n) { return absl::StrCat("(", n, n == 1 ? " row)\n" : " rows)\n"); }

// psql's convention: a result with columns ends in "(N rows)", a command
// without one prints its tag; a DML ... RETURNING prints both.
void PrintFooter(bool has_columns, int64_t rows, const std::string& tag) {
  if (has_columns) Print(RowCount(rows));
  bool select_like = absl::StartsWith(tag, "SELECT") || absl::StartsWith(tag, "FETCH") ||
                     absl::StartsWith(tag, "SHOW");
  if (!tag.empty() && !(has_columns && select_like)) {
    Print(tag + "\n");
  } else if (tag.empty() && !has_columns) {
    Print("OK\n");
  }
}

int RunQuery(v1::QueryService::Stub* stub, const Invocation& inv) {
  v1::ExecuteRequest req;
  req.set_database(inv.database);
  req.set_sql(inv.sql);
  req.set_max_rows(inv.max_rows);
  if (inv.cache_ttl_ms > 0) req.mutable_cache()->set_ttl_ms(inv.cache_ttl_ms);
  for (const std::string& p : inv.params) {
    absl::StatusOr<v1::Value> v = ParseParam(p);
    if (!v.ok()) return PrintError(v.status());
    *req.add_params() = *std::move(v);
  }

  if (!inv.stream) {
    v1::ExecuteResponse resp;
    auto ctx = NewContext(inv);
    grpc::Status status = stub->Execute(ctx.get(), req, &resp);
    if (!status.ok()) return PrintError(status);
    const v1::ResultSet& rs = resp.result();
    bool has_columns = rs.columns_size() > 0;
    if (has_columns) {
      TextTable table(ColumnNames(rs.columns()));
      for (const v1::Row& row : rs.rows()) AddResultRow(row, &table);
      Print(table.Render());
    }
    PrintFooter(has_columns, rs.rows_size(), rs.command_tag());
    if (inv.cache_ttl_ms > 0)
      Print(absl::StrCat("cache: ", v1::CacheOutcome_Name(resp.cache()), "\n"));
    return kExitOk;
  }

  auto ctx = NewContext(inv);
  std::unique_ptr<grpc::ClientReader<v1::ExecuteStreamResponse>> reader =
      stub->ExecuteStream(ctx.get(), req);
  v1::ExecuteStreamResponse msg;
  std::unique_ptr<TextTable> table;
  bool header_printed = false;
  int64_t rows = 0;
  std::string tag;
  while (reader->Read(&msg)) {
    if (!table && msg.columns_size() > 0) {
      table = std::make_unique<TextTable>(ColumnNames(msg.columns()));
    }
    if (table) {
      for (const v1::Row& row : msg.rows()) AddResultRow(row, table.get());
      if (!header_printed) {
        Print(table->RenderHeader());
        header_printed = true;
      }
      Print(table->RenderRows());
      std::fflush(stdout);
    }
    rows += msg.rows_size();
    if (!msg.command_tag().empty()) tag = msg.command_tag();
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return PrintError(status);
  PrintFooter(table != nullptr, rows, tag);
  return kExitOk;
}

std::string Ms(double ms) { return absl::StrFormat("%.3f", ms); }

// Upper bound (in ms) of the bucket holding quantile q of a cumulative histogram.
std::string HistogramQuantileMs(const v1::Histogram& h, double q) {
  if (h.count() == 0) return "-";
  double target = q * static_cast<double>(h.count());
  for (int i = 0; i < h.counts_size(); ++i) {
    if (static_cast<double>(h.counts(i)) >= target) {
      if (i < h.bounds_seconds_size()) {
        return absl::StrCat("<=", FormatDouble(h.bounds_seconds(i) * 1000));
      }
      break;
    }
  }
  if (h.bounds_seconds_size() == 0) return "-";
  return absl::StrCat(">", FormatDouble(h.bounds_seconds(h.bounds_seconds_size() - 1) * 1000));
}

int RunPools(v1::QueryService::Stub* stub, const Invocation& inv) {
  v1::GetPoolStatsRequest req;
  req.set_database(inv.database);
  v1::GetPoolStatsResponse resp;
  auto ctx = NewContext(inv);
  grpc::Status status = stub->GetPoolStats(ctx.get(), req, &resp);
  if (!status.ok()) return PrintError(status);
  TextTable table({"database",        "size",        "idle",        "in_use",    "waiters",
                   "queued",          "min_idle",    "max_size",    "acquired",  "timeouts",
                   "created",         "closed",      "recycled",    "broken",    "leaks",
                   "create_failures", "wait_avg_ms", "wait_p99_ms", "pipelines", "avg_depth"});
  for (const v1::PoolStats& p : resp.pools()) {
    const v1::Histogram& h = p.acquire_wait();
    std::string avg = h.count() == 0 ? "-" : Ms(h.sum_seconds() * 1000 / h.count());
    // A role's pool is "db/role", a member's pool "db@host:port".
    std::string name = p.database();
    if (!p.role().empty()) absl::StrAppend(&name, "/", p.role());
    if (!p.member().empty()) absl::StrAppend(&name, "@", p.member());
    std::vector<std::string> cells = {
        EscapeForCell(name),
        absl::StrCat(p.size()),
        absl::StrCat(p.idle()),
        absl::StrCat(p.in_use()),
        absl::StrCat(p.waiters()),
        absl::StrCat(p.queued()),
        absl::StrCat(p.min_idle()),
        absl::StrCat(p.max_size()),
        absl::StrCat(p.acquired_total()),
        absl::StrCat(p.timeouts_total()),
        absl::StrCat(p.created_total()),
        absl::StrCat(p.closed_total()),
        absl::StrCat(p.recycled_total()),
        absl::StrCat(p.broken_total()),
        absl::StrCat(p.leaks_total()),
        absl::StrCat(p.create_failures_total()),
        avg,
        HistogramQuantileMs(h, 0.99),
        absl::StrCat(p.pipelines_total()),
        p.pipelines_total() == 0
            ? "-"
            : absl::StrFormat("%.2f", static_cast<double>(p.pipelined_statements_total()) /
                                          p.pipelines_total())};
    std::vector<bool> right(cells.size(), true);
    right[0] = false;
    table.AddRow(std::move(cells), std::move(right));
  }
  Print(table.Render());
  Print(absl::StrCat("(", resp.pools_size(), resp.pools_size() == 1 ? " pool)\n" : " pools)\n"));
  if (resp.members_size() == 0) return kExitOk;
  // Databases with replicas: their members as last probed.
  TextTable members({"database", "member", "role", "state", "lag_ms", "lag_bytes", "outstanding",
                     "routed", "bans", "error"});
  for (const v1::MemberStats& m : resp.members()) {
    std::vector<std::string> cells = {EscapeForCell(m.database()),
                                      EscapeForCell(m.member()),
                                      m.role(),
                                      !m.healthy() ? "unhealthy"
                                      : m.banned() ? "banned"
                                                   : "routable",
                                      m.role() == "replica" ? Ms(m.lag_seconds() * 1000) : "-",
                                      m.role() == "replica" ? absl::StrCat(m.lag_bytes()) : "-",
                                      absl::StrCat(m.outstanding()),
                                      absl::StrCat(m.routed_total()),
                                      absl::StrCat(m.bans_total()),
                                      EscapeForCell(m.error())};
    std::vector<bool> right(cells.size(), true);
    right[0] = right[1] = right[2] = right[3] = right[9] = false;
    members.AddRow(std::move(cells), std::move(right));
  }
  Print(members.Render());
  Print(absl::StrCat("(", resp.members_size(),
                     resp.members_size() == 1 ? " member)\n" : " members)\n"));
  return kExitOk;
}

int RunCheck(v1::QueryService::Stub* stub, const Invocation& inv) {
  v1::CheckDatabasesRequest req;
  for (const std::string& db : inv.databases) req.add_databases(db);
  v1::CheckDatabasesResponse resp;
  auto ctx = NewContext(inv);
  grpc::Status status = stub->CheckDatabases(ctx.get(), req, &resp);
  if (!status.ok()) return PrintError(status);
  TextTable table({"database", "healthy", "latency_ms", "server_version", "error"});
  int unhealthy = 0;
  for (const v1::DatabaseHealth& d : resp.databases()) {
    if (!d.healthy()) ++unhealthy;
    table.AddRow({EscapeForCell(d.database()), d.healthy() ? "yes" : "NO", Ms(d.latency_ms()),
                  EscapeForCell(d.server_version()), EscapeForCell(d.error())},
                 {false, false, true, false, false});
  }
  Print(table.Render());
  unhealthy = std::max<int>(unhealthy, resp.unhealthy());
  Print(absl::StrCat(resp.databases_size() - unhealthy, " healthy, ", unhealthy, " unhealthy\n"));
  return unhealthy > 0 ? kExitFailure : kExitOk;
}

int RunStats(v1::QueryService::Stub* stub, const Invocation& inv) {
  v1::GetStatementStatsRequest req;
  req.set_database(inv.database);
  req.set_limit(inv.limit);
  v1::GetStatementStatsResponse resp;
  auto ctx = NewContext(inv);
  grpc::Status status = stub->GetStatementStats(ctx.get(), req, &resp);
  if (!status.ok()) return PrintError(status);
  TextTable table({"database", "calls", "errors", "rows", "total_ms", "mean_ms", "p50_ms", "p99_ms",
                   "max_ms", "statement"});
  for (const v1::StatementStats& s : resp.statements()) {
    table.AddRow({EscapeForCell(s.database()), absl::StrCat(s.calls()), absl::StrCat(s.errors()),
                  absl::StrCat(s.rows()), Ms(s.total_ms()), Ms(s.mean_ms()), Ms(s.p50_ms()),
                  Ms(s.p99_ms()), Ms(s.max_ms()), EscapeForCell(s.statement())},
                 {false, true, true, true, true, true, true, true, true, false});
  }
  Print(table.Render());
  Print(absl::StrCat("(", resp.statements_size(),
                     resp.statements_size() == 1 ? " statement)\n" : " statements)\n"));
  return kExitOk;
}

std::string Percent(double fraction) { return absl::StrFormat("%.1f%%", 100 * fraction); }

std::string Indent(const std::string& text, const std::string& prefix) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    absl::StrAppend(&out, prefix, EscapeForCell(std::string(line)), "\n");
  }
  return out;
}

absl::StatusOr<v1::GetIndexAdviceResponse> GetAdvice(v1::QueryService::Stub* stub,
                                                     const Invocation& inv) {
  v1::GetIndexAdviceRequest req;
  req.set_database(inv.database);
  req.set_min_calls(inv.min_calls);
  req.set_max_statements(inv.max_statements);
  v1::GetIndexAdviceResponse resp;
  auto ctx = NewContext(inv);
  grpc::Status status = stub->GetIndexAdvice(ctx.get(), req, &resp);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return resp;
}

void PrintAdvice(const v1::GetIndexAdviceResponse& advice) {
  Print(absl::StrCat("database ", EscapeForCell(advice.database()), ": ",
                     advice.statements_considered(),
                     advice.statements_considered() == 1 ? " statement" : " statements",
                     " costed, ", advice.candidates_costed(),
                     advice.candidates_costed() == 1 ? " candidate index" : " candidate indexes",
                     " tried, ", Ms(advice.total_ms()), " ms of statement time in total\n"));
  if (advice.suggestions_size() == 0) Print("no index would make these statements cheaper\n");
  for (int i = 0; i < advice.suggestions_size(); ++i) {
    const v1::IndexSuggestion& s = advice.suggestions(i);
    Print(absl::StrCat("\n", i + 1, ". ", EscapeForCell(s.create_sql()), "\n"));
    Print(absl::StrCat("   estimated improvement ", Percent(s.estimated_improvement()),
                       " of statement time; helps ", s.statements_size(),
                       s.statements_size() == 1 ? " statement" : " statements", " (",
                       Percent(s.share()), " of statement time)\n"));
    TextTable table({"calls", "total_ms", "share", "cost_before", "cost_after", "statement"});
    for (const v1::AdvisedStatement& a : s.statements()) {
      table.AddRow({absl::StrCat(a.calls()), Ms(a.total_ms()), Percent(a.share()),
                    absl::StrFormat("%.2f", a.cost_before()),
                    absl::StrFormat("%.2f", a.cost_after()), EscapeForCell(a.statement())},
                   {true, true, true, true, true, false});
    }
    Print(Indent(table.Render(), "   "));
    if (!s.plan_before().empty()) Print("   plan now:\n" + Indent(s.plan_before(), "     "));
    if (!s.plan_after().empty()) {
      Print("   plan with the index (hypothetical):\n" + Indent(s.plan_after(), "     "));
    }
  }
  if (advice.skipped_size() > 0) {
    Print(absl::StrCat("\nnot costed (", advice.skipped_size(), "):\n"));
    TextTable table({"statement", "reason"});
    for (const v1::SkippedStatement& k : advice.skipped()) {
      table.AddRow({EscapeForCell(k.statement()), EscapeForCell(k.reason())});
    }
    Print(Indent(table.Render(), "   "));
  }
  if (advice.suggestions_size() > 0) {
    Print("\ncreate one with: poolside advise [--db NAME] --apply N\n");
  }
}

int RunAdvise(v1::QueryService::Stub* stub, const Invocation& inv) {
  absl::StatusOr<v1::GetIndexAdviceResponse> advice = GetAdvice(stub, inv);
  if (!advice.ok()) return PrintError(advice.status());
  if (inv.apply == 0) {
    PrintAdvice(*advice);
    return kExitOk;
  }
  if (inv.apply > static_cast<uint32_t>(advice->suggestions_size())) {
    return PrintError(absl::NotFoundError(
        absl::StrCat("there is no suggestion ", inv.apply, " (the advice has ",
                     advice->suggestions_size(), "); run poolside advise to see them")));
  }
  const v1::IndexSuggestion& s = advice->suggestions(static_cast<int>(inv.apply - 1));
  Print(absl::StrCat("creating: ", EscapeForCell(s.create_sql()), "\n"));
  std::fflush(stdout);
  v1::CreateIndexRequest req;
  req.set_database(advice->database());
  *req.mutable_index() = s.index();
  v1::CreateIndexResponse resp;
  auto ctx = NewContext(inv);
  grpc::Status status = stub->CreateIndex(ctx.get(), req, &resp);
  if (!status.ok()) return PrintError(status);
  Print(absl::StrCat("created index ", EscapeForCell(resp.index_name()), " in ",
                     Ms(resp.elapsed_ms()), " ms\n"));
  return kExitOk;
}

int Main(int argc, char** argv) {
  // `poolside cache ...` talks to the cache sidecar (cli/cache_command.h).
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<ConnectionOptions> connection = TakeConnectionOptions(args);
  if (!connection.ok()) return PrintError(connection.status());
  // Every call of this command belongs to one trace: the caller's, when
  // $TRACEPARENT names one, else a new one. With $OTEL_EXPORTER_OTLP_ENDPOINT
  // (host:port of an OTLP/gRPC collector such as Jaeger) the command's own span
  // is exported too and the trace id printed on stderr.
  v1::TracingConfig tracing;
  if (const char* e = std::getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); e != nullptr && *e != '\0') {
    absl::string_view endpoint(e);
    if (!absl::ConsumePrefix(&endpoint, "http://")) absl::ConsumePrefix(&endpoint, "https://");
    tracing.set_endpoint(std::string(endpoint));
    tracing.set_export_timeout_ms(2000);
  }
  absl::StatusOr<std::unique_ptr<telemetry::Tracer>> tracer =
      telemetry::StartTracing(tracing, "cli");
  if (!tracer.ok()) return PrintError(tracer.status());
  const char* traceparent = std::getenv("TRACEPARENT");
  const char* tracestate = std::getenv("TRACESTATE");
  std::string command_name = "help";
  for (const std::string& a : args) {
    if (!absl::StartsWith(a, "-")) {
      command_name = a;
      break;
    }
  }
  telemetry::Span command_span =
      telemetry::StartSpan(absl::StrCat("poolside ", command_name), telemetry::SpanKind::kInternal,
                           telemetry::ParseTraceparent(traceparent == nullptr ? "" : traceparent,
                                                       tracestate == nullptr ? "" : tracestate)
                               .value_or(telemetry::SpanContext()));
  telemetry::SpanContext trace = command_span.context();
  if (!trace.valid()) {
    trace.trace_id = telemetry::NewTraceId();
    trace.span_id = telemetry::NewSpanId();
    trace.flags = 1;  // sampled: the services record this command's calls
  }
  if (*tracer != nullptr) std::fprintf(stderr, "trace_id: %s\n", trace.TraceIdHex().c_str());
  telemetry::ScopedSpanContext trace_scope(trace);
  // `cache` and `ingest` have their own options (cli/cache_command.h,
  // cli/ingest_command.h); options written before the command go to it too
  // (`poolside --addr=H:P ingest ...`).
  size_t command_at = 0;
  while (command_at < args.size() && absl::StartsWith(args[command_at], "-")) ++command_at;
  const bool subcommand =
      command_at < args.size() && (args[command_at] == "cache" || args[command_at] == "ingest");
  std::vector<std::string> sub_args;
  if (subcommand) {
    sub_args.assign(args.begin(), args.begin() + command_at);
    sub_args.insert(sub_args.end(), args.begin() + command_at + 1, args.end());
  }
  if (subcommand && args[command_at] == "cache") {
    return RunCacheCommand(sub_args, *connection);
  }
  Invocation defaults;
  if (const char* addr = std::getenv("POOLSIDE_ADDR"); addr && *addr) {
    defaults.addr = addr;
  }
  if (subcommand && args[command_at] == "ingest") return RunIngestCommand(sub_args, *connection);
  absl::StatusOr<Invocation> inv = ParseCommandLine(args, defaults);
  if (!inv.ok()) {
    return PrintError(inv.status());
  }
  if (inv->command == Command::kHelp) {
    Print(UsageText());
    Print(ConnectionUsageText());
    return kExitOk;
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = OpenChannel(inv->addr, *connection);
  if (!channel.ok()) return PrintError(channel.status());
  std::unique_ptr<v1::QueryService::Stub> stub = v1::QueryService::NewStub(*channel);
  switch (inv->command) {
    case Command::kQuery:
      return RunQuery(stub.get(), *inv);
    case Command::kPools:
      return RunPools(stub.get(), *inv);
    case Command::kCheck:
      return RunCheck(stub.get(), *inv);
    case Command::kStats:
      return RunStats(stub.get(), *inv);
    case Command::kAdvise:
      return RunAdvise(stub.get(), *inv);
    case Command::kHelp:
      break;
  }
  return kExitOk;
}

}  // namespace
}  // namespace poolside::cli

int main(int argc, char** argv) { return poolside::cli::Main(argc, argv); }
