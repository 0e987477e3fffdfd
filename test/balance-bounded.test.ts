import { connect as dial, createServer, type Socket } from 'node:net'
import t from 'tap'
import { Balancer, hashKey, type Balanced } from '../src/routing/balancer.js'
import { adminStatus, startFerry } from './helpers/ferry.js'

class Ep implements Balanced {
  inflight = 0
  down = false
  constructor (readonly address: string) {}
  acceptsAt (): boolean { return !this.down }
}

/** 60% of arrivals carry one hot key, the rest spread over 500 keys. */
function keys (n: number): number[] {
  return Array.from({ length: n }, (_, i) => hashKey(i % 5 < 3 ? 'hot-user' : `user-${i % 500}`))
}

t.test('hash with boundedLoadFactor: no endpoint ever carries more than factor × the average (rounded up)', async (t) => {
  for (const factor of [1.25, 2]) {
    const eps = ['a:1', 'b:1', 'c:1', 'd:1'].map((a) => new Ep(a))
    const b = new Balancer(eps, 'hash', { boundedLoadFactor: factor })
    let worst = 0
    let total = 0
    for (const k of keys(2000)) {
      const e = b.pick(Infinity, 0, undefined, k)!
      e.inflight++
      total++
      const max = Math.max(...eps.map((x) => x.inflight))
      worst = Math.max(worst, max - Math.ceil(factor * total / eps.length))
    }
    t.ok(worst <= 0, `factor ${factor}: max load ≤ ⌈${factor} × average⌉ after every one of 2000 placements (worst excess ${worst}); final ${eps.map((e) => e.inflight).join(', ')}`)
  }
  const eps = ['a:1', 'b:1', 'c:1', 'd:1'].map((a) => new Ep(a))
  const unbounded = new Balancer(eps, 'hash')
  for (const k of keys(2000)) unbounded.pick(Infinity, 0, undefined, k)!.inflight++
  t.ok(Math.max(...eps.map((e) => e.inflight)) > 1.25 * 500, `without a bound the hot key's endpoint takes ${Math.max(...eps.map((e) => e.inflight))} of 2000 (the test would catch a bound that does nothing)`)
})

t.test('bounded load keeps rendezvous order: below the bound a key keeps its endpoint; over it, the next in the key\'s order', async (t) => {
  const eps = ['a:1', 'b:1', 'c:1', 'd:1'].map((a) => new Ep(a))
  const plain = new Balancer(eps, 'hash')
  const bounded = new Balancer(eps, 'hash', { boundedLoadFactor: 1.25 })
  const ks = Array.from({ length: 500 }, (_, i) => hashKey(`k${i}`))
  t.ok(ks.every((k) => plain.pick(Infinity, 0, undefined, k) === bounded.pick(Infinity, 0, undefined, k)), 'with no load, bounded and plain hashing agree for 500 keys')
  const k = ks[0]!
  const home = plain.pick(Infinity, 0, undefined, k)!
  const second = plain.pick(Infinity, 0, home, k)!
  home.inflight = 10 // average with the new one: 11/4; bound ⌈1.25 × 11/4⌉ = 4
  t.equal(bounded.pick(Infinity, 0, undefined, k), second, 'an overloaded home passes the key to the next endpoint in its rendezvous order')
  t.equal(plain.pick(Infinity, 0, undefined, k), home, 'plain hashing does not')
  for (const e of eps) e.inflight = 10
  t.ok(bounded.pick(Infinity, 0, undefined, k) === home, 'evenly loaded (all at 10, under the bound of 13): the home again')
})

t.test('tcp upstream with balance: hash and boundedLoadFactor spreads one client IP; without it one endpoint takes all', async (t) => {
  const backends = await Promise.all([0, 1, 2, 3].map(async () => {
    let open = 0
    const sockets = new Set<Socket>()
    const server = createServer((s) => { open++; sockets.add(s); s.on('error', () => {}); s.on('close', () => { open--; sockets.delete(s) }) })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(async () => { for (const s of sockets) s.destroy(); await new Promise((resolve) => server.close(resolve)) })
    return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, open: () => open }
  }))
  const f = await startFerry(t, {
    upstreams: {
      bounded: { protocol: 'tcp', endpoints: [backends[0]!.address, backends[1]!.address], balance: 'hash', boundedLoadFactor: 1.5 },
      plain: { protocol: 'tcp', endpoints: [backends[2]!.address, backends[3]!.address], balance: 'hash' },
    },
    listen: { tcp: [{ name: 'bounded', host: '127.0.0.1', port: 0, upstream: 'bounded' }, { name: 'plain', host: '127.0.0.1', port: 0, upstream: 'plain' }] },
  })
  const st = await adminStatus(f)
  const port = (name: string): number => st.listeners.tcp.find((l: any) => l.name === name).port
  const clients: Socket[] = []
  t.teardown(() => { for (const c of clients) c.destroy() })
  const N = 10
  for (const name of ['bounded', 'plain']) {
    for (let i = 0; i < N; i++) {
      // One at a time: each connection is counted (inflight) before the next is placed.
      const s = await new Promise<Socket>((resolve, reject) => { const c = dial(port(name), '127.0.0.1', () => { resolve(c) }); c.on('error', reject) })
      clients.push(s)
      const want = clients.length
      const deadline = Date.now() + 5000
      while (backends.reduce((n, b) => n + b.open(), 0) < want && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
  const bounded = [backends[0]!.open(), backends[1]!.open()]
  const plain = [backends[2]!.open(), backends[3]!.open()]
  t.ok(Math.max(...bounded) <= Math.ceil(1.5 * N / 2), `bounded: ${bounded.join(' + ')} (each ≤ ⌈1.5 × ${N}/2⌉ = ${Math.ceil(1.5 * N / 2)})`)
  t.same(plain.slice().sort((a, b) => a - b), [0, N], `plain hash: one client IP → one endpoint takes all ${N} (${plain.join(' + ')})`)
})
