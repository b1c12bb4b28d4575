// The configuration inside the rendered ConfigMaps is accepted by the binaries
// themselves: for every poolside container of every overlay, the file mounted
// at its --config path is given to the same binary with --check_config, under
// the container's environment (a Secret reference becomes a placeholder of the
// right form, since the real Secret exists only in the cluster). The prod-*
// overlays for HA-managed clusters must give query and ingest a topology.
//   node configmap_check_test.mjs QUERY_SERVER CACHE_SERVER INGEST_SERVER
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { checker, configOf, describe, longRunningContainers, podSpecs, renderedOverlays } from "./manifests.mjs";

const [queryServer, cacheServer, ingestServer] = process.argv.slice(2).map((p) => resolve(p));
if (!ingestServer) {
  console.log("usage: configmap_check_test.mjs QUERY_SERVER CACHE_SERVER INGEST_SERVER");
  process.exit(2);
}
const binaries = { query: queryServer, cache: cacheServer, ingest: ingestServer };
// Stand-ins for the Secrets that exist only in the cluster (by name/key), of
// the form the binaries expect.
const PLACEHOLDERS = {
  "poolside-db/app-dsn": "host=secret-from-the-cluster.invalid port=5432 dbname=app user=poolside",
  "poolside-auth/principals.json": JSON.stringify({
    principals: [{ name: "placeholder", tokenSha256: "0".repeat(64), roles: ["read"], databases: ["*"] }],
  }),
};

const { fail, finish } = checker();
const work = mkdtempSync(join(process.env.TEST_TMPDIR || tmpdir(), "configs-"));
const seen = new Set();

for (const [name, objects] of renderedOverlays(fail)) {
  for (const pod of podSpecs(objects)) {
    for (const c of longRunningContainers(pod.spec)) {
      const where = `overlays/${name} ${describe(pod.owner)} container ${c.name}`;
      let config;
      try {
        config = configOf(c, pod, objects);
      } catch (e) {
        fail(`${where}: ${e.message}`);
        continue;
      }
      if (!config) continue;  // not a poolside container (postgres, jaeger)
      const service = (c.image ?? "").split("/").pop().split(":")[0];
      const binary = binaries[service];
      if (!binary) {
        fail(`${where}: image ${c.image} is none of poolside's (query, cache, ingest)`);
        continue;
      }
      const env = { PATH: process.env.PATH };
      for (const e of c.env ?? []) {
        if (e.value != null) env[e.name] = e.value;
        else if (e.valueFrom?.secretKeyRef) {
          const ref = `${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}`;
          if (PLACEHOLDERS[ref] == null) fail(`${where}: env ${e.name}: add a placeholder for Secret ${ref} to this test`);
          else env[e.name] = PLACEHOLDERS[ref];
        }
        else fail(`${where}: env ${e.name}: only value and secretKeyRef are understood here`);
      }
      const file = join(work, `${name}-${pod.owner.metadata.name}-${c.name}-${config.key}`);
      writeFileSync(file, config.text);
      const r = spawnSync(binary, [`--config=${file}`, "--check_config"], { env, encoding: "utf8" });
      const output = `${r.stdout ?? ""}${r.stderr ?? ""}`.trim();
      if (r.status !== 0 || !r.stdout.includes("configuration OK")) {
        fail(`${where}: ${service}_server --check_config rejects ${config.key} (exit ${r.status}${r.signal ? `, signal ${r.signal}` : ""}${r.error ? `, ${r.error.message}` : ""}):\n${output}`);
      } else {
        console.log(`${where}: ${config.key}: ${r.stdout.trim()}`);
        seen.add(service);
      }
      // The overlays for an HA-managed cluster (prod-patroni, prod-cnpg) exist
      // to give query and ingest the cluster's members: each database has a
      // topology naming replicas or Patroni endpoints.
      if (name.startsWith("prod-") && (service === "query" || service === "ingest")) {
        for (const db of config.json.databases ?? []) {
          const t = db.topology ?? {};
          if (!(t.replicas ?? []).length && !(t.patroniEndpoints ?? []).length) {
            fail(`${where}: database ${db.name} has no topology (replicas or patroniEndpoints)`);
          }
        }
      }
    }
  }
}
for (const service of Object.keys(binaries)) {
  if (!seen.has(service)) fail(`no overlay runs a ${service} container whose configuration passed`);
}
finish("every rendered configuration passes --check_config");
