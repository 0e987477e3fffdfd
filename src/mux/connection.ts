import { isUtf8 } from 'node:buffer'
import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import { corkUntilCheck, uncorkNow } from '../net/cork.js'
import {
  decodeGoaway, decodePublish, encodeFrame, encodeGoaway, encodeReset, FrameDecoder, FrameType, GoawayCode, MUX_VERSION,
  MuxProtocolError, ResetCode, type Frame,
} from './codec.js'
import { MuxStream, type StreamEvents, type StreamLimits } from './stream.js'

/** The first frame both ways. */
export interface Hello {
  /** Protocol versions the sender speaks; the highest common one is used (v1 only so far). */
  versions: number[]
  role: 'gateway' | 'backend'
  /** Gateway id / backend id, for logs. */
  id: string
  /** Unique per process: a backend can tell two links of one gateway process from links of two processes. */
  instance: string
  /** Largest frame payload the sender accepts. */
  maxFrameBytes: number
  /** Per-stream credit the sender grants at stream start. */
  initialWindow: number
  /** Gateway: its PING period (the backend declares a link dead after 3 silent periods). */
  pingIntervalMs?: number
  /** Backend: it can park and resume sessions (ACK, ACCEPT, DETACH; docs/resume.md). */
  resume?: boolean
  /** Both: it speaks backend handoff (MOVE, FREEZE, HANDOFF; docs/mux-protocol.md). Neither side sends them unless both say so. */
  handoff?: boolean
  /** Both: its handoff also carries resumable sessions (HANDOFF and OPEN `handoff.resume`; docs/backend-handoff.md). */
  handoffResume?: boolean
}

export type ConnectionState = 'hello' | 'ready' | 'draining' | 'closed'

/** Why a connection ended: a stable Ferry error code and a message for logs. */
export interface ConnectionEnd {
  code: string
  message: string
  /** The socket error behind it, when there was one (a TLS alert tells its owner more than the message). */
  cause?: Error
}

export interface ConnectionHandler {
  ready: (peer: Hello) => void
  /** Backend role: a new stream; return its events, or undefined to refuse it (RESET REFUSED). */
  open?: (stream: MuxStream, meta: Buffer) => StreamEvents | undefined
  /** Gateway role: a topic message. */
  publish?: (topic: string, data: Buffer, binary: boolean) => void
  goaway: (lastStreamId: number, code: number, reason: string) => void
  /** A stream-scoped protocol error was detected (the stream is already reset). */
  protocolError: (code: string, message: string, scope: 'link' | 'stream') => void
  /** The connection is closed; its open streams have heard `end` (cause 'link'). Called once. */
  closed: (end: ConnectionEnd) => void
}

export interface ConnectionOptions {
  role: 'gateway' | 'backend'
  id: string
  maxFrameBytes: number
  initialWindow: number
  maxMessageBytes: number
  /** gateway: send PINGs this often, dead after two unanswered periods. backend: use the gateway's period, dead after three silent ones. */
  pingIntervalMs?: number
  /** Socket write buffer above which `writable` is false (senders should hold off). */
  highWaterBytes?: number
  /** Backend: advertise resumable sessions in HELLO. */
  resume?: boolean
  /** Advertise backend handoff in HELLO (both roles). */
  handoff?: boolean
}

const INSTANCE = randomBytes(8).toString('hex')
const EMPTY = Buffer.alloc(0)

/**
 * One mux link, either side: the socket's only owner once handed over. Decodes frames, runs the HELLO
 * exchange, routes stream frames to their MuxStream, answers PING, detects a dead peer, and batches
 * writes (frames written in one event-loop turn leave in one writev).
 */
export class MuxConnection {
  state: ConnectionState = 'hello'
  peer: Hello | undefined
  readonly streams = new Map<number, MuxStream>()
  /** Highest stream id seen or opened: frames for lower unknown ids are late (ignored). */
  private maxStreamId = 0
  private nextStreamId = 1
  private readonly decoder: FrameDecoder
  private timer: NodeJS.Timeout | undefined
  private lastHeard = Date.now()
  private pingSentAt = 0
  private pongAt = Date.now()
  /** Last measured PING round trip, ms. */
  rttMs = 0
  /** Health checks waiting for the next PONG (settled by it, or rejected when the link ends). */
  private pongWaiters: Array<{ resolve: () => void, reject: (err: Error) => void }> = []
  private ended = false

  constructor (readonly socket: Socket, readonly opts: ConnectionOptions, private readonly handler: ConnectionHandler) {
    this.decoder = new FrameDecoder(opts.maxFrameBytes, (f) => { this.onFrame(f) })
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => { this.onData(chunk) })
    socket.on('error', (err) => { this.destroy({ code: 'FERRY_ERR_WS_UPSTREAM_LOST', message: `link socket error: ${err.message}`, cause: err }) })
    socket.on('close', () => { this.destroy({ code: 'FERRY_ERR_WS_UPSTREAM_LOST', message: 'link closed by peer' }) })
    socket.on('end', () => { socket.end() })
    const hello: Hello = {
      versions: [MUX_VERSION],
      role: opts.role,
      id: opts.id,
      instance: INSTANCE,
      maxFrameBytes: opts.maxFrameBytes,
      initialWindow: opts.initialWindow,
      ...(opts.pingIntervalMs !== undefined && opts.role === 'gateway' ? { pingIntervalMs: opts.pingIntervalMs } : {}),
      ...(opts.resume === true && opts.role === 'backend' ? { resume: true } : {}),
      ...(opts.handoff === true ? { handoff: true, handoffResume: true } : {}),
    }
    this.write(encodeFrame(FrameType.HELLO, 0, 0, Buffer.from(JSON.stringify(hello))))
  }

  /** Both sides advertised backend handoff: MOVE, FREEZE and HANDOFF may be sent on this link. */
  get handoff (): boolean {
    return this.opts.handoff === true && this.peer?.handoff === true
  }

  /** Both sides' handoff carries resumable sessions too (their resume state travels in HANDOFF and OPEN). */
  get handoffResume (): boolean {
    return this.handoff && this.peer?.handoffResume === true
  }

  /** The socket can take more without growing past the high-water mark. */
  get writable (): boolean {
    return this.state !== 'closed' && this.socket.writableLength < (this.opts.highWaterBytes ?? 8 * 1024 * 1024)
  }

  write (frame: Uint8Array): void {
    if (this.ended) return
    corkUntilCheck(this.socket)
    this.socket.write(frame)
  }

  private limits (): StreamLimits {
    return {
      sendWindow: this.peer!.initialWindow,
      receiveWindow: this.opts.initialWindow,
      maxSendFrame: this.peer!.maxFrameBytes,
      maxMessageBytes: this.opts.maxMessageBytes,
      validateText: this.opts.role === 'gateway',
      role: this.opts.role,
    }
  }

  /** Gateway: a new stream with OPEN metadata. Undefined when the link cannot take one (not ready, ids spent). */
  openStream (meta: object, events: StreamEvents): MuxStream | undefined {
    if (this.state !== 'ready' || this.opts.role !== 'gateway') return undefined
    const id = this.nextStreamId
    if (id > 0x7fffffff) { this.goaway(GoawayCode.NORMAL, 'stream ids exhausted'); return undefined }
    this.nextStreamId += 2
    this.maxStreamId = id
    const stream = new MuxStream(id, this.sink, this.limits(), events)
    this.streams.set(id, stream)
    this.write(encodeFrame(FrameType.OPEN, 0, id, Buffer.from(JSON.stringify(meta))))
    return stream
  }

  private readonly sink = {
    write: (frame: Uint8Array) => { this.write(frame) },
    release: (id: number) => { this.streams.delete(id) },
  }

  /** This side takes no new streams; open ones continue. */
  goaway (code: number, reason: string): void {
    if (this.state === 'closed') return
    this.write(encodeGoaway(this.maxStreamId, code, reason))
    if (this.state === 'ready' || this.state === 'hello') this.state = 'draining'
  }

  /** Gateway: PINGs and the dead-peer check; backend: the silent-peer check. One timer per connection. */
  private startTimer (): void {
    const interval = this.opts.role === 'gateway' ? this.opts.pingIntervalMs : this.peer?.pingIntervalMs
    if (interval === undefined || interval <= 0) return
    this.timer = setInterval(() => {
      const now = Date.now()
      if (this.opts.role === 'gateway') {
        if (now - this.pongAt > 2 * interval) {
          this.destroy({ code: 'FERRY_ERR_MUX_PING_TIMEOUT', message: `no PONG for ${now - this.pongAt} ms` })
          return
        }
        this.pingSentAt = now
        const p = Buffer.allocUnsafe(8)
        p.writeDoubleBE(now, 0)
        this.write(encodeFrame(FrameType.PING, 0, 0, p))
      } else if (now - this.lastHeard > 3 * interval) {
        this.destroy({ code: 'FERRY_ERR_MUX_PING_TIMEOUT', message: `gateway silent for ${now - this.lastHeard} ms` })
      }
    }, interval)
    this.timer.unref()
  }

  private onData (chunk: Buffer): void {
    this.lastHeard = Date.now()
    let input = chunk
    // A stream-scoped error leaves the decoder intact: reset that stream and go on with the rest.
    for (let guard = 0; guard < 1_000_000; guard++) {
      if (this.ended) return
      try {
        this.decoder.push(input)
        return
      } catch (err) {
        if (err instanceof MuxProtocolError && err.scope === 'stream') {
          const s = this.streams.get(err.streamId)
          if (s !== undefined) s.reset(ResetCode.PROTOCOL, err.message, err.code)
          else this.write(encodeReset(err.streamId, ResetCode.PROTOCOL, err.message))
          this.handler.protocolError(err.code, err.message, 'stream')
          input = EMPTY
          continue
        }
        const code = err instanceof MuxProtocolError ? err.code : 'FERRY_ERR_INTERNAL'
        const message = err instanceof Error ? err.message : String(err)
        this.handler.protocolError(code, message, 'link')
        this.fail(code, message)
        return
      }
    }
  }

  /** Framing is lost or the peer broke the protocol: GOAWAY with the reason, then close. */
  private fail (code: string, message: string): void {
    const goawayCode = code === 'FERRY_ERR_MUX_VERSION' ? GoawayCode.VERSION : code === 'FERRY_ERR_INTERNAL' ? GoawayCode.INTERNAL : GoawayCode.PROTOCOL
    this.write(encodeGoaway(this.maxStreamId, goawayCode, message.slice(0, 200)))
    this.destroy({ code, message })
  }

  private onFrame (f: Frame): void {
    if (this.state === 'hello') {
      if (f.type !== FrameType.HELLO) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `expected HELLO, got frame type ${f.type}`, 'link')
      this.onHello(f.payload)
      return
    }
    if (f.streamId !== 0) {
      const s = this.streams.get(f.streamId)
      if (s !== undefined) { s.onFrame(f); return }
      if (f.type === FrameType.OPEN) { this.onOpen(f); return }
      if (f.streamId <= this.maxStreamId) return // late frame of a closed stream
      throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `frame type ${f.type} for stream ${f.streamId} that was never opened`, 'link')
    }
    switch (f.type) {
      case FrameType.PING:
        this.write(encodeFrame(FrameType.PONG, 0, 0, f.payload))
        return
      case FrameType.PONG: {
        this.pongAt = Date.now()
        if (this.pingSentAt > 0) this.rttMs = this.pongAt - this.pingSentAt
        const w = this.pongWaiters
        if (w.length > 0) {
          this.pongWaiters = []
          for (const p of w) p.resolve()
        }
        return
      }
      case FrameType.PUBLISH: {
        if (this.handler.publish === undefined) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', 'PUBLISH is for backends to send', 'link')
        const { topic, data } = decodePublish(f.payload)
        this.handler.publish(topic, data, (f.flags & 0x1) !== 0)
        return
      }
      case FrameType.GOAWAY: {
        const g = decodeGoaway(f.payload)
        if (this.state === 'ready') this.state = 'draining'
        this.handler.goaway(g.lastStreamId, g.code, g.reason)
        return
      }
      case FrameType.HELLO:
        throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', 'second HELLO', 'link')
    }
  }

  private onHello (payload: Buffer): void {
    let h: Hello
    try {
      if (!isUtf8(payload)) throw new Error('not UTF-8')
      h = JSON.parse(payload.toString('utf8')) as Hello
    } catch (err) {
      throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `HELLO is not JSON: ${(err as Error).message}`, 'link')
    }
    const num = (v: unknown, min: number, max: number): boolean => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max
    if (h === null || typeof h !== 'object' || !Array.isArray(h.versions) || !num(h.maxFrameBytes, 1024, 16 * 1024 * 1024) ||
        !num(h.initialWindow, 1024, 0x7fffffff) || (h.pingIntervalMs !== undefined && !num(h.pingIntervalMs, 100, 3_600_000))) {
      throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', 'HELLO lacks versions, maxFrameBytes (1 KiB-16 MiB) or initialWindow (≥ 1 KiB)', 'link')
    }
    if (!h.versions.includes(MUX_VERSION)) {
      throw new MuxProtocolError('FERRY_ERR_MUX_VERSION', `peer speaks mux versions ${JSON.stringify(h.versions).slice(0, 60)}; this side speaks ${MUX_VERSION}`, 'link')
    }
    const expected = this.opts.role === 'gateway' ? 'backend' : 'gateway'
    if (h.role !== expected) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `peer says it is a ${String(h.role)}, expected a ${expected}`, 'link')
    this.peer = h
    this.state = 'ready'
    this.pongAt = Date.now()
    this.startTimer()
    this.handler.ready(h)
  }

  private onOpen (f: Frame): void {
    if (this.opts.role !== 'backend' || this.handler.open === undefined) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', 'OPEN is for gateways to send', 'link')
    if (f.streamId <= this.maxStreamId || (f.streamId & 1) === 0) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `OPEN of stream ${f.streamId}: ids are odd and increasing`, 'link')
    this.maxStreamId = f.streamId
    if (this.state !== 'ready') { this.write(encodeReset(f.streamId, ResetCode.REFUSED, 'draining')); return }
    const stream = new MuxStream(f.streamId, this.sink, this.limits(), NO_EVENTS)
    this.streams.set(f.streamId, stream)
    const events = this.handler.open(stream, f.payload)
    if (events === undefined) {
      this.streams.delete(f.streamId)
      this.write(encodeReset(f.streamId, ResetCode.REFUSED, 'refused'))
      return
    }
    stream.events = events
  }

  /**
   * Gateway health check: sends a PING now; resolves on the next PONG (any PONG proves the peer reads
   * and answers this link), rejects if the link ends first. The caller bounds the wait.
   */
  async ping (): Promise<void> {
    if (this.ended) throw new Error('link closed')
    const p = new Promise<void>((resolve, reject) => { this.pongWaiters.push({ resolve, reject }) })
    const payload = Buffer.allocUnsafe(8)
    payload.writeDoubleBE(Date.now(), 0)
    this.write(encodeFrame(FrameType.PING, 0, 0, payload))
    await p
  }

  /** Closes the socket now; every open stream hears `end` with cause 'link'. Idempotent. */
  destroy (end: ConnectionEnd): void {
    if (this.ended) return
    this.ended = true
    this.state = 'closed'
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    const waiters = this.pongWaiters
    this.pongWaiters = []
    for (const p of waiters) p.reject(new Error(`link ended: ${end.message}`))
    const streams = [...this.streams.values()]
    this.streams.clear()
    uncorkNow(this.socket)
    // end() flushes what is queued (a GOAWAY explaining why); destroy follows if the peer does not close.
    this.socket.end()
    setTimeout(() => { this.socket.destroy() }, 1000).unref()
    for (const s of streams) s.linkLost(end.message, end.code)
    this.handler.closed(end)
  }

  /** No open streams: a draining link may close now. */
  get idle (): boolean {
    return this.streams.size === 0
  }
}

const NO_EVENTS: StreamEvents = { message: () => {}, end: () => {}, drain: () => {} }
