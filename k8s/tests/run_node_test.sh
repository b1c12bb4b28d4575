#!/usr/bin/env bash
# Runs one of k8s/tests' Node.js tests: run_node_test.sh SCRIPT.mjs [ARGS...].
# The scripts run from the source tree (found through package.json's symlink)
# with the node_modules `make deps` installs next to it (npm ci).
set -euo pipefail
script=$1
shift
dir=$(dirname "$(readlink -f k8s/tests/package.json)")
if ! command -v node >/dev/null; then
  echo "FAIL: node is not installed (Debian's nodejs; see the Makefile)" >&2
  exit 1
fi
if [[ ! -d $dir/node_modules/kubernetes-models || ! -d $dir/node_modules/yaml ]]; then
  echo "FAIL: $dir/node_modules is missing kubernetes-models or yaml: run \`make deps\` (npm ci in k8s/tests)" >&2
  exit 1
fi
args=()
for a in "$@"; do
  if [[ -e $a ]]; then args+=("$(readlink -f "$a")"); else args+=("$a"); fi
done
exec node "$dir/$script" "${args[@]}"
