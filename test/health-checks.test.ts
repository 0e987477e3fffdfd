import { createServer, type Server } from 'node:http'
import type { Socket } from 'node:net'
import pino from 'pino'
import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { Metrics } from '../src/observability/metrics.js'
import { ActiveHealth, PassiveHealth } from '../src/upstream/health.js'
import { deadPort } from './helpers/backend.js'
import { adminStatus, metric, startFerry, waitFor, type FerryProcess } from './helpers/ferry.js'
import { connect, startMuxBackend, startRawMuxBackend, upgradeStatus } from './helpers/mux.js'

const quiet = pino({ level: 'silent' })
const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

t.test('passive ejection backs off: each ejection in a streak lasts twice the one before, up to maxEjectMs', async (t) => {
  const p = new PassiveHealth('u', 'a:1', { consecutiveFailures: 2, ejectMs: 40, maxEjectMs: 100 }, quiet, new Metrics())
  const lengths: number[] = []
  p.failed('x'); p.failed('x')
  for (let i = 0; i < 4; i++) {
    const ms = p.ejectedUntil - Date.now()
    lengths.push(ms)
    await sleep(ms + 5)
    t.equal(p.status(Date.now()).health, 'probing', `ejection ${i + 1} expired: probing`)
    p.failed('x') // the probe fails: out again, longer
  }
  t.ok(lengths[0]! <= 40 && lengths[0]! > 30, `first ejection ≈ ejectMs 40 (${lengths[0]})`)
  t.ok(lengths[1]! <= 80 && lengths[1]! > 70, `second ≈ 80 (${lengths[1]})`)
  t.ok(lengths[2]! <= 100 && lengths[2]! > 90 && lengths[3]! <= 100 && lengths[3]! > 90, `then capped at maxEjectMs 100 (${lengths[2]}, ${lengths[3]})`)
  t.equal(p.ejections, 5, 'five ejections counted')
  await sleep(p.ejectedUntil - Date.now() + 5)
  p.succeeded('probe ok')
  t.equal(p.health, 'up', 'a passed probe brings it back')
  await sleep(110) // up for longer than its last ejection: the streak is forgotten
  p.failed('x'); p.failed('x')
  t.ok(p.ejectedUntil - Date.now() <= 40, 'a new streak starts again at ejectMs')
})

t.test('active health thresholds: a new endpoint is up after one pass; down after unhealthyThreshold fails; back after healthyThreshold passes', async (t) => {
  const h = new ActiveHealth('u', 'a:1', { healthyThreshold: 2, unhealthyThreshold: 3 }, quiet, new Metrics())
  t.equal(h.state, 'starting', 'starting before any check')
  h.record(undefined, 1)
  t.equal(h.state, 'up', 'one passed check brings a new endpoint up')
  h.record('e', 1); h.record('e', 1)
  t.equal(h.state, 'up', 'two failures: still up (unhealthyThreshold 3)')
  h.record(undefined, 1); h.record('e', 1); h.record('e', 1)
  t.equal(h.state, 'up', 'a pass in between resets the count')
  h.record('e', 1)
  t.equal(h.state, 'down', 'three in a row: down')
  h.record(undefined, 1)
  t.equal(h.state, 'down', 'one pass is not enough to come back')
  h.record(undefined, 1)
  t.equal(h.state, 'up', 'two in a row: up')
})

/** An HTTP backend on a fixed port that can be killed (sockets reset, port closed) and started again. */
async function flappingBackend (t: Tap.Test, name: string): Promise<{ address: string, requests: () => number, kill: () => Promise<void>, start: () => Promise<void> }> {
  let requests = 0
  let server: Server | undefined
  const sockets = new Set<Socket>()
  let port = 0
  const start = async (): Promise<void> => {
    const s = createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
      if (req.url === '/healthz') { res.end('ok'); return }
      requests++
      setTimeout(() => { res.end(name) }, 5)
    })
    s.on('connection', (c: Socket) => { sockets.add(c); c.on('close', () => sockets.delete(c)) })
    await new Promise<void>((resolve, reject) => { s.once('error', reject); s.listen(port, '127.0.0.1', resolve) })
    port = (s.address() as { port: number }).port
    server = s
  }
  const kill = async (): Promise<void> => {
    const s = server
    server = undefined
    if (s === undefined) return
    for (const c of sockets) c.destroy()
    await new Promise((resolve) => s.close(resolve))
  }
  await start()
  t.teardown(kill)
  return { address: `127.0.0.1:${port}`, requests: () => requests, kill, start }
}

declare namespace Tap { type Test = typeof t }

async function endpointRow (f: FerryProcess, upstream: string, address: string): Promise<any> {
  const s = await adminStatus(f)
  return s.upstreams.find((u: any) => u.name === upstream)?.endpoints.find((e: any) => e.address === address)
}

t.test('a flapping HTTP backend is ejected by its health checks and restored, while traffic flows', async (t) => {
  const a = await flappingBackend(t, 'a')
  const b = await flappingBackend(t, 'b')
  const hc = { intervalMs: 200, timeoutMs: 150, healthyThreshold: 2, unhealthyThreshold: 2, http: { path: '/healthz' } }
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [a.address, b.address], healthCheck: hc } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  await waitFor('both endpoints pass their first check', async () => (await endpointRow(f, 'api', a.address))?.check === 'up' && (await endpointRow(f, 'api', b.address))?.check === 'up', 5000)
  let running = true
  t.teardown(() => { running = false }) // a failed wait must not leave the loops running
  const failed: string[] = []
  let ok = 0
  const loops = Array.from({ length: 4 }, async () => {
    while (running) {
      const r = await fetch(f.url).catch((err: Error) => err)
      if (r instanceof Error) failed.push(r.message)
      else if (r.status !== 200) failed.push(`${r.status} ${await r.text()}`)
      else { await r.text(); ok++ }
    }
  })
  const ejectMs: number[] = []
  const restoreMs: number[] = []
  for (let round = 0; round < 2; round++) {
    await waitFor('b serves', () => b.requests() > 10 * (round + 1))
    const killed = Date.now()
    await b.kill()
    await waitFor('b checked down', async () => (await endpointRow(f, 'api', b.address))?.check === 'down', 5000, 10)
    ejectMs.push(Date.now() - killed)
    const before = b.requests()
    const restarted = Date.now()
    await b.start()
    await waitFor('b checked up again', async () => (await endpointRow(f, 'api', b.address))?.check === 'up', 5000, 10)
    restoreMs.push(Date.now() - restarted)
    await waitFor('b takes requests again', () => b.requests() > before + 5, 5000)
  }
  running = false
  await Promise.all(loops)
  // bound: unhealthyThreshold 2 checks at intervalMs 200 → ≤ 3 intervals + timeoutMs, with generous slack.
  t.ok(ejectMs.every((ms) => ms <= 3 * 200 + 150 + 1500), `ejected within 3 intervals + timeout (+1.5 s slack): ${ejectMs.join(', ')} ms`)
  t.ok(restoreMs.every((ms) => ms <= 3 * 200 + 1500), `restored within 3 intervals (+1.5 s slack): ${restoreMs.join(', ')} ms`)
  t.comment(`measured: time to eject (kill → health check down) = ${ejectMs.join(', ')} ms; time to restore (restart → up) = ${restoreMs.join(', ')} ms (intervalMs 200, thresholds 2/2)`)
  // GETs that met the killed backend's reset are retried on the other endpoint (retry.idempotent).
  t.comment(`requests: ${ok} ok, ${failed.length} failed over two kills`)
  t.ok(failed.length <= 4 * 2, `at most the requests in flight on the killed process failed: ${failed.length} of ${ok + failed.length} (${failed.slice(0, 3).join('; ')})`)
  t.ok(await metric(f, `ferry_upstream_health_checks_total{upstream="api",endpoint="${b.address}",result="failed"}`) >= 4, 'failed checks are counted')
  t.equal(await metric(f, `ferry_upstream_endpoint_checked_up{upstream="api",endpoint="${b.address}"}`), 1, 'ferry_upstream_endpoint_checked_up is 1 again')
})

t.test('an HTTP upstream\'s WebSocket upgrades use its health checks: each endpoint is probed once per interval, and an endpoint checked down gets no sessions', async (t) => {
  const backends = await Promise.all(['a', 'b'].map(async (name) => {
    const b = { name, port: 0, probes: 0, healthy: true, sessions: 0 }
    const server = createServer((req, res) => {
      if (req.url === '/healthz') { b.probes++; res.statusCode = b.healthy ? 200 : 503; res.end(); return }
      res.end(name)
    })
    const wss = new WebSocketServer({ noServer: true })
    server.on('upgrade', (req, socket, head) => { wss.handleUpgrade(req, socket, head, (ws) => { b.sessions++; ws.send(name) }) })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    b.port = (server.address() as { port: number }).port
    t.teardown(async () => {
      for (const c of wss.clients) c.terminate()
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    })
    return b
  }))
  const [a, b] = backends as [typeof backends[0], typeof backends[0]]
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`], healthCheck: { intervalMs: 100, timeoutMs: 80, healthyThreshold: 1, unhealthyThreshold: 1, http: { path: '/healthz' } } } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  await waitFor('both endpoints checked up', async () => (await endpointRow(f, 'api', `127.0.0.1:${a.port}`))?.check === 'up' && (await endpointRow(f, 'api', `127.0.0.1:${b.port}`))?.check === 'up', 5000)
  const before = backends.map((x) => x.probes)
  await sleep(2000)
  const probes = backends.map((x, i) => x.probes - before[i]!)
  // One checker: 2 s / 100 ms ≈ 20 probes per endpoint; the HTTP upstream and its WebSocket twin each
  // probing would make ≈ 40.
  t.ok(probes.every((n) => n >= 5 && n <= 26), `probes per endpoint in 2 s at intervalMs 100: ${probes.join(', ')} (one checker: ≈ 20; two: ≈ 40)`)

  a.healthy = false
  await waitFor('a checked down', async () => (await endpointRow(f, 'api', `127.0.0.1:${a.port}`))?.check === 'down', 5000)
  const greetings: string[] = []
  for (let i = 0; i < 6; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${f.httpPort}/chat`)
    greetings.push(await new Promise<string>((resolve, reject) => {
      ws.once('message', (d) => { resolve(d.toString()); ws.close() })
      ws.once('error', reject)
    }))
  }
  t.same(greetings, ['b', 'b', 'b', 'b', 'b', 'b'], 'every WebSocket session went to b while a is checked down')
  t.equal(a.sessions, 0, 'a got no session')
})

t.test('whenAllUnhealthy: fail refuses at once with FERRY_ERR_NO_HEALTHY_ENDPOINT; panic keeps serving', async (t) => {
  let sick = false
  const server = createServer((req, res) => {
    if (req.url === '/healthz') { res.statusCode = sick ? 503 : 200; res.end(); return }
    res.end('served')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  const addr = `127.0.0.1:${(server.address() as { port: number }).port}`
  const hc = { intervalMs: 100, timeoutMs: 100, healthyThreshold: 1, unhealthyThreshold: 1, http: { path: '/healthz' } }
  const f = await startFerry(t, {
    upstreams: {
      strict: { protocol: 'http', endpoints: [addr], healthCheck: hc, whenAllUnhealthy: 'fail' },
      lenient: { protocol: 'http', endpoints: [addr], healthCheck: hc },
    },
    routes: [{ match: { path: '/strict' }, upstream: 'strict' }, { match: { path: '/lenient' }, upstream: 'lenient' }],
    logging: { level: 'info', accessLog: false },
  })
  await waitFor('checked up', async () => (await endpointRow(f, 'strict', addr))?.check === 'up', 5000)
  t.equal((await fetch(`${f.url}/strict`)).status, 200, 'healthy: served')
  sick = true
  await waitFor('checked down', async () => (await endpointRow(f, 'strict', addr))?.check === 'down' && (await endpointRow(f, 'lenient', addr))?.check === 'down', 5000)
  const r = await fetch(`${f.url}/strict`)
  const body = await r.json() as { error: { code: string } }
  t.equal(r.status, 503, 'fail: 503')
  t.equal(body.error.code, 'FERRY_ERR_NO_HEALTHY_ENDPOINT', 'with the new error code')
  t.ok(r.headers.get('retry-after') !== null, 'and Retry-After')
  t.equal((await fetch(`${f.url}/lenient`)).status, 200, 'panic (the default): the unhealthy endpoint still serves')
  t.equal(await metric(f, 'ferry_upstream_no_healthy_endpoint_total{upstream="strict"}'), 1, 'counted')
  sick = false
  await waitFor('strict serves again', async () => (await fetch(`${f.url}/strict`)).status === 200, 5000)
  t.pass('back once the check passes')
})

t.test('mux: a backend that stops answering PING is taken out by the health check long before the link is declared dead', async (t) => {
  const silent = await startRawMuxBackend(t, () => {}, {}, { answerPings: false })
  const good = await startMuxBackend(t, (s) => { s.on('message', (d, bin) => { s.send(d, { binary: bin }) }) })
  const f = await startFerry(t, {
    upstreams: {
      chat: {
        protocol: 'mux',
        endpoints: [`127.0.0.1:${silent.port}`, `127.0.0.1:${good.port}`],
        pool: { links: 1 },
        // The link's own PING timer (15 s, dead after 2 missed) would take 30 s; the check takes ~0.5 s.
        healthCheck: { intervalMs: 150, timeoutMs: 100, unhealthyThreshold: 2 },
        whenAllUnhealthy: 'fail',
      },
    },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
  })
  const started = Date.now()
  await waitFor('silent checked down', async () => (await endpointRow(f, 'chat', `127.0.0.1:${silent.port}`))?.check === 'down', 5000, 10)
  t.comment(`measured: unanswered PINGs → down in ${Date.now() - started} ms from start (intervalMs 150, timeoutMs 100, threshold 2)`)
  const row = await endpointRow(f, 'chat', `127.0.0.1:${silent.port}`)
  t.equal(row.links[0].state, 'ready', 'its link is still "ready" by the link\'s own PING timer')
  await waitFor('good checked up', async () => (await endpointRow(f, 'chat', `127.0.0.1:${good.port}`))?.check === 'up', 5000)
  const clients = await Promise.all(Array.from({ length: 6 }, async () => await connect(`ws://127.0.0.1:${f.httpPort}/chat`)))
  await waitFor('sessions on the good backend', () => good.sessions.size === 6, 5000)
  t.equal(silent.accepted(), 1, 'the silent backend got no sessions (and still just its one link)')
  for (const c of clients) c.ws.close()
  await good.close()
  await waitFor('good checked down', async () => (await endpointRow(f, 'chat', `127.0.0.1:${good.port}`))?.check !== 'up', 5000)
  const refused = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/chat`)
  t.equal(refused.status, 503, `no healthy endpoint under whenAllUnhealthy: fail → 503 at once (${refused.body})`)
  t.match(refused.body, /FERRY_ERR_NO_HEALTHY_ENDPOINT/, 'naming the code')
})

t.test('tcp: a connect check keeps a dead endpoint out before any client connection tries it', async (t) => {
  const { createServer: createNet } = await import('node:net')
  const echo = createNet((s) => { s.pipe(s) })
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise((resolve) => echo.close(resolve)) })
  const live = `127.0.0.1:${(echo.address() as { port: number }).port}`
  const dead = `127.0.0.1:${await deadPort()}`
  const f = await startFerry(t, {
    upstreams: { db: { protocol: 'tcp', endpoints: [dead, live], healthCheck: { intervalMs: 200, timeoutMs: 200, unhealthyThreshold: 1 } } },
    listen: { tcp: [{ name: 'db', host: '127.0.0.1', port: 0, upstream: 'db' }] },
  })
  await waitFor('checks settled', async () => (await endpointRow(f, 'db', dead))?.check === 'down' && (await endpointRow(f, 'db', live))?.check === 'up', 5000)
  const st = await adminStatus(f)
  const port = st.listeners.tcp.find((l: any) => l.name === 'db').port
  const { connect: dial } = await import('node:net')
  for (let i = 0; i < 6; i++) {
    const got = await new Promise<string>((resolve, reject) => {
      const s = dial(port, '127.0.0.1', () => { s.end('ping') })
      let data = ''
      s.on('data', (d) => { data += d.toString() })
      s.on('end', () => { resolve(data) })
      s.on('error', reject)
    })
    t.equal(got, 'ping', `connection ${i + 1} echoed by the live endpoint`)
  }
  t.equal(await metric(f, `ferry_tcp_connect_failures_total{upstream="db",endpoint="${dead}",code="FERRY_ERR_UPSTREAM_CONNECT"}`), 0, 'no client connection was tried on the dead endpoint')
})
