'use strict';
// Cached reads: { cache: { ttlMs } } on execute() serves the read from the
// query replica's cache sidecar; result.cache says HIT, MISS, STALE or BYPASS.
// A committed write to the table (through poolside or any other program)
// invalidates it. node clients/node/examples/cached_read.js

const { QueryClient } = require('../lib/poolside');

const SQL = 'SELECT owner FROM accounts WHERE id = $1';

async function run(addr, database = 'demo', token = undefined) {
  const db = new QueryClient(addr, { database, token, timeoutMs: 5000 });
  const cache = { ttlMs: 60000, tags: ['example'] };
  const rename = (owner) => db.execute('UPDATE accounts SET owner = $1 WHERE id = $2', [owner, 8]);
  try {
    // Start from a known state: this write invalidates every cached read of
    // accounts before it is answered (read-your-writes). Its commitLsn as the
    // next read's minLsn: that read is served (and stored) only once this
    // replica's invalidation stream has applied the write too. Without it the
    // stream usually recognises the write as this replica's own and leaves
    // the stored result, but not always (a table's first change in a stream
    // carries its definition, which always invalidates: docs/cache.md).
    let w = await rename('owner-8');
    // MISS: from PostgreSQL, stored.
    const first = await db.execute(SQL, [8], { cache, minLsn: w.commitLsn });
    const second = await db.execute(SQL, [8], { cache }); // HIT: from the sidecar
    w = await rename('renamed-8');
    // MISS again, with the new owner.
    const third = await db.execute(SQL, [8], { cache, minLsn: w.commitLsn });
    await rename('owner-8');
    return [first, second, third].map((r) => [r.cache, r.rows[0][0]]);
  } finally {
    db.close();
  }
}

module.exports = { run };

if (require.main === module) {
  const { env, main } = require('./script');
  main(run(env.query, env.database, env.token), (out) => {
    for (const [outcome, owner] of out) console.log(`cache: ${outcome}  owner: ${owner}`);
  });
}
