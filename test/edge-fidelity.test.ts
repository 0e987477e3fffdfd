import t from 'tap'
import type { IncomingMessage } from 'node:http'
import { connect as netConnect, type Socket } from 'node:net'
import { WebSocketServer } from 'ws'
import { startBackend, startRawBackend } from './helpers/backend.js'
import { startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { startMuxBackend } from './helpers/mux.js'
import { InterimSkipper } from '../src/upstream/http/interim.js'

/**
 * What goes through Ferry unchanged that used to be changed: a backend's interim (1xx) responses, header
 * values beyond ASCII (both ways, and on WebSocket handshakes), the client's Host when it names Host in
 * Connection; and what Ferry adds: no `uWebSockets: 20` on any response. Raw bytes on both sides.
 */

/**
 * Writes `bytes` to a fresh connection and collects everything until the peer closes (or `giveUpMs`: then
 * `closed` is false). `untilHead`: stop once a response head is complete (a 101 keeps the connection).
 */
async function raw (port: number, bytes: Buffer | string, opts: { giveUpMs?: number, untilHead?: boolean } = {}): Promise<{ bytes: Buffer, text: string, closed: boolean }> {
  return await new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    let closed = true
    s.on('data', (d: Buffer) => {
      chunks.push(d)
      if (opts.untilHead === true && Buffer.concat(chunks).includes('\r\n\r\n')) s.destroy()
    })
    s.on('error', () => {})
    const timer = setTimeout(() => { closed = false; s.destroy() }, opts.giveUpMs ?? 5000)
    s.on('close', () => { clearTimeout(timer); const b = Buffer.concat(chunks); resolve({ bytes: b, text: b.toString('latin1'), closed }) })
    s.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes)
  })
}

/** The head of a raw response (latin1, up to the blank line) and what follows it. */
function split (text: string): { head: string, body: string } {
  const i = text.indexOf('\r\n\r\n')
  return i === -1 ? { head: text, body: '' } : { head: text.slice(0, i), body: text.slice(i + 4) }
}

/** UTF-8 bytes of `s` as a latin1 string (one character per byte), to build and match raw heads. */
const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1')

/**
 * A raw HTTP/1.1 backend: every request head (and its Content-Length body) on a connection is answered by
 * `answer(n, head)`, n counting requests across all connections; each returned piece is a separate write.
 */
async function scriptedBackend (t: Teardown, answer: (n: number, head: string) => string[]): Promise<{ address: string, accepted: () => number, heads: string[] }> {
  const heads: string[] = []
  const b = await startRawBackend(t, (s: Socket) => {
    s.setNoDelay(true)
    let buf = Buffer.alloc(0)
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end === -1) return
        const head = buf.subarray(0, end).toString('latin1')
        const cl = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0)
        if (buf.length < end + 4 + cl) return
        buf = buf.subarray(end + 4 + cl)
        heads.push(head)
        // Each piece in its own write and its own turn of the loop (they may still arrive together).
        const pieces = answer(heads.length, head)
        const next = (): void => { const p = pieces.shift(); if (p === undefined) return; s.write(Buffer.from(p, 'latin1')); setImmediate(next) }
        next()
      }
    })
  })
  return { address: b.address, accepted: b.accepted, heads }
}

t.test('interim responses: 100 Continue, 102 and 103 before the final response are skipped; the final one reaches the client', async (t) => {
  const FINAL = (body: string, status = '200 OK'): string => `HTTP/1.1 ${status}\r\nContent-Length: ${body.length}\r\n\r\n${body}`
  const backend = await scriptedBackend(t, (n, head) => {
    if (head.startsWith('GET /hang')) return ['HTTP/1.1 100 Continue\r\n\r\n'] // never a final response
    switch (n) {
      case 1: return ['HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok']
      case 2: return ['HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n', 'HTTP/1.1 102 Processing\r\n\r\n', 'HTTP/1.1 100 Continue\r\n\r\n', FINAL('second')]
      // The status lines cut mid-way across writes.
      case 3: return ['HTTP/1.1 10', '0 Continue\r\n\r', '\nHTTP/1.1 2', '00 OK\r\nContent-Length: 5\r\n\r\nthird']
      case 4: return ['HTTP/1.1 100 Continue\r\n\r\n', FINAL('made', '201 Created')]
      default: return [FINAL('more')]
    }
  })
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [backend.address], pool: { maxConnections: 1 }, timeouts: { responseMs: 500 } } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  const get = async (path: string): Promise<{ head: string, body: string, text: string }> => {
    const r = await raw(f.httpPort, `GET ${path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`)
    return { ...split(r.text), text: r.text }
  }

  const a = await get('/a')
  t.match(a.head, /^HTTP\/1\.1 200 OK\r\n/, 'GET behind `100 Continue`: the client gets the backend\'s 200 (was 502)')
  t.equal(a.body, 'ok', 'with its 2-byte body')
  t.notMatch(a.text, /\b10[0-3] /, 'and no interim status line')

  const b = await get('/b')
  t.match(b.head, /^HTTP\/1\.1 200 OK\r\n/, '100, 103 (with Link), 102, 100, then 200: the client gets the 200')
  t.equal(b.body, 'second', 'with its body')
  t.notMatch(b.head, /link:/i, 'the 103\'s Link header is not merged into the final response')

  const c = await get('/c')
  t.match(c.head, /^HTTP\/1\.1 200 OK\r\n/, 'status lines cut across writes (`HTTP/1.1 10` | `0 Continue`): the client gets the 200')
  t.equal(c.body, 'third', 'with its body')

  const post = await raw(f.httpPort, 'POST /d HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody')
  t.match(post.text, /^HTTP\/1\.1 201 Created\r\n/, 'a POST answered 100 then 201: the client gets the 201')
  t.equal(backend.accepted(), 1, 'all requests used the one pooled backend connection (maxConnections 1): a 1xx no longer costs it')

  // A backend that sends interim responses and never a final one is bounded by timeouts.responseMs (500).
  const h = await get('/hang')
  t.match(h.head, /^HTTP\/1\.1 504 /, 'only `100 Continue` and then nothing: 504 after responseMs 500')
  t.match(h.body, /FERRY_ERR_UPSTREAM_TIMEOUT/, 'FERRY_ERR_UPSTREAM_TIMEOUT')
})

t.test('interim skipper (fuzz): whatever the interim responses and however the bytes are cut, the parser gets exactly the final response', async (t) => {
  // A small seeded PRNG (mulberry32): a failure names its seed and case.
  let seed = 0x5eed1
  const rnd = (): number => { seed = (seed + 0x6d2b79f5) | 0; let x = Math.imul(seed ^ (seed >>> 15), 1 | seed); x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x; return ((x ^ (x >>> 14)) >>> 0) / 4294967296 }
  const int = (n: number): number => Math.floor(rnd() * n)
  const CASES = 3000
  let interims = 0
  for (let c = 0; c < CASES; c++) {
    const pieces: string[] = []
    const n = int(4)
    for (let i = 0; i < n; i++) {
      const [code, text] = [['100', 'Continue'], ['102', 'Processing'], ['103', 'Early Hints'], ['199', '']][int(4)]!
      let head = `HTTP/1.${int(2)} ${code} ${text}\r\n`
      for (let h = int(3); h > 0; h--) head += `Link: </${'x'.repeat(int(300))}>; rel=preload\r\n`
      pieces.push(head + '\r\n')
    }
    interims += n
    // The final response: any status (101 included: it is not interim here), or bytes that are not HTTP at all.
    const body = 'b'.repeat(int(50))
    const final = int(10) === 0 ? `garbage ${body}` : `HTTP/1.1 ${['200 OK', '101 Switching Protocols', '404 Not Found', '204 No Content'][int(4)]!}\r\nContent-Length: ${body.length}\r\n\r\n${body}`
    const stream = Buffer.from(pieces.join('') + final, 'latin1')
    // Cut at random points (1-byte pieces included); null reads in between, as a socket with nothing buffered gives.
    const f = new InterimSkipper()
    f.awaiting = true
    const out: Buffer[] = []
    let at = 0
    while (at < stream.length) {
      const len = 1 + int(int(2) === 0 ? 4 : 400)
      const chunk = stream.subarray(at, at + len)
      at += len
      if (f.awaiting) { const o = f.take(chunk); if (o !== null) out.push(o); if (f.awaiting) f.take(null) } else out.push(chunk)
    }
    const got = Buffer.concat(out).toString('latin1')
    if (got !== final) { t.fail(`case ${c}: the parser got ${JSON.stringify(got.slice(0, 80))}, not the final response ${JSON.stringify(final.slice(0, 80))}`); return }
    if (f.awaiting) { t.fail(`case ${c}: still awaiting after the final response`); return }
  }
  t.pass(`${CASES} random streams (${interims} interim responses, cut at random points): each time exactly the final response's bytes`)

  // An interim head past undici's 16 KiB header limit is handed to undici as it is (which refuses it): never held without bound.
  const big = Buffer.from(`HTTP/1.1 100 Continue\r\nX: ${'y'.repeat(20000)}\r\n\r\nHTTP/1.1 200 OK\r\n\r\n`, 'latin1')
  const f = new InterimSkipper()
  f.awaiting = true
  let first: Buffer | null = null
  let i = 0
  for (; i < big.length && first === null; i += 1000) first = f.take(big.subarray(i, i + 1000))
  t.ok(first !== null && first.length >= 16384 && first.length < 16384 + 1000, `an interim head over 16 KiB: passed on once 16 KiB are held (${first?.length ?? 0} bytes; bound 16384 + one 1000-byte chunk)`)
  t.ok(first !== null && big.subarray(0, first.length).equals(first), 'those bytes unchanged')
  t.notOk(f.awaiting, 'and the rest passes untouched')
})

t.test('header values beyond ASCII pass through as the same bytes, both ways; uWS 20.30 strips them at a value\'s edges', async (t) => {
  const RESPONSE = 'HTTP/1.1 200 OK\r\n' +
    `X-Utf8: ${utf8('café € 😀 ok')}\r\n` +
    'X-Latin1: caf\xe9 ok\r\n' + // not UTF-8: passed on as it came
    'Content-Length: 2\r\n\r\nok'
  const backend = await scriptedBackend(t, () => [RESPONSE])
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [backend.address] } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  // Characters up to U+00FF: the request always went through, with the wrong bytes.
  const r1 = await raw(f.httpPort, 'GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n' +
    `X-Mid: ${utf8('aéb')}\r\n` +
    `X-Edge: ${utf8('café')}\r\n` +
    '\r\n')
  const { head } = split(r1.text)
  t.match(head, /^HTTP\/1\.1 200 /, 'a request with é in a header value: 200')
  const sent1 = backend.heads[0] ?? ''
  t.ok(sent1.includes(`\r\nx-mid: ${utf8('aéb')}\r\n`), 'é (UTF-8 C3 A9) reaches the backend as C3 A9 (was the latin1 byte E9)')
  // uWS 20.30 trims a value's ends of bytes < 33 compared as signed chars, so bytes ≥ 0x80 there go with
  // the whitespace; Ferry never sees them (docs/edge.md says so). Pinned, so the doc stays true.
  t.ok(sent1.includes('\r\nx-edge: caf\r\n'), 'a value ending in é arrives without it (uWS 20.30 strips it; Ferry cannot see it)')
  t.ok(head.includes(`\r\nx-utf8: ${utf8('café € 😀 ok')}\r\n`), 'the backend\'s UTF-8 response header reaches the client byte for byte (was double-encoded)')
  t.ok(head.includes('\r\nx-latin1: caf\xe9 ok\r\n'), 'a response header byte E9 (not UTF-8) reaches the client as E9')

  // Characters above U+00FF: undici refused them (400 FERRY_ERR_BAD_REQUEST).
  const r2 = await raw(f.httpPort, 'GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n' +
    `X-Euro: ${utf8('x€5 z')}\r\n` +
    `X-Emoji: ${utf8('a😀b')}\r\n` +
    '\r\n')
  t.match(split(r2.text).head, /^HTTP\/1\.1 200 /, 'a request with € and 😀 in header values: 200 (was 400)')
  const sent2 = backend.heads[1] ?? ''
  t.ok(sent2.includes(`\r\nx-euro: ${utf8('x€5 z')}\r\n`), '€ reaches the backend as its 3 UTF-8 bytes')
  t.ok(sent2.includes(`\r\nx-emoji: ${utf8('a😀b')}\r\n`), 'a 4-byte character reaches the backend as its 4 bytes')
})

t.test('handshake header values beyond ASCII reach a ws backend as the same bytes, and a mux backend as the same text', async (t) => {
  const seen: IncomingMessage[] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  wss.on('connection', (ws, req) => { seen.push(req); ws.on('error', () => {}) })
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise((resolve) => wss.close(resolve)) })
  const muxHeaders: Array<Record<string, string>> = []
  const mux = await startMuxBackend(t, (s) => { muxHeaders.push({ ...s.headers }) })
  const websocket = { forwardHeaders: ['x-name'] }
  const f = await startFerry(t, {
    upstreams: { legacy: { protocol: 'ws', endpoints: [`127.0.0.1:${(wss.address() as { port: number }).port}`] }, chat: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] } },
    routes: [{ match: { path: '/legacy' }, upstream: 'legacy', websocket }, { match: { path: '/chat' }, upstream: 'chat', websocket }],
    logging: { level: 'info', accessLog: false },
  })
  const upgrade = (path: string, name: string): string => `GET ${path} HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Name: ${utf8(name)}\r\n\r\n`
  // Node's server reads header bytes as latin1: back to bytes, they must be the UTF-8 the client sent.
  const names = ['José z', 'x € 😀 z'] // é went as the byte E9; € made Node refuse the handshake (400)
  for (const [i, name] of names.entries()) {
    const r = await raw(f.httpPort, upgrade('/legacy', name), { untilHead: true })
    t.match(r.text, /^HTTP\/1\.1 101 /, `passthrough, X-Name ${name}: upgraded`)
    await waitFor('the passthrough backend handshake', () => seen.length === i + 1, 5000)
    t.equal(Buffer.from(String(seen[i]!.headers['x-name']), 'latin1').toString('utf8'), name, `passthrough, X-Name ${name}: the ws backend reads the UTF-8 bytes the client sent`)
  }
  const chat = await raw(f.httpPort, upgrade('/chat', names[1]!), { untilHead: true })
  t.match(chat.text, /^HTTP\/1\.1 101 /, 'mux: upgraded')
  await waitFor('the mux session', () => muxHeaders.length === 1, 5000)
  t.equal(muxHeaders[0]!['x-name'], names[1], 'mux: the backend gets the same text in OPEN metadata')
})

t.test('Connection naming Host does not remove the client\'s Host; other named headers are still dropped', async (t) => {
  const got: IncomingMessage[] = []
  const backend = await startBackend(t, (req, res) => { got.push(req); res.end('ok') })
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [backend.address] } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  for (const conn of ['host', 'Host, x-drop']) {
    const r = await raw(f.httpPort, `GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nConnection: ${conn}\r\nX-Drop: 1\r\nX-Keep: 1\r\n\r\n`)
    t.match(r.text, /^HTTP\/1\.1 200 /, `Connection: ${conn}: answered 200`)
    const req = got.at(-1)!
    t.equal(req.headers.host, 'a.test', `Connection: ${conn}: the backend gets the client's Host a.test (was the backend's own address)`)
    t.equal(req.headers['x-forwarded-host'], 'a.test', `Connection: ${conn}: and X-Forwarded-Host a.test`)
    if (conn.includes('x-drop')) t.equal(req.headers['x-drop'], undefined, `Connection: ${conn}: X-Drop, named hop-by-hop, is not forwarded`)
    t.equal(req.headers['x-keep'], '1', `Connection: ${conn}: X-Keep is forwarded`)
  }
  t.equal(got.length, 2, 'the backend got both requests')
})

t.test('no response carries a uWebSockets header: proxied, Ferry\'s own errors, 101 upgrades, the admin listener', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  wss.on('connection', (ws) => { ws.on('error', () => {}) })
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise((resolve) => wss.close(resolve)) })
  const mux = await startMuxBackend(t, () => {})
  const f: FerryProcess = await startFerry(t, {
    upstreams: {
      api: { protocol: 'http', endpoints: [backend.address] },
      legacy: { protocol: 'ws', endpoints: [`127.0.0.1:${(wss.address() as { port: number }).port}`] },
      chat: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] },
    },
    routes: [{ match: { path: '/api' }, upstream: 'api' }, { match: { path: '/legacy' }, upstream: 'legacy' }, { match: { path: '/chat' }, upstream: 'chat' }],
    logging: { level: 'info', accessLog: false },
  })
  const upgrade = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`
  const cases: Array<[string, number, string, RegExp]> = [
    ['proxied 200', f.httpPort, 'GET /api HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n', /^HTTP\/1\.1 200 /],
    ['Ferry\'s 404 (no route)', f.httpPort, 'GET /nowhere HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n', /^HTTP\/1\.1 404 /],
    ['Ferry\'s 426 (plain GET on a WebSocket route)', f.httpPort, 'GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n', /^HTTP\/1\.1 426 /],
    ['101 on a passthrough route', f.httpPort, upgrade('/legacy'), /^HTTP\/1\.1 101 /],
    ['101 on a mux route', f.httpPort, upgrade('/chat'), /^HTTP\/1\.1 101 /],
    ['admin /healthz', f.adminPort, 'GET /healthz HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n', /^HTTP\/1\.1 200 /],
  ]
  for (const [name, port, req, status] of cases) {
    const r = await raw(port, req, { untilHead: true })
    const { head } = split(r.text)
    t.match(head, status, `${name}: answered`)
    t.notMatch(head, /uwebsockets/i, `${name}: no uWebSockets header in the ${head.split('\r\n').length - 1} header lines`)
  }
})
