'use strict';
// Query: a typed point select, a transaction, and what an error looks like.
// Against `make run`: node clients/node/examples/query.js
// (POOLSIDE_ADDR, default 127.0.0.1:50051; database demo).

const { QueryClient, Numeric, PoolsideError } = require('../lib/poolside');

async function run(addr, database = 'demo', token = undefined) {
  const db = new QueryClient(addr, { database, token, timeoutMs: 5000 });
  try {
    // $1 is sent as an int64 parameter, never spliced into the SQL.
    const result = await db.execute('SELECT owner, balance FROM accounts WHERE id = $1', [42]);
    const [owner, balance] = result.rows[0]; // 'owner-42', '3325.98' (numeric: exact string)

    // Several statements in one transaction: all commit or none do.
    const moved = await db.transaction([
      { sql: 'UPDATE accounts SET balance = balance - $1 WHERE id = $2', params: [new Numeric('10.00'), 1] },
      { sql: 'UPDATE accounts SET balance = balance + $1 WHERE id = $2', params: [new Numeric('10.00'), 2] },
      { sql: 'SELECT sum(balance) FROM accounts WHERE id IN (1, 2)' },
    ]);

    let error;
    try {
      await db.execute('SELEC 1');
    } catch (e) {
      if (!(e instanceof PoolsideError)) throw e;
      error = e; // INVALID_ARGUMENT, SQLSTATE 42601 in the message: do not retry
    }
    return {
      owner,
      balance,
      updated: moved.slice(0, 2).map((r) => r.rowsAffected),
      sum: moved[2].rows[0][0],
      errorCode: error.codeName,
      errorRetryable: error.retryable,
      errorMessage: error.details,
    };
  } finally {
    db.close();
  }
}

module.exports = { run };

if (require.main === module) {
  const { env, main } = require('./script');
  main(run(env.query, env.database, env.token), (out) => {
    console.log(`account 42: ${out.owner} ${out.balance}`);
    console.log(`transfer: updated ${out.updated}, sum of 1 and 2 = ${out.sum}`);
    console.log(`bad SQL: ${out.errorCode}: ${out.errorMessage}`);
  });
}
