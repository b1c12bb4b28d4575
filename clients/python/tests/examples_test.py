"""Runs every Python example against real services and checks what they return.

Started by //tests:python_client_test (tests/client_stack.cc), which brings up
PostgreSQL with the demo schema plus the cache, query and ingest services and
passes their addresses in POOLSIDE_ADDR, POOLSIDE_CACHE_ADDR and
POOLSIDE_INGEST_ADDR. Writes JUnit XML to $XML_OUTPUT_FILE so Bazel (and
`make test`) count each case.
"""

import datetime
import importlib.util
import os
import subprocess
import sys
import time
import unittest
import xml.etree.ElementTree as ET
from decimal import Decimal

import grpc

# clients/python (the poolside package and, in Bazel's runfiles, the generated
# proto modules next to it), from this file's path as invoked (not resolved:
# the generated code is only in the runfiles tree).
CLIENT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
EXAMPLES_DIR = os.path.join(CLIENT_DIR, "examples")
sys.path.insert(0, CLIENT_DIR)

import poolside  # noqa: E402


def require_env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: run this through //tests:python_client_test")
    return value


QUERY = require_env("POOLSIDE_ADDR")
INGEST = require_env("POOLSIDE_INGEST_ADDR")
CACHE = require_env("POOLSIDE_CACHE_ADDR")
DATABASE = os.environ.get("POOLSIDE_DATABASE", "demo")
TOKEN = require_env("POOLSIDE_TOKEN")
READER_TOKEN = require_env("POOLSIDE_READER_TOKEN")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ExamplesTest(unittest.TestCase):
    def test_query(self):
        out = load_example("query").run(QUERY, DATABASE, TOKEN)
        self.assertEqual(out["owner"], "owner-42")
        self.assertEqual(out["balance"], Decimal("3325.98"))
        self.assertEqual(out["updated"], [1, 1])
        # accounts 1 and 2 hold (7919 + 15838) / 100 together; the transfer keeps it.
        self.assertEqual(out["sum"], Decimal("237.57"))
        self.assertEqual(out["error_code"], grpc.StatusCode.INVALID_ARGUMENT)
        self.assertFalse(out["error_retryable"])
        self.assertIn("42601", out["error_message"])

    def test_stream(self):
        out = load_example("stream").run(QUERY, DATABASE, TOKEN)
        self.assertEqual(out["rows"], 1000)
        self.assertEqual(out["id_sum"], 1000 * 1001 // 2)
        self.assertEqual(out["first"], (1, "owner-1"))
        self.assertEqual(out["last"], (1000, "owner-1000"))

    def test_cached_read(self):
        out = load_example("cached_read").run(QUERY, DATABASE, TOKEN)
        self.assertEqual(out, [("MISS", "owner-7"), ("HIT", "owner-7"), ("MISS", "renamed-7")])
        with poolside.CacheClient(CACHE) as cache:
            stats = cache.stats()
            # The result is in the sidecar (its HIT may come from the query
            # replica's in-process near cache, which the sidecar never sees).
            self.assertGreaterEqual(stats.sets, 1)

    def test_ingest(self):
        out = load_example("ingest").run(INGEST, QUERY, DATABASE, TOKEN, first_id=5001)
        self.assertEqual(out["written"], 2)
        self.assertEqual([r[0] for r in out["rejected"]], [1])
        self.assertIn("kind", out["rejected"][0][1])
        self.assertTrue(out["retry_duplicate"])
        self.assertEqual(out["streamed"], (50, 0, 0))
        self.assertEqual(out["stored"], [(5001, "deposit", Decimal("12.50")),
                                         (5003, "withdrawal", None)])
        self.assertEqual(out["count"], 52)

    def test_auth(self):
        out = load_example("auth").run(QUERY, INGEST, DATABASE, TOKEN, READER_TOKEN)
        self.assertEqual(out["no_token"], grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(out["bad_token"], grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(out["reader_named"], ("owner-42", Decimal("3325.98")))
        self.assertEqual(out["reader_raw_sql"], grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(out["reader_ingest"], grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(out["app_raw_sql"], 1000)

    def test_examples_run_as_scripts(self):
        env = dict(os.environ, PYTHONPATH=CLIENT_DIR, POOLSIDE_EXAMPLE_FIRST_ID="7001")
        for name in ("query", "stream", "cached_read", "ingest", "auth"):
            with self.subTest(example=name):
                done = subprocess.run([sys.executable, os.path.join(EXAMPLES_DIR, f"{name}.py")],
                                      env=env, capture_output=True, text=True, timeout=120)
                self.assertEqual(done.returncode, 0, f"{name}.py failed:\n{done.stderr}")

    def test_readme_calls(self):
        """README "Calling poolside": the same point select from the CLI and C++
        (Python and Node: the query examples) prints the same row."""
        cpp = os.path.join(os.path.dirname(CLIENT_DIR), "cpp", "query_example")
        cli = [require_env("POOLSIDE_CLI"), "query",
               "SELECT owner, balance FROM accounts WHERE id = $1", "42"]
        for name, argv in (("cli", cli), ("cpp", [cpp])):
            with self.subTest(program=name):
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertRegex(done.stdout, r"owner-42\s+(\|\s*)?3325\.98")

    def test_values_round_trip(self):
        with poolside.QueryClient(QUERY, database=DATABASE, token=TOKEN) as db:
            at = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
            values = (None, True, -(2**63), 1.5, "it's; DROP TABLE accounts;--", b"\x00\xff",
                      at, Decimal("12345678901234567890.000001"), poolside.Json({"a": [1, None]}))
            # json parameters go untyped (they fit json and jsonb columns alike).
            row = db.execute("SELECT $1::text, $2, $3, $4, $5, $6, $7, $8, $9::jsonb",
                             *values).rows[0]
        self.assertEqual(row[:8], values[:8])
        self.assertEqual(row[8], {"a": [1, None]})
        # Years before 1000 keep four digits on the wire (PostgreSQL would read
        # "1-01-01" as 2001): found by fuzz/value_codec_fuzzer.
        early = [datetime.datetime(y, 6, 1, tzinfo=datetime.timezone.utc) for y in (1, 99, 999)]
        with poolside.QueryClient(QUERY, database=DATABASE, token=TOKEN) as db:
            self.assertEqual(list(db.execute("SELECT $1, $2, $3", *early).rows[0]), early)
        with self.assertRaises(ValueError):
            poolside.to_value(datetime.datetime(2026, 1, 1))
        with self.assertRaises(ValueError):
            poolside.to_value(2**63)

    def test_errors_carry_code(self):
        with poolside.QueryClient(QUERY, database="no_such_db", token=TOKEN) as db:
            with self.assertRaises(poolside.Error) as caught:
                db.execute("SELECT 1")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)


class JUnitResult(unittest.TextTestResult):
    """Also records each case for $XML_OUTPUT_FILE."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cases = []
        self._started = 0.0

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def _record(self, test, kind, detail=""):
        self.cases.append((test.id(), time.monotonic() - self._started, kind, detail))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, None)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failure", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failure" if issubclass(err[0], test.failureException) else "error"
            self._record(subtest, kind, self._exc_info_to_string(err, test))


def write_junit(path, result):
    failures = sum(1 for c in result.cases if c[2] == "failure")
    errors = sum(1 for c in result.cases if c[2] == "error")
    attrs = {"name": "python_client", "tests": str(len(result.cases)),
             "failures": str(failures), "errors": str(errors)}
    suites = ET.Element("testsuites", attrs)
    suite = ET.SubElement(suites, "testsuite", attrs)
    for name, seconds, kind, detail in result.cases:
        case = ET.SubElement(suite, "testcase", {"name": name, "time": f"{seconds:.3f}"})
        if kind:
            ET.SubElement(case, kind, {"message": detail.splitlines()[-1] if detail else ""}).text = detail
    ET.indent(suites)  # one element per line, as Bazel's own test.xml
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


if __name__ == "__main__":
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(ExamplesTest)
    result = unittest.TextTestRunner(resultclass=JUnitResult, verbosity=2).run(suite)
    if os.environ.get("XML_OUTPUT_FILE"):
        write_junit(os.environ["XML_OUTPUT_FILE"], result)
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
