import t from 'tap'
import { request, type IncomingMessage, type ServerResponse } from 'node:http'
import { Server as SocketIoServer } from 'socket.io'
import { io as ioClient, type Socket as IoSocket } from 'socket.io-client'
import { startBackend, httpConfig } from './helpers/backend.js'
import { metric, startFerry, waitFor, type Teardown } from './helpers/ferry.js'

/**
 * Long-held HTTP requests (issue 22, item 1; docs/http.md): Socket.IO long polling, Server-Sent Events and
 * streaming responses take connections from the upstream's `pool.longHeld` budget, never the
 * `maxConnections` slots short requests need. Real socket.io server and socket.io-client (polling
 * transport), real SSE streams over node:http, one real backend.
 */

interface Sse { res: IncomingMessage | undefined, events: number, status: number }

/** An SSE client (what EventSource sends: GET with Accept: text/event-stream); counts `data:` events. */
function sse (t: Teardown, url: string): Sse {
  const s: Sse = { res: undefined, events: 0, status: 0 }
  const req = request(url, { headers: { accept: 'text/event-stream' } }, (res) => {
    s.res = res
    s.status = res.statusCode ?? 0
    res.setEncoding('utf8')
    res.on('data', (c: string) => { s.events += c.split('\n').filter((l) => l.startsWith('data:')).length })
    res.on('error', () => {})
  })
  req.on('error', () => {})
  req.end()
  t.teardown(() => { req.destroy() })
  return s
}

/** The application: socket.io (ack echo), /events (an SSE event every second), /short (answers at once), /stream and /slow. */
async function app (t: Teardown): Promise<{ address: string, concurrentSlow: () => number, peakSlow: () => number }> {
  let slow = 0
  let peakSlow = 0
  const timers = new Set<NodeJS.Timeout>()
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0]
    if (path === '/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      res.write('data: hello\n\n')
      const timer = setInterval(() => res.write('data: tick\n\n'), 1000)
      timers.add(timer)
      res.on('close', () => { clearInterval(timer); timers.delete(timer) })
      return
    }
    if (path === '/stream' || path === '/other-stream') {
      // A streaming download (no SSE header): a chunk every 200 ms for 10 s.
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      let n = 0
      const timer = setInterval(() => { res.write('chunk\n'); if (++n === 50) { clearInterval(timer); res.end() } }, 200)
      timers.add(timer)
      res.on('close', () => { clearInterval(timer); timers.delete(timer) })
      return
    }
    if (path === '/slow') {
      slow++
      peakSlow = Math.max(peakSlow, slow)
      const timer = setTimeout(() => { slow--; res.end('slow') }, 1500)
      timers.add(timer)
      return
    }
    if (path === '/short') { res.end('short'); return }
    // Everything else is socket.io's (it attaches its own 'request' listener).
  }
  const backend = await startBackend(t, handler)
  const ioServer = new SocketIoServer(backend.server, { transports: ['polling'] })
  ioServer.on('connection', (socket) => {
    socket.on('echo', (x: unknown, ack: (y: unknown) => void) => { ack(x) })
  })
  t.teardown(() => { for (const x of timers) clearInterval(x); ioServer.close() })
  return { address: backend.address, concurrentSlow: () => slow, peakSlow: () => peakSlow }
}

async function timed (url: string): Promise<{ status: number, ms: number }> {
  const t0 = performance.now()
  const r = await fetch(url)
  await r.text()
  return { status: r.status, ms: performance.now() - t0 }
}

t.test('200 Socket.IO polling clients and 200 SSE streams at once on a default pool (16): short requests are served, every ack comes back', { timeout: 120_000 }, async (t) => {
  const a = await app(t)
  const f = await startFerry(t, httpConfig([a.address]))
  const base = `http://127.0.0.1:${f.httpPort}`
  // 200 SSE streams, each got its first event.
  const streams: Sse[] = []
  for (let i = 0; i < 200; i++) streams.push(sse(t, `${base}/events`))
  await waitFor('200 SSE streams open', () => streams.every((s) => s.events >= 1), 30_000)
  // 200 Socket.IO clients on long polling: each holds a GET at the backend most of the time.
  const sockets: IoSocket[] = []
  t.teardown(() => { for (const s of sockets) s.close() })
  for (let i = 0; i < 200; i++) sockets.push(ioClient(base, { transports: ['polling'], reconnection: false, forceNew: true, timeout: 20_000 }))
  await waitFor('200 Socket.IO clients connected', () => sockets.every((s) => s.connected), 40_000)
  // Give every client time to park its next poll at the backend.
  await new Promise((resolve) => setTimeout(resolve, 500))

  // Short requests meanwhile: none waits for a held connection.
  const short: Array<{ status: number, ms: number }> = []
  for (let round = 0; round < 10; round++) short.push(...await Promise.all(Array.from({ length: 20 }, async () => await timed(`${base}/short`))))
  const statuses = [...new Set(short.map((r) => r.status))]
  t.same(statuses, [200], `200 short requests all answered 200 (got ${JSON.stringify(statuses)})`)
  const slowest = Math.max(...short.map((r) => r.ms))
  t.ok(slowest < 4000, `the slowest short request took ${Math.round(slowest)} ms, under queueTimeoutMs (5000): none waited for a held connection`)

  // Every client's ack comes back (a polling POST, then the answer on its GET).
  const acks = await Promise.all(sockets.map(async (s, i) => await new Promise<unknown>((resolve) => {
    s.timeout(20_000).emit('echo', i, (err: Error | null, v: unknown) => { resolve(err === null ? v : `error ${err.message}`) })
  })))
  t.same(acks.filter((v, i) => v !== i), [], 'all 200 acks came back')
  t.ok(streams.every((s) => s.status === 200), 'every SSE stream is 200')
  t.equal(await metric(f, 'ferry_http_errors_total{code="FERRY_ERR_QUEUE_TIMEOUT",upstream="api"}'), 0, 'no request waited queueTimeoutMs (FERRY_ERR_QUEUE_TIMEOUT 0)')
  t.equal(await metric(f, 'ferry_http_long_held_total{upstream="api",why="sse"}'), 200, 'ferry_http_long_held_total{why="sse"} = 200')
  t.ok(await metric(f, 'ferry_http_long_held_total{upstream="api",why="polling"}') >= 200, 'the polling GETs were long-held (why="polling")')
})

t.test('a long-held route keeps its downloads off the short pool; a slow backend keeps its cap; clients that leave give connections back; a full budget answers 503', async (t) => {
  const a = await app(t)
  const f = await startFerry(t, {
    ...httpConfig([a.address], { pool: { maxConnections: 2, queueTimeoutMs: 10_000, longHeld: { maxConnections: 4 } } }),
    routes: [{ match: { path: '/stream' }, upstream: 'api', longHeld: true }, { match: { path: '/' }, upstream: 'api' }],
  })
  const base = `http://127.0.0.1:${f.httpPort}`
  const held = async (): Promise<number> => await metric(f, 'ferry_http_long_held{upstream="api"}')

  t.test('4 downloads on a longHeld route with 2 short connections: all 4 stream at once, a short request is served meanwhile', async (t) => {
    const chunks = [0, 0, 0, 0]
    const reqs = chunks.map((_, i) => {
      const req = request(`${base}/stream`, (res) => { res.on('data', () => { chunks[i]!++ }) })
      req.on('error', () => {})
      req.end()
      return req
    })
    await waitFor('all 4 streaming', () => chunks.every((n) => n >= 1), 5000)
    t.pass('all 4 downloads stream at once')
    const r = await timed(`${base}/short`)
    t.equal(r.status, 200, 'a short request is served meanwhile')
    t.equal(await held(), 4, 'ferry_http_long_held = 4')
    t.equal(await metric(f, 'ferry_http_long_held_total{upstream="api",why="route"}'), 4, 'counted as why="route"')
    for (const q of reqs) q.destroy()
    await waitFor('given back', async () => await held() === 0, 3000)
    t.pass('ferry_http_long_held back to 0 within 3 s of the clients leaving (their streams had 9 s left)')
  })

  t.test('a download of unknown length on a short route: the client leaves, the short connection is free at once', async (t) => {
    // Not long-held (no SSE header, not the longHeld route): it holds one of the 2 short connections.
    const reqs = [0, 1].map(() => {
      const req = request(`${base}/other-stream`, { headers: { 'x-stream': '1' } }, () => {})
      req.on('error', () => {})
      req.end()
      return req
    })
    await waitFor('2 short downloads in flight', async () => (await (await fetch(`${f.adminUrl}/status`)).json()).upstreams[0].endpoints[0].inflight === 2, 5000)
    for (const q of reqs) q.destroy()
    const r = await timed(`${base}/short`)
    t.equal(r.status, 200, 'a short request is served')
    t.ok(r.ms < 2000, `at once (${Math.round(r.ms)} ms), not after the downloads' 10 s`)
  })

  t.test('a backend slow to answer (headers after 1.5 s) keeps maxConnections: never more than 2 at once', async (t) => {
    const rs = await Promise.all(Array.from({ length: 6 }, async () => await timed(`${base}/slow`)))
    t.same([...new Set(rs.map((r) => r.status))], [200], 'all 6 answered')
    t.equal(a.peakSlow(), 2, 'the backend never had more than 2 slow requests at once')
  })

  t.test('SSE beyond longHeld.maxConnections (4): 503, counted as refused; streams whose clients leave are given back', async (t) => {
    const streams = Array.from({ length: 5 }, () => sse(t, `${base}/events`))
    await waitFor('5 answers', () => streams.every((s) => s.status !== 0), 5000)
    t.same(streams.map((s) => s.status).sort(), [200, 200, 200, 200, 503], '4 streams, the fifth 503')
    t.equal(await metric(f, 'ferry_http_long_held_total{upstream="api",why="refused"}'), 1, 'why="refused" = 1')
    for (const s of streams) s.res?.destroy()
    await waitFor('given back', async () => await held() === 0, 3000)
    t.pass('back to 0 once the SSE clients left')
  })
})

t.test('config: longHeld on a route to a ws upstream is refused naming the field', async (t) => {
  const { runCli, writeConfig } = await import('./helpers/ferry.js')
  const file = writeConfig({
    upstreams: { chat: { protocol: 'ws', endpoints: ['127.0.0.1:9'] } },
    routes: [{ match: { path: '/' }, upstream: 'chat', longHeld: true }],
  })
  const r = await runCli(['check', '--config', file])
  t.not(r.code, 0, 'refused')
  t.match(r.stdout + r.stderr, /routes\[0\]\.longHeld|routes\.0\.longHeld/, 'the message names routes[0].longHeld')
})
