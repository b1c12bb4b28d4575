'use strict';
// Ingest: rows written with COPY in batches, acknowledged only once committed;
// an idempotency key makes a retry safe, and bad rows come back with reasons
// while the good ones commit. node clients/node/examples/ingest.js
// (POOLSIDE_INGEST_ADDR, default 127.0.0.1:50053; table demo.events.)

const { IngestClient, QueryClient, Numeric } = require('../lib/poolside');

const COLUMNS = ['id', 'account_id', 'kind', 'amount', 'at'];

async function run(ingestAddr, queryAddr, database = 'demo', token = undefined, firstId = 2001) {
  const at = new Date('2026-11-23T12:00:00Z');
  const rows = [
    [firstId, 42, 'deposit', new Numeric('12.50'), at],
    [firstId + 1, 42, null, new Numeric('1.00'), at], // kind is NOT NULL: rejected
    [firstId + 2, 7, 'withdrawal', null, new Date(at.getTime() + 60000)],
  ];
  const key = `node-example-${firstId}`;
  const ingest = new IngestClient(ingestAddr, { database, token, timeoutMs: 30000 });
  const db = new QueryClient(queryAddr, { database, token });
  try {
    const first = await ingest.write('events', COLUMNS, rows, { idempotencyKey: key });
    // A retry with the same key (after a timeout, say) writes nothing twice.
    const retry = await ingest.write('events', COLUMNS, rows, { idempotencyKey: key });
    // Many requests on one bidirectional stream, each acknowledged once committed.
    const batches = [0, 1, 2, 3, 4].map((b) => Array.from({ length: 10 },
      (_, i) => [firstId + 10 + 10 * b + i, b, 'tick', new Numeric(String(i)), at]));
    const acks = await ingest.channel('events', COLUMNS, batches,
      { keyPrefix: `node-example-channel-${firstId}-` });
    const stored = await db.execute(
      'SELECT id, kind, amount FROM events WHERE id BETWEEN $1 AND $2 ORDER BY id', [firstId, firstId + 2]);
    const count = await db.execute('SELECT count(*) FROM events WHERE id >= $1 AND id < $2',
      [firstId, firstId + 100]);
    return {
      written: first.rowsWritten,
      rejected: first.rejected,
      retryDuplicate: retry.duplicate,
      channelWritten: acks.reduce((n, a) => n + a.rowsWritten, 0),
      stored: stored.rows,
      count: count.rows[0][0],
    };
  } finally {
    ingest.close();
    db.close();
  }
}

module.exports = { run };

if (require.main === module) {
  const { env, main } = require('./script');
  const firstId = Number(process.env.POOLSIDE_EXAMPLE_FIRST_ID || 2001);
  main(run(env.ingest, env.query, env.database, env.token, firstId), (out) => {
    console.log(`written ${out.written}, rejected ${JSON.stringify(out.rejected)}`);
    console.log(`retry: duplicate=${out.retryDuplicate}`);
    console.log(`channel: ${out.channelWritten} rows acknowledged`);
    console.log(`events now: ${out.count}`);
  });
}
