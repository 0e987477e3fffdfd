import t, { type Test } from 'tap'
import pino from 'pino'
import { ConnectionLimits, type LimitSlot } from '../src/edge/limits.js'
import { FerryError } from '../src/errors.js'
import { Metrics } from '../src/observability/metrics.js'
import { LEASE_WAIT_MS, PodIpCounts, PodIpTable, type IpCall, type IpToWorker } from '../src/planes/ip-counts.js'
import { validateConfig, type Config } from '../src/config/load.js'

// The pod's per-IP leases (src/planes/ip-counts.ts) between the workers' limits and the control plane's
// table, with the IPC channel replaced by an asynchronous hop in this process (the real channel, with
// real processes and clients, is in test/workers.test.ts). What is checked: the pod never holds more
// than the figure for a client, whatever the order of takes, releases and messages; a busy client
// within its lease costs no message; unused slots move to the worker that needs them; a worker decides
// alone only within its even part when nobody answers.

const log = pino({ level: 'silent' })

function limitsCfg (extra: Partial<Config['limits']>): Config['limits'] {
  return validateConfig({ upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/' }, upstream: 'api' }], limits: extra }).limits
}

interface Pod { table: PodIpTable, counts: PodIpCounts[], limits: ConnectionLimits[], sent: IpCall[][] }

/** `workers` workers' limits wired to one table; each message is delivered after `hop`. */
function pod (workers: number, extra: Partial<Config['limits']>, hop: (fn: () => void) => void = setImmediate): Pod {
  const sent: IpCall[][] = []
  const counts: PodIpCounts[] = []
  const table = new PodIpTable(workers, (w, batch: IpToWorker[]) => {
    hop(() => { counts[w]!.receive(batch) })
  })
  const limits = Array.from({ length: workers }, (_, w) => {
    sent.push([])
    counts.push(new PodIpCounts(workers, (calls) => {
      sent[w]!.push(...calls)
      hop(() => { table.serve(w, calls) })
    }, log))
    return new ConnectionLimits(limitsCfg(extra), new Metrics(), counts[w])
  })
  t.teardown(() => { for (const c of counts) c.close() })
  return { table, counts, limits, sent }
}

async function turns (n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve))
}

/** Whether a take was granted (awaiting the pod when it had to be asked). */
async function granted (s: FerryError | LimitSlot): Promise<boolean> {
  if (s instanceof FerryError) return false
  return (await s.held) === undefined
}

t.test('one client over two workers: the pod holds at most the figure; unused slots move to the worker that needs them', async (t) => {
  const { table, limits } = pod(2, { maxWebSocketSessionsPerIp: 3 })
  const held: Array<FerryError | LimitSlot> = []
  const results: boolean[] = []
  for (let i = 0; i < 8; i++) {
    const s = limits[i % 2]!.takeSession('10.0.0.1')
    held.push(s)
    results.push(await granted(s))
  }
  t.equal(results.filter(Boolean).length, 3, `3 of 8 over both workers (${results.join(' ')})`)
  t.same(table.status().ws, { lent: 3, clientIps: 1 })
  t.ok(await granted(limits[1]!.takeSession('10.0.0.2')), 'another client has its own figure')
  // Worker 0 gives one back; worker 1 needs one: the control plane asks worker 0 to cede it.
  const w0 = held.map((s, i) => ({ s, i })).find(({ s, i }) => i % 2 === 0 && !(s instanceof FerryError) && results[i])!
  ;(w0.s as LimitSlot).release()
  ;(w0.s as LimitSlot).release()
  const moved = limits[1]!.takeSession('10.0.0.1')
  t.ok(await granted(moved), 'the slot worker 0 no longer uses is taken on worker 1')
  t.notOk(await granted(limits[1]!.takeSession('10.0.0.1')), 'and no more: a second release of the same slot gave nothing back')
  t.notOk(await granted(limits[0]!.takeSession('10.0.0.1')), 'nor on worker 0')
})

t.test('a busy client within its lease costs no message', async (t) => {
  const { limits, sent } = pod(2, { maxRequestsInFlightPerIp: 50 })
  const first = await Promise.all(Array.from({ length: 10 }, async () => { const s = limits[0]!.takeRequest('10.0.0.7'); t.ok(await granted(s)); return s as LimitSlot }))
  const before = sent[0]!.length
  t.ok(before >= 1, 'the first takes borrowed')
  for (const s of first) s.release()
  let asked = 0
  for (let i = 0; i < 1000; i++) {
    const s = limits[0]!.takeRequest('10.0.0.7') as LimitSlot
    if (s.held !== undefined) asked++
    s.release()
  }
  t.equal(asked, 0, 'each was decided at once')
  await turns(3)
  t.equal(sent[0]!.length, before, '1,000 requests within the lease sent nothing')
})

/** What a random run holds: admitted (ok), refused, or still asked (undefined); its client and amount. */
interface Held { readonly ip: string, readonly amount: number, ok: boolean | undefined, readonly release: () => void }

/**
 * 6,000 random steps over 3 workers whose messages go through `queue` (delivered in order, a few at a
 * time): takes (`take`, by a random worker for one of `ips`), releases at any time (also while the pod
 * is asked), workers' sweeps. Returns the most any client held admitted at once, the steps at which one
 * held more than `figure`, and the refusals. Then everything is released and the sweeps run: the pod and
 * its workers must hold nothing.
 */
async function randomRun (t: Test, p: Pod, queue: Array<() => void>, ips: string[], figure: number, take: (worker: number, ip: string, rand: () => number) => Held | undefined): Promise<{ peak: number, over: number, refused: number }> {
  let seed = 11
  const rand = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const held: Held[] = []
  let peak = 0
  let over = 0
  let refused = 0
  let clock = performance.now()
  for (let step = 0; step < 6000; step++) {
    const r = rand()
    if (r < 0.45) {
      const h = take(Math.floor(rand() * 3), ips[Math.floor(rand() * ips.length)]!, rand)
      if (h === undefined) refused++
      else held.push(h)
    } else if (r < 0.62 && held.length > 0) {
      const [h] = held.splice(Math.floor(rand() * held.length), 1)
      if (h!.ok === false) refused++
      h!.release()
    } else if (r < 0.64) {
      // A worker's sweep: leases unused for a while go back.
      clock += 2000
      p.counts[Math.floor(rand() * 3)]!.returnIdle(clock)
    } else {
      // Batches go out after this turn; messages are delivered in order, a few at a time.
      for (let n = Math.ceil(rand() * 3); n > 0 && queue.length > 0; n--) queue.shift()!()
      await turns(1)
    }
    // What the workers admitted and still hold, per client, whichever worker holds it.
    for (const ip of ips) {
      const n = held.reduce((a, h) => a + (h.ip === ip && h.ok === true ? h.amount : 0), 0)
      peak = Math.max(peak, n)
      if (n > figure) over++
    }
  }
  for (const h of held) h.release()
  for (let i = 0; i < 50 && queue.length > 0; i++) { while (queue.length > 0) queue.shift()!(); await turns(2) }
  for (const c of p.counts) c.returnIdle(clock + 10_000)
  for (let i = 0; i < 50; i++) { while (queue.length > 0) queue.shift()!(); await turns(2) }
  t.same(p.table.status(), { http: { lent: 0, clientIps: 0 }, ws: { lent: 0, clientIps: 0 } }, 'everything lent came back')
  t.same(p.counts.map((c) => c.status()), [0, 1, 2].map(() => ({ clientIps: 0, lent: 0, used: 0 })), 'and the workers hold nothing')
  return { peak, over, refused }
}

t.test('random takes, releases, sweeps and deliveries in any order never hold more than the figure; all goes back', async (t) => {
  const queue: Array<() => void> = []
  const p = pod(3, { maxRequestsInFlightPerIp: 4 }, (fn) => queue.push(fn))
  const { peak, over } = await randomRun(t, p, queue, ['10.0.0.0', '10.0.0.1'], 4, (w, ip) => {
    const s = p.limits[w]!.takeRequest(ip)
    if (s instanceof FerryError) return undefined
    const h: Held = { ip, amount: 1, ok: s.held === undefined ? true : undefined, release: s.release }
    if (s.held !== undefined) void s.held.then((err) => { h.ok = err === undefined })
    return h
  })
  t.equal(over, 0, 'no client ever held more than its 4 over the 3 workers')
  t.equal(peak, 4, 'the run reached the figure')
})

t.test('a control plane that does not answer: the worker decides alone within its even part; a late grant goes back when idle', async (t) => {
  const calls: IpCall[] = []
  const counts = new PodIpCounts(2, (c) => { calls.push(...c) }, log)
  t.teardown(() => counts.close())
  const outcomes: string[] = []
  counts.onBorrow = (r) => { outcomes.push(r) }
  const limits = new ConnectionLimits(limitsCfg({ maxWebSocketSessionsPerIp: 3 }), new Metrics(), counts)
  const started = performance.now()
  const got = await Promise.all([1, 2, 3].map(async () => await granted(limits.takeSession('10.0.0.9'))))
  t.ok(performance.now() - started >= LEASE_WAIT_MS - 10, 'decided after the wait')
  t.same(got, [true, true, false], 'within ⌈3 ÷ 2⌉ = 2 on this worker, the third refused')
  t.same(calls, [{ op: 'borrow', scope: 'ws', ip: '10.0.0.9', want: 3, max: 3 }], 'the three takes of one turn were one borrow')
  t.same(outcomes, ['unanswered'], 'counted (ferry_ip_lease_borrows_total{result="unanswered"})')
  counts.granted('ws', '10.0.0.9', 3, 3)
  t.same(counts.status(), { clientIps: 1, lent: 3, used: 2 })
  counts.returnIdle(performance.now() + 10_000)
  await turns(1)
  t.same(calls.at(-1), { op: 'return', scope: 'ws', ip: '10.0.0.9', n: 1 }, 'the late grant\'s unused slot went back')
})

t.test('a worker that exits returns what it was lent; a cede round that gets no answer ends', async (t) => {
  const out: Array<[number, IpToWorker]> = []
  const table = new PodIpTable(2, (w, batch) => { for (const m of batch) out.push([w, m]) })
  table.serve(0, [{ op: 'borrow', scope: 'ws', ip: '10.0.0.1', want: 2, max: 2 }])
  table.serve(1, [{ op: 'borrow', scope: 'ws', ip: '10.0.0.1', want: 1, max: 2 }])
  await turns(1)
  t.same(out.map(([w, m]) => [w, m.op]), [[0, 'grant'], [0, 'cede']], 'worker 1 waits while worker 0 is asked to cede')
  t.same(out[0]![1], { op: 'grant', scope: 'ws', ip: '10.0.0.1', n: 2, max: 2 })
  await new Promise((resolve) => setTimeout(resolve, LEASE_WAIT_MS + 50))
  t.same(out.at(-1), [1, { op: 'grant', scope: 'ws', ip: '10.0.0.1', n: 0, max: 2 }], 'no answer: worker 1 gets what is free, nothing')
  table.drop(0)
  t.same(table.status().ws, { lent: 0, clientIps: 0 }, 'the exited worker\'s slots are free')
  table.serve(1, [{ op: 'borrow', scope: 'ws', ip: '10.0.0.1', want: 2, max: 2 }])
  await turns(1)
  t.same(out.at(-1), [1, { op: 'grant', scope: 'ws', ip: '10.0.0.1', n: 2, max: 2 }])
  table.serve(0, [{ op: 'return', scope: 'ws', ip: '10.0.0.1', n: 5 }])
  t.same(table.status().ws, { lent: 2, clientIps: 1 }, 'a return from a worker that holds nothing changes nothing')
})

/**
 * Charges body bytes as a request does: true when allowed (awaiting the pod when it had to be asked);
 * a charge the pod refused counted its bytes until then, and the failed request releases them.
 */
async function charged (limits: ConnectionLimits, ip: string, bytes: number): Promise<boolean> {
  const c = limits.chargeBody(ip, bytes)
  if (c instanceof FerryError) return false
  if ((await c) === undefined) return true
  limits.releaseBody(ip, bytes)
  return false
}

t.test('buffered body bytes of one client over two workers: the pod holds at most the figure; freed bytes move to the worker that needs them', async (t) => {
  const KiB = 1024
  // 64 KiB: the pod lends it in units of 1 KiB.
  const { table, limits, counts, sent } = pod(2, { maxBufferedBodyBytesPerIp: 64 * KiB })
  const ip = '10.0.1.1'
  t.ok(await charged(limits[0]!, ip, 40 * KiB), 'worker 0 buffers 40 KiB')
  t.same(table.status().body, { lent: 40, clientIps: 1 }, '40 units lent')
  t.notOk(await charged(limits[1]!, ip, 30 * KiB), 'worker 1 may not add 30 KiB: the pod would hold 70')
  t.ok(await charged(limits[1]!, ip, 24 * KiB), 'but 24 KiB: the pod holds the figure')
  t.notOk(await charged(limits[0]!, ip, 1), 'not one byte more on worker 0')
  t.same(limits[1]!.status(), { ...limits[1]!.status(), bufferedBodyBytes: 24 * KiB }, 'worker 1 counts what it buffers')
  // A body whose chunks arrive one by one asks for a unit only when a chunk crosses into the next.
  limits[0]!.releaseBody(ip, 40 * KiB)
  await turns(3)
  let ok = 0
  const asked = (): number => sent[1]!.filter((c) => c.op === 'borrow').length
  const before = asked()
  for (let i = 0; i < 160; i++) if (await charged(limits[1]!, ip, KiB / 4)) ok++
  const borrows = asked() - before
  t.equal(ok, 160, 'worker 1 buffers the 40 KiB worker 0 freed, in 160 chunks of 256 bytes')
  t.equal(borrows, 40, 'and asked the pod once per unit of 1 KiB, not once per chunk')
  t.same(table.status().body, { lent: 64, clientIps: 1 })
  limits[1]!.releaseBody(ip, 64 * KiB)
  for (const c of counts) c.returnIdle(performance.now() + 10_000)
  await turns(4)
  t.same(table.status().body, undefined, 'all went back')
  t.same(counts.map((c) => c.status()), [0, 1].map(() => ({ clientIps: 0, lent: 0, used: 0 })))
})

t.test('random body charges and releases over three workers in any order never buffer more than the figure for a client; all goes back', async (t) => {
  const queue: Array<() => void> = []
  const figure = 64 * 1100
  const p = pod(3, { maxBufferedBodyBytesPerIp: figure }, (fn) => queue.push(fn))
  const { peak, over, refused } = await randomRun(t, p, queue, ['10.0.1.0', '10.0.1.1'], figure, (w, ip, rand) => {
    const bytes = 1 + Math.floor(rand() * 20_000)
    const c = p.limits[w]!.chargeBody(ip, bytes)
    if (c instanceof FerryError) return undefined
    // Counted until released, also when the pod refuses it: the failed request releases it then.
    let counted = true
    const release = (): void => { if (counted) { counted = false; p.limits[w]!.releaseBody(ip, bytes) } }
    const h: Held = { ip, amount: bytes, ok: c === undefined ? true : undefined, release }
    if (c !== undefined) void c.then((err) => { h.ok = err === undefined; if (!h.ok) release() })
    return h
  })
  t.equal(over, 0, `no client ever buffered more than ${figure} bytes over the 3 workers`)
  t.ok(peak > figure * 0.9, `the run came near the figure (peak ${peak})`)
  t.ok(refused > 0, `and past it (${refused} charges refused)`)
  t.same(p.limits.map((l) => (l.status() as { bufferedBodyBytes: number }).bufferedBodyBytes), [0, 0, 0], 'no bytes stay counted')
})
