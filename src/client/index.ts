/**
 * `ferry/client`: a WebSocket-like client that keeps its session across reconnects (docs/resume.md).
 * Browser and Node, no dependencies (Node < 22 has no global WebSocket: pass `WebSocket` from `ws`).
 *
 *   import { FerryClient } from 'ferry/client'
 *   const c = new FerryClient('wss://chat.example.com/chat')
 *   c.on('open', ({ resumed }) => {})
 *   c.on('message', (data, { binary, topic }) => {})
 *   c.send('hello')   // kept until the backend acknowledged it; resent after a resume
 *
 * On a Ferry route that resumes sessions (the gateway answers the `ferry.v1` subprotocol) every message is
 * numbered and acknowledged: after a reconnect through any gateway pod, both sides resend exactly what
 * the other did not get. Elsewhere it is a plain reconnecting WebSocket (no replay).
 */
import { CloseCode, Kind, resumeOffer, SUBPROTOCOL, type Control, type Welcome } from './wire.js'

export { CloseCode, SUBPROTOCOL } from './wire.js'

/** The part of the WHATWG WebSocket this library uses (browsers' WebSocket and `ws` both fit). */
export interface WebSocketLike {
  readonly readyState: number
  readonly protocol: string
  binaryType: string
  send: (data: string | ArrayBufferView | ArrayBuffer) => void
  close: (code?: number, reason?: string) => void
  onopen: ((ev: unknown) => void) | null
  onmessage: ((ev: { data: unknown }) => void) | null
  onclose: ((ev: { code: number, reason: string }) => void) | null
  onerror: ((ev: unknown) => void) | null
}

export type WebSocketCtor = new (url: string, protocols?: string[]) => WebSocketLike

export interface FerryClientOptions {
  /** WebSocket implementation. Default: the global one. */
  WebSocket?: WebSocketCtor
  /** Application subprotocols to offer (the selected one is `client.protocol`). */
  protocols?: string[]
  /** A token from an earlier page load (see the `token` event) to resume that session. */
  token?: string
  /** Backoff between reconnects: full jitter over min(maxDelayMs, minDelayMs × 2^attempt). */
  reconnect?: { minDelayMs?: number, maxDelayMs?: number, maxAttempts?: number }
  /** Acknowledge after this many messages (default 32) … */
  ackEvery?: number
  /** … or this long after the first unacknowledged one (default 100 ms). */
  ackIntervalMs?: number
  /** Bounds of the unacknowledged outgoing messages; `send` beyond them throws a RangeError. */
  maxBufferedMessages?: number
  maxBufferedBytes?: number
}

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed'
export type MessageData = string | Uint8Array

interface Events {
  open: { resumed: boolean, session: string }
  message: MessageData
  reconnecting: { attempt: number, delayMs: number, code: number, reason: string }
  reset: { reason: string, unsent: MessageData[] }
  token: string
  close: { code: number, reason: string }
  error: Error
}
type Listener<K extends keyof Events> = K extends 'message' ? (data: MessageData, info: { binary: boolean, topic: boolean }) => void : (arg: Events[K]) => void

/** Close codes after which reconnecting is pointless: the session ended or the client is refused. */
function terminal (code: number): boolean {
  if (code === 1000 || code === CloseCode.TAKEN_OVER) return true
  if (code === 1002 || code === 1003 || code === 1007 || code === 1008 || code === 1009 || code === 1010) return true
  return code >= 4000 && code <= 4999
}

/**
 * One logical session over successive WebSockets.
 *
 *   connecting ──welcome──▶ open ──connection lost──▶ reconnecting ──welcome──▶ open
 *        └────────────┬─────────┴── close() / terminal close code ──────────────▶ closed
 */
export class FerryClient {
  state: ClientState = 'connecting'
  /** The session id (from the gateway's welcome). */
  session: string | undefined
  token: string | undefined
  /** The gateway answered `ferry.v1`: messages are numbered, acknowledged and replayed. */
  resumable = false
  /** The application subprotocol selected. */
  protocol = ''
  private ws: WebSocketLike | undefined
  private readonly Ctor: WebSocketCtor
  private readonly listeners = new Map<string, Set<(...a: any[]) => void>>()
  // Outgoing: messages sent - acked are kept in `unacked` (oldest first).
  private sent = 0
  private acked = 0
  private unacked: MessageData[] = []
  private unackedBytes = 0
  // Incoming: data messages received; the last count acknowledged.
  private received = 0
  private ackedIn = 0
  private ackTimer: ReturnType<typeof setTimeout> | undefined
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private attempt = 0
  /** A delay the server asked for (migrate, 1013 retry-after-ms). */
  private hintMs = 0
  private welcomed = false
  private readonly o: Required<Omit<FerryClientOptions, 'WebSocket' | 'token' | 'reconnect'>> & { minDelayMs: number, maxDelayMs: number, maxAttempts: number }

  constructor (readonly url: string, opts: FerryClientOptions = {}) {
    const Ctor = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket
    if (Ctor === undefined) throw new Error('ferry/client: no WebSocket implementation; on Node < 22 pass { WebSocket } from the ws package')
    this.Ctor = Ctor
    this.token = opts.token
    this.o = {
      protocols: opts.protocols ?? [],
      ackEvery: opts.ackEvery ?? 32,
      ackIntervalMs: opts.ackIntervalMs ?? 100,
      maxBufferedMessages: opts.maxBufferedMessages ?? 10_000,
      maxBufferedBytes: opts.maxBufferedBytes ?? 16 * 1024 * 1024,
      minDelayMs: opts.reconnect?.minDelayMs ?? 200,
      maxDelayMs: opts.reconnect?.maxDelayMs ?? 30_000,
      maxAttempts: opts.reconnect?.maxAttempts ?? Infinity,
    }
    this.connect()
  }

  on<K extends keyof Events> (event: K, fn: Listener<K>): this {
    let set = this.listeners.get(event)
    if (set === undefined) { set = new Set(); this.listeners.set(event, set) }
    set.add(fn as (...a: any[]) => void)
    return this
  }

  off<K extends keyof Events> (event: K, fn: Listener<K>): this {
    this.listeners.get(event)?.delete(fn as (...a: any[]) => void)
    return this
  }

  /** Bytes of outgoing messages not yet acknowledged by the backend (all queued ones while reconnecting). */
  get bufferedAmount (): number {
    return this.unackedBytes
  }

  /**
   * Sends one message (string → text, bytes → binary). While reconnecting it is queued; in a resumable
   * session it is kept until the backend acknowledged it. Throws a RangeError past the buffer bounds.
   */
  send (data: string | ArrayBuffer | ArrayBufferView): void {
    if (this.state === 'closed') throw new Error('ferry/client: send() after close')
    const msg: MessageData = typeof data === 'string' ? data : data instanceof ArrayBuffer ? new Uint8Array(data.slice(0)) : new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
    const size = typeof msg === 'string' ? msg.length : msg.byteLength
    if (this.unacked.length >= this.o.maxBufferedMessages || this.unackedBytes + size > this.o.maxBufferedBytes) {
      throw new RangeError(`ferry/client: ${this.unacked.length} messages / ${this.unackedBytes} bytes unacknowledged; the bound is ${this.o.maxBufferedMessages} / ${this.o.maxBufferedBytes}`)
    }
    const live = this.state === 'open' && this.ws !== undefined
    if (live && !this.resumable) { this.ws!.send(msg); return }
    this.sent++
    this.unacked.push(msg)
    this.unackedBytes += size
    if (live) this.write(msg)
  }

  /** Ends the session for good: the backend application sees `close(code, reason)`. */
  close (code = 1000, reason = ''): void {
    if (this.state === 'closed') return
    this.flushAck()
    const ws = this.ws
    this.finish(code, reason)
    try { ws?.close(code, reason) } catch { /* already closing */ }
  }

  private connect (): void {
    const protocols = [SUBPROTOCOL]
    if (this.token !== undefined) protocols.push(resumeOffer(this.token, this.received, this.sent))
    protocols.push(...this.o.protocols)
    let ws: WebSocketLike
    try {
      ws = new this.Ctor(this.url, protocols)
    } catch (err) {
      this.emit('error', err instanceof Error ? err : new Error(String(err)))
      this.scheduleReconnect(1006, 'connect failed')
      return
    }
    this.ws = ws
    this.welcomed = false
    ws.binaryType = 'arraybuffer'
    ws.onopen = () => {
      if (ws !== this.ws) return
      this.resumable = ws.protocol === SUBPROTOCOL
      if (!this.resumable) {
        // A plain session: no numbering; what was queued goes out now (at most once, no replay).
        this.protocol = ws.protocol
        this.opened(false, '')
        const queued = this.unacked
        this.unacked = []
        this.unackedBytes = 0
        this.sent = this.acked = 0
        for (const m of queued) ws.send(m)
      }
    }
    ws.onmessage = (ev) => { if (ws === this.ws) this.onMessage(ev.data) }
    // onclose follows with the code; the error says why a handshake failed (e.g. Node's ws refuses a
    // 101 without a subprotocol, which a route that does not resume may send).
    ws.onerror = (ev) => {
      if (ws !== this.ws) return
      const err = (ev as { error?: unknown, message?: unknown }).error
      this.emit('error', err instanceof Error ? err : new Error(`ferry/client: WebSocket error${typeof (ev as { message?: unknown }).message === 'string' ? `: ${(ev as { message: string }).message}` : ''}`))
    }
    ws.onclose = (ev) => {
      if (ws !== this.ws) return
      this.ws = undefined
      if (this.state === 'closed') return
      if (terminal(ev.code)) { this.finish(ev.code, ev.reason); return }
      const m = /retry-after-ms=(\d+)/.exec(ev.reason)
      if (ev.code === CloseCode.TRY_AGAIN && m !== null) this.hintMs = Math.max(this.hintMs, Number(m[1]))
      this.scheduleReconnect(ev.code, ev.reason)
    }
  }

  private onMessage (raw: unknown): void {
    if (!this.resumable) {
      const data = typeof raw === 'string' ? raw : new Uint8Array(raw as ArrayBuffer)
      this.emit('message', data, { binary: typeof data !== 'string', topic: false })
      return
    }
    const text = typeof raw === 'string'
    const bytes = text ? undefined : new Uint8Array(raw as ArrayBuffer)
    const kind = text ? raw.charCodeAt(0) : bytes![0]
    const body = (): MessageData => text ? raw.slice(1) : bytes!.subarray(1)
    if (kind === Kind.DATA || kind === Kind.TOPIC) {
      if (!this.welcomed) { this.protocolError('data before welcome'); return }
      if (kind === Kind.DATA) {
        this.received++
        this.scheduleAck()
      }
      this.emit('message', body(), { binary: !text, topic: kind === Kind.TOPIC })
    } else if (kind === Kind.ACK && text) {
      const n = Number(raw.slice(1))
      if (!Number.isSafeInteger(n) || n > this.sent) { this.emit('error', new Error(`ferry/client: the server acknowledged ${raw.slice(1, 20)} messages; ${this.sent} were sent`)); return }
      this.dropAcked(n)
    } else if (kind === Kind.CONTROL && text) {
      let c: Control
      try { c = JSON.parse(raw.slice(1)) as Control } catch { this.protocolError('control message is not JSON'); return }
      if (c.t === 'welcome') this.onWelcome(c)
      else if (c.t === 'token') this.setToken(c.token)
      else if (c.t === 'migrate') this.hintMs = Math.max(this.hintMs, typeof c.afterMs === 'number' ? c.afterMs : 0)
    } else {
      this.protocolError(`unknown message kind ${String(kind)}`)
    }
  }

  private onWelcome (w: Welcome): void {
    const offered = this.token !== undefined
    this.session = w.session
    this.protocol = w.protocol
    this.setToken(w.token)
    this.welcomed = true
    this.attempt = 0
    if (w.resumed && w.received <= this.sent && w.received >= this.acked) {
      // The backend has the first `received` of our messages: resend the rest, in order.
      this.dropAcked(w.received)
      for (const m of this.unacked) this.write(m)
      this.opened(true, w.session)
      return
    }
    // A fresh session. Messages queued before the very first welcome belong to it; after a failed
    // resume the old session's unacknowledged ones are handed back to the application.
    const unsent = this.unacked
    this.unacked = []
    this.unackedBytes = 0
    this.sent = this.acked = 0
    this.received = this.ackedIn = 0
    if (offered) {
      this.opened(false, w.session)
      this.emit('reset', { reason: w.reason ?? (w.resumed ? 'inconsistent' : 'unknown'), unsent })
    } else {
      this.opened(false, w.session)
      for (const m of unsent) this.send(m)
    }
  }

  private opened (resumed: boolean, session: string): void {
    this.state = 'open'
    this.emit('open', { resumed, session })
  }

  private setToken (token: string): void {
    if (token === this.token) return
    this.token = token
    this.emit('token', token)
  }

  private write (m: MessageData): void {
    const ws = this.ws
    if (ws === undefined) return
    if (typeof m === 'string') { ws.send('m' + m); return }
    const out = new Uint8Array(m.byteLength + 1)
    out[0] = Kind.DATA
    out.set(m, 1)
    ws.send(out)
  }

  private dropAcked (n: number): void {
    if (n <= this.acked) return
    const gone = this.unacked.splice(0, n - this.acked)
    for (const m of gone) this.unackedBytes -= typeof m === 'string' ? m.length : m.byteLength
    this.acked = n
  }

  private scheduleAck (): void {
    if (this.received - this.ackedIn >= this.o.ackEvery) { this.flushAck(); return }
    if (this.ackTimer === undefined) this.ackTimer = setTimeout(() => { this.ackTimer = undefined; this.flushAck() }, this.o.ackIntervalMs)
  }

  private flushAck (): void {
    if (this.ackTimer !== undefined) { clearTimeout(this.ackTimer); this.ackTimer = undefined }
    if (!this.resumable || this.ws === undefined || this.received === this.ackedIn || this.ws.readyState !== 1) return
    this.ackedIn = this.received
    this.ws.send(`a${this.received}`)
  }

  private protocolError (what: string): void {
    this.emit('error', new Error(`ferry/client: ${what}`))
    this.ws?.close(1002, what.slice(0, 100))
  }

  private scheduleReconnect (code: number, reason: string): void {
    if (this.ackTimer !== undefined) { clearTimeout(this.ackTimer); this.ackTimer = undefined }
    if (this.attempt >= this.o.maxAttempts) { this.finish(code, `gave up after ${this.attempt} attempts: ${reason}`); return }
    this.state = 'reconnecting'
    const ceiling = Math.min(this.o.maxDelayMs, this.o.minDelayMs * 2 ** this.attempt)
    const delayMs = Math.round(this.hintMs + Math.random() * (this.hintMs > 0 ? this.o.minDelayMs : ceiling))
    this.hintMs = 0
    this.attempt++
    this.emit('reconnecting', { attempt: this.attempt, delayMs, code, reason })
    this.retryTimer = setTimeout(() => { this.retryTimer = undefined; if (this.state === 'reconnecting') this.connect() }, delayMs)
  }

  private finish (code: number, reason: string): void {
    this.state = 'closed'
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer)
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer)
    this.ackTimer = this.retryTimer = undefined
    const ws = this.ws
    this.ws = undefined
    if (ws !== undefined) { ws.onmessage = null; ws.onclose = null }
    this.emit('close', { code, reason })
  }

  private emit (event: string, ...args: unknown[]): void {
    const set = this.listeners.get(event)
    if (set === undefined || set.size === 0) {
      if (event === 'error') console.error(args[0])
      return
    }
    for (const fn of [...set]) {
      try {
        fn(...args)
      } catch (err) {
        if (event === 'error') console.error(err)
        else this.emit('error', err instanceof Error ? err : new Error(String(err)))
      }
    }
  }
}
