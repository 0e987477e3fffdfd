import t from 'tap'
import { randomBytes } from 'node:crypto'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import { FerryClient, type FerryClientOptions, type MessageData } from '../src/client/index.js'
import { parseResumeOffer } from '../src/client/wire.js'
import { waitFor, type Teardown } from './helpers/ferry.js'

/**
 * ferry/client against a small gateway written here with `ws` on 127.0.0.1 that plays the server side of
 * ferry.v1 as docs/resume.md describes it: welcome first, data numbered per direction, cumulative acks,
 * an un-acked replay buffer resent after the client's `received` from the resume offer, fresh sessions
 * for unknown tokens. (Through real gateways and backends: resume.test.ts.)
 */

/** One session of the fake gateway: what its "backend" got and what it keeps for the client. */
interface FakeSession {
  id: string
  token: string
  ws: WebSocket | undefined
  /** Server data messages the client has acknowledged; `out` holds the ones after. */
  outBase: number
  out: Array<string | Buffer>
  /** Server data messages sent in the session. */
  sent: number
  /** Client data messages received (the backend's count), and what they were (binary as 'b:' + text). */
  received: number
  got: string[]
  acksFromClient: number[]
  ackTimer: NodeJS.Timeout | undefined
}

interface Conn { ws: WebSocket, protocols: string[], at: number, session: FakeSession | undefined, closedAt?: number }

interface GatewayOptions {
  /** Select ferry.v1 (default true); else the application protocol `app` when offered. */
  ferry?: boolean
  app?: string
  /** Acknowledge the client's data every this many messages (default 16, and 10 ms after the first); 0: never. */
  ackEvery?: number
  /** `reason` of a fresh welcome after an offered token the gateway does not know. */
  refusal?: string
  onConn?: (c: Conn) => void
  onData?: (s: FakeSession, c: Conn) => void
}

interface FakeGateway {
  url: string
  conns: Conn[]
  sessions: Map<string, FakeSession>
  /** The backend application sends one data message (`b:` prefix → binary). */
  send: (s: FakeSession, msg: string) => void
  /** The only session (fails the test if there is not exactly one). */
  only: () => FakeSession
}

const decode = (d: RawData): Buffer => Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d)

async function gateway (t: Teardown, opts: GatewayOptions = {}): Promise<FakeGateway> {
  const conns: Conn[] = []
  const sessions = new Map<string, FakeSession>() // by token
  const ackEvery = opts.ackEvery ?? 16
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    handleProtocols: (p) => (opts.ferry ?? true) && p.has('ferry.v1') ? 'ferry.v1' : opts.app !== undefined && p.has(opts.app) ? opts.app : false,
  })

  const ack = (s: FakeSession): void => {
    if (s.ackTimer !== undefined) { clearTimeout(s.ackTimer); s.ackTimer = undefined }
    if (s.ws?.readyState === WebSocket.OPEN) s.ws.send(`a${s.received}`)
  }
  const frame = (msg: string): string | Buffer => msg.startsWith('b:') ? Buffer.concat([Buffer.from([0x6d]), Buffer.from(msg.slice(2))]) : 'm' + msg
  const send = (s: FakeSession, msg: string): void => {
    s.sent++
    const f = frame(msg)
    s.out.push(f)
    if (s.ws?.readyState === WebSocket.OPEN) s.ws.send(f)
  }
  const welcome = (s: FakeSession, ws: WebSocket, resumed: boolean, reason?: string): void => {
    sessions.delete(s.token)
    s.token = randomBytes(18).toString('base64url') // every welcome rotates the token
    sessions.set(s.token, s)
    ws.send('c' + JSON.stringify({ t: 'welcome', token: s.token, session: s.id, resumed, ...(reason !== undefined ? { reason } : {}), received: s.received, protocol: '' }))
  }

  wss.on('connection', (ws, req) => {
    const protocols = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim())
    const c: Conn = { ws, protocols, at: performance.now(), session: undefined }
    conns.push(c)
    ws.on('close', () => { c.closedAt = performance.now() })
    if (ws.protocol !== 'ferry.v1') { opts.onConn?.(c); return }
    const offer = protocols.map(parseResumeOffer).find((o) => o !== undefined)
    const known = offer !== undefined ? sessions.get(offer.token) : undefined
    if (known !== undefined && offer !== undefined && offer.received >= known.outBase && offer.received <= known.sent) {
      if (known.ws !== undefined) known.ws.close(4001, 'session resumed elsewhere')
      known.ws = ws
      c.session = known
      known.outBase = offer.received
      known.out.splice(0, known.out.length - (known.sent - offer.received))
      welcome(known, ws, true)
      for (const f of known.out) ws.send(f)
    } else {
      const s: FakeSession = { id: `s${sessions.size + 1}-${randomBytes(4).toString('hex')}`, token: '', ws, outBase: 0, out: [], sent: 0, received: 0, got: [], acksFromClient: [], ackTimer: undefined }
      c.session = s
      welcome(s, ws, false, offer !== undefined ? (known !== undefined ? 'bad_ack' : opts.refusal ?? 'unknown') : undefined)
    }
    const s = c.session!
    ws.on('message', (d, isBinary) => {
      if (s.ws !== ws) return
      const b = decode(d)
      if (b[0] === 0x6d) {
        s.received++
        s.got.push(isBinary ? 'b:' + b.subarray(1).toString() : b.subarray(1).toString())
        if (ackEvery > 0 && s.received % ackEvery === 0) ack(s)
        else if (ackEvery > 0 && s.ackTimer === undefined) s.ackTimer = setTimeout(() => { ack(s) }, 10)
        opts.onData?.(s, c)
      } else if (b[0] === 0x61 && !isBinary) {
        const n = Number(b.subarray(1).toString())
        s.acksFromClient.push(n)
        if (n > s.sent || n < s.outBase) { ws.close(1008, 'bad ack'); return }
        s.out.splice(0, n - s.outBase)
        s.outBase = n
      } else {
        ws.close(1002, 'unknown kind')
      }
    })
    ws.on('close', (code) => {
      if (s.ws !== ws) return
      s.ws = undefined
      if (s.ackTimer !== undefined) { clearTimeout(s.ackTimer); s.ackTimer = undefined }
      if (code === 1000) sessions.delete(s.token) // the client ended the session
    })
    opts.onConn?.(c)
  })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  t.teardown(async () => {
    for (const s of sessions.values()) if (s.ackTimer !== undefined) clearTimeout(s.ackTimer)
    for (const ws of wss.clients) ws.terminate()
    await new Promise((resolve) => wss.close(resolve))
  })
  return {
    url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}/chat`,
    conns,
    sessions,
    send,
    only: () => {
      const all = new Set(sessions.values())
      if (all.size !== 1) throw new Error(`expected one session, the gateway has ${all.size}`)
      return [...all][0]!
    },
  }
}

interface Recorded { c: FerryClient, got: string[], events: string[], errors: Error[], resets: Array<{ reason: string, unsent: MessageData[] }>, tokens: string[] }

const show = (d: MessageData): string => typeof d === 'string' ? d : 'b:' + Buffer.from(d).toString()

/** A client with fast reconnects whose messages (binary as 'b:' + text) and events are recorded; closed at teardown. */
function client (t: Teardown, url: string, opts: FerryClientOptions = {}): Recorded {
  const c = new FerryClient(url, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 10, maxDelayMs: 50 }, ...opts })
  const r: Recorded = { c, got: [], events: [], errors: [], resets: [], tokens: [] }
  c.on('message', (d, info) => { r.got.push((info.topic ? 'topic:' : '') + show(d)) })
  for (const e of ['open', 'reconnecting', 'close'] as const) c.on(e, (info: unknown) => { r.events.push(`${e} ${JSON.stringify(info)}`) })
  c.on('reset', (x) => { r.resets.push(x); r.events.push(`reset ${x.reason}`) })
  c.on('token', (tok) => { r.tokens.push(tok) })
  c.on('error', (err) => { r.errors.push(err) })
  t.teardown(() => { c.close() })
  return r
}

const count = (events: string[], prefix: string): number => events.filter((e) => e.startsWith(prefix)).length
const seq = (prefix: string, n: number, binaryEvery = 7): string[] => Array.from({ length: n }, (_, i) => (i + 1) % binaryEvery === 0 ? `b:${prefix}${i + 1}` : `${prefix}${i + 1}`)
const sendAll = (c: FerryClient, msgs: string[]): void => { for (const m of msgs) c.send(m.startsWith('b:') ? new TextEncoder().encode(m.slice(2)) : m) }

t.test('messages both ways in order, text stays text and binary binary; acks flow both ways and the buffer empties', async (t) => {
  const gw = await gateway(t)
  const r = client(t, gw.url)
  await waitFor('open', () => r.c.state === 'open')
  t.same(r.events, [`open {"resumed":false,"session":"${r.c.session!}"}`], "the first connection opens a fresh session with just 'open' (no 'reset')")
  t.equal(r.c.resumable, true, 'ferry.v1 was selected: resumable')
  t.same(r.tokens, [gw.only().token], "the welcome's token is emitted")

  const up = seq('up', 100)
  sendAll(r.c, up)
  t.ok(r.c.bufferedAmount > 0, `the 100 sent messages are kept until acknowledged (${r.c.bufferedAmount} bytes)`)
  const s = gw.only()
  const down = seq('down', 100)
  for (const m of down) gw.send(s, m)
  s.ws!.send('ptopic news') // a topic message: delivered, not counted
  gw.send(s, 'after topic')

  await waitFor('both ways', () => s.got.length === 100 && r.got.length === 102)
  t.same(s.got, up, 'the backend got the 100 client messages in order, binary ones as binary')
  t.same(r.got, [...down, 'topic:topic news', 'after topic'], 'the client got the 101 data messages and the topic message in order, without kind bytes')
  await waitFor('buffer empty', () => r.c.bufferedAmount === 0)
  t.pass("the gateway's acks emptied the client's buffer")
  await waitFor('client acks all 101', () => s.acksFromClient.at(-1) === 101)
  t.ok(s.acksFromClient.length <= 10, `the client acknowledged 101 data messages (topic not counted) in ${s.acksFromClient.length} acks (≤ 10: every 32 or after 100 ms)`)
  t.same(s.acksFromClient, [...s.acksFromClient].sort((a, b) => a - b), 'acks are cumulative counts, never going back')
  t.same(r.errors, [], 'no errors')
})

t.test('connection killed (terminate) mid-stream three times: resumed with the token and counts, 2,000 messages each way, none lost or doubled', async (t) => {
  const N = 2000
  const kills: string[] = []
  const kill = (s: FakeSession, why: string): void => { if (s.ws?.readyState === WebSocket.OPEN) { kills.push(why); s.ws.terminate() } }
  const gw = await gateway(t, { onData: (s) => { if (s.received === 500 || s.received === 1300) kill(s, `after client message ${s.received}`) } })
  const r = client(t, gw.url)
  await waitFor('open', () => r.c.state === 'open')
  const s = gw.only()
  const up = seq('c', N)
  const down = seq('s', N)
  // Both sides keep sending through the outages: the client queues while reconnecting, the gateway buffers.
  let i = 0
  let j = 0
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      for (let k = 0; k < 20 && i < N; k++) sendAll(r.c, [up[i++]!])
      for (let k = 0; k < 20 && j < N; k++) { gw.send(s, down[j++]!); if (j === 1000) kill(s, 'after server message 1000') }
      if (i < N || j < N) setTimeout(pump, 1); else resolve()
    }
    pump()
  })
  await waitFor('all delivered', () => s.got.length >= N && r.got.length >= N, 20_000)
  await waitFor('all acknowledged', () => r.c.bufferedAmount === 0 && s.out.length === 0 && r.c.state === 'open', 20_000)
  t.ok(kills.length >= 2, `the gateway killed the connection mid-stream ${kills.length} times (${kills.join(', ')})`)
  t.equal(s.got.length, N, `the backend got exactly ${N} client messages`)
  t.same(s.got, up, 'in order, none lost or doubled, binary ones as binary')
  t.equal(r.got.length, N, `the client got exactly ${N} server messages`)
  t.same(r.got, down, 'in order, none lost or doubled, binary ones as binary')
  t.equal(count(r.events, 'open {"resumed":true'), kills.length, `one resumed 'open' per kill (${kills.length})`)
  t.equal(count(r.events, 'reset') + count(r.events, 'close'), 0, "no 'reset' and no 'close'")
  t.equal(gw.sessions.size, 1, 'one session throughout')
  const offers = gw.conns.slice(1).map((c) => c.protocols.map(parseResumeOffer).find((o) => o !== undefined))
  t.ok(offers.every((o) => o !== undefined), 'every reconnect offered to resume')
  t.same(offers.map((o) => o!.token), r.tokens.slice(0, offers.length), 'each offer carried the latest token the client was given (tokens rotate per welcome)')
  t.same(r.errors, [], 'no errors')
})

t.test("a refused resume (fresh welcome) gives 'reset' with the unacknowledged messages and numbers from 1 again", async (t) => {
  const gw = await gateway(t, { ackEvery: 0, refusal: 'expired' }) // never acknowledges: everything stays unacked
  const r = client(t, gw.url)
  await waitFor('open', () => r.c.state === 'open')
  r.c.send('u1')
  r.c.send(new Uint8Array([0x68, 0x69]))
  r.c.send('u3')
  const s1 = gw.only()
  gw.send(s1, 'd1')
  await waitFor('delivered', () => s1.got.length === 3 && r.got.length === 1)
  gw.sessions.clear() // the gateway forgets the session (as if its token expired)
  s1.ws!.terminate()
  await waitFor('reset', () => r.resets.length === 1 && r.c.state === 'open')
  t.equal(r.resets[0]!.reason, 'expired', "'reset' carries the welcome's reason")
  t.same(r.resets[0]!.unsent.map(show), ['u1', 'b:hi', 'u3'], "'reset' hands back the 3 unacknowledged messages, binary as bytes")
  t.ok(r.resets[0]!.unsent[1] instanceof Uint8Array, 'the binary one as a Uint8Array')
  t.equal(r.c.bufferedAmount, 0, 'the buffer is cleared')
  t.same(r.events.slice(-2).map((e) => e.split(' ')[0]), ['open', 'reset'], "'open' then 'reset'")
  t.match(r.events.at(-2), /^open \{"resumed":false/, "'open' says resumed: false")
  const s2 = gw.only()
  t.not(s2.id, s1.id, 'a new session')
  r.c.send('v1')
  gw.send(s2, 'e1')
  await waitFor('new session traffic', () => s2.got.length === 1 && r.got.length === 2)
  s2.ws!.terminate()
  await waitFor('resumed', () => gw.conns.length === 3 && r.c.state === 'open')
  t.same(gw.conns[2]!.protocols.map(parseResumeOffer).find((o) => o !== undefined)!.received, 1, 'the counts restarted: received 1 in the new session')
  t.same(gw.conns[2]!.protocols.map(parseResumeOffer).find((o) => o !== undefined)!.sent, 1, 'and sent 1')
  t.same(s2.got, ['v1'], 'the new session got only the message sent after the reset')

  // A token given at construction (a page reload) that the gateway does not know: the messages sent
  // before the welcome are handed back too.
  const r2 = client(t, gw.url, { token: 'stale-token-from-storage-0123' })
  r2.c.send('early')
  await waitFor('reset', () => r2.resets.length === 1)
  t.same(r2.resets[0]!.unsent, ['early'], "a stored token that cannot resume: 'reset' with the message queued before the welcome")
})

t.test('a token from storage (a page reload) resumes the session; the new client numbers its messages after what the backend has', async (t) => {
  const gw = await gateway(t, { ackEvery: 0 })
  const a = client(t, gw.url)
  for (const m of ['a1', 'a2', 'a3']) a.c.send(m)
  await waitFor('delivered', () => gw.conns[0]?.session?.got.length === 3)
  const stored = a.tokens.at(-1)!
  a.c.close(4000, 'page unload') // not 1000: the session stays, detached
  await waitFor('detached', () => gw.only().ws === undefined)
  const b = client(t, gw.url, { token: stored })
  b.c.send('b1') // queued before the welcome
  await waitFor('resumed', () => b.c.state === 'open')
  t.match(b.events[0], /^open \{"resumed":true/, 'the stored token resumed the session')
  t.same(b.resets, [], "no 'reset'")
  const s = gw.only()
  await waitFor('b1', () => s.got.length === 4)
  s.ws!.terminate()
  await waitFor('reconnected', () => gw.conns.length === 3 && b.c.state === 'open')
  const offer = gw.conns[2]!.protocols.map(parseResumeOffer).find((o) => o !== undefined)
  t.equal(offer?.sent, 4, "the backend had 3 of the session's messages: the new client's first is number 4")
  t.same(s.got, ['a1', 'a2', 'a3', 'b1'], 'the backend got each message once')
})

t.test('close codes: 4001 (taken over) and 1000 (the application ended it) are terminal; close() acks first and ends the session', async (t) => {
  for (const code of [4001, 1000]) {
    const gw = await gateway(t, { onConn: (c) => { setTimeout(() => { c.ws.close(code, 'bye') }, 20) } })
    const r = client(t, gw.url)
    await waitFor(`close ${code}`, () => r.c.state === 'closed')
    t.same(r.events.slice(1), [`close {"code":${code},"reason":"bye"}`], `${code}: 'close' with the code, no 'reconnecting'`)
    // A reconnect would have been scheduled by now (reconnect delays here are ≤ 50 ms).
    await new Promise((resolve) => setTimeout(resolve, 200))
    t.equal(gw.conns.length, 1, `${code}: 1 connection 200 ms (4 × maxDelayMs) later`)
    t.throws(() => { r.c.send('late') }, /after close/, `${code}: send() after close throws`)
  }

  const gw = await gateway(t)
  const r = client(t, gw.url, { ackIntervalMs: 60_000 })
  await waitFor('open', () => r.c.state === 'open')
  const s = gw.only()
  for (const m of ['d1', 'd2', 'd3']) gw.send(s, m)
  await waitFor('3 messages', () => r.got.length === 3)
  t.same(s.acksFromClient, [], 'nothing acknowledged yet (3 < ackEvery, ackIntervalMs 60 s)')
  r.c.close()
  await waitFor('closed at the gateway', () => gw.conns[0]!.closedAt !== undefined)
  t.same(s.acksFromClient, [3], 'close() acknowledged the 3 messages right before closing')
  t.equal(gw.sessions.size, 0, 'the gateway ended the session (1000)')
  t.match(r.events.at(-1), /^close \{"code":1000/, "'close' with 1000")
})

t.test('retry hints: 1013 with retry-after-ms=300 and migrate afterMs 300 hold the reconnect ≥ 300 ms', async (t) => {
  for (const hint of ['1013', 'migrate'] as const) {
    let hintedAt = 0
    const gw = await gateway(t, {
      onConn: (c) => {
        if (gw.conns.length > 1) return
        setTimeout(() => {
          hintedAt = performance.now()
          if (hint === '1013') { c.ws.close(1013, 'busy; retry-after-ms=300'); return }
          c.ws.send('c' + JSON.stringify({ t: 'migrate', afterMs: 300 }))
          c.ws.close(1012, 'draining')
        }, 20)
      },
    })
    const r = client(t, gw.url)
    await waitFor('second connection', () => gw.conns.length === 2 && r.c.state === 'open', 5000)
    const gap = gw.conns[1]!.at - hintedAt
    t.ok(gap >= 300, `${hint}: reconnected ${gap.toFixed(1)} ms after the hint (≥ 300 ms asked)`)
    t.same(r.events.map((e) => e.split(' ')[0]), ['open', 'reconnecting', 'open'], `${hint}: one reconnect`)
    t.match(r.events[2], /^open \{"resumed":true/, `${hint}: and the session resumed`)
    t.ok(Number(/"delayMs":(\d+)/.exec(r.events[1]!)![1]) >= 300, `${hint}: 'reconnecting' announced a delay ≥ 300 ms`)
  }
})

t.test('a server that does not select ferry.v1: plain mode, messages unchanged both ways, no acks', async (t) => {
  const got: Array<[string, boolean]> = []
  const gw = await gateway(t, {
    ferry: false,
    app: 'chat.v1',
    onConn: (c) => {
      c.ws.on('message', (d, isBinary) => { got.push([decode(d).toString('hex'), isBinary]) })
      c.ws.send('mhello') // starts with 'm' but must not be unwrapped
      c.ws.send(Buffer.from([1, 2, 3]))
    },
  })
  const r = client(t, gw.url, { protocols: ['chat.v1'] })
  r.c.send('queued')
  await waitFor('plain open', () => r.c.state === 'open')
  t.equal(r.c.resumable, false, 'not resumable')
  t.equal(r.c.protocol, 'chat.v1', 'the application subprotocol was selected')
  r.c.send(new Uint8Array([0x6d, 9]))
  await waitFor('messages', () => r.got.length === 2 && got.length === 2)
  t.same(r.got, ['mhello', `b:${Buffer.from([1, 2, 3]).toString()}`], 'messages arrive unchanged (no kind byte removed)')
  t.same(got, [[Buffer.from('queued').toString('hex'), false], ['6d09', true]], 'the gateway gets them unchanged: the one queued before open, then the binary one; no acks')
  t.same(r.events, ['open {"resumed":false,"session":""}'], "just 'open'")
})

t.test('bounds: send() past maxBufferedMessages or maxBufferedBytes throws a RangeError and queues nothing', async (t) => {
  const gw = await gateway(t, { ackEvery: 0 })
  const r = client(t, gw.url, { maxBufferedMessages: 5 })
  for (let i = 0; i < 5; i++) r.c.send(`m${i}`) // queued while connecting: they count too
  t.throws(() => { r.c.send('one too many') }, RangeError, 'the sixth unacknowledged message is refused with a RangeError')
  await waitFor('5 delivered', () => gw.conns[0]?.session?.got.length === 5)
  const s = gw.only()
  s.ws!.send('a5')
  await waitFor('acked', () => r.c.bufferedAmount === 0)
  r.c.send('after')
  await waitFor('6 delivered', () => s.got.length === 6)
  t.same(s.got, ['m0', 'm1', 'm2', 'm3', 'm4', 'after'], 'the refused message was never sent')

  const r2 = client(t, gw.url, { maxBufferedBytes: 10 })
  r2.c.send('héllo') // 6 bytes in UTF-8
  t.equal(r2.c.bufferedAmount, 6, 'bufferedAmount counts UTF-8 bytes')
  t.throws(() => { r2.c.send('abcde') }, RangeError, '6 + 5 bytes > maxBufferedBytes 10: refused')
  r2.c.send(new Uint8Array(4))
  t.equal(r2.c.bufferedAmount, 10, '6 + 4 bytes fit exactly')
})

t.test("a broken server: an ack above what was sent emits 'error' and is ignored; a throwing listener does not break the client", async (t) => {
  const gw = await gateway(t, { ackEvery: 0 })
  const r = client(t, gw.url)
  await waitFor('open', () => r.c.state === 'open')
  r.c.send('one')
  const s = gw.only()
  await waitFor('delivered', () => s.got.length === 1)
  s.ws!.send('a99')
  await waitFor('error', () => r.errors.length === 1)
  t.match(r.errors[0]!.message, /acknowledged 99 messages; 1 were sent/, "'error' names the bad ack")
  t.equal(r.c.state, 'open', 'the client carries on')
  t.equal(r.c.bufferedAmount, 3, 'the ack was ignored: the message is still kept')

  let thrown = 0
  r.c.once('message', () => { thrown++; throw new Error('listener bug') })
  gw.send(s, 'x1')
  gw.send(s, 'x2')
  r.c.send('two')
  await waitFor('more traffic', () => r.got.length === 2 && s.got.length === 2)
  t.equal(thrown, 1, 'the once listener ran once')
  t.match(r.errors[1]!.message, /listener bug/, "its exception was reported on 'error'")
  t.same(r.got, ['x1', 'x2'], 'and the other listeners still got every message')
  t.same(s.got, ['one', 'two'], 'sending still works')
})
