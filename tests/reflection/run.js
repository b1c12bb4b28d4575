'use strict';
// Runs reflection.test.js with `node --test`, writing JUnit XML to
// $XML_OUTPUT_FILE (set by Bazel) with clients/node's reporter, so each case
// is counted. Started by //tests:reflection_test through tests/client_stack.cc.

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

// The real directory (Bazel runs this through a runfiles symlink), so
// node_modules next to package.json is found.
const dir = path.dirname(fs.realpathSync(__filename));
if (!fs.existsSync(path.join(dir, 'node_modules', 'grpc-reflection-js'))) {
  console.error(`${dir}/node_modules has no grpc-reflection-js: run \`make deps\` (npm ci in tests/reflection)`);
  process.exit(1);
}
const args = ['--test', '--test-reporter=spec', '--test-reporter-destination=stdout'];
if (process.env.XML_OUTPUT_FILE) {
  const reporter = path.resolve('clients/node/test/junit_reporter.mjs');
  args.push(`--test-reporter=${reporter}`, `--test-reporter-destination=${process.env.XML_OUTPUT_FILE}`);
}
args.push(path.join(dir, 'reflection.test.js'));
const done = spawnSync(process.execPath, args, { stdio: 'inherit' });
process.exit(done.status === null ? 1 : done.status);
