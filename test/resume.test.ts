import t from 'tap'
import WebSocket from 'ws'
import type { MuxServer, Session } from '../src/backend/index.js'
import { FerryClient } from '../src/client/index.js'
import { metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { connect, rawFerry, startMuxBackend } from './helpers/mux.js'
import { startRedis, type RedisServer } from './helpers/redis.js'
import { startSwitch } from './helpers/switch.js'

/**
 * Resumable sessions end to end: real redis-server, three ferry/backend endpoints, two or three Ferry
 * processes behind a loopback TCP switch (a Kubernetes Service stand-in), ferry/client on `ws`.
 */

const SECRET = 'resume-test-secret-0123456789abcdef-xyz'
const ENV = { FERRY_RESUME_SECRET: SECRET }
const N = 10_000

/** What the backend application saw, across all endpoints. */
interface AppLog {
  sessions: Session[]
  closes: Array<{ id: string, code: number, reason: string }>
  detaches: number
  resumes: number
  /** Client message numbers each session received, in order. */
  got: Map<string, number[]>
}

async function startBackends (t: Teardown, n: number, log: AppLog, opts: { windowMs?: number, pumpTo?: number } = {}): Promise<Array<MuxServer & { port: number }>> {
  const out: Array<MuxServer & { port: number }> = []
  for (let i = 0; i < n; i++) {
    out.push(await startMuxBackend(t, (s) => {
      log.sessions.push(s)
      const got: number[] = []
      log.got.set(s.id, got)
      s.on('message', (d) => {
        const text = d.toString()
        if (text.startsWith('c:')) got.push(Number(text.slice(2)))
        else if (text === 'pump' && opts.pumpTo !== undefined) pump((k) => s.send(`s:${k}`), opts.pumpTo, () => s.readyState === 1)
        else s.send(`echo:${text}`)
      })
      s.on('detach', () => { log.detaches++ })
      s.on('resume', () => { log.resumes++ })
      s.on('close', (code, reason) => { log.closes.push({ id: s.id, code, reason }) })
    }, { resume: { windowMs: opts.windowMs ?? 30_000 } }))
  }
  return out
}

function newLog (): AppLog {
  return { sessions: [], closes: [], detaches: 0, resumes: 0, got: new Map() }
}

/** Sends 1..n through `send`, 50 per 5 ms (about 2 s for 10,000), while `alive`. */
function pump (send: (k: number) => unknown, n: number, alive: () => boolean): Promise<void> {
  let k = 0
  return new Promise((resolve) => {
    const tick = (): void => {
      if (!alive()) { resolve(); return }
      for (let i = 0; i < 50 && k < n; i++) send(++k)
      if (k >= n) { resolve(); return }
      setTimeout(tick, 5)
    }
    tick()
  })
}

/** True when `seq` is exactly 1..n (the first problem otherwise). */
function exactly (seq: number[], n: number): string | true {
  if (seq.length !== n) return `${seq.length} messages, expected ${n}`
  for (let i = 0; i < n; i++) if (seq[i] !== i + 1) return `message #${i + 1} is ${seq[i]}`
  return true
}

function podConfig (id: string, backends: MuxServer[], redis: RedisServer | undefined, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    gateway: { id },
    upstreams: { chat: { protocol: 'mux', endpoints: backends.map((b) => `127.0.0.1:${b.address().port}`), pool: { links: 2 }, reconnect: { minDelayMs: 50, maxDelayMs: 200 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    ...(redis !== undefined ? { affinity: { store: 'redis', redis: { url: redis.url } } } : {}),
    ...extra,
  }
}

function ferryClient (t: Teardown, url: string, opts: Record<string, unknown> = {}): { c: FerryClient, got: number[], events: string[] } {
  const c = new FerryClient(url, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 20, maxDelayMs: 200 }, ...opts })
  const got: number[] = []
  const events: string[] = []
  c.on('message', (data: string | Uint8Array) => {
    const text = typeof data === 'string' ? data : Buffer.from(data).toString()
    if (text.startsWith('s:')) got.push(Number(text.slice(2)))
  })
  for (const e of ['open', 'reconnecting', 'reset', 'close'] as const) {
    c.on(e, (info: unknown) => { events.push(`${e}:${JSON.stringify(info)}`) })
  }
  c.on('error', () => {})
  t.teardown(() => { c.close() })
  return { c, got, events }
}

type Cut = 'links of pod A cut' | 'pod A killed (SIGKILL)' | 'Redis restarted, then pod A stopped (SIGTERM)'

for (const cut of ['links of pod A cut', 'pod A killed (SIGKILL)', 'Redis restarted, then pod A stopped (SIGTERM)'] as Cut[]) {
  t.test(`resume across ${cut}: 10,000 messages each way, none lost, duplicated or reordered; the application saw one session and no close`, async (t) => {
    const redis = await startRedis(t)
    const log = newLog()
    const backends = await startBackends(t, 3, log, { pumpTo: N })
    const a = await startFerry(t, podConfig('pod-a', backends, redis), { env: ENV })
    const b = await startFerry(t, podConfig('pod-b', backends, redis), { env: ENV })
    await waitFor('links of both pods', () => backends.every((x) => x.links().length === 4))
    const sw = await startSwitch(t, a.httpPort)
    const { c, got, events } = ferryClient(t, sw.url('/chat'))
    await waitFor('welcome', () => c.state === 'open' && c.resumable)
    c.send('pump')
    const sending = pump((k) => { c.send(`c:${k}`) }, N, () => c.state !== 'closed')
    await waitFor('a third of the traffic', () => got.length >= N / 3)
    const session = log.sessions[0]!
    const home = backends.find((x) => x.sessions.has(session))!
    if (cut === 'links of pod A cut') {
      for (const x of backends) for (const l of x.links()) if (l.gateway === 'pod-a') l.terminate()
    } else if (cut === 'pod A killed (SIGKILL)') {
      sw.target = b.httpPort
      a.child.kill('SIGKILL')
    } else {
      await redis.kill()
      await redis.restart()
      sw.target = b.httpPort
      await a.stop()
    }
    await sending
    await waitFor('all messages both ways', () => got.length >= N && (log.got.get(session.id)?.length ?? 0) >= N, 30_000)
    await new Promise((r) => setTimeout(r, 200)) // anything duplicated would arrive now
    t.equal(exactly(got, N), true, `the client got backend messages 1..${N} exactly once, in order`)
    t.equal(exactly(log.got.get(session.id)!, N), true, `the application got client messages 1..${N} exactly once, in order`)
    t.equal(log.sessions.length, 1, 'the application saw one session (no new session after the reconnect)')
    t.same(log.closes, [], 'and no close')
    // A drained pod (SIGTERM) migrates the session: the client may resume through pod B before pod A's
    // DETACH reaches the backend (then the old stream is closed 4001, no park), or after (parked first).
    const drained = cut.includes('SIGTERM')
    t.ok(log.resumes >= 1 && (drained || log.detaches >= 1), `the session was ${drained ? 'moved' : 'parked and resumed'} (${log.detaches} detach, ${log.resumes} resume)`)
    t.ok(home.sessions.has(session) && session.readyState === 1, 'on the same backend endpoint, still open')
    t.ok(events.some((e) => e.startsWith('open:{"resumed":true')), 'the client was told it resumed')
    t.notOk(events.some((e) => e.startsWith('reset')), 'and never got a fresh session')
    const via = cut === 'links of pod A cut' ? a : b
    t.ok(await metric(via, 'ferry_resume_attempts_total{upstream="chat",outcome="resumed"}') >= 1, `counted as resumed on ${cut === 'links of pod A cut' ? 'pod A' : 'pod B'}`)
    c.close()
    await waitFor('the application saw the normal close', () => log.closes.length === 1)
    t.equal(log.closes[0]!.code, 1000, 'a client close() ends the session for the application (1000)')
  })
}

t.test('Redis down: new sessions still connect, and every pod picks the same backend for a key', async (t) => {
  const redis = await startRedis(t)
  const log = newLog()
  const backends = await startBackends(t, 3, log)
  const cfg = (id: string): Record<string, unknown> => ({ ...podConfig(id, backends, redis), routes: [{ match: { path: '/chat' }, upstream: 'chat', affinity: { key: 'query:uid' } }] })
  const a = await startFerry(t, cfg('pod-a'), { env: ENV })
  const b = await startFerry(t, cfg('pod-b'), { env: ENV })
  await waitFor('links', () => backends.every((x) => x.links().length === 4))
  await redis.kill()
  const where = (uid: string): number => backends.findIndex((x) => [...x.sessions].some((s) => s.key === uid))
  const agree: boolean[] = []
  const used = new Set<number>()
  for (let k = 0; k < 12; k++) {
    const uid = `user-${k}`
    const ca = await connect(`ws://127.0.0.1:${a.httpPort}/chat?uid=${uid}`)
    const cb = await connect(`ws://127.0.0.1:${b.httpPort}/chat?uid=${uid}`)
    await waitFor('both sessions', () => backends.reduce((n, x) => n + [...x.sessions].filter((s) => s.key === uid).length, 0) === 2)
    const idx = backends.map((x) => [...x.sessions].filter((s) => s.key === uid).length)
    agree.push(idx.includes(2))
    used.add(where(uid))
    ca.ws.close()
    cb.ws.close()
  }
  t.notOk(agree.includes(false), '12 keys: both pods put each key on the same endpoint with Redis down')
  t.ok(used.size >= 2, `the keys still spread (${used.size} endpoints)`)
  // A ferry/client session connects too.
  const { c } = ferryClient(t, `ws://127.0.0.1:${a.httpPort}/chat`)
  await waitFor('ferry/client session with Redis down', () => c.state === 'open' && c.resumable)
  t.pass('a ferry/client session opened with Redis down')
  t.equal(await metric(a, 'ferry_affinity_fallback{store="redis"}'), 1, 'pod A reports the fallback')
  await redis.restart()
  await waitFor('pod A back on Redis', async () => await metric(a, 'ferry_affinity_fallback{store="redis"}') === 0, 15_000)
  t.pass('and returns to Redis when it is back')
})

t.test('bad resume input: forged, altered, expired, foreign and replayed tokens, concurrent resumes, lying acks', async (t) => {
  const log = newLog()
  const backends = await startBackends(t, 1, log)
  const a = await startFerry(t, podConfig('pod-a', backends, undefined, {
    upstreams: {
      chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backends[0]!.port}`] },
      other: { protocol: 'mux', endpoints: [`127.0.0.1:${backends[0]!.port}`] },
    },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/other' }, upstream: 'other' }],
    // Long enough for the steps between a token's issue and its replay (they start another pod: 4 s was
    // seen to pass on a loaded machine running two test files at once), short enough to wait out.
    resume: { tokenTtlMs: 10_000 },
  }), { env: ENV })
  const url = `ws://127.0.0.1:${a.httpPort}/chat`
  const first = await rawFerry(url)
  t.equal(first.welcome.resumed, false, 'a new ferry.v1 session is welcomed as fresh')
  t.equal(first.client.ws.protocol, 'ferry.v1', 'with the ferry.v1 subprotocol')
  const victim = log.sessions[0]!
  first.client.ws.send('mhello')
  await waitFor('echo', () => first.client.messages.some((m) => m.data.toString() === 'mecho:hello'))
  first.client.ws.terminate()
  await waitFor('parked', () => victim.parked)

  // Altered: one character of the sealed token changed.
  const tok: string = first.welcome.token
  const altered = tok.slice(0, 20) + (tok[20] === 'A' ? 'B' : 'A') + tok.slice(21)
  const r1 = await rawFerry(url, `ferry.r.${altered}.1.1`)
  t.match(r1.welcome, { resumed: false, reason: 'invalid' }, 'an altered token is refused (invalid): fresh session')
  // Forged: well-formed, sealed with another secret (a pod that does not share it).
  const other = await startFerry(t, podConfig('pod-x', backends, undefined), { env: { FERRY_RESUME_SECRET: 'another-secret-another-secret-another-secret' } })
  const x = await rawFerry(`ws://127.0.0.1:${other.httpPort}/chat`)
  const r2 = await rawFerry(url, `ferry.r.${String(x.welcome.token)}.0.0`)
  t.match(r2.welcome, { resumed: false, reason: 'invalid' }, 'a token sealed with another secret is refused (invalid)')
  // Foreign: a genuine token of another upstream.
  const o = await rawFerry(`ws://127.0.0.1:${a.httpPort}/other`)
  const r3 = await rawFerry(url, `ferry.r.${String(o.welcome.token)}.0.0`)
  t.match(r3.welcome, { resumed: false, reason: 'wrong_upstream' }, 'a token of another upstream is refused (wrong_upstream)')
  for (const r of [r1, r2, r3]) t.not(r.welcome.session, victim.id, 'none of them reached the parked session')
  t.ok(victim.parked && victim.readyState === 1, 'which is still parked, untouched')

  // Two clients resume the same token at once: the first OPEN the backend reads wins, the other is stale.
  const both = await Promise.all([rawFerry(url, `ferry.r.${tok}.1.1`), rawFerry(url, `ferry.r.${tok}.1.1`)])
  const won = both.filter((r) => r.welcome.resumed === true)
  const lost = both.filter((r) => r.welcome.resumed === false)
  t.equal(won.length, 1, 'exactly one of two simultaneous resumes wins')
  t.equal(lost[0]?.welcome.reason, 'stale', 'the other gets a fresh session (stale)')
  t.equal(won[0]!.welcome.session, victim.id, 'the winner continues the session')
  // Replayed: the old token again, now that the session moved on.
  const r4 = await rawFerry(url, `ferry.r.${tok}.1.1`)
  t.match(r4.welcome, { resumed: false, reason: 'stale' }, 'a replayed (used) token is refused (stale)')
  t.equal(won[0]!.client.ws.readyState, WebSocket.OPEN, 'and does not disturb the session it no longer owns')

  // A client acknowledging messages it never got is closed 1008, its backend session too.
  won[0]!.client.ws.send('a999')
  const closed = await won[0]!.client.closed
  t.equal(closed.code, 1008, 'a lying ack closes the client 1008')
  await waitFor('application close', () => log.closes.some((c) => c.id === victim.id))
  t.match(log.closes.find((c) => c.id === victim.id)!.reason, /never sent/, 'and the application hears why')
  t.equal(await metric(a, 'ferry_resume_client_errors_total{upstream="chat",code="FERRY_ERR_RESUME_BAD_ACK"}'), 1, 'counted')
  // An unknown message kind is a protocol error (1002).
  const k = await rawFerry(url)
  k.client.ws.send('zzz')
  t.equal((await k.client.closed).code, 1002, 'an unknown ferry.v1 message kind closes the client 1002')

  // Expired: wait out the 10 s token TTL.
  const e = await rawFerry(url)
  e.client.ws.terminate()
  await new Promise((r) => setTimeout(r, 10_200))
  const r5 = await rawFerry(url, `ferry.r.${String(e.welcome.token)}.0.0`)
  t.match(r5.welcome, { resumed: false, reason: 'expired' }, 'an expired token is refused (expired)')
  t.ok(await metric(a, 'ferry_resume_attempts_total{upstream="chat",outcome="invalid"}') >= 2, 'refusals are counted by reason')
  t.ok(await metric(a, 'ferry_resume_attempts_total{upstream="chat",outcome="stale"}') >= 2, 'stale ones too')
  for (const r of [r1, r2, r3, r4, r5, x, o, ...both, e, k, first]) r.client.ws.terminate()
})

t.test('resume fails cleanly: a backend restarted while the session was parked, and a resume window that passed', async (t) => {
  const log = newLog()
  const backends = await startBackends(t, 1, log, { windowMs: 400 })
  const port = backends[0]!.port
  const a = await startFerry(t, podConfig('pod-a', backends, undefined), { env: ENV })
  const sw = await startSwitch(t, a.httpPort)
  const { c, events } = ferryClient(t, sw.url('/chat'))
  await waitFor('open', () => c.state === 'open' && c.resumable)
  const firstId = c.session
  // The window passes while the client cannot reach any gateway.
  sw.target = 1 // nothing listens on port 1: reconnects fail until the target is back
  for (const x of backends) for (const l of x.links()) l.terminate()
  await waitFor('the window passed', () => log.closes.length === 1, 5000)
  t.match(log.closes[0]!, { code: 1006, reason: /did not resume within 400 ms/ }, 'the application gets close with the reason once the window passed')
  sw.target = a.httpPort
  await waitFor('a fresh session', () => events.some((e) => e.startsWith('reset')), 10_000)
  t.ok(events.find((e) => e.startsWith('reset'))!.includes('unknown'), 'the client is told its session is gone (reset: unknown)')
  t.not(c.session, firstId, 'and continues in a new session')
  t.equal(log.sessions.length, 2, 'which the application sees as a new session')

  // A backend restarted while the session is parked: the parked session is gone; resume → fresh session.
  await waitFor('open again', () => c.state === 'open')
  const before = events.filter((e) => e.startsWith('reset')).length
  await backends[0]!.close()
  const log2 = newLog()
  const restarted = await startMuxBackend(t, (s) => { log2.sessions.push(s) }, { port, resume: { windowMs: 30_000 } })
  void restarted
  await waitFor('fresh session on the restarted backend', () => events.filter((e) => e.startsWith('reset')).length > before && log2.sessions.length === 1, 15_000)
  t.pass('after a backend restart the client gets a fresh session on the new process, told by a reset')
})

t.test('topic messages reach ferry/client sessions (marked as topic, not numbered), also those published before the client is upgraded', async (t) => {
  // The backend subscribes and publishes in its 'session' handler: for a resumable session that is
  // before the gateway upgraded the client (it waits for the ACCEPT), so the message must be queued.
  const backend = await startMuxBackend(t, (s, server) => {
    s.subscribe('room')
    s.send('direct')
    server.publish('room', `joined ${s.query.get('name') ?? ''}`)
  })
  const a = await startFerry(t, podConfig('pod-a', [backend], undefined), { env: ENV })
  const url = `ws://127.0.0.1:${a.httpPort}/chat`
  const got: Array<[string, boolean]> = []
  const c = new FerryClient(`${url}?name=ann`, { WebSocket: WebSocket as never })
  c.on('message', (d: string | Uint8Array, info: { topic: boolean }) => { got.push([String(d), info.topic]) })
  c.on('error', () => {})
  t.teardown(() => { c.close() })
  await waitFor('ann gets her own join and the direct message', () => got.length >= 2)
  t.same(got.slice(0, 2), [['direct', false], ['joined ann', true]], 'the direct message, then the topic message published before the upgrade (marked topic)')
  const plain = await connect(`${url}?name=bob`)
  await waitFor('bob joined', () => got.length >= 3 && plain.messages.length >= 2)
  t.same(got[2], ['joined bob', true], 'a later topic message reaches the ferry/client session')
  t.same(plain.messages.map((m) => m.data.toString()), ['direct', 'joined bob'], 'and the plain session gets the same topic message without the kind byte')
  plain.ws.close()
  await waitFor('bob gone', () => backend.sessions.size === 1)
  // Ann's link is cut: she resumes on the other link (or a new one); her subscription moves with her.
  const ann = [...backend.sessions][0]!
  const resumed = new Promise<void>((resolve) => { ann.once('resume', () => { resolve() }) })
  backend.links().find((l) => l.id === ann.linkId)!.terminate()
  await resumed
  t.equal(backend.publish('room', 'after resume'), 1, 'after the resume the topic is counted on exactly one link (the new one)')
  await waitFor('ann gets the topic message after her resume', () => got.some(([d]) => d === 'after resume'))
  t.pass('a topic message published after the resume reaches her')
  c.close()
  await waitFor('ann closed', () => backend.sessions.size === 0)
  t.equal(backend.publish('room', 'nobody'), 0, 'with every subscriber gone, publish sends nothing')
})

t.test('a backend that closes a resumable session acknowledges what it processed first: reset.unsent holds only what never reached it', async (t) => {
  const processed: string[] = []
  const backend = await startMuxBackend(t, (s) => {
    s.on('message', (d) => {
      processed.push(d.toString())
      s.send(`echo ${d.toString()}`)
      // As drain() does to ferry/client sessions: closed 1012 right after processing, within the 100 ms ack timer.
      if (d.toString() === 'm2') s.close(1012, 'backend restarting; reconnect')
    })
  })
  const f = await startFerry(t, { upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backend.port}`], pool: { links: 1 } } }, routes: [{ match: { path: '/chat' }, upstream: 'chat' }] }, { env: ENV })
  const c = new FerryClient(`ws://127.0.0.1:${f.httpPort}/chat`, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 50, maxDelayMs: 100 } })
  t.teardown(() => { c.close() })
  await new Promise((resolve) => c.once('open', resolve))
  const reset = new Promise<{ unsent: unknown[] }>((resolve) => c.once('reset', resolve as never))
  c.send('m1')
  c.send('m2')
  const r = await reset
  t.same(processed, ['m1', 'm2'], 'the backend processed m1 and m2')
  t.same(r.unsent, [], 'so reset.unsent is empty: resending it duplicates nothing')
})
