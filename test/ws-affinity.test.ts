import t from 'tap'
import { startFerry, waitFor } from './helpers/ferry.js'
import { connect, startMuxBackend } from './helpers/mux.js'
import type { MuxServer } from '../src/backend/index.js'

t.test('affinity by key: the same key reaches the same backend endpoint from two different gateways; keys spread', async (t) => {
  const backends: MuxServer[] = []
  for (let i = 0; i < 3; i++) backends.push(await startMuxBackend(t, () => {}))
  const config = {
    upstreams: { chat: { protocol: 'mux', endpoints: backends.map((b) => `127.0.0.1:${b.address().port}`), pool: { links: 1 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', affinity: { key: 'query:uid' } }],
  }
  const a = await startFerry(t, config)
  const b = await startFerry(t, config)
  await waitFor('links', () => backends.every((x) => x.links().length === 2))
  const where = (uid: string): number => backends.findIndex((x) => [...x.sessions].some((s) => s.key === uid))
  const seen: number[] = []
  for (let k = 0; k < 30; k++) {
    const uid = `user-${k}`
    const c1 = await connect(`ws://127.0.0.1:${a.httpPort}/chat?uid=${uid}`)
    await waitFor('session', () => where(uid) !== -1)
    const first = where(uid)
    c1.ws.close()
    await waitFor('closed', () => where(uid) === -1)
    const c2 = await connect(`ws://127.0.0.1:${b.httpPort}/chat?uid=${uid}`)
    await waitFor('session', () => where(uid) !== -1)
    seen.push(first === where(uid) ? first : -1)
    c2.ws.close()
  }
  t.notOk(seen.includes(-1), 'every key reached the same endpoint through the other gateway')
  t.equal(new Set(seen).size, 3, `30 keys spread over all 3 endpoints (${[0, 1, 2].map((i) => seen.filter((x) => x === i).length).join(', ')})`)
  // Sessions without a key are balanced normally.
  const anon = await connect(`ws://127.0.0.1:${a.httpPort}/chat`)
  await waitFor('anonymous session', () => backends.some((x) => x.sessions.size === 1))
  const s = [...backends.find((x) => x.sessions.size === 1)!.sessions][0]!
  t.equal(s.key, s.id, 'a session without the key connects, and its key is its Ferry session id')
  anon.ws.close()
})
