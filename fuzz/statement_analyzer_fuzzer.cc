// libFuzzer target for the statement analyzer (common/sql/statement_analyzer),
// which reads every SQL text a caller sends and decides what may run on a
// pooled connection before PostgreSQL sees it.
//
// Besides memory errors, undefined behaviour and stack exhaustion (in
// libpg_query, protobuf or the tree walk), it checks:
//  - the analysis is consistent: parse_error is OK or INVALID_ARGUMENT, a
//    text that does not parse has no statements, kind or verdict of its own,
//    exactly one statement has a kind and a command, the name lists are
//    sorted and unique, written tables are among the tables, a shareable
//    statement is a read;
//  - whenever it counts exactly one statement, libpg_query's own splitter
//    (pg_query_split_with_parser, another entry point into the parser) finds
//    exactly one non-empty statement;
//  - Permitted answers OK or INVALID_ARGUMENT, as the precomputed verdicts
//    say, never OK unless there is exactly one statement, never OK for
//    transaction control, and the ddl grant or ExecuteTransaction only ever
//    permit more;
//  - a leading semicolon, a leading comment and a trailing semicolon change
//    neither the statement count, the kind, the fingerprint nor any verdict
//    (the bypasses of the hand-written lexer this replaced);
//  - the normalized text holds no literal token and is valid UTF-8;
//  - the memo answers what AnalyzeOnce does, the same analysis on a hit, and
//    stays within its byte bound;
//  - index candidates (common/sql/index_candidates) come exactly from texts
//    of one statement that parses, and are non-empty, bounded column lists.

#include <pg_query.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/sql/index_candidates.h"
#include "common/sql/pg_query.pb.h"
#include "common/sql/statement_analyzer.h"

namespace {

using poolside::sql::Analysis;
using poolside::sql::AnalyzeOnce;
using poolside::sql::Grants;
using poolside::sql::IsLiteralToken;
using poolside::sql::kMaxNormalizedBytes;
using poolside::sql::Permitted;
using poolside::sql::Scope;
using poolside::sql::StatementAnalyzer;
using poolside::sql::StatementKind;

constexpr size_t kMemoBytes = 64 << 10;
constexpr size_t kMemoTextBytes = 1024;

[[noreturn]] void Fail(const char* what, absl::string_view input) {
  fprintf(stderr, "statement_analyzer_fuzzer: %s; input \"%s\"\n", what,
          absl::CEscape(input.substr(0, 2000)).c_str());
  abort();
}

absl::Status Verdict(const Analysis& a, int scope, bool ddl) {
  return Permitted(a, scope == 0 ? Scope::kAlone : Scope::kInTransaction, Grants{.ddl = ddl});
}

bool SortedUnique(const std::vector<std::string>& names) {
  return std::adjacent_find(names.begin(), names.end(),
                            [](const std::string& a, const std::string& b) { return a >= b; }) ==
         names.end();
}

// The number of statements libpg_query's splitter finds (each non-empty), or
// -1 if it refuses the text. Safe on texts of any depth: it builds no output
// tree.
int SplitCount(const std::string& text) {
  PgQuerySplitResult split = pg_query_split_with_parser(text.c_str());
  int count = split.error != nullptr ? -1 : 0;
  for (int i = 0; count >= 0 && i < split.n_stmts; ++i) {
    if (split.stmts[i]->stmt_len > 0) ++count;
  }
  pg_query_free_split_result(split);
  return count;
}

// Whether scanning `text` finds a literal token.
bool HoldsLiteral(const std::string& text) {
  PgQueryScanResult scan = pg_query_scan(text.c_str());
  pg_query::ScanResult tokens;
  const bool scanned = scan.error == nullptr &&
                       tokens.ParseFromArray(scan.pbuf.data, static_cast<int>(scan.pbuf.len));
  pg_query_free_scan_result(scan);
  if (!scanned) return false;
  for (const pg_query::ScanToken& t : tokens.tokens()) {
    if (IsLiteralToken(t.token())) return true;
  }
  return false;
}

// Well-formed UTF-8 (RFC 3629), the analyzer's own rule for texts.
bool ValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int len = c < 0x80                 ? 1
              : c >= 0xC2 && c <= 0xDF ? 2
              : c >= 0xE0 && c <= 0xEF ? 3
              : c >= 0xF0 && c <= 0xF4 ? 4
                                       : 0;
    if (len == 0 || s.size() - i < static_cast<size_t>(len)) return false;
    for (int k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    const unsigned char d = len > 1 ? s[i + 1] : 0x80;
    if ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) ||
        (c == 0xF4 && d > 0x8F)) {
      return false;
    }
    i += len;
  }
  return true;
}

// The properties of one analysis on its own.
void CheckAnalysis(const Analysis& a, absl::string_view sql) {
  if (!a.parse_error.ok() && a.parse_error.code() != absl::StatusCode::kInvalidArgument) {
    Fail("parse_error is neither OK nor INVALID_ARGUMENT", sql);
  }
  if (!a.parse_error.ok()) {
    if (a.statement_count != 0 || a.kind != StatementKind::kInvalid || !a.normalized.empty() ||
        a.fingerprint != 0) {
      Fail("a text that does not parse has an analysis", sql);
    }
  } else if (a.statement_count < 1) {
    Fail("a text that parses has no statement", sql);
  }
  const bool one = a.parse_error.ok() && a.statement_count == 1;
  if ((a.kind != StatementKind::kInvalid) != one) Fail("kind disagrees with the count", sql);
  if (one && a.command.empty()) Fail("a statement without a command", sql);
  if (a.shareable_syntax && a.kind != StatementKind::kRead) Fail("shareable but not a read", sql);
  for (const auto* names : {&a.tables, &a.written_tables, &a.functions, &a.operators}) {
    if (!SortedUnique(*names)) Fail("names not sorted and unique", sql);
  }
  for (const std::string& w : a.written_tables) {
    if (!std::binary_search(a.tables.begin(), a.tables.end(), w)) {
      Fail("a written table is not among the tables", sql);
    }
  }
  if (a.normalized.size() > kMaxNormalizedBytes) Fail("normalized text too long", sql);

  for (int scope = 0; scope < 2; ++scope) {
    for (bool ddl : {false, true}) {
      const absl::Status v = Verdict(a, scope, ddl);
      if (!v.ok() && v.code() != absl::StatusCode::kInvalidArgument) {
        Fail("Permitted answered other than OK or INVALID_ARGUMENT", sql);
      }
      if (v.ok() && !one) Fail("permitted without exactly one statement", sql);
      if (v.ok() && a.kind == StatementKind::kTransactionControl) {
        Fail("transaction control permitted", sql);
      }
      if (one && v != a.verdicts[scope][ddl ? 1 : 0]) Fail("Permitted is not the verdict", sql);
    }
    if (Verdict(a, scope, false).ok() && !Verdict(a, scope, true).ok()) {
      Fail("the ddl grant refuses what no grant permits", sql);
    }
  }
  for (bool ddl : {false, true}) {
    if (Verdict(a, 0, ddl).ok() && !Verdict(a, 1, ddl).ok()) {
      Fail("ExecuteTransaction refuses what a call alone permits", sql);
    }
  }
}

bool SameVerdicts(const Analysis& a, const Analysis& b) {
  for (int scope = 0; scope < 2; ++scope) {
    for (bool ddl : {false, true}) {
      const absl::Status va = Verdict(a, scope, ddl);
      const absl::Status vb = Verdict(b, scope, ddl);
      // Parse errors name positions, which a prefix moves.
      if (va.code() != vb.code()) return false;
      if (a.parse_error.ok() && va != vb) return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static StatementAnalyzer* const memo = new StatementAnalyzer(
      StatementAnalyzer::Options{.max_memo_bytes = kMemoBytes, .max_text_bytes = kMemoTextBytes});
  const absl::string_view sql(reinterpret_cast<const char*>(data), size);
  const std::shared_ptr<const Analysis> a = AnalyzeOnce(sql);
  if (a == nullptr) Fail("AnalyzeOnce returned null", sql);
  CheckAnalysis(*a, sql);

  // Index candidates: from exactly the texts of one statement that parses.
  absl::StatusOr<std::vector<poolside::sql::TableColumns>> uses =
      poolside::sql::IndexableColumns(sql);
  if (uses.ok() != (a->parse_error.ok() && a->statement_count == 1)) {
    Fail("IndexableColumns disagrees with the analysis on what parses", sql);
  }
  if (uses.ok()) {
    for (const poolside::sql::TableColumns& t : *uses) {
      if (t.table.empty()) Fail("an index candidate without a table", sql);
      for (const auto& columns : poolside::sql::CandidateIndexes(t)) {
        if (columns.empty() || columns.size() > poolside::sql::kMaxIndexColumns) {
          Fail("a candidate index without columns or with too many", sql);
        }
      }
    }
  }

  // libpg_query's splitter agrees on a single statement.
  if (a->parse_error.ok()) {
    const int split = SplitCount(std::string(sql));
    if (a->statement_count == 1 && split != 1) {
      Fail("one statement, but pg_query_split_with_parser disagrees", sql);
    }
    if (split < 0) Fail("parsed, but pg_query_split_with_parser refuses it", sql);
  }

  // The normalized text hides every literal and is valid UTF-8.
  if (!a->normalized.empty() && a->normalized.size() < kMaxNormalizedBytes) {
    if (HoldsLiteral(a->normalized)) Fail("a literal survived normalization", sql);
  }
  if (!ValidUtf8(a->normalized)) Fail("normalized text is not valid UTF-8", sql);

  // Hostile wrappings change nothing: a leading semicolon always, and one of
  // a leading comment, a leading line comment or a trailing semicolon.
  const std::string others[] = {absl::StrCat("/* c */ ", sql), absl::StrCat("-- c\n", sql),
                                absl::StrCat(sql, "\n;")};
  for (const std::string& disguised : {absl::StrCat(";", sql), others[size % 3]}) {
    const std::shared_ptr<const Analysis> d = AnalyzeOnce(disguised);
    CheckAnalysis(*d, disguised);
    if (d->parse_error.ok() != a->parse_error.ok() || d->statement_count != a->statement_count ||
        d->kind != a->kind || d->fingerprint != a->fingerprint || !SameVerdicts(*a, *d)) {
      Fail("a leading semicolon, comment or a trailing semicolon changed the analysis", sql);
    }
  }

  // The memo answers what AnalyzeOnce does, the same analysis on a hit.
  const std::shared_ptr<const Analysis> m1 = memo->Analyze(sql);
  const std::shared_ptr<const Analysis> m2 = memo->Analyze(sql);
  if (m1->statement_count != a->statement_count || m1->kind != a->kind ||
      m1->normalized != a->normalized || m1->fingerprint != a->fingerprint ||
      m1->tables != a->tables || !SameVerdicts(*a, *m1)) {
    Fail("the memo's analysis differs from AnalyzeOnce's", sql);
  }
  if (sql.size() <= kMemoTextBytes && m1.get() != m2.get()) Fail("a memo miss right after", sql);
  if (sql.size() > kMemoTextBytes && m1.get() == m2.get()) Fail("a long text was memoized", sql);
  if (memo->memo_bytes() > kMemoBytes) Fail("the memo outgrew its byte bound", sql);
  return 0;
}
