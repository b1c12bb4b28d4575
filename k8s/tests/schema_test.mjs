// Every kustomization (the base and each overlay) renders with `kubectl
// kustomize`, and every object it renders validates against the Kubernetes
// OpenAPI schema (npm kubernetes-models: types, required fields, enums,
// formats). Also checks each overlay deploys the whole of poolside.
import { join } from "node:path";
import { checker, describe, k8sDir, overlays, render, testsDir } from "./manifests.mjs";

const { fail, finish } = checker();

// "apps/v1" + "Deployment" -> kubernetes-models/apps/v1/Deployment.
async function modelFor(apiVersion, kind) {
  const mod = await import(`kubernetes-models/${apiVersion}/${kind}`);
  return mod[kind];
}

// Schema errors of each object, as messages.
async function schemaErrors(objects) {
  const errors = [];
  for (const o of objects) {
    let Model;
    try {
      Model = await modelFor(o.apiVersion, o.kind);
    } catch (e) {
      errors.push(`${describe(o)}: no schema for ${o.apiVersion} ${o.kind} (${e.message})`);
      continue;
    }
    try {
      new Model(o).validate();
    } catch (e) {
      errors.push(`${describe(o)} does not match the ${o.apiVersion} ${o.kind} schema: ${e.message}`);
    }
  }
  return errors;
}

async function validateAll(name, dir) {
  let objects;
  try {
    objects = render(dir);
  } catch (e) {
    fail(`${name}: ${e.message}`);
    return [];
  }
  for (const e of await schemaErrors(objects)) fail(`${name}: ${e}`);
  console.log(`${name}: ${objects.length} objects rendered and validated`);
  return objects;
}

function expectObjects(name, objects, wanted) {
  for (const [kind, objName] of wanted) {
    if (!objects.some((o) => o.kind === kind && o.metadata?.name === objName)) {
      fail(`${name}: renders no ${kind}/${objName}`);
    }
  }
}

const poolside = [
  ["ServiceAccount", "poolside"],
  ["Deployment", "poolside-query"],
  ["Deployment", "poolside-ingest"],
  ["Service", "poolside-query"],
  ["Service", "poolside-ingest"],
  ["HorizontalPodAutoscaler", "poolside-query"],
  ["HorizontalPodAutoscaler", "poolside-ingest"],
  ["PodDisruptionBudget", "poolside-query"],
  ["PodDisruptionBudget", "poolside-ingest"],
  ["NetworkPolicy", "poolside-query"],
  ["NetworkPolicy", "poolside-ingest"],
  ["Service", "otlp-collector"],
];

await validateAll("base", join(k8sDir, "base"));
const found = overlays();
if (!found.some(([n]) => n === "dev") || !found.some(([n]) => n === "prod")) {
  fail(`expected overlays dev and prod under ${k8sDir}/overlays, found: ${found.map(([n]) => n)}`);
}
for (const [name, dir] of found) {
  const objects = await validateAll(`overlays/${name}`, dir);
  expectObjects(`overlays/${name}`, objects, poolside);
  if (name === "dev") {
    expectObjects("overlays/dev", objects, [
      ["StatefulSet", "postgres"],
      ["Service", "postgres"],
      ["Deployment", "jaeger"],
      ["NetworkPolicy", "postgres"],
    ]);
    const pg = objects.find((o) => o.kind === "StatefulSet" && o.metadata.name === "postgres");
    if (pg && !(pg.spec.volumeClaimTemplates ?? []).length) fail("overlays/dev: postgres has no PVC");
    const otlp = objects.find((o) => o.kind === "Service" && o.metadata.name === "otlp-collector");
    if (otlp && !otlp.spec.ports?.some((p) => p.port === 4317)) fail("overlays/dev: OTLP Service lacks port 4317");
  }
}

// The validation has teeth: a deliberately broken manifest is refused, for
// each of its mistakes.
{
  const objects = render(join(testsDir, "fixtures", "invalid-schema"));
  const errors = (await schemaErrors(objects)).join("\n");
  for (const expected of [
    "spec/replicas must be integer",
    "limits/memory must match format \"quantity\"",
    "containers/0 must have required property name",
    "no schema for apps/v1 Deployments",
  ]) {
    if (!errors.includes(expected)) {
      fail(`fixtures/invalid-schema: expected a schema error containing ${JSON.stringify(expected)}; got:\n${errors}`);
    }
  }
  console.log("fixtures/invalid-schema: refused as expected");
}

finish("all kustomizations render and validate");
