'use strict';
// Node.js client for poolside's query, cache and ingest services.
//
//   const { QueryClient } = require('./lib/poolside');
//   const db = new QueryClient('127.0.0.1:50051', { database: 'demo' });
//   const result = await db.execute('SELECT owner FROM accounts WHERE id = $1', [42]);
//   result.rows[0]  // ['owner-42']
//   db.close();
//
// The .proto files are loaded at runtime from the repository's proto/ directory
// (options.protoRoot or $POOLSIDE_PROTO_ROOT to load them from elsewhere).
//
// Values travel typed, never interpolated. Parameters: null/undefined -> NULL,
// boolean, integer number or bigint -> int64, other numbers -> double, string ->
// text, Buffer/Uint8Array -> bytes, Date -> timestamp, new Numeric('12.50') ->
// numeric, new Json(obj) -> json. Results: int64 -> number (bigint beyond 2^53),
// numeric -> string (exact), json -> parsed, timestamp -> Date, bytes -> Buffer.
// Failed calls reject with a PoolsideError (code, codeName, retryable).

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_ROOT = path.resolve(__dirname, '..', '..', '..');

const loaded = new Map();

function loadProtos(protoRoot) {
  const root = protoRoot || process.env.POOLSIDE_PROTO_ROOT || DEFAULT_PROTO_ROOT;
  if (!loaded.has(root)) {
    const definition = protoLoader.loadSync(
      ['query', 'cache', 'ingest'].map((p) => `proto/poolside/v1/${p}.proto`),
      { includeDirs: [root], longs: String, enums: String, defaults: true, oneofs: true },
    );
    loaded.set(root, grpc.loadPackageDefinition(definition).poolside.v1);
  }
  return loaded.get(root);
}

/** Sends a string as numeric_value (exact decimal), e.g. new Numeric('12.50'). */
class Numeric {
  constructor(text) { this.text = String(text); }
  toString() { return this.text; }
}

/** Sends a value as json_value, e.g. new Json({ tier: 'pro' }). */
class Json {
  constructor(value) { this.value = value; }
}

const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE, grpc.status.ABORTED,
  grpc.status.RESOURCE_EXHAUSTED, grpc.status.DEADLINE_EXCEEDED,
]);
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

/** A failed call: `code` (a grpc status number), `codeName`, the server's message. */
class PoolsideError extends Error {
  constructor(code, message, metadata) {
    super(`${CODE_NAMES[code] || code}: ${message}`);
    this.name = 'PoolsideError';
    this.code = code;
    this.codeName = CODE_NAMES[code] || String(code);
    this.details = message;
    this.metadata = metadata;
  }

  /** Whether the same call may succeed if sent again (ABORTED: the whole transaction). */
  get retryable() { return RETRYABLE.has(this.code); }

  static from(err) {
    if (err instanceof PoolsideError || err.code === undefined) return err;
    return new PoolsideError(err.code, err.details || err.message, err.metadata);
  }
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** A poolside.v1.Value (plain object for proto-loader) for a JavaScript value. */
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'bigint') {
    if (v < INT64_MIN || v > INT64_MAX) throw new RangeError(`${v} does not fit in 64 bits; send it as new Numeric(...)`);
    return { int64Value: v.toString() };
  }
  if (typeof v === 'number') {
    if (Number.isInteger(v)) {
      if (!Number.isSafeInteger(v)) throw new RangeError(`${v} is not a safe integer; pass a bigint`);
      return { int64Value: String(v) };
    }
    return { doubleValue: v };
  }
  if (typeof v === 'string') return { textValue: v };
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return { bytesValue: Buffer.from(v) };
  if (v instanceof Date) {
    const ms = v.getTime();
    if (Number.isNaN(ms)) throw new RangeError('invalid Date');
    const seconds = Math.floor(ms / 1000);
    return { timestampValue: { seconds: String(seconds), nanos: (ms - seconds * 1000) * 1e6 } };
  }
  if (v instanceof Numeric) return { numericValue: v.text };
  if (v instanceof Json) return { jsonValue: JSON.stringify(v.value) };
  throw new TypeError(`cannot send ${Object.prototype.toString.call(v)} as a poolside value`);
}

function int64(text) {
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : BigInt(text);
}

/** The JavaScript value of a poolside.v1.Value (see toValue). */
function fromValue(v) {
  switch (v.kind) {
    case undefined: case null: case 'nullValue': return null;
    case 'boolValue': return v.boolValue;
    case 'int64Value': return int64(v.int64Value);
    case 'doubleValue': return v.doubleValue;
    case 'textValue': return v.textValue;
    case 'bytesValue': return Buffer.from(v.bytesValue);
    case 'timestampValue':
      return new Date(Number(v.timestampValue.seconds) * 1000 + Math.floor(v.timestampValue.nanos / 1e6));
    case 'numericValue': return v.numericValue;
    case 'jsonValue': return JSON.parse(v.jsonValue);
    default: throw new TypeError(`unknown value kind ${v.kind}`);
  }
}

function fromRows(rows) {
  return rows.map((r) => r.values.map(fromValue));
}

/** Owns a channel; adds the bearer token and a deadline to every call. */
class BaseClient {
  constructor(ServiceCtor, target, options = {}) {
    const {
      token, rootCerts, privateKey, certChain, timeoutMs = 30000, channelOptions,
    } = options;
    const credentials = rootCerts || certChain
      ? grpc.credentials.createSsl(rootCerts || null, privateKey || null, certChain || null)
      : grpc.credentials.createInsecure();
    this.stub = new ServiceCtor(target, credentials, channelOptions);
    this.timeoutMs = timeoutMs;
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
  }

  callOptions(timeoutMs) {
    return { deadline: new Date(Date.now() + (timeoutMs ?? this.timeoutMs)) };
  }

  unary(method, request, timeoutMs) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, this.callOptions(timeoutMs), (err, response) => {
        if (err) reject(PoolsideError.from(err)); else resolve(response);
      });
    });
  }

  close() { this.stub.close(); }
}

// commitLsn: a write's commit position (a decimal string; '0' when unknown):
// pass it as options.minLsn to a later read that must see the write, through
// the cache too. lsn: the position whose committed changes the result
// reflects ('0': unknown).
function resultFrom(result, cache = 'BYPASS', commitLsn = '0', lsn = '0') {
  return {
    columns: result.columns.map((c) => c.name),
    rows: fromRows(result.rows),
    rowsAffected: Number(result.rowsAffected),
    commandTag: result.commandTag,
    cache,
    commitLsn: String(commitLsn ?? '0'),
    lsn: String(lsn ?? '0'),
  };
}

const ISOLATION = {
  undefined: 'ISOLATION_LEVEL_DEFAULT',
  'read committed': 'READ_COMMITTED',
  'repeatable read': 'REPEATABLE_READ',
  serializable: 'SERIALIZABLE',
};

/**
 * Runs SQL through poolside's query service (port 50051 by default).
 * options: database, token, timeoutMs (default deadline per call), rootCerts /
 * privateKey / certChain (Buffers, for TLS and mutual TLS), protoRoot.
 */
class QueryClient extends BaseClient {
  constructor(target = '127.0.0.1:50051', options = {}) {
    super(loadProtos(options.protoRoot).QueryService, target, options);
    this.database = options.database || '';
  }

  request(sql, params = [], { maxRows = 0, chunkRows = 0, cache, namedQuery = '', minLsn = '0' } = {}) {
    const request = {
      database: this.database, sql, params: params.map(toValue), maxRows, chunkRows, namedQuery,
      minLsn: String(minLsn),
    };
    if (cache) {
      request.cache = {
        ttlMs: cache.ttlMs ?? 60000,
        staleWhileRevalidateMs: cache.staleWhileRevalidateMs ?? 0,
        tags: cache.tags ?? [],
        bypass: cache.bypass ?? false,
      };
    }
    return request;
  }

  /**
   * One statement; resolves to { columns, rows, rowsAffected, commandTag, cache,
   * commitLsn, lsn }. options.cache = { ttlMs, staleWhileRevalidateMs, tags, bypass }
   * serves reads from the cache sidecar; `cache` in the result is HIT, MISS, STALE
   * or BYPASS. options.minLsn = a write's commitLsn: the read sees that write.
   */
  async execute(sql, params = [], options = {}) {
    const response = await this.unary('Execute', this.request(sql, params, options), options.timeoutMs);
    return resultFrom(response.result, response.cache, response.commitLsn, response.lsn);
  }

  /**
   * The server-configured statement `name` (QueryServiceConfig namedQueries)
   * with params of its declared types; principals without the `sql` role may
   * run only these. Resolves like execute().
   */
  async executeNamed(name, params = [], options = {}) {
    const request = this.request('', params, { ...options, namedQuery: name });
    const response = await this.unary('Execute', request, options.timeoutMs);
    return resultFrom(response.result, response.cache, response.commitLsn, response.lsn);
  }

  /** One statement, its rows as an async iterator (for large results). */
  async* stream(sql, params = [], options = {}) {
    const call = this.stub.ExecuteStream(this.request(sql, params, options), this.metadata,
      this.callOptions(options.timeoutMs));
    try {
      for await (const chunk of call) yield* fromRows(chunk.rows);
    } catch (err) {
      throw PoolsideError.from(err);
    } finally {
      call.cancel();
    }
  }

  /**
   * Several statements, all committed or none: [{ sql, params }, ...]. Resolves
   * to one result per statement. options: isolation ('read committed',
   * 'repeatable read', 'serializable'), readOnly, timeoutMs.
   */
  async transaction(statements, options = {}) {
    const request = {
      database: this.database,
      statements: statements.map((s) => ({ sql: s.sql, params: (s.params || []).map(toValue) })),
      isolation: ISOLATION[options.isolation],
      readOnly: options.readOnly || false,
    };
    if (request.isolation === undefined) throw new RangeError(`unknown isolation ${options.isolation}`);
    const response = await this.unary('ExecuteTransaction', request, options.timeoutMs);
    return response.results.map((r) => resultFrom(r));
  }
}

function writeResultFrom(r) {
  return {
    rowsWritten: Number(r.rowsWritten),
    rejected: r.rejected.map((e) => ({ rowIndex: e.rowIndex, reason: e.reason, sqlstate: e.sqlstate })),
    duplicate: r.duplicate,
  };
}

/**
 * Writes rows through poolside's ingest service (port 50053 by default). A
 * resolved write is committed; on a retryable error send the same rows with the
 * same idempotencyKey again: they are written once.
 */
class IngestClient extends BaseClient {
  constructor(target = '127.0.0.1:50053', options = {}) {
    super(loadProtos(options.protoRoot).IngestService, target, options);
    this.database = options.database || '';
  }

  request(table, columns, rows, idempotencyKey) {
    return {
      database: this.database,
      table,
      columns,
      rows: rows.map((r) => ({ values: r.map(toValue) })),
      idempotencyKey: idempotencyKey || '',
    };
  }

  /** One request (unary Write): { rowsWritten, rejected: [{rowIndex, reason, sqlstate}], duplicate }. */
  async write(table, columns, rows, { idempotencyKey, timeoutMs } = {}) {
    const response = await this.unary('Write', this.request(table, columns, rows, idempotencyKey), timeoutMs);
    return writeResultFrom(response);
  }

  /**
   * Many requests on one bidirectional Channel call, each acknowledged once
   * committed. `batches`: arrays of rows, one request each (keyed
   * keyPrefix + index when keyPrefix is given). Resolves to one result per batch,
   * in batch order.
   */
  channel(table, columns, batches, { keyPrefix, timeoutMs } = {}) {
    return new Promise((resolve, reject) => {
      const call = this.stub.Channel(this.metadata, this.callOptions(timeoutMs));
      const results = new Array(batches.length);
      let pending = batches.length;
      call.on('data', (ack) => {
        const i = Number(ack.sequence);
        if (ack.code !== 0) {
          call.cancel();
          reject(new PoolsideError(ack.code, `batch ${i}: ${ack.message}`));
          return;
        }
        results[i] = writeResultFrom(ack.result);
        if (--pending === 0) call.end();
      });
      call.on('error', (err) => reject(PoolsideError.from(err)));
      call.on('end', () => (pending === 0 ? resolve(results)
        : reject(new PoolsideError(grpc.status.UNAVAILABLE, `${pending} batches not acknowledged`))));
      batches.forEach((rows, i) => {
        const key = keyPrefix === undefined ? '' : `${keyPrefix}${i}`;
        call.write({ sequence: String(i), write: this.request(table, columns, rows, key) });
      });
      if (batches.length === 0) call.end();
    });
  }
}

/** The cache sidecar (port 50052): stats() and invalidate() for operators. */
class CacheClient extends BaseClient {
  constructor(target = '127.0.0.1:50052', options = {}) {
    super(loadProtos(options.protoRoot).CacheService, target, options);
  }

  stats(timeoutMs) { return this.unary('GetStats', {}, timeoutMs); }

  async invalidate({ tags = [], prefixes = [], flushAll = false, timeoutMs } = {}) {
    // Keys (and so prefixes) are bytes on the wire; strings are sent as UTF-8.
    const bytes = prefixes.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p));
    const response = await this.unary('Invalidate', { tags, prefixes: bytes, flushAll, source: 'node' }, timeoutMs);
    return Number(response.removed);
  }
}

module.exports = {
  CacheClient, IngestClient, Json, Numeric, PoolsideError, QueryClient, fromValue, toValue, grpc,
};
