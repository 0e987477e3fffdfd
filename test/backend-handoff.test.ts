import t from 'tap'
import WebSocket from 'ws'
import { createMuxServer, type MuxServer, type MuxServerOptions, type Session } from '../src/backend/index.js'
import { metric, muxLinksReady, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { freePort } from './helpers/redis.js'
import { createServer as createNetServer, type Socket } from 'node:net'
import { MuxConnection } from '../src/mux/connection.js'

/**
 * A real mux backend (the wire, over TCP) that speaks handoff and resume but refuses every session it
 * is offered (RESET REFUSED): what a backend at capacity, or closing, answers.
 */
async function startRefuser (t: Teardown, port: number): Promise<{ port: number, offered: () => number }> {
  let offered = 0
  const sockets = new Set<Socket>()
  const server = createNetServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    // eslint-disable-next-line no-new
    new MuxConnection(socket, { role: 'backend', id: 'refuser', maxFrameBytes: 65536, initialWindow: 262144, maxMessageBytes: 1 << 20, resume: true, handoff: true }, {
      ready: () => {},
      open: () => { offered++; return undefined },
      goaway: () => {},
      protocolError: () => {},
      closed: () => {},
    })
  })
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  t.teardown(async () => { for (const s of sockets) s.destroy(); await new Promise((resolve) => server.close(resolve)) })
  return { port: (server.address() as { port: number }).port, offered: () => offered }
}

/**
 * Backend handoff (issue 19, docs/backend-handoff.md): a `ferry/backend` process that drains hands each
 * session to another endpoint through the gateway, and a session whose backend dies is reopened
 * elsewhere; the client's WebSocket stays open throughout.
 *
 * The application: a counter per session (its state), incremented for every client message and echoed
 * with it as `n:<message>`; the `handoff` hook takes the counter along. A client that sends 1..N and
 * gets back exactly `k:i` for i = 1..N in order, with k counting up without a gap, saw nothing lost,
 * duplicated or reordered, and the state moved.
 */

interface App { server: MuxServer, port: number, sessions: Map<string, { n: number, s: Session }>, arrivals: Session[] }

async function startApp (t: Teardown, port: number, opts: MuxServerOptions = {}, hook: ((s: Session, n: number) => unknown) | null = (_s, n) => ({ n })): Promise<App> {
  const server = createMuxServer({ host: '127.0.0.1', port, ...opts })
  await server.listening
  const sessions = new Map<string, { n: number, s: Session }>()
  const arrivals: Session[] = []
  server.on('session', (s) => {
    arrivals.push(s)
    const restored = s.handoff !== undefined && s.handoff.lost !== true ? (s.handoff.state as { n?: number } | undefined)?.n : undefined
    const st = { n: restored ?? 0, s }
    sessions.set(s.id, st)
    if (s.handoff === undefined) s.subscribe('room')
    s.on('message', (data) => { st.n++; s.send(`${st.n}:${data.toString()}`) })
    s.on('close', () => { if (sessions.get(s.id) === st) sessions.delete(s.id) })
  })
  if (hook !== null) server.on('handoff', (s) => hook(s, sessions.get(s.id)?.n ?? 0))
  t.teardown(async () => { await server.close() })
  return { server, port: server.address().port, sessions, arrivals }
}

interface Chat {
  ws: WebSocket
  got: string[]
  topic: string[]
  sent: number
  closed: { code: number, reason: string } | undefined
}

async function openChat (url: string): Promise<Chat> {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  const c: Chat = { ws, got: [], topic: [], sent: 0, closed: undefined }
  ws.on('message', (d) => { const m = d.toString(); if (m.startsWith('topic:')) c.topic.push(m); else c.got.push(m) })
  ws.on('close', (code, reason) => { c.closed = { code, reason: reason.toString() } })
  ws.on('error', () => {})
  await new Promise<void>((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  return c
}

function send (c: Chat): void {
  c.sent++
  c.ws.send(`m${c.sent}`)
}

/** Exactly `m1..mN` echoed in order, the counter consecutive from `first`: nothing lost, duplicated or reordered. */
function inOrder (c: Chat, first = 1): string | undefined {
  if (c.got.length !== c.sent) return `${c.got.length} echoes for ${c.sent} messages`
  for (let i = 0; i < c.got.length; i++) {
    const want = `${first + i}:m${i + 1}`
    if (c.got[i] !== want) return `echo ${i + 1} is ${c.got[i]}, expected ${want}`
  }
  return undefined
}

function config (endpoints: string[], handoff: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: { chat: { protocol: 'mux', endpoints, pool: { links: 2 }, reconnect: { minDelayMs: 20, maxDelayMs: 200 }, handoff } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    logging: { level: 'info', accessLog: false },
  }
}

async function linksReady (f: FerryProcess, address: string): Promise<void> {
  await muxLinksReady(f, 'chat', address)
}

/** Sessions start on A (B is not listening yet), then B comes up: the fleet a rollout starts from. */
async function fleet (t: Teardown, n: number, aOpts: MuxServerOptions = {}, hook?: (s: Session, n: number) => unknown, handoff: Record<string, unknown> = {}): Promise<{ f: FerryProcess, a: App, b: App, bPort: number, chats: Chat[] }> {
  const a = await startApp(t, 0, aOpts, hook)
  const bPort = await freePort()
  const f = await startFerry(t, config([`127.0.0.1:${a.port}`, `127.0.0.1:${bPort}`], handoff))
  await linksReady(f, `127.0.0.1:${a.port}`)
  const chats: Chat[] = []
  for (let i = 0; i < n; i++) chats.push(await openChat(`ws://127.0.0.1:${f.httpPort}/chat`))
  await waitFor('every session on A', () => a.sessions.size === n, 5000)
  const b = await startApp(t, bPort)
  await linksReady(f, `127.0.0.1:${bPort}`)
  return { f, a, b, bPort, chats }
}

t.test('a draining backend hands 60 live sessions to another one: no client closed, nothing lost, duplicated or reordered, state and topics moved, paced', async (t) => {
  const N = 60
  const { f, a, b, chats } = await fleet(t, N)
  // Traffic the whole time: every client sends a message every 5 ms; both backends publish to the room.
  const traffic = setInterval(() => { for (const c of chats) if (c.closed === undefined) send(c) }, 5)
  let topicN = 0
  const pub = setInterval(() => { topicN++; a.server.publish('room', `topic:${topicN}`); b.server.publish('room', `topic:${topicN}`) }, 20)
  t.teardown(() => { clearInterval(traffic); clearInterval(pub) })
  await new Promise((resolve) => setTimeout(resolve, 200))
  const t0 = Date.now()
  const result = await a.server.drain({ maxMigrationsPerSec: 100, deadlineMs: 10_000 })
  const ms = Date.now() - t0
  await new Promise((resolve) => setTimeout(resolve, 200))
  clearInterval(traffic)
  clearInterval(pub)
  // Let the last echoes arrive.
  await waitFor('every echo back', () => chats.every((c) => c.got.length === c.sent), 5000).catch(() => {})

  t.equal(result.handedOff, N, `drain() handed over all ${N} sessions`)
  t.equal(result.closed, 0, 'and closed none')
  t.equal(chats.filter((c) => c.closed !== undefined).length, 0, 'no client WebSocket was closed')
  const broken = chats.map((c) => inOrder(c)).filter((x) => x !== undefined)
  t.same(broken, [], `every client got exactly its ${chats[0]!.sent}+ messages back, in order, the counter never reset (state moved)`)
  t.equal(b.sessions.size, N, `all ${N} sessions live on B now`)
  t.ok(b.arrivals.every((s) => s.handoff !== undefined && s.handoff.lost !== true && s.handoff.from === `127.0.0.1:${a.port}`), 'each arrived with handoff.from = A')
  t.ok(b.arrivals.every((s) => s.topics.has('room')), 'each arrived subscribed to its topic (room)')
  // Topic messages keep coming from B after the move.
  const before = chats.map((c) => c.topic.length)
  b.server.publish('room', 'topic:after')
  await waitFor('the topic message after the move', () => chats.every((c) => c.topic.includes('topic:after')), 3000)
  t.ok(chats.every((c, i) => c.topic.length > before[i]!), 'B\'s topic messages reach every moved client')
  // Pacing: 60 sessions at 100/s take at least ~0.5 s (waves of 10 every 100 ms).
  t.ok(ms >= 450, `the drain took ${ms} ms: paced at 100/s, not all at once (bound ≥ 450 ms for 60)`)
  t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="moved"}'), N, `ferry_mux_handoffs_total{outcome="moved"} = ${N}`)
  const st = a.server.stats()
  t.equal(st.handoff.out, N, 'A counts the handoffs out')
  t.equal(b.server.stats().handoff.in, N, 'B counts the handoffs in')
  for (const c of chats) c.ws.close()
})

t.test('a backend killed mid-traffic: its sessions reopen on another endpoint with handoff.lost, clients stay connected', async (t) => {
  const N = 20
  const { f, a, b, chats } = await fleet(t, N)
  for (const c of chats) { send(c); send(c) }
  await waitFor('echoes', () => chats.every((c) => c.got.length === 2), 5000)
  // The process dies: its listener and every link go at once (what SIGKILL looks like to the gateway).
  ;(a.server as unknown as { server: { close: () => void } }).server.close()
  for (const l of a.server.links()) l.terminate()
  await waitFor('sessions reopened on B', () => b.sessions.size === N, 5000)
  t.ok(b.arrivals.every((s) => s.handoff?.lost === true && s.handoff.from === `127.0.0.1:${a.port}`), 'each arrived with handoff = { lost: true, from: A }')
  for (const c of chats) send(c)
  await waitFor('echo from B', () => chats.every((c) => c.got.length === 3), 5000)
  t.equal(chats.filter((c) => c.closed !== undefined).length, 0, 'no client WebSocket was closed')
  t.ok(chats.every((c) => c.got[2] === '1:m3'), 'B answers the next message (state lost: the counter starts again)')
  t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="lost_moved"}'), N, `ferry_mux_handoffs_total{outcome="lost_moved"} = ${N}`)
  for (const c of chats) c.ws.close()
})

t.test('one link of a live backend cut: its sessions reopen on the endpoint\'s other links (lost), the others are untouched', async (t) => {
  const a = await startApp(t, 0)
  const f = await startFerry(t, { ...config([`127.0.0.1:${a.port}`]), upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${a.port}`], pool: { links: 4 }, reconnect: { minDelayMs: 20, maxDelayMs: 200 } } } })
  await linksReady(f, `127.0.0.1:${a.port}`)
  const chats: Chat[] = []
  for (let i = 0; i < 40; i++) chats.push(await openChat(`ws://127.0.0.1:${f.httpPort}/chat`))
  await waitFor('40 sessions', () => a.sessions.size === 40, 5000)
  const victim = a.server.links()[0]!
  const onVictim = [...a.sessions.values()].filter((x) => x.s.linkId === victim.id).length
  t.ok(onVictim > 0, `${onVictim} sessions on the link that is cut`)
  victim.terminate()
  await waitFor('the cut sessions reopened', () => a.arrivals.filter((s) => s.handoff?.lost === true).length === onVictim, 5000)
  for (const c of chats) send(c)
  await waitFor('every client answered', () => chats.every((c) => c.got.length === 1), 5000)
  t.equal(chats.filter((c) => c.closed !== undefined).length, 0, 'no client was closed')
  t.equal(a.arrivals.length, 40 + onVictim, `exactly the ${onVictim} sessions of the cut link were reopened`)
  for (const c of chats) c.ws.close()
})

t.test('bad input: a hook that throws, never returns, or returns too much still moves the session (state dropped, counted); drain twice; no endpoint to go to', async (t) => {
  t.test('hook throws / times out / too large', async (t) => {
    let i = 0
    const { a, b, chats } = await fleet(t, 6, { handoff: { timeoutMs: 200, maxStateBytes: 1024 } }, (_s, n) => {
      const k = i++ % 3
      if (k === 0) throw new Error('app bug')
      if (k === 1) return new Promise(() => {}) // never settles
      return { n, blob: 'x'.repeat(5000) }
    })
    a.server.on('error', () => {})
    for (const c of chats) send(c)
    await waitFor('echoes', () => chats.every((c) => c.got.length === 1), 5000)
    const r = await a.server.drain({ maxMigrationsPerSec: 1000 })
    t.equal(r.handedOff, 6, 'all 6 sessions moved anyway')
    t.same(a.server.stats().handoff.stateErrors, { threw: 2, timeout: 2, too_large: 2 }, 'each failure counted by kind')
    t.ok(b.arrivals.every((s) => s.handoff !== undefined && s.handoff.lost !== true && s.handoff.state === undefined && typeof s.handoff.stateError === 'string'), 'they arrive with state undefined and stateError saying why')
    for (const c of chats) send(c)
    await waitFor('echo from B', () => chats.every((c) => c.got.length === 2), 5000)
    t.equal(chats.filter((c) => c.closed !== undefined).length, 0, 'no client closed')
    for (const c of chats) c.ws.close()
  })

  t.test('a client flooding (empty messages) while its session moves is bounded: closed 1013, not held without end', async (t) => {
    // The old backend's hook never settles (its own bound is 10 s), so the session stays frozen meanwhile.
    const { a, chats } = await fleet(t, 2, { handoff: { timeoutMs: 10_000 } }, () => new Promise(() => {}), { timeoutMs: 15_000 })
    a.server.on('error', () => {})
    void a.server.drain({ maxMigrationsPerSec: 1000 })
    await new Promise((resolve) => setTimeout(resolve, 300))
    const c = chats[0]!
    for (let i = 0; i < 40_000 && c.closed === undefined; i++) c.ws.send('')
    await waitFor('the flooding client closed', () => c.closed !== undefined, 5000)
    t.equal(c.closed!.code, 1013, `closed 1013 (${c.closed!.reason})`)
    t.equal(chats[1]!.closed, undefined, 'the other client is untouched')
  })

  t.test('drain asked twice: one drain', async (t) => {
    const { a, chats } = await fleet(t, 4)
    const [r1, r2] = await Promise.all([a.server.drain(), a.server.drain()])
    t.same(r1, r2, 'both calls get the same result')
    t.equal(r1.handedOff, 4, 'the sessions moved once')
    for (const c of chats) c.ws.close()
  })

  t.test('the backend a session moves to refuses it (RESET before a word): the same handoff goes to another endpoint, state intact', async (t) => {
    const a = await startApp(t, 0)
    const rPort = await freePort()
    const cPort = await freePort()
    const f = await startFerry(t, config([`127.0.0.1:${a.port}`, `127.0.0.1:${rPort}`, `127.0.0.1:${cPort}`]))
    await linksReady(f, `127.0.0.1:${a.port}`)
    const chats: Chat[] = []
    for (let i = 0; i < 8; i++) chats.push(await openChat(`ws://127.0.0.1:${f.httpPort}/chat`))
    for (const c of chats) send(c)
    await waitFor('echoes from A', () => chats.every((c) => c.got.length === 1), 5000)
    // Then the refuser (no sessions: least-streams prefers it) and C come up.
    const refuser = await startRefuser(t, rPort)
    const c = await startApp(t, cPort)
    await linksReady(f, `127.0.0.1:${rPort}`)
    await linksReady(f, `127.0.0.1:${cPort}`)
    const before = refuser.offered()
    const r = await a.server.drain({ maxMigrationsPerSec: 1000 })
    t.equal(r.handedOff, 8, 'A handed all 8 over')
    await waitFor('all 8 on C', () => c.sessions.size === 8, 8000)
    t.ok(refuser.offered() > before, `the refusing backend was offered ${refuser.offered() - before} of them first (least-streams prefers it)`)
    for (const x of chats) send(x)
    await waitFor('echo from C', () => chats.every((x) => x.got.length === 2), 5000)
    t.equal(chats.filter((x) => x.closed !== undefined).length, 0, 'no client was closed')
    t.same(chats.map((x) => inOrder(x)).filter((x) => x !== undefined), [], 'the state came through the refusal (the counter goes on)')
    for (const x of chats) x.ws.close()
  })

  t.test('the old backend dies after FREEZE, before HANDOFF: the session reopens elsewhere as lost, its client connected', async (t) => {
    // A's hook never answers, and A is killed while its sessions wait in FREEZE.
    const { a, b, chats } = await fleet(t, 5, { handoff: { timeoutMs: 60_000 } }, () => new Promise(() => {}))
    for (const c of chats) send(c)
    await waitFor('echoes', () => chats.every((c) => c.got.length === 1), 5000)
    void a.server.drain({ maxMigrationsPerSec: 1000 })
    await waitFor('every session frozen at A', () => [...a.server.sessions].every((s) => s.leaving), 5000)
    ;(a.server as unknown as { server: { close: () => void } }).server.close()
    for (const l of a.server.links()) l.terminate()
    await waitFor('all 5 reopened on B', () => b.sessions.size === 5, 8000)
    t.ok(b.arrivals.every((s) => s.handoff?.lost === true), 'each arrived with handoff.lost')
    for (const c of chats) send(c)
    await waitFor('echo from B', () => chats.every((c) => c.got.length === 2), 5000)
    t.equal(chats.filter((c) => c.closed !== undefined).length, 0, 'no client was closed')
    for (const c of chats) c.ws.close()
  })

  t.test('no other endpoint: the client is closed 1012 (reconnect), counted', async (t) => {
    const a = await startApp(t, 0)
    const f = await startFerry(t, config([`127.0.0.1:${a.port}`], { timeoutMs: 1000 }))
    await linksReady(f, `127.0.0.1:${a.port}`)
    const chats = [await openChat(`ws://127.0.0.1:${f.httpPort}/chat`), await openChat(`ws://127.0.0.1:${f.httpPort}/chat`)]
    await waitFor('on A', () => a.sessions.size === 2, 3000)
    const drained = a.server.drain({ deadlineMs: 8000 })
    await waitFor('clients closed', () => chats.every((c) => c.closed !== undefined), 10_000)
    t.ok(chats.every((c) => c.closed!.code === 1012), `closed 1012 (${chats.map((c) => `${c.closed!.code} ${c.closed!.reason}`).join(', ')})`)
    await drained
    t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="failed"}'), 2, 'counted as failed')
  })
})
