#!/usr/bin/env node
// native-bench/backend-rollout.mjs: a rollout of the BACKENDS under a live fleet (issue 19, item 6). Ferry
// pods stay up; each v1 backend in turn is replaced by a v2 process, drained (SIGTERM → `server.drain()`)
// or, once, killed (SIGKILL). Three runs of the same fleet and the same steps, one chart:
//
//   handoff      2 Ferry pods, `protocol: mux` upstream to `ferry/backend` processes (lib/rollout-backend.mjs
//                mux); the v2 process starts first (a deploy's surge), registers in Ferry's Redis registry
//                (the gateways learn its new port from its registration: no port reserved in advance, and
//                `drain()` leaves the registry before it moves anyone), then the v1 one is drained (its
//                sessions handed over, paced, with their state) or killed (crash failover: reopened
//                elsewhere without state). Plain WebSocket sessions and `ferry/client` sessions.
//   passthrough  2 Ferry pods, `protocol: ws` to plain WebSocket backends (lib/rollout-backend.mjs ws),
//                static endpoints; a step stops the process (SIGTERM: it closes its sessions 1001; or
//                SIGKILL) and starts v2 on the same port. Plain sessions only.
//   nginx        one nginx (1 worker) proxying WebSocket to the same plain backends, same steps.
//
//   node native-bench/backend-rollout.mjs [--quick] [--plain N] [--ferry N] [--steps drain,kill] [--targets handoff,passthrough,nginx] …
//                                          (--help lists every option; each also reads ROLLOUT_<NAME>)
//
// The fleet (the bench process itself): P plain WebSocket sessions (reconnect by themselves when closed)
// and F ferry/client sessions (handoff run only), spread over the front ends (half per pod), each in a
// room; every session sends "c:<k>" every sendEveryMs and checks the echo "e:<k>:<n>:<backend>": an
// echo never seen is lost, one seen twice duplicated, one after a later one reordered, and n ≠ k means the
// session's state (n, counted by the backend and carried by the handoff hook) did not survive. Backends
// publish to every room every topicEveryMs, and a final marker at the end. Loopback only.
//
// Every event is put in the window of a step: from 2 s before its signal to 2 s before the next step's
// (a message sent just before a kill and lost belongs to the kill). Writes
// results/backend-rollout.{md,json,svg} (the chart: client WebSocket disconnects per second, all runs).
// Exits 1 when the handoff run breaks: plain clients disconnected by a drain 0; plain messages lost,
// duplicated or reordered in drain windows 0; plain sessions whose state broke in a drain window 0.
// Also for ferry/client sessions (handed over with their resume state): a drain disconnects none, resets
// none, and loses, duplicates or reorders none of their messages. A kill takes their state with it:
// those closes and resets are reported, never asserted.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { spawnSync } from 'node:child_process'
import { ask, bins, bound, fmt, freePort, killAll, machineInfo, metricSum, optionParser, percentile, recordedOptions, REDIS_SERVER, scrapeMetrics, sleep, slidingPeak, spawnChild, startFerry, startRedis, scriptMain, waitFor, writeResults } from './lib/harness.mjs'
import { lineChart } from './lib/svg.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const ROOT = join(HERE, '..')
const SECRET = 'native-bench-backend-rollout-secret-0123456789'
const NGINX = process.env.NGINX ?? 'nginx'
/** A message lost, duplicated or reordered (or a close) this long before a step's signal is the step's. */
const LEAD_MS = 2000

export const DEFAULTS = {
  plain: 2000, // plain WebSocket sessions (every run)
  ferry: 500, // ferry/client sessions (handoff run)
  pods: 2, // Ferry pods (handoff and passthrough runs); clients connect to them directly, evenly
  steps: 'drain,kill', // one per v1 backend, in order: drain (SIGTERM) or kill (SIGKILL)
  targets: 'handoff,passthrough,nginx',
  sendEveryMs: 1000, // each session sends a numbered message this often
  topicEveryMs: 2000, // each backend publishes to each room this often
  rooms: 20,
  maxMigrationsPerSec: 200, // server.drain({ maxMigrationsPerSec }) of each draining backend: the drain budget
  drainDeadlineMs: 30000, // server.drain({ deadlineMs })
  handoffMaxPerSec: 200, // each pod's upstreams.chat.handoff.maxPerSec (handoffs and crash failovers)
  registryTtlMs: 3000, // the backends' registration TTL (a killed one leaves the registry after it)
  stepEveryMs: 15000, // a step's signal comes this long after the previous one's (later if that one is not done)
  baselineMs: 3000, // traffic before the first step
  settleMs: 3000, // traffic after the last step, before the tally
  rampPerSec: 500, // how fast the fleet connects at the start
  plainMaxDelayMs: 500, // a closed plain session reconnects after 50 ms + a random part up to this
  clientMinDelayMs: 200, // ferry/client reconnect backoff
  clientMaxDelayMs: 5000,
  timeoutMs: 300_000, // hard bound of one run
  outDir: join(HERE, 'results'),
  workDir: join(HERE, '.work'),
  write: true,
}
const QUICK = { plain: 300, ferry: 60, stepEveryMs: 8000, baselineMs: 2000, settleMs: 2000 }

/** Options from argv (and ROLLOUT_<NAME> env vars), over DEFAULTS. */
export const parseArgs = optionParser(DEFAULTS, QUICK, 'ROLLOUT')

const TARGETS = {
  handoff: { label: 'Ferry mux, handoff', color: '#1f77b4' },
  passthrough: { label: 'Ferry passthrough (ws)', color: '#ff7f0e' },
  nginx: { label: 'nginx', color: '#2ca02c' },
}

function parseSteps (s) {
  const steps = String(s).split(',').map((x) => x.trim()).filter((x) => x !== '')
  if (steps.length === 0 || steps.some((x) => x !== 'drain' && x !== 'kill')) throw new Error(`--steps: a comma-separated list of drain and kill, not ${s}`)
  return steps
}

function parseTargets (s) {
  const targets = String(s).split(',').map((x) => x.trim()).filter((x) => x !== '')
  for (const t of targets) if (TARGETS[t] === undefined) throw new Error(`--targets: unknown target ${t} (handoff, passthrough, nginx)`)
  if (targets.length === 0) throw new Error('--targets: none given')
  return targets
}

// ---- processes ------------------------------------------------------------------------------------
async function startBackend (res, mode, name, opts) {
  const child = spawnChild(res, process.execPath, [join(HERE, 'lib/rollout-backend.mjs'), mode, name, JSON.stringify(opts)], { ipc: true })
  const b = { name, mode, child, port: 0, drained: undefined }
  child.on('message', (m) => { if (m?.type === 'drained') b.drained = m })
  b.port = (await ask(child, undefined, 'listening', 15_000)).port
  return b
}

function podConfig (id, target, env, o) {
  const chat = target === 'handoff'
    ? { protocol: 'mux', registry: { redis: env.redis.url, service: 'chat', scanIntervalMs: 1000 }, pool: { links: 2 }, reconnect: { minDelayMs: 50, maxDelayMs: 500 }, handoff: { maxPerSec: o.handoffMaxPerSec } }
    : { protocol: 'ws', endpoints: env.backends.map((b) => `127.0.0.1:${b.port}`) }
  return {
    // One process per pod (the default, auto, forks a worker per core; the pods share this machine's).
    gateway: { id, workers: 1 },
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
    upstreams: { chat },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    // Capacity, not policy: nginx has no admission control either (lib/ws.js does the same).
    admission: { handshakesPerSec: 0 },
    logging: { accessLog: false, pretty: false },
  }
}

async function startNginx (res, env) {
  const port = await freePort()
  const w = res.workDir
  const file = join(w, 'rollout-nginx.conf')
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${w}/rollout-nginx-${t};`).join(' ')
  // master_process off: one process, so stopping it by PID stops all of nginx.
  // max_fails=0: with the default (max_fails=1 fail_timeout=10s) a server that refused one connect gets
  // one trial connection per 10 s, and stays "failed" until that connection ends: a WebSocket one lasts.
  // Once both backends had restarted, nginx answered 502 "no live upstreams" to nearly every reconnect
  // for over a minute (measured). max_fails=0 keeps each connect tried, and a refused one goes to the
  // next server (proxy_next_upstream error), which is how nginx is set up for WebSocket backends.
  writeFileSync(file, `worker_processes 1;
daemon off;
master_process off;
error_log ${w}/rollout-nginx-error.log warn;
pid ${w}/rollout-nginx.pid;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off; ${temp}
  upstream chat { ${env.backends.map((b) => `server 127.0.0.1:${b.port} max_fails=0;`).join(' ')} }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / {
      proxy_pass http://chat;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
    }
  }
}
`)
  const child = spawnChild(res, NGINX, ['-p', w, '-c', file])
  await waitFor('nginx listening', () => {
    if (child.exitInfo !== undefined) throw new Error(`nginx exited: ${child.stderrTail.lines.join(' | ')}`)
    return new Promise((resolve) => { const s = connect(port, '127.0.0.1'); s.once('connect', () => { s.destroy(); resolve(true) }); s.once('error', () => resolve(false)) })
  }, 10_000, res, 50)
  return { id: 'nginx', http: port, child }
}

/** Every link of `address` in the pod's chat upstream is ready. */
async function linked (pod, address) {
  try {
    const st = await (await fetch(`http://127.0.0.1:${pod.admin}/status`, { signal: AbortSignal.timeout(2000) })).json()
    const ep = st.upstreams.find((u) => u.name === 'chat')?.endpoints.find((e) => e.address === address && e.state === 'active')
    return ep !== undefined && ep.links.length > 0 && ep.links.every((l) => l.state === 'ready')
  } catch { return false }
}

/** What a pod's /metrics says about handoffs: outcomes, the latency histogram (cumulative by le), waiting. */
function handoffMetrics (m) {
  const out = { moved: 0, lost_moved: 0, failed: 0, client_gone: 0, waiting: metricSum(m, 'ferry_mux_handoffs_waiting'), buckets: {} }
  for (const k of ['moved', 'lost_moved', 'failed', 'client_gone']) out[k] = metricSum(m, 'ferry_mux_handoffs_total', `outcome="${k}"`)
  for (const [k, v] of Object.entries(m)) {
    if (!k.startsWith('ferry_mux_handoff_seconds_bucket{')) continue
    const le = /le="([^"]+)"/.exec(k)?.[1]
    if (le !== undefined) out.buckets[le] = (out.buckets[le] ?? 0) + v
  }
  return out
}

/** p-th percentile (0–100) of a cumulative histogram difference, as its bucket's upper bound in ms ("≤"). */
function histPercentile (before, after, p) {
  const les = Object.keys(after).sort((a, b) => (a === '+Inf' ? Infinity : Number(a)) - (b === '+Inf' ? Infinity : Number(b)))
  const total = (after['+Inf'] ?? 0) - (before['+Inf'] ?? 0)
  if (total <= 0) return null
  for (const le of les) {
    if ((after[le] ?? 0) - (before[le] ?? 0) >= Math.ceil(total * p / 100)) return le === '+Inf' ? Infinity : Number(le) * 1000
  }
  return Infinity
}

// ---- one run --------------------------------------------------------------------------------------
/**
 * One complete run against `target` ('handoff', 'passthrough' or 'nginx'): starts everything, rolls every
 * backend, tallies, and stops everything it started (also on failure).
 */
export async function scenario (target, opts = {}, log = () => {}) {
  const o = { ...DEFAULTS, ...opts }
  const steps = parseSteps(o.steps)
  const withFerry = target === 'handoff' ? o.ferry : 0
  const { FerryClient } = await import(pathToFileURL(join(ROOT, 'dist/client/index.js')).href)
  const { default: WebSocket } = await import(pathToFileURL(join(ROOT, 'node_modules/ws/wrapper.mjs')).href)
  mkdirSync(o.workDir, { recursive: true })
  const res = { children: new Set(), timers: new Set(), deadline: Date.now() + o.timeoutMs, workDir: o.workDir }
  const every = (ms, fn) => { const t = setInterval(fn, ms); res.timers.add(t); return t }
  const fleet = { plain: [], ferry: [], stopping: false }
  const startedAt = Date.now()
  const events = []
  const ev = (what, extra = {}) => { events.push({ t: Date.now(), what, ...extra }); log(`${target}: ${what}${extra.backend !== undefined ? ` ${extra.backend}` : ''}`) }
  // What the fleet saw, with the time of each (attributed to step windows at the tally).
  const seen = { plainCloses: [], ferryCloses: [], ferryResets: [], lost: { p: [], f: [] }, dup: { p: [], f: [] }, reordered: { p: [], f: [] }, stateBreaks: { p: [], f: [] }, rtt: { p: [], f: [] }, handshakeFailures: 0, errors: {} }
  try {
    // -- infrastructure
    const env = { backends: [], pods: [], fronts: [], retired: [] }
    const slot = (i) => String.fromCharCode(97 + i)
    const muxOpts = () => ({ redis: env.redis.url, service: 'chat', ttlMs: o.registryTtlMs, topicEveryMs: o.topicEveryMs, drain: { maxMigrationsPerSec: o.maxMigrationsPerSec, deadlineMs: o.drainDeadlineMs } })
    if (target === 'handoff') {
      env.redis = await startRedis(res)
      for (let i = 0; i < steps.length; i++) env.backends.push(await startBackend(res, 'mux', `v1-${slot(i)}`, muxOpts()))
    } else {
      for (let i = 0; i < steps.length; i++) env.backends.push(await startBackend(res, 'ws', `v1-${slot(i)}`, { port: await freePort(), topicEveryMs: o.topicEveryMs }))
    }
    if (target === 'nginx') env.fronts.push(await startNginx(res, env))
    else {
      for (let i = 0; i < o.pods; i++) {
        const id = `pod-${slot(i)}`
        const file = join(o.workDir, `rollout-${target}-${id}.json`)
        writeFileSync(file, JSON.stringify(podConfig(id, target, env, o), null, 2) + '\n')
        env.pods.push(await startFerry(res, id, file, { FERRY_RESUME_SECRET: SECRET }))
      }
      env.fronts = env.pods
    }
    const allLinked = async (b) => (await Promise.all(env.pods.map((p) => linked(p, `127.0.0.1:${b.port}`)))).every(Boolean)
    if (target !== 'nginx') {
      for (const b of env.backends) await waitFor(`every pod linked to ${b.name}`, () => target === 'handoff' ? allLinked(b) : true, 15_000, res, 100)
    }

    // -- handoff metrics of every pod: sampled, and snapped around each step
    const samples = []
    const snap = async () => await Promise.all(env.pods.map(async (p) => ({ t: Date.now(), pod: p.id, ...handoffMetrics(await scrapeMetrics(p.admin)) })))
    if (target === 'handoff') {
      every(500, () => {
        for (const p of env.pods) scrapeMetrics(p.admin).then((m) => { samples.push({ t: Date.now(), pod: p.id, ...handoffMetrics(m) }) }, () => {})
      })
    }

    // -- the fleet
    const front = (i) => env.fronts[i % env.fronts.length].http
    const url = (kind, i) => `ws://127.0.0.1:${front(i)}/chat?kind=${kind}&cid=${kind}${i}&room=r${i % o.rooms}`
    const rec = (i, kind) => ({ i, kind, sent: 0, out: new Map(), maxEcho: 0, lastB: '', backends: 0, stateOk: true, topic: 0, marker: false })
    /** An echo "e:<k>:<n>:<backend>" or a topic message "t:<room>:<backend>:<seq|end>". */
    const onText = (r, text) => {
      const now = Date.now()
      if (text.startsWith('t:')) { r.topic++; if (text.endsWith(':end')) r.marker = true; return }
      if (!text.startsWith('e:')) return
      const [, ks, ns, b] = text.split(':')
      const k = Number(ks)
      const sentAt = r.out.get(k)
      if (sentAt === undefined) { seen.dup[r.kind].push(now); return }
      r.out.delete(k)
      if (k < r.maxEcho) seen.reordered[r.kind].push(now)
      else r.maxEcho = k
      seen.rtt[r.kind].push([now, now - sentAt])
      if (b !== r.lastB) { r.backends++; r.lastB = b }
      const ok = Number(ns) === k
      if (r.stateOk && !ok) seen.stateBreaks[r.kind].push(now)
      r.stateOk = ok
    }
    const openPlain = (i) => {
      const r = { ...rec(i, 'p'), ws: undefined, up: false, opens: 0 }
      const dial = () => {
        if (fleet.stopping) return
        const ws = new WebSocket(url('p', i), { perMessageDeflate: false })
        r.ws = ws
        ws.on('open', () => { r.up = true; r.opens++ })
        ws.on('message', (d) => { onText(r, d.toString()) })
        ws.on('error', (err) => { const k = String(err.message).slice(0, 60); seen.errors[k] = (seen.errors[k] ?? 0) + 1 })
        ws.on('close', (code) => {
          const wasUp = r.up
          r.up = false
          if (fleet.stopping) return
          if (wasUp) {
            seen.plainCloses.push({ t: Date.now(), code })
            // What had not come back on this connection never will.
            for (const sentAt of r.out.values()) seen.lost.p.push(sentAt)
            r.out.clear()
          } else seen.handshakeFailures++
          const t = setTimeout(() => { res.timers.delete(t); dial() }, 50 + Math.random() * o.plainMaxDelayMs)
          res.timers.add(t)
        })
      }
      dial()
      fleet.plain.push(r)
    }
    const openFerry = (i) => {
      const r = { ...rec(i, 'f'), attempts: 0, opens: 0, resumed: 0, fresh: 0, resets: 0, unsent: 0, terminal: 0 }
      // Counts every connection the client opens, and each one that closes after it opened.
      function Ctor (u, protocols) {
        r.attempts++
        const ws = new WebSocket(u, protocols, { perMessageDeflate: false })
        let opened = false
        ws.on('open', () => { opened = true })
        ws.on('close', (code) => { if (opened && !fleet.stopping) seen.ferryCloses.push({ t: Date.now(), code }) })
        return ws
      }
      r.c = new FerryClient(url('f', i), { WebSocket: Ctor, reconnect: { minDelayMs: o.clientMinDelayMs, maxDelayMs: o.clientMaxDelayMs } })
      r.c.on('open', ({ resumed }) => { r.opens++; if (resumed) r.resumed++; else if (r.opens > 1) r.fresh++ })
      // A refused resume: the application sends what never reached the old session again (same numbers).
      r.c.on('reset', ({ unsent }) => { r.resets++; seen.ferryResets.push(Date.now()); r.unsent += unsent.length; for (const m of unsent) r.c.send(m) })
      r.c.on('close', () => { r.terminal++ })
      r.c.on('error', () => {})
      r.c.on('message', (d) => { onText(r, typeof d === 'string' ? d : Buffer.from(d).toString()) })
      fleet.ferry.push(r)
    }
    const rampStart = Date.now()
    const total = o.plain + withFerry
    const perTick = Math.max(1, Math.round(o.rampPerSec / 20))
    for (let made = 0; made < total; made += perTick) {
      for (let k = made; k < Math.min(total, made + perTick); k++) {
        const f = Math.floor((k + 1) * withFerry / total) - Math.floor(k * withFerry / total)
        if (f === 1) openFerry(fleet.ferry.length)
        else openPlain(fleet.plain.length)
      }
      await sleep(50)
    }
    const fleetUp = () => fleet.plain.every((r) => r.up) && fleet.ferry.every((r) => r.c.state === 'open')
    await waitFor(`${o.plain} plain + ${withFerry} ferry/client sessions open`, fleetUp, 60_000, res)
    const rampMs = Date.now() - rampStart
    log(`${target}: fleet up: ${o.plain} plain + ${withFerry} ferry/client sessions in ${rampMs} ms`)

    // -- traffic: a numbered message from every session every sendEveryMs, spread over 100 ms slices
    const slices = Math.max(1, Math.round(o.sendEveryMs / 100))
    let tick = 0
    const traffic = every(100, () => {
      const s = tick++ % slices
      const now = Date.now()
      for (let i = s; i < fleet.plain.length; i += slices) {
        const r = fleet.plain[i]
        if (!r.up) continue
        const k = ++r.sent
        r.out.set(k, now)
        r.ws.send(`c:${k}`)
      }
      for (let i = s; i < fleet.ferry.length; i += slices) {
        const r = fleet.ferry[i]
        if (r.c.state === 'closed') continue
        const k = ++r.sent
        r.out.set(k, now)
        r.c.send(`c:${k}`)
      }
    })
    const baselineAt = Date.now()
    await sleep(o.baselineMs)

    // -- the rollout
    const reports = async (list) => await Promise.all(list.filter((b) => b.child.exitInfo === undefined).map((b) => ask(b.child, { cmd: 'report' }, 'report').catch(() => undefined)))
    let where = ''
    const settled = async () => {
      const reps = (await reports(env.backends)).filter((x) => x !== undefined)
      const p = reps.reduce((n, x) => n + x.sessions.p, 0)
      const f = reps.reduce((n, x) => n + x.sessions.f, 0)
      where = `clients: ${fleet.plain.filter((r) => r.up).length} plain up, ${fleet.ferry.filter((r) => r.c.state === 'open').length} ferry/client open; backends: ${reps.map((x) => `${x.name} ${x.sessions.p} plain + ${x.sessions.f} ferry/client`).join(', ')}`
      return fleetUp() && p === o.plain && f >= withFerry
    }
    // Starting a v2 mux backend and seeing every pod link to it takes a moment before the first signal.
    const t0 = Date.now() + (target === 'handoff' ? 2000 : 0)
    const stepRows = []
    for (let i = 0; i < steps.length; i++) {
      const kind = steps[i]
      const old = env.backends[i]
      const v2name = `v2-${slot(i)}`
      let v2
      if (target === 'handoff') {
        v2 = await startBackend(res, 'mux', v2name, muxOpts())
        await waitFor(`every pod linked to ${v2name}`, () => allLinked(v2), 15_000, res, 100)
        ev('v2 ready', { backend: v2name })
      }
      await sleep(Math.max(0, t0 + i * o.stepEveryMs - Date.now()))
      const before = target === 'handoff' ? await snap() : undefined
      // A killed process reports nothing: what it counted so far (sessions that arrived there) is asked first.
      if (kind === 'kill') old.lastReport = await ask(old.child, { cmd: 'report' }, 'report').catch(() => undefined)
      const step = { i, kind, backend: old.name, replacement: v2name, startAt: Date.now() }
      ev(kind === 'drain' ? 'SIGTERM' : 'SIGKILL', { backend: old.name, kind })
      old.child.kill(kind === 'drain' ? 'SIGTERM' : 'SIGKILL')
      const x = await Promise.race([old.child.exited, bound(o.drainDeadlineMs + 15_000).then(() => undefined)])
      if (x === undefined) throw new Error(`${old.name} did not exit after ${kind === 'drain' ? 'SIGTERM' : 'SIGKILL'}`)
      // Its report was sent before it exited; the IPC message may still be on its way.
      if (kind === 'drain') await waitFor(`${old.name}'s drain report`, () => old.drained !== undefined, 2000, res, 20).catch(() => {})
      Object.assign(step, { exitAt: x.at, exitCode: x.code, signal: x.signal, drained: old.drained })
      ev(`exited ${x.code ?? x.signal}`, { backend: old.name })
      env.retired.push(old)
      if (target !== 'handoff') {
        // A plain backend restarts on its port (nginx and the passthrough pods list it statically).
        v2 = await startBackend(res, 'ws', v2name, { port: old.port, topicEveryMs: o.topicEveryMs })
        ev('v2 listening', { backend: v2name })
      }
      env.backends[i] = v2
      await waitFor(`every session back on a live backend after ${old.name}`, settled, 60_000, res, 250).catch((err) => { throw new Error(`${err.message} (${where})`) })
      step.doneAt = Date.now()
      ev('settled', { backend: old.name })
      if (target === 'handoff') { step.metricsBefore = before; step.metricsAfter = await snap() }
      stepRows.push(step)
    }
    const rolloutEnd = Date.now()
    await sleep(o.settleMs)

    // -- tally: stop sending, let every echo arrive, then the end-of-run topic marker
    clearInterval(traffic)
    res.timers.delete(traffic)
    const pending = () => fleet.plain.reduce((n, r) => n + r.out.size, 0) + fleet.ferry.reduce((n, r) => n + r.out.size, 0)
    await waitFor('every echo back', () => pending() === 0, 5000, res, 100).catch(() => log(`${target}: ${pending()} echoes never came (counted as lost)`))
    const finalReports = (await reports(env.backends)).filter((x) => x !== undefined)
    // Every backend's last word: the live ones now, the drained ones at their exit, the killed ones just before.
    const allReports = [...finalReports, ...env.retired.map((b) => b.drained?.report ?? b.lastReport).filter((x) => x !== undefined)]
    for (const b of env.backends) await ask(b.child, { cmd: 'marker' }, 'marker').catch(() => {})
    await waitFor('the final topic message at every session', () => fleet.plain.every((r) => r.marker) && fleet.ferry.every((r) => r.marker), 3000, res, 100).catch(() => {})
    const tallyAt = Date.now()
    for (const r of [...fleet.plain, ...fleet.ferry]) for (const sentAt of r.out.values()) seen.lost[r.kind].push(sentAt)

    // -- attribution: each time to the window of a step (from LEAD_MS before its signal to LEAD_MS before the next's)
    const windowOf = (t) => {
      let w = -1
      for (const s of stepRows) if (t >= s.startAt - LEAD_MS) w = s.i
      return w
    }
    const inStep = (times, i) => times.filter((t) => windowOf(t) === i).length
    const byKind = (times, kind) => stepRows.filter((s) => s.kind === kind).reduce((n, s) => n + inStep(times, s.i), 0)
    const closesT = (list) => list.map((c) => c.t)
    const codesOf = (list, i) => list.filter((c) => windowOf(c.t) === i).reduce((acc, c) => { acc[c.code] = (acc[c.code] ?? 0) + 1; return acc }, {})
    const rttIn = (pairs, from, to) => pairs.filter(([t]) => t >= from && t < to).map(([, ms]) => ms)
    const baselineRtt = rttIn(seen.rtt.p, baselineAt, stepRows[0].startAt)
    const ms = (v) => Number.isFinite(v) ? Math.round(v * 10) / 10 : null

    const stepsOut = stepRows.map((s) => {
      const row = {
        i: s.i, kind: s.kind, backend: s.backend, replacement: s.replacement,
        at: s.startAt - t0, exitMs: s.exitAt - s.startAt, settledMs: s.doneAt - s.startAt, exitCode: s.exitCode, signal: s.signal,
        drain: s.drained?.result,
        plainCloses: inStep(closesT(seen.plainCloses), s.i), plainCloseCodes: codesOf(seen.plainCloses, s.i),
        ferryCloses: inStep(closesT(seen.ferryCloses), s.i), ferryCloseCodes: codesOf(seen.ferryCloses, s.i), ferryResets: inStep(seen.ferryResets, s.i),
        plain: { lost: inStep(seen.lost.p, s.i), duplicated: inStep(seen.dup.p, s.i), reordered: inStep(seen.reordered.p, s.i), stateBreaks: inStep(seen.stateBreaks.p, s.i) },
        ferry: { lost: inStep(seen.lost.f, s.i), duplicated: inStep(seen.dup.f, s.i), reordered: inStep(seen.reordered.f, s.i), stateBreaks: inStep(seen.stateBreaks.f, s.i) },
        rttMs: (() => { const v = rttIn(seen.rtt.p, s.startAt, s.doneAt + 1); return { n: v.length, p50: ms(percentile(v, 50)), p99: ms(percentile(v, 99)), max: ms(Math.max(0, ...v)) } })(),
      }
      if (target === 'handoff') {
        // The gateways' view: ferry_mux_handoffs_total and ferry_mux_handoff_seconds over the step.
        const sum = (list, k) => list.reduce((n, x) => n + x[k], 0)
        const outcomes = Object.fromEntries(['moved', 'lost_moved', 'failed', 'client_gone'].map((k) => [k, sum(s.metricsAfter, k) - sum(s.metricsBefore, k)]))
        const hb = (list) => { const acc = {}; for (const x of list) for (const [le, v] of Object.entries(x.buckets)) acc[le] = (acc[le] ?? 0) + v; return acc }
        const hBefore = hb(s.metricsBefore)
        const hAfter = hb(s.metricsAfter)
        // Handoffs per second from the 500 ms samples: each pod's increase between two samples, in the
        // 1 s bin of the later one, summed over pods; and each pod's own fastest rate.
        const mine = samples.filter((x) => x.t >= s.startAt - 1000 && x.t <= s.doneAt + 1000)
        const perBin = new Map()
        let perPodPeak = 0
        for (const p of env.pods) {
          const xs = mine.filter((x) => x.pod === p.id).sort((a, b) => a.t - b.t)
          for (let k = 1; k < xs.length; k++) {
            const d = (xs[k].moved + xs[k].lost_moved) - (xs[k - 1].moved + xs[k - 1].lost_moved)
            const bin = Math.floor((xs[k].t - s.startAt) / 1000)
            perBin.set(bin, (perBin.get(bin) ?? 0) + d)
            perPodPeak = Math.max(perPodPeak, Math.round(d * 1000 / Math.max(1, xs[k].t - xs[k - 1].t)))
          }
        }
        const win = (t) => t >= s.startAt && t <= s.doneAt + 1000
        const arrivals = { state: [], lost: [], latencyMs: [] }
        for (const rep of allReports) {
          arrivals.state.push(...rep.times.state.filter(win))
          arrivals.lost.push(...rep.times.lost.filter(win))
        }
        const drainedRep = s.drained?.report
        // frozenAt → arrival, measured by the new backend for each session the drained one handed over.
        const latency = drainedRep !== undefined ? allReports.flatMap((rep) => rep.handoffMs.filter((_, k) => win(rep.times.state[k]))) : []
        const failoverMs = arrivals.lost.map((t) => t - s.startAt)
        Object.assign(row, {
          handoffs: outcomes,
          handoffsPerSec: { peakAllPods: Math.max(0, ...perBin.values()), peakPerPod: perPodPeak, series: [...perBin.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => v) },
          hookPeakPerSec: drainedRep !== undefined ? slidingPeak(drainedRep.times.hook) : null,
          arrivalsWithState: arrivals.state.length, arrivalsLost: arrivals.lost.length,
          arrivalPeakPerSec: slidingPeak([...arrivals.state, ...arrivals.lost]),
          latencyHistMs: { p50: histPercentile(hBefore, hAfter, 50), p99: histPercentile(hBefore, hAfter, 99) },
          latencyBackendMs: { n: latency.length, p50: ms(percentile(latency, 50)), p99: ms(percentile(latency, 99)), max: ms(Math.max(0, ...latency)) },
          failoverMs: { n: failoverMs.length, p50: ms(percentile(failoverMs, 50)), p99: ms(percentile(failoverMs, 99)), max: ms(Math.max(0, ...failoverMs)) },
          drainedStats: drainedRep !== undefined ? { handoffOut: drainedRep.stats?.handoff?.out, closedCodes: drainedRep.counts.closeCodes, closed: drainedRep.counts.closed } : null,
        })
      }
      return row
    })

    const onV2 = (list) => list.filter((r) => r.lastB.startsWith('v2-'))
    const fromS = -Math.ceil(o.baselineMs / 1000)
    const toS = Math.ceil((tallyAt - t0) / 1000) + 1
    const plainBins = bins(closesT(seen.plainCloses), t0, fromS, toS)
    const ferryBins = bins(closesT(seen.ferryCloses), t0, fromS, toS)
    const sumKind = (f, kind) => stepsOut.filter((s) => s.kind === kind).reduce((n, s) => n + f(s), 0)
    return {
      target,
      steps: stepsOut,
      fleet: { plain: o.plain, ferry: withFerry, rampMs, fronts: env.fronts.map((f) => f.id) },
      durationMs: rolloutEnd - t0,
      events: events.map((e) => ({ ...e, t: e.t - t0 })),
      closes: {
        plain: { drain: sumKind((s) => s.plainCloses, 'drain'), kill: sumKind((s) => s.plainCloses, 'kill'), outside: seen.plainCloses.filter((c) => windowOf(c.t) === -1).length },
        ferry: { drain: sumKind((s) => s.ferryCloses, 'drain'), kill: sumKind((s) => s.ferryCloses, 'kill'), outside: seen.ferryCloses.filter((c) => windowOf(c.t) === -1).length },
        ferryResets: { drain: sumKind((s) => s.ferryResets, 'drain'), kill: sumKind((s) => s.ferryResets, 'kill') },
        peakPerSec: slidingPeak([...closesT(seen.plainCloses), ...closesT(seen.ferryCloses)]),
        plainPeakPerSec: slidingPeak(closesT(seen.plainCloses)),
        series: plainBins.map((b, k) => ({ s: b.s, plain: b.n, ferry: ferryBins[k].n })),
      },
      messages: Object.fromEntries(['p', 'f'].map((kind) => {
        const list = kind === 'p' ? fleet.plain : fleet.ferry
        const of = (times) => ({ drain: byKind(times, 'drain'), kill: byKind(times, 'kill'), outside: times.filter((t) => windowOf(t) === -1).length })
        return [kind === 'p' ? 'plain' : 'ferry', { sent: list.reduce((n, r) => n + r.sent, 0), lost: of(seen.lost[kind]), duplicated: of(seen.dup[kind]), reordered: of(seen.reordered[kind]), stateBreaks: of(seen.stateBreaks[kind]) }]
      })),
      plain: {
        sessions: fleet.plain.length,
        up: fleet.plain.filter((r) => r.up).length,
        onV2: onV2(fleet.plain).length,
        onV2StateIntact: onV2(fleet.plain).filter((r) => r.stateOk).length,
        stateIntact: fleet.plain.filter((r) => r.stateOk).length,
        reconnects: fleet.plain.reduce((n, r) => n + Math.max(0, r.opens - 1), 0),
        handshakeFailures: seen.handshakeFailures,
        topicMessages: fleet.plain.reduce((n, r) => n + r.topic, 0),
        gotFinalTopic: fleet.plain.filter((r) => r.marker).length,
        errors: seen.errors,
      },
      ferryClient: withFerry === 0
        ? null
        : {
            sessions: fleet.ferry.length,
            open: fleet.ferry.filter((r) => r.c.state === 'open').length,
            onV2: onV2(fleet.ferry).length,
            connections: fleet.ferry.reduce((n, r) => n + r.attempts, 0),
            resumed: fleet.ferry.reduce((n, r) => n + r.resumed, 0),
            fresh: fleet.ferry.reduce((n, r) => n + r.fresh, 0),
            resets: fleet.ferry.reduce((n, r) => n + r.resets, 0),
            unsentResent: fleet.ferry.reduce((n, r) => n + r.unsent, 0),
            terminal: fleet.ferry.reduce((n, r) => n + r.terminal, 0),
            gotFinalTopic: fleet.ferry.filter((r) => r.marker).length,
          },
      rttBaselineMs: { n: baselineRtt.length, p50: ms(percentile(baselineRtt, 50)), p99: ms(percentile(baselineRtt, 99)), max: ms(Math.max(0, ...baselineRtt)) },
      backends: finalReports.map((r) => ({ name: r.name, sessions: r.sessions, arrivals: r.arrivals, created: r.counts.created, handoff: r.stats?.handoff })),
      podWarnings: env.pods.filter((p) => p.warningCount > 0).map((p) => ({ pod: p.id, count: p.warningCount, first: p.warnings })),
      totalMs: Date.now() - startedAt,
    }
  } finally {
    fleet.stopping = true
    for (const t of res.timers) { clearInterval(t); clearTimeout(t) }
    for (const r of fleet.ferry) { try { r.c.close() } catch {} }
    for (const r of fleet.plain) { try { r.ws?.terminate() } catch {} }
    await killAll(res)
  }
}

/** The handoff run's pass/fail list: [{ name, ok, gate, detail }] (`gate`: the script exits 1 when it fails). */
export function checks (r) {
  const out = []
  const add = (name, ok, detail, gate = true) => out.push({ name, ok: Boolean(ok), gate, detail })
  const drains = r.steps.filter((s) => s.kind === 'drain')
  const m = r.messages.plain
  add('plain WebSocket clients disconnected by a drain: 0', r.closes.plain.drain === 0, `${r.closes.plain.drain} closed in ${drains.length} drain window(s)${r.closes.plain.drain > 0 ? ` (${drains.map((s) => JSON.stringify(s.plainCloseCodes)).join(', ')})` : ''}`)
  add('plain messages lost in drains: 0', m.lost.drain === 0, `${m.lost.drain} of ${fmt(m.sent)} sent`)
  add('plain messages duplicated in drains: 0', m.duplicated.drain === 0, `${m.duplicated.drain}`)
  add('plain messages reordered in drains: 0', m.reordered.drain === 0, `${m.reordered.drain}`)
  add('plain sessions whose state broke in a drain: 0', m.stateBreaks.drain === 0, `${m.stateBreaks.drain} (echo counter n ≠ message number k after the move)`)
  if (r.ferryClient !== null) {
    const f = r.messages.ferry
    add('ferry/client clients disconnected by a drain: 0', r.closes.ferry.drain === 0, `${r.closes.ferry.drain} closed in ${drains.length} drain window(s)${r.closes.ferry.drain > 0 ? ` (${drains.map((s) => JSON.stringify(s.ferryCloseCodes)).join(', ')})` : ''}`)
    add('ferry/client sessions reset by a drain: 0', r.closes.ferryResets.drain === 0, `${r.closes.ferryResets.drain}`)
    add('ferry/client messages lost, duplicated or reordered in drains: 0', f.lost.drain + f.duplicated.drain + f.reordered.drain === 0, `${f.lost.drain} / ${f.duplicated.drain} / ${f.reordered.drain} of ${fmt(f.sent)} sent`)
    add('ferry/client sessions whose state broke in a drain: 0', f.stateBreaks.drain === 0, `${f.stateBreaks.drain}`)
  }
  add('every drained backend exited 0', drains.every((s) => s.exitCode === 0), drains.map((s) => `${s.backend}: ${s.exitCode ?? s.signal}`).join(', '))
  // Reported beside the verdict: the pacing (stalls on a busy 2-core machine bunch a few), and topics.
  // The exact counts are the backends' timestamps: FREEZEs at the draining one (its drain() paces them),
  // arrivals at the others after a kill (each pod's handoff.maxPerSec paces them). The pods' counters,
  // sampled every 500 ms from a loaded machine, are shown beside them.
  for (const s of drains) add(`${s.backend}: peak handoffs per second ≤ the drain budget (${r.options.maxMigrationsPerSec}/s)`, s.hookPeakPerSec <= r.options.maxMigrationsPerSec, `FREEZEs at the backend in any 1 s: ${s.hookPeakPerSec}; ferry_mux_handoffs_total, all pods, 1 s bins: ${s.handoffsPerSec.peakAllPods}`, false)
  const pods = r.options.pods * r.options.handoffMaxPerSec
  for (const s of r.steps.filter((x) => x.kind === 'kill')) add(`${s.backend} (killed): peak failovers per second ≤ ${r.options.pods} pods × handoff.maxPerSec (${pods})`, s.arrivalPeakPerSec <= pods, `sessions reopened on the other backends in any 1 s: ${s.arrivalPeakPerSec}; ferry_mux_handoffs_total, all pods, 1 s bins: ${s.handoffsPerSec.peakAllPods}, one pod (500 ms samples): ${s.handoffsPerSec.peakPerPod}`, false)
  add('every plain session got the final topic message (its subscription survived)', r.plain.gotFinalTopic === r.plain.sessions, `${r.plain.gotFinalTopic} of ${r.plain.sessions}`, false)
  return out
}

/** Every target's run; returns { machine, options, runs, checks, ok }. */
export async function run (opts = {}, log = (s) => process.stderr.write(`${s}\n`)) {
  const o = { ...DEFAULTS, ...opts }
  parseSteps(o.steps)
  const targets = parseTargets(o.targets)
  if (targets.includes('handoff') && !existsSync(REDIS_SERVER)) throw new Error(`the handoff run needs redis-server (${REDIS_SERVER}; scripts/setup.sh --bench installs it)`)
  const hasNginx = spawnSync('sh', ['-c', `command -v ${NGINX}`], { stdio: 'ignore' }).status === 0
  const machine = machineInfo({ nginx: hasNginx ? spawnSync(NGINX, ['-v'], { encoding: 'utf8' }).stderr.trim().replace('nginx version: ', '') : null })
  const options = recordedOptions(o)
  const runs = {}
  const skipped = {}
  for (const t of targets) {
    if (t === 'nginx' && !hasNginx) { skipped.nginx = 'nginx is not installed (scripts/setup.sh --bench installs it)'; log(`nginx: skipped: ${skipped.nginx}`); continue }
    runs[t] = await scenario(t, o, log)
  }
  // Other engineers' processes share this machine's cores: the load at the end says how busy it got.
  machine.loadavg1End = machineInfo().loadavg1
  const list = runs.handoff !== undefined ? checks({ ...runs.handoff, options }) : []
  const result = { machine, options, runs, skipped, checks: list, ok: list.every((c) => c.ok || !c.gate), at: new Date().toISOString() }
  writeResults(o, 'backend-rollout', result, renderMarkdown, renderSvg)
  return result
}

// ---- output ---------------------------------------------------------------------------------------
const msTxt = (v) => v === null || v === undefined ? '—' : v === Infinity ? '> 10 s' : `${fmt(Math.round(v * 10) / 10)}`
const kinds = (r, f) => `${f(r, 'drain')} / ${f(r, 'kill')}`

export function renderMarkdown (res) {
  const o = res.options
  const names = Object.keys(res.runs)
  const col = (f) => `| ${names.map((n) => f(res.runs[n], n)).join(' | ')} |`
  const h = res.runs.handoff
  const stepsTxt = parseSteps(o.steps).map((k, i) => `v1-${String.fromCharCode(97 + i)} ${k === 'drain' ? 'drained' : 'killed'}`).join(', then ')
  const lines = [
    '# Backend rollout under load (native-bench/backend-rollout.mjs)',
    '',
    `${res.machine.cpus} × ${res.machine.model}, ${res.machine.memGiB} GiB, Linux ${res.machine.kernel}, Node ${res.machine.node}${res.machine.nginx !== null ? `, nginx ${res.machine.nginx}` : ''} (load average ${res.machine.loadavg1} at the start, ${res.machine.loadavg1End} at the end). ${res.at}.`,
    '',
    `Fleet: ${fmt(o.plain)} plain WebSocket sessions${h !== undefined ? ` (+ ${fmt(o.ferry)} ferry/client sessions in the handoff run)` : ''}, each sending a numbered message every ${o.sendEveryMs / 1000} s (echoed with the session's counter, its state), in ${o.rooms} rooms that every backend publishes to every ${o.topicEveryMs / 1000} s. ` +
    `Steps, one every ${o.stepEveryMs / 1000} s: ${stepsTxt}; each replaced by a v2 process.`,
    '',
    '- **Ferry mux, handoff**: ' + `${o.pods} Ferry pods (clients connect to them directly, evenly), \`protocol: mux\` upstream with the Redis registry; the v2 \`ferry/backend\` process registers first, then the v1 one gets SIGTERM → \`server.drain({ maxMigrationsPerSec: ${o.maxMigrationsPerSec} })\`, or SIGKILL. Gateway \`handoff.maxPerSec: ${o.handoffMaxPerSec}\` per pod.`,
    `- **Ferry passthrough**: ${o.pods} Ferry pods, \`protocol: ws\` to plain WebSocket backends (static endpoints); a step stops the backend (SIGTERM: it closes its sessions 1001; or SIGKILL) and starts v2 on the same port.`,
    '- **nginx**: one nginx, 1 worker, proxying WebSocket to the same plain backends, same steps.',
    '',
    'A message lost, duplicated or reordered, or a close, belongs to the step in whose window it happened (from 2 s before its signal to 2 s before the next step\'s).',
    '',
    `| | ${names.map((n) => TARGETS[n].label).join(' | ')} |`,
    `| --- | ${names.map(() => '---').join(' | ')} |`,
    `| plain client WebSockets closed, drains / kills ${col((r) => `**${kinds(r, (x, k) => x.closes.plain[k])}**`)}`,
    `| ferry/client WebSockets closed, drains / kills ${col((r) => r.ferryClient === null ? '—' : kinds(r, (x, k) => x.closes.ferry[k]))}`,
    `| plain messages lost, drains / kills ${col((r) => `**${kinds(r, (x, k) => x.messages.plain.lost[k])}**`)}`,
    `| plain messages duplicated / reordered, drains ${col((r) => `${r.messages.plain.duplicated.drain} / ${r.messages.plain.reordered.drain}`)}`,
    `| plain messages duplicated / reordered, kills ${col((r) => `${r.messages.plain.duplicated.kill} / ${r.messages.plain.reordered.kill}`)}`,
    `| plain messages sent ${col((r) => fmt(r.messages.plain.sent))}`,
    `| plain sessions whose state was lost (first time), drains / kills ${col((r) => kinds(r, (x, k) => x.messages.plain.stateBreaks[k]))}`,
    `| plain sessions on v2 at the end / of them with their state intact ${col((r) => `${fmt(r.plain.onV2)} / ${fmt(r.plain.onV2StateIntact)}`)}`,
    `| peak client disconnects in any 1 s ${col((r) => fmt(r.closes.peakPerSec))}`,
    `| plain reconnects / failed handshakes ${col((r) => `${fmt(r.plain.reconnects)} / ${fmt(r.plain.handshakeFailures)}`)}`,
    `| backend exit after its signal (s), per step ${col((r) => r.steps.map((s) => (s.exitMs / 1000).toFixed(1)).join(', '))}`,
    `| every session on a live backend again (s), per step ${col((r) => r.steps.map((s) => (s.settledMs / 1000).toFixed(1)).join(', '))}`,
    `| echo round trip during the steps, p50 / p99 / max ms (baseline p99) ${col((r) => `${r.steps.map((s) => `${msTxt(s.rttMs.p50)} / ${msTxt(s.rttMs.p99)} / ${msTxt(s.rttMs.max)}`).join('; ')} (${msTxt(r.rttBaselineMs.p99)})`)}`,
    `| topic messages delivered to plain sessions / got the final one ${col((r) => `${fmt(r.plain.topicMessages)} / ${fmt(r.plain.gotFinalTopic)}`)}`,
    '',
  ]
  if (h !== undefined) {
    lines.push(
      '## The handoff run, step by step',
      '',
      `| step | ${h.steps.map((s) => `${s.backend} ${s.kind === 'drain' ? 'drained' : 'killed'}`).join(' | ')} |`,
      `| --- | ${h.steps.map(() => '---').join(' | ')} |`,
      `| SIGTERM/SIGKILL → exit (s); drain() result | ${h.steps.map((s) => `${(s.exitMs / 1000).toFixed(1)}${s.drain !== undefined ? `; handedOff ${s.drain.handedOff}, closed ${s.drain.closed}, ${(s.drain.ms / 1000).toFixed(1)} s` : ''}`).join(' | ')} |`,
      `| plain / ferry/client WebSockets closed (codes) | ${h.steps.map((s) => `${s.plainCloses} / ${s.ferryCloses} ${JSON.stringify({ ...s.plainCloseCodes, ...s.ferryCloseCodes })}`).join(' | ')} |`,
      `| ferry/client sessions reset (resume refused) | ${h.steps.map((s) => `${s.ferryResets}`).join(' | ')} |`,
      `| plain messages lost / duplicated / reordered | ${h.steps.map((s) => `${s.plain.lost} / ${s.plain.duplicated} / ${s.plain.reordered}`).join(' | ')} |`,
      `| ferry/client messages lost / duplicated / reordered | ${h.steps.map((s) => `${s.ferry.lost} / ${s.ferry.duplicated} / ${s.ferry.reordered}`).join(' | ')} |`,
      `| sessions whose state was lost (first time): plain / ferry/client | ${h.steps.map((s) => `${s.plain.stateBreaks} / ${s.ferry.stateBreaks}`).join(' | ')} |`,
      `| ferry_mux_handoffs_total (all pods): moved / lost_moved / failed / client_gone | ${h.steps.map((s) => `${s.handoffs.moved} / ${s.handoffs.lost_moved} / ${s.handoffs.failed} / ${s.handoffs.client_gone}`).join(' | ')} |`,
      `| arrived on the other backends: with their state / lost (\`session.handoff\`) | ${h.steps.map((s) => `${s.arrivalsWithState} / ${s.arrivalsLost}`).join(' | ')} |`,
      `| peak handoffs in any 1 s, the backends' count: FREEZEs at the drained one / arrivals at the others; budget ${o.maxMigrationsPerSec} (drain), ${o.pods} × ${o.handoffMaxPerSec} (pods' handoff.maxPerSec) | ${h.steps.map((s) => `**${s.hookPeakPerSec ?? '—'}** / ${s.arrivalPeakPerSec}`).join(' | ')} |`,
      `| peak handoffs per second, ferry_mux_handoffs_total sampled every 500 ms: all pods (1 s bins) / one pod | ${h.steps.map((s) => `${s.handoffsPerSec.peakAllPods} / ${s.handoffsPerSec.peakPerPod}`).join(' | ')} |`,
      `| handoff latency p50 / p99, ferry_mux_handoff_seconds (bucket bound, ms) | ${h.steps.map((s) => `≤ ${msTxt(s.latencyHistMs.p50)} / ≤ ${msTxt(s.latencyHistMs.p99)}`).join(' | ')} |`,
      `| handoff latency p50 / p99 / max, old backend's hook → new backend's 'session' (ms) | ${h.steps.map((s) => s.latencyBackendMs.n > 0 ? `${msTxt(s.latencyBackendMs.p50)} / ${msTxt(s.latencyBackendMs.p99)} / ${msTxt(s.latencyBackendMs.max)} (${s.latencyBackendMs.n})` : '—').join(' | ')} |`,
      `| kill → session reopened elsewhere p50 / p99 / max (ms) | ${h.steps.map((s) => s.kind === 'kill' && s.failoverMs.n > 0 ? `${msTxt(s.failoverMs.p50)} / ${msTxt(s.failoverMs.p99)} / ${msTxt(s.failoverMs.max)} (${s.failoverMs.n})` : '—').join(' | ')} |`,
      '',
    )
    const fc = h.ferryClient
    if (fc !== null) {
      lines.push(`ferry/client sessions (${fmt(fc.sessions)}) are handed over by a draining backend with their resume state (no close, no reset); a killed one takes their state with it: each reconnects, its resume is refused, and it starts a fresh session (\`reset\`; the application here sends the unacknowledged messages again). Over the run: ${fmt(fc.connections)} connections opened, ${fmt(fc.resumed)} resumed, ${fmt(fc.fresh)} fresh sessions, ${fmt(fc.resets)} resets, ${fmt(fc.unsentResent)} unsent messages sent again, ${fc.open}/${fc.sessions} open at the end, ${fc.onV2} on v2; messages lost / duplicated / reordered: drains ${h.messages.ferry.lost.drain} / ${h.messages.ferry.duplicated.drain} / ${h.messages.ferry.reordered.drain}, kills ${h.messages.ferry.lost.kill} / ${h.messages.ferry.duplicated.kill} / ${h.messages.ferry.reordered.kill} (of ${fmt(h.messages.ferry.sent)} sent).`, '')
    }
    lines.push(`Handoff run checks (the script exits 1 if a ✘ one marked "gate" fails): ${res.checks.map((c) => `${c.ok ? '✔' : '✘'} ${c.name}${c.gate ? '' : ' (reported)'}`).join('; ')}.`, '')
  }
  for (const [k, why] of Object.entries(res.skipped)) lines.push(`${TARGETS[k].label}: skipped (${why}).`, '')
  lines.push('![client WebSocket disconnects per second during a backend rollout](backend-rollout.svg)', '')
  return lines.join('\n')
}

/** Client WebSocket disconnects per second over time, one line per run (ferry/client dashed). */
export function renderSvg (res, { width = 960, height = 420 } = {}) {
  const series = []
  let xmin = Infinity
  let xmax = -Infinity
  for (const [name, r] of Object.entries(res.runs)) {
    const t = TARGETS[name]
    xmin = Math.min(xmin, r.closes.series[0].s)
    xmax = Math.max(xmax, r.closes.series.at(-1).s + 1)
    const markers = r.events.filter((e) => e.what === 'SIGTERM' || e.what === 'SIGKILL').map((e) => ({ x: e.t / 1000, shape: e.what === 'SIGKILL' ? 'x' : undefined, title: `${t.label}: ${e.what} ${e.backend} at ${(e.t / 1000).toFixed(1)} s` }))
    series.push({ label: `${t.label}, plain: peak ${fmt(r.closes.plainPeakPerSec)} in 1 s`, title: `${t.label}, plain sessions`, color: t.color, points: r.closes.series.map((b) => ({ x: b.s + 0.5, y: b.plain })), markers })
    if (r.ferryClient !== null) series.push({ label: `${t.label}, ferry/client`, title: `${t.label}, ferry/client sessions`, color: t.color, dash: '6,4', points: r.closes.series.map((b) => ({ x: b.s + 0.5, y: b.ferry })) })
  }
  return lineChart({
    title: `Backend rollout under ${fmt(res.options.plain)} plain WebSocket sessions: client disconnects per second`,
    xLabel: 'seconds since the first step (1 s bins); ▲ SIGTERM (drain), ✕ SIGKILL, to a backend',
    yLabel: 'client WebSocket connections closed per second',
    xmin,
    xmax,
    series,
    firstOnTop: true,
    width,
    height,
  })
}

// ---- main -----------------------------------------------------------------------------------------
function main () {
  return scriptMain({ name: 'backend-rollout', usage: '[--quick] [--OPTION VALUE]…', prefix: 'ROLLOUT', defaults: DEFAULTS, parseArgs,
    validate: (o) => { parseSteps(o.steps); parseTargets(o.targets) }, run: (o) => run(o), renderMarkdown })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => { console.error(err); process.exit(1) })
}
