// native-bench, WebSocket section: echo throughput and latency, idle memory per session, topic fan-out,
// through nginx, HAProxy, Ferry passthrough (protocol: ws) and Ferry mux (protocol: mux), next to the echo
// backend direct. native-bench/run calls `runWsSection` after the HTTP and TCP sections; it starts its own
// processes (a dedicated nginx, HAProxy and Ferry, so the idle-memory baselines are not skewed by the HTTP
// runs, and so each gets the file-descriptor limit 10,000 sessions need), registered with run's process
// bookkeeping, so they are stopped by PID however the run ends.
//
// Load generator: wsgen.c (compiled here with gcc), WSGEN_PROCS copies, each with its share of the sessions.
import { spawn, spawnSync, execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { writePushpinConfig, pushpinControlPorts } from './pushpin.js'
import { parseMetrics, track } from './harness.mjs'

export const WS_PORTS = { wsEcho: 18094, muxEcho: 18095, wsNginx: 18096, wsHaproxy: 18097, wsFerry: 18098, muxFerry: 18099, wsFerryAdmin: 19902, muxFerryAdmin: 19903 }
const PUSHPIN_PORT = 18101
const PUSHPIN_PORT_OFFSET = 12610 // its handler's control ports 5560–5563 → 18170–18173
/** Every port the section binds (checked free by run before anything starts). */
export const wsPorts = (pushpin) => ({
  ...WS_PORTS,
  ...(pushpin ? { wsPushpin: PUSHPIN_PORT, ...Object.fromEntries(pushpinControlPorts(PUSHPIN_PORT_OFFSET).map((p, i) => [`wsPushpinControl${i}`, p])) } : {}),
})

/** This process's hard limit on open files: children can be given up to this (raising it needs CAP_SYS_RESOURCE). */
function hardNofile () {
  try { const m = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8')); return m[1] === 'unlimited' ? 1 << 20 : Number(m[1]) } catch { return 1024 }
}
/** Open files allowed to each process started here: 65,536 where the hard limit allows it (the soft limit is raised to it with prlimit). */
const NOFILE = Math.min(65536, hardNofile())
/**
 * Idle sessions per target: 10,000, unless the file limit is lower than a passthrough proxy needs for them
 * (two descriptors per session, client side and backend side, plus a few hundred for everything else).
 */
export const IDLE_SESSIONS = Math.min(10000, Math.floor((NOFILE - 400) / 2 / 100) * 100)
const WSGEN_PROCS = 2 // generator processes per run (the machine has 2 cores; one process tops out near 190k msgs/s)
const MSG_BYTES = 64
const MUX_LINKS = 4

export function wsProfile (full) {
  return full
    ? {
        repeats: 5, seconds: 5, warmupSeconds: 1, idleSessions: IDLE_SESSIONS, nofile: NOFILE,
        echo: [{ sessions: 100, inflight: 1 }, { sessions: 1000, inflight: 1 }, { sessions: 5000, inflight: 1 }, { sessions: 1000, inflight: 8 }],
        fanout: [1000, 5000], fanoutAll: true, fanoutWindow: 8,
      }
    : {
        repeats: 3, seconds: 1, warmupSeconds: 1, idleSessions: IDLE_SESSIONS, nofile: NOFILE,
        echo: [{ sessions: 100, inflight: 1 }, { sessions: 1000, inflight: 1 }, { sessions: 1000, inflight: 8 }],
        fanout: [1000], fanoutAll: false, fanoutWindow: 8,
      }
}
export const echoName = (w) => `${w.sessions}x${w.inflight}`
export const echoLabel = (w) => `WS echo, ${w.sessions.toLocaleString('en-US')} sessions × ${w.inflight} in flight${w.inflight > 1 ? ' (pipelined)' : ' (ping-pong)'}`

// ---- small helpers --------------------------------------------------------------------------------

/** RSS in KiB of a process and its direct children (nginx: master + worker). */
export function rssKiB (pid) {
  const one = (p) => { try { return Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0) } catch { return 0 } }
  let total = one(pid)
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try { const s = readFileSync(`/proc/${d}/stat`, 'utf8'); if (Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]) === pid) total += one(d) } catch {}
  }
  return total
}

/** ESTABLISHED TCP connections whose local port is `port` (the backend's side of each connection). */
export function establishedTo (port) {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0')
  let n = 0
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text
    try { text = readFileSync(f, 'utf8') } catch { continue }
    for (const line of text.split('\n')) {
      // "  sl  local_address rem_address   st ..." → "0: 0100007F:46C6 0100007F:9C40 01 ..."
      const parts = line.trim().split(/\s+/)
      if (parts.length < 4 || parts[3] !== '01') continue
      if (parts[1].endsWith(`:${hexPort}`)) n++
    }
  }
  return n
}

/** Merges wsgen histograms ([µs, count] pairs) and returns percentiles in ms. */
export function percentiles (hists, ps) {
  const m = new Map()
  for (const h of hists) for (const [us, c] of h) m.set(us, (m.get(us) ?? 0) + c)
  const sorted = [...m].sort((a, b) => a[0] - b[0])
  const total = sorted.reduce((a, [, c]) => a + c, 0)
  return ps.map((p) => {
    if (total === 0) return NaN
    const want = Math.ceil(total * p / 100)
    let acc = 0
    for (const [us, c] of sorted) { acc += c; if (acc >= want) return us / 1000 }
    return NaN
  })
}

const metricSum = (m, name, filter = () => true) => Object.entries(m).filter(([k]) => (k === name || k.startsWith(`${name}{`)) && filter(k)).reduce((a, [, v]) => a + v, 0)
const label = (k, l) => new RegExp(`${l}="([^"]*)"`).exec(k)?.[1] ?? ''

// ---- the load generator ----------------------------------------------------------------------------

/** Compiles lib/wsgen.c (gcc -O2) into `dir`; returns the binary's path. */
export function buildWsgen (root, dir) {
  const bin = join(dir, 'wsgen')
  execFileSync('gcc', ['-O2', '-o', bin, join(root, 'native-bench/lib/wsgen.c')], { stdio: 'inherit' })
  return bin
}

/**
 * wsgen processes, driven over their stdin/stdout: `gen(mode, target, sessions, opts, n)` starts `n`
 * copies sharing the sessions (target: { port }), resolved once all printed `ready`; `next(h, event)`
 * waits for one's next event; `send(hs, cmd)` writes a command to each; `closeGen(hs)` closes their
 * sessions and waits for them to exit. Each child is held in `transient` (a Set, optional) while it runs
 * and SIGKILLed if this process exits first.
 */
export function wsgenDriver ({ bin, host, transient, sleep, nofile = NOFILE, size = MSG_BYTES, procs = WSGEN_PROCS }) {
  /** Starts `n` wsgen processes sharing `sessions`; resolves with their handles once all printed `ready`. */
  async function gen (mode, t, sessions, opts = {}, n = Math.min(procs, sessions)) {
    const per = Array.from({ length: n }, (_, i) => Math.floor(sessions / n) + (i < sessions % n ? 1 : 0))
    const hs = per.map((count, i) => {
      const kv = { host, port: t.port, sessions: count, size, tag: i, ...opts }
      if (typeof kv.path === 'function') kv.path = kv.path(i)
      if (typeof kv.ctlpath === 'function') kv.ctlpath = kv.ctlpath(i)
      const child = track(spawn('prlimit', [`--nofile=${nofile}:${nofile}`, '--', bin, mode, ...Object.entries(kv).map(([k, v]) => `${k}=${v}`)], { stdio: ['pipe', 'pipe', 'pipe'] }))
      transient?.add(child)
      const h = { child, events: [], waiters: [], exited: false, stderr: '' }
      child.on('exit', () => { h.exited = true; transient?.delete(child); for (const w of h.waiters.splice(0)) w.reject(new Error(`wsgen exited: ${h.stderr.slice(0, 300)}`)) })
      child.stderr.on('data', (d) => { h.stderr += d })
      child.stdin.on('error', () => {})
      createInterface({ input: child.stdout }).on('line', (line) => {
        let ev; try { ev = JSON.parse(line) } catch { return }
        const w = h.waiters.shift()
        if (w) w.resolve(ev); else h.events.push(ev)
      })
      return h
    })
    await Promise.all(hs.map((h) => next(h, 'ready', 90000)))
    return hs
  }
  function next (h, event, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`wsgen: no ${event} within ${timeoutMs} ms`)), timeoutMs)
      const done = (ev) => { clearTimeout(timer); if (ev.event !== event) reject(new Error(`wsgen: expected ${event}, got ${JSON.stringify(ev).slice(0, 200)}`)); else { h[event] = ev; resolve(ev) } }
      const fail = (err) => { clearTimeout(timer); reject(err) }
      if (h.events.length > 0) { done(h.events.shift()); return }
      if (h.exited) { fail(new Error(`wsgen exited: ${h.stderr.slice(0, 300)}`)); return }
      h.waiters.push({ resolve: done, reject: fail })
    })
  }
  const send = (hs, cmd) => { for (const h of hs) if (!h.exited) h.child.stdin.write(`${cmd}\n`) }
  async function closeGen (hs) {
    send(hs, 'close')
    for (const h of hs) h.child.stdin.end()
    await Promise.all(hs.map((h) => next(h, 'closed', 10000).catch(() => {})))
    for (const h of hs) {
      for (let i = 0; i < 100 && !h.exited; i++) await sleep(20)
      if (!h.exited) { try { h.child.kill('SIGKILL') } catch {} }
    }
  }
  const sumOf = (hs, ev, k) => hs.reduce((a, h) => a + (h[ev]?.[k] ?? 0), 0)
  const firstError = (hs, ev) => hs.map((h) => h[ev]?.error).find((e) => e) ?? ''

  return { gen, next, send, closeGen, sumOf, firstError }
}

// ---- the section ----------------------------------------------------------------------------------

/**
 * ctx: { ROOT, WORK, HOST, FULL, log, start, transient, cpuSeconds, machineBusySeconds, portFree, waitPort, sleep, httpGet }
 * Returns everything run needs for its tables, JSON and checks.
 */
export async function runWsSection (ctx) {
  const { ROOT, WORK, HOST, log, sleep } = ctx
  const P = WS_PORTS
  const prof = wsProfile(ctx.FULL)
  const timings = {}
  const checks = []
  const check = (ok, text, otherwise = 'WARN') => checks.push({ level: ok ? 'ok' : otherwise, text })
  const tSection = performance.now()

  // ---- the generator ----
  const { gen, next, send, closeGen, sumOf, firstError } = wsgenDriver({ bin: buildWsgen(ROOT, WORK), host: HOST, transient: ctx.transient, sleep })

  // ---- what this Ferry build can do ----
  const skipped = {}
  const hasMux = existsSync(join(ROOT, 'dist/upstream/mux')) && existsSync(join(ROOT, 'dist/backend/index.js'))
  const hasWs = existsSync(join(ROOT, 'dist/upstream/ws'))
  if (!hasWs) skipped['ferry-ws'] = 'skipped: this build has no ws upstream (dist/upstream/ws missing)'
  if (!hasMux) skipped['ferry-mux'] = 'skipped: this build has no mux upstream or backend library (dist/upstream/mux, dist/backend/index.js)'

  // Two Ferry processes, one per mode (passthrough, mux): each target's memory and CPU are its own.
  const FERRY = {
    'ferry-ws': { proc: 'ferry-ws', port: P.wsFerry, admin: P.wsFerryAdmin, file: join(WORK, 'ferry-ws.yaml'),
      upstream: `  echo-ws:  { protocol: ws,  endpoints: ["${HOST}:${P.wsEcho}"] }`, route: '  - { match: { path: /ws }, upstream: echo-ws }' },
    'ferry-mux': { proc: 'ferry-mux', port: P.muxFerry, admin: P.muxFerryAdmin, file: join(WORK, 'ferry-mux.yaml'),
      upstream: `  echo-mux: { protocol: mux, endpoints: ["${HOST}:${P.muxEcho}"], pool: { links: ${MUX_LINKS} } }`, route: '  - { match: { path: /mux }, upstream: echo-mux }' },
  }
  // One process, as nginx and HAProxy here run one worker (the default, auto, forks a worker per core).
  const ferryYaml = (f) => `gateway: { workers: 1 }
listen:
  http: { host: ${HOST}, port: ${f.port} }
  admin: { host: ${HOST}, port: ${f.admin} }
upstreams:
${f.upstream}
routes:
${f.route}
# Capacity, not policy: admission control (2,000 handshakes/s by default, there so pods taking a drained
# pod's sessions are not overrun) would refuse the idle test's 256-at-a-time opening; nginx and HAProxy
# have none. The drain's accept grace is for load balancers to catch up; here it would only slow the stop.
admission: { handshakesPerSec: 0 }
drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 3000 }
# A shared secret as a fleet would have (without one Ferry warns that resume tokens stay on this process).
resume: { secret: "native-bench-resume-secret-0123456789abcdef" }
logging: { level: info, accessLog: false }
`
  const ferryCheck = (file) => {
    const r = spawnSync(process.execPath, [join(ROOT, 'dist/cli.js'), 'check', '--config', file], { encoding: 'utf8', timeout: 30000 })
    return { ok: r.status === 0, out: `${r.stdout}${r.stderr}`.trim().split('\n').slice(0, 6).join(' | ') }
  }
  const ferryOn = { 'ferry-ws': hasWs, 'ferry-mux': hasMux }
  for (const [name, f] of Object.entries(FERRY)) {
    if (!ferryOn[name]) continue
    writeFileSync(f.file, ferryYaml(f))
    const c = ferryCheck(f.file)
    if (!c.ok) { skipped[name] = `skipped: \`ferry check\` refuses the ${name === 'ferry-ws' ? 'ws' : 'mux'} upstream: ${c.out}`; ferryOn[name] = false }
  }

  // ---- configs ----
  const tempPaths = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${WORK}/ws-nginx-${t};`).join(' ')
  writeFileSync(join(WORK, 'ws-nginx.conf'), `worker_processes 1;
daemon off;
master_process on;
worker_rlimit_nofile ${NOFILE};
error_log ${WORK}/ws-nginx-error.log warn;
pid ${WORK}/ws-nginx.pid;
# nginx runs out of worker_connections before it runs out of descriptors (at ~9,300 proxied sessions with
# 19,900 of them and 20,000 descriptors: "worker_connections are not enough"), so the file limit is the cap here.
events { worker_connections ${2 * NOFILE}; multi_accept on; }
http {
  access_log off; ${tempPaths}
  upstream echo { server ${HOST}:${P.wsEcho}; }
  server {
    listen ${HOST}:${P.wsNginx} backlog=4096;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
    }
  }
}
`)
  writeFileSync(join(WORK, 'ws-haproxy.cfg'), `global
  nbthread 1
  maxconn ${Math.floor((NOFILE - 200) / 2)}
defaults
  mode http
  maxconn ${Math.floor((NOFILE - 200) / 2)}
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 600s
  option forwardfor
frontend fe
  bind ${HOST}:${P.wsHaproxy}
  default_backend be
backend be
  server s1 ${HOST}:${P.wsEcho}
`)

  // ---- processes ----
  const lim = (cmd, args) => ['prlimit', [`--nofile=${NOFILE}:${NOFILE}`, '--', cmd, ...args]]
  const procs = {}
  procs['ws-echo'] = ctx.start('ws-echo', ...lim(process.execPath, [join(ROOT, 'native-bench/lib/ws-echo.cjs'), String(P.wsEcho), HOST]))
  if (ferryOn['ferry-mux']) procs['mux-echo'] = ctx.start('mux-echo', ...lim(process.execPath, [join(ROOT, 'native-bench/lib/mux-echo.mjs'), String(P.muxEcho), HOST]))
  procs['ws-nginx'] = ctx.start('ws-nginx', ...lim('nginx', ['-p', WORK, '-c', join(WORK, 'ws-nginx.conf')]))
  procs['ws-haproxy'] = ctx.start('ws-haproxy', ...lim('haproxy', ['-f', join(WORK, 'ws-haproxy.cfg')]))
  if (ctx.PUSHPIN) procs['ws-pushpin'] = ctx.start('ws-pushpin', ...lim('pushpin', writePushpinConfig({ dir: join(WORK, 'ws-pushpin'), host: HOST, port: PUSHPIN_PORT, portOffset: PUSHPIN_PORT_OFFSET, backend: `${HOST}:${P.wsEcho}`, maxConn: NOFILE })))
  await Promise.all([['ws-echo', P.wsEcho], ...(ferryOn['ferry-mux'] ? [['mux-echo', P.muxEcho]] : []), ['ws-nginx', P.wsNginx], ['ws-haproxy', P.wsHaproxy], ...(ctx.PUSHPIN ? [['ws-pushpin', PUSHPIN_PORT]] : [])].map(([n, p]) => ctx.waitPort(p, n)))
  for (const [name, f] of Object.entries(FERRY)) {
    if (!ferryOn[name]) continue
    procs[f.proc] = ctx.start(f.proc, ...lim(process.execPath, [...ctx.FERRY_NODE_FLAGS, join(ROOT, 'dist/cli.js'), 'start', '--config', f.file]))
    try {
      await ctx.waitPort(f.port, f.proc)
    } catch {
      const out = readFileSync(join(WORK, `${f.proc}.out`), 'utf8').split('\n').filter((l) => l.trim() !== '').slice(-3).join(' | ').slice(0, 400)
      skipped[name] = `failed: Ferry did not start with ${f.file}: ${out}`
      ferryOn[name] = false
    }
  }
  // Mux links connect at start: wait until all are up (they are what the backend holds).
  if (ferryOn['ferry-mux']) {
    const until = Date.now() + 10000
    while (establishedTo(P.muxEcho) < MUX_LINKS && Date.now() < until) await sleep(50)
    check(establishedTo(P.muxEcho) === MUX_LINKS, `Ferry mux: ${establishedTo(P.muxEcho)} links to the mux echo backend after start (${MUX_LINKS} configured)`)
  }

  const TARGETS = [
    { name: 'direct', label: 'echo backend direct (no proxy)', port: P.wsEcho, base: '/ws', proxy: undefined, backend: 'ws-echo', backendPort: P.wsEcho },
    { name: 'nginx', label: 'nginx', port: P.wsNginx, base: '/ws', proxy: 'ws-nginx', backend: 'ws-echo', backendPort: P.wsEcho },
    { name: 'haproxy', label: 'HAProxy', port: P.wsHaproxy, base: '/ws', proxy: 'ws-haproxy', backend: 'ws-echo', backendPort: P.wsEcho },
    // Pushpin's runner writes zurl's config from a packaged template with max_open_requests=2000, and
    // with more than ~500 sessions opening at once zurl answers part of the handshakes 502 (and keeps
    // some backend connections after the clients left): measured up to 100 sessions only.
    ...(ctx.PUSHPIN ? [{ name: 'pushpin', label: 'Pushpin (condure, zurl, proxy, handler)', port: PUSHPIN_PORT, base: '/ws', proxy: 'ws-pushpin', backend: 'ws-echo', backendPort: P.wsEcho,
      maxSessions: 100, tooMany: 'skipped: Pushpin via zurl refuses part of 1,000 concurrent handshakes (502) and caps open sessions at 2,000 (the runner\'s zurl template); measured with 100 sessions only' }] : []),
    { name: 'ferry-ws', label: 'Ferry passthrough (protocol: ws)', port: P.wsFerry, base: '/ws', proxy: 'ferry-ws', backend: 'ws-echo', backendPort: P.wsEcho, on: ferryOn['ferry-ws'], admin: P.wsFerryAdmin },
    { name: 'ferry-mux', label: `Ferry mux (protocol: mux, ${MUX_LINKS} links)`, port: P.muxFerry, base: '/mux', proxy: 'ferry-mux', backend: 'mux-echo', backendPort: P.muxEcho, on: ferryOn['ferry-mux'], admin: P.muxFerryAdmin },
  ]
  const pidOf = (name) => procs[name]?.pid
  const live = (t) => t.on !== false && skipped[t.name] === undefined

  // ---- Ferry's own counters ----
  async function ferryMetrics (t) {
    if (t.admin === undefined || procs[t.proxy] === undefined) return undefined
    try { return parseMetrics((await ctx.httpGet(t.admin, '/metrics')).body) } catch { return undefined }
  }
  function ferryDelta (a, b) {
    if (a === undefined || b === undefined) return undefined
    const d = {}
    for (const k of Object.keys(b)) if (k.startsWith('ferry_ws_') || k.startsWith('ferry_mux_') || k.startsWith('ferry_errors_total')) { const v = b[k] - (a[k] ?? 0); if (v !== 0) d[k] = v }
    const closedBy = {}
    for (const [k, v] of Object.entries(d)) if (k.startsWith('ferry_ws_closed_total{')) closedBy[label(k, 'reason')] = (closedBy[label(k, 'reason')] ?? 0) + v
    return {
      closedBy,
      abnormalCloses: Object.entries(closedBy).filter(([r]) => r !== 'client').reduce((a, [, v]) => a + v, 0),
      upgradeFailures: metricSum(d, 'ferry_ws_upgrade_failures_total'),
      sessionsOpened: metricSum(d, 'ferry_ws_sessions_total'),
      errors: metricSum(d, 'ferry_errors_total'),
      published: metricSum(d, 'ferry_mux_published_total'),
      fanoutDeliveries: metricSum(d, 'ferry_mux_fanout_deliveries_total'),
      creditStalls: metricSum(d, 'ferry_mux_credit_stalls_total'),
      protocolErrors: metricSum(d, 'ferry_mux_protocol_errors_total'),
    }
  }

  /** One measured window (echo or fanout) against one target, with the CPU every process used meanwhile. */
  async function measured (t, mode, sessions, opts, seconds) {
    // Ferry's counters from before the sessions open to after they closed.
    const fm0 = await ferryMetrics(t)
    const hs = await gen(mode, t, sessions, { seconds, ...opts })
    let out
    try {
      const openFailed = sumOf(hs, 'ready', 'failed')
      if (openFailed > 0) throw new Error(`${openFailed} of ${sessions} sessions did not open: ${firstError(hs, 'ready')}`)
      if (mode === 'fanout') await sleep(300) // subscriptions reach the backend (mux: SUBSCRIBE may take another link than PUBLISH)
      const c0 = { proxy: t.proxy ? ctx.cpuSeconds(pidOf(t.proxy)) : 0, backend: ctx.cpuSeconds(pidOf(t.backend)), busy: ctx.machineBusySeconds(), t: performance.now() }
      send(hs, 'go')
      await Promise.all(hs.map((h) => next(h, 'result', (seconds + 20) * 1000)))
      const wall = (performance.now() - c0.t) / 1000
      const cpu = {
        proxyCpu: t.proxy ? (ctx.cpuSeconds(pidOf(t.proxy)) - c0.proxy) / wall : NaN,
        backendCpu: (ctx.cpuSeconds(pidOf(t.backend)) - c0.backend) / wall,
        machineCpu: (ctx.machineBusySeconds() - c0.busy) / wall,
      }
      const res = hs.map((h) => h.result)
      const window = Math.max(...res.map((r) => r.seconds))
      const [p50ms, p99ms] = percentiles(res.map((r) => r.hist), [50, 99])
      out = {
        msgsPerSec: res.reduce((a, r) => a + r.received, 0) / window,
        received: res.reduce((a, r) => a + r.received, 0),
        sent: res.reduce((a, r) => a + r.sent, 0),
        published: res.reduce((a, r) => a + (r.published ?? 0), 0),
        lost: res.reduce((a, r) => a + r.lost, 0),
        bad: res.reduce((a, r) => a + r.bad, 0),
        reordered: res.reduce((a, r) => a + (r.reordered ?? 0), 0),
        closed: res.reduce((a, r) => a + r.closed, 0),
        stalled: res.some((r) => r.stalled === 1),
        error: firstError(hs, 'result'),
        p50ms, p99ms,
        genCpuMax: Math.max(...res.map((r) => r.cpu / r.seconds)),
        genProcs: hs.length,
        openMs: Math.max(...hs.map((h) => h.ready.ms)),
        ...cpu,
      }
    } finally {
      await closeGen(hs)
    }
    if (fm0 !== undefined) { await sleep(200); out.ferry = ferryDelta(fm0, await ferryMetrics(t)) }
    return out
  }

  // ---- checks: every target echoes correctly ----
  const tCheck = performance.now()
  const targetState = {}
  for (const t of TARGETS) {
    if (!live(t)) { targetState[t.name] = skipped[t.name]; continue }
    try {
      const hs = await gen('idle', t, 10, { path: t.base }, 1)
      try {
        if (hs[0].ready.failed > 0) throw new Error(`sessions did not open: ${hs[0].ready.error}`)
        send(hs, 'check')
        const c = await next(hs[0], 'checked', 20000)
        if (c.ok !== 10 || c.bad !== 0) throw new Error(`echo check: ${c.ok}/10 echoed, ${c.bad} wrong: ${c.error}`)
      } finally { await closeGen(hs) }
      targetState[t.name] = 'ok'
    } catch (err) {
      targetState[t.name] = `failed: ${err.message}`
      log(`ws: ${t.label}: ${err.message}`)
    }
  }
  const usable = (t) => targetState[t.name] === 'ok'
  for (const t of TARGETS) if (targetState[t.name] !== 'ok' && !String(targetState[t.name]).startsWith('skipped')) check(false, `WS ${t.label}: ${targetState[t.name]}`)
  log(`ws: targets ${TARGETS.map((t) => `${t.name} ${targetState[t.name] === 'ok' ? 'ok' : targetState[t.name]}`).join('; ')}`)
  timings.checks = (performance.now() - tCheck) / 1000

  // ---- idle memory: 10,000 sessions per target, opened, verified, held, closed ----
  const tIdle = performance.now()
  const idle = []
  for (const t of TARGETS) {
    if (!usable(t)) { idle.push({ target: t.name, skipped: targetState[t.name] }); continue }
    if (t.maxSessions !== undefined && t.maxSessions < prof.idleSessions) { idle.push({ target: t.name, skipped: t.tooMany }); continue }
    const n = prof.idleSessions
    const row = { target: t.name, sessions: n }
    try {
      await sleep(300)
      const before = { proxy: t.proxy ? rssKiB(pidOf(t.proxy)) : NaN, backend: rssKiB(pidOf(t.backend)), conns: establishedTo(t.backendPort) }
      const fm0 = await ferryMetrics(t)
      const hs = await gen('idle', t, n, { path: t.base, conc: 256 }, 1)
      try {
        row.opened = sumOf(hs, 'ready', 'open'); row.failed = sumOf(hs, 'ready', 'failed'); row.openSeconds = hs[0].ready.ms / 1000
        if (row.failed > 0) row.error = firstError(hs, 'ready')
        send(hs, 'check')
        const c = await next(hs[0], 'checked', 30000)
        row.echoOk = c.ok; row.echoBad = c.bad; row.closedDuring = c.closed
        if (c.error && !row.error) row.error = c.error
        await sleep(1000) // let allocations settle (Node: the heap grows in steps)
        row.proxyRssBeforeKiB = before.proxy; row.proxyRssAfterKiB = t.proxy ? rssKiB(pidOf(t.proxy)) : NaN
        row.backendRssBeforeKiB = before.backend; row.backendRssAfterKiB = rssKiB(pidOf(t.backend))
        row.backendConnsBefore = before.conns; row.backendConns = establishedTo(t.backendPort)
        row.proxyKiBPerSession = (row.proxyRssAfterKiB - row.proxyRssBeforeKiB) / row.opened
        row.backendKiBPerSession = (row.backendRssAfterKiB - row.backendRssBeforeKiB) / row.opened
      } finally { await closeGen(hs) }
      // Every backend connection the sessions held must go away again.
      const t0 = performance.now()
      while (establishedTo(t.backendPort) > before.conns && performance.now() - t0 < 10000) await sleep(50)
      row.backendConnsAfterClose = establishedTo(t.backendPort)
      row.releaseSeconds = (performance.now() - t0) / 1000
      row.ferry = ferryDelta(fm0, await ferryMetrics(t))
    } catch (err) { row.error = err.message }
    idle.push(row)
    log(`ws idle ${t.name.padEnd(9)} ${row.opened ?? 0}/${n} open in ${fmt(row.openSeconds, 2)} s, echo ${row.echoOk ?? 0} ok ${row.echoBad ?? 0} bad, proxy ${fmt(row.proxyKiBPerSession, 2)} KiB/session, backend ${fmt(row.backendKiBPerSession, 2)} KiB/session, backend conns ${row.backendConns ?? '—'} (after close ${row.backendConnsAfterClose ?? '—'})${row.error ? `  ERROR ${row.error}` : ''}`)
  }
  timings.idle = (performance.now() - tIdle) / 1000

  // ---- warm-up (not counted), then echo runs, interleaved ----
  const tEcho = performance.now()
  for (const t of TARGETS.filter(usable)) {
    try { await measured(t, 'echo', 100, { path: t.base, inflight: 1 }, prof.warmupSeconds) } catch (err) { log(`ws warm-up ${t.name}: ${err.message}`) }
  }
  const runs = []
  for (let rep = 0; rep < prof.repeats; rep++) {
    for (const w of prof.echo) {
      for (const t of TARGETS.filter(usable)) {
        if (t.maxSessions !== undefined && w.sessions > t.maxSessions) continue
        let r
        try { r = await measured(t, 'echo', w.sessions, { path: t.base, inflight: w.inflight }, prof.seconds) } catch (err) { r = { error: err.message, failed: true, msgsPerSec: NaN } }
        runs.push({ rep, workload: echoName(w), target: t.name, ...r })
        log(`ws rep ${rep + 1}/${prof.repeats} ${echoName(w).padEnd(7)} ${t.name.padEnd(9)} ${fmt(r.msgsPerSec).padStart(7)} msgs/s  p50 ${fmt(r.p50ms, 2)} p99 ${fmt(r.p99ms, 2)} ms  lost ${r.lost ?? '—'} bad ${r.bad ?? '—'} closed ${r.closed ?? '—'}  cpu proxy ${pct(r.proxyCpu)} backend ${pct(r.backendCpu)} gen ${pct(r.genCpuMax)} machine ${pct(r.machineCpu)}${r.ferry && (r.ferry.abnormalCloses || r.ferry.errors || r.ferry.upgradeFailures) ? `  ferry: ${JSON.stringify(r.ferry.closedBy)} errors ${r.ferry.errors} upgrade failures ${r.ferry.upgradeFailures}` : ''}${r.error ? `  ERROR ${r.error}` : ''}`)
      }
    }
  }
  timings.echo = (performance.now() - tEcho) / 1000

  // ---- topic fan-out ----
  const tFan = performance.now()
  const fanTargets = TARGETS.filter((t) => t.name === 'direct' || t.name === 'ferry-mux' || (prof.fanoutAll && t.name !== 'pushpin'))
  const fanRuns = []
  let runNo = 0
  for (let rep = 0; rep < prof.repeats; rep++) {
    for (const subs of prof.fanout) {
      for (const t of fanTargets.filter(usable)) {
        const run = ++runNo
        const topic = (i) => `bench-${run}-${i}`
        let r
        try {
          r = await measured(t, 'fanout', subs, { path: (i) => `${t.base}/fanout?topic=${topic(i)}`, ctlpath: (i) => `${t.base}/ctl?topic=${topic(i)}`, window: prof.fanoutWindow }, prof.seconds)
        } catch (err) { r = { error: err.message, failed: true, msgsPerSec: NaN } }
        fanRuns.push({ rep, subscribers: subs, target: t.name, ...r })
        log(`ws rep ${rep + 1}/${prof.repeats} fanout ${String(subs).padEnd(5)} ${t.name.padEnd(9)} ${fmt(r.msgsPerSec).padStart(8)} deliveries/s (${fmt(r.published)} published)  p50 ${fmt(r.p50ms, 2)} p99 ${fmt(r.p99ms, 2)} ms  lost ${r.lost ?? '—'} bad ${r.bad ?? '—'} reordered ${r.reordered ?? '—'}${r.stalled ? ' STALLED' : ''}  cpu proxy ${pct(r.proxyCpu)} backend ${pct(r.backendCpu)} gen ${pct(r.genCpuMax)}${r.ferry ? `  ferry: published ${r.ferry.published} fan-out deliveries ${r.ferry.fanoutDeliveries}` : ''}${r.error ? `  ERROR ${r.error}` : ''}`)
      }
    }
  }
  timings.fanout = (performance.now() - tFan) / 1000

  // Ferry's warnings over the section.
  let ferryWarnings = []
  for (const f of Object.values(FERRY)) {
    if (procs[f.proc] === undefined) continue
    ferryWarnings.push(...readFileSync(join(WORK, `${f.proc}.out`), 'utf8').split('\n').filter((l) => l.startsWith('{')).filter((l) => { try { return JSON.parse(l).level >= 40 } catch { return false } }).map((l) => `${f.proc}: ${l}`))
  }
  timings.total = (performance.now() - tSection) / 1000

  // ---- summaries ----
  const med = (xs) => { const s = xs.filter(Number.isFinite).sort((a, b) => a - b); const m = Math.floor(s.length / 2); return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2 }
  const mn = (xs) => { const f = xs.filter(Number.isFinite); return f.length ? Math.min(...f) : NaN }
  const mx = (xs) => { const f = xs.filter(Number.isFinite); return f.length ? Math.max(...f) : NaN }
  const summarize = (rs) => ({
    msgsPerSec: med(rs.map((r) => r.msgsPerSec)), min: mn(rs.map((r) => r.msgsPerSec)), max: mx(rs.map((r) => r.msgsPerSec)),
    p50ms: med(rs.map((r) => r.p50ms)), p99ms: med(rs.map((r) => r.p99ms)), p99Min: mn(rs.map((r) => r.p99ms)), p99Max: mx(rs.map((r) => r.p99ms)),
    lost: rs.reduce((a, r) => a + (r.lost ?? 0), 0), bad: rs.reduce((a, r) => a + (r.bad ?? 0), 0), reordered: rs.reduce((a, r) => a + (r.reordered ?? 0), 0), closed: rs.reduce((a, r) => a + (r.closed ?? 0), 0),
    failedRuns: rs.filter((r) => r.failed).length, errors: [...new Set(rs.map((r) => r.error).filter((e) => e))].slice(0, 3),
    proxyCpu: med(rs.map((r) => r.proxyCpu)), backendCpu: med(rs.map((r) => r.backendCpu)), genCpuMax: mx(rs.map((r) => r.genCpuMax)), machineCpu: med(rs.map((r) => r.machineCpu)),
    ferryAbnormalCloses: rs.reduce((a, r) => a + (r.ferry?.abnormalCloses ?? 0), 0), ferryErrors: rs.reduce((a, r) => a + (r.ferry?.errors ?? 0), 0),
    ferryUpgradeFailures: rs.reduce((a, r) => a + (r.ferry?.upgradeFailures ?? 0), 0), ferryCreditStalls: rs.reduce((a, r) => a + (r.ferry?.creditStalls ?? 0), 0),
  })
  const echoSummary = []
  for (const w of prof.echo) {
    const nginx = summarize(runs.filter((r) => r.workload === echoName(w) && r.target === 'nginx'))
    for (const t of TARGETS) {
      const rs = runs.filter((r) => r.workload === echoName(w) && r.target === t.name)
      if (rs.length === 0) { echoSummary.push({ workload: echoName(w), target: t.name, skipped: usable(t) && t.maxSessions !== undefined ? t.tooMany : targetState[t.name] }); continue }
      const s = { workload: echoName(w), sessions: w.sessions, inflight: w.inflight, target: t.name, ...summarize(rs) }
      s.vsNginx = s.msgsPerSec / nginx.msgsPerSec; s.p99VsNginx = s.p99ms / nginx.p99ms
      s.backendConnsPerSession = idle.find((x) => x.target === t.name)?.backendConns / prof.idleSessions
      echoSummary.push(s)
    }
  }
  const fanoutSummary = []
  for (const subs of prof.fanout) {
    for (const t of TARGETS) {
      const rs = fanRuns.filter((r) => r.subscribers === subs && r.target === t.name)
      if (rs.length === 0) {
        fanoutSummary.push({ subscribers: subs, target: t.name, skipped: !usable(t) ? targetState[t.name] : t.name === 'pushpin' ? 'n/a here: Pushpin fans out with GRIP publishing, not set up by this benchmark' : t.name === 'ferry-ws' ? 'n/a: passthrough relays what the backend sends (the backend sends one message per subscriber; measured with --full)' : 'n/a: no topic fan-out in the proxy (the backend would send one message per subscriber; measured with --full)' })
        continue
      }
      const s = { subscribers: subs, target: t.name, ...summarize(rs), published: med(rs.map((r) => r.published / prof.seconds)) }
      s.ferryPublished = rs.reduce((a, r) => a + (r.ferry?.published ?? 0), 0); s.ferryFanoutDeliveries = rs.reduce((a, r) => a + (r.ferry?.fanoutDeliveries ?? 0), 0)
      s.stalledRuns = rs.filter((r) => r.stalled).length
      fanoutSummary.push(s)
    }
  }

  // ---- checks ----
  for (const w of prof.echo) {
    const d = echoSummary.find((s) => s.workload === echoName(w) && s.target === 'direct')
    if (d === undefined || d.skipped) continue
    const proxied = echoSummary.filter((s) => s.workload === echoName(w) && s.target !== 'direct' && !s.skipped)
    const best = proxied.reduce((a, s) => (s.msgsPerSec > (a?.msgsPerSec ?? -1) ? s : a), undefined)
    // The generator is not the limit when none of its processes is near a full core against the direct
    // backend (the fastest target), and the direct rate is well above every proxied one.
    check(d.genCpuMax < 0.9, `${echoLabel(w)}: the generator is not CPU-bound (busiest of ${WSGEN_PROCS} wsgen processes: ${pct(d.genCpuMax)} of a core against the direct backend, whose one thread is at ${pct(d.backendCpu)})`, 'note')
    if (best) check(d.msgsPerSec >= 1.3 * best.msgsPerSec, `${echoLabel(w)}: the generator's ceiling (direct, ${fmt(d.msgsPerSec)} msgs/s) is ≥ 1.3× the fastest proxy (${TARGETS.find((t) => t.name === best.target).label}, ${fmt(best.msgsPerSec)}: ${fmt(d.msgsPerSec / best.msgsPerSec, 2)}×)`, 'note')
    const notBound = proxied.filter((s) => s.proxyCpu < 0.85).map((s) => `${TARGETS.find((t) => t.name === s.target).label} ${pct(s.proxyCpu)}`)
    check(notBound.length === 0, `${echoLabel(w)}: every proxy is the bottleneck of its runs (≥ 85% of its one core)${notBound.length ? `; not: ${notBound.join(', ')} (the machine's 2 cores are shared with the backend and the generator)` : ''}`, 'note')
    const bad = echoSummary.filter((s) => s.workload === echoName(w) && !s.skipped && (s.lost + s.bad + s.closed + s.failedRuns > 0))
    check(bad.length === 0, `${echoLabel(w)}: every message echoed, intact and in order; no session closed${bad.length ? ` (${bad.map((s) => `${TARGETS.find((t) => t.name === s.target).label}: lost ${s.lost}, wrong ${s.bad}, closed ${s.closed}, failed runs ${s.failedRuns}${s.errors.length ? ` (${s.errors.join('; ')})` : ''}`).join('; ')})` : ''}`)
  }
  for (const s of fanoutSummary.filter((x) => !x.skipped)) {
    const ok = s.lost + s.bad + s.failedRuns + s.stalledRuns === 0
    check(ok, `fan-out ${s.subscribers} subscribers, ${TARGETS.find((t) => t.name === s.target).label}: every topic message reached every subscriber, intact (lost ${s.lost}, wrong ${s.bad}, stalled runs ${s.stalledRuns}, failed runs ${s.failedRuns}${s.errors.length ? `: ${s.errors.join('; ')}` : ''})`)
    const delivered = fanRuns.filter((r) => r.subscribers === s.subscribers && r.target === s.target).reduce((a, r) => a + (r.received ?? 0), 0)
    check(s.reordered === 0, `fan-out ${s.subscribers} subscribers, ${TARGETS.find((t) => t.name === s.target).label}: each subscriber got the topic messages in publish order (${s.reordered} deliveries arrived after a later message${s.reordered > 0 ? `, ${fmt(100 * s.reordered / Math.max(1, delivered), 1)}% of those in the measured windows` : ''})`)
    if (s.target === 'ferry-mux' && s.ferryPublished > 0) {
      // Each wsgen process has its own topic with its share of the subscribers, spread over the links;
      // the backend sends one PUBLISH per link with subscribers, so a frame reaches a link's share.
      const per = s.ferryFanoutDeliveries / s.ferryPublished
      const want = s.subscribers / WSGEN_PROCS
      check(per >= want / MUX_LINKS - 1, `fan-out ${s.subscribers} subscribers, Ferry mux: Ferry's metrics count ${fmt(per, 1)} deliveries per PUBLISH frame (${s.ferryPublished} frames; ${fmt(want)} subscribers per topic over ${MUX_LINKS} links: one frame per link, not per subscriber)`)
    }
  }
  for (const r of idle.filter((x) => !x.skipped)) {
    const t = TARGETS.find((x) => x.name === r.target)
    check(r.opened === r.sessions && r.echoOk === r.opened && !r.echoBad && !r.error, `idle ${r.sessions} sessions, ${t.label}: ${r.opened ?? 0} opened in ${fmt(r.openSeconds, 1)} s, ${r.echoOk ?? 0} answered an echo${r.error ? ` (${r.error})` : ''}`)
    check(r.backendConnsAfterClose !== undefined && r.backendConnsAfterClose <= r.backendConnsBefore, `idle ${r.sessions} sessions, ${t.label}: backend connections back to ${r.backendConnsAfterClose ?? '?'} (${r.backendConnsBefore} before) ${fmt(r.releaseSeconds, 1)} s after the clients closed`)
  }
  const ferryRuns = [...runs, ...fanRuns].filter((r) => r.ferry !== undefined)
  if (ferryRuns.length > 0) {
    const closedBy = {}
    for (const r of ferryRuns) for (const [k, v] of Object.entries(r.ferry.closedBy)) closedBy[k] = (closedBy[k] ?? 0) + v
    const abnormal = Object.entries(closedBy).filter(([k]) => k !== 'client')
    const errs = ferryRuns.reduce((a, r) => a + r.ferry.errors, 0); const ups = ferryRuns.reduce((a, r) => a + r.ferry.upgradeFailures, 0); const proto = ferryRuns.reduce((a, r) => a + r.ferry.protocolErrors, 0)
    const opened = ferryRuns.reduce((a, r) => a + r.ferry.sessionsOpened, 0)
    const clientClosed = closedBy.client ?? 0
    check(abnormal.length === 0 && errs === 0 && ups === 0 && proto === 0 && clientClosed === opened, `Ferry's own metrics over the measured WS runs: ${opened} sessions opened, closed by ${JSON.stringify(closedBy)} (all by the client expected), ${errs} Ferry errors, ${ups} upgrade failures, ${proto} mux protocol errors`)
  }
  if (procs['ferry-ws'] !== undefined || procs['ferry-mux'] !== undefined) {
    const kinds = {}
    for (const l of ferryWarnings) { let k = 'unparsable'; try { const i = l.indexOf(': '); const j = JSON.parse(l.slice(i + 2)); k = `${l.slice(0, i)} ${j.code ?? j.msg}` } catch {} kinds[k] = (kinds[k] ?? 0) + 1 }
    check(ferryWarnings.length === 0, `WS Ferrys' warning logs: ${ferryWarnings.length === 0 ? 'empty' : Object.entries(kinds).map(([k, n]) => `${n} × ${k}`).join(', ')}`)
  }
  for (const [n, why] of Object.entries(skipped)) checks.push({ level: why.startsWith('failed') ? 'WARN' : 'note', text: `WS ${TARGETS.find((t) => t.name === n).label}: ${why}` })

  return {
    profile: prof, msgBytes: MSG_BYTES, generatorProcs: WSGEN_PROCS, muxLinks: MUX_LINKS, targets: TARGETS.map(({ name, label }) => ({ name, label, state: targetState[name] })),
    echoSummary, fanoutSummary, idle, runs, fanRuns, checks, timings, ferryWarnings: ferryWarnings.slice(0, 50), ferryWarningCount: ferryWarnings.length,
  }
}
const fmt = (n, d = 0) => Number.isFinite(n) ? n.toFixed(d) : '—'
const pct = (x) => Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : '—'

// ---- markdown ----

export function wsMarkdown (ws) {
  const T = (n) => ws.targets.find((t) => t.name === n).label
  const p = ws.profile
  const lines = [
    '',
    `## WebSocket`,
    '',
    `Echo: each session keeps 1 (ping-pong) or ${p.echo.find((w) => w.inflight > 1)?.inflight ?? 8} (pipelined) ${ws.msgBytes}-byte text messages in flight; ${p.repeats} interleaved repeats × ${p.seconds} s per target and workload after a ${p.warmupSeconds} s warm-up; load from ${ws.generatorProcs} wsgen processes (C, epoll; native-bench/lib/wsgen.c) that check every echo byte for byte and in order.`,
    `Backends: one uWebSockets.js echo process (direct, nginx, HAProxy, Ferry passthrough) and one \`ferry/backend\` echo process (Ferry mux, ${ws.muxLinks} links). Proxies: one worker/thread each. msgs/s = echoes received per second (median, min–max); latency = round trip, median of the per-run percentiles.`,
    '',
    '| workload | target | msgs/s | vs nginx | p50 ms | p99 ms | p99 vs nginx | backend TCP conns per session | lost / wrong / closed | CPU proxy / backend / busiest generator / machine |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...ws.echoSummary.map((s) => {
      const w = p.echo.find((x) => echoName(x) === s.workload)
      if (s.skipped) return `| ${echoLabel(w)} | ${T(s.target)} | ${s.skipped} | | | | | | | |`
      return `| ${echoLabel(w)} | ${T(s.target)} | ${fmt(s.msgsPerSec)} (${fmt(s.min)}–${fmt(s.max)}) | ${fmt(s.vsNginx, 2)} | ${fmt(s.p50ms, 2)} | ${fmt(s.p99ms, 2)} (${fmt(s.p99Min, 2)}–${fmt(s.p99Max, 2)}) | ${fmt(s.p99VsNginx, 2)} | ${fmt(s.backendConnsPerSession, 4)} | ${s.lost} / ${s.bad} / ${s.closed}${s.failedRuns ? ` (${s.failedRuns} runs failed)` : ''} | ${s.target === 'direct' ? '—' : pct(s.proxyCpu)} / ${pct(s.backendCpu)} / ${pct(s.genCpuMax)} / ${pct(s.machineCpu)} |`
    }),
    '',
    `Idle sessions: ${p.idleSessions.toLocaleString('en-US')} sessions${p.idleSessions < 10000 ? ` (not 10,000: the hard limit on open files here is ${p.nofile.toLocaleString('en-US')}, cannot be raised without CAP_SYS_RESOURCE, and a passthrough proxy needs two descriptors per session)` : ''} opened (256 handshakes at a time), each checked with one echo, held 1 s, then closed. KiB/session = (RSS with the sessions open − RSS before) ÷ sessions; backend TCP connections = ESTABLISHED connections to the backend's port while they are open (from /proc/net/tcp).`,
    '',
    '| target | sessions open | opened in s | proxy RSS before → after MiB | proxy KiB/session | backend KiB/session | backend TCP connections held | backend connections after close |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...ws.idle.map((r) => r.skipped
      ? `| ${T(r.target)} | ${r.skipped} | | | | | | |`
      : `| ${T(r.target)} | ${r.opened ?? 0}${r.error ? ` (${r.error})` : ''} | ${fmt(r.openSeconds, 2)} | ${r.target === 'direct' ? '—' : `${fmt(r.proxyRssBeforeKiB / 1024, 1)} → ${fmt(r.proxyRssAfterKiB / 1024, 1)}`} | ${r.target === 'direct' ? '—' : fmt(r.proxyKiBPerSession, 2)} | ${fmt(r.backendKiBPerSession, 2)} | ${r.backendConns ?? '—'} | ${r.backendConnsAfterClose ?? '—'} |`),
    '',
    `Topic fan-out: N subscribers (split over ${ws.generatorProcs} wsgen processes, one topic each); a control session per process asks the backend to publish, keeping ${p.fanoutWindow} topic messages in flight (a new one when the oldest reached every subscriber). Ferry mux: the backend calls \`server.publish(topic, data)\` once per message and Ferry fans it out with uWS pub/sub. Direct: the uWS backend's own \`app.publish\` (the ceiling). Latency: publish request sent → delivery, per subscriber.`,
    '',
    '| subscribers | target | deliveries/s | topic messages/s | p50 ms | p99 ms | lost / wrong / out of order | CPU proxy / backend / busiest generator |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...ws.fanoutSummary.map((s) => s.skipped
      ? `| ${s.subscribers.toLocaleString('en-US')} | ${T(s.target)} | ${s.skipped} | | | | | |`
      : `| ${s.subscribers.toLocaleString('en-US')} | ${T(s.target)} | ${fmt(s.msgsPerSec)} (${fmt(s.min)}–${fmt(s.max)}) | ${fmt(s.published)} | ${fmt(s.p50ms, 2)} | ${fmt(s.p99ms, 2)} | ${s.lost} / ${s.bad} / ${s.reordered}${s.stalledRuns ? ` (${s.stalledRuns} stalled)` : ''} | ${s.target === 'direct' ? '—' : pct(s.proxyCpu)} / ${pct(s.backendCpu)} / ${pct(s.genCpuMax)} |`),
  ]
  return lines
}
