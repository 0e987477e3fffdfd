#!/usr/bin/env node
// CPU per request, measured from outside: the proxy's user+sys CPU (from /proc/PID/stat, nginx's
// worker included) over a run ÷ the requests (or WebSocket round trips) the load generator completed.
// Ferry next to nginx, both one worker, on loopback, same backends as native-bench/run:
//   ka     HTTP keep-alive: wrk -t1 -c50 (nginx backend, `return 200`, 33-byte body)
//   close  HTTP, new connection per request: the same with `Connection: close`
//   ws     WebSocket passthrough echo: wsgen, 100 sessions ping-pong, 64-byte text (uWS echo backend)
// Target haproxy: HAProxy, nbthread 1, mode http, `maxconn 16` to the backend with `http-reuse always`
// (native-bench/workers.mjs's HAProxy with one thread), /ws passed through to the echo backend.
// Runs are interleaved (ferry, nginx, ferry, nginx, ...) and the median of the repeats is printed.
// Targets pp-off, pp-v2, pp-v1v2: Ferry with listen.http.acceptProxyProtocol off | v2 | v1+v2 behind an
// HAProxy in mode tcp (one thread) that sends no header | send-proxy-v2 | send-proxy (v1); the load goes
// to HAProxy and the CPU counted is Ferry's alone: what reading the PROXY header costs Ferry.
//
//   node native-bench/cpu-per-request.mjs [--seconds 5] [--repeats 3] [--paths ka,close,ws]
//        [--targets ferry,nginx,haproxy] [--syscalls] [--no-write] [--prof DIR]   (--prof: Ferry runs under node --cpu-prof, one Ferry
//                                                 process and one profile per path, written to DIR)
// Writes results/cpu-per-request.{md,json} (not with --prof or --no-write).
// Ports: picked free at start, 127.0.0.1 only. Every process is started here and stopped by PID.
import { spawn, execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { cpus, loadavg, release, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { cpuTree, freePort, haproxyHttpConf, nginxBackendServer, nginxConf, nginxProxyServer, wrk as runWrk, sumErrors } from './lib/harness.mjs'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const HOST = '127.0.0.1'
const args = process.argv.slice(2)
const opt = (name, def) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1] : def }
const SECONDS = Number(opt('seconds', '5'))
const REPEATS = Number(opt('repeats', '3'))
const PATHS = opt('paths', 'ka,close,ws').split(',')
const TARGETS = opt('targets', 'ferry,nginx').split(',')
const PROF = opt('prof', undefined)
const SYSCALLS = args.includes('--syscalls')
/**
 * `--base DIR`: a second Ferry built elsewhere (say, main's dist copied to DIR), target `base`, interleaved
 * with the others: a paired before/after under the same machine load. `--base2 DIR`: a third, target `base2`.
 */
const BASES = { base: opt('base', undefined), base2: opt('base2', undefined) }
const WORK = mkdtempSync(join(tmpdir(), 'ferry-cpu-'))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const children = []
function start (name, cmd, argv) {
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d) => { out += d }); child.stderr.on('data', (d) => { out += d })
  const entry = { name, child, exited: false, out: () => out }
  child.on('exit', () => { entry.exited = true })
  children.push(entry)
  return entry
}
async function stop (entry) {
  if (entry.exited) return
  entry.child.kill('SIGTERM')
  for (let i = 0; i < 100 && !entry.exited; i++) await sleep(50)
  if (!entry.exited) entry.child.kill('SIGKILL')
}
async function stopAll () { await Promise.all(children.map(stop)) }
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { stopAll().finally(() => process.exit(1)) })
// A failure anywhere (a process that does not start, a load generator error) stops what was started.
process.on('uncaughtException', (err) => { console.error(err); stopAll().finally(() => process.exit(1)) })
process.on('unhandledRejection', (err) => { console.error(err); stopAll().finally(() => process.exit(1)) })
process.on('exit', () => { for (const c of children) if (!c.exited) c.child.kill('SIGKILL') })

async function waitPort (port, entry) {
  for (let i = 0; i < 200; i++) {
    if (entry?.exited) throw new Error(`${entry.name} exited: ${entry.out()}`)
    const ok = await new Promise((resolve) => { const c = connect(port, HOST, () => { c.destroy(); resolve(true) }); c.on('error', () => resolve(false)) })
    if (ok) return
    await sleep(50)
  }
  throw new Error(`port ${port} never opened`)
}

/** { cpu, sys } seconds of a process and its descendants (nginx: master + worker). */
const cpuOf = (pid) => cpuTree(pid)

const P = {}
for (const k of ['backend', 'wsEcho', 'nginx', 'haproxy', 'ferry', 'ferryAdmin', 'base', 'baseAdmin', 'base2', 'base2Admin', 'floor']) P[k] = await freePort()
/** pp-* target → [acceptProxyProtocol, HAProxy server option]. */
const PP = { 'pp-off': ['off', ''], 'pp-v2': ['v2', 'send-proxy-v2'], 'pp-v1v2': ['v1+v2', 'send-proxy'] }
for (const t of Object.keys(PP)) if (TARGETS.includes(t)) for (const k of [t, `${t}Admin`, `${t}Lb`]) P[k] = await freePort()
const BODY = 'native-bench reference response\n'
writeFileSync(join(WORK, 'backend.conf'), nginxConf(WORK, 'backend', 1, { http: nginxBackendServer(HOST, P.backend, BODY) }))
// The same proxy configuration as native-bench/run (HTTP) and native-bench/lib/ws.js (WebSocket), in one worker.
writeFileSync(join(WORK, 'nginx.conf'), nginxConf(WORK, 'nginx', 1, { http: nginxProxyServer({ host: HOST, port: P.nginx, backend: `${HOST}:${P.backend}`, echo: `${HOST}:${P.wsEcho}` }) }))
// `proxy`: only for the pp-* targets (a --base Ferry may predate the field). One process (the default,
// auto, forks a worker per core); a --base Ferry older than gateway.workers (commit 007bbd9) refuses it.
const ferryYaml = (httpPort, adminPort, proxy) => `gateway: { workers: 1 }
listen:
  http: { host: ${HOST}, port: ${httpPort}${proxy === undefined ? '' : `, acceptProxyProtocol: ${proxy}`} }
  admin: { host: ${HOST}, port: ${adminPort} }
upstreams:
  api: { protocol: http, endpoints: ["${HOST}:${P.backend}"], pool: { maxConnections: 16, queueLimit: 10000 } }
  echo-ws: { protocol: ws, endpoints: ["${HOST}:${P.wsEcho}"] }
routes:
  - { match: { path: /ws }, upstream: echo-ws }
  - { match: { path: / }, upstream: api }
admission: { handshakesPerSec: 0 }
drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 3000 }
resume: { secret: "native-bench-resume-secret-0123456789abcdef" }
logging: { level: warn, accessLog: false }
${proxy === undefined ? '' : `http: { trustedProxies: [${HOST}] }`}
`
writeFileSync(join(WORK, 'ferry.yaml'), ferryYaml(P.ferry, P.ferryAdmin))
writeFileSync(join(WORK, 'base.yaml'), ferryYaml(P.base, P.baseAdmin))
writeFileSync(join(WORK, 'base2.yaml'), ferryYaml(P.base2, P.base2Admin))
for (const [t, [mode]] of Object.entries(PP)) if (P[t] !== undefined) writeFileSync(join(WORK, `${t}.yaml`), ferryYaml(P[t], P[`${t}Admin`], mode))
const wsgen = join(WORK, 'wsgen')
if (PATHS.includes('ws')) execFileSync('gcc', ['-O2', '-o', wsgen, join(ROOT, 'native-bench/lib/wsgen.c')], { stdio: 'inherit' })

const backend = start('backend', 'nginx', ['-p', WORK, '-c', join(WORK, 'backend.conf')])
const wsEcho = start('ws-echo', process.execPath, [join(ROOT, 'native-bench/lib/ws-echo.cjs'), String(P.wsEcho), HOST])
await waitPort(P.backend, backend); await waitPort(P.wsEcho, wsEcho)

function startFerry (tag, name = 'ferry', dist = join(ROOT, 'dist')) {
  const flags = ['--max-semi-space-size=32', ...(process.env.FERRY_NODE_FLAGS ?? '').split(' ').filter(Boolean)]
  if (PROF) { mkdirSync(PROF, { recursive: true }); flags.push('--cpu-prof', `--cpu-prof-dir=${PROF}`, `--cpu-prof-name=ferry-${tag}.cpuprofile`) }
  return start(name, process.execPath, [...flags, join(dist, 'cli.js'), 'start', '--config', join(WORK, `${name}.yaml`)])
}
const procs = {}
if (TARGETS.includes('nginx')) { procs.nginx = start('nginx', 'nginx', ['-p', WORK, '-c', join(WORK, 'nginx.conf')]); await waitPort(P.nginx, procs.nginx) }
if (TARGETS.includes('haproxy')) {
  writeFileSync(join(WORK, 'haproxy.cfg'), haproxyHttpConf({ bind: `${HOST}:${P.haproxy}`, backend: `${HOST}:${P.backend}`, echo: `${HOST}:${P.wsEcho}`, threads: 1 }))
  procs.haproxy = start('haproxy', 'haproxy', ['-db', '-f', join(WORK, 'haproxy.cfg')]); await waitPort(P.haproxy, procs.haproxy)
}
if (TARGETS.includes('ferry') && !PROF) { procs.ferry = startFerry('all'); await waitPort(P.ferry, procs.ferry); console.error(`ferry pid ${procs.ferry.child.pid}`) }
for (const b of ['base', 'base2']) {
  if (!TARGETS.includes(b)) continue
  if (BASES[b] === undefined) throw new Error(`target ${b} needs --${b} DIR (a Ferry dist directory)`)
  procs[b] = startFerry(b, b, BASES[b]); await waitPort(P[b], procs[b])
}
for (const [t, [, send]] of Object.entries(PP)) {
  if (!TARGETS.includes(t)) continue
  procs[t] = startFerry(t, t); await waitPort(P[t], procs[t])
  writeFileSync(join(WORK, `${t}-haproxy.cfg`), `global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\nfrontend fe\n  bind ${HOST}:${P[`${t}Lb`]}\n  default_backend be\nbackend be\n  server ferry ${HOST}:${P[t]} ${send}\n`)
  const lb = start(`${t}-haproxy`, 'haproxy', ['-db', '-f', join(WORK, `${t}-haproxy.cfg`)]); await waitPort(P[`${t}Lb`], lb)
}
if (TARGETS.includes('floor')) {
  procs.floor = start('floor', process.execPath, ['--max-semi-space-size=32', join(ROOT, 'native-bench/lib/floor-proxy.mjs'), String(P.floor), String(P.backend), String(P.wsEcho), HOST])
  await waitPort(P.floor, procs.floor)
}
/** What each target is, for the results file. */
const TARGET_NOTES = {
  ferry: 'Ferry (this build), one process',
  base: `Ferry built elsewhere (${BASES.base ?? ''})`,
  base2: `Ferry built elsewhere (${BASES.base2 ?? ''})`,
  nginx: 'nginx, worker_processes 1, keepalive 16',
  haproxy: 'HAProxy, nbthread 1, maxconn 16 + http-reuse always',
  floor: 'lib/floor-proxy.mjs: uWS + undici Pool (16) + ws, forwarding only',
}
const port = { ferry: P.ferry, nginx: P.nginx, haproxy: P.haproxy, base: P.base, base2: P.base2, floor: P.floor, 'pp-off': P['pp-offLb'], 'pp-v2': P['pp-v2Lb'], 'pp-v1v2': P['pp-v1v2Lb'] }

async function wrk (p, seconds, extra) {
  const r = await runWrk(`http://${HOST}:${p}/`, seconds, { extra, latency: false })
  return { requests: r.requests, non2xx: r.non2xx, errors: sumErrors(r.socketErrors) }
}
/** wsgen echo: opens the sessions, then measures; CPU is sampled around the measured window only. */
function wsEchoRun (p, seconds, pid) {
  return new Promise((resolve, reject) => {
    const c = spawn(wsgen, ['echo', `host=${HOST}`, `port=${p}`, 'path=/ws', 'sessions=100', 'inflight=1', 'size=64', `seconds=${seconds}`], { stdio: ['pipe', 'pipe', 'pipe'] })
    let err = ''; let c0
    c.stderr.on('data', (d) => { err += d })
    c.on('exit', (code) => { if (code !== 0 && code !== null) reject(new Error(`wsgen exited ${code}: ${err}`)) })
    createInterface({ input: c.stdout }).on('line', (line) => {
      const ev = JSON.parse(line)
      if (ev.event === 'ready') {
        if (ev.failed > 0) { reject(new Error(`wsgen: ${ev.failed} sessions failed`)); c.kill(); return }
        c0 = cpuOf(pid); c.stdin.write('go\n')
      } else if (ev.event === 'result') {
        const c1 = cpuOf(pid)
        c.stdin.end('close\n')
        resolve({ requests: ev.received, cpu: c1.cpu - c0.cpu, sys: c1.sys - c0.sys, non2xx: 0, errors: ev.lost + ev.bad + ev.closed })
      }
    })
  })
}
/**
 * `--syscalls`: system calls the proxy's processes make over a run (`perf stat -e raw_syscalls:sys_enter`
 * attached for the run, the WebSocket sessions' set-up included), ÷ its requests. Returns the stop function.
 */
async function countSyscalls (pid) {
  const pids = Object.keys(cpuTree(pid).byPid).join(',')
  const p = spawn('perf', ['stat', '-x', ',', '-e', 'raw_syscalls:sys_enter', '-p', pids], { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  p.stderr.on('data', (d) => { err += d })
  const exited = new Promise((resolve) => p.on('exit', resolve))
  await sleep(300) // perf attaches
  return async () => {
    p.kill('SIGINT')
    await exited
    const m = /^(\d+),/m.exec(err)
    if (m === null) throw new Error(`perf stat gave no count: ${err.slice(0, 300)}`)
    return Number(m[1])
  }
}
async function run (target, path) {
  const pid = procs[target].child.pid
  const stopCount = SYSCALLS ? await countSyscalls(pid) : undefined
  let r
  if (path === 'ws') r = await wsEchoRun(port[target], SECONDS, pid)
  else {
    const c0 = cpuOf(pid)
    const w = await wrk(port[target], SECONDS, path === 'close' ? ['-H', 'Connection: close'] : [])
    const c1 = cpuOf(pid)
    r = { ...w, cpu: c1.cpu - c0.cpu, sys: c1.sys - c0.sys }
  }
  if (stopCount !== undefined) r.syscalls = await stopCount()
  return r
}

const results = {}
/** Kernel (sys) µs per request of each run; system calls per request (--syscalls). */
const sysUs = {}
const syscalls = {}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] }
const load0 = loadavg()[0]
const startedAt = new Date()
try {
  for (const path of PATHS) {
    if (PROF && TARGETS.includes('ferry')) { procs.ferry = startFerry(path); await waitPort(P.ferry, procs.ferry) }
    for (const t of TARGETS) await run(t, path).catch(() => {}) // warm-up (not counted), 1 run each
    for (let rep = 0; rep < REPEATS; rep++) {
      for (const t of TARGETS) {
        const r = await run(t, path)
        const us = r.cpu / r.requests * 1e6
        ;(results[`${path} ${t}`] ??= []).push(us)
        ;(sysUs[`${path} ${t}`] ??= []).push(r.sys / r.requests * 1e6)
        if (r.syscalls !== undefined) (syscalls[`${path} ${t}`] ??= []).push(r.syscalls / r.requests)
        console.error(`${path.padEnd(5)} ${t.padEnd(5)} rep ${rep + 1}: ${r.requests} requests, ${(r.requests / SECONDS).toFixed(0)}/s, cpu ${r.cpu.toFixed(2)} s (sys ${r.sys.toFixed(2)}), ${us.toFixed(1)} µs/request (sys ${(r.sys / r.requests * 1e6).toFixed(1)})${r.syscalls !== undefined ? `, ${(r.syscalls / r.requests).toFixed(2)} syscalls/request` : ''}${r.errors || r.non2xx ? `  errors ${r.errors} non2xx ${r.non2xx}` : ''}`)
      }
    }
    if (PROF && procs.ferry) { await stop(procs.ferry); delete procs.ferry }
  }
} finally { await stopAll() }

/**
 * Ratios are taken within each repeat (the runs of one repeat are seconds apart, under the same machine
 * load), then the median of the repeats with (min–max): steadier on a shared machine than a ratio of medians.
 * Against nginx for every other target; `ferry ÷ base` (and `ferry ÷ base2`) when those ran.
 */
const paired = (path, a, b) => {
  const xs = results[`${path} ${a}`]; const ys = results[`${path} ${b}`]
  if (xs === undefined || ys === undefined) return undefined
  const r = xs.map((x, i) => x / ys[i])
  return { median: median(r), min: Math.min(...r), max: Math.max(...r) }
}
const pairs = [
  ...(TARGETS.includes('nginx') ? TARGETS.filter((t) => t !== 'nginx').map((t) => [t, 'nginx']) : []),
  ...['base', 'base2'].filter((b) => TARGETS.includes(b) && TARGETS.includes('ferry')).map((b) => ['ferry', b]),
]
const LABELS = { ka: 'HTTP keep-alive', close: 'HTTP, new connection per request', ws: 'WebSocket passthrough round trip' }
const rows = PATHS.map((path) => ({
  path,
  label: LABELS[path] ?? path,
  usPerRequest: Object.fromEntries(TARGETS.map((t) => [t, { median: median(results[`${path} ${t}`] ?? [NaN]), runs: results[`${path} ${t}`] ?? [] }])),
  ratios: Object.fromEntries(pairs.map(([a, b]) => [`${a}/${b}`, paired(path, a, b)])),
  sysUsPerRequest: Object.fromEntries(TARGETS.map((t) => [t, median(sysUs[`${path} ${t}`] ?? [NaN])])),
  ...(SYSCALLS ? { syscallsPerRequest: Object.fromEntries(TARGETS.map((t) => [t, median(syscalls[`${path} ${t}`] ?? [NaN])])) } : {}),
}))
const f1 = (x) => Number.isFinite(x) ? x.toFixed(1) : '—'
const f2 = (x) => Number.isFinite(x) ? x.toFixed(2) : '—'
const table = [
  `| path | ${TARGETS.map((t) => `${t} µs/req`).join(' | ')} |${pairs.map(([a, b]) => ` ${a} ÷ ${b} |`).join('')}`,
  `| --- |${' ---: |'.repeat(TARGETS.length + pairs.length)}`,
  ...rows.map((r) => `| ${r.label} | ${TARGETS.map((t) => `${f1(r.usPerRequest[t].median)} (${r.usPerRequest[t].runs.map(f1).join(', ')})`).join(' | ')} |${pairs.map(([a, b]) => { const x = r.ratios[`${a}/${b}`]; return ` ${f2(x?.median)} (${f2(x?.min)}–${f2(x?.max)}) |` }).join('')}`),
]
// The kernel's share: sys µs per request (median), and system calls per request with --syscalls.
table.push('', `| path | ${TARGETS.map((t) => `${t}: sys µs/req${SYSCALLS ? ', syscalls/req' : ''}`).join(' | ')} |`, `| --- |${' ---: |'.repeat(TARGETS.length)}`,
  ...rows.map((r) => `| ${r.label} | ${TARGETS.map((t) => `${f1(r.sysUsPerRequest[t])}${SYSCALLS ? `, ${f2(r.syscallsPerRequest[t])}` : ''}`).join(' | ')} |`))
console.log(table.join('\n'))
if (!PROF && !args.includes('--no-write')) {
  const outDir = join(ROOT, 'native-bench', 'results')
  const machine = { cpus: cpus().length, model: cpus()[0]?.model, kernel: release(), node: process.version, loadavgStart: Math.round(load0 * 100) / 100, loadavgEnd: Math.round(loadavg()[0] * 100) / 100 }
  const command = `node native-bench/cpu-per-request.mjs ${args.join(' ')}`.trim()
  mkdirSync(outDir, { recursive: true })
  writeFileSync(join(outDir, 'cpu-per-request.json'), JSON.stringify({ startedAt: startedAt.toISOString(), command, seconds: SECONDS, repeats: REPEATS, targets: TARGETS, machine, rows }, null, 2) + '\n')
  writeFileSync(join(outDir, 'cpu-per-request.md'), `# native-bench: proxy CPU per request, one worker each

${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC, \`${command}\`. Machine: ${machine.cpus} CPUs, ${machine.model}, Linux ${machine.kernel}, Node ${machine.node}; load average ${machine.loadavgStart} at the start, ${machine.loadavgEnd} at the end (other processes share the machine: compare within this run only).

The proxy's user+sys CPU over each ${SECONDS} s run (\`/proc/PID/stat\`, nginx master + worker) ÷ the requests wrk completed (WebSocket: the round trips wsgen completed); ${REPEATS} interleaved repeats after a warm-up run each; median µs/request with every run in brackets. Ratios: taken within each repeat, median (min–max). Targets: ${TARGETS.map((t) => `**${t}** ${TARGET_NOTES[t] ?? ''}`.trim()).join('; ')}.

${table.join('\n')}
`)
  console.error('wrote native-bench/results/cpu-per-request.{md,json}')
}
if (PROF) console.error(`profiles in ${PROF}`)
