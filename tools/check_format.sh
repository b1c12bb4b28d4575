#!/usr/bin/env bash
# The tree's C++ is formatted by clang-format with the repository's
# .clang-format (Google style, 100 columns). Part of `make test`
# (tools/test.sh): fails listing the files clang-format would change. To fix:
#
#   git ls-files '*.cc' '*.h' | xargs clang-format -i
set -uo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format is missing: install Debian clang-format (make deps)" >&2; exit 1; }
mapfile -t files < <(git ls-files '*.cc' '*.h')
# One clang-format for all files: it names each file it would change.
mapfile -t bad < <(clang-format --dry-run -Werror "${files[@]}" 2>&1 \
  | sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' | sort -u)
if ((${#bad[@]} > 0)); then
  echo "not formatted (clang-format -i FILE, or the command in $0):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
echo "format: ${#files[@]} files as clang-format formats them"
