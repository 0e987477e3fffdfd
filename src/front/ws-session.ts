import type { WebSocket } from 'uWebSockets.js'
import type { Counter, Gauge } from 'prom-client'
import type { Metrics } from '../observability/metrics.js'
import { closeReason, type ClientSink, type UpstreamLeg, type WsHandshake } from '../contracts/ws.js'

/** Largest WebSocket frame header: 2 bytes, an 8-byte length, a 4-byte mask. */
const MAX_FRAME_HEADER = 14
import { fullBucket, takeToken, type Bucket } from '../edge/token-bucket.js'

/**
 * Sessions with queued deliveries, flushed once the current read's processing ends (one microtask).
 * Swapped with SPARE at each flush rather than copied out: no array per flush.
 */
let OUTBOX: ClientSession[] = []
let SPARE: ClientSession[] = []
/**
 * Schedules the flush as a reaction to a settled promise, not with queueMicrotask(), which wraps every
 * callback in an AsyncResource and a bound function (about 1% of the passthrough profile, once per backend
 * read). The same microtask queue, so the same moment; an exception thrown in the flush still ends up as
 * an uncaught one (an unhandled rejection, which Node raises as such with no handler for it).
 */
const SETTLED = Promise.resolve()

/**
 * Sends every queued delivery now. The front calls it before a topic publish: uWS sends a published
 * message at once, and it must not overtake a session's messages the backend sent before it.
 */
export function flushOutboxes (): void {
  if (OUTBOX.length === 0) return
  // A flush may close a session, which never adds to OUTBOX; new deliveries from here start a new round.
  const list = OUTBOX
  OUTBOX = SPARE
  try {
    for (let i = 0; i < list.length; i++) list[i]!.flushOutbox()
  } finally {
    list.length = 0
    SPARE = list
  }
}

/**
 * Below this a message sent outside cork() takes uWS's ordinary path: it corks the socket for that one
 * send and writes the frame whole. From 16 KiB an uncorked send takes uWS's shortcut that writes header
 * and payload apart, the path on which uWS can lose the payload when only the header went to its buffer
 * (uNetworking/uWebSockets#1662; the reason flushes use cork() at all).
 */
const UNCORKED_SEND_MAX = 16 * 1024

/** What the cork callback of a flush sends (module-level, so a flush allocates no closure). */
let corkWs: WebSocket<WsUserData> | undefined
const EMPTY_OUTBOX: Array<Uint8Array | boolean> = []
let corkList = EMPTY_OUTBOX
let corkCompress = false
let corkDropped = false

function sendCorked (): void {
  const ws = corkWs!
  const out = corkList
  for (let i = 0; i < out.length; i += 2) {
    if (ws.send(out[i] as Uint8Array, out[i + 1] as boolean, corkCompress) === 2) { corkDropped = true; break }
  }
}

/** What the uWS behavior calls on a client WebSocket's owner. */
export interface WsSocketOwner {
  opened: (ws: WebSocket<WsUserData>) => void
  fromClient: (message: ArrayBuffer, binary: boolean) => void
  drained: () => void
  closed: (code: number, message: ArrayBuffer) => void
}

/** What uWS keeps per client WebSocket: a pointer back to its owner (a session, or a refusal). */
export interface WsUserData {
  session: WsSocketOwner
}

/**
 * A handshake refused after the upgrade: a ferry/client client refused by admission control is
 * upgraded (a browser cannot read an HTTP status) and closed at once with a code and reason it reads
 * (1013, `retry-after-ms=N`). Nothing is opened upstream.
 */
export class RefusedClient implements WsSocketOwner {
  constructor (private readonly code: number, private readonly reason: string) {}
  opened (ws: WebSocket<WsUserData>): void { ws.end(this.code, this.reason) }
  fromClient (): void {}
  drained (): void {}
  closed (): void {}
}

/**
 * Client send-buffer watermarks. Above HIGH the session is `congested` (the upstream leg stops granting
 * credit / pauses its socket), below LOW it is not. With credit-limited mux streams a client's buffer
 * stays under HIGH + the stream window; `maxBackpressure` is the safety net (topic fan-out has no credit).
 */
export const CLIENT_HIGH_WATERMARK = 256 * 1024
export const CLIENT_LOW_WATERMARK = 64 * 1024

/** connecting: the upstream leg is being opened, the client is not upgraded yet. */
export type ClientSessionState = 'connecting' | 'open' | 'closed'

/** What a session tells the front about itself (the front owns the session table and topic registry). */
export interface SessionRegistry {
  sessionClosed: (s: ClientSession) => void
  topicJoined: (topic: string, s: ClientSession) => void
  topicLeft: (topic: string, s: ClientSession) => void
  /** A session not upgraded yet subscribed (true) or that subscription was applied or dropped (false): topic messages meanwhile go to its early queue. */
  topicPending: (topic: string, s: ClientSession, pending: boolean) => void
}

/** Metric children resolved once per (route, mode), not per message. */
export class SessionCounters {
  readonly open: Gauge.Internal<string>
  readonly opened: Counter.Internal
  /** Per-message counts are plain numbers, added to the prom-client counters at scrape time (`flush`): a labelled inc() re-hashes its labels on every call, which showed in the profile. */
  msgsUp = 0
  msgsDown = 0
  bytesUp = 0
  bytesDown = 0
  private readonly children: Counter.Internal[]
  private readonly closed = new Map<string, Counter.Internal>()

  constructor (private readonly metrics: Metrics, route: string, readonly mode: 'ws' | 'mux') {
    this.open = metrics.wsSessions.labels(route, mode)
    this.opened = metrics.wsSessionsTotal.labels(route, mode)
    this.children = [
      metrics.wsMessages.labels(mode, 'to_upstream'), metrics.wsMessages.labels(mode, 'to_client'),
      metrics.wsBytes.labels(mode, 'to_upstream'), metrics.wsBytes.labels(mode, 'to_client'),
    ]
  }

  /** Scrape time: moves the per-message counts into the counters. */
  flush (): void {
    const [mu, md, bu, bd] = this.children as [Counter.Internal, Counter.Internal, Counter.Internal, Counter.Internal]
    if (this.msgsUp > 0) { mu.inc(this.msgsUp); this.msgsUp = 0 }
    if (this.msgsDown > 0) { md.inc(this.msgsDown); this.msgsDown = 0 }
    if (this.bytesUp > 0) { bu.inc(this.bytesUp); this.bytesUp = 0 }
    if (this.bytesDown > 0) { bd.inc(this.bytesDown); this.bytesDown = 0 }
  }

  closedBy (reason: string): void {
    let c = this.closed.get(reason)
    if (c === undefined) { c = this.metrics.wsClosed.labels(this.mode, reason); this.closed.set(reason, c) }
    c.inc()
  }
}

/**
 * Closes uWS decides itself (it drops the socket: code 1006 with one of these messages): the error code
 * counted, and the close code the backend is told instead of 1006 (RFC 6455 §7.4.1: the cause, as the
 * backend's own WebSocket stack would have closed such a client). uWS 20.30 gives a message only for
 * these; its other protocol errors arrive as 1006 with none, like a client that reset its connection.
 */
const UWS_CLOSE_REASONS: Record<string, { errorCode: string, code?: number }> = {
  'Received too big message': { errorCode: 'FERRY_ERR_WS_MESSAGE_TOO_LARGE', code: 1009 },
  'Received too big message, or other inflation error': { errorCode: 'FERRY_ERR_WS_MESSAGE_TOO_LARGE', code: 1009 },
  'Received invalid UTF-8': { errorCode: 'FERRY_ERR_WS_CLIENT_PROTOCOL', code: 1007 },
  'Received invalid WebSocket frame': { errorCode: 'FERRY_ERR_WS_CLIENT_PROTOCOL', code: 1002 },
  'Received invalid close payload': { errorCode: 'FERRY_ERR_WS_CLIENT_PROTOCOL', code: 1002 },
  'WebSocket timed out from inactivity': { errorCode: 'FERRY_ERR_WS_IDLE' },
}

/**
 * One client WebSocket session: the only owner of the client's uWS socket. Bridges it to the upstream
 * leg (passthrough socket or mux stream) through the ClientSink / UpstreamLeg contract.
 *
 *   connecting ──upgrade──▶ open ──(client close | end() | closeClient())──▶ closed
 *        └──────(client aborted the handshake / upstream refused)──────────▶ closed
 */
export class ClientSession implements ClientSink, WsSocketOwner {
  state: ClientSessionState = 'connecting'
  congested = false
  leg: UpstreamLeg | undefined
  private ws: WebSocket<WsUserData> | undefined
  /** Deliveries and subscriptions that arrive before the client is upgraded (bounded by maxBackpressure). */
  /** Messages for the client decoded from the current backend read: [data, binary, data, binary, …]. */
  private outbox: Array<Uint8Array | boolean> | undefined
  private outboxBytes = 0
  private early: Array<{ data: Buffer, binary: boolean } | { topic: string, on: boolean }> | undefined
  private earlyBytes = 0
  /** Set when the upstream ended the session before the client was upgraded: applied at open. */
  private pendingEnd: { code: number, reason: string, errorCode: string } | undefined
  /** Who ended the session (metric label), decided before uWS's close callback runs. */
  private endReason: string | undefined

  constructor (
    readonly hs: WsHandshake,
    private readonly counters: SessionCounters,
    private readonly compress: boolean,
    private readonly registry: SessionRegistry,
  ) {}

  /** Topics this client is subscribed to (uWS unsubscribes on close; the registry is told here). */
  private topics: Set<string> | undefined
  /** Topics subscribed before the upgrade (the registry routes their messages into `early`). */
  private pendingTopics: Set<string> | undefined

  private dropPending (): void {
    if (this.pendingTopics === undefined) return
    for (const t of this.pendingTopics) this.registry.topicPending(t, this, false)
    this.pendingTopics = undefined
  }

  private onClosed (): void {
    if (this.topics !== undefined) for (const t of this.topics) this.registry.topicLeft(t, this)
    this.topics = undefined
    this.registry.sessionClosed(this)
  }

  get mode (): 'ws' | 'mux' {
    return this.counters.mode
  }

  // ── ClientSink (called by the upstream leg) ───────────────────────────────────────────────────

  deliver (data: Uint8Array, binary: boolean): void {
    if (this.state === 'closed') return
    if (this.ws === undefined) {
      this.early ??= []
      this.early.push({ data: Buffer.from(data), binary })
      this.earlyBytes += data.length
      if (this.earlyBytes > this.hs.settings.maxBackpressure) this.pendingEnd ??= { code: 1008, reason: 'client is not reading', errorCode: 'FERRY_ERR_WS_CLIENT_BACKPRESSURE' }
      return
    }
    this.counters.msgsDown++
    this.counters.bytesDown += data.length
    // Batched: every message for this client decoded from one backend read goes out in one cork (one
    // syscall) when the read's processing ends. The bytes are views of that read's buffer, which
    // nothing else writes to.
    if (this.outbox === undefined) {
      this.outbox = []
      OUTBOX.push(this)
      if (OUTBOX.length === 1) void SETTLED.then(flushOutboxes)
    }
    this.outbox.push(data, binary)
    this.outboxBytes += data.length
    if (this.outboxBytes >= CLIENT_HIGH_WATERMARK) this.congested = true
  }

  /** Sends what `deliver` queued, in one cork. */
  flushOutbox (): void {
    const out = this.outbox
    this.outbox = undefined
    this.outboxBytes = 0
    const ws = this.ws
    if (out === undefined || ws === undefined || this.state !== 'open') return
    corkDropped = false
    if (out.length === 2 && (out[0] as Uint8Array).length < UNCORKED_SEND_MAX) {
      // One small message (a ping-pong session's every read): uWS corks a send made outside cork() itself,
      // the same one write, without the call back into JavaScript that cork() costs.
      if (ws.send(out[0] as Uint8Array, out[1] as boolean, this.compress) === 2) corkDropped = true
    } else {
      // uWS 20.30 can lose payload of large sends made outside cork(); deliveries come from backend sockets.
      corkWs = ws
      corkList = out
      corkCompress = this.compress
      try {
        ws.cork(sendCorked)
      } finally {
        corkWs = undefined
        corkList = EMPTY_OUTBOX
      }
    }
    if (corkDropped) {
      // The client's buffer was already past uWS's limit. An ordered stream with a hole is corruption,
      // so the session ends here.
      this.closeClient(1008, 'client is not reading', 'FERRY_ERR_WS_CLIENT_BACKPRESSURE')
      return
    }
    // `deliver` may have set congested from the queued bytes alone; uWS's buffer is what counts now.
    const was = this.congested
    this.congested = ws.getBufferedAmount() >= CLIENT_HIGH_WATERMARK
    if (this.congested) this.leg?.clientCongested?.()
    else if (was) this.leg?.clientDrained()
  }

  end (code: number, reason: string, errorCode = 'upstream'): void {
    if (this.state === 'closed') return
    if (this.ws === undefined) {
      this.pendingEnd ??= { code, reason, errorCode }
      return
    }
    // What the backend sent before its close goes out first.
    if (this.outbox !== undefined) this.flushOutbox()
    if (this.state !== 'open') return
    this.endReason = errorCode
    this.leg = undefined // the leg is finished: it must not hear clientClosed
    this.ws.end(code, closeReason(reason))
  }

  subscribe (topic: string): void {
    if (this.state === 'closed') return
    if (this.ws === undefined) {
      (this.early ??= []).push({ topic, on: true })
      // A topic message published before the client is upgraded still reaches it, in order (uWS's
      // pub/sub only knows upgraded sockets): the front delivers it into the early queue.
      ;(this.pendingTopics ??= new Set()).add(topic)
      this.registry.topicPending(topic, this, true)
      return
    }
    this.ws.subscribe(topic)
    ;(this.topics ??= new Set()).add(topic)
    this.registry.topicJoined(topic, this)
  }

  unsubscribe (topic: string): void {
    if (this.state === 'closed') return
    if (this.ws === undefined) {
      (this.early ??= []).push({ topic, on: false })
      if (this.pendingTopics?.delete(topic) === true) this.registry.topicPending(topic, this, false)
      return
    }
    this.ws.unsubscribe(topic)
    if (this.topics?.delete(topic) === true) this.registry.topicLeft(topic, this)
  }

  // ── Front side (called by WsFront from uWS callbacks) ─────────────────────────────────────────

  /** The front closes the client (limits, shutdown); the leg is told to close its backend side. */
  closeClient (code: number, reason: string, errorCode: string): void {
    if (this.state === 'closed') return
    const leg = this.leg
    this.leg = undefined
    if (this.ws === undefined) {
      this.state = 'closed'
      this.dropPending()
      this.counters.closedBy(errorCode)
      this.onClosed()
    } else {
      this.outbox = undefined // a Ferry-side close: queued deliveries are moot
      this.endReason = errorCode
      this.ws.end(code, closeReason(reason))
    }
    leg?.clientClosed(code, reason)
  }

  /**
   * Drain: the session leaves this pod. A resumable (ferry/client) client is first told to reconnect
   * and resume (a `migrate` message); every client gets what the backend already sent, then close 1012.
   * Returns what kind of session moved, or undefined when it is not open (yet).
   */
  migrate (): 'resumable' | 'plain' | undefined {
    // endReason set: a close is already under way.
    if (this.state !== 'open' || this.ws === undefined || this.endReason !== undefined) return undefined
    const leg = this.leg
    const resumable = leg?.migrate !== undefined
    leg?.migrate?.()
    if (this.outbox !== undefined) this.flushOutbox()
    this.closeClient(1012, 'gateway draining: reconnect', 'FERRY_ERR_GATEWAY_DRAINING')
    return resumable ? 'resumable' : 'plain'
  }

  /** The handshake was aborted by the client or refused; the session never opened. */
  abandon (reason: string): void {
    if (this.state !== 'connecting') return
    this.state = 'closed'
    this.dropPending()
    const leg = this.leg
    this.leg = undefined
    leg?.clientClosed(1001, reason)
    this.early = undefined
  }

  opened (ws: WebSocket<WsUserData>): void {
    if (this.state !== 'connecting') { ws.end(1001, 'session closed'); return }
    this.state = 'open'
    this.ws = ws
    this.dropPending()
    this.counters.open.inc()
    this.counters.opened.inc()
    const early = this.early
    this.early = undefined
    this.earlyBytes = 0
    if (early !== undefined) {
      for (const e of early) {
        if (this.state !== 'open') break
        if ('topic' in e) { if (e.on) this.subscribe(e.topic); else this.unsubscribe(e.topic) } else this.deliver(e.data, e.binary)
      }
      // Now, not at the end of the turn: a topic message uWS publishes meanwhile goes out at once and
      // must not overtake the ones queued before the upgrade.
      if (this.outbox !== undefined && this.state === 'open') this.flushOutbox()
    }
    if (this.pendingEnd !== undefined && this.state === 'open') {
      const p = this.pendingEnd
      if (p.errorCode === 'upstream') this.end(p.code, p.reason, p.errorCode)
      else this.closeClient(p.code, p.reason, p.errorCode)
    }
  }

  /**
   * The sweep's check (WsFront runs it every second): a client whose queue passed maxBackpressure is
   * closed 1008. uWS's own limit is set to twice that, as the last resort between sweeps (uWS closes
   * without a close frame or a reason).
   */
  checkBackpressure (): void {
    if (this.state !== 'open' || this.ws === undefined) return
    if (this.ws.getBufferedAmount() > this.hs.settings.maxBackpressure) {
      this.closeClient(1008, 'client is not reading', 'FERRY_ERR_WS_CLIENT_BACKPRESSURE')
      return
    }
    // uWS calls drain while its buffer empties, not necessarily once more after it went below the low
    // watermark: the sweep re-checks, so a stream never stays without credit for a drained client.
    this.drained()
  }

  /** websocket.messageRate bucket, made full at the first message. */
  private rate: Bucket | undefined

  fromClient (message: ArrayBuffer, binary: boolean): void {
    const leg = this.leg
    if (leg === undefined || this.state !== 'open') return
    const n = message.byteLength
    // A ferry.v1 message carries one kind byte before the application's message.
    if (n > this.hs.settings.maxPayloadLength + (this.hs.ferry !== undefined ? 1 : 0)) {
      this.closeClient(1009, `message of ${n} bytes exceeds ${this.hs.settings.maxPayloadLength}`, 'FERRY_ERR_WS_MESSAGE_TOO_LARGE')
      return
    }
    const rate = this.hs.settings.messageRate
    if (rate !== undefined) {
      const now = performance.now()
      this.rate ??= fullBucket(rate.burst, now)
      if (takeToken(this.rate, now, rate.perSec, rate.burst) > 0) {
        this.closeClient(1008, `more than ${rate.perSec} messages/s`, 'FERRY_ERR_WS_MESSAGE_RATE')
        return
      }
    }
    this.counters.msgsUp++
    this.counters.bytesUp += n
    leg.send(new Uint8Array(message), binary)
    // One maximal message must always fit, whatever maxBufferedToUpstream says; a passthrough leg counts
    // the frame it wrote (up to 14 bytes of header with the mask) and holds it until the check phase.
    if (leg.buffered > this.hs.settings.maxBufferedToUpstream && leg.buffered > this.hs.settings.maxPayloadLength + MAX_FRAME_HEADER) {
      this.closeClient(1013, 'backend is not keeping up', 'FERRY_ERR_WS_UPSTREAM_SLOW')
    }
  }

  drained (): void {
    const ws = this.ws
    if (ws === undefined || this.state !== 'open') return
    const buffered = ws.getBufferedAmount()
    if (this.congested && buffered < CLIENT_LOW_WATERMARK) {
      this.congested = false
      this.leg?.clientDrained()
    }
  }

  /** uWS's close callback: the socket is gone (whoever started it). */
  closed (code: number, message: ArrayBuffer): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.ws = undefined
    this.counters.open.dec()
    let text = ''
    try { text = Buffer.from(message).toString('utf8') } catch { /* neutered: no reason */ }
    const uws = code === 1006 ? UWS_CLOSE_REASONS[text] : undefined
    this.counters.closedBy(this.endReason ?? uws?.errorCode ?? 'client')
    const leg = this.leg
    this.leg = undefined
    leg?.clientClosed(uws?.code ?? code, text)
    this.onClosed()
  }
}
