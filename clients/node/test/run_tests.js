'use strict';
// Runs the client's tests with `node --test`, printing the spec report and
// writing JUnit XML to $XML_OUTPUT_FILE (set by Bazel) so each case is counted.
// Started by //tests:node_client_test (tests/client_stack.cc) with the
// services' addresses in POOLSIDE_ADDR, POOLSIDE_CACHE_ADDR and
// POOLSIDE_INGEST_ADDR.

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

// The real directory (Bazel runs this through a runfiles symlink), so
// node_modules next to package.json is found.
const testDir = path.dirname(fs.realpathSync(__filename));
const args = ['--test', '--test-reporter=spec', '--test-reporter-destination=stdout'];
if (process.env.XML_OUTPUT_FILE) {
  args.push(`--test-reporter=${path.join(testDir, 'junit_reporter.mjs')}`,
    `--test-reporter-destination=${process.env.XML_OUTPUT_FILE}`);
}
for (const f of fs.readdirSync(testDir).sort()) {
  if (f.endsWith('.test.js')) args.push(path.join(testDir, f));
}
const nodeModules = path.join(testDir, '..', 'node_modules');
if (!fs.existsSync(path.join(nodeModules, '@grpc', 'grpc-js'))) {
  console.error(`${nodeModules} has no @grpc/grpc-js: run \`make deps\` (npm ci in clients/node)`);
  process.exit(1);
}
const done = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(done.status === null ? 1 : done.status);
