import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect as netConnect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { stringify } from 'yaml'
import type { Session } from '../src/backend/index.js'
import { FerryClient } from '../src/client/index.js'
import { deadPort, startBackend, startRawBackend } from './helpers/backend.js'
import { startMuxBackend } from './helpers/mux.js'
import { adminRequest, sseClient } from './helpers/admin.js'
import { adminStatus, logged, metric, ROOT, runCli, startFerry, waitFor, writeConfig, type FerryProcess } from './helpers/ferry.js'

// gateway.workers above 1: a control plane and worker processes sharing the ports (docs/workers.md).
// Every test runs real processes: `ferry start`, its workers (cluster), real backends and clients.

interface Worker { index: number, pid: number | null, state: string, restarts: number, configVersion: string, lastExit: { reason: string } | null, clients: { httpRequestsServed: number, httpRequestsInFlight: number, webSocketSessions: number } | null }

async function workers (f: FerryProcess): Promise<Worker[]> {
  return (await adminStatus(f)).workers as Worker[]
}

async function allRunning (f: FerryProcess, n: number): Promise<Worker[]> {
  return await waitFor(`${n} workers running`, async () => {
    const ws = await workers(f)
    return ws.length === n && ws.every((w) => w.state === 'running' && w.pid !== null) ? ws : undefined
  }, 15_000, 100)
}

/** GET with a new connection each time (so the kernel spreads them over the workers' sockets). */
async function get (url: string): Promise<number> {
  const r = await fetch(url, { headers: { connection: 'close' } })
  await r.arrayBuffer()
  return r.status
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Kills what is left of a pod's workers on teardown (the primary's teardown kills it; its workers follow by themselves within seconds). */
function reapWorkers (t: Test, f: FerryProcess): void {
  const seen = new Set<number>()
  const timer = setInterval(() => { void workers(f).then((ws) => { for (const w of ws) if (w.pid !== null) seen.add(w.pid) }, () => {}) }, 200)
  t.teardown(() => {
    clearInterval(timer)
    for (const pid of seen) if (alive(pid)) process.kill(pid, 'SIGKILL')
  })
}

/** A pod of 2 workers with `extra` config and a route /up to a backend that reads the whole body, then answers with its length; `reached`: the requests it got. */
async function uploadPod (t: Test, extra: Record<string, unknown>): Promise<{ f: FerryProcess, reached: () => number }> {
  let reached = 0
  const up = await startBackend(t, (req, res) => {
    reached++
    let n = 0
    req.on('data', (d: Buffer) => { n += d.length })
    req.on('end', () => res.end(String(n)))
  })
  const cfg = await podConfig(t, extra)
  ;(cfg.upstreams as Record<string, unknown>).up = { protocol: 'http', endpoints: [up.address] }
  ;(cfg.routes as unknown[]).unshift({ match: { path: '/up' }, upstream: 'up' })
  const f = await startFerry(t, cfg, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  return { f, reached: () => reached }
}

/** A POST to /up of a `size`-byte body, `first` bytes of it sent now and the rest by `rest()`; its answer's status line. */
function upload (port: number, size: number, first: number): { sock: Socket, status: Promise<string>, rest: () => void } {
  const sock = netConnect(port, '127.0.0.1')
  let got = ''
  const status = new Promise<string>((resolve) => {
    sock.on('data', (d) => { got += String(d); if (got.includes('\r\n\r\n')) resolve(got.slice(0, got.indexOf('\r\n'))) })
    sock.on('close', () => resolve(got === '' ? 'closed' : got.slice(0, got.indexOf('\r\n'))))
    sock.on('error', () => {})
  })
  sock.write(`POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: ${size}\r\n\r\n`)
  sock.write(Buffer.alloc(first, 1))
  return { sock, status, rest: () => { if (!sock.destroyed) sock.write(Buffer.alloc(size - first, 2)) } }
}

async function wsEcho (url: string): Promise<WebSocket> {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject); ws.once('unexpected-response', (_q, res) => reject(new Error(`upgrade answered ${String(res.statusCode)}`))) })
  const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))))
  ws.send('ping')
  if (await echoed !== 'ping') throw new Error('no echo')
  return ws
}

async function tcpEcho (port: number): Promise<string> {
  return await new Promise<string>((resolve, reject) => {
    const s = netConnect(port, '127.0.0.1', () => { s.end('hello') })
    let got = ''
    s.setEncoding('utf8').on('data', (d: string) => { got += d })
    s.on('end', () => resolve(got))
    s.on('error', reject)
  })
}

async function podConfig (t: Test, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const http = await startBackend(t, (req, res) => res.end(`ok ${req.url ?? ''}`))
  const tcp = await startRawBackend(t, (s) => { s.pipe(s) })
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  wss.on('connection', (ws) => { ws.on('message', (d, binary) => ws.send(d, { binary })) })
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise<void>((resolve) => wss.close(() => resolve())) })
  return {
    gateway: { workers: 2, workerHangMs: 3000 },
    listen: { tcp: [{ name: 'echo', host: '127.0.0.1', port: 0, upstream: 'echo' }] },
    upstreams: {
      api: { protocol: 'http', endpoints: [http.address] },
      echo: { protocol: 'tcp', endpoints: [tcp.address] },
      chat: { protocol: 'ws', endpoints: [`127.0.0.1:${(wss.address() as { port: number }).port}`] },
    },
    routes: [{ match: { path: '/ws' }, upstream: 'chat' }, { match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
    ...extra,
  }
}

t.test('a pod of 2 workers serves HTTP, WebSocket and TCP on shared ports; /status and /metrics show the pod and each worker', async (t) => {
  const f = await startFerry(t, await podConfig(t), { timeoutMs: 60_000 })
  reapWorkers(t, f)
  const ws0 = await allRunning(f, 2)
  t.not(ws0[0]!.pid, ws0[1]!.pid, 'two worker processes')
  t.ok(ws0.every((w) => w.pid !== f.pid), 'neither is the control plane')
  const st = await adminStatus(f)
  t.equal(st.pid, f.pid, '/status is the control plane\'s')
  t.match(st.pod, { workers: 2, workerHangMs: 3000 })

  const statuses = []
  for (let i = 0; i < 60; i++) statuses.push(await get(`${f.url}/x${i}`))
  t.same([...new Set(statuses)], [200], '60 requests on new connections: every one answered 200')
  const served = await waitFor('every request counted in the workers\' heartbeats', async () => {
    const ws = await workers(f)
    const n = ws.map((w) => w.clients?.httpRequestsServed ?? 0)
    return n[0]! + n[1]! === 60 ? n : undefined
  }, 5000, 100)
  t.ok(served.every((n) => n > 0), `both workers took requests (${served.join(' + ')})`)
  t.equal((await adminStatus(f)).clients.httpRequestsServed, 60, 'the pod\'s count is their sum')
  t.equal(await metric(f, 'ferry_http_requests_total{route="*/",upstream="api",status="200"}'), 60, '/metrics sums the workers\' registries')
  t.equal(await metric(f, 'ferry_workers{state="running"}'), 2)

  const sessions = []
  for (let i = 0; i < 10; i++) sessions.push(await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`))
  await waitFor('10 sessions in the pod\'s status', async () => (await adminStatus(f)).clients.webSocketSessions === 10, 5000, 100)
  t.pass('10 WebSocket sessions echo through the pod, counted in /status')
  for (const s of sessions) s.close()

  const port = (await adminStatus(f)).listeners.tcp[0].port as number
  for (let i = 0; i < 20; i++) t.equal(await tcpEcho(port), 'hello')
  t.equal(await metric(f, 'ferry_tcp_connections_total{listener="echo"}'), 20, '20 TCP connections over the shared listener')
  // A terminal's Ctrl-C reaches every process of the group: the workers leave signals to the control plane.
  for (const w of ws0) process.kill(w.pid!, 'SIGINT')
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same((await workers(f)).map((w) => w.pid), ws0.map((w) => w.pid), 'SIGINT to the workers: both still serving, not restarted')
  t.equal(await get(`${f.url}/after-sigint`), 200)
  t.equal(await f.stop(), 0)
})

t.test('a pod\'s /status, /metrics and console show the pod: session counts, configured admission and limits, console rates, endpoint states not summed, an admin drain at once', async (t) => {
  const cfg = await podConfig(t, { admin: { console: { intervalMs: 250 } } })
  const [api, chat] = ['api', 'chat'].map((u) => (cfg.upstreams as Record<string, { endpoints: string[] }>)[u]!.endpoints[0]!)
  const f = await startFerry(t, cfg, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const sse = await sseClient(f, undefined)
  t.teardown(() => { sse.close() })

  // Requests on new connections and messages on 6 sessions, every 50 ms, until a snapshot shows both rates.
  const sessions: WebSocket[] = []
  for (let i = 0; i < 6; i++) sessions.push(await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`))
  let sending = true
  const pump = (async () => {
    while (sending) {
      for (const s of sessions) s.send('m')
      await get(`${f.url}/load`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  const busy = await sse.waitFor((e) => e.event === 'snapshot' && e.data.rates !== null && e.data.rates.requestsPerSec > 0 && e.data.rates.messagesPerSec > 0, 'a console snapshot with both rates above 0', 10_000)
  sending = false
  await pump
  t.ok(busy.data.rates.requestsPerSec > 0 && busy.data.rates.messagesPerSec > 0, `the console's rates are the pod's (${busy.data.rates.requestsPerSec} req/s, ${busy.data.rates.messagesPerSec} msg/s; each worker counts them)`)

  const st = await waitFor('the 6 sessions in every worker\'s heartbeat', async () => { const s = await adminStatus(f); return s.clients.webSocketSessions === 6 ? s : undefined }, 5000, 100)
  const spread = (st.workers as Worker[]).map((w) => w.clients?.webSocketSessions ?? 0).join(' + ')
  t.same(st.websocket, { sessions: 6, byRoute: { '*/ws': 6 }, byMode: { ws: 6, mux: 0 } }, `/status websocket counts the pod's sessions (${spread} on the workers), as clients.webSocketSessions does`)
  t.equal(st.limits.wsSessions, 6, '/status limits.wsSessions: the pod\'s 6')
  const chatRow = (s: any): { sessions: number, state: string, drain?: { sessionsAtStart: number } } => s.upstreams.find((u: { name: string }) => u.name === 'chat').endpoints.find((e: { address: string }) => e.address === chat)
  t.equal(chatRow(st).sessions, 6, '/status upstreams: the sessions\' endpoint carries the pod\'s 6 (the console\'s endpoint row)')
  t.equal(st.limits.maxBufferedBodyBytes, 64 * 1024 * 1024, '/status limits show the configured limits.maxBufferedBodyBytes (64 MiB), not a worker\'s share')
  t.match(st.admission, { handshakesPerSec: 2000, burst: 4000 }, '/status admission shows the configured rate and burst (the defaults 2000 and 4000)')
  t.same((st.workers as Array<{ admission: { handshakesPerSec: number, burst: number } }>).map((w) => [w.admission.handshakesPerSec, w.admission.burst]), [[1000, 2000], [1000, 2000]], 'and each worker its even share of them')

  // The sessions' endpoint drained by the operator: draining (1) while the workers still hold sessions on it, drained (2) once none does.
  const chatState = `ferry_upstream_endpoint_state{upstream="chat",endpoint="${chat}"}`
  t.equal((await adminRequest(f, `/upstreams/chat/endpoints/${chat}/drain`, { method: 'POST' })).status, 202, 'POST .../drain of the sessions\' endpoint: 202')
  t.equal(await metric(f, chatState), 1, `ferry_upstream_endpoint_state while its sessions move off: 1 (draining), not a sum (${spread} sessions on the workers)`)
  t.match(chatRow(await adminStatus(f)), { state: 'draining', admin: 'drain', drain: { state: 'draining', sessionsAtStart: 6 } }, '/status: the endpoint draining, the pod\'s 6 sessions at its start')
  for (const s of sessions) s.terminate()
  await waitFor('the sessions\' endpoint drained in every worker', async () => await metric(f, chatState) === 2, 5000, 100)
  t.pass('ferry_upstream_endpoint_state once no worker holds a session on it: 2 (drained)')
  t.equal((await adminRequest(f, `/upstreams/chat/endpoints/${chat}/ready`, { method: 'POST' })).status, 200, 'POST .../ready: 200')
  t.equal(await metric(f, chatState), 0, 'and 0 (active) again')

  // An admin drain: /status shows it as soon as the POST answered; the endpoint gauges are states and flags, not sums.
  const row = async (): Promise<{ state: string, admin: string }> => (await adminStatus(f)).upstreams.find((u: { name: string }) => u.name === 'api').endpoints.find((e: { address: string }) => e.address === api)
  const drained = await adminRequest(f, `/upstreams/api/endpoints/${api}/drain`, { method: 'POST' })
  t.equal(drained.status, 202, 'POST .../drain: 202')
  t.match(await row(), { state: 'drained', admin: 'drain' }, '/status right after the answer: drained by the operator')
  t.equal(await metric(f, `ferry_upstream_endpoint_state{upstream="api",endpoint="${api}"}`), 2, 'ferry_upstream_endpoint_state: 2 (drained), not 2 workers × 2')
  t.equal(await metric(f, `ferry_upstream_endpoint_up{upstream="api",endpoint="${api}"}`), 1, 'ferry_upstream_endpoint_up: 1, not 2')
  t.equal(await metric(f, 'ferry_upstream_endpoints{upstream="api",state="held"}'), 1, 'ferry_upstream_endpoints{state="held"}: the pod\'s 1 endpoint')
  t.equal((await adminRequest(f, `/upstreams/api/endpoints/${api}/ready`, { method: 'POST' })).status, 200, 'POST .../ready: 200')
  t.match(await row(), { state: 'active', admin: 'ready' }, '/status right after: active and ready')
  t.equal(await metric(f, `ferry_upstream_endpoint_state{upstream="api",endpoint="${api}"}`), 0, 'ferry_upstream_endpoint_state: 0 (active)')
  t.equal(await metric(f, 'ferry_drain_phase'), 0, 'ferry_drain_phase: 0 (running), the pod\'s phase')
  sse.close()
  t.equal(await f.stop(), 0)
})

t.test('workers stop by themselves when their control plane is killed', async (t) => {
  const f = await startFerry(t, await podConfig(t), { timeoutMs: 60_000 })
  reapWorkers(t, f)
  const ws = await allRunning(f, 2)
  f.child.kill('SIGKILL')
  await waitFor('both workers gone', () => ws.every((w) => !alive(w.pid!)), 10_000, 50)
  t.pass('no worker outlived the control plane')
})

t.test('a crashed worker is restarted and counted; the other keeps its sessions and the pod keeps serving', async (t) => {
  const f = await startFerry(t, await podConfig(t), { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const sessions = []
  for (let i = 0; i < 8; i++) sessions.push(await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`))
  await waitFor('sessions counted', async () => (await workers(f)).every((w) => w.clients !== null) && (await adminStatus(f)).clients.webSocketSessions === 8, 5000, 100)
  const before = await workers(f)
  const victim = before.find((w) => (w.clients?.webSocketSessions ?? 0) > 0) ?? before[0]!
  const other = before.find((w) => w !== victim)!
  const kept = other.clients?.webSocketSessions ?? 0
  const closed: number[] = []
  for (const s of sessions) s.on('close', (code) => closed.push(code))
  process.kill(victim.pid!, 'SIGKILL')
  // Connections queued at the dying process's socket are reset with it (docs/workers.md); once it is
  // gone, and while it comes back, the kernel sends every new one to the live socket.
  await waitFor('the killed worker gone', () => !alive(victim.pid!), 5000, 5)
  for (let i = 0; i < 20; i++) t.equal(await get(`${f.url}/during${i}`), 200)
  const after = await waitFor('the worker back, with a new process', async () => {
    const ws = await workers(f)
    const w = ws[victim.index]!
    return w.state === 'running' && w.pid !== null && w.pid !== victim.pid ? ws : undefined
  }, 15_000, 100)
  t.equal(after[victim.index]!.restarts, 1)
  t.equal(after[victim.index]!.lastExit?.reason, 'crash')
  t.equal(after[other.index]!.pid, other.pid, 'the other worker was not touched')
  t.equal(await metric(f, 'ferry_worker_restarts_total{reason="crash"}'), 1)
  t.equal(closed.length, victim.clients?.webSocketSessions ?? 0, 'only the crashed worker\'s sessions closed')
  await waitFor('the other worker still holds its sessions', async () => (await adminStatus(f)).clients.webSocketSessions === kept, 5000, 100)
  t.pass(`${kept} sessions on the other worker stayed open`)
  for (const s of sessions) s.terminate()
  t.equal(await f.stop(), 0)
})

t.test('the ferry/client sessions of a crashed worker resume through the pod: the workers share one resume key', async (t) => {
  const N = 3000
  const sessions: Session[] = []
  const got = new Map<string, number[]>()
  let resumes = 0
  const backends = []
  for (let i = 0; i < 2; i++) {
    backends.push(await startMuxBackend(t, (s) => {
      sessions.push(s)
      const seq: number[] = []
      got.set(s.id, seq)
      s.on('message', (d) => { const text = d.toString(); if (text.startsWith('c:')) seq.push(Number(text.slice(2))) })
      s.on('resume', () => { resumes++ })
    }, { resume: { windowMs: 30_000 } }))
  }
  // No resume.secret anywhere: the control plane makes one random key for all of its workers.
  const f = await startFerry(t, {
    gateway: { workers: 2, workerHangMs: 3000 },
    upstreams: { chat: { protocol: 'mux', endpoints: backends.map((b) => `127.0.0.1:${b.port}`), pool: { links: 1 }, reconnect: { minDelayMs: 50, maxDelayMs: 200 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    logging: { level: 'info', accessLog: false },
  }, { env: { FERRY_RESUME_SECRET: '' }, timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  t.equal((await adminStatus(f)).resume.secret, 'random')
  await waitFor('every worker linked to every backend', () => backends.every((b) => b.links().length === 2), 10_000, 50)
  const c = new FerryClient(`ws://127.0.0.1:${f.httpPort}/chat`, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 20, maxDelayMs: 200 } })
  const events: string[] = []
  for (const e of ['open', 'reset', 'close'] as const) c.on(e, (info: unknown) => { events.push(`${e}:${JSON.stringify(info)}`) })
  c.on('error', () => {})
  t.teardown(() => { c.close() })
  await waitFor('the session open and resumable', () => c.state === 'open' && c.resumable, 10_000, 20)
  const home = await waitFor('the worker holding it', async () => (await workers(f)).find((w) => w.clients?.webSocketSessions === 1), 5000, 100)
  let k = 0
  const sending = new Promise<void>((resolve) => {
    const tick = (): void => {
      for (let i = 0; i < 30 && k < N; i++) c.send(`c:${++k}`)
      if (k >= N) resolve(); else setTimeout(tick, 5)
    }
    tick()
  })
  await waitFor('a third sent', () => k >= N / 3, 10_000, 5)
  process.kill(home.pid!, 'SIGKILL')
  await sending
  const session = sessions[0]!
  await waitFor('every message at the application', () => (got.get(session.id)?.length ?? 0) >= N, 30_000, 50)
  await new Promise((resolve) => setTimeout(resolve, 200))
  const seq = got.get(session.id)!
  t.equal(seq.length, N, 'no message lost or duplicated')
  t.ok(seq.every((v, i) => v === i + 1), 'in order')
  t.equal(sessions.length, 1, 'the application saw one session')
  t.ok(resumes >= 1, 'which resumed')
  t.ok(events.some((e) => e.startsWith('open:{"resumed":true')), 'the client was told it resumed')
  t.notOk(events.some((e) => e.startsWith('reset')), 'never a fresh session')
  c.close()
  t.equal(await f.stop(), 0)
})

t.test('a hung worker (event loop stopped) is killed after gateway.workerHangMs and restarted', async (t) => {
  const f = await startFerry(t, await podConfig(t), { timeoutMs: 60_000 })
  reapWorkers(t, f)
  const before = await allRunning(f, 2)
  const victim = before[1]!
  process.kill(victim.pid!, 'SIGSTOP')
  t.teardown(() => { if (alive(victim.pid!)) process.kill(victim.pid!, 'SIGKILL') })
  const after = await waitFor('the hung worker replaced', async () => {
    const w = (await workers(f))[1]!
    return w.state === 'running' && w.pid !== victim.pid ? w : undefined
  }, 15_000, 100)
  t.equal(after.lastExit?.reason, 'hung')
  t.equal(await metric(f, 'ferry_worker_restarts_total{reason="hung"}'), 1)
  t.notOk(alive(victim.pid!), 'the stopped process was killed')
  t.ok(await logged(f, (l) => l.msg === 'worker stopped answering; killing it' && l.worker === 1), 'logged')
  for (let i = 0; i < 10; i++) t.equal(await get(`${f.url}/after${i}`), 200)
  t.equal(await f.stop(), 0)
})

t.test('SIGTERM drains every worker and the pod exits 0, also while a worker waits to restart', async (t) => {
  const f = await startFerry(t, await podConfig(t), { timeoutMs: 60_000 })
  const ws = await allRunning(f, 2)
  const session = await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`)
  const closedWith = new Promise<number>((resolve) => session.once('close', (code) => resolve(code)))
  process.kill(ws[0]!.pid!, 'SIGKILL')
  await waitFor('worker 0 restarting', async () => (await workers(f))[0]!.state !== 'running', 5000, 20)
  const code = await f.stop()
  t.equal(code, 0, 'the control plane exited 0')
  for (const w of ws) t.notOk(alive(w.pid!), `worker ${w.index} (${String(w.pid)}) is gone`)
  t.notOk(f.logs.some((l) => l.msg === 'worker restarted and serving'), 'nothing was restarted during the drain')
  t.ok([1001, 1012, 1006].includes(await closedWith), 'the open session was closed by the drain (or went with the killed worker)')
})

t.test('POST /drain answers with the sessions the pod started its drain with, before any worker has beaten since', async (t) => {
  const f = await startFerry(t, await podConfig(t, { drain: { acceptGraceMs: 3000, spreadMs: 0, maxMigrationsPerSec: 1_000_000, deadlineMs: 5000 } }), { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const sessions = []
  for (let i = 0; i < 3; i++) sessions.push(await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`))
  await waitFor('the 3 sessions counted', async () => (await adminStatus(f)).clients.webSocketSessions === 3, 5000, 50)
  // The answer comes at once: the workers' last heartbeats still say idle.
  const r = await fetch(`${f.adminUrl}/drain`, { method: 'POST' })
  t.equal(r.status, 202)
  const body = await r.json() as { phase: string, sessionsAtStart: number, remaining: { sessions: number } }
  t.match(body, { phase: 'grace', sessionsAtStart: 3, remaining: { sessions: 3 } }, `grace, started with the 3 sessions (said ${body.sessionsAtStart}, ${body.remaining.sessions} remaining)`)
  t.equal(await f.stop(), 0)
})

t.test('a reload reaches every worker; what a pod cannot change in place is refused and it keeps serving', async (t) => {
  const cfg = await podConfig(t)
  const f = await startFerry(t, cfg, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const file = f.child.spawnargs.at(-1)!
  const running = readFileSync(file, 'utf8')
  const other = await startBackend(t, (_req, res) => res.end('v2'))
  const next = { ...(cfg as object), upstreams: { ...(cfg.upstreams as object), v2: { protocol: 'http', endpoints: [other.address] } }, routes: [{ match: { path: '/v2' }, upstream: 'v2' }, ...(cfg.routes as object[])] } as Record<string, unknown>
  writeFileSync(file, stringify({ ...next, listen: { ...(next.listen as object), http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: f.adminPort } }, logging: { level: 'info', accessLog: false, pretty: false }, drain: { acceptGraceMs: 0, spreadMs: 0, maxMigrationsPerSec: 1_000_000, deadlineMs: 5000 } }))
  t.not(readFileSync(file, 'utf8'), running)
  const r = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  const body = await r.json() as { result: string, version: string, added: string[] }
  t.equal(r.status, 200, JSON.stringify(body))
  t.equal(body.result, 'ok')
  t.same(body.added, ['v2'])
  const ws = await workers(f)
  t.ok(ws.every((w) => w.configVersion === body.version), 'every worker runs the new version')
  for (let i = 0; i < 20; i++) {
    const res = await fetch(`${f.url}/v2`, { headers: { connection: 'close' } })
    t.equal(await res.text(), 'v2')
  }
  // An operator's endpoint drain reaches every worker: the only endpoint of v2 takes no new request from any of them.
  const addr = encodeURIComponent(other.address)
  const drained = await fetch(`${f.adminUrl}/upstreams/v2/endpoints/${addr}/drain`, { method: 'POST' })
  t.equal(drained.status, 202)
  t.match(await drained.json(), { result: 'draining', upstream: 'v2', endpoint: other.address })
  const during = []
  for (let i = 0; i < 20; i++) during.push(await get(`${f.url}/v2`))
  t.same([...new Set(during)], [503], 'no worker sends the endpoint a request')
  const ready = await fetch(`${f.adminUrl}/upstreams/v2/endpoints/${addr}/ready`, { method: 'POST' })
  t.equal(ready.status, 200)
  const back = []
  for (let i = 0; i < 20; i++) back.push(await get(`${f.url}/v2`))
  t.same([...new Set(back)], [200], 'ready again in every worker')
  const unknown = await fetch(`${f.adminUrl}/upstreams/nope/endpoints/${addr}/drain`, { method: 'POST' })
  t.equal(unknown.status, 404)
  // Moving the HTTP listener would need every worker to rebind at once: refused, nothing changes.
  const moved = await deadPort()
  writeFileSync(file, readFileSync(file, 'utf8').replace(/http:\n {4}host: 127\.0\.0\.1\n {4}port: 0/, `http:\n    host: 127.0.0.1\n    port: ${moved}`))
  const refused = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  const rb = await refused.json() as { result: string, errors: string[] }
  t.equal(refused.status, 400)
  t.equal(rb.result, 'refused')
  t.match(rb.errors.join('\n'), /listen\.http: a pod with gateway\.workers above 1 cannot move its HTTP listener/)
  t.equal(await get(`${f.url}/still`), 200, 'the pod keeps serving on its port')
  t.equal(await metric(f, 'ferry_config_reloads_total{result="refused"}'), 1)
  t.equal(await f.stop(), 0)
})

t.test('more workers than cores is logged; a worker that hangs during a reload is replaced on the new config', async (t) => {
  const cores = (await import('node:os')).availableParallelism()
  const cfg = await podConfig(t, { gateway: { workers: cores + 1, workerHangMs: 2000 } })
  const f = await startFerry(t, cfg, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  const before = await allRunning(f, cores + 1)
  t.ok(await logged(f, (l) => l.msg === 'gateway.workers is more than the cores this process may use: the workers share them' && l.cores === cores), 'said at start')
  const victim = before.at(-1)!
  process.kill(victim.pid!, 'SIGSTOP')
  t.teardown(() => { if (alive(victim.pid!)) process.kill(victim.pid!, 'SIGKILL') })
  const file = f.child.spawnargs.at(-1)!
  writeFileSync(file, readFileSync(file, 'utf8').replace('accessLog: false', 'accessLog: true'))
  const r = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  const body = await r.json() as { result: string, version: string }
  t.equal(body.result, 'ok', 'the reload is the pod\'s: the workers that answer take it')
  const after = await waitFor('the hung worker replaced', async () => {
    const ws = await workers(f)
    return ws.every((w) => w.state === 'running' && w.pid !== victim.pid) ? ws : undefined
  }, 15_000, 100)
  t.ok(after.every((w) => w.configVersion === body.version), 'every worker, the replaced one too, runs the new config')
  t.equal(after.at(-1)!.lastExit?.reason, 'hung')
  t.equal(await f.stop(), 0)
})

t.test('a second Ferry on a pod\'s HTTP port fails loudly, naming the port', async (t) => {
  const port = await deadPort()
  const cfg = await podConfig(t)
  const f = await startFerry(t, { ...cfg, listen: { ...(cfg.listen as object), http: { host: '127.0.0.1', port } } }, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const second = writeConfig({ ...cfg, listen: { http: { host: '127.0.0.1', port }, admin: { host: '127.0.0.1', port: 0 } }, logging: { level: 'info', pretty: false } })
  const pod = await runCli(['start', '--config', second])
  t.equal(pod.code, 1, 'a second pod does not start')
  t.match(pod.stderr, new RegExp(`FERRY_ERR_LISTEN: listen\\.http: cannot listen on 127\\.0\\.0\\.1:${port}: another Ferry holds it`))
  const single = writeConfig({ ...cfg, gateway: { workers: 1 }, listen: { http: { host: '127.0.0.1', port }, admin: { host: '127.0.0.1', port: 0 } }, logging: { level: 'info', pretty: false } })
  const one = await runCli(['start', '--config', single])
  t.equal(one.code, 1, 'a single-process Ferry does not start either')
  t.match(one.stderr, new RegExp(`FERRY_ERR_LISTEN: listen\\.http: cannot listen on 127\\.0\\.0\\.1:${port}`))
  t.equal(await get(`${f.url}/still`), 200, 'the first pod serves on')
  // A worker that cannot start stops the pod's start: here its TCP listener's port is the first pod's.
  const tcpPort = (await adminStatus(f)).listeners.tcp[0].port as number
  const third = writeConfig({ ...cfg, listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, tcp: [{ name: 'echo', host: '127.0.0.1', port: tcpPort, upstream: 'echo' }] }, logging: { level: 'info', pretty: false } })
  const failed = await runCli(['start', '--config', third])
  t.equal(failed.code, 1)
  t.match(failed.stderr, new RegExp(`ferry: FERRY_ERR_LISTEN: worker \\d: listen\\.tcp\\[0\\] \\(echo\\): cannot listen on 127\\.0\\.0\\.1:${tcpPort}`))
  t.equal(await f.stop(), 0)
})

t.test('pod-wide limits hold with 2 workers: limits.maxWebSocketSessions is the pod\'s, and its shares follow the load', async (t) => {
  const f = await startFerry(t, await podConfig(t, { limits: { maxWebSocketSessions: 4 } }), { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const open: WebSocket[] = []
  let refused = 0
  const shares = async (): Promise<number[]> => (await workers(f)).map((w) => (w as unknown as { budget: { maxWebSocketSessions: number } }).budget.maxWebSocketSessions)
  for (let i = 0; i < 6; i++) {
    // A refused upgrade is tried again after two heartbeats: by then the other worker's unused share has moved.
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        open.push(await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`))
        break
      } catch (err) {
        t.match((err as Error).message, /upgrade answered 503/)
        refused++
        await new Promise((resolve) => setTimeout(resolve, 1200))
      }
    }
    const s = await shares()
    t.ok(s.reduce((n, v) => n + Math.max(0, v), 0) <= 4, `the workers' shares never add up to more than the pod's 4 (${s.join(' + ')})`)
  }
  t.equal(open.length, 4, `exactly the pod's 4 sessions open, wherever the kernel put them (${refused} refusals)`)
  const held = await waitFor('the shares settled on the sessions', async () => {
    const ws = await workers(f)
    return ws.every((w) => w.clients?.webSocketSessions !== undefined) && ws.reduce((n, w) => n + (w.clients?.webSocketSessions ?? 0), 0) === 4 ? ws : undefined
  }, 5000, 100)
  t.same(await shares(), held.map((w) => w.clients!.webSocketSessions === 0 ? -1 : w.clients!.webSocketSessions), 'each worker holds the share it uses, no more')
  for (const s of open) s.terminate()
  await waitFor('shares back to even once the sessions are gone', async () => { const s = await shares(); return s[0] === 2 && s[1] === 2 }, 5000, 100)
  t.pass('2 + 2 again')
  t.equal(await f.stop(), 0)
})

t.test('per-IP limits are the pod\'s with 2 workers: maxWebSocketSessionsPerIp, maxRequestsInFlightPerIp and a TCP listener\'s maxConnectionsPerIp count one client over both, and a crashed worker\'s slots are freed', async (t) => {
  // /slow holds every request until `release` is called.
  let waiting: Array<() => void> = []
  let reached = 0
  const slow = await startBackend(t, (_req, res) => { reached++; waiting.push(() => res.end('slow')) })
  const cfg = await podConfig(t, { limits: { maxWebSocketSessionsPerIp: 3, maxRequestsInFlightPerIp: 2, retryAfterSec: 7 } })
  ;(cfg.upstreams as Record<string, unknown>).slow = { protocol: 'http', endpoints: [slow.address] }
  ;(cfg.routes as unknown[]).unshift({ match: { path: '/slow' }, upstream: 'slow' })
  ;((cfg.listen as { tcp: Array<Record<string, unknown>> }).tcp[0]!).maxConnectionsPerIp = 2
  const f = await startFerry(t, cfg, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const perIp = async (): Promise<{ http: { lent: number }, ws: { lent: number, clientIps: number } }> => ((await adminStatus(f)).pod as { perIp: { http: { lent: number }, ws: { lent: number, clientIps: number } } }).perIp
  /** Opens sessions (each its own connection, spread by the kernel) until one is refused; the refusal's status. */
  const openUntilRefused = async (open: WebSocket[]): Promise<string> => {
    for (let i = 0; i < 8; i++) {
      try { open.push(await wsEcho(`ws://127.0.0.1:${f.httpPort}/ws`)) } catch (err) { return (err as Error).message }
    }
    return 'never refused'
  }
  const open: WebSocket[] = []
  t.match(await openUntilRefused(open), /upgrade answered 429/, 'the next session is refused 429')
  t.equal(open.length, 3, 'exactly 3 sessions for 127.0.0.1 in the pod')
  for (let i = 0; i < 3; i++) t.match(await openUntilRefused([]), /upgrade answered 429/, 'and again: no worker takes a 4th')
  const spread = (await waitFor('sessions counted', async () => {
    const ws = await workers(f)
    return ws.reduce((n, w) => n + (w.clients?.webSocketSessions ?? 0), 0) === 3 ? ws : undefined
  }, 5000, 100)).map((w) => w.clients!.webSocketSessions)
  t.comment(`the kernel put the sessions ${spread.join(' + ')} over the workers`)
  t.same((await perIp()).ws, { lent: 3, clientIps: 1 }, '/status pod.perIp counts them')

  // A crashed worker's slots are freed with its connections.
  const before = await workers(f)
  const victim = before.find((w) => (w.clients?.webSocketSessions ?? 0) > 0)!
  process.kill(victim.pid!, 'SIGKILL')
  await waitFor('the killed worker gone', () => !alive(victim.pid!), 5000, 5)
  await waitFor('its slots freed', async () => (await perIp()).ws.lent === 3 - victim.clients!.webSocketSessions, 5000, 50)
  await allRunning(f, 2)
  const live = open.filter((s) => s.readyState === WebSocket.OPEN)
  t.equal(live.length, 3 - victim.clients!.webSocketSessions, 'the crashed worker\'s sessions closed')
  t.match(await openUntilRefused(live), /upgrade answered 429/)
  t.equal(live.length, 3, 'its freed slots were taken again, and no more')
  for (const s of [...open, ...live]) s.terminate()
  await waitFor('every session slot given back', async () => (await perIp()).ws.lent === 0, 5000, 50)
  t.same(await perIp(), { http: { lent: 0, clientIps: 0 }, ws: { lent: 0, clientIps: 0 } }, 'no entry left behind')

  // Six requests at once, each on its own connection: 2 in flight for the pod, the rest 429 at once.
  const statuses = Promise.all(Array.from({ length: 6 }, async () => {
    const r = await fetch(`http://127.0.0.1:${f.httpPort}/slow`, { headers: { connection: 'close' } })
    await r.arrayBuffer()
    return `${r.status} ${r.headers.get('retry-after') ?? ''}`.trim()
  }))
  await waitFor('two requests reached the backend', () => reached === 2, 5000, 20)
  await waitFor('the pod counts them', async () => (await perIp()).http.lent === 2, 5000, 50)
  const release = (): void => { for (const r of waiting) r(); waiting = [] }
  const refusedAll = await waitFor('the other four answered', async () => {
    const m = await metric(f, 'ferry_limit_refused_total{limit="http_in_flight_per_ip"}')
    return m === 4 ? m : undefined
  }, 5000, 50)
  t.equal(refusedAll, 4, 'ferry_limit_refused_total counts 4 per-IP refusals')
  release()
  const got = (await statuses).sort()
  t.same(got, ['200', '200', '429 7', '429 7', '429 7', '429 7'], 'two served, four refused with Retry-After')
  t.equal(reached, 2, 'no refused request reached the backend')
  await waitFor('request slots given back', async () => (await perIp()).http.lent === 0, 5000, 50)
  const again = Promise.all(Array.from({ length: 2 }, async () => {
    const r = await fetch(`http://127.0.0.1:${f.httpPort}/slow`, { headers: { connection: 'close' } })
    await r.arrayBuffer()
    return r.status
  }))
  await waitFor('both reached the backend', () => reached === 4, 5000, 20)
  release()
  t.same(await again, [200, 200], 'the slots were given back: two more go through')
  t.ok(await metric(f, 'ferry_ip_lease_borrows_total{result="granted"}') >= 1, 'borrows counted: granted')
  t.ok(await metric(f, 'ferry_ip_lease_borrows_total{result="short"}') >= 1, 'and short, when the client held the figure')

  // listen.tcp[].maxConnectionsPerIp: 2 for the pod. Each connection stays open once it echoed.
  const echoPort = (await adminStatus(f)).listeners.tcp[0].port as number
  const tcpOpen = async (): Promise<{ s: Socket, echoed: boolean }> => await new Promise((resolve) => {
    const s = netConnect(echoPort, '127.0.0.1', () => { s.write('x') })
    s.once('data', () => resolve({ s, echoed: true }))
    s.once('close', () => resolve({ s, echoed: false }))
    s.on('error', () => {})
  })
  const tcp = []
  for (let i = 0; i < 5; i++) tcp.push(await tcpOpen())
  t.same(tcp.map((c) => c.echoed), [true, true, false, false, false], 'two TCP connections for 127.0.0.1 in the pod, the others closed at once')
  t.equal(await metric(f, 'ferry_tcp_closed_total{listener="echo",reason="FERRY_ERR_TCP_IP_LIMIT"}'), 3, 'counted')
  t.equal(((await perIp()) as unknown as Record<string, { lent: number }>)['tcp:echo']?.lent, 2, '/status pod.perIp shows the listener\'s')
  for (const c of tcp) c.s.destroy()
  t.equal(await f.stop(), 0)
})

t.test('limits.maxStreamedBodiesPerIp is the pod\'s with 2 workers: one client streams 2 bodies at once over both, the others get 429', async (t) => {
  const { f, reached } = await uploadPod(t, { limits: { maxStreamedBodiesPerIp: 2, retryAfterSec: 3 }, http: { bufferBodyBytes: 1024 } })
  // 64 KiB bodies (streamed: more than bufferBodyBytes), 4 KiB of each sent first.
  const all = Array.from({ length: 6 }, () => upload(f.httpPort, 64 * 1024, 4096))
  t.teardown(() => { for (const u of all) u.sock.destroy() })
  await waitFor('two bodies reached the backend', () => reached() === 2, 5000, 20)
  const refused = await waitFor('four answered 429', async () => {
    const m = await metric(f, 'ferry_limit_refused_total{limit="http_streamed_bodies_per_ip"}')
    return m === 4 ? m : undefined
  }, 5000, 50)
  t.equal(refused, 4, 'four refused, counted')
  for (const u of all) u.rest()
  const statuses = (await Promise.all(all.map(async (u) => await u.status))).sort()
  t.same(statuses, ['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 429 Too Many Requests', 'HTTP/1.1 429 Too Many Requests', 'HTTP/1.1 429 Too Many Requests', 'HTTP/1.1 429 Too Many Requests'], 'two streamed through, four refused')
  t.equal(reached(), 2, 'no refused body reached the backend')
  await waitFor('stream slots given back', async () => ((await adminStatus(f)).pod as { perIp: Record<string, { lent: number }> }).perIp.stream?.lent === undefined, 5000, 50)
  t.equal(await f.stop(), 0)
})

t.test('limits.maxBufferedBodyBytesPerIp is the pod\'s with 2 workers: one client buffers at most the figure over both, the rest get 429', async (t) => {
  const KiB = 1024
  // 64 KiB for the client in the pod (lent in units of 1 KiB); each body is 16 KiB, buffered whole.
  const { f, reached } = await uploadPod(t, { limits: { maxBufferedBodyBytesPerIp: 64 * KiB, retryAfterSec: 3 }, http: { bufferBodyBytes: 32 * KiB } })
  // 16 KiB bodies, 15 KiB of each sent first: held in memory while they wait for the rest.
  const FIRST = 15 * KiB
  const all = Array.from({ length: 6 }, () => upload(f.httpPort, 16 * KiB, FIRST))
  t.teardown(() => { for (const u of all) u.sock.destroy() })
  // Four bodies of 15 KiB fit in 64 KiB (60); a fifth would not, wherever the kernel put it.
  const refused = await waitFor('two answered 429', async () => {
    const m = await metric(f, 'ferry_limit_refused_total{limit="http_buffered_bytes_per_ip"}')
    return m >= 2 ? m : undefined
  }, 5000, 50)
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(await metric(f, 'ferry_limit_refused_total{limit="http_buffered_bytes_per_ip"}'), refused, 'the refusals settled')
  const buffered = await metric(f, 'ferry_http_buffered_body_bytes')
  t.ok(buffered <= 64 * KiB, `the pod buffers at most the figure for the client (${buffered} bytes over both workers)`)
  t.equal(buffered, (6 - refused) * FIRST, 'what the admitted bodies sent, and nothing of the refused ones')
  const lent = ((await adminStatus(f)).pod as { perIp: Record<string, { lent: number }> }).perIp.body?.lent ?? 0
  t.ok(lent >= (6 - refused) * 15 && lent <= 64, `the pod lent ${lent} units of 1 KiB for it`)
  const inFlight = await waitFor('both workers hold uploads', async () => {
    const now = (await workers(f)).map((w) => w.clients?.httpRequestsInFlight ?? 0)
    return now.every((n) => n > 0) ? now : undefined
  }, 3000, 100).catch(() => undefined)
  if (inFlight !== undefined) t.pass(`the kernel spread the uploads over both workers (${inFlight.join(' + ')} in flight), and the figure held for the pod`)
  else t.comment('the kernel put every upload on one worker this time: the count holds either way')
  for (const u of all) u.rest()
  const statuses = (await Promise.all(all.map(async (u) => await u.status))).sort()
  t.equal(statuses.filter((s) => s === 'HTTP/1.1 200 OK').length, 6 - refused, 'the admitted bodies went through whole')
  t.equal(statuses.filter((s) => s === 'HTTP/1.1 429 Too Many Requests').length, refused, 'the others got 429')
  t.equal(reached(), 6 - refused, 'no refused body reached the backend')
  await waitFor('body units given back', async () => ((await adminStatus(f)).pod as { perIp: Record<string, { lent: number }> }).perIp.body?.lent === undefined, 5000, 50)
  t.equal(await f.stop(), 0)
})

t.test('local rate limits are the pod\'s with 2 workers: one bucket per key in the control plane, however the kernel spreads the connections', async (t) => {
  // ratePerSec 0.1: no token comes back during the test; burst 6 is the pod's whole budget for the key.
  const cfg = await podConfig(t, { rateLimits: { policies: { 'per-ip': { key: 'ip', ratePerSec: 0.1, burst: 6 } } } })
  ;(cfg.routes as Array<Record<string, unknown>>)[1]!.rateLimits = ['per-ip']
  const f = await startFerry(t, cfg, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  const before = (await workers(f)).map((w) => w.clients?.httpRequestsServed ?? 0)
  const statuses: number[] = []
  for (let i = 0; i < 20; i++) statuses.push(await get(`http://127.0.0.1:${f.httpPort}/limited`))
  t.equal(statuses.filter((s) => s === 200).length, 6, `exactly the pod's burst of 6 got through (${statuses.join(' ')}); per worker it was up to 12`)
  t.equal(statuses.filter((s) => s === 429).length, 14, 'the rest got 429')
  const served = await waitFor('both workers took requests', async () => {
    const now = (await workers(f)).map((w, i) => (w.clients?.httpRequestsServed ?? 0) - before[i]!)
    return now.every((n) => n > 0) && now.reduce((a, b) => a + b, 0) >= 20 ? now : undefined
  }, 5000, 100).catch(() => undefined)
  if (served !== undefined) t.pass(`the kernel spread the 20 connections over both workers (${served.join(' + ')}), and still 6 in all`)
  else t.comment('the kernel put every connection on one worker this time: the count holds either way')
  t.equal(await metric(f, 'ferry_rate_limit_decisions_total{policy="per-ip",decision="allowed"}'), 6, 'the pod\'s /metrics counts 6 allowed')
  t.equal(await f.stop(), 0)
})

t.test('sticky HTTP with affinity.store memory holds across workers: one store, the control plane\'s', async (t) => {
  // Each backend sets its own session cookie (as Socket.IO's `cookie` option does); Ferry learns it.
  const hits = new Map<string, number>()
  const backends = []
  for (const name of ['a', 'b']) {
    backends.push(await startBackend(t, (req, res) => {
      hits.set(name, (hits.get(name) ?? 0) + 1)
      if (!(req.headers.cookie ?? '').includes('sid=')) res.setHeader('set-cookie', `sid=${name}-${Math.random().toString(36).slice(2)}; Path=/`)
      res.end(name)
    }))
  }
  const f = await startFerry(t, {
    gateway: { workers: 2 },
    upstreams: { api: { protocol: 'http', endpoints: backends.map((b) => b.address) } },
    routes: [{ match: { path: '/' }, upstream: 'api', affinity: { key: 'cookie:sid' } }],
    logging: { level: 'info', accessLog: false },
  }, { timeoutMs: 60_000 })
  reapWorkers(t, f)
  await allRunning(f, 2)
  for (let client = 0; client < 4; client++) {
    const first = await fetch(`${f.url}/poll`, { headers: { connection: 'close' } })
    const home = await first.text()
    const cookie = first.headers.get('set-cookie')!.split(';')[0]!
    const seen = new Set<string>()
    // New connections each time: the kernel spreads them over both workers, whose records must agree.
    for (let i = 0; i < 20; i++) {
      const r = await fetch(`${f.url}/poll`, { headers: { connection: 'close', cookie } })
      seen.add(await r.text())
    }
    t.same([...seen], [home], `client ${client}: 20 requests on new connections all reached ${home}, which set its cookie`)
  }
  const st = await adminStatus(f)
  t.match(st.affinity, { store: 'memory', entries: 4 }, 'one store for the pod, holding the 4 learned cookies')
  // The workers' counts reach /status in their heartbeats: wait until all 84 requests are counted, then
  // say how the kernel spread them (reading at once failed in CI: a worker's last beat had not come).
  const served = await waitFor('every request counted in the workers\' heartbeats', async () => {
    const n = (await workers(f)).map((w) => w.clients?.httpRequestsServed ?? 0)
    return n.reduce((a, b) => a + b, 0) === 4 * 21 ? n : undefined
  }, 5000, 100)
  if (served.every((n) => n > 0)) t.pass(`the kernel spread the 84 connections over both workers (${served.join(' + ')}), and every client stayed home`)
  else t.comment(`the kernel put every connection on one worker this time (${served.join(' + ')}): the store is the control plane's either way`)
  t.equal(await f.stop(), 0)
})

t.test('gateway.workers is checked by field', async (t) => {
  for (const [workers, msg] of [[0, /gateway\.workers: must be an integer of 1-64, or auto/], [65, /gateway\.workers: must be an integer of 1-64, or auto/], ['many', /gateway\.workers: must be an integer of 1-64, or auto/]] as const) {
    const file = writeConfig({ gateway: { workers }, upstreams: { a: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/' }, upstream: 'a' }] })
    const r = await runCli(['check', '--config', file])
    t.equal(r.code, 1, `workers: ${String(workers)}`)
    t.match(r.stderr, msg)
  }
  const auto = writeConfig({ gateway: { workers: 'auto' }, upstreams: { a: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/' }, upstream: 'a' }] })
  t.equal((await runCli(['check', '--config', auto])).code, 0, 'auto is accepted')
})

t.test('why workers are processes: a worker thread holding a uWS listen socket aborts the whole process when it throws, exits or is terminated', async (t) => {
  for (const how of ['throw', 'exit', 'terminate']) {
    const child = spawn(process.execPath, [join(ROOT, 'scripts', 'uws-thread-abort.mjs'), how], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])))
    t.equal(signal, 'SIGABRT', `${how}: the process aborted (code ${String(code)})`)
    t.match(err, /uv_loop_close\(\) while having open handles/)
    t.notMatch(out, /still alive/)
  }
})
