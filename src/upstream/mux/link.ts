import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import type { Logger } from 'pino'
import type { Endpoint } from '../../config/load.js'
import type { MuxUpstreamConfig } from '../../config/schema.js'
import { GoawayCode } from '../../mux/codec.js'
import { MuxConnection, type ConnectionEnd } from '../../mux/connection.js'
import type { UpstreamTlsClient } from '../tls.js'

/**
 * backoff: waiting to reconnect. connecting: TCP/TLS connect + HELLO exchange, bounded by connectMs.
 * ready: takes new streams. draining: the backend sent GOAWAY (or we did): open streams continue, no
 * new ones; the link closes when the last stream ends. stopped: the upstream is closing.
 */
/** Not an error: a link closed by us after GOAWAY once its last stream ended. */
const DRAINED = 'drained'

export type LinkState = 'backoff' | 'connecting' | 'ready' | 'draining' | 'stopped'

export interface LinkOwner {
  readonly name: string
  readonly address: string
  readonly endpoint: Endpoint
  readonly cfg: MuxUpstreamConfig
  /** TLS towards the endpoint (undefined: plain links). */
  readonly tls: UpstreamTlsClient | undefined
  readonly gatewayId: string
  readonly log: Logger
  /** The endpoint's topic scope; each link connection adds its own to it. */
  readonly topicPrefix: string
  linkReady: (slot: LinkSlot) => void
  /** A connect attempt failed (refused, timeout, bad HELLO) before the link was ready. */
  linkFailed: (slot: LinkSlot, why: string) => void
  /** A ready (or draining) link went away. */
  linkLost: (slot: LinkSlot, end: ConnectionEnd) => void
  linkGoaway: (slot: LinkSlot, reason: string) => void
  /** A PUBLISH on this link: `topic` is already scoped to the link. */
  publish: (topic: string, data: Buffer, binary: boolean) => void
  protocolError: (code: string) => void
  afterStreamEnd: () => void
}

/**
 * One of an endpoint's `pool.links` link slots: keeps one mux link to the endpoint alive, reconnecting
 * with exponential, fully jittered backoff. The only owner of its socket (through its MuxConnection)
 * and of its one timer (connect deadline or backoff delay).
 */
export class LinkSlot {
  state: LinkState = 'backoff'
  conn: MuxConnection | undefined
  /**
   * The topic scope of the current connection. A backend's PUBLISH on a link reaches the clients whose
   * sessions subscribed on that same link: a SUBSCRIBE and the PUBLISHes after it share one TCP stream,
   * so a subscriber never misses a message published after its SUBSCRIBE was sent (across links the
   * gateway may read them in either order).
   */
  topicPrefix: string
  private connections = 0
  private failures = 0
  private retired = false
  private timer: NodeJS.Timeout | undefined

  constructor (readonly index: number, private readonly owner: LinkOwner) {
    this.topicPrefix = `${owner.topicPrefix}${index}.0\u0001`
  }

  /** Both sides of the current link speak backend handoff. */
  get handoff (): boolean {
    return this.conn?.handoff === true
  }

  /** Its handoff carries resumable sessions too. */
  get handoffResume (): boolean {
    return this.conn?.handoffResume === true
  }

  get streams (): number {
    return this.conn?.streams.size ?? 0
  }

  start (): void {
    if (this.state !== 'backoff') return
    this.connect()
  }

  private connect (): void {
    this.clearTimer()
    this.state = 'connecting'
    const { cfg, endpoint, tls } = this.owner
    const { host, port } = endpoint
    const socket: Socket = tls !== undefined ? tlsConnect({ host, port, ...tls.options(endpoint) }) : netConnect({ host, port })
    socket.setKeepAlive(true, 30_000)
    const onEarlyError = (err: Error): void => { this.attemptFailed(this.why(err, err.message)) }
    socket.once('error', onEarlyError)
    socket.once(tls !== undefined ? 'secureConnect' : 'connect', () => {
      if (this.state !== 'connecting') { socket.destroy(); return }
      socket.off('error', onEarlyError)
      const topicPrefix = this.topicPrefix = `${this.owner.topicPrefix}${this.index}.${++this.connections}\u0001`
      this.conn = new MuxConnection(socket, {
        role: 'gateway',
        id: this.owner.gatewayId,
        maxFrameBytes: cfg.flow.maxFrameBytes,
        initialWindow: cfg.flow.initialWindow,
        maxMessageBytes: cfg.flow.maxMessageBytes,
        pingIntervalMs: cfg.timeouts.pingIntervalMs,
        handoff: true,
      }, {
        ready: () => {
          if (this.state !== 'connecting') return
          this.clearTimer()
          this.state = 'ready'
          this.failures = 0
          this.owner.linkReady(this)
        },
        publish: (topic, data, binary) => { this.owner.publish(topicPrefix + topic, data, binary) },
        goaway: (_last, _code, reason) => {
          if (this.state === 'ready') this.state = 'draining'
          this.owner.linkGoaway(this, reason)
          this.closeIfIdle()
        },
        protocolError: (code) => { this.owner.protocolError(code) },
        closed: (end) => { this.onClosed(end) },
      })
    })
    // The deadline covers connect, TLS and the HELLO exchange.
    this.timer = setTimeout(() => {
      this.timer = undefined
      if (this.state === 'connecting') {
        socket.destroy()
        this.attemptFailed(`no ready link within ${cfg.timeouts.connectMs} ms (connect, TLS or HELLO)`)
      }
    }, cfg.timeouts.connectMs)
    this.timer.unref()
  }

  private attemptFailed (why: string): void {
    if (this.state !== 'connecting') return
    this.state = 'backoff'
    this.failures++
    this.owner.linkFailed(this, why)
    const conn = this.conn
    this.conn = undefined
    conn?.destroy({ code: 'FERRY_ERR_UPSTREAM_CONNECT', message: why })
    this.backoff()
  }

  /** Why a connect failed: a TLS failure is counted and logged (once per endpoint and reason) by the upstream's TLS client and said so; else `otherwise`. */
  private why (err: Error | undefined, otherwise: string): string {
    return (err !== undefined ? this.owner.tls?.failure(this.owner.address, err)?.message : undefined) ?? otherwise
  }

  private onClosed (end: ConnectionEnd): void {
    this.conn = undefined
    if (this.state === 'connecting') {
      this.failures++
      // Under TLS 1.3 an endpoint refuses a client certificate only after Ferry's side of the handshake completed.
      this.owner.linkFailed(this, this.why(end.cause, end.message))
    } else if (this.state === 'ready' || this.state === 'draining') {
      if (end.code !== DRAINED) this.owner.linkLost(this, end)
    }
    if (this.retired) this.state = 'stopped'
    else if (this.state !== 'stopped') this.backoff()
  }

  private backoff (): void {
    this.clearTimer()
    this.state = 'backoff'
    const { minDelayMs, maxDelayMs } = this.owner.cfg.reconnect
    // Full jitter (AWS architecture blog): uniform in [min, min(max, min·2^failures)].
    const cap = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(this.failures, 20))
    const delay = minDelayMs + Math.random() * Math.max(0, cap - minDelayMs)
    this.timer = setTimeout(() => { this.timer = undefined; if (this.state === 'backoff') this.connect() }, delay)
    this.timer.unref()
  }

  /** A stream on this link ended: a draining link of the endpoint may close now. */
  afterStreamEnd (): void {
    this.owner.afterStreamEnd()
  }

  /** A draining link with no streams left closes (and reconnects: the backend may be back by then). */
  closeIfIdle (): void {
    if (this.state === 'draining' && this.conn !== undefined && this.conn.idle) {
      this.conn.destroy({ code: DRAINED, message: 'drained after GOAWAY' })
    }
  }

  /** A reload retired the upstream: GOAWAY now, close when the last stream ends, never reconnect. */
  retire (): void {
    this.retired = true
    this.clearTimer()
    if ((this.state === 'ready' || this.state === 'draining') && this.conn !== undefined) {
      if (this.state === 'ready') this.conn.goaway(GoawayCode.NORMAL, 'upstream reconfigured')
      this.state = 'draining'
      this.closeIfIdle()
      return
    }
    this.stop()
  }

  /** The upstream is closing: GOAWAY, then close once streams are gone (or now with `abort`). */
  stop (): void {
    this.clearTimer()
    const prev = this.state
    this.state = 'stopped'
    const conn = this.conn
    if (conn === undefined) return
    if (prev === 'ready' || prev === 'draining') conn.goaway(GoawayCode.NORMAL, 'gateway stopping')
    this.conn = undefined
    conn.destroy({ code: 'FERRY_ERR_GATEWAY_STOPPING', message: 'gateway stopping' })
  }

  private clearTimer (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
  }

  status (): object {
    return { link: this.index, state: this.state, streams: this.streams, rttMs: this.conn?.rttMs ?? null, failures: this.failures }
  }
}
