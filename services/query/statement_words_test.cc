#include "services/query/statement_words.h"

#include "gtest/gtest.h"

namespace poolside::query {
namespace {

TEST(StatementWordsTest, FirstKeywordSkipsSpaceParenthesesAndComments) {
  EXPECT_EQ(FirstKeyword("SELECT 1"), "SELECT");
  EXPECT_EQ(FirstKeyword("  ((select 1))"), "select");
  EXPECT_EQ(FirstKeyword("-- a\n/* b /* nested */ still b */ VALUES (1)"), "VALUES");
  EXPECT_EQ(FirstKeyword("/* unterminated SELECT"), "");
  EXPECT_EQ(FirstKeyword(""), "");
  EXPECT_EQ(FirstKeyword("SELECTX 1"), "SELECTX");
  EXPECT_EQ(FirstKeyword("SET_x = 1"), "SET_x");
  EXPECT_EQ(FirstKeyword("'SELECT' 1"), "");
  EXPECT_EQ(FirstKeyword("\"select\" 1"), "");
}

TEST(StatementWordsTest, ContainsWordSeesOnlyWordsOutsideQuotingAndComments) {
  EXPECT_TRUE(ContainsWord("SELECT * FROM t FOR UPDATE", "for"));
  EXPECT_TRUE(ContainsWord("select * from t for share", "FOR"));
  EXPECT_TRUE(ContainsWord("SELECT 1 FROM t\nFOR/* c */UPDATE", "for"));
  EXPECT_FALSE(ContainsWord("SELECT 'for' FROM t", "for"));
  EXPECT_FALSE(ContainsWord("SELECT \"for\" FROM t", "for"));
  EXPECT_FALSE(ContainsWord("SELECT 1 /* for update */ -- for\n", "for"));
  EXPECT_FALSE(ContainsWord("SELECT format, fork, for_x, x_for FROM t", "for"));
  EXPECT_FALSE(ContainsWord("SELECT $$ FOR $$", "for"));
  EXPECT_FALSE(ContainsWord("", "for"));
}

TEST(StatementWordsTest, CommentsEndAtCarriageReturnsAsInPostgres) {
  EXPECT_EQ(FirstKeyword("--\rSET search_path TO evil"), "SET");
  EXPECT_EQ(CheckSessionStatement("--\rSET search_path TO evil").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckSessionStatement("SET --\rLOCAL x = 1").ok());
  EXPECT_TRUE(ContainsWord("SELECT * FROM t --\rFOR UPDATE", "for"));
}

TEST(StatementWordsTest, StringsContinuedOnTheNextLineKeepTheirEscapes) {
  // E'x' and '\'' after a newline are one E-string: \' does not end it.
  EXPECT_EQ(CheckSessionStatement(
                "SELECT E'x'\n'\\'', set_config($$search_path$$, $$evil$$, false), '\\'")
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckSessionStatement("SELECT E'x'\n-- c\n'\\'', pg_advisory_lock(7), '\\'").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FirstKeyword("E'a'\n'b' SELECT"), "");
  EXPECT_TRUE(ContainsWord("SELECT E'a'\n  'b' FOR", "for"));
  EXPECT_FALSE(ContainsWord("SELECT E'a'\n'\\' FOR '", "for"));
}

TEST(StatementWordsTest, SettingsChangedOtherThanBySetAreRefused) {
  for (const char* sql :
       {"UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
        "update ONLY pg_catalog.pg_settings set setting = 'x' where name = 'work_mem'",
        "UPDATE \"pg_settings\" SET setting = 'x' WHERE name = 'work_mem'", "SET local.x = 'y'",
        "SET transaction.x TO 'y'", "SET constraints.x = 'y'"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("SET LOCAL"), absl::string_view::npos) << s;
  }
  for (const char* sql :
       {"SET LOCAL search_path TO pg_temp, public", "SET LOCAL search_path = 'PG_TEMP'",
        "SELECT set_config('search_path', 'pg_temp', true)"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("pg_temp in a search path"), absl::string_view::npos) << s;
  }
  for (const char* sql :
       {"SELECT name, setting FROM pg_settings", "SET LOCAL local.x = 'y'",
        "UPDATE t SET v = (SELECT setting FROM pg_settings WHERE name = 'work_mem')",
        "SET LOCAL search_path TO app, public", "SELECT * FROM t FOR UPDATE"}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok()) << sql;
  }
}

TEST(StatementWordsTest, BuiltinsThatRunSqlTextAreRefused) {
  for (const char* sql :
       {"SELECT query_to_xml('select set_config(''search_path'',''x'',false)', false, false, '')",
        "SELECT pg_catalog.ts_stat('SELECT pg_advisory_lock(1)::text::tsvector')",
        "SELECT query_to_xml_and_xmlschema($1, true, false, '')"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("runs SQL text"), absl::string_view::npos) << s;
  }
  EXPECT_TRUE(CheckSessionStatement("SELECT table_to_xml('t', false, false, '')").ok());
}

TEST(StatementWordsTest, UnicodeEscapedNamesAreRefused) {
  for (const char* sql :
       {"SELECT U&\"\\0073et_config\"('search_path', 'evil', false)",
        "SELECT u&\"pg\\005Fadvisory_lock\"(8)", "CREATE TABLE U&\"pg\\005Ftemp\".t (id int)"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("U&"), absl::string_view::npos) << s;
  }
  EXPECT_TRUE(CheckSessionStatement("SELECT U&'d\\0061t\\+000061'").ok());
}

// standard_conforming_strings = off (a session, role or database setting)
// makes a backslash in a plain string an escape: what looks like one string
// can then hold a call. Statements are read both ways when it matters.
TEST(StatementWordsTest, PlainStringsAreReadWithAndWithoutBackslashEscapes) {
  EXPECT_EQ(
      CheckSessionStatement("SELECT '\\'', set_config('search_path', 'evil', false) --'").code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckSessionStatement("SELECT '\\'', pg_advisory_lock(1) --'").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ContainsWord("SELECT '\\' FOR UPDATE --'", "for"));
  // Standard strings holding backslashes are fine.
  EXPECT_TRUE(CheckSessionStatement("SELECT * FROM t WHERE a ~ '\\d+' AND b LIKE 'x\\_%'").ok());
}

TEST(StatementWordsTest, SessionStatementsAreRefusedWithTheTransactionScopedWay) {
  for (const char* sql :
       {"SET search_path TO other", "set statement_timeout = 0", "SET SESSION work_mem = '1GB'",
        "SET ROLE admin", "SET SESSION AUTHORIZATION bob", "/* c */ SET x.y = 1",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "RESET ALL", "reset search_path",
        "DISCARD ALL", "DEALLOCATE ALL", "PREPARE p AS SELECT 1", "LOAD 'auto_explain'",
        "LISTEN jobs", "unlisten *", "SET 'LOCAL'", "SET", "SET\n-- LOCAL\nx = 1"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("pooled connection"), absl::string_view::npos) << s;
  }
  EXPECT_NE(CheckSessionStatement("SET x = 1").message().find("SET LOCAL"),
            absl::string_view::npos);
  for (const char* sql :
       {"SET LOCAL statement_timeout = '1s'", "set local search_path to x", "set/* c */local x = 1",
        "SET\n-- c\nLOCAL x TO 1", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED", "SELECT set_config('x.y', '1', true)", "SELECT 'SET x = 1'",
        "SETTINGS", "VALUES (1)", "INSERT INTO t VALUES (1)",
        "WITH x AS (SELECT 1) SELECT * FROM x", "SET_x", ""}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok()) << sql;
  }
}

TEST(StatementWordsTest, SessionSetConfigIsRefusedUnlessLocal) {
  for (const char* sql :
       {"SELECT set_config('search_path', 'x', false)", "select SET_CONFIG('a.b', '1', FALSE)",
        "SELECT pg_catalog.set_config('role', 'admin', false)",
        "SELECT \"set_config\"('a.b', '1', false)", "SELECT set_config('a.b', $1, $2)",
        "SELECT set_config('a.b', '1', 1 = 0)", "SELECT set_config('a.b', '1', (true))",
        "SELECT set_config('a.b', '1')", "SELECT 1 WHERE set_config('a.b', '1', false) = '1'",
        "SELECT set_config('a.b', '1', true), set_config('a.c', '1', false)",
        "SELECT set_config /* c */ ('a.b', 'x,y', false)",
        "SELECT set_config('a.b', concat('(', ','), false)",
        "SELECT set_config('x.y', set_config('search_path', 'evil', false), true)",
        "SELECT 1 --\r, set_config('search_path', 'evil', false)",
        "SELECT '\\'', set_config($$search_path$$, $$evil$$, false) --'",
        "SELECT set_config('a.b', '1', true"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("set_config"), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find("pass true"), absl::string_view::npos) << s;
  }
  for (const char* sql :
       {"SELECT set_config('a.b', '1', true)", "SELECT set_config('a.b', f(1, 2), TRUE)",
        "SELECT 'set_config(''a'', ''b'', false)'", "SELECT $$set_config('a', 'b', false)$$",
        "SELECT $q$ $$ set_config('a', 'b', false) $q$",
        "SELECT E'\\' set_config(''a'', ''b'', false)'", "SELECT 1 -- set_config('a', 'b', false)",
        "SELECT /* /* set_config('a', 'b', false) */ */ 1", "SELECT \"set_config\" FROM t",
        "SELECT my_set_config('a', 'b', false)", "SELECT current_setting('set_config')",
        "SELECT set_config('x.y', set_config('a.b', 'c', true), true)",
        "SELECT '\\d+', set_config('a.b', '\\', true)"}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok()) << sql;
  }
}

TEST(StatementWordsTest, SessionAdvisoryLocksAreRefused) {
  for (const char* sql :
       {"SELECT pg_advisory_lock(1)", "SELECT pg_advisory_lock_shared(1, 2)",
        "SELECT pg_try_advisory_lock($1)", "select PG_TRY_ADVISORY_LOCK_SHARED(7)",
        "SELECT pg_catalog.pg_advisory_lock(1)",
        "SELECT set_config('x.y', pg_advisory_lock(7)::text, true)"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("pg_advisory_xact_lock"), absl::string_view::npos) << s;
  }
  for (const char* sql :
       {"SELECT pg_advisory_xact_lock(1)", "SELECT pg_try_advisory_xact_lock_shared(1)",
        "SELECT pg_advisory_unlock(1)", "SELECT 'pg_advisory_lock(1)'",
        "SELECT pg_advisory_lock FROM t"}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok()) << sql;
  }
}

TEST(StatementWordsTest, TemporaryObjectsAndHeldCursorsAreRefused) {
  for (const char* sql : {"CREATE TEMP TABLE t (id int)",
                          "create temporary table t AS SELECT 1",
                          "CREATE GLOBAL TEMPORARY TABLE t (id int)",
                          "CREATE LOCAL TEMP TABLE t (id int)",
                          "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
                          "CREATE TEMP SEQUENCE s",
                          "CREATE TABLE pg_temp.t (id int)",
                          "CREATE VIEW v AS SELECT * FROM pg_temp.t",
                          "CREATE TEMP TABLE t (id int) ON COMMIT DELETE ROWS",
                          "CREATE TEMP TABLE t (id int) ON COMMIT PRESERVE ROWS",
                          "SELECT * INTO TEMP t FROM accounts",
                          "SELECT 1 AS x INTO TEMPORARY TABLE t",
                          "WITH a AS (SELECT 1) SELECT * INTO TEMP t FROM a",
                          "SELECT 1 AS x INTO LOCAL TEMP t",
                          "SELECT 1 AS x INTO GLOBAL TEMPORARY t",
                          "SELECT 1 AS x INTO pg_temp.t",
                          "SELECT 1 AS x INTO TABLE pg_temp.t",
                          "CREATE TABLE pg_temp_3.y (id int)",
                          "CREATE TABLE \"pg_temp_12\".y (id int)",
                          "CREATE FUNCTION pg_temp.f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
                          "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
                          "EXPLAIN (ANALYZE) SELECT 1 INTO TEMP t",
                          "CREATE --\rTEMP TABLE t (id int)",
                          "SELECT 1 AS insert INTO TEMP t",
                          "SELECT 1 AS merge INTO pg_temp.t2",
                          "SELECT x, insert INTO TEMP t FROM y",
                          "EXPLAIN ANALYZE SELECT 1 AS insert INTO TEMP t",
                          "IMPORT FOREIGN SCHEMA s LIMIT TO (x) FROM SERVER srv INTO pg_temp"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("ON COMMIT DROP"), absl::string_view::npos) << s;
  }
  for (const char* sql :
       {"CREATE TEMP TABLE t (id int) ON COMMIT DROP",
        "CREATE TEMPORARY TABLE t ON COMMIT DROP AS SELECT 1", "CREATE TABLE t (temp int)",
        "CREATE TABLE t AS SELECT 'CREATE TEMP TABLE x' AS s", "CREATE INDEX ON t (temp)",
        "SELECT * INTO archive FROM t", "INSERT INTO temp VALUES (1)", "SELECT temp FROM t",
        "CREATE TABLE \"pg_temp\"\"x\" (id int)",
        "WITH x AS (SELECT 1) INSERT INTO temp SELECT * FROM x",
        "MERGE INTO temp USING s ON temp.id = s.id WHEN MATCHED THEN DELETE",
        "MERGE INTO temp t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "EXPLAIN ANALYZE INSERT INTO temp VALUES (1)",
        "CREATE RULE r AS ON INSERT TO a DO INSTEAD INSERT INTO temp VALUES (1)",
        "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO app", "SELECT * FROM pg_temp.t",
        "INSERT INTO pg_temp.t VALUES (1)", "SELECT 1 INTO TABLE temp"}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok()) << sql;
  }
  for (const char* sql : {"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                          "declare c scroll cursor with hold for select 1"}) {
    const absl::Status s = CheckSessionStatement(sql);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << sql;
    EXPECT_NE(s.message().find("WITHOUT HOLD"), absl::string_view::npos) << s;
  }
  EXPECT_TRUE(CheckSessionStatement("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1").ok());
  EXPECT_TRUE(CheckSessionStatement("DECLARE c CURSOR FOR SELECT 'WITH HOLD'").ok());
  EXPECT_TRUE(
      CheckSessionStatement("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold")
          .ok());
}

// Unterminated quotes and comments end the input (run under ASan, a read past
// the end fails this test).
TEST(StatementWordsTest, MalformedInputEndsTheScan) {
  for (const char* sql :
       {"SELECT 'unterminated set_config(", "SELECT \"unterminated", "SELECT $tag$ never closed",
        "SELECT E'\\", "/* open", "$", "SELECT $1", "SELECT set_config(", "SELECT set_config"}) {
    EXPECT_TRUE(CheckSessionStatement(sql).ok() ||
                CheckSessionStatement(sql).code() == absl::StatusCode::kInvalidArgument)
        << sql;
  }
  EXPECT_EQ(CheckSessionStatement("SELECT set_config(").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace poolside::query
