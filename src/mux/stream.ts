import { isUtf8 } from 'node:buffer'
import { decodeAck, encodeAck, encodeClose, encodeCredit, encodeFrame, encodeHeader, encodeReset, Flags, FrameType, HEADER_BYTES, ResetCode, type Frame } from './codec.js'

/** Where a stream writes its frames: the link it lives on (batched, in order). */
export interface FrameSink {
  write: (frame: Uint8Array) => void
  /** The stream is finished: forget its id. */
  release: (id: number) => void
}

/** Why a stream ended, as its owner hears it. */
/** `detach`: the gateway let go of a resumable session's stream (DETACH); the session may resume elsewhere. */
export type StreamEndCause = 'peer' | 'reset' | 'link' | 'detach'

/** What the stream owner (gateway session leg, backend Session) is told. */
export interface StreamEvents {
  message: (data: Buffer, binary: boolean) => void
  /** The peer closed (code/reason from its CLOSE), reset the stream, or the link went away. Not called for local closes. */
  end: (code: number, reason: string, cause: StreamEndCause, errorCode?: string) => void
  /** The send queue emptied after `send` returned false. */
  drain: () => void
  /** A send waited for credit (to_upstream on the gateway) or credit was held back (to_client). */
  stall?: (direction: 'send' | 'receive') => void
  subscribe?: (topic: string) => void
  unsubscribe?: (topic: string) => void
  /** Resumable sessions: the peer's cumulative count of this session's data messages it received. */
  ack?: (count: number) => void
  /** Gateway, resumable sessions: the backend's ACCEPT (JSON bytes). */
  accept?: (payload: Buffer) => void
  /** Gateway, backend handoff: the backend asks for this session to be moved (MOVE). */
  move?: (reason: string) => void
  /** Backend, backend handoff: no client message follows on this stream (FREEZE); answer with `handOff`. */
  freeze?: () => void
  /** Gateway, backend handoff: the backend handed the session over (HANDOFF, JSON bytes). The stream is finished; `end` is not called. */
  handoff?: (payload: Buffer) => void
}

export interface StreamLimits {
  /** Credit the peer granted us at start (its HELLO initialWindow). */
  readonly sendWindow: number
  /** Credit we grant the peer at start (our HELLO initialWindow); regranted as it is consumed. */
  readonly receiveWindow: number
  /** The peer's maxFrameBytes: our DATA fragments are at most this big. */
  readonly maxSendFrame: number
  /** Largest message we reassemble. */
  readonly maxMessageBytes: number
  /** Check UTF-8 of text messages (the gateway must: clients reject bad text frames). */
  readonly validateText: boolean
  /** Which side this stream is: decides which of the resume frames (ACCEPT, DETACH) may arrive. */
  readonly role: 'gateway' | 'backend'
}

export type StreamState = 'open' | 'closed'

interface Pending { data: Buffer, binary: boolean, off: number }

/** Close codes a stream's owner sees for failures (WebSocket semantics). */
export const STREAM_CLOSE = { reset: 1011, link: 1012, tooLarge: 1009 } as const

/**
 * One stream of a mux link, one side of it: per-stream credit flow control (HTTP/2 style) in both
 * directions, message fragmentation and reassembly, close and reset. Shared by the gateway and the
 * backend library. No sockets, no timers: frames go to a FrameSink, frames come in via `onFrame`.
 *
 * Sending: a message is written as DATA frames of at most `maxSendFrame` bytes while credit lasts; the
 * rest waits in a queue (its bytes are `queued`) until CREDIT arrives. Receiving: the peer may have at
 * most `receiveWindow` bytes unacknowledged; we grant credit back once half of it was consumed, unless
 * the owner holds credit (its consumer is slow), which is how a slow client stops only its own stream.
 */
export class MuxStream {
  state: StreamState = 'open'
  private sendCredit: number
  private readonly queue: Pending[] = []
  private queuedBytes = 0
  /** Credit the peer still has towards us. */
  private receiveLeft: number
  /** Bytes received and consumed but not yet granted back. */
  private unacked = 0
  private hold = false
  private frags: Buffer[] | undefined
  private fragBytes = 0
  private fragBinary = false

  constructor (readonly id: number, private readonly sink: FrameSink, readonly limits: StreamLimits, public events: StreamEvents) {
    this.sendCredit = limits.sendWindow
    this.receiveLeft = limits.receiveWindow
  }

  /** Client→backend (or app→gateway) bytes waiting for credit. */
  get queued (): number {
    return this.queuedBytes
  }

  get credit (): number {
    return this.sendCredit
  }

  /** Sends one message; false when (part of) it waits for credit (`drain` follows). */
  send (data: Uint8Array, binary: boolean): boolean {
    if (this.state !== 'open') return false
    if (this.queue.length === 0 && data.length <= this.sendCredit) {
      this.writeFrom(data, binary, 0)
      return true
    }
    // Copy: the caller's bytes (a uWS ArrayBuffer view) do not outlive the call.
    this.queue.push({ data: Buffer.from(data), binary, off: 0 })
    this.queuedBytes += data.length
    this.events.stall?.('send')
    this.flush()
    return this.queue.length === 0
  }

  /** Writes DATA fragments of `data` from `off` while credit lasts; returns the new offset. */
  private writeFrom (data: Uint8Array, binary: boolean, off: number): number {
    const total = data.length
    const base = binary ? Flags.BINARY : 0
    do {
      const n = Math.min(total - off, this.limits.maxSendFrame, this.sendCredit)
      if (n === 0 && total !== 0) break
      const more = off + n < total
      const frame = Buffer.allocUnsafe(HEADER_BYTES + n)
      encodeHeader(FrameType.DATA, more ? base | Flags.MORE : base, this.id, n, frame)
      frame.set(data.subarray(off, off + n), HEADER_BYTES)
      this.sink.write(frame)
      this.sendCredit -= n
      off += n
    } while (off < total)
    return off
  }

  private flush (): void {
    while (this.queue.length > 0) {
      const head = this.queue[0]!
      const before = head.off
      head.off = this.writeFrom(head.data, head.binary, head.off)
      this.queuedBytes -= head.off - before
      if (head.off < head.data.length) return
      this.queue.shift()
    }
  }

  /** The owner's consumer is slow (hold = true) or caught up again (false: pending credit goes out). */
  holdCredit (hold: boolean): void {
    if (hold === this.hold) return
    this.hold = hold
    if (hold) this.events.stall?.('receive')
    else this.grant(1)
  }

  private grant (atLeast: number): void {
    if (this.hold || this.state !== 'open' || this.unacked < atLeast || this.unacked === 0) return
    this.sink.write(encodeCredit(this.id, this.unacked))
    this.receiveLeft += this.unacked
    this.unacked = 0
  }

  /** A frame for this stream from the link. */
  onFrame (f: Frame): void {
    if (this.state !== 'open') return
    switch (f.type) {
      case FrameType.DATA: this.onData(f); break
      case FrameType.CREDIT: {
        const n = f.payload.readUInt32BE(0)
        if (this.sendCredit + n > 0x7fffffff) { this.reset(ResetCode.FLOW_CONTROL, 'credit overflow', 'FERRY_ERR_MUX_FLOW_CONTROL'); return }
        this.sendCredit += n
        if (this.queue.length > 0) {
          this.flush()
          if (this.queue.length === 0) this.events.drain()
        }
        break
      }
      case FrameType.CLOSE: {
        const code = f.payload.readUInt16BE(0)
        const reason = f.payload.toString('utf8', 2)
        this.finish()
        this.events.end(code, reason, 'peer')
        break
      }
      case FrameType.RESET: {
        const reason = f.payload.toString('utf8', 4)
        this.finish()
        this.events.end(STREAM_CLOSE.reset, reason === '' ? 'stream reset by peer' : reason, 'reset', 'FERRY_ERR_MUX_STREAM_RESET')
        break
      }
      case FrameType.ACK: {
        const n = decodeAck(f.payload)
        if (this.events.ack === undefined || !Number.isSafeInteger(n)) { this.reset(ResetCode.PROTOCOL, 'unexpected or malformed ACK', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        this.events.ack(n)
        break
      }
      case FrameType.ACCEPT: {
        if (this.events.accept === undefined) { this.reset(ResetCode.PROTOCOL, 'unexpected ACCEPT', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        this.events.accept(f.payload)
        break
      }
      case FrameType.DETACH: {
        if (this.limits.role !== 'backend') { this.reset(ResetCode.PROTOCOL, 'DETACH is for gateways to send', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        this.finish()
        this.events.end(1001, f.payload.toString('utf8'), 'detach')
        break
      }
      case FrameType.MOVE: {
        if (this.limits.role !== 'gateway' || this.events.move === undefined) { this.reset(ResetCode.PROTOCOL, 'unexpected MOVE', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        this.events.move(f.payload.toString('utf8'))
        break
      }
      case FrameType.FREEZE: {
        if (this.limits.role !== 'backend' || this.events.freeze === undefined) { this.reset(ResetCode.PROTOCOL, 'unexpected FREEZE', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        this.events.freeze()
        break
      }
      case FrameType.HANDOFF: {
        if (this.limits.role !== 'gateway' || this.events.handoff === undefined) { this.reset(ResetCode.PROTOCOL, 'unexpected HANDOFF', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        // Copy: the payload is a view into the decoder's input.
        const payload = Buffer.from(f.payload)
        this.finish()
        this.events.handoff(payload)
        break
      }
      case FrameType.SUBSCRIBE:
      case FrameType.UNSUBSCRIBE: {
        const handler = f.type === FrameType.SUBSCRIBE ? this.events.subscribe : this.events.unsubscribe
        if (handler === undefined || !isUtf8(f.payload)) { this.reset(ResetCode.PROTOCOL, 'unexpected or malformed topic frame', 'FERRY_ERR_MUX_BAD_FRAME'); return }
        handler(f.payload.toString('utf8'))
        break
      }
      default:
        this.reset(ResetCode.PROTOCOL, `unexpected frame type ${f.type} on a stream`, 'FERRY_ERR_MUX_BAD_FRAME')
    }
  }

  private onData (f: Frame): void {
    const len = f.payload.length
    if (len > this.receiveLeft) { this.reset(ResetCode.FLOW_CONTROL, `DATA of ${len} bytes with ${this.receiveLeft} bytes of credit`, 'FERRY_ERR_MUX_FLOW_CONTROL'); return }
    this.receiveLeft -= len
    this.unacked += len
    const more = (f.flags & Flags.MORE) !== 0
    let message: Buffer
    let binary: boolean
    if (this.frags === undefined && !more) {
      message = f.payload
      binary = (f.flags & Flags.BINARY) !== 0
    } else {
      if (this.frags === undefined) { this.frags = []; this.fragBytes = 0; this.fragBinary = (f.flags & Flags.BINARY) !== 0 }
      this.frags.push(f.payload)
      this.fragBytes += len
      if (this.fragBytes > this.limits.maxMessageBytes) {
        this.reset(ResetCode.MESSAGE_TOO_LARGE, `message larger than ${this.limits.maxMessageBytes} bytes`, 'FERRY_ERR_WS_MESSAGE_TOO_LARGE', STREAM_CLOSE.tooLarge)
        return
      }
      if (more) { this.grant(this.limits.receiveWindow / 2); return }
      message = this.frags.length === 1 ? this.frags[0]! : Buffer.concat(this.frags, this.fragBytes)
      binary = this.fragBinary
      this.frags = undefined
      this.fragBytes = 0
    }
    if (!binary && this.limits.validateText && !isUtf8(message)) {
      this.reset(ResetCode.BAD_UTF8, 'text message is not valid UTF-8', 'FERRY_ERR_MUX_BAD_UTF8')
      return
    }
    this.events.message(message, binary)
    this.grant(this.limits.receiveWindow / 2)
  }

  /** Resumable sessions: tells the peer how many of the session's data messages this side has received. */
  sendAck (count: number): void {
    if (this.state === 'open') this.sink.write(encodeAck(this.id, count))
  }

  /** Backend: answers a resumable OPEN (JSON). Must precede any DATA of the stream. */
  sendAccept (info: object): void {
    if (this.state === 'open') this.sink.write(encodeFrame(FrameType.ACCEPT, 0, this.id, Buffer.from(JSON.stringify(info), 'utf8')))
  }

  /** Gateway: the client side is gone but the session may resume (the backend parks it). Final, like close. */
  detach (reason: string): void {
    if (this.state !== 'open') return
    this.sink.write(encodeFrame(FrameType.DETACH, 0, this.id, Buffer.from(reason, 'utf8').subarray(0, 123)))
    this.finish()
  }

  /** Backend handoff, backend: asks the gateway to move this session (MOVE). */
  requestMove (reason: string): void {
    if (this.state === 'open') this.sink.write(encodeFrame(FrameType.MOVE, 0, this.id, Buffer.from(reason, 'utf8').subarray(0, 123)))
  }

  /** Backend handoff, gateway: the client's messages stop here on this stream (FREEZE). */
  freeze (): void {
    if (this.state === 'open') this.sink.write(encodeFrame(FrameType.FREEZE, 0, this.id))
  }

  /** Backend handoff, backend: everything for this session was sent; hands it over (HANDOFF). Final, like close. */
  handOff (payload: Buffer): void {
    if (this.state !== 'open') return
    this.sink.write(encodeFrame(FrameType.HANDOFF, 0, this.id, payload))
    this.finish()
  }

  /** Local close: CLOSE goes to the peer; the owner already knows. */
  close (code: number, reason: string): void {
    if (this.state !== 'open') return
    this.sink.write(encodeClose(this.id, code, reason))
    this.finish()
  }

  /**
   * Protocol error on this stream: RESET goes to the peer and the owner hears `end` with
   * `closeCode` (1011 unless said otherwise) and the Ferry error code.
   */
  reset (code: number, reason: string, errorCode: string, closeCode: number = STREAM_CLOSE.reset): void {
    if (this.state !== 'open') return
    this.sink.write(encodeReset(this.id, code, reason))
    this.finish()
    this.events.end(closeCode, reason, 'reset', errorCode)
  }

  /** The link is gone: no frames can be written any more. */
  linkLost (reason: string, errorCode: string): void {
    if (this.state !== 'open') return
    this.finish()
    this.events.end(STREAM_CLOSE.link, reason, 'link', errorCode)
  }

  private finish (): void {
    this.state = 'closed'
    this.queue.length = 0
    this.queuedBytes = 0
    this.frags = undefined
    this.sink.release(this.id)
  }
}
