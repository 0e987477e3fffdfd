import { request, type ClientRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import type { Endpoint } from '../config/load.js'
import type { UpstreamTlsClient } from './tls.js'

/**
 * Active health checks that need only an address (the EndpointSet bounds each by `timeoutMs` and owns
 * nothing here: each probe owns its one socket and destroys it on every path). With `tls` (the
 * upstream's TLS client) a check speaks TLS as the upstream's traffic does, and a failed handshake is
 * counted and logged as one of that traffic would be.
 */

/** Why a probe's socket failed: the TLS failure when it is one, else its errno code. */
function why (ep: Endpoint, err: NodeJS.ErrnoException, tls: UpstreamTlsClient | undefined): string {
  return tls?.failure(ep.address, err)?.message ?? err.code ?? err.message
}

/** A TCP connect to the endpoint (with `tls`: and a completed TLS handshake); the socket is closed at once. */
export async function tcpProbe (ep: Endpoint, timeoutMs: number, tls?: UpstreamTlsClient): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s: Socket = tls === undefined ? connect({ host: ep.host, port: ep.port }) : tlsConnect({ host: ep.host, port: ep.port, ...tls.options(ep) })
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`connect took longer than ${timeoutMs} ms`)) }, timeoutMs)
    s.once(tls === undefined ? 'connect' : 'secureConnect', () => { clearTimeout(timer); s.destroy(); resolve() })
    s.once('error', (err: NodeJS.ErrnoException) => { clearTimeout(timer); s.destroy(); reject(new Error(`connect: ${why(ep, err, tls)}`)) })
  })
}

/** GET `path` on a connection of its own (not a pooled one: a check must not queue behind requests); over TLS with `tls`. */
export async function httpProbe (ep: Endpoint, check: { path: string, expectStatus: readonly number[] } | undefined, timeoutMs: number, tls?: UpstreamTlsClient): Promise<void> {
  const path = check?.path ?? '/'
  const expect = check?.expectStatus ?? [200]
  await new Promise<void>((resolve, reject) => {
    const opts = { host: ep.host, port: ep.port, path, method: 'GET', agent: false, headers: { 'user-agent': 'ferry-health-check', connection: 'close' } } as const
    const req: ClientRequest = tls === undefined ? request(opts) : httpsRequest({ ...opts, ...tls.options(ep) })
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
    req.once('error', (err: NodeJS.ErrnoException) => { clearTimeout(timer); reject(new Error(`GET ${path}: ${why(ep, err, tls)}`)) })
    req.end()
  })
}
