'use strict';
// Runs every Node example against real services and checks what they return.

const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const path = require('node:path');
const test = require('node:test');
const { promisify } = require('node:util');

const poolside = require('../lib/poolside');

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through //tests:node_client_test`);
  return value;
}

const QUERY = requireEnv('POOLSIDE_ADDR');
const INGEST = requireEnv('POOLSIDE_INGEST_ADDR');
const CACHE = requireEnv('POOLSIDE_CACHE_ADDR');
const DATABASE = process.env.POOLSIDE_DATABASE || 'demo';
const TOKEN = requireEnv('POOLSIDE_TOKEN');
const READER_TOKEN = requireEnv('POOLSIDE_READER_TOKEN');
const EXAMPLES = path.join(__dirname, '..', 'examples');

test('query example', async () => {
  const out = await require('../examples/query').run(QUERY, DATABASE, TOKEN);
  assert.equal(out.owner, 'owner-42');
  assert.equal(out.balance, '3325.98');
  assert.deepEqual(out.updated, [1, 1]);
  assert.equal(out.sum, '237.57'); // 79.19 + 158.38, unchanged by the transfer
  assert.equal(out.errorCode, 'INVALID_ARGUMENT');
  assert.equal(out.errorRetryable, false);
  assert.match(out.errorMessage, /42601/);
});

test('stream example', async () => {
  const out = await require('../examples/stream').run(QUERY, DATABASE, TOKEN);
  assert.equal(out.rows, 1000);
  assert.equal(out.idSum, (1000 * 1001) / 2);
  assert.deepEqual(out.first, [1, 'owner-1']);
  assert.deepEqual(out.last, [1000, 'owner-1000']);
});

test('cached read example', async () => {
  const out = await require('../examples/cached_read').run(QUERY, DATABASE, TOKEN);
  assert.deepEqual(out, [['MISS', 'owner-8'], ['HIT', 'owner-8'], ['MISS', 'renamed-8']]);
  const cache = new poolside.CacheClient(CACHE);
  try {
    const stats = await cache.stats();
    // The result is in the sidecar (its HIT may come from the query replica's
    // in-process near cache, which the sidecar never sees).
    assert.ok(Number(stats.sets) >= 1, `sets ${stats.sets}`);
  } finally {
    cache.close();
  }
});

test('a write commitLsn as a read minLsn: the read reflects the write', async () => {
  const db = new poolside.QueryClient(QUERY, { database: DATABASE, token: TOKEN, timeoutMs: 5000 });
  try {
    const w = await db.execute('UPDATE accounts SET owner = owner WHERE id = $1', [9]);
    assert.equal(w.rowsAffected, 1);
    assert.match(w.commitLsn, /^[1-9][0-9]*$/);
    const r = await db.execute('SELECT owner FROM accounts WHERE id = $1', [9],
      { cache: { ttlMs: 60000 }, minLsn: w.commitLsn });
    assert.equal(r.rows[0][0], 'owner-9');
    assert.ok(BigInt(r.lsn) >= BigInt(w.commitLsn), `lsn ${r.lsn} < commitLsn ${w.commitLsn}`);
    // A token past anything committed waits its bound and then reads the
    // database, never a cached result it cannot vouch for.
    const ahead = (BigInt(w.commitLsn) + 1000000000n).toString();
    const late = await db.execute('SELECT owner FROM accounts WHERE id = $1', [9],
      { cache: { ttlMs: 60000 }, minLsn: ahead });
    assert.notEqual(late.cache, 'HIT');
  } finally {
    db.close();
  }
});

test('ingest example', async () => {
  const out = await require('../examples/ingest').run(INGEST, QUERY, DATABASE, TOKEN, 6001);
  assert.equal(out.written, 2);
  assert.deepEqual(out.rejected.map((r) => r.rowIndex), [1]);
  assert.match(out.rejected[0].reason, /kind/);
  assert.equal(out.retryDuplicate, true);
  assert.equal(out.channelWritten, 50);
  assert.deepEqual(out.stored, [[6001, 'deposit', '12.50'], [6003, 'withdrawal', null]]);
  assert.equal(out.count, 52);
});

test('auth example', async () => {
  const out = await require('../examples/auth').run(QUERY, INGEST, DATABASE, TOKEN, READER_TOKEN);
  assert.deepEqual(out, {
    noToken: 'UNAUTHENTICATED',
    badToken: 'UNAUTHENTICATED',
    readerNamed: ['owner-42', '3325.98'],
    readerRawSql: 'PERMISSION_DENIED',
    readerIngest: 'PERMISSION_DENIED',
    appRawSql: 1000,
  });
});

test('examples run as scripts', async () => {
  const env = { ...process.env, POOLSIDE_EXAMPLE_FIRST_ID: '8001' };
  for (const name of ['query', 'stream', 'cached_read', 'ingest', 'auth']) {
    // Rejects (failing the test) on a non-zero exit, with the script's stderr.
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(EXAMPLES, `${name}.js`)],
      { env, timeout: 120000 });
    assert.ok(stdout.length > 0, `${name}.js printed nothing`);
  }
});

test('values round-trip with their types', async () => {
  const db = new poolside.QueryClient(QUERY, { database: DATABASE, token: TOKEN });
  try {
    const at = new Date('2026-01-02T03:04:05.678Z');
    const params = [null, true, -(2n ** 63n), 1.5, "it's; DROP TABLE accounts;--",
      Buffer.from([0, 255]), at, new poolside.Numeric('12345678901234567890.000001'),
      new poolside.Json({ a: [1, null] }), 2 ** 40];
    // json parameters go untyped (they fit json and jsonb columns alike).
    const result = await db.execute('SELECT $1::text, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10', params);
    assert.deepEqual(result.rows[0], [null, true, -(2n ** 63n), 1.5, "it's; DROP TABLE accounts;--",
      Buffer.from([0, 255]), at, '12345678901234567890.000001', { a: [1, null] }, 2 ** 40]);
  } finally {
    db.close();
  }
  // Years before 1000 keep four digits on the wire (PostgreSQL would read
  // "1-01-01" as 2001): found by fuzz/value_codec_fuzzer.
  const early = ['0001-06-01T00:00:00Z', '0099-06-01T00:00:00Z'].map((t) => new Date(t));
  const back = new poolside.QueryClient(QUERY, { database: DATABASE, token: TOKEN });
  try {
    assert.deepEqual((await back.execute('SELECT $1, $2', early)).rows[0], early);
  } finally {
    back.close();
  }
  assert.throws(() => poolside.toValue(2n ** 63n), RangeError);
  assert.throws(() => poolside.toValue({}), TypeError);
});

test('errors carry the gRPC code', async () => {
  const db = new poolside.QueryClient(QUERY, { database: 'no_such_db', token: TOKEN });
  try {
    await assert.rejects(db.execute('SELECT 1'), (e) => e instanceof poolside.PoolsideError
      && e.codeName === 'NOT_FOUND' && !e.retryable);
  } finally {
    db.close();
  }
});
