#!/usr/bin/env bash
# Checks the Prometheus rules and scrape configuration with promtool: syntax
# and expressions, the unit tests of poolside.rules.test.yaml, and the
# configuration as Prometheus would load it.
set -euo pipefail
PROMTOOL=${PROMTOOL:-/usr/bin/promtool}
if [[ ! -x $PROMTOOL ]]; then
  echo "$PROMTOOL is missing: install Debian's prometheus package (make deps)" >&2
  exit 1
fi
dir=k8s/observability
[[ -d $dir ]] || dir=$(dirname "$0")
"$PROMTOOL" check rules "$dir/rules/poolside.rules.yaml"
# Rule files are resolved relative to the test file.
(cd "$dir/rules" && "$PROMTOOL" test rules poolside.rules.test.yaml)
# prometheus.yml names the rules file next to it, as the ConfigMap mounts both.
# Debian builds Prometheus without Kubernetes discovery, so its pod discovery
# is checked here as a static one (the relabelling, rules and the rest as is).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$dir/rules/poolside.rules.yaml" "$tmp/"
grep -q '^  kubernetes_sd_configs:$' "$dir/prometheus.yml"
sed -e 's/^  kubernetes_sd_configs:$/  static_configs:/' -e 's/^  - role: pod$/  - targets: []/' \
  "$dir/prometheus.yml" >"$tmp/prometheus.yml"
"$PROMTOOL" check config "$tmp/prometheus.yml"
