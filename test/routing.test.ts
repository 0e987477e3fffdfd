import t from 'tap'
import { Router, pathMatches } from '../src/routing/router.js'
import { Balancer, type Balanced } from '../src/routing/balancer.js'
import { formatAddress } from '../src/front/address.js'

t.test('path prefixes respect segment boundaries', async (t) => {
  t.ok(pathMatches('/api', '/api'), '/api matches /api')
  t.ok(pathMatches('/api', '/api/x'), '/api matches /api/x')
  t.notOk(pathMatches('/api', '/apix'), '/api does not match /apix')
  t.ok(pathMatches('/api/', '/api/x'), '/api/ matches /api/x')
  t.notOk(pathMatches('/api/', '/api'), '/api/ does not match /api')
  t.ok(pathMatches('/', '/anything'), '/ matches everything')
})

t.test('the most specific route wins', async (t) => {
  const r = new Router([
    { match: { path: '/' }, upstream: 'default' },
    { match: { path: '/api' }, upstream: 'api' },
    { match: { path: '/api/v2' }, upstream: 'v2' },
    { match: { host: 'chat.example.com', path: '/' }, upstream: 'chat' },
    { match: { host: '*.example.com', path: '/' }, upstream: 'wild' },
  ])
  t.equal(r.match('x.org', '/')?.upstream, 'default', 'fallback route')
  t.equal(r.match('x.org', '/api/users')?.upstream, 'api', 'path prefix')
  t.equal(r.match('x.org', '/api/v2/users')?.upstream, 'v2', 'longer prefix beats shorter')
  t.equal(r.match('CHAT.example.com:8080', '/api')?.upstream, 'chat', 'exact host (case and port ignored) beats path routes')
  t.equal(r.match('other.example.com', '/')?.upstream, 'wild', 'wildcard host')
  t.equal(r.match('example.com', '/')?.upstream, 'default', 'wildcard does not match the bare domain')
  t.equal(new Router([{ match: { path: '/api' }, upstream: 'a' }]).match('h', '/other'), undefined, 'no match → undefined')
})

class Ep implements Balanced {
  inflight = 0
  down = false
  constructor (readonly name: string) {}
  acceptsAt (): boolean { return !this.down }
}

t.test('round-robin rotates and respects capacity', async (t) => {
  const eps = [new Ep('a'), new Ep('b'), new Ep('c')]
  const b = new Balancer(eps, 'round-robin')
  t.same([0, 1, 2, 3].map(() => b.pick(10, 0)!.name), ['a', 'b', 'c', 'a'], 'rotates')
  eps[1]!.inflight = 2
  t.same([0, 1, 2].map(() => b.pick(2, 0)!.name), ['c', 'a', 'c'], 'skips a full endpoint')
  for (const e of eps) e.inflight = 2
  t.equal(b.pick(2, 0), undefined, 'all full → undefined (caller queues)')
})

t.test('least-connections picks the least loaded; ejected endpoints only in panic', async (t) => {
  const eps = [new Ep('a'), new Ep('b'), new Ep('c')]
  const b = new Balancer(eps, 'least-connections')
  eps[0]!.inflight = 5; eps[1]!.inflight = 1; eps[2]!.inflight = 3
  t.equal(b.pick(10, 0)!.name, 'b', 'least inflight wins')
  eps[1]!.down = true
  t.equal(b.pick(10, 0)!.name, 'c', 'ejected endpoint skipped')
  eps[0]!.down = true; eps[2]!.down = true
  t.ok(b.pick(10, 0) !== undefined, 'all ejected → panic mode still serves')
  t.equal(b.pick(10, 0, eps[1]), eps[2], 'exclude is honoured in panic mode too')
})

t.test('remote addresses are normalised', async (t) => {
  const ab = (bytes: number[]): ArrayBuffer => new Uint8Array(bytes).buffer
  t.equal(formatAddress(ab([127, 0, 0, 1])), '127.0.0.1', 'IPv4')
  t.equal(formatAddress(ab([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3])), '10.1.2.3', 'IPv4-mapped IPv6 unwrapped')
  t.equal(formatAddress(ab([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])), '::1', 'loopback v6 compressed')
  t.equal(formatAddress(ab([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])), '2001:db8::1', 'RFC 5952 compression')
})
