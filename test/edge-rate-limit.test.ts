import t from 'tap'
import { createHash, createHmac, randomBytes } from 'node:crypto'
import { startBackend } from './helpers/backend.js'
import { startFerry, metric, waitFor } from './helpers/ferry.js'
import { send } from './helpers/http.js'
import { connect, startMuxBackend, upgradeStatus } from './helpers/mux.js'
import { Redis } from 'ioredis'
import { startRedis } from './helpers/redis.js'

// Rate limits at the edge: token buckets per client IP, per verified claim (tenant) and per header,
// in one pod or shared by every pod through a real redis-server; what happens when Redis is gone
// (fail open / fail closed); WebSocket upgrades and per-session message rates.

async function countingBackend (tt: Parameters<typeof startBackend>[0]): Promise<{ port: number, hits: () => number }> {
  let hits = 0
  const b = await startBackend(tt, (_req, res) => { hits++; res.end('ok') })
  return { port: b.port, hits: () => hits }
}

t.test('per IP and per tenant: a burst passes, the next gets 429 + Retry-After, another tenant is not starved', async (t) => {
  const be = await countingBackend(t)
  const keys = { alpha: 'alpha-key-' + randomBytes(8).toString('hex'), beta: 'beta-key-' + randomBytes(8).toString('hex') }
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [
      { match: { path: '/ip' }, upstream: 'api', rateLimits: ['per-ip'] },
      { match: { path: '/tenant' }, upstream: 'api', auth: 'partners', rateLimits: ['per-tenant'] },
    ],
    auth: { policies: { partners: { apiKey: { keys: [{ id: 'a', key: keys.alpha, claims: { tenant: 'alpha' } }, { id: 'b', key: keys.beta, claims: { tenant: 'beta' } }] } } } },
    // 0.2/s: the bucket cannot refill a token while the test runs through its requests.
    rateLimits: { policies: { 'per-ip': { key: 'ip', ratePerSec: 0.2, burst: 5 }, 'per-tenant': { key: 'claim:tenant', ratePerSec: 0.2, burst: 3 } } },
    logging: { accessLog: false },
  })
  const statuses: number[] = []
  for (let i = 0; i < 7; i++) statuses.push((await send(f, '/ip')).status)
  t.same(statuses, [200, 200, 200, 200, 200, 429, 429], 'five pass (the burst), then 429')
  const limited = await send(f, '/ip')
  t.equal(limited.code, 'FERRY_ERR_RATE_LIMITED')
  t.ok(Number(limited.headers['retry-after']) >= 1 && Number(limited.headers['retry-after']) <= 5, `Retry-After is the time to the next token at 0.2/s (${String(limited.headers['retry-after'])} s)`)
  t.equal(be.hits(), 5, 'the backend saw only the five')

  const alpha: number[] = []
  for (let i = 0; i < 6; i++) alpha.push((await send(f, '/tenant', { headers: { 'x-api-key': keys.alpha } })).status)
  t.same(alpha, [200, 200, 200, 429, 429, 429], 'tenant alpha: three, then 429')
  t.equal((await send(f, '/tenant', { headers: { 'x-api-key': keys.beta } })).status, 200, 'tenant beta still gets through while alpha is limited')
  t.equal((await send(f, '/tenant')).status, 401, 'no key: auth refuses before the tenant limit (no tenant to count)')
  t.equal(await metric(f, 'ferry_rate_limit_decisions_total{policy="per-tenant",decision="limited"}'), 3, 'limited decisions counted per policy')
  t.equal(await metric(f, 'ferry_rate_limit_decisions_total{policy="per-ip",decision="allowed"}'), 5, 'allowed decisions counted')
})

t.test('cluster-wide through Redis: two pods share one bucket; HMAC nonces are refused on the other pod; Redis gone → fail open or closed', async (t) => {
  const redis = await startRedis(t)
  const be = await countingBackend(t)
  const secret = randomBytes(32).toString('hex')
  const cfg = (failMode: 'open' | 'closed'): Record<string, unknown> => ({
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/t' }, upstream: 'api', rateLimits: ['tenant'] }, { match: { path: '/signed' }, upstream: 'api', auth: 'signed' }],
    auth: { policies: { signed: { hmac: { keys: [{ id: 'svc', secret }], replayStore: 'redis' } } } },
    rateLimits: { redis: { url: redis.url, timeoutMs: 100, failMode }, policies: { tenant: { key: 'header:x-tenant', ratePerSec: 0.1, burst: 6, scope: 'redis' } } },
    logging: { accessLog: false },
  })
  const a = await startFerry(t, cfg('open'))
  const b = await startFerry(t, cfg('open'))
  const c = await startFerry(t, cfg('closed'))
  const seq: number[] = []
  for (let i = 0; i < 8; i++) seq.push((await send(i % 2 === 0 ? a : b, '/t', { headers: { 'x-tenant': 'big' } })).status)
  t.same(seq, [200, 200, 200, 200, 200, 200, 429, 429], 'six across both pods (one shared bucket of 6), then 429 on either')
  t.equal((await send(c, '/t', { headers: { 'x-tenant': 'big' } })).status, 429, 'a third pod sees the same bucket')
  t.equal((await send(a, '/t', { headers: { 'x-tenant': 'small' } })).status, 200, 'another tenant has its own bucket')
  t.equal((await send(a, '/t')).status, 200, 'a request without the key is not limited by this policy')

  const signed = (): Record<string, string> => {
    const ts = String(Math.floor(Date.now() / 1000))
    const nonce = randomBytes(12).toString('base64url')
    const sha = createHash('sha256').digest('hex')
    return { 'x-ferry-key-id': 'svc', 'x-ferry-timestamp': ts, 'x-ferry-nonce': nonce, 'x-ferry-content-sha256': sha, 'x-ferry-signature': createHmac('sha256', secret).update(`FERRY-HMAC-SHA256\n${ts}\n${nonce}\nGET\n127.0.0.1\n/signed\n${sha}`).digest('hex'), host: '127.0.0.1' }
  }
  const h = signed()
  t.equal((await send(a, '/signed', { headers: h })).status, 200, 'a signed request passes on pod A')
  const replay = await send(b, '/signed', { headers: h })
  t.equal(replay.code, 'FERRY_ERR_AUTH_REPLAY', 'the same request replayed to pod B is refused (nonces in Redis)')

  await redis.kill()
  const open = await send(a, '/t', { headers: { 'x-tenant': 'big' } })
  t.equal(open.status, 200, 'Redis down, failMode open: the request goes through')
  const closed = await send(c, '/t', { headers: { 'x-tenant': 'big' } })
  t.equal(closed.status, 503, 'Redis down, failMode closed: 503')
  t.equal(closed.code, 'FERRY_ERR_RATE_LIMIT_UNAVAILABLE')
  t.equal((await send(a, '/signed', { headers: signed() })).code, 'FERRY_ERR_AUTH_UNAVAILABLE', 'the replay check cannot be skipped: signed requests get 503 while Redis is down')
  t.ok(await metric(a, 'ferry_rate_limit_decisions_total{policy="tenant",decision="fail_open"}') >= 1, 'fail_open counted')
  t.ok(await metric(c, 'ferry_rate_limit_decisions_total{policy="tenant",decision="fail_closed"}') >= 1, 'fail_closed counted')
  await redis.restart()
  // A fresh (empty) Redis: buckets start full once the pods have reconnected.
  await waitFor('pod C to use Redis again', async () => (await send(c, '/t', { headers: { 'x-tenant': 'big' } })).status === 200, 15000, 200)
  t.pass('pod C limits through Redis again after it came back')
  t.equal((await send(a, '/t', { headers: { 'x-tenant': 'other' } })).status, 200, 'pod A too')
})

t.test('cluster-wide with leaseTokens: three pods never admit more than the shared bucket, with a round trip per lease, not per request', async (t) => {
  const redis = await startRedis(t)
  const raw = new Redis(redis.url)
  t.teardown(() => { raw.disconnect() })
  const be = await countingBackend(t)
  const cfg = {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/t' }, upstream: 'api', rateLimits: ['tenant'] }],
    // 0.01/s: no token refills while the test runs; a bucket of 30 taken 10 at a time.
    rateLimits: { redis: { url: redis.url, timeoutMs: 500, failMode: 'closed' }, policies: { tenant: { key: 'header:x-tenant', ratePerSec: 0.01, burst: 30, scope: 'redis', leaseTokens: 10 } } },
    logging: { accessLog: false },
  }
  const pods = [await startFerry(t, cfg), await startFerry(t, cfg), await startFerry(t, cfg)]
  /** Script calls Redis has run (ioredis sends EVALSHA, EVAL once per script and connection). */
  const scriptCalls = async (): Promise<number> => {
    const info = await raw.info('commandstats')
    let n = 0
    for (const m of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) n += Number(m[1])
    return n
  }

  // One request per pod first: ioredis loads the script on its first take (EVALSHA, NOSCRIPT, EVAL).
  for (const p of pods) t.equal((await send(p, '/t', { headers: { 'x-tenant': 'warm' } })).status, 200, 'warm-up request admitted')
  const before = await scriptCalls()
  const statuses: number[][] = [[], [], []]
  for (let i = 0; i < 60; i++) statuses[i % 3]!.push((await send(pods[i % 3]!, '/t', { headers: { 'x-tenant': 'seq' } })).status)
  const allowed = statuses.map((s) => s.filter((x) => x === 200).length)
  t.same(allowed, [10, 10, 10], 'each pod spent the 10 tokens it leased: 30 of 60 admitted, exactly the shared bucket')
  t.ok(statuses.flat().every((s) => s === 200 || s === 429), 'the rest got 429')
  const sequential = await scriptCalls() - before
  t.ok(sequential <= 6, `Redis ran ${sequential} takes for 60 requests (a lease per pod, then one empty take per pod; ≤ 6)`)
  const limited = await send(pods[0]!, '/t', { headers: { 'x-tenant': 'seq' } })
  t.equal(limited.status, 429, 'a pod whose take found the bucket empty refuses locally until its next token is due')
  t.ok(Number(limited.headers['retry-after']) >= 50, `with Retry-After to that token (${String(limited.headers['retry-after'])} s at 0.01/s)`)
  t.equal(await scriptCalls() - before, sequential, 'without asking Redis again')

  // 40 requests at once on one pod: they wait for the take in flight instead of each sending one.
  const mid = await scriptCalls()
  const burst = await Promise.all(Array.from({ length: 40 }, async () => (await send(pods[1]!, '/t', { headers: { 'x-tenant': 'burst' } })).status))
  t.equal(burst.filter((s) => s === 200).length, 30, '40 concurrent requests: 30 admitted, the whole bucket and no more')
  const concurrent = await scriptCalls() - mid
  t.ok(concurrent <= 5, `${concurrent} takes for the 40 (3 leases of 10 and one empty take; ≤ 5)`)
  t.equal(be.hits(), 63, 'the backend saw the 3 + 30 + 30 admitted requests and nothing else')
  t.equal(await metric(pods[1]!, 'ferry_rate_limit_decisions_total{policy="tenant",decision="allowed"}'), 41, 'pod 2 counted its 1 + 10 + 30 allowed decisions')

  await redis.kill()
  const down = await Promise.all(Array.from({ length: 5 }, async () => await send(pods[2]!, '/t', { headers: { 'x-tenant': 'fresh' } })))
  t.same(down.map((r) => r.status), [503, 503, 503, 503, 503], 'Redis down, failMode closed: a key with no lease gets 503, the waiters too')
  t.equal(down[0]!.code, 'FERRY_ERR_RATE_LIMIT_UNAVAILABLE')
})

t.test('WebSocket: upgrades past a limit get 429 (ferry/client: 1013 + hint); a session past its message rate is closed 1008, others go on', async (t) => {
  const received: number[] = []
  let opened = 0
  const mux = await startMuxBackend(t, (s) => {
    const i = opened++
    received[i] = 0
    s.on('message', (d: Buffer) => { received[i]!++; s.send(d) })
  })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] } },
    routes: [
      { match: { path: '/chat' }, upstream: 'chat', rateLimits: ['handshakes'], websocket: { messageRate: { perSec: 1, burst: 5 } } },
    ],
    rateLimits: { policies: { handshakes: { key: 'ip', ratePerSec: 0.1, burst: 3 } } },
    logging: { accessLog: false },
  })
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const flood = await connect(url)
  const calm = await connect(url)
  await waitFor('both backend sessions', () => opened === 2)
  for (let i = 0; i < 20; i++) flood.ws.send(`m${i}`)
  const closed = await flood.closed
  t.equal(closed.code, 1008, 'the flooding session is closed 1008 (policy violation)')
  t.match(closed.reason, /messages\/s/, 'with a reason')
  await waitFor('the backend to see the flooding session end', () => received[0] === 5, 5000)
  t.equal(received[0], 5, 'the backend received exactly the burst of 5')
  calm.ws.send('hello')
  await calm.waitMessages(1)
  t.equal(calm.messages[0]!.data.toString(), 'hello', 'the other session is unaffected')

  const third = await connect(url)
  t.ok(third, 'a third handshake is within the burst of 3')
  const refused = await upgradeStatus(url)
  t.equal(refused.status, 429, 'the fourth handshake from this IP: 429')
  t.ok(Number(refused.headers['retry-after']) >= 1, 'with Retry-After')
  const ferryClient = await connect(url, ['ferry.v1'])
  const fc = await ferryClient.closed
  t.equal(fc.code, 1013, 'a ferry/client client is upgraded and closed 1013 (a browser cannot read a 429)')
  t.match(fc.reason, /^retry-after-ms=\d+$/, 'with the retry hint')
  t.equal(opened, 3, 'no backend session was opened for the refused handshakes')
  t.equal(await metric(f, 'ferry_ws_closed_total{mode="mux",reason="FERRY_ERR_WS_MESSAGE_RATE"}'), 1, 'the message-rate close is counted')
  calm.ws.close()
  third.ws.close()
})
