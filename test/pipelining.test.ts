import t from 'tap'
import { connect } from 'node:net'
import { startBackend, httpConfig } from './helpers/backend.js'
import { metric, startFerry, waitFor } from './helpers/ferry.js'

/**
 * Pipelined requests (issue 22, item 5; docs/http.md): uWS 20.30 closes a connection that sends a second
 * request before the first's response, and tells Ferry after the first request's handler ran. Ferry
 * sends a request upstream only once the read that carried it is handled, so a pipelined request in the
 * same read means nothing reaches the backend: no request takes effect whose response cannot be
 * delivered. Raw bytes on a real socket; a real backend that records what it executed.
 */

async function exchange (port: number, parts: string[], gapMs = 0): Promise<{ data: string, closed: boolean }> {
  const s = connect(port, '127.0.0.1')
  let data = ''
  let closed = false
  s.on('data', (d) => { data += d.toString('latin1') })
  s.on('error', () => {})
  s.on('close', () => { closed = true })
  await new Promise<void>((resolve) => s.once('connect', resolve))
  for (const p of parts) {
    s.write(p)
    if (gapMs > 0) await new Promise((resolve) => setTimeout(resolve, gapMs))
  }
  await waitFor('the connection closed or answered twice', () => closed || (data.match(/HTTP\/1\.1 /g)?.length ?? 0) >= parts.join('').split(' HTTP/1.1\r\n').length - 1, 15_000).catch(() => {})
  s.destroy()
  return { data, closed }
}

const post = (path: string, body: string): string => `POST ${path} HTTP/1.1\r\nHost: a.test\r\nContent-Length: ${body.length}\r\n\r\n${body}`
const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: a.test\r\n\r\n`

t.test('pipelined requests in one write: none is executed by the backend, the connection is closed, counted', async (t) => {
  const executed: string[] = []
  const backend = await startBackend(t, (req, res) => {
    let b = ''
    req.on('data', (c: Buffer) => { b += c.toString() })
    req.on('end', () => { executed.push(`${req.method} ${req.url} ${b}`); res.end('done') })
  })
  const f = await startFerry(t, httpConfig([backend.address]))
  const cases: Array<[string, string]> = [
    ['two POSTs', post('/pay/1', 'abc') + post('/pay/2', 'def')],
    ['two GETs', get('/g/1') + get('/g/2')],
    ['a POST with a 32 KiB body, then a GET', post('/upload', 'x'.repeat(32 * 1024)) + get('/g/3')],
    ['three POSTs', post('/pay/3', 'a') + post('/pay/4', 'b') + post('/pay/5', 'c')],
  ]
  for (const [name, bytes] of cases) {
    const r = await exchange(f.httpPort, [bytes])
    t.ok(r.closed, `${name}: the connection was closed`)
    t.equal(r.data, '', `${name}: no response byte (uWS closes before any)`)
  }
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(executed, [], 'the backend executed none of them')
  t.ok(await metric(f, 'ferry_http_aborted_before_upstream_total{upstream="api"}') >= 4, 'ferry_http_aborted_before_upstream_total counts them')
  // The same requests one at a time work.
  const ok = await exchange(f.httpPort, [post('/pay/6', 'ghi')])
  t.match(ok.data, /^HTTP\/1\.1 200/, 'one POST alone is served')
  t.same(executed, ['POST /pay/6 ghi'], 'and executed once')
})

t.test('a second request in a later read (after the first was sent upstream): the first is executed, its response is lost, the client sees the connection close', async (t) => {
  const executed: string[] = []
  const backend = await startBackend(t, (req, res) => {
    req.resume()
    req.on('end', () => { executed.push(`${req.method} ${req.url}`); setTimeout(() => res.end('done'), 500) })
  })
  const f = await startFerry(t, httpConfig([backend.address]))
  const r = await exchange(f.httpPort, [post('/late/1', 'abc'), post('/late/2', 'def')], 150)
  await new Promise((resolve) => setTimeout(resolve, 800))
  t.ok(r.closed, 'the connection was closed')
  t.equal(r.data, '', 'no response byte')
  t.same(executed, ['POST /late/1'], 'the first was executed (it had gone upstream before the second arrived), the second never: what docs/http.md says')
})
