#include "services/ingest/flusher.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/db/copy.h"
#include "common/db/error.h"

namespace poolside::ingest {
namespace {

// One COPY line of the batch: line `line` of write `write`.
struct LineRef {
  uint32_t write;
  uint32_t line;
};

bool IsDataError(const absl::Status& s) {
  const std::string state = db::SqlStateOf(s);
  return absl::StartsWith(state, "22") || absl::StartsWith(state, "23");
}

// PostgreSQL's message without the "(SQLSTATE xxxxx)" that error.h appends.
std::string Reason(const absl::Status& s) {
  absl::string_view m = s.message();
  const size_t at = m.rfind(" (SQLSTATE ");
  if (at != absl::string_view::npos) m = m.substr(0, at);
  return std::string(m);
}

std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out.push_back(',');
    out.push_back('"');
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out.push_back('\\');
      out.push_back(c);
    }
    out.push_back('"');
  }
  out.push_back('}');
  return out;
}

bool DecodeHexBytea(absl::string_view text, std::string* out) {
  if (!absl::ConsumePrefix(&text, "\\x") || text.size() % 2 != 0) return false;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out->resize(text.size() / 2);
  for (size_t i = 0; i < out->size(); ++i) {
    const int hi = hex(text[2 * i]), lo = hex(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<char>(hi * 16 + lo);
  }
  return true;
}

// A failure that ends the batch, as the status its requests get.
absl::Status BatchFailure(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kDeadlineExceeded) {
    return absl::UnavailableError(
        absl::StrCat("flush did not finish in time (retry): ", s.message()));
  }
  return s;
}

class Flush {
 public:
  Flush(db::Connection& conn, const Batch& batch, absl::Time deadline)
      : batch_(batch), session_(conn, deadline) {}

  FlushResult Run() {
    FlushResult result;
    for (int attempt = 0;; ++attempt) {
      absl::Status s = Attempt(result);
      if (s.ok()) break;
      result.broken = session_.broken();
      if (!result.broken) (void)session_.Exec("ROLLBACK");
      if (!result.broken && needs_isolation_ && !isolating_) {
        // The plain COPY hit a bad row: again, isolating bad rows under
        // savepoints (not counted as an attempt).
        isolating_ = true;
        --attempt;
        continue;
      }
      // A key committed meanwhile by another writer: start over, the lookup
      // will find it.
      if (!result.broken && attempt < 2 && s.code() == absl::StatusCode::kAlreadyExists) {
        continue;
      }
      if (s.code() == absl::StatusCode::kAlreadyExists) {
        s = absl::AbortedError(absl::StrCat("idempotency key conflict: ", s.message()));
      }
      result.status = BatchFailure(s);
      result.responses.clear();
      return result;
    }
    return result;
  }

 private:
  absl::Status Attempt(FlushResult& result) {
    const size_t n = batch_.writes.size();
    result = FlushResult();
    result.responses.assign(n, v1::WriteResponse());
    duplicate_.assign(n, false);
    good_.assign(n, {});
    copy_rejected_.assign(n, {});
    if (absl::Status s = session_.Exec("BEGIN"); !s.ok()) return s;

    std::vector<std::string> keys;
    for (const auto& w : batch_.writes) {
      if (!w->key.empty()) keys.push_back(w->key);
    }
    if (!keys.empty()) {
      auto rows = session_.Query(
          absl::StrCat("SELECT key, result FROM ", kKeysTable, " WHERE key = ANY($1::text[])"),
          {TextArrayLiteral(keys)});
      if (!rows.ok()) return rows.status();
      absl::flat_hash_map<std::string, std::string> stored;
      for (const auto& row : *rows) {
        std::string bytes;
        if (row.size() == 2 && row[0] && row[1] && DecodeHexBytea(*row[1], &bytes)) {
          stored[*row[0]] = std::move(bytes);
        }
      }
      for (size_t i = 0; i < n; ++i) {
        auto it = batch_.writes[i]->key.empty() ? stored.end()
                                                 : stored.find(batch_.writes[i]->key);
        if (it == stored.end()) continue;
        duplicate_[i] = true;
        result.responses[i].ParseFromString(it->second);
        result.responses[i].set_duplicate(true);
      }
    }

    std::vector<LineRef> lines;
    for (size_t i = 0; i < n; ++i) {
      if (duplicate_[i]) continue;
      good_[i].assign(batch_.writes[i]->lines(), false);
      for (size_t j = 0; j < batch_.writes[i]->lines(); ++j) {
        lines.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(j)});
      }
    }
    if (!lines.empty() && !isolating_) {
      // Most batches have no bad row: one plain COPY, no savepoint.
      ++result.copy_statements;
      absl::StatusOr<int64_t> copied = session_.CopyIn(batch_.copy_target, Pieces(lines, nullptr));
      if (!copied.ok()) {
        needs_isolation_ = IsDataError(copied.status()) && !session_.broken();
        return copied.status();
      }
      for (const LineRef& l : lines) good_[l.write][l.line] = true;
      result.bytes_written += bytes_;
    } else if (!lines.empty()) {
      if (absl::Status s = Isolate(absl::MakeConstSpan(lines), result); !s.ok()) return s;
    }

    // Each request's answer, and the keys with them.
    std::string key_data;
    for (size_t i = 0; i < n; ++i) {
      if (duplicate_[i]) continue;
      const PendingWrite& w = *batch_.writes[i];
      v1::WriteResponse& r = result.responses[i];
      uint64_t written = 0;
      for (size_t j = 0; j < w.lines(); ++j) written += good_[i][j] ? 1 : 0;
      r.set_rows_written(written);
      std::vector<v1::RowError> rejected = w.rejected;
      for (auto& e : copy_rejected_[i]) rejected.push_back(std::move(e));
      std::sort(rejected.begin(), rejected.end(),
                [](const v1::RowError& a, const v1::RowError& b) {
                  return a.row_index() < b.row_index();
                });
      for (auto& e : rejected) *r.add_rejected() = std::move(e);
      result.rows_written += written;
      if (!w.key.empty()) {
        db::AppendCopyText(w.key, &key_data);
        absl::StrAppend(&key_data, "\t", written, "\t\\\\x");
        static constexpr char kHex[] = "0123456789abcdef";
        for (unsigned char b : r.SerializeAsString()) {
          key_data.push_back(kHex[b >> 4]);
          key_data.push_back(kHex[b & 15]);
        }
        key_data.push_back('\n');
      }
    }
    if (!key_data.empty()) {
      auto copied = session_.CopyIn(absl::StrCat(kKeysTable, " (key, rows, result)"), key_data);
      if (!copied.ok()) return copied.status();
    }
    return session_.Exec("COMMIT");
  }

  // The COPY data of `lines`, as pieces of the requests' buffers.
  std::vector<absl::string_view> Pieces(absl::Span<const LineRef> lines, size_t* total) {
    std::vector<absl::string_view> pieces;
    size_t bytes = 0;
    for (size_t k = 0; k < lines.size(); ++k) {
      const PendingWrite& w = *batch_.writes[lines[k].write];
      const uint32_t begin = lines[k].line == 0 ? 0 : w.line_ends[lines[k].line - 1];
      const uint32_t end = w.line_ends[lines[k].line];
      // Consecutive lines of one request are one piece.
      if (k > 0 && lines[k - 1].write == lines[k].write &&
          lines[k - 1].line + 1 == lines[k].line) {
        const absl::string_view& last = pieces.back();
        pieces.back() = absl::string_view(last.data(), last.size() + (end - begin));
      } else {
        pieces.emplace_back(w.data.data() + begin, end - begin);
      }
      bytes += end - begin;
    }
    bytes_ = bytes;
    if (total != nullptr) *total = bytes;
    return pieces;
  }

  // Copies `lines` under a savepoint; on a data error, splits them until the
  // bad lines are alone. Non-OK only for errors that end the batch.
  absl::Status Isolate(absl::Span<const LineRef> lines, FlushResult& result) {
    if (lines.empty()) return absl::OkStatus();
    size_t bytes = 0;
    std::vector<absl::string_view> pieces = Pieces(lines, &bytes);
    if (absl::Status s = session_.Exec("SAVEPOINT poolside_rows"); !s.ok()) return s;
    ++result.copy_statements;
    absl::StatusOr<int64_t> copied = session_.CopyIn(batch_.copy_target, pieces);
    if (copied.ok()) {
      if (absl::Status s = session_.Exec("RELEASE SAVEPOINT poolside_rows"); !s.ok()) return s;
      for (const LineRef& l : lines) good_[l.write][l.line] = true;
      result.bytes_written += bytes;
      return absl::OkStatus();
    }
    if (!IsDataError(copied.status()) || session_.broken()) return copied.status();
    if (absl::Status s = session_.Exec("ROLLBACK TO SAVEPOINT poolside_rows"); !s.ok()) return s;
    if (absl::Status s = session_.Exec("RELEASE SAVEPOINT poolside_rows"); !s.ok()) return s;
    if (lines.size() == 1) {
      const PendingWrite& w = *batch_.writes[lines[0].write];
      v1::RowError e;
      e.set_row_index(w.row_index[lines[0].line]);
      e.set_reason(Reason(copied.status()));
      e.set_sqlstate(db::SqlStateOf(copied.status()));
      copy_rejected_[lines[0].write].push_back(std::move(e));
      ++result.rows_rejected;
      return absl::OkStatus();
    }
    const int64_t line = db::CopyLineOf(copied.status());
    if (line >= 1 && static_cast<size_t>(line) <= lines.size()) {
      // Rows before the named one went in fine; the named one is the suspect.
      const size_t bad = static_cast<size_t>(line) - 1;
      if (absl::Status s = Isolate(lines.subspan(0, bad), result); !s.ok()) return s;
      if (absl::Status s = Isolate(lines.subspan(bad, 1), result); !s.ok()) return s;
      return Isolate(lines.subspan(bad + 1), result);
    }
    const size_t mid = lines.size() / 2;
    if (absl::Status s = Isolate(lines.subspan(0, mid), result); !s.ok()) return s;
    return Isolate(lines.subspan(mid), result);
  }

  const Batch& batch_;
  db::CopySession session_;
  bool isolating_ = false;
  bool needs_isolation_ = false;
  size_t bytes_ = 0;  // of the last Pieces()
  std::vector<bool> duplicate_;
  std::vector<std::vector<bool>> good_;
  std::vector<std::vector<v1::RowError>> copy_rejected_;
};

}  // namespace

absl::Status EnsureKeysTable(db::Connection& conn, absl::Time deadline) {
  db::CopySession session(conn, deadline);
  absl::Status s = session.Exec(absl::StrCat(
      "CREATE TABLE IF NOT EXISTS ", kKeysTable,
      " (key text PRIMARY KEY, rows bigint NOT NULL, result bytea NOT NULL, "
      "written_at timestamptz NOT NULL DEFAULT now())"));
  if (!s.ok()) return s;
  return session.Exec(absl::StrCat("CREATE INDEX IF NOT EXISTS ", kKeysTable,
                                   "_written_at ON ", kKeysTable, " (written_at)"));
}

FlushResult FlushBatch(db::Connection& conn, const Batch& batch, absl::Time deadline) {
  return Flush(conn, batch, deadline).Run();
}

absl::StatusOr<int64_t> DeleteExpiredKeys(db::Connection& conn, absl::Duration retention,
                                          absl::Time deadline) {
  db::CopySession session(conn, deadline);
  auto rows = session.Query(
      absl::StrCat("WITH d AS (DELETE FROM ", kKeysTable,
                   " WHERE written_at < now() - $1::interval RETURNING 1) SELECT count(*) FROM d"),
      {absl::StrCat(absl::ToInt64Milliseconds(retention), " milliseconds")});
  if (!rows.ok()) return rows.status();
  int64_t n = 0;
  if (!rows->empty() && (*rows)[0][0]) n = std::stoll(*(*rows)[0][0]);
  return n;
}

}  // namespace poolside::ingest
