#!/usr/bin/env bash
# k8s/Dockerfile stays aligned with the build: its build stage installs the
# Makefile's own package list (make deps) and builds the three servers with
# Bazel; its runtime stage installs every Debian package whose shared library
# the servers link (found with ldd and dpkg -S), directly or as a dependency.
# A copy of the Dockerfile without libpqxx-6.4 must fail the same check.
#   dockerfile_test.sh DOCKERFILE QUERY_SERVER CACHE_SERVER INGEST_SERVER
set -uo pipefail
dockerfile=$(readlink -f "$1")
shift
for tool in ldd dpkg dpkg-query; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is needed (Debian)"; exit 1; }
done

# Every library the servers link and the package providing it (one dpkg -S
# call: it is slow per call). With merged /usr a library may be registered
# under /lib or /usr/lib, so both are looked up.
declare -A users provider
for binary in "$@"; do
  while read -r lib; do
    users[$lib]+="$(basename "$binary") "
  done < <(ldd "$(readlink -f "$binary")" | awk '/=> \//{print $3}')
done
while read -r line; do
  pkg=${line%%: *}
  for path in ${line#*: }; do provider[${path%,}]=${pkg%%:*}; done
done < <(dpkg -S $(for l in "${!users[@]}"; do echo "$l"; readlink -f "$l"; echo "/usr$l"; done | sort -u) 2>/dev/null)

# The packages the runtime stage (FROM debian:12-slim up to the next FROM)
# installs with apt-get.
runtime_packages() {
  awk '/^FROM debian:12-slim/{on=1; next} /^FROM /{on=0} on' "$1" | tr '\\' '\n' |
    sed -n '/apt-get install/,/&&/p' | sed 's/.*--no-install-recommends//; s/&&.*//' |
    tr ' ' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]+$' | sort -u
}

# Checks one Dockerfile's runtime stage against the libraries; prints FAIL lines.
check_runtime() {
  local listed fail=0
  listed=$(runtime_packages "$1")
  if [[ -z $listed ]]; then
    echo "FAIL: no runtime packages found in $1"
    return 1
  fi
  declare -A closure
  local queue=($listed) p d deps
  while ((${#queue[@]})); do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${closure[$p]:-} ]] && continue
    closure[$p]=1
    if ! deps=$(dpkg-query -W -f='${Depends}, ${Pre-Depends}\n' "$p" 2>/dev/null); then
      echo "FAIL: $p (runtime stage) is not a Debian package installed here"
      fail=1
      continue
    fi
    for d in $(tr ',|' '\n\n' <<<"$deps" | sed 's/(.*//; s/:any//; s/ //g' | grep -v '^$'); do
      [[ -z ${closure[$d]:-} ]] && queue+=("$d")
    done
  done
  local lib pkg
  for lib in "${!users[@]}"; do
    pkg=${provider[$lib]:-${provider[$(readlink -f "$lib")]:-${provider[/usr$lib]:-}}}
    if [[ -z $pkg ]]; then
      echo "FAIL: ${users[$lib]}link $lib, which no Debian package provides"
      fail=1
    elif [[ -z ${closure[$pkg]:-} ]]; then
      echo "FAIL: ${users[$lib]}link $lib from $pkg, which the runtime stage does not install"
      fail=1
    fi
  done
  return $fail
}

status=0
if check_runtime "$dockerfile"; then
  echo "runtime stage ($(runtime_packages "$dockerfile" | tr '\n' ' ')) covers the ${#users[@]} libraries the servers link"
else
  status=1
fi
grep -q '^RUN make deps NPM_DIRS=' "$dockerfile" || { echo "FAIL: the build stage must install with make deps"; status=1; }
for t in //services/query:query_server //services/cache:cache_server //services/ingest:ingest_server; do
  grep -q -- "$t" "$dockerfile" || { echo "FAIL: the build stage does not build $t"; status=1; }
done

# Negative case: the check notices a missing runtime library package.
broken="${TEST_TMPDIR:-/tmp}/Dockerfile.without-libpqxx"
sed 's/ libpqxx-6.4//' "$dockerfile" >"$broken"
if out=$(check_runtime "$broken"); then
  echo "FAIL: a runtime stage without libpqxx-6.4 was accepted"
  status=1
elif ! grep -q "libpqxx-6.4.so from libpqxx-6.4, which the runtime stage does not install" <<<"$out"; then
  echo "FAIL: without libpqxx-6.4, expected it to be named; got:"$'\n'"$out"
  status=1
else
  echo "without libpqxx-6.4 the check fails as it should"
fi
exit $status
