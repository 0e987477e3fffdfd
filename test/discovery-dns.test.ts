import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import t from 'tap'
import { adminStatus, metric, startFerry, waitFor } from './helpers/ferry.js'
import { startDns } from './helpers/dns.js'
import { connect, startMuxBackend } from './helpers/mux.js'

interface IpBackend { ip: string, address: string, requests: () => number, open: () => number }

/**
 * HTTP backends on 127.0.0.2, .3, .4 … sharing one port (an A record carries only an address, so the
 * port is the upstream's): the first binds port 0, the others the same port on their own address.
 */
async function ipBackends (tt: typeof t, ips: string[], delayMs: number): Promise<IpBackend[]> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const out: IpBackend[] = []
    const servers: Array<ReturnType<typeof createServer>> = []
    let port = 0
    try {
      for (const ip of ips) {
        let requests = 0
        let open = 0
        const sockets = new Set<Socket>()
        const server = createServer({ keepAliveTimeout: 120_000 }, (req: IncomingMessage, res: ServerResponse) => {
          requests++
          setTimeout(() => { res.end(ip) }, delayMs)
        })
        server.on('connection', (s: Socket) => { open++; sockets.add(s); s.on('close', () => { open--; sockets.delete(s) }) })
        await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, ip, resolve) })
        port = (server.address() as { port: number }).port
        servers.push(server)
        tt.teardown(async () => { for (const s of sockets) s.destroy(); await new Promise((resolve) => server.close(resolve)) })
        out.push({ ip, address: `${ip}:${port}`, requests: () => requests, open: () => open })
      }
      return out
    } catch {
      for (const s of servers) s.close() // that port was taken on another address: try another one
    }
  }
  throw new Error('no port free on every address')
}

/** Requests from `workers` loops until `stop()`: counts failures (anything but 200). */
function traffic (url: string, workers: number): { stop: () => Promise<void>, ok: () => number, failed: () => string[] } {
  let running = true
  let ok = 0
  const failed: string[] = []
  const loops = Array.from({ length: workers }, async () => {
    while (running) {
      try {
        const r = await fetch(url)
        const body = await r.text()
        if (r.status === 200) ok++
        else failed.push(`${r.status} ${body}`)
      } catch (err) {
        failed.push((err as Error).message)
      }
    }
  })
  return { stop: async () => { running = false; await Promise.all(loops) }, ok: () => ok, failed: () => failed }
}

t.test('dns A records: endpoints added and removed while traffic flows, no failed request; a failing DNS keeps the set', async (t) => {
  const dns = await startDns(t)
  const [b1, b2, b3] = await ipBackends(t, ['127.0.0.2', '127.0.0.3', '127.0.0.4'], 20)
  const port = Number(b1!.address.split(':')[1])
  dns.set('api.test', { type: 'A', addresses: [b1!.ip], ttl: 1 })
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', dns: { name: 'api.test', port, servers: [dns.address], minTtlMs: 200, maxTtlMs: 1000, intervalMs: 300, timeoutMs: 500 } } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
  })
  await waitFor('the first resolution', async () => (await fetch(f.url)).status === 200, 5000)
  const load = traffic(f.url, 4)
  t.teardown(async () => { await load.stop() }) // a failed wait must not leave the loops running
  await waitFor('traffic on b1', () => b1!.requests() > 20)

  // Add b2: it gets traffic within one TTL (1 s) of the record change.
  let changed = Date.now()
  dns.set('api.test', { type: 'A', addresses: [b1!.ip, b2!.ip], ttl: 1 })
  await waitFor('b2 gets requests', () => b2!.requests() > 0, 10000, 5)
  const timeToAdd = Date.now() - changed
  t.ok(timeToAdd <= 1000 + 2000, `an added endpoint took traffic ${timeToAdd} ms after the DNS change (TTL 1000 ms; bound TTL + 2000 ms slack)`)
  t.comment(`measured: time to add (DNS record change → first request on the new endpoint) = ${timeToAdd} ms, TTL 1 s`)

  // Remove b1 (replace it with b3): no new requests after Ferry saw the change; its pool closes.
  changed = Date.now()
  dns.set('api.test', { type: 'A', addresses: [b2!.ip, b3!.ip], ttl: 1 })
  await waitFor('b1 leaves the active set', async () => {
    const s = await adminStatus(f)
    const eps = s.upstreams.find((u: any) => u.name === 'api').endpoints
    return !eps.some((e: any) => e.address === b1!.address && e.state === 'active')
  }, 10000, 10)
  const timeToRemove = Date.now() - changed
  const b1AtRemoval = b1!.requests()
  await waitFor('b3 gets requests', () => b3!.requests() > 10, 10000)
  t.ok(b1!.requests() - b1AtRemoval <= 4 + 1, `b1 got ${b1!.requests() - b1AtRemoval} requests after its removal showed (≤ the 4 in flight, + 1 for the status poll race)`)
  t.comment(`measured: time to remove (DNS change → endpoint out of the active set) = ${timeToRemove} ms`)
  await waitFor('b1\'s pool is closed once its requests finished', () => b1!.open() === 0, 10000)
  t.pass('the removed endpoint\'s keep-alive connections were closed after its in-flight requests')
  await waitFor('b1 no longer draining', async () => (await adminStatus(f)).upstreams.find((u: any) => u.name === 'api').endpoints.length === 2, 5000)
  const s1 = await adminStatus(f)
  t.same(s1.upstreams.find((u: any) => u.name === 'api').endpoints.map((e: any) => e.address).sort(), [b2!.address, b3!.address].sort(), '/status lists the two endpoints of the new answer')
  t.equal(s1.upstreams.find((u: any) => u.name === 'api').source.source, 'dns', '/status names the dns source')

  // DNS fails (SERVFAIL, then silence): the last good set stays, traffic continues.
  dns.set('api.test', { type: 'fail', rcode: 2 })
  await waitFor('failed resolutions counted', async () => await metric(f, 'ferry_discovery_refreshes_total{upstream="api",source="dns",result="failed"}') >= 2, 10000)
  dns.set('api.test', { type: 'drop' })
  const before = b2!.requests() + b3!.requests()
  await waitFor('more failed resolutions', async () => await metric(f, 'ferry_discovery_refreshes_total{upstream="api",source="dns",result="failed"}') >= 4, 10000)
  await waitFor('traffic continues on the kept set', () => b2!.requests() + b3!.requests() > before + 20)
  const s2 = await adminStatus(f)
  const api = s2.upstreams.find((u: any) => u.name === 'api')
  t.equal(api.endpoints.filter((e: any) => e.state === 'active').length, 2, 'the set was kept through failed resolutions')
  t.ok(api.source.consecutiveFailures >= 2 && typeof api.source.lastError === 'string', `/status shows the failures (${api.source.consecutiveFailures}, ${api.source.lastError})`)
  // The log line comes through the process's stdout, which may trail the metric on a busy machine.
  const streakLogs = (): number => f.logs.filter((l) => l.msg === 'DNS resolution failed; the last good endpoint set is kept').length
  await waitFor('the failure logged', () => streakLogs() > 0, 5000)
  t.equal(streakLogs(), 1, 'logged once for the streak')
  dns.set('api.test', { type: 'A', addresses: [b3!.ip], ttl: 1 })
  await waitFor('resolution recovers and b2 leaves', async () => {
    const s = await adminStatus(f)
    return s.upstreams.find((u: any) => u.name === 'api').endpoints.filter((e: any) => e.state === 'active').length === 1
  }, 10000)
  await load.stop()
  t.same(load.failed(), [], `no request failed (${load.ok()} succeeded) while endpoints were added, removed and DNS failed`)
  t.equal(await metric(f, 'ferry_discovery_changes_total{upstream="api",change="added"}'), 3, 'three endpoints were added over the test')
  t.equal(await metric(f, 'ferry_discovery_changes_total{upstream="api",change="removed"}'), 2, 'two were removed')
})

t.test('dns SRV records for a mux upstream: a new target takes new sessions; a removed one keeps its open sessions, then its links close', async (t) => {
  const dns = await startDns(t)
  const echo = (s: any): void => { s.on('message', (d: Buffer, bin: boolean) => { s.send(d, { binary: bin }) }) }
  const m1 = await startMuxBackend(t, echo)
  const m2 = await startMuxBackend(t, echo)
  dns.set('m1.test', { type: 'A', addresses: ['127.0.0.1'], ttl: 1 })
  dns.set('m2.test', { type: 'A', addresses: ['127.0.0.1'], ttl: 1 })
  dns.set('_mux._tcp.chat.test', { type: 'SRV', targets: [{ target: 'm1.test', port: m1.port }], ttl: 1 })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', pool: { links: 2 }, dns: { name: '_mux._tcp.chat.test', type: 'SRV', servers: [dns.address], intervalMs: 300, minTtlMs: 100, timeoutMs: 500 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
  })
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  await waitFor('m1 links up', () => m1.links().length === 2, 10000)
  const first = await connect(url)
  first.ws.send('on m1')
  await first.waitMessages(1)
  t.equal(m1.sessions.size, 1, 'the first session is on m1')

  const changed = Date.now()
  dns.set('_mux._tcp.chat.test', { type: 'SRV', targets: [{ target: 'm2.test', port: m2.port }], ttl: 1 })
  await waitFor('m2 links up', () => m2.links().length === 2, 10000, 5)
  t.comment(`measured: SRV change → new target's links ready = ${Date.now() - changed} ms (intervalMs 300)`)
  await waitFor('m1 out of the active set', async () => {
    const s = await adminStatus(f)
    return !s.upstreams.find((u: any) => u.name === 'chat').endpoints.some((e: any) => e.address === `127.0.0.1:${m1.port}` && e.state === 'active')
  }, 10000)
  const later = await Promise.all([0, 1, 2, 3].map(async () => await connect(url)))
  await waitFor('m2 holds the new sessions', () => m2.sessions.size === 4, 5000)
  t.equal(m2.sessions.size, 4, 'new sessions go to m2')
  t.equal(m1.sessions.size, 1, 'the session on the removed m1 is still open')
  first.ws.send('still here')
  await first.waitMessages(2)
  t.equal(first.messages[1]!.data.toString(), 'still here', 'and it still works (its link drains, GOAWAY, no reconnect)')
  const st = await adminStatus(f)
  const ep1 = st.upstreams.find((u: any) => u.name === 'chat').endpoints.find((e: any) => e.address === `127.0.0.1:${m1.port}`)
  t.equal(ep1?.state, 'draining', '/status shows m1 draining')
  first.ws.close()
  await first.closed
  await waitFor('m1\'s links close after their last stream', () => m1.links().length === 0, 10000)
  t.pass('m1\'s links closed once its last session ended')
  await new Promise((resolve) => setTimeout(resolve, 600))
  t.equal(m1.links().length, 0, 'and were not reconnected')
  for (const c of later) c.ws.close()
})
