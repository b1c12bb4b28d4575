// The policy (policy.mjs) holds for every overlay and for k8s/Dockerfile, and
// catches each kind of mistake in a deliberately broken fixture.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { checker, k8sDir, render, renderedOverlays, testsDir } from "./manifests.mjs";
import { checkDockerfile, checkObjects } from "./policy.mjs";

const { fail, finish } = checker();
const show = (v) => `  [${v.rule}] ${v.where}: ${v.message}`;

for (const [name, objects] of renderedOverlays(fail)) {
  const violations = checkObjects(objects);
  for (const v of violations) fail(`overlays/${name}:\n${show(v)}`);
  if (!violations.length) console.log(`overlays/${name}: policy holds`);
}

const dockerfile = join(k8sDir, "Dockerfile");
const dockerViolations = checkDockerfile(readFileSync(dockerfile, "utf8"), "k8s/Dockerfile");
for (const v of dockerViolations) fail(show(v));
if (!dockerViolations.length) console.log("k8s/Dockerfile: every image runs as a non-root user");

// Negative case: each rule must fire on the broken fixture.
const bad = join(testsDir, "fixtures", "bad");
const found = [
  ...checkObjects(render(bad)),
  ...checkDockerfile(readFileSync(join(bad, "Dockerfile"), "utf8"), "fixtures/bad/Dockerfile"),
];
console.log(`fixtures/bad: ${found.length} violations:\n${found.map(show).join("\n")}`);
const expected = [
  "secret-committed", "resources", "probes", "runs-as-root", "read-only-root",
  "privilege-escalation", "capabilities", "image-tag", "cache-sidecar",
  "service-account-token", "termination-grace", "image-root", "cache-tcp-listener",
];
for (const rule of expected) {
  if (!found.some((v) => v.rule === rule)) fail(`fixtures/bad: rule ${rule} did not fire`);
}
// Both ways a secret gets committed are caught: a Secret and a literal DSN.
if (!found.some((v) => v.rule === "secret-committed" && v.where.startsWith("Secret/"))) {
  fail("fixtures/bad: the committed Secret was not reported");
}
if (!found.some((v) => v.rule === "secret-committed" && v.where.includes(" env "))) {
  fail("fixtures/bad: the password in an env value was not reported");
}
// Every way a cache sidecar gets a TCP listener is caught.
for (const what of ["serves gRPC on TCP 0.0.0.0:50052", "--listen", "containerPort 50052",
                    "uses grpc on port 50052", "Service/poolside-cache-tcp"]) {
  if (!found.some((v) => v.rule === "cache-tcp-listener" && v.message.includes(what))) {
    fail(`fixtures/bad: a cache sidecar's TCP listener was not reported: ${what}`);
  }
}

finish("policy holds; the broken fixture is caught");
