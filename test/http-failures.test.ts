import t from 'tap'
import { request } from 'node:http'
import { connect } from 'node:net'
import { startBackend, startRawBackend, deadPort, httpConfig } from './helpers/backend.js'
import { startFerry, metric, adminStatus, waitFor, type FerryProcess } from './helpers/ferry.js'

interface Reply { status: number, headers: Record<string, string | string[] | undefined>, body: string, code?: string }

/** One HTTP request; resolves with status, headers, body and the Ferry error code (if the body is one). */
function send (f: FerryProcess, path: string, opts: { method?: string, headers?: Record<string, string>, body?: string | Buffer } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: f.httpPort, path, method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => {
        let code: string | undefined
        try { code = (JSON.parse(body) as { error?: { code?: string } }).error?.code } catch { /* not a Ferry error */ }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, code })
      }).on('error', reject)
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

/** Raw bytes to the front; resolves with everything received until the server closes. */
function raw (f: FerryProcess, bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(f.httpPort, '127.0.0.1')
    let got = ''
    s.setEncoding('latin1').on('data', (d: string) => { got += d })
    s.on('error', () => {})
    s.on('close', () => resolve(got))
    s.write(bytes)
  })
}

t.test('queue full → 503 with Retry-After; queue timeout → 503', async (t) => {
  const held: Array<() => void> = []
  const backend = await startBackend(t, (_req, res) => { held.push(() => res.end('late')) })
  const f = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: 1, queueLimit: 1, queueTimeoutMs: 60000 } }))
  const first = send(f, '/1')
  await waitFor('the first request to reach the backend', () => held.length === 1)
  const second = send(f, '/2') // queued
  await waitFor('one request queued', async () => (await adminStatus(f)).upstreams[0].queued === 1)
  const third = await send(f, '/3')
  t.equal(third.status, 503, 'a request beyond queueLimit 1 gets 503')
  t.equal(third.code, 'FERRY_ERR_QUEUE_FULL', 'error code names the full queue')
  t.equal(third.headers['retry-after'], '1', 'Retry-After is set')
  held.shift()!()
  t.equal((await first).status, 200, 'the in-flight request completes')
  await waitFor('the queued request to reach the backend', () => held.length === 1)
  held.shift()!()
  t.equal((await second).status, 200, 'the queued request is served when the connection frees')
  t.equal(backend.accepted(), 1, 'the backend saw exactly 1 connection (maxConnections 1)')

  const f2 = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: 1, queueLimit: 10, queueTimeoutMs: 200 } }))
  const blocker = send(f2, '/block')
  await waitFor('the blocker to reach the backend', () => held.length === 1)
  const timedOut = await send(f2, '/waits')
  t.equal(timedOut.status, 503, 'a request that waits past queueTimeoutMs gets 503')
  t.equal(timedOut.code, 'FERRY_ERR_QUEUE_TIMEOUT', 'error code names the timeout')
  held.shift()!()
  t.equal((await blocker).status, 200, 'the blocker still completes')
})

t.test('backend down → 502; hanging → 504; garbage → 502; reset mid-body → cut', async (t) => {
  const down = await startFerry(t, httpConfig([`127.0.0.1:${await deadPort()}`]))
  const r1 = await send(down, '/')
  t.equal(r1.status, 502, 'refused connection → 502')
  t.equal(r1.code, 'FERRY_ERR_UPSTREAM_CONNECT', 'code FERRY_ERR_UPSTREAM_CONNECT')

  const hang = await startRawBackend(t, () => { /* accept and never answer */ })
  const slow = await startFerry(t, httpConfig([hang.address], { timeouts: { responseMs: 300 } }))
  const r2 = await send(slow, '/')
  t.equal(r2.status, 504, 'no response headers within responseMs 300 → 504')
  t.equal(r2.code, 'FERRY_ERR_UPSTREAM_TIMEOUT', 'code FERRY_ERR_UPSTREAM_TIMEOUT')

  const junk = await startRawBackend(t, (s) => { s.once('data', () => s.end('this is not http\r\n\r\n')) })
  const g = await startFerry(t, httpConfig([junk.address]))
  const r3 = await send(g, '/')
  t.equal(r3.status, 502, 'garbage from the backend → 502')
  t.equal(r3.code, 'FERRY_ERR_UPSTREAM_PROTOCOL', 'code FERRY_ERR_UPSTREAM_PROTOCOL')

  const cut = await startRawBackend(t, (s) => {
    s.once('data', () => { s.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789'); setImmediate(() => s.destroy()) })
  })
  const c = await startFerry(t, httpConfig([cut.address]))
  const outcome = await new Promise<string>((resolve) => {
    request({ host: '127.0.0.1', port: c.httpPort, path: '/' }, (res) => {
      let n = 0
      res.on('data', (d: Buffer) => { n += d.length })
      res.on('end', () => resolve(`complete ${n}`))
      res.on('aborted', () => resolve(`aborted after ${n}`))
      res.on('error', () => resolve(`error after ${n}`))
    }).on('error', (e) => resolve(`request error ${e.message}`)).end()
  })
  t.notMatch(outcome, /^complete/, `a response cut by the backend is cut for the client too (${outcome}), never passed off as complete`)
  t.equal((await send(g, '/')).status, 502, 'the gateway keeps serving after all of that')
  t.ok(await metric(down, 'ferry_errors_total{code="FERRY_ERR_UPSTREAM_CONNECT",upstream="api"}') >= 1, 'connect failures counted by code')
})

t.test('malformed requests → 400 (or closed by the parser), and the gateway keeps serving', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, httpConfig([backend.address]))
  const dupCl = await raw(f, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!')
  t.match(dupCl, /^HTTP\/1\.1 400 /, 'conflicting Content-Length → 400')
  t.match(dupCl, /FERRY_ERR_BAD_REQUEST/, 'with the error code')
  t.match(dupCl, /Connection: close/i, 'and the connection is closed (framing cannot be trusted)')
  t.match(await raw(f, 'GET / HTTP/1.1\r\nHost: a b\r\n\r\n'), /^HTTP\/1\.1 400 /, 'bad Host → 400')
  t.equal(await raw(f, 'GARBAGE\r\n\r\n'), '', 'unparseable garbage: uWS closes the connection without a response')
  t.equal((await send(f, '/')).status, 200, 'a valid request right after is served')
  t.equal(await metric(f, 'ferry_errors_total{code="FERRY_ERR_BAD_REQUEST",upstream=""}'), 2, 'the two 400s are counted')
})

t.test('body limits → 413; no route → 404', async (t) => {
  let completeBodies = 0
  const backend = await startBackend(t, (req, res) => {
    let n = 0
    req.on('data', (d: Buffer) => { n += d.length })
    req.on('end', () => { completeBodies++; res.end(String(n)) })
    req.on('error', () => {})
  })
  const f = await startFerry(t, { ...httpConfig([backend.address]), routes: [{ match: { path: '/api' }, upstream: 'api', maxBodyBytes: 1000 }] })
  const declared = await send(f, '/api/up', { method: 'POST', body: Buffer.alloc(2000) })
  t.equal(declared.status, 413, 'Content-Length over maxBodyBytes 1000 → 413')
  t.equal(declared.code, 'FERRY_ERR_BODY_TOO_LARGE', 'code FERRY_ERR_BODY_TOO_LARGE')
  const chunked = await new Promise<number>((resolve) => {
    const req = request({ host: '127.0.0.1', port: f.httpPort, method: 'POST', path: '/api/up', headers: { 'transfer-encoding': 'chunked' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
    req.on('error', () => resolve(-1))
    for (let i = 0; i < 10; i++) req.write(Buffer.alloc(300))
    req.end()
  })
  t.equal(chunked, 413, 'a chunked body that grows past 1000 bytes → 413')
  t.equal(completeBodies, 0, 'the backend never received a complete oversize body')
  t.equal((await send(f, '/api/up', { method: 'POST', body: 'small' })).body, '5', 'a body under the limit goes through')
  const nr = await send(f, '/elsewhere')
  t.equal(nr.status, 404, 'no route → 404')
  t.equal(nr.code, 'FERRY_ERR_NO_ROUTE', 'code FERRY_ERR_NO_ROUTE')
})

t.test('idempotent retry on another endpoint; passive ejection of a dead endpoint', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('live') })
  const dead = await deadPort()
  const f = await startFerry(t, httpConfig([`127.0.0.1:${dead}`, backend.address], { balance: 'round-robin', ejection: { consecutiveFailures: 3, ejectMs: 60000 } }))
  const gets = await Promise.all(Array.from({ length: 10 }, async (_, i) => await send(f, `/g${i}`)))
  t.same(gets.map((r) => r.status), Array(10).fill(200), 'all 10 GETs succeed: the ones sent to the dead endpoint were retried on the live one')
  t.ok(await metric(f, 'ferry_upstream_retries_total{upstream="api"}') >= 1, 'retries counted')
  const st = await adminStatus(f)
  const deadEp = st.upstreams[0].endpoints.find((e: any) => e.address === `127.0.0.1:${dead}`)
  t.equal(deadEp.health, 'ejected', 'after 3 consecutive failures the dead endpoint is ejected')
  t.equal(await metric(f, `ferry_upstream_endpoint_up{upstream="api",endpoint="127.0.0.1:${dead}"}`), 0, 'endpoint_up gauge is 0')
  const retriesBefore = await metric(f, 'ferry_upstream_retries_total{upstream="api"}')
  for (let i = 0; i < 6; i++) t.equal((await send(f, '/after', { method: 'POST', body: 'x' })).status, 200, `POST ${i} after ejection goes to the live endpoint`)
  t.equal(await metric(f, 'ferry_upstream_retries_total{upstream="api"}'), retriesBefore, 'no more retries: the ejected endpoint gets no traffic')

  const f2 = await startFerry(t, httpConfig([`127.0.0.1:${dead}`, backend.address], { balance: 'round-robin', ejection: { consecutiveFailures: 100 } }))
  const posts = await Promise.all(Array.from({ length: 4 }, async () => await send(f2, '/p', { method: 'POST', body: 'payload' })))
  t.ok(posts.some((r) => r.status === 502), 'a POST with a body sent to the dead endpoint is not retried (502)')
  t.ok(posts.some((r) => r.status === 200), 'POSTs sent to the live endpoint succeed')
})

t.test('clients that abort mid-upload or mid-download leak no pool slot', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.method === 'POST') { req.on('data', () => {}); req.on('end', () => res.end('done')); req.on('error', () => {}); return }
    res.writeHead(200, { 'content-length': String(50 * 1024 * 1024) })
    const chunk = Buffer.alloc(64 * 1024)
    const pump = (): void => { while (res.write(chunk)) { /* fill */ } res.once('drain', pump) }
    res.on('close', () => res.removeAllListeners('drain'))
    pump()
  })
  const f = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: 2 } }))
  await new Promise<void>((resolve) => {
    const req = request({ host: '127.0.0.1', port: f.httpPort, method: 'POST', path: '/up', headers: { 'content-length': String(10 * 1024 * 1024) } })
    req.on('error', () => resolve())
    req.write(Buffer.alloc(256 * 1024), () => { req.destroy(); resolve() })
  })
  await new Promise<void>((resolve) => {
    request({ host: '127.0.0.1', port: f.httpPort, path: '/down' }, (res) => {
      let n = 0
      res.on('data', (d: Buffer) => { n += d.length; if (n > 1024 * 1024) { res.destroy(); resolve() } })
    }).on('error', () => resolve()).end()
  })
  await waitFor('every pool slot to be released', async () => (await adminStatus(f)).upstreams[0].endpoints[0].inflight === 0)
  t.pass('inflight back to 0 after an aborted upload and an aborted download')
  t.equal(await metric(f, 'ferry_client_requests_in_flight{kind="http"}'), 0, 'no request left in flight')
  t.equal((await send(f, '/up', { method: 'POST', body: 'x' })).body, 'done', 'the gateway still serves')
})

t.test('forwarding headers: hop-by-hop dropped, X-Forwarded-* set, request id kept or generated', async (t) => {
  let seen: Record<string, string | string[] | undefined> = {}
  const backend = await startBackend(t, (req, res) => { seen = req.headers; res.end('ok') })
  const f = await startFerry(t, httpConfig([backend.address]))
  const r = await send(f, '/h', { headers: { connection: 'x-secret', 'x-secret': '1', 'keep-alive': 'timeout=5', 'x-keep': 'yes', host: 'example.test:8080' } })
  t.equal(seen['x-secret'], undefined, 'a header named in Connection is not forwarded')
  t.equal(seen['keep-alive'], undefined, 'Keep-Alive is not forwarded')
  t.equal(seen['x-keep'], 'yes', 'an end-to-end header is forwarded')
  t.equal(seen['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is the client address')
  t.equal(seen['x-forwarded-proto'], 'http', 'X-Forwarded-Proto set')
  t.equal(seen['x-forwarded-host'], 'example.test:8080', 'X-Forwarded-Host is the client Host')
  t.equal(seen.host, 'example.test:8080', 'Host is preserved')
  t.match(String(seen['x-request-id']), /^[0-9a-f]{8}-[0-9a-z]+$/, 'a request id is generated')
  t.equal(r.headers['x-request-id'], seen['x-request-id'], 'and echoed to the client')
  await send(f, '/h', { headers: { 'x-request-id': 'abc-123' } })
  t.equal(seen['x-request-id'], 'abc-123', 'a client request id is kept')
})
