import { writeFileSync } from 'node:fs'
import t from 'tap'
import { Pool } from 'undici'
import { stringify } from 'yaml'
import { adminRequest } from './helpers/admin.js'
import { startBackend } from './helpers/backend.js'
import { metric, startFerry, waitFor, type FerryProcess } from './helpers/ferry.js'
import { validateConfig, type ConfigError } from '../src/config/load.js'

/**
 * Version-aware routing on an HTTP route (docs/canary.md): labelled endpoints, a weighted split sticky
 * per key (weighted rendezvous hashing, so two gateways agree without talking), a pin header, weight
 * changes by reload and by the admin API, fallback when a subset is down, and config errors by name.
 * Real gateway processes, real node:http backends, loopback.
 */

const TOKEN = 'canary-admin-token-0123456789'
const KEYS = 2000

type Weights = Record<string, number>

function config (v1: string, v2: string, w: Weights, extra: Record<string, unknown> = {}): Record<string, any> {
  return {
    upstreams: {
      api: {
        protocol: 'http',
        endpoints: [{ address: v1, labels: { version: 'v1', zone: 'a' } }, { address: v2, labels: { version: 'v2', zone: 'a' } }],
        // A dead endpoint is out after its first failure (the fallback test).
        ejection: { consecutiveFailures: 1, ejectMs: 60_000 },
      },
    },
    routes: [{
      match: { path: '/' },
      upstream: 'api',
      split: { key: 'header:x-user', pin: 'header:x-canary', subsets: Object.entries(w).map(([v, weight]) => ({ labels: { version: v }, weight })) },
    }],
    admin: { token: TOKEN },
    ...extra,
  }
}

/** Rewrites the config file a gateway reads on a reload, with the listeners startFerry gave it. */
function rewrite (f: FerryProcess, cfg: Record<string, any>): void {
  writeFileSync(String(f.child.spawnargs.at(-1)), stringify({
    ...cfg,
    listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } },
    logging: { pretty: false },
    drain: { acceptGraceMs: 0, spreadMs: 0, maxMigrationsPerSec: 1_000_000, deadlineMs: 5000 },
  }))
}

const pools = new Map<FerryProcess, Pool>()
t.teardown(async () => { for (const p of pools.values()) await p.destroy() })

/** The version answering each key (`user-0` … `user-{n-1}`), 16 requests at a time over keep-alive connections. */
async function versions (f: FerryProcess, n: number, headers: Record<string, string> = {}): Promise<string[]> {
  let pool = pools.get(f)
  if (pool === undefined) { pool = new Pool(f.url, { connections: 16 }); pools.set(f, pool) }
  const out: string[] = new Array(n)
  let next = 0
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < n) {
      const i = next++
      const r = await pool.request({ path: '/who', method: 'GET', headers: { 'x-user': `user-${i}`, ...headers } })
      out[i] = await r.body.text()
    }
  }))
  return out
}

const count = (a: string[], v: string): number => a.filter((x) => x === v).length
const differing = (a: string[], b: string[]): number => a.filter((x, i) => x !== b[i]).length

async function putSplit (f: FerryProcess, route: string, body: unknown, token?: string): Promise<{ status: number, body: any }> {
  const r = await fetch(`${f.adminUrl}/routes/${route}/split`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  })
  const text = await r.text()
  let json: unknown
  try { json = JSON.parse(text) } catch { json = text }
  return { status: r.status, body: json }
}

t.test('http split 90/10: share within bounds, sticky per key, the same on two gateways, pin, reload and admin changes, fallback', async (t) => {
  const b1 = await startBackend(t, (_req, res) => { res.end('v1') })
  const b2 = await startBackend(t, (_req, res) => { res.end('v2') })
  const cfg = config(b1.address, b2.address, { v1: 90, v2: 10 })
  const a = await startFerry(t, cfg)
  const b = await startFerry(t, cfg)

  const onA = await versions(a, KEYS)
  const v2 = count(onA, 'v2')
  t.equal(count(onA, 'v1') + v2, KEYS, `every one of ${KEYS} requests answered by v1 or v2`)
  t.ok(v2 >= 140 && v2 <= 260, `${KEYS} keys at 90/10: v2 took ${v2} (10% ± 3%: 140-260)`)
  const onB = await versions(b, KEYS)
  t.equal(differing(onA, onB), 0, `the other gateway sends each of the ${KEYS} keys to the same version (0 differ)`)
  const again = await versions(a, 300)
  t.equal(differing(again, onA.slice(0, 300)), 0, 'a key asked again stays on its version (300 keys, 0 moved)')

  // The pin header names a subset; an unknown value is ignored.
  const v1Keys = onA.map((v, i) => v === 'v1' ? i : -1).filter((i) => i >= 0).slice(0, 100)
  const pinned = await Promise.all(v1Keys.map(async (i) => await (await fetch(`${a.url}/who`, { headers: { 'x-user': `user-${i}`, 'x-canary': 'v2' } })).text()))
  t.equal(count(pinned, 'v2'), 100, 'x-canary: v2 sends 100 keys of v1 to v2 (100 of 100)')
  const unknownPin = await versions(a, 200, { 'x-canary': 'v9' })
  t.equal(differing(unknownPin, onA.slice(0, 200)), 0, 'an unknown pin value is ignored (200 keys, 0 moved)')

  // Counted per subset: metrics and /status.
  const assigned = async (f: FerryProcess, subset: string, by: string): Promise<number> => await metric(f, `ferry_split_assigned_total{route="*/",subset="${subset}",by="${by}"}`)
  t.equal(await assigned(a, 'v2', 'weight'), v2 + count(again, 'v2') + count(unknownPin, 'v2'), 'ferry_split_assigned_total{by="weight"} counts every v2 request picked by weight')
  t.equal(await assigned(a, 'v2', 'pin'), 100, 'and by="pin" the 100 pinned ones')
  const st = JSON.parse((await adminRequest(a, '/status', { token: TOKEN })).body)
  const split = st.routes.find((r: any) => r.name === '*/').split
  t.match(split, { key: 'header:x-user', pin: 'header:x-canary', setBy: 'config' }, '/status shows the split, its key and pin')
  t.match(split.subsets, [{ name: 'v1', weight: 90, labels: { version: 'v1' }, endpoints: 1, healthy: 1 }, { name: 'v2', weight: 10, endpoints: 1, healthy: 1, assigned: { pin: 100 } }], '/status: per subset its weight, endpoints and counts')
  t.match(st.upstreams.find((u: any) => u.name === 'api').endpoints[1].labels, { version: 'v2', zone: 'a' }, '/status lists each endpoint with its labels')

  // Reload to 50/50: new requests move at once; only v1 keys move, and the mapping is fixed.
  rewrite(a, config(b1.address, b2.address, { v1: 50, v2: 50 }))
  t.equal((await adminRequest(a, '/reload', { method: 'POST', token: TOKEN })).status, 200, 'reload to 50/50 accepted')
  const half = await versions(a, KEYS)
  const v2Half = count(half, 'v2')
  t.ok(v2Half >= 900 && v2Half <= 1100, `after the reload v2 took ${v2Half} of ${KEYS} (50% ± 5%: 900-1100)`)
  t.equal(onA.filter((v, i) => v === 'v2' && half[i] !== 'v2').length, 0, 'raising v2\'s weight moved no key from v2 back to v1 (0)')
  t.equal(differing(await versions(a, 500), half.slice(0, 500)), 0, 'the new mapping is deterministic (500 keys again, 0 differ)')

  // The admin API: the token is required; bad weights are refused by name; good ones apply at once.
  t.equal((await putSplit(b, '*/', { weights: { v1: 50, v2: 50 } })).status, 401, 'PUT /routes/*/split without the token: 401')
  const bad = await putSplit(b, '*/', { weights: { v1: 50, v2: 40 } }, TOKEN)
  t.equal(bad.status, 400, 'weights summing to 90: 400')
  t.match(bad.body.errors.join('\n'), /weights: must sum to 100 \(got 90/, 'naming the field and the sum')
  const unknown = await putSplit(b, '*/', { weights: { v1: 50, v3: 50 } }, TOKEN)
  t.match(unknown.body.errors.join('\n'), /weights\.v3: names no subset of route \*\/ \(subsets: v1, v2\)/, 'an unknown subset is refused by name')
  t.equal((await putSplit(b, '*/nope', { weights: { v1: 100 } }, TOKEN)).status, 404, 'an unknown route: 404')
  t.equal(differing(await versions(b, 300), onA.slice(0, 300)), 0, 'refused changes left the running split as it was (300 keys, 0 moved)')
  // The root route `*/` is also `/routes/*/split`.
  const ok = await putSplit(b, '*', { weights: { v1: 50, v2: 50 } }, TOKEN)
  t.equal(ok.status, 200, 'PUT with the token and weights summing to 100: 200')
  t.match(ok.body.split, { setBy: 'admin', subsets: [{ name: 'v1', weight: 50 }, { name: 'v2', weight: 50 }] }, 'the answer shows the new split')
  t.equal(differing(await versions(b, 1000), half.slice(0, 1000)), 0, 'gateway B changed by the admin API agrees with A changed by reload (1000 keys, 0 differ)')

  // A reload that breaks the split is refused; the running weights stay.
  const broken = config(b1.address, b2.address, { v1: 50, v2: 30 })
  rewrite(a, broken)
  const refused = await adminRequest(a, '/reload', { method: 'POST', token: TOKEN })
  t.equal(refused.status, 400, 'reload with weights summing to 80: refused')
  t.match(refused.body, /routes\[0\]\.split\.subsets: weights must sum to 100 \(got 80/, 'naming routes[0].split.subsets')
  t.equal(differing(await versions(a, 300), half.slice(0, 300)), 0, 'the running 50/50 split is kept (300 keys, 0 moved)')

  // v2 goes away: its share falls back to v1 (counted), nothing fails once it is ejected.
  await b2.close()
  const fallen = await versions(a, 200)
  t.equal(count(fallen, 'v1'), 200, 'with v2 down, all 200 requests are answered by v1 (GETs retried, then v2 ejected)')
  t.ok(await metric(a, 'ferry_split_fallbacks_total{route="*/",subset="v2",reason="unhealthy"}') >= 50, 'counted as fallbacks from v2 (unhealthy; ≥ 50 of ~100 v2 keys)')
  t.ok(await assigned(a, 'v1', 'fallback') >= 50, 'and as assigned to v1 by fallback')
})

t.test('http queue lanes: requests pinned to a full v2 wait for v2 without holding up v1 requests behind them', async (t) => {
  const held: Array<() => void> = []
  const b1 = await startBackend(t, (_req, res) => { res.end('v1') })
  const b2 = await startBackend(t, (_req, res) => { held.push(() => { res.end('v2') }) })
  const cfg = config(b1.address, b2.address, { v1: 100, v2: 0 })
  cfg.upstreams.api.pool = { maxConnections: 1, queueTimeoutMs: 4000 }
  const f = await startFerry(t, cfg)
  const pinned = Array.from({ length: 3 }, async (_, i) => await (await fetch(`${f.url}/p${i}`, { headers: { 'x-user': `p-${i}`, 'x-canary': 'v2' } })).text())
  await waitFor('one pinned request at v2 and two queued for it', async () => held.length === 1 && await metric(f, 'ferry_upstream_queue_depth{upstream="api"}') === 2)
  const started = Date.now()
  const plain = await versions(f, 40)
  const ms = Date.now() - started
  t.equal(count(plain, 'v1'), 40, '40 unpinned requests answered by v1 while v2\'s lane is full')
  t.ok(ms < 3000, `without waiting behind the queued v2 requests (${ms} ms, < 3000; their queueTimeoutMs is 4000)`)
  // One v2 connection: each answer lets the next queued pinned request through.
  for (let i = 0; i < 3; i++) {
    await waitFor('a pinned request at v2', () => held.length > 0)
    held.shift()!()
  }
  t.same(await Promise.all(pinned), ['v2', 'v2', 'v2'], 'and the queued pinned requests got v2 in their turn')
})

t.test('config errors name the field: weights not summing to 100 (the gateway does not start), a label no endpoint has, a dns upstream, bad labels', async (t) => {
  const base = config('127.0.0.1:1', '127.0.0.1:2', { v1: 90, v2: 10 })
  base.routes[0].split.subsets[1].weight = 20
  await t.rejects(startFerry(t, base), /routes\[0\]\.split\.subsets: weights must sum to 100 \(got 110: v1 90 \+ v2 20\)/, 'sum 110: refused at start, naming routes[0].split.subsets')
  // The same validation, in-process (the gateway runs exactly this at start and reload).
  const problems = (cfg: unknown): string => { try { validateConfig(cfg); return '' } catch (err) { return (err as ConfigError).problems.join('\n') } }
  t.match(problems(config('127.0.0.1:1', '127.0.0.1:2', { v1: 90, v3: 10 })), /^routes\[0\]\.split\.subsets\[1\]\.labels: no endpoint of upstream api carries version=v3 \(its endpoints carry: version=v1,zone=a; version=v2,zone=a\)/m, 'an unknown label: refused, naming the subset\'s labels and what the endpoints carry')
  const dns = config('127.0.0.1:1', '127.0.0.1:2', { v1: 100 })
  dns.upstreams.api = { protocol: 'http', dns: { name: 'api.example', port: 80 } }
  t.match(problems(dns), /routes\[0\]\.split: upstream api takes its endpoints from dns, which carry no labels/, 'a dns upstream: refused (DNS endpoints have no labels)')
  const dup = config('127.0.0.1:1', '127.0.0.1:2', { v1: 50, v2: 50 })
  dup.routes[0].split.subsets[1].labels = { version: 'v1' }
  t.match(problems(dup), /routes\[0\]\.split\.subsets\[1\]\.labels: gives the subset the name of subsets\[0\] \(v1/, 'two subsets of one name: refused')
  const tcp = { upstreams: { t: { protocol: 'tcp', endpoints: [{ address: '127.0.0.1:1', labels: { version: 'v1' } }] } }, listen: { tcp: [{ name: 'x', port: 0, upstream: 't' }] } }
  t.match(problems(tcp), /upstreams\.t\.endpoints\[0\]: must be host:port \(labels are for routes/, 'labels on a tcp upstream: refused (no route can split it)')
  const rebalance = config('127.0.0.1:1', '127.0.0.1:2', { v1: 100 })
  rebalance.routes[0].split.rebalance = true
  t.match(problems(rebalance), /routes\[0\]\.split\.rebalance: moves open sessions by backend handoff, which only mux upstreams have; api is http/, 'rebalance on a route to an http upstream: refused by name')
  const badLabel = config('127.0.0.1:1', '127.0.0.1:2', { v1: 100 })
  badLabel.upstreams.api.endpoints[0].labels = { version: 'v 1' }
  t.match(problems(badLabel), /upstreams\.api\.endpoints\[0\]\.labels\.version: label values are/, 'a malformed label value: refused by name')
})
