import { createSocket } from 'node:dgram'
import { isIPv4, isIPv6 } from 'node:net'
import type { Teardown } from './ferry.js'

/** A record set the responder answers with for one name and type. */
export type Answer =
  | { type: 'A' | 'AAAA', addresses: string[], ttl: number }
  | { type: 'SRV', targets: Array<{ target: string, port: number, priority?: number, weight?: number }>, ttl: number }
  /** rcode 2 (SERVFAIL) or 3 (NXDOMAIN); 'drop': no answer at all (the client times out). */
  | { type: 'fail', rcode: 2 | 3 }
  | { type: 'drop' }

export interface DnsServer {
  readonly port: number
  /** `127.0.0.1:PORT`, for `dns.servers` in a Ferry config. */
  readonly address: string
  /** Sets what `name` answers for `qtype` (A, AAAA, SRV), or its failure mode for every type. */
  set: (name: string, answer: Answer) => void
  /** Queries received for `name` so far (any type). */
  queries: (name: string) => number
}

const TYPES: Record<number, 'A' | 'AAAA' | 'SRV'> = { 1: 'A', 28: 'AAAA', 33: 'SRV' }
const CODES = { A: 1, AAAA: 28, SRV: 33 }

function encodeName (name: string): Buffer {
  const parts = name.replace(/\.$/, '').split('.').filter((p) => p !== '')
  return Buffer.concat([...parts.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, 'ascii')])), Buffer.from([0])])
}

function ipv6Bytes (ip: string): Buffer {
  const [head = '', tail] = ip.split('::')
  const h = head === '' ? [] : head.split(':')
  const tl = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - tl.length).fill('0'), ...tl]
  const out = Buffer.alloc(16)
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2))
  return out
}

/**
 * A real DNS responder on 127.0.0.1 UDP port 0 (RFC 1035 wire format: A, AAAA and SRV answers, or
 * SERVFAIL/NXDOMAIN, or silence), answering from a table the test changes while it runs. Names
 * without an entry get NXDOMAIN. Closed at teardown.
 */
export async function startDns (t: Teardown): Promise<DnsServer> {
  const table = new Map<string, Answer>()
  const counts = new Map<string, number>()
  const sock = createSocket('udp4')
  sock.on('message', (msg, rinfo) => {
    if (msg.length < 12) return
    const id = msg.readUInt16BE(0)
    // The question: labels, then qtype and qclass.
    let off = 12
    const labels: string[] = []
    while (off < msg.length && msg[off] !== 0) {
      const len = msg[off]!
      labels.push(msg.subarray(off + 1, off + 1 + len).toString('ascii'))
      off += len + 1
    }
    off++
    const qtype = msg.readUInt16BE(off)
    const question = msg.subarray(12, off + 4)
    const name = labels.join('.').toLowerCase()
    counts.set(name, (counts.get(name) ?? 0) + 1)
    const entry = table.get(`${name}/${TYPES[qtype] ?? '?'}`) ?? table.get(`${name}/*`)
    if (entry?.type === 'drop') return
    let rcode = 0
    const answers: Buffer[] = []
    if (entry === undefined) rcode = 3
    else if (entry.type === 'fail') rcode = entry.rcode
    else {
      const rr = (type: number, ttl: number, rdata: Buffer): Buffer => {
        const b = Buffer.alloc(12)
        b.writeUInt16BE(0xc00c, 0) // the name: a pointer to the question's
        b.writeUInt16BE(type, 2)
        b.writeUInt16BE(1, 4)
        b.writeUInt32BE(ttl, 6)
        b.writeUInt16BE(rdata.length, 10)
        return Buffer.concat([b, rdata])
      }
      if (entry.type === 'SRV') {
        for (const s of entry.targets) {
          const head = Buffer.alloc(6)
          head.writeUInt16BE(s.priority ?? 0, 0)
          head.writeUInt16BE(s.weight ?? 10, 2)
          head.writeUInt16BE(s.port, 4)
          answers.push(rr(CODES.SRV, entry.ttl, Buffer.concat([head, encodeName(s.target)])))
        }
      } else {
        for (const a of entry.addresses) {
          answers.push(rr(CODES[entry.type], entry.ttl, entry.type === 'A' ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a)))
        }
      }
    }
    const header = Buffer.alloc(12)
    header.writeUInt16BE(id, 0)
    header.writeUInt16BE(0x8180 | rcode, 2) // QR, RD, RA
    header.writeUInt16BE(1, 4)
    header.writeUInt16BE(answers.length, 6)
    sock.send(Buffer.concat([header, question, ...answers]), rinfo.port, rinfo.address)
  })
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve))
  const port = sock.address().port
  t.teardown(async () => { await new Promise<void>((resolve) => { sock.close(() => { resolve() }) }) })
  return {
    port,
    address: `127.0.0.1:${port}`,
    set: (name, answer) => {
      const n = name.toLowerCase().replace(/\.$/, '')
      if (answer.type === 'fail' || answer.type === 'drop') {
        for (const k of [...table.keys()]) if (k.startsWith(`${n}/`)) table.delete(k)
        table.set(`${n}/*`, answer)
        return
      }
      if (answer.type !== 'SRV') for (const a of answer.addresses) if (!(answer.type === 'A' ? isIPv4(a) : isIPv6(a))) throw new Error(`not an ${answer.type} address: ${a}`)
      table.delete(`${n}/*`)
      table.set(`${n}/${answer.type}`, answer)
    },
    queries: (name) => counts.get(name.toLowerCase()) ?? 0,
  }
}
