"""Repository rule exposing Debian's -dev packages as cc_library targets.

Runs pkg-config once per library group and writes `@system//:<name>` targets whose
linkopts come from pkg-config, so Abseil's many shared libraries are never listed by
hand. Headers live in /usr/include (the compiler's default search path); the one
exception, libpq's /usr/include/postgresql, is symlinked into the repository.
"""

# name -> (pkg-config modules, extra linkopts, deps)
_LIBS = {
    "absl": (["@absl"], [], []),
    "protobuf": (["protobuf"], [], [":absl"]),
    "grpc": (["grpc++"], ["-lgrpc++_reflection"], [":protobuf", ":absl"]),
    "pq": (["libpq"], [], [":pq_headers"]),
    "pqxx": (["libpqxx"], [], [":pq"]),
    "gtest": (["gtest"], [], []),
    "gmock": (["gmock", "gtest"], [], []),
    "gtest_main": (["gmock", "gtest_main"], [], []),
    "benchmark": (["benchmark"], [], []),
    "prometheus": (["prometheus-cpp-pull", "prometheus-cpp-core"], [], []),
    # libcivetweb-dev ships no pkg-config file.
    "civetweb": ([], ["-lcivetweb"], []),
    # libssl-dev: SHA-256 of bearer tokens (common/auth).
    "crypto": (["libcrypto"], [], []),
    # libpg-query-dev (PostgreSQL's parser, common/sql) ships no pkg-config file.
    "pg_query": ([], ["-lpg_query"], []),
    # libgoogle-perftools-dev: TCMalloc (minimal: no heap profiler) as the
    # services' malloc. Nothing calls it by name, so it is linked even where
    # the linker drops unused libraries.
    "tcmalloc": ([], ["-Wl,--no-as-needed", "-ltcmalloc_minimal", "-Wl,--as-needed"], []),
}

# Libraries linked from their static archive (-l:libX.a) rather than their shared
# object. gRPC's own libraries: every call into them from a shared object goes
# through the PLT, and every access to their thread-locals (one per closure
# run) through __tls_get_addr; linked into the executable, the linker turns
# both into direct accesses. That is ~10% of the instructions of a unary call
# on each side (callgrind, bench/results/grpc-static-2026-12-04.md). Their
# dependencies (Abseil, protobuf, OpenSSL, c-ares, re2, zlib) stay shared.
#
# Except under `--define=grpc=shared` (the tsan config): Debian's gRPC is not
# built with ThreadSanitizer, and only as a shared object can TSan be told to
# ignore what it does (a called_from_lib suppression names the library; see
# common/server/tsan_suppressions.txt).
_STATIC = ["grpc++_reflection", "grpc++", "grpc", "address_sorting", "upb", "gpr"]

def _link_flag(flag):
    if flag.startswith("-l") and flag[2:] in _STATIC:
        return "-l:lib%s.a" % flag[2:]
    return flag

def _pkg_config(ctx, args):
    result = ctx.execute(["pkg-config"] + args)
    if result.return_code != 0:
        fail("pkg-config %s failed (is the Debian -dev package installed? `make deps`): %s" %
             (" ".join(args), result.stderr))
    return result.stdout.strip()

def _absl_modules(ctx):
    result = ctx.execute(["sh", "-c", "pkg-config --list-all | awk '{print $1}' | grep '^absl_' | sort"])
    mods = [m for m in result.stdout.strip().split("\n") if m]
    if not mods:
        fail("no absl_* pkg-config modules found: install libabsl-dev (`make deps`)")
    return mods

def _dedup(flags):
    seen = {}
    out = []
    for f in flags:
        if f and f not in seen:
            seen[f] = True
            out.append(f)
    return out

def _system_libs_impl(ctx):
    ctx.symlink("/usr/include/postgresql", "pg_include")
    lines = [
        "package(default_visibility = [\"//visibility:public\"])",
        "",
        "cc_library(",
        "    name = \"pq_headers\",",
        "    hdrs = glob([\"pg_include/*.h\", \"pg_include/internal/*.h\"]),",
        "    includes = [\"pg_include\"],",
        ")",
        "",
        "config_setting(",
        "    name = \"shared_grpc\",",
        "    define_values = {\"grpc\": \"shared\"},",
        ")",
        "",
    ]
    for name, (modules, extra, deps) in _LIBS.items():
        mods = []
        for m in modules:
            if m == "@absl":
                mods += _absl_modules(ctx)
            else:
                mods.append(m)
        found = _pkg_config(ctx, ["--libs"] + mods).split(" ") if mods else []
        # extra first: a static archive must come before the ones it uses.
        shared = _dedup(extra + found)
        flags = [_link_flag(f) for f in shared]
        linkopts = repr(flags)
        if flags != shared:
            # Not libgrpc++_reflection.so: it carries its own copy of the
            # reflection protos, which clash with ours (//proto) at start-up;
            # from the archive nothing of it is linked (the tree serves
            # reflection itself, common/server/queue_reflection.h).
            shared = [f for f in shared if f != "-lgrpc++_reflection"]
            linkopts = "select({\":shared_grpc\": %s, \"//conditions:default\": %s})" % (
                repr(shared),
                linkopts,
            )
        lines += [
            "cc_library(",
            "    name = \"%s\"," % name,
            "    linkopts = %s," % linkopts,
            "    deps = %s," % repr(deps),
            ")",
            "",
        ]
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD.bazel", "\n".join(lines))

system_libs = repository_rule(
    implementation = _system_libs_impl,
    local = True,
    environ = ["PKG_CONFIG_PATH"],
)
