import t from 'tap'
import { decodeProxyHeader, encodeProxyV1, encodeProxyV2, V2_SIGNATURE, type ProxyDecodeResult } from '../src/net/proxy-protocol.js'
import { formatIpv6, normalizeIp, parseCidr, writeIpv6, Networks } from '../src/net/address.js'

// Deterministic PRNG (xorshift32) so a failure reproduces from its case number.
function prng (seed: number): () => number {
  let s = seed >>> 0 || 1
  return () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s / 0x100000000 }
}

const v1Cases: Array<[string, object]> = [
  ['PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n', { family: 'tcp4', source: '192.0.2.1', sourcePort: 56324, destination: '198.51.100.2', destinationPort: 443 }],
  ['PROXY TCP6 2001:db8::1 ::1 1 65535\r\n', { family: 'tcp6', source: '2001:db8::1', sourcePort: 1, destination: '::1', destinationPort: 65535 }],
  ['PROXY TCP6 ::ffff:10.0.0.1 ::ffff:10.0.0.2 0 80\r\n', { family: 'tcp6', source: '10.0.0.1', destination: '10.0.0.2', sourcePort: 0 }],
  ['PROXY UNKNOWN\r\n', { family: 'unknown', command: 'proxy' }],
  ['PROXY UNKNOWN ffff::1 ::1 1 2\r\n', { family: 'unknown' }],
]

const v1Bad = [
  'PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n', // missing port
  'PROXY TCP4 192.0.2.1 198.51.100.2 56324 65536\r\n', // port range
  'PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n', // v6 in TCP4
  'PROXY TCP6 192.0.2.1 ::1 1 2\r\n', // v4 in TCP6
  'PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n', // double space
  'PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n', // LF without CR
  'PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rX', // CR without LF
  'PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n',
  'PROXY TCP4 256.0.0.1 198.51.100.2 1 2\r\n',
  'PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n', // zone id
  'PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n',
  'PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n',
  `PROXY UNKNOWN ${'x'.repeat(100)}\r\n`, // longer than 107 bytes
  'proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n',
  'GET / HTTP/1.1\r\n\r\n',
  '\x00\x01\x02',
]

function v2 (verCmd: number, fam: number, body: number[]): Buffer {
  const b = Buffer.alloc(16 + body.length)
  V2_SIGNATURE.copy(b)
  b[12] = verCmd
  b[13] = fam
  b.writeUInt16BE(body.length, 14)
  Buffer.from(body).copy(b, 16)
  return b
}

t.test('v1: valid headers decode, with the bytes after them left alone', async (t) => {
  for (const [text, want] of v1Cases) {
    const buf = Buffer.concat([Buffer.from(text, 'latin1'), Buffer.from('payload')])
    const r = decodeProxyHeader(buf)
    if (r.kind !== 'header') { t.fail(`${JSON.stringify(text)}: ${JSON.stringify(r)}`); continue }
    t.equal(r.length, text.length, `${JSON.stringify(text)} is ${text.length} bytes`)
    t.match(r.header, { version: 1, ...want }, `${JSON.stringify(text)} fields`)
  }
})

t.test('v1: malformed headers are invalid, never thrown', async (t) => {
  for (const text of v1Bad) {
    const r = decodeProxyHeader(Buffer.from(text, 'latin1'))
    t.equal(r.kind, 'invalid', `${JSON.stringify(text.slice(0, 50))} → invalid`)
  }
  t.equal(decodeProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4', 'latin1')).kind, 'incomplete', 'a prefix waits for more')
  t.equal(decodeProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r', 'latin1')).kind, 'incomplete', 'CR at the end waits for LF')
  t.equal(decodeProxyHeader(Buffer.from('PROXY ' + '1'.repeat(101), 'latin1')).kind, 'invalid', '107 bytes without CRLF is invalid, not incomplete')
})

t.test('v2: addresses, LOCAL, UNSPEC/UNIX, TLVs and bad headers', async (t) => {
  const tcp4 = v2(0x21, 0x11, [192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb])
  t.match(decodeProxyHeader(tcp4), { kind: 'header', length: 28, header: { version: 2, command: 'proxy', family: 'tcp4', source: '192.0.2.1', sourcePort: 56324, destination: '198.51.100.2', destinationPort: 443 } }, 'TCP4')
  const v6body = [0x20, 0x01, 0x0d, 0xb8, ...new Array<number>(11).fill(0), 1, ...new Array<number>(15).fill(0), 1, 0, 80, 1, 187]
  t.match(decodeProxyHeader(v2(0x21, 0x21, v6body)), { kind: 'header', header: { family: 'tcp6', source: '2001:db8::1', destination: '::1', sourcePort: 80, destinationPort: 443 } }, 'TCP6')
  t.match(decodeProxyHeader(v2(0x20, 0x00, [])), { kind: 'header', length: 16, header: { command: 'local', family: 'unknown' } }, 'LOCAL')
  t.match(decodeProxyHeader(v2(0x20, 0x99, [1, 2, 3])), { kind: 'header', length: 19, header: { command: 'local' } }, 'LOCAL ignores the family')
  t.match(decodeProxyHeader(v2(0x21, 0x00, [])), { kind: 'header', header: { command: 'proxy', family: 'unknown' } }, 'UNSPEC')
  t.match(decodeProxyHeader(v2(0x21, 0x31, new Array<number>(216).fill(0))), { kind: 'header', header: { family: 'unknown' } }, 'UNIX')
  const withTlvs = v2(0x21, 0x11, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0x04, 0, 0, 0x02, 0, 3, 0x61, 0x62, 0x63])
  t.match(decodeProxyHeader(withTlvs), { kind: 'header', length: 16 + 21, header: { source: '1.2.3.4' } }, 'TLVs skipped')
  const bad: Array<[string, Buffer]> = [
    ['version 1 in the v2 format', v2(0x11, 0x11, new Array<number>(12).fill(0))],
    ['command 2', v2(0x22, 0x11, new Array<number>(12).fill(0))],
    ['family 0x41', v2(0x21, 0x41, new Array<number>(12).fill(0))],
    ['transport 3', v2(0x21, 0x13, new Array<number>(12).fill(0))],
    ['TCP4 with a short address block', v2(0x21, 0x11, new Array<number>(11).fill(0))],
    ['UDP4 on a TCP listener', v2(0x21, 0x12, new Array<number>(12).fill(0))],
    ['TLV overrunning the header', v2(0x21, 0x11, [...new Array<number>(12).fill(0), 0x01, 0, 9, 1])],
    ['truncated TLV', v2(0x21, 0x11, [...new Array<number>(12).fill(0), 0x01, 0])],
    ['bad signature', Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b])],
  ]
  for (const [what, buf] of bad) t.equal(decodeProxyHeader(buf).kind, 'invalid', what)
  const huge = v2(0x21, 0x11, new Array<number>(12).fill(0))
  huge.writeUInt16BE(60000, 14)
  t.equal(decodeProxyHeader(huge.subarray(0, 16)).kind, 'invalid', 'a declared length beyond the cap is refused before its bytes arrive')
  t.equal(decodeProxyHeader(tcp4.subarray(0, 20)).kind, 'incomplete', 'a partial address block waits')
})

t.test('encoders round-trip through the decoder', async (t) => {
  const cases = [
    { source: '10.1.2.3', sourcePort: 40000, destination: '10.9.8.7', destinationPort: 5432, family: 'tcp4' },
    { source: '2001:db8:0:1::7', sourcePort: 1, destination: 'fe80::1:2', destinationPort: 65535, family: 'tcp6' },
    { source: '10.1.2.3', sourcePort: 9, destination: '::1', destinationPort: 10, family: 'tcp6' }, // mixed → v6, v4 mapped
  ]
  for (const c of cases) {
    for (const [name, enc] of [['v1', encodeProxyV1], ['v2', encodeProxyV2]] as const) {
      const buf = enc(c)
      const r = decodeProxyHeader(buf)
      t.match(r, { kind: 'header', length: buf.length, header: { family: c.family, source: c.source, sourcePort: c.sourcePort, destination: c.destination, destinationPort: c.destinationPort } }, `${name} ${c.source} → ${c.destination}`)
    }
  }
  const unknown = { source: undefined, sourcePort: undefined, destination: undefined, destinationPort: undefined }
  t.equal(encodeProxyV1(unknown).toString('latin1'), 'PROXY UNKNOWN\r\n', 'v1 UNKNOWN when the addresses are not known')
  t.match(decodeProxyHeader(encodeProxyV2(unknown)), { kind: 'header', length: 16, header: { family: 'unknown', command: 'proxy' } }, 'v2 AF_UNSPEC')
})

t.test('address helpers', async (t) => {
  t.equal(normalizeIp('::ffff:127.0.0.1'), '127.0.0.1', 'v4-mapped unwrapped')
  t.equal(normalizeIp('::1'), '::1', 'v6 kept')
  const b = new Uint8Array(16)
  for (const ip of ['::', '::1', '1::', '2001:db8::ff00:42:8329', '1:2:3:4:5:6:7:8', '::ffff:1.2.3.4', '64:ff9b::192.0.2.33']) {
    t.ok(writeIpv6(ip, b, 0), `${ip} parsed`)
    const back = formatIpv6(b, 0)
    t.ok(writeIpv6(back, b, 0) && formatIpv6(b, 0) === back, `${ip} → ${back} is stable`)
  }
  t.equal(parseCidr('10.0.0.0/33'), undefined, '/33 is not IPv4')
  t.same(parseCidr('::1'), { ip: '::1', prefix: 128, family: 6 }, 'bare v6 is /128')
  const n = new Networks(['127.0.0.0/8', '10.1.0.0/16', '::1/128'])
  t.ok(n.contains('127.4.5.6') && n.contains('10.1.200.3') && n.contains('::1'), 'inside')
  t.notOk(n.contains('10.2.0.1') || n.contains('::2') || n.contains('') || n.contains('junk'), 'outside or not an address')
})

/** Checks a decoder answer for internal consistency against the input it was given. */
function consistent (r: ProxyDecodeResult, buf: Uint8Array): string | undefined {
  if (r.kind === 'incomplete') return buf.length < 16 + 4096 ? undefined : 'incomplete beyond the v2 cap'
  if (r.kind === 'invalid') return typeof r.reason === 'string' && r.reason.length > 0 ? undefined : 'invalid without a reason'
  if (r.length < 15 || r.length > buf.length) return `header length ${r.length} outside the input (${buf.length})`
  const h = r.header
  if (h.family !== 'unknown' && (h.source === undefined || h.sourcePort === undefined || h.sourcePort > 65535)) return 'addressed header without a valid source'
  return undefined
}

t.test('property: random and mutated input never throws, answers consistently, and prefixes agree', async (t) => {
  const rand = prng(0xc0ffee)
  const seeds = [
    ...v1Cases.map(([s]) => Buffer.from(s, 'latin1')),
    encodeProxyV2({ source: '10.1.2.3', sourcePort: 1, destination: '10.3.2.1', destinationPort: 2 }),
    encodeProxyV2({ source: '2001:db8::1', sourcePort: 1, destination: '::1', destinationPort: 2 }),
    v2(0x21, 0x11, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0x04, 0, 0, 0x02, 0, 3, 0x61, 0x62, 0x63]),
    v2(0x20, 0x00, []),
  ]
  const N = 30000
  let headers = 0
  let invalids = 0
  for (let i = 0; i < N; i++) {
    let buf: Buffer
    const mode = rand()
    if (mode < 0.15) {
      // pure noise, sometimes starting with a valid signature byte
      buf = Buffer.alloc(Math.floor(rand() * 300))
      for (let k = 0; k < buf.length; k++) buf[k] = Math.floor(rand() * 256)
      if (buf.length > 0 && rand() < 0.5) buf[0] = rand() < 0.5 ? 0x50 : 0x0d
    } else {
      const base = seeds[Math.floor(rand() * seeds.length)]!
      buf = Buffer.concat([base, Buffer.from('tail-bytes')])
      const mutations = Math.floor(rand() * 4)
      for (let m = 0; m < mutations; m++) {
        const op = rand()
        const pos = Math.floor(rand() * buf.length)
        if (op < 0.5) buf[pos] = Math.floor(rand() * 256)
        else if (op < 0.7) buf = Buffer.concat([buf.subarray(0, pos), buf.subarray(pos + 1)])
        else if (op < 0.9) buf = Buffer.concat([buf.subarray(0, pos), Buffer.from([Math.floor(rand() * 256)]), buf.subarray(pos)])
        else buf = buf.subarray(0, pos)
      }
    }
    let r: ProxyDecodeResult
    try {
      r = decodeProxyHeader(buf)
    } catch (err) {
      t.fail(`case ${i} threw ${String(err)} on ${buf.toString('hex')}`)
      return
    }
    const why = consistent(r, buf)
    if (why !== undefined) { t.fail(`case ${i}: ${why} on ${buf.toString('hex')}`); return }
    if (r.kind === 'header') headers++
    if (r.kind === 'invalid') invalids++
    // Incremental feeding (a header split across reads): every strict prefix of a header that decodes
    // must answer 'incomplete', never 'invalid' or a different header.
    if (r.kind === 'header' && i % 10 === 0) {
      for (let cut = 0; cut < r.length; cut++) {
        const p = decodeProxyHeader(buf.subarray(0, cut))
        if (p.kind !== 'incomplete') { t.fail(`case ${i}: prefix of ${cut}/${r.length} bytes answered ${p.kind}`); return }
      }
    }
  }
  t.ok(headers > N / 10, `a good share of the ${N} cases still decode (${headers})`)
  t.ok(invalids > N / 10, `a good share are rejected (${invalids})`)
})
