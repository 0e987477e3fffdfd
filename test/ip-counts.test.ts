import t from 'tap'
import pino from 'pino'
import { ConnectionLimits, type LimitSlot } from '../src/edge/limits.js'
import { FerryError } from '../src/errors.js'
import { Metrics } from '../src/observability/metrics.js'
import { PodIpCounts, PodIpTable, type IpCall } from '../src/planes/ip-counts.js'
import { validateConfig, type Config } from '../src/config/load.js'

// The pod's per-IP counts (src/planes/ip-counts.ts) between the workers' limits and the control plane's
// table, with the IPC channel replaced by an asynchronous hop in this process (the real channel is in
// test/workers.test.ts). What is checked: the pod never holds more than the figure, whatever the order
// of takes, releases and answers; a worker decides alone only within its even part when nobody answers,
// and a late answer is given back.

const log = pino({ level: 'silent' })

function limitsCfg (extra: Partial<Config['limits']>): Config['limits'] {
  return validateConfig({ upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/' }, upstream: 'api' }], limits: extra }).limits
}

/** Two workers' limits wired to one table; the channel delivers in order, each message after `hop`. */
function pod (workers: number, extra: Partial<Config['limits']>, hop: (fn: () => void) => void = setImmediate): { table: PodIpTable, limits: ConnectionLimits[], sent: IpCall[][] } {
  const table = new PodIpTable(workers)
  const sent: IpCall[][] = []
  const limits = Array.from({ length: workers }, (_, w) => {
    sent.push([])
    let counts: PodIpCounts | undefined = undefined
    counts = new PodIpCounts(workers, (id, call) => {
      sent[w]!.push(call)
      hop(() => {
        const a = table.serve(w, call)
        if (a !== undefined) hop(() => counts!.answer(id, a))
      })
    }, log)
    return new ConnectionLimits(limitsCfg(extra), new Metrics(), counts)
  })
  return { table, limits, sent }
}

async function settle (s: LimitSlot): Promise<boolean> {
  return (await s.held) === undefined
}

t.test('one client over two workers: the pod holds at most the figure, and a release frees a slot on any worker', async (t) => {
  const { table, limits } = pod(2, { maxWebSocketSessionsPerIp: 3 })
  const slots: LimitSlot[] = []
  const results: boolean[] = []
  for (let i = 0; i < 8; i++) {
    const s = limits[i % 2]!.takeSession('10.0.0.1')
    if (s instanceof FerryError) { results.push(false); continue }
    t.ok(s.held instanceof Promise, 'a worker of a pod asks the control plane')
    const ok = await settle(s)
    results.push(ok)
    if (ok) slots.push(s)
  }
  t.same(results.filter(Boolean).length, 3, `3 of 8 over both workers (${results.join(' ')})`)
  t.same(table.status().ws, { slots: 3, clientIps: 1 })
  const other = limits[1]!.takeSession('10.0.0.2')
  t.ok(!(other instanceof FerryError) && await settle(other), 'another client has its own figure')
  slots[0]!.release()
  slots[0]!.release()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(table.status().ws.slots, 3, 'a second release of the same slot gives nothing back')
  const again = limits[1]!.takeSession('10.0.0.1')
  t.ok(!(again instanceof FerryError) && await settle(again), 'the freed slot is taken on the other worker')
})

t.test('random takes and releases in any order never hold more than the figure; everything given back leaves nothing', async (t) => {
  let seed = 11
  const rand = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const queue: Array<() => void> = []
  const { table, limits } = pod(3, { maxRequestsInFlightPerIp: 4 }, (fn) => queue.push(fn))
  const held: Array<{ slot: LimitSlot, ip: string, ok: boolean | undefined }> = []
  let peak = 0
  let over = 0
  for (let step = 0; step < 4000; step++) {
    const r = rand()
    if (r < 0.5) {
      const ip = `10.0.0.${Math.floor(rand() * 2)}`
      const s = limits[Math.floor(rand() * 3)]!.takeRequest(ip)
      if (s instanceof FerryError) continue
      const h = { slot: s, ip, ok: undefined as boolean | undefined }
      void s.held!.then((err) => { h.ok = err === undefined })
      held.push(h)
    } else if (r < 0.62 && held.length > 0) {
      // Released at any time, also while the control plane is still asked.
      const [h] = held.splice(Math.floor(rand() * held.length), 1)
      h!.slot.release()
    } else if (queue.length > 0) {
      // Messages are delivered in order, a few at a time.
      for (let n = Math.ceil(rand() * 3); n > 0 && queue.length > 0; n--) queue.shift()!()
      await new Promise((resolve) => setImmediate(resolve))
    }
    // What the workers admitted and still hold, per client, whichever worker holds it.
    for (const ip of ['10.0.0.0', '10.0.0.1']) {
      const n = held.filter((h) => h.ip === ip && h.ok === true).length
      peak = Math.max(peak, n)
      if (n > 4) over++
    }
  }
  t.equal(over, 0, 'no client ever held more than its 4 over the 3 workers')
  for (const h of held) h.slot.release()
  while (queue.length > 0) { queue.shift()!(); await new Promise((resolve) => setImmediate(resolve)) }
  t.same(table.status().http, { slots: 0, clientIps: 0 }, `all given back (peak ${peak})`)
  t.equal(peak, 4, 'the run reached the figure')
})

t.test('a control plane that does not answer: the worker decides alone within its even part; a late yes is given back', async (t) => {
  const sent: IpCall[] = []
  const answers: Array<() => void> = []
  const table = new PodIpTable(2)
  let counts: PodIpCounts | undefined = undefined
  counts = new PodIpCounts(2, (id, call) => {
    sent.push(call)
    const a = table.serve(0, call)
    if (a !== undefined) answers.push(() => counts!.answer(id, a))
  }, log)
  const limits = new ConnectionLimits(limitsCfg({ maxWebSocketSessionsPerIp: 3 }), new Metrics(), counts)
  const a = limits.takeSession('10.0.0.9') as LimitSlot
  const b = limits.takeSession('10.0.0.9') as LimitSlot
  const c = limits.takeSession('10.0.0.9') as LimitSlot
  const started = performance.now()
  const got = await Promise.all([a, b, c].map(settle))
  t.ok(performance.now() - started >= 240, 'decided after the 250 ms budget')
  t.same(got, [true, true, false], 'within ⌈3 ÷ 2⌉ = 2 on this worker, the third refused')
  t.same(table.status().ws.slots, 3, 'the control plane had counted all three')
  for (const answer of answers) answer()
  const releases = sent.filter((c) => c.op === 'release')
  t.equal(releases.length, 3, 'each late yes was given back at once')
  t.same(table.status().ws, { slots: 0, clientIps: 0 })
  a.release()
  b.release()
  t.equal(sent.filter((c) => c.op === 'release').length, 3, 'a slot the worker admitted alone is not given back to the pod')
  counts.close()
  const d = limits.takeSession('10.0.0.9') as LimitSlot
  t.notOk(await settle(d), 'a closing worker takes no new slot')
})

t.test('a worker that exits takes its slots with it', async (t) => {
  const table = new PodIpTable(2)
  t.ok(table.take(0, 'ws', '10.0.0.1', 2))
  t.ok(table.take(1, 'ws', '10.0.0.1', 2))
  t.notOk(table.take(1, 'ws', '10.0.0.1', 2))
  table.drop(0)
  t.ok(table.take(1, 'ws', '10.0.0.1', 2), 'the exited worker\'s slot is free')
  table.release(0, 'ws', '10.0.0.1')
  t.same(table.status().ws, { slots: 2, clientIps: 1 }, 'a release from a worker that holds nothing changes nothing')
})
