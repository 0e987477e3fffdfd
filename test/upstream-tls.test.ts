import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer as createHttpsServer } from 'node:https'
import { connect as netConnect, createServer as createNetServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { TLSSocket, createSecureContext, type TlsOptions } from 'node:tls'
import t from 'tap'
import { WebSocketServer } from 'ws'
import { startBackend } from './helpers/backend.js'
import { adminStatus, logged, metric, runCli, startFerry, tcpPort, waitFor, writeConfig, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { send } from './helpers/http.js'
import { connect, startMuxBackend, upgradeStatus } from './helpers/mux.js'
import { makePki, openssl, type Pki } from './helpers/pki.js'

/**
 * TLS towards every upstream kind (upstreams.NAME.tls, docs/tls.md "TLS to upstreams"), against real TLS
 * servers on 127.0.0.1 with certificates from a throwaway CA the test makes with the openssl CLI: an https
 * backend behind an http upstream (and its WebSocket upgrades), a wss backend behind a ws upstream, a
 * node:tls backend behind a tcp upstream, and ferry/backend serving mux links over TLS; client
 * certificates (mutual TLS) required by the backends; a wrong CA, a wrong name and a plain backend refused
 * and counted; bad files refused at start, by `ferry check` and by a reload, naming the field.
 */

/** What a TLS backend saw of one request or connection: the SNI name (false: none) and the client certificate's CN and serial. */
interface Seen { path: string, sni: string | false, client: string | undefined, serial: string | undefined, socket: TLSSocket }

function peer (s: TLSSocket): { sni: string | false, client: string | undefined, serial: string | undefined } {
  const c = s.getPeerCertificate()
  const cn = c?.subject?.CN
  return { sni: s.servername, client: typeof cn === 'string' ? cn : undefined, serial: c?.serialNumber }
}

interface HttpsBackend { port: number, address: string, seen: Seen[], wsSeen: Array<Omit<Seen, 'path' | 'socket'>> }

/** An https server (and a ws server on it, echoing) with `pair`; `mtls`: it requires a client certificate signed by `pki`'s CA. */
async function httpsBackend (t: Teardown, pki: Pki, pair: { cert: string, key: string }, mtls: boolean): Promise<HttpsBackend> {
  const seen: Seen[] = []
  const wsSeen: HttpsBackend['wsSeen'] = []
  const tls: TlsOptions = { cert: readFileSync(pair.cert), key: readFileSync(pair.key), ...(mtls ? { ca: readFileSync(pki.ca), requestCert: true, rejectUnauthorized: true } : {}) }
  const server = createHttpsServer({ ...tls, keepAliveTimeout: 60_000 }, (req, res) => {
    const s = req.socket as TLSSocket
    seen.push({ path: req.url ?? '', ...peer(s), socket: s })
    res.end(`tls ${req.url ?? ''}`)
  })
  const sockets = new Set<Socket>()
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  server.on('tlsClientError', () => {})
  const wss = new WebSocketServer({ server, perMessageDeflate: false })
  wss.on('connection', (ws, req) => {
    wsSeen.push(peer(req.socket as TLSSocket))
    ws.on('error', () => {})
    ws.on('message', (d, binary) => { ws.send(d, { binary }) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return { port, address: `127.0.0.1:${port}`, seen, wsSeen }
}

/** The first message on `ws`-style echo through Ferry, or why not. */
async function echo (url: string, text: string): Promise<string> {
  const c = await connect(url)
  try {
    c.ws.send(text)
    await Promise.race([c.waitMessages(1), new Promise((_r, reject) => setTimeout(() => { reject(new Error('no echo within 5000 ms')) }, 5000))])
    return c.messages[0]!.data.toString()
  } finally {
    c.ws.close()
  }
}

/** Log lines of `f` with `code` for `upstream`. */
function logged (f: FerryProcess, code: string, upstream: string): Array<Record<string, unknown>> {
  return f.logs.filter((r) => r.code === code && r.upstream === upstream)
}

t.test('https and wss to backends that require a client certificate: SNI, verification, health checks, the upgrade twin', async (t) => {
  const pki = await makePki(t)
  const server = await pki.issue('api', 'DNS:api.test,IP:127.0.0.1', '51')
  const client = await pki.issue('ferry-client', 'DNS:ferry-client', 'C1')
  const b = await httpsBackend(t, pki, server, true)
  const plainWs = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise((resolve) => plainWs.once('listening', resolve))
  plainWs.on('connection', (ws) => { ws.on('message', (d, binary) => { ws.send(d, { binary }) }) })
  t.teardown(async () => { for (const ws of plainWs.clients) ws.terminate(); await new Promise((resolve) => plainWs.close(resolve)) })
  const mtls = { caFile: pki.ca, certFile: client.cert, keyFile: client.key }
  const f = await startFerry(t, {
    upstreams: {
      api: { protocol: 'http', endpoints: [`https://${b.address}`], tls: { ...mtls, serverName: 'api.test' }, healthCheck: { intervalMs: 1000, http: { path: '/health' } } },
      chat: { protocol: 'ws', endpoints: [`wss://${b.address}`], tls: mtls, healthCheck: { intervalMs: 1000 } },
      nocert: { protocol: 'ws', endpoints: [`wss://${b.address}`], tls: { caFile: pki.ca } },
      plain: { protocol: 'ws', endpoints: [`ws://127.0.0.1:${(plainWs.address() as { port: number }).port}`] },
    },
    routes: [{ match: { path: '/ws' }, upstream: 'chat' }, { match: { path: '/nocert' }, upstream: 'nocert' }, { match: { path: '/plain' }, upstream: 'plain' }, { match: { path: '/api' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  await waitFor('the https health check to pass', async () => await metric(f, `ferry_upstream_endpoint_checked_up{upstream="api",endpoint="${b.address}"}`) === 1)
  const check = b.seen.find((s) => s.path === '/health')
  t.match(check, { sni: 'api.test', client: 'ferry-client' }, 'the health check GET went over TLS, with SNI api.test and the client certificate')
  await waitFor('the wss health check (a TLS handshake) to pass', async () => await metric(f, `ferry_upstream_endpoint_checked_up{upstream="chat",endpoint="${b.address}"}`) === 1)

  const n = b.seen.length
  const r1 = await send(f, '/api/one', { headers: { host: 'a.example' } })
  const r2 = await send(f, '/api/two', { headers: { host: 'b.example' } })
  t.same([r1.status, r1.body, r2.status, r2.body], [200, 'tls /api/one', 200, 'tls /api/two'], 'requests reach the https backend')
  const served = b.seen.slice(n).filter((s) => s.path.startsWith('/api/'))
  t.match(served, [{ sni: 'api.test', client: 'ferry-client' }, { sni: 'api.test', client: 'ferry-client' }], 'SNI is tls.serverName (not the client\'s Host), and Ferry presented its client certificate')
  t.equal(served[0]!.socket, served[1]!.socket, 'two requests with different Host headers shared one keep-alive TLS connection (1 connection for 2 requests)')

  t.equal(await echo(`ws://127.0.0.1:${f.httpPort}/ws`, 'over wss'), 'over wss', 'a ws upstream with wss:// endpoints relays both ways')
  t.equal(await echo(`ws://127.0.0.1:${f.httpPort}/plain`, 'over ws'), 'over ws', 'an endpoint written ws:// (the config reference allows it; it used to be ignored as "not host:port") is used, in the clear')
  t.match(b.wsSeen.at(-1), { sni: false, client: 'ferry-client' }, 'an IP endpoint without serverName: no SNI, its IP address verified; the client certificate presented')
  t.equal(await echo(`ws://127.0.0.1:${f.httpPort}/api/socket`, 'via the twin'), 'via the twin', 'a WebSocket upgrade on a route to the https upstream goes over wss')
  t.match(b.wsSeen.at(-1), { sni: 'api.test', client: 'ferry-client' }, 'with the http upstream\'s SNI and client certificate')

  const refused = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/nocert`)
  t.equal(refused.status, 502, 'a backend that wants a client certificate Ferry does not have: the upgrade is answered 502')
  t.match(JSON.parse(refused.body), { error: { code: 'FERRY_ERR_UPSTREAM_TLS' } }, 'with FERRY_ERR_UPSTREAM_TLS')
  t.ok(await metric(f, `ferry_upstream_tls_failures_total{upstream="nocert",endpoint="${b.address}",reason="refused"}`) >= 1, 'counted as reason refused')
  t.equal(await metric(f, 'ferry_ws_upgrade_failures_total{route="*/nocert",code="FERRY_ERR_UPSTREAM_TLS"}'), 1, 'and as an upgrade failure with its code')

  const st = await adminStatus(f)
  t.match(st.upstreams.find((u: { name: string }) => u.name === 'api').tls, { caFile: pki.ca, caCertificates: 1, clientCertificate: { serial: 'C1' }, serverName: 'api.test', verify: true }, '/status shows the TLS of an upstream (no secret)')
  t.equal(st.upstreams.find((u: { name: string }) => u.name === 'nocert').tls.clientCertificate, null, 'and that one has no client certificate')
})

/** A TLS server behind a PROXY v1 line (read in the clear first): echoes, and answers a FIN with `bye` and its own FIN. */
async function proxiedTlsBackend (t: Teardown, pki: Pki, pair: { cert: string, key: string }): Promise<{ port: number, proxyLines: string[], seen: Array<ReturnType<typeof peer>> }> {
  const proxyLines: string[] = []
  const seen: Array<ReturnType<typeof peer>> = []
  const secureContext = createSecureContext({ cert: readFileSync(pair.cert), key: readFileSync(pair.key), ca: readFileSync(pki.ca) })
  const sockets = new Set<Socket>()
  const server = createNetServer({ allowHalfOpen: true }, (raw) => {
    sockets.add(raw)
    raw.on('close', () => sockets.delete(raw))
    raw.on('error', () => {})
    let buf = Buffer.alloc(0)
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d])
      const nl = buf.indexOf('\r\n')
      if (nl < 0) return
      raw.off('data', onData)
      raw.pause()
      proxyLines.push(buf.subarray(0, nl).toString('latin1'))
      const rest = buf.subarray(nl + 2)
      if (rest.length > 0) raw.unshift(rest)
      const s = new TLSSocket(raw, { isServer: true, secureContext, requestCert: true, rejectUnauthorized: true })
      s.on('error', () => {})
      s.on('secure', () => { seen.push(peer(s)) })
      s.on('data', (chunk: Buffer) => { s.write(chunk) })
      s.on('end', () => { s.end('bye') })
    }
    raw.on('data', onData)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return { port: (server.address() as { port: number }).port, proxyLines, seen }
}

t.test('tcp over TLS with a client certificate: the PROXY header goes first in the clear, bytes and half-close travel inside TLS', async (t) => {
  const pki = await makePki(t)
  const server = await pki.issue('db', 'DNS:db.test', '61')
  const client = await pki.issue('ferry-client', 'DNS:ferry-client', 'C2')
  const b = await proxiedTlsBackend(t, pki, server)
  const f = await startFerry(t, {
    upstreams: { db: { protocol: 'tcp', endpoints: [`127.0.0.1:${b.port}`], tls: { caFile: pki.ca, certFile: client.cert, keyFile: client.key, serverName: 'db.test' } } },
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, tcp: [{ name: 'db', host: '127.0.0.1', port: 0, upstream: 'db', proxyProtocol: 'v1' }] },
    logging: { level: 'info', accessLog: false },
  })
  const c = netConnect({ host: '127.0.0.1', port: tcpPort(f, 'db'), allowHalfOpen: true })
  t.teardown(() => { c.destroy() })
  let got = ''
  c.setEncoding('utf8').on('data', (d: string) => { got += d })
  const ended = new Promise<void>((resolve) => c.once('end', resolve))
  c.write('hello over tls')
  await waitFor('the echo', () => got === 'hello over tls', 5000)
  c.end()
  await ended
  t.equal(got, 'hello over tlsbye', 'the client\'s FIN reached the backend through TLS; its answer and FIN came back (half-close)')
  t.match(b.proxyLines, [/^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+$/], 'the backend read the PROXY v1 line in the clear, before the handshake')
  t.match(b.seen, [{ sni: 'db.test', client: 'ferry-client', serial: 'C2' }], 'SNI db.test, and Ferry presented its client certificate')
})

t.test('mux links over TLS to a ferry/backend that requires a client certificate', async (t) => {
  const pki = await makePki(t)
  const server = await pki.issue('mux', 'DNS:mux.test', '71')
  const client = await pki.issue('ferry-client', 'DNS:ferry-client', 'C3')
  const backend = await startMuxBackend(t, (s) => { s.on('message', (d, b) => { s.send(d, { binary: b }) }) }, {
    tls: { cert: readFileSync(server.cert), key: readFileSync(server.key), ca: readFileSync(pki.ca), requestCert: true, rejectUnauthorized: true },
  })
  const address = `127.0.0.1:${backend.port}`
  const f = await startFerry(t, {
    upstreams: {
      chat: { protocol: 'mux', endpoints: [address], pool: { links: 2 }, tls: { caFile: pki.ca, certFile: client.cert, keyFile: client.key, serverName: 'mux.test' } },
      nocert: { protocol: 'mux', endpoints: [address], pool: { links: 1 }, tls: { caFile: pki.ca, serverName: 'mux.test' }, timeouts: { openMs: 1000 } },
    },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/nocert' }, upstream: 'nocert' }],
    logging: { level: 'info', accessLog: false },
  })
  t.equal(await echo(`ws://127.0.0.1:${f.httpPort}/chat`, 'over a TLS link'), 'over a TLS link', 'a session echoes over a mutual-TLS link')
  t.equal(backend.links().length, 2, 'the backend accepted the two links (each presented the client certificate)')
  await waitFor('a refused link to be counted', async () => await metric(f, `ferry_upstream_tls_failures_total{upstream="nocert",endpoint="${address}",reason="refused"}`) >= 1)
  const refused = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/nocert`)
  t.equal(refused.status, 502, 'without a client certificate no link is made: the upgrade is answered 502')
  t.equal(backend.links().length, 2, 'and the backend holds no link of it')
  t.equal(logged(f, 'FERRY_ERR_UPSTREAM_TLS', 'nocert').length, 1, 'the refusal is logged once for the endpoint, however often the link retries')
})

t.test('a wrong CA, a wrong name, a plain backend: refused, counted by reason, logged once per endpoint', async (t) => {
  const pki = await makePki(t)
  const other = await makePki(t, 'Another CA')
  const server = await pki.issue('api', 'DNS:api.test,DNS:localhost,IP:127.0.0.1', '81')
  const b = await httpsBackend(t, pki, server, false)
  // Signed by the other CA: the failover tests' bad endpoint.
  const stranger = await httpsBackend(t, other, await other.issue('api', 'DNS:api.test,IP:127.0.0.1', '82'), false)
  const plain = await startBackend(t, (_req, res) => { res.end('plain') })
  const f = await startFerry(t, {
    upstreams: {
      wrongca: { protocol: 'http', endpoints: [b.address], tls: { caFile: other.ca } },
      wrongname: { protocol: 'http', endpoints: [b.address], tls: { caFile: pki.ca, serverName: 'other.test' } },
      plain: { protocol: 'http', endpoints: [plain.address], tls: { caFile: pki.ca } },
      ok: { protocol: 'http', endpoints: [`https://localhost:${b.port}`], tls: { caFile: pki.ca } },
      noverify: { protocol: 'http', endpoints: [b.address], tls: { rejectUnauthorized: false } },
      wsca: { protocol: 'ws', endpoints: [b.address], tls: { caFile: other.ca } },
      tcpca: { protocol: 'tcp', endpoints: [b.address], tls: { caFile: other.ca } },
      tcpcheck: { protocol: 'tcp', endpoints: [b.address], tls: { caFile: other.ca }, healthCheck: { intervalMs: 1000 } },
      // One endpoint whose certificate another CA signed, one good: new work fails over.
      httpmix: { protocol: 'http', endpoints: [stranger.address, b.address], tls: { caFile: pki.ca } },
      wsmix: { protocol: 'ws', endpoints: [stranger.address, b.address], tls: { caFile: pki.ca } },
      tcpmix: { protocol: 'tcp', endpoints: [stranger.address, b.address], tls: { caFile: pki.ca } },
    },
    routes: [
      { match: { path: '/wrongca' }, upstream: 'wrongca' }, { match: { path: '/wrongname' }, upstream: 'wrongname' },
      { match: { path: '/plain' }, upstream: 'plain' }, { match: { path: '/ok' }, upstream: 'ok' }, { match: { path: '/ws' }, upstream: 'wsca' },
      { match: { path: '/noverify' }, upstream: 'noverify' }, { match: { path: '/httpmix' }, upstream: 'httpmix' }, { match: { path: '/wsmix' }, upstream: 'wsmix' },
    ],
    listen: {
      http: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      tcp: [{ name: 'tcpca', host: '127.0.0.1', port: 0, upstream: 'tcpca' }, { name: 'tcpmix', host: '127.0.0.1', port: 0, upstream: 'tcpmix' }, { name: 'tcpcheck', host: '127.0.0.1', port: 0, upstream: 'tcpcheck' }],
    },
    logging: { level: 'info', accessLog: false },
  })
  const ok = await send(f, '/ok')
  t.same([ok.status, ok.body], [200, 'tls /ok'], 'the right CA: served')
  t.equal(b.seen.at(-1)!.sni, 'localhost', 'an endpoint written with a host name: that name is the SNI (and the name verified)')
  const nv = await send(f, '/noverify')
  t.equal(nv.status, 200, 'rejectUnauthorized: false: served although nothing vouches for the certificate')
  t.ok(await logged(f, (r) => r.upstream === 'noverify' && /rejectUnauthorized is false/.test(String(r.msg))), 'and a warning says so')
  for (let i = 0; i < 5; i++) {
    const r = await send(f, '/wrongca')
    t.same([r.status, r.code], [502, 'FERRY_ERR_UPSTREAM_TLS'], `request ${i + 1} to a backend whose certificate another CA signed: 502 FERRY_ERR_UPSTREAM_TLS`)
  }
  t.equal(await metric(f, `ferry_upstream_tls_failures_total{upstream="wrongca",endpoint="${b.address}",reason="verify"}`), 5, '5 failures counted as reason verify')
  t.equal(await metric(f, 'ferry_errors_total{code="FERRY_ERR_UPSTREAM_TLS",upstream="wrongca"}'), 5, 'and as 5 request errors with the code')
  const lines = logged(f, 'FERRY_ERR_UPSTREAM_TLS', 'wrongca')
  t.equal(lines.length, 1, 'logged once for the endpoint, not once per request (5 requests)')
  t.match(lines[0], { endpoint: b.address, reason: 'verify', msg: /does not verify .*tls\.caFile/ }, 'naming the endpoint, the reason and what to check')
  t.match(await send(f, '/wrongname'), { status: 502, code: 'FERRY_ERR_UPSTREAM_TLS' }, 'a certificate that does not name tls.serverName: 502')
  t.equal(await metric(f, `ferry_upstream_tls_failures_total{upstream="wrongname",endpoint="${b.address}",reason="name"}`), 1, 'counted as reason name')
  t.match(await send(f, '/plain'), { status: 502, code: 'FERRY_ERR_UPSTREAM_TLS' }, 'a backend that speaks plain HTTP: 502')
  t.equal(await metric(f, `ferry_upstream_tls_failures_total{upstream="plain",endpoint="${plain.address}",reason="protocol"}`), 1, 'counted as reason protocol')
  t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/ws`)).status, 502, 'ws upstream, wrong CA: the upgrade is answered 502')
  t.equal(await metric(f, `ferry_upstream_tls_failures_total{upstream="wsca",endpoint="${b.address}",reason="verify"}`), 1, 'counted as reason verify')

  const c = netConnect({ host: '127.0.0.1', port: tcpPort(f, 'tcpca') })
  t.teardown(() => { c.destroy() })
  c.on('error', () => {})
  let got = 0
  c.on('data', (d: Buffer) => { got += d.length })
  await new Promise((resolve) => c.once('close', resolve))
  t.equal(got, 0, 'tcp upstream, wrong CA: the client connection is closed, nothing relayed')
  t.equal(await metric(f, `ferry_tcp_connect_failures_total{upstream="tcpca",endpoint="${b.address}",code="FERRY_ERR_UPSTREAM_TLS"}`), 1, 'counted as a connect failure with the code')
  t.equal(await metric(f, 'ferry_tcp_closed_total{listener="tcpca",reason="FERRY_ERR_UPSTREAM_TLS"}'), 1, 'and the connection as closed by it')
  t.equal(await metric(f, `ferry_upstream_tls_failures_total{upstream="tcpca",endpoint="${b.address}",reason="verify"}`), 1, 'and as reason verify')

  await waitFor('a failed TLS health check to be counted', async () => await metric(f, `ferry_upstream_tls_failures_total{upstream="tcpcheck",endpoint="${b.address}",reason="verify"}`) >= 1)
  const chk = (await adminStatus(f)).upstreams.find((u: { name: string }) => u.name === 'tcpcheck').endpoints[0]
  t.match(chk, { check: /^(starting|down)$/, lastError: /does not verify/ }, 'a tcp health check completes a TLS handshake: with the wrong CA it fails, saying why')

  // Failover: round-robin over a bad and a good endpoint, three times each; every one ends on the good one.
  for (let i = 0; i < 3; i++) t.equal((await send(f, '/httpmix')).status, 200, `http request ${i + 1}: served`)
  for (let i = 0; i < 3; i++) t.equal(await echo(`ws://127.0.0.1:${f.httpPort}/wsmix`, `mix ${i}`), `mix ${i}`, `ws session ${i + 1}: relayed`)
  for (let i = 0; i < 3; i++) {
    const s = netConnect({ host: '127.0.0.1', port: tcpPort(f, 'tcpmix') })
    t.teardown(() => { s.destroy() })
    let head = ''
    s.setEncoding('latin1').on('data', (d: string) => { head += d })
    s.write('GET /tcpmix HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n')
    await new Promise((resolve) => s.once('close', resolve))
    t.match(head, /^HTTP\/1\.1 200 [\s\S]*tls \/tcpmix$/, `tcp connection ${i + 1}: relayed through TLS to the good endpoint`)
  }
  for (const u of ['httpmix', 'wsmix', 'tcpmix']) {
    t.ok(await metric(f, `ferry_upstream_tls_failures_total{upstream="${u}",endpoint="${stranger.address}",reason="verify"}`) >= 1, `${u}: the bad endpoint was tried and refused (counted) before the good one took the work`)
  }
  t.ok(await metric(f, 'ferry_upstream_retries_total{upstream="httpmix"}') >= 1, 'the HTTP request was retried on the other endpoint')
})

/** `ferry check` of a config with these upstreams (the first one routed). */
async function check (upstreams: Record<string, Record<string, unknown>>): Promise<{ code: number | null, stderr: string }> {
  const file = writeConfig({ upstreams, routes: [{ match: { path: '/' }, upstream: Object.keys(upstreams)[0] }] })
  return await runCli(['check', '--config', file])
}

/** An http upstream at 127.0.0.1:9 with `tls`. */
function api (tls: Record<string, unknown>, endpoints = ['127.0.0.1:9']): Record<string, unknown> {
  return { protocol: 'http', endpoints, tls }
}

t.test('bad files: the process does not start, ferry check and a reload refuse them naming the field', async (t) => {
  const pki = await makePki(t)
  const a = await pki.issue('client-a', 'DNS:ferry-client', 'A1')
  const b = await pki.issue('client-b', 'DNS:ferry-client', 'B1')
  const expired = await pki.issue('client-old', 'DNS:ferry-client', 'E1', 0)
  const garbage = join(pki.dir, 'garbage.pem')
  writeFileSync(garbage, 'not a certificate\n')
  const missing = join(pki.dir, 'missing.pem')
  const oldCa = await pki.issue('old-ca', 'DNS:old-ca', 'E2', 0)

  await t.rejects(startFerry(t, { upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'], tls: { caFile: missing } } }, routes: [{ match: { path: '/' }, upstream: 'api' }] }),
    /FERRY_ERR_TLS_CERT[\s\S]*upstreams\.api\.tls\.caFile: cannot read .*missing\.pem \(ENOENT\)/, 'an unreadable caFile: the process exits before listening, naming upstreams.api.tls.caFile')
  const encKey = join(pki.dir, 'client-a.enc.key')
  const pass = join(pki.dir, 'pass')
  await openssl(['pkey', '-in', a.key, '-aes256', '-passout', 'pass:s3cret', '-out', encKey])
  writeFileSync(pass, 's3cret\n')
  const files = await check({
    garbage: api({ caFile: garbage }),
    oldca: api({ caFile: oldCa.cert }),
    mismatch: api({ certFile: a.cert, keyFile: b.key }),
    expired: api({ certFile: expired.cert, keyFile: expired.key }),
    encrypted: api({ certFile: a.cert, keyFile: encKey }),
    db: { protocol: 'tcp', endpoints: ['127.0.0.1:9'], tls: { caFile: missing } },
  })
  t.not(files.code, 0, 'ferry check fails on bad TLS files')
  t.match(files.stderr, /6 problems/, 'listing every problem, not the first only (6)')
  t.match(files.stderr, /upstreams\.garbage\.tls\.caFile: .*garbage\.pem holds no PEM certificate/, 'a caFile without a certificate')
  t.match(files.stderr, /upstreams\.oldca\.tls\.caFile: every certificate in .*old-ca\.pem has expired/, 'a caFile of expired certificates only')
  t.match(files.stderr, /upstreams\.mismatch\.tls\.keyFile: .*client-b\.key does not match the certificate in upstreams\.mismatch\.tls\.certFile \(serial A1\)/, 'a client key that is not the certificate\'s')
  t.match(files.stderr, /upstreams\.expired\.tls\.certFile: .*client-old\.pem \(serial E1\) expired on/, 'an expired client certificate')
  t.match(files.stderr, /upstreams\.encrypted\.tls\.keyFile: .* is not a usable PEM private key \(an encrypted key needs upstreams\.encrypted\.tls\.passphraseFile\)/, 'an encrypted key without passphraseFile')
  t.match(files.stderr, /upstreams\.db\.tls\.caFile: cannot read .*missing\.pem \(ENOENT\)/, 'an unreadable file of a tcp upstream')
  const good = await check({ api: api({ caFile: pki.ca, certFile: a.cert, keyFile: encKey, passphraseFile: pass }) })
  t.same([good.code, good.stderr], [0, ''], 'the encrypted key with its passphraseFile: ferry check passes')
  const shape = await check({
    nokey: api({ certFile: a.cert }),
    off: api({ enabled: false }, ['https://127.0.0.1:9']),
    mixed: api({ caFile: pki.ca }, ['http://127.0.0.1:9']),
    schemes: { protocol: 'ws', endpoints: ['wss://127.0.0.1:9', 'ws://127.0.0.1:10'] },
    mux: { protocol: 'mux', endpoints: ['https://127.0.0.1:9'] },
  })
  t.match(shape.stderr, /upstreams\.nokey\.tls\.keyFile: is required with tls\.certFile/, 'a client certificate without its key: a config error')
  t.match(shape.stderr, /upstreams\.off\.endpoints\[0\]: says https:\/\/ but tls\.enabled is false/, 'an https:// endpoint on an upstream whose tls is off')
  t.match(shape.stderr, /upstreams\.mixed\.endpoints\[0\]: says http:\/\/ but the upstream speaks TLS \(its tls block\)/, 'an http:// endpoint on an upstream with tls')
  t.match(shape.stderr, /upstreams\.schemes\.endpoints\[1\]: says ws:\/\/ but the upstream speaks TLS \(another endpoint is written wss:\/\/\)/, 'ws:// beside wss:// in one upstream')
  t.match(shape.stderr, /upstreams\.mux\.endpoints\[0\]: must be host:port or \[ipv6\]:port .*no scheme: TLS is set by tls/, 'a scheme on a mux endpoint')

  // A running gateway: a bad file on a reload is refused and the old files stay in use; renewed files are used after a reload.
  const server = await pki.issue('api', 'DNS:api.test,IP:127.0.0.1', '91')
  const backend = await httpsBackend(t, pki, server, true)
  const cert = join(pki.dir, 'client.crt')
  const key = join(pki.dir, 'client.key')
  copyFileSync(a.cert, cert)
  copyFileSync(a.key, key)
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [backend.address], tls: { caFile: pki.ca, certFile: cert, keyFile: key } } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  t.equal((await send(f, '/first')).status, 200, 'served with client certificate A1')
  t.equal(backend.seen.at(-1)!.serial, 'A1', 'the backend saw A1')
  copyFileSync(b.key, key)
  const refused = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as { result: string, errors: string[] }
  t.equal(refused.result, 'refused', 'a reload with a key that does not match the certificate is refused')
  t.match(refused.errors.join('\n'), /upstreams\.api\.tls\.keyFile: .*client\.key does not match the certificate in upstreams\.api\.tls\.certFile/, 'naming upstreams.api.tls.keyFile')
  const still = await send(f, '/after-refusal')
  t.same([still.status, backend.seen.at(-1)!.serial], [200, 'A1'], 'the running config and its client certificate stay in use')
  copyFileSync(b.cert, cert)
  const ok = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as { result: string, changed: string[] }
  t.match(ok, { result: 'ok', changed: ['api'] }, 'renewed files at the same paths: the reload rebuilds the upstream')
  t.equal((await send(f, '/renewed')).status, 200, 'served')
  t.equal(backend.seen.at(-1)!.serial, 'B1', 'with the renewed client certificate B1')
})

t.test('with gateway.workers: 2 every worker reads the files and speaks TLS; a bad file on a reload is refused by the pod', async (t) => {
  const pki = await makePki(t)
  const server = await pki.issue('api', 'DNS:api.test,IP:127.0.0.1', 'A5')
  const client = await pki.issue('ferry-client', 'DNS:ferry-client', 'C5')
  const other = await pki.issue('other-client', 'DNS:ferry-client', 'C6')
  const backend = await httpsBackend(t, pki, server, true)
  const key = join(pki.dir, 'pod-client.key')
  copyFileSync(client.key, key)
  const f = await startFerry(t, {
    gateway: { workers: 2, workerHangMs: 5000 },
    upstreams: { api: { protocol: 'http', endpoints: [backend.address], tls: { caFile: pki.ca, certFile: client.cert, keyFile: key } } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  for (let i = 0; i < 6; i++) t.equal((await send(f, `/pod/${i}`)).status, 200, `request ${i + 1}: served over mutual TLS`)
  t.ok(backend.seen.every((s) => s.client === 'ferry-client'), 'every request came with the client certificate, whichever worker sent it')
  copyFileSync(other.key, key)
  const r = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as { result: string, errors: string[] }
  t.equal(r.result, 'refused', 'a key that does not match: the pod refuses the reload (every worker refused it)')
  t.match(r.errors.join('\n'), /upstreams\.api\.tls\.keyFile: .*pod-client\.key does not match the certificate in upstreams\.api\.tls\.certFile/, 'naming upstreams.api.tls.keyFile')
  t.equal((await send(f, '/pod/after')).status, 200, 'and keeps serving on the running config')
})
