import t from 'tap'
import { randomBytes } from 'node:crypto'
import { connect as netConnect, type Socket } from 'node:net'
import { WebSocketServer } from 'ws'
import { adminStatus, metric, startFerry, waitFor, type FerryProcess } from './helpers/ferry.js'
import { connect, startMuxBackend } from './helpers/mux.js'

/**
 * Invalid WebSocket handshakes and frames from raw sockets against a real Ferry, on a mux route (/chat)
 * and a ws passthrough route (/legacy). Each case names the exact outcome the client sees.
 */

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='

interface RawResult { text: string, bytes: Buffer, closed: boolean }

/**
 * Sends raw bytes on a fresh connection and collects everything until the gateway closes (or `giveUpMs`).
 * `after101` is sent once the 101 arrived: uWS 20.30 discards bytes sent behind an upgrade request before
 * an asynchronous upgrade completes (RFC 6455 §4.1 has the client wait for the 101 anyway).
 */
async function rawExchange (f: FerryProcess, data: Buffer | string, giveUpMs = 4000, after101?: Buffer): Promise<RawResult> {
  return await new Promise((resolve) => {
    const s = netConnect(f.httpPort, '127.0.0.1')
    const chunks: Buffer[] = []
    let closed = true
    let sent = false
    s.on('data', (d: Buffer) => {
      chunks.push(d)
      if (after101 !== undefined && !sent && Buffer.concat(chunks).includes('\r\n\r\n')) { sent = true; s.write(after101) }
    })
    s.on('error', () => {})
    const timer = setTimeout(() => { closed = false; s.destroy() }, giveUpMs)
    s.on('close', () => { clearTimeout(timer); const bytes = Buffer.concat(chunks); resolve({ text: bytes.toString('latin1'), bytes, closed }) })
    s.write(data)
  })
}

function handshake (path: string, extra: string, opts: { method?: string, key?: string | null, version?: string | null, connection?: string | null } = {}): string {
  const lines = [`${opts.method ?? 'GET'} ${path} HTTP/1.1`, 'Host: a.test', 'Upgrade: websocket']
  if (opts.connection !== null) lines.push(`Connection: ${opts.connection ?? 'Upgrade'}`)
  if (opts.key !== null) lines.push(`Sec-WebSocket-Key: ${opts.key ?? KEY}`)
  if (opts.version !== null) lines.push(`Sec-WebSocket-Version: ${opts.version ?? '13'}`)
  return lines.join('\r\n') + '\r\n' + extra + '\r\n'
}

/** A client frame: masked unless told otherwise. `len` overrides the length field (lies allowed). */
function frame (opcode: number, payload: Buffer, opts: { fin?: boolean, rsv?: number, mask?: boolean, len64?: bigint } = {}): Buffer {
  const fin = opts.fin ?? true
  const mask = opts.mask ?? true
  const head: number[] = [(fin ? 0x80 : 0) | ((opts.rsv ?? 0) << 4) | opcode]
  let ext = Buffer.alloc(0)
  if (opts.len64 !== undefined) {
    head.push((mask ? 0x80 : 0) | 127)
    ext = Buffer.alloc(8)
    ext.writeBigUInt64BE(opts.len64)
  } else if (payload.length < 126) {
    head.push((mask ? 0x80 : 0) | payload.length)
  } else {
    head.push((mask ? 0x80 : 0) | 126)
    ext = Buffer.alloc(2)
    ext.writeUInt16BE(payload.length)
  }
  if (!mask) return Buffer.concat([Buffer.from(head), ext, payload])
  const key = randomBytes(4)
  const masked = Buffer.from(payload)
  for (let i = 0; i < masked.length; i++) masked[i]! ^= key[i & 3]!
  return Buffer.concat([Buffer.from(head), ext, key, masked])
}

const closePayload = (code: number, reason: Buffer | string = ''): Buffer => {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(code)
  return Buffer.concat([b, typeof reason === 'string' ? Buffer.from(reason) : reason])
}

/** After the 101: the close code in a server close frame, or 1006 when the socket ended without one. */
function serverClose (r: RawResult): number {
  const i = r.text.indexOf('\r\n\r\n')
  if (!r.text.startsWith('HTTP/1.1 101') || i === -1) return -1
  let rest = r.bytes.subarray(i + 4)
  while (rest.length >= 2) {
    const op = rest[0]! & 0x0f
    let len = rest[1]! & 0x7f
    let off = 2
    if (len === 126) { len = rest.readUInt16BE(2); off = 4 }
    if (op === 8) return len >= 2 ? rest.readUInt16BE(off) : 1005
    rest = rest.subarray(off + len)
  }
  return 1006
}

/**
 * `expect`: the close code the client sees (1006: dropped without a close frame, 1005: an empty close frame), or 'stall'.
 * `backend`: the close code the backend reads, [passthrough, mux] (default LOST).
 */
interface FrameCase { name: string, frames: () => Buffer, expect: number | 'stall', backend?: readonly [number, number] }

/**
 * What the backend reads when uWS 20.30 drops a client without naming the cause: the same as for a client
 * that reset its connection (a passthrough backend gets 1001 going away; mux CLOSE carries 1006 as such).
 */
const LOST = [1001, 1006] as const

const FRAME_CASES: FrameCase[] = [
  // uWS 20.30 does not check the MASK bit of client frames: it takes the next 4 bytes as the mask key and
  // waits for them (given them, it delivers the payload XORed with them). The client is not closed for it.
  { name: 'unmasked frame', frames: () => frame(1, Buffer.from('hi'), { mask: false }), expect: 'stall' },
  { name: 'RSV1 set without an extension', frames: () => frame(1, Buffer.from('hi'), { rsv: 4 }), expect: 1006 },
  { name: 'RSV2+RSV3 set', frames: () => frame(1, Buffer.from('hi'), { rsv: 3 }), expect: 1006 },
  { name: 'unknown data opcode 3', frames: () => frame(3, Buffer.from('hi')), expect: 1006 },
  { name: 'unknown control opcode 11', frames: () => frame(11, Buffer.from('hi')), expect: 1006 },
  { name: 'ping of 126 bytes (control > 125)', frames: () => frame(9, Buffer.alloc(126, 1)), expect: 1006 },
  { name: 'fragmented ping (FIN 0 on a control frame)', frames: () => frame(9, Buffer.from('p'), { fin: false }), expect: 1006 },
  { name: 'continuation without a start', frames: () => frame(0, Buffer.from('hi')), expect: 1006 },
  { name: 'new text frame inside a fragmented message', frames: () => Buffer.concat([frame(1, Buffer.from('a'), { fin: false }), frame(1, Buffer.from('b'))]), expect: 1006 },
  // uWS names these two causes: the backend is told 1007 (invalid payload data), as its own stack would have closed the client.
  { name: 'text frame with invalid UTF-8', frames: () => frame(1, Buffer.from([0xc3, 0x28])), expect: 1006, backend: [1007, 1007] },
  { name: 'fragmented text with invalid UTF-8 across fragments', frames: () => Buffer.concat([frame(1, Buffer.from([0xe2, 0x82]), { fin: false }), frame(0, Buffer.from([0x28]))]), expect: 1006, backend: [1007, 1007] },
  // A malformed close frame: uWS 20.30 answers with an empty close frame (no code: the client reads 1005, not 1002) and closes.
  { name: 'close with code 1005 (reserved)', frames: () => frame(8, closePayload(1005)), expect: 1005 },
  { name: 'close with code 999', frames: () => frame(8, closePayload(999)), expect: 1005 },
  { name: 'close with code 5000', frames: () => frame(8, closePayload(5000)), expect: 1005 },
  // uWS reports it like an empty close frame (1005, no reason): the backend reads 1005 "no status", not 1000.
  { name: 'close with a 1-byte payload', frames: () => frame(8, Buffer.from([3])), expect: 1005, backend: [1005, 1005] },
  { name: 'close reason not UTF-8', frames: () => frame(8, closePayload(1000, Buffer.from([0xff, 0xfe]))), expect: 1005 },
  // uWS names the cause ("Received too big message"): the backend is told 1009.
  { name: '64-bit length with the top bit set', frames: () => frame(2, Buffer.alloc(0), { len64: 0x8000000000000000n }), expect: 1006, backend: [1009, 1009] },
  { name: '64-bit length of 2^40 (over maxPayloadLength)', frames: () => frame(2, Buffer.alloc(0), { len64: 1n << 40n }), expect: 1006, backend: [1009, 1009] },
  { name: 'valid close 1000 (control: echoed)', frames: () => frame(8, closePayload(1000, 'bye')), expect: 1000, backend: [1000, 1000] },
]

t.test('WebSocket hardening: invalid handshakes and frames on a mux and a passthrough route', async (t) => {
  const muxClosed: Array<[number, string]> = []
  const mux = await startMuxBackend(t, (s) => {
    s.on('message', (data, binary) => { s.send(data, binary) })
    s.on('close', (code, reason) => { muxClosed.push([code, reason]) })
  })
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  let wsOpened = 0
  const wsClosed: number[] = []
  wss.on('connection', (ws) => {
    wsOpened++
    ws.on('message', (d, b) => { ws.send(d, { binary: b }) })
    ws.on('close', (code) => { wsClosed.push(code) })
    ws.on('error', () => {})
  })
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise((resolve) => wss.close(resolve)) })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] }, legacy: { protocol: 'ws', endpoints: [`127.0.0.1:${(wss.address() as { port: number }).port}`] } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/legacy' }, upstream: 'legacy' }],
    admission: { handshakesPerSec: 0 },
    logging: { level: 'info', accessLog: false },
  })
  // A healthy session on each route, open through everything below: nothing may disturb it.
  const bystanders = [await connect(`ws://127.0.0.1:${f.httpPort}/chat`), await connect(`ws://127.0.0.1:${f.httpPort}/legacy`)]

  // ---- handshakes ----
  // uWS 20.30 treats a request as an upgrade only when it is a GET with a 24-character key; anything else
  // reaches Ferry's HTTP handler, which answers a WebSocket route's plain request 426 (keep-alive).
  const NOT_UPGRADE = { status: 426, code: 'FERRY_ERR_UPGRADE_REQUIRED', closed: false }
  const REFUSED = { status: 400, code: 'FERRY_ERR_NOT_WEBSOCKET', closed: true }
  const HANDSHAKES: Array<{ name: string, bytes: (p: string) => string, expect: { status: number, code: string, closed: boolean } }> = [
    { name: 'missing Sec-WebSocket-Key', bytes: (p) => handshake(p, '', { key: null }), expect: NOT_UPGRADE },
    { name: 'short Sec-WebSocket-Key', bytes: (p) => handshake(p, '', { key: 'c2hvcnQ=' }), expect: NOT_UPGRADE },
    { name: 'long Sec-WebSocket-Key', bytes: (p) => handshake(p, '', { key: Buffer.alloc(32).toString('base64') }), expect: NOT_UPGRADE },
    { name: 'POST upgrade', bytes: (p) => handshake(p, 'Content-Length: 0\r\n', { method: 'POST' }), expect: NOT_UPGRADE },
    { name: '24-character key that is not base64', bytes: (p) => handshake(p, '', { key: '!!!!!!!!!!!!!!!!!!!!!!==' }), expect: REFUSED },
    { name: 'two Sec-WebSocket-Key headers', bytes: (p) => handshake(p, `Sec-WebSocket-Key: ${KEY}\r\n`), expect: REFUSED },
    { name: 'Sec-WebSocket-Version 8', bytes: (p) => handshake(p, '', { version: '8' }), expect: REFUSED },
    { name: 'missing Sec-WebSocket-Version', bytes: (p) => handshake(p, '', { version: null }), expect: REFUSED },
    { name: 'two Sec-WebSocket-Version headers', bytes: (p) => handshake(p, 'Sec-WebSocket-Version: 13\r\n'), expect: REFUSED },
    { name: 'Upgrade without Connection: upgrade', bytes: (p) => handshake(p, '', { connection: 'keep-alive' }), expect: REFUSED },
    { name: 'no Connection header', bytes: (p) => handshake(p, '', { connection: null }), expect: REFUSED },
    { name: 'Upgrade: h2c with a WebSocket key', bytes: (p) => handshake(p, '').replace('Upgrade: websocket', 'Upgrade: h2c'), expect: REFUSED },
  ]
  for (const path of ['/chat', '/legacy']) {
    for (const h of HANDSHAKES) {
      const r = await rawExchange(f, h.bytes(path), h.expect.closed ? 4000 : 1500)
      const status = /^HTTP\/1\.1 (\d{3})/.exec(r.text)?.[1]
      t.equal(Number(status), h.expect.status, `handshake ${path} ${h.name}: answered ${h.expect.status}`)
      t.match(r.text, `"code":"${h.expect.code}"`, `handshake ${path} ${h.name}: error.code ${h.expect.code}`)
      t.equal(r.closed, h.expect.closed, `handshake ${path} ${h.name}: the connection is ${h.expect.closed ? 'closed' : 'kept (an ordinary HTTP answer)'}`)
    }
  }
  t.equal(wsOpened, 1, 'no refused handshake reached the passthrough backend (only the bystander\'s)')
  t.equal((await adminStatus(f)).websocket.sessions, 2, 'no refused handshake left a session behind (only the 2 bystanders)')

  // ---- frames after a good upgrade ----
  for (const path of ['/chat', '/legacy']) {
    for (const c of FRAME_CASES) {
      const before = path === '/chat' ? muxClosed.length : wsClosed.length
      const r = await rawExchange(f, handshake(path, ''), c.expect === 'stall' ? 1500 : 4000, c.frames())
      if (c.expect === 'stall') {
        t.ok(r.text.startsWith('HTTP/1.1 101') && !r.closed, `${path} ${c.name}: upgraded, then neither delivered nor closed within 1.5 s (the test then resets it)`)
        t.equal(serverClose(r), 1006, `${path} ${c.name}: no close frame`)
      } else {
        t.equal(serverClose(r), c.expect, `${path} ${c.name}: the client sees ${c.expect === 1006 ? '1006 (uWS 20.30 drops the socket without a close frame)' : c.expect === 1005 ? 'an empty close frame (1005)' : `close ${c.expect}`}`)
        t.ok(r.closed, `${path} ${c.name}: the connection is closed`)
      }
      await waitFor(`${path} ${c.name}: the backend side of the session to end`, () => (path === '/chat' ? muxClosed.length : wsClosed.length) === before + 1, 5000)
      const want = (c.backend ?? LOST)[path === '/chat' ? 1 : 0]
      t.equal(path === '/chat' ? muxClosed.at(-1)![0] : wsClosed.at(-1), want, `${path} ${c.name}: the backend reads close ${want}`)
    }
  }
  // uWS 20.30 reports only invalid UTF-8 with a message; every other protocol error reaches Ferry's close
  // handler as 1006 with no message, exactly like a client that reset its TCP connection: counted "client".
  // The two 64-bit lengths are past maxPayloadLength: uWS says "Received too big message".
  const utf8 = FRAME_CASES.filter((c) => c.name.includes('UTF-8') && c.expect === 1006).length
  const tooBig = FRAME_CASES.filter((c) => c.name.startsWith('64-bit')).length
  for (const mode of ['mux', 'ws']) {
    t.equal(await metric(f, `ferry_ws_closed_total{mode="${mode}",reason="FERRY_ERR_WS_CLIENT_PROTOCOL"}`), utf8, `ferry_ws_closed_total{mode="${mode}"} counts the ${utf8} invalid UTF-8 drops as FERRY_ERR_WS_CLIENT_PROTOCOL`)
    t.equal(await metric(f, `ferry_ws_closed_total{mode="${mode}",reason="FERRY_ERR_WS_MESSAGE_TOO_LARGE"}`), tooBig, `ferry_ws_closed_total{mode="${mode}"} counts the ${tooBig} 64-bit lengths as FERRY_ERR_WS_MESSAGE_TOO_LARGE`)
    t.equal(await metric(f, `ferry_ws_closed_total{mode="${mode}",reason="client"}`), FRAME_CASES.length - utf8 - tooBig, `ferry_ws_closed_total{mode="${mode}",reason="client"} counts the other ${FRAME_CASES.length - utf8 - tooBig} (uWS gives no reason for them: indistinguishable from a TCP reset)`)
  }
  t.equal(muxClosed.length, FRAME_CASES.length, `every one of the ${FRAME_CASES.length} mux sessions ended on the backend (none left open)`)
  t.equal(wsClosed.length, FRAME_CASES.length, `every one of the ${FRAME_CASES.length} passthrough backend sockets was closed`)

  for (const b of bystanders) {
    b.ws.send('still here')
    await b.waitMessages(1)
    t.equal(b.messages[0]?.data.toString(), 'still here', `the bystander session on ${b.ws.url.endsWith('/chat') ? '/chat' : '/legacy'} still echoes`)
    b.ws.close()
  }
  t.equal(f.child.exitCode, null, 'the gateway process is alive')
})
