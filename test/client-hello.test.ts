import { randomBytes } from 'node:crypto'
import { createServer } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import t from 'tap'
import { CLIENT_HELLO_MAX_BYTES, readClientHello, type ClientHelloResult } from '../src/net/client-hello.js'
import { run } from './helpers/pki.js'

/**
 * The SNI reader (src/net/client-hello.ts) on ClientHellos real clients send (Node's tls, openssl
 * s_client), on every prefix of them, split into many records, and on garbage and mutations: it never
 * throws and never reports a name that is not in the bytes.
 */

/** The first bytes a TLS client sends to a raw server on 127.0.0.1 (the server answers nothing). */
async function capture (client: (port: number) => Promise<unknown> | unknown): Promise<Buffer> {
  let got = Buffer.alloc(0)
  const server = createServer((s) => {
    s.on('data', (d: Buffer) => { got = Buffer.concat([got, d]); if (readClientHello(got).kind !== 'incomplete') s.destroy() })
    s.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await client(port)
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return got
}

async function nodeHello (servername: string | undefined): Promise<Buffer> {
  return await capture(async (port) => {
    await new Promise<void>((resolve) => {
      const c = tlsConnect({ host: '127.0.0.1', port, ...(servername !== undefined ? { servername } : {}), rejectUnauthorized: false })
      c.on('error', () => resolve())
      c.on('close', () => resolve())
    })
  })
}

async function opensslHello (servername: string, extra: string[] = []): Promise<Buffer> {
  return await capture(async (port) => await run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', servername, ...extra], ''))
}

/** The handshake bytes of `hello` (one record) re-split into records of `size` bytes. */
function resplit (hello: Buffer, size: number): Buffer {
  const len = hello.readUInt16BE(3)
  const hs = hello.subarray(5, 5 + len)
  const out: Buffer[] = []
  for (let i = 0; i < hs.length; i += size) {
    const part = hs.subarray(i, i + size)
    const h = Buffer.from([0x16, 0x03, 0x01, 0, 0])
    h.writeUInt16BE(part.length, 3)
    out.push(h, part)
  }
  return Buffer.concat(out)
}

const KINDS = new Set(['incomplete', 'invalid', 'hello'])
const HOST = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/

function sane (r: ClientHelloResult): boolean {
  if (!KINDS.has(r.kind)) return false
  return r.kind !== 'hello' || r.serverName === undefined || HOST.test(r.serverName)
}

t.test('real ClientHellos: the name, or none', async (t) => {
  const a = await nodeHello('A.Test')
  t.same(readClientHello(a), { kind: 'hello', serverName: 'a.test' }, 'Node\'s tls client with servername A.Test: a.test (lower case)')
  const none = await nodeHello(undefined)
  t.same(readClientHello(none), { kind: 'hello', serverName: undefined }, 'Node\'s tls client to an IP address sends no SNI')
  const b = await opensslHello('b.example.com', ['-tls1_2'])
  t.same(readClientHello(b), { kind: 'hello', serverName: 'b.example.com' }, 'openssl s_client -tls1_2 -servername b.example.com')
  const c = await opensslHello('c.example.com', ['-tls1_3'])
  t.same(readClientHello(c), { kind: 'hello', serverName: 'c.example.com' }, 'openssl s_client -tls1_3')
  const before = Buffer.from(c)
  readClientHello(c)
  t.same(c, before, 'the bytes are not changed')
  const withData = Buffer.concat([a, Buffer.from('application bytes after the hello')])
  t.same(readClientHello(withData), { kind: 'hello', serverName: 'a.test' }, 'bytes after the ClientHello are ignored')

  for (const [name, hello] of [['node', a], ['openssl', b]] as const) {
    let ok = true
    for (let n = 0; n < hello.length; n++) if (readClientHello(hello.subarray(0, n)).kind !== 'incomplete') { ok = false; t.fail(`${name}: prefix of ${n} bytes is not incomplete`); break }
    t.ok(ok, `${name}: every one of the ${hello.length} prefixes is incomplete`)
    for (const size of [1, 7, 100, 511]) {
      const split = resplit(hello, size)
      t.same(readClientHello(split), readClientHello(hello), `${name}: split into records of ${size} bytes, the same name`)
      let prefixesOk = true
      for (let n = 0; n < split.length; n += Math.max(1, Math.floor(split.length / 300))) if (readClientHello(split.subarray(0, n)).kind !== 'incomplete') prefixesOk = false
      t.ok(prefixesOk, `${name}: prefixes of the ${size}-byte split are incomplete`)
    }
  }
})

t.test('garbage, oversized and malformed input is invalid, never a throw', async (t) => {
  t.match(readClientHello(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')), { kind: 'invalid', reason: /not a TLS handshake record/ }, 'plain HTTP')
  t.match(readClientHello(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0])), { kind: 'invalid', reason: /not a ClientHello/ }, 'a ServerHello')
  t.match(readClientHello(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01])), { kind: 'invalid', reason: /record length/ }, 'a record over 16 KiB')
  t.match(readClientHello(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00])), { kind: 'invalid', reason: /larger than/ }, 'a ClientHello announced over 16 KiB')
  t.match(readClientHello(Buffer.from([0x16, 0x02, 0x00, 0x00, 0x04])), { kind: 'invalid', reason: /not TLS/ }, 'SSL 2/3 record versions')
  // A ClientHello announced at 16000 bytes, sent in full records, never completes within the limit.
  const big: Buffer[] = [Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3e, 0x80]), Buffer.alloc(16380)]
  t.match(readClientHello(Buffer.concat(big), 8192), { kind: 'invalid', reason: /larger than 8192/ }, 'a smaller maxBytes applies')
  t.equal(CLIENT_HELLO_MAX_BYTES, 16384, 'the default bound is 16 KiB')
  // A hand-made hello with two server_name extensions.
  const sni = (name: string): Buffer => {
    const n = Buffer.from(name)
    const e = Buffer.alloc(9 + n.length)
    e.writeUInt16BE(0, 0); e.writeUInt16BE(5 + n.length, 2); e.writeUInt16BE(3 + n.length, 4); e[6] = 0; e.writeUInt16BE(n.length, 7); n.copy(e, 9)
    return e
  }
  const hello = (exts: Buffer): Buffer => {
    const body = Buffer.concat([Buffer.from([0x03, 0x03]), Buffer.alloc(32), Buffer.from([0, 0, 2, 0x13, 0x01, 1, 0]), Buffer.from([exts.length >> 8, exts.length & 0xff]), exts])
    const hs = Buffer.concat([Buffer.from([1, 0, body.length >> 8, body.length & 0xff]), body])
    return Buffer.concat([Buffer.from([0x16, 0x03, 0x01, hs.length >> 8, hs.length & 0xff]), hs])
  }
  t.same(readClientHello(hello(sni('ok.test'))), { kind: 'hello', serverName: 'ok.test' }, 'a hand-made hello is read')
  t.match(readClientHello(hello(Buffer.concat([sni('a.test'), sni('b.test')]))), { kind: 'invalid', reason: /two server_name/ }, 'two server_name extensions')
  t.match(readClientHello(hello(sni('bad name!'))), { kind: 'invalid', reason: /not a DNS name/ }, 'a host_name that is no DNS name')
  t.match(readClientHello(hello(sni(''))), { kind: 'invalid' }, 'an empty host_name')
})

t.test('fuzz: random bytes and mutated real hellos never throw and never invent a name', async (t) => {
  const real = await nodeHello('fuzz.test')
  let bad = 0
  let hellos = 0
  for (let i = 0; i < 3000; i++) {
    const input = i % 3 === 0
      ? randomBytes(1 + (i % 400))
      : i % 3 === 1
        ? Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), randomBytes(2 + (i % 600))])
        : (() => { const m = Buffer.from(real); for (let k = 0; k < 1 + (i % 4); k++) m[Math.floor(Math.random() * m.length)] = Math.floor(Math.random() * 256); return m })()
    let r: ClientHelloResult
    try {
      r = readClientHello(input)
    } catch (err) {
      t.fail(`threw on ${input.toString('hex').slice(0, 80)}: ${(err as Error).message}`)
      return
    }
    if (!sane(r)) bad++
    if (r.kind === 'hello') hellos++
  }
  t.equal(bad, 0, '3000 inputs: every verdict is incomplete, invalid, or a hello with a DNS name (or none)')
  t.ok(hellos > 0, `some mutated hellos still parse (${hellos}): mutations outside the fields read are ignored`)
})
