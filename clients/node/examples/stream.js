'use strict';
// Streaming: rows of a large result as they arrive (ExecuteStream), memory
// bounded however large the result. node clients/node/examples/stream.js

const { QueryClient } = require('../lib/poolside');

async function run(addr, database = 'demo', token = undefined) {
  const db = new QueryClient(addr, { database, token, timeoutMs: 30000 });
  let rows = 0;
  let idSum = 0;
  let first;
  let last;
  try {
    for await (const [id, owner] of db.stream('SELECT id, owner FROM accounts ORDER BY id', [],
      { chunkRows: 100 })) {
      rows += 1;
      idSum += id;
      first = first || [id, owner];
      last = [id, owner];
    }
  } finally {
    db.close();
  }
  return { rows, idSum, first, last };
}

module.exports = { run };

if (require.main === module) {
  const { env, main } = require('./script');
  main(run(env.query, env.database, env.token), (out) => {
    console.log(`streamed ${out.rows} rows, first ${out.first}, last ${out.last}`);
  });
}
