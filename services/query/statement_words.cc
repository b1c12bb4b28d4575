#include "services/query/statement_words.h"

#include <cstdint>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace poolside::query {
namespace {

// PostgreSQL's lexical structure, as far as the checks below need it: words
// (keywords and unquoted identifiers), quoted identifiers, string constants
// (including E'...' escapes and $tag$ dollar quotes), parameters ($1) and
// single-character punctuation; comments (block comments nest) and
// whitespace are skipped. Anything malformed ends the input, as PostgreSQL
// would reject it anyway.
struct Token {
  // kUnicodeIdent: a U&"..." name, whose escapes are not decoded here.
  enum Kind { kEnd, kWord, kQuotedIdent, kUnicodeIdent, kString, kOther };
  Kind kind = kEnd;
  // kWord, kQuotedIdent (without the quotes): the name; kOther: the character(s).
  absl::string_view text;

  // (The size is compared first, inline: most words are checked against many.)
  bool IsWord(absl::string_view w) const {
    return kind == kWord && text.size() == w.size() && absl::EqualsIgnoreCase(text, w);
  }
  // A function or object name: a word (case-insensitive) or a quoted identifier (exact).
  bool IsName(absl::string_view lower) const {
    return text.size() == lower.size() && ((kind == kWord && absl::EqualsIgnoreCase(text, lower)) ||
                                           (kind == kQuotedIdent && text == lower));
  }
  bool Is(char c) const { return kind == kOther && text.size() == 1 && text[0] == c; }
};

// Character classes of PostgreSQL's lexer, one table lookup per character.
enum CharClass : uint8_t { kOtherChar = 0, kSpace = 1, kWordStart = 2, kDigitOrDollar = 4 };
struct CharTable {
  uint8_t c[256];
  constexpr CharTable() : c() {
    for (int i = 0; i < 256; ++i) {
      if (i == ' ' || i == '\t' || i == '\n' || i == '\r' || i == '\f' || i == '\v') c[i] = kSpace;
      if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z') || i == '_' || i >= 0x80) {
        c[i] = kWordStart;
      }
      if ((i >= '0' && i <= '9') || i == '$') c[i] = kDigitOrDollar;
    }
  }
};
constexpr CharTable kChars;

bool IsSpace(char c) { return kChars.c[static_cast<unsigned char>(c)] == kSpace; }
bool IsWordStart(char c) { return kChars.c[static_cast<unsigned char>(c)] == kWordStart; }
bool IsWordChar(char c) {
  return (kChars.c[static_cast<unsigned char>(c)] & (kWordStart | kDigitOrDollar)) != 0;
}

// Plain '...' strings: with standard_conforming_strings on (PostgreSQL's
// default) a backslash is an ordinary character; off (a session, role or
// database setting), it escapes the next one. The text alone cannot tell, so
// the checks read a statement both ways when it matters.
enum class PlainStrings { kStandard, kBackslashEscapes };

class Lexer {
 public:
  explicit Lexer(absl::string_view sql, PlainStrings plain = PlainStrings::kStandard)
      : sql_(sql), plain_backslash_(plain == PlainStrings::kBackslashEscapes) {}

  // A plain string held a backslash: it would read differently in the other mode.
  bool saw_backslash_in_plain_string() const { return saw_backslash_; }
  // A string, quoted name or block comment ran to the end of the input:
  // PostgreSQL would reject the text read this way.
  bool unterminated() const { return unterminated_; }

  Token Next() {
    if (pushed_back_) {
      pushed_back_ = false;
      return last_;
    }
    last_ = Scan();
    return last_;
  }
  // The next Next() returns the last token again.
  void PushBack() { pushed_back_ = true; }

 private:
  void SkipSpaceAndComments() {
    while (pos_ < sql_.size()) {
      const char c = sql_[pos_];
      if (IsSpace(c)) {
        ++pos_;
      } else if (c == '-' && At(pos_ + 1) == '-') {
        // As in PostgreSQL, a carriage return ends it too.
        const size_t nl = sql_.find_first_of("\r\n", pos_);
        pos_ = nl == absl::string_view::npos ? sql_.size() : nl + 1;
      } else if (c == '/' && At(pos_ + 1) == '*') {
        int depth = 0;
        while (pos_ + 1 < sql_.size()) {
          if (sql_[pos_] == '/' && sql_[pos_ + 1] == '*') {
            ++depth;
            pos_ += 2;
          } else if (sql_[pos_] == '*' && sql_[pos_ + 1] == '/') {
            pos_ += 2;
            if (--depth == 0) break;
          } else {
            ++pos_;
          }
        }
        if (depth != 0) {  // unterminated: nothing follows
          pos_ = sql_.size();
          unterminated_ = true;
        }
      } else {
        return;
      }
    }
  }

  char At(size_t i) const { return i < sql_.size() ? sql_[i] : '\0'; }

  // After a string constant: whether whitespace holding a newline (then
  // whitespace and -- comments) and a quote follow, which PostgreSQL reads
  // as the same constant going on. If so, moves to that quote.
  bool AtContinuation() {
    size_t p = pos_;
    while (At(p) == ' ' || At(p) == '\t' || At(p) == '\f') ++p;
    if (At(p) != '\n' && At(p) != '\r') return false;
    while (p < sql_.size()) {
      const char c = sql_[p];
      if (c == ' ' || c == '\t' || c == '\f' || c == '\n' || c == '\r') {
        ++p;
      } else if (c == '-' && At(p + 1) == '-') {
        const size_t nl = sql_.find_first_of("\r\n", p);
        if (nl == absl::string_view::npos) return false;
        p = nl;
      } else {
        break;
      }
    }
    if (At(p) != '\'') return false;
    pos_ = p;
    return true;
  }

  // Past the closing `quote` of a quoted run starting at pos_ (doubled quotes
  // stand for one; with `backslash`, a backslash escapes the next character).
  void SkipQuoted(char quote, bool backslash) {
    ++pos_;
    while (pos_ < sql_.size()) {
      const char c = sql_[pos_];
      if (c == '\\' && quote == '\'') saw_backslash_ = true;
      if (backslash && c == '\\') {
        pos_ += 2;
      } else if (c == quote) {
        if (At(pos_ + 1) != quote) {
          ++pos_;
          return;
        }
        pos_ += 2;
      } else {
        ++pos_;
      }
    }
    pos_ = sql_.size();
    unterminated_ = true;
  }

  Token Scan() {
    SkipSpaceAndComments();
    Token t;
    if (pos_ >= sql_.size()) return t;
    const size_t start = pos_;
    const char c = sql_[pos_];
    if (IsWordStart(c)) {
      while (pos_ < sql_.size() && IsWordChar(sql_[pos_])) ++pos_;
      const absl::string_view word = sql_.substr(start, pos_ - start);
      const char prefix = word.size() == 1 ? static_cast<char>(word[0] | 0x20) : '\0';
      if (At(pos_) == '\'' && (prefix == 'e' || prefix == 'b' || prefix == 'x' || prefix == 'n')) {
        // E'...' (backslash escapes), B'...', X'...', N'...' (a plain string).
        const bool backslash = prefix == 'e' || (prefix == 'n' && plain_backslash_);
        t.kind = Token::kString;
        SkipQuoted('\'', backslash);
        // '...' after a newline continues the string, escapes and all.
        while (AtContinuation()) SkipQuoted('\'', backslash);
        t.text = sql_.substr(start, pos_ - start);
        return t;
      }
      if (prefix == 'u' && At(pos_) == '&' && At(pos_ + 1) == '"') {
        ++pos_;
        SkipQuoted('"', false);
        t.kind = Token::kUnicodeIdent;
        t.text = sql_.substr(start, pos_ - start);
        return t;
      }
      t.kind = Token::kWord;
      t.text = word;
      return t;
    }
    if (c == '\'') {
      t.kind = Token::kString;
      SkipQuoted('\'', plain_backslash_);
      while (AtContinuation()) SkipQuoted('\'', plain_backslash_);
      t.text = sql_.substr(start, pos_ - start);
      return t;
    }
    if (c == '"') {
      t.kind = Token::kQuotedIdent;
      SkipQuoted('"', false);
      const size_t end = pos_ > start + 1 ? pos_ - 1 : pos_;
      t.text = sql_.substr(start + 1, end - start - 1);
      return t;
    }
    if (c == '$') {
      if (absl::ascii_isdigit(static_cast<unsigned char>(At(pos_ + 1)))) {  // $1
        ++pos_;
        while (absl::ascii_isdigit(static_cast<unsigned char>(At(pos_)))) ++pos_;
        t.kind = Token::kOther;
        t.text = sql_.substr(start, pos_ - start);
        return t;
      }
      size_t end = pos_ + 1;
      while (end < sql_.size() && IsWordChar(sql_[end]) && sql_[end] != '$') ++end;
      if (At(end) == '$') {  // $tag$ ... $tag$
        const absl::string_view tag = sql_.substr(start, end + 1 - start);
        const size_t close = sql_.find(tag, end + 1);
        if (close == absl::string_view::npos) unterminated_ = true;
        pos_ = close == absl::string_view::npos ? sql_.size() : close + tag.size();
        t.kind = Token::kString;
        t.text = sql_.substr(start, pos_ - start);
        return t;
      }
    }
    ++pos_;
    t.kind = Token::kOther;
    t.text = sql_.substr(start, 1);
    return t;
  }

  const absl::string_view sql_;
  const bool plain_backslash_;
  size_t pos_ = 0;
  Token last_;
  bool pushed_back_ = false;
  bool saw_backslash_ = false;
  bool unterminated_ = false;
};

// The first word, after any opening parentheses.
Token FirstWord(Lexer& lex) {
  Token t = lex.Next();
  while (t.Is('(')) t = lex.Next();
  return t;
}

absl::Status SessionError(absl::string_view what, absl::string_view instead) {
  return absl::InvalidArgumentError(absl::StrCat(
      what, " changes the session of a pooled connection, which later callers share; ", instead));
}

}  // namespace

absl::string_view FirstKeyword(absl::string_view sql) {
  Lexer lex(sql);
  const Token t = FirstWord(lex);
  return t.kind == Token::kWord ? t.text : absl::string_view();
}

bool ContainsWord(absl::string_view sql, absl::string_view word) {
  for (PlainStrings plain : {PlainStrings::kStandard, PlainStrings::kBackslashEscapes}) {
    Lexer lex(sql, plain);
    for (Token t = lex.Next(); t.kind != Token::kEnd; t = lex.Next()) {
      if (t.IsWord(word)) return true;
    }
    if (!lex.saw_backslash_in_plain_string()) break;  // the other mode reads the same
  }
  return false;
}

namespace {

// A name or string that mentions pg_temp (as a search path does).
bool MentionsTempSchema(const Token& t) {
  if (t.kind != Token::kWord && t.kind != Token::kQuotedIdent && t.kind != Token::kString) {
    return false;
  }
  return absl::AsciiStrToLower(t.text).find("pg_temp") != std::string::npos;
}

// INSERT or MERGE where a command starts (so INTO after it names its target).
bool StartsCommand(const Token& before) {
  return before.kind == Token::kEnd || before.Is('(') || before.Is(')') || before.Is(';') ||
         before.IsWord("EXPLAIN") || before.IsWord("ANALYZE") || before.IsWord("VERBOSE") ||
         before.IsWord("DO") || before.IsWord("ALSO") || before.IsWord("INSTEAD");
}

// pg_temp, or a session's own temporary schema pg_temp_<n>.
bool IsTempSchema(const Token& t) {
  if (t.kind != Token::kWord && t.kind != Token::kQuotedIdent) return false;
  if (t.IsName("pg_temp")) return true;
  if (t.text.size() <= 8) return false;
  if (t.kind == Token::kWord ? !absl::StartsWithIgnoreCase(t.text, "pg_temp_")
                             : !absl::StartsWith(t.text, "pg_temp_")) {
    return false;
  }
  for (char c : t.text.substr(8)) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// The checks made on the statement's first word `first` (`scan` is just past it).
absl::Status CheckLeadingKeyword(const Token& first, const Lexer& scan) {
  if (first.IsWord("SET")) {
    Lexer peek = scan;
    const Token second = peek.Next();
    // SET local.x = ... sets a custom setting named local.x, for the session.
    const bool dotted = peek.Next().Is('.');
    if ((!second.IsWord("LOCAL") && !second.IsWord("TRANSACTION") &&
         !second.IsWord("CONSTRAINTS")) ||
        dotted) {
      return SessionError("SET",
                          "use SET LOCAL inside ExecuteTransaction (or set_config(name, value, "
                          "true)) for settings that end with the transaction");
    }
  }
  for (absl::string_view keyword : {"RESET", "DISCARD", "DEALLOCATE", "PREPARE", "LOAD"}) {
    if (first.IsWord(keyword)) {
      return SessionError(keyword,
                          "poolside prepares statements itself, and settings for one "
                          "transaction belong in SET LOCAL inside ExecuteTransaction");
    }
  }
  if (first.IsWord("LISTEN") || first.IsWord("UNLISTEN")) {
    return SessionError(first.text,
                        "a pooled connection's notifications would reach no caller; listen on "
                        "a connection of your own");
  }
  return absl::OkStatus();
}

// CheckSessionStatement with plain strings read one way; sets
// *saw_backslash when a plain string held a backslash.
absl::Status CheckSession(absl::string_view sql, PlainStrings plain, bool* saw_backslash) {
  bool declare_options = false;  // in a DECLARE's options (before its FOR)
  // Temporary objects, wherever the statement creates one (CREATE, SELECT ...
  // INTO, also under EXPLAIN ANALYZE, which runs them).
  bool creates = false;         // a CREATE, or an INTO that is not INSERT's or MERGE's
  bool modifiers = false;       // in the words after CREATE or INTO that say how
  bool temp = false;            // TEMP / TEMPORARY among them
  bool temp_schema = false;     // a pg_temp(_n).name
  bool on_commit_drop = false;  // ... ON COMMIT DROP
  // The set_config( calls the scan is inside, innermost last.
  struct SetConfigCall {
    int depth;  // parenthesis depth of its arguments
    int commas = 0;
    int local_tokens = 0;  // tokens of its third argument
    bool local_true = false;
  };
  absl::InlinedVector<SetConfigCall, 2> calls;
  int depth = 0;
  bool before_first_word = true;  // only opening parentheses so far
  bool set_statement = false;     // the statement is a SET (LOCAL, TRANSACTION, ...)
  bool updating = false;          // just after UPDATE [ONLY] [pg_catalog.]

  Lexer scan(sql, plain);
  Token prev2, prev;
  for (Token t = scan.Next(); t.kind != Token::kEnd; prev2 = prev, prev = t, t = scan.Next()) {
    if (before_first_word && !t.Is('(')) {
      before_first_word = false;
      if (absl::Status s = CheckLeadingKeyword(t, scan); !s.ok()) return s;
      declare_options = t.IsWord("DECLARE");
      set_statement = t.IsWord("SET");
    }
    // pg_temp in a search path (SET LOCAL search_path, set_config) would make
    // what the transaction creates next temporary.
    if ((set_statement || !calls.empty()) && MentionsTempSchema(t)) {
      return SessionError(
          "pg_temp in a search path",
          "tables the transaction creates would be temporary and outlive it on a pooled "
          "connection; name the schema of what you create instead");
    }
    // UPDATE pg_settings is SET, for the session.
    if (t.IsName("pg_settings") && updating) {
      return SessionError("UPDATE pg_settings",
                          "use SET LOCAL inside ExecuteTransaction (or set_config(name, value, "
                          "true)) for settings that end with the transaction");
    }
    updating = t.IsWord("UPDATE") ||
               (updating && (t.IsWord("ONLY") || t.IsName("pg_catalog") || t.Is('.')));
    if (t.kind == Token::kUnicodeIdent) {
      return absl::InvalidArgumentError(
          "U&\"...\" names are not accepted: poolside reads every name a statement uses to keep "
          "session state out of its pooled connections; write the name without escapes");
    }
    // The argument list of each enclosing set_config call.
    if (t.Is(')') && !calls.empty() && calls.back().depth == depth) {
      const SetConfigCall call = calls.back();
      calls.pop_back();
      if (call.commas != 2 || call.local_tokens != 1 || !call.local_true) {
        return SessionError("set_config(name, value, false)",
                            "pass true as its third argument (the setting then ends with the "
                            "transaction), inside ExecuteTransaction to cover several statements");
      }
    } else if (t.Is(',') && !calls.empty() && calls.back().depth == depth) {
      ++calls.back().commas;
    } else {
      for (SetConfigCall& call : calls) {
        if (call.commas != 2) continue;
        ++call.local_tokens;
        call.local_true = t.IsWord("true");
      }
    }
    if (t.Is('(')) ++depth;
    if (t.Is(')')) --depth;

    if (modifiers) {
      if (t.IsWord("TEMP") || t.IsWord("TEMPORARY")) {
        temp = true;
      } else if (!t.IsWord("OR") && !t.IsWord("REPLACE") && !t.IsWord("GLOBAL") &&
                 !t.IsWord("LOCAL") && !t.IsWord("UNLOGGED")) {
        modifiers = false;
      }
    }
    if (t.IsWord("CREATE") ||
        (t.IsWord("INTO") &&
         !((prev.IsWord("INSERT") || prev.IsWord("MERGE")) && StartsCommand(prev2)))) {
      creates = true;
      modifiers = true;
    }
    if (t.Is('.') && IsTempSchema(prev)) temp_schema = true;
    if (IsTempSchema(t) && prev.IsWord("INTO") && creates) temp_schema = true;  // INTO pg_temp
    if (t.IsWord("DROP") && prev.IsWord("COMMIT") && prev2.IsWord("ON")) on_commit_drop = true;
    if (declare_options) {
      if (t.IsWord("FOR")) {
        declare_options = false;
      } else if (t.IsWord("HOLD") && prev.IsWord("WITH")) {
        return SessionError("DECLARE ... WITH HOLD",
                            "a cursor WITH HOLD outlives the transaction on a pooled connection; "
                            "declare it WITHOUT HOLD inside ExecuteTransaction, or stream the "
                            "result with ExecuteStream");
      }
    }

    if (t.kind != Token::kWord && t.kind != Token::kQuotedIdent) continue;
    const bool set_config = t.IsName("set_config");
    const bool advisory = t.IsName("pg_advisory_lock") || t.IsName("pg_advisory_lock_shared") ||
                          t.IsName("pg_try_advisory_lock") ||
                          t.IsName("pg_try_advisory_lock_shared");
    // Built-ins that run SQL text they are given as a string, unread here.
    const bool runs_text = t.IsName("query_to_xml") || t.IsName("query_to_xmlschema") ||
                           t.IsName("query_to_xml_and_xmlschema") || t.IsName("ts_stat");
    if (!set_config && !advisory && !runs_text) continue;
    const bool call = scan.Next().Is('(');
    scan.PushBack();
    if (!call) continue;
    if (runs_text) {
      return absl::InvalidArgumentError(absl::StrCat(
          t.text,
          "() runs SQL text that poolside cannot check for session state left on its pooled "
          "connections; run that query directly"));
    }
    if (advisory) {
      return SessionError(absl::StrCat(t.text, "()"),
                          "a session-level advisory lock stays held by the pooled connection "
                          "after the call; use pg_advisory_xact_lock (or "
                          "pg_try_advisory_xact_lock) inside ExecuteTransaction");
    }
    calls.push_back(SetConfigCall{depth + 1});
  }
  if (!calls.empty()) {
    return SessionError("set_config(name, value, false)",
                        "pass true as its third argument (the setting then ends with the "
                        "transaction), inside ExecuteTransaction to cover several statements");
  }
  if ((temp || (creates && temp_schema)) && !on_commit_drop) {
    return SessionError("CREATE TEMP",
                        "a temporary object outlives the call on a pooled connection (and "
                        "would hide one of the same name from later callers); create temporary "
                        "tables with ON COMMIT DROP inside ExecuteTransaction");
  }
  if (saw_backslash != nullptr) *saw_backslash = scan.saw_backslash_in_plain_string();
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckSessionStatement(absl::string_view sql) {
  bool saw_backslash = false;
  if (absl::Status s = CheckSession(sql, PlainStrings::kStandard, &saw_backslash); !s.ok()) {
    return s;
  }
  // Read with backslash escapes too, or standard_conforming_strings = off
  // could hide a call inside what looks like one string; unless the text is
  // not SQL read that way (a quote left open), which PostgreSQL would refuse.
  if (!saw_backslash) return absl::OkStatus();
  absl::Status escaped = CheckSession(sql, PlainStrings::kBackslashEscapes, nullptr);
  if (escaped.ok()) return escaped;
  Lexer lex(sql, PlainStrings::kBackslashEscapes);
  while (lex.Next().kind != Token::kEnd) {
  }
  return lex.unterminated() ? absl::OkStatus() : escaped;
}

}  // namespace poolside::query
