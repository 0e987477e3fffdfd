/**
 * Fuzz of the mux link and stream state machines (the codec has its own fuzz in mux-codec.test.ts):
 * random and mutated frame sequences from a peer, against both roles. Whatever arrives, nothing may
 * throw out of the connection, every stream must end at most once, and a closed connection must say
 * why with a FERRY_ERR_* code. Bounded: a fixed number of cases from a fixed seed.
 */
import { PassThrough } from 'node:stream'
import type { Socket } from 'node:net'
import t from 'tap'
import { encodeClose, encodeCredit, encodeFrame, encodeGoaway, encodePublish, encodeReset, Flags, FrameType } from '../src/mux/codec.js'
import { MuxConnection, type ConnectionEnd } from '../src/mux/connection.js'
import type { MuxStream } from '../src/mux/stream.js'

/** Per role, from a fixed seed; FERRY_FUZZ_CASES=100000 for a deeper run than the suite's. */
const CASES = Number(process.env.FERRY_FUZZ_CASES ?? 3000)

/** xorshift32: reproducible. */
function rng (seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 0x100000000 }
}

/** A duplex that stands in for the socket: what the connection writes is dropped, what we push is read. */
function fakeSocket (): Socket & { feed: (b: Buffer) => void } {
  const s = new PassThrough() as unknown as Socket & { feed: (b: Buffer) => void }
  Object.assign(s, {
    setNoDelay: () => s,
    cork: () => {},
    uncork: () => {},
    write: () => true,
    end: () => s,
    destroy: () => s,
    feed: (b: Buffer) => { s.emit('data', b) },
  })
  Object.defineProperty(s, 'writableLength', { value: 0 })
  return s
}

const hello = (role: string): Buffer => encodeFrame(FrameType.HELLO, 0, 0, Buffer.from(JSON.stringify({ versions: [1], role, id: 'fuzz', instance: 'i', maxFrameBytes: 65536, initialWindow: 65536, pingIntervalMs: 1000 })))

function randomFrame (r: () => number, maxStream: number): Buffer {
  const id = r() < 0.2 ? 0 : 1 + 2 * Math.floor(r() * maxStream)
  const pick = Math.floor(r() * 13)
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)))
  switch (pick) {
    case 0: return encodeFrame(FrameType.DATA, Math.floor(r() * 4), id, bytes(Math.floor(r() * 300)))
    case 1: return encodeFrame(FrameType.DATA, Flags.MORE | (r() < 0.5 ? Flags.BINARY : 0), id, bytes(Math.floor(r() * 70000)))
    case 2: return encodeCredit(id, Math.floor(r() * 0xffffffff))
    case 3: return encodeClose(id, Math.floor(r() * 65536), 'x'.repeat(Math.floor(r() * 130)))
    case 4: return encodeReset(id, Math.floor(r() * 10), 'bad')
    case 5: return encodeFrame(FrameType.SUBSCRIBE, 0, id, bytes(Math.floor(r() * 1100)))
    case 6: return encodePublish('t'.repeat(Math.floor(r() * 5)), bytes(Math.floor(r() * 50)), r() < 0.5)
    case 7: return encodeGoaway(Math.floor(r() * 10), Math.floor(r() * 5), 'bye')
    case 8: return encodeFrame(FrameType.PING, 0, 0, bytes(8))
    case 9: return encodeFrame(FrameType.OPEN, 0, id, Buffer.from(r() < 0.5 ? '{"key":"k"}' : 'not json'))
    case 10: return encodeFrame(FrameType.HELLO, 0, 0, bytes(20))
    case 11: { const f = encodeFrame(FrameType.DATA, 0, id, bytes(10)); f[Math.floor(r() * f.length)] = Math.floor(r() * 256); return f }
    default: return bytes(Math.floor(r() * 40))
  }
}

for (const role of ['gateway', 'backend'] as const) {
  t.test(`${role} side: ${CASES} random frame sequences never escape as exceptions; every end has a code`, async (t) => {
    const r = rng(role === 'gateway' ? 0xfe77 : 0xbac4)
    let escaped = 0
    let closedWithoutCode = 0
    let doubleEnds = 0
    let closedLinks = 0
    for (let n = 0; n < CASES; n++) {
      const socket = fakeSocket()
      const ended = new Map<MuxStream, number>()
      const events = (s: () => MuxStream | undefined) => ({
        message: () => {},
        end: () => { const st = s(); if (st !== undefined) { const k = (ended.get(st) ?? 0) + 1; ended.set(st, k); if (k > 1) doubleEnds++ } },
        drain: () => {},
        subscribe: () => {},
        unsubscribe: () => {},
      })
      let closed: ConnectionEnd | undefined
      const conn = new MuxConnection(socket, { role, id: 'fuzz', maxFrameBytes: 65536, initialWindow: 65536, maxMessageBytes: 1 << 20, ...(role === 'gateway' ? { pingIntervalMs: 60000 } : {}) }, {
        ready: () => {},
        open: (stream) => events(() => stream),
        publish: role === 'gateway' ? () => {} : undefined,
        goaway: () => {},
        protocolError: () => {},
        closed: (end) => { closed = end },
      } as never)
      try {
        socket.feed(hello(role === 'gateway' ? 'backend' : 'gateway'))
        if (role === 'gateway') for (let k = 0; k < 3; k++) { let st: MuxStream | undefined; st = conn.openStream({ key: `s${k}` }, events(() => st)) }
        const frames = 1 + Math.floor(r() * 12)
        const chunks: Buffer[] = []
        for (let k = 0; k < frames; k++) chunks.push(randomFrame(r, 4))
        const all = Buffer.concat(chunks)
        // Split at random points: the decoder must not care how bytes are chunked.
        for (let off = 0; off < all.length;) {
          const len = 1 + Math.floor(r() * (all.length - off))
          socket.feed(all.subarray(off, off + len))
          off += len
        }
      } catch {
        escaped++
      }
      if (closed !== undefined) { closedLinks++; if (!/^(FERRY_ERR_[A-Z_]+|drained)$/.test(closed.code)) closedWithoutCode++ }
      conn.destroy({ code: 'FERRY_ERR_GATEWAY_STOPPING', message: 'fuzz case done' })
    }
    t.equal(escaped, 0, 'no exception escaped the connection')
    t.equal(doubleEnds, 0, 'no stream ended twice')
    t.equal(closedWithoutCode, 0, `every closed link (${closedLinks} of ${CASES}) carried a FERRY_ERR_* code`)
    t.ok(closedLinks > CASES / 10 && closedLinks < CASES, 'the corpus exercises both outcomes (link kept, link closed)')
  })
}
