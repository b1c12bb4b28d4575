#include "common/sql/statement_analyzer.h"

#include <pg_query.h>

#include <algorithm>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/hash/fnv1a.h"
#include "common/sql/pg_query.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/message.h"

namespace poolside::sql {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using NodeList = google::protobuf::RepeatedPtrField<pg_query::Node>;

// ---------------------------------------------------------------------------
// Functions refused in every scope, matched on the last component of the
// name as the parser resolved it (unquoted names are lower-cased, quoted ones
// kept: "SET_CONFIG" is another function), whatever schema qualifies it.
// set_config has its own rules (CheckSetConfig). Each reason completes "<the
// name as written> ...".

constexpr absl::string_view kRunsSql =
    "runs SQL text that poolside cannot check; send the query itself";
constexpr absl::string_view kSessionLock =
    "works on session-level advisory locks, which outlive the call on a pooled "
    "connection; use pg_advisory_xact_lock inside ExecuteTransaction";
constexpr absl::string_view kReseeds =
    "reseeds random() for every later caller of a pooled connection";
constexpr absl::string_view kLastSequenceValue =
    "reads the session's last sequence value, which on a pooled connection may be another "
    "caller's (a nextval, or a serial column's default, of an earlier call); take the value "
    "from nextval or INSERT ... RETURNING instead";
constexpr absl::string_view kServerFiles = "reads or writes the database server's files";
constexpr absl::string_view kLargeObjects =
    "works on large objects (server files, session descriptors); keep the data in "
    "tables";
constexpr absl::string_view kSignals =
    "signals other server processes (poolside's own connections among them)";
constexpr absl::string_view kNotify =
    "notifies other sessions (poolside's cache invalidation channel among them)";
constexpr absl::string_view kServerState = "changes the database server's state";
constexpr absl::string_view kReplication = "changes the server's replication state";
constexpr absl::string_view kStats = "resets the server's statistics";
constexpr absl::string_view kRemote =
    "opens connections to other databases (dblink), kept in the session of a "
    "pooled connection";
constexpr absl::string_view kHypothetical =
    "works on hypothetical indexes (HypoPG), session state of a pooled connection";

struct RefusedFunction {
  absl::string_view name;
  absl::string_view why;
};

constexpr RefusedFunction kRefusedFunctions[] = {
    // Session state.
    {"setseed", kReseeds},
    {"lastval", kLastSequenceValue},
    {"currval", kLastSequenceValue},
    {"pg_advisory_lock", kSessionLock},
    {"pg_advisory_lock_shared", kSessionLock},
    {"pg_try_advisory_lock", kSessionLock},
    {"pg_try_advisory_lock_shared", kSessionLock},
    {"pg_advisory_unlock", kSessionLock},
    {"pg_advisory_unlock_shared", kSessionLock},
    {"pg_advisory_unlock_all", kSessionLock},
    // SQL given as text (or a cursor of the session).
    {"ts_rewrite", kRunsSql},
    {"ts_stat", kRunsSql},
    {"connectby", kRunsSql},  // tablefunc
    // Server files (also adminpack's).
    {"pg_read_file", kServerFiles},
    {"pg_read_binary_file", kServerFiles},
    {"pg_stat_file", kServerFiles},
    {"pg_logdir_ls", kServerFiles},
    // Large objects: the prefix lo_ covers them in calls; the names are listed
    // for column notation, where the prefix is not applied (see below).
    {"lo_close", kLargeObjects},
    {"lo_creat", kLargeObjects},
    {"lo_create", kLargeObjects},
    {"lo_export", kLargeObjects},
    {"lo_from_bytea", kLargeObjects},
    {"lo_get", kLargeObjects},
    {"lo_import", kLargeObjects},
    {"lo_lseek", kLargeObjects},
    {"lo_lseek64", kLargeObjects},
    {"lo_open", kLargeObjects},
    {"lo_put", kLargeObjects},
    {"lo_tell", kLargeObjects},
    {"lo_tell64", kLargeObjects},
    {"lo_truncate", kLargeObjects},
    {"lo_truncate64", kLargeObjects},
    {"lo_unlink", kLargeObjects},
    {"loread", kLargeObjects},
    {"lowrite", kLargeObjects},
    // Other sessions and processes.
    {"pg_cancel_backend", kSignals},
    {"pg_terminate_backend", kSignals},
    {"pg_notify", kNotify},
    // Server state.
    {"pg_reload_conf", kServerState},
    {"pg_rotate_logfile", kServerState},
    {"pg_logfile_rotate", kServerState},  // adminpack
    {"pg_switch_wal", kServerState},
    {"pg_switch_xlog", kServerState},
    {"pg_create_restore_point", kServerState},
    {"pg_backup_start", kServerState},
    {"pg_backup_stop", kServerState},
    {"pg_start_backup", kServerState},
    {"pg_stop_backup", kServerState},
    {"pg_promote", kServerState},
    {"pg_wal_replay_pause", kServerState},
    {"pg_wal_replay_resume", kServerState},
    {"pg_log_backend_memory_contexts", kServerState},
    {"pg_import_system_collations", kServerState},
    // Replication.
    {"pg_logical_emit_message", kReplication},
    {"pg_create_physical_replication_slot", kReplication},
    {"pg_create_logical_replication_slot", kReplication},
    {"pg_copy_physical_replication_slot", kReplication},
    {"pg_copy_logical_replication_slot", kReplication},
    {"pg_drop_replication_slot", kReplication},
    {"pg_replication_slot_advance", kReplication},
    // Statistics.
    {"pg_stat_statements_reset", kStats},
};

struct RefusedPrefix {
  absl::string_view prefix;
  absl::string_view why;
  // Whether `x.name` / `(expr).name` with such a name is refused too (it
  // calls name(x) when no column of that name exists). Not for lo_, a common
  // start of column names: its functions are listed by name above.
  bool column_notation;
};

constexpr RefusedPrefix kRefusedFunctionPrefixes[] = {
    {"dblink", kRemote, true},
    {"query_to_xml", kRunsSql, true},  // query_to_xml, _xmlschema, _and_xmlschema
    {"cursor_to_xml", kRunsSql, true},
    {"table_to_xml", kRunsSql, true},
    {"schema_to_xml", kRunsSql, true},
    {"database_to_xml", kRunsSql, true},
    {"crosstab", kRunsSql, true},  // tablefunc
    {"lo_", kLargeObjects, false},
    {"pg_ls_", kServerFiles, true},
    {"pg_file_", kServerFiles, true},  // adminpack: pg_file_write, _rename, _unlink, _sync
    {"pg_replication_origin_", kReplication, true},
    {"pg_logical_slot_", kReplication, true},  // get/peek (binary) changes
    {"pg_stat_reset", kStats, true},
    {"hypopg", kHypothetical, true},
};

// Functions whose effects end with the transaction: allowed, but a statement
// calling them never shares an implicit transaction with other callers'.
constexpr absl::string_view kTransactionScopedFunctions[] = {
    "set_config",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
};

std::optional<absl::string_view> RefusedFunctionReason(absl::string_view name,
                                                       bool column_notation) {
  for (const RefusedFunction& f : kRefusedFunctions) {
    if (f.name == name) return f.why;
  }
  for (const RefusedPrefix& p : kRefusedFunctionPrefixes) {
    if ((!column_notation || p.column_notation) && absl::StartsWith(name, p.prefix)) {
      return p.why;
    }
  }
  return std::nullopt;
}

// Settings that SET LOCAL and set_config(..., true) may not change although
// the change ends with the transaction; nullopt for the others. `name` is
// lower-cased (setting names are case-insensitive).
std::optional<absl::string_view> RefusedSettingReason(absl::string_view name) {
  if (name == "role" || name == "session_authorization") {
    return "changes the database role of the session; each principal runs under its "
           "own role";
  }
  if (name == "transaction_isolation" || name == "transaction_read_only" ||
      name == "transaction_deferrable") {
    return "changes the transaction poolside runs; use ExecuteTransaction's isolation "
           "and read_only";
  }
  if (name == "seed") return kReseeds;
  // The analyzer reads every text as libpg_query does: UTF-8 with
  // standard_conforming_strings on. A server reading backslashes in ''
  // strings as escapes, or the bytes in another encoding (SJIS, BIG5, GBK:
  // a trailing byte 0x5C), ends a literal elsewhere and runs a statement the
  // analyzer never saw. (SET NAMES is client_encoding.)
  if (name == "standard_conforming_strings" || name == "client_encoding") {
    return "changes how PostgreSQL reads the text of later statements, which poolside "
           "checks as UTF-8 with standard_conforming_strings on";
  }
  return std::nullopt;
}

// Settings refused for the reason above, which SET without LOCAL leaves to
// its own (more general) refusal.
bool ChangesTextReading(absl::string_view name) {
  return name == "standard_conforming_strings" || name == "client_encoding";
}

// A search_path naming pg_temp (or pg_temp_N) resolves names to temporary
// objects first. Matched case-insensitively anywhere in the value: unquoted
// schema names in a search_path are case-folded, and a false match only
// refuses a statement.
bool NamesTempSchemaInPath(absl::string_view value) {
  return absl::StrContains(absl::AsciiStrToLower(value), "pg_temp");
}

bool IsTempSchema(absl::string_view schema) {
  return schema == "pg_temp" || absl::StartsWith(schema, "pg_temp_");
}

constexpr int kCursorOptHold = 0x0020;  // CURSOR_OPT_HOLD, PostgreSQL's parsenodes.h

// ---------------------------------------------------------------------------
// Text checks.

// Offset of the first byte of `s` that is not part of well-formed UTF-8
// (RFC 3629: no overlong forms, surrogates or code points above U+10FFFF),
// or npos.
size_t InvalidUtf8Offset(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c == 0xE0) {
      len = 3, lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      len = 3;
    } else if (c == 0xED) {
      len = 3, hi = 0x9F;
    } else if (c == 0xF0) {
      len = 4, lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      len = 4;
    } else if (c == 0xF4) {
      len = 4, hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return absl::string_view::npos;
}

// The longest prefix of `s` of at most `max` bytes that ends on a character
// boundary (`s` is valid UTF-8).
absl::string_view TruncateUtf8(absl::string_view s, size_t max) {
  if (s.size() <= max) return s;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return s.substr(0, end);
}

// Error messages quote the text near the error; they stay bounded.
constexpr size_t kMaxMessageBytes = 512;

absl::Status TextError(absl::string_view message) {
  absl::string_view bounded = TruncateUtf8(message, kMaxMessageBytes);
  return absl::InvalidArgumentError(bounded.size() < message.size() ? absl::StrCat(bounded, "...")
                                                                    : std::string(bounded));
}

// ---------------------------------------------------------------------------
// libpg_query results, each freed with its own function.

template <typename Result, void (*Free)(Result)>
class PgQuery {
 public:
  explicit PgQuery(Result result) : result_(result) {}
  ~PgQuery() { Free(result_); }
  PgQuery(const PgQuery&) = delete;
  PgQuery& operator=(const PgQuery&) = delete;
  const Result* operator->() const { return &result_; }

 private:
  Result result_;
};

using ProtobufParse = PgQuery<PgQueryProtobufParseResult, pg_query_free_protobuf_parse_result>;
using Scan = PgQuery<PgQueryScanResult, pg_query_free_scan_result>;
using Normalize = PgQuery<PgQueryNormalizeResult, pg_query_free_normalize_result>;
using Fingerprint = PgQuery<PgQueryFingerprintResult, pg_query_free_fingerprint_result>;

// PostgreSQL's raw parser reports its errors as syntax errors: the SQLSTATE
// is said as PostgreSQL would say it.
absl::Status ParserError(const PgQueryError& error) {
  const char* message = error.message != nullptr ? error.message : "syntax error";
  if (error.cursorpos > 0) {
    return TextError(
        absl::StrCat(message, " (at character ", error.cursorpos, ") (SQLSTATE 42601)"));
  }
  return TextError(absl::StrCat(message, " (SQLSTATE 42601)"));
}

// ---------------------------------------------------------------------------
// Nesting.
//
// libpg_query converts a parse tree (and normalizes and fingerprints it)
// recursively, as protobuf parses and frees it: a text nested deeply enough
// exhausts any thread's stack (a chain of 100,000 "+1" does in 8 MiB). The
// grammar bounds bracketed nesting (its stack holds 10,000 entries), but
// left-recursive chains (a + b + ..., x::t::t..., JOIN ... JOIN, UNION ...)
// nest without bound. So a text is refused before parsing when an upper bound
// of its nesting, computed from its tokens, is above kMaxNesting.
//
// The bound: the grammar builds lists flat (comma-separated items, AND/OR
// chains, CASE branches, statements), and within one list element nests at
// most one level per token that is not a name, a literal or a separator; each
// bracket ((, [, CASE...END, BEGIN...END) nests one more. A query (SELECT,
// VALUES) counts kQueryWeight levels and a set operation half that: each
// nests several tree nodes, and libpg_query's normalization takes time
// quadratic in the nesting of queries. Every counted level takes at least one
// byte of text, so a text shorter than kMaxNesting bytes is within the bound
// without scanning. Mismatched brackets cannot lower the bound for a text
// that parses.
constexpr int kMaxNesting = kMaxNestingDepth;
constexpr int kQueryWeight = 4;
// Parse tree messages per level of the bound, at most, plus the statement's
// own; a deeper tree is refused rather than parsed (protobuf recurses too).
constexpr int kMaxMessageDepth = 4 * kMaxNesting + 100;

int NestingBound(const pg_query::ScanResult& scan) {
  struct Frame {
    int opener;
    int current = 0;  // counted tokens in the current list element
    int child = 0;    // deepest bracket in the current list element
    int best = 0;     // deepest list element so far
    int setops = 0;   // UNION / INTERSECT / EXCEPT so far, weighted
    int lists = 0;    // list levels (BoolExpr, CaseExpr + CaseWhen)
  };
  std::vector<Frame> frames(1, Frame{0});
  auto close_element = [](Frame& f) {
    f.best = std::max(f.best, f.current + f.child + f.setops);
    f.current = 0;
    f.child = 0;
  };
  auto pop = [&]() {
    Frame& f = frames.back();
    close_element(f);
    const int depth = f.best + f.lists + 1;
    frames.pop_back();
    frames.back().child = std::max(frames.back().child, depth);
  };
  for (const pg_query::ScanToken& token : scan.tokens()) {
    const int t = token.token();
    switch (t) {
      case pg_query::ASCII_40:  // (
      case pg_query::ASCII_91:  // [
      case pg_query::CASE:
      case pg_query::BEGIN_P:
        frames.push_back(Frame{t});
        break;
      case pg_query::ASCII_41:  // )
        if (frames.size() > 1 && frames.back().opener == pg_query::ASCII_40) pop();
        break;
      case pg_query::ASCII_93:  // ]
        if (frames.size() > 1 && frames.back().opener == pg_query::ASCII_91) pop();
        break;
      case pg_query::END_P:
        if (frames.size() > 1 &&
            (frames.back().opener == pg_query::CASE || frames.back().opener == pg_query::BEGIN_P)) {
          pop();
        }
        break;
      case pg_query::ASCII_44:  // ,
        close_element(frames.back());
        break;
      case pg_query::ASCII_59:  // ;
        close_element(frames.back());
        frames.back().setops = 0;
        break;
      case pg_query::AND:
      case pg_query::OR:
      case pg_query::WHEN:
      case pg_query::THEN:
      case pg_query::ELSE:
        close_element(frames.back());
        frames.back().lists = 2;
        break;
      case pg_query::UNION:
      case pg_query::INTERSECT:
      case pg_query::EXCEPT:
        close_element(frames.back());
        frames.back().setops += kQueryWeight / 2;
        break;
      case pg_query::SELECT:
      case pg_query::VALUES:
        frames.back().current += kQueryWeight;
        break;
      case pg_query::IDENT:
      case pg_query::UIDENT:
      case pg_query::FCONST:
      case pg_query::SCONST:
      case pg_query::USCONST:
      case pg_query::BCONST:
      case pg_query::XCONST:
      case pg_query::ICONST:
      case pg_query::PARAM:
      case pg_query::SQL_COMMENT:
      case pg_query::C_COMMENT:
      case pg_query::ASCII_46:  // . (qualified names are flat lists)
        break;
      default:
        ++frames.back().current;
        break;
    }
  }
  while (frames.size() > 1) pop();
  close_element(frames[0]);
  return frames[0].best + frames[0].lists;
}

// OK, or the error to report instead of parsing `sql` (NUL-terminated).
absl::Status CheckNesting(const std::string& sql) {
  if (sql.size() < static_cast<size_t>(kMaxNesting)) return absl::OkStatus();
  Scan scan(pg_query_scan(sql.c_str()));
  // A text the scanner rejects is not parsed further than the scanner got:
  // the parser fails there, before building any output.
  if (scan->error != nullptr) return absl::OkStatus();
  pg_query::ScanResult tokens;
  if (!tokens.ParseFromArray(scan->pbuf.data, static_cast<int>(scan->pbuf.len))) {
    return absl::InternalError("libpg_query returned a scan result that does not parse");
  }
  const int bound = NestingBound(tokens);
  if (bound > kMaxNesting) {
    return absl::InvalidArgumentError(
        absl::StrCat("statement nested too deeply: up to ", bound,
                     " levels of operators, brackets or set operations (at most ", kMaxNesting,
                     "); split the expression or the statement"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Names.

// The components of a name list (funcname, operator name, ...) if all are
// String nodes.
bool NameParts(const NodeList& list, std::vector<absl::string_view>* parts) {
  parts->clear();
  for (const pg_query::Node& n : list) {
    if (n.node_case() != pg_query::Node::kString) return false;
    parts->push_back(n.string().sval());
  }
  return !parts->empty();
}

std::string JoinName(const NodeList& list) {
  std::vector<absl::string_view> parts;
  NameParts(list, &parts);
  return absl::StrJoin(parts, ".");
}

std::string RangeVarName(const pg_query::RangeVar& rv) {
  std::string name;
  for (const std::string* part : {&rv.catalogname(), &rv.schemaname(), &rv.relname()}) {
    if (part->empty()) continue;
    if (!name.empty()) name.push_back('.');
    name += *part;
  }
  return name;
}

bool IsTempRangeVar(const pg_query::RangeVar& rv) {
  return rv.relpersistence() == "t" || IsTempSchema(rv.schemaname());
}

// "TABLE", "MATERIALIZED VIEW", ... for messages.
std::string ObjectTypeName(pg_query::ObjectType type) {
  switch (type) {
    case pg_query::OBJECT_MATVIEW:
      return "MATERIALIZED VIEW";
    case pg_query::OBJECT_FDW:
      return "FOREIGN DATA WRAPPER";
    case pg_query::OBJECT_FOREIGN_SERVER:
      return "SERVER";
    case pg_query::OBJECT_LARGEOBJECT:
      return "LARGE OBJECT";
    case pg_query::OBJECT_OPCLASS:
      return "OPERATOR CLASS";
    case pg_query::OBJECT_OPFAMILY:
      return "OPERATOR FAMILY";
    case pg_query::OBJECT_STATISTIC_EXT:
      return "STATISTICS";
    case pg_query::OBJECT_TABCONSTRAINT:
    case pg_query::OBJECT_DOMCONSTRAINT:
      return "CONSTRAINT";
    case pg_query::OBJECT_TSCONFIGURATION:
      return "TEXT SEARCH CONFIGURATION";
    case pg_query::OBJECT_TSDICTIONARY:
      return "TEXT SEARCH DICTIONARY";
    case pg_query::OBJECT_TSPARSER:
      return "TEXT SEARCH PARSER";
    case pg_query::OBJECT_TSTEMPLATE:
      return "TEXT SEARCH TEMPLATE";
    case pg_query::OBJECT_DEFACL:
      return "DEFAULT PRIVILEGES";
    case pg_query::OBJECT_PARAMETER_ACL:
      return "PARAMETER";
    case pg_query::OBJECT_PUBLICATION_NAMESPACE:
    case pg_query::OBJECT_PUBLICATION_REL:
      return "PUBLICATION";
    default:
      break;
  }
  std::string name = pg_query::ObjectType_Name(type);
  if (absl::StartsWith(name, "OBJECT_")) name.erase(0, 7);
  std::replace(name.begin(), name.end(), '_', ' ');
  return name;
}

// ---------------------------------------------------------------------------
// What each parse tree message type is to the walk.

enum class Handler : uint8_t {
  kChildren,  // nothing of its own: visit its fields
  // Expressions and clauses.
  kFuncCall,
  kRangeVar,
  kAExpr,
  kSubLink,
  kSortBy,
  kCaseExpr,
  kJoinExpr,
  kColumnRef,
  kAIndirection,
  kLockingClause,
  // Statements.
  kPlain,  // nothing to check
  kSelect,
  kDml,
  kTruncate,
  kCopy,
  kExplain,
  kCreateTableAs,
  kCreateTable,
  kCreateView,
  kCreateSequence,
  kVariableSet,
  kTransaction,
  kSessionState,  // refused in every scope
  kCursor,        // FETCH / MOVE / CLOSE: only inside a transaction
  kDeclare,
  kLock,
  kNeedsDdl,
  kCreateFunction,
  kDefine,
  kAlterObject,  // RENAME / OWNER / SET SCHEMA / DEPENDS: by object type
  kTempName,     // CREATE TYPE / DOMAIN / ... : refused in pg_temp
};

struct TypeInfo {
  Handler handler = Handler::kChildren;
  StatementKind kind = StatementKind::kUtility;
  absl::string_view command;
  // For kNeedsDdl: completes "<command> needs the ddl grant: it ...".
  absl::string_view why;
  const FieldDescriptor* with_clause = nullptr;
  const FieldDescriptor* relation = nullptr;  // kDml's target
};

constexpr absl::string_view kRunsCode = "runs code poolside cannot check";
constexpr absl::string_view kDefinesCode = "defines code that other statements run later";
constexpr absl::string_view kChangesSettings = "changes settings of later sessions";

struct TypeRow {
  const char* type;
  Handler handler;
  StatementKind kind;
  const char* command;
  absl::string_view why = {};
};

using K = StatementKind;
using H = Handler;

const TypeRow kTypeRows[] = {
    {"FuncCall", H::kFuncCall, K::kInvalid, ""},
    {"RangeVar", H::kRangeVar, K::kInvalid, ""},
    {"A_Expr", H::kAExpr, K::kInvalid, ""},
    {"SubLink", H::kSubLink, K::kInvalid, ""},
    {"SortBy", H::kSortBy, K::kInvalid, ""},
    {"CaseExpr", H::kCaseExpr, K::kInvalid, ""},
    {"JoinExpr", H::kJoinExpr, K::kInvalid, ""},
    {"ColumnRef", H::kColumnRef, K::kInvalid, ""},
    {"A_Indirection", H::kAIndirection, K::kInvalid, ""},
    {"LockingClause", H::kLockingClause, K::kInvalid, ""},

    {"SelectStmt", H::kSelect, K::kRead, "SELECT"},
    {"InsertStmt", H::kDml, K::kWrite, "INSERT"},
    {"UpdateStmt", H::kDml, K::kWrite, "UPDATE"},
    {"DeleteStmt", H::kDml, K::kWrite, "DELETE"},
    {"MergeStmt", H::kDml, K::kWrite, "MERGE"},
    {"TruncateStmt", H::kTruncate, K::kWrite, "TRUNCATE"},
    {"CopyStmt", H::kCopy, K::kUtility, "COPY"},
    {"ExplainStmt", H::kExplain, K::kRead, "EXPLAIN"},
    {"VariableShowStmt", H::kPlain, K::kRead, "SHOW"},

    {"TransactionStmt", H::kTransaction, K::kTransactionControl, "BEGIN"},
    {"VariableSetStmt", H::kVariableSet, K::kSession, "SET"},
    {"DiscardStmt", H::kSessionState, K::kSession, "DISCARD"},
    {"ListenStmt", H::kSessionState, K::kSession, "LISTEN"},
    {"UnlistenStmt", H::kSessionState, K::kSession, "UNLISTEN"},
    {"PrepareStmt", H::kSessionState, K::kSession, "PREPARE"},
    {"ExecuteStmt", H::kSessionState, K::kSession, "EXECUTE"},
    {"DeallocateStmt", H::kSessionState, K::kSession, "DEALLOCATE"},
    {"LoadStmt", H::kSessionState, K::kSession, "LOAD"},
    {"DeclareCursorStmt", H::kDeclare, K::kSession, "DECLARE"},
    {"FetchStmt", H::kCursor, K::kSession, "FETCH"},
    {"ClosePortalStmt", H::kCursor, K::kSession, "CLOSE"},

    {"NotifyStmt", H::kSessionState, K::kUtility, "NOTIFY"},
    {"LockStmt", H::kLock, K::kUtility, "LOCK"},
    {"DoStmt", H::kNeedsDdl, K::kUtility, "DO", kRunsCode},
    {"CallStmt", H::kNeedsDdl, K::kUtility, "CALL", kRunsCode},
    {"VacuumStmt", H::kPlain, K::kUtility, "VACUUM"},
    {"ClusterStmt", H::kPlain, K::kUtility, "CLUSTER"},
    {"ReindexStmt", H::kPlain, K::kUtility, "REINDEX"},
    {"CheckPointStmt", H::kPlain, K::kUtility, "CHECKPOINT"},
    {"RefreshMatViewStmt", H::kPlain, K::kUtility, "REFRESH MATERIALIZED VIEW"},
    {"ConstraintsSetStmt", H::kPlain, K::kUtility, "SET CONSTRAINTS"},
    {"ReturnStmt", H::kPlain, K::kUtility, "RETURN"},
    {"PLAssignStmt", H::kPlain, K::kUtility, "assignment"},

    {"CreateTableAsStmt", H::kCreateTableAs, K::kDdl, "CREATE TABLE AS"},
    {"CreateStmt", H::kCreateTable, K::kDdl, "CREATE TABLE"},
    {"ViewStmt", H::kCreateView, K::kDdl, "CREATE VIEW"},
    {"CreateSeqStmt", H::kCreateSequence, K::kDdl, "CREATE SEQUENCE"},
    {"CreateFunctionStmt", H::kCreateFunction, K::kDdl, "CREATE FUNCTION", kDefinesCode},
    {"AlterFunctionStmt", H::kNeedsDdl, K::kDdl, "ALTER FUNCTION", kDefinesCode},
    {"CreateTrigStmt", H::kNeedsDdl, K::kDdl, "CREATE TRIGGER", kDefinesCode},
    {"RuleStmt", H::kNeedsDdl, K::kDdl, "CREATE RULE", kDefinesCode},
    {"CreateEventTrigStmt", H::kNeedsDdl, K::kDdl, "CREATE EVENT TRIGGER", kDefinesCode},
    {"AlterEventTrigStmt", H::kNeedsDdl, K::kDdl, "ALTER EVENT TRIGGER", kDefinesCode},
    {"CreateExtensionStmt", H::kNeedsDdl, K::kDdl, "CREATE EXTENSION", kDefinesCode},
    {"AlterExtensionStmt", H::kNeedsDdl, K::kDdl, "ALTER EXTENSION", kDefinesCode},
    {"AlterExtensionContentsStmt", H::kNeedsDdl, K::kDdl, "ALTER EXTENSION", kDefinesCode},
    {"CreatePLangStmt", H::kNeedsDdl, K::kDdl, "CREATE LANGUAGE", kDefinesCode},
    {"CreateTransformStmt", H::kNeedsDdl, K::kDdl, "CREATE TRANSFORM", kDefinesCode},
    {"CreateCastStmt", H::kNeedsDdl, K::kDdl, "CREATE CAST", kDefinesCode},
    {"AlterOperatorStmt", H::kNeedsDdl, K::kDdl, "ALTER OPERATOR", kDefinesCode},
    {"AlterRoleSetStmt", H::kNeedsDdl, K::kDdl, "ALTER ROLE", kChangesSettings},
    {"AlterDatabaseSetStmt", H::kNeedsDdl, K::kDdl, "ALTER DATABASE", kChangesSettings},
    {"AlterSystemStmt", H::kNeedsDdl, K::kDdl, "ALTER SYSTEM",
     "changes the database server's configuration"},
    {"DefineStmt", H::kDefine, K::kDdl, "CREATE"},
    {"RenameStmt", H::kAlterObject, K::kDdl, "ALTER"},
    {"AlterOwnerStmt", H::kAlterObject, K::kDdl, "ALTER"},
    {"AlterObjectSchemaStmt", H::kAlterObject, K::kDdl, "ALTER"},
    {"AlterObjectDependsStmt", H::kAlterObject, K::kDdl, "ALTER"},
    {"CompositeTypeStmt", H::kTempName, K::kDdl, "CREATE TYPE"},
    {"CreateEnumStmt", H::kTempName, K::kDdl, "CREATE TYPE"},
    {"CreateRangeStmt", H::kTempName, K::kDdl, "CREATE TYPE"},
    {"CreateDomainStmt", H::kTempName, K::kDdl, "CREATE DOMAIN"},
    {"CreateConversionStmt", H::kTempName, K::kDdl, "CREATE CONVERSION"},
    {"CreateStatsStmt", H::kTempName, K::kDdl, "CREATE STATISTICS"},

    {"AlterTableStmt", H::kPlain, K::kDdl, "ALTER TABLE"},
    {"AlterDomainStmt", H::kPlain, K::kDdl, "ALTER DOMAIN"},
    {"GrantStmt", H::kPlain, K::kDdl, "GRANT"},
    {"GrantRoleStmt", H::kPlain, K::kDdl, "GRANT"},
    {"AlterDefaultPrivilegesStmt", H::kPlain, K::kDdl, "ALTER DEFAULT PRIVILEGES"},
    {"DropStmt", H::kPlain, K::kDdl, "DROP"},
    {"CommentStmt", H::kPlain, K::kDdl, "COMMENT"},
    {"IndexStmt", H::kPlain, K::kDdl, "CREATE INDEX"},
    {"CreatedbStmt", H::kPlain, K::kDdl, "CREATE DATABASE"},
    {"DropdbStmt", H::kPlain, K::kDdl, "DROP DATABASE"},
    {"AlterSeqStmt", H::kPlain, K::kDdl, "ALTER SEQUENCE"},
    {"CreateRoleStmt", H::kPlain, K::kDdl, "CREATE ROLE"},
    {"AlterRoleStmt", H::kPlain, K::kDdl, "ALTER ROLE"},
    {"DropRoleStmt", H::kPlain, K::kDdl, "DROP ROLE"},
    {"CreateSchemaStmt", H::kPlain, K::kDdl, "CREATE SCHEMA"},
    {"AlterDatabaseStmt", H::kPlain, K::kDdl, "ALTER DATABASE"},
    {"AlterDatabaseRefreshCollStmt", H::kPlain, K::kDdl, "ALTER DATABASE"},
    {"CreateOpClassStmt", H::kPlain, K::kDdl, "CREATE OPERATOR CLASS"},
    {"CreateOpFamilyStmt", H::kPlain, K::kDdl, "CREATE OPERATOR FAMILY"},
    {"AlterOpFamilyStmt", H::kPlain, K::kDdl, "ALTER OPERATOR FAMILY"},
    {"CreateTableSpaceStmt", H::kPlain, K::kDdl, "CREATE TABLESPACE"},
    {"DropTableSpaceStmt", H::kPlain, K::kDdl, "DROP TABLESPACE"},
    {"AlterTableSpaceOptionsStmt", H::kPlain, K::kDdl, "ALTER TABLESPACE"},
    {"AlterTableMoveAllStmt", H::kPlain, K::kDdl, "ALTER TABLE"},
    {"AlterTypeStmt", H::kPlain, K::kDdl, "ALTER TYPE"},
    {"AlterEnumStmt", H::kPlain, K::kDdl, "ALTER TYPE"},
    {"DropOwnedStmt", H::kPlain, K::kDdl, "DROP OWNED"},
    {"ReassignOwnedStmt", H::kPlain, K::kDdl, "REASSIGN OWNED"},
    {"AlterTSDictionaryStmt", H::kPlain, K::kDdl, "ALTER TEXT SEARCH DICTIONARY"},
    {"AlterTSConfigurationStmt", H::kPlain, K::kDdl, "ALTER TEXT SEARCH CONFIGURATION"},
    {"CreateFdwStmt", H::kPlain, K::kDdl, "CREATE FOREIGN DATA WRAPPER"},
    {"AlterFdwStmt", H::kPlain, K::kDdl, "ALTER FOREIGN DATA WRAPPER"},
    {"CreateForeignServerStmt", H::kPlain, K::kDdl, "CREATE SERVER"},
    {"AlterForeignServerStmt", H::kPlain, K::kDdl, "ALTER SERVER"},
    {"CreateUserMappingStmt", H::kPlain, K::kDdl, "CREATE USER MAPPING"},
    {"AlterUserMappingStmt", H::kPlain, K::kDdl, "ALTER USER MAPPING"},
    {"DropUserMappingStmt", H::kPlain, K::kDdl, "DROP USER MAPPING"},
    {"SecLabelStmt", H::kPlain, K::kDdl, "SECURITY LABEL"},
    {"CreateForeignTableStmt", H::kPlain, K::kDdl, "CREATE FOREIGN TABLE"},
    {"ImportForeignSchemaStmt", H::kPlain, K::kDdl, "IMPORT FOREIGN SCHEMA"},
    {"CreatePolicyStmt", H::kPlain, K::kDdl, "CREATE POLICY"},
    {"AlterPolicyStmt", H::kPlain, K::kDdl, "ALTER POLICY"},
    {"CreateAmStmt", H::kPlain, K::kDdl, "CREATE ACCESS METHOD"},
    {"CreatePublicationStmt", H::kPlain, K::kDdl, "CREATE PUBLICATION"},
    {"AlterPublicationStmt", H::kPlain, K::kDdl, "ALTER PUBLICATION"},
    {"CreateSubscriptionStmt", H::kPlain, K::kDdl, "CREATE SUBSCRIPTION"},
    {"AlterSubscriptionStmt", H::kPlain, K::kDdl, "ALTER SUBSCRIPTION"},
    {"DropSubscriptionStmt", H::kPlain, K::kDdl, "DROP SUBSCRIPTION"},
    {"AlterStatsStmt", H::kPlain, K::kDdl, "ALTER STATISTICS"},
    {"AlterCollationStmt", H::kPlain, K::kDdl, "ALTER COLLATION"},
    {"ReplicaIdentityStmt", H::kPlain, K::kDdl, "ALTER TABLE"},
};

class TypeTable {
 public:
  static const TypeTable& Get() {
    static const TypeTable* const table = new TypeTable();
    return *table;
  }

  // nullptr for a type with no entry (visit its fields).
  const TypeInfo* Find(const Descriptor* type) const {
    auto it = types_.find(type);
    return it == types_.end() ? nullptr : &it->second;
  }

  const Descriptor* node() const { return node_; }
  const google::protobuf::OneofDescriptor* node_oneof() const { return node_oneof_; }

 private:
  TypeTable() {
    node_ = pg_query::Node::descriptor();
    node_oneof_ = node_->oneof_decl(0);
    const google::protobuf::FileDescriptor* file = node_->file();
    for (const TypeRow& row : kTypeRows) {
      const Descriptor* type = file->FindMessageTypeByName(row.type);
      if (type == nullptr) continue;  // not in this libpg_query's tree
      TypeInfo& info = types_[type];
      info.handler = row.handler;
      info.kind = row.kind;
      info.command = row.command;
      info.why = row.why;
      info.with_clause = type->FindFieldByName("with_clause");
      if (row.handler == Handler::kDml) info.relation = type->FindFieldByName("relation");
    }
  }

  const Descriptor* node_ = nullptr;
  const google::protobuf::OneofDescriptor* node_oneof_ = nullptr;
  absl::flat_hash_map<const Descriptor*, TypeInfo> types_;
};

// ---------------------------------------------------------------------------
// Commands.

pg_query::ObjectType AlteredObjectType(const Message& m) {
  const absl::string_view type = m.GetDescriptor()->name();
  if (type == "RenameStmt") return static_cast<const pg_query::RenameStmt&>(m).rename_type();
  if (type == "AlterOwnerStmt") {
    return static_cast<const pg_query::AlterOwnerStmt&>(m).object_type();
  }
  if (type == "AlterObjectSchemaStmt") {
    return static_cast<const pg_query::AlterObjectSchemaStmt&>(m).object_type();
  }
  if (type == "AlterObjectDependsStmt") {
    return static_cast<const pg_query::AlterObjectDependsStmt&>(m).object_type();
  }
  return pg_query::OBJECT_TYPE_UNDEFINED;
}

// The command as a user writes it: "SELECT", "CREATE FUNCTION", "SET", ...
std::string StatementCommand(const Message& m, const TypeInfo& info) {
  const absl::string_view type = m.GetDescriptor()->name();
  if (type == "SelectStmt") {
    const auto& select = static_cast<const pg_query::SelectStmt&>(m);
    if (select.has_into_clause()) return "SELECT INTO";
    if (select.values_lists_size() > 0) return "VALUES";
    return "SELECT";
  }
  if (type == "TransactionStmt") {
    switch (static_cast<const pg_query::TransactionStmt&>(m).kind()) {
      case pg_query::TRANS_STMT_BEGIN:
        return "BEGIN";
      case pg_query::TRANS_STMT_START:
        return "START TRANSACTION";
      case pg_query::TRANS_STMT_COMMIT:
        return "COMMIT";
      case pg_query::TRANS_STMT_ROLLBACK:
        return "ROLLBACK";
      case pg_query::TRANS_STMT_SAVEPOINT:
        return "SAVEPOINT";
      case pg_query::TRANS_STMT_RELEASE:
        return "RELEASE";
      case pg_query::TRANS_STMT_ROLLBACK_TO:
        return "ROLLBACK TO SAVEPOINT";
      case pg_query::TRANS_STMT_PREPARE:
        return "PREPARE TRANSACTION";
      case pg_query::TRANS_STMT_COMMIT_PREPARED:
        return "COMMIT PREPARED";
      case pg_query::TRANS_STMT_ROLLBACK_PREPARED:
        return "ROLLBACK PREPARED";
      default:
        return "transaction control";
    }
  }
  if (type == "VariableSetStmt") {
    const auto& set = static_cast<const pg_query::VariableSetStmt&>(m);
    if (set.kind() == pg_query::VAR_RESET || set.kind() == pg_query::VAR_RESET_ALL) {
      return "RESET";
    }
    if (set.kind() == pg_query::VAR_SET_MULTI) return absl::StrCat("SET ", set.name());
    if (set.name() == "role") return "SET ROLE";
    if (set.name() == "session_authorization") return "SET SESSION AUTHORIZATION";
    return "SET";
  }
  if (type == "FetchStmt") {
    return static_cast<const pg_query::FetchStmt&>(m).ismove() ? "MOVE" : "FETCH";
  }
  if (type == "CreateFunctionStmt") {
    const auto& create = static_cast<const pg_query::CreateFunctionStmt&>(m);
    return absl::StrCat("CREATE ", create.replace() ? "OR REPLACE " : "",
                        create.is_procedure() ? "PROCEDURE" : "FUNCTION");
  }
  if (type == "AlterFunctionStmt") {
    return absl::StrCat(
        "ALTER ", ObjectTypeName(static_cast<const pg_query::AlterFunctionStmt&>(m).objtype()));
  }
  if (type == "CreateTableAsStmt") {
    const auto& ctas = static_cast<const pg_query::CreateTableAsStmt&>(m);
    if (ctas.is_select_into()) return "SELECT INTO";
    if (ctas.objtype() == pg_query::OBJECT_MATVIEW) return "CREATE MATERIALIZED VIEW";
    return "CREATE TABLE AS";
  }
  if (type == "DefineStmt") {
    return absl::StrCat("CREATE ",
                        ObjectTypeName(static_cast<const pg_query::DefineStmt&>(m).kind()));
  }
  if (type == "RenameStmt" || type == "AlterOwnerStmt" || type == "AlterObjectSchemaStmt" ||
      type == "AlterObjectDependsStmt") {
    return absl::StrCat("ALTER ", ObjectTypeName(AlteredObjectType(m)));
  }
  if (type == "DropStmt") {
    return absl::StrCat("DROP ",
                        ObjectTypeName(static_cast<const pg_query::DropStmt&>(m).remove_type()));
  }
  if (type == "AlterTableStmt") {
    return absl::StrCat("ALTER ",
                        ObjectTypeName(static_cast<const pg_query::AlterTableStmt&>(m).objtype()));
  }
  if (type == "GrantStmt") {
    return static_cast<const pg_query::GrantStmt&>(m).is_grant() ? "GRANT" : "REVOKE";
  }
  if (type == "GrantRoleStmt") {
    return static_cast<const pg_query::GrantRoleStmt&>(m).is_grant() ? "GRANT" : "REVOKE";
  }
  if (type == "VacuumStmt") {
    return static_cast<const pg_query::VacuumStmt&>(m).is_vacuumcmd() ? "VACUUM" : "ANALYZE";
  }
  return std::string(info.command);
}

// The message inside a Node, or nullptr.
const Message* Unwrap(const Message& node) {
  const FieldDescriptor* field =
      node.GetReflection()->GetOneofFieldDescriptor(node, TypeTable::Get().node_oneof());
  return field == nullptr ? nullptr : &node.GetReflection()->GetMessage(node, field);
}

// ---------------------------------------------------------------------------
// The walk over a statement's tree.

// Where a refusal applies.
enum class Applies {
  kEverywhere,
  kAlone,       // only outside ExecuteTransaction
  kWithoutDdl,  // only without the ddl grant
};

struct Finding {
  Applies applies;
  std::string message;
};

// Visits every message of one statement's parse tree (iteratively: the tree
// may be kMaxMessageDepth deep), collecting names, facts and refusals.
class Walker {
 public:
  explicit Walker(const pg_query::Node& statement) : types_(TypeTable::Get()) {
    scopes_.push_back(Scope{-1, {}});
    root_ = Unwrap(statement);
    if (root_ != nullptr) stack_.push_back(Item{root_, 0});
    while (!stack_.empty()) {
      const Item item = stack_.back();
      stack_.pop_back();
      Visit(*item.message, item.scope);
    }
    for (auto* names : {&tables, &written_tables, &functions, &operators}) {
      std::sort(names->begin(), names->end());
      names->erase(std::unique(names->begin(), names->end()), names->end());
    }
  }

  std::vector<std::string> tables, written_tables, functions, operators;
  std::vector<Finding> findings;
  bool locking = false;             // FOR UPDATE / SHARE / ... anywhere
  bool into = false;                // SELECT INTO anywhere
  int dml = 0;                      // INSERT / UPDATE / DELETE / MERGE anywhere
  bool column_notation = false;     // (expr).name, which may call name(expr)
  bool transaction_scoped = false;  // set_config, pg_advisory_xact_lock, ...

 private:
  struct Item {
    const Message* message;
    int scope;
  };
  // CTE names visible to the messages of a scope (with its parents').
  struct Scope {
    int parent;
    std::vector<absl::string_view> names;
  };

  void Push(const Message& message, int scope) { stack_.push_back(Item{&message, scope}); }

  // Pushes the message fields of `m` (in reverse, so they are visited in
  // order), except `skip1` and `skip2`.
  void PushChildren(const Message& m, int scope, const FieldDescriptor* skip1 = nullptr,
                    const FieldDescriptor* skip2 = nullptr) {
    const Reflection* reflection = m.GetReflection();
    fields_.clear();
    reflection->ListFields(m, &fields_);
    for (auto it = fields_.rbegin(); it != fields_.rend(); ++it) {
      const FieldDescriptor* field = *it;
      if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || field == skip1 ||
          field == skip2) {
        continue;
      }
      if (field->is_repeated()) {
        for (int i = reflection->FieldSize(m, field) - 1; i >= 0; --i) {
          Push(reflection->GetRepeatedMessage(m, field, i), scope);
        }
      } else {
        Push(reflection->GetMessage(m, field), scope);
      }
    }
  }

  bool InScope(int scope, absl::string_view name) const {
    for (; scope >= 0; scope = scopes_[scope].parent) {
      for (absl::string_view n : scopes_[scope].names) {
        if (n == name) return true;
      }
    }
    return false;
  }

  // Pushes a WITH clause's queries, each with the CTE names it sees (all of
  // them in WITH RECURSIVE, the earlier ones otherwise); returns the scope
  // of the statement the clause belongs to.
  int EnterWith(const Message& owner, const FieldDescriptor* with_field, int scope) {
    if (with_field == nullptr || !owner.GetReflection()->HasField(owner, with_field)) {
      return scope;
    }
    const auto& with = static_cast<const pg_query::WithClause&>(
        owner.GetReflection()->GetMessage(owner, with_field));
    std::vector<const pg_query::CommonTableExpr*> ctes;
    for (const pg_query::Node& n : with.ctes()) {
      if (n.has_common_table_expr()) ctes.push_back(&n.common_table_expr());
    }
    if (with.recursive()) {
      scopes_.push_back(Scope{scope, {}});
      const int all = static_cast<int>(scopes_.size()) - 1;
      for (const auto* cte : ctes) scopes_[all].names.push_back(cte->ctename());
      for (auto it = ctes.rbegin(); it != ctes.rend(); ++it) Push(**it, all);
      return all;
    }
    std::vector<int> cte_scopes;
    int current = scope;
    for (const auto* cte : ctes) {
      cte_scopes.push_back(current);
      scopes_.push_back(Scope{current, {cte->ctename()}});
      current = static_cast<int>(scopes_.size()) - 1;
    }
    for (size_t i = ctes.size(); i-- > 0;) Push(*ctes[i], cte_scopes[i]);
    return current;
  }

  void Refuse(Applies applies, std::string message) {
    findings.push_back(Finding{applies, std::move(message)});
  }

  void Visit(const Message& m, int scope) {
    const Descriptor* type = m.GetDescriptor();
    if (type == types_.node()) {
      if (const Message* child = Unwrap(m)) Push(*child, scope);
      return;
    }
    const TypeInfo* info = types_.Find(type);
    if (info == nullptr) {
      PushChildren(m, scope);
      return;
    }
    switch (info->handler) {
      case Handler::kChildren:
        PushChildren(m, scope);
        return;
      case Handler::kFuncCall:
        VisitFuncCall(static_cast<const pg_query::FuncCall&>(m));
        PushChildren(m, scope);
        return;
      case Handler::kRangeVar: {
        const auto& rv = static_cast<const pg_query::RangeVar&>(m);
        const bool cte =
            rv.schemaname().empty() && rv.catalogname().empty() && InScope(scope, rv.relname());
        if (!cte) tables.push_back(RangeVarName(rv));
        return;
      }
      case Handler::kAExpr:
        VisitAExpr(static_cast<const pg_query::A_Expr&>(m));
        PushChildren(m, scope);
        return;
      case Handler::kSubLink: {
        const auto& link = static_cast<const pg_query::SubLink&>(m);
        if (link.oper_name_size() > 0) {
          operators.push_back(JoinName(link.oper_name()));
        } else if (link.sub_link_type() == pg_query::ANY_SUBLINK) {
          operators.push_back("=");  // IN (subquery)
        }
        PushChildren(m, scope);
        return;
      }
      case Handler::kSortBy: {
        const auto& sort = static_cast<const pg_query::SortBy&>(m);
        if (sort.use_op_size() > 0) operators.push_back(JoinName(sort.use_op()));
        PushChildren(m, scope);
        return;
      }
      case Handler::kCaseExpr:
        if (static_cast<const pg_query::CaseExpr&>(m).has_arg()) operators.push_back("=");
        PushChildren(m, scope);
        return;
      case Handler::kJoinExpr: {
        const auto& join = static_cast<const pg_query::JoinExpr&>(m);
        if (join.is_natural() || join.using_clause_size() > 0) operators.push_back("=");
        PushChildren(m, scope);
        return;
      }
      case Handler::kColumnRef: {
        const auto& ref = static_cast<const pg_query::ColumnRef&>(m);
        const int n = ref.fields_size();
        if (n >= 2 && ref.fields(n - 1).has_string()) {
          CheckColumnNotation(ref.fields(n - 1).string().sval(), JoinName(ref.fields()));
        }
        return;
      }
      case Handler::kAIndirection: {
        const auto& ind = static_cast<const pg_query::A_Indirection&>(m);
        for (const pg_query::Node& n : ind.indirection()) {
          if (!n.has_string()) continue;
          column_notation = true;
          CheckColumnNotation(n.string().sval(), absl::StrCat("(...).", n.string().sval()));
        }
        PushChildren(m, scope);
        return;
      }
      case Handler::kLockingClause:
        // Its relations are FROM items' names or aliases, already visited.
        locking = true;
        return;
      default:
        VisitStatement(m, *info, scope);
        return;
    }
  }

  void VisitFuncCall(const pg_query::FuncCall& call) {
    std::vector<absl::string_view> parts;
    if (!NameParts(call.funcname(), &parts)) return;
    const std::string written = absl::StrJoin(parts, ".");
    functions.push_back(written);
    const absl::string_view name = parts.back();
    for (absl::string_view scoped : kTransactionScopedFunctions) {
      if (name == scoped) transaction_scoped = true;
    }
    if (name == "set_config") {
      CheckSetConfig(call, written);
      return;
    }
    if (auto why = RefusedFunctionReason(name, /*column_notation=*/false)) {
      Refuse(Applies::kEverywhere, absl::StrCat(written, " ", *why));
    }
  }

  void CheckColumnNotation(absl::string_view name, absl::string_view written) {
    if (auto why = RefusedFunctionReason(name, /*column_notation=*/true)) {
      Refuse(Applies::kEverywhere,
             absl::StrCat(written, " may call ", name, " (column notation), which ", *why));
    }
  }

  // set_config(name, value, is_local) is allowed only in the form whose
  // effect provably ends with the transaction.
  void CheckSetConfig(const pg_query::FuncCall& call, absl::string_view written) {
    auto literal_string = [](const pg_query::Node& n) -> const std::string* {
      if (!n.has_a_const() || !n.a_const().has_sval()) return nullptr;
      return &n.a_const().sval().sval();
    };
    const bool named = std::any_of(call.args().begin(), call.args().end(),
                                   [](const pg_query::Node& n) { return n.has_named_arg_expr(); });
    if (call.args_size() != 3 || named || call.func_variadic() || call.agg_star() ||
        call.agg_distinct() || call.agg_order_size() > 0 || call.has_agg_filter() ||
        call.has_over()) {
      Refuse(Applies::kEverywhere,
             absl::StrCat(written,
                          " is allowed only as set_config(name, value, true) with "
                          "three literal arguments"));
      return;
    }
    const pg_query::Node& is_local = call.args(2);
    if (!is_local.has_a_const() || !is_local.a_const().has_boolval() ||
        !is_local.a_const().boolval().boolval()) {
      Refuse(Applies::kEverywhere,
             absl::StrCat(written,
                          " with is_local other than the literal true changes the session of "
                          "a pooled connection; use set_config(name, value, true) inside "
                          "ExecuteTransaction"));
      return;
    }
    const std::string* name = literal_string(call.args(0));
    const std::string* value = literal_string(call.args(1));
    if (name == nullptr || value == nullptr) {
      Refuse(Applies::kEverywhere,
             absl::StrCat(written,
                          " with a setting name or value that is not a string literal "
                          "cannot be checked; write both as string literals"));
      return;
    }
    const std::string setting = absl::AsciiStrToLower(*name);
    if (auto why = RefusedSettingReason(setting)) {
      Refuse(Applies::kEverywhere, absl::StrCat(written, "('", setting, "', ...) ", *why));
    } else if (setting == "search_path" && NamesTempSchemaInPath(*value)) {
      Refuse(Applies::kEverywhere,
             absl::StrCat(written,
                          "('search_path', ...) naming pg_temp resolves names to "
                          "temporary objects; leave pg_temp out of search_path"));
    }
  }

  void VisitAExpr(const pg_query::A_Expr& expr) {
    switch (expr.kind()) {
      case pg_query::AEXPR_BETWEEN:
      case pg_query::AEXPR_BETWEEN_SYM:
        operators.push_back(">=");
        operators.push_back("<=");
        return;
      case pg_query::AEXPR_NOT_BETWEEN:
      case pg_query::AEXPR_NOT_BETWEEN_SYM:
        operators.push_back("<");
        operators.push_back(">");
        return;
      default:
        if (expr.name_size() > 0) operators.push_back(JoinName(expr.name()));
        return;
    }
  }

  // "CREATE TEMP TABLE x" / "CREATE TABLE pg_temp.x" and the like.
  void RefuseTemp(absl::string_view what, bool on_commit_drop) {
    if (on_commit_drop) {
      Refuse(Applies::kAlone,
             absl::StrCat(what,
                          " ... ON COMMIT DROP belongs inside ExecuteTransaction, whose "
                          "COMMIT drops it"));
    } else {
      Refuse(Applies::kEverywhere,
             absl::StrCat(what,
                          " creates a temporary object that outlives the call on a "
                          "pooled connection; create temporary tables with ON COMMIT DROP "
                          "inside ExecuteTransaction"));
    }
  }

  // `verb` and `object` as in "CREATE" "TABLE": "CREATE TEMP TABLE x".
  void CheckTempRangeVar(const pg_query::RangeVar& rv, absl::string_view verb,
                         absl::string_view object, bool on_commit_drop) {
    if (!IsTempRangeVar(rv)) return;
    RefuseTemp(absl::StrCat(verb, rv.relpersistence() == "t" ? " TEMP" : "",
                            object.empty() ? "" : " ", object, " ", RangeVarName(rv)),
               on_commit_drop);
  }

  void CheckTempName(const NodeList& name, absl::string_view command) {
    std::vector<absl::string_view> parts;
    if (NameParts(name, &parts) && parts.size() >= 2 && IsTempSchema(parts[parts.size() - 2])) {
      RefuseTemp(absl::StrCat(command, " ", absl::StrJoin(parts, ".")), false);
    }
  }

  void CheckInto(const pg_query::IntoClause& into, absl::string_view verb,
                 absl::string_view object) {
    if (!into.has_rel()) return;
    // The new table, even where a CTE has its name.
    tables.push_back(RangeVarName(into.rel()));
    written_tables.push_back(RangeVarName(into.rel()));
    CheckTempRangeVar(into.rel(), verb, object, into.on_commit() == pg_query::ONCOMMIT_DROP);
  }

  void RefuseSessionState(absl::string_view command) {
    std::string why;
    if (command == "NOTIFY") {
      why = std::string(kNotify);
    } else if (command == "PREPARE" || command == "EXECUTE" || command == "DEALLOCATE") {
      why =
          "works on the session's prepared statements, which poolside manages; send the "
          "statement itself with its parameters";
    } else if (command == "DISCARD") {
      why =
          "changes the session of a pooled connection (poolside's own prepared statements "
          "among it)";
    } else {
      why = "changes the session of a pooled connection, which other callers use next";
    }
    Refuse(Applies::kEverywhere, absl::StrCat(command, " ", why));
  }

  void VisitStatement(const Message& m, const TypeInfo& info, int scope) {
    const std::string command = StatementCommand(m, info);
    switch (info.handler) {
      case Handler::kSelect: {
        const auto& select = static_cast<const pg_query::SelectStmt&>(m);
        if (select.has_into_clause()) {
          into = true;
          CheckInto(select.into_clause(), "SELECT INTO", "");
        }
        break;
      }
      case Handler::kDml: {
        ++dml;
        const Reflection* reflection = m.GetReflection();
        if (info.relation != nullptr && reflection->HasField(m, info.relation)) {
          const auto& target =
              static_cast<const pg_query::RangeVar&>(reflection->GetMessage(m, info.relation));
          // A target is a table even where a CTE has its name.
          tables.push_back(RangeVarName(target));
          written_tables.push_back(RangeVarName(target));
          if (target.relname() == "pg_settings" &&
              (target.schemaname().empty() || target.schemaname() == "pg_catalog")) {
            Refuse(Applies::kEverywhere,
                   absl::StrCat(command, " ", RangeVarName(target),
                                " changes settings for the session of a pooled connection; use "
                                "SET LOCAL inside ExecuteTransaction"));
          }
        }
        const int body = EnterWith(m, info.with_clause, scope);
        PushChildren(m, body, info.with_clause, info.relation);
        return;
      }
      case Handler::kTruncate:
        for (const pg_query::Node& n : static_cast<const pg_query::TruncateStmt&>(m).relations()) {
          if (n.has_range_var()) written_tables.push_back(RangeVarName(n.range_var()));
        }
        break;
      case Handler::kCopy: {
        const auto& copy = static_cast<const pg_query::CopyStmt&>(m);
        if (copy.is_from() && copy.has_relation()) {
          written_tables.push_back(RangeVarName(copy.relation()));
        }
        Refuse(Applies::kEverywhere,
               "COPY is not allowed through query: write rows with the ingest service and read "
               "them with ExecuteStream");
        break;
      }
      case Handler::kCreateTableAs: {
        const auto& ctas = static_cast<const pg_query::CreateTableAsStmt&>(m);
        if (ctas.has_into()) CheckInto(ctas.into(), "CREATE", "TABLE");
        break;
      }
      case Handler::kCreateTable: {
        const auto& create = static_cast<const pg_query::CreateStmt&>(m);
        if (create.has_relation()) {
          CheckTempRangeVar(create.relation(), "CREATE", "TABLE",
                            create.oncommit() == pg_query::ONCOMMIT_DROP);
        }
        break;
      }
      case Handler::kCreateView: {
        const auto& view = static_cast<const pg_query::ViewStmt&>(m);
        if (view.has_view()) CheckTempRangeVar(view.view(), "CREATE", "VIEW", false);
        break;
      }
      case Handler::kCreateSequence: {
        const auto& seq = static_cast<const pg_query::CreateSeqStmt&>(m);
        if (seq.has_sequence()) CheckTempRangeVar(seq.sequence(), "CREATE", "SEQUENCE", false);
        break;
      }
      case Handler::kVariableSet:
        // Only a statement of its own: ALTER ROLE/DATABASE/SYSTEM and CREATE
        // FUNCTION hold a SET that changes no session (and need the grant).
        if (&m == root_)
          CheckVariableSet(static_cast<const pg_query::VariableSetStmt&>(m), command);
        break;
      case Handler::kTransaction:
        Refuse(Applies::kEverywhere,
               absl::StrCat(command,
                            " is transaction control, which poolside does itself; send "
                            "a transaction's statements with ExecuteTransaction"));
        break;
      case Handler::kSessionState:
        RefuseSessionState(command);
        break;
      case Handler::kDeclare: {
        const auto& declare = static_cast<const pg_query::DeclareCursorStmt&>(m);
        if (declare.options() & kCursorOptHold) {
          Refuse(Applies::kEverywhere,
                 "DECLARE ... WITH HOLD keeps a cursor open on a pooled connection after its "
                 "transaction; declare it without HOLD inside ExecuteTransaction, or read with "
                 "ExecuteStream");
        } else {
          Refuse(Applies::kAlone,
                 "DECLARE outside ExecuteTransaction: a cursor lives only as long as its "
                 "transaction; use it inside ExecuteTransaction, or read with ExecuteStream");
        }
        break;
      }
      case Handler::kCursor:
        Refuse(Applies::kAlone,
               absl::StrCat(command,
                            " outside ExecuteTransaction: a cursor lives only as long "
                            "as its transaction; use it inside ExecuteTransaction"));
        break;
      case Handler::kLock:
        Refuse(Applies::kAlone,
               "LOCK outside ExecuteTransaction: a lock lasts until its transaction ends; take "
               "it inside ExecuteTransaction");
        break;
      case Handler::kNeedsDdl:
        RefuseWithoutDdl(command, info.why);
        break;
      case Handler::kCreateFunction: {
        const auto& create = static_cast<const pg_query::CreateFunctionStmt&>(m);
        RefuseWithoutDdl(command, info.why);
        CheckTempName(create.funcname(), command);
        break;
      }
      case Handler::kDefine: {
        const auto& define = static_cast<const pg_query::DefineStmt&>(m);
        if (define.kind() == pg_query::OBJECT_AGGREGATE ||
            define.kind() == pg_query::OBJECT_OPERATOR) {
          RefuseWithoutDdl(command, kDefinesCode);
        }
        CheckTempName(define.defnames(), command);
        break;
      }
      case Handler::kAlterObject:
        switch (AlteredObjectType(m)) {
          case pg_query::OBJECT_FUNCTION:
          case pg_query::OBJECT_PROCEDURE:
          case pg_query::OBJECT_ROUTINE:
          case pg_query::OBJECT_AGGREGATE:
          case pg_query::OBJECT_OPERATOR:
          case pg_query::OBJECT_TRIGGER:
          case pg_query::OBJECT_RULE:
          case pg_query::OBJECT_EVENT_TRIGGER:
          case pg_query::OBJECT_EXTENSION:
          case pg_query::OBJECT_LANGUAGE:
            RefuseWithoutDdl(command, kDefinesCode);
            break;
          default:
            break;
        }
        break;
      case Handler::kTempName:
        if (type_is(m, "CompositeTypeStmt")) {
          const auto& composite = static_cast<const pg_query::CompositeTypeStmt&>(m);
          if (composite.has_typevar())
            CheckTempRangeVar(composite.typevar(), "CREATE", "TYPE", false);
        } else if (type_is(m, "CreateEnumStmt")) {
          CheckTempName(static_cast<const pg_query::CreateEnumStmt&>(m).type_name(), command);
        } else if (type_is(m, "CreateRangeStmt")) {
          CheckTempName(static_cast<const pg_query::CreateRangeStmt&>(m).type_name(), command);
        } else if (type_is(m, "CreateDomainStmt")) {
          CheckTempName(static_cast<const pg_query::CreateDomainStmt&>(m).domainname(), command);
        } else if (type_is(m, "CreateConversionStmt")) {
          CheckTempName(static_cast<const pg_query::CreateConversionStmt&>(m).conversion_name(),
                        command);
        } else if (type_is(m, "CreateStatsStmt")) {
          CheckTempName(static_cast<const pg_query::CreateStatsStmt&>(m).defnames(), command);
        }
        break;
      default:
        break;
    }
    const int body = EnterWith(m, info.with_clause, scope);
    PushChildren(m, body, info.with_clause);
  }

  static bool type_is(const Message& m, absl::string_view name) {
    return m.GetDescriptor()->name() == name;
  }

  void RefuseWithoutDdl(absl::string_view command, absl::string_view why) {
    Refuse(Applies::kWithoutDdl, absl::StrCat(command, " needs the ddl grant: it ", why));
  }

  void CheckVariableSet(const pg_query::VariableSetStmt& set, absl::string_view command) {
    const std::string name = absl::AsciiStrToLower(set.name());
    switch (set.kind()) {
      case pg_query::VAR_SET_MULTI:
        if (name == "session characteristics") {
          Refuse(Applies::kEverywhere,
                 "SET SESSION CHARACTERISTICS changes the session of a pooled connection; use "
                 "ExecuteTransaction's isolation and read_only");
        } else {
          Refuse(Applies::kEverywhere,
                 absl::StrCat(command,
                              " is transaction control, which poolside does itself; "
                              "use ExecuteTransaction's isolation and read_only"));
        }
        return;
      case pg_query::VAR_RESET:
      case pg_query::VAR_RESET_ALL:
        Refuse(Applies::kEverywhere,
               absl::StrCat(set.kind() == pg_query::VAR_RESET_ALL ? "RESET ALL"
                                                                  : absl::StrCat("RESET ", name),
                            " changes the session of a pooled connection, which other callers "
                            "use next"));
        return;
      default:
        break;
    }
    const std::string written = command == "SET"
                                    ? absl::StrCat(set.is_local() ? "SET LOCAL " : "SET ", name)
                                    : std::string(command);
    // SET (without LOCAL) of a setting that changes how text is read keeps
    // the general message below: LOCAL alone does not make it allowed.
    const std::optional<absl::string_view> why = RefusedSettingReason(name);
    if (why && (set.is_local() || !ChangesTextReading(name))) {
      Refuse(Applies::kEverywhere, absl::StrCat(written, " ", *why));
      return;
    }
    if (!set.is_local()) {
      Refuse(Applies::kEverywhere,
             absl::StrCat(written,
                          " without LOCAL changes the session of a pooled connection; "
                          "use SET LOCAL inside ExecuteTransaction"));
      return;
    }
    if (name == "search_path") {
      for (const pg_query::Node& arg : set.args()) {
        if (arg.has_a_const() && arg.a_const().has_sval() &&
            NamesTempSchemaInPath(arg.a_const().sval().sval())) {
          Refuse(Applies::kEverywhere,
                 absl::StrCat(written,
                              " naming pg_temp resolves names to temporary objects; "
                              "leave pg_temp out of search_path"));
          return;
        }
      }
    }
  }

 private:
  const TypeTable& types_;
  const Message* root_ = nullptr;
  std::vector<Item> stack_;
  std::vector<Scope> scopes_;
  std::vector<const FieldDescriptor*> fields_;
};

// Whether EXPLAIN's options run the statement: ANALYZE without an argument,
// or with one other than false/off/0.
bool ExplainAnalyzes(const pg_query::ExplainStmt& explain) {
  bool analyze = false;
  for (const pg_query::Node& n : explain.options()) {
    if (!n.has_def_elem() || n.def_elem().defname() != "analyze") continue;
    const pg_query::DefElem& option = n.def_elem();
    if (!option.has_arg()) {
      analyze = true;
    } else if (option.arg().has_string()) {
      const std::string v = absl::AsciiStrToLower(option.arg().string().sval());
      analyze = !(v == "false" || v == "off");
    } else if (option.arg().has_integer()) {
      analyze = option.arg().integer().ival() != 0;
    } else if (option.arg().has_boolean()) {
      analyze = option.arg().boolean().boolval();
    } else {
      analyze = true;
    }
  }
  return analyze;
}

StatementKind KindOf(const pg_query::Node& statement, const Walker& facts) {
  switch (statement.node_case()) {
    case pg_query::Node::kSelectStmt:
      return facts.locking || facts.into || facts.dml > 0 ? StatementKind::kWrite
                                                          : StatementKind::kRead;
    case pg_query::Node::kExplainStmt: {
      const pg_query::ExplainStmt& explain = statement.explain_stmt();
      if (!ExplainAnalyzes(explain) || !explain.has_query()) return StatementKind::kRead;
      return KindOf(explain.query(), facts);
    }
    case pg_query::Node::kVariableSetStmt:
      return statement.variable_set_stmt().kind() == pg_query::VAR_SET_MULTI
                 ? StatementKind::kTransactionControl
                 : StatementKind::kSession;
    default: {
      const Message* m = Unwrap(statement);
      if (m == nullptr) return StatementKind::kInvalid;
      const TypeInfo* info = TypeTable::Get().Find(m->GetDescriptor());
      return info == nullptr || info->kind == StatementKind::kInvalid ? StatementKind::kUtility
                                                                      : info->kind;
    }
  }
}

// ---------------------------------------------------------------------------
// Normalization.

// FNV-1a: a fingerprint must be the same in every process.
class StableHash {
 public:
  void Add(absl::string_view bytes) {
    hash_ = hash::Fnv1aAppend(hash_, bytes);
    hash_ = hash::Fnv1aAppend(hash_, absl::string_view("\xff", 1));  // token separator
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = hash::kFnv1aOffsetBasis;
};

// pg_query_normalize, and then every literal it left in place (it keeps those
// of utility statements and some clauses: COMMENT ... IS '...', COPY's file,
// DEFAULTs in CREATE TABLE, ORDER BY 1, varchar(20)) replaced by $n too.
// pg_query_fingerprint includes some of those (strings in utility
// statements), so when any was left the fingerprint is instead a hash of the
// tokens with literals, parameters and comments blanked out and identifiers
// and keywords case-folded.
void NormalizeAndFingerprint(const std::string& sql, Analysis* analysis) {
  Normalize normalized(pg_query_normalize(sql.c_str()));
  if (normalized->error != nullptr || normalized->normalized_query == nullptr) return;
  const std::string first = normalized->normalized_query;
  Scan scan(pg_query_scan(first.c_str()));
  pg_query::ScanResult tokens;
  if (scan->error != nullptr ||
      !tokens.ParseFromArray(scan->pbuf.data, static_cast<int>(scan->pbuf.len))) {
    return;  // never show a text whose literals were not all found
  }
  int64_t next_param = 0;
  for (const pg_query::ScanToken& t : tokens.tokens()) {
    if (t.token() != pg_query::PARAM) continue;
    int64_t number = 0;
    absl::string_view text(first.data() + t.start(), t.end() - t.start());
    if (absl::SimpleAtoi(text.substr(1), &number)) next_param = std::max(next_param, number);
  }
  std::string out;
  out.reserve(first.size());
  size_t copied = 0;
  int replaced = 0;
  StableHash hash;
  for (const pg_query::ScanToken& t : tokens.tokens()) {
    const size_t start = static_cast<size_t>(t.start());
    const size_t end = static_cast<size_t>(t.end());
    if (start < copied || end < start || end > first.size()) return;
    const absl::string_view text(first.data() + start, end - start);
    if (IsLiteralToken(t.token())) {
      out.append(first, copied, start - copied);
      absl::StrAppend(&out, "$", ++next_param);
      copied = end;
      ++replaced;
      hash.Add("$");
    } else if (t.token() == pg_query::PARAM) {
      hash.Add("$");
    } else if (t.token() == pg_query::SQL_COMMENT || t.token() == pg_query::C_COMMENT ||
               t.token() == pg_query::ASCII_59) {
      // Comments and empty statements do not change the statement.
    } else if (t.keyword_kind() != pg_query::NO_KEYWORD ||
               (t.token() == pg_query::IDENT && !absl::StartsWith(text, "\""))) {
      hash.Add(absl::AsciiStrToLower(text));
    } else {
      hash.Add(text);
    }
  }
  out.append(first, copied, std::string::npos);
  analysis->normalized = std::string(TruncateUtf8(out, kMaxNormalizedBytes));
  if (replaced > 0) {
    analysis->fingerprint = hash.value();
    return;
  }
  Fingerprint fingerprint(pg_query_fingerprint(sql.c_str()));
  if (fingerprint->error == nullptr) analysis->fingerprint = fingerprint->fingerprint;
}

// ---------------------------------------------------------------------------
// Verdicts.

void SetAllVerdicts(Analysis* analysis, const absl::Status& status) {
  for (auto& by_grant : analysis->verdicts) {
    for (absl::Status& verdict : by_grant) verdict = status;
  }
}

// Each verdict names the first refusal that applies, preferring one that
// applies everywhere: no grant or scope would lift it.
void SetVerdicts(Analysis* analysis, const std::vector<Finding>& findings) {
  for (int scope = 0; scope < 2; ++scope) {
    for (int ddl = 0; ddl < 2; ++ddl) {
      const Finding* first = nullptr;
      for (const Finding& f : findings) {
        const bool applies =
            f.applies == Applies::kEverywhere ||
            (f.applies == Applies::kAlone && scope == static_cast<int>(Scope::kAlone)) ||
            (f.applies == Applies::kWithoutDdl && ddl == 0);
        if (!applies) continue;
        if (first == nullptr) first = &f;
        if (f.applies == Applies::kEverywhere) {
          first = &f;
          break;
        }
      }
      analysis->verdicts[scope][ddl] =
          first == nullptr ? absl::OkStatus() : TextError(first->message);
    }
  }
}

absl::Status MultipleStatements(int count) {
  return absl::InvalidArgumentError(
      absl::StrCat(count, " statements in one text; send one per call, or use ExecuteTransaction"));
}

size_t StringBytes(const std::string& s) {
  // Heap bytes beyond the object (short strings live inside it).
  return s.capacity() > 15 ? s.capacity() + 1 : 0;
}

size_t StatusBytes(const absl::Status& s) { return s.ok() ? 0 : s.message().size() + 64; }

size_t AnalysisBytes(const Analysis& a) {
  size_t bytes = sizeof(Analysis) + 32;  // and shared_ptr's control block
  bytes += StringBytes(a.command) + StringBytes(a.normalized) + StatusBytes(a.parse_error);
  for (const auto* names : {&a.tables, &a.written_tables, &a.functions, &a.operators}) {
    bytes += names->capacity() * sizeof(std::string);
    for (const std::string& n : *names) bytes += StringBytes(n);
  }
  for (const auto& by_grant : a.verdicts) {
    for (const absl::Status& verdict : by_grant) bytes += StatusBytes(verdict);
  }
  return bytes;
}

}  // namespace

absl::string_view KindName(StatementKind kind) {
  switch (kind) {
    case StatementKind::kInvalid:
      return "invalid";
    case StatementKind::kRead:
      return "read";
    case StatementKind::kWrite:
      return "write";
    case StatementKind::kDdl:
      return "ddl";
    case StatementKind::kUtility:
      return "utility";
    case StatementKind::kTransactionControl:
      return "transaction_control";
    case StatementKind::kSession:
      return "session";
  }
  return "invalid";
}

absl::Status Permitted(const Analysis& analysis, Scope scope, Grants grants) {
  if (!analysis.parse_error.ok()) return analysis.parse_error;
  if (analysis.statement_count != 1) return MultipleStatements(analysis.statement_count);
  if (analysis.kind == StatementKind::kInvalid) {
    return absl::InvalidArgumentError("statement was not analyzed");
  }
  return analysis.verdicts[scope == Scope::kInTransaction ? 1 : 0][grants.ddl ? 1 : 0];
}

absl::Status ParseTree(absl::string_view sql, pg_query::ParseResult* tree) {
  if (const size_t nul = sql.find('\0'); nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("SQL text contains a NUL byte (at byte ", nul + 1, ")"));
  }
  if (const size_t bad = InvalidUtf8Offset(sql); bad != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("SQL text is not valid UTF-8 (at byte ", bad + 1, ")"));
  }
  const std::string text(sql);  // libpg_query reads NUL-terminated strings
  if (absl::Status nesting = CheckNesting(text); !nesting.ok()) return nesting;
  ProtobufParse parsed(pg_query_parse_protobuf(text.c_str()));
  if (parsed->error != nullptr) return ParserError(*parsed->error);
  google::protobuf::io::CodedInputStream input(
      reinterpret_cast<const uint8_t*>(parsed->parse_tree.data),
      static_cast<int>(parsed->parse_tree.len));
  input.SetRecursionLimit(kMaxMessageDepth);
  if (!tree->ParseFromCodedStream(&input) || !input.ConsumedEntireMessage()) {
    return absl::InvalidArgumentError(
        "statement nested too deeply to analyze; split the expression or the statement");
  }
  return absl::OkStatus();
}

std::shared_ptr<const Analysis> AnalyzeOnce(absl::string_view sql) {
  auto analysis = std::make_shared<Analysis>();
  auto fail = [&](absl::Status status) {
    analysis->parse_error = status;
    SetAllVerdicts(analysis.get(), status);
    return analysis;
  };
  pg_query::ParseResult tree;
  if (absl::Status parsed = ParseTree(sql, &tree); !parsed.ok()) return fail(parsed);
  const std::string text(sql);
  analysis->statement_count = tree.stmts_size();
  if (analysis->statement_count == 0) {
    return fail(
        absl::InvalidArgumentError("no statement: the text holds only comments, "
                                   "whitespace or semicolons"));
  }
  NormalizeAndFingerprint(text, analysis.get());
  if (analysis->statement_count != 1) {
    SetAllVerdicts(analysis.get(), MultipleStatements(analysis->statement_count));
    return analysis;
  }

  const pg_query::Node& statement = tree.stmts(0).stmt();
  Walker walker(statement);
  analysis->kind = KindOf(statement, walker);
  if (const Message* m = Unwrap(statement)) {
    const TypeInfo* info = TypeTable::Get().Find(m->GetDescriptor());
    analysis->command =
        info != nullptr ? StatementCommand(*m, *info) : std::string(m->GetDescriptor()->name());
  }
  analysis->shareable_syntax = statement.has_select_stmt() &&
                               analysis->kind == StatementKind::kRead && !walker.column_notation &&
                               !walker.transaction_scoped;
  if (analysis->kind == StatementKind::kWrite) {
    analysis->write_returns_rows =
        statement.has_select_stmt() || statement.has_explain_stmt() ||
        (statement.has_insert_stmt() && statement.insert_stmt().returning_list_size() > 0) ||
        (statement.has_update_stmt() && statement.update_stmt().returning_list_size() > 0) ||
        (statement.has_delete_stmt() && statement.delete_stmt().returning_list_size() > 0);
  }
  analysis->tables = std::move(walker.tables);
  // EXPLAIN without ANALYZE only plans its statement.
  if (!(statement.has_explain_stmt() && analysis->kind == StatementKind::kRead)) {
    analysis->written_tables = std::move(walker.written_tables);
  }
  analysis->functions = std::move(walker.functions);
  analysis->operators = std::move(walker.operators);
  SetVerdicts(analysis.get(), walker.findings);
  return analysis;
}

// ---------------------------------------------------------------------------
// The memo.

struct StatementAnalyzer::Entry {
  std::string text;
  std::shared_ptr<const Analysis> analysis;
  size_t bytes = 0;
};

StatementAnalyzer::StatementAnalyzer(Options options) : options_(options) {}

StatementAnalyzer::~StatementAnalyzer() = default;

std::shared_ptr<const Analysis> StatementAnalyzer::Analyze(absl::string_view sql) {
  if (sql.size() > options_.max_text_bytes) return AnalyzeOnce(sql);
  {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(sql);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->analysis;
    }
  }
  std::shared_ptr<const Analysis> analysis = AnalyzeOnce(sql);
  std::list<Entry> entry(1);
  entry.front().text = std::string(sql);
  entry.front().analysis = analysis;
  // The text, the list node and the index slot, and the analysis.
  entry.front().bytes = sizeof(Entry) + 2 * sizeof(void*) + StringBytes(entry.front().text) +
                        sizeof(absl::string_view) + sizeof(void*) + 1 + AnalysisBytes(*analysis);
  if (entry.front().bytes > options_.max_memo_bytes) return analysis;

  std::list<Entry> evicted;  // freed after the lock is released
  absl::MutexLock lock(&mu_);
  auto it = index_.find(sql);
  if (it != index_.end()) {  // another caller analyzed it meanwhile
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->analysis;
  }
  lru_.splice(lru_.begin(), entry);
  index_.emplace(lru_.front().text, lru_.begin());
  bytes_ += lru_.front().bytes;
  while (bytes_ > options_.max_memo_bytes) {
    auto last = std::prev(lru_.end());
    bytes_ -= last->bytes;
    index_.erase(last->text);
    evicted.splice(evicted.end(), lru_, last);
  }
  return analysis;
}

std::shared_ptr<const Analysis> StatementAnalyzer::Lookup(absl::string_view sql) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(sql);
  if (it == index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->analysis;
}

size_t StatementAnalyzer::memo_entries() const {
  absl::MutexLock lock(&mu_);
  return lru_.size();
}

size_t StatementAnalyzer::memo_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

bool IsLiteralToken(int token) {
  switch (token) {
    case pg_query::SCONST:
    case pg_query::USCONST:
    case pg_query::BCONST:
    case pg_query::XCONST:
    case pg_query::ICONST:
    case pg_query::FCONST:
      return true;
    default:
      return false;
  }
}

}  // namespace poolside::sql
