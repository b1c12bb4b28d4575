'use strict';
// Auth: a bearer token per caller. A principal with the `read` role only runs
// the named queries the server configures (no raw SQL, inside read-only
// transactions) and cannot ingest; a call without a token is UNAUTHENTICATED.
// Needs services with principals configured (README: Security); the tokens come
// from POOLSIDE_TOKEN (full access) and POOLSIDE_READER_TOKEN (read only):
//   node clients/node/examples/auth.js

const { IngestClient, QueryClient, PoolsideError } = require('../lib/poolside');

// The status a call fails with (null if it succeeds).
async function codeOf(promise) {
  try {
    await promise;
    return null;
  } catch (e) {
    if (!(e instanceof PoolsideError)) throw e;
    return e.codeName;
  }
}

async function run(addr, ingestAddr, database, token, readerToken) {
  const anonymous = new QueryClient(addr, { database });
  const stranger = new QueryClient(addr, { database, token: 'not-a-real-token' });
  const reader = new QueryClient(addr, { database, token: readerToken });
  const readerIngest = new IngestClient(ingestAddr, { database, token: readerToken });
  const app = new QueryClient(addr, { database, token });
  try {
    return {
      noToken: await codeOf(anonymous.execute('SELECT 1')),
      badToken: await codeOf(stranger.execute('SELECT 1')),
      // Named queries are configured on the server with typed parameters.
      readerNamed: (await reader.executeNamed('account_owner', [42])).rows[0],
      readerRawSql: await codeOf(reader.execute('SELECT owner FROM accounts')),
      readerIngest: await codeOf(readerIngest.write('events', ['id'], [[1]])),
      appRawSql: (await app.execute('SELECT count(*) FROM accounts')).rows[0][0],
    };
  } finally {
    for (const c of [anonymous, stranger, reader, readerIngest, app]) c.close();
  }
}

module.exports = { run };

if (require.main === module) {
  const { env, main } = require('./script');
  main(run(env.query, env.ingest, env.database, env.token, env.readerToken), (out) => {
    for (const [what, result] of Object.entries(out)) console.log(`${what}: ${result}`);
  });
}
