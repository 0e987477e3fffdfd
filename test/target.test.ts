import t from 'tap'
import { createServer, type IncomingMessage } from 'node:http'
import { connect as netConnect } from 'node:net'
import { WebSocketServer } from 'ws'
import { canonicalTarget, formatTarget } from '../src/front/target.js'
import { startFerry, adminStatus, metric, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { startMuxBackend } from './helpers/mux.js'

/**
 * One canonical request target (src/front/target.ts) for routing, auth, limits and every upstream leg:
 * a target undici cannot send never reaches a pool (issue 18.1: one such request wedged an upstream), and
 * a dot segment can no longer route by one path and reach the backend as another (issue 18.2).
 */

// ---- the function itself --------------------------------------------------------------------------

t.test('canonicalTarget: known cases', async (t) => {
  const cases: Array<[string, string, string, boolean?]> = [
    ['/', '', '/'],
    ['/a/b', 'x=1', '/a/b?x=1'],
    ['/ws/../admin-ws', '', '/admin-ws'],
    ['/ws/%2e%2e/admin-ws', '', '/admin-ws'],
    ['/ws/%2E%2e/admin-ws', '', '/admin-ws'],
    ['/ws/.%2e/admin-ws', '', '/admin-ws'],
    ['/ws/%2e./admin-ws', '', '/admin-ws'],
    ['/ws/./x', '', '/ws/x'],
    ['/a/..', '', '/'],
    ['/a/.', '', '/a/'],
    ['/..', '', '/'],
    ['/../../etc/passwd', '', '/etc/passwd'],
    ['/ws\\..\\admin-ws', '', '/ws%5C..%5Cadmin-ws'],
    ['/ws//../admin-ws', '', '/admin-ws'],
    ['/ws//../admin-ws', '', '/ws/admin-ws', false],
    ['/a//b///c', '', '/a/b/c'],
    ['/a//b', '', '/a//b', false],
    ['/%61dmin', '', '/admin'],
    ['/a%2fb', '', '/a%2Fb'],
    ['/a%2F..%2Fb', '', '/a%2F..%2Fb'],
    ['/café', '', '/caf%C3%A9'],
    ['/€', 'q=€', '/%E2%82%AC?q=%E2%82%AC'],
    ['/😀', '', '/%F0%9F%98%80'],
    ['/a"<>`{}|^[]', '', '/a%22%3C%3E%60%7B%7D%7C%5E%5B%5D'],
    ['/a', "q='x'&r=<>", '/a?q=%27x%27&r=%3C%3E'],
    ['/a', 'q=%zz&r=%2e', '/a?q=%zz&r=%2e'],
    ['/.well-known/x', '', '/.well-known/x'],
    ['/a.b/c..d/...', '', '/a.b/c..d/...'],
    ["/!$&'()*+,;=:@-._~", '', "/!$&'()*+,;=:@-._~"],
  ]
  for (const [path, query, want, merge] of cases) {
    t.equal(formatTarget(canonicalTarget(path, query, merge ?? true)), want, `${JSON.stringify(path + (query === '' ? '' : '?' + query))} → ${want}${merge === false ? ' (mergeSlashes off)' : ''}`)
  }
  for (const [path, query, why] of [
    ['/\ufffd', '', 'a byte that was not UTF-8 (uWS made it U+FFFD)'],
    ['/a', 'q=\ufffd', 'the same in the query'],
    ['/a%zz', '', 'malformed percent-encoding in the path'],
    ['/a%4', '', 'truncated percent-encoding'],
    ['/a\x01', '', 'a control character'],
    ['/a\x7f', '', 'DEL'],
    ['/a\tb', '', 'a tab'],
    ['/a', 'q=\x00', 'NUL in the query'],
  ] as const) {
    t.throws(() => canonicalTarget(path, query, true), { code: 'FERRY_ERR_BAD_REQUEST' }, `refused 400: ${why}`)
  }
})

t.test('canonicalTarget: 20,000 random targets: idempotent, no dot segment left, and the WHATWG URL parser (ws) gives each back unchanged', async (t) => {
  // Seeded generator: the same targets every run.
  let seed = 0x5eed
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n }
  const atoms = ['/', '/', '.', '..', '%2e', '%2E', '%2f', '%5c', '%41', '%7e', '%25', 'a', 'Z', '0', '-', '_', '~', '!', '$', "'", '(', '*', ',', ';', '=', ':', '@', '\\', '"', '<', '>', '^', '`', '{', '|', '}', '[', ']', 'é', '€', '😀', '%', '?']
  let n = 0
  let bad = 0
  for (let i = 0; i < 20_000; i++) {
    let path = '/'
    for (let k = rnd(12); k > 0; k--) path += atoms[rnd(atoms.length)]!
    let query = ''
    for (let k = rnd(6); k > 0; k--) query += atoms[rnd(atoms.length)]!
    // uWS splits at the first `?`: the path never holds one.
    const q = path.indexOf('?')
    if (q !== -1) { query = path.slice(q + 1) + query; path = path.slice(0, q) }
    let c
    try { c = canonicalTarget(path, query, i % 2 === 0) } catch { bad++; continue }
    n++
    const s = formatTarget(c)
    const again = formatTarget(canonicalTarget(c.path, c.query, i % 2 === 0))
    if (again !== s) { t.fail(`not idempotent: ${path}?${query} → ${s} → ${again}`); return }
    if (c.path.split('/').some((seg) => seg === '.' || seg === '..')) { t.fail(`dot segment left: ${s}`); return }
    const u = new URL(`ws://h${s}`)
    if (u.pathname + u.search !== s && !(c.query === '' && u.search === '' && s.endsWith('?'))) { t.fail(`WHATWG parses ${s} as ${u.pathname + u.search}`); return }
    if (!/^[\x21-\x7e]*$/.test(s)) { t.fail(`non-ASCII or control left: ${s}`); return }
  }
  t.ok(n > 15_000, `${n} canonical targets checked (${bad} refused as malformed)`)
})

// ---- through a real Ferry -------------------------------------------------------------------------

interface Raw { text: string, closed: boolean, done: Promise<void> }

/** A whole response with a Content-Length body is in `text`. */
function complete (text: string): boolean {
  const end = text.indexOf('\r\n\r\n')
  if (end === -1) return false
  if (text.startsWith('HTTP/1.1 101')) return true
  const cl = /\r\ncontent-length: (\d+)\r\n/i.exec(text.slice(0, end + 2))
  return cl !== null && text.length >= end + 4 + Number(cl[1])
}

/**
 * Raw bytes on a fresh connection (written as latin1: each char one byte); resolves on close or after
 * `giveUpMs`, or with `stopAtResponse` once one whole response is in (a served request keeps its connection).
 */
function raw (port: number, bytes: string | string[], giveUpMs = 3000, stopAtResponse = false): Raw {
  const r: Raw = { text: '', closed: false, done: Promise.resolve() }
  const s = netConnect(port, '127.0.0.1')
  r.done = new Promise<void>((resolve) => {
    const timer = setTimeout(() => { s.destroy(); resolve() }, giveUpMs)
    s.on('data', (d) => {
      r.text += d.toString('latin1')
      if (stopAtResponse && complete(r.text)) { s.destroy(); clearTimeout(timer); resolve() }
    })
    s.on('error', () => {})
    s.on('close', () => { r.closed = true; clearTimeout(timer); resolve() })
  })
  const parts = typeof bytes === 'string' ? [bytes] : bytes
  s.once('connect', () => { parts.forEach((p, i) => { setTimeout(() => { if (!s.destroyed) s.write(p, 'latin1') }, i * 100) }) })
  return r
}

/** UTF-8 text as the latin1 string whose bytes are its UTF-8 encoding (what a raw client sends). */
const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1')

async function recordingHttpBackend (t: Teardown): Promise<{ port: number, seen: string[], upgrades: string[] }> {
  const seen: string[] = []
  const upgrades: string[] = []
  const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    seen.push(req.url ?? '')
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  // The http upstream's WebSocket twin passes upgrades to this same server.
  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req: IncomingMessage, socket, head) => {
    upgrades.push(req.url ?? '')
    wss.handleUpgrade(req, socket, head, (ws) => { ws.on('error', () => {}); ws.close(1000) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); wss.close(); await new Promise<void>((resolve) => server.close(() => resolve())) })
  return { port: (server.address() as { port: number }).port, seen, upgrades }
}

t.test('a few hundred bad targets (non-ASCII, non-UTF-8, bad escapes, bad header values) never wedge an upstream of maxConnections 1', async (t) => {
  const be = await recordingHttpBackend(t)
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`], pool: { maxConnections: 1, queueTimeoutMs: 2000 } } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  const get = (target: string, head = ''): string => `GET ${target} HTTP/1.1\r\nHost: a.test\r\n${head}\r\n`
  const targets: string[] = []
  const heads: string[] = []
  const chars = ['\xe2\x82\xac', '\xff', '\xc3\xa9', '\xc3', '\x80', '\xf0\x9f\x98\x80', '%zz', '%', '%e2%82', '\xed\xa0\x80', '\xef\xbf\xbd', '%00', '%2e%2e', '\\..\\', '"', '<', '{', '|']
  for (let i = 0; i < 20; i++) {
    for (const c of chars) {
      targets.push(`/p${i}/${c}`)
      targets.push(`/p${i}?q=${c}`)
    }
  }
  // Header values undici refuses or that are not Latin-1 after uWS's UTF-8 decoding.
  for (let i = 0; i < 40; i++) heads.push(`X-V: ${['\xe2\x82\xac', '\xff', '\xc3\xa9', '\xf0\x9f\x98\x80'][i % 4]!}\r\n`)
  const sent = [...targets.map((p) => get(p)), ...heads.map((h, i) => get(`/h${i}`, h))]
  // 25 at a time: each must be answered or closed; none may hang on the pool.
  const results: Raw[] = []
  for (let i = 0; i < sent.length; i += 25) {
    const batch = sent.slice(i, i + 25).map((b) => raw(f.httpPort, b, 6000, true))
    await Promise.all(batch.map(async (r) => { await r.done }))
    results.push(...batch)
  }
  const statuses = results.map((r) => Number(/^HTTP\/1\.1 (\d{3})/.exec(r.text)?.[1] ?? 0))
  const hung = results.filter((r) => !r.closed && !complete(r.text)).length
  t.equal(hung, 0, `all ${sent.length} bad requests were answered or closed within 6 s (none waited on the pool)`)
  t.equal(statuses.filter((s) => s === 503).length, 0, 'none was answered 503 (no queue timeout: the pool kept dispatching)')
  t.ok(sent.length >= 400, `${sent.length} bad requests sent`)

  // Normal requests are served at once, and nothing is left in flight.
  const t0 = Date.now()
  for (let i = 0; i < 20; i++) {
    const r = await fetch(`${f.url}/after${i}`)
    t.equal(r.status, 200, `normal request ${i} after the attack: 200`)
    await r.text()
  }
  t.ok(Date.now() - t0 < 2000, `20 normal requests in ${Date.now() - t0} ms (bound 2000 ms, queueTimeoutMs 2000)`)
  await waitFor('inflight 0 in /status', async () => {
    const st = await adminStatus(f)
    const ep = st.upstreams.find((u: { name: string }) => u.name === 'api').endpoints[0]
    return ep.inflight === 0
  }, 3000)
  t.pass('/status shows inflight 0 for the endpoint')

  // What reached the backend is ASCII, in its canonical form, and the UTF-8 ones arrive as their percent-encoding.
  t.ok(be.seen.every((u) => /^[\x21-\x7e]+$/.test(u)), 'every target the backend saw is printable ASCII')
  t.ok(be.seen.includes('/p0/%E2%82%AC'), 'GET /€ (raw UTF-8) reaches the backend as /%E2%82%AC')
  t.ok(be.seen.includes('/p0/caf%C3%A9') || be.seen.includes('/p0/%C3%A9'), 'GET /é (raw UTF-8) reaches the backend percent-encoded, not as Latin-1')
  t.notOk(be.seen.some((u) => u.startsWith('/p0/%FF') || u.includes('\xff')), 'a raw \\xff (not UTF-8) never reaches the backend')
  const bodyOf = (i: number): string => results[i]!.text.slice(results[i]!.text.indexOf('\r\n\r\n') + 4)
  const ff = targets.indexOf('/p0/\xff')
  t.equal(statuses[ff], 400, 'GET /\\xff is answered 400')
  t.match(bodyOf(ff), /FERRY_ERR_BAD_REQUEST/, 'with FERRY_ERR_BAD_REQUEST')
  t.equal(statuses[targets.indexOf('/p0/%zz')], 400, 'GET /%zz is answered 400')
  t.equal(await metric(f, 'ferry_http_pool_resets_total{upstream="api"}').catch(() => 0) <= 40, true, 'pool resets, if any, stay bounded by the requests undici refused')
})

t.test('dot segments and other path tricks cannot route by one path and reach the backend by another (http, its WebSocket twin, ws, mux)', async (t) => {
  const http = await recordingHttpBackend(t)
  // A plain WebSocket backend that records the path of each handshake.
  const wsPaths: string[] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  wss.on('connection', (ws, req) => { wsPaths.push(req.url ?? ''); ws.on('error', () => {}) })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise<void>((resolve) => wss.close(() => resolve())) })
  const muxPaths: string[] = []
  const mux = await startMuxBackend(t, (s) => { muxPaths.push(s.path) })
  const KEY = 'k'.repeat(32)
  const f = await startFerry(t, {
    upstreams: {
      api: { protocol: 'http', endpoints: [`127.0.0.1:${http.port}`] },
      chat: { protocol: 'ws', endpoints: [`127.0.0.1:${(wss.address() as { port: number }).port}`] },
      live: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] },
    },
    routes: [
      { match: { path: '/admin-ws' }, upstream: 'chat', auth: 'staff' },
      { match: { path: '/ws' }, upstream: 'chat' },
      { match: { path: '/admin-mux' }, upstream: 'live', auth: 'staff' },
      { match: { path: '/mux' }, upstream: 'live' },
      { match: { path: '/private' }, upstream: 'api', auth: 'staff' },
      { match: { path: '/a' }, upstream: 'api' },
    ],
    auth: { policies: { staff: { apiKey: { keys: [{ id: 'staff', key: KEY }] } } } },
    resume: { secret: 's'.repeat(32) },
    logging: { level: 'info', accessLog: false },
  })
  const upgrade = (target: string, extra = ''): string =>
    `GET ${target} HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`
  // From an open route to a protected one: each must be refused by the protected route's auth.
  const tricks = (from: string, to: string): string[] => [
    `/${from}/../${to}`, `/${from}/%2e%2e/${to}`, `/${from}/%2E%2E/${to}`, `/${from}/.%2e/${to}`, `/${from}/%2e./${to}`,
    `/${from}//../${to}`, `/${from}/./../${to}`, `/${from}/x/../../${to}`, `/%${to.charCodeAt(0).toString(16)}${to.slice(1)}`,
    `/${from}/../${to}?x=1`, `/${from}/..%2f${to}`, `/${from}\\..\\${to}`, `/${from}/%2e%2e%5c${to}`,
  ]
  let checked = 0
  for (const [from, to, kind] of [['ws', 'admin-ws', 'ws'], ['mux', 'admin-mux', 'mux'], ['a', 'private', 'twin'], ['a', 'private', 'http']] as const) {
    const sent = tricks(from, to).map((target) => ({ target, r: raw(f.httpPort, kind === 'http' ? `GET ${target} HTTP/1.1\r\nHost: a.test\r\n\r\n` : upgrade(target), 3000, true) }))
    await Promise.all(sent.map(async (x) => { await x.r.done }))
    for (const { target, r } of sent) {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(r.text)?.[1] ?? 0)
      // Either the protected route's auth refused it (401), or it stayed on the open route with a path that is not the protected one.
      t.ok(status === 401 || status === 404 || status === 101 || status === 200 || status === 426 || status === 400, `${kind} ${JSON.stringify(target)}: answered (${status})`)
      checked++
    }
  }
  t.ok(checked >= 50, `${checked} path tricks sent`)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const prot = (p: string, name: string): boolean => p === `/${name}` || p.startsWith(`/${name}/`) || p.startsWith(`/${name}?`)
  t.same(wsPaths.filter((p) => prot(p, 'admin-ws')), [], 'the ws backend never received a handshake for /admin-ws without the key')
  t.same(muxPaths.filter((p) => prot(p, 'admin-mux')), [], 'the mux backend never opened a stream for /admin-mux without the key')
  t.same(http.upgrades.filter((p) => prot(p, 'private')), [], 'the http backend never received an upgrade for /private without the key (WebSocket twin)')
  t.same(http.seen.filter((p) => prot(p, 'private')), [], 'the http backend never received a request for /private without the key')
  // Whatever the open routes forwarded is canonical: routed by the same path the backend got.
  for (const p of [...wsPaths, ...muxPaths, ...http.upgrades, ...http.seen]) {
    if (p.split('?')[0]!.split('/').some((s) => s === '..' || s === '.' || /^%2e/i.test(s))) t.fail(`a backend received a dot segment: ${p}`)
  }

  // The same tricks with the key: they reach the protected route, and its backend gets the canonical path.
  const ok = raw(f.httpPort, upgrade('/ws/%2e%2e/admin-ws', `x-api-key: ${KEY}\r\n`), 3000, true)
  await waitFor('the keyed upgrade to be answered', () => /^HTTP\/1\.1 101/.test(ok.text), 3000)
  await waitFor('the ws backend to record it', () => wsPaths.includes('/admin-ws'), 3000)
  t.pass('with the key, /ws/%2e%2e/admin-ws is upgraded on /admin-ws and the backend receives exactly /admin-ws')
  const okHttp = raw(f.httpPort, `GET /a/%2e%2e/private/x HTTP/1.1\r\nHost: a.test\r\nx-api-key: ${KEY}\r\n\r\n`, 3000, true)
  await waitFor('the keyed request to be answered', () => /^HTTP\/1\.1 200/.test(okHttp.text), 3000)
  t.ok(http.seen.includes('/private/x'), 'with the key, GET /a/%2e%2e/private/x reaches the backend as /private/x')
})

t.test('a refused request closes its connection: no byte after it is ever served (16 framing refusals with a request behind)', async (t) => {
  const be = await recordingHttpBackend(t)
  const f: FerryProcess = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    http: { maxBodyBytes: 100 },
    logging: { level: 'info', accessLog: false },
  })
  const H = 'Host: a.test\r\n'
  const behind = (i: number): string => `GET /smuggled${i} HTTP/1.1\r\n${H}\r\n`
  const refusals: Array<[string, (i: number) => string]> = [
    ['conflicting Content-Length 5 / 40', () => `POST /a HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 40\r\n\r\nhello`],
    ['conflicting Content-Length 40 / 5', () => `POST /a HTTP/1.1\r\n${H}Content-Length: 40\r\nContent-Length: 5\r\n\r\nhello`],
    ['TE chunked, identity', () => `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`],
    ['TE identity, chunked (501)', () => `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n`],
    ['TE gzip, chunked (501)', () => `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`],
    ['TE chunked twice', () => `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`],
    ['TE xchunked', () => `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n`],
    ['TE empty', () => `POST /a HTTP/1.1\r\n${H}Transfer-Encoding: \r\n\r\n`],
    ['CL empty', () => `POST /a HTTP/1.1\r\n${H}Content-Length: \r\n\r\n`],
    ['two Host headers', () => `GET /a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n`],
    ['Host with a slash', () => `GET /a HTTP/1.1\r\nHost: a/b\r\n\r\n`],
    ['fragment in the target', () => `GET /a#x HTTP/1.1\r\n${H}\r\n`],
    ['DEL in a header value', () => `GET /a HTTP/1.1\r\n${H}X-A: a\x7fb\r\n\r\n`],
    ['body over maxBodyBytes (413)', () => `POST /a HTTP/1.1\r\n${H}Content-Length: 101\r\n\r\n${'x'.repeat(101)}`],
    ['target not UTF-8', () => `GET /a\xff HTTP/1.1\r\n${H}\r\n`],
    ['malformed escape', () => `GET /a%zz HTTP/1.1\r\n${H}\r\n`],
  ]
  // In the same write, and 100 ms later on the same connection.
  const runs = refusals.flatMap(([name, req], i) => [
    { name: `${name}, request in the same write`, r: raw(f.httpPort, req(i) + behind(i), 4000), i, split: false },
    { name: `${name}, request 100 ms later`, r: raw(f.httpPort, [req(i + 100), behind(i + 100)], 4000), i: i + 100, split: true },
  ])
  await Promise.all(runs.map(async (x) => { await x.r.done }))
  for (const x of runs) {
    t.ok(x.r.closed, `${x.name}: the connection is closed`)
    const statuses = [...x.r.text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]))
    t.ok(statuses.every((s) => s >= 400), `${x.name}: nothing but the refusal is answered (${statuses.join(',') || 'no response'})`)
    if (x.split) t.equal(statuses.length, 1, `${x.name}: the refusal itself is answered`)
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(be.seen.filter((u) => u.startsWith('/smuggled')), [], `the backend saw none of the ${runs.length} requests sent behind a refusal`)
})
