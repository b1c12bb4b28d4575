"""Macros for poolside's test targets, named after their source file.

Each expands to the cc_test it replaces (same name, so `bazel query
'tests(//...)'`, tools/test.sh and tools/fuzz.sh find it as before) with the
attributes every test of its kind repeats:

- postgres_test: a test that starts PostgreSQL through the shared fixture
  (tests/fixtures/postgres_cluster.h); "no-sandbox", because as root the
  fixture chowns the data directory to `postgres`, which linux-sandbox forbids.
- service_test: a tests/ test that also runs poolside's server binaries
  (tests/fixtures/poolside_servers.h), given as `servers`.
- client_test: a tests/ test that runs a client program in another language
  (Python, Node) against the whole stack (tests/client_stack.cc).
- corpus_test: a fuzz target replayed over its committed corpus.
"""

def _with(deps, common):
    """`deps` and then those of `common` it does not list already."""
    return deps + [d for d in common if d not in deps]

_POSTGRES_TEST_DEPS = [
    "//tests/fixtures:postgres_cluster",
    "@system//:absl",
    "@system//:gtest_main",
]

_SERVICE_TEST_DEPS = [
    "//tests/fixtures:poolside_servers",
    "//tests/fixtures:service_process",
    "@system//:grpc",
    "@system//:protobuf",
]

def postgres_test(name, deps = [], tags = [], **kwargs):
    """A cc_test of `name`.cc that starts PostgreSQL.

    Args:
      name: the test, and its source file without ".cc".
      deps: what it tests and uses besides the PostgreSQL fixture, Abseil and
        GoogleTest's main (added).
      tags: more tags ("no-sandbox" is added).
      **kwargs: passed to cc_test (size, timeout, data, ...).
    """
    native.cc_test(
        name = name,
        srcs = [name + ".cc"],
        tags = ["no-sandbox"] + tags,
        deps = _with(deps, _POSTGRES_TEST_DEPS),
        **kwargs
    )

def service_test(name, servers = [], deps = [], data = [], **kwargs):
    """A postgres_test that also starts poolside's binaries.

    Args:
      name: the test, and its source file without ".cc".
      servers: the binaries it starts (//services/query:query_server, ...),
        as data.
      deps: what it uses besides the fixtures that start PostgreSQL and the
        services, gRPC and protobuf (added).
      data: other runtime files.
      **kwargs: passed to postgres_test (size, timeout, tags, ...).
    """
    postgres_test(
        name = name,
        data = servers + data,
        deps = _with(deps, _SERVICE_TEST_DEPS),
        **kwargs
    )

_CLIENT_STACK_DATA = [
    "//cli:poolside",
    "//services/cache:cache_server",
    "//services/ingest:ingest_server",
    "//services/query:query_server",
]

def client_test(name, interpreter, script, data = []):
    """`interpreter script` run by tests/client_stack.cc against the services.

    Args:
      name: the test.
      interpreter: the program that runs `script` ("/usr/bin/node").
      script: the label of the script, also its runtime data.
      data: what else the script needs at run time (its package's sources).
    """
    native.cc_test(
        name = name,
        size = "medium",
        args = [interpreter, "$(rootpath %s)" % script],
        data = _CLIENT_STACK_DATA + data + [script],
        tags = ["no-sandbox"],
        deps = [":client_stack"],
    )

def corpus_test(name, deps):
    """A fuzz target replayed over its committed corpus.

    `name` is "<target>_corpus_test": it runs fuzz/<target>_fuzzer.cc (with
    corpus_replay_main) over every input in corpus/<target>/, the seeds and
    reproducers tools/fuzz.sh fuzzes the same source from with libFuzzer.

    Args:
      name: "<target>_corpus_test".
      deps: what the fuzz target calls (the replay main and Abseil are added).
    """
    if not name.endswith("_corpus_test"):
        fail("corpus_test: the name must be <target>_corpus_test, got " + name)
    target = name[:-len("_corpus_test")]
    corpus = target + "_corpus"
    native.filegroup(
        name = corpus,
        srcs = native.glob(["corpus/%s/*" % target]),
    )
    native.cc_test(
        name = name,
        size = "small",
        srcs = [target + "_fuzzer.cc"],
        args = ["$(locations :%s)" % corpus],
        data = [":" + corpus],
        deps = _with(deps, [":corpus_replay_main", "@system//:absl"]),
    )
