import t from 'tap'
import { startFerry, waitFor, adminStatus } from './helpers/ferry.js'
import { startMuxBackend, connect, type Client } from './helpers/mux.js'
import { startRedis } from './helpers/redis.js'

/**
 * The pod directory behind the console's pod list: pods sharing a Redis affinity store announce
 * themselves (sessions, draining) with a TTL; a Redis that goes away makes the list "unavailable"
 * without stalling the gateway, and it comes back with Redis.
 */

t.test('pods: two pods list each other with session counts; Redis down → unavailable, the gateway keeps serving; back → ok', async (t) => {
  const redis = await startRedis(t)
  const backend = await startMuxBackend(t, () => {})
  const pod = (id: string): Record<string, unknown> => ({
    gateway: { id },
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backend.port}`] } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    affinity: { store: 'redis', redis: { url: redis.url, podTtlMs: 1500 } },
  })
  const a = await startFerry(t, pod('pods-a'))
  const b = await startFerry(t, pod('pods-b'))
  const clients: Client[] = []
  t.teardown(() => { for (const c of clients) c.ws.terminate() })
  for (let i = 0; i < 3; i++) clients.push(await connect(`ws://127.0.0.1:${a.httpPort}/chat`))
  clients.push(await connect(`ws://127.0.0.1:${b.httpPort}/chat`))

  const sessionsOf = (st: any, id: string): number | undefined => st.pods?.pods?.find((p: any) => p.id === id)?.sessions
  const stA = await waitFor('pod-a lists pods-b with 1 session', async () => { const st = await adminStatus(a); return sessionsOf(st, 'pods-b') === 1 ? st : undefined })
  t.equal(stA.pods.state, 'ok', 'pod a: the list is read from Redis (state ok)')
  t.equal(sessionsOf(stA, 'pods-a'), 3, 'pod a lists itself with its 3 sessions')
  t.ok(stA.pods.pods.find((p: any) => p.id === 'pods-a').self, 'and marks its own row')
  const stB = await waitFor('pod-b lists pods-a with 3 sessions', async () => { const st = await adminStatus(b); return sessionsOf(st, 'pods-a') === 3 ? st : undefined })
  t.equal(sessionsOf(stB, 'pods-b'), 1, 'pod b lists itself with 1 session')

  await redis.kill()
  await waitFor('pod-a sees the pod list unavailable', async () => (await adminStatus(a)).pods.state === 'unavailable')
  t.pass('Redis down: the pod list is unavailable')
  const during = await adminStatus(a)
  t.equal(sessionsOf(during, 'pods-b'), 1, 'the last list is kept (pods-b with 1 session)')
  t.equal(during.state, 'running', 'the gateway keeps running')
  const extra = await connect(`ws://127.0.0.1:${a.httpPort}/chat`)
  clients.push(extra)
  t.pass('and takes new sessions while Redis is down')
  t.equal(sessionsOf(await adminStatus(a), 'pods-a'), 4, 'its own row stays current (4 sessions)')

  await redis.restart()
  await waitFor('pod-a lists both pods again', async () => { const st = await adminStatus(a); return st.pods.state === 'ok' && sessionsOf(st, 'pods-b') === 1 && sessionsOf(st, 'pods-a') === 4 }, 20_000)
  t.pass('Redis back: both pods announce again and the list is ok')

  t.equal(await b.stop(), 0, 'pod b stops (SIGTERM drain) with exit 0')
  await waitFor('pods-b gone from pod-a\'s list', async () => sessionsOf(await adminStatus(a), 'pods-b') === undefined)
  t.pass('a stopped pod leaves the list')
})
