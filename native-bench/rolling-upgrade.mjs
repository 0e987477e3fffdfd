#!/usr/bin/env node
// native-bench/rolling-upgrade.mjs: a rolling upgrade of every Ferry pod under load, drained and paced
// (drain + admission control) and, for comparison, naive (every session closed at once). Loopback
// only; about a minute with the defaults on a 2-core machine (each run ~30 s, its rollout ~25 s).
//
//   node native-bench/rolling-upgrade.mjs [--sessions N] [--plain N] [--budget N] [--quick] [--no-naive] …
//                                          (--help lists every option; each also reads ROLLING_<NAME>)
//
// Per run: redis-server (the shared affinity store; --affinity memory to do without), two ferry/backend
// echo processes (resume on; every ferry/client session also gets a numbered server message stream),
// one HTTP backend, a load balancer (lib/rolling-lb.mjs: a TCP forwarder sending each NEW connection to
// a pod whose /readyz is 200, round robin, polled every 200 ms) and three Ferry pods. Then the fleet:
// N ferry/client sessions, each sending a numbered message every 2 s (echoed) and checking the echoes and
// the server stream for gaps, duplicates and reordering (the backend checks the client's numbers too),
// P plain WebSocket sessions that reconnect by themselves when closed, and a steady stream of HTTP
// requests through a keep-alive agent. Then each pod in turn gets SIGTERM, exits, and a fresh process
// with the same config replaces it (the load balancer picks it up once ready) before the next one.
//
//   paced: drain { acceptGraceMs 1000, spreadMs 4000, maxMigrationsPerSec 150, deadlineMs 30000 },
//          admission { handshakesPerSec 200 (the budget), burst 100, retryAfterMs 500 }
//   naive: drain { acceptGraceMs 0, spreadMs 0, maxMigrationsPerSec 1000000, deadlineMs 5000 },
//          admission off: every session closed at once (maxMigrationsPerSec must be raised for that:
//          its default, 200/s, caps the rate even with spreadMs 0)
//
// The budget: every pod admits at most `admission.handshakesPerSec` new WebSocket handshakes per second;
// the paced run asserts that the WebSocket handshakes *arriving* at each pod (counted by the load
// balancer, admitted or not) stay within it in every 1 s window: the drain's pacing alone keeps the
// reconnect wave under what the pods admit. The drain's migration rate (min(maxMigrationsPerSec,
// sessions / spreadMs), what each draining pod logged) is reported next to it: at most 150/s from the
// draining pod, spread over the two other ready pods by the load balancer, about 75/s each; event-loop
// stalls on a busy 2-core machine bunch them (a pod that stalls 300 ms migrates 300 ms' worth at once,
// clients that stall reconnect together), hence the margin.
//
// ROLLING_DEBUG=1 prints, while a drained pod waits in its finishing phase, the connections the load
// balancer still has open to it.
//
// Writes results/rolling-upgrade.{md,json,svg} (the chart: fleet reconnects per second, both runs).
// Exits 1 when the paced run breaks any of: ferry/client messages lost 0, duplicated 0, reordered 0;
// ferry/client backend sessions closed or re-created 0; HTTP requests failed 0; handshake peak ≤ budget.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { Agent, get as httpGet } from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { ask, bins, bound, check, fmt, killAll, machineInfo, metricSum, optionParser, recordedOptions, REDIS_SERVER, scrapeMetrics, seq, sleep, slidingPeak, spawnChild, startFerry, startRedis, scriptMain, waitFor, writeResults } from './lib/harness.mjs'
import { lineChart } from './lib/svg.js'

export { slidingPeak }

const HERE = dirname(fileURLToPath(import.meta.url))
const ROOT = join(HERE, '..')
const SECRET = 'native-bench-rolling-upgrade-secret-0123456789'

export const DEFAULTS = {
  sessions: 2000, // ferry/client sessions
  plain: 200, // plain WebSocket sessions
  pods: 3,
  sendEveryMs: 5000, // each session sends a numbered message this often (ferry: echoed; plain: echoed)
  streamEveryMs: 5000, // each ferry/client session gets a numbered server message this often
  httpRps: 50, // HTTP requests per second through the load balancer
  rampPerSec: 400, // how fast the fleet connects at the start
  // paced run
  acceptGraceMs: 1000,
  spreadMs: 4000,
  maxMigrationsPerSec: 150,
  deadlineMs: 30000,
  budget: 200, // admission.handshakesPerSec per pod, the asserted bound
  burst: 100, // admission.burst
  retryAfterMs: 500, // admission.retryAfterMs
  // naive run
  naive: true,
  naiveDeadlineMs: 5000,
  affinity: existsSync(REDIS_SERVER) ? 'redis' : 'memory',
  clientMinDelayMs: 200, // ferry/client reconnect backoff
  clientMaxDelayMs: 5000,
  plainMaxDelayMs: 500, // plain sessions reconnect after 50 ms + a random part up to this
  lbPollMs: 200,
  settleMs: 2000, // traffic after the last pod is back, before the tally
  timeoutMs: 240_000, // hard bound of one run (scenario)
  outDir: join(HERE, 'results'),
  workDir: join(HERE, '.work'),
  write: true,
}
const QUICK = { sessions: 300, plain: 50, httpRps: 20, rampPerSec: 300 }

/** Options from argv (and ROLLING_<NAME> env vars), over DEFAULTS. */
export const parseArgs = optionParser(DEFAULTS, QUICK, 'ROLLING')

// ---- processes ------------------------------------------------------------------------------------
async function startBackend (res, mode, name) {
  const child = spawnChild(res, process.execPath, [join(HERE, 'lib/rolling-backend.mjs'), mode, name], { ipc: true })
  const { port } = await ask(child, undefined, 'listening', 15_000)
  return { name, port, child }
}

function podConfig (id, env, o) {
  const naive = env.mode === 'naive'
  return {
    // One process per pod (the default, auto, forks a worker per core; the pods share this machine's).
    gateway: { id, workers: 1 },
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
    upstreams: {
      chat: { protocol: 'mux', endpoints: env.mux.map((b) => `127.0.0.1:${b.port}`), pool: { links: 2 }, reconnect: { minDelayMs: 50, maxDelayMs: 500 } },
      api: { protocol: 'http', endpoints: [`127.0.0.1:${env.http.port}`] },
    },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/' }, upstream: 'api' }],
    ...(env.redis !== undefined ? { affinity: { store: 'redis', redis: { url: env.redis.url } } } : {}),
    drain: naive
      ? { acceptGraceMs: 0, spreadMs: 0, maxMigrationsPerSec: 1_000_000, deadlineMs: o.naiveDeadlineMs }
      : { acceptGraceMs: o.acceptGraceMs, spreadMs: o.spreadMs, maxMigrationsPerSec: o.maxMigrationsPerSec, deadlineMs: o.deadlineMs },
    admission: naive ? { handshakesPerSec: 0 } : { handshakesPerSec: o.budget, burst: o.burst, retryAfterMs: o.retryAfterMs },
    logging: { accessLog: false, pretty: false },
  }
}

async function startPod (res, id, env, o) {
  const file = join(res.workDir, `rolling-${env.mode}-${id}.json`)
  writeFileSync(file, JSON.stringify(podConfig(id, env, o), null, 2) + '\n')
  const drain = {}
  const pod = await startFerry(res, id, file, { FERRY_RESUME_SECRET: SECRET }, (j) => {
    if (j.msg?.startsWith('drain started')) drain.sessionsAtStart = j.sessions
    if (j.msg?.startsWith('drain: listeners closed')) { drain.migrationStartedAt = Date.now(); drain.sessions = j.sessions; drain.ratePerSec = j.ratePerSec }
    if (j.msg?.startsWith('drain: sessions gone')) drain.sessionsGoneAt = Date.now()
    if (j.msg === 'drained') { drain.migrated = j.migrated; drain.seconds = j.seconds }
  })
  pod.drain = drain
  return pod
}

async function scrapeCounters (pod) {
  const m = await scrapeMetrics(pod.admin)
  return { opened: metricSum(m, 'ferry_ws_sessions_total'), refused: metricSum(m, 'ferry_admission_refused_total'), lagMaxMs: Math.round(metricSum(m, 'ferry_nodejs_eventloop_lag_max_seconds') * 1000) }
}

// ---- one scenario ---------------------------------------------------------------------------------
/**
 * One complete run: `mode` 'paced' or 'naive'. Starts everything, rolls every pod, tallies, and stops
 * everything it started (also on failure).
 */
export async function scenario (mode, opts = {}, log = () => {}) {
  const o = { ...DEFAULTS, ...opts }
  const { FerryClient } = await import(pathToFileURL(join(ROOT, 'dist/client/index.js')).href)
  const { default: WebSocket } = await import(pathToFileURL(join(ROOT, 'node_modules/ws/wrapper.mjs')).href)
  mkdirSync(o.workDir, { recursive: true })
  const res = { children: new Set(), timers: new Set(), deadline: Date.now() + o.timeoutMs, workDir: o.workDir }
  const every = (ms, fn) => { const t = setInterval(fn, ms); res.timers.add(t); return t }
  const fleet = { ferry: [], plain: [], stopping: false }
  // A timeout of its own makes Node 20's Agent apply the pods' `Keep-Alive: timeout=7` (it closes an idle
  // socket after 6 s, before a pod's 8-12 s idle close or the end of its drain can race a request on it);
  // without one it ignores the hint (docs/edge.md). The test saw 4 such resets in 1,280 at load average 13.
  const http = { agent: new Agent({ keepAlive: true, maxSockets: 16, timeout: 30_000 }), total: 0, ok: 0, failed: 0, failures: [], inFlight: new Set(), byReason: {} }
  const startedAt = Date.now()
  const events = []
  const ev = (pod, what, extra = {}) => { events.push({ t: Date.now(), pod, what, ...extra }); log(`${mode}: ${pod} ${what}`) }
  try {
    // -- infrastructure
    const env = { mode }
    if (o.affinity === 'redis') env.redis = await startRedis(res)
    env.mux = [await startBackend(res, 'mux', 'backend-1'), await startBackend(res, 'mux', 'backend-2')]
    env.http = await startBackend(res, 'http', 'http')
    const lb = spawnChild(res, process.execPath, [join(HERE, 'lib/rolling-lb.mjs'), String(o.lbPollMs)], { ipc: true })
    const { port: lbPort } = await ask(lb, undefined, 'listening', 15_000)
    let lbReady = []
    lb.on('message', (m) => { if (m?.type === 'pods') lbReady = m.ready })
    const pods = []
    for (let i = 0; i < o.pods; i++) pods.push(await startPod(res, `pod-${String.fromCharCode(97 + i)}`, env, o))
    const allPods = [...pods]
    const setLbPods = () => lb.send({ cmd: 'pods', pods: pods.map((p) => ({ id: p.id, http: p.http, admin: p.admin })) })
    setLbPods()
    await waitFor('the load balancer to see every pod ready', () => pods.every((p) => lbReady.includes(p.id)), 15_000, res)
    for (const p of pods) p.readyAt = Date.now()
    for (const b of env.mux) await ask(b.child, { cmd: 'stream', on: true, everyMs: o.streamEveryMs }, 'stream')

    // -- counters of every pod, each second (admitted and refused handshakes)
    const samples = []
    const fleetLag = monitorEventLoopDelay({ resolution: 10 })
    fleetLag.enable()
    res.lag = fleetLag
    const fleetLagMs = []
    every(1000, () => {
      fleetLagMs.push({ t: Date.now(), maxMs: Math.round(fleetLag.max / 1e6) })
      fleetLag.reset()
      for (const p of allPods) {
        if (p.child.exitInfo !== undefined || p.admin === 0) continue
        scrapeCounters(p).then((c) => { samples.push({ t: Date.now(), pod: p.id, ...c }) }, () => {})
      }
    })

    // -- the fleet
    const reconnects = { ferry: [], plain: [] }
    /** When clients saw a migration (close 1012), ferry/client and plain. */
    const migrations = []
    const url = (cid) => `ws://127.0.0.1:${lbPort}/chat?cid=${cid}`
    const openFerry = (i) => {
      const r = { i, cid: `f${i}`, attempts: 0, sent: 0, s: seq(), e: seq(), opens: 0, resumed: 0, fresh: 0, resets: 0, terminal: 0, codes: {}, errors: 0 }
      // Counts every connection the client opens (the first, then each reconnect or retry).
      function Ctor (u, protocols) {
        r.attempts++
        if (r.attempts > 1) reconnects.ferry.push(Date.now())
        return new WebSocket(u, protocols, { perMessageDeflate: false })
      }
      r.c = new FerryClient(url(r.cid), { WebSocket: Ctor, reconnect: { minDelayMs: o.clientMinDelayMs, maxDelayMs: o.clientMaxDelayMs } })
      r.c.on('open', ({ resumed }) => {
        r.opens++
        if (resumed) r.resumed++
        else if (r.opens > 1) r.fresh++
      })
      r.c.on('reset', () => { r.resets++ })
      r.c.on('close', () => { r.terminal++ })
      r.c.on('reconnecting', ({ code }) => { r.codes[code] = (r.codes[code] ?? 0) + 1; if (code === 1012) migrations.push(Date.now()) })
      r.c.on('error', () => { r.errors++ })
      r.c.on('message', (d) => {
        const text = typeof d === 'string' ? d : Buffer.from(d).toString()
        const k = Number(text.slice(2))
        if (text.startsWith('s:')) check(r.s, k)
        else if (text.startsWith('e:')) check(r.e, k)
      })
      fleet.ferry.push(r)
    }
    const openPlain = (i) => {
      const r = { i, ws: undefined, up: false, attempts: 0, opens: 0, sent: 0, echoes: 0, codes: {}, errors: {} }
      const dial = () => {
        if (fleet.stopping) return
        r.attempts++
        if (r.attempts > 1) reconnects.plain.push(Date.now())
        const ws = new WebSocket(url(`p${i}`), { perMessageDeflate: false })
        r.ws = ws
        ws.on('open', () => { r.up = true; r.opens++ })
        ws.on('message', () => { r.echoes++ })
        ws.on('error', (err) => { const k = String(err.message).slice(0, 60); r.errors[k] = (r.errors[k] ?? 0) + 1 })
        ws.on('close', (code) => {
          r.up = false
          r.codes[code] = (r.codes[code] ?? 0) + 1
          if (code === 1012) migrations.push(Date.now())
          if (!fleet.stopping) { const t = setTimeout(() => { res.timers.delete(t); dial() }, 50 + Math.random() * o.plainMaxDelayMs); res.timers.add(t) }
        })
      }
      dial()
      fleet.plain.push(r)
    }
    const rampStart = Date.now()
    const total = o.sessions + o.plain
    const perTick = Math.max(1, Math.round(o.rampPerSec / 20))
    for (let made = 0; made < total; made += perTick) {
      for (let k = made; k < Math.min(total, made + perTick); k++) {
        // plain sessions interleaved evenly with the ferry/client ones
        const p = Math.floor((k + 1) * o.plain / total) - Math.floor(k * o.plain / total)
        if (p === 1) openPlain(fleet.plain.length)
        else openFerry(fleet.ferry.length)
      }
      await sleep(50)
    }
    const fleetUp = () => fleet.ferry.every((r) => r.c.state === 'open') && fleet.plain.every((r) => r.up)
    await waitFor(`${o.sessions} ferry/client + ${o.plain} plain sessions open`, fleetUp, 60_000, res)
    const rampMs = Date.now() - rampStart
    log(`${mode}: fleet up: ${o.sessions} ferry/client + ${o.plain} plain sessions in ${rampMs} ms`)

    // -- traffic: numbered client messages, plain echoes, HTTP
    const slices = Math.max(1, Math.round(o.sendEveryMs / 100))
    let tick = 0
    every(100, () => {
      const s = tick++ % slices
      for (let i = s; i < fleet.ferry.length; i += slices) {
        const r = fleet.ferry[i]
        if (r.c.state !== 'closed') r.c.send(`c:${++r.sent}`)
      }
      for (let i = s; i < fleet.plain.length; i += slices) {
        const r = fleet.plain[i]
        if (r.up) { r.sent++; r.ws.send('p') }
      }
    })
    let httpSeq = 0
    const fail = (reason) => {
      http.failed++
      http.byReason[reason] = (http.byReason[reason] ?? 0) + 1
      if (http.failures.length < 20) http.failures.push({ t: Date.now(), reason })
    }
    const httpTimer = every(Math.max(1, Math.round(1000 / o.httpRps)), () => {
      http.total++
      const req = httpGet({ host: '127.0.0.1', port: lbPort, path: `/api/${++httpSeq}`, agent: http.agent, timeout: 10_000 }, (resp) => {
        let body = ''
        resp.setEncoding('utf8').on('data', (d) => { body += d })
        resp.on('end', () => {
          http.inFlight.delete(req)
          if (resp.statusCode === 200 && body === 'ok') http.ok++
          else fail(`status ${resp.statusCode}`)
        })
        resp.on('error', () => {})
        resp.on('aborted', () => { http.inFlight.delete(req); fail('response aborted') })
      })
      http.inFlight.add(req)
      req.on('timeout', () => req.destroy(new Error('timeout')))
      req.on('error', (err) => { if (http.inFlight.delete(req)) fail(err.code ?? err.message) })
    })
    await sleep(3000) // steady state before the first pod goes

    // -- the rolling upgrade
    const backendReport = async () => await Promise.all(env.mux.map((b) => ask(b.child, { cmd: 'report' }, 'report')))
    const before = await backendReport()
    const httpBefore = { total: http.total, failed: http.failed }
    const t0 = Date.now()
    const drains = []
    for (let i = 0; i < pods.length; i++) {
      const old = pods[i]
      old.sigtermAt = Date.now()
      ev(old.id, 'SIGTERM')
      old.child.kill('SIGTERM')
      if (o.raw) {
        old.progress = []
        const prog = setInterval(() => {
          fetch(`http://127.0.0.1:${old.admin}/status`, { signal: AbortSignal.timeout(1000) }).then((r) => r.json()).then((st) => {
            old.progress.push([Date.now() - t0, st.drain.migrated.resumable + st.drain.migrated.plain, st.drain.phase])
          }, () => {})
        }, 100)
        old.child.exited.then(() => clearInterval(prog))
      }
      if (process.env.ROLLING_DEBUG) {
        const dbg = setInterval(() => {
          if (old.drain.sessionsGoneAt === undefined || Date.now() - old.drain.sessionsGoneAt < 500) return
          ask(lb, { cmd: 'pairs', pod: old.id }, 'pairs').then((m) => log(`${mode}: ${old.id} finishing, open through the LB: ${JSON.stringify(m.pairs)}`), () => {})
        }, 1000)
        old.child.exited.then(() => clearInterval(dbg))
      }
      const x = await Promise.race([old.child.exited, bound(o.acceptGraceMs + Math.max(o.deadlineMs, o.naiveDeadlineMs) + 15_000).then(() => undefined)])
      if (x === undefined) throw new Error(`pod ${old.id} did not exit after SIGTERM`)
      ev(old.id, `exited ${x.code ?? x.signal}`)
      drains.push({ pod: old.id, exitCode: x.code, signal: x.signal, drainMs: x.at - old.sigtermAt, ...old.drain })
      const fresh = await startPod(res, old.id.replace(/-v\d+$/, '') + `-v${2 + Math.floor(i / pods.length)}`, env, o)
      pods[i] = fresh
      allPods.push(fresh)
      setLbPods()
      await waitFor(`the load balancer to see ${fresh.id} ready`, () => lbReady.includes(fresh.id), 15_000, res, 20)
      fresh.readyAt = Date.now()
      ev(fresh.id, 'ready')
      await waitFor('every session back', fleetUp, 30_000, res)
      ev('fleet', 'back')
    }
    const rolloutMs = Date.now() - t0
    await sleep(o.settleMs)

    // -- tally: stop sending, let everything arrive
    clearInterval(httpTimer)
    for (const t of res.timers) { if (t !== httpTimer) clearInterval(t) }
    res.timers.clear()
    for (const b of env.mux) await ask(b.child, { cmd: 'stream', on: false }, 'stream')
    const httpDrainStart = Date.now()
    await waitFor('HTTP requests in flight', () => http.inFlight.size === 0, 15_000, res)
    let after
    const byCid = (reports) => { const m = new Map(); for (const rep of reports) for (const row of rep.rows) m.set(row[0], row); return m }
    await waitFor('every message delivered', async () => {
      after = await backendReport()
      const rows = byCid(after)
      return fleet.ferry.every((r) => {
        const row = rows.get(r.cid)
        return row !== undefined && r.s.max >= row[1] && r.e.max >= r.sent && row[3] >= r.sent
      })
    }, 15_000, res, 250).catch((err) => log(`${mode}: ${err.message} (tallying what arrived)`))
    after ??= await backendReport()
    const lbReport = await ask(lb, { cmd: 'report' }, 'report')
    const httpBackend = await ask(env.http.child, { cmd: 'report' }, 'report')
    log(`${mode}: tallied (HTTP drained in ${Date.now() - httpDrainStart} ms)`)

    // -- messages
    const rows = byCid(after)
    const m = { toBackend: { sent: 0, received: 0, lost: 0, duplicated: 0, reordered: 0 }, toClient: { sent: 0, received: 0, lost: 0, duplicated: 0, reordered: 0 } }
    let missingRows = 0
    for (const r of fleet.ferry) {
      const row = rows.get(r.cid)
      if (row === undefined) { missingRows++; continue }
      const [, sSent, inCount, inMax, inMissing, inDup, inReord] = row
      m.toBackend.sent += r.sent
      m.toBackend.received += inCount
      m.toBackend.lost += inMissing + Math.max(0, r.sent - inMax)
      m.toBackend.duplicated += inDup
      m.toBackend.reordered += inReord
      m.toClient.sent += sSent + r.sent // the server stream plus the echoes
      m.toClient.received += r.s.count + r.e.count
      m.toClient.lost += (r.s.missing?.size ?? 0) + Math.max(0, sSent - r.s.max) + (r.e.missing?.size ?? 0) + Math.max(0, inMax - r.e.max)
      m.toClient.duplicated += r.s.dup + r.e.dup
      m.toClient.reordered += r.s.reordered + r.e.reordered
    }
    const sum = (reps, f) => reps.reduce((n, rep) => n + f(rep), 0)
    const backend = {
      ferryCreated: sum(after, (r) => r.counts.created.resumable) - sum(before, (r) => r.counts.created.resumable),
      ferryClosed: sum(after, (r) => r.counts.closed.resumable) - sum(before, (r) => r.counts.closed.resumable),
      plainCreated: sum(after, (r) => r.counts.created.plain) - sum(before, (r) => r.counts.created.plain),
      plainClosed: sum(after, (r) => r.counts.closed.plain) - sum(before, (r) => r.counts.closed.plain),
      detaches: sum(after, (r) => r.counts.detaches) - sum(before, (r) => r.counts.detaches),
      resumes: sum(after, (r) => r.counts.resumes) - sum(before, (r) => r.counts.resumes),
      resumesRefused: sum(after, (r) => Object.values(r.stats.refused).reduce((a, b) => a + b, 0)) - sum(before, (r) => Object.values(r.stats.refused).reduce((a, b) => a + b, 0)),
      expired: sum(after, (r) => r.stats.expired) - sum(before, (r) => r.stats.expired),
      replayedToClients: sum(after, (r) => r.stats.replayed) - sum(before, (r) => r.stats.replayed),
      sessionsWithMoreThanOneBackendSession: [...rows.values()].filter((row) => row[7] > 1).length,
      ferryClientsWithoutBackendSession: missingRows,
      perBackend: after.map((r) => ({ name: r.name, ferrySessions: r.rows.length, open: r.stats.sessions })),
    }

    // -- handshakes per pod, reconnects
    const tEnd = t0 + rolloutMs
    const inRollout = (t) => t >= t0 && t <= tEnd + o.settleMs
    const perPod = Object.entries(lbReport.pods).map(([pod, s]) => {
      const ws = s.ws.filter(inRollout)
      const mine = samples.filter((x) => x.pod === pod)
      let admittedPeak = 0
      let refused = 0
      for (let k = 1; k < mine.length; k++) {
        if (!inRollout(mine[k].t)) continue
        admittedPeak = Math.max(admittedPeak, Math.round((mine[k].opened - mine[k - 1].opened) * 1000 / Math.max(1, mine[k].t - mine[k - 1].t)))
        refused += mine[k].refused - mine[k - 1].refused
      }
      return { pod, handshakes: ws.length, peakPerSec: slidingPeak(ws), admittedPeakPerSec: admittedPeak, refused, httpConnections: s.http, connectRefused: s.refused, perSecond: bins(ws, t0, 0, Math.ceil((tEnd + o.settleMs - t0) / 1000)).map((b) => b.n) }
    })
    const allReconnects = [...reconnects.ferry, ...reconnects.plain]
    const fromS = -5
    const toS = Math.ceil((tEnd + o.settleMs - t0) / 1000) + 1
    const ferryBins = bins(reconnects.ferry, t0, fromS, toS)
    const plainBins = bins(reconnects.plain, t0, fromS, toS)
    const httpFailuresInRollout = http.failures.filter((f) => f.t >= t0).length

    const result = {
      mode,
      config: podConfig('pod', { ...env, mux: env.mux, http: env.http }, o),
      fleet: { ferry: o.sessions, plain: o.plain, rampMs, sendEveryMs: o.sendEveryMs, streamEveryMs: o.streamEveryMs, httpRps: o.httpRps },
      durationMs: rolloutMs,
      drains,
      events: events.map((e) => ({ ...e, t: e.t - t0 })),
      messages: m,
      ferryClient: {
        sessions: fleet.ferry.length,
        open: fleet.ferry.filter((r) => r.c.state === 'open').length,
        migrations: fleet.ferry.reduce((n, r) => n + (r.codes[1012] ?? 0), 0),
        resumed: fleet.ferry.reduce((n, r) => n + r.resumed, 0),
        neverResumed: fleet.ferry.filter((r) => r.resumed === 0).length,
        freshSessions: fleet.ferry.reduce((n, r) => n + r.fresh, 0),
        resets: fleet.ferry.reduce((n, r) => n + r.resets, 0),
        terminalCloses: fleet.ferry.reduce((n, r) => n + r.terminal, 0),
        reconnectCodes: fleet.ferry.reduce((acc, r) => { for (const [k, v] of Object.entries(r.codes)) acc[k] = (acc[k] ?? 0) + v; return acc }, {}),
        connectionAttempts: reconnects.ferry.filter(inRollout).length,
      },
      plain: {
        sessions: fleet.plain.length,
        up: fleet.plain.filter((r) => r.up).length,
        reconnects: reconnects.plain.filter(inRollout).length,
        closeCodes: fleet.plain.reduce((acc, r) => { for (const [k, v] of Object.entries(r.codes)) acc[k] = (acc[k] ?? 0) + v; return acc }, {}),
        errors: fleet.plain.reduce((acc, r) => { for (const [k, v] of Object.entries(r.errors)) acc[k] = (acc[k] ?? 0) + v; return acc }, {}),
        echoes: fleet.plain.reduce((n, r) => n + r.echoes, 0),
      },
      backend,
      http: { total: http.total, ok: http.ok, failed: http.failed, failedDuringRollout: httpFailuresInRollout, totalDuringRollout: http.total - httpBefore.total, byReason: http.byReason, failures: http.failures.map((f) => ({ ...f, t: f.t - t0 })), backendRequests: httpBackend.requests },
      handshakes: { budgetPerPod: mode === 'paced' ? o.budget : null, perPod, peakPerPod: Math.max(0, ...perPod.map((p) => p.peakPerSec)), admittedPeakPerPod: Math.max(0, ...perPod.map((p) => p.admittedPeakPerSec)), refused: perPod.reduce((n, p) => n + p.refused, 0), lbNoPod: lbReport.noPod },
      reconnects: {
        total: allReconnects.filter(inRollout).length,
        peakPerSec: slidingPeak(allReconnects.filter(inRollout)),
        series: ferryBins.map((b, k) => ({ s: b.s, ferry: b.n, plain: plainBins[k].n, total: b.n + plainBins[k].n })),
      },
      eventLoopLagMaxMs: {
        fleet: Math.max(0, ...fleetLagMs.filter((x) => inRollout(x.t)).map((x) => x.maxMs)),
        pods: Math.max(0, ...samples.filter((x) => inRollout(x.t)).map((x) => x.lagMaxMs)),
      },
      podWarnings: allPods.filter((p) => p.warningCount > 0).map((p) => ({ pod: p.id, count: p.warningCount, first: p.warnings })),
      totalMs: Date.now() - startedAt,
    }
    if (o.raw) {
      const rel = (ts) => ts.filter(inRollout).map((t) => t - t0).sort((a, b) => a - b)
      result.raw = { progress: Object.fromEntries(allPods.filter((p) => p.progress !== undefined).map((p) => [p.id, p.progress])), fleetLagMs: fleetLagMs.map((x) => ({ ...x, t: x.t - t0 })), migrations: rel(migrations), reconnects: { ferry: rel(reconnects.ferry), plain: rel(reconnects.plain) }, arrivals: Object.fromEntries(Object.entries(lbReport.pods).map(([pod, s]) => [pod, rel(s.ws)])), samples: samples.map((x) => ({ ...x, t: x.t - t0 })) }
    }
    return result
  } finally {
    fleet.stopping = true
    for (const t of res.timers) { clearInterval(t); clearTimeout(t) }
    for (const r of fleet.ferry) { try { r.c.close() } catch {} }
    for (const r of fleet.plain) { try { r.ws?.terminate() } catch {} }
    res.lag?.disable()
    for (const req of http.inFlight) req.destroy()
    http.agent.destroy()
    await killAll(res)
  }
}

/** The paced run's pass/fail list: [{ name, ok, detail }]. */
export function checks (r) {
  const m = r.messages
  const out = []
  const add = (name, ok, detail) => out.push({ name, ok: Boolean(ok), detail })
  add('ferry/client messages lost: 0', m.toBackend.lost + m.toClient.lost === 0, `${m.toBackend.lost} client→backend (of ${m.toBackend.sent}), ${m.toClient.lost} backend→client (of ${m.toClient.sent})`)
  add('ferry/client messages duplicated: 0', m.toBackend.duplicated + m.toClient.duplicated === 0, `${m.toBackend.duplicated} client→backend, ${m.toClient.duplicated} backend→client`)
  add('ferry/client messages reordered: 0', m.toBackend.reordered + m.toClient.reordered === 0, `${m.toBackend.reordered} client→backend, ${m.toClient.reordered} backend→client`)
  add('ferry/client backend sessions closed: 0', r.backend.ferryClosed === 0, `${r.backend.ferryClosed} closed during the rollout`)
  add('ferry/client backend sessions re-created: 0', r.backend.ferryCreated === 0 && r.ferryClient.freshSessions === 0 && r.ferryClient.resets === 0 && r.backend.sessionsWithMoreThanOneBackendSession === 0,
    `${r.backend.ferryCreated} created on the backends, ${r.ferryClient.freshSessions} fresh sessions and ${r.ferryClient.resets} resets seen by clients`)
  add('every ferry/client session migrated and resumed, still open', r.ferryClient.neverResumed === 0 && r.ferryClient.open === r.ferryClient.sessions && r.ferryClient.terminalCloses === 0,
    `${r.ferryClient.resumed} resumes, ${r.ferryClient.neverResumed} sessions never moved, ${r.ferryClient.open}/${r.ferryClient.sessions} open, ${r.ferryClient.terminalCloses} closed for good`)
  add('HTTP requests failed: 0', r.http.failed === 0 && r.http.total > 0, `${r.http.failed} of ${r.http.total}${r.http.failed > 0 ? ` (${JSON.stringify(r.http.byReason)})` : ''}`)
  add(`peak new WebSocket handshakes per pod per second ≤ budget (${r.handshakes.budgetPerPod})`, r.handshakes.peakPerPod <= r.handshakes.budgetPerPod,
    `peak ${r.handshakes.peakPerPod}/s (${r.handshakes.perPod.map((p) => `${p.pod} ${p.peakPerSec}`).join(', ')})`)
  add('every drained pod exited 0', r.drains.every((d) => d.exitCode === 0), r.drains.map((d) => `${d.pod}: ${d.exitCode ?? d.signal}`).join(', '))
  return out
}

/** Both runs (naive unless opts.naive === false); returns { machine, options, runs, checks, ok }. */
export async function run (opts = {}, log = (s) => process.stderr.write(`${s}\n`)) {
  const o = { ...DEFAULTS, ...opts }
  const machine = machineInfo({ affinity: o.affinity })
  const runs = {}
  runs.paced = await scenario('paced', o, log)
  if (o.naive) runs.naive = await scenario('naive', o, log)
  const list = checks(runs.paced)
  const result = { machine, options: recordedOptions(o), runs, checks: list, ok: list.every((c) => c.ok), at: new Date().toISOString() }
  writeResults(o, 'rolling-upgrade', result, renderMarkdown, renderSvg)
  return result
}

// ---- output ---------------------------------------------------------------------------------------
export function renderMarkdown (res) {
  const { paced, naive } = res.runs
  const o = res.options
  const col = (f) => `| ${f(paced)} | ${naive === undefined ? '—' : f(naive)} |`
  const msgs = (r, k) => `${fmt(r.messages.toBackend[k])} / ${fmt(r.messages.toClient[k])}`
  const rate = (r) => r.drains.map((d) => d.ratePerSec).filter((x) => x !== undefined).map((x) => x === -1 || x >= 100_000 ? 'all at once' : x).join(', ')
  const lines = [
    `# Rolling upgrade under load (native-bench/rolling-upgrade.mjs)`,
    '',
    `${res.machine.cpus} × ${res.machine.model}, ${res.machine.memGiB} GiB, Linux ${res.machine.kernel}, Node ${res.machine.node} (load average ${res.machine.loadavg1} at the start). ${res.at}.`,
    '',
    `${o.pods} Ferry pods behind a load balancer that sends each new connection to a ready pod (/readyz polled every ${o.lbPollMs} ms), two ferry/backend echo backends (resume on), one HTTP backend, affinity store: ${res.machine.affinity}. ` +
    `Fleet: ${fmt(o.sessions)} ferry/client sessions (a numbered message every ${o.sendEveryMs / 1000} s each way, plus its echo), ${fmt(o.plain)} plain WebSocket sessions (reconnect by themselves), ${o.httpRps} HTTP requests/s over keep-alive. ` +
    'Each pod in turn: SIGTERM, exit, a fresh process with the same config, ready; the next once every session is back.',
    '',
    `- **paced**: \`drain: { acceptGraceMs: ${o.acceptGraceMs}, spreadMs: ${o.spreadMs}, maxMigrationsPerSec: ${o.maxMigrationsPerSec}, deadlineMs: ${o.deadlineMs} }\`, \`admission: { handshakesPerSec: ${o.budget}, burst: ${o.burst}, retryAfterMs: ${o.retryAfterMs} }\``,
    `- **naive**: \`drain: { acceptGraceMs: 0, spreadMs: 0, maxMigrationsPerSec: 1000000, deadlineMs: ${o.naiveDeadlineMs} }\`, \`admission: { handshakesPerSec: 0 }\`: the listener closed and every session closed (1012) at once (without raising maxMigrationsPerSec its default, 200/s, would still pace them)`,
    '',
    `Budget: each pod admits at most \`admission.handshakesPerSec\` = ${o.budget} new WebSocket handshakes per second. "Handshakes arriving per pod" counts every WebSocket upgrade the load balancer sent to a pod (admitted or refused), most in any 1 s window, from the first SIGTERM to the end.`,
    '',
    '| | paced (drain + admission) | naive (all at once) |',
    '| --- | --- | --- |',
    `| ferry/client messages lost (client→backend / backend→client) ${col((r) => msgs(r, 'lost'))}`,
    `| ferry/client messages duplicated ${col((r) => msgs(r, 'duplicated'))}`,
    `| ferry/client messages reordered ${col((r) => msgs(r, 'reordered'))}`,
    `| messages checked (client→backend / backend→client) ${col((r) => msgs(r, 'sent'))}`,
    `| ferry/client backend sessions closed / re-created ${col((r) => `${r.backend.ferryClosed} / ${r.backend.ferryCreated}`)}`,
    `| ferry/client migrations (close 1012) / resumes ${col((r) => `${fmt(r.ferryClient.migrations)} / ${fmt(r.backend.resumes)}`)}`,
    `| plain sessions closed / re-created on the backends ${col((r) => `${r.backend.plainClosed} / ${r.backend.plainCreated}`)}`,
    `| HTTP requests failed / total ${col((r) => `${r.http.failed} / ${fmt(r.http.total)}${r.http.failed > 0 ? ` (${Object.entries(r.http.byReason).map(([k, v]) => `${v} ${k}`).join(', ')})` : ''}`)}`,
    `| peak fleet reconnects per second (any 1 s window) ${col((r) => fmt(r.reconnects.peakPerSec))}`,
    `| fleet reconnects in all (ferry/client / plain) ${col((r) => `${fmt(r.ferryClient.connectionAttempts)} / ${fmt(r.plain.reconnects)}`)}`,
    `| peak WebSocket handshakes arriving per pod per second, budget ${o.budget} ${col((r) => `**${r.handshakes.peakPerPod}** (${r.handshakes.perPod.map((p) => `${p.pod} ${p.peakPerSec}`).join(', ')})`)}`,
    `| peak handshakes admitted per pod per second (ferry_ws_sessions_total, 1 s samples) ${col((r) => r.handshakes.admittedPeakPerPod)}`,
    `| handshakes refused by admission control ${col((r) => r.handshakes.refused)}`,
    `| migration rate per draining pod (sessions/s, as logged) ${col((r) => rate(r) || '—')}`,
    `| drain per pod, SIGTERM → exit (s) ${col((r) => r.drains.map((d) => (d.drainMs / 1000).toFixed(1)).join(', '))}`,
    `| total rollout (first SIGTERM → last pod replaced, every session back) ${col((r) => `${(r.durationMs / 1000).toFixed(1)} s`)}`,
    '',
    `Paced run checks (the script exits 1 if one fails): ${res.checks.map((c) => `${c.ok ? '✔' : '✘'} ${c.name}`).join('; ')}.`,
    '',
    '![fleet reconnects per second, paced vs naive](rolling-upgrade.svg)',
    '',
  ]
  return lines.join('\n')
}

/** Fleet reconnects per second over time, one line per run (lib/svg.js lineChart). */
export function renderSvg (res, { width = 960, height = 420 } = {}) {
  const series = [
    { key: 'paced', label: 'paced (drain + admission)', color: '#1f77b4', run: res.runs.paced },
    { key: 'naive', label: 'naive (all at once)', color: '#d62728', run: res.runs.naive },
  ].filter((s) => s.run !== undefined)
  // The paced drain's cap: one draining pod migrates at most this many sessions per second.
  const cap = res.options.maxMigrationsPerSec
  return lineChart({
    title: `Rolling upgrade of ${res.options.pods} Ferry pods: fleet reconnects per second (${fmt(res.options.sessions)} ferry/client + ${fmt(res.options.plain)} plain sessions)`,
    xLabel: 'seconds since the first SIGTERM (1 s bins; a peak "in 1 s" is the most in any 1 s window, so it can exceed the bins)',
    yLabel: 'new WebSocket connections opened by the fleet per second',
    xmin: Math.min(...series.map((s) => s.run.reconnects.series[0].s)),
    xmax: Math.max(...series.map((s) => s.run.reconnects.series.at(-1).s + 1)),
    note: '▲ SIGTERM to a pod',
    refLines: [{ y: cap, color: '#1f77b4', label: `paced: drain.maxMigrationsPerSec = ${cap}` }],
    series: series.map((s) => ({
      label: `${s.label}: peak ${fmt(s.run.reconnects.peakPerSec)} in 1 s`,
      title: s.label,
      color: s.color,
      points: s.run.reconnects.series.map((b) => ({ x: b.s + 0.5, y: b.total })),
      markers: s.run.events.filter((e) => e.what === 'SIGTERM').map((e) => ({ x: e.t / 1000, title: `${s.key}: SIGTERM ${e.pod} at ${(e.t / 1000).toFixed(1)} s` })),
    })),
    width,
    height,
  })
}

// ---- main -----------------------------------------------------------------------------------------
function main () {
  return scriptMain({ name: 'rolling-upgrade', usage: '[--quick] [--OPTION VALUE]… [--no-naive]', prefix: 'ROLLING', defaults: DEFAULTS, parseArgs, run: (o) => run(o), renderMarkdown })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => { console.error(err); process.exit(1) })
}
