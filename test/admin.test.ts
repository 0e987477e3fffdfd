import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { connect } from 'node:net'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, singleProcess, writeConfig, adminStatus, metric, CLI, type Teardown } from './helpers/ferry.js'

/**
 * Runs `ferry start` on `config` (one process unless it sets gateway.workers) until it exits. If it logs `listening` instead (it started when it should
 * not have), it is killed so the test fails on its assertions rather than hanging.
 */
async function startExpectingFailure (t: Teardown, config: Record<string, unknown>): Promise<{ code: number | null, listened: boolean, stderr: string, stdout: string }> {
  const child = spawn(process.execPath, [CLI, 'start', '--config', writeConfig(singleProcess(config))], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let listened = false
  let exited = false
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d
    if (!listened && /"msg":"listening"/.test(stdout)) { listened = true; child.kill('SIGKILL') }
  })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => { exited = true; resolve(c) }))
  t.teardown(() => { if (!exited) child.kill('SIGKILL') })
  return { code, listened, stderr, stdout }
}

/** Resolves true when a TCP connect to 127.0.0.1:port is refused. */
async function refused (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.on('connect', () => { s.destroy(); resolve(false) })
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'))
  })
}

t.test('admin API: /healthz, /readyz, /status shape, /metrics, unknown path; SIGTERM exits 0', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, {
    ...httpConfig([backend.address], { pool: { maxConnections: 3, queueLimit: 7 } }, { gateway: { id: 'admin-test-gw' } }),
    routes: [
      { match: { host: 'example.test', path: '/' }, upstream: 'api' },
      { match: { path: '/api' }, upstream: 'api' },
    ],
  })
  // One proxied request so the request, latency and pool series have samples.
  const proxied = await fetch(`${f.url}/api/x`)
  t.equal(proxied.status, 200, 'a proxied request through /api gets 200')
  await proxied.text()

  const health = await fetch(`${f.adminUrl}/healthz`)
  t.equal(health.status, 200, '/healthz is 200')
  t.equal(await health.text(), 'ok\n', '/healthz body is "ok"')
  const ready = await fetch(`${f.adminUrl}/readyz`)
  t.equal(ready.status, 200, '/readyz is 200 while running')
  t.equal(await ready.text(), 'ready\n', '/readyz body is "ready"')

  const statusRes = await fetch(`${f.adminUrl}/status`)
  t.equal(statusRes.status, 200, '/status is 200')
  t.match(statusRes.headers.get('content-type') ?? '', /^application\/json/, '/status is served as application/json')
  const st = await statusRes.json() as any
  t.equal(st.gateway, 'admin-test-gw', '/status gateway is the configured gateway.id')
  t.equal(st.state, 'running', '/status state is "running"')
  t.type(st.version, 'string', '/status has a version string')
  t.equal(st.pid, f.pid, '/status pid is the gateway process id')
  t.notOk('pod' in st || 'workers' in st, 'gateway.workers 1 (startFerry pins one process): the plain single process, no pod or workers block (docs/workers.md)')
  t.ok(Number.isInteger(st.uptimeSeconds) && st.uptimeSeconds >= 0, `/status uptimeSeconds is a non-negative integer (${st.uptimeSeconds})`)
  t.same(st.listeners.http, { host: '127.0.0.1', port: f.httpPort }, '/status listeners.http is the bound host and port')
  t.same(st.listeners.admin, { host: '127.0.0.1', port: f.adminPort }, '/status listeners.admin is the bound host and port')
  t.same(st.listeners.tcp, [], '/status listeners.tcp is empty (none configured)')
  t.same(st.routes, [
    { name: 'example.test/', host: 'example.test', path: '/', upstream: 'api', kind: 'http', auth: null, rateLimits: [] },
    { name: '*/api', path: '/api', upstream: 'api', kind: 'http', auth: null, rateLimits: [] },
  ], '/status lists both routes in config order by name (what PUT /routes/NAME/split takes), with host only where configured')
  t.equal(st.upstreams.length, 1, '/status lists 1 upstream')
  const u = st.upstreams[0]
  t.match(u, { name: 'api', protocol: 'http', balance: 'round-robin', maxConnectionsPerEndpoint: 3, queued: 0, queueLimit: 7 }, '/status upstream: name, protocol, balance, pool limits (3, 7) and queue 0')
  t.equal(u.endpoints.length, 1, '/status upstream lists 1 endpoint')
  t.match(u.endpoints[0], { address: backend.address, health: 'up', ejectedForMs: 0, consecutiveFailures: 0, ejections: 0, inflight: 0, connected: 1 },
    '/status endpoint: address, health "up", no failures, inflight 0, 1 kept-alive connection')

  const metricsRes = await fetch(`${f.adminUrl}/metrics`)
  t.equal(metricsRes.status, 200, '/metrics is 200')
  t.match(metricsRes.headers.get('content-type') ?? '', /^text\/plain/, '/metrics is Prometheus text')
  const text = await metricsRes.text()
  const has = (re: RegExp, what: string): void => { t.match(text, re, `/metrics has ${what}`) }
  has(/^ferry_http_requests_total\{route="\*\/api",upstream="api",status="200"\} 1$/m, 'ferry_http_requests_total for the 1 proxied request')
  has(/^# TYPE ferry_upstream_response_seconds histogram$/m, 'ferry_upstream_response_seconds as a histogram')
  has(/^ferry_upstream_response_seconds_count\{upstream="api"\} 1$/m, 'ferry_upstream_response_seconds_count 1')
  has(/^ferry_connections\{side="upstream",kind="http",upstream="api"\} 1$/m, 'ferry_connections for the 1 upstream connection')
  has(/^ferry_upstream_queue_depth\{upstream="api"\} 0$/m, 'ferry_upstream_queue_depth 0')
  has(/^ferry_client_requests_in_flight\{kind="http"\} 0$/m, 'ferry_client_requests_in_flight 0')
  has(/^ferry_process_resident_memory_bytes \d+/m, 'ferry_process_resident_memory_bytes')
  has(/^ferry_process_cpu_user_seconds_total [\d.e+-]+$/m, 'ferry_process_cpu_user_seconds_total')
  t.notMatch(text, /^ferry_ferry_/m, '/metrics has no doubled ferry_ferry_ prefix')
  t.ok(await metric(f, 'ferry_process_resident_memory_bytes') > 0, 'ferry_process_resident_memory_bytes > 0')

  const unknown = await fetch(`${f.adminUrl}/nope`)
  t.equal(unknown.status, 404, 'an unknown admin path is 404')
  await unknown.text()

  t.equal(await f.stop(), 0, 'SIGTERM → the gateway exits with code 0')
  // 'exit' can come before the last stdout bytes are read: wait for stdout to end before reading the logs.
  const out = f.child.stdout!
  if (!out.closed) await once(out, 'close')
  t.ok(f.logs.some((l) => l.msg === 'draining' && l.signal === 'SIGTERM'), 'it logged "draining" for SIGTERM')
  t.ok(f.logs.some((l) => l.msg === 'drained'), 'it logged "drained"')
  t.ok(f.logs.some((l) => l.msg === 'gateway stopped'), 'it logged "gateway stopped" before exiting')
  t.ok(await refused(f.httpPort), `after exit the HTTP port ${f.httpPort} refuses connections`)
  t.ok(await refused(f.adminPort), `after exit the admin port ${f.adminPort} refuses connections`)
})

t.test('event loop lag gauges are numbers from the first scrape on: never 9223372036.85 s or NaN before the delay histogram has a sample', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, httpConfig([backend.address]))
  const names = ['min', 'max', 'mean', 'stddev', 'p50', 'p90', 'p99'].map((s) => `ferry_nodejs_eventloop_lag_${s}_seconds`)
  const scrape = async (): Promise<Record<string, string>> => {
    const text = await (await fetch(`${f.adminUrl}/metrics`)).text()
    return Object.fromEntries(names.map((n) => [n, new RegExp(`^${n} (\\S+)$`, 'm').exec(text)?.[1] ?? '(absent)']))
  }
  // Right after start, then eight at once: Ferry serves them within one turn of its loop, well inside the
  // histogram's 10 ms resolution, so every interval after the first has no sample.
  const scrapes = [await scrape(), ...await Promise.all(Array.from({ length: 8 }, scrape))]
  for (const [i, values] of scrapes.entries()) {
    for (const n of names) {
      const v = Number(values[n])
      t.ok(Number.isFinite(v) && v >= 0 && v < 60, `scrape ${i + 1}: ${n} is ${values[n]} (a number of seconds in 0–60)`)
    }
  }
})

t.test('a second gateway on the first one\'s HTTP port fails with FERRY_ERR_LISTEN naming listen.http, exit code 1', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('first') })
  const first = await startFerry(t, httpConfig([backend.address]))
  const second = await startExpectingFailure(t, httpConfig([backend.address], {}, {
    listen: { http: { host: '127.0.0.1', port: first.httpPort }, admin: { host: '127.0.0.1', port: 0 } },
  }))
  t.notOk(second.listened, 'the second gateway never reports listening')
  t.equal(second.code, 1, 'the second gateway exits with code 1')
  t.match(second.stderr, /FERRY_ERR_LISTEN/, `stderr names FERRY_ERR_LISTEN (stderr: ${second.stderr.trim()})`)
  t.match(second.stderr, `listen.http: cannot listen on 127.0.0.1:${first.httpPort}`, 'stderr names listen.http and the taken address')
  const r = await fetch(`${first.url}/`)
  t.equal(r.status, 200, 'the first gateway keeps serving on its port')
  t.equal(await r.text(), 'first', 'with its backend\'s body')
  t.equal((await adminStatus(first)).state, 'running', 'the first gateway is still "running"')
  t.equal((await fetch(`${first.adminUrl}/readyz`)).status, 200, 'the first gateway\'s /readyz is still 200')
})
