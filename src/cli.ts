#!/usr/bin/env -S node --max-semi-space-size=32
/**
 * The `ferry` command. Its first act is to keep SIGTERM and SIGINT: loading the gateway's modules takes
 * about a second on a loaded machine, and a signal in that time would kill the process (exit 143, no log
 * line) instead of draining it. So this module imports nothing of Ferry's before the handlers are on;
 * each command loads what it needs with import(). `ferry start` hands what was kept to its drain
 * (docs/drain.md: kept, drained once started, exit 0); every other command gives the signals back to
 * their default (the process ends by the signal, exit status 128+n), re-raising one already kept.
 */
import type { Config } from './config/load.js'

// Nothing above this line but a type (erased): not even Node's own modules load before the handlers are on.
const kept: NodeJS.Signals[] = []
const keep = (signal: NodeJS.Signals): void => { kept.push(signal) }
process.on('SIGTERM', keep)
process.on('SIGINT', keep)

/** `ferry start`: from now on `onSignal` gets SIGTERM and SIGINT, and first the ones kept so far, in order. */
function handSignalsTo (onSignal: (signal: NodeJS.Signals) => void): void {
  // The new handlers first: with no listener at all a signal would get its default (death) meanwhile.
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  process.off('SIGTERM', keep)
  process.off('SIGINT', keep)
  for (const signal of kept.splice(0)) onSignal(signal)
}

/** Any other command: signals end it as if none had been kept (a kept one is raised again now). */
function releaseSignals (): void {
  process.off('SIGTERM', keep)
  process.off('SIGINT', keep)
  if (kept.length > 0) process.kill(process.pid, kept[0])
}

const usage = (version: string): string => `ferry ${version}: connection-offloading gateway

usage:
  ferry start [--config FILE]      run the gateway (no file: embedded defaults, demo on :3000, chat on :7000)
  ferry drain [--admin HOST:PORT] [--wait]
                                   drain a running gateway (as SIGTERM does); --admin defaults to the
                                   config's listen.admin; --wait follows it until it has exited
  ferry reload [--admin HOST:PORT] reload the config file of a running gateway (as SIGHUP does); exit 1
                                   with the field-named problems when it is refused
  ferry check --config FILE        validate a config; exit 1 listing every problem by field path
  ferry config-reference           print the config reference (docs/config.md) generated from the schema
  ferry errors-reference           print the error code reference (docs/errors.md)
  ferry version

environment:
  FERRY_CONFIG=FILE                config file when --config is not given
  FERRY__a__b=value                override config field a.b (value read as YAML), e.g. FERRY__listen__http__port=8081
  FERRY_ADMIN_TOKEN=TOKEN          admin token (default of admin.token); drain and reload send the config's
                                   admin.token / admin.tokenFile, else this
`

/** What `ferry start` runs: a Gateway (one process) or a Pod (a control plane and its workers). */
interface Runner {
  start: () => Promise<unknown>
  drain: (reason: string) => unknown
  hurryDrain: () => void
  reloadFromSource: (trigger: string) => Promise<unknown>
  readonly stopped: Promise<void>
}

function fail (msg: string, code = 1): never {
  process.stderr.write(msg.endsWith('\n') ? msg : `${msg}\n`)
  process.exit(code)
}

async function start (file: string | undefined): Promise<void> {
  const [{ loadConfig }, { createLogger, flushLogger }, { workerCount }] = await Promise.all([import('./config/load.js'), import('./observability/logger.js'), import('./planes/share.js')])
  const config = loadConfig(file)
  const log = createLogger({ level: config.logging.level, pretty: config.logging.pretty, base: { gw: config.gateway.id } })
  const source = file === undefined ? undefined : () => loadConfig(file)
  // One process, or a control plane over gateway.workers worker processes (docs/workers.md).
  const gateway: Runner = workerCount(config) > 1
    ? new (await import('./planes/control.js')).Pod({ config, log, source })
    : new (await import('./gateway.js')).Gateway({ config, log, source })
  let signals = 0
  const onSignal = (signal: string): void => {
    signals++
    if (signals === 1) {
      log.info({ signal }, 'draining')
      gateway.drain(signal)
      // Whatever happens, the process is gone shortly after the drain's own deadline.
      const { acceptGraceMs, deadlineMs } = config.drain
      const hard = setTimeout(() => { log.warn('drain did not finish by its deadline; exiting'); flushLogger(log); process.exit(0) }, acceptGraceMs + deadlineMs + 10000)
      hard.unref()
      return
    }
    if (signals <= 3) {
      // A second signal shortens the schedule, a third makes the deadline now.
      log.warn({ signal, count: signals }, 'drain hurried')
      gateway.hurryDrain()
      return
    }
    log.warn({ signal }, 'exiting now')
    flushLogger(log)
    process.exit(0)
  }
  // A signal kept while the modules loaded drains now: the gateway begins it once it runs.
  handSignalsTo(onSignal)
  // SIGHUP: reload the config file (the result is logged; a refused one keeps the running config).
  process.on('SIGHUP', () => { void gateway.reloadFromSource('SIGHUP') })
  process.on('uncaughtException', (err) => {
    // A bug, not bad input (bad input is handled where it arrives): log it and let the supervisor restart us.
    log.fatal({ err }, 'uncaught exception')
    flushLogger(log)
    process.exit(70)
  })
  try {
    await gateway.start()
  } catch (err) {
    flushLogger(log)
    throw err
  }
  // The process ends when the gateway has stopped: after a drain (a signal, POST /drain, `ferry drain`).
  void gateway.stopped.then(() => { flushLogger(log); process.exit(0) })
  if (file !== undefined && config.reload.watch) {
    // Polling the file's status (not inotify): it follows the symlink swap of a Kubernetes ConfigMap update.
    const { watchFile } = await import('node:fs')
    watchFile(file, { interval: config.reload.watchIntervalMs, persistent: false }, (cur, prev) => {
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) void gateway.reloadFromSource('file change')
    })
  }
}

/** The admin listener of the config (for `ferry drain` / `ferry reload` run beside the gateway). */
async function adminAddress (file: string | undefined): Promise<string> {
  const [{ loadConfig }, { formatAddress }] = await Promise.all([import('./config/load.js'), import('./discovery/source.js')])
  const a = loadConfig(file).listen.admin
  return formatAddress(a.host === '0.0.0.0' ? '127.0.0.1' : a.host === '::' ? '::1' : a.host, a.port)
}

/** The Authorization header for the admin listener: the config's admin token (token, tokenFile, FERRY_ADMIN_TOKEN), if any. */
async function adminHeaders (file: string | undefined): Promise<Record<string, string>> {
  const [{ loadConfig }, { resolveAdminToken }] = await Promise.all([import('./config/load.js'), import('./admin/token.js')])
  let token: string | undefined
  try {
    token = resolveAdminToken(loadConfig(file).admin).token
  } catch {
    // No usable config beside this command (--admin pointed elsewhere): the environment only.
    token = resolveAdminToken({}).token
  }
  return token === undefined ? {} : { authorization: `Bearer ${token}` }
}

/** POSTs to the admin listener; exits 1 naming the address when it cannot be reached. Returns status and body. */
async function adminPost (cmd: string, admin: string, path: string, timeoutMs: number, headers: Record<string, string>): Promise<{ status: number, body: string }> {
  try {
    const res = await fetch(`http://${admin}${path}`, { method: 'POST', headers, signal: AbortSignal.timeout(timeoutMs) })
    return { status: res.status, body: await res.text() }
  } catch (err) {
    const e = err as Error
    fail(`ferry ${cmd}: cannot reach the admin listener at ${admin}: ${e.cause instanceof Error ? e.cause.message : e.message}`)
  }
}

function printBody (body: string): void {
  process.stdout.write(body.endsWith('\n') ? body : `${body}\n`)
}

/** `ferry reload`: asks a running gateway to reload its config file; exit 1 when it refused. */
async function reloadCommand (admin: string, headers: Record<string, string>): Promise<void> {
  const { status, body } = await adminPost('reload', admin, '/reload', 30_000, headers)
  if (status !== 200) fail(`ferry reload: refused (${status}):\n${body}`)
  printBody(body)
}

/** `ferry drain`: asks a running gateway (its admin listener) to drain; with --wait, until it is gone. */
async function drainCommand (admin: string, wait: boolean, headers: Record<string, string>): Promise<void> {
  const { status, body } = await adminPost('drain', admin, '/drain', 5000, headers)
  if (status !== 202) fail(`ferry drain: ${admin} answered ${status}: ${body}`)
  printBody(body)
  if (!wait) return
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000))
    let st: { drain?: { phase?: string, remaining?: object } }
    try {
      st = await (await fetch(`http://${admin}/status`, { headers, signal: AbortSignal.timeout(5000) })).json() as typeof st
    } catch {
      process.stdout.write('drained: the gateway is gone\n')
      return
    }
    process.stdout.write(`${st.drain?.phase ?? '?'} ${JSON.stringify(st.drain?.remaining ?? {})}\n`)
  }
}

/** `ferry check`: the schema, then every file and secret `start` would read (src/check.ts); exit 1 listing every problem. */
async function checkCommand (file: string): Promise<void> {
  const [{ loadConfig, ConfigError }, { startFileProblems }] = await Promise.all([import('./config/load.js'), import('./check.js')])
  const cfg: Config = loadConfig(file)
  const problems = startFileProblems(cfg)
  if (problems.length > 0) throw new ConfigError(problems, file)
  process.stdout.write(`${file}: ok (${Object.keys(cfg.upstreams).length} upstreams, ${cfg.routes.length} routes)\n`)
}

async function main (argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv
  if (cmd !== 'start') releaseSignals()
  const [{ VERSION }, { parseArgs }] = await Promise.all([import('./version.js'), import('node:util')])
  const { values } = parseArgs({ args: rest, options: { config: { type: 'string', short: 'c' }, admin: { type: 'string' }, wait: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: false, strict: true })
  if (values.help === true) { releaseSignals(); process.stdout.write(usage(VERSION)); return }
  const file = values.config ?? process.env.FERRY_CONFIG
  switch (cmd) {
    case 'start':
      await start(file)
      return
    case 'drain':
      await drainCommand(values.admin ?? await adminAddress(file), values.wait === true, await adminHeaders(file))
      return
    case 'reload':
      await reloadCommand(values.admin ?? await adminAddress(file), await adminHeaders(file))
      return
    case 'check':
      if (file === undefined) fail('ferry check: --config FILE is required')
      await checkCommand(file)
      return
    case 'config-reference':
      process.stdout.write((await import('./config/reference.js')).renderConfigReference())
      return
    case 'errors-reference':
      process.stdout.write((await import('./config/reference.js')).renderErrorReference())
      return
    case 'version': case '--version':
      process.stdout.write(`${VERSION}\n`)
      return
    case undefined: case 'help': case '--help': case '-h':
      process.stdout.write(usage(VERSION))
      return
    default:
      fail(`ferry: unknown command ${JSON.stringify(cmd)}\n\n${usage(VERSION)}`, 2)
  }
}

main(process.argv.slice(2)).catch(async (err: unknown) => {
  const { isFerryError } = await import('./errors.js')
  if (isFerryError(err)) fail(`ferry: ${err.code}: ${err.message}`)
  if ((err as { code?: string })?.code?.startsWith('ERR_PARSE_ARGS') === true) fail(`ferry: ${(err as Error).message}\n\n${usage((await import('./version.js')).VERSION)}`, 2)
  fail(`ferry: ${(err as Error)?.stack ?? String(err)}`)
})
