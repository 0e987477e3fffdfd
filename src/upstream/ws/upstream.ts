import type { IncomingMessage } from 'node:http'
import type { Logger } from 'pino'
import WebSocket from 'ws'
import { parseEndpoint, type Endpoint } from '../../config/load.js'
import type { WsUpstreamConfig } from '../../config/schema.js'
import { FerryError, type FerryErrorCode } from '../../errors.js'
import { sendableCloseCode, type ClientSink, type UpstreamLeg, type WsHandshake, type WsUpstream } from '../../front/ws-types.js'
import type { Metrics } from '../../observability/metrics.js'
import { Balancer, hashKey, type Balanced } from '../../routing/balancer.js'
import { PassiveHealth } from '../health.js'

/** One backend endpoint of a passthrough upstream. `inflight` = handshaking + open backend sockets. */
class WsEndpoint implements Balanced {
  inflight = 0
  open = 0

  constructor (readonly endpoint: Endpoint, readonly passive: PassiveHealth) {}

  get address (): string {
    return this.endpoint.address
  }

  acceptsAt (now: number): boolean {
    return this.passive.acceptsAt(now)
  }
}

/** How long a backend gets to answer our close frame before its socket is cut. */
const CLOSE_GRACE_MS = 2000

/**
 * One passthrough session's backend side: the only owner of its `ws` client socket. Messages are
 * relayed with their type; close codes and reasons travel both ways; a congested client pauses the
 * backend socket and a full backend socket is reported through `buffered` (the front closes 1013).
 */
class PassthroughLeg implements UpstreamLeg {
  private done = false

  constructor (readonly protocol: string, private readonly ws: WebSocket, private readonly sink: ClientSink, private readonly ep: WsEndpoint, private readonly onEnd: () => void) {
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      sink.deliver(data, isBinary)
      if (sink.congested && !ws.isPaused) ws.pause()
    })
    ws.on('close', (code: number, reason: Buffer) => {
      if (this.finish()) return
      // 1006: the backend vanished without a close frame (reset, crash): tell the client to reconnect.
      if (code === 1006) sink.end(1011, 'backend connection lost', 'FERRY_ERR_WS_UPSTREAM_LOST')
      else sink.end(sendableCloseCode(code), reason.toString('utf8'))
    })
    ws.on('error', () => { /* 'close' follows */ })
  }

  /** True when the session had already ended (so nothing more is said). */
  private finish (): boolean {
    if (this.done) return true
    this.done = true
    this.ep.inflight--
    this.ep.open--
    this.onEnd()
    return false
  }

  send (data: Uint8Array, binary: boolean): void {
    if (this.ws.readyState !== WebSocket.OPEN) return
    // ws may queue the buffer: copy, the uWS view dies when the caller returns.
    this.ws.send(Buffer.from(data), { binary, compress: false })
  }

  get buffered (): number {
    return this.ws.bufferedAmount
  }

  clientDrained (): void {
    if (this.ws.isPaused) this.ws.resume()
  }

  clientClosed (code: number, reason: string): void {
    if (this.finish()) return
    const ws = this.ws
    if (ws.readyState === WebSocket.OPEN) {
      // 1005 (no status) and 1006 (the client vanished) are never sent on the wire.
      ws.close(code === 1005 ? 1000 : code === 1006 ? 1001 : sendableCloseCode(code, 1000), reason)
      setTimeout(() => { ws.terminate() }, CLOSE_GRACE_MS).unref()
    } else ws.terminate()
  }
}

/**
 * A `protocol: ws` upstream: every client session gets its own WebSocket to an unmodified backend.
 * The client's upgrade is answered only after the backend's: 101 with the backend's subprotocol, or
 * 502/504 when it refused or could not be reached. A connect failure is retried once on another
 * endpoint within `timeouts.connectMs` (a refused handshake is an answer, and is not).
 */
export class WsPassthroughUpstream implements WsUpstream {
  readonly mode = 'ws'
  private readonly endpoints: WsEndpoint[]
  private readonly balancer: Balancer<WsEndpoint>
  /** Rendezvous hashing of a session's affinity key: every pod picks the same endpoint for a key. */
  private readonly byKey: Balancer<WsEndpoint>
  private readonly legs = new Set<PassthroughLeg>()
  private closed = false

  constructor (readonly name: string, readonly cfg: WsUpstreamConfig, private readonly log: Logger, private readonly metrics: Metrics) {
    this.endpoints = cfg.endpoints.map((e) => {
      const ep = parseEndpoint(e.replace(/^ws:\/\//, ''))
      return new WsEndpoint(ep, new PassiveHealth(name, ep.address, cfg.ejection, log, metrics))
    })
    this.balancer = new Balancer(this.endpoints, cfg.balance)
    this.byKey = new Balancer(this.endpoints, 'hash')
  }

  async open (hs: WsHandshake, sink: ClientSink): Promise<UpstreamLeg> {
    if (this.closed) throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', 'upstream is closing')
    const affine = hs.affinityKey !== undefined
    const key = affine ? hashKey(hs.affinityKey!) : this.cfg.balance === 'hash' ? hashKey(hs.remoteAddress) : undefined
    const balancer = affine ? this.byKey : this.balancer
    const deadline = Date.now() + this.cfg.timeouts.connectMs
    const tried = new Set<WsEndpoint>()
    let lastError: FerryError | undefined
    while (tried.size < 2) {
      const ep = balancer.pick(Infinity, Date.now(), tried, key)
      if (ep === undefined) break
      tried.add(ep)
      const left = deadline - Date.now()
      if (left <= 0) break
      try {
        return await this.connect(ep, hs, sink, left)
      } catch (err) {
        lastError = err as FerryError
        if (lastError.code === 'FERRY_ERR_WS_UPSTREAM_HANDSHAKE') throw lastError
      }
    }
    throw lastError ?? new FerryError('FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT', `no backend handshake within ${this.cfg.timeouts.connectMs} ms`)
  }

  private async connect (ep: WsEndpoint, hs: WsHandshake, sink: ClientSink, budgetMs: number): Promise<UpstreamLeg> {
    const host = ep.endpoint.host.includes(':') ? `[${ep.endpoint.host}]` : ep.endpoint.host
    const url = `ws://${host}:${ep.endpoint.port}${hs.path}${hs.query === '' ? '' : `?${hs.query}`}`
    ep.inflight++
    const ws = new WebSocket(url, [...hs.protocols], {
      headers: hs.headers,
      perMessageDeflate: false,
      handshakeTimeout: budgetMs,
      maxPayload: Math.max(hs.settings.maxPayloadLength, 64 * 1024 * 1024),
      followRedirects: false,
    })
    return await new Promise<UpstreamLeg>((resolve, reject) => {
      const fail = (code: FerryErrorCode, message: string, countAsFailure: boolean): void => {
        ws.removeAllListeners()
        ws.on('error', () => {})
        ws.terminate()
        ep.inflight--
        if (countAsFailure) ep.passive.failed('handshake failures')
        reject(new FerryError(code, message))
      }
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        this.log.info({ endpoint: ep.address, status: res.statusCode, path: hs.path }, 'passthrough backend refused the WebSocket handshake')
        res.resume()
        fail('FERRY_ERR_WS_UPSTREAM_HANDSHAKE', `backend answered ${res.statusCode ?? 0} to the WebSocket handshake`, false)
      })
      ws.once('error', (err: Error & { code?: string }) => {
        // ws refuses a 101 without a subprotocol when one was offered: an answer, not an endpoint failure.
        if (/subprotocol/i.test(err.message)) { fail('FERRY_ERR_WS_UPSTREAM_HANDSHAKE', `${ep.address}: ${err.message}`, false); return }
        const timeout = /timed out|timeout/i.test(err.message)
        fail(timeout ? 'FERRY_ERR_UPSTREAM_CONNECT_TIMEOUT' : 'FERRY_ERR_UPSTREAM_CONNECT', `${ep.address}: ${err.message}`, true)
      })
      ws.once('open', () => {
        ws.removeAllListeners('unexpected-response')
        ws.removeAllListeners('error')
        if (ws.protocol !== '' && !hs.protocols.includes(ws.protocol)) {
          fail('FERRY_ERR_WS_UPSTREAM_HANDSHAKE', `backend selected subprotocol ${ws.protocol} that the client did not offer`, false)
          return
        }
        ep.passive.succeeded('handshake')
        ep.open++
        const leg: PassthroughLeg = new PassthroughLeg(ws.protocol, ws, sink, ep, () => { this.legs.delete(leg) })
        this.legs.add(leg)
        resolve(leg)
      })
    })
  }

  async close (kind: 'flush' | 'abort'): Promise<void> {
    this.closed = true
    // The front closes client sessions first (their legs close the backend sockets); 'abort' cuts the rest.
    if (kind === 'abort') for (const leg of [...this.legs]) leg.clientClosed(1001, 'gateway stopping')
  }

  collect (): void {
    let open = 0
    for (const ep of this.endpoints) open += ep.open
    this.metrics.upstreamConnections.labels('upstream', 'ws', this.name).set(open)
  }

  status (): object {
    const now = Date.now()
    return {
      name: this.name,
      protocol: 'ws',
      balance: this.cfg.balance,
      endpoints: this.endpoints.map((ep) => ({ address: ep.address, ...ep.passive.status(now), sessions: ep.open, handshaking: ep.inflight - ep.open })),
    }
  }
}
