import { EventEmitter } from 'node:events'
import { encodeTopicFrame, FrameType } from '../mux/codec.js'
import type { MuxConnection } from '../mux/connection.js'
import type { MuxStream, StreamEndCause, StreamEvents } from '../mux/stream.js'
import { ReplayBuffer } from './replay.js'

/** What the gateway tells the backend about a session (OPEN metadata). */
export interface SessionInfo {
  /** The session's affinity key (the route's `affinity.key` value, or the placement key of a resumable session), or the session id. */
  key: string
  /** The session's id: per client connection, or (resumable sessions) stable across resumes. */
  session: string
  path: string
  query: string
  headers: Record<string, string>
  remoteAddress: string
  /** The subprotocol selected for the client ('' for none). */
  protocol: string
  /** The gateway route name. */
  route: string
  /** Set when the session arrives through a handoff (see `Session.handoff`). */
  handoff?: HandoffInfo
}

/**
 * How a session arrived from another backend process. `state` is what the old process's `handoff` hook
 * returned (undefined without a hook, or with `stateError` saying why it was dropped); `from` is the old
 * endpoint's address as the gateway knows it. `lost: true`: the old process died (or never answered the
 * handoff); messages it had received but not processed are gone, and there is no state.
 */
export type HandoffInfo =
  | { readonly lost?: false, readonly state: unknown, readonly from: string, readonly stateError?: string }
  | { readonly lost: true, readonly from: string }

export type SendData = string | Buffer | Uint8Array | ArrayBuffer

/**
 * @internal What a resumable session takes to its next process in a handoff (HANDOFF `resume`, then OPEN
 * `handoff.resume`): its id and fencing epoch, the counts in both directions, and the messages the client
 * has not acknowledged (base64, binary flag), those after `acked` up to `sent`.
 */
export interface ResumeCarry {
  session: string
  epoch: number
  received: number
  sent: number
  acked: number
  unacked: Array<[string, 0 | 1]>
}

/** @internal A link and the gateway instance it belongs to. */
export interface Link {
  id: number
  conn: MuxConnection
  instance: string
  gateway: string
  remoteAddress: string
  remotePort: number
  /** Topic → sessions on this link subscribed to it: `publish` sends a PUBLISH on the links that have any. */
  topics: Map<string, number>
}

export function checkTopic (topic: string): void {
  const n = Buffer.byteLength(topic)
  if (n < 1 || n > 1024) throw new RangeError(`topic must be 1-1024 bytes of UTF-8 (got ${n})`)
}

function topicRef (link: Link, topic: string, delta: 1 | -1): void {
  const n = (link.topics.get(topic) ?? 0) + delta
  if (n > 0) link.topics.set(topic, n)
  else link.topics.delete(topic)
}

/** @internal What a Session needs from its server. */
export interface SessionHost {
  /** Backend handoff: the state the application's `handoff` hook gives for `s` (bounded in time and size). */
  handoffState: (s: Session) => Promise<{ state?: unknown, stateError?: string }>
  handedOff: (s: Session) => void
  /** Backend handoff of a resumable session: how long to wait for the client to acknowledge what it got. */
  readonly handoffAckWaitMs: number
  readonly resumeWindowMs: number
  readonly maxReplayBytes: number
  sessionEnded: (s: Session) => void
  appError: (err: unknown, s: Session) => void
  ackDue: (s: Session) => void
  parked: (s: Session, parked: boolean) => void
  expired: () => void
}

const enum ReadyState { CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3 }

interface SessionEvents {
  message: [data: Buffer, isBinary: boolean]
  close: [code: number, reason: string]
  drain: []
  error: [err: Error]
  /** Resumable sessions: the client's connection went away; the session waits up to the resume window (no `close`). */
  detach: [reason: string]
  /** Resumable sessions: the client came back (through any gateway); `replayed` messages were sent again. */
  resume: [info: { gateway: string, replayed: number }]
}

/** Client messages received between ACKs at most (an ACK also goes out 100 ms after the first unacknowledged one). */
export const ACK_EVERY = 32

/**
 * One client session, as the application sees it. A resumable session (the client uses `ferry/client`)
 * outlives its stream: when the client's connection or the gateway goes away it is *parked* — still
 * OPEN, `send` keeps working into the replay buffer — until the client resumes (any gateway, any link)
 * or `resumeWindowMs` passes.
 *
 *   attached ──stream lost / DETACH──▶ parked ──resume (OPEN with the token's epoch)──▶ attached
 *      │                                 └──window passed / buffer over its bound──▶ closed
 *      └──close (either side) / RESET────────────────────────────────────────────────▶ closed
 */
export class Session extends EventEmitter<SessionEvents> {
  static readonly CONNECTING = 0
  static readonly OPEN = 1
  static readonly CLOSING = 2
  static readonly CLOSED = 3
  readyState: number = ReadyState.OPEN
  /** The affinity key (from the route's `affinity.key`), else the same as `id`. */
  readonly key: string
  /** Ferry's id for this session (stable across resumes for resumable sessions). */
  readonly id: string
  readonly path: string
  readonly query: URLSearchParams
  readonly headers: Readonly<Record<string, string>>
  readonly remoteAddress: string
  readonly protocol: string
  readonly route: string
  /** The client uses `ferry/client`: the session survives reconnects (see `detach` / `resume`). */
  readonly resumable: boolean
  /** The session arrived from another backend process (a drain or a crash there): what came with it. */
  readonly handoff: HandoffInfo | undefined
  /**
   * The session left this process for another one (`server.drain()`): its client is still connected, so
   * a `close` that follows is not the user leaving (skip "user left" presence messages and the like).
   */
  handedOff = false
  /** Backend handoff: none, MOVE sent (waiting for the gateway's FREEZE), or FREEZE received. */
  private moving: 'no' | 'asked' | 'frozen' = 'no'
  private readonly subscribed = new Set<string>()
  private stream: MuxStream | undefined
  private link: Link
  /** The link this session's topics are counted on: its stream's link while attached, none otherwise. */
  private countedOn: Link | undefined
  // Resume state (resumable sessions only).
  /** Fencing: bumped by every resume; a resume must present it (or the one before, if the last resume was never confirmed). */
  epoch = 0
  /** The client proved it got the last ACCEPT (it sent a message or an ACK on the new stream). */
  private confirmed = true
  private readonly replay = new ReplayBuffer()
  /** Client data messages delivered to the application; the last count ACKed to the gateway. */
  received = 0
  private ackedOut = 0
  private parkTimer: NodeJS.Timeout | undefined
  private isParked = false

  /** @internal */
  constructor (stream: MuxStream, info: SessionInfo, link: Link, private readonly host: SessionHost, resumable: boolean) {
    super()
    this.key = info.key
    this.id = info.session
    this.path = info.path
    this.query = new URLSearchParams(info.query)
    this.headers = info.headers
    this.remoteAddress = info.remoteAddress
    this.protocol = info.protocol
    this.route = info.route
    this.resumable = resumable
    this.handoff = info.handoff
    this.stream = stream
    this.link = link
    this.countedOn = link
  }

  /** The gateway instance the session's client is connected through (the last one, while parked). */
  get gateway (): string {
    return this.link.gateway
  }

  /** The id of the link the session's stream is on (see `server.links()`). */
  get linkId (): number {
    return this.link.id
  }

  /** @internal The gateway's maxFrameBytes on this session's link (a HANDOFF must fit one frame). */
  get linkMaxFrame (): number {
    return this.link.conn.peer?.maxFrameBytes ?? 0
  }

  /** Parked: the client is away and may resume. */
  get parked (): boolean {
    return this.isParked
  }

  /** Bytes queued: for credit (the client is slow), plus, for resumable sessions, sent but not yet acknowledged by the client. */
  get bufferedAmount (): number {
    return this.resumable ? this.replay.bytes : this.stream?.queued ?? 0
  }

  get topics (): ReadonlySet<string> {
    return this.subscribed
  }

  /**
   * Sends one message: strings go as text unless `binary`, bytes as binary unless `binary: false`.
   * Returns false when it had to be queued for credit; wait for `drain` before sending much more.
   * A parked session keeps the message for the client's resume (true), up to the server's
   * `resume.maxBufferedBytes`, past which the session closes.
   */
  send (data: SendData, opts: { binary?: boolean } = {}): boolean {
    if (this.readyState !== ReadyState.OPEN) return false
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data instanceof ArrayBuffer ? new Uint8Array(data) : data
    const binary = opts.binary ?? typeof data !== 'string'
    if (!this.resumable) return this.stream!.send(bytes, binary)
    // The replay buffer owns its copy: the caller may reuse its buffer.
    const own = typeof data === 'string' ? bytes as Buffer : Buffer.from(bytes)
    this.replay.push(own, binary)
    if (this.replay.bytes > this.host.maxReplayBytes) {
      if (this.parked) this.host.expired()
      this.close(this.parked ? 1001 : 1008, this.parked ? 'resume buffer full' : 'client does not acknowledge')
      return false
    }
    return this.stream === undefined ? true : this.stream.send(own, binary)
  }

  /**
   * @internal Backend handoff: asks the gateway to move this session to another backend (MOVE). False
   * when it cannot be moved: parked (no client connected), already moving, or the link's gateway does not
   * speak handoff (for a resumable session: handoff that carries resume state).
   */
  requestMove (reason: string): boolean {
    if (this.readyState !== ReadyState.OPEN || this.stream === undefined || this.moving !== 'no' || !this.link.conn.handoff) return false
    if (this.resumable && !this.link.conn.handoffResume) return false
    this.moving = 'asked'
    this.stream.requestMove(reason)
    return true
  }

  /** Is asked to move or moving (a drain counts these as on their way out). */
  get leaving (): boolean {
    return this.moving !== 'no'
  }

  /**
   * FREEZE: the gateway sends no more client messages on this stream. Every message that came before
   * was handed to the application (synchronously, in order). Now: the state from the hook, then every
   * message this session still queues for credit, then HANDOFF. The session then ends here (`close`
   * 1012 with `handedOff` true) while its client stays connected through the gateway.
   *
   * A resumable session also takes its resume state: ACK of what it received, then (bounded by
   * handoff.ackWaitMs) the client's acknowledgements of what it got, which still come on this stream, so
   * that what travels is usually nothing but counts; then its id, epoch, counts and the messages still
   * unacknowledged (the newest that fit the frame; a resume that would need older ones is refused).
   */
  private onFreeze (): void {
    const stream = this.stream
    if (stream === undefined || this.readyState !== ReadyState.OPEN || this.moving === 'frozen') return
    this.moving = 'frozen'
    const live = (): boolean => this.stream === stream && this.readyState === ReadyState.OPEN
    const flushed = async (): Promise<void> => {
      while (live() && stream.queued > 0) await new Promise<void>((resolve) => { this.afterDrain = resolve })
    }
    void this.host.handoffState(this).then(async (st) => {
      await flushed()
      if (!live()) return
      let payload: object = st
      if (this.resumable) {
        this.flushAck()
        if (this.replay.length > 0) await this.acksIn(this.host.handoffAckWaitMs)
        await flushed() // what the application sent meanwhile
        if (!live()) return
        // The frame holds the state, the counts and as many unacknowledged messages as fit.
        const budget = this.linkMaxFrame - 64 - Buffer.byteLength(JSON.stringify(st)) - 256 - Buffer.byteLength(this.id)
        const c = this.replay.carry(Math.max(0, budget))
        const resume: ResumeCarry = { session: this.id, epoch: this.epoch, received: this.received, sent: this.replay.sent, acked: c.acked, unacked: c.unacked }
        payload = { ...st, resume }
      }
      stream.handOff(Buffer.from(JSON.stringify(payload), 'utf8'))
      this.handedOff = true
      this.host.handedOff(this)
      this.stream = undefined
      this.ended(1012, 'handed off to another backend')
    })
  }

  private afterDrain: (() => void) | undefined
  private ackWaiter: (() => void) | undefined

  /** Resolves once the client acknowledged everything sent, or after `ms`. */
  private async acksIn (ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const done = (): void => { clearTimeout(timer); this.ackWaiter = undefined; resolve() }
      const timer = setTimeout(done, ms)
      this.ackWaiter = done
    })
  }

  /** Closes the session; the client gets this code and reason (≤ 123 bytes). `close` is emitted. */
  close (code = 1000, reason = ''): void {
    if (this.readyState !== ReadyState.OPEN) return
    this.readyState = ReadyState.CLOSING
    // What the application processed is acknowledged before the close (acks otherwise wait up to 100 ms):
    // the client's `reset.unsent` must hold only messages that never reached it, or resending duplicates.
    if (this.resumable) this.flushAck()
    this.stream?.close(code, reason)
    this.ended(code, reason)
  }

  /**
   * The client joins `topic` (1–1024 bytes of UTF-8): every `server.publish(topic, …)` from now on
   * reaches it, in order with the messages this session sends. A parked session joins on resume.
   */
  subscribe (topic: string): void {
    checkTopic(topic)
    if (this.readyState !== ReadyState.OPEN || this.subscribed.has(topic)) return
    this.subscribed.add(topic)
    if (this.countedOn !== undefined) topicRef(this.countedOn, topic, 1)
    if (this.stream !== undefined) this.link.conn.write(encodeTopicFrame(FrameType.SUBSCRIBE, this.stream.id, topic))
  }

  unsubscribe (topic: string): void {
    checkTopic(topic)
    if (!this.subscribed.delete(topic)) return
    if (this.countedOn !== undefined) topicRef(this.countedOn, topic, -1)
    if (this.stream !== undefined) this.link.conn.write(encodeTopicFrame(FrameType.UNSUBSCRIBE, this.stream.id, topic))
  }

  /** Moves the count of this session's topics to `link` (undefined: the session has no stream now). */
  private countTopicsOn (link: Link | undefined): void {
    const old = this.countedOn
    if (old === link) return
    for (const t of this.subscribed) {
      if (old !== undefined) topicRef(old, t, -1)
      if (link !== undefined) topicRef(link, t, 1)
    }
    this.countedOn = link
  }

  /** @internal The stream's events, bridged to the EventEmitter API; application errors are contained. */
  events (): StreamEvents {
    const stream = this.stream
    return {
      message: (data, binary) => {
        if (this.resumable) { this.received++; this.confirmed = true; this.host.ackDue(this) }
        this.safeEmit('message', data, binary)
      },
      end: (code, reason, cause) => { this.streamEnded(stream, code, reason, cause) },
      drain: () => {
        const next = this.afterDrain
        if (next !== undefined && (this.stream?.queued ?? 0) === 0) { this.afterDrain = undefined; next() }
        this.safeEmit('drain')
      },
      freeze: () => { this.onFreeze() },
      ...(this.resumable ? { ack: (n: number) => { this.clientAck(n) } } : {}),
    }
  }

  private streamEnded (stream: MuxStream | undefined, code: number, reason: string, cause: StreamEndCause): void {
    if (stream !== this.stream) return // an old stream of a session that resumed elsewhere
    if (this.resumable && (cause === 'link' || cause === 'detach') && this.readyState === ReadyState.OPEN) {
      this.park(reason)
      return
    }
    this.stream = undefined
    // The link died (or the client's connection did): to the application that is an abnormal close.
    this.ended(cause === 'link' || cause === 'detach' ? 1006 : code, reason)
  }

  private clientAck (n: number): void {
    this.confirmed = true
    // The gateway checks acks against what it delivered; one beyond what was sent is a broken client.
    if (!this.replay.ack(n) && n > this.replay.sent) { this.close(1008, 'acknowledged messages that were never sent'); return }
    if (this.ackWaiter !== undefined && this.replay.length === 0) this.ackWaiter()
  }

  private park (reason: string): void {
    this.stream = undefined
    this.countTopicsOn(undefined)
    this.isParked = true
    this.host.parked(this, true)
    this.parkTimer = setTimeout(() => {
      this.parkTimer = undefined
      this.host.expired()
      this.ended(1006, `client did not resume within ${this.host.resumeWindowMs} ms`)
    }, this.host.resumeWindowMs)
    this.parkTimer.unref()
    this.safeEmit('detach', reason)
  }

  /**
   * @internal Can a resume presenting `epoch`, whose client received `received` of our messages, take
   * this session? Returns why not, or undefined.
   */
  resumeRefusal (epoch: number, received: number): string | undefined {
    if (this.readyState !== ReadyState.OPEN) return 'unknown'
    // The current epoch; or the one before when the last resume's client never confirmed it got the
    // ACCEPT (its connection died on the way): then the older token is still the client's latest.
    const fresh = epoch === this.epoch || (epoch === this.epoch - 1 && !this.confirmed && this.parked)
    if (!fresh) return 'stale'
    if (received < this.replay.acked || received > this.replay.sent) return 'bad_ack'
    return undefined
  }

  /** @internal Moves the session to a new stream: ACCEPT, topics, then the messages the client missed. */
  attach (stream: MuxStream, link: Link, received: number): { events: StreamEvents, replayed: number } {
    const old = this.stream
    if (this.parkTimer !== undefined) { clearTimeout(this.parkTimer); this.parkTimer = undefined }
    if (this.isParked) { this.isParked = false; this.host.parked(this, false) }
    this.stream = stream
    this.link = link
    this.moving = 'no' // a handoff that was under way when the client went away is over
    // A client that reconnected before its old gateway noticed: that connection must not come back.
    old?.close(4001, 'session resumed elsewhere')
    this.epoch++
    this.confirmed = false
    this.replay.ack(received)
    const events = this.events()
    stream.events = events
    const replayed = this.replay.sent - received
    stream.sendAccept({ resumed: true, session: this.id, epoch: this.epoch, received: this.received, replayed })
    this.ackedOut = this.received
    this.countTopicsOn(link)
    for (const t of this.subscribed) link.conn.write(encodeTopicFrame(FrameType.SUBSCRIBE, stream.id, t))
    for (const m of this.replay.after(received)) stream.send(m.data, m.binary)
    this.safeEmit('resume', { gateway: link.gateway, replayed })
    return { events, replayed }
  }

  /** @internal Backend handoff: this session continues one another process handed over (its resume state). */
  adopt (c: ResumeCarry): void {
    this.epoch = c.epoch
    this.received = c.received
    this.ackedOut = c.received
    this.replay.restore(c.sent, c.acked, c.unacked.map(([b, bin]) => ({ data: Buffer.from(b, 'base64'), binary: bin === 1 })))
  }

  /** @internal Sends an ACK of the client messages received, if any are unacknowledged. */
  flushAck (): void {
    if (this.stream === undefined || this.received === this.ackedOut) return
    this.ackedOut = this.received
    this.stream.sendAck(this.received)
  }

  /** @internal */
  get unackedIn (): number {
    return this.received - this.ackedOut
  }

  private ended (code: number, reason: string): void {
    if (this.readyState === ReadyState.CLOSED) return
    this.readyState = ReadyState.CLOSED
    if (this.parkTimer !== undefined) { clearTimeout(this.parkTimer); this.parkTimer = undefined }
    if (this.isParked) { this.isParked = false; this.host.parked(this, false) }
    this.stream = undefined
    this.countTopicsOn(undefined)
    this.replay.clear()
    this.subscribed.clear()
    this.host.sessionEnded(this)
    // Like ws: 'close' comes after the call that closed returns.
    process.nextTick(() => { this.safeEmit('close', code, reason) })
  }

  /** @internal */
  safeEmit<K extends keyof SessionEvents> (event: K, ...args: SessionEvents[K]): void {
    try {
      (this.emit as (e: K, ...a: SessionEvents[K]) => boolean)(event, ...args)
    } catch (err) {
      this.host.appError(err, this)
    }
  }
}
