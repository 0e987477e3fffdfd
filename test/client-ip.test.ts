import t from 'tap'
import { resolveClientIp } from '../src/edge/client-ip.js'
import { Networks } from '../src/net/address.js'

const lb = new Networks(['10.0.0.0/8', '192.168.1.1', 'fd00::/8'])
const none = new Networks([])

t.test('untrusted peer: the peer is the client and its X-Forwarded-For is replaced', async (t) => {
  t.same(resolveClientIp('203.0.113.7', ['1.2.3.4'], lb), { ip: '203.0.113.7', forwardedFor: '203.0.113.7' }, 'a claim from an untrusted peer is dropped')
  t.same(resolveClientIp('10.1.1.1', ['1.2.3.4'], none), { ip: '10.1.1.1', forwardedFor: '10.1.1.1' }, 'trustedProxies [] trusts nobody, not even private addresses')
  t.same(resolveClientIp('::ffff:203.0.113.7', [], lb), { ip: '203.0.113.7', forwardedFor: '203.0.113.7' }, 'an IPv4-mapped peer is normalised')
})

t.test('trusted peer: walk right to left skipping trusted hops; the chain is appended', async (t) => {
  t.same(resolveClientIp('10.0.0.2', ['198.51.100.9'], lb), { ip: '198.51.100.9', forwardedFor: '198.51.100.9, 10.0.0.2' }, 'one hop: the XFF entry is the client, the peer is appended')
  t.same(resolveClientIp('10.0.0.2', ['6.6.6.6, 198.51.100.9, 10.9.9.9'], lb).ip, '198.51.100.9', 'the first untrusted from the right wins; the spoofed leftmost 6.6.6.6 is ignored')
  t.same(resolveClientIp('10.0.0.2', ['6.6.6.6', '198.51.100.9, 192.168.1.1'], lb), { ip: '198.51.100.9', forwardedFor: '6.6.6.6, 198.51.100.9, 192.168.1.1, 10.0.0.2' }, 'several XFF headers are one list, in order')
  t.same(resolveClientIp('10.0.0.2', ['10.3.3.3, 10.4.4.4'], lb).ip, '10.3.3.3', 'every entry trusted: the leftmost is the client')
  t.same(resolveClientIp('10.0.0.2', [], lb), { ip: '10.0.0.2', forwardedFor: '10.0.0.2' }, 'no XFF from a trusted peer: the peer is the client')
  t.same(resolveClientIp('10.0.0.2', [' '], lb), { ip: '10.0.0.2', forwardedFor: '10.0.0.2' }, 'a blank XFF is no chain')
  t.same(resolveClientIp('fd00::1', ['2001:db8::5'], lb).ip, '2001:db8::5', 'IPv6 proxy and client')
  t.same(resolveClientIp('10.0.0.2', ['::ffff:198.51.100.9'], lb).ip, '198.51.100.9', 'an IPv4-mapped XFF entry is normalised')
  t.same(resolveClientIp('10.0.0.2', ['198.51.100.9,,'], lb).ip, '198.51.100.9', 'empty list elements are skipped (RFC 9110 §5.6.1)')
})

t.test('malformed entries from a trusted peer stop the walk at the nearest valid address', async (t) => {
  t.same(resolveClientIp('10.0.0.2', ['198.51.100.9, unknown'], lb).ip, '10.0.0.2', '`unknown` next to the peer: the peer is the client (nothing to its left is believed)')
  t.same(resolveClientIp('10.0.0.2', ['198.51.100.9, garbage, 10.5.5.5'], lb).ip, '10.5.5.5', 'garbage behind a trusted hop: that hop is the client')
  t.same(resolveClientIp('10.0.0.2', ['1.2.3.4:5678'], lb).ip, '10.0.0.2', 'an address with a port is not an address')
  t.same(resolveClientIp('10.0.0.2', ['[2001:db8::1]'], lb).ip, '10.0.0.2', 'a bracketed IPv6 is not an address')
  t.same(resolveClientIp('10.0.0.2', ['fe80::1%eth0'], lb).ip, '10.0.0.2', 'a zone id is not an address')
  t.same(resolveClientIp('10.0.0.2', ['x'.repeat(5000)], lb), { ip: '10.0.0.2', forwardedFor: `${'x'.repeat(5000)}, 10.0.0.2` }, 'a huge entry is refused as an address and forwarded as received')
})

t.test('the walk is bounded: a long chain of trusted hops costs at most 32 steps', async (t) => {
  const chain = Array.from({ length: 1000 }, (_, i) => `10.0.${i >> 8}.${i & 255}`).join(', ')
  const r = resolveClientIp('10.0.0.2', ['203.0.113.1, ' + chain], lb)
  t.match(r.ip, /^10\./, `after 32 trusted hops the walk stops on a trusted address (${r.ip}), never reaching the 1001st entry`)
  t.not(r.ip, '203.0.113.1', 'the untrusted entry 1001 hops away is not reached')
})

t.test('property: the client is always the peer or an address from the chain, never a malformed entry', async (t) => {
  let seed = 42
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n }
  const pool = ['10.0.0.1', '10.9.9.9', '198.51.100.9', '203.0.113.5', 'unknown', '', '1.2.3.4:80', '::1', 'fd00::7', '2001:db8::1', ' 10.1.1.1 ', '999.1.1.1']
  let checked = 0
  for (let i = 0; i < 2000; i++) {
    const peer = ['10.0.0.2', '203.0.113.99', 'fd00::2'][rnd(3)]!
    const entries = Array.from({ length: rnd(6) }, () => pool[rnd(pool.length)]!)
    const r = resolveClientIp(peer, entries.length === 0 ? [] : [entries.join(',')], lb)
    const valid = r.ip === peer || entries.some((e) => e.trim() === r.ip)
    if (!valid || r.ip === '' || r.ip === 'unknown' || r.ip.includes(':80')) { t.fail(`peer ${peer} xff ${JSON.stringify(entries)} → ${r.ip}`); break }
    if (!lb.contains(peer) && r.ip !== peer) { t.fail(`untrusted peer ${peer} yielded ${r.ip}`); break }
    checked++
  }
  t.equal(checked, 2000, 'all 2000 random chains resolve to the peer or a valid chain address, and an untrusted peer is always the client')
})
