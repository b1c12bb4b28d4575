'use strict';
// gRPC server reflection of the three services, through a reflection client
// written elsewhere (grpc-reflection-js): every service each one serves is
// listed, and every method of poolside's services resolves to its request and
// response types, as our .proto files define them. grpc-reflection-js speaks
// grpc.reflection.v1alpha; the same client is pointed at grpc.reflection.v1
// (identical messages, another method path) to check that version too.
//
// Started by //tests:reflection_test (tests/client_stack.cc) with the
// services' addresses in POOLSIDE_ADDR, POOLSIDE_CACHE_ADDR and
// POOLSIDE_INGEST_ADDR.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');
const { Client } = require('grpc-reflection-js');
const reflectionGrpc = require('grpc-reflection-js/build/src/reflection_grpc_pb');

// poolside's own definitions, from the repository (runfiles).
function repoRoot() {
  let dir = path.dirname(fs.realpathSync(__filename));
  while (!fs.existsSync(path.join(dir, 'proto', 'poolside', 'v1', 'query.proto'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('proto/poolside/v1 not found above ' + __filename);
    dir = up;
  }
  return dir;
}

function localServices() {
  const root = new protobuf.Root();
  const base = repoRoot();
  root.resolvePath = (_origin, target) => path.join(base, target);
  for (const f of ['query', 'cache', 'ingest']) root.loadSync(`proto/poolside/v1/${f}.proto`);
  root.resolveAll();
  const out = {};
  for (const name of ['QueryService', 'CacheService', 'IngestService']) {
    const svc = root.lookupService(`poolside.v1.${name}`);
    out[`poolside.v1.${name}`] = Object.values(svc.methods).map((m) => ({
      name: m.name,
      request: m.resolvedRequestType.fullName.replace(/^\./, ''),
      response: m.resolvedResponseType.fullName.replace(/^\./, ''),
      requestStream: !!m.requestStream,
      responseStream: !!m.responseStream,
    }));
  }
  return out;
}

const SERVERS = [
  { env: 'POOLSIDE_ADDR', own: 'poolside.v1.QueryService' },
  { env: 'POOLSIDE_CACHE_ADDR', own: 'poolside.v1.CacheService' },
  { env: 'POOLSIDE_INGEST_ADDR', own: 'poolside.v1.IngestService' },
];

const COMMON = [
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

// grpc-reflection-js's client, over v1alpha as shipped or over v1.
function reflectionClient(address, version) {
  const metadata = new grpc.Metadata();
  if (process.env.POOLSIDE_TOKEN) metadata.set('authorization', `Bearer ${process.env.POOLSIDE_TOKEN}`);
  const client = new Client(address, grpc.credentials.createInsecure(), undefined, metadata);
  if (version === 'v1') {
    const shipped = reflectionGrpc.ServerReflectionService.serverReflectionInfo;
    assert.equal(shipped.path, '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo');
    const V1 = grpc.makeGenericClientConstructor({
      serverReflectionInfo: { ...shipped, path: '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo' },
    });
    client.grpcClient.close();
    client.grpcClient = new V1(address, grpc.credentials.createInsecure());
  }
  return client;
}

const expected = localServices();

for (const version of ['v1alpha', 'v1']) {
  for (const server of SERVERS) {
    test(`${server.own} through reflection ${version}`, async () => {
      const address = process.env[server.env];
      assert.ok(address, `${server.env} is not set`);
      const client = reflectionClient(address, version);
      try {
        const listed = (await client.listServices()).sort();
        assert.deepEqual(listed, [...COMMON, server.own].sort());

        // Every listed service resolves; poolside's own method by method.
        for (const name of listed) {
          const root = await client.fileContainingSymbol(name);
          const svc = root.lookupService(name);
          assert.ok(Object.keys(svc.methods).length > 0, `${name} has no methods`);
          root.resolveAll();
          for (const m of Object.values(svc.methods)) {
            assert.ok(m.resolvedRequestType, `${name}.${m.name}: request type unresolved`);
            assert.ok(m.resolvedResponseType, `${name}.${m.name}: response type unresolved`);
          }
        }
        const root = await client.fileContainingSymbol(server.own);
        root.resolveAll();
        const methods = Object.values(root.lookupService(server.own).methods).map((m) => ({
          name: m.name,
          request: m.resolvedRequestType.fullName.replace(/^\./, ''),
          response: m.resolvedResponseType.fullName.replace(/^\./, ''),
          requestStream: !!m.requestStream,
          responseStream: !!m.responseStream,
        }));
        assert.deepEqual(methods, expected[server.own]);
        // Each method on its own symbol, and each message with its fields.
        for (const m of expected[server.own]) {
          const byMethod = await client.fileContainingSymbol(`${server.own}.${m.name}`);
          assert.ok(byMethod.lookupService(server.own).methods[m.name], `${server.own}.${m.name}`);
          for (const type of [m.request, m.response]) {
            const t = (await client.fileContainingSymbol(type)).lookupType(type);
            assert.equal(t.fullName.replace(/^\./, ''), type);
          }
        }

        // A symbol nobody defines is an error, not an empty answer.
        await assert.rejects(client.fileContainingSymbol('poolside.v1.NoSuchService'));
      } finally {
        client.grpcClient.close();
      }
    });
  }
}
