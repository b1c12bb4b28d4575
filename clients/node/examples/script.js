'use strict';
// What each example does when run as a script (node examples/<name>.js): it
// talks to the services and database of `make run` unless the environment
// names others, prints its result, or prints the error and exits 1.

const env = {
  query: process.env.POOLSIDE_ADDR || '127.0.0.1:50051',
  ingest: process.env.POOLSIDE_INGEST_ADDR || '127.0.0.1:50053',
  database: process.env.POOLSIDE_DATABASE || 'demo',
  token: process.env.POOLSIDE_TOKEN,
  readerToken: process.env.POOLSIDE_READER_TOKEN,
};

// Calls print(out) once `result` (an example's run()) resolves to out; on a
// rejection, prints the error and sets the exit code 1.
function main(result, print) {
  result.then(print, (err) => { console.error(err); process.exitCode = 1; });
}

module.exports = { env, main };
