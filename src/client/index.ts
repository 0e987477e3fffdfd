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
 * the other did not get. Elsewhere it is a plain reconnecting WebSocket (no envelopes, no replay).
 */
import { CloseCode, Kind, resumeOffer, SUBPROTOCOL, type Control, type Welcome } from './wire.js'

export { CloseCode, SUBPROTOCOL } from './wire.js'

/** The part of the WHATWG WebSocket this library uses (browsers' WebSocket and `ws` both fit). */
export interface WebSocketLike {
  readonly readyState: number
  readonly protocol: string
  readonly bufferedAmount: number
  binaryType: string
  send: (data: string | ArrayBufferView | ArrayBuffer) => void
  close: (code?: number, reason?: string) => void
  onopen: ((ev: unknown) => void) | null
  /** `data` is a string for text, an ArrayBuffer for binary (binaryType is set to 'arraybuffer'). */
  onmessage: ((ev: { data: unknown }) => void) | null
  onclose: ((ev: { code: number, reason: string }) => void) | null
  onerror: ((ev: unknown) => void) | null
}

export type WebSocketCtor = new (url: string, protocols?: string[]) => WebSocketLike

export interface FerryClientOptions {
  /** WebSocket implementation. Default: `globalThis.WebSocket`. */
  WebSocket?: WebSocketCtor
  /** Application subprotocols to offer (the selected one is `client.protocol`). */
  protocols?: string[]
  /** A token from an earlier page load (see the `token` event) to resume that session. */
  token?: string
  /** Backoff between reconnects: full jitter over min(maxDelayMs, minDelayMs × 2^attempt); defaults 200 ms, 30 s, Infinity. */
  reconnect?: { minDelayMs?: number, maxDelayMs?: number, maxAttempts?: number }
  /** Acknowledge after this many data messages (default 32) … */
  ackEvery?: number
  /** … or this long after the first unacknowledged one (default 100 ms). */
  ackIntervalMs?: number
  /** A gateway that answered `ferry.v1` sends its welcome first; without it within this long (default 10 s) the connection is dropped and retried. */
  welcomeTimeoutMs?: number
  /** Most unacknowledged outgoing messages (default 10,000); `send` beyond it throws a RangeError. */
  maxBufferedMessages?: number
  /** Most bytes (UTF-8 for text) of unacknowledged outgoing messages (default 16 MiB); `send` beyond it throws a RangeError. */
  maxBufferedBytes?: number
}

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed'
export type MessageData = string | Uint8Array
export interface MessageInfo { readonly binary: boolean, readonly topic: boolean }

export interface ClientEvents {
  /** After each welcome (ferry mode) or WebSocket open (plain mode). */
  open: { resumed: boolean, session: string }
  reconnecting: { attempt: number, delayMs: number, code: number, reason: string }
  /** A resume was refused and a fresh session began: `unsent` never reached the old session's backend. */
  reset: { reason: string, unsent: MessageData[] }
  /** The token changed: persist it to resume after a page reload. */
  token: string
  /** Terminal: the client will not reconnect. */
  close: { code: number, reason: string }
  error: Error
}
export type ClientEvent = keyof ClientEvents | 'message'
export type Listener<K extends ClientEvent> = K extends keyof ClientEvents
  ? (arg: ClientEvents[K]) => void
  : (data: MessageData, info: MessageInfo) => void

type AnyListener = ((...args: any[]) => void) & { once?: (...args: any[]) => void }

// One frozen info object per kind of message: nothing allocated per message for it.
const TEXT: MessageInfo = Object.freeze({ binary: false, topic: false })
const BINARY: MessageInfo = Object.freeze({ binary: true, topic: false })
const TEXT_TOPIC: MessageInfo = Object.freeze({ binary: false, topic: true })
const BINARY_TOPIC: MessageInfo = Object.freeze({ binary: true, topic: true })
const OPEN = 1

/** Close codes after which reconnecting is pointless: the session ended or the client is refused. */
function terminal (code: number): boolean {
  if (code === 1000 || code === CloseCode.TAKEN_OVER) return true
  if (code === 1002 || code === 1003 || code === 1007 || code === 1008 || code === 1009 || code === 1010) return true
  return code >= 4000 && code <= 4999
}

/** UTF-8 length of a string without encoding it (a lone surrogate becomes U+FFFD: 3 bytes). */
function utf8Length (s: string): number {
  let n = s.length
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) continue
    if (c < 0x800) { n += 1; continue }
    if (c >= 0xd800 && c < 0xdc00 && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) i++ // a pair: 2 units, 4 bytes
    n += 2
  }
  return n
}

/** The application message inside a stored data frame. */
function payload (frame: MessageData): MessageData {
  return typeof frame === 'string' ? frame.slice(1) : frame.subarray(1)
}

/**
 * One logical session over successive WebSockets.
 *
 *   connecting ──welcome──▶ open ──connection lost──▶ reconnecting ──welcome──▶ open
 *        └────────────┬─────────┴── close() / terminal close code ──────────────▶ closed
 *
 * Invariants (ferry mode): `frames` holds data messages acked+1 … sent, oldest first, already framed
 * ('m' + text, or 0x6d + bytes) so a resend allocates nothing; `received - ackedIn` messages are unacknowledged.
 */
export class FerryClient {
  state: ClientState = 'connecting'
  /** The session id (from the gateway's welcome; '' in plain mode). */
  session: string | undefined
  token: string | undefined
  /** The gateway answered `ferry.v1`: messages are numbered, acknowledged and replayed. */
  resumable = false
  /** The application subprotocol selected. */
  protocol = ''
  private ws: WebSocketLike | undefined
  private readonly Ctor: WebSocketCtor
  private readonly listeners = new Map<ClientEvent, Set<AnyListener>>()
  private sent = 0
  private acked = 0
  private readonly frames: MessageData[] = []
  private readonly sizes: number[] = []
  private bytes = 0
  private received = 0
  private ackedIn = 0
  private welcomed = false
  private ackTimer: ReturnType<typeof setTimeout> | undefined
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private welcomeTimer: ReturnType<typeof setTimeout> | undefined
  private attempt = 0
  /** A delay the server asked for (migrate afterMs, 1013 retry-after-ms); 0 when none. */
  private hintMs = 0
  private readonly o: { protocols: string[], ackEvery: number, ackIntervalMs: number, welcomeTimeoutMs: number, maxBufferedMessages: number, maxBufferedBytes: number, minDelayMs: number, maxDelayMs: number, maxAttempts: number }

  /** Connects at once. Throws when there is no WebSocket implementation, or when it refuses the URL. */
  constructor (readonly url: string, opts: FerryClientOptions = {}) {
    const Ctor = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket
    if (Ctor === undefined) throw new Error('ferry/client: no WebSocket implementation; on Node < 22 pass { WebSocket } from the ws package: new FerryClient(url, { WebSocket })')
    this.Ctor = Ctor
    this.token = opts.token
    this.o = {
      protocols: opts.protocols ?? [],
      ackEvery: opts.ackEvery ?? 32,
      ackIntervalMs: opts.ackIntervalMs ?? 100,
      welcomeTimeoutMs: opts.welcomeTimeoutMs ?? 10_000,
      maxBufferedMessages: opts.maxBufferedMessages ?? 10_000,
      maxBufferedBytes: opts.maxBufferedBytes ?? 16 * 1024 * 1024,
      minDelayMs: opts.reconnect?.minDelayMs ?? 200,
      maxDelayMs: opts.reconnect?.maxDelayMs ?? 30_000,
      maxAttempts: opts.reconnect?.maxAttempts ?? Infinity,
    }
    // A bad URL or subprotocol is the caller's mistake, not a network failure: throw it, like `new WebSocket`.
    this.connect(true)
  }

  on<K extends ClientEvent> (event: K, fn: Listener<K>): this {
    let set = this.listeners.get(event)
    if (set === undefined) { set = new Set(); this.listeners.set(event, set) }
    set.add(fn as AnyListener)
    return this
  }

  once<K extends ClientEvent> (event: K, fn: Listener<K>): this {
    const wrapper: AnyListener = (...args) => { this.off(event, fn); (fn as AnyListener)(...args) }
    wrapper.once = fn as AnyListener
    return this.on(event, wrapper as Listener<K>)
  }

  off<K extends ClientEvent> (event: K, fn: Listener<K>): this {
    const set = this.listeners.get(event)
    if (set === undefined) return this
    for (const l of set) if (l === fn || l.once === fn) set.delete(l)
    return this
  }

  /** Bytes (UTF-8 for text) of outgoing messages not yet acknowledged by the backend, or queued while reconnecting. */
  get bufferedAmount (): number {
    return this.bytes
  }

  /**
   * Sends one message (string → text, bytes → binary, copied). While (re)connecting it is queued; in a
   * resumable session it is kept until the backend acknowledged it. Throws a RangeError past the buffer
   * bounds (nothing is queued then), an Error after the client closed.
   */
  send (data: string | ArrayBuffer | ArrayBufferView): void {
    if (this.state === 'closed') throw new Error('ferry/client: send() after close')
    const ws = this.ws
    if (this.state === 'open' && !this.resumable && ws !== undefined) { ws.send(data); return }
    const text = typeof data === 'string'
    const size = text ? utf8Length(data) : data.byteLength
    if (this.frames.length >= this.o.maxBufferedMessages || this.bytes + size > this.o.maxBufferedBytes) {
      throw new RangeError(`ferry/client: ${this.frames.length} messages / ${this.bytes} bytes unacknowledged; the bounds are ${this.o.maxBufferedMessages} / ${this.o.maxBufferedBytes}`)
    }
    let frame: MessageData
    if (text) {
      frame = 'm' + data
    } else {
      frame = new Uint8Array(size + 1)
      frame[0] = Kind.DATA
      frame.set(data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, size), 1)
    }
    this.sent++
    this.frames.push(frame)
    this.sizes.push(size)
    this.bytes += size
    if (this.state === 'open' && ws !== undefined) ws.send(frame)
  }

  /** Ends the session for good (the backend application sees `close(code, reason)`); acknowledges first. */
  close (code = 1000, reason = ''): void {
    if (this.state === 'closed') return
    this.flushAck()
    const ws = this.ws
    this.finish(code, reason)
    try { ws?.close(code, reason) } catch { /* an invalid code for this implementation, or already closing */ }
  }

  private connect (first = false): void {
    const protocols = [SUBPROTOCOL]
    if (this.token !== undefined) {
      protocols.push(resumeOffer(this.token, this.received, this.sent))
      this.ackedIn = this.received // the offer tells the gateway what we received
    }
    protocols.push(...this.o.protocols)
    let ws: WebSocketLike
    try {
      ws = new this.Ctor(this.url, protocols)
    } catch (err) {
      if (first) { this.state = 'closed'; throw err }
      this.emit('error', err instanceof Error ? err : new Error(String(err)))
      this.scheduleReconnect(1006, 'connect failed')
      return
    }
    this.ws = ws
    this.welcomed = false
    ws.binaryType = 'arraybuffer'
    ws.onopen = () => { if (ws === this.ws) this.onOpen(ws) }
    ws.onmessage = (ev) => { if (ws === this.ws) this.onMessage(ev.data) }
    // onclose follows with the code; the error says why a handshake failed (e.g. Node's ws refuses a
    // 101 without a subprotocol, which a route that does not resume may send).
    ws.onerror = (ev) => {
      if (ws !== this.ws) return
      const e = ev as { error?: unknown, message?: unknown }
      this.emit('error', e.error instanceof Error ? e.error : new Error(`ferry/client: WebSocket error${typeof e.message === 'string' ? `: ${e.message}` : ''}`))
    }
    ws.onclose = (ev) => {
      if (ws !== this.ws) return
      this.ws = undefined
      if (terminal(ev.code)) { this.finish(ev.code, ev.reason); return }
      const hint = /retry-after-ms=(\d+)/.exec(ev.reason)
      if (ev.code === CloseCode.TRY_AGAIN && hint !== null) this.hintMs = Math.max(this.hintMs, Number(hint[1]))
      this.scheduleReconnect(ev.code, ev.reason)
    }
  }

  private onOpen (ws: WebSocketLike): void {
    this.resumable = ws.protocol === SUBPROTOCOL
    if (this.resumable) {
      // The welcome opens the session; a connection that never gets one (a broken middlebox) is retried.
      this.welcomeTimer = setTimeout(() => {
        this.welcomeTimer = undefined
        if (ws !== this.ws || this.welcomed) return
        this.emit('error', new Error(`ferry/client: no welcome within ${this.o.welcomeTimeoutMs} ms; reconnecting`))
        try { ws.close(1001, 'no welcome') } catch { /* already closing */ }
      }, this.o.welcomeTimeoutMs)
      return
    }
    // A plain session: no numbering; what was queued goes out now (at most once, no replay).
    this.protocol = ws.protocol
    this.session = ''
    this.attempt = 0
    // Queued messages go first, so what a listener sends on 'open' comes after them.
    for (const frame of this.frames) ws.send(payload(frame))
    this.clearBuffer()
    this.opened(false, '')
  }

  private onMessage (raw: unknown): void {
    const text = typeof raw === 'string'
    const bytes = text ? undefined : new Uint8Array(raw as ArrayBuffer)
    if (!this.resumable) { this.emit('message', text ? raw : bytes, text ? TEXT : BINARY); return }
    const kind = text ? raw.charCodeAt(0) : bytes![0]
    if (kind === Kind.DATA || kind === Kind.TOPIC) {
      if (!this.welcomed) { this.protocolError('a data message before the welcome'); return }
      const topic = kind === Kind.TOPIC
      if (!topic) { this.received++; this.scheduleAck() }
      this.emit('message', text ? raw.slice(1) : bytes!.subarray(1), text ? (topic ? TEXT_TOPIC : TEXT) : (topic ? BINARY_TOPIC : BINARY))
    } else if (kind === Kind.ACK && text) {
      const n = Number(raw.slice(1))
      if (!Number.isSafeInteger(n) || n > this.sent) {
        this.emit('error', new Error(`ferry/client: the server acknowledged ${raw.slice(1, 20)} messages; ${this.sent} were sent (ignored)`))
        return
      }
      this.dropAcked(n)
    } else if (kind === Kind.CONTROL && text) {
      let c: Control
      try { c = JSON.parse(raw.slice(1)) as Control } catch { this.protocolError('a control message that is not JSON'); return }
      if (c.t === 'welcome') this.onWelcome(c)
      else if (c.t === 'token' && typeof c.token === 'string') this.setToken(c.token)
      else if (c.t === 'migrate') this.hintMs = Math.max(this.hintMs, typeof c.afterMs === 'number' && c.afterMs > 0 ? c.afterMs : 0)
      // other controls are from a newer gateway: ignored
    } else {
      this.protocolError(`a message of unknown kind ${String(kind)}`)
    }
  }

  private onWelcome (w: Welcome): void {
    if (this.welcomeTimer !== undefined) { clearTimeout(this.welcomeTimer); this.welcomeTimer = undefined }
    const offered = this.token !== undefined
    this.session = w.session
    this.protocol = w.protocol
    this.welcomed = true
    this.attempt = 0
    this.setToken(w.token)
    if (this.state === 'closed') return // a 'token' listener closed the client
    if (w.resumed && w.received < this.acked) {
      this.protocolError(`a resume welcome with received ${w.received}, below the ${this.acked} the server acknowledged`)
      return
    }
    if (w.resumed || !offered) {
      // The backend has the first `received` of our messages: resend the rest, in order, with their numbers.
      // More than we sent: this client started from a stored token (a page reload) and never saw those;
      // number the queued ones after them. A first session (no token) is a resume of nothing.
      if (w.received > this.sent) { this.acked = w.received; this.sent = w.received + this.frames.length } else this.dropAcked(w.received)
      // Before 'open': what a listener sends then must follow these.
      for (const frame of this.frames) this.ws?.send(frame)
      this.opened(w.resumed, w.session)
      return
    }
    // The resume was refused: a fresh session, numbered from 1. Hand the old one's unacknowledged
    // messages back to the application (after 'open', so it can send them again at once).
    const unsent = this.frames.splice(0).map(payload)
    this.clearBuffer()
    this.received = this.ackedIn = 0
    if (this.ackTimer !== undefined) { clearTimeout(this.ackTimer); this.ackTimer = undefined }
    this.opened(false, w.session)
    this.emit('reset', { reason: w.reason ?? 'unknown', unsent })
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

  private clearBuffer (): void {
    this.frames.length = 0
    this.sizes.length = 0
    this.bytes = 0
    this.sent = this.acked = 0
  }

  private dropAcked (n: number): void {
    if (n <= this.acked) return
    this.frames.splice(0, n - this.acked)
    for (const size of this.sizes.splice(0, n - this.acked)) this.bytes -= size
    this.acked = n
  }

  private scheduleAck (): void {
    if (this.received - this.ackedIn >= this.o.ackEvery) { this.flushAck(); return }
    if (this.ackTimer === undefined) this.ackTimer = setTimeout(() => { this.ackTimer = undefined; this.flushAck() }, this.o.ackIntervalMs)
  }

  private flushAck (): void {
    if (this.ackTimer !== undefined) { clearTimeout(this.ackTimer); this.ackTimer = undefined }
    const ws = this.ws
    if (!this.resumable || ws === undefined || ws.readyState !== OPEN || this.received === this.ackedIn) return
    this.ackedIn = this.received
    ws.send(`a${this.received}`)
  }

  private protocolError (what: string): void {
    this.emit('error', new Error(`ferry/client: the server sent ${what}`))
    try { this.ws?.close(1002, 'protocol error') } catch { /* already closing */ }
  }

  private scheduleReconnect (code: number, reason: string): void {
    if (this.ackTimer !== undefined) { clearTimeout(this.ackTimer); this.ackTimer = undefined }
    if (this.attempt >= this.o.maxAttempts) { this.finish(code, `gave up after ${this.attempt} attempts: ${reason}`); return }
    this.state = 'reconnecting'
    const ceiling = Math.min(this.o.maxDelayMs, this.o.minDelayMs * 2 ** this.attempt)
    // A server hint replaces the backoff (with a little jitter, so a drained pod's clients spread out).
    const delayMs = Math.round(this.hintMs > 0 ? this.hintMs + Math.random() * this.o.minDelayMs : Math.random() * ceiling)
    this.hintMs = 0
    this.attempt++
    this.emit('reconnecting', { attempt: this.attempt, delayMs, code, reason })
    if (this.state !== 'reconnecting') return // a listener called close()
    this.retryTimer = setTimeout(() => { this.retryTimer = undefined; if (this.state === 'reconnecting') this.connect() }, delayMs)
  }

  private finish (code: number, reason: string): void {
    this.state = 'closed'
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer)
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer)
    if (this.welcomeTimer !== undefined) clearTimeout(this.welcomeTimer)
    this.ackTimer = this.retryTimer = this.welcomeTimer = undefined
    const ws = this.ws
    this.ws = undefined
    if (ws !== undefined) { ws.onopen = null; ws.onmessage = null; ws.onclose = null }
    this.emit('close', { code, reason })
  }

  /**
   * Calls the listeners; one that throws is reported on 'error' (or console.error) and never breaks the
   * client. An 'error' nobody listens for is one console line, no stack: while a server is down every
   * reconnect attempt fails, and a stack trace each time buried the application's own output.
   */
  private emit (event: ClientEvent, ...args: unknown[]): void {
    const set = this.listeners.get(event)
    if (set === undefined || set.size === 0) {
      if (event === 'error') console.error(`ferry/client: ${(args[0] as Error).message.replace(/^ferry\/client: /, '')} (no 'error' listener)`)
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
