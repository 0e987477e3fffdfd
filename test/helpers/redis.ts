import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Teardown } from './ferry.js'

export const REDIS_SERVER = process.env.REDIS_SERVER ?? '/usr/bin/redis-server'

/** A port that was free a moment ago on 127.0.0.1 (listen on 0, read it, close). */
export async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const addr = server.address()
  await new Promise<void>((resolve) => server.close(() => { resolve() }))
  if (addr === null || typeof addr === 'string') throw new Error('no port')
  return addr.port
}

export interface RedisServer {
  readonly port: number
  readonly url: string
  /** PID of the running redis-server (a new one after `restart`). */
  readonly pid: () => number
  /** SIGSTOP: the server holds its connections but answers nothing (a "slow" Redis). */
  pause: () => void
  /** SIGCONT after `pause`. */
  resume: () => void
  /** SIGKILL and wait for the exit (a "down" Redis: connections reset, nothing listens). */
  kill: () => Promise<void>
  /** A fresh, empty redis-server on the same port (after `kill`). */
  restart: () => Promise<void>
}

/**
 * A real redis-server on 127.0.0.1 (a free port unless `port` is given), no persistence, its files in a
 * temp dir. Every process it starts is SIGKILLed by its own PID at teardown.
 */
export async function startRedis (t: Teardown, opts: { port?: number } = {}): Promise<RedisServer> {
  const port = opts.port ?? await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'ferry-redis-'))
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()

  const launch = async (): Promise<void> => {
    const c = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', ''], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child = c
    let out = ''
    let done = false
    exited = new Promise<void>((resolve) => c.once('exit', () => { done = true; resolve() }))
    t.teardown(async () => {
      if (!done) { c.kill('SIGKILL'); await exited }
    })
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`redis-server on port ${port} not ready within 10 s: ${out}`)) }, 10_000)
      const onData = (d: Buffer): void => {
        out += d.toString()
        if (out.includes('Ready to accept connections')) { clearTimeout(timer); c.stdout!.off('data', onData); resolve() }
      }
      c.stdout!.on('data', onData)
      c.stderr!.on('data', (d: Buffer) => { out += d.toString() })
      void exited.then(() => { clearTimeout(timer); reject(new Error(`redis-server on port ${port} exited before ready: ${out}`)) })
    })
    // Keep draining its output so a chatty server never blocks on a full pipe.
    c.stdout!.resume()
  }

  await launch()
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: () => child!.pid!,
    pause: () => { child!.kill('SIGSTOP') },
    resume: () => { child!.kill('SIGCONT') },
    kill: async () => { child!.kill('SIGKILL'); await exited },
    restart: launch,
  }
}
