import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { adminStatus, metric, startFerry, waitFor } from './helpers/ferry.js'
import { deadPort } from './helpers/backend.js'
import { connect, connectMany, muxConfig, startMuxBackend, startRawMuxBackend, upgradeStatus, type Client } from './helpers/mux.js'
import { encodeFrame, encodeHeader, Flags, FrameType, HEADER_BYTES } from '../src/mux/codec.js'

const SESSIONS = 5000

/** Message j of session i: deterministic, so the echo can be checked byte for byte. */
function payload (i: number, j: number): { data: Buffer, binary: boolean } {
  if (j === 0) return { data: Buffer.from('x'), binary: false } // 1 byte
  if (j === 1) return { data: Buffer.from(`session ${i} message ${j} ✓`), binary: false }
  const size = 1 + ((i * 7919 + j * 104729) % 4096)
  const b = Buffer.allocUnsafe(size)
  for (let k = 0; k < size; k++) b[k] = (i + j * 31 + k) & 0xff
  return { data: b, binary: true }
}

/** The close, or code -1 if it did not come within `ms` (so a regression fails instead of hanging). */
async function closedWithin (c: Client, ms: number): Promise<{ code: number, reason: string }> {
  return await Promise.race([c.closed, new Promise<{ code: number, reason: string }>((resolve) => setTimeout(() => { resolve({ code: -1, reason: 'no close' }) }, ms).unref())])
}

const digest = (b: Buffer): string => createHash('sha1').update(b).digest('hex')

t.test(`${SESSIONS} sessions over links: 4 — at most 4 backend connections, echo in order and intact, topic fan-out exactly once`, async (t) => {
  const backend = await startMuxBackend(t, (s) => {
    s.subscribe('room:all')
    if (Number(s.query.get('i')) % 2 === 0) s.subscribe('room:even')
    s.on('message', (data, isBinary) => { s.send(data, { binary: isBinary }) })
  })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 4 } }, { websocket: { maxPayloadLength: 2 * 1024 * 1024 } }))
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const clients: Client[] = new Array(SESSIONS)
  let next = 0
  await Promise.all(Array.from({ length: 200 }, async () => {
    while (next < SESSIONS) {
      const i = next++
      clients[i] = await connect(`${url}?i=${i}`)
    }
  }))
  await waitFor('backend sees every session', () => backend.sessions.size === SESSIONS, 30000)
  t.equal(backend.sessions.size, SESSIONS, `backend holds ${SESSIONS} sessions at once`)
  t.ok(backend.connectionsAccepted <= 4, `backend accepted ${backend.connectionsAccepted} TCP connections (at most 4)`)
  t.equal(backend.links().length, 4, 'over 4 links')
  t.ok(backend.links().every((l) => l.sessions > SESSIONS / 4 * 0.8), `spread over the links (least-streams): ${backend.links().map((l) => l.sessions).join(', ')}`)
  t.equal(await metric(f, `ferry_ws_sessions{route="*/chat",mode="mux"}`), SESSIONS, 'ferry_ws_sessions says so too')

  // Echo: 4 messages per session (1 byte text, text, binary up to 4 KiB) plus, on every 250th session,
  // a 1 MiB binary and a 300 KiB text message (bigger than the 256 KiB stream window and the 64 KiB frame).
  const big = (i: number): Array<{ data: Buffer, binary: boolean }> => i % 250 !== 0
    ? []
    : [{ data: Buffer.alloc(1024 * 1024, i & 0xff), binary: true }, { data: Buffer.from('é'.repeat(150 * 1024)), binary: false }]
  const expected = clients.map((_, i) => [0, 1, 2, 3].map((j) => payload(i, j)).concat(big(i)))
  for (const [i, c] of clients.entries()) for (const m of expected[i]!) c.ws.send(m.data, { binary: m.binary })
  await Promise.all(clients.map(async (c, i) => { await c.waitMessages(expected[i]!.length) }))
  let bad = 0
  for (const [i, c] of clients.entries()) {
    const want = expected[i]!
    if (c.messages.length !== want.length || c.messages.some((m, k) => m.binary !== want[k]!.binary || digest(m.data) !== digest(want[k]!.data))) bad++
  }
  t.equal(bad, 0, `every session got its ${4} messages (and the big ones) back in order, type and bytes intact`)

  // Topic fan-out: one PUBLISH per link that carries subscribers, each subscriber exactly once.
  for (const c of clients) c.messages.length = 0
  t.equal(backend.publish('room:all', 'first'), 4, 'publish sends one frame on each of the 4 links with subscribers (not one per client)')
  backend.publish('room:all', Buffer.from([1, 2, 3]))
  backend.publish('room:even', 'evens only')
  t.equal(backend.publish('room:nobody', 'dropped'), 0, 'a topic nobody subscribed to is sent nowhere')
  const evenLinks = new Set([...backend.sessions].filter((s) => s.topics.has('room:even')).map((s) => s.linkId)).size
  const want = (i: number): number => i % 2 === 0 ? 3 : 2
  await Promise.all(clients.map(async (c, i) => { await c.waitMessages(want(i)) }))
  await new Promise((resolve) => setTimeout(resolve, 300)) // duplicates would arrive by now
  const wrong = clients.filter((c, i) => {
    const m = c.messages
    if (m.length !== want(i)) return true
    if (m[0]!.data.toString() !== 'first' || m[0]!.binary) return true
    if (!m[1]!.binary || !m[1]!.data.equals(Buffer.from([1, 2, 3]))) return true
    return i % 2 === 0 && m[2]!.data.toString() !== 'evens only'
  }).length
  t.equal(wrong, 0, `all ${SESSIONS} subscribers got each topic message exactly once, in order, text/binary kept; odd ones no room:even`)
  t.equal(await metric(f, 'ferry_mux_published_total{upstream="chat"}'), 4 + 4 + evenLinks, `PUBLISH frames: 4 links × 2 for room:all, ${evenLinks} for room:even (the links its subscribers are on)`)
  t.equal(await metric(f, 'ferry_mux_fanout_deliveries_total{upstream="chat"}'), SESSIONS * 2 + SESSIONS / 2, 'fan-out deliveries counted')

  for (const c of clients) c.ws.close(1000, 'done')
  await waitFor('backend sees every close', () => backend.sessions.size === 0, 30000)
  t.equal(backend.connectionsAccepted, 4, 'still the same 4 links after all sessions ended')
  const st = await adminStatus(f)
  t.equal(st.websocket.sessions, 0, '/status: no sessions left')
  t.equal(st.upstreams.find((u: any) => u.name === 'chat').endpoints[0].links.filter((l: any) => l.state === 'ready').length, 4, '/status lists 4 ready links')
})

t.test('a client that stops reading is held by credit: the others carry on, gateway memory stays bounded, nothing is lost', async (t) => {
  const TOTAL = 48 * 1024 * 1024
  const CHUNK = 64 * 1024
  let slowSession: import('../src/backend/index.js').Session | undefined
  let heldByCredit = false
  let sent = 0
  const pump = (): void => {
    const s = slowSession!
    while (sent < TOTAL) {
      const b = Buffer.alloc(CHUNK, (sent / CHUNK) & 0xff)
      sent += CHUNK
      if (!s.send(b)) { heldByCredit = true; s.once('drain', pump); return }
    }
  }
  const backend = await startMuxBackend(t, (s) => {
    if (s.query.get('slow') === '1') { slowSession = s; setImmediate(pump); return }
    s.on('message', (d, b) => { s.send(d, { binary: b }) })
  })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 1 } }, { websocket: { maxBackpressure: 8 * 1024 * 1024 } }))
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const rssBefore = f.rss()
  const slow = await connect(`${url}?slow=1`)
  // Stop reading: the client's socket is paused, so its kernel buffers fill and then uWS's.
  ;(slow.ws as unknown as { _socket: { pause: () => void, resume: () => void } })._socket.pause()
  await waitFor('the backend is held by credit', () => heldByCredit && slowSession!.bufferedAmount > 0, 20000)
  await new Promise((resolve) => setTimeout(resolve, 500))
  const held = slowSession!.bufferedAmount
  t.ok(held > 0, `the backend's send() returned false and ${held} bytes wait in the backend, not in the gateway`)

  // Others on the same (single) link: 50 sessions × 100 round trips complete while the slow one stays stuck.
  const others = await connectMany(url, 50, 50)
  await Promise.all(others.map(async (c) => {
    for (let k = 0; k < 100; k++) {
      c.ws.send(`ping ${k}`)
      await c.waitMessages(k + 1)
    }
  }))
  t.ok(others.every((c) => c.messages.length === 100 && c.messages[99]!.data.toString() === 'ping 99'), '50 other sessions on the same link completed 100 round trips each while the slow client read nothing')
  t.ok(sent < TOTAL, `the slow session is still stalled (${sent / 1024 / 1024} of ${TOTAL / 1024 / 1024} MiB handed to send())`)
  const grew = f.rss() - rssBefore
  t.ok(grew < 40 * 1024 * 1024, `gateway RSS grew ${(grew / 1024 / 1024).toFixed(1)} MiB while ${((sent - held) / 1024 / 1024).toFixed(1)} MiB were in flight to a non-reading client (bound: 40 MiB; credit keeps the rest in the backend)`)
  t.ok(await metric(f, 'ferry_mux_credit_stalls_total{upstream="chat",direction="to_client"}') >= 1, 'the stall is counted')

  // Resume: everything arrives, in order.
  ;(slow.ws as unknown as { _socket: { resume: () => void } })._socket.resume()
  await slow.waitMessages(TOTAL / CHUNK)
  const outOfOrder = slow.messages.findIndex((m, k) => m.data.length !== CHUNK || m.data[0] !== (k & 0xff) || m.data[CHUNK - 1] !== (k & 0xff))
  t.equal(outOfOrder, -1, `all ${TOTAL / CHUNK} chunks (48 MiB) arrived in order and intact after the client resumed`)
  for (const c of [slow, ...others]) c.ws.close()
})

t.test('without failover, a killed link closes only its sessions with 1012; the others continue and the pool reconnects', async (t) => {
  const backend = await startMuxBackend(t, (s) => { s.on('message', (d, b) => { s.send(d, { binary: b }) }) })
  // handoff.failover off: the behaviour before backend handoff (test/backend-handoff.test.ts has it on).
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 4 }, reconnect: { minDelayMs: 50, maxDelayMs: 200 }, handoff: { failover: false } }))
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const clients = await connectMany(url, 200, 50)
  await waitFor('200 sessions', () => backend.sessions.size === 200)
  const byKey = new Map([...backend.sessions].map((s) => [s.key, s]))
  const victim = backend.links()[0]!
  const onVictim = new Set([...byKey.values()].filter((s) => s.linkId === victim.id))
  t.ok(onVictim.size > 0, `${onVictim.size} sessions on the link that is cut`)
  // Traffic in flight while the link dies.
  for (const c of clients) c.ws.send('before')
  victim.terminate()
  const results = await Promise.all(clients.map(async (c) => await Promise.race([c.closed, new Promise<undefined>((resolve) => setTimeout(resolve, 3000).unref())])))
  const closed = results.filter((r) => r !== undefined)
  t.equal(closed.length, onVictim.size, `exactly the ${onVictim.size} clients of the cut link were closed`)
  t.ok(closed.every((r) => r!.code === 1012), 'with 1012 (service restart: reconnect)')
  const alive = clients.filter((_, i) => results[i] === undefined)
  for (const c of alive) c.messages.length = 0
  for (const c of alive) c.ws.send('after')
  await Promise.all(alive.map(async (c) => { await c.waitMessages(1) }))
  t.ok(alive.every((c) => c.messages.some((m) => m.data.toString() === 'after')), `the other ${alive.length} sessions still echo`)
  await waitFor('the pool is back to 4 links', () => backend.links().length === 4, 10000)
  t.equal(backend.links().length, 4, 'the pool reconnected the lost link')
  const fresh = await connectMany(url, 40, 40)
  await waitFor('new sessions', () => backend.sessions.size === alive.length + 40)
  t.ok(backend.links().every((l) => l.sessions > 0), 'new sessions also use the new link (least-streams)')
  t.ok(await metric(f, 'ferry_mux_link_events_total{upstream="chat",endpoint="127.0.0.1:' + backend.port + '",event="lost"}') >= 1, 'the loss is counted')
  for (const c of [...alive, ...fresh]) c.ws.close()
})

t.test('misbehaving mux backend: bad frames reset a stream or the link, are counted, and never crash Ferry', async (t) => {
  // The raw backend acts per session path: /chat/<case>.
  const evil = await startRawMuxBackend(t, (f, socket, meta) => {
    if (f.type !== FrameType.OPEN && f.type !== FrameType.DATA) return
    const id = f.streamId
    const path = String(meta?.path ?? '')
    if (f.type === FrameType.OPEN) {
      if (path === '/chat/badutf8') socket.write(encodeFrame(FrameType.DATA, 0, id, Buffer.from([0x68, 0xff, 0xfe])))
      if (path === '/chat/badcredit') socket.write(encodeFrame(FrameType.CREDIT, 0, id, Buffer.from([0, 1, 2])))
      // One 20,000-byte frame against the 16,384 bytes of credit the gateway granted (flow.initialWindow).
      if (path === '/chat/overcredit') socket.write(encodeFrame(FrameType.DATA, Flags.BINARY, id, Buffer.alloc(20000)))
      if (path === '/chat/huge') socket.write(encodeHeader(FrameType.DATA, 0, id, 1 << 30))
      if (path === '/chat/garbage') socket.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'))
      return
    }
    // DATA from the gateway: echo (so healthy sessions prove the link still works)
    socket.write(encodeFrame(FrameType.DATA, f.flags & Flags.BINARY, id, f.payload))
  })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${evil.port}`], { pool: { links: 1 }, flow: { initialWindow: 16384 }, reconnect: { minDelayMs: 50, maxDelayMs: 100 }, handoff: { failover: false } }))
  const base = `ws://127.0.0.1:${f.httpPort}/chat`
  const healthy = await connect(`${base}/ok`)
  const echo = async (): Promise<boolean> => {
    const n = healthy.messages.length
    healthy.ws.send('still there?')
    await healthy.waitMessages(n + 1)
    return healthy.messages[n]!.data.toString() === 'still there?'
  }

  for (const [name, code] of [['badutf8', 'FERRY_ERR_MUX_BAD_UTF8'], ['badcredit', 'FERRY_ERR_MUX_BAD_FRAME'], ['overcredit', 'FERRY_ERR_MUX_FLOW_CONTROL']] as const) {
    const c = await connect(`${base}/${name}`)
    const r = await closedWithin(c, 5000)
    t.equal(r.code, 1011, `${name}: the client is closed 1011`)
    t.ok(await echo(), `${name}: only that stream was reset, the link carries on`)
    t.ok(await metric(f, `ferry_mux_protocol_errors_total{upstream="chat",code="${code}"}`) >= 1 ||
      await metric(f, `ferry_ws_closed_total{mode="mux",reason="${code}"}`) >= 1, `${name}: counted as ${code}`)
  }

  for (const [name, code] of [['huge', 'FERRY_ERR_MUX_FRAME_TOO_LARGE'], ['garbage', 'FERRY_ERR_MUX_VERSION']] as const) {
    const before = evil.accepted()
    const c = await connect(`${base}/${name}`)
    const r = await closedWithin(c, 5000)
    t.equal(r.code, 1012, `${name}: framing lost, the link is closed and its clients get 1012`)
    const hr = await closedWithin(healthy, 5000)
    t.equal(hr.code, 1012, `${name}: the healthy session on that link too`)
    t.ok(await metric(f, `ferry_mux_protocol_errors_total{upstream="chat",code="${code}"}`) >= 1, `${name}: counted as ${code}`)
    await waitFor('the link reconnects', () => evil.accepted() > before, 5000)
    Object.assign(healthy, await connect(`${base}/ok`))
    t.ok(await echo(), `${name}: a new link serves new sessions`)
  }
  const st = await adminStatus(f)
  t.equal(st.state, 'running', 'Ferry is still running')
  healthy.ws.close()
})

t.test('client-side limits: oversize → 1009, invalid UTF-8 ends the session, a backend that grants no credit → 1013 at maxBufferedToUpstream', async (t) => {
  // This backend never grants credit back (it does not read): the gateway may send 256 KiB per stream, then holds.
  const stingy = await startRawMuxBackend(t, () => {})
  const backend = await startMuxBackend(t, (s) => { s.on('message', (d, b) => { s.send(d, { binary: b }) }) })
  const f = await startFerry(t, {
    upstreams: {
      chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backend.port}`] },
      stingy: { protocol: 'mux', endpoints: [`127.0.0.1:${stingy.port}`] },
    },
    routes: [
      { match: { path: '/chat' }, upstream: 'chat', websocket: { maxPayloadLength: 1024 } },
      { match: { path: '/stingy' }, upstream: 'stingy', websocket: { maxBufferedToUpstream: 512 * 1024 } },
    ],
  })
  const other = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  const big = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  big.ws.send(Buffer.alloc(1025))
  t.same(await closedWithin(big, 5000), { code: 1009, reason: 'message of 1025 bytes exceeds 1024' }, 'a 1025-byte message on a 1024-byte route closes 1009')
  // Beyond twice the limit uWS 20.30 itself drops the socket without a close frame (1006 at the client).
  const huge = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  huge.ws.send(Buffer.alloc(4096))
  t.equal((await closedWithin(huge, 5000)).code, 1006, 'a 4 KiB message (over 2× the limit) is dropped by uWS: 1006')
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="mux",reason="FERRY_ERR_WS_MESSAGE_TOO_LARGE"}'), 2, 'both counted as FERRY_ERR_WS_MESSAGE_TOO_LARGE')
  // uWS 20.30 also drops invalid UTF-8 text without a close frame: the client sees 1006, not 1007.
  const utf = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  utf.ws.send(Buffer.from([0x68, 0xc3, 0x28]), { binary: false })
  t.equal((await closedWithin(utf, 5000)).code, 1006, 'a text message with invalid UTF-8 ends the session (uWS 20.30: 1006, no close frame)')
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="mux",reason="FERRY_ERR_WS_CLIENT_PROTOCOL"}'), 1, 'counted as FERRY_ERR_WS_CLIENT_PROTOCOL')
  const flood = await connect(`ws://127.0.0.1:${f.httpPort}/stingy`)
  for (let k = 0; k < 32; k++) flood.ws.send(Buffer.alloc(64 * 1024))
  const r = await closedWithin(flood, 5000)
  t.equal(r.code, 1013, `a client sending 2 MiB to a backend that stopped granting credit is closed 1013 (${r.reason})`)
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="mux",reason="FERRY_ERR_WS_UPSTREAM_SLOW"}'), 1, 'counted as FERRY_ERR_WS_UPSTREAM_SLOW')
  other.ws.send('ok?')
  await other.waitMessages(1)
  t.equal(other.messages[0]!.data.toString(), 'ok?', 'other sessions are unaffected')
  other.ws.close()
})

t.test('upgrade errors: no link → 502, plain GET on a WebSocket route → 426, upgrade on an HTTP route to a dead backend → 502, no route → 404', async (t) => {
  const dead = await deadPort()
  const f = await startFerry(t, {
    upstreams: {
      chat: { protocol: 'mux', endpoints: [`127.0.0.1:${dead}`], timeouts: { openMs: 300, connectMs: 200 } },
      api: { protocol: 'http', endpoints: [`127.0.0.1:${dead}`] },
    },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/api' }, upstream: 'api' }],
  })
  const noLink = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/chat`)
  t.equal(noLink.status, 502, 'mux backend down: the upgrade is answered 502')
  t.match(JSON.parse(noLink.body), { error: { code: 'FERRY_ERR_MUX_NO_LINK' } }, 'with the error code')
  const plain = await fetch(`http://127.0.0.1:${f.httpPort}/chat`)
  t.equal(plain.status, 426, 'a plain GET on a WebSocket route: 426')
  t.equal(plain.headers.get('upgrade'), 'websocket', 'with Upgrade: websocket')
  t.match(await plain.json(), { error: { code: 'FERRY_ERR_UPGRADE_REQUIRED' } })
  const onHttp = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/api`)
  t.equal(onHttp.status, 502, 'an upgrade on an HTTP route goes to that upstream\'s endpoints (down here): 502')
  t.match(JSON.parse(onHttp.body), { error: { code: 'FERRY_ERR_UPSTREAM_CONNECT' } })
  const none = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/nowhere`)
  t.equal(none.status, 404, 'no route: 404')
  t.ok(await metric(f, 'ferry_ws_upgrade_failures_total{route="*/chat",code="FERRY_ERR_MUX_NO_LINK"}') >= 1, 'upgrade failures counted by route and code')
})

t.test('subprotocols, OPEN metadata and close codes both ways', async (t) => {
  const seen: Array<{ path: string, query: string, protocol: string, headers: Record<string, string>, remoteAddress: string }> = []
  const backendClosed: Array<[number, string]> = []
  const backend = await startMuxBackend(t, (s) => {
    seen.push({ path: s.path, query: s.query.toString(), protocol: s.protocol, headers: { ...s.headers }, remoteAddress: s.remoteAddress })
    s.on('close', (code, reason) => { backendClosed.push([code, reason]) })
    s.on('message', (d) => { if (d.toString() === 'close me') s.close(4002, 'server says bye') })
  })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], {}, { websocket: { subprotocols: ['chat.v2', 'chat.v1'] } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/chat/room?user=ann`, ['chat.v1', 'chat.v2'])
  t.equal(c.ws.protocol, 'chat.v2', 'Ferry picks its preferred subprotocol among those offered')
  await waitFor('session seen', () => seen.length === 1)
  t.match(seen[0], { path: '/chat/room', query: 'user=ann', protocol: 'chat.v2', remoteAddress: '127.0.0.1' }, 'the backend gets path, query, protocol and client address')
  t.equal(seen[0]!.headers['x-forwarded-for'], '127.0.0.1', 'and X-Forwarded-For')
  c.ws.close(4001, 'client says bye')
  await waitFor('backend close', () => backendClosed.length === 1)
  t.same(backendClosed[0], [4001, 'client says bye'], 'client close code and reason reach the backend')
  const d = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  d.ws.send('close me')
  t.same(await closedWithin(d, 5000), { code: 4002, reason: 'server says bye' }, 'backend close code and reason reach the client')
})

t.test('TLS links: the backend serves TLS, Ferry verifies it against the configured CA', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-tls-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=mux.test', '-addext', 'subjectAltName=DNS:mux.test', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' })
  const tls = { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) }
  const backend = await startMuxBackend(t, (s) => { s.on('message', (d, b) => { s.send(d, { binary: b }) }) }, { tls })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 2 }, tls: { enabled: true, caFile: join(dir, 'cert.pem'), serverName: 'mux.test' } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  c.ws.send('over tls')
  await c.waitMessages(1)
  t.equal(c.messages[0]!.data.toString(), 'over tls', 'echo over a TLS link')
  t.equal(backend.links().length, 2, 'two TLS links')
  c.ws.close()
  // The wrong name fails verification: no link, the upgrade gets 502.
  const g = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 1 }, tls: { enabled: true, caFile: join(dir, 'cert.pem'), serverName: 'other.test' }, timeouts: { openMs: 500 } }))
  t.equal((await upgradeStatus(`ws://127.0.0.1:${g.httpPort}/chat`)).status, 502, 'a backend certificate that does not match serverName: no link, 502')
})

t.test('permessage-deflate as a route option, and a gateway drain (SIGTERM) closes plain sessions 1012 with the backend told', async (t) => {
  const closes: Array<[number, string]> = []
  const backend = await startMuxBackend(t, (s) => {
    s.on('message', (d, b) => { s.send(d, { binary: b }) })
    s.on('close', (code, reason) => { closes.push([code, reason]) })
  })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backend.port}`] } },
    routes: [
      { match: { path: '/chat' }, upstream: 'chat', websocket: { compression: 'shared' } },
      { match: { path: '/plain' }, upstream: 'chat' },
    ],
  })
  const zipped = new WebSocket(`ws://127.0.0.1:${f.httpPort}/chat`, { perMessageDeflate: true })
  await new Promise((resolve, reject) => { zipped.once('open', resolve); zipped.once('error', reject) })
  t.match(zipped.extensions, /permessage-deflate/, `the binary negotiates permessage-deflate on a compression: shared route (${zipped.extensions})`)
  const echoed = new Promise<string>((resolve) => zipped.once('message', (d: Buffer) => { resolve(d.toString()) }))
  zipped.send('squeeze me '.repeat(100))
  t.equal(await echoed, 'squeeze me '.repeat(100), 'and compressed messages go through intact')
  const plain = new WebSocket(`ws://127.0.0.1:${f.httpPort}/plain`, { perMessageDeflate: true })
  await new Promise((resolve, reject) => { plain.once('open', resolve); plain.once('error', reject) })
  t.equal(plain.extensions, '', 'a route without compression declines it')
  const gone = Promise.all([zipped, plain].map(async (ws) => await new Promise<number>((resolve) => ws.once('close', (code: number) => { resolve(code) }))))
  t.equal(await f.stop(), 0, 'SIGTERM: exit code 0')
  t.same(await gone, [1012, 1012], 'both clients were closed 1012 (service restart: reconnect)')
  await waitFor('backend heard both closes', () => closes.length === 2)
  t.ok(closes.every(([code]) => code === 1012), 'the backend sessions closed with 1012 too')
})

t.test('topic messages keep publish order across a gateway with 4 links, even while links carry uneven traffic', async (t) => {
  const backend = await startMuxBackend(t, (s) => {
    s.subscribe('news')
    s.on('message', (d, b) => { s.send(d, { binary: b }) })
  })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 4 } }))
  const clients = await connectMany(`ws://127.0.0.1:${f.httpPort}/chat`, 200, 100)
  await waitFor('200 sessions', () => backend.sessions.size === 200)
  // Load some links with echo traffic so their write buffers differ while the publishes go out.
  for (const c of clients.slice(0, 20)) for (let k = 0; k < 20; k++) c.ws.send(Buffer.alloc(32 * 1024))
  const N = 500
  for (let k = 0; k < N; k++) backend.publish('news', `n${k}`)
  // Bounded: a stall fails the assertion below instead of hanging the run.
  await Promise.race([
    Promise.all(clients.map(async (c, i) => { await c.waitMessages(N + (i < 20 ? 20 : 0)) })),
    new Promise((resolve) => setTimeout(resolve, 30000).unref()),
  ])
  const problems: string[] = []
  for (const [i, c] of clients.entries()) {
    const news = c.messages.filter((m) => !m.binary).map((m) => m.data.toString())
    const k = news.findIndex((m, j) => m !== `n${j}`)
    if (news.length !== N || k !== -1) problems.push(`client ${i}: ${news.length} messages, first out of place #${k} (${news[k] ?? '-'}), ws state ${c.ws.readyState}`)
  }
  t.same(problems.slice(0, 5), [], `all 200 clients got the ${N} topic messages exactly once and in publish order (${problems.length} did not)`)
  for (const c of clients) c.ws.close()
})

t.test('subscribe, then publish at once (a chat "joined"): every new session gets the message published right after its SUBSCRIBE, whichever link it is on', async (t) => {
  // The race this guards: with one PUBLISH per gateway on one link, a SUBSCRIBE on another link could
  // be read by the gateway after a PUBLISH the backend sent later, and the new member missed it.
  const joinOrder: number[] = []
  const backend = await startMuxBackend(t, (s, server) => {
    s.subscribe('room')
    joinOrder.push(Number(s.query.get('i')))
    server.publish('room', `joined ${s.query.get('i')}`)
  })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 4 } }))
  const n = 120
  const clients: Client[] = []
  for (let i = 0; i < n; i += 40) {
    clients.push(...await Promise.all(Array.from({ length: 40 }, async (_, j) => await connect(`ws://127.0.0.1:${f.httpPort}/chat?i=${i + j}`))))
  }
  await waitFor(`${n} sessions`, () => backend.sessions.size === n)
  t.equal(new Set([...backend.sessions].map((s) => s.linkId)).size, 4, 'the sessions are spread over all 4 links')
  const gotOwn = (c: Client, i: number): boolean => c.messages.some((m) => m.data.toString() === `joined ${i}`)
  // Bounded: whatever is missing after 10 s fails the checks below.
  await waitFor('every join delivered', () => clients.every((c, i) => c.messages.length >= n - joinOrder.indexOf(i)), 10000).catch(() => {})
  const missed = clients.map((c, i) => gotOwn(c, i) ? -1 : i).filter((i) => i >= 0)
  t.same(missed, [], `every one of ${n} members got its own "joined" (${missed.length} did not)`)
  // Exactly the joins from its own on, in the order the backend published them, each once.
  const wrong = clients.filter((c, i) => {
    const want = joinOrder.slice(joinOrder.indexOf(i)).map((j) => `joined ${j}`)
    return c.messages.map((m) => m.data.toString()).join('|') !== want.join('|')
  }).length
  t.equal(wrong, 0, 'each member got exactly the joins from its own on, in publish order, once')
  for (const c of clients) c.ws.close()
})

t.test('topic flood: a subscriber that stopped reading is closed at maxBackpressure; the other subscribers get every message', async (t) => {
  const backend = await startMuxBackend(t, (s) => { s.subscribe('flood') })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], { pool: { links: 2 } }, { websocket: { maxBackpressure: 1024 * 1024 } }))
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const stuck = await connect(url)
  ;(stuck.ws as unknown as { _socket: { pause: () => void } })._socket.pause()
  const readers = await connectMany(url, 5, 5)
  await waitFor('6 sessions', () => backend.sessions.size === 6)
  // 1,000 × 16 KiB = 16 MiB per subscriber: more than the stuck client's kernel buffers plus 1 MiB.
  const N = 1000
  const body = Buffer.alloc(16 * 1024, 1)
  for (let k = 0; k < N; k++) {
    body.writeUInt32BE(k, 0)
    backend.publish('flood', body)
    if (k % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 20)) // the readers keep up
  }
  const all = await Promise.race([
    Promise.all(readers.map(async (c) => { await c.waitMessages(N) })).then(() => true),
    new Promise<boolean>((resolve) => setTimeout(() => { resolve(false) }, 20000).unref()),
  ])
  t.ok(all && readers.every((c) => c.messages.length === N && c.messages.every((m, k) => m.data.readUInt32BE(0) === k)), `5 reading subscribers got all ${N} × 16 KiB topic messages in order`)
  ;(stuck.ws as unknown as { _socket: { resume: () => void } })._socket.resume()
  const r = await closedWithin(stuck, 10000)
  t.not(r.code, -1, `the subscriber that read nothing was closed (code ${r.code}) instead of being buffered for without bound`)
  t.ok(stuck.messages.length < N, `it did not get everything (${stuck.messages.length} of ${N}): dropped and closed, not kept open with a gap`)
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="mux",reason="FERRY_ERR_WS_CLIENT_BACKPRESSURE"}'), 1, 'counted as FERRY_ERR_WS_CLIENT_BACKPRESSURE')
  for (const c of readers) c.ws.close()
})

t.test('a link whose backend stops answering PING is declared dead: its clients get 1012, and it reconnects', async (t) => {
  const silent = await startRawMuxBackend(t, () => {}, {}, { answerPings: false })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${silent.port}`], { pool: { links: 1 }, timeouts: { pingIntervalMs: 200 }, reconnect: { minDelayMs: 50, maxDelayMs: 100 }, handoff: { failover: false } }))
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  const r = await closedWithin(c, 5000)
  t.equal(r.code, 1012, 'the client of the silent link is closed 1012')
  await waitFor('reconnect', () => silent.accepted() >= 2, 5000)
  t.ok(silent.accepted() >= 2, `the slot reconnected (${silent.accepted()} connections accepted)`)
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="mux",reason="FERRY_ERR_MUX_PING_TIMEOUT"}'), 1, 'counted as FERRY_ERR_MUX_PING_TIMEOUT')
})
