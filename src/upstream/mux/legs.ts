import type { Counter } from 'prom-client'
import { Kind } from '../../client/wire.js'
import { sendableCloseCode, type ClientSink, type UpstreamLeg } from '../../front/ws-types.js'
import { ResetCode } from '../../mux/codec.js'
import type { MuxStream, StreamEndCause, StreamEvents } from '../../mux/stream.js'
import type { ResumeClaims, ResumeTokens } from '../../sessions/token.js'

/** The uWS topic of ferry.v1 clients is the plain one plus this: their copy carries the 'p' kind byte. */
export const FERRY_TOPIC_SUFFIX = '\u0002'

/** What a leg needs from its link: the link's topic scope, and a call when its stream ended. */
export interface LegEndpoint {
  readonly topicPrefix: string
  afterStreamEnd: () => void
}

export interface LegStalls { send: Counter.Internal, receive: Counter.Internal }

/**
 * The gateway side of one session on a mux stream: bridges the stream's events to the client sink and
 * the client's events to the stream. Holds credit while the client is congested.
 */
export class MuxLeg implements UpstreamLeg {
  stream!: MuxStream
  /** Called once when the leg is finished (either side ended it). */
  onFinished: (() => void) | undefined
  private finishedOnce = false
  /** The link's topic scope when the stream opened (a link that reconnects gets a new one). */
  private readonly topicPrefix: string

  constructor (readonly protocol: string, protected readonly sink: ClientSink, protected readonly ep: LegEndpoint, private readonly stalls: LegStalls, private readonly topicSuffix = '') {
    this.topicPrefix = ep.topicPrefix
  }

  readonly events: StreamEvents = {
    message: (data, binary) => { this.fromBackend(data, binary) },
    end: (code, reason, cause, errorCode) => { this.backendEnded(code, reason, cause, errorCode) },
    drain: () => {},
    stall: (direction) => { this.stalls[direction].inc() },
    subscribe: (topic) => { this.sink.subscribe(this.topicPrefix + topic + this.topicSuffix) },
    unsubscribe: (topic) => { this.sink.unsubscribe(this.topicPrefix + topic + this.topicSuffix) },
  }

  protected fromBackend (data: Buffer, binary: boolean): void {
    this.sink.deliver(data, binary)
    if (this.sink.congested) this.stream.holdCredit(true)
  }

  protected backendEnded (code: number, reason: string, cause: StreamEndCause, errorCode: string | undefined): void {
    this.sink.end(cause === 'peer' ? sendableCloseCode(code) : code, reason, errorCode ?? 'upstream')
    this.finished(cause !== 'link')
  }

  send (data: Uint8Array, binary: boolean): void {
    this.stream.send(data, binary)
  }

  get buffered (): number {
    return this.stream.queued
  }

  clientDrained (): void {
    this.stream.holdCredit(false)
  }

  clientCongested (): void {
    this.stream.holdCredit(true)
  }

  clientClosed (code: number, reason: string): void {
    this.stream.close(code, reason)
    this.finished(true)
  }

  /** The stream is over: a draining link may close; the owner's bookkeeping runs once. */
  protected finished (linkAlive: boolean): void {
    if (linkAlive) this.ep.afterStreamEnd()
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
 */
export class ResumableLeg extends MuxLeg {
  /** Backend data messages delivered to the client before this connection (the client's `received` on resume). */
  private base = 0
  private delivered = 0
  private lastAck = 0
  private refresh: NodeJS.Timeout | undefined
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
    this.events.ack = (n) => { this.sink.deliver(Buffer.from(`a${n}`, 'latin1'), false) }
    this.events.accept = (payload) => { this.onAccept(payload) }
  }

  private onAccept (payload: Buffer): void {
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
    // The welcome goes first: the replayed messages follow it on the stream.
    this.control({
      t: 'welcome', token: this.tokens.seal(claims), session: a.session, resumed: a.resumed,
      ...(!a.resumed && (a.reason ?? this.refusal) !== undefined ? { reason: a.reason ?? this.refusal } : {}), received: a.received, protocol: this.appProtocol,
    })
    const every = Math.max(1000, Math.floor(this.tokens.ttlMs / 2))
    this.refresh = setInterval(() => { this.control({ t: 'token', token: this.tokens.seal(claims) }) }, every)
    this.refresh.unref()
    settle.resolve(a)
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
    if (kind === Kind.DATA) { this.stream.send(data.subarray(1), binary); return }
    if (kind === Kind.ACK && !binary) {
      const text = Buffer.from(data.buffer, data.byteOffset + 1, data.length - 1).toString('latin1')
      const n = ACK_RE.test(text) ? Number(text) : NaN
      if (n >= this.lastAck && n <= this.base + this.delivered) {
        if (n > this.lastAck) { this.lastAck = n; this.stream.sendAck(n) }
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
