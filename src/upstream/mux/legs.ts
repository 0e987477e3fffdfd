import type { Counter } from 'prom-client'
import { Kind } from '../../client/wire.js'
import { sendableCloseCode, type ClientSink, type UpstreamLeg } from '../../contracts/ws.js'
import { ResetCode } from '../../mux/codec.js'
import type { MuxStream, StreamEndCause, StreamEvents } from '../../mux/stream.js'
import type { ResumeClaims, ResumeTokens } from '../../sessions/token.js'

/** The uWS topic of ferry.v1 clients is the plain one plus this: their copy carries the 'p' kind byte. */
export const FERRY_TOPIC_SUFFIX = '\u0002'

/** What a leg needs from its link: the link's topic scope, and a call when its stream ended. */
export interface LegEndpoint {
  readonly topicPrefix: string
  afterStreamEnd: () => void
  /** The link speaks backend handoff (both HELLOs said so). */
  readonly handoff?: boolean
  /** Its handoff carries resumable sessions too (both HELLOs said `handoffResume`). */
  readonly handoffResume?: boolean
}

export interface LegStalls { send: Counter.Internal, receive: Counter.Internal }

/** What the session takes to its next backend (OPEN metadata `handoff`). */
export interface HandoffRequest {
  /** The old process died or never answered: no state, and what it had not processed is gone. */
  readonly lost: boolean
  readonly state?: unknown
  readonly stateError?: string
  /** Topics the session was subscribed to (the new backend subscribes it again). */
  readonly topics: readonly string[]
  readonly why: string
  /** A resumable session's resume state from the old backend (HANDOFF `resume`), passed on untouched. */
  readonly resume?: unknown
}

/** How a leg gets a new stream elsewhere: the upstream that opened it. */
export interface LegMover {
  /** FREEZE sent and no HANDOFF within this: the old backend counts as lost. */
  readonly handoffTimeoutMs: number
  /** Crash failover: a session whose link died is reopened elsewhere (else closed 1012). */
  readonly failover: boolean
  /** Opens the session on another endpoint (paced) and `rebind`s the leg; rejects when it cannot. */
  move: (leg: MuxLeg, req: HandoffRequest) => Promise<void>
  /** A handoff ended: `outcome` for metrics and logs. */
  handoffDone: (leg: MuxLeg, outcome: 'moved' | 'lost_moved' | 'failed' | 'client_gone', ms: number, err?: Error) => void
}

/** What a held client message costs besides its bytes (its entry and Buffer), for the front's bound. */
const HELD_OVERHEAD = 64

/**
 * open: messages flow. freezing: FREEZE sent to the old backend; client messages are held; waiting for its
 * HANDOFF (bounded). moving: no stream; the upstream is opening one elsewhere; client messages are held.
 * closed: finished.
 */
export type LegState = 'open' | 'freezing' | 'moving' | 'closed'

/**
 * The gateway side of one session on a mux stream: bridges the stream's events to the client sink and
 * the client's events to the stream. Holds credit while the client is congested.
 *
 * Backend handoff (docs/backend-handoff.md): the session can change streams, and backends, while its
 * client stays connected. The cut-over needs no sequence numbers because each leg is ordered on its
 * link: FREEZE follows the last client message sent to the old backend, HANDOFF follows the old
 * backend's last message, and the held client messages go to the new stream right behind its OPEN.
 */
export class MuxLeg implements UpstreamLeg {
  stream!: MuxStream
  /** Called once when the leg is finished (either side ended it). */
  onFinished: (() => void) | undefined
  /** Set by the upstream: how to reopen the session elsewhere. Without it the leg never moves. */
  mover: LegMover | undefined
  /** OPEN metadata of the session (the upstream reuses it for the next stream). */
  meta: Record<string, unknown> = {}
  /** The endpoint address the stream is on (the upstream sets it). */
  address = ''
  /** The set of legs of the endpoint the stream is on (the upstream's; left when the leg moves or ends). */
  home: Set<MuxLeg> | undefined
  private finishedOnce = false
  /** The link's topic scope when the stream opened (a link that reconnects gets a new one). */
  private topicPrefix: string
  private slot: LegEndpoint
  private legState: LegState = 'open'
  /** Topics the backend subscribed this session to (carried to the next backend). */
  private readonly topics = new Set<string>()
  /** Client messages held while the session changes backends. */
  private held: Array<{ data: Buffer, binary: boolean }> = []
  private heldBytes = 0
  private clientHold = false
  private handoffTimer: NodeJS.Timeout | undefined
  private handoffStarted = 0
  /** Which stream's events count: a stream left behind by a handoff may still report its end. */
  private generation = 0
  readonly events: StreamEvents

  constructor (readonly protocol: string, protected readonly sink: ClientSink, ep: LegEndpoint, private readonly stalls: LegStalls, private readonly topicSuffix = '') {
    this.slot = ep
    this.topicPrefix = ep.topicPrefix
    this.events = this.eventsFor(0)
  }

  get state (): LegState {
    return this.legState
  }

  private to (next: LegState): void {
    this.legState = next
  }

  /** The events of the stream of `generation`: those of any other stream are ignored. */
  protected eventsFor (generation: number): StreamEvents {
    const live = (): boolean => generation === this.generation
    return {
      message: (data, binary) => { if (live()) this.fromBackend(data, binary) },
      end: (code, reason, cause, errorCode) => { if (live()) this.backendEnded(code, reason, cause, errorCode) },
      drain: () => {},
      stall: (direction) => { this.stalls[direction].inc() },
      subscribe: (topic) => { if (live()) { this.topics.add(topic); this.sink.subscribe(this.topicPrefix + topic + this.topicSuffix) } },
      unsubscribe: (topic) => { if (live()) { this.topics.delete(topic); this.sink.unsubscribe(this.topicPrefix + topic + this.topicSuffix) } },
      move: (reason) => { if (live()) this.startHandoff(`backend asked: ${reason}`) },
      handoff: (payload) => { if (live()) this.handedOff(payload) },
    }
  }

  protected fromBackend (data: Buffer, binary: boolean): void {
    this.lastMove = undefined
    this.sink.deliver(data, binary)
    if (this.sink.congested) this.stream.holdCredit(true)
  }

  protected backendEnded (code: number, reason: string, cause: StreamEndCause, errorCode: string | undefined): void {
    const m = this.mover
    // The backend it just moved to reset the stream before saying anything (it refused the session: it
    // is closing, or at capacity): the same handoff goes to another endpoint, twice at most.
    const again = this.lastMove
    if (m !== undefined && again !== undefined && cause === 'reset' && this.legState === 'open' && this.refusals < 2) {
      this.refusals++
      this.ep.afterStreamEnd()
      this.relocate({ ...again, why: `refused by ${this.address}: ${reason}` })
      return
    }
    // The old backend died (its link), or failed its handoff: the session opens elsewhere, lost.
    if (m !== undefined && this.legState !== 'closed' && this.reopensLost && ((cause === 'link' && m.failover) || (this.legState === 'freezing' && cause !== 'peer'))) {
      this.ep.afterStreamEnd()
      this.relocate({ lost: true, why: cause === 'link' ? `backend link lost: ${reason}` : `handoff failed: ${reason}` })
      return
    }
    this.to('closed')
    this.clearHandoffTimer()
    this.sink.end(cause === 'peer' ? sendableCloseCode(code) : code, reason, errorCode ?? 'upstream')
    this.finished(cause !== 'link')
  }

  /** The current link (for the draining check after a stream ends). */
  protected get ep (): LegEndpoint {
    return this.slot
  }

  /** The session can be reopened elsewhere without its old backend (crash failover, a failed handoff). */
  protected get reopensLost (): boolean {
    return true
  }

  /** The current link can hand this session over. */
  protected get movable (): boolean {
    return this.slot.handoff === true
  }

  /**
   * Starts moving the session to another backend: FREEZE to the old one, which answers with its last
   * messages and HANDOFF. False when it cannot (not open, no mover, the link does not speak handoff).
   */
  startHandoff (why: string): boolean {
    if (this.legState !== 'open' || this.mover === undefined || !this.movable) return false
    this.to('freezing')
    this.handoffStarted = performance.now()
    this.stream.freeze()
    this.handoffTimer = setTimeout(() => {
      this.handoffTimer = undefined
      if (this.legState !== 'freezing') return
      // No HANDOFF in time: the old backend is counted as lost (its end comes through backendEnded).
      this.stream.reset(ResetCode.INTERNAL, `no HANDOFF within ${this.mover!.handoffTimeoutMs} ms`, 'FERRY_ERR_HANDOFF_TIMEOUT')
    }, this.mover.handoffTimeoutMs)
    this.handoffTimer.unref()
    void why
    return true
  }

  private handedOff (payload: Buffer): void {
    this.clearHandoffTimer()
    let state: unknown
    let stateError: string | undefined
    let resume: unknown
    try {
      const j = JSON.parse(payload.toString('utf8')) as { state?: unknown, stateError?: unknown, resume?: unknown }
      state = j.state
      resume = j.resume
      if (typeof j.stateError === 'string') stateError = j.stateError.slice(0, 40)
    } catch {
      stateError = 'not_json'
    }
    this.ep.afterStreamEnd()
    this.relocate({ lost: false, state, stateError, resume, why: 'handoff' })
  }

  /** The handoff that opened the current stream, until its backend says something (a RESET before: refused). */
  protected lastMove: HandoffRequest | undefined
  private refusals = 0

  /** Drops the old link's topic scope and has the mover open the session elsewhere. */
  private relocate (r: { lost: boolean, state?: unknown, stateError?: string, resume?: unknown, topics?: readonly string[], why: string }): void {
    this.clearHandoffTimer()
    if (this.handoffStarted === 0) this.handoffStarted = performance.now()
    this.generation++
    this.to('moving')
    this.home?.delete(this)
    this.home = undefined
    for (const t of this.topics) this.sink.unsubscribe(this.topicPrefix + t + this.topicSuffix)
    // A retry after a refusal takes the topics of the first move (the refusing backend subscribed nothing).
    const topics = r.topics ?? [...this.topics]
    this.topics.clear()
    const mover = this.mover!
    const req: HandoffRequest = { lost: r.lost, state: r.state, stateError: r.stateError, resume: r.resume, topics, why: r.why }
    this.lastMove = req
    mover.move(this, req).then(() => {
      mover.handoffDone(this, r.lost ? 'lost_moved' : 'moved', performance.now() - this.handoffStarted)
      this.handoffStarted = 0
    }, (err: Error) => {
      const gone = this.legState === 'closed'
      mover.handoffDone(this, gone ? 'client_gone' : 'failed', performance.now() - this.handoffStarted, err)
      this.handoffStarted = 0
      if (gone) return
      this.to('closed')
      this.held = []
      this.heldBytes = 0
      const code = (err as { code?: string }).code ?? 'FERRY_ERR_HANDOFF_FAILED'
      this.sink.end(1012, 'backend restarting; reconnect', code)
      this.finished(false)
    })
  }

  /**
   * The mover opened `stream` on `slot`: the held client messages follow the OPEN, then messages flow.
   * Returns the events the new stream must use (call before any frame of it is read).
   */
  nextEvents (): StreamEvents {
    return this.eventsFor(this.generation)
  }

  rebind (stream: MuxStream, slot: LegEndpoint, address: string): void {
    this.stream = stream
    this.slot = slot
    this.topicPrefix = slot.topicPrefix
    this.address = address
    this.to('open')
    if (this.clientHold) stream.holdCredit(true)
    const held = this.held
    this.held = []
    this.heldBytes = 0
    for (const m of held) stream.send(m.data, m.binary)
  }

  send (data: Uint8Array, binary: boolean): void {
    if (this.legState === 'open') { this.stream.send(data, binary); return }
    if (this.legState === 'closed') return
    // Copy: `data` is a uWS view valid only during the call. The front bounds `buffered`; each held
    // message counts HELD_OVERHEAD more, so a flood of empty messages is bounded too.
    const copy = Buffer.from(data)
    this.held.push({ data: copy, binary })
    this.heldBytes += copy.length + HELD_OVERHEAD
  }

  get buffered (): number {
    return (this.legState === 'open' || this.legState === 'freezing' ? this.stream.queued : 0) + this.heldBytes
  }

  clientDrained (): void {
    this.clientHold = false
    if (this.legState === 'open' || this.legState === 'freezing') this.stream.holdCredit(false)
  }

  clientCongested (): void {
    this.clientHold = true
    if (this.legState === 'open' || this.legState === 'freezing') this.stream.holdCredit(true)
  }

  clientClosed (code: number, reason: string): void {
    const wasMoving = this.legState === 'moving'
    this.markClosed()
    // While moving there is no stream: the mover sees `closed` and lets the new one go.
    if (!wasMoving) this.stream.close(code, reason)
    this.finished(!wasMoving)
  }

  /** The client is gone: no handoff continues, nothing held is sent. */
  protected markClosed (): void {
    this.to('closed')
    this.clearHandoffTimer()
    this.held = []
    this.heldBytes = 0
  }

  private clearHandoffTimer (): void {
    if (this.handoffTimer !== undefined) { clearTimeout(this.handoffTimer); this.handoffTimer = undefined }
  }

  /** The stream is over: a draining link may close; the owner's bookkeeping runs once. */
  protected finished (linkAlive: boolean): void {
    if (linkAlive) this.ep.afterStreamEnd()
    this.home?.delete(this)
    this.home = undefined
    if (this.finishedOnce) return
    this.finishedOnce = true
    this.onFinished?.()
  }
}

/** The backend's ACCEPT of a resumable stream. */
export interface Accepted {
  resumed: boolean
  session: string
  epoch: number
  /** Client data messages the backend has received in this session. */
  received: number
  /** Backend messages it sends again (resumes). */
  replayed: number
  reason: string | undefined
}

/** Token claims the leg does not learn from ACCEPT (`a`: the endpoint the stream is on). */
export interface LegIdentity { readonly k: string, readonly u: string, readonly a?: string }

const ACK_RE = /^\d{1,15}$/

/**
 * A ferry.v1 session (the client uses `ferry/client`): the client wire (src/client/wire.ts) on one
 * side, a resumable stream on the other. The gateway keeps no copy of the messages: the backend
 * library replays what the client did not acknowledge and the client what the backend did not, so a
 * session survives this pod's death. The leg checks the client's acknowledgements (never beyond what
 * was delivered), issues tokens, and lets go of the stream with DETACH (the backend parks the session)
 * unless the client closed normally (1000).
 *
 * Backend handoff moves it like any session, where the link's handoff carries resume state: the old
 * backend's HANDOFF holds the session's id, counts and unacknowledged messages, the new one continues the
 * session under the same id and answers ACCEPT `handoff: true`, and the client gets a token naming the
 * new endpoint. The counts go on across the move (the client's connection is the same). A session whose
 * backend died, or whose handoff failed, is closed 1012 as before: its client resumes (and, its backend
 * state gone, is told `reset`).
 */
export class ResumableLeg extends MuxLeg {
  /** Backend data messages delivered to the client before this connection (the client's `received` on resume). */
  private base = 0
  private delivered = 0
  private lastAck = 0
  private refresh: NodeJS.Timeout | undefined
  private claims: Omit<ResumeClaims, 't'> | undefined
  /** The session was reopened by a handoff: the new backend's ACCEPT is due. */
  private handoffAccept = false
  /** The client's last ACK while no stream carried it (the session was moving): sent behind the OPEN. */
  private pendingAck = 0
  private settle: { resolve: (a: Accepted) => void, reject: (e: Error) => void } | undefined
  readonly accepted: Promise<Accepted>
  /** Set by the upstream: a broken client is counted. */
  onClientError: ((code: string) => void) | undefined

  constructor (
    readonly appProtocol: string,
    sink: ClientSink,
    ep: LegEndpoint,
    stalls: LegStalls,
    private readonly tokens: ResumeTokens,
    private readonly identity: LegIdentity,
    /** What the client said it received when it offered to resume (0 for a fresh session). */
    private readonly offeredReceived: number,
    /** Why the gateway itself refused the offered token (the welcome says so). */
    private readonly refusal: string | undefined = undefined,
  ) {
    super('ferry.v1', sink, ep, stalls, FERRY_TOPIC_SUFFIX)
    this.accepted = new Promise((resolve, reject) => { this.settle = { resolve, reject } })
    this.accepted.catch(() => {}) // the upstream awaits it; an unawaited rejection must not crash
  }

  protected override get reopensLost (): boolean {
    return false
  }

  protected override get movable (): boolean {
    return this.ep.handoffResume === true
  }

  /** Every stream of the session (the first, and each after a handoff) carries the resume events. */
  protected override eventsFor (generation: number): StreamEvents {
    const e = super.eventsFor(generation)
    e.ack = (n) => { this.sink.deliver(Buffer.from(`a${n}`, 'latin1'), false) }
    e.accept = (payload) => { this.onAccept(payload) }
    return e
  }

  override rebind (stream: MuxStream, slot: LegEndpoint, address: string): void {
    this.handoffAccept = true
    super.rebind(stream, slot, address)
    if (this.pendingAck > 0) { stream.sendAck(this.pendingAck); this.pendingAck = 0 }
  }

  private onAccept (payload: Buffer): void {
    if (this.handoffAccept) { this.handoffAccepted(payload); return }
    const settle = this.settle
    if (settle === undefined) { this.stream.reset(ResetCode.PROTOCOL, 'second ACCEPT', 'FERRY_ERR_MUX_BAD_FRAME'); return }
    this.settle = undefined
    let a: Accepted
    try {
      const j = JSON.parse(payload.toString('utf8')) as Record<string, unknown>
      const int = (v: unknown): number => { if (!Number.isSafeInteger(v) || (v as number) < 0) throw new Error('bad number'); return v as number }
      if (typeof j.session !== 'string' || j.session === '') throw new Error('no session')
      a = { resumed: j.resumed === true, session: j.session, epoch: int(j.epoch), received: int(j.received), replayed: int(j.replayed ?? 0), reason: typeof j.reason === 'string' ? j.reason : undefined }
    } catch (err) {
      this.stream.reset(ResetCode.PROTOCOL, `malformed ACCEPT: ${(err as Error).message}`, 'FERRY_ERR_MUX_BAD_FRAME')
      settle.reject(new Error('malformed ACCEPT'))
      return
    }
    this.base = a.resumed ? this.offeredReceived : 0
    this.lastAck = this.base
    const claims: Omit<ResumeClaims, 't'> = { s: a.session, ...this.identity, e: a.epoch }
    this.claims = claims
    // The welcome goes first: the replayed messages follow it on the stream.
    this.control({
      t: 'welcome', token: this.tokens.seal(claims), session: a.session, resumed: a.resumed,
      ...(!a.resumed && (a.reason ?? this.refusal) !== undefined ? { reason: a.reason ?? this.refusal } : {}), received: a.received, protocol: this.appProtocol,
    })
    const every = Math.max(1000, Math.floor(this.tokens.ttlMs / 2))
    this.refresh = setInterval(() => { if (this.claims !== undefined) this.control({ t: 'token', token: this.tokens.seal(this.claims) }) }, every)
    this.refresh.unref()
    settle.resolve(a)
  }

  /**
   * The new backend's answer to a handed-over session: it continues the session (same id, `handoff`),
   * and the client gets a token naming the new endpoint. Anything else (a fresh session: the resume
   * state was refused) cannot continue on this connection: the client is closed 1012 and resumes.
   */
  private handoffAccepted (payload: Buffer): void {
    this.handoffAccept = false
    let ok = false
    try {
      const j = JSON.parse(payload.toString('utf8')) as Record<string, unknown>
      ok = j.resumed === true && j.handoff === true && j.session === this.claims?.s
    } catch {}
    if (!ok || this.claims === undefined) {
      this.onClientError?.('FERRY_ERR_HANDOFF_FAILED')
      this.sink.end(1012, 'backend restarting; reconnect', 'FERRY_ERR_HANDOFF_FAILED')
      this.stream.close(1012, 'handoff not continued')
      this.finished(true)
      return
    }
    this.lastMove = undefined
    this.claims = { ...this.claims, a: this.address }
    this.control({ t: 'token', token: this.tokens.seal(this.claims) })
  }

  private control (c: object): void {
    this.sink.deliver(Buffer.from('c' + JSON.stringify(c), 'utf8'), false)
  }

  protected override fromBackend (data: Buffer, binary: boolean): void {
    const out = Buffer.allocUnsafe(data.length + 1)
    out[0] = Kind.DATA
    data.copy(out, 1)
    this.delivered++
    super.fromBackend(out, binary)
  }

  override send (data: Uint8Array, binary: boolean): void {
    const kind = data[0]
    // Held while the session changes backends (MuxLeg.send), like any session's messages.
    if (kind === Kind.DATA) { super.send(data.subarray(1), binary); return }
    if (kind === Kind.ACK && !binary) {
      const text = Buffer.from(data.buffer, data.byteOffset + 1, data.length - 1).toString('latin1')
      const n = ACK_RE.test(text) ? Number(text) : NaN
      if (n >= this.lastAck && n <= this.base + this.delivered) {
        if (n > this.lastAck) {
          this.lastAck = n
          // While freezing the old backend still takes ACKs (what it waits for before HANDOFF).
          if (this.state === 'open' || this.state === 'freezing') this.stream.sendAck(n)
          else if (this.state === 'moving') this.pendingAck = n
        }
        return
      }
      // Its state cannot be trusted: the backend session ends too.
      this.clientBroke(1008, `acknowledged ${text.slice(0, 20)} messages; ${this.base + this.delivered} were sent`, 'FERRY_ERR_RESUME_BAD_ACK', 'client acknowledged messages it was never sent')
      return
    }
    this.clientBroke(1002, `unknown ferry.v1 message kind ${kind ?? 'none'}`, 'FERRY_ERR_WS_CLIENT_PROTOCOL', undefined)
  }

  /** A client that breaks the wire is closed; its backend session is closed with `endSession` as the reason, else parked. */
  private clientBroke (code: number, reason: string, errorCode: string, endSession: string | undefined): void {
    this.onClientError?.(errorCode)
    this.markClosed()
    this.sink.end(code, reason, errorCode)
    if (endSession !== undefined) this.stream.close(code, endSession)
    else this.stream.detach('client broke the ferry.v1 protocol')
    this.finished(true)
  }

  protected override backendEnded (code: number, reason: string, cause: StreamEndCause, errorCode: string | undefined): void {
    this.settle?.reject(new Error(`backend ended the stream before ACCEPT: ${reason}`))
    this.settle = undefined
    super.backendEnded(code, reason, cause, errorCode)
  }

  /** Drain: the client reconnects (through another pod) and resumes; the close 1012 that follows detaches. */
  migrate (): void {
    this.control({ t: 'migrate' })
  }

  override clientClosed (code: number, reason: string): void {
    // Between backends (moving) there is no stream: the move is abandoned, and the session with it (its
    // resume state was in the HANDOFF); the client that comes back is told `reset`.
    if (this.state === 'moving') { super.clientClosed(code, reason); return }
    this.markClosed()
    // Only a normal close ends the session; anything else is a connection lost: the backend parks it.
    if (code === 1000) this.stream.close(code, reason)
    else this.stream.detach(reason === '' ? `client connection ended (${code})` : reason)
    this.finished(true)
  }

  protected override finished (linkAlive: boolean): void {
    if (this.refresh !== undefined) { clearInterval(this.refresh); this.refresh = undefined }
    super.finished(linkAlive)
  }
}
