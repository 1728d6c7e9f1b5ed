// node-postgres probe for tests/integration/test_node_pg.py: runs one scenario against one server and prints
// what it saw as deterministic text, one line per row or value, so that the output of a run straight
// against PostgreSQL and of a run through pgproxy can be compared byte for byte.
//
// Usage: node probe.js CONFIG_JSON SCENARIO TAG
// CONFIG_JSON is a pg.Client config; "ssl": true becomes {rejectUnauthorized: false} (pgproxy's test
// certificate is self-signed). TAG makes names unique (runs must not collide) and is printed as "<tag>".
// Errors a scenario provokes on purpose are printed as "error|SQLSTATE|message"; anything else exits 1.
// With PROBE_HOLD set in the environment, the probe says "holding" on stderr once the scenario is done and
// waits for a line on stdin before it closes its connection.
'use strict'

const crypto = require('node:crypto')
const { Readable, Writable } = require('node:stream')
const { pipeline } = require('node:stream/promises')
const pg = require('pg')
const Cursor = require('pg-cursor')
const copyStreams = require('pg-copy-streams')

const [configJson, scenario, tag] = process.argv.slice(2)
if (!configJson || !scenario || !tag) {
  console.error('usage: node probe.js CONFIG_JSON SCENARIO TAG')
  process.exit(2)
}
const baseConfig = JSON.parse(configJson)
if (baseConfig.ssl === true) {
  baseConfig.ssl = { rejectUnauthorized: false }
}

const lines = []

function render(value) {
  if (value === null || value === undefined) return 'NULL'
  if (Buffer.isBuffer(value)) return 'Buffer:' + value.toString('hex')
  if (value instanceof Date) return 'Date:' + (isNaN(value.getTime()) ? 'invalid' : value.toISOString())
  if (Array.isArray(value)) return '[' + value.map(render).join(', ') + ']'
  if (typeof value === 'object') return value.constructor.name + ':' + JSON.stringify(value)
  return typeof value + ':' + String(value)
}

function line(...parts) {
  lines.push(parts.map((p) => (typeof p === 'string' ? p : render(p))).join('|').split(tag).join('<tag>'))
}

function error(err) {
  if (!err.code) throw err // not a server error: a probe or driver failure
  line('error', err.code, err.message)
}

function result(label, res) {
  line(label, 'command=' + res.command, 'rowCount=' + res.rowCount)
  for (const f of res.fields) {
    line(label, 'field', f.name, 'type=' + f.dataTypeID, 'format=' + f.format)
  }
  for (const row of res.rows) {
    if (Array.isArray(row)) {
      line(label, 'row', ...row.map(render))
    } else {
      line(label, 'row', ...Object.entries(row).map(([k, v]) => k + '=' + render(v)))
    }
  }
}

async function connect(extra = {}) {
  const client = new pg.Client({ ...baseConfig, ...extra })
  client.on('notice', (msg) => line('notice', msg.severity, msg.code, msg.message))
  await client.connect()
  return client
}

async function expectError(promise) {
  try {
    await promise
    line('no error')
  } catch (err) {
    error(err)
  }
}

const TYPES_QUERY = `
SELECT 1::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
       12345678901234567890.123456789::numeric AS num, 'NaN'::numeric AS num_nan, (-0.5)::numeric(5, 2) AS num_neg,
       1.5::float4 AS f4, pi()::float8 AS f8, '-Infinity'::float8 AS f8_inf, 'NaN'::float4 AS f4_nan,
       'ü∑🙂 text'::text AS t, 'abc'::varchar(5) AS vc, 'x'::char(3) AS ch, ''::text AS empty,
       '\\x00ff10'::bytea AS b, ''::bytea AS b_empty, true AS bool_t, false AS bool_f,
       '2024-02-29'::date AS d, '13:14:15.5'::time AS tm, '2024-02-29 13:14:15.123'::timestamp AS ts,
       '2024-02-29 13:14:15.123+05:30'::timestamptz AS tstz, 'infinity'::timestamptz AS tstz_inf,
       '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
       '{"a": [1, 2, {"b": null}], "s": "ü"}'::json AS j, '{"z": 1, "a": "x"}'::jsonb AS jb,
       ARRAY[1, NULL, 3]::int[] AS a_int, ARRAY[['a', 'b'], ['c', NULL]] AS a_text2d, ARRAY[]::text[] AS a_empty,
       ARRAY['2024-01-01'::date] AS a_date, ARRAY['{"k": 1}'::jsonb] AS a_jsonb, ARRAY[1.5, 2]::numeric[] AS a_num,
       NULL::int AS n_int, NULL::text AS n_text, NULL::bytea AS n_bytea, NULL::int[] AS n_array,
       ROW(1, 'two', NULL::date, 1.5::numeric) AS rec,
       '192.168.0.0/24'::cidr AS net, '10.1.2.3'::inet AS host, int4range(1, 10) AS rng,
       '(1.5,2)'::point AS pt, 'a b'::tsvector AS tsv, 42::oid AS an_oid, '12.34'::money AS cash
`

// -- scenarios ------------------------------------------------------------------------------------------

// Queries without parameters go over the simple query protocol.
async function simple(client) {
  result('types', await client.query(TYPES_QUERY))
  result('array mode', await client.query({ text: 'SELECT 1 AS a, 2 AS a, NULL AS b', rowMode: 'array' }))
  const many = await client.query(
    "CREATE TEMP TABLE s(id int, name text); INSERT INTO s SELECT g, 'n' || g FROM generate_series(1, 5) g; " +
      'UPDATE s SET name = upper(name) WHERE id > 3; SELECT * FROM s ORDER BY id; DELETE FROM s WHERE id = 1'
  )
  many.forEach((res, i) => result('multi' + i, res))
  result('empty', await client.query('SELECT 1 WHERE false'))
  await client.query("DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; RAISE WARNING 'careful'; END $$")
  result('identity', await client.query(
    "SELECT current_user, current_database(), current_setting('client_encoding') AS enc, " +
      "current_setting('DateStyle') AS ds, pg_backend_pid() = " + client.processID + ' AS pid_matches'))
  result('large', await client.query('SELECT g, repeat(md5(g::text), 20) AS wide FROM generate_series(1, 300) g'))
  await expectError(client.query('SELECT 1; SELECT 1/0; SELECT 2'))
  result('after', await client.query("SELECT 'alive' AS state"))
}

// Queries with values go over the extended protocol with the unnamed statement.
async function params(client) {
  const values = [
    -32768, 2147483647, '-9223372036854775808', '-1234.5678', 0.1, 'ü∑🙂 \'quoted\' "double"',
    Buffer.from([0, 1, 254, 255]), true, '1999-12-31', new Date(Date.UTC(2000, 0, 2, 3, 4, 5, 6)),
    '2000-01-02 03:04:05+02', '-1 days 00:00:05', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    { k: [1, 'v', null] }, [[1, 2], [3, null]], null, ['x', 'y,z', '"q"', null],
  ]
  const text =
    'SELECT $1::int2 AS i2, $2::int4 AS i4, $3::int8 AS i8, $4::numeric AS num, $5::float8 AS f8, $6::text AS t, ' +
    '$7::bytea AS b, $8::bool AS o, $9::date AS d, $10::timestamptz AS tstz, $11::timestamptz AS tstz2, ' +
    '$12::interval AS iv, $13::uuid AS u, $14::jsonb AS jb, $15::int[] AS ai, $16::text AS nothing, $17::text[] AS at'
  result('params', await client.query(text, values))
  result('types', await client.query(TYPES_QUERY + ' WHERE $1::int = 1', [1]))
  for (let i = 0; i < 5; i++) {
    result('unnamed' + i, await client.query('SELECT g, $1::text || g AS label FROM generate_series(1, $2) g',
      ['r' + i + '-', i]))
  }
  await expectError(client.query('SELECT $1::int + $2::int', [1]))
  await expectError(client.query('SELECT $1::int', ['not a number']))
  await expectError(client.query('SELEC $1', [1]))
  result('rows option', await client.query({ text: 'SELECT g FROM generate_series(1, $1) g', values: [7], rows: 3 }))
  result('after', await client.query('SELECT $1::text AS state', ['alive']))
}

// Named prepared statements: parsed once per connection, then only Bind/Execute.
async function prepared(client) {
  const series = 'SELECT g, $1::text || g AS label, g * $2::numeric AS scaled FROM generate_series(1, $3::int) g'
  for (let i = 0; i < 10; i++) {
    result('series' + i, await client.query({ name: 'series_' + tag, text: series, values: ['v' + i, i / 4, i % 4] }))
  }
  for (let i = 0; i < 10; i++) {
    const divide = { name: 'divide_' + tag, text: 'SELECT 100 / $1::int AS q', values: [i % 3] }
    try {
      result('divide' + i, await client.query(divide))
    } catch (err) {
      error(err)
    }
  }
  for (let i = 0; i < 3; i++) {
    result('array mode' + i, await client.query({ name: 'arr_' + tag, text: 'SELECT $1::int, $1::int * 2', values: [i],
      rowMode: 'array' }))
  }
  result('server statements', await client.query(
    'SELECT name, statement, parameter_types::text, from_sql FROM pg_prepared_statements ORDER BY name'))
}

// An error inside a transaction: aborted state, ROLLBACK; then a savepoint that recovers.
async function transaction(client) {
  await client.query('CREATE TEMP TABLE tx(id int PRIMARY KEY, note text)')
  await client.query('BEGIN')
  await client.query('INSERT INTO tx VALUES ($1, $2)', [1, 'one'])
  await expectError(client.query('SELECT 1 / (id - 1) FROM tx'))
  await expectError(client.query('SELECT 1'))
  await expectError(client.query('INSERT INTO tx VALUES ($1, $2)', [2, 'two']))
  result('rollback', await client.query('ROLLBACK'))
  result('after rollback', await client.query('SELECT count(*) FROM tx'))
  await client.query('BEGIN')
  await client.query('INSERT INTO tx VALUES (1, $1)', ['kept'])
  await client.query('SAVEPOINT sp')
  await expectError(client.query('INSERT INTO tx VALUES (1, $1)', ['duplicate']))
  await client.query('ROLLBACK TO SAVEPOINT sp')
  await client.query('INSERT INTO tx VALUES (2, $1)', ['after savepoint'])
  result('commit', await client.query('COMMIT'))
  result('committed', await client.query('SELECT * FROM tx ORDER BY id'))
  await expectError(client.query('COMMIT; SELECT * FROM no_such_table_' + tag))
  result('status', await client.query('SELECT 1 AS ok'))
}

// pg-cursor: a named portal read in batches (Execute with a row limit, then Flush), 10k rows.
async function cursor(client) {
  const big = client.query(new Cursor(
    'SELECT g, md5(g::text) AS h, g % 7 = 0 AS seventh FROM generate_series(1, $1::int) g', [10000]))
  let total = 0
  const sizes = []
  for (;;) {
    const rows = await big.read(1000)
    sizes.push(rows.length)
    for (const row of rows) line('row', row.g, row.h, row.seventh)
    total += rows.length
    if (rows.length === 0) break
    if (total === 3000) {
      result('open portals', await peek(client))
    }
  }
  await big.close()
  line('batches', sizes.join(','), 'total=' + total)
  await client.query('BEGIN')
  const small = client.query(new Cursor('SELECT g FROM generate_series(1, 100) g', [], { rowMode: 'array' }))
  for (const size of [30, 30, 1, 29, 30, 5]) {
    line('read ' + size, JSON.stringify(await small.read(size)))
  }
  await small.close()
  const early = client.query(new Cursor('SELECT g FROM generate_series(1, 1000000) g'))
  line('early', JSON.stringify(await early.read(5)))
  await early.close() // closed before the end: the rest is never sent
  await client.query('COMMIT')
  const failing = client.query(new Cursor('SELECT 10 / (5000 - g) AS q FROM generate_series(1, 10000) g'))
  try {
    for (;;) {
      const rows = await failing.read(1000)
      line('failing read', rows.length)
      if (rows.length === 0) break
    }
  } catch (err) {
    error(err)
  }
  result('after', await client.query('SELECT $1::text AS state', ['alive']))
}

// While a cursor holds the session, ask from a second connection what its backend is doing.
async function peek(client) {
  const other = await connect()
  try {
    return await other.query('SELECT state FROM pg_stat_activity WHERE pid = $1', [client.processID])
  } finally {
    await other.end()
  }
}

// pg-copy-streams: COPY FROM STDIN fed from a Readable, COPY TO STDOUT into a Writable, a bad row.
async function copy(client) {
  await client.query('CREATE TEMP TABLE cp(id int, name text, note text, amount numeric)')
  const csv = []
  for (let i = 0; i < 3000; i++) {
    csv.push(`${i},name ${i},"quoted, ""${i}"" ü",${i % 5 === 0 ? '' : i * 0.25}\n`)
  }
  const into = client.query(copyStreams.from('COPY cp FROM STDIN WITH (FORMAT csv)'))
  await pipeline(Readable.from(csv.map((s) => Buffer.from(s))), into)
  line('copy from', 'rowCount=' + into.rowCount)
  const text = client.query(copyStreams.from('COPY cp FROM STDIN'))
  await pipeline(Readable.from([Buffer.from('5000\ttab\\there\t\\N\t1.5\n5001\tbackslash \\\\\tx\t\\N\n')]), text)
  line('copy from text', 'rowCount=' + text.rowCount)
  try {
    const bad = client.query(copyStreams.from('COPY cp FROM STDIN WITH (FORMAT csv)'))
    await pipeline(Readable.from([Buffer.from('7000,ok,,1\nnot a number,x,,\n')]), bad)
    line('bad copy', 'no error')
  } catch (err) {
    error(err)
  }
  result('after copy', await client.query(
    'SELECT count(*) AS n, sum(id) AS ids, count(amount) AS amounts, sum(amount) AS total FROM cp'))
  for (const sql of [
    'COPY (SELECT * FROM cp ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)',
    'COPY cp TO STDOUT',
    'COPY (SELECT id FROM cp WHERE false) TO STDOUT',
  ]) {
    const chunks = []
    const out = client.query(copyStreams.to(sql))
    await pipeline(out, new Writable({
      write(chunk, _encoding, done) {
        chunks.push(chunk)
        done()
      },
    }))
    line('copy to', sql, 'rowCount=' + out.rowCount)
    for (const text of Buffer.concat(chunks).toString('utf8').split('\n')) line('out', text)
  }
  await client.query('CREATE TEMP TABLE big(id int, payload text)')
  const bigRows = []
  for (let i = 0; i < 100000; i++) bigRows.push(`${i}\trow ${i} ${'x'.repeat(80)}\n`)
  const bigIn = client.query(copyStreams.from('COPY big FROM STDIN'))
  await pipeline(Readable.from(chunked(bigRows, 500)), bigIn)
  line('big copy from', 'rowCount=' + bigIn.rowCount)
  const digest = crypto.createHash('sha256')
  let bigText = ''
  const bigOut = client.query(copyStreams.to('COPY (SELECT * FROM big ORDER BY id) TO STDOUT'))
  await pipeline(bigOut, new Writable({
    write(chunk, _encoding, done) {
      digest.update(chunk)
      bigText += chunk.toString('utf8')
      done()
    },
  }))
  line('big copy to', 'rowCount=' + bigOut.rowCount, 'same as in=' + (bigText === bigRows.join('')),
    'sha256=' + digest.digest('hex'))
  result('after', await client.query("SELECT 'alive' AS state"))
}

function* chunked(rows, size) {
  for (let i = 0; i < rows.length; i += size) yield Buffer.from(rows.slice(i, i + size).join(''))
}

// LISTEN on one client, NOTIFY from another (statement, pg_notify, inside a transaction).
async function notify(listener) {
  const sender = await connect()
  const channel = 'node_' + tag
  const received = []
  let wake = null
  listener.on('notification', (msg) => {
    received.push(msg)
    if (wake) wake()
  })
  await listener.query('LISTEN ' + channel)
  await sender.query(`NOTIFY ${channel}, 'hello ü'`)
  await sender.query('SELECT pg_notify($1, $2)', [channel, 'second'])
  await sender.query('BEGIN')
  await sender.query(`NOTIFY ${channel}, 'in a transaction'`)
  await sender.query(`NOTIFY ${channel}, 'in a transaction'`) // folded into one by the server
  await sender.query('COMMIT')
  await sender.query(`NOTIFY ${channel}`)
  const deadline = Date.now() + 10000
  while (received.length < 4 && Date.now() < deadline) {
    await new Promise((resolve) => {
      wake = resolve
      setTimeout(resolve, 200)
    })
  }
  for (const msg of received) {
    line('notification', msg.channel, JSON.stringify(msg.payload), 'from sender=' + (msg.processId === sender.processID))
  }
  await listener.query('UNLISTEN *')
  line('sender pid matches', (await sender.query('SELECT pg_backend_pid() AS pid')).rows[0].pid === sender.processID)
  await sender.end()
}

// statement_timeout as a startup parameter, and pg.Client.prototype.cancel from a second connection.
async function cancel(client) {
  const timed = await connect({ statement_timeout: 500, options: '-c lock_timeout=1234 -c IntervalStyle=iso_8601' })
  result('timeout setting', await timed.query(
    "SELECT current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt, " +
      "current_setting('IntervalStyle') AS style"))
  let began = Date.now()
  await expectError(timed.query('SELECT pg_sleep(30)'))
  line('timed out within 15 s', Date.now() - began < 15000)
  result('after timeout', await timed.query('SELECT $1::text AS state', ['usable']))
  await timed.end()

  const sleeping = new pg.Query('SELECT pg_sleep(30)')
  let ended = false
  const outcome = new Promise((resolve) => {
    sleeping.on('error', (err) => resolve(err))
    sleeping.on('end', () => resolve(null))
  }).finally(() => {
    ended = true
  })
  began = Date.now()
  client.query(sleeping)
  // A cancel request that reaches the server before the query does is lost: ask again until it has ended.
  await new Promise((resolve) => setTimeout(resolve, 500))
  while (!ended) {
    new pg.Client(baseConfig).cancel(client, sleeping)
    let timer
    await Promise.race([outcome, new Promise((resolve) => (timer = setTimeout(resolve, 2000)))])
    clearTimeout(timer)
  }
  const err = await outcome
  if (err) error(err)
  else line('cancel', 'query completed')
  line('cancelled within 15 s', Date.now() - began < 15000)
  result('after cancel', await client.query(
    'SELECT $1::text AS state, pg_backend_pid() = $2 AS same_backend', ['usable', client.processID]))
}

// pipeline mode: every query is written at once, each with its own Sync; one fails, the others do not.
async function pipelined() {
  const client = await connect({ pipeline: true })
  const queries = [
    client.query('SELECT 1 AS one'),
    client.query('SELECT $1::int * 2 AS doubled', [21]),
    client.query('SELECT 1 / 0'),
    client.query({ name: 'pipe_' + tag, text: 'SELECT $1::text AS named', values: ['x'] }),
    client.query({ name: 'pipe_' + tag, text: 'SELECT $1::text AS named', values: ['y'] }),
    client.query('SELECT g FROM generate_series(1, 3) g'),
  ]
  const settled = await Promise.allSettled(queries)
  settled.forEach((s, i) => (s.status === 'fulfilled' ? result('pipelined' + i, s.value) : error(s.reason)))
  await client.end()
}

const SCENARIOS = { simple, params, prepared, transaction, cursor, copy, notify, cancel, pipelined }

async function main() {
  const run = SCENARIOS[scenario]
  if (!run) throw new Error('unknown scenario ' + scenario)
  const client = await connect()
  try {
    await run(client)
    result('done', await client.query('SELECT 1 AS done'))
    if (process.env.PROBE_HOLD) {
      // The caller inspects pgproxy's view of this still-open session, then sends a line to go on.
      process.stderr.write('holding\n')
      await new Promise((resolve) => {
        process.stdin.once('data', resolve)
        process.stdin.once('end', resolve)
      })
      process.stdin.destroy()
    }
  } finally {
    await client.end()
  }
}

main().then(
  () => {
    process.stdout.write(lines.join('\n') + '\n')
  },
  (err) => {
    process.stdout.write(lines.join('\n') + '\n') // what was printed so far, for the diagnosis
    console.error(err)
    process.exitCode = 1
  }
)
