import t from 'tap'
import { connect, type Socket } from 'node:net'
import type { ServerResponse } from 'node:http'
import { Writable } from 'node:stream'
import pino from 'pino'
import type { HttpResponse } from 'uWebSockets.js'
import { canMove, isFinal, MOVES, type ExchangeState } from '../src/upstream/http/exchange-state.js'
import { exchangeContext, HttpExchange } from '../src/upstream/http/exchange.js'
import { upstreamMetrics } from '../src/upstream/http/metrics.js'
import type { HttpUpstream } from '../src/upstream/http/pool.js'
import { Metrics } from '../src/observability/metrics.js'
import type { ClientRequest } from '../src/contracts/http.js'
import type { Route } from '../src/routing/router.js'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, adminStatus, metric, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'

/**
 * The HTTP exchange's state machine (src/upstream/http/exchange-state.ts) and the resources it releases
 * on every way out. The table is checked directly; the exits run through a real gateway and backend,
 * each while other requests of the same client hold the same kinds of resource, so a second release of
 * any of them would show as a count below what those others hold (the limit tables clamp at zero per
 * client address, so a double release is only visible next to a live holder).
 */

const STATES: ExchangeState[] = ['gated', 'buffering', 'waiting', 'dispatched', 'responding', 'draining', 'done', 'failed', 'aborted']
const LIVE: ExchangeState[] = ['gated', 'buffering', 'waiting', 'dispatched', 'responding']

t.test('the transition table: forward along gated → buffering → waiting → dispatched → responding → done, a retry back to waiting, endings from every live state, nothing out of an end', async (t) => {
  t.same(Object.keys(MOVES).sort(), [...STATES].sort(), 'MOVES has a row for each of the 9 states')
  const path: ExchangeState[] = ['gated', 'buffering', 'waiting', 'dispatched', 'responding', 'done']
  for (let i = 1; i < path.length; i++) t.ok(canMove(path[i - 1]!, path[i]!), `${path[i - 1]} → ${path[i]} is allowed`)
  t.ok(canMove('gated', 'waiting'), 'gated → waiting (no body to wait for) is allowed')
  t.ok(canMove('dispatched', 'waiting'), 'dispatched → waiting (a retry on another endpoint) is allowed')
  for (const s of LIVE) {
    t.ok(canMove(s, 'failed'), `${s} → failed is allowed`)
    t.ok(canMove(s, 'aborted'), `${s} → aborted is allowed`)
  }
  t.ok(canMove('dispatched', 'draining') && canMove('responding', 'draining'), 'only a dispatched or responding request drains')
  t.ok(canMove('draining', 'done') && canMove('draining', 'aborted'), 'a drain ends done or aborted')
  // Illegal moves: backwards, skipping the slot, and anything out of an end.
  const illegal: Array<[ExchangeState, ExchangeState]> = [
    ['waiting', 'buffering'], ['responding', 'dispatched'], ['responding', 'waiting'], ['gated', 'dispatched'],
    ['buffering', 'responding'], ['waiting', 'draining'], ['gated', 'draining'], ['draining', 'failed'],
    ['draining', 'responding'], ['waiting', 'waiting'], ['responding', 'responding'],
  ]
  for (const [a, b] of illegal) t.notOk(canMove(a, b), `${a} → ${b} is refused`)
  for (const end of ['done', 'failed', 'aborted'] as const) {
    t.same(MOVES[end], [], `${end} has no move out`)
    for (const s of STATES) t.notOk(canMove(end, s), `${end} → ${s} is refused`)
  }
  for (const s of STATES) t.equal(isFinal(s), !LIVE.includes(s), `${s} is ${LIVE.includes(s) ? 'live' : 'final'}`)
})

t.test('an illegal move is refused: the state stays, FERRY_ERR_INTERNAL is counted and logged, nothing is thrown', async (t) => {
  const m = new Metrics()
  const lines: string[] = []
  const log = pino({ level: 'info' }, new Writable({ write (chunk: Buffer, _enc, cb) { lines.push(chunk.toString()); cb() } }))
  // Nothing here reaches the response or the upstream's pool: `to` reads the upstream's name only.
  const ctx = exchangeContext({
    lifecycle: { draining: false, inFlight: 0, served: 0 }, upstream: { name: 'api' } as unknown as HttpUpstream,
    metrics: upstreamMetrics(m, 'api'), log, accessLog: false, requestIdHeader: 'x-request-id', retryIdempotent: true,
  })
  const req: ClientRequest = { method: 'GET', target: '/', path: '/', rawTarget: '/', host: 'a', clientIp: '127.0.0.1', secure: false, requestId: 'r-1', headers: [], asciiHeaders: true, contentLength: 0, chunked: false, close: false }
  const x = new HttpExchange(undefined as unknown as HttpResponse, req, { name: 'r' } as Route, ctx, { maxBytes: 0, bufferBytes: 0 })
  t.doesNotThrow(() => { x.to('responding') }, 'gated → responding does not throw')
  t.equal(x.state, 'gated', 'the state stays gated')
  t.match(await m.render(), /^ferry_errors_total\{code="FERRY_ERR_INTERNAL",upstream="api"\} 1$/m, 'ferry_errors_total{code="FERRY_ERR_INTERNAL"} counts 1')
  t.equal(lines.length, 1, 'one log line')
  t.match(JSON.parse(lines[0]!), { level: 50, reqId: 'r-1', from: 'gated', to: 'responding' }, 'an error naming the request and the move')
  x.to('waiting')
  t.equal(x.state, 'waiting', 'a legal move (gated → waiting) is taken')
  t.equal(lines.length, 1, 'and not logged')
})

interface Conn {
  readonly socket: Socket
  text: string
  closed: boolean
  write: (data: string | Buffer) => void
}

function open (t: Teardown, f: FerryProcess, head: string): Conn {
  const socket = connect(f.httpPort, '127.0.0.1')
  const c: Conn = { socket, text: '', closed: false, write: (d) => { if (!socket.destroyed) socket.write(d) } }
  socket.setEncoding('latin1').on('data', (d: string) => { c.text += d })
  socket.on('error', () => {})
  socket.on('close', () => { c.closed = true })
  socket.write(head)
  t.teardown(() => { socket.destroy() })
  return c
}

const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`
const post = (path: string, length: number): string => `POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: ${length}\r\n\r\n`
const status = (c: Conn): number => Number(/^HTTP\/1\.1 (\d{3})/.exec(c.text)?.[1] ?? 0)

t.test('every exit of an exchange releases what it held exactly once, next to requests that hold the same resources', async (t) => {
  const held: ServerResponse[] = []
  const seen: string[] = []
  const backend = await startBackend(t, (req, res) => {
    const url = req.url ?? ''
    seen.push(url)
    req.on('error', () => {})
    if (url.startsWith('/hold')) { held.push(res); return }
    if (url === '/hang') return
    if (url === '/late') { setTimeout(() => res.end('late'), 300); return }
    if (url === '/reset') { req.socket.destroy(); return }
    if (url === '/die') {
      res.writeHead(200, { 'content-length': String(1024 * 1024) })
      res.write(Buffer.alloc(64 * 1024), () => setTimeout(() => req.socket.destroy(), 50))
      return
    }
    if (url === '/big') {
      res.writeHead(200, { 'content-length': String(50 * 1024 * 1024) })
      const chunk = Buffer.alloc(64 * 1024)
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk)) { /* until backpressure */ }
        if (!res.destroyed) res.once('drain', pump)
      }
      res.on('close', () => res.removeAllListeners('drain'))
      pump()
      return
    }
    // Bodies: read to the end, then answer with the count.
    let n = 0
    req.on('data', (d: Buffer) => { n += d.length })
    req.on('end', () => res.end(`got ${n}`))
  })
  const f = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: 8 } }, {
    // No minimum rate: the streamed witness drips as slowly as the buffered one.
    http: { bufferBodyBytes: 16_384, maxBodyBytes: 262_144, minBodyRateBytesPerSec: 0 },
    limits: { maxRequestsInFlightPerIp: 4 },
  }))
  const limits = async (): Promise<{ httpInFlight: number, streamedBodies: number, bufferedBodyBytes: number }> => (await adminStatus(f)).limits
  const slots = async (): Promise<number> => (await adminStatus(f)).upstreams[0].endpoints[0].inflight
  const inFlight = async (): Promise<number> => await metric(f, 'ferry_client_requests_in_flight{kind="http"}')

  // Witnesses, all from 127.0.0.1 like the exits: a request held by the backend (a slot, a request
  // count), a buffered body half sent (1,000 bytes charged), a streamed body under way (a slot, a stream
  // count). Both bodies drip a byte a second, so neither meets http.bodyIdleMs (8 s) while the exits run.
  const w1 = open(t, f, get('/hold/1'))
  const w2 = open(t, f, post('/buffered', 2000))
  w2.write('b'.repeat(1000))
  let w2Sent = 1000
  const w3 = open(t, f, post('/stream', 200_000))
  w3.write(Buffer.alloc(32 * 1024))
  let w3Sent = 32 * 1024
  const drip = setInterval(() => { w2.write('b'); w2Sent++; w3.write('s'); w3Sent++ }, 1000)
  t.teardown(() => clearInterval(drip))
  await waitFor('the witnesses to hold their resources', async () => {
    const l = await limits()
    return l.httpInFlight === 3 && l.bufferedBodyBytes === w2Sent && l.streamedBodies === 1 && (await slots()) === 2
  })
  t.pass('witnesses: 3 requests in flight, their buffered body bytes charged, 1 streamed body, 2 pool slots')

  /** After an exit: everything is back to what the witnesses hold, exactly. */
  const settled = async (what: string): Promise<void> => {
    const counts = async (): Promise<number[]> => {
      const l = await limits()
      return [await inFlight(), await slots(), l.httpInFlight, l.bufferedBodyBytes, l.streamedBodies]
    }
    let last: number[] = []
    let want: number[] = []
    await waitFor(`${what}: counts back to the witnesses'`, async () => {
      want = [3, 2, 3, w2Sent, 1]
      last = await counts()
      return last.join() === want.join()
    }).catch(() => {})
    t.same(last, want, `${what}: requests in flight 3, slots 2, limit count 3, buffered bytes the witness's ${want[3]}, streamed bodies 1 (none released twice, none kept)`)
  }

  // 1. The client leaves while its buffered body arrives (buffering): its charge goes back.
  const a1 = open(t, f, post('/buffered-gone', 4000))
  a1.write('x'.repeat(3000))
  await waitFor('3,000 more bytes to be charged', async () => (await limits()).bufferedBodyBytes === w2Sent + 3000)
  a1.socket.destroy()
  await settled('client gone while buffering')

  // 2. The client leaves while its streamed body is dispatched: slot, stream count and request count go back.
  const a2 = open(t, f, post('/stream-gone', 200_000))
  a2.write(Buffer.alloc(32 * 1024))
  await waitFor('the second stream to take a slot', async () => (await slots()) === 3 && (await limits()).streamedBodies === 2)
  a2.socket.destroy()
  await settled('client gone while its streamed body is dispatched')

  // 3. The client leaves while dispatched, no body: the response is drained; the backend answers and the drain ends done.
  const a3 = open(t, f, get('/late'))
  await waitFor('/late to reach the backend', () => seen.includes('/late'))
  a3.socket.destroy()
  await settled('client gone while dispatched, the small response drained to its end')

  // 4. The same, the backend never answers: the drain deadline (1 s) ends it aborted.
  const a4 = open(t, f, get('/hang'))
  await waitFor('/hang to reach the backend', () => seen.includes('/hang'))
  a4.socket.destroy()
  await settled('client gone while dispatched, no response head within the drain deadline')

  // 5. The client leaves while responding (50 MiB left: not drained).
  const a5 = open(t, f, get('/big'))
  await waitFor('the big response to flow', () => a5.text.length > 256 * 1024)
  a5.socket.destroy()
  await settled('client gone while responding')

  // 6. The backend fails before the response head: 502.
  const a6 = open(t, f, get('/reset'))
  await waitFor('the reset request to be answered', () => status(a6) !== 0)
  t.equal(status(a6), 502, 'a backend reset before the head: 502')
  await settled('backend error before the head')

  // 7. The backend fails after the head: the client's response is cut.
  const a7 = open(t, f, get('/die'))
  await waitFor('the cut response to close', () => a7.closed)
  t.equal(status(a7), 200, 'a backend dying after the head: the client got the 200 head')
  t.ok(a7.text.length < 1024 * 1024, `and the connection closed before the 1 MiB body (${a7.text.length} characters)`)
  await settled('backend error after the head')

  // 8. A chunked body outgrows bufferBodyBytes (it streams) and then maxBodyBytes: 413.
  const a8 = open(t, f, 'POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n')
  const piece = Buffer.alloc(32 * 1024, 0x61)
  for (let i = 0; i < 10 && !a8.closed; i++) {
    a8.write(`${piece.length.toString(16)}\r\n`)
    a8.write(piece)
    a8.write('\r\n')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  await waitFor('the oversized body to be answered', () => status(a8) !== 0)
  t.equal(status(a8), 413, 'a chunked body past maxBodyBytes 262,144 while streaming: 413')
  await settled('body too large while streaming')

  // No exit took an illegal state move (each would count FERRY_ERR_INTERNAL).
  t.equal(await metric(f, 'ferry_errors_total{code="FERRY_ERR_INTERNAL",upstream="api"}'), 0, 'ferry_errors_total counts 0 FERRY_ERR_INTERNAL')

  // The request count is exact, not just low: with the 3 witnesses, one more request fits under maxRequestsInFlightPerIp 4, not two.
  const p1 = open(t, f, get('/hold/2'))
  await waitFor('the 4th request to be held', async () => (await limits()).httpInFlight === 4)
  const p2 = open(t, f, get('/hold/3'))
  await waitFor('the 5th request to be answered', () => status(p2) !== 0)
  t.equal(status(p2), 429, 'the 5th request of 127.0.0.1 is refused 429 (maxRequestsInFlightPerIp 4): every exit released its count once')

  // The witnesses finish normally, and everything is released.
  clearInterval(drip)
  w2.write('b'.repeat(2000 - w2Sent))
  w3.write(Buffer.alloc(200_000 - w3Sent))
  for (const r of held) r.end('released')
  await waitFor('the witnesses and the probe to be answered', () => [w1, w2, w3, p1].every((c) => status(c) === 200))
  t.match(w2.text, /got 2000$/, 'the buffered witness went upstream whole (2,000 bytes)')
  t.match(w3.text, /got 200000$/, 'the streamed witness went upstream whole (200,000 bytes)')
  await waitFor('everything to be released', async () => {
    const l = await limits()
    return (await inFlight()) === 0 && (await slots()) === 0 && l.httpInFlight === 0 && l.bufferedBodyBytes === 0 && l.streamedBodies === 0
  })
  t.pass('in the end: 0 requests in flight, 0 slots, 0 buffered bytes, 0 streamed bodies')
})
