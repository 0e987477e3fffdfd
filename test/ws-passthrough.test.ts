import { createHash } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { connect as netConnect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { deadPort, startRawBackend } from './helpers/backend.js'
import { adminStatus, metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { connect, upgradeStatus, type Client } from './helpers/mux.js'

const MiB = 1024 * 1024

interface WsBackend {
  port: number
  server: WebSocketServer
  requests: IncomingMessage[]
  sockets: WebSocket[]
  closes: Array<[number, string]>
}

/** An unmodified `ws` backend on 127.0.0.1:0 (echo unless `onConnection` says otherwise). */
async function startWsBackend (t: Teardown, onConnection?: (ws: WebSocket, req: IncomingMessage) => void, opts: ConstructorParameters<typeof WebSocketServer>[0] = {}): Promise<WsBackend> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 64 * MiB, ...opts })
  await new Promise<void>((resolve) => server.once('listening', resolve))
  const b: WsBackend = { port: (server.address() as { port: number }).port, server, requests: [], sockets: [], closes: [] }
  server.on('connection', (ws, req) => {
    b.requests.push(req)
    b.sockets.push(ws)
    ws.on('error', () => { /* recorded through close */ })
    ws.on('close', (code, reason) => { b.closes.push([code, reason.toString()]) })
    if (onConnection !== undefined) onConnection(ws, req)
    else ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
  })
  t.teardown(async () => {
    for (const ws of server.clients) ws.terminate()
    await new Promise((resolve) => server.close(resolve))
  })
  return b
}

function wsConfig (endpoints: string[], upstream: Record<string, unknown> = {}, route: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: { legacy: { protocol: 'ws', endpoints, ...upstream } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy', ...route }],
    logging: { level: 'info', accessLog: false },
  }
}

async function closedWithin (c: Client, ms: number): Promise<{ code: number, reason: string }> {
  return await Promise.race([c.closed, new Promise<{ code: number, reason: string }>((resolve) => setTimeout(() => { resolve({ code: -1, reason: 'no close' }) }, ms).unref())])
}

/** A `ws` client with request headers of our choosing; `response` is the gateway's 101. */
async function connectWith (url: string, headers: Record<string, string>, protocols: string[] = []): Promise<Client & { response: IncomingMessage }> {
  const ws = new WebSocket(url, protocols, { perMessageDeflate: false, headers })
  const messages: Client['messages'] = []
  ws.on('message', (data: Buffer, binary) => { messages.push({ data, binary }) })
  ws.on('error', () => { /* recorded through close */ })
  const closed = new Promise<{ code: number, reason: string }>((resolve) => { ws.on('close', (code, reason) => { resolve({ code, reason: reason.toString() }) }) })
  let response: IncomingMessage | undefined
  ws.once('upgrade', (res) => { response = res })
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('close', () => { reject(new Error('closed before open')) })
    ws.once('unexpected-response', (_req, res) => { reject(new Error(`upgrade answered ${res.statusCode}`)) })
  })
  return { ws, messages, closed, response: response!, waitMessages: async (n) => { await waitFor(`${n} messages`, () => messages.length >= n) } }
}

/** The endpoint entry of upstream `legacy` in /status. */
async function endpointStatus (f: FerryProcess, address: string): Promise<any> {
  const st = await adminStatus(f)
  return st.upstreams.find((u: any) => u.name === 'legacy').endpoints.find((e: any) => e.address === address)
}

async function assertAlive (t: Test, f: FerryProcess): Promise<void> {
  const r = await fetch(`${f.adminUrl}/healthz`)
  t.equal(r.status, 200, 'the gateway process is alive afterwards (/healthz 200)')
  t.equal(f.child.exitCode, null, 'and has not exited')
}

const upstreamSockets = 'ferry_connections{side="upstream",kind="ws",upstream="legacy"}'

t.test('echo: text and binary from 1 byte to 1 MiB intact and in order; path, query and subprotocol forwarded', async (t) => {
  const backend = await startWsBackend(t, undefined, { handleProtocols: (protocols) => protocols.has('chat.v2') ? 'chat.v2' : false })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { maxPayloadLength: 2 * MiB } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws/room?user=ann&x=1`, ['chat.v1', 'chat.v2'])
  t.equal(c.ws.protocol, 'chat.v2', 'the client gets the subprotocol the backend chose')
  const req = backend.requests[0]!
  t.equal(req.url, '/ws/room?user=ann&x=1', 'path and query forwarded')
  t.same(String(req.headers['sec-websocket-protocol']).split(',').map((p) => p.trim()), ['chat.v1', 'chat.v2'], 'offered subprotocols forwarded in order')
  t.equal(req.headers['sec-websocket-extensions'], undefined, 'no permessage-deflate offered to the backend')
  const msgs: Array<{ data: Buffer, binary: boolean }> = [
    { data: Buffer.from('a'), binary: false },
    { data: Buffer.from('héllo wörld ✓'), binary: false },
    { data: Buffer.from([0]), binary: true },
    { data: Buffer.alloc(64 * 1024 + 3, 9), binary: true },
    { data: Buffer.from('z'.repeat(300 * 1024)), binary: false },
    { data: Buffer.from(Uint8Array.from({ length: MiB }, (_, i) => i & 0xff)), binary: true },
  ]
  for (const m of msgs) c.ws.send(m.data, { binary: m.binary })
  await c.waitMessages(msgs.length)
  const h = (b: Buffer): string => createHash('sha1').update(b).digest('hex')
  t.same(c.messages.map((m) => [m.binary, m.data.length, h(m.data)]), msgs.map((m) => [m.binary, m.data.length, h(m.data)]), 'all six echoed with type, length and bytes intact, in order')
  t.equal(await metric(f, 'ferry_ws_messages_total{mode="ws",direction="to_upstream"}'), msgs.length, 'messages counted')
  t.equal((await endpointStatus(f, `127.0.0.1:${backend.port}`)).sessions, 1, '/status shows 1 backend session')
  t.equal(await metric(f, upstreamSockets), 1, 'ferry_connections counts 1 backend socket')
  c.ws.close()
  await waitFor('backend socket released', async () => await metric(f, upstreamSockets) === 0)
  t.pass('ferry_connections back to 0 after the session closed')
  await assertAlive(t, f)
})


// A flush of one message under 16 KiB goes to uWS without cork() (src/front/ws-session.ts, UNCORKED_SEND_MAX);
// from 16 KiB, or several at once, inside cork(). Each message here waits for its echo, so each backend
// read carries one: both sides of the boundary, one at a time.
t.test('one message per backend read on both sides of the uncorked-send boundary (16 KiB − 1, 16 KiB, 16 KiB + 1) arrives intact', async (t) => {
  const backend = await startWsBackend(t)
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`]))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws/boundary`)
  const sizes = [1, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 2]
  for (const [i, size] of sizes.entries()) {
    const binary = i % 2 === 0
    const data = Buffer.from(Uint8Array.from({ length: size }, (_, k) => binary ? (k * 7 + i) & 0xff : 0x61 + (k + i) % 26))
    c.ws.send(data, { binary })
    await c.waitMessages(i + 1)
    const got = c.messages[i]!
    t.ok(got.data.equals(data) && got.binary === binary, `message ${i + 1} of ${size} bytes echoed intact with its type`)
  }
  c.ws.close()
  await assertAlive(t, f)
})

// Ferry corks each backend socket while uWS hands it a poll's messages and writes them in one go at the
// loop's check phase: a close sent right behind a burst must still follow every message of the burst.
t.test('bursts: 20 sessions × 300 messages sent back to back, then a close: the backend gets each session\'s messages complete and in order, then the close code', async (t) => {
  const got = new Map<string, string[]>()
  const backend = await startWsBackend(t, (ws, req) => {
    const list: string[] = []
    got.set(req.url ?? '', list)
    ws.on('message', (data) => { list.push(data.toString()) })
  })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`]))
  const SESSIONS = 20
  const PER = 300
  const clients = await Promise.all(Array.from({ length: SESSIONS }, async (_, i) => await connect(`ws://127.0.0.1:${f.httpPort}/ws/s${i}`)))
  for (let i = 0; i < SESSIONS; i++) {
    const c = clients[i]!
    for (let k = 0; k < PER; k++) c.ws.send(`s${i}-${k}`)
    c.ws.close(4000, `done ${i}`)
  }
  await waitFor('every backend socket closed', () => backend.closes.length === SESSIONS)
  const bad: string[] = []
  for (let i = 0; i < SESSIONS; i++) {
    const list = got.get(`/ws/s${i}`) ?? []
    const want = Array.from({ length: PER }, (_, k) => `s${i}-${k}`)
    if (JSON.stringify(list) !== JSON.stringify(want)) bad.push(`s${i}: ${list.length} messages, first wrong at ${list.findIndex((m, k) => m !== want[k])}`)
  }
  t.same(bad, [], `all ${SESSIONS * PER} messages reached the backend, each session's in order`)
  t.same(backend.closes.map(([code, reason]) => `${code} ${reason}`).sort(), Array.from({ length: SESSIONS }, (_, i) => `4000 done ${i}`).sort(), 'then each close code and reason, after the last message')
  t.equal(await metric(f, 'ferry_ws_messages_total{mode="ws",direction="to_upstream"}'), SESSIONS * PER, 'every message counted once')
  // Each upgrade completes after the backend's 101, outside a uWS callback: uWS 20.30 printed this line
  // once per session until Ferry ran the upgrade in its cork anchor's cork (src/front/cork-anchor.ts).
  t.notMatch(f.stderr(), /corked callback/, `no uWS "writes must be made from within a corked callback" line for ${SESSIONS} passthrough upgrades (issue 22.9)`)
  await assertAlive(t, f)
})
t.test('headers: the route\'s forwardHeaders pass, others do not; X-Forwarded-* set; a backend greeting sent at once arrives first', async (t) => {
  const backend = await startWsBackend(t, (ws, req) => {
    ws.send(JSON.stringify(req.headers))
    ws.on('message', (d, b) => { ws.send(d, { binary: b }) })
  })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { forwardHeaders: ['authorization', 'x-tenant', 'sec-websocket-extensions'] } }))
  const c = await connectWith(`ws://127.0.0.1:${f.httpPort}/ws`, {
    Authorization: 'Bearer t0k',
    'X-Tenant': 'acme',
    Cookie: 'sid=1',
    'X-Secret': 'nope',
    'X-Forwarded-For': '10.9.9.9',
    'X-Request-Id': 'req-42',
  })
  c.ws.send('after')
  await c.waitMessages(2).catch((err: Error) => { throw new Error(`${err.message}; got ${JSON.stringify(c.messages.map((m) => m.data.toString().slice(0, 40)))}`) })
  const seen = JSON.parse(c.messages[0]!.data.toString()) as Record<string, string>
  t.equal(c.messages[1]!.data.toString(), 'after', 'the greeting the backend sent before the client upgrade completed came first')
  t.equal(seen.authorization, 'Bearer t0k', 'authorization forwarded (listed)')
  t.equal(seen['x-tenant'], 'acme', 'x-tenant forwarded (listed)')
  t.equal(seen.cookie, undefined, 'cookie not forwarded (not listed on this route)')
  t.equal(seen['x-secret'], undefined, 'x-secret not forwarded')
  t.equal(seen['sec-websocket-extensions'], undefined, 'a listed handshake header (sec-websocket-extensions) is still not copied')
  t.equal(seen['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is the client address (an incoming one is not trusted by default)')
  t.equal(seen['x-forwarded-proto'], 'http', 'X-Forwarded-Proto set')
  t.equal(seen['x-forwarded-host'], `127.0.0.1:${f.httpPort}`, 'X-Forwarded-Host is the client\'s Host')
  t.equal(seen['x-request-id'], 'req-42', 'the client\'s X-Request-Id forwarded')
  t.equal(seen['sec-websocket-protocol'], undefined, 'no subprotocol offered when the client offered none')
  t.equal(c.response.headers['sec-websocket-protocol'], undefined, 'and none answered')
  c.ws.close()
})

t.test('a message the backend sends in the same packet as its 101 reaches the client', async (t) => {
  // A raw backend writes the 101 and a text frame with one write(): ws hands both to Ferry in one read.
  const backend = await startRawBackend(t, (s) => {
    let head = ''
    let answered = false
    s.on('data', (d: Buffer) => {
      if (answered) return // frames from Ferry: not read
      head += d.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      answered = true
      const key = /sec-websocket-key: *(\S+)/i.exec(head)![1]!
      const accept = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64')
      const payload = Buffer.from('hello from the first packet')
      s.write(Buffer.concat([
        Buffer.from(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`, 'latin1'),
        Buffer.from([0x81, payload.length]), payload,
      ]))
    })
  })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`]))
  for (let i = 0; i < 5; i++) {
    const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
    await waitFor('the first message', () => c.messages.length >= 1, 5000).catch(() => {})
    t.equal(c.messages[0]?.data.toString(), 'hello from the first packet', `session ${i + 1}: the client got the backend's first message`)
    c.ws.terminate()
  }
})

t.test('subprotocols: the backend choosing none is passed on (not a 502); choosing one never offered → 502', async (t) => {
  const none = await startWsBackend(t, undefined, { handleProtocols: () => false })
  const rogue = await startWsBackend(t, undefined, { handleProtocols: () => 'rogue.v9' })
  const f = await startFerry(t, {
    upstreams: {
      none: { protocol: 'ws', endpoints: [`127.0.0.1:${none.port}`] },
      rogue: { protocol: 'ws', endpoints: [`127.0.0.1:${rogue.port}`] },
    },
    routes: [{ match: { path: '/none' }, upstream: 'none' }, { match: { path: '/rogue' }, upstream: 'rogue' }],
  })
  // A browser accepts a 101 without Sec-WebSocket-Protocol after offering some; the offer is sent as a
  // raw header here because the ws client (unlike browsers) would refuse that answer itself.
  const c = await connectWith(`ws://127.0.0.1:${f.httpPort}/none`, { 'Sec-WebSocket-Protocol': 'chat.v1, chat.v2' })
  t.equal(none.requests[0]!.headers['sec-websocket-protocol'], 'chat.v1, chat.v2', 'the backend saw the offer')
  t.equal(c.response.statusCode, 101, 'the upgrade succeeded')
  t.equal(c.response.headers['sec-websocket-protocol'], undefined, 'with no subprotocol, as the backend answered')
  c.ws.send('still works')
  await c.waitMessages(1)
  t.equal(c.messages[0]!.data.toString(), 'still works', 'and the session relays')
  c.ws.close()
  const r = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/rogue`, { 'Sec-WebSocket-Protocol': 'chat.v1' })
  t.equal(r.status, 502, 'a backend selecting a subprotocol the client did not offer: 502')
  t.match(JSON.parse(r.body), { error: { code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE' } }, 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE')
  await waitFor('the rogue backend socket closed', () => rogue.closes.length === 1)
  t.pass('the rogue backend\'s socket was closed')
})

t.test('close codes and reasons travel both ways; a backend reset closes the client 1011', async (t) => {
  const backend = await startWsBackend(t, (ws) => {
    ws.on('message', (d) => {
      const cmd = d.toString()
      if (cmd === 'close 4002') { ws.send('last words'); ws.close(4002, 'server says bye') }
      else if (cmd === 'close bare') ws.close()
      else if (cmd === 'close 1001') ws.close(1001, 'restarting')
      else if (cmd === 'reset') (ws as unknown as { _socket: Socket })._socket.destroy()
      else if (cmd === 'bad utf8') ws.send(Buffer.from([0x68, 0xff, 0xfe]), { binary: false })
    })
  })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`]))
  const url = `ws://127.0.0.1:${f.httpPort}/ws`
  const backendClose = async (n: number): Promise<[number, string]> => {
    await waitFor(`backend close #${n}`, () => backend.closes.length >= n)
    return backend.closes[n - 1]!
  }

  const a = await connect(url)
  a.ws.close(4001, 'client says bye')
  t.same(await backendClose(1), [4001, 'client says bye'], 'client 4001 "client says bye" → backend sees 4001 with the reason')
  t.same(await closedWithin(a, 5000), { code: 4001, reason: 'client says bye' }, 'and the client\'s close handshake completes')

  const b = await connect(url)
  b.ws.send('close 4002')
  t.same(await closedWithin(b, 5000), { code: 4002, reason: 'server says bye' }, 'backend 4002 "server says bye" → client sees 4002 with the reason')
  t.same(b.messages.map((m) => m.data.toString()), ['last words'], 'after the message the backend sent just before its close')

  const c = await connect(url)
  c.ws.close()
  t.same(await backendClose(3), [1005, ''], 'client close without a code (1005) → backend gets a close frame without one (reads 1005)')

  const d = await connect(url)
  d.ws.send('close bare')
  t.equal((await closedWithin(d, 5000)).code, 1000, 'backend close without a code (1005) → client sees 1000')

  const e = await connect(url)
  e.ws.send('close 1001')
  t.same(await closedWithin(e, 5000), { code: 1001, reason: 'restarting' }, 'backend 1001 → client 1001')

  const g = await connect(url)
  await waitFor('backend socket', () => backend.sockets.length === 6)
  g.ws.terminate()
  t.equal((await backendClose(6))[0], 1001, 'client vanished without a close frame (1006) → backend sees 1001')

  const r = await connect(url)
  r.ws.send('reset')
  t.same(await closedWithin(r, 5000), { code: 1011, reason: 'backend connection lost' }, 'backend socket reset mid-session → client closed 1011')
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="ws",reason="FERRY_ERR_WS_UPSTREAM_LOST"}'), 1, 'counted as FERRY_ERR_WS_UPSTREAM_LOST')

  const u = await connect(url)
  u.ws.send('bad utf8')
  t.same(await closedWithin(u, 5000), { code: 1011, reason: 'backend protocol error' }, 'backend sends a text message that is not UTF-8 → client closed 1011')
  t.same(await backendClose(8), [1007, ''], 'and the backend was closed 1007 (invalid payload)')
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="ws",reason="FERRY_ERR_UPSTREAM_PROTOCOL"}'), 1, 'counted as FERRY_ERR_UPSTREAM_PROTOCOL')
  await waitFor('every backend socket released', async () => await metric(f, upstreamSockets) === 0)
  t.pass('ferry_connections back to 0: no backend socket left behind')
  await assertAlive(t, f)
})

t.test('upgrade failures: unreachable → 502, no answer → 504, handshake refused → 502', async (t) => {
  const dead = await deadPort()
  const silent = await startRawBackend(t, () => { /* accepts, never answers */ })
  const refusing = await startWsBackend(t, undefined, { verifyClient: (_info, cb) => { cb(false, 403, 'Forbidden') } })
  const f = await startFerry(t, {
    upstreams: {
      down: { protocol: 'ws', endpoints: [`127.0.0.1:${dead}`], timeouts: { connectMs: 1000 } },
      silent: { protocol: 'ws', endpoints: [`127.0.0.1:${silent.port}`], timeouts: { connectMs: 300 } },
      refusing: { protocol: 'ws', endpoints: [`ws://127.0.0.1:${refusing.port}`] },
    },
    routes: [{ match: { path: '/down' }, upstream: 'down' }, { match: { path: '/silent' }, upstream: 'silent' }, { match: { path: '/refusing' }, upstream: 'refusing' }],
  })
  const down = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/down`)
  t.equal(down.status, 502, 'backend unreachable: 502')
  t.match(JSON.parse(down.body), { error: { code: 'FERRY_ERR_UPSTREAM_CONNECT' } }, 'FERRY_ERR_UPSTREAM_CONNECT')
  const t0 = Date.now()
  const slow = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/silent`)
  const took = Date.now() - t0
  t.equal(slow.status, 504, 'backend accepted TCP but never answered the handshake: 504')
  t.match(JSON.parse(slow.body), { error: { code: 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT' } }, 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT')
  t.ok(took >= 250 && took < 3000, `answered after ${took} ms: connectMs 300 was enforced (bound 3000 ms)`)
  const refused = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/refusing`)
  t.equal(refused.status, 502, 'backend answered 403: 502')
  t.match(JSON.parse(refused.body), { error: { code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE' } }, 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE')
  t.equal(await metric(f, 'ferry_ws_upgrade_failures_total{route="*/silent",code="FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT"}'), 1, 'counted in ferry_ws_upgrade_failures_total by route and code')
  await assertAlive(t, f)
})

t.test('passive health: 5xx handshake answers eject an endpoint, 4xx answers (the backend judging the client) do not', async (t) => {
  const unavailable = await startWsBackend(t, undefined, { verifyClient: (_info, cb) => { cb(false, 503, 'Unavailable') } })
  const forbidding = await startWsBackend(t, undefined, { verifyClient: (_info, cb) => { cb(false, 403, 'Forbidden') } })
  const ejection = { consecutiveFailures: 2, ejectMs: 60000 }
  const f = await startFerry(t, {
    upstreams: {
      a: { protocol: 'ws', endpoints: [`127.0.0.1:${unavailable.port}`], ejection },
      b: { protocol: 'ws', endpoints: [`127.0.0.1:${forbidding.port}`], ejection },
    },
    routes: [{ match: { path: '/a' }, upstream: 'a' }, { match: { path: '/b' }, upstream: 'b' }],
  })
  for (let i = 0; i < 3; i++) {
    t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/a`)).status, 502, `503 answer #${i + 1} → 502`)
    t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/b`)).status, 502, `403 answer #${i + 1} → 502`)
  }
  const st = await adminStatus(f)
  const ep = (name: string): any => st.upstreams.find((u: any) => u.name === name).endpoints[0]
  t.equal(ep('a').health, 'ejected', 'the endpoint answering 503 was ejected after 2 (consecutiveFailures)')
  t.equal(ep('b').health, 'up', 'the endpoint answering 403 three times is still up')
  t.equal(ep('b').ejections, 0, 'and was never ejected')
})

t.test('failover: a refused or silent endpoint is retried once on another within connectMs; the bad one gets ejected', async (t) => {
  const live = await startWsBackend(t)
  const dead = await deadPort()
  const silent = await startRawBackend(t, () => { /* accepts, never answers */ })
  const f = await startFerry(t, {
    upstreams: {
      refused: { protocol: 'ws', endpoints: [`127.0.0.1:${dead}`, `127.0.0.1:${live.port}`], ejection: { consecutiveFailures: 2, ejectMs: 60000 } },
      blackhole: { protocol: 'ws', endpoints: [`127.0.0.1:${silent.port}`, `127.0.0.1:${live.port}`], timeouts: { connectMs: 1000 } },
    },
    routes: [{ match: { path: '/refused' }, upstream: 'refused' }, { match: { path: '/blackhole' }, upstream: 'blackhole' }],
  })
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) statuses.push((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/refused`)).status)
  t.same(statuses, [101, 101, 101, 101, 101, 101], 'round-robin over a dead and a live endpoint: all 6 upgrades succeed')
  t.ok(await metric(f, 'ferry_upstream_retries_total{upstream="refused"}') >= 1, 'the failover is counted in ferry_upstream_retries_total')
  const st = await adminStatus(f)
  t.equal(st.upstreams.find((u: any) => u.name === 'refused').endpoints[0].health, 'ejected', 'the refusing endpoint is ejected')
  // The silent endpoint is not ejected yet (5 failures needed), so round-robin sends each upgrade to it first.
  for (let i = 0; i < 2; i++) {
    const before = silent.accepted()
    const t0 = Date.now()
    const r = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/blackhole`)
    const took = Date.now() - t0
    t.equal(r.status, 101, `upgrade ${i + 1} through a silent and a live endpoint succeeded`)
    if (silent.accepted() > before) t.ok(took < 1500, `after trying the silent endpoint first, within ${took} ms (bound 1500; connectMs 1000, that attempt gave up at half of it)`)
  }
  t.ok(silent.accepted() >= 1, 'the silent endpoint was tried')
  await assertAlive(t, f)
})

t.test('balance: hash keeps a client IP on one endpoint; least-connections fills the emptier one; an affinity key keeps its endpoint', async (t) => {
  const a = await startWsBackend(t)
  const b = await startWsBackend(t)
  const eps = [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`]
  const f = await startFerry(t, {
    upstreams: {
      hashed: { protocol: 'ws', endpoints: eps, balance: 'hash' },
      least: { protocol: 'ws', endpoints: eps, balance: 'least-connections' },
      affine: { protocol: 'ws', endpoints: eps },
    },
    routes: [
      { match: { path: '/hashed' }, upstream: 'hashed' },
      { match: { path: '/least' }, upstream: 'least' },
      { match: { path: '/affine' }, upstream: 'affine', affinity: { key: 'query:uid' } },
    ],
  })
  const hashed: Client[] = []
  for (let i = 0; i < 6; i++) hashed.push(await connect(`ws://127.0.0.1:${f.httpPort}/hashed`))
  t.same([a.requests.length, b.requests.length].sort(), [0, 6], 'hash: all 6 sessions from 127.0.0.1 went to one endpoint')
  for (const c of hashed) c.ws.close()
  await waitFor('hashed sessions closed', () => a.server.clients.size + b.server.clients.size === 0)
  const least: Client[] = []
  for (let i = 0; i < 4; i++) least.push(await connect(`ws://127.0.0.1:${f.httpPort}/least`))
  await waitFor('4 backend sockets', () => a.server.clients.size + b.server.clients.size === 4)
  // Empty the busier endpoint (the backend closes its sessions), then open as many again: all must go
  // to it (round-robin would split them).
  const heavy = a.server.clients.size >= b.server.clients.size ? a : b
  const light = heavy === a ? b : a
  const heavyCount = heavy.server.clients.size
  const lightCount = light.server.clients.size
  for (const ws of heavy.server.clients) ws.close(1000, 'go')
  await waitFor('heavy endpoint emptied (gateway side)', async () => {
    const st = await adminStatus(f)
    const e = st.upstreams.find((u: any) => u.name === 'least').endpoints.find((x: any) => x.address === `127.0.0.1:${heavy.port}`)
    return e.sessions === 0 && e.closing === 0
  })
  for (let i = 0; i < heavyCount; i++) least.push(await connect(`ws://127.0.0.1:${f.httpPort}/least`))
  t.equal(heavy.server.clients.size, heavyCount, `least-connections: the ${heavyCount} new sessions all went to the emptied endpoint`)
  t.equal(light.server.clients.size, lightCount, 'none to the busy one')
  for (const c of least) c.ws.close()
  // Round-robin upstream, but sessions with an affinity key go where the key hashes, every time.
  const backendOf = (uid: string): string[] => [a, b].filter((x) => x.requests.some((r) => r.url === `/affine?uid=${uid}`)).map((x) => String(x.port))
  const sticky: Client[] = []
  for (const uid of ['u1', 'u2', 'u3', 'u4', 'u5', 'u6']) for (let k = 0; k < 3; k++) sticky.push(await connect(`ws://127.0.0.1:${f.httpPort}/affine?uid=${uid}`))
  const placed = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6'].map(backendOf)
  t.ok(placed.every((p) => p.length === 1), `each of 6 keys opened 3 sessions, all on one endpoint (${placed.map((p) => p.join('+')).join(', ')})`)
  for (const c of sticky) c.ws.close()
})

t.test('backpressure to the backend: a client that stops reading pauses the backend socket; RSS bounded; nothing lost', async (t) => {
  const TOTAL = 64 * MiB
  const CHUNK = 64 * 1024
  let backendWs: WebSocket | undefined
  const backend = await startWsBackend(t, (ws) => { backendWs = ws })
  // maxBackpressure far above TOTAL: without the pause uWS would queue all 64 MiB instead of closing the client.
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { maxBackpressure: 256 * MiB } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  ;(c.ws as unknown as { _socket: Socket })._socket.pause()
  await waitFor('backend connection', () => backendWs !== undefined)
  const bws = backendWs!
  const rssBefore = f.rss()
  // The backend keeps its own send buffer topped up to 8 MiB. Bytes that left it (sent - bufferedAmount)
  // went into kernel buffers and Ferry: they stop growing once Ferry stops reading, and would reach
  // 64 MiB if it did not.
  let sent = 0
  const pump = (limit: number): void => {
    while (sent < TOTAL && bws.bufferedAmount < limit) {
      bws.send(Buffer.alloc(CHUNK, (sent / CHUNK) & 0xff))
      sent += CHUNK
    }
  }
  let lastLeft = -1
  let still = 0
  await waitFor('bytes leaving the backend to stop growing (10 polls in a row), or all 64 MiB to leave it', () => {
    pump(8 * MiB)
    const left = sent - bws.bufferedAmount
    still = left === lastLeft ? still + 1 : 0
    lastLeft = left
    return still >= 10 || left >= TOTAL
  }, 30000, 30)
  t.ok(lastLeft < 24 * MiB, `${(lastLeft / MiB).toFixed(1)} MiB left the backend while the client read nothing (bound 24 MiB of 64): Ferry paused its socket`)
  t.ok(bws.bufferedAmount >= 8 * MiB, `the backend's own buffer stayed full (${(bws.bufferedAmount / MiB).toFixed(1)} MiB)`)
  const grew = f.rss() - rssBefore
  t.ok(grew < 32 * MiB, `gateway RSS grew ${(grew / MiB).toFixed(1)} MiB (bound 32 MiB)`)
  ;(c.ws as unknown as { _socket: Socket })._socket.resume()
  await waitFor('the backend sent everything', () => { pump(4 * MiB); return sent >= TOTAL }, 30000)
  await c.waitMessages(TOTAL / CHUNK)
  t.equal(c.messages.findIndex((m, k) => m.data.length !== CHUNK || m.data[0] !== (k & 0xff)), -1, `all ${TOTAL / CHUNK} chunks (64 MiB) arrived in order after the client resumed`)
  c.ws.close()
  await assertAlive(t, f)
})

t.test('a maximal message always fits: maxPayloadLength-sized messages pass with the default maxBufferedToUpstream (issue 22.3)', async (t) => {
  const backend = await startWsBackend(t)
  // The defaults: maxPayloadLength 1 MiB, maxBufferedToUpstream 1 MiB.
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`]))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  for (const size of [MiB - 13, MiB - 1, MiB]) {
    const n = c.messages.length
    c.ws.send(Buffer.alloc(size, 3))
    await Promise.race([c.waitMessages(n + 1), c.closed])
    t.equal(c.messages[n]?.data.length, size, `a ${size}-byte message is echoed (the frame header does not count against the limit)`)
  }
  t.equal(c.ws.readyState, WebSocket.OPEN, 'and the client is still open (not closed 1013)')
  c.ws.close()
})

t.test('backpressure from the client: a backend that stops reading gets the client closed 1013 at maxBufferedToUpstream; RSS bounded', async (t) => {
  const backend = await startWsBackend(t, (ws) => { (ws as unknown as { _socket: Socket })._socket.pause() })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { maxPayloadLength: 64 * 1024, maxBufferedToUpstream: MiB } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  await waitFor('backend connection', () => backend.sockets.length === 1)
  const rssBefore = f.rss()
  const chunk = Buffer.alloc(60 * 1024, 7)
  let sent = 0
  let result: { code: number, reason: string } | undefined
  void c.closed.then((r) => { result = r })
  // Up to 256 MiB, never more than 2 MiB queued in the client itself.
  await waitFor('the client closed, or 256 MiB sent', () => {
    while (result === undefined && c.ws.readyState === WebSocket.OPEN && c.ws.bufferedAmount < 2 * MiB && sent < 256 * MiB) {
      c.ws.send(chunk)
      sent += chunk.length
    }
    return result !== undefined || sent >= 256 * MiB
  }, 30000)
  const r = result ?? await closedWithin(c, 5000)
  t.equal(r.code, 1013, `the client was closed 1013 after sending ${(sent / MiB).toFixed(1)} MiB to a backend reading nothing`)
  t.ok(sent < 256 * MiB, 'before 256 MiB')
  const grew = f.rss() - rssBefore
  t.ok(grew < 32 * MiB, `gateway RSS grew ${(grew / MiB).toFixed(1)} MiB (bound 32 MiB)`)
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="ws",reason="FERRY_ERR_WS_UPSTREAM_SLOW"}'), 1, 'counted as FERRY_ERR_WS_UPSTREAM_SLOW')
  // The stalled backend socket is cut after the close grace (it never reads our close frame).
  await waitFor('backend socket released', async () => await metric(f, upstreamSockets) === 0, 10000)
  t.pass('the stalled backend socket was released')
  await assertAlive(t, f)
})

t.test('lifecycle: a client gone during the backend handshake leaves no backend socket; SIGTERM drains: sessions closed 1012 both ways', async (t) => {
  const held: Array<(ok: boolean) => void> = []
  let hold = true
  const backend = await startWsBackend(t, undefined, { verifyClient: (_info, cb) => { if (hold) held.push(cb); else cb(true) } })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], { timeouts: { connectMs: 20000 } }))
  // A raw client asks for an upgrade and goes away while Ferry waits for the backend's answer.
  const raw = netConnect({ host: '127.0.0.1', port: f.httpPort })
  raw.on('error', () => {})
  raw.write(`GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`)
  await waitFor('backend holding the handshake', () => held.length === 1)
  raw.destroy()
  // Whether uWS noticed before the backend answers or only at the upgrade, the backend side must close.
  held.shift()!(true)
  await waitFor('the backend side closed', () => backend.closes.length === 1)
  t.equal(backend.closes[0]![0], 1001, 'the backend socket opened for a client that left is closed 1001')
  await waitFor('released', async () => await metric(f, upstreamSockets) === 0)
  t.pass('ferry_connections back to 0')

  hold = false
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  hold = true
  const pending = upgradeStatus(`ws://127.0.0.1:${f.httpPort}/ws`).catch((err: Error) => ({ status: -1, body: err.message }))
  await waitFor('backend holding the second handshake', () => held.length === 1)
  const t0 = Date.now()
  const code = await f.stop()
  const took = Date.now() - t0
  t.equal(code, 0, 'Ferry exited 0 on SIGTERM')
  t.ok(took < 10000, `within ${took} ms (bound 10000, drain deadline 5000, connectMs 20000: the held handshake was given up)`)
  t.equal((await closedWithin(c, 5000)).code, 1012, 'the open session\'s client got 1012 (drain: reconnect)')
  await waitFor('backend close', () => backend.closes.length === 2)
  t.same(backend.closes[1], [1012, 'gateway draining: reconnect'], 'its backend got 1012 "gateway draining: reconnect"')
  const p = await Promise.race([pending, new Promise<{ status: number, body: string }>((resolve) => setTimeout(() => { resolve({ status: 0, body: 'hung' }) }, 5000).unref())])
  t.not(p.status, 0, `the upgrade waiting on the backend did not hang (${p.status === -1 ? p.body : p.status})`)
  t.not(p.status, 101, 'and was not upgraded')
  for (const cb of held) cb(false)
})
