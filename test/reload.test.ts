import { createServer, request as httpRequest, Agent } from 'node:http'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import t from 'tap'
import { stringify } from 'yaml'
import { metric, runCli, startFerry, waitFor, type Teardown } from './helpers/ferry.js'
import { connect, startMuxBackend } from './helpers/mux.js'
import { freePort } from './helpers/redis.js'

/**
 * Hot reload (SIGHUP, POST /reload, `ferry reload`): routes and upstreams swap at once, what is under
 * way keeps its upstream, unchanged upstreams keep their connections, a bad config changes nothing.
 */

async function named (t: Teardown, name: string): Promise<number> {
  const server = createServer((req, res) => { res.end(`${name} ${req.url ?? ''}`) })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return (server.address() as { port: number }).port
}

async function get (port: number, path: string, agent?: Agent): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('reload: routes and upstreams swap; sessions and unchanged links stay; a bad config or a restart-only field is refused by name', async (t) => {
  const a = await named(t, 'A')
  const b = await named(t, 'B')
  const echo = (s: import('../src/backend/index.js').Session): void => { s.on('message', (d, bin) => { s.send(d, { binary: bin }) }) }
  const chat = await startMuxBackend(t, echo)
  const live1 = await startMuxBackend(t, echo)
  const live2 = await startMuxBackend(t, echo)
  const base = (api: number, live: number): Record<string, any> => ({
    upstreams: {
      api: { protocol: 'http', endpoints: [`127.0.0.1:${api}`] },
      chat: { protocol: 'mux', endpoints: [`127.0.0.1:${chat.port}`], pool: { links: 2 } },
      live: { protocol: 'mux', endpoints: [`127.0.0.1:${live}`], pool: { links: 1 } },
    },
    routes: [{ match: { path: '/' }, upstream: 'api' }, { match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/live' }, upstream: 'live' }],
  })
  const f = await startFerry(t, base(a, live1.port))
  // The config file the gateway reads on a reload: rewritten with the same listeners.
  const file = String(f.child.spawnargs.at(-1))
  const write = (cfg: Record<string, any>): void => {
    cfg.listen = { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } }
    cfg.logging = { pretty: false }
    cfg.drain = { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 5000 }
    writeFileSync(file, stringify(cfg))
  }
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => { agent.destroy() })
  t.equal((await get(f.httpPort, '/x', agent)).body, 'A /x', 'before: / goes to A')
  const chatSession = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  const liveSession = await connect(`ws://127.0.0.1:${f.httpPort}/live`)
  const version1 = (await (await fetch(`${f.adminUrl}/status`)).json()).config.version
  const chatLinks = chat.connectionsAccepted

  // v2: api moves to B, a new route and upstream, live moves to live2; chat is unchanged.
  const v2 = base(b, live2.port)
  v2.upstreams.extra = { protocol: 'http', endpoints: [`127.0.0.1:${b}`] }
  v2.routes.unshift({ match: { path: '/new' }, upstream: 'extra' })
  write(v2)
  const res = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  const body = await res.json()
  t.equal(res.status, 200, 'POST /reload → 200')
  t.match(body, { result: 'ok', added: ['extra'], unchanged: ['chat'] }, 'it reports what was added and kept')
  t.same([...body.changed].sort(), ['api', 'live'], 'and what changed')
  t.equal((await get(f.httpPort, '/x', agent)).body, 'B /x', 'after: / goes to B, on the same keep-alive client connection')
  t.equal((await get(f.httpPort, '/new/1')).body, 'B /new/1', 'the new route works')
  chatSession.ws.send('still chat')
  liveSession.ws.send('still live')
  await Promise.all([chatSession.waitMessages(1), liveSession.waitMessages(1)])
  t.equal(chatSession.messages[0]!.data.toString(), 'still chat', 'a session on the unchanged upstream carries on')
  t.equal(liveSession.messages[0]!.data.toString(), 'still live', 'a session on a changed upstream carries on (it keeps the upstream it got)')
  t.equal(chat.connectionsAccepted, chatLinks, 'the unchanged upstream kept its links (no new backend connection)')
  const fresh = await connect(`ws://127.0.0.1:${f.httpPort}/live`)
  await waitFor('new live session on live2', () => live2.sessions.size === 1)
  t.equal(live1.sessions.size, 1, 'new sessions go to the new endpoint; the old one keeps only its session')
  liveSession.ws.close()
  await waitFor('the retired upstream\'s link closes once its last session ended', () => live1.links().length === 0, 10_000)
  t.pass('the retired mux upstream said GOAWAY and closed its link after its last stream')
  const st = await (await fetch(`${f.adminUrl}/status`)).json()
  t.not(st.config.version, version1, `/status shows the new config version (${version1} → ${st.config.version})`)
  t.equal(st.config.lastReload.result, 'ok', 'and the last reload\'s result')

  // A bad config: refused with the field named; the running config keeps serving.
  const bad = base(a, live2.port)
  bad.upstreams.api.endpoints = []
  write(bad)
  const r = await runCli(['reload', '--admin', `127.0.0.1:${f.adminPort}`])
  t.equal(r.code, 1, '`ferry reload` exits 1 on a refused reload')
  t.match(r.stderr, 'upstreams.api.endpoints', 'naming the field')
  const rb = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as Record<string, unknown>
  t.match(rb, { result: 'refused' }, 'POST /reload: refused too')
  t.notOk('version' in rb, `a file that is no valid config has no version: none in the answer (${JSON.stringify(rb).slice(0, 80)})`)
  t.equal((await get(f.httpPort, '/x', agent)).body, 'B /x', 'the running config still serves')
  const st2 = await (await fetch(`${f.adminUrl}/status`)).json()
  t.equal(st2.config.version, st.config.version, 'the version did not change')
  t.match(st2.config.lastReload, { result: 'refused' }, '/status shows the refusal')
  t.ok(st2.config.lastReload.errors.some((e: string) => e.includes('upstreams.api.endpoints')), 'with its field-named errors')

  // The HTTP listener moves: the new address serves, the old one takes no new connections, and the
  // keep-alive connection made on the old one carries on.
  const newPort = await freePort()
  const movedCfg = structuredClone(v2)
  write(movedCfg)
  writeFileSync(file, stringify({ ...movedCfg, listen: { http: { host: '127.0.0.1', port: newPort }, admin: { host: '127.0.0.1', port: 0 } } }))
  const m = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
  t.match(m, { result: 'ok' }, `listen.http moved to ${newPort}: ok`)
  t.equal((await get(newPort, '/moved')).body, 'B /moved', 'the new address serves')
  t.equal((await get(f.httpPort, '/x', agent)).body, 'B /x', 'the keep-alive connection on the old address carries on')
  const { connect: tcpConnect } = await import('node:net')
  const oldRefused = await new Promise<boolean>((resolve) => { const c = tcpConnect(f.httpPort, '127.0.0.1'); c.on('connect', () => { c.destroy(); resolve(false) }); c.on('error', () => { resolve(true) }) })
  t.ok(oldRefused, 'the old address takes no new connections')
  t.equal((await (await fetch(`${f.adminUrl}/status`)).json()).listeners.http.port, newPort, '/status shows the new port')
  // A port that cannot be bound (the admin listener's) is refused, naming the listener; nothing changes.
  writeFileSync(file, stringify({ ...movedCfg, upstreams: { ...movedCfg.upstreams, api: { protocol: 'http', endpoints: [`127.0.0.1:${a}`] } }, listen: { http: { host: '127.0.0.1', port: f.adminPort }, admin: { host: '127.0.0.1', port: 0 } } }))
  const taken = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  t.equal(taken.status, 400, 'moving to a taken port → 400')
  t.match((await taken.json()).errors.join('\n'), /listen\.http: cannot listen on 127\.0\.0\.1/, 'naming listen.http')
  t.equal((await get(newPort, '/x')).body, 'B /x', 'and the running config (api → B, the moved listener) still serves')
  // A field that needs a restart.
  writeFileSync(file, stringify({ ...movedCfg, affinity: { ttlMs: 1234 }, listen: { http: { host: '127.0.0.1', port: newPort }, admin: { host: '127.0.0.1', port: 0 } } }))
  const r2 = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  t.equal(r2.status, 400, 'changing affinity → 400')
  t.match((await r2.json()).errors.join('\n'), /affinity: cannot change on a reload/, 'naming affinity and why')
  const keepPort = (cfg: Record<string, any>): void => { write(cfg); writeFileSync(file, stringify({ ...cfg, listen: { http: { host: '127.0.0.1', port: newPort }, admin: { host: '127.0.0.1', port: 0 } } })) }
  const compress = structuredClone(v2)
  compress.routes.find((x: any) => x.match.path === '/chat').websocket = { compression: 'shared' }
  keepPort(compress)
  const r3 = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
  t.match(r3.errors.join('\n'), /routes\[\d\]\.websocket\.compression: cannot change on a reload for the existing WebSocket path \/chat/, 'a uWS-bound WebSocket setting of an existing path is refused by field')

  // SIGHUP reloads too.
  const v3 = structuredClone(v2)
  v3.routes.unshift({ match: { path: '/hup' }, upstream: 'api' })
  keepPort(v3)
  f.child.kill('SIGHUP')
  await waitFor('reloaded by SIGHUP', async () => (await get(newPort, '/hup')).body === 'B /hup', 5000)
  t.pass('SIGHUP applied the new route')
  t.equal(await metric(f, 'ferry_config_reloads_total{result="ok"}'), 3, 'reloads counted: 3 ok')
  t.equal(await metric(f, 'ferry_config_reloads_total{result="refused"}'), 5, 'and 5 refused')
  chatSession.ws.close()
  fresh.ws.close()
})

t.test('reload: TCP listeners are kept (pointed at the new upstream), added and removed; open connections continue', async (t) => {
  const { createServer: tcpServer, connect: tcpConnect } = await import('node:net')
  const echo = async (name: string): Promise<number> => {
    const server = tcpServer((s) => { s.on('error', () => {}); s.on('data', (d) => { s.write(`${name}:${d.toString()}`) }) })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(async () => { server.close(); await new Promise((resolve) => setTimeout(resolve, 10)) })
    return (server.address() as { port: number }).port
  }
  const e1 = await echo('e1')
  const e2 = await echo('e2')
  const cfg = (upstreamPort: number, extra: boolean, keepFirst = true): Record<string, any> => ({
    upstreams: { t: { protocol: 'tcp', endpoints: [`127.0.0.1:${upstreamPort}`] } },
    listen: {
      http: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      tcp: [
        ...(keepFirst ? [{ name: 'one', host: '127.0.0.1', port: 0, upstream: 't' }] : []),
        ...(extra ? [{ name: 'two', host: '127.0.0.1', port: 0, upstream: 't' }] : []),
      ],
    },
    logging: { pretty: false },
    drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 5000 },
  })
  const f = await startFerry(t, cfg(e1, false))
  const file = String(f.child.spawnargs.at(-1))
  const ports = async (): Promise<Record<string, number>> => Object.fromEntries((await (await fetch(`${f.adminUrl}/status`)).json()).listeners.tcp.map((l: any) => [l.name, l.port]))
  const talk = async (sock: import('node:net').Socket, msg: string): Promise<string> => {
    const got = once(sock, 'data')
    sock.write(msg)
    return String((await got)[0])
  }
  const dial = async (port: number): Promise<import('node:net').Socket> => {
    const s = tcpConnect(port, '127.0.0.1')
    s.on('error', () => {})
    await once(s, 'connect')
    t.teardown(() => { s.destroy() })
    return s
  }
  const one = (await ports()).one!
  const old = await dial(one)
  t.equal(await talk(old, 'hi'), 'e1:hi', 'before: listener one → e1')
  writeFileSync(file, stringify(cfg(e2, true)))
  const r = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
  t.match(r, { result: 'ok', changed: ['t'] }, 'reload ok: the tcp upstream changed')
  const p = await ports()
  t.equal(p.one, one, 'listener one kept its port (not re-bound)')
  t.ok(p.two! > 0, `listener two was added (port ${p.two})`)
  t.equal(await talk(old, 'again'), 'e1:again', 'the open connection still goes to e1')
  t.equal(await talk(await dial(one), 'new'), 'e2:new', 'a new connection on listener one goes to e2')
  t.equal(await talk(await dial(p.two!), 'two'), 'e2:two', 'listener two forwards too')
  writeFileSync(file, stringify(cfg(e2, true, false)))
  t.match(await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json(), { result: 'ok' }, 'reload removing listener one: ok')
  t.equal(await talk(old, 'still'), 'e1:still', 'its open connection continues')
  const refused = await new Promise<boolean>((resolve) => { const s = tcpConnect(one, '127.0.0.1'); s.on('connect', () => { s.destroy(); resolve(false) }); s.on('error', () => { resolve(true) }) })
  t.ok(refused, 'but its port takes no new connections')
  old.destroy()
})

t.test('reload.watch: a changed config file is reloaded by itself; a broken one is refused and the old config kept', async (t) => {
  const a = await named(t, 'A')
  const b = await named(t, 'B')
  const cfg = (port: number): Record<string, any> => ({
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${port}`] } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    reload: { watch: true, watchIntervalMs: 100 },
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
    logging: { pretty: false },
    drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 5000 },
  })
  const f = await startFerry(t, cfg(a))
  const file = String(f.child.spawnargs.at(-1))
  t.equal((await get(f.httpPort, '/')).body, 'A /', 'before: A')
  writeFileSync(file, stringify(cfg(b)))
  await waitFor('reloaded from the file', async () => (await get(f.httpPort, '/')).body === 'B /', 5000)
  t.pass('after the file changed: B, without a signal')
  writeFileSync(file, 'upstreams: [not, a, mapping]\n')
  await waitFor('refusal logged', () => f.logs.some((l) => l.msg === 'config reload refused; the running config is kept'), 5000)
  t.equal((await get(f.httpPort, '/')).body, 'B /', 'a broken file is refused; B still serves')
})

/**
 * A backend that holds every request until `open()` is called (then answers them and every later one
 * at once, or after `delayMs`), and counts the TCP connections Ferry has open to it.
 */
async function heldBackend (t: Teardown, delayMs = 0): Promise<{ port: number, open: () => void, connections: () => number, answered: () => number }> {
  let held: Array<() => void> | undefined = []
  let connections = 0
  let answered = 0
  const server = createServer((req, res) => {
    const answer = (): void => { answered++; res.end(`backend ${req.url ?? ''}`) }
    if (held !== undefined) held.push(answer)
    else if (delayMs > 0) setTimeout(answer, delayMs)
    else answer()
  })
  server.on('connection', (s) => { connections++; s.on('close', () => { connections-- }) })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return {
    port: (server.address() as { port: number }).port,
    open: () => { const h = held ?? []; held = undefined; for (const fn of h) fn() },
    connections: () => connections,
    answered: () => answered,
  }
}

/** A config with one HTTP upstream `api` (one endpoint); `upstream` is merged into it. */
function queued (port: number, upstream: Record<string, any>): Record<string, any> {
  return {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${port}`], ...upstream } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
    logging: { pretty: false },
    drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 5000 },
  }
}

t.test('reload: requests queued on a changed HTTP upstream are served by it (none 503); the retired pool closes after them', async (t) => {
  const be = await heldBackend(t)
  const f = await startFerry(t, queued(be.port, { pool: { maxConnections: 1, queueTimeoutMs: 20000 }, timeouts: { responseMs: 30000 } }))
  const file = String(f.child.spawnargs.at(-1))
  // One request holds the only connection; the other five wait in Ferry's queue.
  const N = 6
  const answers = Array.from({ length: N }, async (_, i) => await get(f.httpPort, `/q${i}`))
  await waitFor('5 requests queued', async () => await metric(f, 'ferry_upstream_queue_depth{upstream="api"}') === N - 1, 5000)
  writeFileSync(file, stringify(queued(be.port, { pool: { maxConnections: 1, queueTimeoutMs: 20000 }, timeouts: { responseMs: 29000 } })))
  const r = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
  t.match(r, { result: 'ok', changed: ['api'] }, 'reload changing the upstream\'s responseMs: ok')
  t.equal(await metric(f, 'ferry_upstream_queue_depth{upstream="api"}'), N - 1, `after the reload the ${N - 1} requests still wait (on the retired instance)`)
  be.open()
  const got = await Promise.all(answers)
  t.same(got.map((g) => g.status), Array(N).fill(200), `all ${N} requests (1 in flight, ${N - 1} queued at the reload) answered 200, none 503`)
  t.same(got.map((g) => g.body), Array.from({ length: N }, (_, i) => `backend /q${i}`), 'each by the backend')
  t.equal((await get(f.httpPort, '/after')).body, 'backend /after', 'a new request goes to the new instance')
  // The retired instance's keep-alive connection goes once its queue is served: only the new one's stays.
  await waitFor('the retired pool closed its connection', () => be.connections() === 1, 5000)
  t.equal(be.connections(), 1, 'the backend holds 1 connection from Ferry (the new instance\'s), ≤ maxConnections 1')
})

t.test('reload: a request queued on the retired instance keeps its own queueTimeoutMs', async (t) => {
  const be = await heldBackend(t)
  const f = await startFerry(t, queued(be.port, { pool: { maxConnections: 1, queueTimeoutMs: 500 } }))
  const file = String(f.child.spawnargs.at(-1))
  const started = Date.now()
  const first = get(f.httpPort, '/held')
  const waiting = get(f.httpPort, '/waits')
  await waitFor('1 request queued', async () => await metric(f, 'ferry_upstream_queue_depth{upstream="api"}') === 1, 5000)
  writeFileSync(file, stringify(queued(be.port, { pool: { maxConnections: 1, queueTimeoutMs: 60000 } })))
  t.match(await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json(), { result: 'ok', changed: ['api'] }, 'reload (queueTimeoutMs 500 → 60000): ok')
  const w = await waiting
  const ms = Date.now() - started
  t.equal(w.status, 503, 'the queued request still times out on the retired instance\'s deadline')
  t.match(JSON.parse(w.body), { error: { code: 'FERRY_ERR_QUEUE_TIMEOUT' } }, 'as FERRY_ERR_QUEUE_TIMEOUT (not cut by the reload)')
  t.ok(ms >= 450 && ms < 5000, `after its queueTimeoutMs 500 (${ms} ms, within 450-5000)`)
  be.open()
  t.equal((await first).status, 200, 'the request in flight got its 200')
})

t.test('reload under load: 50 keep-alive clients on a queueing upstream, 20 reloads of its config, every answer 200', async (t) => {
  const be = await heldBackend(t, 2)
  be.open()
  // queueTimeoutMs long: this is about reloads losing nothing, and on a loaded machine 50 clients on 2
  // connections can wait past the default 5 s (503 FERRY_ERR_QUEUE_TIMEOUT, which is not a reload's doing).
  const cfg = (responseMs: number): Record<string, any> => queued(be.port, { pool: { maxConnections: 2, queueTimeoutMs: 60_000 }, timeouts: { responseMs } })
  const f = await startFerry(t, cfg(30000))
  const file = String(f.child.spawnargs.at(-1))
  const agent = new Agent({ keepAlive: true, maxSockets: 50 })
  t.teardown(() => { agent.destroy() })
  const statuses = new Map<number, number>()
  let stop = false
  const client = async (): Promise<void> => {
    while (!stop) {
      const r = await get(f.httpPort, '/load', agent).catch(() => ({ status: 0, body: '' }))
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1)
    }
  }
  const clients = Array.from({ length: 50 }, client)
  const started = Date.now()
  let queuedAtReload = 0
  for (let i = 1; i <= 20; i++) {
    await waitFor('requests queued', async () => await metric(f, 'ferry_upstream_queue_depth{upstream="api"}') > 0, 5000)
    queuedAtReload += await metric(f, 'ferry_upstream_queue_depth{upstream="api"}')
    writeFileSync(file, stringify(cfg(30000 - i)))
    const r = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
    if (r.result !== 'ok') t.fail(`reload ${i}: ${JSON.stringify(r)}`)
  }
  stop = true
  await Promise.all(clients)
  const ms = Date.now() - started
  const total = [...statuses.values()].reduce((a, b) => a + b, 0)
  const other = total - (statuses.get(200) ?? 0)
  t.ok(queuedAtReload >= 20, `requests were queued at every reload (${queuedAtReload} in all, ≥ 20)`)
  t.equal(other, 0, `0 of ${total} answers other than 200 (${JSON.stringify(Object.fromEntries(statuses))})`)
  t.ok(ms < 30000, `20 reloads under load within 30 s (${ms} ms)`)
  await waitFor('retired pools closed', () => be.connections() <= 2, 5000)
  t.ok(be.connections() <= 2, `the backend holds ≤ 2 connections (maxConnections 2) once the retired pools closed (${be.connections()})`)
})
