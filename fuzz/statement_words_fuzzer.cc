// libFuzzer target for the query service's statement words
// (services/query/statement_words), which read every SQL text a caller sends
// before PostgreSQL does.
//
// Besides memory errors (unterminated strings, quoted names, dollar quotes and
// comments end the input), it checks: FirstKeyword returns a view into the
// input made of word characters, CheckSessionStatement answers OK or
// INVALID_ARGUMENT only, and neither leading whitespace nor a leading comment
// changes either.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "services/query/statement_words.h"

namespace {

using poolside::query::CheckSessionStatement;
using poolside::query::FirstKeyword;

[[noreturn]] void Fail(const char* what, absl::string_view input) {
  fprintf(stderr, "statement_words_fuzzer: %s; input \"%s\"\n", what,
          absl::CEscape(input).c_str());
  abort();
}

bool IsWordChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' ||
         static_cast<unsigned char>(c) >= 0x80;
}

// A non-empty `word` must be a view into `input`, of word characters, not
// starting with a digit or $.
void CheckWord(absl::string_view word, absl::string_view input, const char* which) {
  if (word.empty()) return;
  if (word.data() < input.data() || word.data() + word.size() > input.data() + input.size()) {
    Fail(which, input);
  }
  for (char c : word) {
    if (!IsWordChar(c)) Fail(which, input);
  }
  if (absl::ascii_isdigit(static_cast<unsigned char>(word[0])) || word[0] == '$') {
    Fail(which, input);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view sql(reinterpret_cast<const char*>(data), size);
  const absl::string_view first = FirstKeyword(sql);
  CheckWord(first, sql, "FirstKeyword is not a word of the input");
  const absl::Status verdict = CheckSessionStatement(sql);
  if (!verdict.ok() && verdict.code() != absl::StatusCode::kInvalidArgument) {
    Fail("CheckSessionStatement answered other than OK or INVALID_ARGUMENT", sql);
  }
  for (const char* prefix : {" \n\t", "/* c */", "-- c\n", "--c\r"}) {
    const std::string prefixed = absl::StrCat(prefix, sql);
    if (FirstKeyword(prefixed) != first) {
      Fail("a leading comment or whitespace changed the first keyword", sql);
    }
    if (CheckSessionStatement(prefixed).code() != verdict.code()) {
      Fail("a leading comment or whitespace changed the session check", sql);
    }
  }
  return 0;
}
