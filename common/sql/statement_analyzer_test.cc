#include "common/sql/statement_analyzer.h"

#include <pthread.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace poolside::sql {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr Grants kNoGrant{.ddl = false};
constexpr Grants kDdlGrant{.ddl = true};

absl::Status Check(absl::string_view sql, Scope scope, Grants grants = kNoGrant) {
  return Permitted(*AnalyzeOnce(sql), scope, grants);
}

// Every scope and grant refuses `sql` with INVALID_ARGUMENT naming `what`.
void ExpectRefusedEverywhere(absl::string_view sql, absl::string_view what) {
  SCOPED_TRACE(sql);
  for (Scope scope : {Scope::kAlone, Scope::kInTransaction}) {
    for (Grants grants : {kNoGrant, kDdlGrant}) {
      const absl::Status status = Check(sql, scope, grants);
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(status.message(), HasSubstr(what));
    }
  }
}

void ExpectAllowedEverywhere(absl::string_view sql) {
  SCOPED_TRACE(sql);
  for (Scope scope : {Scope::kAlone, Scope::kInTransaction}) {
    for (Grants grants : {kNoGrant, kDdlGrant}) {
      EXPECT_TRUE(Check(sql, scope, grants).ok()) << Check(sql, scope, grants);
    }
  }
}

// Allowed only inside ExecuteTransaction (with or without the grant).
void ExpectOnlyInTransaction(absl::string_view sql, absl::string_view what) {
  SCOPED_TRACE(sql);
  for (Grants grants : {kNoGrant, kDdlGrant}) {
    const absl::Status alone = Check(sql, Scope::kAlone, grants);
    EXPECT_EQ(alone.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(alone.message(), HasSubstr(what));
    EXPECT_TRUE(Check(sql, Scope::kInTransaction, grants).ok())
        << Check(sql, Scope::kInTransaction, grants);
  }
}

// Allowed only with the ddl grant (in both scopes).
void ExpectOnlyWithDdl(absl::string_view sql, absl::string_view what) {
  SCOPED_TRACE(sql);
  for (Scope scope : {Scope::kAlone, Scope::kInTransaction}) {
    const absl::Status refused = Check(sql, scope, kNoGrant);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(refused.message(), HasSubstr(what));
    EXPECT_THAT(refused.message(), HasSubstr("needs the ddl grant"));
    EXPECT_TRUE(Check(sql, scope, kDdlGrant).ok()) << Check(sql, scope, kDdlGrant);
  }
}

// The hostile wrappings of a statement that must not change its verdicts:
// leading and repeated semicolons, comments in every position, whitespace.
std::vector<std::string> Disguises(absl::string_view sql) {
  return {
      absl::StrCat(";", sql),
      absl::StrCat(";; ", sql),
      absl::StrCat(sql, ";;"),
      absl::StrCat(" ; ;\n\t", sql, " ;"),
      absl::StrCat("/* c */", sql),
      absl::StrCat("/* /* nested */ ; */ ", sql),
      absl::StrCat("-- c ;\n", sql),
      absl::StrCat("--\r\n", sql, " -- trailing"),
      absl::StrCat(sql, "/* trailing */"),
      absl::StrCat("\n\n   ", sql, "\n"),
  };
}

// ---------------------------------------------------------------------------
// Texts that are not exactly one statement.

TEST(StatementAnalyzerTest, EmptyTextsAreNoStatement) {
  for (absl::string_view sql : {"", "   ", "\n\t ", ";", ";;", " ; ; ", "-- only a comment",
                                "/* c */", "/* c */ ; -- d", "/* /* nested */ */"}) {
    SCOPED_TRACE(sql);
    const auto a = AnalyzeOnce(sql);
    EXPECT_EQ(a->parse_error.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(a->parse_error.message(), HasSubstr("no statement"));
    EXPECT_EQ(a->statement_count, 0);
    EXPECT_EQ(a->kind, StatementKind::kInvalid);
    EXPECT_EQ(a->normalized, "");
    EXPECT_EQ(a->fingerprint, 0u);
    ExpectRefusedEverywhere(sql, "no statement");
  }
}

TEST(StatementAnalyzerTest, SyntaxErrorsArePostgresMessagesWithTheirPosition) {
  const auto a = AnalyzeOnce("SELECT * FORM t");
  EXPECT_EQ(a->parse_error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a->parse_error.message(),
            "syntax error at or near \"FORM\" (at character 10) (SQLSTATE 42601)");
  EXPECT_EQ(a->statement_count, 0);
  EXPECT_EQ(a->kind, StatementKind::kInvalid);
  EXPECT_EQ(a->normalized, "");
  EXPECT_EQ(a->fingerprint, 0u);
  EXPECT_THAT(a->tables, IsEmpty());
  ExpectRefusedEverywhere("SELECT * FORM t", "syntax error at or near \"FORM\"");
  // The position counts characters, not bytes.
  EXPECT_THAT(AnalyzeOnce("SELECT 'é', FROM t")->parse_error.message(),
              HasSubstr("at or near \"FROM\" (at character 13)"));
  ExpectRefusedEverywhere("SELECT 'unterminated", "unterminated quoted string");
  ExpectRefusedEverywhere("SELECT 1; SELECT 'x' FORM t", "syntax error");
  // A bounded message even when the scanner quotes the rest of a long text.
  const auto long_error = AnalyzeOnce(absl::StrCat("SELECT '", std::string(100000, 'x')));
  EXPECT_LE(long_error->parse_error.message().size(), 600u);
}

TEST(StatementAnalyzerTest, NulBytesAndInvalidUtf8AreRefusedBeforeParsing) {
  const std::string nul("SELECT 1\0; COMMIT", 17);
  const auto a = AnalyzeOnce(nul);
  EXPECT_EQ(a->parse_error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a->parse_error.message(), "SQL text contains a NUL byte (at byte 9)");
  EXPECT_EQ(a->statement_count, 0);
  ExpectRefusedEverywhere(nul, "NUL byte");
  ExpectRefusedEverywhere(std::string("\0", 1), "NUL byte");
  for (const std::string& bad : {
           std::string("SELECT '\xff'"),              // never valid
           std::string("SELECT '\xc0\x80'"),          // overlong NUL
           std::string("SELECT '\xe0\x80\xaf'"),      // overlong
           std::string("SELECT '\xed\xa0\x80'"),      // surrogate
           std::string("SELECT '\xf4\x90\x80\x80'"),  // above U+10FFFF
           std::string("SELECT '\xe2\x82'"),          // truncated
           std::string("SELECT 1 -- \x80"),           // in a comment too
       }) {
    SCOPED_TRACE(bad);
    const auto b = AnalyzeOnce(bad);
    EXPECT_EQ(b->parse_error.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(b->parse_error.message(), HasSubstr("not valid UTF-8"));
    EXPECT_EQ(b->kind, StatementKind::kInvalid);
  }
  EXPECT_TRUE(AnalyzeOnce("SELECT 'é€𝄞'")->parse_error.ok());
}

TEST(StatementAnalyzerTest, EmptyStatementsAreNotCounted) {
  for (absl::string_view sql : {";COMMIT", ";; COMMIT", "COMMIT;;", ";SELECT 1", "SELECT 1;"}) {
    EXPECT_EQ(AnalyzeOnce(sql)->statement_count, 1) << sql;
    EXPECT_TRUE(AnalyzeOnce(sql)->parse_error.ok()) << sql;
  }
}

TEST(StatementAnalyzerTest, MultipleStatementsAreRefusedEverywhere) {
  for (absl::string_view sql :
       {"SELECT 1; SELECT 2", "SELECT 1;;SELECT 2", "INSERT INTO t VALUES (1); COMMIT",
        "SELECT 1; BEGIN", "/* a */ SELECT 1 /* b */; /* c */ SELECT 2"}) {
    SCOPED_TRACE(sql);
    const auto a = AnalyzeOnce(sql);
    EXPECT_TRUE(a->parse_error.ok());
    EXPECT_EQ(a->statement_count, 2);
    EXPECT_EQ(a->kind, StatementKind::kInvalid);
    ExpectRefusedEverywhere(sql, "2 statements in one text; send one per call");
  }
  ExpectRefusedEverywhere("SELECT 1; SELECT 2; SELECT 3", "3 statements");
  // A rule's action list is one statement.
  EXPECT_EQ(
      AnalyzeOnce("CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2)")->statement_count,
      1);
}

TEST(StatementAnalyzerTest, PermittedRefusesAnAnalysisAnalyzeDidNotMake) {
  const Analysis empty;
  EXPECT_EQ(Permitted(empty, Scope::kAlone, kDdlGrant).code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Transaction control.

TEST(StatementAnalyzerTest, TransactionControlIsRefusedInEveryScopeAndDisguise) {
  for (absl::string_view sql : {"COMMIT",
                                "commit",
                                "CoMmIt",
                                "END",
                                "COMMIT AND CHAIN",
                                "ABORT",
                                "ROLLBACK",
                                "BEGIN",
                                "BEGIN ISOLATION LEVEL SERIALIZABLE",
                                "START TRANSACTION READ WRITE",
                                "SAVEPOINT s",
                                "RELEASE SAVEPOINT s",
                                "RELEASE s",
                                "ROLLBACK TO SAVEPOINT s",
                                "PREPARE TRANSACTION 'x'",
                                "COMMIT PREPARED 'x'",
                                "ROLLBACK PREPARED 'x'",
                                "SET TRANSACTION READ WRITE",
                                "SET LOCAL TRANSACTION READ WRITE",
                                "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
                                "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
                                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"}) {
    EXPECT_EQ(AnalyzeOnce(sql)->kind, StatementKind::kTransactionControl) << sql;
    ExpectRefusedEverywhere(sql, "ExecuteTransaction");
    for (const std::string& disguised : Disguises(sql)) {
      EXPECT_EQ(AnalyzeOnce(disguised)->statement_count, 1) << disguised;
      ExpectRefusedEverywhere(disguised, "ExecuteTransaction");
    }
  }
  EXPECT_EQ(AnalyzeOnce(";COMMIT")->command, "COMMIT");
  EXPECT_THAT(Check("END", Scope::kAlone).message(),
              HasSubstr("COMMIT is transaction control, which poolside does itself"));
  EXPECT_THAT(Check("ROLLBACK TO s", Scope::kInTransaction).message(),
              HasSubstr("ROLLBACK TO SAVEPOINT is transaction control"));
}

TEST(StatementAnalyzerTest, KeywordsInsideLiteralsAndCommentsAreNotStatements) {
  for (absl::string_view sql : {
           "SELECT 'COMMIT'",
           "SELECT ';COMMIT'",
           "SELECT 'a'';COMMIT;--'",
           "SELECT E'\\';COMMIT;--'",
           "SELECT E'\\x3bCOMMIT'",
           "SELECT $$;COMMIT;$$",
           "SELECT $tag$ ; SET ROLE postgres; $notag$ $tag$",
           "SELECT U&'\\0043OMMIT'",
           "SELECT U&'!0043OMMIT' UESCAPE '!'",
           "SELECT 1 -- ;COMMIT",
           "SELECT /* ;COMMIT */ 1",
           "SELECT /* /* ; */ COMMIT */ 1",
           "SELECT 'set_config(''a'', ''b'', false)'",
           "SELECT 'pg_advisory_lock(1)', $$pg_read_file('/etc/passwd')$$",
           "SELECT \"COMMIT\" FROM t",
           "SELECT 1 AS \";COMMIT\"",
       }) {
    SCOPED_TRACE(sql);
    const auto a = AnalyzeOnce(sql);
    ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
    EXPECT_EQ(a->statement_count, 1);
    EXPECT_EQ(a->kind, StatementKind::kRead);
    EXPECT_THAT(a->functions, IsEmpty());
    ExpectAllowedEverywhere(sql);
  }
}

// ---------------------------------------------------------------------------
// Session state.

TEST(StatementAnalyzerTest, SetWithoutLocalAndResetAreRefused) {
  for (absl::string_view sql :
       {"SET search_path = evil", "set search_path to evil, public", "SET SESSION work_mem = '1GB'",
        "SET statement_timeout TO DEFAULT", "SET TIME ZONE 'UTC'", "SET NAMES 'LATIN1'",
        "SET SCHEMA 'evil'", "SET XML OPTION DOCUMENT", "SET \"search_path\" = x",
        "SET app.tenant = '42'"}) {
    EXPECT_EQ(AnalyzeOnce(sql)->kind, StatementKind::kSession) << sql;
    ExpectRefusedEverywhere(sql, "without LOCAL changes the session of a pooled connection");
    for (const std::string& disguised : Disguises(sql)) {
      ExpectRefusedEverywhere(disguised, "without LOCAL");
    }
  }
  EXPECT_THAT(Check("SET search_path = x", Scope::kInTransaction).message(),
              HasSubstr("SET search_path without LOCAL"));
  for (absl::string_view sql : {"RESET ALL", "RESET search_path", "RESET ROLE",
                                "RESET SESSION AUTHORIZATION", "RESET statement_timeout"}) {
    ExpectRefusedEverywhere(sql, "RESET");
    ExpectRefusedEverywhere(sql, "changes the session of a pooled connection");
  }
}

TEST(StatementAnalyzerTest, SetLocalIsAllowed) {
  for (absl::string_view sql :
       {"SET LOCAL search_path = app, public", "set local statement_timeout = '5s'",
        "SET LOCAL work_mem TO DEFAULT", "SET LOCAL TIME ZONE 'UTC'",
        "SET LOCAL lock_timeout FROM CURRENT", "SET LOCAL app.tenant = '42'"}) {
    EXPECT_EQ(AnalyzeOnce(sql)->kind, StatementKind::kSession) << sql;
    EXPECT_EQ(AnalyzeOnce(sql)->command, "SET") << sql;
    ExpectAllowedEverywhere(sql);
    for (const std::string& disguised : Disguises(sql)) ExpectAllowedEverywhere(disguised);
  }
}

TEST(StatementAnalyzerTest, SetLocalOfIdentityTransactionAndSeedIsRefused) {
  ExpectRefusedEverywhere("SET ROLE postgres", "SET ROLE changes the database role");
  ExpectRefusedEverywhere("SET LOCAL ROLE postgres", "changes the database role");
  ExpectRefusedEverywhere("SET ROLE NONE", "changes the database role");
  ExpectRefusedEverywhere("SET SESSION AUTHORIZATION postgres", "SET SESSION AUTHORIZATION");
  ExpectRefusedEverywhere("SET LOCAL SESSION AUTHORIZATION DEFAULT", "database role");
  ExpectRefusedEverywhere("SET LOCAL role = 'postgres'", "database role");
  ExpectRefusedEverywhere("SET LOCAL transaction_read_only = off",
                          "use ExecuteTransaction's isolation and read_only");
  ExpectRefusedEverywhere("SET LOCAL transaction_isolation = 'read uncommitted'",
                          "ExecuteTransaction's isolation");
  ExpectRefusedEverywhere("SET LOCAL Transaction_Deferrable = on", "isolation and read_only");
  ExpectRefusedEverywhere("SET LOCAL seed = 0.5", "reseeds random()");
  EXPECT_EQ(AnalyzeOnce("SET ROLE x")->command, "SET ROLE");
}

// The analyzer reads texts as UTF-8 with standard_conforming_strings on; a
// later statement of the same transaction read otherwise by the server could
// hide a call in what the analyzer sees as literals.
TEST(StatementAnalyzerTest, SettingsThatChangeHowTextIsReadAreRefused) {
  for (absl::string_view sql :
       {"SET LOCAL standard_conforming_strings = off",
        "SET LOCAL Standard_Conforming_Strings TO DEFAULT", "SET LOCAL client_encoding = 'SJIS'",
        "SET LOCAL NAMES 'BIG5'", "SELECT set_config('standard_conforming_strings', 'off', true)",
        "SELECT pg_catalog.set_config('CLIENT_ENCODING', 'GBK', true)"}) {
    ExpectRefusedEverywhere(sql, "changes how PostgreSQL reads the text of later statements");
  }
}

TEST(StatementAnalyzerTest, SearchPathNamingPgTempIsRefused) {
  for (absl::string_view sql :
       {"SET LOCAL search_path = pg_temp, public", "SET LOCAL search_path = public, 'PG_TEMP'",
        "SET LOCAL search_path = \"pg_temp_3\"", "SET LOCAL search_path TO 'public,pg_temp'"}) {
    ExpectRefusedEverywhere(sql, "naming pg_temp");
  }
  ExpectAllowedEverywhere("SET LOCAL search_path = public, app");
}

TEST(StatementAnalyzerTest, SessionStatementsAreRefusedEverywhere) {
  for (absl::string_view sql : {"DISCARD ALL",
                                "DISCARD PLANS",
                                "DISCARD TEMP",
                                "DISCARD SEQUENCES",
                                "LISTEN ch",
                                "UNLISTEN *",
                                "UNLISTEN ch",
                                "NOTIFY poolside_invalidate",
                                "NOTIFY ch, 'payload'",
                                "PREPARE poolside_1 AS UPDATE t SET a = 1",
                                "PREPARE p (int) AS SELECT $1",
                                "EXECUTE poolside_1",
                                "EXECUTE p(1)",
                                "DEALLOCATE poolside_1",
                                "DEALLOCATE ALL",
                                "DEALLOCATE PREPARE p",
                                "LOAD 'auto_explain'",
                                "EXPLAIN EXECUTE p",
                                "EXPLAIN ANALYZE EXECUTE p",
                                "CREATE TABLE x AS EXECUTE p"}) {
    ExpectRefusedEverywhere(sql, "");
    for (const std::string& disguised : Disguises(sql)) ExpectRefusedEverywhere(disguised, "");
  }
  EXPECT_THAT(Check("DISCARD ALL", Scope::kInTransaction).message(),
              HasSubstr("poolside's own prepared statements"));
  EXPECT_THAT(Check("NOTIFY ch", Scope::kInTransaction, kDdlGrant).message(),
              HasSubstr("cache invalidation"));
  EXPECT_THAT(Check("EXECUTE p", Scope::kAlone).message(), HasSubstr("prepared statements"));
  EXPECT_EQ(AnalyzeOnce("NOTIFY ch")->kind, StatementKind::kUtility);
  EXPECT_EQ(AnalyzeOnce("LISTEN ch")->kind, StatementKind::kSession);
}

TEST(StatementAnalyzerTest, CursorsOnlyInsideATransactionAndNeverWithHold) {
  ExpectOnlyInTransaction("DECLARE c CURSOR FOR SELECT * FROM t", "DECLARE outside");
  ExpectOnlyInTransaction("DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", "DECLARE");
  ExpectOnlyInTransaction("FETCH 10 FROM c", "FETCH outside ExecuteTransaction");
  ExpectOnlyInTransaction("MOVE NEXT IN c", "MOVE outside ExecuteTransaction");
  ExpectOnlyInTransaction("CLOSE c", "CLOSE outside ExecuteTransaction");
  ExpectOnlyInTransaction("CLOSE ALL", "CLOSE");
  ExpectRefusedEverywhere("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD");
  ExpectRefusedEverywhere("declare c binary insensitive no scroll cursor with hold for select 1",
                          "WITH HOLD");
  ExpectRefusedEverywhere(";DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD");
  // The cursor's query is checked like any other.
  ExpectRefusedEverywhere("DECLARE c CURSOR FOR SELECT pg_advisory_lock(1)", "pg_advisory_lock");
}

TEST(StatementAnalyzerTest, LockOnlyInsideATransaction) {
  ExpectOnlyInTransaction("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK outside");
  ExpectOnlyInTransaction("lock t", "LOCK");
  EXPECT_EQ(AnalyzeOnce("LOCK t")->kind, StatementKind::kUtility);
  for (absl::string_view sql :
       {"VACUUM", "VACUUM (ANALYZE) t", "ANALYZE t", "CHECKPOINT", "CLUSTER t USING i",
        "REINDEX TABLE t", "REFRESH MATERIALIZED VIEW v", "SET CONSTRAINTS ALL DEFERRED"}) {
    ExpectAllowedEverywhere(sql);
    EXPECT_EQ(AnalyzeOnce(sql)->kind, StatementKind::kUtility) << sql;
  }
  EXPECT_EQ(AnalyzeOnce("ANALYZE t")->command, "ANALYZE");
}

TEST(StatementAnalyzerTest, CopyIsRefusedInEveryScopeAndGrant) {
  for (absl::string_view sql :
       {"COPY t FROM STDIN", "COPY t TO STDOUT", "copy t (a, b) from '/etc/passwd'",
        "COPY (SELECT 1) TO PROGRAM 'id > /tmp/x'", "COPY t FROM PROGRAM 'curl evil'",
        "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT binary)"}) {
    ExpectRefusedEverywhere(sql,
                            "COPY is not allowed through query: write rows with the ingest "
                            "service and read them with ExecuteStream");
    for (const std::string& disguised : Disguises(sql)) ExpectRefusedEverywhere(disguised, "COPY");
  }
  EXPECT_EQ(AnalyzeOnce("COPY t TO STDOUT")->kind, StatementKind::kUtility);
  EXPECT_EQ(AnalyzeOnce("COPY t TO STDOUT")->command, "COPY");
}

TEST(StatementAnalyzerTest, WritesToPgSettingsAreRefused) {
  for (absl::string_view sql :
       {"UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
        "update PG_CATALOG.PG_SETTINGS set setting = 'x' where name = 'y'",
        "WITH u AS (UPDATE pg_settings SET setting = 'x' WHERE name = 'y' RETURNING 1) SELECT * "
        "FROM u",
        "INSERT INTO pg_settings (name, setting) VALUES ('a', 'b')",
        "DELETE FROM pg_catalog.pg_settings"}) {
    ExpectRefusedEverywhere(sql, "changes settings for the session of a pooled connection");
  }
  ExpectAllowedEverywhere("SELECT name, setting FROM pg_settings");
  ExpectAllowedEverywhere("UPDATE app.pg_settings SET v = 1");
}

// ---------------------------------------------------------------------------
// Temporary objects.

TEST(StatementAnalyzerTest, TemporaryObjectsAreRefusedUnlessDroppedAtCommitInATransaction) {
  for (absl::string_view sql : {
           "CREATE TEMP TABLE x (a int)",
           "CREATE TEMPORARY TABLE x (a int) ON COMMIT PRESERVE ROWS",
           "CREATE LOCAL TEMP TABLE x (a int) ON COMMIT DELETE ROWS",
           "create global temporary table x (a int)",
           "CREATE TABLE pg_temp.x (a int)",
           "CREATE TABLE pg_temp_3.x (a int)",
           "CREATE TEMP VIEW v AS SELECT 1",
           "CREATE TEMP SEQUENCE s",
           "CREATE SEQUENCE pg_temp.s",
           "CREATE VIEW pg_temp.v AS SELECT 1",
           "SELECT 1 AS a INTO TEMP x",
           "SELECT 1 AS a INTO TEMPORARY TABLE x",
           "SELECT 1 AS a INTO pg_temp.x",
           "CREATE TEMP TABLE x AS SELECT 1",
           "CREATE TABLE pg_temp.x AS SELECT 1",
           "EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1",
           "EXPLAIN CREATE TEMP TABLE x AS SELECT 1",
           "CREATE TYPE pg_temp.t AS (a int)",
           "CREATE TYPE pg_temp.e AS ENUM ('a')",
           "CREATE DOMAIN pg_temp.d AS int",
           "CREATE SCHEMA s CREATE TABLE pg_temp.x (a int)",
       }) {
    ExpectRefusedEverywhere(sql, "outlives the call on a pooled connection");
    for (const std::string& disguised : Disguises(sql)) {
      ExpectRefusedEverywhere(disguised, "temporary");
    }
  }
  // Functions in pg_temp are refused even with the ddl grant.
  ExpectRefusedEverywhere("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                          "pg_temp.f");
  EXPECT_THAT(Check("CREATE TEMP TABLE x (a int)", Scope::kInTransaction).message(),
              HasSubstr("CREATE TEMP TABLE x creates a temporary object"));
  EXPECT_THAT(Check("CREATE TABLE pg_temp.x (a int)", Scope::kAlone).message(),
              HasSubstr("CREATE TABLE pg_temp.x creates a temporary object"));

  for (absl::string_view sql : {
           "CREATE TEMP TABLE x (a int) ON COMMIT DROP",
           "CREATE TEMPORARY TABLE x (LIKE t) ON COMMIT DROP",
           "CREATE TABLE pg_temp.x (a int) ON COMMIT DROP",
           "CREATE TEMP TABLE x ON COMMIT DROP AS SELECT * FROM t",
           "EXPLAIN ANALYZE CREATE TEMP TABLE x ON COMMIT DROP AS SELECT 1",
       }) {
    ExpectOnlyInTransaction(sql, "ON COMMIT DROP belongs inside ExecuteTransaction");
  }
  // Not temporary: a quoted "PG_TEMP" is another schema; UNLOGGED is not TEMP.
  ExpectAllowedEverywhere("CREATE TABLE \"PG_TEMP\".x (a int)");
  ExpectAllowedEverywhere("CREATE UNLOGGED TABLE x (a int)");
  ExpectAllowedEverywhere("CREATE TABLE x (a int)");
}

// ---------------------------------------------------------------------------
// What needs the ddl grant.

TEST(StatementAnalyzerTest, CodeAndSettingsNeedTheDdlGrant) {
  for (absl::string_view sql : {
           "DO $$ BEGIN PERFORM 1; END $$",
           "DO LANGUAGE plpgsql $$ BEGIN PERFORM set_config('a', 'b', false); END $$",
           "do 'begin null; end'",
           "CALL p()",
           "CALL app.p(1, 'x')",
           "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
           "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1",
           "CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t $$",
           "ALTER FUNCTION f() SET search_path = evil",
           "ALTER PROCEDURE p() SECURITY DEFINER",
           "ALTER ROUTINE f() RENAME TO g",
           "ALTER FUNCTION f() OWNER TO postgres",
           "ALTER FUNCTION f() SET SCHEMA evil",
           "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
           "CREATE CONSTRAINT TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
           "ALTER TRIGGER tr ON t RENAME TO tr2",
           "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
           "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
           "ALTER EVENT TRIGGER e DISABLE",
           "ALTER ROLE r SET search_path = evil",
           "ALTER ROLE ALL RESET ALL",
           "ALTER USER r IN DATABASE d SET work_mem = '1GB'",
           "ALTER DATABASE d SET search_path = evil",
           "ALTER DATABASE d RESET ALL",
           "ALTER SYSTEM SET max_connections = 1",
           "ALTER SYSTEM RESET ALL",
           "CREATE AGGREGATE a (int) (SFUNC = int4pl, STYPE = int)",
           "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)",
           "ALTER OPERATOR === (int, int) SET (RESTRICT = eqsel)",
           "CREATE CAST (int AS text) WITH FUNCTION f(int)",
           "CREATE EXTENSION dblink",
           "ALTER EXTENSION hypopg UPDATE",
           "CREATE LANGUAGE plperl",
       }) {
    ExpectOnlyWithDdl(sql, "");
    for (const std::string& disguised : Disguises(sql)) ExpectOnlyWithDdl(disguised, "");
  }
  EXPECT_THAT(Check("DO $$ BEGIN END $$", Scope::kAlone).message(),
              HasSubstr("DO needs the ddl grant: it runs code poolside cannot check"));
  EXPECT_THAT(
      Check("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", Scope::kInTransaction)
          .message(),
      HasSubstr("CREATE OR REPLACE PROCEDURE needs the ddl grant"));
  EXPECT_EQ(AnalyzeOnce("DO $$ BEGIN END $$")->kind, StatementKind::kUtility);
  EXPECT_EQ(AnalyzeOnce("CALL p()")->kind, StatementKind::kUtility);
  EXPECT_EQ(AnalyzeOnce("ALTER SYSTEM SET a = 1")->kind, StatementKind::kDdl);
  // Plain DDL needs no grant (PostgreSQL's privileges decide).
  for (absl::string_view sql :
       {"CREATE TABLE t (a int)", "ALTER TABLE t ADD COLUMN b int", "DROP TABLE t",
        "CREATE INDEX ON t (a)", "GRANT SELECT ON t TO r", "COMMENT ON TABLE t IS 'x'",
        "DROP FUNCTION f()", "CREATE VIEW v AS SELECT 1", "CREATE TYPE e AS ENUM ('a')"}) {
    ExpectAllowedEverywhere(sql);
    EXPECT_EQ(AnalyzeOnce(sql)->kind, StatementKind::kDdl) << sql;
  }
  // Code defined with the grant is still checked where it is parsed.
  ExpectRefusedEverywhere(
      "CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN "
      "set_config('search_path', 'evil', false)",
      "set_config");
  ExpectRefusedEverywhere("CALL p(pg_advisory_lock(1))", "pg_advisory_lock");
}

// ---------------------------------------------------------------------------
// Refused functions.

TEST(StatementAnalyzerTest, SetConfigOnlyInItsTransactionScopedLiteralForm) {
  for (absl::string_view sql :
       {"SELECT set_config('search_path', 'evil', false)",
        "select SET_CONFIG('search_path', 'evil', FALSE)",
        "SELECT \"set_config\"('search_path', 'evil', false)",
        "SELECT pg_catalog.set_config('search_path', 'evil', false)",
        "SELECT \"pg_catalog\".\"set_config\"('a.b', 'c', false)",
        "SELECT PG_CATALOG.Set_Config('a.b', 'c', false)",
        "SELECT app.set_config('a.b', 'c', false)", "SELECT set_config('a.b', 'c', 'true')",
        "SELECT set_config('a.b', 'c', 'true'::boolean)",
        "SELECT set_config('a.b', 'c', true::boolean)", "SELECT set_config('a.b', 'c', 1::bool)",
        "SELECT set_config('a.b', 'c', NOT false)", "SELECT set_config('a.b', 'c', $1)",
        "SELECT set_config('a.b', 'c', null)", "SELECT set_config('a.b', 'c', x) FROM t"}) {
    ExpectRefusedEverywhere(sql, "with is_local other than the literal true");
    ExpectRefusedEverywhere(sql, "use set_config(name, value, true) inside ExecuteTransaction");
  }
  EXPECT_THAT(Check("SELECT pg_catalog.set_config('a', 'b', false)", Scope::kAlone).message(),
              HasSubstr("pg_catalog.set_config with is_local"));
  for (absl::string_view sql :
       {"SELECT set_config(current_user, 'c', true)",
        "SELECT set_config('a.b', current_user, true)", "SELECT set_config('a.b', $1, true)",
        "SELECT set_config('a.b', 'c'::text, true)", "SELECT set_config('a.b', NULL, true)"}) {
    ExpectRefusedEverywhere(sql, "not a string literal");
  }
  for (absl::string_view sql :
       {"SELECT set_config(setting_name => 'a.b', new_value => 'c', is_local => true)",
        "SELECT set_config('a.b', 'c')", "SELECT set_config('a.b', 'c', true, true)",
        "SELECT set_config(VARIADIC ARRAY['a', 'b'])"}) {
    ExpectRefusedEverywhere(sql, "three literal arguments");
  }
  ExpectRefusedEverywhere("SELECT set_config('ROLE', 'postgres', true)", "database role");
  ExpectRefusedEverywhere("SELECT set_config('session_authorization', 'postgres', true)",
                          "database role");
  ExpectRefusedEverywhere("SELECT set_config('transaction_read_only', 'off', true)",
                          "isolation and read_only");
  ExpectRefusedEverywhere("SELECT set_config('seed', '0.5', true)", "reseeds");
  ExpectRefusedEverywhere("SELECT set_config('search_path', 'public, pg_temp', true)",
                          "naming pg_temp");

  // The transaction-scoped form is allowed wherever it stands; such a read
  // never shares a Sync.
  for (absl::string_view sql : {"SELECT set_config('search_path', 'app, public', true)",
                                "SELECT pg_catalog.set_config('statement_timeout', '5s', TRUE)",
                                "SELECT set_config(E'app.tenant', $$42$$, (true))",
                                "SELECT * FROM set_config('app.x', 'y', true)"}) {
    ExpectAllowedEverywhere(sql);
    EXPECT_FALSE(AnalyzeOnce(sql)->shareable_syntax) << sql;
  }
  // A quoted upper-case name is another function.
  ExpectAllowedEverywhere("SELECT \"SET_CONFIG\"('a', 'b', false)");
}

TEST(StatementAnalyzerTest, RefusedFunctionsInEveryPosition) {
  // {call, expected name in the message}
  const std::vector<std::pair<std::string, std::string>> calls = {
      {"pg_advisory_lock(1)", "pg_advisory_lock"},
      {"pg_advisory_lock_shared(1, 2)", "pg_advisory_lock_shared"},
      {"pg_try_advisory_lock(1)", "pg_try_advisory_lock"},
      {"pg_try_advisory_lock_shared(1)", "pg_try_advisory_lock_shared"},
      {"pg_advisory_unlock(1)", "pg_advisory_unlock"},
      {"pg_advisory_unlock_shared(1)", "pg_advisory_unlock_shared"},
      {"pg_advisory_unlock_all()", "pg_advisory_unlock_all"},
      {"setseed(0.5)", "setseed"},
      {"dblink('dbname=x', 'SELECT 1')", "dblink"},
      {"dblink_exec('DELETE FROM t')", "dblink_exec"},
      {"dblink_connect('c', 'dbname=x')", "dblink_connect"},
      {"query_to_xml('SELECT 1', true, true, '')", "query_to_xml"},
      {"query_to_xmlschema('SELECT 1', true, true, '')", "query_to_xmlschema"},
      {"query_to_xml_and_xmlschema('SELECT 1', true, true, '')", "query_to_xml_and_xmlschema"},
      {"cursor_to_xml('c', 1, true, true, '')", "cursor_to_xml"},
      {"cursor_to_xmlschema('c', true, true, '')", "cursor_to_xmlschema"},
      {"table_to_xml('t', true, true, '')", "table_to_xml"},
      {"table_to_xml_and_xmlschema('t', true, true, '')", "table_to_xml_and_xmlschema"},
      {"schema_to_xml('public', true, true, '')", "schema_to_xml"},
      {"database_to_xml(true, true, '')", "database_to_xml"},
      {"ts_rewrite('a'::tsquery, 'SELECT a, b FROM aliases')", "ts_rewrite"},
      {"ts_stat('SELECT v FROM t')", "ts_stat"},
      {"crosstab('SELECT 1')", "crosstab"},
      {"lo_import('/etc/passwd')", "lo_import"},
      {"lo_export(1, '/tmp/x')", "lo_export"},
      {"lo_unlink(1)", "lo_unlink"},
      {"lo_from_bytea(0, 'x')", "lo_from_bytea"},
      {"lo_put(1, 0, 'x')", "lo_put"},
      {"loread(1, 10)", "loread"},
      {"lowrite(1, 'x')", "lowrite"},
      {"pg_read_file('/etc/passwd')", "pg_read_file"},
      {"pg_read_binary_file('/etc/passwd')", "pg_read_binary_file"},
      {"pg_ls_dir('.')", "pg_ls_dir"},
      {"pg_ls_waldir()", "pg_ls_waldir"},
      {"pg_stat_file('postgresql.conf')", "pg_stat_file"},
      {"pg_file_write('x', 'y', false)", "pg_file_write"},
      {"pg_cancel_backend(1)", "pg_cancel_backend"},
      {"pg_terminate_backend(1)", "pg_terminate_backend"},
      {"pg_notify('poolside_invalidate', 'x')", "pg_notify"},
      {"pg_reload_conf()", "pg_reload_conf"},
      {"pg_rotate_logfile()", "pg_rotate_logfile"},
      {"pg_switch_wal()", "pg_switch_wal"},
      {"pg_create_restore_point('x')", "pg_create_restore_point"},
      {"pg_backup_start('x')", "pg_backup_start"},
      {"pg_backup_stop()", "pg_backup_stop"},
      {"pg_promote()", "pg_promote"},
      {"pg_logical_emit_message(true, 'x', 'y')", "pg_logical_emit_message"},
      {"pg_create_logical_replication_slot('s', 'pgoutput')", "pg_create_logical_replication_slot"},
      {"pg_create_physical_replication_slot('s')", "pg_create_physical_replication_slot"},
      {"pg_copy_logical_replication_slot('a', 'b')", "pg_copy_logical_replication_slot"},
      {"pg_drop_replication_slot('s')", "pg_drop_replication_slot"},
      {"pg_replication_origin_create('o')", "pg_replication_origin_create"},
      {"pg_replication_origin_session_setup('o')", "pg_replication_origin_session_setup"},
      {"pg_logical_slot_get_changes('s', NULL, NULL)", "pg_logical_slot_get_changes"},
      {"pg_stat_reset()", "pg_stat_reset"},
      {"pg_stat_reset_shared('bgwriter')", "pg_stat_reset_shared"},
      {"pg_stat_statements_reset()", "pg_stat_statements_reset"},
      {"pg_log_backend_memory_contexts(1)", "pg_log_backend_memory_contexts"},
      {"pg_import_system_collations('pg_catalog')", "pg_import_system_collations"},
      {"hypopg_create_index('CREATE INDEX ON t (a)')", "hypopg_create_index"},
  };
  // Positions a hostile caller would try; %s is the call.
  const std::vector<std::string> positions = {
      "SELECT %s",
      "select %s;",
      ";SELECT %s",
      "SELECT * FROM %s",
      "SELECT * FROM t, LATERAL %s x",
      "SELECT * FROM ROWS FROM (%s) x",
      "SELECT (SELECT %s)",
      "SELECT * FROM (SELECT %s) s",
      "SELECT * FROM t WHERE EXISTS (SELECT %s)",
      "SELECT * FROM t WHERE a IN (SELECT %s)",
      "WITH c AS (SELECT %s) SELECT * FROM c",
      "WITH RECURSIVE c AS (SELECT 1 UNION ALL SELECT %s FROM c) SELECT * FROM c",
      "VALUES (%s)",
      "VALUES (1), (%s)",
      "SELECT 1 UNION SELECT %s",
      "SELECT a FROM t ORDER BY %s",
      "SELECT a FROM t GROUP BY a HAVING count(%s) > 0",
      "SELECT count(*) FILTER (WHERE %s IS NULL) FROM t",
      "SELECT row_number() OVER (ORDER BY %s) FROM t",
      "SELECT CASE WHEN true THEN %s END",
      "SELECT coalesce(NULL, %s)",
      "SELECT ARRAY[%s]",
      "SELECT ROW(%s)",
      "SELECT lower(upper(%s::text))",
      "SELECT * FROM t WHERE a = 1 AND b = %s",
      "SELECT * FROM t LIMIT %s",
      "EXPLAIN SELECT %s",
      "EXPLAIN ANALYZE SELECT %s",
      "EXPLAIN (ANALYZE, BUFFERS) SELECT %s",
      "CREATE TABLE x AS SELECT %s",
      "CREATE MATERIALIZED VIEW v AS SELECT %s",
      "CREATE VIEW v AS SELECT %s",
      "SELECT %s INTO x",
      "INSERT INTO t VALUES (%s)",
      "INSERT INTO t SELECT %s",
      "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = %s",
      "INSERT INTO t VALUES (1) RETURNING %s",
      "UPDATE t SET a = %s",
      "UPDATE t SET a = 1 FROM (SELECT %s) s",
      "DELETE FROM t WHERE a = %s",
      "DELETE FROM t USING (SELECT %s) s",
      "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = %s",
      "WITH d AS (DELETE FROM t RETURNING %s) SELECT * FROM d",
      "CREATE TABLE x (a int DEFAULT %s)",
      "CREATE TABLE x (a int GENERATED ALWAYS AS (%s) STORED)",
      "CREATE TABLE x (a int CHECK (%s IS NOT NULL))",
      "ALTER TABLE t ADD COLUMN c int DEFAULT %s",
      "ALTER TABLE t ALTER COLUMN c SET DEFAULT %s",
      "CREATE INDEX ON t ((%s))",
      "CREATE INDEX ON t (a) WHERE %s IS NULL",
      "CREATE POLICY p ON t USING (%s IS NOT NULL)",
      "CREATE DOMAIN d AS int CHECK (%s IS NULL)",
      "DECLARE c CURSOR FOR SELECT %s",
      "SELECT * FROM t FOR UPDATE SKIP LOCKED LIMIT %s",
  };
  for (const auto& [call, name] : calls) {
    for (const std::string& position : positions) {
      const std::string sql = absl::StrReplaceAll(position, {{"%s", call}});
      ExpectRefusedEverywhere(sql, name);
    }
    // Schema-qualified, quoted, mixed case.
    ExpectRefusedEverywhere(absl::StrCat("SELECT pg_catalog.", call), name);
    ExpectRefusedEverywhere(
        absl::StrCat("SELECT \"pg_catalog\".\"", name, "\"", call.substr(name.size())), name);
    ExpectRefusedEverywhere(absl::StrCat("SELECT public.", call), name);
    ExpectRefusedEverywhere(
        absl::StrCat("SELECT ", absl::AsciiStrToUpper(name), call.substr(name.size())), name);
    ExpectRefusedEverywhere(absl::StrCat("/* x */ SELECT -- y\n ", call), name);
  }
  EXPECT_THAT(Check("SELECT pg_catalog.pg_notify('a', 'b')", Scope::kAlone).message(),
              HasSubstr("pg_catalog.pg_notify notifies other sessions"));
}

// Names and literals written in the scanner's other forms are the same names
// and values to the analyzer as to PostgreSQL: Unicode escapes (also with
// UESCAPE), quoted keywords, comments and newlines between a qualified name's
// parts, a string continued on the next line.
TEST(StatementAnalyzerTest, EscapedAndSplitNamesAreTheNamesTheyDecodeTo) {
  ExpectRefusedEverywhere("SELECT U&\"pg_advisory\\005flock\"(1)", "pg_advisory_lock");
  ExpectRefusedEverywhere("SELECT U&\"pg_advisory!005flock\" UESCAPE '!'(1)", "pg_advisory_lock");
  ExpectRefusedEverywhere("SELECT pg_catalog /* x */ . -- y\n pg_advisory_lock(1)",
                          "pg_advisory_lock");
  ExpectRefusedEverywhere("SELECT * FROM U&\"pg_\\006cs_dir\"('.')", "pg_ls_dir");
  ExpectRefusedEverywhere("SELECT (1).U&\"pg_read\\005ffile\"", "pg_read_file");
  // Named and variadic arguments call the same function.
  ExpectRefusedEverywhere("SELECT pg_advisory_lock(key => 1)", "pg_advisory_lock");
  ExpectRefusedEverywhere("SELECT pg_notify(VARIADIC ARRAY['a', 'b'])", "pg_notify");
  // set_config's setting name decoded, and continued across lines ('a' 'b').
  ExpectRefusedEverywhere("SELECT set_config(U&'r\\006fle', 'x', true)", "database role");
  ExpectRefusedEverywhere("SELECT set_config('ro'\n'le', 'x', true)", "database role");
  ExpectRefusedEverywhere("SELECT set_config(E'r\\x6fle', 'x', true)", "database role");
  ExpectRefusedEverywhere("SELECT set_config($$role$$, 'x', true)", "database role");
  ExpectRefusedEverywhere("SET LOCAL U&\"r\\006fle\" = 'x'", "database role");
  ExpectRefusedEverywhere("SELECT set_config('search_path', U&'pg\\005ftemp', true)", "pg_temp");
  ExpectRefusedEverywhere("SET LOCAL U&\"standard\\005fconforming_strings\" = off",
                          "changes how PostgreSQL reads");
}

TEST(StatementAnalyzerTest, ColumnNotationCallsAreRefused) {
  // (x).f calls f(x) when x has no field f: PostgreSQL runs
  // SELECT ('/etc/passwd'::text).pg_read_file.
  for (absl::string_view sql :
       {"SELECT ('/etc/passwd'::text).pg_read_file", "SELECT (1::bigint).pg_advisory_lock",
        "SELECT (0.5::float8).setseed", "SELECT (42::oid).lo_unlink",
        "SELECT ('SELECT 1'::text).ts_stat", "SELECT t.pg_read_file FROM t",
        "SELECT s.t.pg_ls_dir FROM s.t", "SELECT * FROM t WHERE (t.a).dblink_exec IS NULL"}) {
    ExpectRefusedEverywhere(sql, "column notation");
  }
  // Column names that start like lo_* functions are not calls.
  ExpectAllowedEverywhere("SELECT t.lo_bound, lo_price FROM t");
  ExpectAllowedEverywhere("SELECT (t.range).lower_bound FROM t");
  // An expression's field may be a call `functions` cannot list: not shared.
  EXPECT_FALSE(AnalyzeOnce("SELECT (t.range).lower_bound FROM t")->shareable_syntax);
  EXPECT_TRUE(AnalyzeOnce("SELECT t.a FROM t")->shareable_syntax);
}

TEST(StatementAnalyzerTest, TransactionScopedFunctionsAreAllowedButNeverShared) {
  for (absl::string_view sql :
       {"SELECT pg_advisory_xact_lock(1)", "SELECT pg_catalog.pg_advisory_xact_lock_shared(1, 2)",
        "SELECT pg_try_advisory_xact_lock(1)", "SELECT pg_try_advisory_xact_lock_shared(1)"}) {
    ExpectAllowedEverywhere(sql);
    const auto a = AnalyzeOnce(sql);
    EXPECT_EQ(a->kind, StatementKind::kRead);
    EXPECT_FALSE(a->shareable_syntax);
  }
  // Other built-ins (volatile or not) are the catalog check's question.
  for (absl::string_view sql :
       {"SELECT now(), random(), nextval('s'), pg_sleep(0)", "SELECT current_setting('a')",
        "SELECT pg_backend_pid()", "SELECT lower('X'), pg_catalog.upper('y')"}) {
    ExpectAllowedEverywhere(sql);
    EXPECT_TRUE(AnalyzeOnce(sql)->shareable_syntax) << sql;
  }
}

// ---------------------------------------------------------------------------
// Kinds, commands and shareability.

struct KindCase {
  const char* sql;
  StatementKind kind;
  const char* command;
  bool shareable;
};

TEST(StatementAnalyzerTest, KindsCommandsAndShareableSyntax) {
  const KindCase cases[] = {
      {"SELECT 1", StatementKind::kRead, "SELECT", true},
      {"select * from accounts where id = $1", StatementKind::kRead, "SELECT", true},
      {"VALUES (1), (2)", StatementKind::kRead, "VALUES", true},
      {"TABLE accounts", StatementKind::kRead, "SELECT", true},
      {"(SELECT 1) UNION ALL (SELECT 2) ORDER BY 1", StatementKind::kRead, "SELECT", true},
      {"WITH a AS (SELECT 1) SELECT * FROM a", StatementKind::kRead, "SELECT", true},
      {"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
       StatementKind::kRead, "SELECT", true},
      {"SHOW search_path", StatementKind::kRead, "SHOW", false},
      {"EXPLAIN SELECT 1", StatementKind::kRead, "EXPLAIN", false},
      {"EXPLAIN DELETE FROM t", StatementKind::kRead, "EXPLAIN", false},
      {"EXPLAIN (ANALYZE false) DELETE FROM t", StatementKind::kRead, "EXPLAIN", false},
      {"EXPLAIN (ANALYZE off) DELETE FROM t", StatementKind::kRead, "EXPLAIN", false},
      {"EXPLAIN (ANALYZE 0) DELETE FROM t", StatementKind::kRead, "EXPLAIN", false},
      {"EXPLAIN ANALYZE SELECT 1", StatementKind::kRead, "EXPLAIN", false},
      {"EXPLAIN ANALYZE DELETE FROM t", StatementKind::kWrite, "EXPLAIN", false},
      {"EXPLAIN ANALYSE DELETE FROM t", StatementKind::kWrite, "EXPLAIN", false},
      {"EXPLAIN (ANALYZE) UPDATE t SET a = 1", StatementKind::kWrite, "EXPLAIN", false},
      {"EXPLAIN (ANALYZE true, FORMAT JSON) INSERT INTO t VALUES (1)", StatementKind::kWrite,
       "EXPLAIN", false},
      {"EXPLAIN (ANALYZE on) SELECT * FROM t FOR UPDATE", StatementKind::kWrite, "EXPLAIN", false},
      {"EXPLAIN (ANALYZE 1) DELETE FROM t", StatementKind::kWrite, "EXPLAIN", false},
      {"INSERT INTO t VALUES (1)", StatementKind::kWrite, "INSERT", false},
      {"UPDATE t SET a = 1", StatementKind::kWrite, "UPDATE", false},
      {"DELETE FROM t", StatementKind::kWrite, "DELETE", false},
      {"MERGE INTO t USING s ON t.a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.a)",
       StatementKind::kWrite, "MERGE", false},
      {"TRUNCATE t", StatementKind::kWrite, "TRUNCATE", false},
      {"SELECT * FROM t FOR UPDATE", StatementKind::kWrite, "SELECT", false},
      {"SELECT * FROM t FOR SHARE", StatementKind::kWrite, "SELECT", false},
      {"SELECT * FROM t FOR NO KEY UPDATE NOWAIT", StatementKind::kWrite, "SELECT", false},
      {"SELECT * FROM t FOR KEY SHARE SKIP LOCKED", StatementKind::kWrite, "SELECT", false},
      {"SELECT * FROM (SELECT * FROM t FOR UPDATE) s", StatementKind::kWrite, "SELECT", false},
      {"WITH l AS (SELECT * FROM t FOR UPDATE) SELECT * FROM l", StatementKind::kWrite, "SELECT",
       false},
      {"SELECT * INTO x FROM t", StatementKind::kWrite, "SELECT INTO", false},
      {"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", StatementKind::kWrite, "SELECT",
       false},
      {"WITH i AS (INSERT INTO t VALUES (1) RETURNING a) SELECT 1", StatementKind::kWrite, "SELECT",
       false},
      {"CREATE TABLE t (a int)", StatementKind::kDdl, "CREATE TABLE", false},
      {"CREATE TABLE t AS SELECT 1", StatementKind::kDdl, "CREATE TABLE AS", false},
      {"CREATE MATERIALIZED VIEW v AS SELECT 1", StatementKind::kDdl, "CREATE MATERIALIZED VIEW",
       false},
      {"DROP TABLE t", StatementKind::kDdl, "DROP TABLE", false},
      {"DROP MATERIALIZED VIEW v", StatementKind::kDdl, "DROP MATERIALIZED VIEW", false},
      {"ALTER TABLE t ADD COLUMN b int", StatementKind::kDdl, "ALTER TABLE", false},
      {"ALTER TABLE t RENAME TO u", StatementKind::kDdl, "ALTER TABLE", false},
      {"REVOKE ALL ON t FROM r", StatementKind::kDdl, "REVOKE", false},
      {"CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1", StatementKind::kDdl,
       "CREATE FUNCTION", false},
      {"CREATE AGGREGATE a (int) (SFUNC = int4pl, STYPE = int)", StatementKind::kDdl,
       "CREATE AGGREGATE", false},
      {"DO $$ BEGIN END $$", StatementKind::kUtility, "DO", false},
      {"VACUUM t", StatementKind::kUtility, "VACUUM", false},
      {"COPY t TO STDOUT", StatementKind::kUtility, "COPY", false},
      {"NOTIFY ch", StatementKind::kUtility, "NOTIFY", false},
      {"BEGIN", StatementKind::kTransactionControl, "BEGIN", false},
      {"START TRANSACTION", StatementKind::kTransactionControl, "START TRANSACTION", false},
      {"SET TRANSACTION READ ONLY", StatementKind::kTransactionControl, "SET TRANSACTION", false},
      {"SET LOCAL a.b = 1", StatementKind::kSession, "SET", false},
      {"RESET ALL", StatementKind::kSession, "RESET", false},
      {"PREPARE p AS SELECT 1", StatementKind::kSession, "PREPARE", false},
      {"DECLARE c CURSOR FOR SELECT 1", StatementKind::kSession, "DECLARE", false},
      {"MOVE c", StatementKind::kSession, "MOVE", false},
      {"LOAD 'x'", StatementKind::kSession, "LOAD", false},
  };
  for (const KindCase& c : cases) {
    SCOPED_TRACE(c.sql);
    const auto a = AnalyzeOnce(c.sql);
    ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
    EXPECT_EQ(a->kind, c.kind) << KindName(a->kind);
    EXPECT_EQ(a->command, c.command);
    EXPECT_EQ(a->shareable_syntax, c.shareable);
    for (const std::string& disguised : Disguises(c.sql)) {
      const auto d = AnalyzeOnce(disguised);
      EXPECT_EQ(d->kind, c.kind) << disguised;
      EXPECT_EQ(d->shareable_syntax, c.shareable) << disguised;
    }
  }
}

TEST(StatementAnalyzerTest, KindNames) {
  EXPECT_EQ(KindName(StatementKind::kInvalid), "invalid");
  EXPECT_EQ(KindName(StatementKind::kRead), "read");
  EXPECT_EQ(KindName(StatementKind::kWrite), "write");
  EXPECT_EQ(KindName(StatementKind::kDdl), "ddl");
  EXPECT_EQ(KindName(StatementKind::kUtility), "utility");
  EXPECT_EQ(KindName(StatementKind::kTransactionControl), "transaction_control");
  EXPECT_EQ(KindName(StatementKind::kSession), "session");
}

// ---------------------------------------------------------------------------
// Names.

TEST(StatementAnalyzerTest, TablesAreEveryRelationNamedAsWritten) {
  const auto a = AnalyzeOnce(
      "SELECT * FROM Accounts a JOIN app.ledger l ON l.account = a.id "
      "LEFT JOIN \"Mixed Case\" m USING (id), LATERAL (SELECT * FROM db.s.t) x "
      "WHERE EXISTS (SELECT 1 FROM audit WHERE audit.id = a.id) FOR UPDATE OF a");
  ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
  EXPECT_THAT(a->tables, ElementsAre("Mixed Case", "accounts", "app.ledger", "audit", "db.s.t"));
  EXPECT_THAT(a->written_tables, IsEmpty());
  EXPECT_THAT(AnalyzeOnce("SELECT * FROM U&\"t\\0061b\"")->tables, ElementsAre("tab"));
  EXPECT_THAT(AnalyzeOnce("EXPLAIN SELECT * FROM t")->tables, ElementsAre("t"));
}

TEST(StatementAnalyzerTest, CteNamesAreLeftOutWhereTheyAreInScope) {
  // Non-recursive: a CTE sees the earlier ones; its own name in its body is
  // a table.
  EXPECT_THAT(AnalyzeOnce("WITH a AS (SELECT * FROM t), b AS (SELECT * FROM a), "
                          "c AS (SELECT * FROM c) SELECT * FROM a, b, c")
                  ->tables,
              ElementsAre("c", "t"));
  // Recursive: every CTE of the clause is in scope in every body.
  EXPECT_THAT(AnalyzeOnce("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r, s) "
                          "SELECT * FROM r")
                  ->tables,
              ElementsAre("s"));
  // A CTE of a subquery is out of scope outside it; a schema-qualified name
  // is never a CTE.
  EXPECT_THAT(
      AnalyzeOnce("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s, x, public.x")->tables,
      ElementsAre("public.x", "x"));
  EXPECT_THAT(AnalyzeOnce("SELECT * FROM (SELECT * FROM x) s, (WITH x AS (SELECT 1) SELECT * "
                          "FROM x) u")
                  ->tables,
              ElementsAre("x"));
  // A DML target is a table even where a CTE has its name.
  const auto insert = AnalyzeOnce("WITH t AS (SELECT 1 AS a) INSERT INTO t SELECT * FROM t");
  EXPECT_THAT(insert->tables, ElementsAre("t"));
  EXPECT_THAT(insert->written_tables, ElementsAre("t"));
  const auto update =
      AnalyzeOnce("WITH src AS (SELECT * FROM feed) UPDATE dst SET a = src.a FROM src");
  EXPECT_THAT(update->tables, ElementsAre("dst", "feed"));
  EXPECT_THAT(update->written_tables, ElementsAre("dst"));
}

TEST(StatementAnalyzerTest, WrittenTables) {
  EXPECT_THAT(AnalyzeOnce("INSERT INTO app.t SELECT * FROM s")->written_tables,
              ElementsAre("app.t"));
  EXPECT_THAT(AnalyzeOnce("INSERT INTO app.t SELECT * FROM s")->tables, ElementsAre("app.t", "s"));
  EXPECT_THAT(AnalyzeOnce("UPDATE t SET a = 1 FROM u WHERE t.id = u.id")->written_tables,
              ElementsAre("t"));
  EXPECT_THAT(AnalyzeOnce("DELETE FROM t USING u WHERE t.id = u.id")->written_tables,
              ElementsAre("t"));
  EXPECT_THAT(
      AnalyzeOnce("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE")->written_tables,
      ElementsAre("t"));
  EXPECT_THAT(AnalyzeOnce("TRUNCATE a, b.c")->written_tables, ElementsAre("a", "b.c"));
  EXPECT_THAT(AnalyzeOnce("SELECT * INTO n FROM t")->written_tables, ElementsAre("n"));
  EXPECT_THAT(AnalyzeOnce("CREATE TABLE n AS SELECT * FROM t")->written_tables, ElementsAre("n"));
  const auto ctes = AnalyzeOnce(
      "WITH a AS (INSERT INTO x VALUES (1) RETURNING *), b AS (DELETE FROM y RETURNING *) "
      "UPDATE z SET v = 1 FROM a, b");
  EXPECT_THAT(ctes->written_tables, ElementsAre("x", "y", "z"));
  EXPECT_THAT(ctes->tables, ElementsAre("x", "y", "z"));
  EXPECT_THAT(AnalyzeOnce("EXPLAIN ANALYZE DELETE FROM t")->written_tables, ElementsAre("t"));
  // Only planned: nothing is written.
  EXPECT_THAT(AnalyzeOnce("EXPLAIN DELETE FROM t")->written_tables, IsEmpty());
  EXPECT_THAT(AnalyzeOnce("SELECT * FROM t FOR UPDATE")->written_tables, IsEmpty());
}

TEST(StatementAnalyzerTest, FunctionsAndOperatorsAsWritten) {
  const auto a = AnalyzeOnce(
      "SELECT lower(a), pg_catalog.upper(b), \"MyFunc\"(c), count(*) OVER () FROM t "
      "JOIN u USING (id) CROSS JOIN generate_series(1, 3) g "
      "WHERE a || b = 'x' AND c BETWEEN 1 AND 2 AND d NOT IN (1, 2) AND e LIKE 'a%' "
      "AND f OPERATOR(pg_catalog.+) 1 > 0 AND g = ANY (SELECT 1) AND h IN (SELECT 2) "
      "AND CASE i WHEN 1 THEN true END ORDER BY j USING ~<~");
  ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
  EXPECT_THAT(a->functions,
              ElementsAre("MyFunc", "count", "generate_series", "lower", "pg_catalog.upper"));
  EXPECT_THAT(a->operators,
              ElementsAre("<=", "<>", "=", ">", ">=", "pg_catalog.+", "||", "~<~", "~~"));
  EXPECT_THAT(AnalyzeOnce("SELECT * FROM t WHERE a NOT BETWEEN 1 AND 2")->operators,
              ElementsAre("<", ">"));
  EXPECT_THAT(AnalyzeOnce("CREATE TABLE x (a int DEFAULT nextval('s'))")->functions,
              ElementsAre("nextval"));
}

// ---------------------------------------------------------------------------
// Normalization and fingerprints.

TEST(StatementAnalyzerTest, NormalizationHidesEveryLiteral) {
  struct Case {
    const char* sql;
    const char* normalized;
  };
  const Case cases[] = {
      {"SELECT 42, -7, 1.5, 1e10, 'secret', E'se\\ncret', $$secret$$, $t$secret$t$, B'1010', "
       "X'ff', U&'s\\0065cret'",
       "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11"},
      // libpg_query replaces TRUE, FALSE and NULL constants too.
      {"SELECT true, false, null", "SELECT $1, $2, $3"},
      {"SELECT * FROM t WHERE a = $1 AND b = 'x'", "SELECT * FROM t WHERE a = $1 AND b = $2"},
      {"select interval '1 day', date '2020-01-01'", "select interval $1, date $2"},
      // What libpg_query leaves in place is replaced too.
      {"COMMENT ON TABLE t IS 'secret'", "COMMENT ON TABLE t IS $1"},
      {"CREATE TABLE t (a text DEFAULT 'secret', b varchar(20))",
       "CREATE TABLE t (a text DEFAULT $1, b varchar($2))"},
      {"ALTER ROLE r PASSWORD 'secret'", "ALTER ROLE r PASSWORD $1"},
      {"COPY t FROM '/secret/file'", "COPY t FROM $1"},
      {"DO $body$ secret $body$", "DO $1"},
      {"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 'secret' $$",
       "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $1"},
      {"SELECT a FROM t ORDER BY 1 LIMIT 5", "SELECT a FROM t ORDER BY $2 LIMIT $1"},
      {"SET LOCAL app.key = 'secret'", "SET LOCAL app.key = $1"},
      {"SELECT 1; SELECT 'two'", "SELECT $1; SELECT $2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.sql);
    const auto a = AnalyzeOnce(c.sql);
    ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
    EXPECT_EQ(a->normalized, c.normalized);
    EXPECT_THAT(a->normalized, Not(HasSubstr("secret")));
    EXPECT_NE(a->fingerprint, 0u);
  }
  // Comments are kept; they are not literals.
  EXPECT_EQ(AnalyzeOnce("/* app=x */ SELECT 1")->normalized, "/* app=x */ SELECT $1");
}

TEST(StatementAnalyzerTest, NormalizedTextIsTruncatedAtACharacterBoundary) {
  std::string sql = "SELECT ";
  while (sql.size() < 3 * kMaxNormalizedBytes) sql += "\"é\", ";
  sql += "1";
  const auto a = AnalyzeOnce(sql);
  ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
  EXPECT_LE(a->normalized.size(), kMaxNormalizedBytes);
  EXPECT_GE(a->normalized.size(), kMaxNormalizedBytes - 3);
  // Still valid UTF-8: it parses as the prefix of a statement (a syntax
  // error, not an encoding error).
  EXPECT_THAT(AnalyzeOnce(a->normalized)->parse_error.message(), Not(HasSubstr("UTF-8")));
}

TEST(StatementAnalyzerTest, FingerprintsIgnoreLiteralsWhitespaceCommentsAndParameterNumbers) {
  const std::vector<std::vector<std::string>> same = {
      {"SELECT * FROM t WHERE a = 1", "select *\n from t   where a = 42",
       "SELECT * FROM t WHERE a = $1 -- c", "/* x */ SELECT * FROM t WHERE a = $7",
       "SELECT * FROM t WHERE a = 'str'", "SELECT * FROM t WHERE a = $$dollar$$"},
      {"INSERT INTO t (a, b) VALUES (1, 'x')", "INSERT INTO t (a, b) VALUES ($1, $2)",
       "insert into t (a, b) values (-5, E'y')"},
      {"COMMENT ON TABLE t IS 'a'", "COMMENT ON TABLE t IS 'b'",
       "comment on table T is $$c$$ -- d"},
      {"CREATE TABLE x (a text DEFAULT 'a')", "CREATE TABLE x (a text DEFAULT 'zzz')"},
  };
  std::vector<uint64_t> fingerprints;
  for (const auto& group : same) {
    const uint64_t first = AnalyzeOnce(group[0])->fingerprint;
    EXPECT_NE(first, 0u);
    for (const std::string& sql : group) {
      EXPECT_EQ(AnalyzeOnce(sql)->fingerprint, first) << sql << " vs " << group[0];
    }
    fingerprints.push_back(first);
  }
  for (size_t i = 0; i < fingerprints.size(); ++i) {
    for (size_t j = i + 1; j < fingerprints.size(); ++j) {
      EXPECT_NE(fingerprints[i], fingerprints[j]);
    }
  }
  EXPECT_NE(AnalyzeOnce("SELECT * FROM t WHERE a = 1")->fingerprint,
            AnalyzeOnce("SELECT * FROM u WHERE a = 1")->fingerprint);
  EXPECT_NE(AnalyzeOnce("COMMENT ON TABLE t IS 'a'")->fingerprint,
            AnalyzeOnce("COMMENT ON TABLE u IS 'a'")->fingerprint);
}

// ---------------------------------------------------------------------------
// Size and nesting.

TEST(StatementAnalyzerTest, AMebibyteTextIsAnalyzed) {
  const std::string literal = absl::StrCat("SELECT '", std::string(1 << 20, 'x'), "' FROM t");
  const auto a = AnalyzeOnce(literal);
  ASSERT_TRUE(a->parse_error.ok()) << a->parse_error;
  EXPECT_EQ(a->kind, StatementKind::kRead);
  EXPECT_EQ(a->normalized, "SELECT $1 FROM t");
  // Many rows cost far more to parse than one long literal.
  std::string rows = "INSERT INTO t VALUES ";
  for (int i = 0; rows.size() < (128 << 10); ++i)
    absl::StrAppend(&rows, i ? "," : "", "(", i, ", 'v')");
  const auto b = AnalyzeOnce(rows);
  ASSERT_TRUE(b->parse_error.ok()) << b->parse_error;
  EXPECT_EQ(b->kind, StatementKind::kWrite);
  EXPECT_THAT(b->written_tables, ElementsAre("t"));
  EXPECT_LE(b->normalized.size(), kMaxNormalizedBytes);
  // Hidden at the end of a mebibyte.
  const std::string hidden = absl::StrCat("SELECT 1 FROM t WHERE a IN (", std::string(1 << 20, '1'),
                                          ") AND pg_advisory_lock(1) IS NULL");
  ExpectRefusedEverywhere(hidden, "pg_advisory_lock");
}

std::string Chain(int n, absl::string_view start, absl::string_view link) {
  std::string s(start);
  for (int i = 0; i < n; ++i) absl::StrAppend(&s, link);
  return s;
}

std::string Nest(int n, absl::string_view open, absl::string_view middle, absl::string_view close) {
  std::string s;
  for (int i = 0; i < n; ++i) absl::StrAppend(&s, open);
  absl::StrAppend(&s, middle);
  for (int i = 0; i < n; ++i) absl::StrAppend(&s, close);
  return s;
}

// Texts at most `depth` deep, in the shapes libpg_query recurses on. The
// analyzer's bound counts one level per operator, keyword or bracket, four
// per SELECT and two per set operation; each shape's count is noted.
std::vector<std::string> DeepTexts(int depth) {
  return {
      Chain(depth - 4, "SELECT 1", "+1"),                              // 4 + n
      Chain(depth - 4, "SELECT 1", "::t"),                             // 4 + n
      Chain((depth - 4) / 2, "SELECT 1", "::int"),                     // int is a keyword: 4 + 2n
      Chain((depth - 6) / 2, "SELECT 1 FROM a", " JOIN a USING (x)"),  // 6 + 2n
      Chain((depth - 4) / 2, "SELECT 1", " UNION SELECT 1"),           // 4 + 2n
      Chain(depth - 5, "SELECT ", "NOT ") + "true",                    // 5 + n
      Chain(depth - 4, "SELECT ", "- ") + "1",                         // 4 + n
      "SELECT " + Nest((depth - 4) / 5, "(SELECT ", "1", ")"),         // 4 + 5n
      "SELECT * FROM " + Nest((depth - 6) / 7, "(SELECT * FROM ", "t", ") s"),  // 6 + 7n
      Nest((depth - 4) / 7, "WITH a AS (", "SELECT 1", ") SELECT 1"),           // 4 + 7n
      "SELECT " + Nest(depth - 4, "f(", "1", ")"),                              // 4 + n
      "SELECT " + Nest((depth - 4) / 2, "ARRAY[", "1", "]"),                    // 4 + 2n
      "SELECT " + Nest((depth - 4) / 3, "CASE WHEN x THEN ", "1", " END"),      // 4 + 3n
      "SELECT " + Nest((depth - 4) / 2, "(1+", "1", ")"),                       // 4 + 2n
      "SELECT * FROM t WHERE " + Nest((depth - 7) / 3, "(a AND ", "b", ")"),    // 7 + 3n
  };
}

TEST(StatementAnalyzerTest, TextsNestedBeyondTheLimitAreRefusedBeforeParsing) {
  for (const std::string& sql : DeepTexts(kMaxNestingDepth + 10)) {
    const auto a = AnalyzeOnce(sql);
    EXPECT_EQ(a->parse_error.code(), absl::StatusCode::kInvalidArgument) << sql.substr(0, 60);
    EXPECT_THAT(a->parse_error.message(), HasSubstr("nested too deeply")) << sql.substr(0, 60);
  }
  // Deep enough to exhaust any stack if it were parsed.
  for (const std::string& sql :
       {Chain(100000, "SELECT 1", "+1"), Chain(100000, "SELECT 1", " UNION SELECT 1"),
        Chain(300000, "SELECT 1", "::int")}) {
    EXPECT_THAT(AnalyzeOnce(sql)->parse_error.message(), HasSubstr("nested too deeply"));
  }
  // A scanner error after a deep chain: refused by the parser, which builds
  // no tree (and so never recurses).
  const auto unterminated = AnalyzeOnce(Chain(100000, "SELECT 1", "+1") + " '");
  EXPECT_THAT(unterminated->parse_error.message(), HasSubstr("unterminated quoted string"));
  // Long flat texts are not deep.
  std::string in_list = "SELECT * FROM t WHERE a IN (0";
  for (int i = 1; i < 20000; ++i) absl::StrAppend(&in_list, ",", i);
  in_list += ") OR b = 1 OR b = 2 OR c AND d";
  EXPECT_TRUE(AnalyzeOnce(in_list)->parse_error.ok()) << AnalyzeOnce(in_list)->parse_error;
  std::string cases = "SELECT CASE";
  for (int i = 0; i < 5000; ++i) absl::StrAppend(&cases, " WHEN a = ", i, " THEN ", i);
  cases += " END FROM t";
  EXPECT_TRUE(AnalyzeOnce(cases)->parse_error.ok()) << AnalyzeOnce(cases)->parse_error;
}

// Runs `body` on a thread with `stack_bytes` of stack; a stack overflow
// crashes the test.
void RunWithStack(size_t stack_bytes, std::function<void()> body) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, stack_bytes), 0);
  pthread_t thread;
  auto trampoline = [](void* arg) -> void* {
    (*static_cast<std::function<void()>*>(arg))();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&thread, &attr, trampoline, &body), 0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);
}

TEST(StatementAnalyzerTest, TheDeepestAcceptedTextsFitInAMebibyteOfStack) {
  const std::vector<std::string> texts = DeepTexts(kMaxNestingDepth);
  std::vector<std::shared_ptr<const Analysis>> results(texts.size());
  RunWithStack(1 << 20, [&] {
    for (size_t i = 0; i < texts.size(); ++i) results[i] = AnalyzeOnce(texts[i]);
  });
  for (size_t i = 0; i < texts.size(); ++i) {
    ASSERT_NE(results[i], nullptr);
    EXPECT_TRUE(results[i]->parse_error.ok())
        << texts[i].substr(0, 60) << ": " << results[i]->parse_error;
    EXPECT_EQ(results[i]->statement_count, 1);
    EXPECT_NE(results[i]->fingerprint, 0u) << texts[i].substr(0, 60);
  }
  // The deep statement is still checked all the way down.
  ExpectRefusedEverywhere(
      "SELECT " + Nest((kMaxNestingDepth - 5) / 5, "(SELECT ", "pg_notify('a', 'b')", ")"),
      "pg_notify");
}

// ---------------------------------------------------------------------------
// The memo.

TEST(StatementAnalyzerMemoTest, HitsReturnTheSameAnalysis) {
  StatementAnalyzer analyzer;
  const auto a = analyzer.Analyze("SELECT * FROM t WHERE a = $1");
  const auto b = analyzer.Analyze("SELECT * FROM t WHERE a = $1");
  EXPECT_EQ(a.get(), b.get());
  const auto c = analyzer.Analyze("SELECT * FROM t WHERE a = $2");
  EXPECT_NE(a.get(), c.get());
  EXPECT_EQ(analyzer.memo_entries(), 2u);
  EXPECT_GT(analyzer.memo_bytes(), 0u);
  // Errors are memoized too, and equal AnalyzeOnce's.
  const auto e1 = analyzer.Analyze(std::string("SELECT\0", 7));
  const auto e2 = analyzer.Analyze(std::string("SELECT\0", 7));
  EXPECT_EQ(e1.get(), e2.get());
  EXPECT_THAT(e1->parse_error.message(), HasSubstr("NUL byte"));
  EXPECT_EQ(analyzer.memo_entries(), 3u);
  // The memoized analysis is the one AnalyzeOnce makes.
  EXPECT_EQ(a->normalized, AnalyzeOnce("SELECT * FROM t WHERE a = $1")->normalized);
  EXPECT_EQ(a->kind, StatementKind::kRead);
  // Lookup finds what Analyze kept and never parses what it did not.
  EXPECT_EQ(analyzer.Lookup("SELECT * FROM t WHERE a = $1").get(), a.get());
  EXPECT_EQ(analyzer.Lookup("SELECT 'never analyzed'"), nullptr);
  EXPECT_EQ(analyzer.memo_entries(), 3u);
}

TEST(StatementAnalyzerMemoTest, LongTextsAreAnalyzedEveryTimeAndNotKept) {
  StatementAnalyzer analyzer(
      StatementAnalyzer::Options{.max_memo_bytes = 1 << 20, .max_text_bytes = 100});
  const std::string long_text = absl::StrCat("SELECT '", std::string(200, 'x'), "'");
  const auto a = analyzer.Analyze(long_text);
  const auto b = analyzer.Analyze(long_text);
  EXPECT_NE(a.get(), b.get());
  EXPECT_EQ(a->kind, StatementKind::kRead);
  EXPECT_EQ(analyzer.memo_entries(), 0u);
  EXPECT_EQ(analyzer.memo_bytes(), 0u);
  const std::string at_limit = absl::StrCat("SELECT '", std::string(91, 'x'), "'");
  ASSERT_EQ(at_limit.size(), 100u);
  EXPECT_EQ(analyzer.Analyze(at_limit).get(), analyzer.Analyze(at_limit).get());
  EXPECT_EQ(analyzer.memo_entries(), 1u);
}

TEST(StatementAnalyzerMemoTest, StaysWithinItsByteBoundUnderManyDistinctTexts) {
  constexpr size_t kBound = 256 << 10;
  StatementAnalyzer analyzer(StatementAnalyzer::Options{.max_memo_bytes = kBound});
  const auto held = analyzer.Analyze("SELECT * FROM held WHERE a = $1");
  size_t max_bytes = 0;
  // Texts the analyzer refuses before parsing cost little to analyze; every
  // hundredth is a real statement.
  for (int i = 0; i < 100000; ++i) {
    const std::string sql = i % 100 == 0
                                ? absl::StrCat("SELECT a, b FROM t", i, " WHERE c = $1")
                                : absl::StrCat("SELECT ", i, std::string("\0", 1), " padding");
    const auto a = analyzer.Analyze(sql);
    ASSERT_NE(a, nullptr);
    max_bytes = std::max(max_bytes, analyzer.memo_bytes());
  }
  EXPECT_LE(max_bytes, kBound);
  EXPECT_LE(analyzer.memo_bytes(), kBound);
  EXPECT_GT(analyzer.memo_entries(), 100u);
  EXPECT_LT(analyzer.memo_entries(), 100000u);
  // Evicted long ago, and still whole for its holder.
  EXPECT_EQ(held->tables, std::vector<std::string>{"held"});
  EXPECT_NE(analyzer.Analyze("SELECT * FROM held WHERE a = $1").get(), held.get());
  // The most recent texts are still there.
  const std::string recent = absl::StrCat("SELECT ", 99999, std::string("\0", 1), " padding");
  EXPECT_EQ(analyzer.Analyze(recent).get(), analyzer.Analyze(recent).get());
}

TEST(StatementAnalyzerMemoTest, AHitMovesATextToTheFrontOfTheLru) {
  StatementAnalyzer probe;
  probe.Analyze("SELECT 1");
  const size_t one = probe.memo_bytes();
  // Room for about three entries like it.
  StatementAnalyzer analyzer(StatementAnalyzer::Options{.max_memo_bytes = 3 * one + one / 2});
  const auto first = analyzer.Analyze("SELECT 1");
  analyzer.Analyze("SELECT 2");
  analyzer.Analyze("SELECT 3");
  EXPECT_EQ(analyzer.Analyze("SELECT 1").get(), first.get());  // now the most recent
  analyzer.Analyze("SELECT 4");                                // evicts SELECT 2
  EXPECT_EQ(analyzer.memo_entries(), 3u);
  EXPECT_EQ(analyzer.Analyze("SELECT 1").get(), first.get());
  EXPECT_LE(analyzer.memo_bytes(), 3 * one + one / 2);
}

TEST(StatementAnalyzerMemoTest, ConcurrentCallersAgree) {
  StatementAnalyzer analyzer(StatementAnalyzer::Options{.max_memo_bytes = 64 << 10});
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    switch (i % 4) {
      case 0:
        texts.push_back(absl::StrCat("SELECT * FROM t", i % 40, " WHERE a = $1"));
        break;
      case 1:
        texts.push_back(absl::StrCat(";COMMIT -- ", i % 30));
        break;
      case 2:
        texts.push_back(absl::StrCat("SELECT set_config('a', 'b', ", i % 3 ? "true" : "false",
                                     ") -- ", i % 20));
        break;
      default:
        texts.push_back(absl::StrCat("INSERT INTO w", i % 10, " VALUES (1)"));
        break;
    }
  }
  std::vector<absl::Status> expected;
  for (const std::string& t : texts) expected.push_back(Check(t, Scope::kAlone));
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          const size_t k = (i * 7 + t * 13 + round) % texts.size();
          const auto a = analyzer.Analyze(texts[k]);
          if (Permitted(*a, Scope::kAlone, kNoGrant) != expected[k]) ++mismatches;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_LE(analyzer.memo_bytes(), 64u << 10);
  EXPECT_GT(analyzer.memo_entries(), 0u);
}

}  // namespace
}  // namespace poolside::sql
