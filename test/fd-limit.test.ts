import { createServer as httpServer } from 'node:http'
import { createServer as tcpServer, connect, type Socket } from 'node:net'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { adminStatus, logged, metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'

/**
 * At the file-descriptor limit uWebSockets.js retries accept() in a tight loop. With limits.fdReserve
 * Ferry stops accepting before that (new connections refused at once), keeps the admin port answering,
 * and accepts again once descriptors are free.
 */

const NOFILE = 256
/** limits.fdReserve's default (the config leaves it out, so the same test runs against a gateway without it). */
const RESERVE = 64
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())

/** CPU seconds (user + system) the process has used, from /proc/PID/stat. */
function cpuSeconds (pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
}

/** Share of one core the process used over `ms`. */
async function cpuShare (pid: number, ms: number): Promise<number> {
  const c0 = cpuSeconds(pid)
  const t0 = performance.now()
  await new Promise((resolve) => setTimeout(resolve, ms))
  return (cpuSeconds(pid) - c0) / ((performance.now() - t0) / 1000)
}

/** Connects and, for an HTTP port, sends a GET: what happened first within `ms` (refused, reset, answered or hang). */
async function attempt (port: number, ms: number, request = true): Promise<{ outcome: string, ms: number }> {
  const started = performance.now()
  const outcome = await new Promise<string>((resolve) => {
    const s = connect(port, '127.0.0.1')
    const timer = setTimeout(() => { resolve('hang'); s.destroy() }, ms)
    const done = (what: string): void => { clearTimeout(timer); resolve(what); s.destroy() }
    s.on('connect', () => { if (request) s.write('GET /x HTTP/1.1\r\nhost: x\r\n\r\n') })
    s.on('data', (d) => { done(`answered ${String(d).split('\r\n')[0]}`) })
    s.on('error', (err: NodeJS.ErrnoException) => { done(err.code === 'ECONNREFUSED' ? 'refused' : err.code === 'ECONNRESET' ? 'reset' : `error ${err.code}`) })
    s.on('close', () => { done('closed') })
  })
  return { outcome, ms: Math.round(performance.now() - started) }
}

/** Opens `n` connections to `port` at once; resolves with those still open once every one connected or failed. */
async function flood (t: Teardown, port: number, n: number): Promise<Socket[]> {
  const all: Socket[] = []
  t.teardown(() => { for (const s of all) s.destroy() })
  await Promise.all(Array.from({ length: n }, async () => {
    const s = connect(port, '127.0.0.1')
    all.push(s)
    s.on('error', () => {})
    await Promise.race([once(s, 'connect'), once(s, 'close')]).catch(() => {})
  }))
  return all
}

async function backends (t: Teardown, hold = false): Promise<{ http: number, tcp: number, release: () => void }> {
  let held: Array<() => void> | undefined = hold ? [] : undefined
  const h = httpServer((req, res) => {
    const answer = (): void => { res.end(`ok ${req.url ?? ''}`) }
    if (held !== undefined && req.url === '/held') held.push(answer)
    else answer()
  })
  h.listen(0, '127.0.0.1')
  await once(h, 'listening')
  const echo = tcpServer((s) => { s.on('error', () => {}); s.pipe(s) })
  echo.listen(0, '127.0.0.1')
  await once(echo, 'listening')
  t.teardown(async () => {
    h.closeAllConnections()
    echo.close()
    await new Promise((resolve) => h.close(resolve))
  })
  return {
    http: (h.address() as { port: number }).port,
    tcp: (echo.address() as { port: number }).port,
    release: () => { const w = held ?? []; held = undefined; for (const fn of w) fn() },
  }
}

function config (be: { http: number, tcp: number }, maxConnections = 16): Record<string, any> {
  return {
    upstreams: {
      api: { protocol: 'http', endpoints: [`127.0.0.1:${be.http}`], pool: { maxConnections } },
      t: { protocol: 'tcp', endpoints: [`127.0.0.1:${be.tcp}`] },
    },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    listen: { tcp: [{ name: 't', host: '127.0.0.1', port: 0, upstream: 't' }] },
  }
}

async function healthz (f: FerryProcess): Promise<string> {
  return await fetch(`${f.adminUrl}/healthz`, { signal: AbortSignal.timeout(1000) }).then((r) => String(r.status), (err: Error) => `failed: ${(err.cause as Error | undefined)?.message ?? err.name}`)
}

t.test('at the descriptor limit the front stops accepting instead of spinning; the admin port answers; it accepts again once descriptors are free', async (t) => {
  const be = await backends(t)
  const f = await startFerry(t, config(be), { nofile: NOFILE })
  const st0 = await adminStatus(f)
  const tcpPort = st0.listeners.tcp[0].port as number
  t.match(st0.descriptors, { state: 'accepting', limit: NOFILE, fdReserve: RESERVE }, `/status: accepting, limit ${NOFILE}, reserve ${RESERVE}`)

  // More idle connections than the process has descriptors.
  const conns = await flood(t, f.httpPort, NOFILE + 50)
  const cpu = await cpuShare(f.pid, 2000)
  t.ok(cpu < 0.3, `with every descriptor taken the gateway uses < 30% of a core over 2 s (${Math.round(cpu * 100)}%)`)
  t.equal(await healthz(f), '200', 'GET /healthz on the admin port answers 200 within 1 s')
  const fresh = await attempt(f.httpPort, 1000)
  t.equal(fresh.outcome, 'refused', `a new connection to the front is refused (${fresh.outcome} after ${fresh.ms} ms; bound 1000 ms)`)
  const tcp = await attempt(tcpPort, 1000, false)
  t.ok(tcp.outcome === 'reset' || tcp.outcome === 'closed', `a new TCP listener connection is closed at once (${tcp.outcome} after ${tcp.ms} ms; bound 1000 ms)`)
  t.equal(await metric(f, 'ferry_accept_paused_total{listener="front"}'), 1, 'the pause is counted once: ferry_accept_paused_total{listener="front"} 1')
  t.equal(await metric(f, 'ferry_accept_paused{listener="front"}'), 1, 'ferry_accept_paused{listener="front"} 1 while paused')
  t.equal(await metric(f, 'ferry_accept_paused_total{listener="admin"}'), 0, 'the admin listener never paused')
  t.ok(await metric(f, 'ferry_tcp_closed_total{listener="t",reason="FERRY_ERR_FD_RESERVE"}') >= 1, 'the TCP refusal is counted with FERRY_ERR_FD_RESERVE')
  t.match((await adminStatus(f)).descriptors, { state: 'paused', pauses: 1 }, '/status shows the pause')
  await logged(f, (l) => String(l.msg).startsWith('file descriptors nearly exhausted'))
  t.equal(f.logs.filter((l) => String(l.msg).startsWith('file descriptors nearly exhausted')).length, 1, 'logged once')

  // Descriptors come back: the front binds its port again and serves.
  for (const s of conns) s.destroy()
  await waitFor('the front accepts again', async () => (await attempt(f.httpPort, 1000)).outcome === 'answered HTTP/1.1 200 OK', 5000, 50)
  t.pass('after the idle connections closed, the front answers 200 on its port again (within 5 s)')
  t.equal(await metric(f, 'ferry_accept_paused{listener="front"}'), 0, 'ferry_accept_paused{listener="front"} back to 0')
  t.match((await adminStatus(f)).descriptors, { state: 'accepting' }, '/status: accepting')
  const echoed = await new Promise<string>((resolve, reject) => {
    const s = connect(tcpPort, '127.0.0.1', () => { s.write('ping') })
    s.on('data', (d) => { resolve(String(d)); s.destroy() })
    s.on('error', reject)
  })
  t.equal(echoed, 'ping', 'the TCP listener forwards again')
  t.ok(await logged(f, (l) => l.msg === 'file descriptors free again: the front accepts new connections'), 'the resume is logged')
})

t.test('when work under way uses up the reserve the admin listener refuses too (no spin), and both come back', async (t) => {
  const be = await backends(t, true)
  const f = await startFerry(t, config(be, 200), { nofile: NOFILE })
  const conns = await flood(t, f.httpPort, NOFILE + 50)
  await waitFor('the front paused', async () => await metric(f, 'ferry_accept_paused{listener="front"}') === 1, 5000)
  // Requests on connections the front already holds open backend connections until the reserve is gone.
  const open = conns.filter((s) => !s.destroyed && s.readyState === 'open')
  for (const s of open.slice(0, 2 * RESERVE)) s.write('GET /held HTTP/1.1\r\nhost: x\r\n\r\n')
  await waitFor('the admin listener paused', () => f.logs.some((l) => String(l.msg).startsWith('the descriptor reserve is used up')), 5000)
  const cpu = await cpuShare(f.pid, 1000)
  t.ok(cpu < 0.3, `with the reserve used up the gateway uses < 30% of a core over 1 s (${Math.round(cpu * 100)}%)`)
  const admin = await attempt(f.adminPort, 1000)
  t.equal(admin.outcome, 'refused', `a connection to the admin port is refused at once, not left hanging (${admin.outcome} after ${admin.ms} ms; bound 1000 ms)`)
  be.release()
  for (const s of conns) s.destroy()
  await waitFor('the admin port answers again', async () => await healthz(f) === '200', 10000, 50)
  t.pass('once descriptors are free the admin port answers /healthz 200 again (within 10 s)')
  await waitFor('the front accepts again', async () => (await attempt(f.httpPort, 1000)).outcome === 'answered HTTP/1.1 200 OK', 10000, 50)
  t.pass('and the front answers 200 (within 10 s)')
  t.equal(await metric(f, 'ferry_accept_paused_total{listener="admin"}'), 1, 'ferry_accept_paused_total{listener="admin"} 1')
  t.equal(await metric(f, 'ferry_accept_paused{listener="admin"}'), 0, 'ferry_accept_paused{listener="admin"} back to 0')
})

t.test('limits.fdReserve: at most a quarter of the limit is kept; a reload changes it, 0 turns the guard off', async (t) => {
  const be = await backends(t)
  const f = await startFerry(t, { ...config(be), limits: { fdReserve: 1000 } }, { nofile: NOFILE })
  t.match((await adminStatus(f)).descriptors, { state: 'accepting', fdReserve: NOFILE / 4 }, `fdReserve 1000 under a limit of ${NOFILE}: ${NOFILE / 4} kept`)
  t.ok(await logged(f, (l) => String(l.msg).startsWith('limits.fdReserve is more than a quarter')), 'with a warning')
  const file = String(f.child.spawnargs.at(-1))
  const reload = async (fdReserve: number): Promise<unknown> => {
    const { writeFileSync } = await import('node:fs')
    const { stringify } = await import('yaml')
    writeFileSync(file, stringify({ ...config(be), limits: { fdReserve }, listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, tcp: [{ name: 't', host: '127.0.0.1', port: 0, upstream: 't' }] }, logging: { pretty: false } }))
    return await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()
  }
  t.match(await reload(16), { result: 'ok' }, 'reload with fdReserve 16: ok')
  t.match((await adminStatus(f)).descriptors, { state: 'accepting', fdReserve: 16 }, '/status: reserve 16')
  t.match(await reload(0), { result: 'ok' }, 'reload with fdReserve 0: ok')
  t.match((await adminStatus(f)).descriptors, { state: 'off', fdReserve: 0 }, '/status: the guard is off')
})

t.test('limits.fdReserve is validated', async (t) => {
  const { validateConfig } = await import('../src/config/load.js')
  t.throws(() => validateConfig({ limits: { fdReserve: -1 } }), /limits\.fdReserve/, 'a negative reserve is refused, naming limits.fdReserve')
  t.throws(() => validateConfig({ limits: { fdReserve: 100000 } }), /limits\.fdReserve: must be an integer of 0-65536/, 'more than 65536 is refused')
})
