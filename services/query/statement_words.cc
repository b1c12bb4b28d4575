#include "services/query/statement_words.h"

#include <cstdint>

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
  enum Kind { kEnd, kWord, kQuotedIdent, kString, kOther };
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

class Lexer {
 public:
  explicit Lexer(absl::string_view sql) : sql_(sql) {}

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
        const size_t nl = sql_.find('\n', pos_);
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
        if (depth != 0) pos_ = sql_.size();  // unterminated: nothing follows
      } else {
        return;
      }
    }
  }

  char At(size_t i) const { return i < sql_.size() ? sql_[i] : '\0'; }

  // Past the closing `quote` of a quoted run starting at pos_ (doubled quotes
  // stand for one; with `backslash`, a backslash escapes the next character).
  void SkipQuoted(char quote, bool backslash) {
    ++pos_;
    while (pos_ < sql_.size()) {
      const char c = sql_[pos_];
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
        // E'...' (backslash escapes), B'...', X'...', N'...'
        t.kind = Token::kString;
        SkipQuoted('\'', prefix == 'e');
        t.text = sql_.substr(start, pos_ - start);
        return t;
      }
      t.kind = Token::kWord;
      t.text = word;
      return t;
    }
    if (c == '\'') {
      t.kind = Token::kString;
      SkipQuoted('\'', false);
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
  size_t pos_ = 0;
  Token last_;
  bool pushed_back_ = false;
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

// After the `(` of set_config(name, value, is_local): OK only when is_local
// is the literal true. Consumes the call's arguments.
absl::Status CheckSetConfigCall(Lexer& lex) {
  int depth = 1;
  int commas = 0;
  int local_tokens = 0;
  bool local_true = false;
  for (Token t = lex.Next(); t.kind != Token::kEnd; t = lex.Next()) {
    if (t.Is('(')) {
      ++depth;
    } else if (t.Is(')')) {
      if (--depth == 0) break;
    } else if (t.Is(',') && depth == 1) {
      ++commas;
      continue;
    }
    if (commas == 2) {
      ++local_tokens;
      local_true = t.IsWord("true");
    }
  }
  if (commas == 2 && local_tokens == 1 && local_true) return absl::OkStatus();
  return SessionError("set_config(name, value, false)",
                      "pass true as its third argument (the setting then ends with the "
                      "transaction), inside ExecuteTransaction to cover several statements");
}

}  // namespace

absl::string_view FirstKeyword(absl::string_view sql) {
  Lexer lex(sql);
  const Token t = FirstWord(lex);
  return t.kind == Token::kWord ? t.text : absl::string_view();
}

absl::string_view SecondKeyword(absl::string_view sql) {
  Lexer lex(sql);
  if (FirstWord(lex).kind != Token::kWord) return {};
  const Token t = lex.Next();
  return t.kind == Token::kWord ? t.text : absl::string_view();
}

bool ContainsWord(absl::string_view sql, absl::string_view word) {
  Lexer lex(sql);
  for (Token t = lex.Next(); t.kind != Token::kEnd; t = lex.Next()) {
    if (t.IsWord(word)) return true;
  }
  return false;
}

absl::Status CheckSessionStatement(absl::string_view sql) {
  Lexer lex(sql);
  const Token first = FirstWord(lex);
  if (first.IsWord("SET")) {
    const Token second = lex.Next();
    if (!second.IsWord("LOCAL") && !second.IsWord("TRANSACTION") && !second.IsWord("CONSTRAINTS")) {
      return SessionError("SET",
                          "use SET LOCAL inside ExecuteTransaction (or set_config(name, value, "
                          "true)) for settings that end with the transaction");
    }
    lex.PushBack();
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
  const bool create = first.IsWord("CREATE");
  const bool declare = first.IsWord("DECLARE");
  const bool select_into = first.IsWord("SELECT") || first.IsWord("WITH");
  bool temp = false;            // CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP ..., or pg_temp.x
  bool modifiers = create;      // still in CREATE's modifiers
  bool on_commit_drop = false;  // ... ON COMMIT DROP
  Token prev2, prev;
  for (Token t = lex.Next(); t.kind != Token::kEnd; prev2 = prev, prev = t, t = lex.Next()) {
    if (modifiers) {
      if (t.IsWord("TEMP") || t.IsWord("TEMPORARY")) {
        temp = true;
      } else if (!t.IsWord("OR") && !t.IsWord("REPLACE") && !t.IsWord("GLOBAL") &&
                 !t.IsWord("LOCAL") && !t.IsWord("UNLOGGED")) {
        modifiers = false;
      }
    }
    if (create && t.Is('.') && prev.IsName("pg_temp")) temp = true;
    if (create && t.IsWord("DROP") && prev.IsWord("COMMIT") && prev2.IsWord("ON")) {
      on_commit_drop = true;
    }
    if (select_into && prev.IsWord("INTO") && (t.IsWord("TEMP") || t.IsWord("TEMPORARY"))) {
      return SessionError("SELECT ... INTO TEMP",
                          "a temporary table outlives the call on a pooled connection (and "
                          "would hide a table of the same name from later callers); use "
                          "CREATE TEMP TABLE ... ON COMMIT DROP inside ExecuteTransaction");
    }
    if (declare && t.IsWord("HOLD") && prev.IsWord("WITH")) {
      return SessionError("DECLARE ... WITH HOLD",
                          "a cursor WITH HOLD outlives the transaction on a pooled connection; "
                          "declare it WITHOUT HOLD inside ExecuteTransaction, or stream the "
                          "result with ExecuteStream");
    }
    if (t.kind != Token::kWord && t.kind != Token::kQuotedIdent) continue;
    const bool set_config = t.IsName("set_config");
    const bool advisory = t.IsName("pg_advisory_lock") || t.IsName("pg_advisory_lock_shared") ||
                          t.IsName("pg_try_advisory_lock") ||
                          t.IsName("pg_try_advisory_lock_shared");
    if (!set_config && !advisory) continue;
    const Token open = lex.Next();
    if (!open.Is('(')) {  // not a call
      lex.PushBack();
      continue;
    }
    if (advisory) {
      return SessionError(absl::StrCat(t.text, "()"),
                          "a session-level advisory lock stays held by the pooled connection "
                          "after the call; use pg_advisory_xact_lock (or "
                          "pg_try_advisory_xact_lock) inside ExecuteTransaction");
    }
    if (absl::Status s = CheckSetConfigCall(lex); !s.ok()) return s;
    prev2 = prev = Token();
    t = Token();
  }
  if (temp && !on_commit_drop) {
    return SessionError("CREATE TEMP",
                        "a temporary object outlives the call on a pooled connection (and "
                        "would hide one of the same name from later callers); create temporary "
                        "tables with ON COMMIT DROP inside ExecuteTransaction");
  }
  return absl::OkStatus();
}

}  // namespace poolside::query
