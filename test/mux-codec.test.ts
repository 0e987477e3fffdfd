import t from 'tap'
import { FrameDecoder, FrameType, Flags, HEADER_BYTES, MuxProtocolError, decodeClose, decodePublish, encodeClose, encodeCredit, encodeFrame, encodePublish, type Frame } from '../src/mux/codec.js'

/** Deterministic PRNG (xorshift32) so a failing case reproduces from its index. */
function rng (seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 0x100000000 }
}

function decodeAll (bytes: Buffer, max = 1 << 20, splits: number[] = []): Frame[] {
  const out: Frame[] = []
  const d = new FrameDecoder(max, (f) => out.push({ ...f, payload: Buffer.from(f.payload) }))
  let prev = 0
  for (const s of [...splits, bytes.length]) { d.push(bytes.subarray(prev, s)); prev = s }
  t.equal(d.buffered, 0, 'nothing left buffered after whole frames')
  return out
}

t.test('frames round-trip, whatever the chunking', async (t) => {
  const r = rng(42)
  const frames: Buffer[] = []
  const want: Array<{ type: number, streamId: number, len: number }> = []
  for (let i = 0; i < 200; i++) {
    const len = Math.floor(r() * 3000)
    const payload = Buffer.alloc(len, i & 0xff)
    frames.push(encodeFrame(FrameType.DATA, r() < 0.5 ? Flags.BINARY : 0, 1 + i, payload))
    want.push({ type: FrameType.DATA, streamId: 1 + i, len })
  }
  frames.push(encodeCredit(7, 65536), encodeClose(9, 1000, 'bye'), encodePublish('room:1', Buffer.from('hi'), false))
  const all = Buffer.concat(frames)
  const splits: number[] = []
  for (let p = 0; p < all.length; p += 1 + Math.floor(r() * 700)) splits.push(p)
  const got = decodeAll(all, 1 << 20, splits)
  t.equal(got.length, 203, 'every frame decoded once')
  t.same(got.slice(0, 200).map((f) => ({ type: f.type, streamId: f.streamId, len: f.payload.length })), want, 'DATA frames in order with their lengths')
  t.equal(got[200]!.payload.readUInt32BE(0), 65536, 'CREDIT increment')
  t.same(decodeClose(got[201]!.payload), { code: 1000, reason: 'bye' }, 'CLOSE code and reason')
  const pub = decodePublish(got[202]!.payload)
  t.same([pub.topic, pub.data.toString()], ['room:1', 'hi'], 'PUBLISH topic and data')
})

t.test('framing errors are typed and link-scoped; payload errors cost only their stream', async (t) => {
  const bad = (bytes: Buffer, max = 1024): MuxProtocolError => {
    try { new FrameDecoder(max, () => {}).push(bytes) } catch (err) { return err as MuxProtocolError }
    throw new Error('no error')
  }
  const hdr = (v: number, type: number, stream: number, len: number): Buffer => {
    const b = Buffer.alloc(HEADER_BYTES); b[0] = v; b[1] = type; b.writeUInt32BE(stream, 4); b.writeUInt32BE(len, 8); return b
  }
  t.match(bad(hdr(2, FrameType.DATA, 1, 0)), { code: 'FERRY_ERR_MUX_VERSION', scope: 'link' }, 'wrong version')
  t.match(bad(hdr(1, FrameType.DATA, 1, 5000)), { code: 'FERRY_ERR_MUX_FRAME_TOO_LARGE', scope: 'link' }, 'oversize frame refused from its header alone')
  t.match(bad(hdr(1, 0x7f, 1, 0)), { code: 'FERRY_ERR_MUX_BAD_FRAME', scope: 'link' }, 'unknown type')
  t.match(bad(hdr(1, FrameType.DATA, 0, 0)), { code: 'FERRY_ERR_MUX_BAD_FRAME', scope: 'link' }, 'DATA on stream 0')
  t.match(bad(hdr(1, FrameType.PING, 3, 8)), { code: 'FERRY_ERR_MUX_BAD_FRAME', scope: 'link' }, 'PING on a stream')
  // A CREDIT with a 3-byte payload: framing is intact, so only stream 5 is reset and decoding continues.
  const got: Frame[] = []
  const d = new FrameDecoder(1024, (f) => got.push(f))
  const err = (() => { try { d.push(Buffer.concat([hdr(1, FrameType.CREDIT, 5, 3), Buffer.alloc(3), encodeCredit(6, 10)])) } catch (e) { return e as MuxProtocolError } })()
  t.match(err, { code: 'FERRY_ERR_MUX_BAD_FRAME', scope: 'stream', streamId: 5 }, 'bad CREDIT payload is stream-scoped')
  d.push(Buffer.alloc(0))
  t.equal(got.length, 1, 'the frame after it still decodes')
  t.equal(got[0]!.streamId, 6, 'it is the next frame')
})

t.test('fuzz: 1,000,000 random and mutated inputs never escape as anything but MuxProtocolError', async (t) => {
  const r = rng(20261122)
  const seeds = [encodeFrame(FrameType.DATA, 1, 1, Buffer.from('hello')), encodeCredit(3, 100), encodeClose(2, 1001, 'x'), encodePublish('t', Buffer.from('d'), true), encodeFrame(FrameType.PING, 0, 0, Buffer.alloc(8))]
  const N = 1_000_000
  let errors = 0
  let frames = 0
  for (let i = 0; i < N; i++) {
    let input: Buffer
    if (i % 2 === 0) {
      input = Buffer.allocUnsafe(Math.floor(r() * 40))
      for (let j = 0; j < input.length; j++) input[j] = Math.floor(r() * 256)
      if (input.length > 0 && r() < 0.7) input[0] = 1 // mostly the right version, to get past the first check
    } else {
      input = Buffer.from(seeds[i % seeds.length]!)
      const flips = 1 + Math.floor(r() * 3)
      for (let f = 0; f < flips; f++) input[Math.floor(r() * input.length)] = Math.floor(r() * 256)
    }
    const d = new FrameDecoder(64, () => { frames++ })
    try {
      const cut = Math.floor(r() * (input.length + 1))
      d.push(input.subarray(0, cut))
      d.push(input.subarray(cut))
    } catch (err) {
      if (!(err instanceof MuxProtocolError)) { t.fail(`case ${i}: ${String(err)} for ${input.toString('hex')}`); return }
      errors++
    }
    if (d.buffered > 64 + HEADER_BYTES) { t.fail(`case ${i}: decoder holds ${d.buffered} bytes, over its bound`); return }
  }
  t.ok(errors > N / 4, `${errors} of ${N} inputs rejected with a typed error`)
  t.ok(frames > 1000, `${frames} frames decoded from valid-looking inputs`)
})
