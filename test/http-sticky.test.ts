import t, { type Test } from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { request as httpsRequest } from 'node:https'
import { tmpdir } from 'node:os'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parse, stringify } from 'yaml'
import { io as ioClient, type Socket as IoSocket } from 'socket.io-client'
import { metric, ROOT, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'

/**
 * Sticky sessions on routes to HTTP upstreams (issue 22, item 2; docs/http.md "Sticky sessions"): route
 * `affinity` keyed by a cookie Ferry sets, or by a cookie/header/query the client sends. Real socket.io
 * and socket.io-client (default transports: long polling, then the upgrade to WebSocket), two backend
 * processes each with its own socket.io Server and no shared adapter.
 */

interface IoBackend { name: string, address: string, stats: () => Promise<{ connections: number, upgrades: number, errors: Record<string, number> }>, stop: () => void }

/** Spawns test/helpers/socketio-backend.ts (its own process); stopped by PID on teardown. */
async function ioBackend (t: Teardown, name: string, ...args: string[]): Promise<IoBackend> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'helpers', 'socketio-backend.ts'), name, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  let exited = false
  child.on('exit', () => { exited = true })
  const stop = (): void => { if (!exited) child.kill('SIGKILL') }
  t.teardown(stop)
  const port = await new Promise<number>((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => { reject(new Error(`${name} did not start`)) }, 20_000)
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d
      const nl = buf.indexOf('\n')
      if (nl !== -1) { clearTimeout(timer); resolve((JSON.parse(buf.slice(0, nl)) as { port: number }).port) }
    })
  })
  const address = `127.0.0.1:${port}`
  return { name, address, stop, stats: async () => await (await fetch(`http://${address}/stats`)).json() }
}

function config (endpoints: string[], affinity: Record<string, unknown> | undefined, top: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: { api: { protocol: 'http', endpoints } },
    routes: [{ match: { path: '/' }, upstream: 'api', ...(affinity !== undefined ? { affinity } : {}) }],
    ...top,
  }
}

interface Outcome { connected: number, connectErrors: number, upgraded: number, acks: number, sockets: IoSocket[] }

/** `n` socket.io-client clients with default transports and a cookie jar (withCredentials: what a browser does on its own origin). */
async function crowd (t: Teardown, f: FerryProcess, n: number, patienceMs = 20_000): Promise<Outcome> {
  const sockets: IoSocket[] = []
  t.teardown(() => { for (const s of sockets) s.close() })
  let connectErrors = 0
  const settled = await Promise.all(Array.from({ length: n }, async () => await new Promise<boolean>((resolve) => {
    const s = ioClient(`http://127.0.0.1:${f.httpPort}`, { withCredentials: true, reconnection: false, forceNew: true, timeout: patienceMs })
    sockets.push(s)
    s.once('connect', () => { resolve(true) })
    s.once('connect_error', () => { connectErrors++; resolve(false) })
  })))
  const connected = sockets.filter((s, i) => settled[i] === true && s.connected)
  // Each connected client upgrades to WebSocket (the engine probes, then switches) unless the upgrade fails.
  await waitFor('connected clients upgraded', () => connected.every((s) => s.io.engine.transport.name === 'websocket' || !s.connected), patienceMs * 1.5).catch(() => {})
  const upgraded = connected.filter((s) => s.io.engine.transport.name === 'websocket').length
  // Three acks per client.
  const acks = await Promise.all(connected.flatMap((s, i) => [0, 1, 2].map(async (k) => await new Promise<boolean>((resolve) => {
    s.timeout(patienceMs).emit('echo', `${i}.${k}`, (err: Error | null, v: unknown) => { resolve(err === null && v === `${i}.${k}`) })
  }))))
  return { connected: connected.length, connectErrors, upgraded, acks: acks.filter(Boolean).length, sockets }
}

/** 200 clients through `f` to backends `a` and `b`: every one connects, upgrades and gets its 3 acks; no handshake error at either backend; both get clients. */
async function allThrough (t: Test, f: FerryProcess, a: IoBackend, b: IoBackend): Promise<void> {
  const r = await crowd(t, f, 200)
  t.equal(r.connected, 200, `all 200 clients connected (connect errors: ${r.connectErrors})`)
  t.equal(r.upgraded, 200, 'all 200 upgraded from polling to WebSocket (the upgrade reached the endpoint that served the polls)')
  t.equal(r.acks, 600, 'all 600 acks came back')
  const [sa, sb] = [await a.stats(), await b.stats()]
  t.same([sa.errors, sb.errors], [{}, {}], 'no "Session ID unknown" (or any handshake error) at either backend')
  t.equal(sa.connections + sb.connections, 200, `200 sessions at the backends (A ${sa.connections}, B ${sb.connections})`)
  t.ok(sa.connections >= 40 && sb.connections >= 40, `both backends got clients (A ${sa.connections}, B ${sb.connections}; each ≥ 40 of 200)`)
  t.equal(sa.upgrades + sb.upgrades, 200, '200 upgrades at the backends')
}

t.test('200 Socket.IO clients through Ferry to two backend processes with affinity { key: cookie:io, setCookie: true }: all connect, upgrade and get their acks', { timeout: 180_000 }, async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  const f = await startFerry(t, config([a.address, b.address], { key: 'cookie:io', setCookie: true }))
  await allThrough(t, f, a, b)
  t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="issued"}'), 200, 'ferry_http_affinity_total{outcome="issued"} = 200: one cookie per client handshake')
  t.ok(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="hit"}') >= 200, 'later polls found their record (outcome="hit")')
  t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="fallback"}'), 0, 'no fallback')
})

t.test('Socket.IO\'s own cookie (server option `cookie: true`) with affinity { key: cookie:io }: Ferry learns it from the handshake response', { timeout: 180_000 }, async (t) => {
  const a = await ioBackend(t, 'A', 'cookie')
  const b = await ioBackend(t, 'B', 'cookie')
  const f = await startFerry(t, config([a.address, b.address], { key: 'cookie:io' }))
  await allThrough(t, f, a, b)
  t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="learned"}'), 200, 'ferry_http_affinity_total{outcome="learned"} = 200: one io cookie per handshake')
  t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="keyless"}'), 200, 'the 200 handshakes had no key yet (outcome="keyless")')
})

t.test('baseline without affinity: the same 200 clients, two backends, many fail ("Session ID unknown")', { timeout: 180_000 }, async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  const f = await startFerry(t, config([a.address, b.address], undefined))
  // Clients that fail here fail for good: waiting 5 s for them instead of 20 tells the same.
  const r = await crowd(t, f, 200, 5000)
  const [sa, sb] = [await a.stats(), await b.stats()]
  const unknown = (sa.errors['Session ID unknown'] ?? 0) + (sb.errors['Session ID unknown'] ?? 0)
  t.comment(`without affinity: ${r.connected}/200 connected, ${r.connectErrors} connect errors, ${r.upgraded} upgraded, ${r.acks}/${r.connected * 3} acks, ${unknown} "Session ID unknown" at the backends`)
  t.ok(r.connectErrors >= 20, `at least 20 of 200 clients fail to connect without affinity (got ${r.connectErrors})`)
  t.ok(unknown >= 20, `the backends answered "Session ID unknown" at least 20 times (got ${unknown})`)
})

/** GET `path` with `headers`; the backend's name, status and Set-Cookie. */
async function who (f: FerryProcess, path: string, headers: Record<string, string> = {}): Promise<{ name: string, status: number, cookie: string | null }> {
  const r = await fetch(`http://127.0.0.1:${f.httpPort}${path}`, { headers })
  return { name: await r.text(), status: r.status, cookie: r.headers.get('set-cookie') }
}

t.test('header and query keys: each key keeps its backend, keys spread over both; no key is balanced normally', { timeout: 60_000 }, async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  for (const spec of ['header:x-session', 'query:sid']) {
    const f = await startFerry(t, config([a.address, b.address], { key: spec }))
    const req = async (k: string): Promise<string> => spec.startsWith('header:') ? (await who(f, '/whoami', { 'x-session': k })).name : (await who(f, `/whoami?sid=${k}`)).name
    const first = new Map<string, string>()
    for (let i = 0; i < 40; i++) first.set(`key-${i}`, await req(`key-${i}`))
    let moved = 0
    for (let round = 0; round < 3; round++) for (const [k, home] of first) if (await req(k) !== home) moved++
    t.equal(moved, 0, `${spec}: 120 more requests of 40 keys each went to its key's backend`)
    const onA = [...first.values()].filter((n) => n === 'A').length
    t.ok(onA >= 8 && onA <= 32, `${spec}: the 40 keys spread over both backends (A ${onA}, B ${40 - onA})`)
    const plain = new Set<string>()
    for (let i = 0; i < 6; i++) plain.add((await who(f, '/whoami')).name)
    t.same([...plain].sort(), ['A', 'B'], `${spec}: requests without the key are balanced normally (round-robin: both)`)
    t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="miss"}'), 40, `${spec}: 40 first requests had no record (outcome="miss")`)
    t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="hit"}'), 120, `${spec}: the next 120 found it (outcome="hit")`)
    t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="keyless"}'), 6, `${spec}: 6 requests without a key (outcome="keyless")`)
    t.equal((await who(f, '/whoami', { 'x-session': 'k' })).cookie, null, `${spec}: no setCookie, no Set-Cookie`)
  }
})

t.test('the cookie Ferry sets: its form, Secure only when a trusted proxy says https, and a presented cookie is not replaced', async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  const trusting = await startFerry(t, config([a.address, b.address], { key: 'cookie:srv', setCookie: true }, { http: { trustedProxies: ['127.0.0.1/32'] } }))
  const plain = await who(trusting, '/whoami')
  t.match(plain.cookie, /^srv=[A-Za-z0-9_-]{22}; Path=\/; HttpOnly; SameSite=Lax$/, `Set-Cookie: ${plain.cookie}`)
  const secure = await who(trusting, '/whoami', { 'x-forwarded-proto': 'https' })
  t.match(secure.cookie, /^srv=[A-Za-z0-9_-]{22}; Path=\/; HttpOnly; SameSite=Lax; Secure$/, `behind a trusted proxy saying https: ${secure.cookie}`)
  const key = /^srv=([^;]+)/.exec(secure.cookie!)![1]!
  const again = await who(trusting, '/whoami', { cookie: `other=1; srv=${key}` })
  t.equal(again.cookie, null, 'a request presenting the cookie gets no new one')
  t.equal(again.name, secure.name, 'and goes where its first request went')
  const untrusting = await startFerry(t, config([a.address, b.address], { key: 'cookie:srv', setCookie: true }))
  const claimed = await who(untrusting, '/whoami', { 'x-forwarded-proto': 'https' })
  t.match(claimed.cookie, /; SameSite=Lax$/, 'X-Forwarded-Proto: https from a peer outside http.trustedProxies: no Secure')
})

t.test('on a TLS front the cookie Ferry sets is Secure', async (t) => {
  const a = await ioBackend(t, 'A')
  const dir = mkdtempSync(join(tmpdir(), 'ferry-sticky-tls-'))
  const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')]
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' })
  const f = await startFerry(t, config([a.address], { key: 'cookie:srv', setCookie: true }, { listen: { http: { host: '127.0.0.1', port: 0, tls: { certFile: cert, keyFile: key } } } }))
  const cookie = await new Promise<string | undefined>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: f.httpPort, path: '/whoami', rejectUnauthorized: false }, (res) => { res.resume(); resolve(res.headers['set-cookie']?.[0]) })
    req.on('error', reject)
    req.end()
  })
  t.match(cookie, /^srv=[A-Za-z0-9_-]{22}; Path=\/; HttpOnly; SameSite=Lax; Secure$/, `over https: ${cookie}`)
})

t.test('an endpoint removed by a reload: its keys fall back to the next in their rendezvous order, and stay there', { timeout: 60_000 }, async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  const cfg = config([a.address, b.address], { key: 'cookie:io', setCookie: true })
  const f = await startFerry(t, cfg)
  // 20 clients, each with the cookie of its first answer.
  const clients: Array<{ cookie: string, home: string }> = []
  for (let i = 0; i < 20; i++) {
    const r = await who(f, '/whoami')
    clients.push({ cookie: r.cookie!.split(';')[0]!, home: r.name })
  }
  const onA = clients.filter((c) => c.home === 'A')
  t.ok(onA.length > 0 && onA.length < 20, `keys on both backends (A ${onA.length})`)
  // The config without A.
  const file = f.child.spawnargs.at(-1)!
  const running = parse(readFileSync(file, 'utf8')) as Record<string, any>
  writeFileSync(file, stringify({ ...running, upstreams: { api: { protocol: 'http', endpoints: [b.address] } } }))
  const rl = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
  t.match(rl, { result: 'ok' }, `reload without A: ${JSON.stringify(rl)}`)
  const fellBack = await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="fallback"}')
  for (const c of clients) t.equal((await who(f, '/whoami', { cookie: c.cookie })).name, 'B', `${c.cookie.slice(0, 8)}… (was on ${c.home}) → B`)
  t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="fallback"}') - fellBack, onA.length, `the ${onA.length} keys recorded on A fell back (outcome="fallback")`)
  // A comes back: the records now say B, so the keys stay on B (their sessions live there now).
  writeFileSync(file, stringify(running))
  t.match(await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json(), { result: 'ok' }, 'reload with A again: ok')
  const back = await Promise.all(clients.map(async (c) => (await who(f, '/whoami', { cookie: c.cookie })).name))
  t.same([...new Set(back)], ['B'], 'with A back, every key stays on B where its record now points')
})

t.test('pool budgets: a sticky request waits for a slot on its own endpoint; a long-held one is refused when its endpoint\'s long-held budget is full', { timeout: 60_000 }, async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  const f = await startFerry(t, config([a.address, b.address], { key: 'header:x-session' }, {
    upstreams: { api: { protocol: 'http', endpoints: [a.address, b.address], pool: { maxConnections: 1, queueTimeoutMs: 20_000, longHeld: { maxConnections: 1 } } } },
  }))
  const home = (await who(f, '/whoami', { 'x-session': 'k1' })).name
  // Four slow requests of one key at once, one connection per endpoint: they queue for the key's endpoint.
  let finished = 0
  const waiting = Promise.all([0, 1, 2, 3].map(async () => { const r = await who(f, '/slow', { 'x-session': 'k1' }); finished++; return r }))
  await waitFor('k1\'s requests queued', async () => await metric(f, 'ferry_upstream_queue_depth{upstream="api"}') >= 1, 5000, 50)
  // Meanwhile a request without a key is served by the other endpoint: the queued sticky ones hold up no one else.
  const keyless = await who(f, '/whoami')
  t.ok(keyless.status === 200 && keyless.name !== home && finished < 4, `a keyless request meanwhile: ${keyless.status} from ${keyless.name} while ${4 - finished} of k1's were still queued or running`)
  const four = await waiting
  t.same(four.map((r) => `${r.status} ${r.name}`), Array(4).fill(`200 ${home}`), `4 concurrent requests of key k1 all served by its endpoint ${home}, none by the other`)
  // Two long-held (SSE) requests of one key at once: the second finds its endpoint's one long-held connection taken.
  const two = await Promise.all([0, 1].map(async () => await who(f, '/slow', { 'x-session': 'k1', accept: 'text/event-stream' })))
  t.same(two.map((r) => r.status).sort(), [200, 503], 'two long-held requests of key k1: one served, one refused 503 (not sent to the other endpoint)')
  t.equal(two.find((r) => r.status === 200)!.name, home, `the served one on ${home}`)
  t.equal(await metric(f, 'ferry_http_long_held_total{upstream="api",why="refused"}'), 1, 'counted as why="refused"')
})

t.test('a backend process dies: its Socket.IO clients reconnect with their cookie and land on the other backend', { timeout: 90_000 }, async (t) => {
  const a = await ioBackend(t, 'A')
  const b = await ioBackend(t, 'B')
  const f = await startFerry(t, config([a.address, b.address], { key: 'cookie:io', setCookie: true }, {
    upstreams: { api: { protocol: 'http', endpoints: [a.address, b.address], ejection: { consecutiveFailures: 1, ejectMs: 60_000 } } },
  }))
  const sockets: IoSocket[] = []
  t.teardown(() => { for (const s of sockets) s.close() })
  for (let i = 0; i < 20; i++) sockets.push(ioClient(`http://127.0.0.1:${f.httpPort}`, { withCredentials: true, forceNew: true, reconnectionDelay: 200, reconnectionDelayMax: 1000, timeout: 10_000 }))
  await waitFor('20 clients connected over WebSocket', () => sockets.every((s) => s.connected && s.io.engine.transport.name === 'websocket'), 30_000)
  const onA = (await a.stats()).connections
  t.ok(onA > 0 && onA < 20, `clients on both backends (A ${onA})`)
  // socket.io-client in Node starts a new cookie jar per reconnection; a browser keeps its cookie. Keep it as a browser does.
  for (const s of sockets) {
    const jar = (s.io.engine as unknown as { _cookieJar: { cookies: Iterable<[string, { value: string }]> } })._cookieJar
    const io = [...jar.cookies].find(([name]) => name === 'io')![1].value
    s.io.opts.extraHeaders = { cookie: `io=${io}` }
  }
  a.stop()
  // Clients of A see their WebSocket close and reconnect: polling first, then the upgrade, all keyed by the same cookie.
  await waitFor('every client connected again', async () => (await b.stats()).connections >= 20 && sockets.every((s) => s.connected && s.io.engine.transport.name === 'websocket'), 60_000)
  const sb = await b.stats()
  t.equal(sb.connections, 20, `B now has every client: its own ${20 - onA} and A's ${onA} (reconnected)`)
  t.same(sb.errors, {}, 'no "Session ID unknown" at B: each reconnect\'s polls and upgrade all reached B')
  const acks = await Promise.all(sockets.map(async (s, i) => await new Promise<boolean>((resolve) => { s.timeout(10_000).emit('echo', i, (err: Error | null, v: unknown) => { resolve(err === null && v === i) }) })))
  t.equal(acks.filter(Boolean).length, 20, 'all 20 acks after the move')
  t.equal(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="issued"}'), 20, 'no new cookie: the reconnections presented their old one')
  t.ok(await metric(f, 'ferry_http_affinity_total{upstream="api",outcome="fallback"}') >= onA, `A's ${onA} keys fell back to B (outcome="fallback" ≥ ${onA})`)
})
