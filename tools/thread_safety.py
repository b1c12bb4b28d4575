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
"""

import concurrent.futures
import json
import subprocess
import sys

ANALYSIS_FLAG = "-Werror=thread-safety"


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

    def run(entry):
        source, command, env = entry
        done = subprocess.run(command, cwd=execroot, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
        return source, done.returncode, done.stdout

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for source, returncode, output in pool.map(run, sorted(commands, key=lambda c: c[0])):
            if returncode != 0:
                failed += 1
                print("thread_safety: %s failed:\n%s" % (source, output), file=sys.stderr)
    print("thread_safety: %d sources of %d targets parsed, %d failed" %
          (len(commands), len(targets), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
