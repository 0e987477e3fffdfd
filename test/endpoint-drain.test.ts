import { createServer } from 'node:http'
import { writeFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import { WebSocketServer } from 'ws'
import { stringify } from 'yaml'
import { adminRequest } from './helpers/admin.js'
import { adminStatus, metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { connect, startMuxBackend, type Client } from './helpers/mux.js'
import { startDns } from './helpers/dns.js'

/**
 * Endpoint drain (issue 19, items 3 and 4): an endpoint that leaves (the operator drains it, a reload
 * removes it, it fails its health checks) has its sessions closed 1012 with a retry hint in paced waves,
 * never all at once; the other endpoints' sessions are untouched and new sessions go elsewhere at once.
 * Real Ferry processes, real `ws` and ferry/backend backends, real clients, loopback.
 */

const TOKEN = 'endpoint-drain-admin-token-0123'
const HINT = /^endpoint draining: reconnect; retry-after-ms=\d{1,4}$/

/** A plain `ws` backend on 127.0.0.1:0 that greets each session with its id and answers GET /health (200 while `healthy`) and other GETs with its id. */
interface WsBackend {
  id: string
  port: number
  address: string
  healthy: boolean
  /** Close codes of the sessions it saw end. */
  closes: number[]
  sessions: () => number
}

async function startWsBackend (t: Teardown, id: string): Promise<WsBackend> {
  const b: WsBackend = { id, port: 0, address: '', healthy: true, closes: [], sessions: () => wss.clients.size }
  const server = createServer((req, res) => {
    if (req.url === '/health') { res.statusCode = b.healthy ? 200 : 503; res.end(); return }
    res.end(id)
  })
  const wss = new WebSocketServer({ server, perMessageDeflate: false })
  wss.on('connection', (ws) => {
    ws.on('error', () => {})
    ws.on('close', (code) => { b.closes.push(code) })
    ws.send(id)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  b.port = (server.address() as { port: number }).port
  b.address = `127.0.0.1:${b.port}`
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return b
}

/** A client with the id of the backend that greeted it and when it was closed (ms, client clock). */
interface Session { c: Client, backend: string, closedAt: number | undefined, close: { code: number, reason: string } | undefined }

async function open (t: Teardown, url: string, n: number, parallel = 25): Promise<Session[]> {
  const out: Session[] = []
  let next = 0
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, async () => {
    while (next < n) {
      next++
      const c = await connect(url)
      await c.waitMessages(1)
      const s: Session = { c, backend: c.messages[0]!.data.toString(), closedAt: undefined, close: undefined }
      void c.closed.then((e) => { s.closedAt = Date.now(); s.close = e })
      out.push(s)
    }
  }))
  t.teardown(() => { for (const s of out) s.c.ws.terminate() })
  return out
}

/** The most close timestamps that fall in any window of 1000 ms. */
function maxPerSecond (times: number[]): number {
  const ts = [...times].sort((a, b) => a - b)
  let best = 0
  for (let i = 0, j = 0; i < ts.length; i++) {
    while (ts[i]! - ts[j]! >= 1000) j++
    best = Math.max(best, i - j + 1)
  }
  return best
}

async function post (f: FerryProcess, path: string, token: string | null = TOKEN): Promise<{ status: number, body: any }> {
  const r = await adminRequest(f, path, { method: 'POST', token: token ?? undefined })
  let body: any
  try { body = JSON.parse(r.body) } catch { body = r.body }
  return { status: r.status, body }
}

async function row (f: FerryProcess, upstream: string, address: string, token?: string): Promise<any> {
  const st = token === undefined ? await adminStatus(f) : JSON.parse((await adminRequest(f, '/status', { token })).body)
  return st.upstreams.find((u: any) => u.name === upstream)?.endpoints.find((e: any) => e.address === address)
}

function closedOf (sessions: Session[]): Session[] {
  return sessions.filter((s) => s.closedAt !== undefined)
}

/** Asserts the sessions of the leaving endpoint were closed 1012 with the hint, at most `maxPerSec` in any second, over at least `minMs`. */
function assertPaced (t: Test, leaving: Session[], budget: number, minMs: number): void {
  const codes = new Set(leaving.map((s) => s.close?.code))
  t.same([...codes], [1012], `all ${leaving.length} sessions of the leaving endpoint closed 1012 (codes seen: ${[...codes].join(', ')})`)
  const bad = leaving.filter((s) => !HINT.test(s.close?.reason ?? ''))
  t.equal(bad.length, 0, `each close reason carries the retry hint retry-after-ms=N (first odd one: ${JSON.stringify(bad[0]?.close?.reason)})`)
  const times = leaving.map((s) => s.closedAt!)
  const peak = maxPerSecond(times)
  // The budget banks at most 0.1 s of its rate, and close frames reach this process in batches: 25 % slack.
  t.ok(peak <= Math.ceil(budget * 1.25), `at most ${Math.ceil(budget * 1.25)} closes in any 1 s window (budget ${budget}/s + 25 % for the 100 ms waves and delivery jitter): ${peak}`)
  const span = Math.max(...times) - Math.min(...times)
  t.ok(span >= minMs, `the closes spread over ≥ ${minMs} ms, never all at once: ${span} ms`)
}

t.test('operator drain of a ws endpoint: paced 1012 with a retry hint, the other endpoint untouched, new sessions elsewhere at once; twice is idempotent; kept over a reload; ready brings it back; unknown → 404', async (t) => {
  const [a, b] = await Promise.all([startWsBackend(t, 'A'), startWsBackend(t, 'B')])
  const config = (connectMs: number): Record<string, unknown> => ({
    upstreams: { legacy: { protocol: 'ws', endpoints: [a.address, b.address], timeouts: { connectMs }, drain: { maxMigrationsPerSec: 50, spreadMs: 1000 } } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy' }],
    admin: { token: TOKEN },
    logging: { level: 'info', accessLog: false },
  })
  const f = await startFerry(t, config(5000))
  const url = `ws://127.0.0.1:${f.httpPort}/ws`
  const sessions = await open(t, url, 200)
  const onA = sessions.filter((s) => s.backend === 'A')
  const onB = sessions.filter((s) => s.backend === 'B')
  t.equal(onA.length, 100, 'round-robin: 100 of 200 sessions on A')
  t.equal(onB.length, 100, 'and 100 on B')

  t.equal((await post(f, `/upstreams/legacy/endpoints/${a.address}/drain`, null)).status, 401, 'without the admin token: 401, nothing drained')
  t.equal(closedOf(sessions).length, 0, 'no session closed by the refused request')
  const started = Date.now()
  const r1 = await post(f, `/upstreams/legacy/endpoints/${a.address}/drain`)
  t.equal(r1.status, 202, 'POST .../drain with the token: 202 Accepted')
  t.match(r1.body, { result: 'draining', upstream: 'legacy', endpoint: a.address, admin: 'drain' }, 'its body says draining')
  const fresh = await open(t, url, 20)
  t.same([...new Set(fresh.map((s) => s.backend))], ['B'], 'all 20 sessions opened right after the POST went to B')
  const r2 = await post(f, `/upstreams/legacy/endpoints/${a.address}/drain`)
  t.equal(r2.status, 200, 'asking to drain again: 200')
  t.match(r2.body, { result: 'already_draining', admin: 'drain' }, 'and it says already draining')
  // The first wave may not have left yet when the POST returns (a loaded machine): wait for it, not past the drain.
  const during = await waitFor('the drain to show progress in /status', async () => { const r = await row(f, 'legacy', a.address, TOKEN); return r?.drain?.sessionsLeft < 100 ? r : undefined }, 5000, 10)
  t.match(during, { state: 'draining', admin: 'drain', drain: { cause: 'operator', state: 'draining' } }, `/status during the drain: draining by the operator (moved ${during?.drain?.moved} of ${during?.drain?.sessionsAtStart})`)
  t.ok(during.drain.sessionsLeft > 0 && during.drain.sessionsLeft < 100, `and progress: ${during.drain.sessionsLeft} sessions left, ${during.drain.moved} moved`)

  await waitFor('all of A\'s sessions closed', () => onA.every((s) => s.closedAt !== undefined), 15_000)
  t.ok(Date.now() - started < 6000, `A's 100 sessions left within 6 s at 50/s (${Date.now() - started} ms)`)
  assertPaced(t, onA, 50, 1500)
  t.equal(closedOf([...onB, ...fresh]).length, 0, 'none of B\'s 120 sessions was closed')
  await waitFor('A\'s backend saw every close', () => a.closes.length === 100, 5000)
  t.same([...new Set(a.closes)], [1012], 'A\'s backend was told 1012 for each of its 100 sessions')
  t.equal(b.closes.length, 0, 'B\'s backend saw no close')

  const drained = await waitFor('/status shows A drained', async () => { const r = await row(f, 'legacy', a.address, TOKEN); return r?.state === 'drained' ? r : undefined }, 5000)
  t.match(drained, { admin: 'drain', sessions: 0, drain: { state: 'drained', cause: 'operator', moved: 100, sessionsLeft: 0, open: 0, sessionsAtStart: 100 } }, '/status after: drained, 100 moved, 0 left')
  t.match(await row(f, 'legacy', b.address, TOKEN), { state: 'active', admin: 'ready', sessions: 120 }, 'B is active with its 120 sessions')
  t.equal(await metric(f, `ferry_upstream_endpoint_state{upstream="legacy",endpoint="${a.address}"}`), 2, 'metric ferry_upstream_endpoint_state of A: 2 (drained)')
  t.equal(await metric(f, `ferry_upstream_endpoint_state{upstream="legacy",endpoint="${b.address}"}`), 0, 'and of B: 0 (active)')
  t.equal(await metric(f, 'ferry_upstream_endpoint_drain_moved_total{upstream="legacy",cause="operator"}'), 100, 'ferry_upstream_endpoint_drain_moved_total{cause="operator"}: 100')
  t.equal(await metric(f, `ferry_upstream_endpoint_drain_sessions{upstream="legacy",endpoint="${a.address}"}`), 0, 'ferry_upstream_endpoint_drain_sessions of A: 0')

  // A reload that replaces the upstream keeps the operator's drain of an endpoint that stays.
  writeFileSync(String(f.child.spawnargs.at(-1)), stringify({ ...config(4000), listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } } }))
  const reload = await post(f, '/reload')
  t.match(reload.body, { result: 'ok', changed: ['legacy'] }, `a reload changing the upstream's config is applied (a new instance): ${JSON.stringify(reload.body.errors ?? [])}`)
  t.match(await row(f, 'legacy', a.address, TOKEN), { admin: 'drain', state: 'drained' }, 'A is still drained by the operator after the reload')
  const afterReload = await open(t, url, 10)
  t.same([...new Set(afterReload.map((s) => s.backend))], ['B'], 'new sessions after the reload still all go to B')

  const ready = await post(f, `/upstreams/legacy/endpoints/${a.address}/ready`)
  t.equal(ready.status, 200, 'POST .../ready: 200')
  t.match(ready.body, { result: 'ready', admin: 'ready', state: 'active' }, 'it says ready, active')
  t.match((await post(f, `/upstreams/legacy/endpoints/${a.address}/ready`)).body, { result: 'already_ready' }, 'ready twice: already ready')
  const back = await open(t, url, 10, 1)
  t.ok(back.filter((s) => s.backend === 'A').length >= 4, `after ready, A takes new sessions again (${back.filter((s) => s.backend === 'A').length} of 10)`)
  t.match(await row(f, 'legacy', a.address, TOKEN), { state: 'active', admin: 'ready' }, '/status: A active and ready')
  t.notOk('drain' in (await row(f, 'legacy', a.address, TOKEN)), 'no drain block on an active endpoint')

  const u404 = await post(f, `/upstreams/nope/endpoints/${a.address}/drain`)
  t.equal(u404.status, 404, 'drain of an unknown upstream: 404')
  t.equal(u404.body.error.code, 'FERRY_ERR_UNKNOWN_UPSTREAM', 'with FERRY_ERR_UNKNOWN_UPSTREAM')
  const e404 = await post(f, '/upstreams/legacy/endpoints/127.0.0.1:1/drain')
  t.equal(e404.status, 404, 'drain of an address that is not an endpoint: 404')
  t.equal(e404.body.error.code, 'FERRY_ERR_UNKNOWN_ENDPOINT', 'with FERRY_ERR_UNKNOWN_ENDPOINT')
  t.match(e404.body.error.message, a.address, 'naming the endpoints it has')
  t.equal((await post(f, '/upstreams/legacy/endpoints/not-an-address/drain')).body.error.code, 'FERRY_ERR_UNKNOWN_ENDPOINT', 'an address that is not host:port: FERRY_ERR_UNKNOWN_ENDPOINT')
  t.equal(closedOf([...onB, ...fresh, ...afterReload, ...back]).length, 0, 'through all of it no session that was not on the drained endpoint closed')
})

t.test('an endpoint removed by a reload: its sessions are closed 1012 in paced waves; the staying endpoint\'s sessions continue', async (t) => {
  const [a, b] = await Promise.all([startWsBackend(t, 'A'), startWsBackend(t, 'B')])
  const config = (endpoints: string[]): Record<string, unknown> => ({
    upstreams: { legacy: { protocol: 'ws', endpoints, drain: { maxMigrationsPerSec: 20, spreadMs: 1000 } } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy' }],
    logging: { level: 'info', accessLog: false },
  })
  const f = await startFerry(t, config([a.address, b.address]))
  const sessions = await open(t, `ws://127.0.0.1:${f.httpPort}/ws`, 60)
  const onA = sessions.filter((s) => s.backend === 'A')
  t.equal(onA.length, 30, '30 of 60 sessions on A')
  writeFileSync(String(f.child.spawnargs.at(-1)), stringify({ ...config([b.address]), listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } } }))
  const reload = await post(f, '/reload')
  t.match(reload.body, { result: 'ok', changed: ['legacy'] }, 'the reload removing A is applied')
  await waitFor('A\'s sessions closed', () => onA.every((s) => s.closedAt !== undefined), 15_000)
  assertPaced(t, onA, 20, 1000)
  t.equal(closedOf(sessions.filter((s) => s.backend === 'B')).length, 0, 'none of B\'s 30 sessions closed')
  t.equal(await metric(f, 'ferry_upstream_endpoint_drain_moved_total{upstream="legacy",cause="removed"}'), 30, 'ferry_upstream_endpoint_drain_moved_total{cause="removed"}: 30')
  await waitFor('A\'s backend saw 30 closes 1012', () => a.closes.length === 30 && a.closes.every((c) => c === 1012), 5000)
  t.pass('A\'s backend was told 1012 for each of its 30 sessions')
})

t.test('an endpoint removed by discovery (DNS SRV): /status shows it draining while its sessions leave paced; new sessions go to the other at once', async (t) => {
  const dns = await startDns(t)
  const [a, b] = await Promise.all([startWsBackend(t, 'A'), startWsBackend(t, 'B')])
  dns.set('a.test', { type: 'A', addresses: ['127.0.0.1'], ttl: 1 })
  dns.set('b.test', { type: 'A', addresses: ['127.0.0.1'], ttl: 1 })
  dns.set('_ws._tcp.legacy.test', { type: 'SRV', targets: [{ target: 'a.test', port: a.port }, { target: 'b.test', port: b.port }], ttl: 1 })
  const f = await startFerry(t, {
    upstreams: { legacy: { protocol: 'ws', dns: { name: '_ws._tcp.legacy.test', type: 'SRV', servers: [dns.address], intervalMs: 200, minTtlMs: 100, timeoutMs: 500 }, drain: { maxMigrationsPerSec: 10, spreadMs: 1000 } } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy' }],
    logging: { level: 'info', accessLog: false },
  })
  const url = `ws://127.0.0.1:${f.httpPort}/ws`
  await waitFor('both SRV targets in the set', async () => (await adminStatus(f)).upstreams[0].endpoints.length === 2, 5000)
  const sessions = await open(t, url, 30, 1)
  const onA = sessions.filter((s) => s.backend === 'A')
  t.equal(onA.length, 15, '15 of 30 sessions on A')
  dns.set('_ws._tcp.legacy.test', { type: 'SRV', targets: [{ target: 'b.test', port: b.port }], ttl: 1 })
  const leaving = await waitFor('/status shows A draining', async () => { const r = await row(f, 'legacy', a.address); return r?.drain?.state === 'draining' ? r : undefined }, 5000)
  t.match(leaving, { admin: 'ready', drain: { cause: 'removed' } }, `/status: A draining, cause removed (${leaving.drain.sessionsLeft} sessions left)`)
  const fresh = await open(t, url, 6)
  t.same([...new Set(fresh.map((s) => s.backend))], ['B'], 'new sessions go to B')
  await waitFor('A\'s sessions closed', () => onA.every((s) => s.closedAt !== undefined), 15_000)
  assertPaced(t, onA, 10, 1000)
  t.equal(closedOf([...sessions.filter((s) => s.backend === 'B'), ...fresh]).length, 0, 'none of B\'s 21 sessions closed')
  await waitFor('A gone from /status once released', async () => (await row(f, 'legacy', a.address)) === undefined, 5000)
  t.pass('once nothing is left on it, A leaves /status')
})

t.test('an endpoint failing its active health checks: its sessions leave paced, not all at once; healthy again, it is active', async (t) => {
  const [a, b] = await Promise.all([startWsBackend(t, 'A'), startWsBackend(t, 'B')])
  const f = await startFerry(t, {
    upstreams: {
      legacy: {
        protocol: 'ws',
        endpoints: [a.address, b.address],
        healthCheck: { intervalMs: 150, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 2, http: { path: '/health' } },
        drain: { maxMigrationsPerSec: 10, spreadMs: 1000 },
      },
    },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy' }],
    logging: { level: 'info', accessLog: false },
  })
  await waitFor('both endpoints checked up', async () => (await row(f, 'legacy', a.address))?.check === 'up' && (await row(f, 'legacy', b.address))?.check === 'up', 5000)
  const sessions = await open(t, `ws://127.0.0.1:${f.httpPort}/ws`, 40)
  const onA = sessions.filter((s) => s.backend === 'A')
  t.equal(onA.length, 20, '20 of 40 sessions on A')
  a.healthy = false
  await waitFor('A\'s sessions closed', () => onA.every((s) => s.closedAt !== undefined), 15_000)
  assertPaced(t, onA, 10, 1000)
  t.equal(closedOf(sessions.filter((s) => s.backend === 'B')).length, 0, 'none of B\'s 20 sessions closed')
  const r = await waitFor('/status shows A drained, unhealthy', async () => { const r = await row(f, 'legacy', a.address); return r?.state === 'drained' ? r : undefined }, 5000)
  t.match(r, { check: 'down', admin: 'ready', drain: { cause: 'unhealthy', moved: 20 } }, '/status: A checked down, drained (cause unhealthy, 20 moved), admin state untouched (ready)')
  t.equal(await metric(f, 'ferry_upstream_endpoint_drain_moved_total{upstream="legacy",cause="unhealthy"}'), 20, 'ferry_upstream_endpoint_drain_moved_total{cause="unhealthy"}: 20')
  a.healthy = true
  await waitFor('A active again', async () => (await row(f, 'legacy', a.address))?.state === 'active', 5000)
  t.pass('checked up again, A is active')
})

t.test('an HTTP upstream\'s WebSocket twin: an operator drain closes the passed-through sessions paced; HTTP requests and sessions go to the other endpoint', async (t) => {
  const [a, b] = await Promise.all([startWsBackend(t, 'A'), startWsBackend(t, 'B')])
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [a.address, b.address], drain: { maxMigrationsPerSec: 10, spreadMs: 0 } } },
    routes: [{ match: { path: '/api' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  const sessions = await open(t, `ws://127.0.0.1:${f.httpPort}/api/ws`, 30)
  const onA = sessions.filter((s) => s.backend === 'A')
  t.equal(onA.length, 15, '15 of 30 passed-through sessions on A')
  const r = await post(f, `/upstreams/api/endpoints/${a.address}/drain`)
  t.equal(r.status, 202, 'POST /upstreams/api/endpoints/A/drain: 202')
  const served = await Promise.all(Array.from({ length: 10 }, async () => await (await fetch(`${f.url}/api/x`)).text()))
  t.same([...new Set(served)], ['B'], 'HTTP requests after the drain all go to B')
  await waitFor('A\'s sessions closed', () => onA.every((s) => s.closedAt !== undefined), 10_000)
  assertPaced(t, onA, 10, 1000)
  t.equal(closedOf(sessions.filter((s) => s.backend === 'B')).length, 0, 'none of B\'s 15 sessions closed')
  const fresh = await open(t, `ws://127.0.0.1:${f.httpPort}/api/ws`, 6)
  t.same([...new Set(fresh.map((s) => s.backend))], ['B'], 'new sessions go to B')
  const st = await waitFor('/status: api endpoint A drained', async () => { const x = await row(f, 'api', a.address); return x?.state === 'drained' ? x : undefined }, 5000)
  t.match(st, { admin: 'drain', drain: { cause: 'operator', moved: 15, sessionsLeft: 0 } }, '/status of the HTTP upstream shows A drained with its 15 sessions moved')
})

t.test('mux: an operator drain keeps new sessions off the endpoint and hands its sessions to the other one live, paced by handoff.maxPerSec; nobody is disconnected', async (t) => {
  const ends: Record<string, number[]> = { A: [], B: [] }
  const arrivals: Array<{ at: number, from: string }> = []
  const [a, b] = await Promise.all(['A', 'B'].map(async (id) => await startMuxBackend(t, (s) => {
    if (s.handoff !== undefined) arrivals.push({ at: Date.now(), from: s.handoff.from })
    else s.send(id)
    s.on('message', (d) => { s.send(`${id}:${d.toString()}`) })
    s.on('close', (code: number) => { ends[id]!.push(code) })
  })))
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${a!.port}`, `127.0.0.1:${b!.port}`], balance: 'round-robin', pool: { links: 2 }, handoff: { maxPerSec: 10 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    logging: { level: 'info', accessLog: false },
  })
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  await waitFor('both mux endpoints have a ready link', async () => (await adminStatus(f)).upstreams[0].endpoints.every((e: any) => e.links.some((l: any) => l.state === 'ready')), 5000)
  const sessions = await open(t, url, 40, 1)
  const onA = sessions.filter((s) => s.backend === 'A')
  t.equal(onA.length, 20, '20 of 40 sessions on A')
  const aAddr = `127.0.0.1:${a!.port}`
  t.equal((await post(f, `/upstreams/chat/endpoints/${aAddr}/drain`)).status, 202, 'POST .../drain: 202')
  const fresh = await open(t, url, 10)
  t.same([...new Set(fresh.map((s) => s.backend))], ['B'], 'new sessions right after the POST all go to B')
  await waitFor('A\'s sessions handed to B', () => arrivals.length === 20, 15_000)
  t.ok(arrivals.every((x) => x.from === aAddr), 'each arrived on B with handoff.from = A')
  const times = arrivals.map((x) => x.at)
  const peak = maxPerSecond(times)
  t.ok(peak <= Math.ceil(10 * 1.25), `at most ${Math.ceil(10 * 1.25)} handoffs in any 1 s window (handoff.maxPerSec 10 + 25 %): ${peak}`)
  t.ok(Math.max(...times) - Math.min(...times) >= 1000, `spread over ≥ 1000 ms: ${Math.max(...times) - Math.min(...times)} ms`)
  t.equal(closedOf(sessions).length + closedOf(fresh).length, 0, 'no client of either endpoint was closed')
  // A's sessions answer from B now.
  for (const s of onA) s.c.ws.send('where?')
  await waitFor('answers from B', () => onA.every((s) => s.c.messages.some((m) => m.data.toString() === 'B:where?')), 5000)
  t.pass('every moved session is served by B')
  await waitFor('A\'s backend saw 20 sessions end', () => ends.A!.length === 20, 5000)
  t.same([...new Set(ends.A)], [1012], 'A\'s backend sessions ended 1012 (handed off)')
  const st = await waitFor('/status: A drained', async () => { const x = await row(f, 'chat', aAddr); return x?.state === 'drained' ? x : undefined }, 5000)
  t.match(st, { admin: 'drain', streams: 0, drain: { cause: 'operator', moved: 20, sessionsLeft: 0 } }, '/status: A drained, 20 moved, no stream left')
  t.ok(st.links.some((l: any) => l.state === 'ready'), 'its links stay up (ready for a POST .../ready)')
  t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="moved"}'), 20, 'ferry_mux_handoffs_total{outcome="moved"} = 20')
})
