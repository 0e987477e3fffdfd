#!/usr/bin/env node
// native-bench/workers.mjs: what `gateway.workers` buys on this machine (issue 20, item 4). One run, on
// 127.0.0.1, side by side: Ferry with `gateway.workers: 1` and `2`, nginx `worker_processes 2`, HAProxy
// `nbthread 2`, and the backend direct (the ceiling), for
//   ka     HTTP keep-alive                      wrk -t1 -c50 (nginx backend, `return 200`, 33-byte body)
//   close  HTTP, a new connection per request   the same with `Connection: close`
//   tcp    TCP connections/s                    the same through each proxy's TCP listener (a new client
//                                               and a new backend connection per request)
//   ws     WebSocket passthrough echo           wsgen (lib/wsgen.c), 100 sessions ping-pong, 64-byte text,
//                                               uWS echo backend (lib/ws-echo.cjs)
//   mux    WebSocket mux echo                   the same through Ferry's protocol: mux to the ferry/backend
//                                               echo (lib/mux-echo.mjs); nginx and HAProxy have no mux: their
//                                               ratios are against their ws (passthrough) rows
// Per target: the rate (req/s, connections/s, msgs/s), p99, and the proxy's CPU per request: user+sys of
// all its processes (Ferry: the control plane and every worker; nginx: master and workers; HAProxy: its
// one process, every thread) from /proc over the measured window ÷ the requests (round trips) completed.
// Then the scaling ratio Ferry 2 workers ÷ 1 worker and the ratios against nginx and HAProxy.
//
//   node native-bench/workers.mjs [--quick] [--repeats N] [--seconds S] [--workloads ka,close,tcp,ws,mux]
//   (make bench-workers; the default is the quick profile, 3 × 4 s, about 7 minutes; a longer run:
//   --repeats 5 --seconds 15; --help lists every option, each also an env var WORKERS_<NAME>)
//
// Every process is started here and stopped by PID (SIGTERM, then SIGKILL), with its descendants;
// ports are picked free at start; nothing but 127.0.0.1 is bound or contacted. Writes
// results/workers.{md,json,svg}.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { adoptDescendants, cpuTree, threadCpu, fmt as fmtInt, freePort, haproxyHttpConf, httpGet, machineBusySeconds, machineInfo, maxOf, median, minOf, nginxBackendServer, nginxConf, nginxProxyServer, optionParser, procStat, recordedOptions, scriptMain, sleep, spawnChild, startFerry, stopAll, sumErrors, waitFor, waitPort, wrk, writeResults } from './lib/harness.mjs'
import { buildWsgen, establishedTo, percentiles, wsgenDriver } from './lib/ws.js'
import { barChart } from './lib/svg.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const ROOT = join(HERE, '..')
const HOST = '127.0.0.1'
const BODY = 'hello from the reference backend\n' // the backend's answer, as native-bench/run's
/** Node flags Ferry's own launchers use (as native-bench/run); cluster workers inherit them. */
const FERRY_NODE_FLAGS = ['--max-semi-space-size=32']
const MSG_BYTES = 64
/** Connections to the check each HTTP, TCP and WebSocket target with before measuring (new connections: the kernel spreads them over a pod's workers). */
const CHECKS = 20

export const DEFAULTS = {
  repeats: 3, seconds: 4, warmupSeconds: 2,
  connections: 50, wsSessions: 100, wsInflight: 1, muxLinks: 4, upstreamConnections: 16,
  workloads: 'ka,close,tcp,ws,mux',
  targets: 'direct,ferry1,ferry2,nginx,haproxy',
  outDir: join(HERE, 'results'), workDir: '', write: true,
}
const QUICK = { repeats: 3, seconds: 4, warmupSeconds: 2 }
export const parseArgs = optionParser(DEFAULTS, QUICK, 'WORKERS')

const WORKLOADS = {
  ka: { label: 'HTTP keep-alive', unit: 'req/s', kind: 'wrk', port: 'http', extra: [], backend: 'http' },
  close: { label: 'HTTP, new connection per request', unit: 'req/s', kind: 'wrk', port: 'http', extra: ['-H', 'Connection: close'], backend: 'http' },
  tcp: { label: 'TCP connections/s (HTTP with Connection: close through the TCP listener)', unit: 'conns/s', kind: 'wrk', port: 'tcp', extra: ['-H', 'Connection: close'], backend: 'http' },
  ws: { label: 'WebSocket passthrough echo', unit: 'msgs/s', kind: 'wsgen', port: 'ws', path: '/ws', backend: 'wsEcho' },
  mux: { label: 'WebSocket mux echo (Ferry protocol: mux)', unit: 'msgs/s', kind: 'wsgen', port: 'mux', path: '/mux', backend: 'muxEcho', ratiosAgainst: 'ws' },
}
const TARGET_LABELS = {
  direct: 'backend direct (no proxy: the ceiling)',
  ferry1: 'Ferry, gateway.workers: 1',
  ferry2: 'Ferry, gateway.workers: 2',
  nginx: 'nginx, worker_processes 2',
  haproxy: 'HAProxy, nbthread 2',
}
const SHORT = { direct: 'direct', ferry1: 'Ferry ×1', ferry2: 'Ferry ×2', nginx: 'nginx ×2', haproxy: 'HAProxy ×2' }

function validate (o) {
  for (const w of o.workloads.split(',')) if (WORKLOADS[w] === undefined) throw new Error(`--workloads: unknown ${w} (${Object.keys(WORKLOADS).join(', ')})`)
  for (const t of o.targets.split(',')) if (TARGET_LABELS[t] === undefined) throw new Error(`--targets: unknown ${t} (${Object.keys(TARGET_LABELS).join(', ')})`)
  if (o.repeats < 1 || o.seconds < 1) throw new Error('--repeats and --seconds must be at least 1')
}

// ---- configurations -------------------------------------------------------------------------------
function writeConfigs (dir, P, o) {
  const files = {}
  // The reference backend, as native-bench/run's: one worker, keep-alive for as long as anyone wants it.
  files.backend = join(dir, 'backend.conf')
  writeFileSync(files.backend, nginxConf(dir, 'backend', 1, { http: nginxBackendServer(HOST, P.backend, BODY) }))
  // nginx, 2 workers: the same proxy settings as native-bench/run (HTTP, stream) and lib/ws.js (WebSocket),
  // plus `reuseport` (a listening socket per worker, as Ferry's workers have for HTTP): without it, with
  // `multi_accept on`, one worker accepted all 50 of wrk's keep-alive connections (measured: 100% / 0%).
  files.nginx = join(dir, 'nginx.conf')
  writeFileSync(files.nginx, nginxConf(dir, 'nginx', 2, {
    http: nginxProxyServer({ host: HOST, port: P.nginx, backend: `${HOST}:${P.backend}`, echo: `${HOST}:${P.wsEcho}`, keepalive: o.upstreamConnections, reuseport: true }),
    stream: `  server { listen ${HOST}:${P.nginxTcp} backlog=4096 reuseport; proxy_pass ${HOST}:${P.backend}; }`,
  }))
  // HAProxy, 2 threads: at most 16 connections to the HTTP server (the rest queue), idle ones reused by anyone.
  files.haproxy = join(dir, 'haproxy.cfg')
  writeFileSync(files.haproxy, haproxyHttpConf({
    host: HOST, port: P.haproxy, backend: `${HOST}:${P.backend}`, echo: `${HOST}:${P.wsEcho}`, threads: 2, maxconn: o.upstreamConnections,
    extra: `listen tcp_conn\n  mode tcp\n  bind ${HOST}:${P.haproxyTcp}\n  server s1 ${HOST}:${P.backend}\n`,
  }))
  // Ferry: one config per worker count, every workload on one pod.
  for (const n of [1, 2]) {
    files[`ferry${n}`] = join(dir, `ferry${n}.yaml`)
    writeFileSync(files[`ferry${n}`], `gateway: { workers: ${n} }
listen:
  http: { host: ${HOST}, port: ${P[`ferry${n}`]} }
  admin: { host: ${HOST}, port: ${P[`ferry${n}Admin`]} }
  tcp:
    - { name: conn, host: ${HOST}, port: ${P[`ferry${n}Tcp`]}, upstream: web, maxConnections: 20000 }
upstreams:
  api: { protocol: http, endpoints: ["${HOST}:${P.backend}"], pool: { maxConnections: ${o.upstreamConnections}, queueLimit: 10000 } }
  web: { protocol: tcp, endpoints: ["${HOST}:${P.backend}"] }
  echo-ws: { protocol: ws, endpoints: ["${HOST}:${P.wsEcho}"] }
  echo-mux: { protocol: mux, endpoints: ["${HOST}:${P.muxEcho}"], pool: { links: ${o.muxLinks} } }
routes:
  - { match: { path: /ws }, upstream: echo-ws }
  - { match: { path: /mux }, upstream: echo-mux }
  - { match: { path: / }, upstream: api }
# Capacity, not policy (as lib/ws.js): nginx and HAProxy have no admission control.
admission: { handshakesPerSec: 0 }
drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 3000 }
resume: { secret: "native-bench-resume-secret-0123456789abcdef" }
logging: { level: info, accessLog: false }
`)
  }
  return files
}

// ---- the run ----------------------------------------------------------------------------------------
const log = (m) => process.stderr.write(`[workers] ${m}\n`)

export async function run (o) {
  const T0 = performance.now()
  const workloads = o.workloads.split(',')
  const targetNames = o.targets.split(',')
  const workDir = o.workDir || mkdtempSync(join(tmpdir(), 'ferry-bench-workers-'))
  mkdirSync(workDir, { recursive: true })
  const res = { children: new Set(), workDir }
  const transient = new Set()
  const machine = machineInfo({ loadavg1AtStart: Math.round(loadavg()[0] * 100) / 100 })
  const checks = []
  const check = (ok, name, detail, gate = true) => { checks.push({ ok, name, detail, gate }); return ok }
  const result = { date: new Date().toISOString(), command: `node native-bench/workers.mjs ${process.argv.slice(2).join(' ')}`.trim(), options: recordedOptions(o), machine, checks, runs: [], checked: {}, ferryLogs: {} }

  const P = {}
  for (const k of ['backend', 'wsEcho', 'muxEcho', 'ferry1', 'ferry1Admin', 'ferry1Tcp', 'ferry2', 'ferry2Admin', 'ferry2Tcp', 'nginx', 'nginxTcp', 'haproxy', 'haproxyTcp']) P[k] = await freePort()
  const files = writeConfigs(workDir, P, o)
  const driver = wsgenDriver({ bin: buildWsgen(ROOT, workDir), host: HOST, transient, sleep, size: MSG_BYTES })

  try {
    // ---- processes ----
    const procs = {}
    procs.backend = spawnChild(res, 'nginx', ['-p', workDir, '-c', files.backend])
    procs.wsEcho = spawnChild(res, process.execPath, [join(HERE, 'lib/ws-echo.cjs'), String(P.wsEcho), HOST])
    procs.muxEcho = spawnChild(res, process.execPath, [join(HERE, 'lib/mux-echo.mjs'), String(P.muxEcho), HOST])
    await Promise.all([waitPort(HOST, P.backend, 'backend nginx', procs.backend), waitPort(HOST, P.wsEcho, 'ws echo', procs.wsEcho), waitPort(HOST, P.muxEcho, 'mux echo', procs.muxEcho)])
    const pods = {}
    for (const n of [1, 2]) {
      const name = `ferry${n}`
      if (!targetNames.includes(name)) continue
      const logs = { warnings: [] }
      pods[name] = await startFerry(res, name, files[name], {}, (j) => { if (j.level >= 40 && logs.warnings.length < 20) logs.warnings.push({ level: j.level, msg: j.msg, code: j.code ?? j.err?.code, worker: j.worker }) }, FERRY_NODE_FLAGS)
      result.ferryLogs[name] = logs
      procs[name] = pods[name].child
    }
    if (targetNames.includes('nginx')) { procs.nginx = spawnChild(res, 'nginx', ['-p', workDir, '-c', files.nginx]); await waitPort(HOST, P.nginx, 'nginx', procs.nginx); await waitPort(HOST, P.nginxTcp, 'nginx stream', procs.nginx) }
    if (targetNames.includes('haproxy')) { procs.haproxy = spawnChild(res, 'haproxy', ['-f', files.haproxy]); await waitPort(HOST, P.haproxy, 'HAProxy', procs.haproxy); await waitPort(HOST, P.haproxyTcp, 'HAProxy tcp', procs.haproxy) }

    const status = async (name) => JSON.parse((await httpGet(HOST, P[`${name}Admin`], '/status')).body)
    // Ferry with workers: every worker running (its pid in /status), before anything is measured.
    for (const name of Object.keys(pods)) {
      const n = name === 'ferry2' ? 2 : 1
      if (n === 1) continue
      const ws = await waitFor(`${name}: ${n} workers running`, async () => { const w = (await status(name)).workers; return Array.isArray(w) && w.length === n && w.every((x) => x.state === 'running' && x.pid !== null) ? w : undefined }, 20_000, undefined, 100)
      check(ws.every((w) => procStat(w.pid)?.ppid === procs[name].pid), `${name}: ${n} worker processes, children of the control plane`, `control plane pid ${procs[name].pid}, workers ${ws.map((w) => w.pid).join(', ')}`)
    }
    for (const c of Object.values(procs)) adoptDescendants(c.pid)
    // Mux links connect at start, per worker: wait until all are up.
    const wantLinks = Object.keys(pods).reduce((a, n) => a + o.muxLinks * (n === 'ferry2' ? 2 : 1), 0)
    if (workloads.includes('mux') && wantLinks > 0) {
      await waitFor('mux links', () => establishedTo(P.muxEcho) >= wantLinks, 15_000).catch(() => {})
      check(establishedTo(P.muxEcho) === wantLinks, 'mux links', `${establishedTo(P.muxEcho)} links to the mux echo backend (${o.muxLinks} per worker: ${Object.keys(pods).map((n) => `${n} ${o.muxLinks * (n === 'ferry2' ? 2 : 1)}`).join(', ')})`)
    }

    const portOf = {
      direct: { http: P.backend, tcp: P.backend, ws: P.wsEcho },
      ferry1: { http: P.ferry1, tcp: P.ferry1Tcp, ws: P.ferry1, mux: P.ferry1 },
      ferry2: { http: P.ferry2, tcp: P.ferry2Tcp, ws: P.ferry2, mux: P.ferry2 },
      nginx: { http: P.nginx, tcp: P.nginxTcp, ws: P.nginx },
      haproxy: { http: P.haproxy, tcp: P.haproxyTcp, ws: P.haproxy },
    }
    const targetsFor = (w) => targetNames.filter((t) => portOf[t][WORKLOADS[w].port] !== undefined)
    const backendPid = (w) => procs[WORKLOADS[w].backend === 'http' ? 'backend' : WORKLOADS[w].backend].pid

    /** Ferry's workers from /status: { index, pid, served, sessions, restarts }. */
    const workersOf = async (name) => ((await status(name)).workers ?? []).map((w) => ({ index: w.index, pid: w.pid, served: w.clients?.httpRequestsServed ?? 0, sessions: w.clients?.webSocketSessions ?? 0, restarts: w.restarts }))
    const settle = () => sleep(700) // a worker's heartbeat (with its counters) comes every 500 ms

    // ---- checks: every target answers correctly, and Ferry's workers all take part ----
    const tCheck = performance.now()
    for (const w of workloads) {
      for (const t of targetsFor(w)) {
        const port = portOf[t][WORKLOADS[w].port]
        const before = t === 'ferry2' ? await workersOf(t) : undefined
        let detail
        let took // Ferry ×2: what each worker took of the check
        if (WORKLOADS[w].kind === 'wrk') {
          const tries = [...(w === 'ka' ? [{ connection: 'keep-alive' }] : []), ...Array.from({ length: CHECKS }, () => ({ connection: 'close' }))]
          for (const headers of tries) {
            const r = await httpGet(HOST, port, '/', headers)
            if (r.status !== 200 || r.body !== BODY) throw new Error(`${TARGET_LABELS[t]}, ${w}: GET / answered ${r.status} ${JSON.stringify(r.body.slice(0, 200))} instead of 200 ${JSON.stringify(BODY)}`)
          }
          detail = `${tries.length} GET / (${w === 'ka' ? 'one keep-alive, ' : ''}${CHECKS} on new connections): 200 and the backend's body`
        } else {
          const hs = await driver.gen('idle', { port }, CHECKS, { path: WORKLOADS[w].path }, 1)
          try {
            if (hs[0].ready.failed > 0) throw new Error(`${TARGET_LABELS[t]}, ${w}: ${hs[0].ready.failed} of ${CHECKS} sessions did not open: ${hs[0].ready.error}`)
            driver.send(hs, 'check')
            const c = await driver.next(hs[0], 'checked', 20_000)
            if (c.ok !== CHECKS || c.bad !== 0) throw new Error(`${TARGET_LABELS[t]}, ${w}: echo check ${c.ok}/${CHECKS} echoed, ${c.bad} wrong: ${c.error}`)
            if (t === 'ferry2') { await settle(); took = (await workersOf(t)).map((x) => x.sessions) }
          } finally { await driver.closeGen(hs) }
          detail = `${CHECKS} sessions, one echo each, byte for byte${took ? `; sessions per worker while open: ${took.join(' + ')}` : ''}`
        }
        if (t === 'ferry2' && WORKLOADS[w].port === 'http') {
          await settle()
          took = (await workersOf(t)).map((x, i) => x.served - (before[i]?.served ?? 0))
          detail += `; requests per worker: ${took.join(' + ')}`
        }
        if (took !== undefined && !took.every((n) => n > 0)) throw new Error(`${TARGET_LABELS[t]}, ${w}: not every worker took part in the check (${took.join(' + ')})`)
        result.checked[`${w} ${t}`] = detail
      }
    }
    check(true, 'every target answers correctly', `${Object.keys(result.checked).length} target × workload checks passed in ${((performance.now() - tCheck) / 1000).toFixed(0)} s (details in workers.json: checked)`)

    // ---- one measured window ----
    async function measure (w, t, seconds) {
      const W = WORKLOADS[w]
      const port = portOf[t][W.port]
      const rootPid = t === 'direct' ? undefined : procs[t].pid
      const before = t === 'ferry2' ? await workersOf(t) : undefined
      let c0, b0, m0, at0, gen
      let th0
      const begin = () => { c0 = rootPid ? cpuTree(rootPid) : undefined; th0 = t === 'haproxy' ? threadCpu(rootPid) : undefined; b0 = cpuTree(backendPid(w)); m0 = machineBusySeconds(); at0 = performance.now() }
      const out = { workload: w, target: t }
      let hs
      let during
      try {
        if (W.kind === 'wrk') {
          let child; let genSample
          const tr = { add (c) { child = c; transient.add(c) }, delete (c) { transient.delete(c) } }
          begin()
          const p = wrk(`http://${HOST}:${port}/`, seconds, { connections: o.connections, extra: W.extra, transient: tr })
          // wrk's own CPU, read shortly before it ends (it is gone by the time it has reported).
          const timer = setTimeout(() => { const s = child && procStat(child.pid); if (s) genSample = { cpu: s.cpu, at: performance.now() } }, seconds * 1000 - 150)
          let r
          try { r = await p } finally { clearTimeout(timer) }
          Object.assign(out, { rate: r.rps, requests: r.requests, p50ms: r.p50ms, p99ms: r.p99ms, errors: sumErrors(r.socketErrors) + r.non2xx, errorDetail: { ...r.socketErrors, non2xx: r.non2xx } })
          gen = genSample ? genSample.cpu / ((genSample.at - at0) / 1000) : NaN
        } else {
          hs = await driver.gen('echo', { port }, o.wsSessions, { path: W.path, inflight: o.wsInflight, seconds }, 1)
          if (hs[0].ready.failed > 0) throw new Error(`${hs[0].ready.failed} of ${o.wsSessions} sessions did not open: ${hs[0].ready.error}`)
          begin()
          driver.send(hs, 'go')
          const r = await driver.next(hs[0], 'result', (seconds + 20) * 1000)
          const [p50ms, p99ms] = percentiles([r.hist], [50, 99])
          Object.assign(out, { rate: r.received / r.seconds, requests: r.received, p50ms, p99ms, errors: r.lost + r.bad + r.closed, errorDetail: { lost: r.lost, bad: r.bad, closed: r.closed, error: r.error || undefined } })
          gen = r.cpu / r.seconds
        }
      } finally {
        if (c0 !== undefined || b0 !== undefined) {
          const wall = (performance.now() - at0) / 1000
          const c1 = rootPid ? cpuTree(rootPid) : undefined
          out.wallSeconds = wall
          if (c1) {
            out.proxyCpuSeconds = c1.cpu - c0.cpu
            out.proxyCores = out.proxyCpuSeconds / wall
            out.perProcess = Object.keys(c1.byPid).map((pid) => ({ pid: Number(pid), cpuSeconds: c1.byPid[pid] - (c0.byPid[pid] ?? 0) }))
            if (th0 !== undefined) { const th1 = threadCpu(rootPid); out.perThread = Object.keys(th1).map((tid) => ({ tid: Number(tid), cpuSeconds: th1[tid] - (th0[tid] ?? 0) })) }
          }
          out.backendCores = (cpuTree(backendPid(w)).cpu - b0.cpu) / wall
          out.machineCores = (machineBusySeconds() - m0) / wall
          out.generatorCores = gen
          // What nobody in this run used: other processes on the machine (other test runs).
          out.otherCores = out.machineCores - (out.proxyCores ?? 0) - out.backendCores - (Number.isFinite(gen) ? gen : 0)
        }
        if (hs !== undefined) {
          if (t === 'ferry2' && out.requests !== undefined) during = await workersOf(t).catch(() => undefined) // sessions still open
          await driver.closeGen(hs)
        }
      }
      out.usPerRequest = out.proxyCpuSeconds / out.requests * 1e6
      if (t === 'ferry2') {
        if (W.kind === 'wrk') await settle()
        const after = during ?? await workersOf(t)
        out.workers = after.map((x, i) => ({ index: x.index, pid: x.pid, restarts: x.restarts, served: x.served - (before[i]?.served ?? 0), sessions: x.sessions, cpuSeconds: out.perProcess.find((p) => p.pid === x.pid)?.cpuSeconds ?? NaN }))
        out.controlCpuSeconds = out.perProcess.find((p) => p.pid === rootPid)?.cpuSeconds ?? NaN
      }
      return out
    }
    const line = (r) => `${r.workload.padEnd(5)} ${r.target.padEnd(7)} ${fmt(r.rate).padStart(7)} ${WORKLOADS[r.workload].unit.padEnd(7)} p99 ${fmt(r.p99ms, 2).padStart(6)} ms  proxy ${fmt(r.usPerRequest, 1).padStart(5)} µs/req, ${pct(r.proxyCores)}  backend ${pct(r.backendCores)}  gen ${pct(r.generatorCores)}  machine ${pct(r.machineCores)}  other ${pct(r.otherCores)}${r.errors ? `  ERRORS ${JSON.stringify(r.errorDetail)}` : ''}${r.workers ? `  workers ${r.workers.map((x) => `#${x.index} ${workerSplit(r, x)}`).join(' / ')}` : ''}`

    // ---- warm-up (not counted), then the interleaved runs ----
    const busyBefore = await (async () => { const a = machineBusySeconds(); await sleep(1000); return machineBusySeconds() - a })()
    machine.busyCoresBeforeStart = busyBefore
    if (busyBefore > 0.2) log(`other processes kept ${pct(busyBefore)} of a core busy before the start: figures will be noisy`)
    const tWarm = performance.now()
    for (const w of workloads) for (const t of targetsFor(w)) await measure(w, t, o.warmupSeconds)
    log(`warm-up done (${((performance.now() - tWarm) / 1000).toFixed(0)} s); ${o.repeats} repeats × ${o.seconds} s`)
    for (let rep = 0; rep < o.repeats; rep++) {
      for (const w of workloads) {
        for (const t of targetsFor(w)) {
          const r = { rep, ...await measure(w, t, o.seconds) }
          result.runs.push(r)
          log(`rep ${rep + 1}/${o.repeats} ${line(r)}`)
        }
      }
    }
    // The pod's workers were the same processes from the first run to the last.
    if (pods.ferry2) {
      const ws = await workersOf('ferry2')
      check(ws.every((w) => w.restarts === 0), 'ferry2: no worker restarted during the run', ws.map((w) => `worker ${w.index}: pid ${w.pid}, restarts ${w.restarts}`).join('; '))
    }
  } finally {
    await stopAll(res)
    for (const c of transient) { try { c.kill('SIGKILL') } catch {} }
  }
  const leftovers = [...res.children].map((c) => c.pid)
  check(leftovers.length === 0, 'every process started was stopped', leftovers.length === 0 ? 'none left' : leftovers.join(', '))
  if (leftovers.length === 0 && !o.workDir) rmSync(workDir, { recursive: true, force: true })
  for (const [name, l] of Object.entries(result.ferryLogs)) check(l.warnings.length === 0, `${name}: no warnings or errors in its log (control plane and workers)`, l.warnings.length === 0 ? 'none' : JSON.stringify(l.warnings.slice(0, 5)))
  machine.loadavg1AtEnd = Math.round(loadavg()[0] * 100) / 100
  result.seconds = (performance.now() - T0) / 1000
  summarize(result, workloads, targetNames, check)
  result.ok = checks.every((c) => c.ok || c.gate === false)
  writeResults(o, 'workers', result, renderMarkdown, renderSvg)
  return result
}

const fmt = (n, d = 0) => Number.isFinite(n) ? (d === 0 ? fmtInt(Math.round(n)) : n.toFixed(d)) : '—'
const pct = (x) => Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : '—'
const ratio = (a, b) => Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN
/** One worker's part of a run: requests (HTTP), sessions (WebSocket) and CPU share. */
function workerSplit (r, x) {
  const total = r.workers.reduce((a, w) => a + w.cpuSeconds, 0)
  const what = r.workload === 'ws' || r.workload === 'mux' ? `${x.sessions} sessions` : r.workload === 'tcp' ? '' : `${fmtInt(x.served)} req`
  return `${what}${what ? ', ' : ''}${pct(x.cpuSeconds / total)} of the workers' CPU`
}

// ---- summaries and checks ---------------------------------------------------------------------------
function summarize (result, workloads, targetNames, check) {
  const S = []
  for (const w of workloads) {
    for (const t of targetNames) {
      const rs = result.runs.filter((r) => r.workload === w && r.target === t)
      if (rs.length === 0) continue
      const s = {
        workload: w, target: t,
        rate: median(rs.map((r) => r.rate)), rateMin: minOf(rs.map((r) => r.rate)), rateMax: maxOf(rs.map((r) => r.rate)),
        p99ms: median(rs.map((r) => r.p99ms)), p99Min: minOf(rs.map((r) => r.p99ms)), p99Max: maxOf(rs.map((r) => r.p99ms)),
        usPerRequest: median(rs.map((r) => r.usPerRequest)), usMin: minOf(rs.map((r) => r.usPerRequest)), usMax: maxOf(rs.map((r) => r.usPerRequest)),
        proxyCores: median(rs.map((r) => r.proxyCores)), backendCores: median(rs.map((r) => r.backendCores)), generatorCores: median(rs.map((r) => r.generatorCores)),
        machineCores: median(rs.map((r) => r.machineCores)), otherCores: median(rs.map((r) => r.otherCores)),
        errors: rs.reduce((a, r) => a + (r.errors ?? 0), 0),
      }
      if (t === 'ferry2') {
        const n = rs[0].workers.length
        s.workerCpuShare = Array.from({ length: n }, (_, i) => median(rs.map((r) => r.workers[i].cpuSeconds / r.workers.reduce((a, x) => a + x.cpuSeconds, 0))))
        s.workerServedShare = Array.from({ length: n }, (_, i) => median(rs.map((r) => r.workers[i].served / Math.max(1, r.workers.reduce((a, x) => a + x.served, 0)))))
        s.workerSessions = Array.from({ length: n }, (_, i) => median(rs.map((r) => r.workers[i].sessions)))
        s.controlUsPerRequest = median(rs.map((r) => r.controlCpuSeconds / r.requests * 1e6))
        s.controlCores = median(rs.map((r) => r.controlCpuSeconds / r.wallSeconds))
      }
      // nginx's workers (the master does nothing per request) and HAProxy's threads by their CPU, busiest first.
      const busiest = (parts) => { const xs = parts.map((p) => p.cpuSeconds).sort((a, b) => b - a); const sum = xs.reduce((a, b) => a + b, 0); return xs.map((x) => x / sum) }
      if (t === 'nginx') s.workerCpuShare = [0, 1].map((k) => median(rs.map((r) => busiest(r.perProcess.filter((p) => p.pid !== r.perProcess[0].pid))[k])))
      if (t === 'haproxy') {
        const n = Math.max(...rs.map((r) => r.perThread.length))
        s.threadCpuShare = Array.from({ length: n }, (_, k) => median(rs.map((r) => busiest(r.perThread)[k])))
      }
      S.push(s)
    }
  }
  // Ratios within each repeat (the two runs are minutes apart at most, under the same machine load), then
  // their median and range: steadier on a shared machine than a ratio of medians.
  const runsOf = (w, t) => result.runs.filter((r) => r.workload === w && r.target === t)
  const paired = (w, t, refW, refT, key) => {
    const xs = runsOf(w, t).map((r) => ratio(r[key], runsOf(refW, refT).find((x) => x.rep === r.rep)?.[key])).filter(Number.isFinite)
    return { median: median(xs), min: minOf(xs), max: maxOf(xs) }
  }
  for (const s of S) {
    const ref = WORKLOADS[s.workload].ratiosAgainst ?? s.workload
    s.ratios = {}
    for (const [name, refW] of [['ferry1', s.workload], ['nginx', ref], ['haproxy', ref]]) {
      if (runsOf(refW, name).length === 0) continue
      s.ratios[name] = { rate: paired(s.workload, s.target, refW, name, 'rate'), usPerRequest: paired(s.workload, s.target, refW, name, 'usPerRequest'), p99ms: paired(s.workload, s.target, refW, name, 'p99ms') }
    }
  }
  result.summary = S

  // Checks: whether the harness measured what it claims, not whether Ferry is fast.
  for (const w of workloads) {
    const bad = S.filter((s) => s.workload === w && s.errors > 0)
    check(bad.length === 0, `${w}: no errors in any measured run`, bad.length === 0 ? 'socket errors, non-2xx, WebSocket messages lost, wrong or closed: 0' : bad.map((s) => `${s.target} ${s.errors} (${JSON.stringify(result.runs.filter((r) => r.workload === w && r.target === s.target && r.errors > 0).map((r) => r.errorDetail))})`).join('; '))
    const f2 = result.runs.filter((r) => r.workload === w && r.target === 'ferry2')
    if (f2.length > 0) {
      const idle = f2.filter((r) => r.workers.some((x) => (w === 'ws' || w === 'mux' ? x.sessions === 0 : w === 'tcp' ? x.cpuSeconds <= 0 : x.served === 0)))
      const what = w === 'ws' || w === 'mux' ? 'sessions open per worker (/status workers[].clients.webSocketSessions)' : w === 'tcp' ? 'CPU seconds per worker (/status counts no TCP connections per worker)' : 'requests served per worker (/status workers[].clients.httpRequestsServed)'
      check(idle.length === 0, `${w}: both of Ferry's workers took traffic in every measured run`, `${what}: ${f2.map((r) => r.workers.map((x) => w === 'ws' || w === 'mux' ? x.sessions : w === 'tcp' ? x.cpuSeconds.toFixed(2) : x.served).join(' + ')).join('; ')}`)
      const skew = f2.filter((r) => { const sh = r.workers.map((x) => x.cpuSeconds); return Math.min(...sh) / sh.reduce((a, b) => a + b, 0) < 0.25 })
      check(skew.length === 0, `${w}: Ferry's workers share the work (each ≥ 25% of the workers' CPU)`, f2.map((r) => r.workers.map((x) => pct(x.cpuSeconds / r.workers.reduce((a, y) => a + y.cpuSeconds, 0))).join(' / ')).join('; '), false)
    }
  }
  check(!(result.machine.busyCoresBeforeStart > 0.2) && !(result.machine.loadavg1AtStart > 1.5), 'the machine was otherwise idle', `busy before the start ${pct(result.machine.busyCoresBeforeStart)} of a core, load average ${result.machine.loadavg1AtStart} at the start and ${result.machine.loadavg1AtEnd} at the end; median CPU of other processes during the runs ${pct(median(result.runs.map((r) => r.otherCores)))} (other test runs share this machine: rates are noisy, CPU per request less so)`, false)
}

// ---- markdown ---------------------------------------------------------------------------------------
function renderMarkdown (r) {
  const o = r.options
  const S = r.summary ?? []
  const m = r.machine
  const workloads = [...new Set(S.map((s) => s.workload))]
  const get = (w, t) => S.find((s) => s.workload === w && s.target === t)
  const range = (a, lo, hi, d = 0) => `${fmt(a, d)} (${fmt(lo, d)}–${fmt(hi, d)})`
  const rr = (x) => x === undefined ? '—' : `${fmt(x.median, 2)} (${fmt(x.min, 2)}–${fmt(x.max, 2)})`
  const wl = (w) => w === 'ws' || w === 'mux' ? `${WORKLOADS[w].label}, ${o.wsSessions} sessions × ${o.wsInflight} in flight` : WORKLOADS[w].label
  const lines = [
    '# native-bench: Ferry `gateway.workers` 1 and 2, nginx and HAProxy with 2 workers',
    '',
    `${r.date.slice(0, 16).replace('T', ' ')} UTC, \`${r.command}\` (${fmt(r.seconds)} s). Machine: ${m.cpus} CPUs, ${m.model}, Linux ${m.kernel}, Node ${m.node}.`,
    `Load: average ${m.loadavg1AtStart} at the start, ${m.loadavg1AtEnd} at the end; other processes used ${pct(m.busyCoresBeforeStart)} of a core in the second before the first run and a median ${pct(median(r.runs.map((x) => x.otherCores)))} during the runs${m.loadavg1AtStart > 1.5 || m.busyCoresBeforeStart > 0.2 ? ' (**a busy machine: other test runs share it; rates are noisy, CPU per request much less**)' : ''}.`,
    '',
    `**On this ${m.cpus}-core machine the load generator (wrk, 1 thread; wsgen, 1 process) and the backend run on the same ${m.cpus} cores as the proxy.** A 2-worker proxy never has 2 cores to itself: its rate is bounded by what the generator and the backend leave it, so the rate's scaling from 1 to 2 workers says little about a pod with cores of its own. The proxy's CPU per request (user+sys of all its processes over the window ÷ requests) does not depend on how much CPU it got and is the steadiest figure here.`,
    '',
    `${o.repeats} interleaved repeats × ${o.seconds} s per workload and target after a ${o.warmupSeconds} s warm-up each; medians with (min–max). HTTP and TCP: wrk 1 thread × ${o.connections} connections (\`--latency\`); backend nginx, 1 worker, \`return 200\` with a ${BODY.length}-byte body. WebSocket: ${o.wsSessions} sessions, ${o.wsInflight} ${MSG_BYTES}-byte message${o.wsInflight > 1 ? 's' : ''} in flight each, echoed by a uWebSockets.js process (ws, direct) or a \`ferry/backend\` process (mux); every echo checked byte for byte and in order.`,
    `Proxies: Ferry \`pool.maxConnections: ${o.upstreamConnections}\` per worker, mux \`pool.links: ${o.muxLinks}\` per worker (so ${o.muxLinks * 2} links with 2 workers); nginx \`keepalive ${o.upstreamConnections}\` per worker (an idle cache, not a cap) and \`listen … reuseport\` (without it one worker accepted all of wrk's keep-alive connections); HAProxy \`maxconn ${o.upstreamConnections}\` + \`http-reuse always\` (one pool for both threads). Ferry's workers share the HTTP port with SO_REUSEPORT (the kernel hashes each new connection to one of them) and the TCP listener through the cluster module's shared handle.`,
    `CPU per request: the proxy's processes (Ferry: control plane + every worker; nginx: master + workers; HAProxy: one process, all threads) from /proc/PID/stat over the measured window ÷ requests completed (WebSocket: round trips). Cores: CPU seconds ÷ wall seconds of the window (1.00 = one core busy); \`other\` is the machine's busy CPU minus the proxy, the backend and the generator: other processes.`,
    '',
    '## Scaling and ratios',
    '',
    `Each ratio is taken within a repeat (the two runs minutes apart at most, under the same machine load): the median of the ${o.repeats} repeats with (min–max). Rate ratios: higher is better; CPU per request and p99: lower is better. mux: nginx and HAProxy have no mux protocol, so Ferry mux is compared with their WebSocket passthrough runs (the same client load).`,
    '',
    '| workload | Ferry 2 ÷ 1 workers: rate | Ferry 2 ÷ 1: CPU/req | Ferry ×2 ÷ nginx ×2: rate | ÷ nginx: CPU/req | Ferry ×2 ÷ HAProxy ×2: rate | ÷ HAProxy: CPU/req | Ferry ×1 CPU/req ÷ nginx ×2 | Ferry ×2 p99 ÷ nginx ×2 |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...workloads.map((w) => {
      const f2 = get(w, 'ferry2')?.ratios ?? {}; const f1 = get(w, 'ferry1')?.ratios ?? {}
      return `| ${wl(w)} | ${rr(f2.ferry1?.rate)} | ${rr(f2.ferry1?.usPerRequest)} | ${rr(f2.nginx?.rate)} | ${rr(f2.nginx?.usPerRequest)} | ${rr(f2.haproxy?.rate)} | ${rr(f2.haproxy?.usPerRequest)} | ${rr(f1.nginx?.usPerRequest)} | ${rr(f2.nginx?.p99ms)} |`
    }),
    '',
    '## Results',
    '',
    `| workload | target | rate | p99 ms | proxy CPU µs/request | proxy cores | rate vs nginx / HAProxy (per repeat, median) | CPU/req vs nginx / HAProxy (same) | errors | cores: backend / generator / machine / other |`,
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...S.map((s) => `| ${wl(s.workload)} | ${TARGET_LABELS[s.target]} | ${range(s.rate, s.rateMin, s.rateMax)} ${WORKLOADS[s.workload].unit} | ${range(s.p99ms, s.p99Min, s.p99Max, 2)} | ${s.target === 'direct' ? '—' : range(s.usPerRequest, s.usMin, s.usMax, 1)} | ${s.target === 'direct' ? '—' : fmt(s.proxyCores, 2)} | ${fmt(s.ratios.nginx?.rate.median, 2)} / ${fmt(s.ratios.haproxy?.rate.median, 2)} | ${s.target === 'direct' ? '—' : `${fmt(s.ratios.nginx?.usPerRequest.median, 2)} / ${fmt(s.ratios.haproxy?.usPerRequest.median, 2)}`} | ${s.errors} | ${fmt(s.backendCores, 2)} / ${fmt(s.generatorCores, 2)} / ${fmt(s.machineCores, 2)} / ${fmt(s.otherCores, 2)} |`),
    '',
    '## How the work spread over the workers',
    '',
    'Ferry ×2: each worker\'s share of the workers\' CPU, of the requests served (/status `workers[].clients.httpRequestsServed`, HTTP) or the sessions it held (`webSocketSessions`, WebSocket), and the control plane\'s CPU (per request, and in cores: its heartbeats from the workers and the limit shares it moves cost about the same per second whatever the traffic). nginx ×2: its two workers\' shares of their CPU; HAProxy ×2: its two threads\' shares (from /proc/PID/task), busiest first.',
    '',
    '| workload | Ferry ×2: CPU share per worker | requests / sessions per worker | control plane: µs/request, cores | nginx ×2: CPU share per worker | HAProxy ×2: CPU share per thread |',
    '| --- | --- | --- | ---: | --- | --- |',
    ...workloads.map((w) => {
      const f2 = get(w, 'ferry2'); const ng = get(w, 'nginx'); const hp = get(w, 'haproxy')
      const parts = f2 === undefined ? '—' : w === 'ws' || w === 'mux' ? `${f2.workerSessions.map((x) => fmt(x)).join(' / ')} sessions` : w === 'tcp' ? 'not counted per worker' : f2.workerServedShare.map(pct).join(' / ')
      return `| ${wl(w)} | ${f2 ? f2.workerCpuShare.map(pct).join(' / ') : '—'} | ${parts} | ${f2 ? `${fmt(f2.controlUsPerRequest, 2)}, ${fmt(f2.controlCores, 3)}` : '—'} | ${ng ? ng.workerCpuShare.map(pct).join(' / ') : '—'} | ${hp ? hp.threadCpuShare.map(pct).join(' / ') : '—'} |`
    }),
    '',
    'Checks:',
    ...r.checks.map((c) => `- ${c.ok ? 'ok' : c.gate === false ? 'note' : '**FAILED**'}: ${c.name}: ${c.detail}`),
    '',
  ]
  return lines.join('\n')
}

function renderSvg (r) {
  const S = r.summary ?? []
  const workloads = [...new Set(S.map((s) => s.workload))]
  return barChart({
    title: `Proxy CPU per request, µs (user+sys of all its processes ÷ requests; median of ${r.options.repeats}, whiskers min–max; lower is better)`,
    unit: 'µs/request', decimals: 1,
    groups: workloads.map((w) => ({ label: w === 'ka' ? 'HTTP keep-alive' : w === 'close' ? 'HTTP new connection' : w === 'tcp' ? 'TCP connections' : w === 'ws' ? 'WS passthrough echo' : 'WS mux echo', bars: S.filter((s) => s.workload === w && s.target !== 'direct').map((s) => ({ label: SHORT[s.target], key: s.target, value: s.usPerRequest, min: s.usMin, max: s.usMax })) })),
  })
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await scriptMain({ name: 'workers', usage: '[--quick] [--OPTION VALUE]…', prefix: 'WORKERS', defaults: DEFAULTS, parseArgs, validate, run, renderMarkdown })
}
