// k8s/observability: its kustomization renders and validates against the
// Kubernetes schema; the ConfigMaps hold the very rules, scrape configuration
// and dashboards of the repository; the PrometheusRule example carries the
// same rule groups; the scrape configuration keeps every metrics port the
// base's pods declare (the cache sidecar's too) and names their jobs as the
// rules and dashboards expect; every dashboard is Grafana JSON whose panels
// all query Prometheus. (promtool checks the rules themselves:
// //k8s/observability:rules_test; a real Prometheus evaluates every
// expression: //tests:prometheus_test.)
import { readFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";
import { join } from "node:path";
import { parse } from "yaml";
import { checker, describe, k8sDir, longRunningContainers, podSpecs, render } from "./manifests.mjs";

const { fail, finish } = checker();
const dir = join(k8sDir, "observability");
const read = (p) => readFileSync(join(dir, p), "utf8");

// Render and validate.
const objects = render(dir);
for (const o of objects) {
  try {
    const mod = await import(`kubernetes-models/${o.apiVersion}/${o.kind}`);
    new mod[o.kind](o).validate();
  } catch (e) {
    fail(`${describe(o)}: ${e.message}`);
  }
}
const configMap = (name) => objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === name);
const expected = {
  "poolside-prometheus-rules": { "poolside.rules.yaml": "rules/poolside.rules.yaml" },
  "poolside-prometheus-config": {
    "prometheus.yml": "prometheus.yml",
    "poolside.rules.yaml": "rules/poolside.rules.yaml",
  },
  "poolside-grafana-dashboards": {
    "query.json": "dashboards/query.json",
    "cache.json": "dashboards/cache.json",
    "ingest.json": "dashboards/ingest.json",
  },
};
for (const [name, files] of Object.entries(expected)) {
  const cm = configMap(name);
  if (!cm) {
    fail(`renders no ConfigMap/${name}`);
    continue;
  }
  for (const [key, path] of Object.entries(files)) {
    if (cm.data?.[key] !== read(path)) fail(`ConfigMap/${name} key ${key} is not ${path}`);
  }
}
if (configMap("poolside-grafana-dashboards")?.metadata?.labels?.grafana_dashboard !== "1") {
  fail("ConfigMap/poolside-grafana-dashboards lacks the label grafana_dashboard: \"1\"");
}

// The PrometheusRule example and the rules file say the same.
const rules = parse(read("rules/poolside.rules.yaml"));
const example = parse(read("prometheusrule.example.yaml"));
if (example.kind !== "PrometheusRule" || example.apiVersion !== "monitoring.coreos.com/v1") {
  fail("prometheusrule.example.yaml is not a monitoring.coreos.com/v1 PrometheusRule");
}
if (!isDeepStrictEqual(example.spec?.groups, rules.groups)) {
  fail("prometheusrule.example.yaml's groups differ from rules/poolside.rules.yaml");
}
const alerts = rules.groups.flatMap((g) => g.rules.filter((r) => r.alert).map((r) => r.alert));
for (const wanted of [
  "PoolsidePoolSaturated",
  "PoolsideAcquireTimeouts",
  "PoolsideHighErrorRatio",
  "PoolsideCacheBypassing",
  "PoolsideInvalidationLag",
  "PoolsideIngestBufferFull",
  "PoolsideSidecarDown",
]) {
  if (!alerts.includes(wanted)) fail(`rules/poolside.rules.yaml has no alert ${wanted}`);
}

// Every metrics port of the base's pods is kept, under job poolside-<container>.
const scrape = parse(read("prometheus.yml")).scrape_configs.find((s) => s.job_name === "poolside");
if (!scrape) fail("prometheus.yml has no scrape config named poolside");
const relabel = scrape?.relabel_configs ?? [];
const keep = (label, value) =>
  relabel
    .filter((r) => r.action === "keep" && (r.source_labels ?? []).includes(label))
    .every((r) => new RegExp(`^(?:${r.regex})$`).test(value));
const jobRule = relabel.find((r) => r.target_label === "job");
const metricsPorts = [];
for (const { owner, metadata, spec } of podSpecs(render(join(k8sDir, "base")))) {
  for (const c of longRunningContainers(spec)) {
    for (const p of c.ports ?? []) {
      if (!/metrics/.test(p.name ?? "")) continue;
      metricsPorts.push(`${describe(owner)} ${c.name}:${p.containerPort}`);
      const partOf = metadata.labels?.["app.kubernetes.io/part-of"] ?? "";
      if (!keep("__meta_kubernetes_pod_label_app_kubernetes_io_part_of", partOf) ||
          !keep("__meta_kubernetes_pod_container_port_name", p.name)) {
        fail(`prometheus.yml does not scrape ${describe(owner)} container ${c.name} port ${p.name}`);
      }
      // Prometheus's ${1} and JavaScript's $1 name the same group.
      const job = jobRule ? c.name.replace(new RegExp(`^(?:${jobRule.regex})$`), jobRule.replacement) : "";
      if (!["poolside-query", "poolside-cache", "poolside-ingest"].includes(job)) {
        fail(`${describe(owner)} container ${c.name} would be scraped as job "${job}"`);
      }
    }
  }
}
for (const port of [9451, 9452, 9453]) {
  if (!metricsPorts.some((p) => p.endsWith(`:${port}`))) fail(`no metrics port ${port} in the base (${metricsPorts})`);
}

// Dashboards: Grafana JSON, every panel a Prometheus query of its service's job.
for (const [name, job] of [["query", "poolside-query"], ["cache", "poolside-cache"], ["ingest", "poolside-ingest"]]) {
  let d;
  try {
    d = JSON.parse(read(`dashboards/${name}.json`));
  } catch (e) {
    fail(`dashboards/${name}.json: ${e.message}`);
    continue;
  }
  if (d.uid !== `poolside-${name}` || typeof d.schemaVersion !== "number") {
    fail(`dashboards/${name}.json: uid or schemaVersion missing`);
  }
  const panels = d.panels.filter((p) => p.type !== "row");
  if (panels.length < 10) fail(`dashboards/${name}.json has only ${panels.length} panels`);
  for (const p of panels) {
    if (!p.targets?.length) fail(`dashboards/${name}.json panel "${p.title}" has no query`);
    for (const t of p.targets ?? []) {
      if (!t.expr || !t.expr.includes("job=")) fail(`dashboards/${name}.json panel "${p.title}": ${t.expr}`);
    }
  }
  if (!panels.some((p) => p.targets?.some((t) => t.expr.includes(`job="${job}"`)))) {
    fail(`dashboards/${name}.json never queries job ${job}`);
  }
}

finish("observability: rules, scrape config and dashboards check out");
