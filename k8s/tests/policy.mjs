// The deployment policy poolside's manifests must meet, as checks over the
// objects a kustomization renders (and the Dockerfile the images are built
// from). Each violation names its rule, so tests can tell which one fired.
import { configOf, describe, longRunningContainers, podSpecs } from "./manifests.mjs";

// Credentials written into a manifest: a password key in a libpq connection
// string, a password in a URI's user info, or a bearer token.
const CREDENTIAL = /(\bpassword\s*=\s*[^\s'"]+)|(\w+:\/\/[^\s/:@]+:[^\s/@]+@)|(\bbearer\s+[A-Za-z0-9._~+/-]{8,})/i;
const SECRETY_NAME = /(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY)/i;

function effective(container, pod, field) {
  return container.securityContext?.[field] ?? pod.spec.securityContext?.[field];
}

// The port of a "host:port" address, or null.
function portOf(address) {
  const m = /:(\d+)$/.exec(address ?? "");
  return m ? Number(m[1]) : null;
}

// A cache sidecar serves its unix socket only: no gRPC TCP listener (no
// server.listen in its configuration, no --listen), and no port, probe or
// Service reaching it except its metrics endpoint. Violations of `container`.
function cacheListenerViolations(container, pod, objects, config) {
  const out = [];
  const listen = config?.json.server?.listen ?? "";
  if (listen !== "" && !listen.startsWith("unix")) {
    out.push(`serves gRPC on TCP ${listen}: leave server.listen unset (the unix socket only)`);
  }
  if (!config?.json.unixSocket) out.push("has no unixSocket to serve on");
  for (const a of [...(container.args ?? []), ...(container.command ?? [])]) {
    if (a.startsWith("--listen")) out.push(`is started with ${a}`);
  }
  const metricsPort = portOf(config?.json.server?.telemetry?.metrics?.listen);
  const ports = container.ports ?? [];
  const metricsNames = new Set(
    ports.filter((p) => p.containerPort === metricsPort).map((p) => p.name).filter(Boolean));
  for (const p of ports) {
    if (p.containerPort !== metricsPort) {
      out.push(`declares containerPort ${p.containerPort}${p.name ? ` (${p.name})` : ""}, not its metrics port`);
    }
  }
  const isMetrics = (port) => port === metricsPort || metricsNames.has(port);
  for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
    const pr = container[probe];
    if (!pr) continue;
    for (const kind of ["grpc", "tcpSocket", "httpGet"]) {
      if (pr[kind] && !isMetrics(pr[kind].port)) {
        out.push(`${probe} uses ${kind} on port ${pr[kind].port}: probe over the socket (exec cache_server --probe)`);
      }
    }
  }
  const labels = pod.metadata.labels ?? {};
  const namespace = pod.owner.metadata.namespace ?? "";
  const cacheNames = new Set(ports.map((p) => p.name).filter(Boolean));
  for (const svc of objects.filter((o) => o.kind === "Service" && (o.metadata.namespace ?? "") === namespace)) {
    const selector = svc.spec?.selector ?? {};
    if (!Object.keys(selector).length || !Object.entries(selector).every(([k, v]) => labels[k] === v)) continue;
    for (const sp of svc.spec?.ports ?? []) {
      const target = sp.targetPort ?? sp.port;
      const reaches = typeof target === "string"
        ? cacheNames.has(target) && !metricsNames.has(target)
        : target === portOf(listen);
      if (reaches) out.push(`Service/${svc.metadata.name} port ${sp.port} reaches it (targetPort ${target})`);
    }
  }
  return out;
}

function preStopSleepSeconds(container) {
  const cmd = container.lifecycle?.preStop?.exec?.command ?? [];
  const i = cmd.findIndex((c) => c === "sleep" || c.endsWith("/sleep"));
  if (i >= 0 && cmd[i + 1] != null) return Number(cmd[i + 1]) || 0;
  return Number(container.lifecycle?.preStop?.sleep?.seconds ?? 0);
}

// Violations among `objects`: [{rule, where, message}].
export function checkObjects(objects) {
  const out = [];
  const add = (rule, where, message) => out.push({ rule, where, message });

  for (const o of objects) {
    if (o.kind === "Secret" && (Object.keys(o.data ?? {}).length || Object.keys(o.stringData ?? {}).length)) {
      add("secret-committed", describe(o),
        "a Secret with values is rendered from the repository; reference one created in the cluster instead");
    }
    if (o.kind === "ConfigMap") {
      for (const [key, text] of Object.entries(o.data ?? {})) {
        if (CREDENTIAL.test(text)) {
          add("secret-committed", `${describe(o)} ${key}`,
            "holds a credential; use dsnEnv/dsnFile and a Secret");
        }
      }
    }
  }

  const pods = podSpecs(objects);
  for (const pod of pods) {
    const where = describe(pod.owner);
    const spec = pod.spec;
    if (spec.automountServiceAccountToken !== false) {
      add("service-account-token", where, "automountServiceAccountToken must be false");
    }
    const containers = longRunningContainers(spec);
    let grace = spec.terminationGracePeriodSeconds ?? 30;
    for (const c of containers) {
      const cw = `${where} container ${c.name}`;
      for (const kind of ["requests", "limits"]) {
        for (const r of ["cpu", "memory"]) {
          if (c.resources?.[kind]?.[r] == null) add("resources", cw, `no ${kind}.${r}`);
        }
      }
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"]) {
        if (!c[probe]) add("probes", cw, `no ${probe}`);
      }
      const uid = effective(c, pod, "runAsUser");
      if (effective(c, pod, "runAsNonRoot") !== true || uid === 0) {
        add("runs-as-root", cw, "must set runAsNonRoot: true and a non-zero runAsUser");
      }
      if (c.securityContext?.readOnlyRootFilesystem !== true) {
        add("read-only-root", cw, "readOnlyRootFilesystem must be true");
      }
      if (c.securityContext?.allowPrivilegeEscalation !== false) {
        add("privilege-escalation", cw, "allowPrivilegeEscalation must be false");
      }
      if (!(c.securityContext?.capabilities?.drop ?? []).includes("ALL")) {
        add("capabilities", cw, "capabilities.drop must include ALL");
      }
      const image = c.image ?? "";
      const tag = image.includes("@") ? "digest" : image.split("/").pop().split(":")[1];
      if (!tag || tag === "latest") add("image-tag", cw, `image ${image} needs a fixed tag`);
      for (const e of c.env ?? []) {
        if (e.value != null && (CREDENTIAL.test(e.value) || (SECRETY_NAME.test(e.name) && e.value !== ""))) {
          add("secret-committed", `${cw} env ${e.name}`, "a credential as a literal value; use secretKeyRef");
        }
      }
      // Draining must finish inside the grace period: preStop sleep, then the
      // service's drain (ingest: + up to 5 s for open streams to close).
      let config = null;
      try {
        config = configOf(c, pod, objects);
      } catch (e) {
        add("config", cw, e.message);
      }
      const service = (c.image ?? "").split("/").pop().split(":")[0];
      if (service === "cache" || c.name === "cache") {
        for (const m of cacheListenerViolations(c, pod, objects, config)) {
          add("cache-tcp-listener", cw, m);
        }
      }
      if (config) {
        const drain = (config.json.server?.drainTimeoutMs ?? 10000) / 1000;
        const streams = (c.image ?? "").includes("ingest") ? 5 : 0;
        const needed = preStopSleepSeconds(c) + drain + streams;
        if (!(grace > needed)) {
          add("termination-grace", cw,
            `terminationGracePeriodSeconds ${grace} must exceed preStop + drain (${needed} s)`);
        }
      }
    }
    // The query pod carries its cache sidecar, sharing a socket volume.
    const name = pod.metadata.labels?.["app.kubernetes.io/name"];
    if (name === "poolside-query") {
      const query = containers.find((c) => c.name === "query");
      const cache = containers.find((c) => c.name === "cache");
      if (!query || !cache) {
        add("cache-sidecar", where, "the query pod must run containers named query and cache");
      } else {
        const shared = (query.volumeMounts ?? []).filter((m) =>
          (cache.volumeMounts ?? []).some((n) => n.name === m.name) &&
          (spec.volumes ?? []).some((v) => v.name === m.name && v.emptyDir));
        let target = "";
        try {
          target = configOf(query, pod, objects)?.json.cache?.target ?? "";
        } catch {}
        const socketShared = shared.some((m) => target.startsWith(`unix:${m.mountPath}/`));
        if (!socketShared) {
          add("cache-sidecar", where,
            `query's cache.target (${target || "none"}) must be a unix socket in an emptyDir both containers mount`);
        }
      }
    }
  }
  return out;
}

// Violations in a Dockerfile's text: every stage an image is built from (a
// stage no later stage builds FROM, other than the build stage) must run as a
// non-root numeric user, set in it or inherited from its base stage.
export function checkDockerfile(text, where) {
  const out = [];
  const stages = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) {
      const base = stages.find((s) => s.name === from[1]);
      stages.push({ name: from[2] ?? `#${stages.length}`, base: from[1], user: base ? base.user : null });
    }
    const user = /^USER\s+(\S+)/i.exec(line);
    if (user && stages.length) stages[stages.length - 1].user = user[1];
  }
  const leaves = stages.filter((s) => !/build/i.test(s.name) && !stages.some((t) => t.base === s.name));
  if (leaves.length === 0) out.push({ rule: "image-root", where, message: "no image stage" });
  for (const s of leaves) {
    const uid = (s.user ?? "").split(":")[0];
    if (!/^[0-9]+$/.test(uid) || Number(uid) === 0) {
      out.push({ rule: "image-root", where: `${where} stage ${s.name}`,
        message: `must run as USER <non-zero numeric uid> (has ${s.user ?? "none: root"})` });
    }
  }
  return out;
}
