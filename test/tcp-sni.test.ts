import { readFileSync, writeFileSync } from 'node:fs'
import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { parse, stringify } from 'yaml'
import { ConfigError, validateConfig } from '../src/config/load.js'
import { adminStatus, logged, metric, startFerry, tcpPort, waitFor, type FerryProcess } from './helpers/ferry.js'
import { makePki, type Pki } from './helpers/pki.js'
import { deadPort, startRawBackend } from './helpers/backend.js'

/**
 * SNI routing without termination (listen.tcp[].sniRoutes, docs/tcp.md "Choosing the upstream by SNI"):
 * three real TLS backends (Node tls servers, each with its own certificate); the client must see the
 * backend's own certificate (Ferry holds no key: proof the bytes pass through) and exchange bytes with it.
 */

/** A TLS echo backend that prefixes what it sends back with its name. */
async function tlsBackend (t: Test, pki: Pki, name: string, sans: string, serial: string): Promise<{ address: string, accepted: () => number }> {
  const pair = await pki.issue(name, sans, serial)
  let accepted = 0
  const server = createTlsServer({ cert: readFileSync(pair.cert), key: readFileSync(pair.key) }, (s) => {
    accepted++
    s.on('error', () => {})
    s.on('data', (d: Buffer) => s.write(`${name}:${d.toString()}`))
  })
  server.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise<void>((resolve) => server.close(() => resolve())) })
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, accepted: () => accepted }
}

async function tlsOpen (t: Test, port: number, ca: string, servername: string | undefined, socket?: Socket): Promise<TLSSocket> {
  const s = tlsConnect({ host: '127.0.0.1', port, ...(socket !== undefined ? { socket } : {}), ...(servername !== undefined ? { servername, ca: readFileSync(ca) } : { rejectUnauthorized: false }) })
  t.teardown(() => { s.destroy() })
  await new Promise<void>((resolve, reject) => { s.once('secureConnect', resolve); s.once('error', reject) })
  return s
}

async function ask (s: Socket, text: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${text}`)), 5000)
    s.once('data', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()) })
    s.write(text)
  })
}

async function rawExchange (port: number, bytes: Buffer | string | undefined, timeoutMs = 10_000, end = false): Promise<{ data: Buffer, ms: number }> {
  const started = Date.now()
  return await new Promise((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port })
    const parts: Buffer[] = []
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`still open after ${timeoutMs} ms`)) }, timeoutMs)
    s.on('connect', () => { if (bytes !== undefined) s.write(bytes); if (end) s.end() })
    s.on('data', (d: Buffer) => parts.push(d))
    s.on('error', () => {})
    s.on('close', () => { clearTimeout(timer); resolve({ data: Buffer.concat(parts), ms: Date.now() - started }) })
  })
}

const closed = async (f: FerryProcess, listener: string, reason: string): Promise<number> => await metric(f, `ferry_tcp_closed_total{listener="${listener}",reason="${reason}"}`)

interface Setup { pki: Pki, ferry: FerryProcess, port: number, strictPort: number, pxPort: number, a: { accepted: () => number } }

async function setup (t: Test): Promise<Setup> {
  const pki = await makePki(t)
  const a = await tlsBackend(t, pki, 'a', 'DNS:a.test', 'AA01')
  const b = await tlsBackend(t, pki, 'b', 'DNS:*.b.test', 'BB01')
  const d = await tlsBackend(t, pki, 'd', 'DNS:d.test', 'DD01')
  const routes = [{ serverNames: ['a.test'], upstream: 'a' }, { serverNames: ['*.b.test'], upstream: 'b' }]
  const ferry = await startFerry(t, {
    listen: {
      tcp: [
        { name: 'sni', host: '127.0.0.1', port: 0, upstream: 'd', sniRoutes: routes, clientHelloTimeoutMs: 1000 },
        { name: 'strict', host: '127.0.0.1', port: 0, upstream: 'd', sniRoutes: routes, sniUnmatched: 'refuse' },
        { name: 'px', host: '127.0.0.1', port: 0, upstream: 'd', sniRoutes: routes, acceptProxyProtocol: true },
      ],
    },
    upstreams: {
      a: { protocol: 'tcp', endpoints: [a.address] },
      b: { protocol: 'tcp', endpoints: [b.address] },
      d: { protocol: 'tcp', endpoints: [d.address] },
      api: { protocol: 'http', endpoints: ['127.0.0.1:9'] },
    },
    routes: [{ upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  return { pki, ferry, port: tcpPort(ferry, 'sni'), strictPort: tcpPort(ferry, 'strict'), pxPort: tcpPort(ferry, 'px'), a }
}

t.test('the ClientHello\'s server name picks the upstream; bytes pass through untouched', async (t) => {
  const s = await setup(t)
  const ca = await tlsOpen(t, s.port, s.pki.ca, 'a.test')
  t.equal(ca.getPeerCertificate().serialNumber, 'AA01', 'SNI a.test: the client verifies backend a\'s own certificate (Ferry holds no key)')
  t.equal(await ask(ca, 'hello'), 'a:hello', 'and exchanges bytes with backend a')
  const cb = await tlsOpen(t, s.port, s.pki.ca, 'x.b.test')
  t.equal(cb.getPeerCertificate().serialNumber, 'BB01', 'SNI x.b.test: the *.b.test route, backend b\'s certificate')
  t.equal(await ask(cb, 'hi'), 'b:hi', 'bytes both ways with backend b')
  const cu = await tlsOpen(t, s.port, s.pki.ca, 'd.test')
  t.equal(cu.getPeerCertificate().serialNumber, 'DD01', 'a name no route lists goes to the listener\'s upstream')
  const cn = await tlsOpen(t, s.port, s.pki.ca, undefined)
  t.equal(cn.getPeerCertificate().serialNumber, 'DD01', 'no SNI goes to the listener\'s upstream')
  t.equal(await ask(cn, 'x'), 'd:x', 'and talks to it')
  t.equal(await metric(s.ferry, 'ferry_tcp_sni_routed_total{listener="sni",upstream="a"}'), 1, 'ferry_tcp_sni_routed_total counts by the upstream chosen')
  t.equal(await metric(s.ferry, 'ferry_tcp_sni_routed_total{listener="sni",upstream="d"}'), 2, 'the default counts as its upstream')
  const st = (await adminStatus(s.ferry)).listeners.tcp.find((l: { name: string }) => l.name === 'sni')
  t.same(st.sniRoutes, { unmatched: 'upstream', routed: { a: 1, b: 1, d: 2 } }, '/status shows where connections were routed')

  // A PROXY header and the ClientHello in one TCP segment.
  const raw = netConnect({ host: '127.0.0.1', port: s.pxPort })
  await new Promise<void>((resolve) => raw.once('connect', resolve))
  raw.cork()
  raw.write('PROXY TCP4 198.51.100.1 127.0.0.1 40000 443\r\n')
  const px = tlsConnect({ socket: raw, servername: 'a.test', ca: readFileSync(s.pki.ca) })
  t.teardown(() => { px.destroy() })
  process.nextTick(() => raw.uncork())
  await new Promise<void>((resolve, reject) => { px.once('secureConnect', resolve); px.once('error', reject) })
  t.equal(px.getPeerCertificate().serialNumber, 'AA01', 'after a PROXY header (same segment), the ClientHello is read and routed')
  t.equal(await ask(px, 'lb'), 'a:lb', 'and passed through')
})

t.test('unknown names with no default, garbage and stalls: refused, counted, others unaffected', async (t) => {
  const s = await setup(t)
  const f = s.ferry
  const keep = await tlsOpen(t, s.port, s.pki.ca, 'a.test')
  t.equal(await ask(keep, 'before'), 'a:before', 'a connection is open before the bad input')
  const accepted = s.a.accepted()

  const refusedNo = await closed(f, 'strict', 'FERRY_ERR_TCP_SNI_UNKNOWN')
  const err = await tlsOpen(t, s.strictPort, s.pki.ca, 'unknown.test').then(() => 'connected', (e: NodeJS.ErrnoException) => e.code)
  t.equal(err, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 'sniUnmatched refuse: an unknown name gets a TLS unrecognized_name alert')
  const none = await tlsOpen(t, s.strictPort, s.pki.ca, undefined).then(() => 'connected', (e: NodeJS.ErrnoException) => e.code)
  t.equal(none, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 'and so does a ClientHello without SNI')
  await waitFor('both refusals counted', async () => await closed(f, 'strict', 'FERRY_ERR_TCP_SNI_UNKNOWN') === refusedNo + 2)
  const ok = await tlsOpen(t, s.strictPort, s.pki.ca, 'a.test')
  t.equal(await ask(ok, 'listed'), 'a:listed', 'a listed name on the same listener goes through')

  const bad = await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO')
  const g = await rawExchange(s.port, Buffer.from('\x00\x01 not tls at all\r\n'))
  t.equal(g.data.length, 0, 'garbage: closed, no byte back')
  const h = await rawExchange(s.port, 'GET / HTTP/1.1\r\nHost: a.test\r\n\r\n')
  t.equal(h.data.length, 0, 'plain HTTP: closed, no byte back')
  await waitFor('both counted', async () => await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO') === bad + 2)

  const tmo = await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_TIMEOUT')
  const stall = await rawExchange(s.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]))
  t.ok(stall.ms >= 900 && stall.ms < 5000, `a ClientHello that stalls is closed after clientHelloTimeoutMs 1000: ${stall.ms} ms`)
  await waitFor('the stall counted', async () => await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_TIMEOUT') === tmo + 1)

  t.equal(s.a.accepted(), accepted + 1, 'of all these only the listed name reached a backend')
  t.equal(await ask(keep, 'after'), 'a:after', 'the connection opened before still works')
  t.ok(await logged(f, (l) => l.code === 'FERRY_ERR_TCP_SNI_UNKNOWN' && l.level === 40), 'refusals are logged as warnings')
})

t.test('a connection that closes without sending a byte is a health probe: closed quietly, counted as probe', async (t) => {
  const s = await setup(t)
  const f = s.ferry
  const bad = await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO')
  const warns = f.logs.filter((l) => l.level === 40).length
  const probe = await rawExchange(s.port, undefined, 5000, true)
  t.equal(probe.data.length, 0, 'connect then FIN: nothing sent back')
  await waitFor('the probe counted as reason="probe"', async () => await closed(f, 'sni', 'probe') === 1)
  t.equal(await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO'), bad, 'not as a bad ClientHello')
  t.equal(f.logs.filter((l) => l.level === 40).length, warns, 'and not warned about')
  t.equal(s.a.accepted(), 0, 'no backend was connected')
  await rawExchange(s.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]), 5000, true)
  await waitFor('a ClientHello cut short counted as bad input', async () => await closed(f, 'sni', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO') === bad + 1)
  t.equal(await closed(f, 'sni', 'probe'), 1, 'and not as a probe')
})

t.test('a reload changes the routes in place', async (t) => {
  const s = await setup(t)
  const f = s.ferry
  const open = await tlsOpen(t, s.port, s.pki.ca, 'a.test')
  const file = f.child.spawnargs.at(-1)!
  const cfg = parse(readFileSync(file, 'utf8'))
  cfg.listen.tcp[0].sniRoutes[0].upstream = 'b'
  cfg.listen.tcp[0].sniRoutes[1].serverNames = ['*.b.test', 'a.test']
  cfg.listen.tcp[0].sniRoutes.shift()
  writeFileSync(file, stringify(cfg))
  const r = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as { result: string }
  t.equal(r.result, 'ok', 'the reload is taken')
  const now = await tlsOpen(t, s.port, s.pki.ca, undefined)
  t.equal(now.getPeerCertificate().serialNumber, 'DD01', 'no SNI still goes to the default')
  const moved = await tlsConnect({ host: '127.0.0.1', port: s.port, servername: 'a.test', rejectUnauthorized: false })
  t.teardown(() => { moved.destroy() })
  await new Promise<void>((resolve, reject) => { moved.once('secureConnect', resolve); moved.once('error', reject) })
  t.equal(moved.getPeerCertificate().serialNumber, 'BB01', 'a.test now goes to backend b')
  t.equal((await adminStatus(f)).listeners.tcp.find((l: { name: string }) => l.name === 'sni').port, s.port, 'on the same bound port')
  t.equal(await ask(open, 'still'), 'a:still', 'the connection routed before the reload keeps its backend')
})

t.test('a pod of 2 workers routes by SNI on a shared port; /metrics sums the workers\' routing counts', async (t) => {
  const pki = await makePki(t)
  const a = await tlsBackend(t, pki, 'a', 'DNS:a.test', 'AA01')
  const b = await tlsBackend(t, pki, 'b', 'DNS:*.b.test', 'BB01')
  const d = await tlsBackend(t, pki, 'd', 'DNS:d.test', 'DD01')
  const f = await startFerry(t, {
    gateway: { workers: 2, workerHangMs: 3000 },
    listen: { tcp: [{ name: 'sni', host: '127.0.0.1', port: 0, upstream: 'd', sniRoutes: [{ serverNames: ['a.test'], upstream: 'a' }, { serverNames: ['*.b.test'], upstream: 'b' }] }] },
    upstreams: { a: { protocol: 'tcp', endpoints: [a.address] }, b: { protocol: 'tcp', endpoints: [b.address] }, d: { protocol: 'tcp', endpoints: [d.address] }, api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } },
    routes: [{ upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  }, { timeoutMs: 60_000 })
  // The workers are child processes of the pod: killed at teardown whatever happens to the control plane.
  const pids = new Set<number>()
  t.teardown(() => { for (const pid of pids) { try { process.kill(pid, 'SIGKILL') } catch {} } })
  await waitFor('2 workers running', async () => {
    const ws = (await adminStatus(f)).workers as Array<{ pid: number | null, state: string }>
    for (const w of ws) if (w.pid !== null) pids.add(w.pid)
    return ws.length === 2 && ws.every((w) => w.state === 'running')
  }, 30_000, 100)
  const port = tcpPort(f, 'sni')
  const names: Array<[string, string, string]> = [['a.test', 'AA01', 'a'], ['x.b.test', 'BB01', 'b'], ['d.test', 'DD01', 'd']]
  for (let i = 0; i < 9; i++) {
    const [name, serial, backend] = names[i % 3]!
    const c = await tlsOpen(t, port, pki.ca, name)
    t.equal(c.getPeerCertificate().serialNumber, serial, `connection ${i} (SNI ${name}): the client verifies backend ${backend}'s own certificate`)
    t.equal(await ask(c, `c${i}`), `${backend}:c${i}`, `and exchanges bytes with backend ${backend}`)
  }
  const per = await waitFor('the workers\' heartbeats to count every connection', async () => {
    const ws = (await adminStatus(f)).workers as Array<{ clients: { tcpConnections: number } | null }>
    const n = ws.map((w) => w.clients?.tcpConnections ?? 0)
    return n.reduce((x, y) => x + y, 0) === 9 ? n : undefined
  }, 10_000, 200)
  // The kernel spreads connections by a hash: all on one worker happens (1 in 256), and proves less, not wrong.
  if (per.every((x) => x > 0)) t.pass(`the 9 connections are spread over both workers (${per.join(' + ')})`)
  else t.comment(`the kernel put all 9 connections on one worker this time (${per.join(' + ')})`)
  for (const u of ['a', 'b', 'd']) t.equal(await metric(f, `ferry_tcp_sni_routed_total{listener="sni",upstream="${u}"}`), 3, `the pod's /metrics: 3 routed to ${u}, summed over the workers`)
})

t.test('turning tls or sniRoutes on or off on a kept listener rebinds it: same port, open connections go on, new ones get the new behaviour', async (t) => {
  const pki = await makePki(t)
  const a = await tlsBackend(t, pki, 'a', 'DNS:a.test', 'AA01')
  const echo = await startRawBackend(t, (c) => { c.pipe(c) })
  const pair = await pki.issue('l', 'DNS:l.test', 'CC01')
  const port = await deadPort()
  const f = await startFerry(t, {
    listen: { tcp: [{ name: 'flip', host: '127.0.0.1', port, upstream: 'echo' }] },
    upstreams: { echo: { protocol: 'tcp', endpoints: [echo.address] }, a: { protocol: 'tcp', endpoints: [a.address] }, api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } },
    routes: [{ upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  const file = f.child.spawnargs.at(-1)!
  const started = parse(readFileSync(file, 'utf8'))
  const reloadTo = async (extra: Record<string, unknown>, what: string): Promise<void> => {
    writeFileSync(file, stringify({ ...started, listen: { ...started.listen, tcp: [{ ...started.listen.tcp[0], ...extra }] } }))
    const r = await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json() as { result: string }
    t.equal(r.result, 'ok', `${what}: the reload is taken`)
    t.equal((await adminStatus(f)).listeners.tcp.find((l: { name: string }) => l.name === 'flip').port, port, 'bound again on the same port')
  }
  const plainOpen = async (): Promise<Socket> => {
    const c = netConnect({ host: '127.0.0.1', port })
    t.teardown(() => { c.destroy() })
    await new Promise<void>((resolve, reject) => { c.once('connect', resolve); c.once('error', reject) })
    return c
  }
  const plain = await plainOpen()
  t.equal(await ask(plain, 'p0'), 'p0', 'plain TCP before')

  await reloadTo({ tls: { certFile: pair.cert, keyFile: pair.key } }, 'tls on')
  const tls = await tlsOpen(t, port, pki.ca, 'l.test')
  t.equal(tls.getPeerCertificate().serialNumber, 'CC01', 'a new connection gets the listener\'s certificate: TLS is terminated')
  t.equal(await ask(tls, 't1'), 't1', 'and its plaintext reaches the plain echo backend')
  const refused = await rawExchange(port, 'plain text')
  t.notOk(refused.data.toString().includes('plain text'), 'a plain client is no longer relayed')
  t.equal(await ask(plain, 'p1'), 'p1', 'the plain connection opened before goes on')

  await reloadTo({}, 'tls off')
  t.equal(await ask(await plainOpen(), 'p2'), 'p2', 'a new plain connection is relayed again')
  t.equal(await ask(tls, 't2'), 't2', 'the TLS connection opened under tls goes on')

  await reloadTo({ sniRoutes: [{ serverNames: ['a.test'], upstream: 'a' }] }, 'sniRoutes on')
  const sni = await tlsOpen(t, port, pki.ca, 'a.test')
  t.equal(sni.getPeerCertificate().serialNumber, 'AA01', 'a new connection naming a.test is passed through to backend a')
  t.equal(await ask(sni, 's1'), 'a:s1', 'and talks to it')
  const garbage = await rawExchange(port, 'plain text')
  t.equal(garbage.data.length, 0, 'plain bytes are no ClientHello: closed without a byte back')
  t.equal(await ask(plain, 'p3'), 'p3', 'the first plain connection still goes on')

  await reloadTo({}, 'sniRoutes off')
  t.equal(await ask(await plainOpen(), 'p4'), 'p4', 'a new plain connection is relayed to the listener\'s upstream again')
  t.equal(await ask(sni, 's2'), 'a:s2', 'the connection routed by SNI keeps its backend')
  t.equal(await ask(plain, 'p5'), 'p5', 'and the first one is still open')
})

t.test('config errors name the field', async (t) => {
  const problems = (listener: Record<string, unknown>): string => {
    try {
      validateConfig({ listen: { tcp: [{ name: 'x', port: 0, upstream: 'd', ...listener }] }, upstreams: { d: { protocol: 'tcp', endpoints: ['127.0.0.1:1'] }, h: { protocol: 'http', endpoints: ['127.0.0.1:2'] } } })
      return ''
    } catch (err) {
      if (err instanceof ConfigError) return err.problems.join('\n')
      throw err
    }
  }
  t.equal(problems({ sniRoutes: [{ serverNames: ['a.test'], upstream: 'd' }], sniUnmatched: 'refuse' }), '', 'a valid listener')
  t.match(problems({ sniRoutes: [{ serverNames: ['a.test'], upstream: 'nope' }] }), /listen\.tcp\[0\]\.sniRoutes\[0\]\.upstream.*names no upstream/, 'an unknown upstream')
  t.match(problems({ sniRoutes: [{ serverNames: ['a.test'], upstream: 'h' }] }), /listen\.tcp\[0\]\.sniRoutes\[0\]\.upstream.*protocol http/, 'an upstream that is not tcp')
  t.match(problems({ sniRoutes: [{ serverNames: ['a.test'], upstream: 'd' }, { serverNames: ['A.TEST'], upstream: 'd' }] }), /listen\.tcp\[0\]\.sniRoutes\[1\]\.serverNames\[0\].*also listed by listen\.tcp\[0\]\.sniRoutes\[0\]/, 'a name listed twice')
  t.match(problems({ sniRoutes: [{ serverNames: ['a.test'], upstream: 'd' }], tls: { certFile: '/c', keyFile: '/k' } }), /listen\.tcp\[0\]\.sniRoutes.*cannot be combined with tls/, 'combined with tls')
  t.match(problems({ sniUnmatched: 'refuse' }), /listen\.tcp\[0\]\.sniUnmatched.*needs sniRoutes/, 'refuse without routes')
  t.match(problems({ sniRoutes: [{ serverNames: ['bad name'], upstream: 'd' }] }), /listen\.tcp\[0\]\.sniRoutes\[0\]\.serverNames\[0\]/, 'a name that is no DNS name')
})
