// Shared by the k8s tests: where the manifests are, rendering a kustomization
// with `kubectl kustomize`, walking the pods and containers it declares, and
// counting a test's failures.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

// Node resolves the script's symlink, so this is the source tree's k8s/tests.
export const testsDir = dirname(fileURLToPath(import.meta.url));
export const k8sDir = dirname(testsDir);

// Every overlay under k8s/overlays, as [name, directory].
export function overlays() {
  const root = join(k8sDir, "overlays");
  return readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(join(root, e.name, "kustomization.yaml")))
    .map((e) => [e.name, join(root, e.name)]);
}

// A test's failures: fail(msg) prints "FAIL msg"; finish(summary) prints
// the number of failures, or `summary` when there was none, and exits with
// the test's status.
export function checker() {
  let failures = 0;
  return {
    fail(msg) {
      failures++;
      console.log(`FAIL ${msg}`);
    },
    finish(summary) {
      console.log(failures ? `${failures} failure(s)` : summary);
      process.exit(failures ? 1 : 0);
    },
  };
}

// Each overlay's rendered objects, as [name, objects]; an overlay that does
// not render is a failure, given to `fail`.
export function* renderedOverlays(fail) {
  for (const [name, dir] of overlays()) {
    let objects;
    try {
      objects = render(dir);
    } catch (e) {
      fail(`overlays/${name}: ${e.message}`);
      continue;
    }
    yield [name, objects];
  }
}

// The objects `kubectl kustomize dir` renders. Throws with kubectl's own
// message when it is missing or the kustomization does not render.
export function render(dir) {
  const kubectl = process.env.KUBECTL || "kubectl";
  const r = spawnSync(kubectl, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.error && r.error.code === "ENOENT") {
    throw new Error(
      `${kubectl} not found on PATH: the k8s tests render with \`kubectl kustomize\` ` +
        "(make deps installs Debian's kubernetes-client when no kubectl is present)",
    );
  }
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(`kubectl kustomize ${dir} failed (exit ${r.status}):\n${r.stderr}`);
  }
  const objects = [];
  for (const doc of parseAllDocuments(r.stdout)) {
    if (doc.errors.length) throw new Error(`unparsable output for ${dir}: ${doc.errors[0].message}`);
    const o = doc.toJS();
    if (o != null) objects.push(o);
  }
  if (objects.length === 0) throw new Error(`kubectl kustomize ${dir} rendered nothing`);
  return objects;
}

export const describe = (o) => `${o.kind}/${o.metadata?.name ?? "?"}`;

// [{owner, metadata, spec}] for every pod template (or pod) among `objects`.
export function podSpecs(objects) {
  const pods = [];
  for (const o of objects) {
    if (o.kind === "Pod") pods.push({ owner: o, metadata: o.metadata ?? {}, spec: o.spec ?? {} });
    const template =
      o.kind === "CronJob" ? o.spec?.jobTemplate?.spec?.template : o.spec?.template;
    if (["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"].includes(o.kind)) {
      pods.push({ owner: o, metadata: template?.metadata ?? {}, spec: template?.spec ?? {} });
    }
  }
  return pods;
}

// Containers that run for the pod's life: containers, plus init containers
// with restartPolicy Always (native sidecars).
export function longRunningContainers(spec) {
  return [
    ...(spec.containers ?? []),
    ...(spec.initContainers ?? []).filter((c) => c.restartPolicy === "Always"),
  ];
}

// The configuration file a poolside container reads: its --config=PATH and the
// ConfigMap key mounted there, or null for other containers.
export function configOf(container, pod, objects) {
  const arg = (container.args ?? []).find((a) => a.startsWith("--config="));
  if (!arg) return null;
  const path = arg.slice("--config=".length);
  for (const m of container.volumeMounts ?? []) {
    const prefix = m.mountPath.endsWith("/") ? m.mountPath : `${m.mountPath}/`;
    if (!path.startsWith(prefix)) continue;
    const volume = (pod.spec.volumes ?? []).find((v) => v.name === m.name);
    const cmName = volume?.configMap?.name;
    const cm = objects.find(
      (o) => o.kind === "ConfigMap" && o.metadata.name === cmName &&
        (o.metadata.namespace ?? "") === (pod.owner.metadata.namespace ?? ""),
    );
    const key = path.slice(prefix.length);
    if (cm?.data?.[key] == null) {
      throw new Error(
        `${describe(pod.owner)} container ${container.name} reads ${path}, ` +
          `but no ConfigMap key ${key} is mounted there`,
      );
    }
    return { path, key, text: cm.data[key], json: JSON.parse(cm.data[key]) };
  }
  throw new Error(`${describe(pod.owner)} container ${container.name}: nothing mounted at ${path}`);
}
