import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { createMuxServer, type MuxServer } from '../src/backend/index.js'
import { adminRequest } from './helpers/admin.js'
import { logged, metric, startFerry, waitFor, type FerryProcess, type Teardown } from './helpers/ferry.js'
import { connect, rawFerry, startMuxBackend, type Client } from './helpers/mux.js'
import { startRedis } from './helpers/redis.js'

/**
 * Version-aware routing for WebSocket sessions (docs/canary.md): ws passthrough and mux routes split by
 * label, sticky per key; the admin API moves new sessions at once and leaves open ones where they are;
 * labels announced by ferry/backend in a real Redis registry; and a ferry/client session resumes on its
 * endpoint after a split change sends its key elsewhere (no `wrong_upstream`, no fresh session).
 */

const TOKEN = 'canary-admin-token-0123456789'
const ENV = { FERRY_RESUME_SECRET: 'canary-resume-secret-0123456789abcdef' }

async function putSplit (f: FerryProcess, route: string, weights: Record<string, number>): Promise<number> {
  const r = await fetch(`${f.adminUrl}/routes/${route}/split`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ weights }) })
  await r.text()
  return r.status
}

/** A plain WebSocket backend that greets every session with its version. */
async function wsBackend (t: Teardown, version: string): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  wss.on('connection', (ws) => { ws.send(version) })
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate()
    await new Promise((resolve) => wss.close(resolve))
  })
  return `127.0.0.1:${(wss.address() as { port: number }).port}`
}

/** A ferry/backend that greets every session with its version and answers `who` with it. */
async function muxBackend (t: Teardown, version: string, register?: { redis: string }): Promise<MuxServer & { port: number }> {
  return await startMuxBackend(t, (s) => {
    s.send(version)
    s.on('message', (d) => { if (d.toString() === 'who') s.send(`${version}:${s.id}`) })
  }, register === undefined ? {} : { register: { redis: register.redis, service: 'chat', ttlMs: 2000, labels: { version } } })
}

/** The first message (the version greeting) of a session to `url`. */
async function greeting (url: string, headers: Record<string, string> = {}): Promise<{ client: Client, version: string }> {
  const ws = await connect(url, undefined, headers)
  await ws.waitMessages(1)
  return { client: ws, version: ws.messages[0]!.data.toString() }
}

/** Opens one session per key (`user-0` …), 50 at a time, and returns each one's version; sessions are closed after. */
async function versionsOf (url: (key: string) => string, n: number): Promise<string[]> {
  const out: string[] = new Array(n)
  let next = 0
  await Promise.all(Array.from({ length: 50 }, async () => {
    while (next < n) {
      const i = next++
      const g = await greeting(url(`user-${i}`))
      out[i] = g.version
      g.client.ws.close()
    }
  }))
  return out
}

const count = (a: string[], v: string): number => a.filter((x) => x === v).length

t.test('ws passthrough route split 90/10: the backend that got the session has the right label, sticky per key, pinned by header', async (t) => {
  const v1 = await wsBackend(t, 'v1')
  const v2 = await wsBackend(t, 'v2')
  const f = await startFerry(t, {
    upstreams: { live: { protocol: 'ws', endpoints: [{ address: v1, labels: { version: 'v1' } }, { address: v2, labels: { version: 'v2' } }] } },
    routes: [{ match: { path: '/live' }, upstream: 'live', affinity: { key: 'query:uid' }, split: { pin: 'header:x-canary', subsets: [{ labels: { version: 'v1' }, weight: 90 }, { labels: { version: 'v2' }, weight: 10 }] } }],
  })
  const url = (k: string): string => `ws://127.0.0.1:${f.httpPort}/live?uid=${k}`
  const first = await versionsOf(url, 300)
  const n2 = count(first, 'v2')
  t.equal(count(first, 'v1') + n2, 300, 'every one of 300 sessions greeted by v1 or v2')
  t.ok(n2 >= 15 && n2 <= 45, `300 keys at 90/10: v2 got ${n2} sessions (10% ± 5%: 15-45)`)
  const again = await versionsOf(url, 60)
  t.equal(again.filter((v, i) => v !== first[i]).length, 0, 'a key opening again lands on the same version (60 keys, 0 moved)')
  const v1Key = first.indexOf('v1')
  const pinned = await greeting(url(`user-${v1Key}`), { 'x-canary': 'v2' })
  t.equal(pinned.version, 'v2', 'x-canary: v2 sends a v1 key to the v2 backend')
  pinned.client.ws.close()
  t.equal(await metric(f, 'ferry_split_assigned_total{route="*/live",subset="v2",by="weight"}'), n2 + count(again, 'v2'), 'sessions counted per subset (by weight)')
})

t.test('mux route split: sessions follow the weights; an admin change moves new sessions at once, open ones stay', async (t) => {
  const b1 = await muxBackend(t, 'v1')
  const b2 = await muxBackend(t, 'v2')
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [{ address: `127.0.0.1:${b1.port}`, labels: { version: 'v1' } }, { address: `127.0.0.1:${b2.port}`, labels: { version: 'v2' } }], pool: { links: 1 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', affinity: { key: 'query:uid' }, split: { subsets: [{ labels: { version: 'v1' }, weight: 90 }, { labels: { version: 'v2' }, weight: 10 }] } }],
    admin: { token: TOKEN },
  })
  await waitFor('links to both backends', () => b1.links().length === 1 && b2.links().length === 1)
  const url = (k: string): string => `ws://127.0.0.1:${f.httpPort}/chat?uid=${k}`
  const first = await versionsOf(url, 200)
  const n2 = count(first, 'v2')
  t.ok(n2 >= 10 && n2 <= 30, `200 keys at 90/10: v2 got ${n2} sessions (10% ± 5%: 10-30)`)
  await waitFor('the 200 sessions closed', () => b1.sessions.size + b2.sessions.size === 0)
  // Sessions open before the change.
  const open = await Promise.all(Array.from({ length: 20 }, async (_, i) => await greeting(url(`user-${i}`))))
  const before = open.map((g) => g.version)
  t.equal(await putSplit(f, '*/chat', { v1: 0, v2: 100 }), 200, 'PUT /routes/*/chat/split 0/100 (with the token): 200')
  const after = await versionsOf(url, 100)
  t.equal(count(after, 'v2'), 100, 'after the change every new session goes to v2 (100 of 100)')
  for (const g of open) g.client.ws.send('who')
  await Promise.all(open.map(async (g) => { await g.client.waitMessages(2) }))
  const still = open.map((g) => g.client.messages[1]!.data.toString().split(':')[0])
  t.same(still, before, `the ${open.length} sessions opened before the change stay on their backend (${count(before, 'v1')} on v1), still open`)
  for (const g of open) g.client.ws.close()
  const st = JSON.parse((await adminRequest(f, '/status', { token: TOKEN })).body)
  t.match(st.routes.find((r: any) => r.name === '*/chat').split, { setBy: 'admin', key: 'query:uid', subsets: [{ name: 'v1', weight: 0 }, { name: 'v2', weight: 100 }] }, '/status: the split as the admin API set it, keyed by the route\'s affinity key')
})

t.test('mux split with rebalance: after 100/0 → 0/100 the open sessions move to v2 by backend handoff, paced, clients connected throughout', async (t) => {
  const arrivals: number[] = []
  const b1 = await muxBackend(t, 'v1')
  const b2 = await startMuxBackend(t, (s) => {
    if (s.handoff !== undefined) arrivals.push(Date.now())
    s.on('message', (d) => { if (d.toString() === 'who') s.send(`v2:${s.id}:${String(s.handoff?.from ?? '')}`) })
  })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [{ address: `127.0.0.1:${b1.port}`, labels: { version: 'v1' } }, { address: `127.0.0.1:${b2.port}`, labels: { version: 'v2' } }], pool: { links: 1 }, handoff: { maxPerSec: 20 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', affinity: { key: 'query:uid' }, split: { rebalance: true, subsets: [{ labels: { version: 'v1' }, weight: 100 }, { labels: { version: 'v2' }, weight: 0 }] } }],
    admin: { token: TOKEN },
  })
  await waitFor('links to both backends', () => b1.links().length === 1 && b2.links().length === 1)
  const N = 20
  const open = await Promise.all(Array.from({ length: N }, async (_, i) => await greeting(`ws://127.0.0.1:${f.httpPort}/chat?uid=user-${i}`)))
  t.equal(open.filter((g) => g.version === 'v1').length, N, `${N} sessions open on v1 (weight 100)`)
  const ids = [...b1.sessions].map((s) => s.id).sort()
  t.equal(await putSplit(f, '*/chat', { v1: 0, v2: 100 }), 200, 'split changed to 0/100 by the admin API')
  await waitFor(`all ${N} sessions on v2`, () => b2.sessions.size === N && b1.sessions.size === 0, 15_000)
  t.equal(open.filter((g) => g.client.ws.readyState === WebSocket.OPEN).length, N, `every one of the ${N} clients is still connected (0 closed)`)
  for (const g of open) g.client.ws.send('who')
  await Promise.all(open.map(async (g) => { await g.client.waitMessages(2) }))
  const answers = open.map((g) => g.client.messages[1]!.data.toString().split(':'))
  t.ok(answers.every((a) => a[0] === 'v2' && a[3] === String(b1.port)), 'each answers from v2, handed over from the v1 endpoint')
  t.same(answers.map((a) => a[1]).sort(), ids, 'as the same sessions (same ids)')
  const spread = Math.max(...arrivals) - Math.min(...arrivals)
  t.ok(spread >= 700, `paced at handoff.maxPerSec 20: the ${N} moves spread over ${spread} ms (≥ 700)`)
  t.equal(await metric(f, 'ferry_split_rebalanced_total{route="*/chat",subset="v2"}'), N, `ferry_split_rebalanced_total counts the ${N} moves`)
  t.equal(await metric(f, 'ferry_mux_handoffs_total{upstream="chat",outcome="moved"}'), N, 'and every handoff ended moved')
  for (const g of open) g.client.ws.close()
})

t.test('a draining v1 backend hands its sessions to the other v1 endpoint, not to v2 (the subset their key is assigned)', async (t) => {
  const v1a = await muxBackend(t, 'v1')
  const v1b = await muxBackend(t, 'v1')
  const v2 = await muxBackend(t, 'v2')
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [v1a, v1b, v2].map((b, i) => ({ address: `127.0.0.1:${b.port}`, labels: { version: i < 2 ? 'v1' : 'v2' } })), pool: { links: 1 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', affinity: { key: 'query:uid' }, split: { subsets: [{ labels: { version: 'v1' }, weight: 100 }, { labels: { version: 'v2' }, weight: 0 }] } }],
  })
  await waitFor('links to the three backends', () => [v1a, v1b, v2].every((b) => b.links().length === 1))
  const open = await Promise.all(Array.from({ length: 30 }, async (_, i) => await greeting(`ws://127.0.0.1:${f.httpPort}/chat?uid=user-${i}`)))
  const onA = v1a.sessions.size
  t.ok(onA >= 5 && v2.sessions.size === 0, `30 sessions on the v1 endpoints (${onA} on the first), none on v2`)
  await v1a.drain({ deadlineMs: 10_000, maxMigrationsPerSec: 1000 })
  await waitFor('the drained backend\'s sessions moved', () => v1a.sessions.size === 0 && v1b.sessions.size === 30)
  t.equal(v2.sessions.size, 0, `all ${onA} handed-off sessions went to the other v1 endpoint (0 to v2, whose weight is 0)`)
  t.equal(open.filter((g) => g.client.ws.readyState === WebSocket.OPEN).length, 30, 'and every client stayed connected')
  for (const g of open) g.client.ws.close()
})

t.test('registry: ferry/backend announces its labels; a subset without endpoints falls back (counted) until one registers', async (t) => {
  const redis = await startRedis(t)
  const b1 = await muxBackend(t, 'v1', { redis: redis.url })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', registry: { redis: redis.url, service: 'chat', scanIntervalMs: 500 }, pool: { links: 1 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', split: { key: 'query:uid', subsets: [{ labels: { version: 'v1' }, weight: 50 }, { labels: { version: 'v2' }, weight: 50 }] } }],
  })
  t.ok(await logged(f, (l) => l.msg?.toString().startsWith('route split of a registry upstream')), 'the gateway warns that a registry upstream\'s labels are checked only as backends register')
  await waitFor('v1 linked', () => b1.links().length === 1)
  const url = (k: string): string => `ws://127.0.0.1:${f.httpPort}/chat?uid=${k}`
  const early = await versionsOf(url, 60)
  t.equal(count(early, 'v1'), 60, 'with only v1 registered, all 60 sessions go to v1')
  const fallbacks = await metric(f, 'ferry_split_fallbacks_total{route="*/chat",subset="v2",reason="no_endpoints"}')
  t.ok(fallbacks >= 15 && fallbacks === 60 - await metric(f, 'ferry_split_assigned_total{route="*/chat",subset="v1",by="weight"}'), `v2's share (${fallbacks} of 60) counted as fallbacks: no endpoint carries version=v2`)
  const b2 = await muxBackend(t, 'v2', { redis: redis.url })
  await waitFor('v2 linked', () => b2.links().length === 1)
  const st = JSON.parse((await adminRequest(f, '/status')).body)
  t.match(st.upstreams.find((u: any) => u.name === 'chat').endpoints.map((e: any) => e.labels).sort((x: any, y: any) => x.version < y.version ? -1 : 1), [{ version: 'v1' }, { version: 'v2' }], '/status lists both registered endpoints with the labels they announced')
  const later = await versionsOf(url, 200)
  const n2 = count(later, 'v2')
  t.ok(n2 >= 80 && n2 <= 120, `once v2 registered, 200 keys at 50/50: v2 got ${n2} (50% ± 10%: 80-120)`)
  t.equal(count(later.slice(0, 60), 'v2'), fallbacks, `of the first 60 keys, exactly the ${fallbacks} that fell back now reach v2`)
  t.throws(() => createMuxServer({ port: 0, register: { redis: redis.url, service: 'chat', labels: { version: 'v 2' } } }), /register\.labels/, 'ferry/backend refuses malformed labels at createMuxServer (nothing listens)')
})

t.test('a ferry/client session resumes on its endpoint through another pod after a split change sends its key elsewhere', async (t) => {
  const b1 = await muxBackend(t, 'v1')
  const b2 = await muxBackend(t, 'v2')
  const cfg = {
    upstreams: { chat: { protocol: 'mux', endpoints: [{ address: `127.0.0.1:${b1.port}`, labels: { version: 'v1' } }, { address: `127.0.0.1:${b2.port}`, labels: { version: 'v2' } }], pool: { links: 1 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', split: { subsets: [{ labels: { version: 'v1' }, weight: 100 }, { labels: { version: 'v2' }, weight: 0 }] } }],
    admin: { token: TOKEN },
  }
  // Two pods with their own (memory) affinity stores: pod B has no record of where the session lives.
  const a = await startFerry(t, { ...cfg, gateway: { id: 'pod-a' } }, { env: ENV })
  const b = await startFerry(t, { ...cfg, gateway: { id: 'pod-b' } }, { env: ENV })
  await waitFor('links of both pods', () => b1.links().length === 2 && b2.links().length === 2)
  const s = await rawFerry(`ws://127.0.0.1:${a.httpPort}/chat`)
  t.equal(s.welcome.resumed, false, 'a new ferry/client session on pod A')
  const session = [...b1.sessions][0]
  t.ok(session !== undefined && b2.sessions.size === 0, 'on the v1 backend (weight 100)')
  s.client.ws.terminate()
  await waitFor('parked', () => session!.parked)
  // The rollout: v2 takes every new session on both pods.
  t.equal(await putSplit(a, '*/chat', { v1: 0, v2: 100 }), 200, 'pod A: split 0/100')
  t.equal(await putSplit(b, '*/chat', { v1: 0, v2: 100 }), 200, 'pod B: split 0/100')
  const fresh = await rawFerry(`ws://127.0.0.1:${b.httpPort}/chat`)
  await waitFor('the fresh session on v2', () => b2.sessions.size === 1)
  t.pass('a new session now goes to v2')
  fresh.client.ws.close()
  // The client reconnects through pod B with its token.
  const r = await rawFerry(`ws://127.0.0.1:${b.httpPort}/chat`, `ferry.r.${String(s.welcome.token)}.1.0`)
  t.match(r.welcome, { resumed: true, session: session!.id }, 'it resumes the same session through pod B (not wrong_upstream, not a fresh session)')
  t.equal(r.welcome.reason, undefined, 'with no refusal reason')
  r.client.ws.send('mwho')
  await waitFor('the answer', () => r.client.messages.some((m) => m.data.toString().startsWith('mv1:')))
  t.pass('and its messages still reach the v1 backend that holds it')
  t.equal(await metric(b, 'ferry_resume_attempts_total{upstream="chat",outcome="resumed"}'), 1, 'pod B counts one resume')
  t.equal(await metric(b, 'ferry_resume_attempts_total{upstream="chat",outcome="wrong_upstream"}'), 0, 'and no wrong_upstream refusal')
  r.client.ws.close()
})
