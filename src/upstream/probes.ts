import { request } from 'node:http'
import { connect } from 'node:net'
import type { Endpoint } from '../config/load.js'

/**
 * Active health checks that need only an address (the EndpointSet bounds each by `timeoutMs` and owns
 * nothing here: each probe owns its one socket and destroys it on every path).
 */

/** A TCP connect to the endpoint; the socket is closed at once. */
export async function tcpProbe (ep: Endpoint, timeoutMs: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = connect({ host: ep.host, port: ep.port })
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`connect took longer than ${timeoutMs} ms`)) }, timeoutMs)
    s.once('connect', () => { clearTimeout(timer); s.destroy(); resolve() })
    s.once('error', (err: NodeJS.ErrnoException) => { clearTimeout(timer); s.destroy(); reject(new Error(`connect: ${err.code ?? err.message}`)) })
  })
}

/** GET `path` on a connection of its own (not a pooled one: a check must not queue behind requests). */
export async function httpProbe (ep: Endpoint, check: { path: string, expectStatus: readonly number[] } | undefined, timeoutMs: number): Promise<void> {
  const path = check?.path ?? '/'
  const expect = check?.expectStatus ?? [200]
  await new Promise<void>((resolve, reject) => {
    const req = request({ host: ep.host, port: ep.port, path, method: 'GET', agent: false, headers: { 'user-agent': 'ferry-health-check', connection: 'close' } })
    const timer = setTimeout(() => { req.destroy(new Error(`no response within ${timeoutMs} ms`)) }, timeoutMs)
    req.once('response', (res) => {
      clearTimeout(timer)
      res.resume()
      res.once('error', () => {})
      const status = res.statusCode ?? 0
      req.destroy()
      if (expect.includes(status)) resolve()
      else reject(new Error(`GET ${path} answered ${status} (expected ${expect.join('/')})`))
    })
    req.once('error', (err: NodeJS.ErrnoException) => { clearTimeout(timer); reject(new Error(`GET ${path}: ${err.code ?? err.message}`)) })
    req.end()
  })
}
