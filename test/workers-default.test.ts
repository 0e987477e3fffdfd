import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parse, stringify } from 'yaml'
import { usableCores } from '../src/planes/cores.js'
import { httpConfig } from './helpers/backend.js'
import { adminStatus, childrenOf, logged, ROOT, startFerry, waitFor, type FerryProcess } from './helpers/ferry.js'
import { freePort } from './helpers/redis.js'

// gateway.workers defaults to `auto`: a worker per core the process may use (docs/workers.md). A count
// of 1 (`workers: 1`, or `auto` with one usable core) is the plain single process, no control plane.
// The README's tour of `make run` (the default) is driven too: one backend connection per worker.
// Real processes: `ferry start`, its workers, the demo backend; the core count is the machine's own.

/** The demo backend `make run` starts (dist/demo/backend.js): it says which of its connections served a request. */
async function config (t: Test, top: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const port = await freePort()
  const child = spawn(process.execPath, [join(ROOT, 'dist', 'demo', 'backend.js'), '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { if (d.includes('listening')) resolve() })
    child.once('exit', (code) => { reject(new Error(`demo backend exited ${code}`)) })
  })
  return httpConfig([`127.0.0.1:${port}`], {}, top)
}

/**
 * The README's tour: GET /hello on a new client connection each time, one after another. Returns the
 * backend connections that answered and how many the backend accepted in all.
 */
async function tour (f: FerryProcess, requests = 20): Promise<{ used: Set<number>, accepted: number }> {
  const used = new Set<number>()
  let accepted = 0
  for (let i = 0; i < requests; i++) {
    const r = await fetch(`${f.url}/hello`, { headers: { connection: 'close' } })
    const body = await r.json() as { backendConnection: number, connectionsAccepted: number }
    used.add(body.backendConnection)
    accepted = body.connectionsAccepted
  }
  return { used, accepted }
}

/** The plain single process: no pod in /status, no child process, no control-plane log. */
async function singleProcess (t: Test, f: FerryProcess, what: string): Promise<void> {
  const st = await adminStatus(f)
  t.equal(st.pid, f.pid, `${what}: /status is the started process's`)
  t.equal(st.pod, undefined, `${what}: no pod in /status`)
  t.equal(st.workers, undefined, `${what}: no workers in /status`)
  t.same(childrenOf(f.pid), [], `${what}: no child process (no worker forked)`)
  t.notOk(f.logs.some((l) => l.msg === 'starting the workers'), `${what}: no control plane started`)
  const { used, accepted } = await tour(f)
  t.same([...used], [1], `${what}: 20 client connections, one after another, all served over backend connection 1`)
  t.equal(accepted, 1, `${what}: the backend accepted 1 connection`)
}

const cores = usableCores()
const oneCore = cores.usable < 2 ? `this machine has ${cores.usable} usable core (cpus ${cores.affinity}, quota ${cores.quota ?? 'none'}): auto is 1, the single process (next test)` : false

t.test('a config without gateway.workers starts a control plane with a worker per usable core', { skip: oneCore }, async (t) => {
  const cfg = await config(t)
  t.equal((cfg.gateway as unknown), undefined, 'the config does not set gateway')
  const f = await startFerry(t, cfg, { singleProcess: false, timeoutMs: 60_000 })
  // The workers are the control plane's children: killed at teardown whatever happens to it.
  const forked = new Set<number>()
  t.teardown(() => { for (const pid of forked) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } } })
  const workers = await waitFor(`${cores.usable} workers running`, async () => {
    const ws = (await adminStatus(f)).workers as Array<{ pid: number | null, state: string }> | undefined
    for (const w of ws ?? []) if (w.pid !== null) forked.add(w.pid)
    return ws !== undefined && ws.length === cores.usable && ws.every((w) => w.state === 'running' && w.pid !== null) ? ws : undefined
  }, 30_000, 100)
  const st = await adminStatus(f)
  t.match(st.pod, { workers: cores.usable, cores: cores.usable }, `/status pod.workers is the usable cores (${cores.usable}: cpus ${cores.affinity}, quota ${cores.quota ?? 'none'})`)
  t.equal(st.pid, f.pid, '/status is the control plane\'s (the started process)')
  t.same(childrenOf(f.pid).sort(), workers!.map((w) => w.pid).sort(), `the ${cores.usable} workers are the started process's children`)
  t.match(await logged(f, (l) => l.msg === 'starting the workers'), { setting: 'auto', workers: cores.usable }, 'it logs the setting (auto) and the count')
  const { used, accepted } = await tour(f)
  t.ok(used.size >= 1 && used.size <= cores.usable, `20 client connections, one after another, served over ${used.size} backend connection(s) (${[...used].join(', ')}): at most one per worker (${cores.usable})`)
  t.ok(accepted <= cores.usable, `the backend accepted ${accepted} connections: at most one per worker`)
  // What `make restart` (ferry drain) sends: the answer says the pod is draining, before any worker's next heartbeat.
  const exited = new Promise((resolve) => { f.child.once('exit', resolve) })
  const r = await fetch(`${f.adminUrl}/drain`, { method: 'POST' })
  t.equal(r.status, 202, 'POST /drain: 202')
  const body = await r.json() as { phase: string }
  t.not(body.phase, 'idle', `the answer's phase is the drain's (${body.phase}), not idle`)
  t.equal(await exited, 0, 'the pod drains and exits 0')
})

t.test('a count of 1 is the plain single process: gateway.workers 1, and auto with one usable core', async (t) => {
  const one = await startFerry(t, await config(t, { gateway: { workers: 1 } }), { singleProcess: false })
  await singleProcess(t, one, 'workers: 1')
  t.equal(await one.stop(), 0, 'workers: 1: exits 0')
  // taskset: the process may run on CPU 0 only, so auto counts 1.
  const auto = await startFerry(t, await config(t), { singleProcess: false, cpus: '0' })
  await singleProcess(t, auto, 'no gateway.workers, one CPU')
  t.equal(await auto.stop(), 0, 'one CPU: exits 0')
})

t.test('a single process told to become a pod by a reload says it needs a restart, and applies the rest', { skip: oneCore }, async (t) => {
  const cfg = await config(t, { gateway: { workers: 1 } })
  const f = await startFerry(t, cfg, { singleProcess: false })
  const file = String(f.child.spawnargs.at(-1))
  // The config it runs (its listeners on port 0, not the defaults) without gateway.workers (auto: a
  // worker per core), and a new route.
  const running = parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  const next = { ...running, gateway: undefined, routes: [...(cfg.routes as unknown[]), { match: { path: '/new' }, upstream: 'api' }] }
  writeFileSync(file, stringify(next))
  const r = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  const body = await r.json() as { result: string }
  t.equal(body.result, 'ok', 'the reload applies')
  const line = await waitFor('the log line', () => f.logs.find((l) => l.msg === 'gateway.workers changes with a restart: this process runs alone until then'), 5000, 20)
  t.match(line, { running: 1, setting: 'auto', workers: cores.usable }, 'the log says the worker count waits for a restart')
  t.same(childrenOf(f.pid), [], 'still one process')
  t.equal(await f.stop(), 0)
})

t.test('a Gateway made in code is one process whatever gateway.workers says, and says so when it asks for more', async (t) => {
  const { Gateway } = await import('../src/gateway.js')
  const { validateConfig } = await import('../src/config/load.js')
  const pino = (await import('pino')).default
  const lines: Array<{ msg: string, workers?: number }> = []
  const log = pino({ level: 'info' }, { write: (l: string) => { lines.push(JSON.parse(l) as { msg: string, workers?: number }) } })
  const base = { listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } }, upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/' }, upstream: 'api' }] }
  const two = new Gateway({ config: validateConfig({ ...base, gateway: { workers: 2 } }), log })
  const said = lines.filter((l) => l.msg.includes('a Gateway made in code runs in this one process'))
  t.equal(said.length, 1, 'workers: 2 in code: one warning')
  t.equal(said[0]?.workers, 2, 'naming the count asked for')
  const before = new Set(childrenOf(process.pid))
  const ports = await two.start()
  t.teardown(async () => { await two.stop() })
  t.same(childrenOf(process.pid).filter((pid) => !before.has(pid)), [], 'and no worker process was started')
  t.equal((await (await fetch(`http://127.0.0.1:${ports.admin}/status`)).json() as { pod?: unknown }).pod, undefined, 'its /status is a single process\'s (no pod)')
  lines.length = 0
  const one = new Gateway({ config: validateConfig({ ...base, gateway: { workers: 1 } }), log })
  t.equal(lines.filter((l) => l.msg.includes('one process')).length, 0, 'workers: 1: nothing to say')
  void one
})
