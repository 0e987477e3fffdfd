import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs'
import { createServer as createHttpServer, type IncomingHttpHeaders } from 'node:http'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket, { WebSocketServer } from 'ws'
import { parse, stringify } from 'yaml'
import { encodeProxyV1, encodeProxyV2, V2_SIGNATURE } from '../src/net/proxy-protocol.js'
import { loadNativeUws } from '../src/front/uws.js'
import { metric, runCli, startFerry, waitFor, writeConfig, type FerryProcess, type Teardown } from './helpers/ferry.js'

/**
 * PROXY protocol on the HTTP/WebSocket front (issue 21, item 3; docs/edge.md "PROXY protocol"):
 * `listen.http.acceptProxyProtocol: v2` (uWebSockets.js reads the header) and `v1+v2` (Ferry's reader in
 * front of uWS). Real Ferry processes, real node:http and ws backends that report what they were told,
 * raw sockets that send real v1 and v2 headers from chosen loopback addresses (the load balancer), curl
 * --haproxy-protocol, and a real HAProxy in mode tcp with send-proxy / send-proxy-v2.
 */

const LB = '127.0.0.1'
const STRANGER = '127.0.0.3'

/** What the backend was told: X-Forwarded-For, X-Forwarded-Proto and the path. */
interface Seen { xff: string, xfp: string, url: string }

async function echoBackend (t: Teardown): Promise<{ port: number, seen: Seen[] }> {
  const seen: Seen[] = []
  const server = createHttpServer((req, res) => {
    const s = { xff: String(req.headers['x-forwarded-for']), xfp: String(req.headers['x-forwarded-proto']), url: req.url ?? '' }
    seen.push(s)
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return { port: (server.address() as { port: number }).port, seen }
}

async function wsBackend (t: Teardown): Promise<{ port: number, handshakes: IncomingHttpHeaders[] }> {
  const handshakes: IncomingHttpHeaders[] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  wss.on('connection', (ws, req) => { handshakes.push(req.headers); ws.on('message', (d, binary) => ws.send(d, { binary })) })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise((resolve) => wss.close(resolve)) })
  return { port: (wss.address() as { port: number }).port, handshakes }
}

const addrs = (source: string): Parameters<typeof encodeProxyV1>[0] => ({ source, sourcePort: 40123, destination: '127.0.0.1', destinationPort: 8080 })
const v1 = (source: string): Buffer => encodeProxyV1(addrs(source))
const v2 = (source: string): Buffer => encodeProxyV2(addrs(source))

/** A v2 header for `source` carrying `tlvBytes` bytes of TLVs (NOOP type 0x04), as AWS or HAProxy may add. */
function v2WithTlvs (source: string, tlvBytes: number): Buffer {
  const base = v2(source)
  const tlv = Buffer.alloc(tlvBytes)
  tlv[0] = 0x04
  tlv.writeUInt16BE(tlvBytes - 3, 1)
  const out = Buffer.concat([base, tlv])
  out.writeUInt16BE(base.length - 16 + tlvBytes, 14)
  return out
}

interface Response { status: number, body: string }

/** Parses the HTTP/1.1 responses (Content-Length framed) in `text`. */
function responses (text: string): Response[] {
  const out: Response[] = []
  let rest = text
  for (;;) {
    const end = rest.indexOf('\r\n\r\n')
    if (!rest.startsWith('HTTP/1.1 ') || end === -1) return out
    const head = rest.slice(0, end)
    const len = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0)
    out.push({ status: Number(head.slice(9, 12)), body: rest.slice(end + 4, end + 4 + len) })
    rest = rest.slice(end + 4 + len)
  }
}

const GET = (path: string, close = true): string => `GET ${path} HTTP/1.1\r\nHost: ferry.test\r\n${close ? 'Connection: close\r\n' : ''}\r\n`

/**
 * One connection from `from` to `port`: writes `prefix`, then `requests` (in one write), and reads until
 * the server closes it (or `timeoutMs`). `closed` says whether the server closed it.
 */
async function exchange (port: number, prefix: Buffer, requests: string, from = LB, timeoutMs = 8000): Promise<{ responses: Response[], raw: string, closed: boolean }> {
  return await new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: from })
    let raw = ''
    let closed = false
    const timer = setTimeout(() => s.destroy(), timeoutMs)
    s.setEncoding('latin1')
    s.on('data', (d: string) => { raw += d })
    s.on('end', () => { closed = true })
    s.on('error', () => { closed = true })
    s.on('close', () => { clearTimeout(timer); resolve({ responses: responses(raw), raw, closed }) })
    s.write(Buffer.concat([prefix, Buffer.from(requests, 'latin1')]))
  })
}

/**
 * A keep-alive connection from `from` (the load balancer), kept open by the test: `prefix` and a request
 * for `path` now (resolves after its answer); `next(path)` sends one more and resolves with the
 * X-Forwarded-For of every answer so far. (uWS 20.30 and Ferry take no pipelined requests:
 * test/pipelining.test.ts, so each waits for the answer before it.)
 */
async function keptAlive (t: Teardown, port: number, prefix: Buffer, path: string, from = LB): Promise<{ next: (path: string) => Promise<string[]> }> {
  const s = connect({ host: '127.0.0.1', port, localAddress: from })
  t.teardown(() => { s.destroy() })
  let text = ''
  s.setEncoding('latin1').on('data', (d: string) => { text += d })
  s.on('error', () => {})
  const ask = async (data: Buffer | string, what: string): Promise<string[]> => {
    const n = responses(text).length + 1
    s.write(data)
    await waitFor(`the answer to ${what}`, () => responses(text).length >= n || s.destroyed)
    return responses(text).map((r) => r.status === 200 ? (JSON.parse(r.body) as Seen).xff : `status ${r.status}`)
  }
  await ask(Buffer.concat([prefix, Buffer.from(GET(path, false))]), path)
  return { next: async (path) => await ask(GET(path, false), path) }
}

/** The X-Forwarded-For the backend got for one request sent after `prefix`. */
async function clientSeen (port: number, prefix: Buffer, path = '/who', from = LB): Promise<string> {
  const r = await exchange(port, prefix, GET(path), from)
  if (r.responses.length !== 1) return `no response (${JSON.stringify(r.raw.slice(0, 80))})`
  if (r.responses[0]!.status !== 200) return `status ${r.responses[0]!.status}`
  return (JSON.parse(r.responses[0]!.body) as Seen).xff
}

/** Opens a WebSocket through a connection from `from` that starts with `prefix`; resolves with 101 or the refusal status (0: closed). */
async function wsThrough (t: Teardown, port: number, path: string, prefix: Buffer, from = LB): Promise<{ status: number, echo?: (m: string) => Promise<string> }> {
  return await new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, {
      perMessageDeflate: false,
      createConnection: () => {
        const s = connect({ host: '127.0.0.1', port, localAddress: from })
        s.write(prefix)
        return s
      },
    } as WebSocket.ClientOptions)
    t.teardown(() => { ws.terminate() })
    ws.once('open', () => {
      resolve({
        status: 101,
        echo: async (m) => await new Promise((resolve) => { ws.once('message', (d) => resolve(String(d))); ws.send(m) }),
      })
    })
    ws.once('unexpected-response', (_req, res) => { resolve({ status: res.statusCode ?? 0 }); ws.terminate() })
    ws.once('error', () => resolve({ status: 0 }))
  })
}

function config (httpPort: number, wsPorts: number[], listen: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: { http: { host: '127.0.0.1', port: 0, ...listen } },
    upstreams: {
      api: { protocol: 'http', endpoints: [`127.0.0.1:${httpPort}`] },
      chat: { protocol: 'ws', endpoints: wsPorts.map((p) => `127.0.0.1:${p}`), balance: 'hash' },
    },
    routes: [
      { match: { path: '/limited' }, upstream: 'api', rateLimits: ['per-ip'] },
      { match: { path: '/private' }, upstream: 'api', access: { allow: ['203.0.113.0/24'] } },
      { match: { path: '/chat' }, upstream: 'chat' },
      { match: { path: '/' }, upstream: 'api' },
    ],
    rateLimits: { policies: { 'per-ip': { key: 'ip', ratePerSec: 0.01, burst: 2 } } },
    http: { trustedProxies: [LB] },
    logging: { level: 'info', accessLog: true },
    ...extra,
  }
}

/**
 * The route's access list (allow 203.0.113.0/24) and the per-ip rate limit (burst 2) both key on the
 * source of the header `header` makes, not on the load balancer all connections come from.
 */
async function keyedByHeader (t: Test, f: FerryProcess, header: (ip: string) => Buffer, what: string): Promise<void> {
  t.equal(await clientSeen(f.httpPort, header('203.0.113.9'), '/private/x'), '203.0.113.9', `${what}: access list allow 203.0.113.0/24 admits the proxied client 203.0.113.9`)
  t.equal(await clientSeen(f.httpPort, header('198.51.100.1'), '/private/x'), 'status 403', `${what}: the proxied client 198.51.100.1 is refused 403 (the load balancer 127.0.0.1 is not what is checked)`)
  const limited: string[] = []
  for (let i = 0; i < 3; i++) limited.push(await clientSeen(f.httpPort, header('192.0.2.1'), '/limited'))
  t.same(limited, ['192.0.2.1', '192.0.2.1', 'status 429'], `${what}: client 192.0.2.1 gets 2 requests through, the 3rd is limited 429`)
  t.equal(await clientSeen(f.httpPort, header('192.0.2.2'), '/limited'), '192.0.2.2', `${what}: client 192.0.2.2 through the same load balancer still passes: the bucket is the proxied address's`)
}

/** The two backends and a Ferry in front of them (`listen` into listen.http, `extra` over the config). */
async function front (t: Teardown, listen: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<{ f: FerryProcess, api: Awaited<ReturnType<typeof echoBackend>>, chat: Awaited<ReturnType<typeof wsBackend>> }> {
  const api = await echoBackend(t)
  const chat = await wsBackend(t)
  return { f: await startFerry(t, config(api.port, [chat.port], listen, extra)), api, chat }
}

/** ferry_tcp_closed_total{listener="listen.http",reason=CODE} */
async function refused (f: FerryProcess, code: string): Promise<number> {
  return await metric(f, `ferry_tcp_closed_total{listener="listen.http",reason="${code}"}`)
}

// ---- what the uWS binary does with PROXY headers (docs/edge.md, the table) ---------------------------

t.test('the uWS 20.30 binary: v2 parsed from any peer (36 bytes of addresses and TLVs at most, LOCAL not told apart), v1 and malformed headers held without a response, v2 before TLS breaks the handshake', async (t) => {
  const uws = loadNativeUws()
  const text = (ab: ArrayBuffer): string => Buffer.from(ab).toString()
  const handler = (res: import('uWebSockets.js').HttpResponse): void => { res.end(JSON.stringify({ peer: text(res.getRemoteAddressAsText()), proxied: text(res.getProxiedRemoteAddressAsText()) })) }
  const app = uws.App().any('/*', handler)
  const { cert, key } = await selfSigned()
  const sslApp = uws.SSLApp({ cert_file_name: cert, key_file_name: key }).any('/*', handler)
  const bind = (a: import('uWebSockets.js').TemplatedApp): { port: number, close: () => void } => {
    let ls: import('uWebSockets.js').us_listen_socket | false = false
    a.listen('127.0.0.1', 0, (s) => { ls = s })
    if (ls === false) throw new Error('cannot listen')
    const sock = ls
    return { port: uws.us_socket_local_port(sock as never), close: () => { uws.us_listen_socket_close(sock) } }
  }
  const plain = bind(app)
  const tls = bind(sslApp)
  t.teardown(() => { plain.close(); tls.close(); (app as unknown as { close: () => void }).close(); (sslApp as unknown as { close: () => void }).close() })
  /** 'none' when nothing came back within 2 s (uWS closes such a connection about 10 s after it opened). */
  const probe = async (prefix: Buffer, from = LB): Promise<{ peer: string, proxied: string } | 'none'> => {
    const r = await exchange(plain.port, prefix, GET('/'), from, 2000)
    return r.responses[0] === undefined ? 'none' : JSON.parse(r.responses[0].body) as { peer: string, proxied: string }
  }
  const tlv = (addrs: Buffer, family: number, tlvBytes: number): Buffer => {
    const body = Buffer.concat([addrs, tlvBytes === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x04]), Buffer.from([(tlvBytes - 3) >> 8, (tlvBytes - 3) & 255]), Buffer.alloc(tlvBytes - 3)])])
    return Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, family, body.length >> 8, body.length & 255]), body])
  }
  const v4addrs = v2('203.0.113.5').subarray(16)
  const v6addrs = v2('2001:db8::5').subarray(16)
  const results = await Promise.all([
    probe(v2('203.0.113.5')),
    probe(v2('203.0.113.5'), STRANGER),
    probe(tlv(v4addrs, 0x11, 24)),
    probe(tlv(v4addrs, 0x11, 25)),
    probe(tlv(v6addrs, 0x21, 0)),
    probe(tlv(v6addrs, 0x21, 3)),
    probe(Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x11, 0, 12]), v4addrs])),
    probe(Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0, 0])])),
    probe(Buffer.alloc(0)),
    probe(Buffer.concat([V2_SIGNATURE, Buffer.from([0x31, 0x11, 0, 12]), v4addrs])),
    probe(v1('203.0.113.5')),
    probe(Buffer.from('PROXY UNKNOWN\r\n')),
  ])
  t.match(results[0], { peer: LB, proxied: '203.0.113.5' }, 'a v2 TCP4 header: getProxiedRemoteAddress() is its source, getRemoteAddress() the peer')
  t.match(results[1], { peer: STRANGER, proxied: '203.0.113.5' }, 'from any peer alike: uWS has no trusted list')
  t.match(results[2], { proxied: '203.0.113.5' }, 'IPv4 addresses and 24 bytes of TLVs (36 in all): parsed')
  t.equal(results[3], 'none', 'IPv4 and 25 bytes of TLVs (37): no response')
  t.match(results[4], { proxied: '2001:0db8:0000:0000:0000:0000:0000:0005' }, 'IPv6 addresses (36 bytes): parsed')
  t.equal(results[5], 'none', 'IPv6 and a 3-byte TLV: no response')
  t.match(results[6], { proxied: '203.0.113.5' }, 'LOCAL with addresses: the addresses are returned as if it were PROXY')
  t.match(results[7], { proxied: '' }, 'LOCAL without addresses: an empty address…')
  t.match(results[8], { proxied: '' }, '…the same as no header at all')
  t.equal(results[9], 'none', 'a v2 header of version 3: no response')
  t.equal(results[10], 'none', 'a v1 header: no response')
  t.equal(results[11], 'none', 'v1 PROXY UNKNOWN: no response')
  const handshake = await new Promise<string>((resolve) => {
    const raw = connect({ host: '127.0.0.1', port: tls.port }, () => {
      raw.write(v2('203.0.113.5'))
      const s = tlsConnect({ socket: raw, servername: 'localhost', rejectUnauthorized: false }, () => { s.destroy(); resolve('handshake completed') })
      s.on('error', (err: NodeJS.ErrnoException) => { resolve(err.code ?? err.message) })
    })
  })
  t.equal(handshake, 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', 'SSLApp, a v2 header before the ClientHello: the handshake fails (uWS reads the header after TLS)')
})

// ---- v2: uWebSockets.js reads the header ------------------------------------------------------------

t.test('v2: the header\'s source is the client for X-Forwarded-For, access lists and rate limits; a keep-alive connection keeps it', async (t) => {
  const { f } = await front(t, { acceptProxyProtocol: 'v2' })

  t.equal(await clientSeen(f.httpPort, v2('203.0.113.7')), '203.0.113.7', 'the backend is told X-Forwarded-For: 203.0.113.7, the source in the v2 header')
  t.equal(await clientSeen(f.httpPort, v2('2001:db8::7')), '2001:db8::7', 'an IPv6 source likewise')
  t.equal(await clientSeen(f.httpPort, Buffer.alloc(0)), LB, 'a trusted peer that sends no header is the client itself')

  const two = await (await keptAlive(t, f.httpPort, v2('198.51.100.20'), '/a')).next('/b')
  t.same(two, ['198.51.100.20', '198.51.100.20'], 'both requests of one keep-alive connection (the second sent after the first answer) carry the header\'s source')

  await keyedByHeader(t, f, v2, 'v2')

  const log = await waitFor('the access log line of /a', () => f.logs.find((l) => l.msg === 'access' && l.path === '/a'))
  t.equal(log?.client, '198.51.100.20', 'the access log names the proxied client')
})

t.test('v2: a peer outside http.trustedProxies is closed without a response and counted, header or not; other connections go on', async (t) => {
  const { f, api, chat } = await front(t, { acceptProxyProtocol: 'v2' })
  // A keep-alive connection from the load balancer, open across the refusals.
  const lb = await keptAlive(t, f.httpPort, v2('203.0.113.50'), '/before')

  const spoof = await exchange(f.httpPort, v2('203.0.113.66'), GET('/spoof'), STRANGER)
  t.ok(spoof.closed && spoof.raw === '', `${STRANGER} sending a v2 header: closed without a response byte`)
  const plain = await exchange(f.httpPort, Buffer.alloc(0), GET('/plain'), STRANGER)
  t.ok(plain.closed && plain.raw === '', `${STRANGER} without a header: closed too`)
  const ws = await wsThrough(t, f.httpPort, '/chat', v2('203.0.113.67'), STRANGER)
  t.equal(ws.status, 0, 'a WebSocket upgrade from the stranger: closed without a response')
  t.equal(await refused(f, 'FERRY_ERR_TCP_PROXY_UNTRUSTED'), 3, 'ferry_tcp_closed_total{listener="listen.http",reason="FERRY_ERR_TCP_PROXY_UNTRUSTED"} = 3')
  t.same(api.seen.map((s) => s.url), ['/before'], 'the backend saw none of the stranger\'s requests')
  t.equal(chat.handshakes.length, 0, 'nor its upgrade')

  t.same(await lb.next('/after'), ['203.0.113.50', '203.0.113.50'], 'the load balancer\'s keep-alive connection served before and after, with its client')
  t.ok(await waitFor('the refusal\'s log line', () => f.logs.some((l) => l.code === 'FERRY_ERR_TCP_PROXY_UNTRUSTED' && l.peer === STRANGER)), 'the refusal is logged with the peer')
})

t.test('v2: WebSocket upgrades carry the proxied client to the backend and to `hash` balancing', async (t) => {
  const api = await echoBackend(t)
  const one = await wsBackend(t)
  const two = await wsBackend(t)
  const f = await startFerry(t, config(api.port, [one.port, two.port], { acceptProxyProtocol: 'v2' }))
  const s = await wsThrough(t, f.httpPort, '/chat', v2('203.0.113.77'))
  t.equal(s.status, 101, 'the upgrade after a v2 header succeeds')
  t.equal(await s.echo!('hello'), 'hello', 'and the session echoes')
  t.equal(one.handshakes.concat(two.handshakes)[0]!['x-forwarded-for'], '203.0.113.77', 'the ws backend is told X-Forwarded-For: 203.0.113.77')
  // balance: hash over two endpoints: each client keeps its endpoint, and the clients spread over both.
  const where = new Map<string, Set<number>>()
  for (let i = 1; i <= 12; i++) {
    for (let k = 0; k < 2; k++) {
      const before = [one.handshakes.length, two.handshakes.length]
      const w = await wsThrough(t, f.httpPort, '/chat', v2(`198.51.100.${i}`))
      if (w.status !== 101) { t.fail(`client ${i}: ${w.status}`); continue }
      const to = one.handshakes.length > before[0]! ? 1 : 2
      const set = where.get(`198.51.100.${i}`) ?? new Set()
      set.add(to)
      where.set(`198.51.100.${i}`, set)
    }
  }
  t.ok([...where.values()].every((set) => set.size === 1), 'each of 12 proxied clients reached the same endpoint both times')
  const used = new Set([...where.values()].map((set) => [...set][0]))
  t.equal(used.size, 2, 'the 12 clients are spread over both endpoints (with the load balancer\'s address as the key they would all share one)')
})

t.test('off: a v2 header is not believed; X-Forwarded-Proto from a trusted proxy is passed on as it said it', async (t) => {
  const { f, chat } = await front(t, {}, { http: { trustedProxies: ['127.0.0.2'] } })
  t.equal(await clientSeen(f.httpPort, v2('203.0.113.7')), LB, 'acceptProxyProtocol off (default): the client is the TCP peer whatever header it sent')
  const proto = async (from: string, xfp: string): Promise<string> => {
    const r = await exchange(f.httpPort, Buffer.alloc(0), `GET /p HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: ${xfp}\r\nConnection: close\r\n\r\n`, from)
    return (JSON.parse(r.responses[0]!.body) as Seen).xfp
  }
  t.equal(await proto('127.0.0.2', 'https'), 'https', 'from a trusted proxy, X-Forwarded-Proto: https reaches the backend as it said it')
  t.equal(await proto('127.0.0.2', 'wss'), 'wss', 'and wss too')
  t.equal(await proto(LB, 'https'), 'http', 'from any other peer it is replaced by the front\'s own scheme')
  const ws = await new Promise<IncomingHttpHeaders>((resolve) => {
    const c = new WebSocket(`ws://127.0.0.1:${f.httpPort}/chat`, { localAddress: '127.0.0.2', headers: { 'x-forwarded-proto': 'https' } })
    c.once('open', () => { c.close(); resolve(chat.handshakes.at(-1)!) })
    c.once('error', () => resolve({}))
  })
  t.equal(ws['x-forwarded-proto'], 'https', 'a WebSocket upgrade from the trusted proxy passes its X-Forwarded-Proto on too')
})

// ---- v1+v2: Ferry's reader in front of uWS ----------------------------------------------------------

t.test('v1+v2: v1 and v2 headers (TLVs too, split across writes), curl --haproxy-protocol; the client feeds limits, access lists and logs', async (t) => {
  const { f, chat } = await front(t, { acceptProxyProtocol: 'v1+v2' })
  t.equal(await clientSeen(f.httpPort, v1('203.0.113.10')), '203.0.113.10', 'a v1 header: the backend is told X-Forwarded-For: 203.0.113.10')
  t.equal(await clientSeen(f.httpPort, v1('2001:db8::10')), '2001:db8::10', 'a v1 TCP6 header: 2001:db8::10')
  t.equal(await clientSeen(f.httpPort, v2('203.0.113.11')), '203.0.113.11', 'a v2 header: 203.0.113.11')
  t.equal(await clientSeen(f.httpPort, v2WithTlvs('203.0.113.12', 200)), '203.0.113.12', 'a v2 header with 200 bytes of TLVs (more than uWS itself takes)')
  t.equal(await clientSeen(f.httpPort, Buffer.from('PROXY UNKNOWN\r\n')), LB, 'v1 UNKNOWN (the spec: use the real peer): the load balancer is the client')

  // The header split across two writes, the request in a third.
  const split = await new Promise<string>((resolve) => {
    const s = connect({ host: '127.0.0.1', port: f.httpPort, localAddress: LB }, () => {
      const h = v1('203.0.113.13')
      s.write(h.subarray(0, 9))
      setTimeout(() => { s.write(h.subarray(9)); setTimeout(() => s.write(GET('/split')), 50) }, 50)
    })
    let raw = ''
    s.setEncoding('latin1').on('data', (d: string) => { raw += d }).on('close', () => resolve(raw))
  })
  t.equal((JSON.parse(responses(split)[0]?.body ?? '{}') as Seen).xff, '203.0.113.13', 'a header that arrives in pieces is read whole')

  const curl = await new Promise<{ code: number | null, out: string }>((resolve) => {
    const c = spawn('curl', ['-s', '--max-time', '5', '--haproxy-protocol', '--interface', LB, `http://127.0.0.1:${f.httpPort}/curl`])
    let out = ''
    c.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
    c.on('close', (code) => resolve({ code, out }))
  })
  t.equal(curl.code, 0, 'curl --haproxy-protocol (a v1 header) gets its answer')
  t.equal((JSON.parse(curl.out || '{}') as Seen).xff, LB, 'and the backend is told the client curl named in its header')

  await keyedByHeader(t, f, v1, 'v1+v2, a v1 header')
  t.ok(await waitFor('the access log line of /split', () => f.logs.some((l) => l.msg === 'access' && l.path === '/split' && l.client === '203.0.113.13')), 'the access log names the proxied client')

  const ws = await wsThrough(t, f.httpPort, '/chat', v1('203.0.113.15'))
  t.equal(ws.status, 101, 'a WebSocket upgrade after a v1 header succeeds')
  t.equal(await ws.echo!('ping'), 'ping', 'and echoes through the reader')
  t.equal(chat.handshakes.at(-1)!['x-forwarded-for'], '203.0.113.15', 'the ws backend is told X-Forwarded-For: 203.0.113.15')
  const big = 'x'.repeat(1 << 20)
  t.equal((await ws.echo!(big)).length, big.length, 'a 1 MiB message goes through the reader both ways')
})

t.test('v1+v2: untrusted peers, missing, malformed and slow headers are closed at once and counted; other connections go on', async (t) => {
  const { f, api } = await front(t, { acceptProxyProtocol: 'v1+v2', proxyHeaderTimeoutMs: 300 })
  const lb = await keptAlive(t, f.httpPort, v1('203.0.113.60'), '/before')

  const cases: Array<[string, Buffer, string, string]> = [
    ['a v1 header from a peer outside http.trustedProxies', v1('203.0.113.66'), STRANGER, 'FERRY_ERR_TCP_PROXY_UNTRUSTED'],
    ['plain HTTP without a header', Buffer.alloc(0), LB, 'FERRY_ERR_TCP_PROXY_HEADER'],
    ['a malformed v1 header (port out of range)', Buffer.from('PROXY TCP4 203.0.113.1 127.0.0.1 1 65536\r\n'), LB, 'FERRY_ERR_TCP_PROXY_HEADER'],
    ['a v1 line of more than 107 bytes', Buffer.from(`PROXY UNKNOWN ${'x'.repeat(120)}\r\n`), LB, 'FERRY_ERR_TCP_PROXY_HEADER'],
    ['a v2 header of version 3', Buffer.concat([V2_SIGNATURE, Buffer.from([0x31, 0x11, 0, 12]), Buffer.alloc(12)]), LB, 'FERRY_ERR_TCP_PROXY_HEADER'],
    ['a TLS ClientHello without a header', Buffer.from('16030100a5010000a103', 'hex'), LB, 'FERRY_ERR_TCP_PROXY_HEADER'],
  ]
  for (const [what, prefix, from, code] of cases) {
    const before = await refused(f, code)
    const started = Date.now()
    const r = await exchange(f.httpPort, prefix, what.startsWith('a TLS') ? '' : GET('/bad'), from)
    t.ok(r.closed && r.raw === '', `${what}: closed without a response byte (after ${Date.now() - started} ms, well inside the test's 8 s bound)`)
    t.equal(await refused(f, code), before + 1, `${what}: counted as ${code}`)
  }
  // A header that never completes: closed at proxyHeaderTimeoutMs (300 ms), counted.
  const slow = await exchange(f.httpPort, Buffer.from('PROXY TCP4 203.0.113.1 '), '', LB)
  t.ok(slow.closed && slow.raw === '', 'an unfinished header is closed without a response')
  t.equal(await refused(f, 'FERRY_ERR_TCP_PROXY_TIMEOUT'), 1, 'counted as FERRY_ERR_TCP_PROXY_TIMEOUT')
  // A TCP health check (connect, close, not a byte) is not bad input.
  await new Promise<void>((resolve) => { connect({ host: '127.0.0.1', port: f.httpPort, localAddress: LB }, function (this: Socket) { this.end() }).on('close', () => resolve()) })
  t.equal(await refused(f, 'FERRY_ERR_TCP_PROXY_HEADER'), 5, 'a connection closed before its first byte (a TCP health check) is not counted as bad input')
  await waitFor('the health check counted as reason="probe"', async () => await refused(f, 'probe') === 1)
  t.pass('but as reason="probe" (as the TCP listeners count theirs)')

  // Another local process connecting straight to uWS's loopback port is not the reader: refused.
  const line = f.logs.find((l) => typeof l.uws === 'string')
  const internal = Number(String(line?.uws).split(':').at(-1))
  t.ok(internal > 0, `the log names uWS's internal port (${internal})`)
  const bypass = await exchange(internal, v2('203.0.113.99'), GET('/bypass'), LB)
  t.ok(bypass.closed && bypass.raw === '', 'a request straight to the internal port (with its own v2 header) is closed without a response')
  t.equal(await refused(f, 'FERRY_ERR_TCP_PROXY_HEADER'), 6, 'and counted')
  t.same(api.seen.map((s) => s.url), ['/before'], 'the backend saw none of the refused requests')

  t.same(await lb.next('/after'), ['203.0.113.60', '203.0.113.60'], 'the load balancer\'s keep-alive connection served before and after, with its client')
})

t.test('v1+v2: a stop closes the sessions through the reader and the process exits within the drain deadline', async (t) => {
  const { f } = await front(t, { acceptProxyProtocol: 'v1+v2' })
  const ws = await wsThrough(t, f.httpPort, '/chat', v1('203.0.113.40'))
  t.equal(ws.status, 101, 'a session through the reader is open')
  const idle = connect({ host: '127.0.0.1', port: f.httpPort, localAddress: LB })
  t.teardown(() => { idle.destroy() })
  idle.write(v1('203.0.113.41'))
  const idleClosed = new Promise<void>((resolve) => idle.on('close', () => resolve()).on('error', () => {}))
  const started = Date.now()
  const code = await f.stop()
  t.equal(code, 0, `SIGTERM: exit 0 after ${Date.now() - started} ms (the drain deadline is 5000 ms)`)
  await idleClosed
  t.pass('a connection idle after its header is closed too')
})

/** A throwaway self-signed certificate for localhost (openssl CLI). */
async function selfSigned (): Promise<{ cert: string, key: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pp-tls-'))
  const cert = join(dir, 'c.pem')
  const key = join(dir, 'k.pem')
  const code = await new Promise<number | null>((resolve) => {
    spawn('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost'], { stdio: 'ignore' }).on('close', resolve)
  })
  if (code !== 0) throw new Error(`openssl exited ${code}`)
  return { cert, key }
}

t.test('v1+v2 on a TLS front: the header before the ClientHello, the client through TLS (curl --haproxy-protocol https)', async (t) => {
  const { cert, key } = await selfSigned()
  const { f } = await front(t, { acceptProxyProtocol: 'v1+v2', tls: { certFile: cert, keyFile: key } })
  const out = await new Promise<string>((resolve) => {
    const c = spawn('curl', ['-sk', '--max-time', '5', '--haproxy-protocol', '--interface', LB, `https://localhost:${f.httpPort}/tls`, '--resolve', `localhost:${f.httpPort}:127.0.0.1`])
    let s = ''
    c.stdout.setEncoding('utf8').on('data', (d: string) => { s += d })
    c.on('close', () => resolve(s))
  })
  const seen = JSON.parse(out || '{}') as Seen
  t.equal(seen.xff, LB, 'over TLS, the backend is told the client of the v1 header')
  t.equal(seen.xfp, 'https', 'and X-Forwarded-Proto: https')
})

t.test('a real HAProxy in mode tcp in front: send-proxy (v1) and send-proxy-v2', async (t) => {
  const api = await echoBackend(t)
  const chat = await wsBackend(t)
  for (const [mode, sendProxy] of [['v1+v2', 'send-proxy'], ['v1+v2', 'send-proxy-v2'], ['v2', 'send-proxy-v2']] as const) {
    const f = await startFerry(t, config(api.port, [chat.port], { acceptProxyProtocol: mode }))
    const dir = mkdtempSync(join(tmpdir(), 'ferry-haproxy-'))
    const cfgFile = join(dir, 'haproxy.cfg')
    const port = await freePort()
    writeFileSync(cfgFile, [
      'global', '  log stderr format raw local0 err',
      'defaults', '  mode tcp', '  timeout connect 2s', '  timeout client 10s', '  timeout server 10s',
      `frontend fe`, `  bind 127.0.0.1:${port}`, '  default_backend be',
      'backend be', `  server ferry 127.0.0.1:${f.httpPort} ${sendProxy}`,
    ].join('\n') + '\n')
    const hap = spawn('haproxy', ['-f', cfgFile, '-db'], { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    hap.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
    const exited = new Promise((resolve) => hap.once('exit', resolve))
    t.teardown(async () => { hap.kill('SIGKILL'); await exited })
    await waitFor(`haproxy listening on ${port} (${err})`, async () => await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => { s.destroy(); resolve(true) }).on('error', () => resolve(false))
    }), 10_000, 50)
    // The client connects to HAProxy from 127.0.0.7; HAProxy connects to Ferry from 127.0.0.1 (trusted).
    const r = await exchange(port, Buffer.alloc(0), GET(`/haproxy-${sendProxy}`), '127.0.0.7')
    t.equal((JSON.parse(r.responses[0]?.body ?? '{}') as Seen).xff, '127.0.0.7', `acceptProxyProtocol ${mode}, HAProxy ${sendProxy}: the backend is told the client HAProxy saw (127.0.0.7)`)
    hap.kill('SIGTERM')
    await exited
  }
})

t.test('a pod of 2 workers: each worker reads the headers of the connections it takes (v2 and v1+v2)', async (t) => {
  const api = await echoBackend(t)
  const chat = await wsBackend(t)
  for (const mode of ['v2', 'v1+v2'] as const) {
    const f = await startFerry(t, config(api.port, [chat.port], { acceptProxyProtocol: mode }, { gateway: { workers: 2 } }), { timeoutMs: 30_000 })
    const header = mode === 'v2' ? v2 : v1
    const got = await Promise.all(Array.from({ length: 20 }, async (_, i) => await clientSeen(f.httpPort, header(`198.51.100.${i + 1}`))))
    t.same(got, Array.from({ length: 20 }, (_, i) => `198.51.100.${i + 1}`), `${mode}: 20 connections at once, each answered with its own client`)
    const workers = new Set(f.logs.filter((l) => l.msg === 'access').map((l) => l.worker))
    t.ok(workers.size >= 1, `${mode}: served by worker(s) ${[...workers].join(', ')}`)
    const strange = await exchange(f.httpPort, header('203.0.113.1'), GET('/x'), STRANGER)
    t.ok(strange.closed && strange.raw === '', `${mode}: a stranger is refused in a worker too`)
    await f.stop()
  }
})

async function freePort (): Promise<number> {
  const { createServer } = await import('node:net')
  return await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)) })
  })
}

t.test('config: acceptProxyProtocol needs http.trustedProxies, v2 cannot be used with TLS, v1+v2 cannot come or go by a reload', async (t) => {
  const base = { upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } }, routes: [{ match: { path: '/' }, upstream: 'api' }] }
  const none = await runCli(['check', '--config', writeConfig({ ...base, listen: { http: { acceptProxyProtocol: 'v2' } } })])
  t.not(none.code, 0, 'without http.trustedProxies: refused')
  t.match(none.stdout + none.stderr, /listen\.http\.acceptProxyProtocol.*needs http\.trustedProxies/, 'naming listen.http.acceptProxyProtocol and http.trustedProxies')
  const tls = await runCli(['check', '--config', writeConfig({ ...base, http: { trustedProxies: [LB] }, listen: { http: { acceptProxyProtocol: 'v2', tls: { certFile: '/nonexistent.pem', keyFile: '/nonexistent.key' } } } })])
  t.match(tls.stdout + tls.stderr, /listen\.http\.acceptProxyProtocol.*v2 cannot be used with listen\.http\.tls/, 'v2 with TLS: refused, pointing at v1+v2')

  const { f } = await front(t, { acceptProxyProtocol: 'off' })
  const file = String(f.child.spawnargs.at(-1))
  const edit = (mode: string): void => {
    const c = parse(readFileSync(file, 'utf8')) as { listen: { http: Record<string, unknown> } }
    c.listen.http.acceptProxyProtocol = mode
    writeFileSync(file, stringify(c))
  }
  const reload = async (): Promise<{ result: string, errors?: string[] }> => await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as { result: string, errors?: string[] }
  t.equal(await clientSeen(f.httpPort, v2('203.0.113.30')), LB, 'off: the header is not believed')
  edit('v2')
  t.equal((await reload()).result, 'ok', 'off → v2 by a reload: ok')
  t.equal(await clientSeen(f.httpPort, v2('203.0.113.30')), '203.0.113.30', 'v2 applies to the next connection')
  const strange = await exchange(f.httpPort, Buffer.alloc(0), GET('/x'), STRANGER)
  t.ok(strange.closed && strange.raw === '', 'and a stranger is refused from then on')
  edit('v1+v2')
  const r = await reload()
  t.not(r.result, 'ok', 'v2 → v1+v2 by a reload: refused')
  t.match(JSON.stringify(r), /listen\.http\.acceptProxyProtocol: cannot change on a reload/, 'naming the field and that it needs a restart')
})
