#!/usr/bin/env bash
# Fuzzing with libFuzzer: builds the targets in fuzz/ with clang and runs each
# for a bounded time. Part of `make test` (tools/test.sh); by hand:
#
#   tools/fuzz.sh                    # every target, FUZZ_SECONDS (default 60) of wall time
#   tools/fuzz.sh --seconds=600 csv  # one target, longer
#   tools/fuzz.sh --build_only
#   tools/fuzz.sh --resolve_only     # only the Bazel queries and generated code
#   tools/fuzz.sh --reproduce=csv PATH   # run one input through a target (a crash's reproducer)
#
# Targets: value_codec (common/db/value_codec), config (common/config/json_config
# + the services' Finalize*Config), csv (cli/csv), statement_analyzer
# (common/sql/statement_analyzer: what a SQL text is and may do, from
# PostgreSQL's parser, libpg_query), pgoutput (common/db/pgoutput_decoder: the
# logical replication stream's messages), relay_message
# (services/query/relay_message: the WAL relay's NOTIFY payloads, which any
# session of the database may send). Each
# starts from its committed seed corpus in fuzz/corpus/<target>; inputs that find
# new coverage are kept in $FUZZ_WORK_DIR (default ~/.cache/poolside-fuzz) across
# runs, never in the tree.
# A crash (memory error, undefined behaviour, failed check, leak, timeout) fails
# the run and prints the reproducer's path and how to replay it; add the
# reproducer to the target's corpus with the fix.
#
# Why a script and not Bazel: libFuzzer's runtime (-fsanitize=fuzzer) comes with
# clang, and the Bazel toolchain here is g++. A clang toolchain in Bazel would
# mean a second configuration that rebuilds the whole tree (gRPC code, services,
# tests) with clang: twice CI's build time for three small targets. The targets
# need a handful of sources, so this script compiles exactly those with
# `clang++ -fsanitize=fuzzer,address,undefined`: the list comes from
# `bazel query` over the libraries' dependencies (it follows BUILD changes, no
# second list to maintain), the .proto files among them are compiled with protoc
# into the work directory, code Bazel generates from a system package's .proto
# (bazel/proto.bzl's cc_system_proto_libraries) is built by Bazel and copied
# there, and link flags come from pkg-config, as in bazel/system_libs.bzl.
# Builds are cached by a hash of the inputs. The corpora
# are replayed by the regular g++ build too (//fuzz:*_corpus_test), so the targets
# always compile and old reproducers stay fixed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BAZEL=${BAZEL:-bazel}
SECONDS_PER_RUN=${FUZZ_SECONDS:-60}
WORK=${FUZZ_WORK_DIR:-$HOME/.cache/poolside-fuzz}
CXX=${FUZZ_CXX:-clang++}
BUILD_ONLY=0
RESOLVE_ONLY=0
REPRODUCE=""

# Each fuzz/<target>_fuzzer.cc is a target; the libraries its source uses are
# the deps of its replay test in fuzz/BUILD.bazel (<target>_corpus_test), less
# the replay main.
ALL_TARGETS=()
for f in fuzz/*_fuzzer.cc; do f=${f#fuzz/}; ALL_TARGETS+=("${f%_fuzzer.cc}"); done
libraries() { echo "labels(deps, //fuzz:$1_corpus_test) except //fuzz:corpus_replay_main"; }
# Inputs larger than this are not tried (JSON configs and CSV lines are small;
# SQL texts of kMaxNestingDepth bytes or more take the analyzer's nesting
# check).
declare -A MAX_LEN=([config]=8192 [pgoutput]=8192 [relay_message]=8192)

targets=()
for arg in "$@"; do
  case $arg in
    --seconds=*) SECONDS_PER_RUN=${arg#--seconds=} ;;
    --build_only) BUILD_ONLY=1 ;;
    --resolve_only) RESOLVE_ONLY=1 ;;
    --reproduce=*) REPRODUCE=${arg#--reproduce=} ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) targets+=("$arg") ;;
  esac
done
if [[ -n $REPRODUCE ]]; then
  [[ ${#targets[@]} -ge 1 ]] || { echo "--reproduce=TARGET needs the input's path" >&2; exit 2; }
  inputs=("${targets[@]}"); targets=("$REPRODUCE")
fi
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ -f fuzz/${t}_fuzzer.cc ]] || { echo "unknown fuzz target '$t' (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found: install clang and libclang-rt-14-dev (make deps)" >&2; exit 1; }
command -v protoc >/dev/null || { echo "fuzz: protoc not found: install protobuf-compiler (make deps)" >&2; exit 1; }

absl_mods=$(pkg-config --list-all | awk '{print $1}' | grep '^absl_' | sort | tr '\n' ' ')
# Every system library the services' libraries may use: a new dependency of a
# fuzzed library then still links.
LINK_FLAGS=$(pkg-config --libs protobuf libpq libcrypto grpc++ $absl_mods) ||
  { echo "fuzz: pkg-config failed" >&2; exit 1; }
# libpg-query-dev ships no pkg-config file.
LINK_FLAGS+=" -lpg_query"
CXXFLAGS=(-std=c++17 -O1 -g -fno-omit-frame-pointer
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
  -Wno-deprecated-declarations -I"$ROOT" -I/usr/include/postgresql)

# Code protoc generates (4.5 MB for pg_query.proto; the tree's config.proto)
# is compiled without instrumentation and without optimization: it is
# protobuf's own generated parsing, not ours to fuzz, and instrumented at -O1
# it takes minutes of CI time; uninstrumented objects link with instrumented
# ones.
GEN_CXXFLAGS=(-std=c++17 -O0 -g0 -Wno-deprecated-declarations -I"$ROOT")

BUILD_FILES_KEY=$(find . -name BUILD.bazel -not -path './bazel-*' -not -path '*/node_modules/*' |
                  sort | xargs cat | sha256sum | cut -c1-16)

# What Bazel knows of a target, resolved once and kept under $WORK/resolved so
# that the compile below needs no Bazel command (`make test` compiles the
# targets while `bazel test` holds Bazel's server): the source list (cached
# while no BUILD file changes) and copies of the code Bazel generates from a
# system package's .proto, refreshed at every resolve.
resolved_dir() { echo "$WORK/resolved/$1-$BUILD_FILES_KEY"; }

resolve() {
  local t=$1
  local labels
  labels=$(libraries "$t")
  local dir files generated
  dir=$(resolved_dir "$t")
  if [[ -f $dir/files && -f $dir/generated ]]; then
    generated=$(<"$dir/generated")
  else
    files=$($BAZEL query --noshow_progress "kind('source file', deps($labels))" 2>/dev/null |
            grep '^//' | sed -e 's|^//||' -e 's|:|/|' -e 's|^/||') ||
      { echo "fuzz: bazel query over $labels failed" >&2; return 1; }
    # Protobuf code Bazel generates from a .proto outside the tree (a .proto
    # in the tree is compiled below instead): its labels.
    generated=$($BAZEL query --noshow_progress "kind('generated file', deps($labels))" \
                  2>/dev/null | { grep -E '^//.*\.pb\.(cc|h)$' || true; } |
                while read -r label; do
                  local path base
                  path=$(sed -e 's|^//||' -e 's|:|/|' -e 's|^/||' <<<"$label")
                  base=${path%.pb.*}
                  grep -qxF "${base%.grpc}.proto" <<<"$files" || echo "$label"
                done) ||
      { echo "fuzz: bazel query over $labels failed" >&2; return 1; }
    mkdir -p "$dir" && printf '%s\n' "$files" >"$dir/files.$$" &&
      printf '%s\n' "$generated" >"$dir/generated" && mv "$dir/files.$$" "$dir/files" || return 1
  fi
  # The generated code itself, built now and copied out of bazel-bin.
  rm -rf "$dir/gen.$$" && mkdir -p "$dir/gen.$$" || return 1
  if [[ -n ${generated//[[:space:]]/} ]]; then
    # --symlink_prefix=/: whichever server builds it (make test uses a
    # second one), bazel-bin and the other links stay the main build's.
    $BAZEL build --noshow_progress --symlink_prefix=/ $generated >&2 ||
      { echo "fuzz: bazel build of $generated failed" >&2; return 1; }
    local bin_dir g
    bin_dir="$($BAZEL info bazel-bin 2>/dev/null)" || return 1
    for g in $(sed -e 's|^//||' -e 's|:|/|' -e 's|^/||' <<<"$generated"); do
      mkdir -p "$dir/gen.$$/$(dirname "$g")" && cp "$bin_dir/$g" "$dir/gen.$$/$g" || return 1
    done
  fi
  rm -rf "$dir/gen" && mv "$dir/gen.$$" "$dir/gen"
}

# Builds fuzz/<t>_fuzzer.cc into $WORK/build/<t>-<hash>/<t>_fuzzer; prints its
# path. Resolves the target first unless that was done.
build() {
  local t=$1
  local dir files generated
  dir=$(resolved_dir "$t")
  [[ -f $dir/files && -d $dir/gen ]] || resolve "$t" || return 1
  files=$(<"$dir/files")
  generated=$(<"$dir/generated")
  local gen_dir="$dir/gen" gen_files=""
  if [[ -n ${generated//[[:space:]]/} ]]; then
    gen_files=$(sed -e 's|^//||' -e 's|:|/|' -e 's|^/||' <<<"$generated")
  fi
  local protos srcs
  protos=$(grep '\.proto$' <<<"$files" || true)
  srcs=$(grep '\.cc$' <<<"$files" || true)
  local key
  key=$( { echo "$CXX ${CXXFLAGS[*]} $LINK_FLAGS"; "$CXX" --version;
           cat "fuzz/${t}_fuzzer.cc" $files "$0";
           for g in $gen_files; do cat "$gen_dir/$g"; done; } | sha256sum | cut -c1-16)
  local dir="$WORK/build/$t-$key"
  local bin="$dir/${t}_fuzzer"
  if [[ ! -x $bin ]]; then
    echo "fuzz: building $t ($(wc -w <<<"$srcs") sources, $(wc -w <<<"$protos") protos)" >&2
    # A private temporary directory: another fuzz.sh may be building too.
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp/gen" || return 1
    local gen_srcs=() gen_includes=()
    if [[ -n $protos ]]; then
      protoc -I. -I/usr/include --cpp_out="$tmp/gen" $protos || return 1
      for p in $protos; do gen_srcs+=("$tmp/gen/${p%.proto}.pb.cc"); done
    fi
    for g in $gen_files; do
      mkdir -p "$tmp/gen/$(dirname "$g")" && cp "$gen_dir/$g" "$tmp/gen/$g" || return 1
      [[ $g == *.cc ]] && gen_srcs+=("$tmp/gen/$g")
    done
    # Such code includes its headers by their path in their package
    # (cc_system_proto_libraries's includes = ["."]).
    for pkg in $(sed -e 's|^//||' -e 's|:.*||' <<<"$generated" | sort -u); do
      gen_includes+=(-I"$tmp/gen/$pkg")
    done
    # Generated protobuf code (from a system package's .proto or one of the
    # tree's) is compiled with GEN_CXXFLAGS, and its objects are kept by a
    # hash of the code and the compiler, across builds and targets.
    local -A cached=()
    for g in "${gen_srcs[@]}"; do
      cached["$g"]="$WORK/objs/$( { echo "$CXX ${GEN_CXXFLAGS[*]}"; "$CXX" --version;
        cat "$g" "${g%.cc}.h"; } | sha256sum | cut -c1-16).o"
    done
    local objs=() pids=() n=0 src
    for src in "fuzz/${t}_fuzzer.cc" $srcs "${gen_srcs[@]}"; do
      local obj="$tmp/obj$((n++)).o"
      objs+=("$obj")
      local keep=${cached[$src]:-}
      if [[ -n $keep && -f $keep ]]; then
        cp "$keep" "$obj" && touch "$keep" || return 1
        continue
      fi
      local flags=("${CXXFLAGS[@]}")
      [[ -n $keep ]] && flags=("${GEN_CXXFLAGS[@]}")
      { "$CXX" "${flags[@]}" -I"$tmp/gen" "${gen_includes[@]}" -c "$src" -o "$obj" &&
        if [[ -n $keep ]]; then
          mkdir -p "$WORK/objs" && cp "$obj" "$keep.$$" && mv "$keep.$$" "$keep"
        fi; } &
      pids+=($!)
      if (( ${#pids[@]} >= 2 )); then wait "${pids[0]}" || return 1; pids=("${pids[@]:1}"); fi
    done
    for p in "${pids[@]}"; do wait "$p" || return 1; done
    find "$WORK/objs" -name '*.o' -mtime +30 -delete 2>/dev/null
    "$CXX" "${CXXFLAGS[@]}" "${objs[@]}" $LINK_FLAGS -o "$tmp/${t}_fuzzer" || return 1
    if [[ -x $bin ]]; then rm -rf "$tmp"; else rm -rf "$dir" && mv "$tmp" "$dir" || return 1; fi
    # Finished builds of older sources are not needed again (temporary
    # directories may belong to a build in progress).
    find "$WORK/build" -mindepth 1 -maxdepth 1 -name "$t-*" ! -name "$t-$key" ! -name "*.tmp.*" \
      -exec rm -rf {} +
    find "$WORK/build" -mindepth 1 -maxdepth 1 -name "*.tmp.*" -mmin +1440 -exec rm -rf {} +
  fi
  echo "$bin"
}

if [[ $RESOLVE_ONLY -eq 1 ]]; then
  for t in "${targets[@]}"; do resolve "$t" || { echo "fuzz: cannot resolve $t" >&2; exit 1; }; done
  exit 0
fi
declare -A BIN
for t in "${targets[@]}"; do
  BIN[$t]=$(build "$t") || { echo "fuzz: cannot build $t" >&2; exit 1; }
done
[[ $BUILD_ONLY -eq 0 ]] || { for t in "${targets[@]}"; do echo "${BIN[$t]}"; done; exit 0; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if [[ -n $REPRODUCE ]]; then
  exec "${BIN[$REPRODUCE]}" "${inputs[@]}"
fi

# All targets at once, each for the same wall time (on 2 cores: one core's worth
# between them), so fuzzing adds SECONDS_PER_RUN to `make test` however many
# targets there are.
declare -A PIDS LOGS ARTIFACTS
mkdir -p "$WORK/logs"
LOG_DIR=$(mktemp -d "$WORK/logs/run.XXXXXX")  # per run: runs may overlap
find "$WORK/logs" -mindepth 1 -maxdepth 1 -name 'run.*' -mtime +7 -exec rm -rf {} +
for t in "${targets[@]}"; do
  corpus="$WORK/corpus/$t"; ARTIFACTS[$t]="$WORK/artifacts/$t/"; LOGS[$t]="$LOG_DIR/$t.log"
  mkdir -p "$corpus" "${ARTIFACTS[$t]}"
  dict=(); [[ -f fuzz/$t.dict ]] && dict=(-dict="fuzz/$t.dict")
  "${BIN[$t]}" "$corpus" "fuzz/corpus/$t" "${dict[@]}" -max_total_time="$SECONDS_PER_RUN" \
    -max_len="${MAX_LEN[$t]:-4096}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="${ARTIFACTS[$t]}" >"${LOGS[$t]}" 2>&1 &
  PIDS[$t]=$!
done
failed=0
for t in "${targets[@]}"; do
  if wait "${PIDS[$t]}"; then
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "${LOGS[$t]}" | tail -1 | grep -oE '[0-9]+$')
    cov=$(grep -oE 'cov: [0-9]+' "${LOGS[$t]}" | tail -1)
    echo "fuzz $t: PASSED (${runs:-?} inputs in ${SECONDS_PER_RUN}s, $cov)"
  else
    failed=$((failed + 1))
    reproducer=$(grep -oE "Test unit written to [^ ]+" "${LOGS[$t]}" | tail -1 | sed 's/Test unit written to //')
    echo "fuzz $t: FAILED (log: ${LOGS[$t]})"
    grep -E 'ERROR: |SUMMARY: |_fuzzer: |runtime error' "${LOGS[$t]}" | head -5 | sed 's/^/  /'
    echo "  reproducer: ${reproducer:-none written (see the log)}"
    echo "  replay:     tools/fuzz.sh --reproduce=$t ${reproducer:-PATH}"
  fi
done
echo "fuzz: $(( ${#targets[@]} - failed )) of ${#targets[@]} targets without findings"
exit $(( failed > 0 ))
