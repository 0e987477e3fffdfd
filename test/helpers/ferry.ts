import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const CLI = join(ROOT, 'dist', 'cli.js')

/** The subset of tap's Test the helpers use. */
export interface Teardown { teardown: (fn: () => unknown) => void }

export interface FerryProcess {
  readonly pid: number
  readonly httpPort: number
  readonly adminPort: number
  readonly url: string
  readonly adminUrl: string
  /** Every stdout line so far (pino JSON), parsed where possible. */
  readonly logs: Array<Record<string, unknown>>
  readonly stderr: () => string
  /** Resident set size of the gateway process in bytes (from /proc). */
  rss: () => number
  /** SIGTERM and wait for exit; returns the exit code. */
  stop: () => Promise<number | null>
  readonly child: ChildProcess
}

/** Writes `config` as YAML to a temp file and returns its path. */
export function writeConfig (config: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-test-'))
  const file = join(dir, 'ferry.yaml')
  writeFileSync(file, stringify(config))
  return file
}

/**
 * `config` with `gateway.workers: 1` unless it sets `gateway.workers` itself. The default is `auto` (a
 * control plane and a worker per usable core): tests that start Ferry from a config pin one process, so
 * what they test is the same on a 1-core and a 16-core machine; the tests of the planes set workers.
 */
export function singleProcess<T extends Record<string, unknown>> (config: T): T {
  const gateway = config.gateway as Record<string, unknown> | undefined
  if (gateway !== undefined && (typeof gateway !== 'object' || gateway === null || 'workers' in gateway)) return config
  return { ...config, gateway: { ...gateway, workers: 1 } }
}

/**
 * Starts `node dist/cli.js start --config <tmp>` with both listeners on 127.0.0.1:0 (unless the config
 * says otherwise) and one process (`singleProcess`, unless the config sets `gateway.workers`), and
 * resolves once it logs `listening`. Stopped by PID on teardown.
 */
export async function startFerry (t: Teardown, config: Record<string, unknown>, opts: {
  env?: NodeJS.ProcessEnv
  timeoutMs?: number
  /** RLIMIT_NOFILE (soft and hard) of the gateway process. */
  nofile?: number
  /** false: leave `gateway.workers` unset when the config does not set it (the default, `auto`, applies). */
  singleProcess?: boolean
  /** The CPUs the gateway process may run on (`taskset -c`, e.g. '0'): what `gateway.workers: auto` counts. */
  cpus?: string
} = {}): Promise<FerryProcess> {
  const cfg = structuredClone(opts.singleProcess === false ? config : singleProcess(config)) as Record<string, any>
  cfg.listen ??= {}
  cfg.listen.http ??= { host: '127.0.0.1', port: 0 }
  cfg.listen.admin ??= { host: '127.0.0.1', port: 0 }
  cfg.logging ??= {}
  cfg.logging.pretty = false
  // SIGTERM drains: tests that do not test the drain schedule get a quick one (no accept grace, every
  // session migrated at once: spreadMs 0 and no rate cap; 5 s deadline).
  cfg.drain ??= { acceptGraceMs: 0, spreadMs: 0, maxMigrationsPerSec: 1_000_000, deadlineMs: 5000 }
  const file = writeConfig(cfg)
  let argv = [process.execPath, CLI, 'start', '--config', file]
  // taskset and the shell exec node: the same pid, and the config file stays the last argument.
  if (opts.cpus !== undefined) argv = ['taskset', '-c', opts.cpus, ...argv]
  // With a descriptor limit, a shell sets it and execs the rest.
  if (opts.nofile !== undefined) argv = ['/bin/sh', '-c', `ulimit -n ${opts.nofile} && exec "$0" "$@"`, ...argv]
  const child = spawn(argv[0]!, argv.slice(1), {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const logs: Array<Record<string, unknown>> = []
  let err = ''
  let buf = ''
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d })
  let exited = false
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => { exited = true; resolve(code) }))
  t.teardown(async () => { if (!exited) { child.kill('SIGKILL'); await exit } })
  const listening = new Promise<Record<string, unknown>>((resolve, reject) => {
    // Generous: a start timeout only detects a gateway that never comes up, and the suite runs two files at once.
    const startMs = opts.timeoutMs ?? 30_000
    const timer = setTimeout(() => reject(new Error(`ferry did not start within ${startMs} ms; stderr: ${err}`)), startMs)
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let rec: Record<string, unknown>
        try { rec = JSON.parse(line) as Record<string, unknown> } catch { rec = { raw: line } }
        logs.push(rec)
        if (rec.msg === 'listening') { clearTimeout(timer); resolve(rec) }
      }
    })
    void exit.then((code) => { clearTimeout(timer); reject(new Error(`ferry exited with ${code} before listening; stderr: ${err}`)) })
  })
  const rec = await listening
  const httpPort = Number(String(rec.http).split(':').at(-1))
  const adminPort = Number(String(rec.admin).split(':').at(-1))
  const pid = child.pid!
  return {
    pid,
    httpPort,
    adminPort,
    url: `http://127.0.0.1:${httpPort}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    logs,
    stderr: () => err,
    child,
    rss: () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
      return m === null ? 0 : Number(m[1]) * 1024
    },
    stop: async () => {
      if (!exited) child.kill('SIGTERM')
      const code = await exit
      // 'exit' can come before the last of stdout is read: the log lines a test checks after the stop
      // (its last words) are in `logs` once stdout ends (bounded: a pod's orphaned worker may hold it).
      if (child.stdout!.readableEnded === false) await new Promise<void>((resolve) => { const tm = setTimeout(resolve, 2000); child.stdout!.once('end', () => { clearTimeout(tm); resolve() }) })
      return code
    },
  }
}

/** The port a TCP listener bound, from the gateway's `listening` log line. */
export function tcpPort (f: FerryProcess, name: string): number {
  const rec = f.logs.find((r) => r.msg === 'listening') as { tcp?: Record<string, number> } | undefined
  const p = rec?.tcp?.[name]
  if (typeof p !== 'number' || p <= 0) throw new Error(`no bound port for tcp listener ${name} in the listening log line`)
  return p
}

/** PIDs whose parent is `pid` (a pod's workers, the processes scripts/run-demo.sh started). */
export function childrenOf (pid: number): number[] {
  const out: number[] = []
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8')
      // "pid (comm) state ppid ...": comm may hold spaces, so read after its closing parenthesis.
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d))
    } catch { /* gone meanwhile */ }
  }
  return out
}

/** Runs `node dist/cli.js ...args` to completion. */
export async function runCli (args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  return { code, stdout, stderr }
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function waitFor<T> (what: string, fn: () => T | Promise<T>, timeoutMs = 10000, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

/**
 * The first log line of `f` that `pred` accepts, waiting for it (up to `timeoutMs`): lines come through the
 * gateway's stdout, which may trail what a test saw over HTTP on a busy machine. Undefined if none came.
 */
export async function logged (f: { logs: Array<Record<string, unknown>> }, pred: (l: Record<string, unknown>) => boolean, timeoutMs = 5000): Promise<Record<string, unknown> | undefined> {
  return await waitFor('a log line', () => f.logs.find(pred), timeoutMs).catch(() => undefined)
}

/** GET the admin /status JSON. */
export async function adminStatus (f: FerryProcess): Promise<any> {
  const r = await fetch(`${f.adminUrl}/status`)
  return await r.json()
}

/** Waits until every link of the mux upstream `upstream`'s endpoint `address` is ready (/status). */
export async function muxLinksReady (f: FerryProcess, upstream: string, address: string): Promise<void> {
  await waitFor(`links to ${address} ready`, async () => {
    const st = await adminStatus(f)
    const ep = st.upstreams.find((u: { name: string }) => u.name === upstream).endpoints.find((e: { address: string }) => e.address === address)
    return ep !== undefined && ep.links.every((l: { state: string }) => l.state === 'ready')
  }, 10_000)
}

/** Reads one sample value from /metrics (`name{labels}`), 0 when absent. */
export async function metric (f: FerryProcess, series: string): Promise<number> {
  const text = await (await fetch(`${f.adminUrl}/metrics`)).text()
  for (const line of text.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1))
  }
  return 0
}
