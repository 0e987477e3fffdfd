/**
 * Ferry mux protocol v1: the frame codec. Pure: bytes in, frames out; no sockets, no timers.
 * Shared by the gateway (upstream/mux) and the backend library. Spec: docs/mux-protocol.md.
 *
 *   0       1       2               4                               8                              12
 *   +-------+-------+---------------+-------------------------------+-------------------------------+
 *   |version| type  |    flags      |           stream id           |        payload length         |
 *   +-------+-------+---------------+-------------------------------+-------------------------------+
 *   all integers big-endian; the payload follows the 12-byte header.
 */

export const MUX_VERSION = 1
export const HEADER_BYTES = 12

export const FrameType = {
  HELLO: 0x0,
  OPEN: 0x1,
  DATA: 0x2,
  CLOSE: 0x3,
  RESET: 0x4,
  CREDIT: 0x5,
  SUBSCRIBE: 0x6,
  UNSUBSCRIBE: 0x7,
  PUBLISH: 0x8,
  PING: 0x9,
  PONG: 0xa,
  GOAWAY: 0xb,
  /** Resumable sessions: cumulative count of the session's data messages received (both ways). */
  ACK: 0xc,
  /** Resumable sessions: the backend's answer to an OPEN (JSON: resumed, session, epoch, received). */
  ACCEPT: 0xd,
  /** Resumable sessions: the gateway's side of the stream is gone but the session may resume (final). */
  DETACH: 0xe,
  /** Backend handoff (HELLO `handoff: true` on both sides): the backend asks the gateway to move this session elsewhere. */
  MOVE: 0xf,
  /** Backend handoff: the gateway's last client message on this stream was the frame before; the backend answers HANDOFF. */
  FREEZE: 0x10,
  /** Backend handoff: everything the backend sends for this session came before; JSON `{ state? }`; final, like CLOSE. */
  HANDOFF: 0x11,
} as const
export type FrameType = typeof FrameType[keyof typeof FrameType]
const TYPE_NAMES = Object.fromEntries(Object.entries(FrameType).map(([k, v]) => [v, k])) as Record<number, string>

export const Flags = {
  /** DATA/PUBLISH: the message is binary (else UTF-8 text). */
  BINARY: 0x1,
  /** DATA: more fragments of this message follow. */
  MORE: 0x2,
} as const

export interface Frame {
  type: FrameType
  flags: number
  streamId: number
  /** A view into the decoder's input: copy it if it must outlive the callback. */
  payload: Buffer
}

/** Why a decoder refused its input. `link` errors lose framing: the link must be closed. */
export type MuxErrorCode = 'FERRY_ERR_MUX_VERSION' | 'FERRY_ERR_MUX_FRAME_TOO_LARGE' | 'FERRY_ERR_MUX_BAD_FRAME'

export class MuxProtocolError extends Error {
  override name = 'MuxProtocolError'
  constructor (readonly code: MuxErrorCode, message: string, readonly scope: 'link' | 'stream', readonly streamId = 0) {
    super(message)
  }
}

/** Frames that only make sense on stream 0 (link level), and those that need a stream. */
const LINK_ONLY = new Set<number>([FrameType.HELLO, FrameType.PUBLISH, FrameType.PING, FrameType.PONG, FrameType.GOAWAY])
/** Fixed or minimum payload sizes per type. */
function checkPayload (type: number, len: number): string | undefined {
  switch (type) {
    case FrameType.CREDIT: return len === 4 ? undefined : 'CREDIT payload must be 4 bytes'
    case FrameType.PING: case FrameType.PONG: return len === 8 ? undefined : `${TYPE_NAMES[type]} payload must be 8 bytes`
    case FrameType.CLOSE: return len >= 2 && len <= 125 ? undefined : 'CLOSE payload must be 2-125 bytes (code + reason)'
    case FrameType.RESET: return len >= 4 && len <= 1024 ? undefined : 'RESET payload must be 4-1024 bytes'
    case FrameType.GOAWAY: return len >= 8 && len <= 1024 ? undefined : 'GOAWAY payload must be 8-1024 bytes'
    case FrameType.SUBSCRIBE: case FrameType.UNSUBSCRIBE: return len >= 1 && len <= 1024 ? undefined : 'topic must be 1-1024 bytes'
    case FrameType.PUBLISH: return len >= 2 ? undefined : 'PUBLISH payload must start with a u16 topic length'
    case FrameType.ACK: return len === 8 ? undefined : 'ACK payload must be 8 bytes'
    case FrameType.ACCEPT: return len >= 2 && len <= 1024 ? undefined : 'ACCEPT payload must be 2-1024 bytes of JSON'
    case FrameType.DETACH: return len <= 123 ? undefined : 'DETACH reason must be at most 123 bytes'
    case FrameType.MOVE: return len <= 123 ? undefined : 'MOVE reason must be at most 123 bytes'
    case FrameType.FREEZE: return len === 0 ? undefined : 'FREEZE has no payload'
    case FrameType.HANDOFF: return len >= 2 ? undefined : 'HANDOFF payload must be JSON (at least 2 bytes)'
    default: return undefined
  }
}

/**
 * Incremental decoder. `push(chunk)` calls `onFrame` for every complete frame, in order, and keeps at
 * most one partial frame (≤ maxFrameBytes + header). Input that breaks framing throws a link-scoped
 * MuxProtocolError; after that the decoder refuses further input.
 */
export class FrameDecoder {
  private buf: Buffer | undefined
  private failed = false

  constructor (private readonly maxPayloadBytes: number, private readonly onFrame: (f: Frame) => void) {}

  push (chunk: Buffer): void {
    if (this.failed) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', 'decoder already failed', 'link')
    let data = chunk
    if (this.buf !== undefined) { data = Buffer.concat([this.buf, chunk]); this.buf = undefined }
    let off = 0
    try {
      while (data.length - off >= HEADER_BYTES) {
        const version = data[off]!
        if (version !== MUX_VERSION) throw new MuxProtocolError('FERRY_ERR_MUX_VERSION', `frame version ${version}, expected ${MUX_VERSION}`, 'link')
        const type = data[off + 1]!
        const flags = data.readUInt16BE(off + 2)
        const streamId = data.readUInt32BE(off + 4)
        const len = data.readUInt32BE(off + 8)
        if (len > this.maxPayloadBytes) throw new MuxProtocolError('FERRY_ERR_MUX_FRAME_TOO_LARGE', `frame payload of ${len} bytes exceeds ${this.maxPayloadBytes}`, 'link')
        if (TYPE_NAMES[type] === undefined) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `unknown frame type 0x${type.toString(16)}`, 'link')
        if (LINK_ONLY.has(type) !== (streamId === 0)) {
          throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', `${TYPE_NAMES[type]} on stream ${streamId}: ${LINK_ONLY.has(type) ? 'link frames use stream 0' : 'stream 0 is reserved'}`, 'link')
        }
        if (data.length - off - HEADER_BYTES < len) break
        const bad = checkPayload(type, len)
        // Framing is intact here (the length was honest), so a bad payload only costs its stream.
        if (bad !== undefined) {
          const scope = streamId === 0 ? 'link' : 'stream'
          off += HEADER_BYTES + len
          throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', bad, scope, streamId)
        }
        const payload = data.subarray(off + HEADER_BYTES, off + HEADER_BYTES + len)
        off += HEADER_BYTES + len
        this.onFrame({ type: type as FrameType, flags, streamId, payload })
      }
    } catch (err) {
      if (err instanceof MuxProtocolError && err.scope === 'stream') {
        // Keep decoding after the bad frame; the caller resets that stream.
        this.keep(data, off)
        throw err
      }
      this.failed = true
      throw err
    }
    this.keep(data, off)
  }

  private keep (data: Buffer, off: number): void {
    if (off < data.length) this.buf = Buffer.from(data.subarray(off)) // copy: the input chunk is not ours
  }

  /** Bytes of a partial frame held. */
  get buffered (): number {
    return this.buf?.length ?? 0
  }
}

/** A frame header (reusable buffer per call site is fine: the caller writes it out before the next). */
export function encodeHeader (type: FrameType, flags: number, streamId: number, length: number, into: Buffer = Buffer.allocUnsafe(HEADER_BYTES)): Buffer {
  into[0] = MUX_VERSION
  into[1] = type
  into.writeUInt16BE(flags, 2)
  into.writeUInt32BE(streamId >>> 0, 4)
  into.writeUInt32BE(length >>> 0, 8)
  return into
}

/** A whole frame in one buffer (for control frames; DATA should be written as header + payload). */
export function encodeFrame (type: FrameType, flags: number, streamId: number, payload: Uint8Array = EMPTY): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + payload.length)
  encodeHeader(type, flags, streamId, payload.length, out)
  out.set(payload, HEADER_BYTES)
  return out
}

const EMPTY = Buffer.alloc(0)

export function encodeCredit (streamId: number, bytes: number): Buffer {
  const p = Buffer.allocUnsafe(4)
  p.writeUInt32BE(bytes >>> 0, 0)
  return encodeFrame(FrameType.CREDIT, 0, streamId, p)
}

export function encodeClose (streamId: number, code: number, reason = ''): Buffer {
  const r = Buffer.from(reason, 'utf8').subarray(0, 123)
  const p = Buffer.allocUnsafe(2 + r.length)
  p.writeUInt16BE(code, 0)
  p.set(r, 2)
  return encodeFrame(FrameType.CLOSE, 0, streamId, p)
}

export function decodeClose (payload: Buffer): { code: number, reason: string } {
  return { code: payload.readUInt16BE(0), reason: payload.toString('utf8', 2) }
}

export function encodePublish (topic: string, data: Uint8Array, binary: boolean): Buffer {
  const t = Buffer.from(topic, 'utf8')
  const out = Buffer.allocUnsafe(HEADER_BYTES + 2 + t.length + data.length)
  encodeHeader(FrameType.PUBLISH, binary ? Flags.BINARY : 0, 0, 2 + t.length + data.length, out)
  out.writeUInt16BE(t.length, HEADER_BYTES)
  out.set(t, HEADER_BYTES + 2)
  out.set(data, HEADER_BYTES + 2 + t.length)
  return out
}

export function decodePublish (payload: Buffer): { topic: string, data: Buffer } {
  const tl = payload.readUInt16BE(0)
  if (2 + tl > payload.length) throw new MuxProtocolError('FERRY_ERR_MUX_BAD_FRAME', 'PUBLISH topic length exceeds payload', 'link')
  return { topic: payload.toString('utf8', 2, 2 + tl), data: payload.subarray(2 + tl) }
}

export function typeName (type: number): string {
  return TYPE_NAMES[type] ?? `0x${type.toString(16)}`
}

/** RESET error codes (u32): why one stream was torn down. */
export const ResetCode = {
  PROTOCOL: 1,
  FLOW_CONTROL: 2,
  MESSAGE_TOO_LARGE: 3,
  BAD_UTF8: 4,
  INTERNAL: 5,
  /** The receiver will not take this stream (draining, unknown route, application refused). */
  REFUSED: 6,
} as const

/** GOAWAY codes (u32): why a link stops taking streams. */
export const GoawayCode = {
  NORMAL: 0,
  PROTOCOL: 1,
  VERSION: 2,
  PING_TIMEOUT: 3,
  INTERNAL: 4,
} as const

export function encodeReset (streamId: number, code: number, reason = ''): Buffer {
  const r = Buffer.from(reason, 'utf8').subarray(0, 1020)
  const p = Buffer.allocUnsafe(4 + r.length)
  p.writeUInt32BE(code >>> 0, 0)
  p.set(r, 4)
  return encodeFrame(FrameType.RESET, 0, streamId, p)
}

export function decodeReset (payload: Buffer): { code: number, reason: string } {
  return { code: payload.readUInt32BE(0), reason: payload.toString('utf8', 4) }
}

export function encodeGoaway (lastStreamId: number, code: number, reason = ''): Buffer {
  const r = Buffer.from(reason, 'utf8').subarray(0, 1016)
  const p = Buffer.allocUnsafe(8 + r.length)
  p.writeUInt32BE(lastStreamId >>> 0, 0)
  p.writeUInt32BE(code >>> 0, 4)
  p.set(r, 8)
  return encodeFrame(FrameType.GOAWAY, 0, 0, p)
}

export function decodeGoaway (payload: Buffer): { lastStreamId: number, code: number, reason: string } {
  return { lastStreamId: payload.readUInt32BE(0), code: payload.readUInt32BE(4), reason: payload.toString('utf8', 8) }
}

export function encodeTopicFrame (type: typeof FrameType.SUBSCRIBE | typeof FrameType.UNSUBSCRIBE, streamId: number, topic: string): Buffer {
  return encodeFrame(type, 0, streamId, Buffer.from(topic, 'utf8'))
}

/** Message counts travel as u64 (two u32 halves); values stay below 2^53. */
export function encodeAck (streamId: number, count: number): Buffer {
  const p = Buffer.allocUnsafe(8)
  p.writeUInt32BE(Math.floor(count / 0x100000000), 0)
  p.writeUInt32BE(count >>> 0, 4)
  return encodeFrame(FrameType.ACK, 0, streamId, p)
}

export function decodeAck (payload: Buffer): number {
  return payload.readUInt32BE(0) * 0x100000000 + payload.readUInt32BE(4)
}
