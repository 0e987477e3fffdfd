// The process and measuring helpers of native-bench's scripts (run, cpu-per-request.mjs, workers.mjs,
// rolling-upgrade.mjs, backend-rollout.mjs): options from flags and env, tracked children (stopped by PID
// on every way out), IPC questions, bounded waits, Redis, Prometheus text, CPU time from /proc, wrk, and
// the counting helpers their results use.
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { createConnection, createServer } from 'node:net'
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The Ferry build the scripts run: this checkout's dist/. */
export const FERRY_CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'cli.js')

export const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server'

// ---- options --------------------------------------------------------------------------------------
const kebab = (k) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
const snake = (k) => k.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()

/**
 * A parser of `--name value`, `--name=value`, `--switch`, `--no-switch` and `--quick` (argv) and of
 * `<PREFIX>_NAME` env vars over `defaults`; `quick` is what --quick (or `<PREFIX>_QUICK=1`) sets.
 * The type of each default decides how a value is read (numbers must be finite and ≥ 0).
 */
export function optionParser (defaults, quick, prefix) {
  return function parseArgs (argv = process.argv.slice(2), env = process.env) {
    const o = { ...defaults }
    const set = (k, v) => {
      if (typeof defaults[k] === 'number') { const n = Number(v); if (!Number.isFinite(n) || n < 0) throw new Error(`--${kebab(k)}: not a number: ${v}`); o[k] = n } else if (typeof defaults[k] === 'boolean') o[k] = !/^(0|false|no)$/i.test(String(v))
      else o[k] = v
    }
    if (env[`${prefix}_QUICK`] !== undefined && !/^(0|false|no)$/i.test(env[`${prefix}_QUICK`])) Object.assign(o, quick)
    for (const k of Object.keys(defaults)) if (env[`${prefix}_${snake(k)}`] !== undefined) set(k, env[`${prefix}_${snake(k)}`])
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i]
      if (a === '--help' || a === '-h') { o.help = true; continue }
      if (a === '--quick') { Object.assign(o, quick); continue }
      const m = /^--(no-)?([a-z-]+)(?:=(.*))?$/.exec(a)
      const key = m === null ? undefined : Object.keys(defaults).find((k) => kebab(k) === m[2])
      if (key === undefined) throw new Error(`unknown option ${a} (--help lists them)`)
      if (m[1] !== undefined) { if (typeof defaults[key] !== 'boolean') throw new Error(`${a}: not a switch`); o[key] = false; continue }
      if (typeof defaults[key] === 'boolean' && m[3] === undefined) { o[key] = true; continue }
      const v = m[3] ?? argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      set(key, v)
    }
    return o
  }
}

/** The options list of --help: `  --name default` per option. */
export function optionsHelp (defaults) {
  return Object.entries(defaults).map(([k, v]) => `  --${kebab(k)} ${v}`).join('\n')
}

/** The machine, for the results' header. */
export function machineInfo (extra = {}) {
  const load = loadavg()
  return { cpus: cpus().length, model: cpus()[0]?.model, memGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version, loadavg1: Math.round(load[0] * 100) / 100, ...extra }
}

/**
 * A scenario script's main: options (exit 2 on a bad one), --help, a run, its Markdown and checks on
 * stdout; exit 0 when the run's verdict is ok, else 1. Checks with `gate: false` are printed as notes.
 */
export async function scriptMain ({ name, usage, prefix, defaults, parseArgs, validate = () => {}, run, renderMarkdown }) {
  let o
  try { o = parseArgs(); validate(o) } catch (err) { console.error(err.message); process.exit(2) }
  if (o.help) {
    console.log(`usage: node native-bench/${name}.mjs ${usage}\noptions (defaults; env ${prefix}_<NAME> too):`)
    console.log(optionsHelp(defaults))
    process.exit(0)
  }
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { process.exit(1) }) // 'exit' kills the children
  const started = Date.now()
  const res = await run(o)
  console.log(renderMarkdown(res))
  for (const c of res.checks) console.log(`${c.ok ? 'ok    ' : c.gate === false ? 'note  ' : 'FAILED'} ${c.name}: ${c.detail}`)
  console.log(`${name}: ${Math.round((Date.now() - started) / 1000)} s${o.write ? `; wrote ${join(o.outDir, `${o.resultsName ?? name}.{md,json,svg}`)}` : ''}`)
  process.exit(res.ok ? 0 : 1)
}

/**
 * What a side-by-side script's run (workers.mjs, tls.mjs) starts with: its work directory (`o.workDir`,
 * or a fresh temporary one), its tracked children (`res`), the load generators running now
 * (`transient`), the machine, the checks and the result (`extra` added to it). `stop()` stops every
 * child and generator; `finish()` then checks that none is left and removes a temporary work directory.
 */
export function benchRun (name, o, extra = {}) {
  const workDir = o.workDir || mkdtempSync(join(tmpdir(), `ferry-bench-${name}-`))
  mkdirSync(workDir, { recursive: true })
  const res = { children: new Set(), workDir }
  const transient = new Set()
  const machine = machineInfo({ loadavg1AtStart: Math.round(loadavg()[0] * 100) / 100 })
  const checks = []
  const check = (ok, what, detail, gate = true) => { checks.push({ ok, name: what, detail, gate }); return ok }
  const result = { date: new Date().toISOString(), command: `node native-bench/${name}.mjs ${process.argv.slice(2).join(' ')}`.trim(), options: recordedOptions(o), machine, checks, runs: [], checked: {}, ...extra }
  return {
    workDir, res, transient, machine, checks, check, result,
    async stop () {
      await stopAll(res)
      for (const c of transient) { try { c.kill('SIGKILL') } catch {} }
    },
    finish () {
      const leftovers = [...res.children].map((c) => c.pid)
      check(leftovers.length === 0, 'every process started was stopped', leftovers.length === 0 ? 'none left' : leftovers.join(', '))
      if (leftovers.length === 0 && !o.workDir) rmSync(workDir, { recursive: true, force: true })
      machine.loadavg1AtEnd = Math.round(loadavg()[0] * 100) / 100
    },
  }
}

/** Cores the whole machine kept busy over `ms` (before a run starts: other processes). */
export async function busyCores (ms = 1000) {
  const a = machineBusySeconds()
  await sleep(ms)
  return (machineBusySeconds() - a) / (ms / 1000)
}

/** A figure for a table: `d` decimals (0: rounded, with thousands separators), '—' when not a number. */
export const fmtFigure = (n, d = 0) => Number.isFinite(n) ? (d === 0 ? fmt(Math.round(n)) : n.toFixed(d)) : '—'
/** A fraction as a percentage ('—' when not a number). */
export const pctOf = (x) => Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : '—'
/** a ÷ b, NaN unless both are numbers and b is not 0. */
export const ratioOf = (a, b) => Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN
/** `median (min–max)`. */
export const rangeText = (a, lo, hi, d = 0) => `${fmtFigure(a, d)} (${fmtFigure(lo, d)}–${fmtFigure(hi, d)})`
/** A paired ratio { median, min, max } as `median (min–max)`, 2 decimals; '—' when absent. */
export const ratioText = (x) => x === undefined ? '—' : rangeText(x.median, x.min, x.max, 2)
/** The note (not a gate) saying whether the machine was otherwise idle; `per`: the figure that stays steady ("request"). */
export function idleCheck (result, check, per) {
  const m = result.machine
  check(!(m.busyCoresBeforeStart > 0.2) && !(m.loadavg1AtStart > 1.5), 'the machine was otherwise idle', `busy before the start ${pctOf(m.busyCoresBeforeStart)} of a core, load average ${m.loadavg1AtStart} at the start and ${m.loadavg1AtEnd} at the end; median CPU of other processes during the runs ${pctOf(median(result.runs.map((r) => r.otherCores)))} (other test runs share this machine: rates are noisy, CPU per ${per} less so)`, false)
}
/** The results' load line: load averages, other processes' CPU before and during the runs. */
export function loadLine (r, per) {
  const m = r.machine
  return `Load: average ${m.loadavg1AtStart} at the start, ${m.loadavg1AtEnd} at the end; other processes used ${pctOf(m.busyCoresBeforeStart)} of a core in the second before the first run and a median ${pctOf(median(r.runs.map((x) => x.otherCores)))} during the runs${m.loadavg1AtStart > 1.5 || m.busyCoresBeforeStart > 0.2 ? ` (**a busy machine: other test runs share it; rates are noisy, CPU per ${per} much less**)` : ''}.`
}

/** What a result's Markdown reads: options, summary rows, machine, workloads in order, and the row of a workload and target. */
export function resultView (r) {
  const S = r.summary ?? []
  return { o: r.options, S, m: r.machine, workloads: [...new Set(S.map((s) => s.workload))], get: (w, t) => S.find((s) => s.workload === w && s.target === t) }
}

/** A result's checks as Markdown list items (`note` for the ones that do not gate). */
export const checkLines = (checks) => checks.map((c) => `- ${c.ok ? 'ok' : c.gate === false ? 'note' : '**FAILED**'}: ${c.name}: ${c.detail}`)

/** The options a result records (not where it was written). */
export function recordedOptions (o) {
  return Object.fromEntries(Object.entries(o).filter(([k]) => !['outDir', 'resultsName', 'workDir', 'write', 'help'].includes(k)))
}

/** Writes results/NAME.{json,md,svg} when `o.write`. */
export function writeResults (o, name, result, renderMarkdown, renderSvg) {
  if (!o.write) return
  mkdirSync(o.outDir, { recursive: true })
  writeFileSync(join(o.outDir, `${name}.json`), JSON.stringify(result, null, 2) + '\n')
  writeFileSync(join(o.outDir, `${name}.md`), renderMarkdown(result))
  writeFileSync(join(o.outDir, `${name}.svg`), renderSvg(result))
}

// ---- processes ------------------------------------------------------------------------------------
/** Every child any run started and has not seen exit: SIGKILLed by PID if this process exits first. */
const live = new Set()
process.on('exit', () => { for (const c of live) { try { c.kill('SIGKILL') } catch {} } })

/** Adds a child spawned elsewhere (a load generator) to the children SIGKILLed if this process exits first. */
export function track (child) {
  live.add(child)
  child.once('exit', () => { live.delete(child) })
  return child
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
/** A sleep that does not keep the process alive (the losing side of a Promise.race). */
export const bound = (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref())

/** A bounded log tail. */
export function tail (max) {
  const lines = []
  return { lines, push (l) { lines.push(l); if (lines.length > max) lines.shift() } }
}

/**
 * Spawns a child tracked in `res.children` (stdout lines to `onLine`); `exited` resolves with
 * { code, signal, at }.
 */
export function spawnChild (res, cmd, args, { env, ipc = false, onLine } = {}) {
  const child = spawn(cmd, args, { stdio: ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  live.add(child)
  res.children.add(child)
  child.stderrTail = tail(30)
  child.exitInfo = undefined
  child.exited = new Promise((resolve) => {
    const done = (code, signal) => { live.delete(child); res.children.delete(child); child.exitInfo ??= { code, signal, at: Date.now() }; resolve(child.exitInfo) }
    child.once('exit', done)
    child.once('error', (err) => { child.spawnError = err; done(null, 'spawn-error') })
  })
  let buf = ''
  child.stdout.setEncoding('utf8').on('data', (d) => {
    buf += d
    let nl
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      onLine?.(line)
    }
  })
  let ebuf = ''
  child.stderr.setEncoding('utf8').on('data', (d) => {
    ebuf += d
    let nl
    while ((nl = ebuf.indexOf('\n')) !== -1) { child.stderrTail.push(ebuf.slice(0, nl)); ebuf = ebuf.slice(nl + 1) }
  })
  return child
}

/**
 * Stops every child of `res`: SIGTERM (nginx's master stops its workers, Ferry's control plane drains
 * its workers), up to `graceMs` for them to exit, then SIGKILL; then SIGKILLs any of their descendants
 * seen by `adoptDescendants` that outlived them (by PID and start time, so never a reused PID).
 */
export async function stopAll (res, graceMs = 8000) {
  const left = [...res.children]
  for (const c of left) { try { c.kill('SIGTERM') } catch {} }
  await Promise.race([Promise.all(left.map((c) => c.exited)), bound(graceMs)])
  for (const c of res.children) { try { c.kill('SIGKILL') } catch {} }
  await Promise.race([Promise.all(left.map((c) => c.exited)), bound(5000)])
  await waitFor('descendants gone', () => { killAdopted(); return [...adopted].every(({ pid, start }) => procStat(pid)?.start !== start) }, 5000).catch(() => {})
}

/** Descendants of the children (nginx's workers, Ferry's workers): SIGKILLed if they outlive them. */
const adopted = new Set()
function killAdopted () {
  for (const d of adopted) {
    const st = procStat(d.pid)
    if (st === undefined || st.start !== d.start || st.zombie) { adopted.delete(d); continue }
    try { process.kill(d.pid, 'SIGKILL') } catch {}
  }
}
process.on('exit', killAdopted)
/** Records every live descendant of `pid` (not `pid` itself), to be stopped with it (see stopAll). */
export function adoptDescendants (pid) {
  for (const p of Object.keys(cpuTree(pid).byPid).map(Number)) {
    const st = procStat(p)
    if (p !== pid && st !== undefined && ![...adopted].some((d) => d.pid === p && d.start === st.start)) adopted.add({ pid: p, start: st.start })
  }
}

/** Resolves once something accepts on host:port (bounded); rejects early if `child` exits first. */
export async function waitPort (host, port, what, child, timeoutMs = 15_000) {
  const open = () => new Promise((resolve) => {
    const s = createConnection(port, host)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
  await waitFor(`${what} on ${host}:${port}`, async () => {
    if (child?.exitInfo !== undefined) throw new Error(`${what} exited (${JSON.stringify(child.exitInfo)}) before listening: ${child.stderrTail.lines.join('\n')}`)
    return await open()
  }, timeoutMs)
}

/** SIGKILLs every child of `res` still running and waits (bounded) for them to go. */
export async function killAll (res) {
  const left = [...res.children]
  for (const c of left) { try { c.kill('SIGKILL') } catch {} }
  await Promise.race([Promise.all(left.map((c) => c.exited)), bound(5000)])
}

/** Sends `msg` over IPC and resolves with the next message of `type` (bounded). */
export function ask (child, msg, type, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.off('message', on); reject(new Error(`no ${type} answer from ${child.spawnargs.join(' ')}`)) }, timeoutMs)
    const on = (m) => { if (m?.type === type) { clearTimeout(timer); child.off('message', on); resolve(m) } }
    child.on('message', on)
    if (msg !== undefined) child.send(msg)
  })
}

/** Polls `fn` until it returns something truthy, within `timeoutMs` and the run's own deadline. */
export async function waitFor (what, fn, timeoutMs, res, everyMs = 50) {
  const deadline = Math.min(Date.now() + timeoutMs, res?.deadline ?? Infinity)
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

export async function freePort () {
  const s = createServer()
  await new Promise((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', resolve) })
  const port = s.address().port
  await new Promise((resolve) => s.close(resolve))
  return port
}

export async function startRedis (res) {
  const port = await freePort()
  let out = ''
  const child = spawnChild(res, REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', res.workDir, '--logfile', ''], {
    onLine: (l) => { if (out.length < 20_000) out += l + '\n' },
  })
  await waitFor('redis-server', () => { if (child.exitInfo !== undefined) throw new Error(`redis-server exited: ${out}`); return out.includes('Ready to accept connections') }, 10_000, res, 20)
  return { port, url: `redis://127.0.0.1:${port}`, child }
}

/**
 * A Ferry process (`dist/cli.js start --config file`) with JSON logs: resolves once it logs `listening`
 * (its HTTP and admin ports), within 15 s. Warnings and errors are counted (the first 10 kept); every
 * parsed log line also goes to `onLog`. `nodeFlags` go before the script (cluster workers inherit them).
 */
export async function startFerry (res, id, file, env, onLog, nodeFlags = []) {
  const pod = { id, http: 0, admin: 0, startedAt: Date.now(), warnings: [], warningCount: 0 }
  let listening
  const ready = new Promise((resolve) => { listening = resolve })
  pod.child = spawnChild(res, process.execPath, [...nodeFlags, FERRY_CLI, 'start', '--config', file], {
    env,
    onLine: (line) => {
      let j
      try { j = JSON.parse(line) } catch { return }
      if (j.msg === 'listening') { pod.http = Number(String(j.http).split(':').at(-1)); pod.admin = Number(String(j.admin).split(':').at(-1)); listening() }
      if (j.level >= 40) { pod.warningCount++; if (pod.warnings.length < 10) pod.warnings.push({ level: j.level, msg: j.msg, code: j.code ?? j.err?.code, err: j.err?.message }) }
      onLog?.(j)
    },
  })
  await Promise.race([ready, pod.child.exited.then((x) => { throw new Error(`pod ${id} exited (${JSON.stringify(x)}) before listening: ${pod.child.stderrTail.lines.join('\n')}`) }), bound(30_000).then(() => { throw new Error(`pod ${id} did not start within 30 s`) })])
  return pod
}

/**
 * One HTTP/1.1 GET on its own connection (`Connection: close` unless `headers` say otherwise), closed
 * after the response, bounded at 5 s; resolves { status, headers, body }.
 */
export function httpGet (host, port, path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, agent: false, headers: { connection: 'close', ...headers } }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (d) => { body += d }).on('end', () => {
        sock?.destroy() // a keep-alive response leaves the socket open otherwise
        resolve({ status: res.statusCode, headers: res.headers, body })
      })
    })
    let sock
    req.on('socket', (s) => { sock = s })
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${host}:${port}${path} timed out`)))
    req.on('error', reject).end()
  })
}

// ---- nginx configurations -------------------------------------------------------------------------
const STREAM_MODULE = ['/usr/lib/nginx/modules/ngx_stream_module.so', '/usr/share/nginx/modules/ngx_stream_module.so'].find((p) => existsSync(p))

/**
 * An nginx configuration run in the foreground by `nginx -p DIR -c FILE`: `workers` worker processes,
 * its logs, pid and temp files in `dir`, no access log, keep-alive for as long as a client wants;
 * `http` is the http block's body, `stream` (optional) a stream block's (with the module loaded).
 */
export function nginxConf (dir, name, workers, { http, stream }) {
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${dir}/${name}-${t};`).join(' ')
  return `${stream && STREAM_MODULE ? `load_module ${STREAM_MODULE};\n` : ''}worker_processes ${workers};
daemon off;
master_process on;
error_log ${dir}/${name}-error.log warn;
pid ${dir}/${name}.pid;
events { worker_connections 16384; multi_accept on; }
http {
  access_log off; ${temp}
  keepalive_requests 100000000; keepalive_timeout 300s;
${http}
}
${stream ? `stream {\n${stream}\n}\n` : ''}`
}

/** The reference backend's server: `return 200` with `body` (native-bench/run's, without its extras). */
export const nginxBackendServer = (host, port, body) => `  server { listen ${host}:${port} backlog=4096; location / { default_type text/plain; return 200 "${body.replace('\n', '\\n')}"; } }`

/**
 * The benchmarks' nginx reverse proxy (as native-bench/run for HTTP and lib/ws.js for WebSocket): `/` to
 * `backend` over an idle cache of `keepalive` HTTP/1.1 connections, `/ws` upgraded to `echo`.
 * `reuseport`: a listening socket per worker. `tls: { certFile, keyFile }`: the port speaks TLS 1.2 and 1.3 (https, wss; nginx 1.22's
 * default leaves 1.3 out).
 */
export const nginxProxyServer = ({ host, port, backend, echo, keepalive = 16, reuseport = false, tls }) => `  upstream backend { server ${backend}; keepalive ${keepalive}; keepalive_requests 100000000; keepalive_timeout 300s; }
  upstream echo { server ${echo}; }
  server {
    listen ${host}:${port} backlog=4096${reuseport ? ' reuseport' : ''}${tls ? ' ssl' : ''};${tls ? `\n    ssl_certificate ${tls.certFile}; ssl_certificate_key ${tls.keyFile}; ssl_protocols TLSv1.2 TLSv1.3;` : ''}
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For $remote_addr; }
    location /ws {
      proxy_pass http://echo; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout 600s; proxy_send_timeout 600s;
    }
  }`

/**
 * The benchmarks' HAProxy in `mode http` (as native-bench/run's): `threads` threads, a frontend bound with
 * `bind` (`host:port`, plus ` ssl crt FILE` for TLS), `/ws` to `echo`, the rest to `backend` over at most
 * `maxconn` connections (the rest queue) that any request may reuse; `more`: further sections.
 */
export const haproxyHttpConf = ({ threads, bind, backend, echo, maxconn = 16, more = '' }) => `global
  nbthread ${threads}
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout queue 5s
  timeout tunnel 600s
  http-reuse always
  option forwardfor
frontend fe
  bind ${bind}
  use_backend ws if { path_beg /ws }
  default_backend be
backend be
  server s1 ${backend} maxconn ${maxconn}
backend ws
  server s1 ${echo}
${more}`

// ---- Prometheus text ------------------------------------------------------------------------------
/** Parses Prometheus text into { 'name{labels}': value }. */
export function parseMetrics (body) {
  const out = {}
  for (const line of body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    out[line.slice(0, i)] = Number(line.slice(i + 1))
  }
  return out
}

/** A Ferry pod's /metrics, parsed (bounded at 2 s). */
export async function scrapeMetrics (adminPort) {
  return parseMetrics(await (await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(2000) })).text())
}

/** Sum of every series of `name` whose labels contain each of `labels` (`'outcome="moved"'`, …). */
export function metricSum (m, name, ...labels) {
  let n = 0
  for (const [k, v] of Object.entries(m)) if ((k === name || k.startsWith(`${name}{`)) && labels.every((l) => k.includes(l))) n += v
  return n
}

// ---- CPU time, from /proc ---------------------------------------------------------------------------
export const CLK_TCK = (() => { try { return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100 } catch { return 100 } })()

/**
 * A process's parent, user+sys CPU seconds (all its threads) and start time (clock ticks since boot:
 * with the PID it names one process), or undefined when it is gone.
 */
export function procStat (pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ') // f[0] is field 3 (state)
    return { ppid: Number(f[1]), cpu: (Number(f[11]) + Number(f[12])) / CLK_TCK, sys: Number(f[12]) / CLK_TCK, start: f[19], zombie: f[0] === 'Z' }
  } catch { return undefined }
}

/**
 * User+sys CPU seconds of a process and every live descendant (nginx: master + workers; Ferry with
 * workers: the control plane + each worker), in total and by PID. One pass over /proc.
 */
export function cpuTree (pid) {
  const stats = new Map()
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    const st = procStat(d)
    if (st !== undefined) stats.set(Number(d), st)
  }
  const byPid = {}
  let cpu = 0; let sys = 0
  const todo = [pid]
  while (todo.length > 0) {
    const p = todo.pop()
    const st = stats.get(p)
    if (st === undefined) continue
    byPid[p] = st.cpu; cpu += st.cpu; sys += st.sys
    for (const [q, s] of stats) if (s.ppid === p) todo.push(q)
  }
  return { cpu, sys, byPid }
}

/** User+sys CPU seconds of each thread of a process (HAProxy's nbthread threads), by thread id. */
export function threadCpu (pid) {
  const out = {}
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const st = procStat(`${pid}/task/${tid}`)
      if (st !== undefined) out[tid] = st.cpu
    }
  } catch {}
  return out
}

/** CPU seconds of a process and its descendants. */
export const cpuSeconds = (pid) => cpuTree(pid).cpu

/** Whole-machine busy CPU seconds (all cores) from /proc/stat. */
export function machineBusySeconds () {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const idle = f[3] + f[4]
  return (f.reduce((a, b) => a + b, 0) - idle) / CLK_TCK
}

// ---- wrk ------------------------------------------------------------------------------------------
function ms (v, unit) {
  const n = Number(v)
  return unit === 'us' ? n / 1000 : unit === 's' ? n * 1000 : unit === 'm' ? n * 60000 : n
}
/** wrk's report: req/s, requests, p50/p99 (ms, with --latency), socket errors, non-2xx. */
export function parseWrk (out) {
  const pct = (p) => { const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out); return m ? ms(m[1], m[2]) : NaN }
  const se = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out)
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? NaN),
    requests: Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN),
    p50ms: pct(50),
    p99ms: pct(99),
    socketErrors: se ? { connect: +se[1], read: +se[2], write: +se[3], timeout: +se[4] } : { connect: 0, read: 0, write: 0, timeout: 0 },
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
  }
}
export const sumErrors = (e) => e.connect + e.read + e.write + e.timeout

/**
 * wrk with one thread against `url` for `seconds`; resolves with parseWrk's figures. `extra`: more
 * arguments (`['-H', 'Connection: close']`); `latency: false` leaves out --latency; `env`: more environment
 * (LD_PRELOAD); the child is held in `transient` (a Set) while it runs, and SIGKILLed if this process exits first.
 */
export function wrk (url, seconds, { connections = 50, extra = [], latency = true, transient, env } = {}) {
  return new Promise((resolve, reject) => {
    const args = ['-t', '1', '-c', String(connections), '-d', `${seconds}s`, ...(latency ? ['--latency'] : []), ...extra, url]
    const c = track(spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } }))
    transient?.add(c); c.on('exit', () => transient?.delete(c))
    let out = ''
    c.stdout.on('data', (d) => { out += d })
    c.stderr.on('data', (d) => { out += d })
    c.on('error', reject)
    c.on('exit', (code) => code === 0 ? resolve(parseWrk(out)) : reject(new Error(`wrk ${args.join(' ')} exited ${code}: ${out}`)))
  })
}

/**
 * wrk (as `wrk`) plus the cores wrk itself used from `at0` (performance.now() when the window began),
 * read 150 ms before it ends (it is gone by the time it has reported): { ...wrk's figures, generatorCores }.
 */
export async function wrkSampled (url, seconds, at0, { transient, ...opts } = {}) {
  let child; let sample
  const tr = { add (c) { child = c; transient?.add(c) }, delete (c) { transient?.delete(c) } }
  const p = wrk(url, seconds, { ...opts, transient: tr })
  const timer = setTimeout(() => { const s = child && procStat(child.pid); if (s) sample = { cpu: s.cpu, at: performance.now() } }, seconds * 1000 - 150)
  try {
    const r = await p
    return { ...r, generatorCores: sample ? sample.cpu / ((sample.at - at0) / 1000) : NaN }
  } finally { clearTimeout(timer) }
}

// ---- measures -------------------------------------------------------------------------------------
/** The median (the mean of the middle two for an even count) of the finite values; NaN when none. */
export function median (xs) {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b); const m = Math.floor(s.length / 2)
  return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
export const minOf = (xs) => { const f = xs.filter(Number.isFinite); return f.length > 0 ? Math.min(...f) : NaN }
export const maxOf = (xs) => { const f = xs.filter(Number.isFinite); return f.length > 0 ? Math.max(...f) : NaN }

/** Most events in any window of `windowMs` (sorted or not). */
export function slidingPeak (times, windowMs = 1000) {
  const t = [...times].sort((a, b) => a - b)
  let peak = 0
  for (let i = 0, j = 0; i < t.length; i++) {
    while (t[i] - t[j] >= windowMs) j++
    peak = Math.max(peak, i - j + 1)
  }
  return peak
}

/** Counts per 1 s bin from `from` to `to` (ms), relative to t0: [{ s, n }]. */
export function bins (times, t0, fromS, toS) {
  const out = []
  for (let s = fromS; s < toS; s++) out.push({ s, n: 0 })
  for (const t of times) {
    const k = Math.floor((t - t0) / 1000) - fromS
    if (k >= 0 && k < out.length) out[k].n++
  }
  return out
}

/** A numbered sequence's tally: `check(x, k)` for each number seen (1, 2, …). */
export function seq () { return { count: 0, max: 0, missing: null, dup: 0, reordered: 0 } }
export function check (x, k) {
  x.count++
  if (k === x.max + 1) x.max = k
  else if (k > x.max + 1) { x.missing ??= new Set(); for (let j = x.max + 1; j < k; j++) x.missing.add(j); x.max = k } else if (x.missing?.delete(k)) x.reordered++
  else x.dup++
}

/** The p-th percentile (0–100) of `values` (nearest rank); NaN when empty. */
export function percentile (values, p) {
  if (values.length === 0) return NaN
  const s = [...values].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(s.length * p / 100) - 1))]
}

export const fmt = (n) => Number(n).toLocaleString('en-US')
