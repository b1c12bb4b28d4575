#!/usr/bin/env bash
# `make test`: builds everything, checks the layering rule (tools/check_layers.sh)
# and the C++ formatting (tools/check_format.sh),
# checks the targets that take locks with clang's thread-safety analysis, runs
# every test (the whole suite, then the tests tagged "tsan" again under
# ThreadSanitizer, then the libFuzzer targets for a bounded time: FUZZ_SECONDS,
# default 20) and ends with one line "N passed, M failed" counted from the test
# cases in Bazel's test.xml files (and one per fuzz target, one each for the
# clang analysis, the layering rule and the formatting).
set -uo pipefail
cd "$(dirname "$0")/.."
BAZEL=${BAZEL:-bazel}

# Counts test cases in the test.xml files of the given targets under a testlogs
# dir: one per target, or one per shard (shard_N_of_M/test.xml) of a sharded one.
count_cases() {
  local testlogs=$1; shift
  local total=0 failed=0
  for target in "$@"; do
    local rel=${target#//}; rel=${rel/://}
    local xmls=("$testlogs/$rel/test.xml")
    # The newest of the two layouts (a target sharded since an earlier run
    # leaves that run's test.xml behind, and the other way round).
    local shards=("$testlogs/$rel"/shard_1_of_*)
    local m=${shards[0]##*_of_}
    if [[ $m =~ ^[0-9]+$ && ! ${xmls[0]} -nt ${shards[0]}/test.xml ]]; then
      xmls=()
      for ((i = 1; i <= m; i++)); do xmls+=("$testlogs/$rel/shard_${i}_of_$m/test.xml"); done
    fi
    local xml
    for xml in "${xmls[@]}"; do
      if [[ ! -f $xml ]]; then
        failed=$((failed + 1)); total=$((total + 1))
        echo "no ${xml#"$testlogs/"} for $target (did not run or crashed)" >&2
        continue
      fi
      # The first <testsuites ...> (or <testsuite ...>) element holds the totals.
      local head
      head=$(grep -m1 -oE '<testsuites?[^>]*>' "$xml" | head -n1)
      local t f e
      t=$(grep -oE ' tests="[0-9]+"' <<<"$head" | grep -oE '[0-9]+' || echo 0)
      f=$(grep -oE ' failures="[0-9]+"' <<<"$head" | grep -oE '[0-9]+' || echo 0)
      e=$(grep -oE ' errors="[0-9]+"' <<<"$head" | grep -oE '[0-9]+' || echo 0)
      if [[ ${t:-0} -eq 0 ]]; then t=1; fi  # a test target (or shard) with no cases counts once
      total=$((total + t)); failed=$((failed + f + e))
    done
  done
  echo "$total $failed"
}

status=0
# The C++ formatting (.clang-format), one check in the count below; beside
# the build, its verdict read after the suite.
format_log=$(mktemp)
tools/check_format.sh >"$format_log" 2>&1 &
format_pid=$!

# Everything besides the main suite runs on a second Bazel server (its own
# output base, sharing the disk cache; --symlink_prefix=/ leaves bazel-bin and
# bazel-testlogs to the main one, which `make run` and the count below use)
# at the lowest priority, beside the main suite from its first second: the
# main build keeps both cores busy, the rest uses what its tests leave idle.
# In order: the layering rule (tools/check_layers.sh: service cores know no
# gRPC), the queries for the test targets, the generated code the fuzz
# targets need (tools/fuzz.sh --resolve_only); then, side by side, the fuzz
# targets' clang build and, in this server, the ThreadSanitizer build (clang,
# --config=tsan, which checks the lock annotations of what it compiles) and
# clang's thread-safety analysis (-Werror=thread-safety) of the targets that
# take locks which that build does not compile (tools/thread_safety.py: their
# compile commands with -fsyntax-only, no object code). Their results are
# checked below, after the suite.
tsan_base="$($BAZEL info output_base 2>/dev/null)-tsan"
TSAN_BAZEL=("$BAZEL" --output_base="$tsan_base" --max_idle_secs=900)
bg_log=$(mktemp -d)
(
  renice -n 19 $BASHPID >/dev/null
  rc=0
  BAZEL="${TSAN_BAZEL[*]}" tools/check_layers.sh >"$bg_log/layers" 2>&1 ||
    echo 1 >"$bg_log/layers.rc"
  # The tree's packages, named by its top-level directories as git knows them:
  # //... here would also walk the main server's convenience links (bazel-*),
  # which only the server that made them knows to skip.
  universe=$(git ls-files '*BUILD.bazel' | cut -d/ -f1 | sort -u |
             sed -e 's|^BUILD.bazel$|//:all|' -e '\|^//|!s|.*|//&/...|' | paste -sd+)
  "${TSAN_BAZEL[@]}" query "tests($universe)" >"$bg_log/targets" 2>/dev/null
  "${TSAN_BAZEL[@]}" query "attr(tags, 'tsan', tests($universe))" >"$bg_log/tsan_targets" \
    2>/dev/null
  mapfile -t tsan_targets <"$bg_log/tsan_targets"
  # The C++ targets of ours whose sources take locks or carry lock
  # annotations (code without either has nothing for the analysis to check;
  # parsing the whole tree once more would cost CI minutes). Tests count only
  # with annotations of their own: a test that merely takes scoped locks
  # (MutexLock) cannot unbalance them, and the annotated code it calls is
  # analysed in its own library.
  lock_labels=()
  while IFS= read -r f; do
    dir=$(dirname "$f")
    while [[ $dir != . && ! -f $dir/BUILD.bazel ]]; do dir=$(dirname "$dir"); done
    [[ $dir == . ]] && continue
    lock_labels+=("//$dir:${f#"$dir"/}")
  done < <(git ls-files '*.cc' '*.h' | grep -vE '_test\.cc$|^tests/' | xargs grep -lE \
             'GUARDED_BY|REQUIRES(_SHARED)?\(|ACQUIRE|RELEASE\(|LOCKS_EXCLUDED|Mutex|mutex|Lock\(' 2>/dev/null
           git ls-files '*_test.cc' 'tests/*.cc' 'tests/*.h' | xargs grep -lE \
             'GUARDED_BY|REQUIRES(_SHARED)?\(|ACQUIRE\(|RELEASE\(|LOCKS_EXCLUDED|LOCK_FUNCTION|LOCKS_REQUIRED|THREAD_ANNOTATION' 2>/dev/null)
  mapfile -t own_cc_targets < <("${TSAN_BAZEL[@]}" query \
    "kind('cc_(library|binary|test)', same_pkg_direct_rdeps(set(${lock_labels[*]})))" 2>/dev/null)
  echo "${#own_cc_targets[@]}" >"$bg_log/own_count"
  analysis_targets=()
  if [[ ${#own_cc_targets[@]} -gt 0 && ${#tsan_targets[@]} -gt 0 ]] && analysis=$("${TSAN_BAZEL[@]}" \
      query "set(${own_cc_targets[*]}) except deps(set(${tsan_targets[*]}))" 2>/dev/null); then
    mapfile -t analysis_targets < <(grep . <<<"$analysis")
  else
    echo "thread_safety: bazel query found no targets to analyse" >"$bg_log/clang"; rc=1
  fi
  echo "${#analysis_targets[@]}" >"$bg_log/analysis_count"
  fuzz_build=""
  if BAZEL="${TSAN_BAZEL[*]}" tools/fuzz.sh --resolve_only >"$bg_log/fuzz" 2>&1; then
    tools/fuzz.sh --build_only >>"$bg_log/fuzz" 2>&1 &
    fuzz_build=$!
  else
    echo 1 >"$bg_log/fuzz_resolve.rc"
  fi
  if [[ ${#tsan_targets[@]} -gt 0 ]]; then
    "${TSAN_BAZEL[@]}" build --config=tsan --symlink_prefix=/ "${tsan_targets[@]}" \
      >"$bg_log/tsan" 2>&1 || { rc=1; cat "$bg_log/tsan" >>"$bg_log/clang"; }
  fi
  if [[ ${#analysis_targets[@]} -gt 0 ]]; then
    python3 tools/thread_safety.py "${TSAN_BAZEL[@]}" -- --config=tsan \
      --symlink_prefix=/ -- "${analysis_targets[@]}" >>"$bg_log/clang" 2>&1 || rc=1
  fi
  echo $rc >"$bg_log/clang.rc"
  [[ -z $fuzz_build ]] || wait "$fuzz_build"
) &
background=$!

# One command builds everything (as `bazel build //...` would) and runs each
# test as soon as it is built, while the rest compiles.
$BAZEL test //... || status=1

wait "$background"
total5=1; failed5=0
if ! wait "$format_pid"; then
  cat "$format_log"
  failed5=1; status=1
else
  cat "$format_log"
fi
rm -f "$format_log"
# The layering rule, one check in the count.
total6=1; failed6=0
grep -h '^check_layers:' "$bg_log/layers"
if [[ -f $bg_log/layers.rc ]]; then
  cat "$bg_log/layers"
  echo "the layering check failed (tools/check_layers.sh): see above" >&2
  failed6=1; status=1
fi
mapfile -t targets <"$bg_log/targets"
[[ ${#targets[@]} -gt 0 ]] || { echo "bazel query found no tests"; echo "0 passed, 1 failed"; exit 1; }
mapfile -t tsan_targets <"$bg_log/tsan_targets"
read -r total1 failed1 < <(count_cases "$($BAZEL info bazel-testlogs 2>/dev/null)" "${targets[@]}")

own_count=$(cat "$bg_log/own_count" 2>/dev/null || echo 0)
analysis_count=$(cat "$bg_log/analysis_count" 2>/dev/null || echo 0)
echo "== clang thread-safety analysis (--config=tsan): $own_count targets," \
  "$((own_count - analysis_count)) of them in the ThreadSanitizer build"
grep -h '^thread_safety: .* parsed' "$bg_log/clang" 2>/dev/null
total4=1; failed4=0
if [[ $(cat "$bg_log/clang.rc" 2>/dev/null) != 0 ]]; then
  grep -E -A3 'error:|^ERROR:|^thread_safety:' "$bg_log/clang" | head -100
  echo "clang build failed (thread-safety analysis): see above" >&2
  failed4=1; status=1
fi

# libFuzzer targets for a bounded time (tools/fuzz.sh), beside the
# ThreadSanitizer tests below (fuzzing takes its wall time however busy the
# cores are); each target counts as a test, and one that cannot be built
# counts as a failure (the run builds what the background build did not).
[[ -f $bg_log/fuzz_resolve.rc ]] && cat "$bg_log/fuzz"
rm -rf "$bg_log"
export FUZZ_SECONDS=${FUZZ_SECONDS:-20}
fuzz_log=$(mktemp)
tools/fuzz.sh >"$fuzz_log" 2>&1 &
fuzz_pid=$!

total2=0; failed2=0
if [[ ${#tsan_targets[@]} -gt 0 ]]; then
  echo "== ThreadSanitizer: ${tsan_targets[*]}"
  "${TSAN_BAZEL[@]}" test --config=tsan --symlink_prefix=/ "${tsan_targets[@]}" || status=1
  read -r total2 failed2 < <(count_cases \
    "$("${TSAN_BAZEL[@]}" info --config=tsan bazel-testlogs 2>/dev/null)" "${tsan_targets[@]}")
fi

echo "== Fuzzing: tools/fuzz.sh, $FUZZ_SECONDS s"
wait "$fuzz_pid" || status=1
cat "$fuzz_log"
total3=$(grep -cE '^fuzz [a-z_]+: (PASSED|FAILED)' "$fuzz_log")
failed3=$(grep -cE '^fuzz [a-z_]+: FAILED' "$fuzz_log")
if [[ $total3 -eq 0 ]]; then total3=1; failed3=1; fi
rm -f "$fuzz_log"

total=$((total1 + total2 + total3 + total4 + total5 + total6))
failed=$((failed1 + failed2 + failed3 + failed4 + failed5 + failed6))
if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo "$((total - failed)) passed, $failed failed"
exit $status
