import t from 'tap'
import WebSocket from 'ws'
import { createMuxServer, type MuxServer, type MuxServerOptions, type Session } from '../src/backend/index.js'
import { FerryClient } from '../src/client/index.js'
import { resumeOffer } from '../src/client/wire.js'
import { metric, muxLinksReady, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { freePort } from './helpers/redis.js'

/**
 * Backend handoff of resumable sessions (issue 19, docs/backend-handoff.md): a `ferry/client` session
 * whose `ferry/backend` process drains moves to another process with its resume state (id, counts,
 * unacknowledged messages). The client sees no reset and no reconnect, nothing is lost, duplicated or
 * reordered, and a later resume (a dropped connection) continues on the new process.
 *
 * The application: a counter per session (its state, moved by the `handoff` hook), incremented for
 * every client message and echoed with it as `n:<message>`.
 */

interface App { server: MuxServer, port: number, sessions: Map<string, { n: number, s: Session }>, arrivals: Session[] }

async function startApp (t: Teardown, port: number, opts: MuxServerOptions = {}): Promise<App> {
  const server = createMuxServer({ host: '127.0.0.1', port, ...opts })
  await server.listening
  const sessions = new Map<string, { n: number, s: Session }>()
  const arrivals: Session[] = []
  server.on('session', (s) => {
    arrivals.push(s)
    const restored = s.handoff !== undefined && s.handoff.lost !== true ? (s.handoff.state as { n?: number } | undefined)?.n : undefined
    const st = { n: restored ?? 0, s }
    sessions.set(s.id, st)
    s.on('message', (data) => { st.n++; s.send(`${st.n}:${data.toString()}`) })
    s.on('close', () => { if (sessions.get(s.id) === st) sessions.delete(s.id) })
  })
  server.on('handoff', (s) => ({ n: sessions.get(s.id)?.n ?? 0 }))
  t.teardown(async () => { await server.close() })
  return { server, port: server.address().port, sessions, arrivals }
}

function config (endpoints: string[]): Record<string, unknown> {
  return {
    upstreams: { chat: { protocol: 'mux', endpoints, pool: { links: 2 }, reconnect: { minDelayMs: 20, maxDelayMs: 200 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    resume: { secret: 'handoff-resume-test-secret-0123456789' },
    logging: { level: 'info', accessLog: false },
  }
}

async function linksReady (f: FerryProcess, address: string): Promise<void> {
  await muxLinksReady(f, 'chat', address)
}

interface Chat { c: FerryClient, got: string[], sent: number, events: string[] }

function openChat (t: Teardown, url: string): Chat {
  const c = new FerryClient(url, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 10, maxDelayMs: 100 } })
  const chat: Chat = { c, got: [], sent: 0, events: [] }
  c.on('message', (d: unknown) => { chat.got.push(typeof d === 'string' ? d : Buffer.from(d as Uint8Array).toString()) })
  for (const e of ['open', 'reconnecting', 'reset', 'close'] as const) c.on(e, (info: unknown) => { chat.events.push(`${e} ${JSON.stringify(info)}`) })
  c.on('error', () => {})
  t.teardown(() => { c.close() })
  return chat
}

function send (ch: Chat): void {
  ch.sent++
  ch.c.send(`m${ch.sent}`)
}

/** Exactly `m1..mN` echoed in order with the counter consecutive: nothing lost, duplicated or reordered, and the state moved. */
function inOrder (ch: Chat): string | undefined {
  if (ch.got.length !== ch.sent) return `${ch.got.length} echoes for ${ch.sent} messages`
  for (let i = 0; i < ch.got.length; i++) {
    const want = `${i + 1}:m${i + 1}`
    if (ch.got[i] !== want) return `echo ${i + 1} is ${ch.got[i]}, expected ${want}`
  }
  return undefined
}

t.test('a draining backend hands 40 ferry/client sessions to another one: no reset, no reconnect, nothing lost, doubled or reordered; later resumes land on the new one', async (t) => {
  const N = 40
  const a = await startApp(t, 0)
  const bPort = await freePort()
  const f = await startFerry(t, config([`127.0.0.1:${a.port}`, `127.0.0.1:${bPort}`]))
  await linksReady(f, `127.0.0.1:${a.port}`)
  const chats: Chat[] = []
  for (let i = 0; i < N; i++) chats.push(openChat(t, `ws://127.0.0.1:${f.httpPort}/chat`))
  await waitFor('every session open on A', () => chats.every((ch) => ch.c.state === 'open') && a.sessions.size === N, 10_000)
  const idsOnA = new Set(a.sessions.keys())
  const b = await startApp(t, bPort)
  await linksReady(f, `127.0.0.1:${bPort}`)

  // Traffic the whole time: every client sends a message every 10 ms.
  const traffic = setInterval(() => { for (const ch of chats) send(ch) }, 10)
  t.teardown(() => { clearInterval(traffic) })
  await new Promise((resolve) => setTimeout(resolve, 200))
  const result = await a.server.drain({ maxMigrationsPerSec: 200, deadlineMs: 15_000 })
  await new Promise((resolve) => setTimeout(resolve, 200))
  clearInterval(traffic)
  await waitFor('every echo back', () => chats.every((ch) => ch.got.length === ch.sent), 10_000).catch(() => {})

  t.equal(result.handedOff, N, `drain() handed over all ${N} resumable sessions`)
  t.equal(result.closed, 0, 'and closed none')
  t.same(chats.filter((ch) => ch.events.length !== 1).map((ch) => ch.events), [], 'each client saw exactly one event, its first open: no reset, no reconnect, no close')
  t.same(chats.map(inOrder).filter((x) => x !== undefined), [], `every client got exactly its ${chats[0]!.sent}+ messages back, in order, the counter never reset`)
  t.equal(b.sessions.size, N, `all ${N} sessions live on B`)
  t.ok(b.arrivals.every((s) => s.resumable && s.handoff !== undefined && s.handoff.lost !== true && s.handoff.from === `127.0.0.1:${a.port}`), 'each arrived resumable, with handoff.from = A')
  t.same(new Set(b.sessions.keys()), idsOnA, 'each kept its session id')
  t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="moved"}'), N, `ferry_mux_handoffs_total{outcome="moved"} = ${N}`)
  t.equal(b.server.stats().handoff.in, N, 'B counts the handoffs in')

  // A dropped connection now resumes on B (the token names B), with nothing lost: 10 of them.
  const dropped = chats.slice(0, 10)
  for (const ch of dropped) (ch.c as unknown as { ws: { terminate: () => void } }).ws.terminate() // the connection drops
  await waitFor('the dropped clients are open again', () => dropped.every((ch) => ch.c.state === 'open' && ch.events.length === 3), 10_000).catch((err: Error) => { t.comment(JSON.stringify(dropped.map((ch) => [ch.c.state, ch.events]))); throw err })
  t.ok(dropped.every((ch) => ch.events[1]!.startsWith('reconnecting') && ch.events[2]!.startsWith('open {"resumed":true')), 'each resumed (open resumed: true), no reset')
  t.equal(b.server.stats().resumed, 10, 'B resumed all 10')
  for (const ch of chats) send(ch)
  await waitFor('echoes after the resume', () => chats.every((ch) => ch.got.length === ch.sent), 10_000).catch(() => {})
  t.same(chats.map(inOrder).filter((x) => x !== undefined), [], 'still in order after the resume, the counter still counting')
})

t.test('unacknowledged messages travel with the session: a client that never acknowledged resumes on the new backend and gets them replayed', async (t) => {
  const a = await startApp(t, 0, { handoff: { ackWaitMs: 100 } })
  const bPort = await freePort()
  const f = await startFerry(t, config([`127.0.0.1:${a.port}`, `127.0.0.1:${bPort}`]))
  await linksReady(f, `127.0.0.1:${a.port}`)
  // A raw ferry.v1 client that never acknowledges anything.
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const ws = new WebSocket(url, ['ferry.v1'], { perMessageDeflate: false })
  const got: string[] = []
  const controls: Array<Record<string, unknown>> = []
  ws.on('message', (d) => { const m = d.toString(); if (m[0] === 'c') controls.push(JSON.parse(m.slice(1))); else got.push(m) })
  ws.on('error', () => {})
  await waitFor('welcome', () => controls.length === 1, 5000)
  const s = [...a.sessions.values()][0]!.s
  for (let i = 1; i <= 5; i++) s.send(`push${i}`)
  await waitFor('5 pushes', () => got.length === 5, 5000)
  const b = await startApp(t, bPort)
  await linksReady(f, `127.0.0.1:${bPort}`)
  const r = await a.server.drain({ maxMigrationsPerSec: 100 })
  t.equal(r.handedOff, 1, 'handed over after ackWaitMs, unacknowledged messages and all')
  await waitFor('on B', () => b.sessions.size === 1, 5000)
  const onB = [...b.sessions.values()][0]!.s
  t.equal(onB.id, s.id, 'same session id')
  t.equal(onB.bufferedAmount, 5 * 'pushN'.length, 'B holds the 5 unacknowledged messages (bufferedAmount)')
  await waitFor('a token naming B', () => controls.some((c) => c.t === 'token'), 5000)
  const token = controls.filter((c) => c.t === 'token').pop()!.token as string
  ws.terminate()
  await waitFor('parked on B', () => b.server.stats().parked === 1, 5000)
  // It says it received only 2 of the 5: B replays 3, 4 and 5.
  const ws2 = new WebSocket(url, ['ferry.v1', resumeOffer(token, 2, 0)], { perMessageDeflate: false })
  const got2: string[] = []
  const controls2: Array<Record<string, unknown>> = []
  ws2.on('message', (d) => { const m = d.toString(); if (m[0] === 'c') controls2.push(JSON.parse(m.slice(1))); else got2.push(m) })
  ws2.on('error', () => {})
  t.teardown(() => { ws2.terminate() })
  await waitFor('replayed', () => got2.length === 3, 5000)
  t.equal(controls2[0]?.resumed, true, 'the resume on B succeeded')
  t.same(got2, ['mpush3', 'mpush4', 'mpush5'], 'B replayed the 3 messages the client had not received')
})

t.test('no other backend resumes sessions: the handoff fails after openMs, counted, and the client is closed 1012 (reconnect)', async (t) => {
  const a = await startApp(t, 0)
  const bPort = await freePort()
  const f = await startFerry(t, { ...config([`127.0.0.1:${a.port}`, `127.0.0.1:${bPort}`]), upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${a.port}`, `127.0.0.1:${bPort}`], pool: { links: 2 }, reconnect: { minDelayMs: 20, maxDelayMs: 200 }, timeouts: { openMs: 1000 } } } })
  await linksReady(f, `127.0.0.1:${a.port}`)
  const ch = openChat(t, `ws://127.0.0.1:${f.httpPort}/chat`)
  await waitFor('open', () => ch.c.state === 'open', 5000)
  // B does not resume sessions at all (resume: false): its HELLO says no resume, so the gateway must not put the session there.
  const b = await startApp(t, bPort, { resume: false })
  await linksReady(f, `127.0.0.1:${bPort}`)
  const r = await a.server.drain({ maxMigrationsPerSec: 100, deadlineMs: 3000 })
  t.equal(b.arrivals.length, 0, 'no session was put on a backend that does not resume')
  t.equal(r.handedOff + r.closed, 1, `the session left A (handed off ${r.handedOff}, closed ${r.closed})`)
  await waitFor('the client noticed', () => ch.events.some((e) => e.startsWith('reconnecting')), 8000)
  t.ok(ch.events.some((e) => e.startsWith('reconnecting {"attempt":1,"delayMs":') && e.includes('"code":1012')), 'closed 1012 (reconnect)')
  t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="failed"}'), 1, 'ferry_mux_handoffs_total{outcome="failed"} = 1')
})

t.test('carried messages larger than the new backend\'s maxFrameBytes: the oldest give way (a resume needing them is refused), the OPEN fits, the link lives', async (t) => {
  const a = await startApp(t, 0, { handoff: { ackWaitMs: 50 } })
  const bPort = await freePort()
  const f = await startFerry(t, config([`127.0.0.1:${a.port}`, `127.0.0.1:${bPort}`]))
  await linksReady(f, `127.0.0.1:${a.port}`)
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const ws = new WebSocket(url, ['ferry.v1'], { perMessageDeflate: false })
  const controls: Array<Record<string, unknown>> = []
  let got = 0
  ws.on('message', (d) => { const m = d.toString(); if (m[0] === 'c') controls.push(JSON.parse(m.slice(1))); else got++ })
  ws.on('error', () => {})
  t.teardown(() => { ws.terminate() })
  await waitFor('welcome', () => controls.length === 1, 5000)
  const s = [...a.sessions.values()][0]!.s
  // 8 × 1500 bytes never acknowledged: 16 KB of base64, more than B's 4 KiB frames.
  for (let i = 1; i <= 8; i++) s.send(`${i}`.padEnd(1500, 'x'))
  await waitFor('8 pushes', () => got === 8, 5000)
  const b = await startApp(t, bPort, { maxFrameBytes: 4096 })
  await linksReady(f, `127.0.0.1:${bPort}`)
  // Other sessions that must not notice anything (some open on B before the handoff, some on A move with it).
  const others = [openChat(t, url), openChat(t, url), openChat(t, url), openChat(t, url)]
  await waitFor('the other sessions', () => others.every((o) => o.c.state === 'open'), 5000)
  const onBBefore = b.sessions.size
  const linksBefore = b.server.links().map((l) => l.id).sort()
  const r = await a.server.drain({ maxMigrationsPerSec: 100 })
  t.equal(r.handedOff, 5 - onBBefore, `handed over (${r.handedOff}; ${onBBefore} of the others were on B already)`)
  await waitFor('on B', () => b.sessions.size === 5, 5000)
  const onB = [...b.sessions.values()].find((x) => x.s.id === s.id)!.s
  t.ok(onB.bufferedAmount > 0 && onB.bufferedAmount < 4096, `B holds the newest unacknowledged messages that fit its frame (${onB.bufferedAmount} bytes of 12000)`)
  t.same(b.server.links().map((l) => l.id).sort(), linksBefore, 'B\'s links are the same ones (no frame over its limit ended a link)')
  for (const o of others) send(o)
  await waitFor('the other sessions still answer', () => others.every((o) => o.got.length === 1), 5000)
  t.ok(others.every((o) => o.events.length === 1), 'the other sessions saw nothing')
})
