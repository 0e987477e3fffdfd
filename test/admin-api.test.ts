import t from 'tap'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, runCli, writeConfig, adminStatus } from './helpers/ferry.js'

t.test('admin API: health, readiness, status, metrics; SIGTERM exits 0', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, httpConfig([backend.address], {}, { gateway: { id: 'pod-test' } }))
  await fetch(`${f.url}/x`).then(async (r) => await r.text())
  const health = await fetch(`${f.adminUrl}/healthz`)
  t.equal(health.status, 200, '/healthz 200')
  const ready = await fetch(`${f.adminUrl}/readyz`)
  t.equal(ready.status, 200, '/readyz 200 while running')
  const st = await adminStatus(f)
  t.equal(st.gateway, 'pod-test', '/status names the gateway id')
  t.equal(st.state, 'running', '/status state running')
  t.equal(st.listeners.http.port, f.httpPort, '/status lists the HTTP listener port')
  t.same(st.routes, [{ path: '/', upstream: 'api' }], '/status lists routes')
  t.equal(st.upstreams[0].endpoints[0].address, backend.address, '/status lists endpoints')
  t.equal(st.upstreams[0].endpoints[0].health, 'up', 'endpoint health up')
  const metrics = await (await fetch(`${f.adminUrl}/metrics`)).text()
  for (const name of ['ferry_http_requests_total', 'ferry_upstream_response_seconds_bucket', 'ferry_connections', 'ferry_upstream_queue_depth', 'ferry_client_requests_in_flight', 'ferry_upstream_endpoint_up', 'ferry_info', 'ferry_process_resident_memory_bytes']) {
    t.match(metrics, new RegExp(`^${name}[{ ]`, 'm'), `/metrics exports ${name}`)
  }
  t.equal((await fetch(`${f.adminUrl}/nope`)).status, 404, 'unknown admin path 404')
  t.equal(await f.stop(), 0, 'SIGTERM → exit code 0')
})

t.test('a second gateway on a taken port fails to start and names the listener', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const first = await startFerry(t, httpConfig([backend.address]))
  const file = writeConfig(httpConfig([backend.address], {}, { listen: { http: { host: '127.0.0.1', port: first.httpPort }, admin: { host: '127.0.0.1', port: 0 } } }))
  const r = await runCli(['start', '--config', file])
  t.equal(r.code, 1, 'exit code 1')
  t.match(r.stderr, 'FERRY_ERR_LISTEN', 'error code FERRY_ERR_LISTEN')
  t.match(r.stderr, `listen.http: cannot listen on 127.0.0.1:${first.httpPort}`, 'names the listener and address')
  t.equal((await fetch(`${first.url}/`)).status, 200, 'the first gateway keeps serving (no SO_REUSEPORT sharing)')
})
