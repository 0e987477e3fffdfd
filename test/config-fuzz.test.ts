import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { loadConfig } from '../src/config/load.js'
import { isFerryError } from '../src/errors.js'
import { runCli } from './helpers/ferry.js'

/**
 * Config fuzzing through the real loader (file → YAML → env → schema): thousands of seeded mutations of
 * valid configs. Each load either succeeds or throws FerryError FERRY_ERR_CONFIG_INVALID (every problem
 * line names a field path) or FERRY_ERR_CONFIG_READ (names the file); never another exception, never a hang.
 */

const BASES: Array<Record<string, unknown>> = [
  {
    upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:3000'], pool: { maxConnections: 8 } } },
    routes: [{ match: { path: '/api' }, upstream: 'api', maxBodyBytes: 1000 }],
    http: { trustedProxies: ['10.0.0.0/8'], maxUrlBytes: 4096, bodyIdleMs: 5000 },
    limits: { maxRequestsInFlightPerIp: 10 },
  },
  {
    upstreams: { chat: { protocol: 'mux', endpoints: ['127.0.0.1:7000'] }, old: { protocol: 'ws', endpoints: ['ws://127.0.0.1:4000'] } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', affinity: { key: 'query:uid' }, websocket: { idleTimeoutSec: 60 } }, { match: { host: '*.example.com', path: '/old' }, upstream: 'old' }],
    drain: { acceptGraceMs: 0, spreadMs: 1000, deadlineMs: 5000 },
    limits: { maxWebSocketSessions: 100 },
  },
  {
    upstreams: { db: { protocol: 'tcp', endpoints: ['127.0.0.1:5432'], balance: 'hash' } },
    listen: { tcp: [{ name: 'db', port: 15432, upstream: 'db', acceptProxyProtocol: true, trustedProxies: ['127.0.0.1'], maxConnectionsPerIp: 5 }] },
  },
]

/** mulberry32: small, seeded, reproducible. */
function rng (seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const EVIL_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '', ' ', 'bogus', 'maxConns', 'trustForwardedFor']

function values (r: () => number): unknown[] {
  return [
    null, true, false, 0, -1, 1.5, 2 ** 53 + 2, -(2 ** 31), 1e308, 65536, 8, 961, '', ' ', 'x', '127.0.0.1:0',
    'x'.repeat(100_000), '\u0000', '../../etc/passwd', [], [null], [{}], {}, { protocol: 'http' }, { __proto__: { polluted: 1 } },
    Math.floor(r() * 1e6), -Math.floor(r() * 1e6), String(Math.floor(r() * 1e6)),
  ]
}

type Node = Record<string, unknown> | unknown[]

/** Every [parent, key] pair in the tree (objects and arrays). */
function slots (root: Node): Array<[Node, string | number]> {
  const out: Array<[Node, string | number]> = []
  const walk = (n: Node): void => {
    const keys: Array<string | number> = Array.isArray(n) ? Array.from({ length: n.length }, (_, i) => i) : Object.keys(n)
    for (const k of keys) {
      out.push([n, k])
      const v = (n as Record<string | number, unknown>)[k]
      if (v !== null && typeof v === 'object') walk(v as Node)
    }
  }
  walk(root)
  return out
}

function mutateTree (cfg: Record<string, unknown>, r: () => number): void {
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!
  const n = 1 + Math.floor(r() * 3)
  for (let i = 0; i < n; i++) {
    const all = slots(cfg)
    if (all.length === 0) return
    const [parent, key] = pick(all)
    const op = r()
    const p = parent as Record<string | number, unknown>
    if (op < 0.45) p[key] = pick(values(r)) // wrong type / out of range
    else if (op < 0.65) { if (Array.isArray(parent)) parent.splice(key as number, 1); else delete p[key] } // delete (required keys too)
    else if (op < 0.85) {
      // An unknown or prototype-named key (as an own property, the way the YAML parser makes it) on an object.
      const inner = p[key]
      const target = inner !== null && typeof inner === 'object' && !Array.isArray(inner) ? inner as Record<string, unknown> : Array.isArray(parent) ? undefined : p
      const own = { value: pick(values(r)), enumerable: true, configurable: true, writable: true }
      if (target !== undefined) Object.defineProperty(target, pick(EVIL_KEYS), own)
      else p[key] = Object.defineProperty({}, pick(EVIL_KEYS), own)
    }
    else p[key] = JSON.parse(JSON.stringify(p[key] ?? null)) ?? [p[key], p[key]] // a copy: duplicates in arrays
  }
}

/** Text-level YAML oddities on top of the tree mutations. */
function mutateText (text: string, r: () => number): string {
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!
  const op = r()
  if (op < 0.5) return text
  if (op < 0.6) return text + pick(['logging:\n  level: info\n', 'routes: []\n', 'http: {}\n']) // duplicate top-level key
  if (op < 0.7) return text.replace(/: (\d+)$/m, ': !!binary aGVsbG8=') // a tag giving a Buffer
  if (op < 0.75) return text.replace(/: (\S+)$/m, ': !custom $1') // an unknown tag
  if (op < 0.8) return '%YAML 1.1\n---\n' + text + '---\nsecond: document\n' // two documents
  if (op < 0.85) { const i = Math.floor(r() * text.length); return text.slice(0, i) + pick(['\t', '{', ']', '&', '*x', '"', '\u0000', ': :', '\n  - ']) + text.slice(i) } // byte noise
  if (op < 0.9) return text.replace(/^(\w+):/m, '$1: &anchor\n  self: *anchor\n$1-x:') // alias cycle
  if (op < 0.95) return 'gateway: &g { id: a }\nextra: *g\n' + text // alias to an unknown key
  return '<<: { bogus: 1 }\n' + text // merge key
}

const BOMB = `a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
routes: *i
`

/** A problem line of ConfigError: `path: message` where path is `(root)` or dotted keys with [n] indexes. */
const PROBLEM_RE = /^ {2}(?:\(root\)|[^\s:][^:]*?): \S/

const dir = mkdtempSync(join(tmpdir(), 'ferry-fuzz-'))
const file = join(dir, 'ferry.yaml')

function tryLoad (text: string): { ok: true } | { ok: false, code: string, message: string } {
  writeFileSync(file, text)
  try {
    loadConfig(file, {})
    return { ok: true }
  } catch (err) {
    if (!isFerryError(err)) throw new Error(`not a FerryError: ${(err as Error)?.stack ?? String(err)}\n--- input ---\n${text.slice(0, 2000)}`)
    return { ok: false, code: err.code, message: err.message }
  }
}

t.test('3000 seeded mutations of valid configs: each loads, or is refused with FERRY_ERR_CONFIG_INVALID naming field paths or FERRY_ERR_CONFIG_READ naming the file', async (t) => {
  const N = 3000
  const tally: Record<string, number> = {}
  let worstMs = 0
  let problems = 0
  for (let i = 0; i < N; i++) {
    const r = rng(0xfe77 + i)
    const cfg = structuredClone(BASES[i % BASES.length]!)
    mutateTree(cfg, r)
    let text: string
    try { text = stringify(cfg) } catch { text = JSON.stringify(cfg) ?? '' }
    text = mutateText(text, r)
    const t0 = performance.now()
    let res: ReturnType<typeof tryLoad>
    try {
      res = tryLoad(text)
    } catch (err) {
      t.fail(`seed ${i}: ${(err as Error).message}`)
      break
    }
    worstMs = Math.max(worstMs, performance.now() - t0)
    const kind = res.ok ? 'loaded' : res.code
    tally[kind] = (tally[kind] ?? 0) + 1
    if (!res.ok && res.code === 'FERRY_ERR_CONFIG_INVALID') {
      const lines = res.message.split('\n').slice(1)
      const bad = lines.filter((l) => !PROBLEM_RE.test(l))
      if (lines.length === 0 || bad.length > 0) { t.fail(`seed ${i}: a problem line without a field path: ${JSON.stringify(bad[0] ?? res.message)}`); break }
      problems += lines.length
    } else if (!res.ok && res.code === 'FERRY_ERR_CONFIG_READ') {
      if (!res.message.includes(file)) { t.fail(`seed ${i}: a read error that does not name the file: ${res.message.slice(0, 200)}`); break }
    } else if (!res.ok) {
      t.fail(`seed ${i}: unexpected code ${res.code}`)
      break
    }
  }
  const total = Object.values(tally).reduce((a, b) => a + b, 0)
  t.equal(total, N, `all ${N} mutated configs ended in a load or a FerryError (${JSON.stringify(tally)}; ${problems} field-named problems)`)
  t.ok((tally.FERRY_ERR_CONFIG_INVALID ?? 0) > N / 3, `most mutations are refused by the schema (${tally.FERRY_ERR_CONFIG_INVALID ?? 0} of ${N})`)
  t.ok((tally.FERRY_ERR_CONFIG_READ ?? 0) > 0 && (tally.loaded ?? 0) > 0, 'some are refused as YAML and some still load (the fuzzer reaches all three outcomes)')
  t.ok(worstMs < 5000, `no load hangs: the slowest took ${Math.round(worstMs)} ms (bound 5000 ms)`)
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype was not polluted by __proto__ / constructor keys')
  t.same(Object.keys(Object.prototype), [], 'Object.prototype has no enumerable keys')
})

t.test('hostile YAML: alias bomb, deep nesting, duplicate keys, prototype keys', async (t) => {
  const t0 = performance.now()
  const bomb = tryLoad(BOMB)
  t.ok(!bomb.ok && bomb.code === 'FERRY_ERR_CONFIG_READ', 'a billion-laughs alias bomb is refused with FERRY_ERR_CONFIG_READ')
  t.match(bomb.ok ? '' : bomb.message, /alias count|resource exhaustion/i, 'the message says why (the yaml package\'s alias limit)')
  t.ok(performance.now() - t0 < 2000, `refused without expanding it (${Math.round(performance.now() - t0)} ms; bound 2000 ms)`)

  const deep = tryLoad('routes: ' + '['.repeat(20000) + ']'.repeat(20000) + '\n')
  t.ok(!deep.ok && (deep.code === 'FERRY_ERR_CONFIG_READ' || deep.code === 'FERRY_ERR_CONFIG_INVALID'), `20000 nested arrays are refused as a FerryError (${deep.ok ? 'loaded' : deep.code})`)

  const dup = tryLoad('upstreams:\n  api: { protocol: http, endpoints: ["127.0.0.1:1"] }\nroutes:\n  - { upstream: api }\nroutes: []\n')
  t.ok(!dup.ok && dup.code === 'FERRY_ERR_CONFIG_READ' && /unique/.test(dup.message), 'a duplicate key is refused (Map keys must be unique), not silently last-wins')

  const proto = tryLoad('__proto__: { polluted: 1 }\nconstructor: { prototype: { polluted: 1 } }\nupstreams:\n  api: { protocol: http, endpoints: ["127.0.0.1:1"], __proto__: { pool: { maxConnections: 99999 } } }\nroutes:\n  - { upstream: api }\n')
  t.ok(!proto.ok && proto.code === 'FERRY_ERR_CONFIG_INVALID', 'prototype keys are refused by the schema')
  t.match(proto.ok ? '' : proto.message, /__proto__: unknown key/, 'naming __proto__ as an unknown key')
  t.match(proto.ok ? '' : proto.message, /upstreams\.api\.__proto__: unknown key/, 'also nested, with its path')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'and nothing was polluted')

  const renamed = tryLoad('http: { trustForwardedFor: true }\nupstreams:\n  api: { protocol: http, endpoints: ["127.0.0.1:1"] }\nroutes:\n  - { upstream: api }\n')
  t.match(renamed.ok ? '' : renamed.message, /http\.trustForwardedFor: unknown key \(did you mean trustedProxies\?\)/, 'the removed http.trustForwardedFor is refused with a hint to trustedProxies')
})

t.test('through the CLI: `ferry check` exits 1 naming the field for mutated configs', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['bad trustedProxies entry', { ...BASES[0], http: { trustedProxies: ['10.0.0.0/33'] } }, /http\.trustedProxies\[0\]: must be an IP address or CIDR/],
    ['bodyIdleMs above what uWS allows', { ...BASES[0], http: { bodyIdleMs: 10000 } }, /http\.bodyIdleMs: must be an integer of 100-9000 ms/],
    ['negative limit', { ...BASES[0], limits: { maxWebSocketSessionsPerIp: -1 } }, /limits\.maxWebSocketSessionsPerIp: must be a non-negative integer/],
    ['unknown key in limits', { ...BASES[0], limits: { maxConnsPerIp: 1 } }, /limits\.maxConnsPerIp: unknown key/],
    ['a body buffer one client could never fill', { ...BASES[0], http: { bufferBodyBytes: 2_000_000 }, limits: { maxBufferedBodyBytesPerIp: 1_000_000 } }, /http\.bufferBodyBytes: must not exceed limits\.maxBufferedBodyBytesPerIp \(1000000\)/],
    ['string for a number', { ...BASES[1], limits: { maxWebSocketSessions: 'many' } }, /limits\.maxWebSocketSessions: must be a non-negative integer \(got "many"\)/],
  ]
  for (const [name, cfg, re] of cases) {
    const f = join(dir, `cli-${name.replace(/\W+/g, '-')}.yaml`)
    writeFileSync(f, stringify(cfg))
    const r = await runCli(['check', '--config', f])
    t.equal(r.code, 1, `${name}: ferry check exits 1`)
    t.match(r.stderr, /FERRY_ERR_CONFIG_INVALID/, `${name}: stderr names FERRY_ERR_CONFIG_INVALID`)
    t.match(r.stderr, re, `${name}: and the field`)
  }
  writeFileSync(join(dir, 'bomb.yaml'), BOMB)
  const b = await runCli(['check', '--config', join(dir, 'bomb.yaml')])
  t.equal(b.code, 1, 'the alias bomb: ferry check exits 1')
  t.match(b.stderr, /FERRY_ERR_CONFIG_READ/, 'the alias bomb: FERRY_ERR_CONFIG_READ')
})
