#!/usr/bin/env python3
"""clang's thread-safety analysis over Bazel targets' own sources, front end only.

  tools/thread_safety.py [--jobs=N] BAZEL... -- OPTION... -- TARGET...

BAZEL is the bazel command with its startup options; OPTION... are build
options selecting a configuration whose C++ compiles are clang with
-Werror=thread-safety (--config=tsan or --config=clang, .bazelrc); TARGET...
are cc_library/cc_binary/cc_test labels. Part of `make test` (tools/test.sh).

The analysis is a warning of clang's semantic analysis: it needs no object
code. So rather than building the targets (code generation, the larger part
of a compile, for objects nothing links), this runs each of their compile
commands, exactly as Bazel would (`bazel aquery`), with -fsyntax-only: the
headers Bazel generates are built first (the compilation prerequisites output
group), then every source of the targets is parsed and analysed, JOBS at a
time. Exits 1, printing clang's diagnostics, if any source fails (a
thread-safety warning is an error), or if a compile command does not turn
the analysis on.

Most of a source's parse is the same system headers (the standard library,
Abseil, protobuf, gRPC, GoogleTest): they are parsed once into a clang
precompiled header for each set of compile options (the commands differ only
in their include directories and outputs, and in the options of the test
sources), which every command of that set then starts from
(-include-pch). System headers carry nothing for the analysis to check. A
source whose parse fails with the header is parsed again without it, so the
header can only save time, never change a verdict.
"""

import concurrent.futures
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile

ANALYSIS_FLAG = "-Werror=thread-safety"

# The system headers most sources include, parsed once per set of options.
PRECOMPILED = [
    "algorithm", "atomic", "cstdint", "deque", "functional", "map", "memory",
    "optional", "string", "thread", "utility", "vector",
    "absl/container/flat_hash_map.h", "absl/container/flat_hash_set.h",
    "absl/status/status.h", "absl/status/statusor.h", "absl/strings/str_cat.h",
    "absl/strings/string_view.h", "absl/synchronization/mutex.h",
    "absl/synchronization/notification.h", "absl/time/time.h",
    "google/protobuf/message.h", "google/protobuf/repeated_field.h",
    "google/protobuf/generated_message_reflection.h", "grpcpp/grpcpp.h",
    "gtest/gtest.h", "gmock/gmock.h",
]

# Options that name a file or directory of one compile, not how it parses.
PATH_OPTIONS = ("-iquote", "-isystem", "-I")


def options_key(command, source):
    """The options of a -fsyntax-only command that a precompiled header must share."""
    key = []
    skip = False
    for arg in command:
        if skip:
            skip = False
            continue
        if arg in PATH_OPTIONS:
            skip = True
            continue
        if arg == source or arg.startswith("-frandom-seed="):
            continue
        key.append(arg)
    return "\0".join(key)


def parse_args(argv):
    jobs = 2
    if argv and argv[0].startswith("--jobs="):
        jobs = int(argv[0][len("--jobs="):])
        argv = argv[1:]
    parts = []
    current = []
    for arg in argv:
        if arg == "--" and len(parts) < 2:
            parts.append(current)
            current = []
        else:
            current.append(arg)
    parts.append(current)
    if len(parts) != 3 or not parts[0] or not parts[2]:
        sys.exit("usage: tools/thread_safety.py [--jobs=N] BAZEL... -- OPTION... -- TARGET...")
    return jobs, parts[0], parts[1], parts[2]


def syntax_only(arguments):
    """The compile command without its outputs (object, dependency file), parsing only."""
    out = []
    skip = False
    source = None
    for i, arg in enumerate(arguments):
        if skip:
            skip = False
            continue
        if arg in ("-o", "-MF"):
            skip = True
            continue
        if arg in ("-MD", "-MMD"):
            continue
        if arg == "-c":
            if i + 1 < len(arguments):
                source = arguments[i + 1]
            continue
        out.append(arg)
    return out + ["-fsyntax-only", "-fno-color-diagnostics"], source


def main():
    jobs, bazel, options, targets = parse_args(sys.argv[1:])
    target_set = "set(%s)" % " ".join(targets)
    prerequisites = subprocess.run(
        bazel + ["build"] + options +
        ["--output_groups=compilation_prerequisites_INTERNAL_"] + targets)
    if prerequisites.returncode != 0:
        print("thread_safety: building the generated headers failed", file=sys.stderr)
        return 1
    aquery = subprocess.run(
        bazel + ["aquery"] + options +
        ["--output=jsonproto", "mnemonic('CppCompile', %s)" % target_set],
        stdout=subprocess.PIPE)
    info = subprocess.run(bazel + ["info"] + options + ["execution_root"],
                          stdout=subprocess.PIPE, universal_newlines=True)
    if aquery.returncode != 0 or info.returncode != 0:
        print("thread_safety: bazel aquery/info failed", file=sys.stderr)
        return 1
    execroot = info.stdout.strip()
    actions = json.loads(aquery.stdout or b"{}").get("actions", [])
    if not actions:
        print("thread_safety: no compile actions for %s" % " ".join(targets), file=sys.stderr)
        return 1

    commands = []
    for action in actions:
        arguments = action.get("arguments", [])
        command, source = syntax_only(arguments)
        env = {v["key"]: v.get("value", "") for v in action.get("environmentVariables", [])}
        if ANALYSIS_FLAG not in arguments:
            print("thread_safety: %s is compiled without %s: the options select no "
                  "analysing configuration" % (source, ANALYSIS_FLAG), file=sys.stderr)
            return 1
        commands.append((source, command, env))

    def compile(command, env):
        done = subprocess.run(command, cwd=execroot, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
        return done.returncode, done.stdout

    # One precompiled header per set of options, made from the first command
    # of the set (a header that cannot be made is simply not used).
    work = tempfile.mkdtemp(prefix="thread_safety.")
    header = os.path.join(work, "system.h")
    with open(header, "w") as f:
        f.write("".join("#include <%s>\n" % h for h in PRECOMPILED))
    firsts = {}
    for source, command, env in commands:
        firsts.setdefault(options_key(command, source), (source, command, env))

    def precompile(item):
        key, (source, command, env) = item
        pch = os.path.join(work, hashlib.sha256(key.encode()).hexdigest()[:16] + ".pch")
        made = [a for a in command if a not in (source, "-fsyntax-only")]
        returncode, _ = compile(made + ["-x", "c++-header", header, "-o", pch], env)
        return key, pch if returncode == 0 else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        pchs = dict(pool.map(precompile, firsts.items()))

    def run(entry):
        source, command, env = entry
        pch = pchs.get(options_key(command, source))
        if pch:
            returncode, output = compile(command + ["-include-pch", pch], env)
            if returncode == 0:
                return source, returncode, output
        returncode, output = compile(command, env)
        return source, returncode, output

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for source, returncode, output in pool.map(run, sorted(commands, key=lambda c: c[0])):
            if returncode != 0:
                failed += 1
                print("thread_safety: %s failed:\n%s" % (source, output), file=sys.stderr)
    subprocess.run(["rm", "-rf", work])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("thread_safety: %d sources of %d targets parsed (%d precompiled headers of %d), "
          "%d failed; %.0f CPU-seconds" %
          (len(commands), len(targets), sum(1 for p in pchs.values() if p), len(pchs), failed,
           usage.ru_utime + usage.ru_stime))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
