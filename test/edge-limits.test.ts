import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { createServer, request, type IncomingMessage, type Server } from 'node:http'
import { connect as netConnect } from 'node:net'
import { exportJWK, SignJWT } from 'jose'
import WebSocket, { WebSocketServer } from 'ws'
import { startBackend, httpConfig } from './helpers/backend.js'
import { adminStatus, metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { upgradeStatus } from './helpers/mux.js'

interface Reply { status: number, headers: IncomingMessage['headers'], body: string, code?: string }

async function send (f: FerryProcess, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  return await new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port: f.httpPort, path, headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => {
        let code: string | undefined
        try { code = (JSON.parse(body) as { error?: { code?: string } }).error?.code } catch { /* not a Ferry error */ }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, code })
      })
    }).on('error', reject).end()
  })
}

/** A backend that holds /hold… requests until released and records the X-Forwarded-For it was sent. */
async function holding (t: Teardown): Promise<{ address: string, held: Array<() => void>, xff: string[] }> {
  const held: Array<() => void> = []
  const xff: string[] = []
  const b = await startBackend(t, (req, res) => {
    xff.push(String(req.headers['x-forwarded-for']))
    if (req.url?.startsWith('/hold') === true) held.push(() => res.end('released'))
    else res.end('ok')
  })
  return { address: b.address, held, xff }
}

/** A `ws` backend that counts the handshakes it accepted. */
async function countingWsBackend (t: Teardown): Promise<{ address: string, readonly handshakes: number }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => server.once('listening', resolve))
  let handshakes = 0
  server.on('connection', (ws) => { handshakes++; ws.on('error', () => {}) })
  t.teardown(async () => { for (const c of server.clients) c.terminate(); await new Promise((resolve) => server.close(resolve)) })
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, get handshakes () { return handshakes } }
}

t.test('http.trustedProxies: X-Forwarded-For from a trusted peer names the client; from others it is replaced', async (t) => {
  const b = await holding(t)
  const trusting = await startFerry(t, httpConfig([b.address], {}, { http: { trustedProxies: ['127.0.0.0/8'] } }))
  t.equal((await send(trusting, '/a', { 'x-forwarded-for': '6.6.6.6, 198.51.100.7' })).status, 200, 'trusted peer: served')
  t.equal(b.xff.at(-1), '6.6.6.6, 198.51.100.7, 127.0.0.1', 'trusted peer: the chain is forwarded with the peer appended')
  const plain = await startFerry(t, httpConfig([b.address]))
  t.equal((await send(plain, '/b', { 'x-forwarded-for': '198.51.100.7' })).status, 200, 'default (no trusted proxies): served')
  t.equal(b.xff.at(-1), '127.0.0.1', 'default: the client\'s X-Forwarded-For is replaced by the peer address')
})

t.test('limits.maxRequestsInFlightPerIp 2 and maxRequestsInFlight 3: 429 / 503 with Retry-After, keyed on the resolved client IP, nothing sent upstream', async (t) => {
  const b = await holding(t)
  const f = await startFerry(t, httpConfig([b.address], {}, {
    http: { trustedProxies: ['127.0.0.1'] },
    limits: { maxRequestsInFlightPerIp: 2, maxRequestsInFlight: 3, retryAfterSec: 7 },
  }))
  const A = { 'x-forwarded-for': '198.51.100.1' }
  const B = { 'x-forwarded-for': '198.51.100.2' }
  const C = { 'x-forwarded-for': '198.51.100.3' }
  const a1 = send(f, '/hold/a1', A)
  const a2 = send(f, '/hold/a2', A)
  await waitFor('2 requests of client A held by the backend', () => b.held.length === 2)
  const a3 = await send(f, '/hold/a3', A)
  t.equal(a3.status, 429, 'the 3rd concurrent request of client A (limit 2 per IP) gets 429')
  t.equal(a3.code, 'FERRY_ERR_PER_IP_LIMIT', 'error.code FERRY_ERR_PER_IP_LIMIT')
  t.equal(a3.headers['retry-after'], '7', 'with Retry-After: 7 (limits.retryAfterSec)')
  const b1 = send(f, '/hold/b1', B)
  await waitFor('client B\'s request held too', () => b.held.length === 3)
  t.pass('client B (another IP behind the same trusted proxy) is not limited by client A\'s count')
  const c1 = await send(f, '/hold/c1', C)
  t.equal(c1.status, 503, 'a 4th request in flight (global limit 3) gets 503')
  t.equal(c1.code, 'FERRY_ERR_GLOBAL_LIMIT', 'error.code FERRY_ERR_GLOBAL_LIMIT')
  t.equal(c1.headers['retry-after'], '7', 'with Retry-After: 7')
  t.equal(b.held.length, 3, 'the backend received exactly the 3 admitted requests')
  const st = (await adminStatus(f)).limits
  t.equal(st.httpInFlight, 3, '/status limits.httpInFlight is 3')
  t.equal(st.httpClientIps, 2, '/status limits.httpClientIps is 2 (A and B)')
  for (const release of b.held.splice(0)) release()
  t.same((await Promise.all([a1, a2, b1])).map((r) => r.status), [200, 200, 200], 'the admitted requests complete with 200')
  await waitFor('the per-IP table to be empty again', async () => (await adminStatus(f)).limits.httpClientIps === 0)
  t.equal((await adminStatus(f)).limits.httpInFlight, 0, 'and nothing counted in flight: entries are removed at zero (no leak)')
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="http_in_flight_per_ip"}'), 1, 'ferry_limit_refused_total{limit="http_in_flight_per_ip"} is 1')
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="http_in_flight"}'), 1, 'ferry_limit_refused_total{limit="http_in_flight"} is 1')
  t.equal((await send(f, '/after', A)).status, 200, 'client A is served again once its requests ended')
})

t.test('limits.maxWebSocketSessionsPerIp 1 and maxWebSocketSessions 2: upgrades refused 429 / 503 before the backend is dialled; slots come back on close', async (t) => {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => server.once('listening', resolve))
  const handshakes: IncomingMessage[] = []
  server.on('connection', (ws, req) => { handshakes.push(req); ws.on('error', () => {}) })
  t.teardown(async () => { for (const c of server.clients) c.terminate(); await new Promise((resolve) => server.close(resolve)) })
  const f = await startFerry(t, {
    upstreams: { legacy: { protocol: 'ws', endpoints: [`127.0.0.1:${(server.address() as { port: number }).port}`] } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy' }],
    http: { trustedProxies: ['127.0.0.1'] },
    limits: { maxWebSocketSessionsPerIp: 1, maxWebSocketSessions: 2 },
    logging: { level: 'info', accessLog: false },
  })
  const url = `ws://127.0.0.1:${f.httpPort}/ws`
  const open = async (ip: string): Promise<WebSocket> => await new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { 'x-forwarded-for': ip } })
    ws.once('open', () => resolve(ws)).once('error', reject)
  })
  const a = await open('198.51.100.1')
  t.equal(handshakes.at(-1)?.headers['x-forwarded-for'], '198.51.100.1, 127.0.0.1', 'the backend handshake carries the trusted chain with the peer appended')
  const again = await upgradeStatus(url, { 'x-forwarded-for': '198.51.100.1' })
  t.equal(again.status, 429, 'a 2nd session of the same client IP (limit 1 per IP) is refused 429')
  t.match(again.body, /FERRY_ERR_PER_IP_LIMIT/, 'error.code FERRY_ERR_PER_IP_LIMIT')
  t.equal(again.headers['retry-after'], '1', 'with Retry-After: 1')
  const b = await open('198.51.100.2')
  const third = await upgradeStatus(url, { 'x-forwarded-for': '198.51.100.3' })
  t.equal(third.status, 503, 'a 3rd session overall (limit 2) is refused 503')
  t.match(third.body, /FERRY_ERR_GLOBAL_LIMIT/, 'error.code FERRY_ERR_GLOBAL_LIMIT')
  t.equal(handshakes.length, 2, 'the backend saw exactly the 2 admitted handshakes')
  t.equal(await metric(f, 'ferry_ws_upgrade_failures_total{route="*/ws",code="FERRY_ERR_PER_IP_LIMIT"}') + await metric(f, 'ferry_limit_refused_total{limit="ws_sessions_per_ip"}'), 2, 'the per-IP refusal is counted in ferry_ws_upgrade_failures_total and ferry_limit_refused_total')
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="ws_sessions"}'), 1, 'ferry_limit_refused_total{limit="ws_sessions"} is 1')
  a.close()
  b.terminate()
  await waitFor('the session table to be empty', async () => (await adminStatus(f)).limits.wsClientIps === 0)
  t.equal((await adminStatus(f)).limits.wsSessions, 0, 'closed sessions give their slots back (per-IP entries removed at zero)')
  const c = await open('198.51.100.1')
  t.pass('client A can open a session again')
  c.close()
})

t.test('limits with auth: requests and upgrades refused by auth hold no concurrency slot', async (t) => {
  const b = await holding(t)
  const server = await countingWsBackend(t)
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [b.address] }, legacy: { protocol: 'ws', endpoints: [server.address] } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy', auth: 'keys' }, { match: { path: '/' }, upstream: 'api', auth: 'keys' }],
    auth: { policies: { keys: { apiKey: { keys: [{ id: 'k1', key: 'the-good-key-0123456789' }] } } } },
    limits: { maxRequestsInFlightPerIp: 2, maxWebSocketSessionsPerIp: 1 },
    logging: { accessLog: false },
  })
  const bad = { 'x-api-key': 'wrong-key' }
  const good = { 'x-api-key': 'the-good-key-0123456789' }
  const refused = await Promise.all(Array.from({ length: 6 }, async (_, i) => await send(f, `/bad/${i}`, bad)))
  t.same(refused.map((r) => r.status), [401, 401, 401, 401, 401, 401], '6 requests with a wrong key: 401 each (not 429: a refused request is not in flight)')
  t.equal((await adminStatus(f)).limits.httpInFlight, 0, 'and none of them is counted in flight')
  const held = [send(f, '/hold/1', good), send(f, '/hold/2', good)]
  await waitFor('2 authenticated requests held by the backend', () => b.held.length === 2)
  t.equal((await send(f, '/hold/3', good)).status, 429, 'the limit still counts admitted requests: a 3rd one gets 429')
  for (const release of b.held.splice(0)) release()
  t.same((await Promise.all(held)).map((r) => r.status), [200, 200], 'the held requests complete')
  for (let i = 0; i < 3; i++) t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/ws`, bad)).status, 401, `upgrade ${i + 1} with a wrong key: 401`)
  const ws = new WebSocket(`ws://127.0.0.1:${f.httpPort}/ws`, { headers: good })
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()).once('error', reject) })
  t.pass('an authenticated upgrade opens after 3 refused ones (limit 1 per IP): refused upgrades held no session')
  t.equal(server.handshakes, 1, 'the backend saw only the authenticated handshake')
  t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/ws`, good)).status, 429, 'a 2nd authenticated session of the same IP: 429')
  ws.close()
  await waitFor('the tables to be empty again', async () => { const l = (await adminStatus(f)).limits; return l.wsSessions === 0 && l.httpInFlight === 0 })
  t.pass('no slot leaked')
})

t.test('one admission order for requests and upgrades (src/front/admit.ts): the concurrency limit before the edge checks, so a check that waits holds a slot', async (t) => {
  const b = await holding(t)
  const server = await countingWsBackend(t)
  // A JWKS URL that answers only when told: the first token of a kid waits on it (jose fetches the set).
  const pair = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const keys = [{ ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }]
  const waiting: Array<() => void> = []
  const jwks: Server = createServer((_req, res) => { waiting.push(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }))) })
  await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { jwks.closeAllConnections(); jwks.close() })
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [b.address] }, legacy: { protocol: 'ws', endpoints: [server.address] } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy', auth: 'keys' }, { match: { path: '/idp' }, upstream: 'legacy', auth: 'idp' }, { match: { path: '/' }, upstream: 'api', auth: 'keys' }],
    auth: {
      policies: {
        keys: { apiKey: { keys: [{ id: 'k1', key: 'the-good-key-0123456789' }] } },
        idp: { jwt: { algorithms: ['RS256'], jwksUrl: `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks.json`, jwksTimeoutMs: 10_000, jwksCooldownMs: 1 } },
      },
    },
    limits: { maxRequestsInFlightPerIp: 1, maxWebSocketSessionsPerIp: 1, retryAfterSec: 3 },
    logging: { accessLog: false },
  })
  const bad = { 'x-api-key': 'wrong-key' }
  const good = { 'x-api-key': 'the-good-key-0123456789' }
  // The client's one request slot and one session slot are taken by admitted ones.
  const held = send(f, '/hold/1', good)
  await waitFor('the admitted request held by the backend', () => b.held.length === 1)
  const ws = new WebSocket(`ws://127.0.0.1:${f.httpPort}/ws`, { headers: good })
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()).once('error', reject) })
  // A request and an upgrade that both the limit and auth would refuse: the same stage answers both.
  const r = await send(f, '/x', bad)
  t.same([r.status, r.code, r.headers['retry-after']], [429, 'FERRY_ERR_PER_IP_LIMIT', '3'], 'a request with a wrong key past the per-IP limit: 429 from the limit (before auth)')
  const u = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/ws`, bad)
  t.same([u.status, u.headers['retry-after']], [429, '3'], 'an upgrade with a wrong key past the per-IP session limit: 429 from the limit too (it used to be auth\'s 401)')
  t.match(u.body, /FERRY_ERR_PER_IP_LIMIT/, 'with the limit\'s code')
  ws.close()
  for (const release of b.held.splice(0)) release()
  t.equal((await held).status, 200, 'the held request completes')
  await waitFor('the session slot to be free', async () => (await adminStatus(f)).limits.wsSessions === 0)
  // An upgrade whose token waits on the JWKS fetch holds the client's session slot meanwhile.
  const token = await new SignJWT({ sub: 'u1' }).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setExpirationTime(Math.floor(Date.now() / 1000) + 300).sign(pair.privateKey)
  const first = new WebSocket(`ws://127.0.0.1:${f.httpPort}/idp`, { headers: { authorization: `Bearer ${token}` } })
  const opened = new Promise<void>((resolve, reject) => { first.once('open', () => resolve()).once('error', reject) })
  await waitFor('the JWKS fetch of the first upgrade', () => waiting.length === 1)
  t.equal((await adminStatus(f)).limits.wsSessions, 1, 'the upgrade waiting on auth holds the client\'s one session slot')
  const second = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/idp`, { authorization: `Bearer ${token}` })
  t.equal(second.status, 429, 'a 2nd upgrade of the client meanwhile: 429 at once, no 2nd check started')
  t.equal(waiting.length, 1, 'and no 2nd JWKS fetch')
  waiting.shift()!()
  await opened
  t.pass('the waiting upgrade opens once the key arrives')
  t.equal(server.handshakes, 2, 'the backend saw the 2 admitted sessions only')
  first.close()
  await waitFor('the tables to be empty again', async () => { const l = (await adminStatus(f)).limits; return l.wsSessions === 0 && l.httpInFlight === 0 })
  t.pass('no slot leaked')
})

/** Raw request that sends `prefix`, then one byte of `drip` every `everyMs`; resolves with what came back. */
async function drip (f: FerryProcess, prefix: string, dripBytes: string, everyMs: number, giveUpMs: number): Promise<{ text: string, closed: boolean, ms: number, sent: number }> {
  return await new Promise((resolve) => {
    const s = netConnect(f.httpPort, '127.0.0.1')
    const t0 = Date.now()
    let text = ''
    let sent = 0
    s.setEncoding('latin1').on('data', (d: string) => { text += d })
    s.on('error', () => {})
    if (prefix !== '') s.write(prefix)
    const iv = setInterval(() => { if (sent < dripBytes.length && !s.destroyed) s.write(dripBytes[sent++]!) }, everyMs)
    const timer = setTimeout(() => { clearInterval(iv); s.destroy(); resolve({ text, closed: false, ms: Date.now() - t0, sent }) }, giveUpMs)
    s.on('close', () => { clearInterval(iv); clearTimeout(timer); resolve({ text, closed: true, ms: Date.now() - t0, sent }) })
  })
}

t.test('slowloris: body idle and total deadlines answer 408 (a buffered body never reached the backend, a streamed one is aborted there); a slow steady upload outlives uWS\'s 10 s; headers are cut by uWS', async (t) => {
  const ends: Record<string, string> = {}
  const heads: string[] = []
  const b = await startBackend(t, (req, res) => {
    heads.push(req.url ?? '')
    let n = 0
    req.on('data', (d: Buffer) => { n += d.length })
    req.on('end', () => { ends[req.url ?? ''] = `complete ${n}`; res.end(`got ${n}`) })
    req.on('close', () => { ends[req.url ?? ''] ??= `aborted after ${n}` })
    req.on('error', () => {})
  })
  const f = await startFerry(t, httpConfig([b.address], {}, { http: { bodyIdleMs: 600, bodyTimeoutMs: 3000 } }))
  const head = (path: string, n: number): string => `POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: ${n}\r\n\r\n`
  // All five run at once: the slow upload and the header drip need ~13 s, the rest overlap with them.
  // Bodies up to http.bufferBodyBytes (64 KiB) are buffered before anything goes upstream; /idle-large streams.
  const [idle, idleLarge, total, steady, headers] = await Promise.all([
    drip(f, head('/idle', 100) + 'x'.repeat(10), '', 1000, 8000),
    drip(f, head('/idle-large', 100_000) + 'x'.repeat(10), '', 1000, 8000),
    drip(f, head('/total', 100), 'y'.repeat(100), 200, 8000), // a byte every 200 ms: never idle for 600 ms, never done in 3 s
    (async () => {
      // bodyTimeoutMs is 3 s on this gateway; the steady upload uses a second gateway without a total deadline.
      const g = await startFerry(t, httpConfig([b.address], {}, { http: { bodyIdleMs: 2000, bodyTimeoutMs: 0 } }))
      return await drip(g, head('/steady', 52), 'z'.repeat(52), 250, 20000) // 13 s of steady upload
    })(),
    drip(f, '', 'GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ' + 'a'.repeat(100), 1000, 16000),
  ])
  t.match(idle.text, /^HTTP\/1\.1 408 /, 'a body silent for longer than bodyIdleMs 600 gets 408')
  t.match(idle.text, /FERRY_ERR_CLIENT_BODY_TIMEOUT/, 'idle: error.code FERRY_ERR_CLIENT_BODY_TIMEOUT')
  t.ok(idle.closed, 'idle: the client connection is closed')
  t.match(total.text, /^HTTP\/1\.1 408 /, 'a body dripping a byte every 200 ms (never idle) gets 408 at bodyTimeoutMs 3000')
  t.match(total.text, /bodyTimeoutMs/, 'total: the message names bodyTimeoutMs')
  t.ok(total.closed && total.sent < 100, `total: the connection is closed before the body completed (${total.sent} of 100 bytes sent)`)
  t.match(idleLarge.text, /^HTTP\/1\.1 408 [^]*bodyIdleMs/, 'a streamed body (100,000 bytes declared, above bufferBodyBytes) silent for bodyIdleMs 600: 408 too')
  await waitFor('the backend to see the streamed timed-out request end', () => ends['/idle-large'] !== undefined)
  t.match(ends['/idle-large'], /^aborted/, `idle-large: the backend request was aborted (${ends['/idle-large']})`)
  t.notOk(heads.includes('/idle') || heads.includes('/total'), 'idle, total: the backend never saw these buffered requests (their bodies never completed)')
  t.match(steady.text, /^HTTP\/1\.1 200 [^]*got 52$/, `a steady upload taking ${steady.ms} ms (beyond uWS 20.30's ~10 s request timer, which Ferry re-arms) completes with 200 and all 52 bytes`)
  t.equal(headers.text, '', 'a head dripped at 1 byte/s gets no response')
  t.ok(headers.closed && headers.sent < 16, `uWS closes it at its HTTP timeout whatever the drip (closed after ${headers.ms} ms with ${headers.sent} bytes sent; bound 16 s)`)
  t.equal(await metric(f, 'ferry_errors_total{code="FERRY_ERR_CLIENT_BODY_TIMEOUT",upstream="api"}'), 3, 'ferry_errors_total counts 3 FERRY_ERR_CLIENT_BODY_TIMEOUT')
  t.equal((await send(f, '/after')).status, 200, 'the gateway keeps serving')
})
