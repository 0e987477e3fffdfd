#!/usr/bin/env node
// native-bench/tls.mjs: Ferry's TLS front (`listen.http.tls`, docs/tls.md) against nginx and HAProxy
// terminating TLS with the same certificate, one worker each (issue 21, item 7). One run on 127.0.0.1,
// interleaved repeats, for
//   hs     full TLS handshakes: wrk -t1 -c50 over https with `Connection: close` (a new connection and a
//          full handshake per request: lib/no-resume.c, preloaded into wrk, drops the session before each
//          handshake and counts full and resumed ones; TLS 1.2, SNI bench.test)
//   ka     HTTPS keep-alive: the same without `Connection: close`
//   wss    WSS echo: lib/wss-client.mjs (Node, `ws`), N sessions ping-pong, 64-byte text, uWS echo backend
// (backend for hs and ka: nginx, `return 200`, 33 bytes, as workers.mjs), and then, Ferry only,
//   rotate M open WSS sessions echoing steadily (one message per session per interval) while the
//          certificate and key are replaced the way a Kubernetes Secret volume is updated (cert-manager):
//          a new `..YYYY` directory, then an atomic rename of the `..data` symlink. First the file watch
//          picks it up (watchIntervalMs 1000), then a second renewal is applied by POST /reload. Counted:
//          sessions closed, messages lost or wrong, echo latency p50/p99/max per phase, and the certificate
//          a new handshake gets (SHA-256 fingerprint, with SNI and without).
// Per target: the rate, p99, and the proxy's CPU per handshake / request / message (user+sys of all its
// processes from /proc over the window ÷ what completed); ratios Ferry ÷ nginx and Ferry ÷ HAProxy
// taken within each repeat.
//
//   node native-bench/tls.mjs [--quick] [--repeats N] [--seconds S] [--workloads hs,ka,wss,rotate] [--key ecdsa|rsa]
//   (make bench-tls; the quick profile is the default: 3 × 4 s, about 4 minutes; --help lists every
//   option, each also an env var TLS_<NAME>)
//
// Every process is started here and stopped by PID (SIGTERM, then SIGKILL); ports are picked free; nothing
// but 127.0.0.1 is bound or contacted. The throwaway certificates are made with openssl in the work dir.
// Writes results/tls.{md,json,svg} (--results-name: another name, e.g. tls-rsa).
import { execFileSync, spawn } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import { request as httpsRequest } from 'node:https'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { connect as tlsConnect } from 'node:tls'
import { fileURLToPath } from 'node:url'
import { fmtFigure as fmt, pctOf as pct, ratioOf as ratio, rangeText as range, ratioText as rr, benchRun, busyCores, resultView, checkLines, idleCheck, loadLine, cpuTree, fmt as fmtInt, freePort, haproxyHttpConf, machineBusySeconds, maxOf, median, metricSum, minOf, nginxBackendServer, nginxConf, nginxProxyServer, optionParser, scrapeMetrics, scriptMain, sleep, spawnChild, startFerry, sumErrors, track, waitFor, waitPort, writeResults, wrkSampled } from './lib/harness.mjs'
import { barChart } from './lib/svg.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const HOST = '127.0.0.1'
const SNI = 'bench.test'
const BODY = 'hello from the reference backend\n'
const FERRY_NODE_FLAGS = ['--max-semi-space-size=32']
const MSG_BYTES = 64

export const DEFAULTS = {
  repeats: 3, seconds: 4, warmupSeconds: 1,
  connections: 50, wssSessions: 100, upstreamConnections: 16,
  rotateSessions: 1000, rotateIntervalMs: 1000, phaseSeconds: 4,
  key: 'ecdsa',
  workloads: 'hs,ka,wss,rotate',
  targets: 'ferry,nginx,haproxy',
  outDir: join(HERE, 'results'), resultsName: 'tls', workDir: '', write: true,
}
const QUICK = { repeats: 3, seconds: 4, warmupSeconds: 1 }
export const parseArgs = optionParser(DEFAULTS, QUICK, 'TLS')

const WORKLOADS = {
  hs: { label: 'TLS handshakes: a new connection and a full handshake per request', unit: 'req/s', per: 'handshake', extra: ['-H', 'Connection: close'] },
  ka: { label: 'HTTPS keep-alive requests', unit: 'req/s', per: 'request', extra: [] },
  wss: { label: 'WSS echo', unit: 'msgs/s', per: 'message' },
}
const TARGET_LABELS = { ferry: 'Ferry, gateway.workers: 1 (uWebSockets.js SSLApp, BoringSSL)', nginx: 'nginx, worker_processes 1, ssl (OpenSSL)', haproxy: 'HAProxy, nbthread 1, ssl (OpenSSL)' }
const SHORT = { ferry: 'Ferry', nginx: 'nginx', haproxy: 'HAProxy' }

function validate (o) {
  for (const w of o.workloads.split(',')) if (WORKLOADS[w] === undefined && w !== 'rotate') throw new Error(`--workloads: unknown ${w} (hs, ka, wss, rotate)`)
  for (const t of o.targets.split(',')) if (TARGET_LABELS[t] === undefined) throw new Error(`--targets: unknown ${t} (${Object.keys(TARGET_LABELS).join(', ')})`)
  if (o.workloads.split(',').includes('rotate') && !o.targets.split(',').includes('ferry')) throw new Error('--workloads rotate needs the ferry target')
  if (!['ecdsa', 'rsa'].includes(o.key)) throw new Error('--key: ecdsa (P-256) or rsa (2048)')
  if (o.repeats < 1 || o.seconds < 1) throw new Error('--repeats and --seconds must be at least 1')
}

// ---- certificates ----------------------------------------------------------------------------------
/** A throwaway self-signed certificate for bench.test (ECDSA P-256 or RSA 2048) in `dir`: { cert, key, fingerprint }. */
function makeCert (dir, key) {
  mkdirSync(dir, { recursive: true })
  const cert = join(dir, 'tls.crt'); const keyFile = join(dir, 'tls.key')
  const alg = key === 'rsa' ? ['-newkey', 'rsa:2048'] : ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']
  execFileSync('openssl', ['req', '-x509', ...alg, '-nodes', '-keyout', keyFile, '-out', cert, '-days', '2', '-subj', `/CN=${SNI}`, '-addext', `subjectAltName=DNS:${SNI}`], { stdio: 'ignore' })
  return { cert, key: keyFile, fingerprint: new X509Certificate(readFileSync(cert)).fingerprint256 }
}
/**
 * A Kubernetes Secret volume's layout (what cert-manager's renewals update): `dir/..data` → `..vN`, and
 * `dir/tls.crt` → `..data/tls.crt` (same for tls.key). `swap(n)` points `..data` at `..vN` by an atomic
 * rename, so both files change at once.
 */
function secretVolume (dir, versions) {
  mkdirSync(dir, { recursive: true })
  symlinkSync('..v0', join(dir, '..data'))
  for (const f of ['tls.crt', 'tls.key']) symlinkSync(join('..data', f), join(dir, f))
  return {
    cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key'),
    swap (n) { const tmp = join(dir, '..data_tmp'); symlinkSync(`..v${n}`, tmp); renameSync(tmp, join(dir, '..data')); return versions[n] },
  }
}

/** The SHA-256 fingerprint of the certificate a new handshake gets (SNI `servername`, or none). */
function peerFingerprint (port, servername) {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: HOST, port, servername, rejectUnauthorized: false }, () => { const fp = s.getPeerCertificate().fingerprint256; s.destroy(); resolve(fp) })
    s.setTimeout(3000, () => s.destroy(new Error('TLS handshake timed out')))
    s.once('error', reject)
  })
}

// ---- configurations ---------------------------------------------------------------------------------
function writeConfigs (dir, P, o, vol, combined) {
  const files = {}
  files.backend = join(dir, 'backend.conf')
  writeFileSync(files.backend, nginxConf(dir, 'backend', 1, { http: nginxBackendServer(HOST, P.backend, BODY) }))
  files.nginx = join(dir, 'nginx.conf')
  writeFileSync(files.nginx, nginxConf(dir, 'nginx', 1, { http: nginxProxyServer({ host: HOST, port: P.nginx, backend: `${HOST}:${P.backend}`, echo: `${HOST}:${P.wsEcho}`, keepalive: o.upstreamConnections, tls: { certFile: vol.cert, keyFile: vol.key } }) }))
  files.haproxy = join(dir, 'haproxy.cfg')
  writeFileSync(files.haproxy, haproxyHttpConf({ threads: 1, bind: `${HOST}:${P.haproxy} ssl crt ${combined}`, backend: `${HOST}:${P.backend}`, echo: `${HOST}:${P.wsEcho}`, maxconn: o.upstreamConnections }))
  files.ferry = join(dir, 'ferry.yaml')
  writeFileSync(files.ferry, `gateway: { workers: 1 }
listen:
  http:
    host: ${HOST}
    port: ${P.ferry}
    tls: { certFile: ${vol.cert}, keyFile: ${vol.key}, watchIntervalMs: 1000 }
  admin: { host: ${HOST}, port: ${P.ferryAdmin} }
upstreams:
  api: { protocol: http, endpoints: ["${HOST}:${P.backend}"], pool: { maxConnections: ${o.upstreamConnections}, queueLimit: 10000 } }
  echo-ws: { protocol: ws, endpoints: ["${HOST}:${P.wsEcho}"] }
routes:
  - { match: { path: /ws }, upstream: echo-ws }
  - { match: { path: / }, upstream: api }
# Capacity, not policy (as workers.mjs): nginx and HAProxy have no admission control.
admission: { handshakesPerSec: 0 }
drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 3000 }
logging: { level: info, accessLog: false }
`)
  return files
}

// ---- the WSS client ----------------------------------------------------------------------------------
/** Starts lib/wss-client.mjs against `port` and resolves once its sessions are open: { child, next(event), send(cmd), close() }. */
async function wssClient (port, sessions, transient) {
  const child = track(spawn(process.execPath, [join(HERE, 'lib/wss-client.mjs'), JSON.stringify({ port, path: '/ws', sessions, size: MSG_BYTES, servername: SNI })], { stdio: ['pipe', 'pipe', 'pipe'] }))
  transient.add(child); child.once('exit', () => transient.delete(child))
  child.stdin.on('error', () => {}) // EPIPE when it has just exited: its exit is what gets reported
  const events = []; const waiters = []
  let err = ''
  child.stderr.setEncoding('utf8').on('data', (d) => { if (err.length < 4000) err += d })
  createInterface({ input: child.stdout }).on('line', (l) => {
    let j; try { j = JSON.parse(l) } catch { return }
    const k = waiters.findIndex((w) => w.event === j.event)
    if (k >= 0) waiters.splice(k, 1)[0].resolve(j); else events.push(j)
  })
  const next = (event, ms = 60_000) => {
    const k = events.findIndex((e) => e.event === event)
    if (k >= 0) return Promise.resolve(events.splice(k, 1)[0])
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`wss-client: no ${event} within ${ms} ms ${err}`)), ms)
      waiters.push({ event, resolve: (j) => { clearTimeout(timer); resolve(j) } })
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`wss-client exited ${code} waiting for ${event}: ${err}`)) })
    })
  }
  const c = { child, next, send: (cmd) => child.stdin.write(`${cmd}\n`), async close () { if (child.exitCode === null) { c.send('close'); await Promise.race([new Promise((resolve) => child.once('exit', resolve)), sleep(5000)]) } try { child.kill('SIGKILL') } catch {} } }
  const ready = await next('ready')
  return { ...c, ready }
}

// ---- the run ----------------------------------------------------------------------------------------
const log = (m) => process.stderr.write(`[tls] ${m}\n`)

export async function run (o) {
  const T0 = performance.now()
  const workloads = o.workloads.split(',')
  const measured = workloads.filter((w) => WORKLOADS[w] !== undefined)
  const targetNames = o.targets.split(',')
  const bench = benchRun('tls', o, { ferryWarnings: [] })
  const { workDir, res, transient, machine, checks, check, result } = bench

  // Three throwaway certificates for bench.test: the one every proxy starts with, and two renewals (new keys).
  const tlsDir = join(workDir, 'tls')
  const versions = [0, 1, 2].map((n) => makeCert(join(tlsDir, `..v${n}`), o.key))
  const vol = secretVolume(tlsDir, versions)
  const combined = join(workDir, 'haproxy.pem') // HAProxy reads the certificate and its key from one file
  writeFileSync(combined, readFileSync(versions[0].cert, 'utf8') + readFileSync(versions[0].key, 'utf8'))
  result.certificate = { key: o.key === 'rsa' ? 'RSA 2048' : 'ECDSA P-256', subjectAltName: `DNS:${SNI}`, fingerprints: versions.map((v) => v.fingerprint) }
  const shim = join(workDir, 'no-resume.so')
  execFileSync('gcc', ['-O2', '-shared', '-fPIC', '-o', shim, join(HERE, 'lib/no-resume.c'), '-ldl'], { stdio: 'inherit' })

  const P = {}
  for (const k of ['backend', 'wsEcho', 'ferry', 'ferryAdmin', 'nginx', 'haproxy']) P[k] = await freePort()
  const files = writeConfigs(workDir, P, o, vol, combined)

  try {
    const procs = {}
    procs.backend = spawnChild(res, 'nginx', ['-p', workDir, '-c', files.backend])
    procs.wsEcho = spawnChild(res, process.execPath, [join(HERE, 'lib/ws-echo.cjs'), String(P.wsEcho), HOST])
    await Promise.all([waitPort(HOST, P.backend, 'backend nginx', procs.backend), waitPort(HOST, P.wsEcho, 'ws echo', procs.wsEcho)])
    if (targetNames.includes('ferry')) {
      const pod = await startFerry(res, 'ferry', files.ferry, {}, (j) => { if (j.level >= 40 && result.ferryWarnings.length < 20) result.ferryWarnings.push({ level: j.level, msg: j.msg, code: j.code ?? j.err?.code }) }, FERRY_NODE_FLAGS)
      procs.ferry = pod.child
    }
    if (targetNames.includes('nginx')) { procs.nginx = spawnChild(res, 'nginx', ['-p', workDir, '-c', files.nginx]); await waitPort(HOST, P.nginx, 'nginx', procs.nginx) }
    if (targetNames.includes('haproxy')) { procs.haproxy = spawnChild(res, 'haproxy', ['-f', files.haproxy]); await waitPort(HOST, P.haproxy, 'HAProxy', procs.haproxy) }
    const port = (t) => P[t]

    // ---- checks: the same certificate everywhere, the backend's answer, a WSS echo ----
    for (const t of targetNames) {
      const fp = await peerFingerprint(port(t), SNI)
      if (fp !== versions[0].fingerprint) throw new Error(`${TARGET_LABELS[t]} presented ${fp}, not the bench certificate ${versions[0].fingerprint}`)
      const r = await fetchHttps(port(t))
      if (r.status !== 200 || r.body !== BODY) throw new Error(`${TARGET_LABELS[t]}: GET / over https answered ${r.status} ${JSON.stringify(r.body.slice(0, 200))}`)
      const c = await wssClient(port(t), 5, transient)
      try {
        if (c.ready.opened !== 5) throw new Error(`${TARGET_LABELS[t]}: ${c.ready.failed} of 5 WSS sessions did not open: ${c.ready.error}`)
        c.send('go 0.3')
        const e = await c.next('result')
        if (e.received === 0 || e.bad + e.lost + e.closed > 0) throw new Error(`${TARGET_LABELS[t]}: WSS echo check: ${JSON.stringify(e)}`)
      } finally { await c.close() }
      result.checked[t] = `certificate ${fp.slice(0, 23)}… (the bench's); GET / over https: 200 and the backend's body; 5 WSS sessions echoed byte for byte`
    }
    check(true, 'every target presents the bench certificate and answers correctly', Object.entries(result.checked).map(([t, d]) => `${t}: ${d}`).join('; '))

    // ---- one measured window ----
    async function measure (w, t, seconds) {
      const W = WORKLOADS[w]
      const rootPid = procs[t].pid
      const backendPid = w === 'wss' ? procs.wsEcho.pid : procs.backend.pid
      const out = { workload: w, target: t }
      let c0, b0, m0, at0, gen
      const begin = () => { c0 = cpuTree(rootPid); b0 = cpuTree(backendPid); m0 = machineBusySeconds(); at0 = performance.now() }
      let client
      try {
        if (w === 'wss') {
          client = await wssClient(port(t), o.wssSessions, transient)
          if (client.ready.failed > 0) throw new Error(`${client.ready.failed} of ${o.wssSessions} WSS sessions did not open: ${client.ready.error}`)
          begin()
          client.send(`go ${seconds}`)
          const r = await client.next('result', (seconds + 20) * 1000)
          Object.assign(out, { rate: r.received / r.seconds, requests: r.received, p50ms: r.p50ms, p99ms: r.p99ms, errors: r.lost + r.bad + r.closed, errorDetail: { lost: r.lost, bad: r.bad, closed: r.closed } })
          gen = r.cpu / r.seconds
          out.tls = `${client.ready.version} ${client.ready.cipher}`
        } else {
          const stats = join(workDir, `no-resume-${w}-${t}.json`)
          begin()
          const r = await wrkSampled(`https://${HOST}:${port(t)}/`, seconds, at0, { connections: o.connections, extra: W.extra, transient, env: { LD_PRELOAD: shim, NO_RESUME_SNI: SNI, NO_RESUME_STATS: stats } })
          const hs = JSON.parse(readFileSync(stats, 'utf8'))
          Object.assign(out, { rate: r.rps, requests: r.requests, p50ms: r.p50ms, p99ms: r.p99ms, handshakes: hs, errors: sumErrors(r.socketErrors) + r.non2xx, errorDetail: { ...r.socketErrors, non2xx: r.non2xx } })
          gen = r.generatorCores
          out.tls = `${hs.version} ${hs.cipher}`
        }
      } finally {
        if (c0 !== undefined) {
          const wall = (performance.now() - at0) / 1000
          out.wallSeconds = wall
          out.proxyCpuSeconds = cpuTree(rootPid).cpu - c0.cpu
          out.proxyCores = out.proxyCpuSeconds / wall
          out.backendCores = (cpuTree(backendPid).cpu - b0.cpu) / wall
          out.machineCores = (machineBusySeconds() - m0) / wall
          out.generatorCores = gen
          out.otherCores = out.machineCores - out.proxyCores - out.backendCores - (Number.isFinite(gen) ? gen : 0)
        }
        await client?.close()
      }
      // Per handshake: the handshakes wrk completed (every one full, see the check); else per request or message.
      out.units = w === 'hs' ? out.handshakes.full + out.handshakes.resumed : out.requests
      out.usPerUnit = out.proxyCpuSeconds / out.units * 1e6
      return out
    }
    const line = (r) => `${r.workload.padEnd(3)} ${r.target.padEnd(7)} ${fmt(r.rate).padStart(7)} ${WORKLOADS[r.workload].unit.padEnd(6)} p99 ${fmt(r.p99ms, 2).padStart(6)} ms  proxy ${fmt(r.usPerUnit, 1).padStart(6)} µs/${WORKLOADS[r.workload].per}, ${pct(r.proxyCores)}  backend ${pct(r.backendCores)}  gen ${pct(r.generatorCores)}  other ${pct(r.otherCores)}${r.handshakes ? `  handshakes full ${r.handshakes.full} resumed ${r.handshakes.resumed}` : ''}${r.errors ? `  ERRORS ${JSON.stringify(r.errorDetail)}` : ''}`

    machine.busyCoresBeforeStart = await busyCores()
    if (o.warmupSeconds > 0) for (const w of measured) for (const t of targetNames) await measure(w, t, o.warmupSeconds)
    log(`warm-up done; ${o.repeats} repeats × ${o.seconds} s`)
    for (let rep = 0; rep < o.repeats; rep++) {
      for (const w of measured) {
        for (const t of targetNames) {
          const r = { rep, ...await measure(w, t, o.seconds) }
          result.runs.push(r)
          log(`rep ${rep + 1}/${o.repeats} ${line(r)}`)
        }
      }
    }

    if (workloads.includes('rotate')) result.rotation = await rotation({ o, port: P.ferry, admin: P.ferryAdmin, vol, versions, transient, ferryPid: procs.ferry.pid, check })
  } finally { await bench.stop() }
  bench.finish()
  // The default certificate's change is logged as a warning by design (docs/tls.md); nothing else may be.
  const unexpected = result.ferryWarnings.filter((x) => !/default certificate/i.test(x.msg))
  if (targetNames.includes('ferry')) check(unexpected.length === 0, 'ferry: no warnings or errors in its log but the documented one when the default certificate changes', JSON.stringify(result.ferryWarnings.slice(0, 5)))
  result.seconds = (performance.now() - T0) / 1000
  summarize(result, measured, targetNames, check)
  result.ok = checks.every((c) => c.ok || c.gate === false)
  writeResults(o, o.resultsName, result, renderMarkdown, renderSvg)
  return result
}

/** GET / over https on a new connection (certificate not verified: it is the bench's own), bounded at 5 s. */
function fetchHttps (port) {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: HOST, port, path: '/', servername: SNI, rejectUnauthorized: false, agent: false, headers: { host: SNI, connection: 'close' } }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d) => { body += d }).on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.setTimeout(5000, () => req.destroy(new Error('GET / over https timed out')))
    req.on('error', reject).end()
  })
}

// ---- rotation under open sessions (Ferry) -------------------------------------------------------------
async function rotation ({ o, port, admin, vol, versions, transient, ferryPid, check }) {
  const out = { sessions: o.rotateSessions, intervalMs: o.rotateIntervalMs, phaseSeconds: o.phaseSeconds, steps: [] }
  const applied = async () => metricSum(await scrapeMetrics(admin), 'ferry_tls_cert_checks_total', 'result="applied"')
  const c = await wssClient(port, o.rotateSessions, transient)
  try {
    check(c.ready.opened === o.rotateSessions, 'rotate: every session opened', `${c.ready.opened} of ${o.rotateSessions} (SNI ${SNI})${c.ready.error ? `: ${c.ready.error}` : ''}`)
    const cpu0 = cpuTree(ferryPid).cpu
    c.send(`steady ${o.rotateIntervalMs}`)
    await sleep(o.rotateIntervalMs) // every session has sent once
    c.send('phase before'); await sleep(o.phaseSeconds * 1000)
    for (const [n, how] of [[1, 'watch'], [2, 'reload']]) {
      const applied0 = await applied()
      c.send(`phase ${how}`)
      const t0 = performance.now()
      const v = vol.swap(n)
      let reload
      if (how === 'reload') {
        const r = await fetch(`http://${HOST}:${admin}/reload`, { method: 'POST', signal: AbortSignal.timeout(10_000) })
        reload = { status: r.status, ms: performance.now() - t0, body: (await r.json()).result }
      }
      // A new handshake with SNI gets the renewal: when.
      const seenAt = await waitFor(`rotation ${n}: new handshakes get the new certificate`, async () => (await peerFingerprint(port, SNI)) === v.fingerprint ? performance.now() : undefined, 10_000, undefined, 100)
      const noSni = await peerFingerprint(port, undefined)
      out.steps.push({ n, how, reload, newCertAfterMs: seenAt - t0, sniFingerprint: v.fingerprint, noSniGets: noSni === v.fingerprint ? 'new' : noSni === versions[0].fingerprint ? 'the start certificate' : noSni, applied: await applied() - applied0 })
      await sleep(Math.max(0, o.phaseSeconds * 1000 - (performance.now() - t0)))
      c.send(`phase after-${how}`); await sleep(o.phaseSeconds * 1000)
    }
    c.send('stop')
    const r = await c.next('steady', 30_000)
    out.ferryCpuSeconds = cpuTree(ferryPid).cpu - cpu0
    Object.assign(out, { phases: r.phases.filter((p) => p.name !== 'start'), lost: r.lost, bad: r.bad, closed: r.closed, closedDetail: r.closedDetail, open: r.open })
  } finally { await c.close() }
  check(out.closed === 0 && out.open === o.rotateSessions, 'rotate: no session closed by two rotations', `${out.closed} closed, ${out.open} of ${o.rotateSessions} open at the end${out.closed ? ` ${JSON.stringify(out.closedDetail)}` : ''}`)
  check(out.lost === 0 && out.bad === 0, 'rotate: no message lost or wrong', `lost ${out.lost}, wrong ${out.bad}, of ${fmtInt(out.phases.reduce((a, p) => a + p.sent, 0))} sent`)
  for (const s of out.steps) check(s.applied >= 1, `rotate ${s.n} (${s.how}): the new certificate was applied and a new handshake with SNI gets it`, `after ${fmt(s.newCertAfterMs)} ms${s.reload ? ` (POST /reload ${s.reload.status} ${s.reload.body} in ${fmt(s.reload.ms)} ms)` : ''}; ferry_tls_cert_checks_total{result="applied"} +${s.applied}; without SNI: ${s.noSniGets}`)
  return out
}


// ---- summaries and checks ---------------------------------------------------------------------------
function summarize (result, workloads, targetNames, check) {
  const S = []
  const runsOf = (w, t) => result.runs.filter((r) => r.workload === w && r.target === t)
  for (const w of workloads) {
    for (const t of targetNames) {
      const rs = runsOf(w, t)
      if (rs.length === 0) continue
      const s = { workload: w, target: t, tls: [...new Set(rs.map((r) => r.tls))].join(', '), errors: rs.reduce((a, r) => a + (r.errors ?? 0), 0) }
      for (const k of ['rate', 'p99ms', 'usPerUnit']) Object.assign(s, { [k]: median(rs.map((r) => r[k])), [`${k}Min`]: minOf(rs.map((r) => r[k])), [`${k}Max`]: maxOf(rs.map((r) => r[k])) })
      for (const k of ['proxyCores', 'backendCores', 'generatorCores', 'machineCores', 'otherCores']) s[k] = median(rs.map((r) => r[k]))
      s.ratios = {}
      for (const ref of ['nginx', 'haproxy']) {
        if (runsOf(w, ref).length === 0) continue
        const paired = (key) => { const xs = rs.map((r) => ratio(r[key], runsOf(w, ref).find((x) => x.rep === r.rep)?.[key])).filter(Number.isFinite); return { median: median(xs), min: minOf(xs), max: maxOf(xs) } }
        s.ratios[ref] = { rate: paired('rate'), usPerUnit: paired('usPerUnit'), p99ms: paired('p99ms') }
      }
      S.push(s)
    }
  }
  result.summary = S
  for (const w of workloads) {
    const bad = S.filter((s) => s.workload === w && s.errors > 0)
    check(bad.length === 0, `${w}: no errors in any measured run`, bad.length === 0 ? 'socket errors, non-2xx, WSS messages lost, wrong or closed: 0' : bad.map((s) => `${s.target} ${s.errors} (${JSON.stringify(result.runs.filter((r) => r.workload === w && r.target === s.target && r.errors > 0).map((r) => r.errorDetail))})`).join('; '))
  }
  for (const w of workloads) {
    const seen = [...new Set(S.filter((s) => s.workload === w).map((s) => s.tls))]
    check(seen.length === 1, `${w}: every target negotiated the same TLS version and cipher`, S.filter((s) => s.workload === w).map((s) => `${s.target} ${s.tls}`).join('; '))
  }
  const hs = result.runs.filter((r) => r.workload === 'hs')
  if (hs.length > 0) {
    const resumed = hs.reduce((a, r) => a + r.handshakes.resumed, 0); const full = hs.reduce((a, r) => a + r.handshakes.full, 0)
    check(resumed === 0 && full > 0 && hs.every((r) => r.handshakes.full >= r.requests), 'hs: every handshake was a full one (none resumed), at least one per request', `${fmtInt(full)} full, ${resumed} resumed, counted in wrk by lib/no-resume.c; per run handshakes ≥ wrk's requests`)
  }
  idleCheck(result, check, 'handshake/request')
}

// ---- markdown ---------------------------------------------------------------------------------------
function renderMarkdown (r) {
  const { o, S, m, workloads, get } = resultView(r)
  const wl = (w) => w === 'wss' ? `${WORKLOADS[w].label}, ${o.wssSessions} sessions ping-pong, ${MSG_BYTES} B` : w === 'hs' ? `${WORKLOADS[w].label}` : `${WORKLOADS[w].label}, ${o.connections} connections`
  const rot = r.rotation
  const lines = [
    '# native-bench: TLS termination, Ferry vs nginx vs HAProxy (one worker each)',
    '',
    `${r.date.slice(0, 16).replace('T', ' ')} UTC, \`${r.command}\` (${fmt(r.seconds)} s). Machine: ${m.cpus} CPUs, ${m.model}, Linux ${m.kernel}, Node ${m.node}.`,
    loadLine(r, 'handshake/request'),
    '',
    `**On this ${m.cpus}-core machine the load generator, the backend and the proxy share the same cores**: rates are bounded by what the others leave the proxy. The proxy's CPU per handshake, request or message (user+sys of all its processes from /proc over the window ÷ what completed) is the steadiest figure.`,
    '',
    `Certificate: one throwaway self-signed ${r.certificate?.key} certificate for \`${SNI}\` made with openssl, the same files for all three (HAProxy: the two concatenated into one PEM, as it reads them). Every client sends SNI \`${SNI}\`. Ferry: \`gateway.workers: 1\` (one process), \`listen.http.tls\` (uWebSockets.js SSLApp, BoringSSL); nginx: \`worker_processes 1\`, \`listen … ssl\`, \`ssl_protocols TLSv1.2 TLSv1.3\` (nginx 1.22's default leaves 1.3 out; the others offer both) (OpenSSL ${opensslVersion()}); HAProxy: \`nbthread 1\`, \`bind … ssl crt\`; every other TLS setting at its default. Backend: nginx, 1 worker, \`return 200\` with a ${BODY.length}-byte body (hs, ka); a uWebSockets.js echo process (wss); proxies keep ${o.upstreamConnections} backend connections at most (Ferry \`pool.maxConnections\`, nginx \`keepalive\`, HAProxy \`maxconn\`), plain HTTP behind TLS.`,
    '',
    `${o.repeats} interleaved repeats × ${o.seconds} s per workload and target after a ${o.warmupSeconds} s warm-up each; medians with (min–max). hs and ka: wrk 4.1, 1 thread × ${o.connections} connections, \`--latency\`, TLS 1.2, with lib/no-resume.c preloaded: wrk on its own resumes the session of the connection before (2,253 of 2,257 handshakes against nginx, measured), so before each handshake the shim drops the session (no session ID, no ticket offered) and counts the handshakes that completed, full and resumed; hs uses \`Connection: close\` (a new connection and a full handshake per request). wss: lib/wss-client.mjs (Node, \`ws\`, TLS 1.3 as Node negotiates it), ${o.wssSessions} sessions, one ${MSG_BYTES}-byte text message in flight each, every echo checked byte for byte and in order.`,
    '',
    '## Ratios (Ferry ÷ nginx, Ferry ÷ HAProxy)',
    '',
    `Taken within each repeat (runs seconds apart, under the same machine load): the median of ${o.repeats} with (min–max). Rate: higher is better for Ferry; CPU per handshake/request/message and p99: lower is better for Ferry.`,
    '',
    '| workload | rate ÷ nginx | CPU ÷ nginx | p99 ÷ nginx | rate ÷ HAProxy | CPU ÷ HAProxy | p99 ÷ HAProxy |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...workloads.map((w) => { const f = get(w, 'ferry')?.ratios ?? {}; return `| ${wl(w)} | ${rr(f.nginx?.rate)} | ${rr(f.nginx?.usPerUnit)} | ${rr(f.nginx?.p99ms)} | ${rr(f.haproxy?.rate)} | ${rr(f.haproxy?.usPerUnit)} | ${rr(f.haproxy?.p99ms)} |` }),
    '',
    '## Results',
    '',
    '| workload | target | rate | p99 ms | proxy CPU µs per handshake / request / message | proxy cores | errors | cores: backend / generator / machine / other | negotiated |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    ...S.map((s) => `| ${wl(s.workload)} | ${TARGET_LABELS[s.target]} | ${range(s.rate, s.rateMin, s.rateMax)} ${WORKLOADS[s.workload].unit} | ${range(s.p99ms, s.p99msMin, s.p99msMax, 2)} | ${range(s.usPerUnit, s.usPerUnitMin, s.usPerUnitMax, 1)} per ${WORKLOADS[s.workload].per} | ${fmt(s.proxyCores, 2)} | ${s.errors} | ${fmt(s.backendCores, 2)} / ${fmt(s.generatorCores, 2)} / ${fmt(s.machineCores, 2)} / ${fmt(s.otherCores, 2)} | ${s.tls} |`),
    '',
    ...(rot ? [
      '## Certificate rotation under open WSS sessions (Ferry)',
      '',
      `${fmtInt(rot.sessions)} \`wss://\` sessions (SNI \`${SNI}\`) each send one ${MSG_BYTES}-byte message every ${fmtInt(rot.intervalMs)} ms (spread over the interval: ${fmtInt(rot.sessions * 1000 / rot.intervalMs)} msgs/s) for the whole test. The certificate and key sit in a Kubernetes Secret volume's layout (\`tls.crt\` → \`..data/tls.crt\`, \`..data\` → \`..vN\`); a renewal (new key, new certificate) is a new \`..vN\` directory and an atomic rename of \`..data\`, as the kubelet does for a Secret cert-manager updated. Renewal 1 is left to Ferry's file watch (\`watchIntervalMs: 1000\`), renewal 2 is followed by \`POST /reload\`. Each phase lasts ${rot.phaseSeconds} s; latencies are grouped by the phase a message was sent in.`,
      '',
      '| phase | messages sent | echoed | echo p50 ms | p99 ms | max ms |',
      '| --- | ---: | ---: | ---: | ---: | ---: |',
      ...rot.phases.map((p) => `| ${p.name} | ${fmtInt(p.sent)} | ${fmtInt(p.received)} | ${fmt(p.p50ms, 2)} | ${fmt(p.p99ms, 2)} | ${fmt(p.maxMs, 2)} |`),
      '',
      `Sessions closed: **${rot.closed}** of ${fmtInt(rot.sessions)} (${rot.open} open at the end); messages lost: **${rot.lost}**, wrong: ${rot.bad}. Ferry's CPU over the whole rotation test: ${fmt(rot.ferryCpuSeconds, 2)} s.`,
      '',
      ...rot.steps.map((s) => `- Renewal ${s.n} (${s.how === 'watch' ? 'file watch' : 'POST /reload'}): a new handshake with SNI got the new certificate (${s.sniFingerprint.slice(0, 23)}…) ${fmt(s.newCertAfterMs)} ms after the rename${s.reload ? ` (the reload answered ${s.reload.status} \`${s.reload.body}\` after ${fmt(s.reload.ms)} ms)` : ''}; \`ferry_tls_cert_checks_total{result="applied"}\` +${s.applied}. A handshake without SNI got ${s.noSniGets} (documented in docs/tls.md: uWS cannot replace its default context).`),
      '',
    ] : []),
    'Checks:',
    ...checkLines(r.checks),
    '',
  ]
  return lines.join('\n')
}

function opensslVersion () { try { return execFileSync('openssl', ['version'], { encoding: 'utf8' }).split(' ')[1] } catch { return '?' } }

function renderSvg (r) {
  const S = r.summary ?? []
  const workloads = [...new Set(S.map((s) => s.workload))]
  return barChart({
    title: `TLS: proxy CPU per handshake / request / message, µs (median of ${r.options.repeats}, whiskers min–max; lower is better)`,
    unit: 'µs', decimals: 1,
    groups: workloads.map((w) => ({ label: w === 'hs' ? 'full TLS handshake' : w === 'ka' ? 'HTTPS keep-alive request' : 'WSS echo message', bars: S.filter((s) => s.workload === w).map((s) => ({ label: SHORT[s.target], key: s.target, value: s.usPerUnit, min: s.usPerUnitMin, max: s.usPerUnitMax })) })),
  })
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await scriptMain({ name: 'tls', usage: '[--quick] [--OPTION VALUE]…', prefix: 'TLS', defaults: DEFAULTS, parseArgs, validate, run, renderMarkdown })
}
