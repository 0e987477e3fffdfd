import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { connect as netConnect, type Socket } from 'node:net'
import { join } from 'node:path'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { parse, stringify } from 'yaml'
import { ConfigError, validateConfig } from '../src/config/load.js'
import { startBackend, startRawBackend } from './helpers/backend.js'
import { adminStatus, logged, metric, runCli, singleProcess, startFerry, tcpPort, waitFor, writeConfig, type FerryProcess } from './helpers/ferry.js'
import { makePki, run, type Pki } from './helpers/pki.js'

/**
 * TLS termination on TCP listeners (listen.tcp[].tls, docs/tcp.md "TLS on a TCP listener"), with real
 * clients on 127.0.0.1: Node's tls, `openssl s_client`, curl. The backends are plain TCP (an echo
 * server, an HTTP server): what they receive is the client's plaintext.
 */

type Pair = { cert: string, key: string }

function copyPair (from: Pair, to: Pair): void {
  copyFileSync(from.cert, to.cert)
  copyFileSync(from.key, to.key)
}

/** A TLS client trusting only the test CA; resolves once the handshake is done. */
async function tlsOpen (t: Test, port: number, ca: string, opts: { servername?: string, ALPNProtocols?: string[], maxVersion?: 'TLSv1.2' | 'TLSv1.3' } = {}): Promise<TLSSocket> {
  const s = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(ca), servername: opts.servername ?? 'localhost', ...(opts.ALPNProtocols !== undefined ? { ALPNProtocols: opts.ALPNProtocols } : {}), ...(opts.maxVersion !== undefined ? { maxVersion: opts.maxVersion } : {}) })
  t.teardown(() => { s.destroy() })
  await new Promise<void>((resolve, reject) => {
    s.once('secureConnect', resolve)
    s.once('error', reject)
  })
  return s
}

/** Writes `text` and resolves with the first `text.length` bytes that come back. */
async function echo (s: Socket, text: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    let got = ''
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no echo of ${text} within 5000 ms (got ${JSON.stringify(got)})`)) }, 5000)
    const onData = (d: Buffer): void => { got += d.toString(); if (got.length >= text.length) { cleanup(); resolve(got) } }
    const onClose = (): void => { cleanup(); reject(new Error(`closed before the echo of ${text}`)) }
    const cleanup = (): void => { clearTimeout(timer); s.off('data', onData); s.off('close', onClose) }
    s.on('data', onData)
    s.on('close', onClose)
    s.write(text)
  })
}

/** The serial (upper-case hex, no leading zeros) of the certificate `openssl s_client` is served for `servername` (undefined: no SNI). */
async function servedSerial (port: number, servername: string | undefined, extra: string[] = []): Promise<string> {
  const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...(servername === undefined ? ['-noservername'] : ['-servername', servername]), ...extra], '')
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0]
  if (pem === undefined) return `(no certificate: ${r.stderr.split('\n').slice(0, 3).join(' | ')})`
  const serial = await run('openssl', ['x509', '-noout', '-serial'], pem)
  return serial.stdout.trim().replace(/^serial=/, '').replace(/^0+/, '')
}

/** Opens a plain TCP connection, writes `bytes` (if any), with `end` sends FIN, and resolves once the peer closed: what it sent back, how it closed. */
async function rawExchange (port: number, bytes: Buffer | string | undefined, timeoutMs = 10_000, end = false): Promise<{ data: Buffer, error: string | undefined, ms: number }> {
  const started = Date.now()
  return await new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port })
    const parts: Buffer[] = []
    let error: string | undefined
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`still open after ${timeoutMs} ms`)) }, timeoutMs)
    s.on('connect', () => { if (bytes !== undefined) s.write(bytes); if (end) s.end() })
    s.on('data', (d: Buffer) => parts.push(d))
    s.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message })
    s.on('close', () => { clearTimeout(timer); resolve({ data: Buffer.concat(parts), error, ms: Date.now() - started }) })
  })
}

async function reload (f: FerryProcess): Promise<any> {
  return await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
}

const closed = async (f: FerryProcess, listener: string, reason: string): Promise<number> => await metric(f, `ferry_tcp_closed_total{listener="${listener}",reason="${reason}"}`)

interface Setup {
  pki: Pki
  /** The files the `tls` listener is configured with (rotation overwrites them). */
  def: Pair
  ferry: FerryProcess
  /** Port of the listener `tls` (echo backend) and `web` (HTTP backend), `mq` (TLS 1.3 only, ALPN mqtt). */
  port: number
  webPort: number
  mqPort: number
  pxPort: number
}

/** Ferry with three TLS listeners: `tls` → echo (default 1001, a.test A001, *.w.test B001), `web` → HTTP, `mq` → echo with TLS 1.3 and ALPN. */
async function setup (t: Test): Promise<Setup> {
  const pki = await makePki(t)
  const def = { cert: join(pki.dir, 'default.crt'), key: join(pki.dir, 'default.key') }
  copyPair(await pki.issue('def-1', 'DNS:localhost,IP:127.0.0.1', '1001'), def)
  const a = await pki.issue('a-1', 'DNS:a.test', 'A001')
  const w = await pki.issue('w-1', 'DNS:*.w.test', 'B001')
  const echoBackend = await startRawBackend(t, (s) => {
    s.on('data', (d) => s.write(d))
    s.on('end', () => s.end())
  })
  const http = await startBackend(t, (req, res) => { res.end(`plain backend ${req.url ?? ''} ${req.socket.remoteAddress ?? ''}`) })
  const tls = { certFile: def.cert, keyFile: def.key, sni: [{ serverNames: ['a.test'], certFile: a.cert, keyFile: a.key }, { serverNames: ['*.w.test'], certFile: w.cert, keyFile: w.key }], handshakeTimeoutMs: 1000, watchIntervalMs: 1000 }
  const config: Record<string, any> = {
    listen: {
      http: { host: '127.0.0.1', port: 0 },
      admin: { host: '127.0.0.1', port: 0 },
      tcp: [
        { name: 'tls', host: '127.0.0.1', port: 0, upstream: 'echo', tls },
        { name: 'web', host: '127.0.0.1', port: 0, upstream: 'web', tls: { certFile: def.cert, keyFile: def.key } },
        { name: 'mq', host: '127.0.0.1', port: 0, upstream: 'echo', tls: { certFile: def.cert, keyFile: def.key, minVersion: 'TLSv1.3', alpn: ['mqtt'] } },
        { name: 'px', host: '127.0.0.1', port: 0, upstream: 'echo', acceptProxyProtocol: true, access: { deny: ['203.0.113.7'] }, tls: { certFile: def.cert, keyFile: def.key } },
      ],
    },
    upstreams: { echo: { protocol: 'tcp', endpoints: [echoBackend.address] }, web: { protocol: 'tcp', endpoints: [http.address] }, api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } },
    routes: [{ upstream: 'api' }],
    logging: { level: 'info', accessLog: false, pretty: false },
    drain: { acceptGraceMs: 0, spreadMs: 0, maxMigrationsPerSec: 1_000_000, deadlineMs: 5000 },
  }
  const ferry = await startFerry(t, config)
  return { pki, def, ferry, port: tcpPort(ferry, 'tls'), webPort: tcpPort(ferry, 'web'), mqPort: tcpPort(ferry, 'mq'), pxPort: tcpPort(ferry, 'px') }
}

t.test('TLS is terminated on a TCP listener: the certificate chosen by SNI, plaintext to the backend', async (t) => {
  const s = await setup(t)
  const c = await tlsOpen(t, s.port, s.pki.ca)
  t.equal(c.getPeerCertificate().serialNumber, '1001', 'a Node tls client (servername localhost) verifies the default certificate against the test CA')
  t.equal(await echo(c, 'hello over tls'), 'hello over tls', 'bytes reach the plain echo backend and come back, both ways through TLS')
  t.equal(await servedSerial(s.port, 'a.test'), 'A001', 'openssl s_client -servername a.test gets the a.test certificate')
  t.equal(await servedSerial(s.port, 'x.w.test'), 'B001', '-servername x.w.test gets the *.w.test certificate')
  t.equal(await servedSerial(s.port, 'a.b.w.test'), '1001', 'a * label stands for one label only: a.b.w.test gets the default')
  t.equal(await servedSerial(s.port, 'unknown.test'), '1001', 'a name no entry lists gets the default')
  t.equal(await servedSerial(s.port, undefined), '1001', 'no SNI gets the default')
  const r = await run('curl', ['-sS', '--max-time', '10', '--cacert', s.pki.ca, '--resolve', `localhost:${s.webPort}:127.0.0.1`, `https://localhost:${s.webPort}/offload?x=1`])
  t.equal(r.code, 0, `curl --cacert verifies the listener's certificate (${r.stderr})`)
  t.match(r.stdout, /^plain backend \/offload\?x=1 /, 'HTTPS offload: a plain HTTP backend answers curl through a TLS TCP listener')
  const st = await adminStatus(s.ferry)
  const l = st.listeners.tcp.find((x: { name: string }) => x.name === 'tls')
  t.equal(l.tls.default.serial, '1001', '/status shows the listener\'s default certificate serial')
  t.match(l.tls.default.notAfter, /^\d{4}-\d\d-\d\dT/, 'and its expiry')
  t.same(l.tls.sni.map((e: { names: string[], serial: string }) => [e.names, e.serial]), [[['a.test'], 'A001'], [['*.w.test'], 'B001']], 'and its SNI certificates')
  // Half-close: the client's close_notify + FIN reach the backend as a FIN; the backend's reply and FIN come back.
  const ended = new Promise<void>((resolve) => { c.once('end', resolve) })
  c.end('last words')
  let tail = ''
  c.on('data', (d: Buffer) => { tail += d.toString() })
  await ended
  t.equal(tail, 'last words', 'half-close: after the client ended its side, the backend\'s echo and its FIN still arrive')
})

t.test('a PROXY header comes in the clear before the ClientHello; the access list sees its source first', async (t) => {
  const s = await setup(t)
  // Header and ClientHello in one TCP segment: the bytes after the header are the start of the handshake.
  const raw = netConnect({ host: '127.0.0.1', port: s.pxPort })
  await new Promise<void>((resolve) => raw.once('connect', resolve))
  raw.cork()
  raw.write('PROXY TCP4 198.51.100.1 127.0.0.1 40000 8883\r\n')
  const c = tlsConnect({ socket: raw, ca: readFileSync(s.pki.ca), servername: 'localhost' })
  t.teardown(() => { c.destroy() })
  process.nextTick(() => raw.uncork())
  await new Promise<void>((resolve, reject) => { c.once('secureConnect', resolve); c.once('error', reject) })
  t.equal(await echo(c, 'behind a load balancer'), 'behind a load balancer', 'the handshake after the header succeeds and bytes flow')
  const denied = await closed(s.ferry, 'px', 'FERRY_ERR_ACCESS_DENIED')
  const hs = await closed(s.ferry, 'px', 'FERRY_ERR_TCP_TLS_HANDSHAKE')
  const r = await rawExchange(s.pxPort, 'PROXY TCP4 203.0.113.7 127.0.0.1 40000 8883\r\n')
  t.equal(r.data.length, 0, 'a denied source gets no TLS byte')
  await waitFor('the denial counted', async () => await closed(s.ferry, 'px', 'FERRY_ERR_ACCESS_DENIED') === denied + 1)
  t.equal(await closed(s.ferry, 'px', 'FERRY_ERR_TCP_TLS_HANDSHAKE'), hs, 'as an access denial, before any handshake')
})

t.test('minVersion TLSv1.3 and ALPN', async (t) => {
  const s = await setup(t)
  const c = await tlsOpen(t, s.mqPort, s.pki.ca, { ALPNProtocols: ['mqtt'] })
  t.equal(c.getProtocol(), 'TLSv1.3', 'TLS 1.3 is negotiated')
  t.equal(c.alpnProtocol, 'mqtt', 'the listener\'s ALPN protocol is selected')
  t.equal(await echo(c, 'mqtt bytes'), 'mqtt bytes', 'and bytes flow')
  const before = await closed(s.ferry, 'mq', 'FERRY_ERR_TCP_TLS_HANDSHAKE')
  await t.rejects(tlsOpen(t, s.mqPort, s.pki.ca, { maxVersion: 'TLSv1.2' }), { code: 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION' }, 'a client that stops at TLS 1.2 gets a protocol_version alert from a TLSv1.3 listener')
  await t.rejects(tlsOpen(t, s.mqPort, s.pki.ca, { ALPNProtocols: ['h2'] }), { code: 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL' }, 'a client offering only ALPN protocols the listener does not have gets a no_application_protocol alert')
  await waitFor('both refusals counted', async () => await closed(s.ferry, 'mq', 'FERRY_ERR_TCP_TLS_HANDSHAKE') >= before + 2)
  t.equal(await echo(c, 'still here'), 'still here', 'the open connection is unaffected')
})

t.test('bad input on the TLS port is closed, counted, and does not affect other connections', async (t) => {
  const s = await setup(t)
  const f = s.ferry
  const keep = await tlsOpen(t, s.port, s.pki.ca)
  t.equal(await echo(keep, 'before'), 'before', 'a connection is open before the bad input')
  const hs = async (): Promise<number> => await closed(f, 'tls', 'FERRY_ERR_TCP_TLS_HANDSHAKE')

  let n = await hs()
  const garbage = await rawExchange(s.port, Buffer.from('\x00\x01garbage that is no TLS record at all\r\n'.repeat(4)))
  t.notOk(garbage.data.toString().includes('garbage'), 'garbage: nothing is echoed back (no backend was reached)')
  await waitFor('garbage counted', async () => await hs() === n + 1)
  t.pass('garbage instead of a ClientHello: closed, counted as FERRY_ERR_TCP_TLS_HANDSHAKE')

  n = await hs()
  const http = await run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${s.port}/`])
  t.not(http.code, 0, `plain HTTP to the TLS port gets no HTTP answer (${http.stderr.trim()})`)
  await waitFor('plain HTTP counted', async () => await hs() === n + 1)
  t.pass('plain HTTP: closed, counted')

  n = await hs()
  const old = await run('openssl', ['s_client', '-connect', `127.0.0.1:${s.port}`, '-tls1', '-servername', 'localhost'], '')
  t.match(old.stdout + old.stderr, /alert protocol version/i, 'a TLS 1.0 ClientHello gets a protocol_version alert')
  await waitFor('the TLS 1.0 offer counted', async () => await hs() === n + 1)
  t.pass('TLS 1.0: refused, counted')

  // A stall mid-handshake: the first bytes of a ClientHello record, then nothing.
  const tmo = await closed(f, 'tls', 'FERRY_ERR_TCP_TLS_TIMEOUT')
  const stall = await rawExchange(s.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]), 10_000)
  t.ok(stall.ms >= 900 && stall.ms < 5000, `a client that stalls mid-handshake is closed after handshakeTimeoutMs 1000 (+ a quarter): ${stall.ms} ms`)
  await waitFor('the stall counted', async () => await closed(f, 'tls', 'FERRY_ERR_TCP_TLS_TIMEOUT') === tmo + 1)
  // A connection that sends nothing at all is a stall too.
  const silent = await rawExchange(s.port, undefined, 10_000)
  t.ok(silent.ms >= 900 && silent.ms < 5000, `a client that sends nothing is closed after the handshake timeout: ${silent.ms} ms`)
  await waitFor('the silent one counted', async () => await closed(f, 'tls', 'FERRY_ERR_TCP_TLS_TIMEOUT') === tmo + 2)

  // Renegotiation (TLS 1.2): openssl s_client's `R` command sends a new ClientHello on the session.
  const reneg = await closed(f, 'tls', 'FERRY_ERR_TCP_TLS_RENEGOTIATION')
  const r = await run('sh', ['-c', `(echo before-reneg; sleep 0.5; echo R; sleep 1; echo after-reneg; sleep 0.5) | openssl s_client -connect 127.0.0.1:${s.port} -tls1_2 -servername localhost 2>&1`])
  t.match(r.stdout, /RENEGOTIATING/, 'the client asked to renegotiate')
  t.match(r.stdout, /no renegotiation/, 'and was refused with a no_renegotiation alert')
  t.match(r.stdout, /before-reneg/, 'bytes before it were echoed')
  t.notMatch(r.stdout, /after-reneg/, 'nothing goes through after it: the session is not renegotiated')
  await waitFor('the renegotiation counted', async () => await closed(f, 'tls', 'FERRY_ERR_TCP_TLS_RENEGOTIATION') === reneg + 1)

  t.equal(await echo(keep, 'after'), 'after', 'the connection opened before all of it still works')
  const fresh = await tlsOpen(t, s.port, s.pki.ca)
  t.equal(await echo(fresh, 'fresh'), 'fresh', 'and new handshakes still succeed')
  t.ok(await logged(f, (l) => l.code === 'FERRY_ERR_TCP_TLS_HANDSHAKE' && l.level === 40 && typeof l.peer === 'string'), 'a handshake failure is logged as a warning with the peer address')
  t.equal(f.child.exitCode, null, 'the gateway is still running')
})

t.test('a connection that closes without sending a byte is a health probe: closed quietly, counted as probe', async (t) => {
  const s = await setup(t)
  const f = s.ferry
  const hs = async (l: string): Promise<number> => await closed(f, l, 'FERRY_ERR_TCP_TLS_HANDSHAKE')
  const before = { hs: await hs('tls'), px: await closed(f, 'px', 'FERRY_ERR_TCP_PROXY_HEADER'), warns: f.logs.filter((l) => l.level === 40).length }
  const probe = await rawExchange(s.port, undefined, 5000, true)
  t.equal(probe.data.length, 0, 'connect then FIN: nothing sent back')
  await waitFor('the probe counted as reason="probe"', async () => await closed(f, 'tls', 'probe') === 1)
  await rawExchange(s.pxPort, undefined, 5000, true)
  await waitFor('a probe before the PROXY header counted as probe', async () => await closed(f, 'px', 'probe') === 1)
  await rawExchange(s.pxPort, 'PROXY TCP4 198.51.100.1 127.0.0.1 40000 8883\r\n', 5000, true)
  await waitFor('a PROXY header and no TLS byte counted as probe', async () => await closed(f, 'px', 'probe') === 2)
  t.equal(await hs('tls'), before.hs, 'no handshake failure counted for them')
  t.equal(await closed(f, 'px', 'FERRY_ERR_TCP_PROXY_HEADER'), before.px, 'nor a bad PROXY header')
  t.equal(f.logs.filter((l) => l.level === 40).length, before.warns, 'and nothing warned about')
  // Some bytes of a ClientHello, then FIN: still bad input.
  await rawExchange(s.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]), 5000, true)
  await waitFor('a ClientHello cut short counted as a handshake failure', async () => await hs('tls') === before.hs + 1)
  await rawExchange(s.pxPort, 'PROXY TCP4 198.51.100.1', 5000, true)
  await waitFor('a PROXY header cut short counted as one', async () => await closed(f, 'px', 'FERRY_ERR_TCP_PROXY_HEADER') === before.px + 1)
  t.equal(await closed(f, 'tls', 'probe'), 1, 'and not as a probe')
  const c = await tlsOpen(t, s.port, s.pki.ca)
  t.equal(await echo(c, 'after probes'), 'after probes', 'the listener serves on')
})

t.test('certificate rotation: reload and file watch; open connections keep theirs; a bad file is refused naming the field', async (t) => {
  const s = await setup(t)
  const f = s.ferry
  const open = await tlsOpen(t, s.port, s.pki.ca)
  t.equal(open.getPeerCertificate().serialNumber, '1001', 'the open connection got 1001')

  copyPair(await s.pki.issue('def-2', 'DNS:localhost,IP:127.0.0.1', '1002'), s.def)
  const res = await reload(f)
  t.equal(res.result, 'ok', 'a reload with unchanged config text is taken')
  t.equal(await servedSerial(s.port, 'localhost'), '1002', 'new handshakes get the new certificate at once (the reload read the files again)')
  t.equal(await servedSerial(s.port, 'a.test'), 'A001', 'the SNI certificate is still served')
  t.equal(await echo(open, 'old session'), 'old session', 'the connection opened before the rotation goes on')
  t.equal((await adminStatus(f)).listeners.tcp.find((x: { name: string }) => x.name === 'tls').port, s.port, 'the port stayed bound')
  t.ok(await metric(f, 'ferry_tcp_tls_cert_checks_total{listener="tls",result="applied"}') >= 1, 'counted as applied')

  // The sni list changes in place on a reload (the config file rewritten): a new name gets its certificate.
  const n = await s.pki.issue('n-1', 'DNS:new.test', 'C001')
  const file = f.child.spawnargs.at(-1)!
  const cfg = parse(readFileSync(file, 'utf8'))
  cfg.listen.tcp[0].tls.sni.push({ serverNames: ['new.test'], certFile: n.cert, keyFile: n.key })
  writeFileSync(file, stringify(cfg))
  t.equal((await reload(f)).result, 'ok', 'a reload adding an sni entry is taken')
  t.equal(await servedSerial(s.port, 'new.test'), 'C001', 'the new name gets its certificate')
  t.equal((await adminStatus(f)).listeners.tcp.find((x: { name: string }) => x.name === 'tls').port, s.port, 'on the same bound port')
  t.equal(await echo(open, 'across the sni change'), 'across the sni change', 'the open connection goes on')

  // The watch, without a reload.
  copyPair(await s.pki.issue('def-3', 'DNS:localhost,IP:127.0.0.1', '1003'), s.def)
  await waitFor('the watch to apply 1003', async () => await servedSerial(s.port, 'localhost') === '1003', 10_000, 200)
  t.pass('a changed file is applied by the watch (watchIntervalMs 1000)')

  // A key that does not match the certificate.
  const other = await s.pki.issue('other', 'DNS:localhost', '1004')
  copyFileSync(other.key, s.def.key)
  const bad = await reload(f)
  t.equal(bad.result, 'refused', 'a reload with a key that does not match is refused')
  t.ok(bad.errors.some((e: string) => e.startsWith('listen.tcp[0].tls.keyFile:') && e.includes('does not match')), `the error names listen.tcp[0].tls.keyFile (${JSON.stringify(bad.errors)})`)
  t.equal(await servedSerial(s.port, 'localhost'), '1003', 'the running certificate stays')
  t.ok(await metric(f, 'ferry_tcp_tls_cert_checks_total{listener="tls",result="refused"}') >= 1, 'counted as refused')
  await waitFor('the watch to refuse it too', () => f.logs.some((l) => l.msg === 'TLS certificate files refused; the running certificates stay' && l.trigger === 'watch' && l.tls === 'listen.tcp[0].tls'), 10_000)
  t.equal(await echo(open, 'still going'), 'still going', 'the first connection still works')

  // minVersion (and ciphers, alpn) change in place too: the contexts are rebuilt though no file changed.
  copyFileSync(join(s.pki.dir, 'def-3.key'), s.def.key)
  const cfg2 = parse(readFileSync(file, 'utf8'))
  cfg2.listen.tcp[0].tls.minVersion = 'TLSv1.3'
  writeFileSync(file, stringify(cfg2))
  t.equal((await reload(f)).result, 'ok', 'a reload raising minVersion to TLSv1.3 is taken')
  await t.rejects(tlsOpen(t, s.port, s.pki.ca, { maxVersion: 'TLSv1.2' }), 'a TLS 1.2-only client is refused from now on')
  const v13 = await tlsOpen(t, s.port, s.pki.ca)
  t.equal(v13.getProtocol(), 'TLSv1.3', 'TLS 1.3 clients are served')
  t.equal((await adminStatus(f)).listeners.tcp.find((x: { name: string }) => x.name === 'tls').port, s.port, 'on the same bound port')
  t.equal(await echo(open, 'and on'), 'and on', 'the TLS 1.3 connection opened at the start goes on')
})

t.test('config errors name the field', async (t) => {
  const base = (tls: Record<string, unknown>): Record<string, unknown> => ({
    listen: { tcp: [{ name: 'db', port: 0, upstream: 'db', tls: { certFile: '/x.pem', keyFile: '/x.key', ...tls } }] },
    upstreams: { db: { protocol: 'tcp', endpoints: ['127.0.0.1:5432'] } },
  })
  const problems = (input: unknown): string => { try { validateConfig(input); return '' } catch (err) { if (err instanceof ConfigError) return err.problems.join('\n'); throw err } }
  t.equal(problems(base({})), '', 'a minimal tls block is valid')
  t.match(problems(base({ minVersion: 'TLSv1.1' })), /listen\.tcp\[0\]\.tls\.minVersion/, 'minVersion TLSv1.1 is refused naming the field')
  t.match(problems(base({ sni: [{ serverNames: ['a.test'], certFile: '/a', keyFile: '/a' }, { serverNames: ['A.test'], certFile: '/b', keyFile: '/b' }] })), /listen\.tcp\[0\]\.tls\.sni\[1\]\.serverNames\[0\].*also listed by listen\.tcp\[0\]\.tls\.sni\[0\]/, 'a name listed twice is refused naming both entries')
  t.match(problems(base({ handshakeTimeoutMs: 0 })), /listen\.tcp\[0\]\.tls\.handshakeTimeoutMs/, 'handshakeTimeoutMs 0 is refused')
  t.match(problems(base({ alpn: ['ok', ''] })), /listen\.tcp\[0\]\.tls\.alpn\[1\]/, 'an empty ALPN id is refused')
  t.match(problems(base({ crt: '/x' })), /listen\.tcp\[0\]\.tls.*crt/, 'an unknown key is refused')

  const pki = await makePki(t)
  const good = await pki.issue('good', 'DNS:localhost', '2001')
  const other = await pki.issue('other', 'DNS:localhost', '2002')
  // Front and admin on port 0 too: the cipher check comes after they bind, and the defaults (8080, 9901) may be taken.
  const cfg = (tls: Record<string, unknown>): string => writeConfig(singleProcess({
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, tcp: [{ name: 'db', host: '127.0.0.1', port: 0, upstream: 'db', tls: { certFile: good.cert, keyFile: good.key, ...tls } }] },
    upstreams: { db: { protocol: 'tcp', endpoints: ['127.0.0.1:5432'] } },
  }))
  const check = await runCli(['check', '--config', cfg({ keyFile: other.key, sni: [{ serverNames: ['a.test'], certFile: join(pki.dir, 'missing.pem'), keyFile: good.key }] })])
  t.equal(check.code, 1, 'ferry check fails on bad files')
  t.match(check.stderr, /listen\.tcp\[0\]\.tls\.keyFile: .* does not match/, 'naming the key that does not match')
  t.match(check.stderr, /listen\.tcp\[0\]\.tls\.sni\[0\]\.certFile: cannot read/, 'and the unreadable SNI certificate')
  const start = await runCli(['start', '--config', cfg({ ciphers: 'NOT-A-CIPHER' })])
  t.not(start.code, 0, 'a cipher list OpenSSL knows nothing of stops the start')
  t.match(start.stderr + start.stdout, /listen\.tcp\[0\]\.tls\.ciphers/, 'naming listen.tcp[0].tls.ciphers')
})

t.test('a pod of 2 workers terminates TLS on a shared TCP port', async (t) => {
  const pki = await makePki(t)
  const pair = await pki.issue('pod', 'DNS:localhost,IP:127.0.0.1', '3001')
  const echoBackend = await startRawBackend(t, (s) => { s.pipe(s) })
  const f = await startFerry(t, {
    gateway: { workers: 2, workerHangMs: 3000 },
    listen: { tcp: [{ name: 'tls', host: '127.0.0.1', port: 0, upstream: 'echo', tls: { certFile: pair.cert, keyFile: pair.key } }] },
    upstreams: { echo: { protocol: 'tcp', endpoints: [echoBackend.address] }, api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } },
    routes: [{ upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  }, { timeoutMs: 60_000 })
  // The workers are child processes of the pod: killed at teardown whatever happens to the control plane.
  const pids = new Set<number>()
  t.teardown(() => { for (const pid of pids) { try { process.kill(pid, 'SIGKILL') } catch {} } })
  const port = tcpPort(f, 'tls')
  const running = await waitFor('2 workers running', async () => {
    const ws = (await adminStatus(f)).workers as Array<{ pid: number | null, state: string }>
    for (const w of ws) if (w.pid !== null) pids.add(w.pid)
    return ws.length === 2 && ws.every((w) => w.state === 'running') ? ws : undefined
  }, 30_000, 100)
  t.equal(running.length, 2, 'two workers')
  const conns: TLSSocket[] = []
  for (let i = 0; i < 8; i++) {
    const c = await tlsOpen(t, port, pki.ca)
    t.equal(await echo(c, `conn ${i}`), `conn ${i}`, `connection ${i}: handshake and echo`)
    conns.push(c)
  }
  const per = await waitFor('the workers\' heartbeats to count every connection', async () => {
    const ws = (await adminStatus(f)).workers as Array<{ clients: { tcpConnections: number } | null }>
    const n = ws.map((w) => w.clients?.tcpConnections ?? 0)
    return n.reduce((a, b) => a + b, 0) === 8 ? n : undefined
  }, 10_000, 200)
  // The kernel spreads connections by a hash: all on one worker happens (1 in 128), and proves less, not wrong.
  if (per.every((x) => x > 0)) t.pass(`the 8 TLS connections are spread over both workers (${per.join(' + ')})`)
  else t.comment(`the kernel put all 8 TLS connections on one worker this time (${per.join(' + ')})`)
  const g = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
  t.equal(g.data.length === 0 || g.data[0] === 0x15, true, 'plain HTTP to the pod\'s TLS port: closed (or a TLS alert), no HTTP answer')
  await waitFor('the pod\'s /metrics to count it', async () => await metric(f, 'ferry_tcp_closed_total{listener="tls",reason="FERRY_ERR_TCP_TLS_HANDSHAKE"}') === 1)
  for (const c of conns) t.equal(await echo(c, 'again'), 'again', 'every open connection still echoes')
})
