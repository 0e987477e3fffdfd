import { connect as netConnect } from 'node:net'
import t from 'tap'
import { Client as UndiciClient } from 'undici'
import { createServer, request, Agent } from 'node:http'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, metric, waitFor, adminStatus } from './helpers/ferry.js'

/** One request on a fresh TCP connection (`Connection: close`), resolving to status and body. */
function closeRequest (port: number, path: string, agent: Agent): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent, headers: { connection: 'close' } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('5,000 short-lived client connections reach the backend over at most maxConnections', async (t) => {
  const MAX = 4
  const backend = await startBackend(t, (req, res) => {
    res.setHeader('content-type', 'text/plain')
    res.end(`echo:${req.url}:${req.headers['x-forwarded-for']}`)
  })
  const ferry = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: MAX } }))
  const TOTAL = 5000
  const CONCURRENCY = 50
  const agent = new Agent({ keepAlive: false, maxSockets: CONCURRENCY })
  t.teardown(() => agent.destroy())
  let next = 0
  let ok = 0
  const bad: string[] = []
  const worker = async (): Promise<void> => {
    while (next < TOTAL) {
      const i = next++
      const { status, body } = await closeRequest(ferry.httpPort, `/item/${i}?q=${i}`, agent)
      if (status === 200 && body === `echo:/item/${i}?q=${i}:127.0.0.1`) ok++
      else if (bad.length < 5) bad.push(`${i}: ${status} ${body.slice(0, 100)}`)
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  t.same(bad, [], 'no wrong responses')
  t.equal(ok, TOTAL, `all ${TOTAL} responses correct`)
  t.ok(backend.accepted() <= MAX, `backend accepted ${backend.accepted()} TCP connections, ≤ maxConnections ${MAX}`)
  t.ok(backend.accepted() >= 1, 'backend saw at least one connection')
  t.equal(await metric(ferry, 'ferry_http_requests_total{route="*/",upstream="api",status="200"}'), TOTAL, 'metrics count every request')
  t.ok(await metric(ferry, 'ferry_connections{side="upstream",kind="http",upstream="api"}') <= MAX, 'upstream connection gauge ≤ maxConnections')
})

t.test('idle keep-alive client connections are reported while the backend holds only the pool', async (t) => {
  const MAX = 2
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const ferry = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: MAX } }))
  const CLIENTS = 30
  const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS })
  t.teardown(() => agent.destroy())
  // Open CLIENTS keep-alive connections at once, then leave them idle.
  await Promise.all(Array.from({ length: CLIENTS }, async () => await new Promise<void>((resolve, reject) => {
    request({ host: '127.0.0.1', port: ferry.httpPort, path: '/', agent }, (res) => { res.resume(); res.on('end', resolve) }).on('error', reject).end()
  })))
  const series = 'ferry_connections{side="client",kind="http",upstream=""}'
  t.equal(await metric(ferry, series), CLIENTS, `${series} counts the ${CLIENTS} idle client connections`)
  t.ok(backend.open() <= MAX, `backend holds ${backend.open()} connections (≤ ${MAX})`)
  agent.destroy()
})

t.test('keep-alive responses say Keep-Alive: timeout=7, which uWS honours (it closes 8-12 s later) and undici and Node\'s Agent act on (they close the idle connection first: no reset race)', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const ferry = await startFerry(t, httpConfig([backend.address]))
  // Raw connections: the header as sent, and when Ferry closes the idle connection.
  const raw = await Promise.all(Array.from({ length: 3 }, async (_, i) => await new Promise<{ head: string, idleMs: number }>((resolve, reject) => {
    setTimeout(() => {
      const s = netConnect(ferry.httpPort, '127.0.0.1', () => { s.write('GET /ka HTTP/1.1\r\nHost: x\r\n\r\n') })
      let head = ''
      let at = 0
      s.setEncoding('latin1').on('data', (d: string) => { head += d; if (at === 0 && head.includes('\r\n\r\nok')) at = Date.now() })
      s.on('end', () => { resolve({ head, idleMs: Date.now() - at }); s.destroy() })
      s.on('error', reject)
    }, i * 1300) // spread over the 4 s tick
  })))
  for (const r of raw) {
    t.equal(r.head.match(/^keep-alive: timeout=7\r$/gim)?.length, 1, 'one Keep-Alive: timeout=7 header')
    t.notMatch(r.head, /^connection:/im, 'and no Connection header')
    t.ok(r.idleMs > 7000, `Ferry closed the idle connection ${r.idleMs} ms after the response: later than the 7 s it announced`)
  }
  // Node's Agent given an idle timeout lowers it to the hint less a second (without one, Node 20's Agent
  // ignores the hint); undici takes the hint less 2 s. Both close the idle connection themselves.
  const agent = new Agent({ keepAlive: true, timeout: 60_000 })
  t.teardown(() => agent.destroy())
  const viaAgent = new Promise<{ byServer: boolean, ms: number }>((resolve, reject) => {
    request({ host: '127.0.0.1', port: ferry.httpPort, path: '/agent', agent }, (res) => {
      const socket = res.socket
      res.resume()
      res.on('end', () => {
        const at = Date.now()
        let byServer = false
        socket.on('end', () => { byServer = true })
        socket.on('close', () => { resolve({ byServer, ms: Date.now() - at }) })
      })
    }).on('error', reject).end()
  })
  const client = new UndiciClient(ferry.url)
  t.teardown(async () => { await client.destroy() })
  const viaUndici = new Promise<{ why: string, ms: number }>((resolve) => {
    let at = 0
    client.once('disconnect', (_o: unknown, _t: unknown, err: Error) => { resolve({ why: err.message, ms: Date.now() - at }) })
    void client.request({ path: '/undici', method: 'GET' }).then(async (r) => { await r.body.text(); at = Date.now() })
  })
  const [a, u] = await Promise.all([viaAgent, viaUndici])
  t.notOk(a.byServer, `Node's Agent closed its idle connection (after ${a.ms} ms), Ferry did not have to`)
  t.ok(a.ms < 7000, 'before the announced 7 s')
  t.equal(u.why, 'socket idle timeout', `undici closed its idle connection itself (after ${u.ms} ms)`)
  t.ok(u.ms > 4500 && u.ms < 7000, 'at the hint less its 2 s threshold (its default without a hint is 4 s)')
})

t.test('clients that give up mid-request do not cost backend connections', async (t) => {
  const MAX = 4
  const held: Array<() => void> = []
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/slow') { held.push(() => res.end('late answer')); return }
    res.end('ok')
  })
  const ferry = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: MAX } }))
  const agent = new Agent({ keepAlive: false, maxSockets: 64 })
  t.teardown(() => agent.destroy())
  // 12 clients ask for /slow and hang up while their requests sit at the backend (4) or in the queue (8).
  const reqs = Array.from({ length: 12 }, () => {
    const r = request({ host: '127.0.0.1', port: ferry.httpPort, path: '/slow', agent })
    r.on('error', () => {})
    r.end()
    return r
  })
  await waitFor('4 requests held at the backend', () => held.length === MAX)
  for (const r of reqs) r.destroy()
  await waitFor('the queued requests to be dropped', async () => (await adminStatus(ferry)).upstreams[0].queued === 0)
  for (const release of held.splice(0)) release()
  await waitFor('every slot released', async () => (await adminStatus(ferry)).upstreams[0].endpoints[0].inflight === 0)
  for (let i = 0; i < 20; i++) t.equal((await closeRequest(ferry.httpPort, '/after', agent)).body, 'ok', `request ${i} after the aborts is served`)
  t.equal(backend.accepted(), MAX, `backend accepted ${backend.accepted()} connections: the ${MAX} whose responses were drained were kept, none re-opened`)
})

t.test('an abandoned request to a hung backend gives its slot back soon, not at responseMs', async (t) => {
  const backend = await startBackend(t, (req, res) => {
    if (req.url === '/hang') return // never answers
    res.end('fast')
  })
  // responseMs 60 s, queueTimeoutMs 5 s: the second request is only served if the abandoned one lets go
  // of the single connection within the queue timeout (Ferry's drain deadline is 1 s).
  const ferry = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: 1, queueTimeoutMs: 5000 }, timeouts: { responseMs: 60000 } }))
  const agent = new Agent({ keepAlive: false })
  t.teardown(() => agent.destroy())
  const hung = request({ host: '127.0.0.1', port: ferry.httpPort, path: '/hang', agent })
  hung.on('error', () => {})
  hung.end()
  await waitFor('the hung request to occupy the only slot', async () => (await adminStatus(ferry)).upstreams[0].endpoints[0].inflight === 1)
  hung.destroy()
  const r = await closeRequest(ferry.httpPort, '/fast', agent)
  t.equal(r.status, 200, 'the next request is served (not 503 after queueTimeoutMs 5000): the abandoned request was cut after the drain deadline')
  t.equal(r.body, 'fast', 'with the right body')
})

t.test('an endpoint written with a leading-zero port (127.0.0.1:0NNNN, valid config) is the same endpoint and takes traffic', async (t) => {
  // A port under 10,000, so that a leading zero still fits the config's five digits: the first free one found.
  const server = createServer((_req, res) => { res.end('ok') })
  let port = 0
  for (let p = 4100 + Math.floor(Math.random() * 5000); port === 0; p++) {
    port = await new Promise<number>((resolve) => {
      server.once('error', () => resolve(0)).listen(p, '127.0.0.1', () => { server.removeAllListeners('error'); resolve(p) })
    })
  }
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const f = await startFerry(t, httpConfig([`127.0.0.1:0${port}`]))
  const status = await new Promise<number>((resolve, reject) => {
    request({ host: '127.0.0.1', port: f.httpPort, path: '/', agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0) }).on('error', reject).end()
  })
  t.equal(status, 200, 'the request is served (the endpoint set keys members on the normalised host:port)')
  const ups = (await adminStatus(f)).upstreams as Array<{ name: string, endpoints: Array<{ address: string }> }>
  t.same(ups.find((u) => u.name === 'api')?.endpoints.map((e) => e.address), [`127.0.0.1:${port}`], '/status lists the one endpoint, normalised')
})
