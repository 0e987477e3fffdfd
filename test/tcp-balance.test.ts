import t from 'tap'
import { Balancer, hashKey, type Balanced } from '../src/routing/balancer.js'

class Ep implements Balanced {
  inflight = 0
  down = false
  constructor (readonly address: string) {}
  acceptsAt (): boolean { return !this.down }
}

const KEYS = Array.from({ length: 3000 }, (_, i) => hashKey(`10.${(i >> 8) & 255}.${i & 255}.7`))

t.test('hash: a key always gets the same endpoint, and keys spread evenly', async (t) => {
  const eps = ['a:1', 'b:1', 'c:1', 'd:1'].map((a) => new Ep(a))
  const b = new Balancer(eps, 'hash')
  const first = KEYS.map((k) => b.pick(Infinity, 0, undefined, k)!)
  t.ok(KEYS.every((k, i) => b.pick(Infinity, 0, undefined, k) === first[i]), 'stable across calls (no round-robin state involved)')
  const counts = eps.map((e) => first.filter((x) => x === e).length)
  t.ok(counts.every((c) => c > KEYS.length / 4 * 0.8 && c < KEYS.length / 4 * 1.2), `each of 4 endpoints gets 25% ± 20% of ${KEYS.length} keys (${counts.join(', ')})`)
  const reordered = new Balancer([eps[2]!, eps[0]!, eps[3]!, eps[1]!], 'hash')
  t.ok(KEYS.every((k, i) => reordered.pick(Infinity, 0, undefined, k) === first[i]), 'the choice depends on endpoint addresses, not list order')
})

t.test('hash: only the keys of a failed endpoint move; failover order is per key', async (t) => {
  const eps = ['a:1', 'b:1', 'c:1', 'd:1'].map((a) => new Ep(a))
  const b = new Balancer(eps, 'hash')
  const before = KEYS.map((k) => b.pick(Infinity, 0, undefined, k)!)
  eps[1]!.down = true
  const after = KEYS.map((k) => b.pick(Infinity, 0, undefined, k)!)
  const moved = KEYS.filter((_, i) => before[i] !== after[i]).length
  t.ok(KEYS.every((_, i) => before[i] === eps[1] || before[i] === after[i]), 'keys on healthy endpoints stay put')
  t.equal(moved, before.filter((e) => e === eps[1]).length, `exactly the ${moved} keys of the ejected endpoint moved`)
  eps[1]!.down = false
  // Excluding the first choice (a failed connect) gives the same answer as that endpoint being down.
  const tried = new Set<Ep>()
  const k = KEYS[0]!
  const order: Ep[] = []
  for (let e = b.pick(Infinity, 0, tried, k); e !== undefined; e = b.pick(Infinity, 0, tried, k)) { order.push(e); tried.add(e) }
  t.equal(order.length, 4, 'failover visits every endpoint once')
  t.equal(order[0], before[0], 'starting with the key\'s own endpoint')
})

t.test('exclusion sets work for every policy; single exclusion still works', async (t) => {
  for (const policy of ['round-robin', 'least-connections', 'hash'] as const) {
    const eps = ['a:1', 'b:1', 'c:1'].map((a) => new Ep(a))
    const b = new Balancer(eps, policy)
    t.equal(b.pick(Infinity, 0, new Set([eps[0]!, eps[1]!]), 42), eps[2], `${policy}: the only endpoint not excluded`)
    t.equal(b.pick(Infinity, 0, new Set(eps), 42), undefined, `${policy}: all excluded → undefined`)
    t.not(b.pick(Infinity, 0, eps[0], 42), eps[0], `${policy}: a single excluded endpoint is skipped`)
  }
})
