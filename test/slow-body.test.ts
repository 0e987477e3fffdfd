import t from 'tap'
import { connect, type Socket } from 'node:net'
import { startBackend, httpConfig } from './helpers/backend.js'
import { adminStatus, metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { send, type Reply } from './helpers/http.js'

/**
 * Slow request bodies against a small pool (issue 18 item 3): bodies up to http.bufferBodyBytes are read
 * whole before a backend connection is taken; larger ones stream and must keep minBodyRateBytesPerSec;
 * limits.maxStreamedBodiesPerIp and maxBufferedBodyBytes[PerIp] bound what one address and the gateway hold.
 */

/** A raw client connection: what came back, and whether Ferry closed it. */
interface Conn {
  readonly socket: Socket
  text: string
  closed: boolean
  /** Body bytes written after the head. */
  sent: number
  readonly t0: number
  closedAt: number
  readonly done: Promise<void>
  write: (data: string) => void
}

function open (t: Teardown, f: FerryProcess, head: string): Conn {
  const socket = connect(f.httpPort, '127.0.0.1')
  let resolveDone!: () => void
  const c: Conn = {
    socket,
    text: '',
    closed: false,
    sent: 0,
    t0: Date.now(),
    closedAt: 0,
    done: new Promise((resolve) => { resolveDone = resolve }),
    write: (data) => { if (!socket.destroyed) { socket.write(data); c.sent += data.length } },
  }
  socket.setEncoding('latin1').on('data', (d: string) => { c.text += d })
  socket.on('error', () => {})
  socket.on('close', () => { c.closed = true; c.closedAt = Date.now(); resolveDone() })
  socket.write(head)
  t.teardown(() => { socket.destroy() })
  return c
}

/** Writes `piece` every `everyMs` (the last one cut to end at `untilBytes`) until the connection closes or the returned stop is called. */
function drip (c: Conn, piece: string, everyMs: number, untilBytes = Infinity): () => void {
  const iv = setInterval(() => {
    if (c.closed || c.sent >= untilBytes) { clearInterval(iv); return }
    c.write(piece.slice(0, untilBytes - c.sent))
  }, everyMs)
  void c.done.then(() => clearInterval(iv))
  return () => clearInterval(iv)
}

const postHead = (path: string, length: number, extra = ''): string => `POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: ${length}\r\n${extra}\r\n`
const status = (c: Conn): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(c.text)?.[1] ?? 0)

/** A backend that records each request head as it arrives (before its body) and answers `got N` at the body's end. */
async function recordingBackend (t: Teardown): Promise<{ address: string, heads: string[], ends: Map<string, string>, peakOpen: () => number }> {
  const heads: string[] = []
  const ends = new Map<string, string>()
  const b = await startBackend(t, (req, res) => {
    const url = req.url ?? ''
    heads.push(url)
    let n = 0
    req.on('data', (d: Buffer) => { n += d.length })
    req.on('end', () => { ends.set(url, `complete ${n}`); res.end(`got ${n}`) })
    req.on('close', () => { if (!ends.has(url)) ends.set(url, `aborted after ${n}`) })
    req.on('error', () => {})
  })
  return { address: b.address, heads, ends, peakOpen: b.peakOpen }
}

t.test('8 clients dripping small bodies (1 byte per 300 ms) into a pool of 4 hold no connection: a normal client at 20 req/s is served throughout', async (t) => {
  const b = await recordingBackend(t)
  // queueTimeoutMs 2000: before the fix, the 4 drippers held every connection and the rest got 503 after it.
  const f = await startFerry(t, httpConfig([b.address], { pool: { maxConnections: 4, queueTimeoutMs: 2000 } }))
  const drippers = Array.from({ length: 8 }, (_, i) => open(t, f, postHead(`/drip/${i}`, 1000)))
  for (const c of drippers) drip(c, 'x', 300)
  await waitFor('every dripper to have sent 2 body bytes', () => drippers.every((c) => c.sent >= 2))

  // The normal client: a request every 50 ms for 4 s (twice queueTimeoutMs), GETs and 200-byte POSTs alternately.
  const results: Array<Promise<{ r: Reply, ms: number }>> = []
  for (let i = 0; i < 80; i++) {
    const t0 = Date.now()
    const req = i % 2 === 0 ? send(f, `/get/${i}`) : send(f, `/post/${i}`, { method: 'POST', body: 'p'.repeat(200) })
    results.push(req.then((r) => ({ r, ms: Date.now() - t0 }), (err: Error) => ({ r: { status: 0, headers: {}, body: err.message }, ms: Date.now() - t0 })))
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const done = await Promise.all(results)
  const ok = done.filter((d) => d.r.status === 200).length
  const slowest = Math.max(...done.map((d) => d.ms))
  t.equal(ok, 80, `all 80 normal requests (40 GET, 40 POST) get 200 while 8 clients drip (got ${ok}; others: ${JSON.stringify([...new Set(done.filter((d) => d.r.status !== 200).map((d) => `${d.r.status} ${d.r.code ?? d.r.body.slice(0, 60)}`))])})`)
  t.ok(slowest < 1000, `the slowest normal request took ${slowest} ms, under 1000 ms (half of queueTimeoutMs 2000)`)
  t.ok(done.filter((d) => d.r.status === 200 && d.r.body.startsWith('got 200')).length === 40, 'each POST reached the backend with its 200 bytes')
  t.ok(drippers.every((c) => !c.closed && c.text === ''), 'the drippers are still connected and unanswered (their bodies are not complete)')
  t.ok(drippers.every((c) => c.sent >= 10), `each dripper has sent ≥ 10 of 1000 bytes (least ${Math.min(...drippers.map((c) => c.sent))})`)
  t.same(b.heads.filter((u) => u.startsWith('/drip')), [], 'the backend has seen no request of the drippers: a buffered body takes no connection while it trickles')
  t.ok(b.peakOpen() <= 4, `the backend saw at most maxConnections 4 connections at once (peak ${b.peakOpen()})`)
  const buffered = (await adminStatus(f)).limits.bufferedBodyBytes
  const expected = drippers.reduce((n, c) => n + c.sent, 0)
  t.ok(buffered > 0 && buffered <= expected, `/status limits.bufferedBodyBytes counts the drippers' bytes (${buffered}, at most the ${expected} they sent)`)

  // Two drippers finish their bodies: only now does the backend see them, whole.
  for (const c of drippers.slice(0, 2)) c.write('x'.repeat(1000 - c.sent))
  await Promise.all(drippers.slice(0, 2).map(async (c) => await waitFor(`dripper ${c.socket.localPort} to be answered`, () => /got 1000$/.test(c.text))))
  t.equal(status(drippers[0]!), 200, 'a dripper that completes its body gets 200')
  t.same([b.ends.get('/drip/0'), b.ends.get('/drip/1')], ['complete 1000', 'complete 1000'], 'and the backend received both completed bodies whole (1000 bytes)')
  t.equal(b.heads.filter((u) => u.startsWith('/drip')).length, 2, 'and no other dripper')
  for (const c of drippers) c.socket.destroy()
  await waitFor('the buffered bytes to be released', async () => (await adminStatus(f)).limits.bufferedBodyBytes === 0)
  t.equal((await adminStatus(f)).limits.bufferedClientIps, 0, 'clients that left hold no buffer (per-IP table empty)')
})

t.test('streamed bodies must keep http.minBodyRateBytesPerSec: a slow large upload is cut 408 and its connection returned; a steady one completes', async (t) => {
  const b = await recordingBackend(t)
  const f = await startFerry(t, {
    ...httpConfig([b.address], { pool: { maxConnections: 4 } }, { http: { minBodyRateBytesPerSec: 4096, minBodyRateWindowMs: 1000 } }),
    routes: [{ match: { path: '/chunked' }, upstream: 'api', bufferBodyBytes: 1024 }, { match: { path: '/' }, upstream: 'api' }],
  })
  // 1000 bytes every 500 ms: 2000 B/s, below 4096; never idle for bodyIdleMs (8000).
  const slow = open(t, f, postHead('/slow', 200_000))
  drip(slow, 'y'.repeat(1000), 500)
  // A chunked body that outgrows the route's bufferBodyBytes 1024 streams from then on, and is held to the rate too.
  const chunked = open(t, f, 'POST /chunked/slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n')
  chunked.write(`5dc\r\n${'c'.repeat(1500)}\r\n`)
  drip(chunked, `3e8\r\n${'c'.repeat(1000)}\r\n`, 500)
  // 8 KiB every 100 ms: ~80 KiB/s, 200,000 bytes in ~2.5 s (two windows and more).
  const steady = open(t, f, postHead('/steady', 200_000))
  drip(steady, 's'.repeat(8192), 100, 200_000)
  await waitFor('the slow uploads to be answered', () => slow.closed && chunked.closed, 8000)
  t.equal(status(slow), 408, 'a 2000 B/s upload (below minBodyRateBytesPerSec 4096) gets 408')
  t.match(slow.text, /FERRY_ERR_CLIENT_BODY_TIMEOUT[^]*minBodyRateBytesPerSec 4096/, 'error.code FERRY_ERR_CLIENT_BODY_TIMEOUT, the message names minBodyRateBytesPerSec')
  const slowMs = slow.closedAt - slow.t0
  t.ok(slowMs >= 1000 && slowMs < 3500, `it was cut after its grace of one window (1000 ms) and within 3500 ms (after ${slowMs} ms)`)
  t.equal(status(chunked), 408, 'a chunked body past the route\'s bufferBodyBytes 1024, dripping 2000 B/s: 408 too')
  await waitFor('the backend to see both cut requests end', () => b.ends.has('/slow') && b.ends.has('/chunked/slow'))
  t.match(b.ends.get('/slow'), /^aborted/, `the backend request was aborted (${b.ends.get('/slow')})`)
  t.match(b.ends.get('/chunked/slow'), /^aborted/, `the chunked one too (${b.ends.get('/chunked/slow')}): it had streamed since it outgrew the buffer`)
  await waitFor('the steady upload to be answered', () => /got 200000$/.test(steady.text), 10000)
  t.equal(status(steady), 200, `the steady ~80 KiB/s upload of 200,000 bytes completes with 200 after ${Date.now() - steady.t0} ms`)
  const inflight = async (): Promise<number> => (await adminStatus(f)).upstreams[0].endpoints[0].inflight
  await waitFor('the pool to be idle', async () => (await inflight()) === 0)
  t.pass('no connection is held after the cuts (endpoint inflight 0)')
  t.equal(await metric(f, 'ferry_errors_total{code="FERRY_ERR_CLIENT_BODY_TIMEOUT",upstream="api"}'), 2, 'ferry_errors_total counts the 2 FERRY_ERR_CLIENT_BODY_TIMEOUT')
  t.equal((await adminStatus(f)).limits.streamedBodies, 0, '/status limits.streamedBodies is back to 0')
})

t.test('limits.maxStreamedBodiesPerIp 2: a 3rd large upload of one address is refused 429 before anything goes upstream; small bodies and other addresses pass', async (t) => {
  const b = await recordingBackend(t)
  const f = await startFerry(t, httpConfig([b.address], { pool: { maxConnections: 4 } }, {
    http: { trustedProxies: ['127.0.0.1'], minBodyRateBytesPerSec: 0 },
    limits: { maxStreamedBodiesPerIp: 2, retryAfterSec: 3 },
  }))
  const A = 'X-Forwarded-For: 198.51.100.1\r\n'
  const B = 'X-Forwarded-For: 198.51.100.2\r\n'
  const a = [open(t, f, postHead('/a/1', 200_000, A)), open(t, f, postHead('/a/2', 200_000, A))]
  for (const c of a) c.write('a'.repeat(1000))
  await waitFor('the backend to see both of A\'s streamed uploads', () => b.heads.length === 2)
  const a3 = open(t, f, postHead('/a/3', 200_000, A))
  a3.write('a'.repeat(1000))
  await a3.done
  t.equal(status(a3), 429, 'A\'s 3rd concurrent large upload gets 429')
  t.match(a3.text, /FERRY_ERR_PER_IP_LIMIT[^]*maxStreamedBodiesPerIp 2/, 'error.code FERRY_ERR_PER_IP_LIMIT naming limits.maxStreamedBodiesPerIp')
  t.match(a3.text, /retry-after: 3\r\n/i, 'with Retry-After: 3')
  const small = await send(f, '/a/small', { method: 'POST', body: 'z'.repeat(5000), headers: { 'x-forwarded-for': '198.51.100.1' } })
  t.equal(small.status, 200, 'a small (buffered) POST of A passes: only streamed bodies count')
  const b1 = open(t, f, postHead('/b/1', 200_000, B))
  b1.write('b'.repeat(1000))
  await waitFor('B\'s upload to reach the backend', () => b.heads.includes('/b/1'))
  t.pass('another address streams while A is at its limit')
  t.notOk(b.heads.includes('/a/3'), 'the refused upload never reached the backend')
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="http_streamed_bodies_per_ip"}'), 1, 'ferry_limit_refused_total{limit="http_streamed_bodies_per_ip"} is 1')
  t.equal((await adminStatus(f)).limits.streamedBodies, 3, '/status limits.streamedBodies is 3')
  for (const c of [...a, b1]) c.socket.destroy()
  await waitFor('the streamed count to return to 0', async () => (await adminStatus(f)).limits.streamedBodies === 0)
  t.pass('closed uploads give their count back')
})

t.test('limits.maxBufferedBodyBytes[PerIp]: the body memory budget refuses 429 per address and 503 gateway-wide, and is given back', async (t) => {
  const b = await recordingBackend(t)
  const f = await startFerry(t, httpConfig([b.address], {}, {
    http: { trustedProxies: ['127.0.0.1'], bufferBodyBytes: 60_000 },
    limits: { maxBufferedBodyBytes: 220_000, maxBufferedBodyBytesPerIp: 110_000 },
  }))
  const A = '198.51.100.1'
  const B = '198.51.100.2'
  const C = '198.51.100.3'
  const buffered = async (): Promise<number> => (await adminStatus(f)).limits.bufferedBodyBytes
  const hold = (ip: string, i: number): Conn => {
    const c = open(t, f, postHead(`/held/${i}`, 60_000, `X-Forwarded-For: ${ip}\r\n`))
    c.write('h'.repeat(50_000))
    return c
  }
  const post = async (ip: string, path: string, bytes: number): Promise<Reply> => await send(f, path, { method: 'POST', body: 'm'.repeat(bytes), headers: { 'x-forwarded-for': ip } })
  // A holds two 60,000-byte bodies with 50,000 bytes sent each.
  const held = [hold(A, 0), hold(A, 1)]
  await waitFor('100,000 bytes of A to be buffered', async () => (await buffered()) === 100_000)
  const perIp = await post(A, '/a/more', 20_000)
  t.equal(perIp.status, 429, 'a 20,000-byte POST of A, holding 100,000 bytes, past maxBufferedBodyBytesPerIp 110,000: 429')
  t.equal(perIp.code, 'FERRY_ERR_PER_IP_LIMIT', 'error.code FERRY_ERR_PER_IP_LIMIT')
  held.push(hold(B, 2), hold(B, 3))
  await waitFor('200,000 bytes to be buffered', async () => (await buffered()) === 200_000)
  t.equal(await metric(f, 'ferry_http_buffered_body_bytes'), 200_000, 'ferry_http_buffered_body_bytes is 200,000')
  const global = await post(C, '/c/post', 30_000)
  t.equal(global.status, 503, 'a 30,000-byte POST of a third address past maxBufferedBodyBytes 220,000: 503')
  t.equal(global.code, 'FERRY_ERR_GLOBAL_LIMIT', 'error.code FERRY_ERR_GLOBAL_LIMIT')
  t.equal(global.headers['retry-after'], '1', 'with Retry-After: 1')
  t.equal((await send(f, '/c/get', { headers: { 'x-forwarded-for': C } })).status, 200, 'a GET (no body) of that address is served meanwhile')
  t.same(b.heads, ['/c/get'], 'the backend saw none of the buffered or refused bodies, only the GET')
  held[0]!.write('h'.repeat(10_000))
  await waitFor('the completed body to be answered', () => /got 60000$/.test(held[0]!.text))
  t.equal(b.ends.get('/held/0'), 'complete 60000', 'a held body that completes goes upstream whole (60,000 bytes)')
  await waitFor('its 60,000 bytes to leave the budget', async () => (await buffered()) === 150_000)
  t.pass('once dispatched, its bytes leave the budget (150,000 left)')
  t.equal((await post(C, '/c/again', 30_000)).status, 200, 'the third address\'s 30,000-byte POST now passes')
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="http_buffered_bytes_per_ip"}'), 1, 'ferry_limit_refused_total{limit="http_buffered_bytes_per_ip"} is 1')
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="http_buffered_bytes"}'), 1, 'ferry_limit_refused_total{limit="http_buffered_bytes"} is 1')
  for (const c of held) c.socket.destroy()
  await waitFor('the budget to be empty', async () => (await buffered()) === 0)
  t.equal((await adminStatus(f)).limits.bufferedClientIps, 0, 'and the per-IP table too (no leak)')
})

t.test('signed bodies (HMAC bodySha256) are checked whole when buffered, before anything goes upstream', async (t) => {
  const { createHash, createHmac } = await import('node:crypto')
  const b = await recordingBackend(t)
  const secret = 's'.repeat(32)
  const f = await startFerry(t, {
    ...httpConfig([b.address]),
    routes: [{ match: { path: '/' }, upstream: 'api', auth: 'svc' }],
    auth: { policies: { svc: { hmac: { keys: [{ id: 'k', secret }] } } } },
  })
  let n = 0
  const sign = (target: string, body: string): Record<string, string> => {
    const ts = String(Math.floor(Date.now() / 1000))
    const nonce = `nonce-${Date.now()}-${n++}-abcdefgh`
    const sha = createHash('sha256').update(body).digest('hex')
    const sig = createHmac('sha256', secret).update(`FERRY-HMAC-SHA256\n${ts}\n${nonce}\nPOST\n127.0.0.1:${f.httpPort}\n${target}\n${sha}`).digest('hex')
    return { 'x-ferry-key-id': 'k', 'x-ferry-timestamp': ts, 'x-ferry-nonce': nonce, 'x-ferry-content-sha256': sha, 'x-ferry-signature': sig }
  }
  const body = 'pay 10 to acct-1;'.repeat(100)
  const good = await send(f, '/pay', { method: 'POST', headers: sign('/pay', body), body })
  t.equal(good.status, 200, 'a signed buffered body (1,700 bytes) passes')
  t.equal(good.body, `got ${body.length}`, 'and reaches the backend whole')
  const bad = await send(f, '/pay2', { method: 'POST', headers: sign('/pay2', body), body: body.replace('acct-1', 'acct-9') })
  t.equal(bad.status, 401, 'a buffered body that is not the signed one: 401')
  t.equal(bad.code, 'FERRY_ERR_AUTH_BODY_MISMATCH', 'error.code FERRY_ERR_AUTH_BODY_MISMATCH')
  t.notOk(b.heads.includes('/pay2'), 'and the backend never saw the request at all')
})
