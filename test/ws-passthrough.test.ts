import { createHash } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import t from 'tap'
import { WebSocketServer, type WebSocket } from 'ws'
import { adminStatus, metric, startFerry, waitFor, type Teardown } from './helpers/ferry.js'
import { deadPort } from './helpers/backend.js'
import { connect, upgradeStatus, type Client } from './helpers/mux.js'

interface WsBackend {
  port: number
  server: WebSocketServer
  requests: IncomingMessage[]
  sockets: WebSocket[]
  closes: Array<[number, string]>
}

/** An unmodified `ws` backend on 127.0.0.1:0 (echo unless `onConnection` says otherwise). */
async function startWsBackend (t: Teardown, onConnection?: (ws: WebSocket, req: IncomingMessage) => void, opts: ConstructorParameters<typeof WebSocketServer>[0] = {}): Promise<WsBackend> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024, ...opts })
  await new Promise<void>((resolve) => server.once('listening', resolve))
  const b: WsBackend = { port: (server.address() as { port: number }).port, server, requests: [], sockets: [], closes: [] }
  server.on('connection', (ws, req) => {
    b.requests.push(req)
    b.sockets.push(ws)
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
  return { upstreams: { legacy: { protocol: 'ws', endpoints, ...upstream } }, routes: [{ match: { path: '/ws' }, upstream: 'legacy', ...route }] }
}

async function closedWithin (c: Client, ms: number): Promise<{ code: number, reason: string }> {
  return await Promise.race([c.closed, new Promise<{ code: number, reason: string }>((resolve) => setTimeout(() => { resolve({ code: -1, reason: 'no close' }) }, ms).unref())])
}

t.test('passthrough echo: text and binary from 1 byte to 1 MiB intact and in order; path, query, subprotocol and headers forwarded', async (t) => {
  const backend = await startWsBackend(t, undefined, { handleProtocols: (protocols) => protocols.has('chat.v2') ? 'chat.v2' : false })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { maxPayloadLength: 2 * 1024 * 1024 } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws/room?user=ann&x=1`, ['chat.v1', 'chat.v2'])
  t.equal(c.ws.protocol, 'chat.v2', 'the client gets the subprotocol the backend chose')
  const req = backend.requests[0]!
  t.equal(req.url, '/ws/room?user=ann&x=1', 'path and query forwarded')
  t.same(String(req.headers['sec-websocket-protocol']).split(',').map((p) => p.trim()), ['chat.v1', 'chat.v2'], 'offered subprotocols forwarded in order')
  t.equal(req.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For set')
  t.ok(typeof req.headers['x-request-id'] === 'string' && req.headers['x-request-id'] !== '', 'a request id is forwarded')
  const msgs: Array<{ data: Buffer, binary: boolean }> = [
    { data: Buffer.from('a'), binary: false },
    { data: Buffer.from('héllo wörld'), binary: false },
    { data: Buffer.from([0]), binary: true },
    { data: Buffer.alloc(64 * 1024 + 3, 9), binary: true },
    { data: Buffer.from('z'.repeat(300 * 1024)), binary: false },
    { data: Buffer.alloc(1024 * 1024).map((_, i) => i & 0xff), binary: true },
  ]
  for (const m of msgs) c.ws.send(m.data, { binary: m.binary })
  await c.waitMessages(msgs.length)
  const h = (b: Buffer): string => createHash('sha1').update(b).digest('hex')
  t.ok(c.messages.every((m, i) => m.binary === msgs[i]!.binary && h(m.data) === h(msgs[i]!.data)), 'all six echoed with type and bytes intact, in order')
  t.equal(await metric(f, 'ferry_ws_messages_total{mode="ws",direction="to_upstream"}'), msgs.length, 'messages counted')
  const st = await adminStatus(f)
  t.equal(st.upstreams.find((u: any) => u.name === 'legacy').endpoints[0].sessions, 1, '/status shows the backend session')
  c.ws.close()
})

t.test('passthrough close codes and reasons travel both ways', async (t) => {
  const backend = await startWsBackend(t, (ws) => {
    ws.on('message', (d) => { if (d.toString() === 'close me') ws.close(4002, 'server says bye') })
  })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`]))
  const a = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  a.ws.close(4001, 'client says bye')
  await waitFor('backend saw the close', () => backend.closes.length === 1)
  t.same(backend.closes[0], [4001, 'client says bye'], 'client → backend: 4001 with its reason')
  const b = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  b.ws.send('close me')
  t.same(await closedWithin(b, 5000), { code: 4002, reason: 'server says bye' }, 'backend → client: 4002 with its reason')
  // A backend that vanishes (socket destroyed, no close frame): the client gets 1011, counted.
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  await waitFor('backend socket', () => backend.sockets.length === 3)
  ;(backend.sockets[2] as unknown as { _socket: { destroy: () => void } })._socket.destroy()
  t.equal((await closedWithin(c, 5000)).code, 1011, 'backend reset mid-session → client closed 1011')
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="ws",reason="FERRY_ERR_WS_UPSTREAM_LOST"}'), 1, 'counted as FERRY_ERR_WS_UPSTREAM_LOST')
})

t.test('passthrough upgrade failures: backend down → 502, backend refusing the handshake → 502', async (t) => {
  const dead = await deadPort()
  const refusing = await startWsBackend(t, undefined, { verifyClient: (_info, cb) => { cb(false, 403, 'Forbidden') } })
  const f = await startFerry(t, {
    upstreams: {
      down: { protocol: 'ws', endpoints: [`127.0.0.1:${dead}`], timeouts: { connectMs: 1000 } },
      refusing: { protocol: 'ws', endpoints: [`ws://127.0.0.1:${refusing.port}`] },
    },
    routes: [{ match: { path: '/down' }, upstream: 'down' }, { match: { path: '/refusing' }, upstream: 'refusing' }],
  })
  const down = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/down`)
  t.equal(down.status, 502, 'backend unreachable: 502')
  t.match(JSON.parse(down.body), { error: { code: 'FERRY_ERR_UPSTREAM_CONNECT' } }, 'FERRY_ERR_UPSTREAM_CONNECT')
  const refused = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/refusing`)
  t.equal(refused.status, 502, 'backend answered 403: 502')
  t.match(JSON.parse(refused.body), { error: { code: 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE' } }, 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE')
  t.equal((await adminStatus(f)).state, 'running', 'Ferry keeps running')
})

t.test('passthrough backpressure: a client that stops reading pauses the backend socket; nothing is lost', async (t) => {
  const TOTAL = 64 * 1024 * 1024
  const CHUNK = 64 * 1024
  let backendWs: WebSocket | undefined
  let peakBuffered = 0
  const backend = await startWsBackend(t, (ws) => { backendWs = ws })
  const f = await startFerry(t, wsConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { maxBackpressure: 16 * 1024 * 1024 } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/ws`)
  ;(c.ws as unknown as { _socket: { pause: () => void } })._socket.pause()
  await waitFor('backend connection', () => backendWs !== undefined)
  const rssBefore = f.rss()
  // The backend writes 64 MiB as fast as its socket takes it, watching its own bufferedAmount rise.
  let sent = 0
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (sent < TOTAL && backendWs!.bufferedAmount < 8 * 1024 * 1024) {
        backendWs!.send(Buffer.alloc(CHUNK, (sent / CHUNK) & 0xff))
        sent += CHUNK
      }
      peakBuffered = Math.max(peakBuffered, backendWs!.bufferedAmount)
      if (sent >= TOTAL || peakBuffered >= 8 * 1024 * 1024) { resolve(); return }
      setTimeout(pump, 20)
    }
    pump()
  })
  await new Promise((resolve) => setTimeout(resolve, 500))
  peakBuffered = Math.max(peakBuffered, backendWs!.bufferedAmount)
  t.ok(peakBuffered >= 8 * 1024 * 1024, `the backend's own buffer filled (${(peakBuffered / 1048576).toFixed(1)} MiB): Ferry stopped reading from it`)
  const grew = f.rss() - rssBefore
  t.ok(grew < 48 * 1024 * 1024, `gateway RSS grew ${(grew / 1048576).toFixed(1)} MiB (bound 48 MiB) while the client read nothing`)
  ;(c.ws as unknown as { _socket: { resume: () => void } })._socket.resume()
  // Now let the backend finish.
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (sent < TOTAL && backendWs!.bufferedAmount < 4 * 1024 * 1024) {
        backendWs!.send(Buffer.alloc(CHUNK, (sent / CHUNK) & 0xff))
        sent += CHUNK
      }
      if (sent >= TOTAL) { resolve(); return }
      setTimeout(pump, 5)
    }
    pump()
  })
  await c.waitMessages(TOTAL / CHUNK)
  t.equal(c.messages.findIndex((m, k) => m.data.length !== CHUNK || m.data[0] !== (k & 0xff)), -1, `all ${TOTAL / CHUNK} chunks (64 MiB) arrived in order after the client resumed`)
  c.ws.close()
})
