import { copyFileSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { connect as netConnect } from 'node:net'
import { join } from 'node:path'
import { connect as tlsConnect } from 'node:tls'
import t, { type Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { chromium } from 'playwright-core'
import { parse, stringify } from 'yaml'
import { startBackend } from './helpers/backend.js'
import { startMuxBackend } from './helpers/mux.js'
import { metric, runCli, singleProcess, startFerry, waitFor, writeConfig, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { makePki, openssl, run, type Pki } from './helpers/pki.js'

/**
 * TLS termination on the HTTP/WebSocket front (listen.http.tls, docs/tls.md), with real TLS clients on
 * 127.0.0.1: curl, `openssl s_client -servername`, Node's tls and `ws`, headless Chromium. The test
 * makes its own throwaway CA and certificates with the openssl CLI.
 */

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'

/** The serial (upper-case hex) of the certificate Ferry presents for `servername` (undefined: no SNI). */
async function servedSerial (port: number, servername: string | undefined): Promise<string> {
  const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...(servername === undefined ? ['-noservername'] : ['-servername', servername])], '')
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0]
  if (pem === undefined) return `(no certificate: ${r.stderr.split('\n').slice(0, 3).join(' | ')})`
  const serial = await run('openssl', ['x509', '-noout', '-serial'], pem)
  return serial.stdout.trim().replace(/^serial=/, '').replace(/^0+/, '')
}

function copyPair (from: { cert: string, key: string }, to: { cert: string, key: string }): void {
  // Write both, then rename-free: a watcher may see a half-written pair and must refuse it (key mismatch) until both are in.
  copyFileSync(from.cert, to.cert)
  copyFileSync(from.key, to.key)
}

interface WsBackend { port: number, headers: Array<Record<string, string | string[] | undefined>> }

async function startWsBackend (t: Teardown): Promise<WsBackend> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await new Promise<void>((resolve) => server.once('listening', resolve))
  const b: WsBackend = { port: (server.address() as { port: number }).port, headers: [] }
  server.on('connection', (ws, req) => {
    b.headers.push(req.headers)
    ws.on('error', () => {})
    ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
  })
  t.teardown(async () => {
    for (const ws of server.clients) ws.terminate()
    await new Promise((resolve) => server.close(resolve))
  })
  return b
}

/** A wss client trusting only the test CA; resolves once open. */
async function wssOpen (t: Teardown, url: string, ca: string, servername: string): Promise<{ ws: WebSocket, echo: (s: string) => Promise<string> }> {
  const ws = new WebSocket(url, { ca: readFileSync(ca), servername, perMessageDeflate: false })
  t.teardown(() => { ws.terminate() })
  ws.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_q, res) => { reject(new Error(`upgrade answered ${res.statusCode}`)) })
  })
  const echo = async (s: string): Promise<string> => await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error('no echo within 5000 ms')) }, 5000)
    ws.once('message', (d) => { clearTimeout(timer); resolve(d.toString()) })
    ws.send(s)
  })
  return { ws, echo }
}

interface Setup {
  pki: Pki
  /** The files Ferry is configured with (rotation overwrites them). */
  def: { cert: string, key: string }
  a: { cert: string, key: string }
  ferry: FerryProcess
  ws: WsBackend
  headers: Array<Record<string, string | string[] | undefined>>
  /** Headers of the sessions the mux backend (route /chat) opened. */
  muxHeaders: Array<Readonly<Record<string, string>>>
}

/** Ferry with a default certificate (localhost, 127.0.0.1; serial 1001) and an SNI one (a.test; serial A001), routes / (http) and /ws (ws). */
async function setup (t: Test, tls: Record<string, unknown> = {}, listen: Record<string, unknown> = {}): Promise<Setup> {
  const pki = await makePki(t)
  const def0 = await pki.issue('def-1', 'DNS:localhost,IP:127.0.0.1', '1001')
  const a0 = await pki.issue('a-1', 'DNS:a.test', 'A001')
  const def = { cert: join(pki.dir, 'default.crt'), key: join(pki.dir, 'default.key') }
  const a = { cert: join(pki.dir, 'a.crt'), key: join(pki.dir, 'a.key') }
  copyPair(def0, def)
  copyPair(a0, a)
  const headers: Setup['headers'] = []
  const http = await startBackend(t, (req, res) => { headers.push(req.headers); res.end(`backend ${req.url ?? ''}`) })
  const ws = await startWsBackend(t)
  const muxHeaders: Setup['muxHeaders'] = []
  const mux = await startMuxBackend(t, (session) => { muxHeaders.push(session.headers) })
  const ferry = await startFerry(t, {
    listen: { http: { host: '127.0.0.1', port: 0, tls: { certFile: def.cert, keyFile: def.key, sni: [{ serverNames: ['a.test'], certFile: a.cert, keyFile: a.key }], ...tls }, ...listen } },
    upstreams: { api: { protocol: 'http', endpoints: [http.address] }, chat: { protocol: 'ws', endpoints: [`127.0.0.1:${ws.port}`] }, room: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] } },
    routes: [{ match: { path: '/ws' }, upstream: 'chat' }, { match: { path: '/chat' }, upstream: 'room' }, { match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  return { pki, def, a, ferry, ws, headers, muxHeaders }
}

async function curl (s: Setup, host: string, path: string): Promise<{ code: number, stdout: string, stderr: string }> {
  return await run('curl', ['-sS', '--max-time', '10', '--cacert', s.pki.ca, '--resolve', `${host}:${s.ferry.httpPort}:127.0.0.1`, `https://${host}:${s.ferry.httpPort}${path}`])
}

async function reload (f: FerryProcess): Promise<any> {
  return await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
}

t.test('HTTPS and WSS through to plain backends, the certificate chosen by SNI', async (t) => {
  const s = await setup(t)
  const r = await curl(s, 'localhost', '/hello?x=1')
  t.equal(r.code, 0, `curl --cacert verifies the default certificate for localhost (${r.stderr})`)
  t.equal(r.stdout, 'backend /hello?x=1', 'the request reaches the http backend')
  t.equal(s.headers.at(-1)!['x-forwarded-proto'], 'https', 'the backend is told X-Forwarded-Proto: https')
  const ra = await curl(s, 'a.test', '/on-a')
  t.equal(ra.code, 0, `curl --cacert verifies the a.test certificate for a.test (${ra.stderr})`)
  t.equal(ra.stdout, 'backend /on-a', 'routes are served on a connection whose SNI picked another certificate')
  t.equal(await servedSerial(s.ferry.httpPort, 'a.test'), 'A001', 'openssl s_client -servername a.test gets the a.test certificate')
  t.equal(await servedSerial(s.ferry.httpPort, 'localhost'), '1001', '-servername localhost gets the default certificate')
  t.equal(await servedSerial(s.ferry.httpPort, 'unknown.test'), '1001', 'a name no certificate lists gets the default')
  t.equal(await servedSerial(s.ferry.httpPort, undefined), '1001', 'no SNI at all gets the default')
  const plain = await run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${s.ferry.httpPort}/`])
  t.not(plain.code, 0, 'plain HTTP on the TLS port gets no HTTP answer (the connection is closed)')

  for (const host of ['localhost', 'a.test']) {
    const c = await wssOpen(t, `wss://127.0.0.1:${s.ferry.httpPort}/ws`, s.pki.ca, host)
    t.equal(await c.echo(`hi ${host}`), `hi ${host}`, `wss (SNI ${host}) echoes through to the ws backend`)
    c.ws.close()
  }
  t.equal(s.ws.headers.at(-1)!['x-forwarded-proto'], 'https', 'the ws backend is told X-Forwarded-Proto: https')
  await wssOpen(t, `wss://127.0.0.1:${s.ferry.httpPort}/chat`, s.pki.ca, 'a.test')
  await waitFor('the mux session to open', () => s.muxHeaders.length > 0)
  t.equal(s.muxHeaders[0]!['x-forwarded-proto'], 'https', 'a mux session\'s OPEN headers say x-forwarded-proto https')
})

/** The protocol `openssl s_client FLAG` negotiates with the front, or why not. */
async function negotiated (port: number, flag: string): Promise<string> {
  const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', flag, '-cipher', 'DEFAULT:@SECLEVEL=0'], '')
  const m = /New, (TLSv[\d.]+), Cipher is (\S+)/.exec(r.stdout)
  if (m !== null && m[2] !== '(NONE)') return m[1]!
  return /alert protocol version/.test(r.stderr) ? 'protocol_version alert' : `refused otherwise: ${r.stderr.slice(0, 200)}`
}

t.test('TLS 1.0 and 1.1 get a protocol_version alert; TLS 1.2 and 1.3 are accepted', async (t) => {
  const s = await setup(t)
  const port = s.ferry.httpPort
  t.equal(await negotiated(port, '-tls1_3'), 'TLSv1.3', 'a TLS 1.3 handshake completes')
  t.equal(await negotiated(port, '-tls1_2'), 'TLSv1.2', 'a TLS 1.2 handshake completes')
  t.equal(await negotiated(port, '-tls1_1'), 'protocol_version alert', 'a TLS 1.1 offer is refused with a protocol_version alert (minVersion TLSv1.2, fixed by the uWS binary)')
  t.equal(await negotiated(port, '-tls1'), 'protocol_version alert', 'a TLS 1.0 offer too')
  t.equal((await curl(s, 'localhost', '/after')).stdout, 'backend /after', 'the front serves on afterwards')
})

t.test('the plain redirect listener answers 308 to https', async (t) => {
  const s = await setup(t, {}, { redirectHttpPort: 0 })
  const rec = await waitFor('the redirect log line', () => s.ferry.logs.find((l) => l.msg === 'redirecting plain HTTP to https'))
  const port = Number(String(rec.redirect).split(':').at(-1))
  const r = await run('curl', ['-sS', '-i', '--max-time', '5', `http://localhost:${port}/some/path?q=1`])
  t.match(r.stdout, /^HTTP\/1\.1 308 /, 'plain HTTP gets 308')
  t.match(r.stdout, new RegExp(`location: https://localhost:${s.ferry.httpPort}/some/path\\?q=1\\r\\n`, 'i'), 'to the same URL over https on the TLS port')
  const follow = await run('curl', ['-sS', '-L', '--max-time', '10', '--cacert', s.pki.ca, `http://localhost:${port}/followed`])
  t.equal(follow.stdout, 'backend /followed', 'curl -L follows it to the backend over TLS')
  const bad = await run('curl', ['-sS', '-i', '--max-time', '5', '-H', 'Host: evil.test/x', `http://127.0.0.1:${port}/`])
  t.match(bad.stdout, /^HTTP\/1\.1 400 /, 'a Host that is not a host name gets 400, not a redirect built from it')

  // Raw sockets: every redirect answer closes and says so exactly once, whatever the client's Connection said.
  const answer = async (head: string): Promise<string> => await new Promise((resolve) => {
    const c = netConnect(port, '127.0.0.1', () => { c.write(`GET /hello?x=1 HTTP/1.1\r\n${head}\r\n`) })
    let text = ''
    c.setEncoding('latin1')
    c.on('data', (d: string) => { text += d })
    c.on('error', () => {})
    c.setTimeout(5000, () => { c.destroy() })
    c.on('close', () => { resolve(text.split('\r\n\r\n', 1)[0] ?? '') })
  })
  for (const [what, head, status] of [
    ['no Connection header', 'Host: localhost\r\n', 308],
    ['Connection: keep-alive', 'Host: localhost\r\nConnection: keep-alive\r\n', 308],
    ['Connection: close', 'Host: localhost\r\nConnection: close\r\n', 308],
    ['Connection: Close', 'Host: localhost\r\nConnection: Close\r\n', 308],
    ['a bad Host', 'Host: evil.test/x\r\n', 400],
    ['a bad Host and Connection: close', 'Host: evil.test/x\r\nConnection: close\r\n', 400],
  ] as const) {
    const h = await answer(head)
    t.match(h, new RegExp(`^HTTP/1\\.1 ${status} `), `${what}: ${status}`)
    const conn = h.split('\r\n').filter((l) => /^connection:/i.test(l))
    t.same(conn.map((l) => l.toLowerCase()), ['connection: close'], `${what}: exactly one Connection header, close (got ${JSON.stringify(conn)})`)
  }
})

t.test('rotation: reload and the file watch apply a renewed certificate; open sessions stay', async (t) => {
  const s = await setup(t, { watchIntervalMs: 1000 })
  const port = s.ferry.httpPort
  const session = await wssOpen(t, `wss://127.0.0.1:${port}/ws`, s.pki.ca, 'a.test')
  t.equal(await session.echo('before'), 'before', 'a wss session on a.test is open')
  // cert-manager renews into the mounted files; POST /reload with the config text unchanged.
  copyPair(await s.pki.issue('a-2', 'DNS:a.test', 'A002'), s.a)
  const rr = await reload(s.ferry)
  t.equal(rr.result, 'ok', 'the reload (same config text) succeeds')
  t.equal(await servedSerial(port, 'a.test'), 'A002', 'a new handshake for a.test gets the renewed certificate')
  t.equal(await session.echo('after reload'), 'after reload', 'the session opened before is untouched')
  const c2 = await wssOpen(t, `wss://127.0.0.1:${port}/ws`, s.pki.ca, 'a.test')
  t.equal(await c2.echo('new'), 'new', 'a new wss session on a.test works with the renewed certificate (its routes were registered again)')
  t.equal((await curl(s, 'a.test', '/renewed')).stdout, 'backend /renewed', 'and HTTPS on a.test too')

  // The watch, no reload: renewed again (and the default certificate too).
  const applied = await metric(s.ferry, 'ferry_tls_cert_checks_total{result="applied"}')
  // a.test by an atomic symlink swap (what a Kubernetes Secret volume does), the default by overwriting.
  const a3 = await s.pki.issue('a-3', 'DNS:a.test', 'A003')
  for (const [from, to] of [[a3.cert, s.a.cert], [a3.key, s.a.key]] as const) {
    symlinkSync(from, `${to}.next`)
    renameSync(`${to}.next`, to)
  }
  copyPair(await s.pki.issue('def-2', 'DNS:localhost,IP:127.0.0.1', '1002'), s.def)
  await waitFor('the watch to apply the new files', async () => await servedSerial(port, 'a.test') === 'A003' && await servedSerial(port, 'localhost') === '1002', 15_000, 200)
  t.pass('without a reload, within the watch interval, a.test serves A003 and localhost (a DNS name of the default) 1002')
  t.ok(await metric(s.ferry, 'ferry_tls_cert_checks_total{result="applied"}') > applied, 'counted as applied')
  t.equal(await servedSerial(port, undefined), '1001', 'a handshake without SNI still gets the start-up default (uWS 20.30 cannot replace it; docs/tls.md)')
  t.ok(s.ferry.logs.some((l) => typeof l.msg === 'string' && l.msg.includes('default certificate changed') && l.level === 40), 'and the gateway warns about it')
  t.equal(await session.echo('after watch'), 'after watch', 'the first session is still open and echoing')
  t.equal((await curl(s, 'localhost', '/x')).stdout, 'backend /x', 'HTTPS on localhost with the renewed default')
  t.ok(s.ferry.logs.some((l) => l.raw === 'Browsed to SNI: a.test'), 'uWS 20.30 prints its own non-JSON lines on stdout when a name is registered (docs/tls.md)')

  // The sni list itself changes on a reload: a.test's entry replaced by one for b.test.
  const b = await s.pki.issue('b-1', 'DNS:b.test', 'B0B1')
  const file = s.ferry.child.spawnargs.at(-1)!
  const cfg = parse(readFileSync(file, 'utf8')) as { listen: { http: { tls: { sni: unknown[] } } } }
  cfg.listen.http.tls.sni = [{ serverNames: ['b.test'], certFile: b.cert, keyFile: b.key }]
  writeFileSync(file, stringify(cfg))
  t.equal((await reload(s.ferry)).result, 'ok', 'a reload that replaces the sni entries succeeds')
  t.equal(await servedSerial(port, 'b.test'), 'B0B1', 'b.test now gets its certificate')
  t.equal(await servedSerial(port, 'a.test'), '1001', 'a.test, no longer listed and no name of the default, gets the start-up default (not the renewed 1002; docs/tls.md)')
  t.equal((await curl(s, 'b.test', '/b')).stdout, 'backend /b', 'HTTPS on b.test is routed')
  t.equal(await session.echo('after sni change'), 'after sni change', 'the first session (made on a.test) is still open')
})

t.test('a bad renewed certificate is refused naming its field; the running one stays', async (t) => {
  const s = await setup(t, { watchIntervalMs: 1000 })
  const port = s.ferry.httpPort
  const session = await wssOpen(t, `wss://127.0.0.1:${port}/ws`, s.pki.ca, 'a.test')
  const other = await s.pki.issue('other', 'DNS:a.test', 'B001')
  // A key that does not match the certificate.
  copyFileSync(other.key, s.a.key)
  let rr = await reload(s.ferry)
  t.equal(rr.result, 'refused', 'the reload is refused')
  t.match(rr.errors.join('\n'), /listen\.http\.tls\.sni\[0\]\.keyFile: .* does not match the certificate/, 'naming listen.http.tls.sni[0].keyFile')
  t.equal(await servedSerial(port, 'a.test'), 'A001', 'a.test still gets the running certificate')
  await waitFor('the watch to refuse it too', () => s.ferry.logs.some((l) => l.msg === 'TLS certificate files refused; the running certificates stay' && l.trigger === 'watch'), 10_000)
  t.pass('the watch logs the refusal')
  // Expired.
  copyPair(await s.pki.issue('expired', 'DNS:a.test', 'C001', 0), s.a)
  await new Promise((resolve) => setTimeout(resolve, 1100)) // notAfter is the second it was made
  rr = await reload(s.ferry)
  t.match(rr.errors.join('\n'), /listen\.http\.tls\.sni\[0\]\.certFile: .*expired on/, 'an expired certificate: refused naming listen.http.tls.sni[0].certFile')
  // Unreadable (mode 000 does not stop root, so: gone).
  rmSync(s.def.key)
  rr = await reload(s.ferry)
  t.match(rr.errors.join('\n'), /listen\.http\.tls\.keyFile: cannot read .*ENOENT/, 'a missing key file: refused naming listen.http.tls.keyFile')
  // Garbage (the other files put right, so this is the only problem).
  copyPair(await s.pki.issue('a-ok', 'DNS:a.test', 'A001'), s.a)
  copyFileSync(join(s.pki.dir, 'def-1.key'), s.def.key)
  writeFileSync(s.def.cert, 'not a certificate\n')
  rr = await reload(s.ferry)
  t.same(rr.errors.map((e: string) => e.split(':')[0]), ['listen.http.tls.certFile'], 'garbage: refused naming listen.http.tls.certFile alone')
  t.match(rr.errors[0], /is not a PEM certificate/, 'saying it is not a PEM certificate')
  t.ok(await metric(s.ferry, 'ferry_tls_cert_checks_total{result="refused"}') >= 4, 'each refusal is counted')
  t.equal(await servedSerial(port, 'a.test'), 'A001', 'a.test still serves the running certificate')
  t.equal(await servedSerial(port, 'localhost'), '1001', 'and localhost the running default')
  t.equal(await session.echo('still'), 'still', 'the open session was never touched')
  t.equal(s.ferry.child.exitCode, null, 'the gateway is alive')
  // Turning TLS off (or on) is not a reload: the front is made SSL or not at start.
  const file = s.ferry.child.spawnargs.at(-1)!
  const cfg = parse(readFileSync(file, 'utf8')) as { listen: { http: Record<string, any> } }
  const original = structuredClone(cfg)
  cfg.listen.http.tls.watchIntervalMs = 2000
  writeFileSync(file, stringify(cfg))
  rr = await reload(s.ferry)
  t.match(rr.errors.join('\n'), /listen\.http\.tls: cannot change on a reload \(ciphers, minVersion and watchIntervalMs/, 'a reload changing watchIntervalMs is refused, naming it')
  cfg.listen.http = { ...original.listen.http, redirectHttpPort: 0 }
  writeFileSync(file, stringify(cfg))
  rr = await reload(s.ferry)
  t.match(rr.errors.join('\n'), /listen\.http\.redirectHttpPort: cannot change on a reload/, 'adding redirectHttpPort is refused, naming it')
  cfg.listen.http = structuredClone(original.listen.http)
  delete cfg.listen.http.tls
  writeFileSync(file, stringify(cfg))
  rr = await reload(s.ferry)
  t.match(rr.errors.join('\n'), /listen\.http\.tls: cannot change on a reload/, 'a reload that removes listen.http.tls is refused, naming it')
})

t.test('every watch check is counted: unchanged while the files stay, refused on each check while they are bad (logged once), applied once put right', async (t) => {
  const s = await setup(t, { watchIntervalMs: 1000 })
  const checks = async (result: string): Promise<number> => await metric(s.ferry, `ferry_tls_cert_checks_total{result="${result}"}`)
  const u0 = await checks('unchanged')
  await waitFor('three watch checks counted as unchanged (no reload, files untouched)', async () => await checks('unchanged') >= u0 + 3, 10_000, 200)
  t.pass(`ferry_tls_cert_checks_total{result="unchanged"} grew by ≥ 3 within 10 s with watchIntervalMs 1000 and no reload (the watch is seen alive)`)
  t.equal(await checks('applied'), 0, 'nothing applied')

  // A key that does not match the certificate: every check refuses it, the log says it once.
  copyFileSync((await s.pki.issue('other', 'DNS:a.test', 'B001')).key, s.a.key)
  const r0 = await checks('refused')
  await waitFor('three watch checks counted as refused', async () => await checks('refused') >= r0 + 3, 10_000, 200)
  t.pass('refused grew by ≥ 3 within 10 s while the files stay bad')
  const logged = s.ferry.logs.filter((l) => l.msg === 'TLS certificate files refused; the running certificates stay' && l.trigger === 'watch').length
  t.equal(logged, 1, 'the same problem is logged once, not on every check')

  copyPair(await s.pki.issue('a-2', 'DNS:a.test', 'A002'), s.a)
  await waitFor('the watch to apply the renewed pair', async () => await checks('applied') >= 1, 10_000, 200)
  t.equal(await servedSerial(s.ferry.httpPort, 'a.test'), 'A002', 'the renewed pair is served')
  const u1 = await checks('unchanged')
  await waitFor('unchanged counting again after the change', async () => await checks('unchanged') >= u1 + 1, 10_000, 200)
  t.pass('checks that find the applied files again count as unchanged')
})

t.test('bad certificate files stop the process at start, each named by field', async (t) => {
  const pki = await makePki(t)
  const good = await pki.issue('good', 'DNS:localhost', '1')
  const wrong = await pki.issue('wrong', 'DNS:localhost', '2')
  const expired = await pki.issue('expired', 'DNS:localhost', '3', 0)
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const encKey = join(pki.dir, 'enc.key')
  await openssl(['pkey', '-in', good.key, '-aes256', '-passout', 'pass:s3cret', '-out', encKey])
  const pass = join(pki.dir, 'pass')
  writeFileSync(pass, 's3cret\n')
  const start = async (tls: Record<string, unknown>): Promise<{ code: number | null, stderr: string }> => {
    const file = writeConfig(singleProcess({
      listen: { http: { host: '127.0.0.1', port: 0, tls }, admin: { host: '127.0.0.1', port: 0 } },
      upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } },
      routes: [{ match: { path: '/' }, upstream: 'api' }],
      logging: { pretty: false },
    }))
    const r = await runCli(['start', '--config', file])
    return { code: r.code, stderr: r.stderr + r.stdout }
  }
  let r = await start({ certFile: expired.cert, keyFile: expired.key })
  t.not(r.code, 0, 'an expired default certificate: the process exits non-zero')
  t.match(r.stderr, /listen\.http\.tls\.certFile: .*expired on/, 'naming listen.http.tls.certFile')
  r = await start({ certFile: good.cert, keyFile: good.key, sni: [{ serverNames: ['a.test'], certFile: good.cert, keyFile: wrong.key }] })
  t.not(r.code, 0, 'a wrong key: the process exits non-zero')
  t.match(r.stderr, /listen\.http\.tls\.sni\[0\]\.keyFile: .* does not match the certificate/, 'naming listen.http.tls.sni[0].keyFile')
  const checkFile = writeConfig({ listen: { http: { tls: { certFile: expired.cert, keyFile: expired.key } } }, upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } }, routes: [{ match: { path: '/' }, upstream: 'api' }] })
  const check = await runCli(['check', '--config', checkFile])
  t.not(check.code, 0, 'ferry check fails on the same config')
  t.match(check.stderr, /listen\.http\.tls\.certFile: .*expired on/, 'naming the field')
  r = await start({ certFile: join(pki.dir, 'missing.pem'), keyFile: good.key })
  t.match(r.stderr, /listen\.http\.tls\.certFile: cannot read .*ENOENT/, 'an unreadable file: named')
  r = await start({ certFile: good.cert, keyFile: encKey })
  t.match(r.stderr, /listen\.http\.tls\.keyFile: .*needs listen\.http\.tls\.passphraseFile/, 'an encrypted key without a passphrase: named')
  const ok = await startFerry(t, {
    listen: { http: { host: '127.0.0.1', port: 0, tls: { certFile: good.cert, keyFile: encKey, passphraseFile: pass } } },
    upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
  })
  t.equal(await servedSerial(ok.httpPort, 'localhost'), '1', 'an encrypted key with its passphraseFile starts and serves')
  r = await start({ certFile: good.cert, keyFile: good.key, ciphers: 'NO-SUCH-CIPHER' })
  t.not(r.code, 0, 'a cipher list BoringSSL knows nothing of: the process exits non-zero')
  t.match(r.stderr, /listen\.http\.tls/, 'naming listen.http.tls')
})

t.test('garbage instead of a ClientHello, and stalled handshakes, never affect other connections', async (t) => {
  const s = await setup(t)
  const port = s.ferry.httpPort
  const session = await wssOpen(t, `wss://127.0.0.1:${port}/ws`, s.pki.ca, 'a.test')
  const closedAfter = async (payload: Buffer): Promise<boolean> => await new Promise((resolve) => {
    const c = netConnect(port, '127.0.0.1', () => { c.write(payload) })
    const timer = setTimeout(() => { c.destroy(); resolve(false) }, 10_000)
    c.on('data', () => {})
    c.on('error', () => {})
    c.on('close', () => { clearTimeout(timer); resolve(true) })
  })
  t.ok(await closedAfter(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')), 'plain HTTP to the TLS port: closed within 10 s')
  t.ok(await closedAfter(Buffer.alloc(4096, 0xff)), 'random bytes: closed within 10 s')
  t.ok(await closedAfter(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])), 'a malformed ClientHello: closed within 10 s')
  // Stalled mid-handshake: a TLS client whose socket stops after connecting; others carry on meanwhile.
  const stalled = Array.from({ length: 20 }, () => {
    const c = netConnect(port, '127.0.0.1', () => { c.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00])) }) // a record header promising 512 bytes that never come
    c.on('error', () => {})
    c.on('end', () => { c.destroy() })
    return c
  })
  t.teardown(() => { for (const c of stalled) c.destroy() })
  t.equal(await session.echo('through the noise'), 'through the noise', 'the open session echoes while 20 handshakes stall')
  t.equal((await curl(s, 'localhost', '/ok')).stdout, 'backend /ok', 'a new HTTPS request is served meanwhile')
  const tls = tlsConnect({ host: '127.0.0.1', port, servername: 'a.test', ca: readFileSync(s.pki.ca) })
  await new Promise<void>((resolve, reject) => { tls.once('secureConnect', resolve); tls.once('error', reject) })
  t.equal(tls.getPeerCertificate().serialNumber, 'A001', 'Node tls with the CA verifies a.test meanwhile')
  tls.destroy()
  const reneg = await run('sh', ['-c', `(printf 'R\\n'; sleep 2) | openssl s_client -connect 127.0.0.1:${port} -servername localhost -tls1_2 2>&1`])
  t.match(reneg.stdout, /RENEGOTIATING[\s\S]*alert no renegotiation/, 'a TLS 1.2 renegotiation attempt gets a no_renegotiation alert')
  t.equal(await session.echo('after reneg'), 'after reneg', 'the session still echoes')
  const start = Date.now()
  await waitFor('the stalled handshakes to be closed', () => stalled.every((c) => c.destroyed || c.readyState === 'closed'), 30_000, 100)
  t.pass(`the 20 stalled handshakes were closed by the gateway within 30 s (took ${Date.now() - start} ms more; uWS's 10 s idle timer)`)
  t.equal(s.ferry.child.exitCode, null, 'the gateway is alive')
})

t.test('headless Chromium opens wss:// through Ferry', async (t) => {
  const s = await setup(t)
  const spki = (await run('sh', ['-c', `openssl x509 -in ${s.def.cert} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`])).stdout.trim()
  // Certificate errors are ignored for this one key only (the test CA is not in Chromium's store).
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', `--ignore-certificate-errors-spki-list=${spki}`] })
  t.teardown(async () => { await browser.close() })
  const page = await browser.newPage()
  await page.goto(`https://localhost:${s.ferry.httpPort}/page`)
  t.equal(await page.textContent('body'), 'backend /page', 'Chromium loads an https page through Ferry')
  const echoed = await page.evaluate(async (url) => await new Promise<string>((resolve) => {
    const ws = new WebSocket(url)
    ws.onopen = () => { ws.send('from chromium') }
    ws.onmessage = (e) => { resolve(String(e.data)); ws.close() }
    ws.onerror = () => { resolve('error') }
  }), `wss://localhost:${s.ferry.httpPort}/ws`)
  t.equal(echoed, 'from chromium', 'a page opens wss:// through Ferry to the ws backend and gets its echo')
})
