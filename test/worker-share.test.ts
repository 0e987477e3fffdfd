import t from 'tap'
import { NONE, rebalance, type BudgetUse } from '../src/planes/share.js'

// The control plane's sharing of a pod-wide limit between workers (src/planes/share.ts), as a pure
// function driven through many heartbeats of random load: the pod never holds more than the limit, and
// unused capacity reaches the worker that needs it.

/** One worker as the simulation sees it: what it uses, what it enforces, what it was last sent. */
interface Sim { used: number, applied: number, sent: number }

function step (total: number, ws: Sim[], rand: () => number): void {
  // Load changes between heartbeats, bounded by what each worker enforces.
  for (const w of ws) {
    const cap = Math.max(0, w.applied)
    if (rand() < 0.5) w.used = Math.min(cap, w.used + Math.floor(rand() * 4))
    else w.used = Math.max(0, w.used - Math.floor(rand() * 4))
  }
  const rows: BudgetUse[] = ws.map((w) => ({ used: w.used, applied: Math.max(w.applied, w.sent), fixed: false }))
  const next = rebalance(total, rows)
  next.forEach((v, i) => { ws[i]!.sent = v })
  // Some workers apply what they were sent before the next heartbeat, some only after it.
  for (const w of ws) if (rand() < 0.7) w.applied = w.sent
}

t.test('a pod-wide limit shared by heartbeats: never more than the limit held, and spare capacity moves', async (t) => {
  let seed = 7
  const rand = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  for (const [total, n] of [[4, 2], [10, 3], [1, 2], [100, 4]] as const) {
    const ws: Sim[] = Array.from({ length: n }, (_, i) => {
      const v = Math.floor(total / n) + (i < total % n ? 1 : 0)
      return { used: 0, applied: v === 0 ? NONE : v, sent: v === 0 ? NONE : v }
    })
    let worst = 0
    for (let i = 0; i < 2000; i++) {
      step(total, ws, rand)
      const held = ws.reduce((s, w) => s + Math.max(0, Math.max(w.applied, w.sent)), 0)
      const used = ws.reduce((s, w) => s + w.used, 0)
      worst = Math.max(worst, held, used)
    }
    t.ok(worst <= total, `limit ${total} over ${n} workers: at most ${worst} held or used in 2000 heartbeats`)
  }
})

t.test('what one worker leaves unused goes to the one that needs it, within two heartbeats', async (t) => {
  // Worker 0 uses its whole share, worker 1 nothing.
  let rows: BudgetUse[] = [{ used: 2, applied: 2, fixed: false }, { used: 0, applied: 2, fixed: false }]
  const first = rebalance(4, rows)
  t.same(first, [2, 1], 'first the idle one is lowered; the busy one cannot grow into what it may still hold')
  rows = [{ used: 2, applied: 2, fixed: false }, { used: 0, applied: 1, fixed: false }]
  t.same(rebalance(4, rows), [3, 1], 'once it enforces the lower share, the busy one grows')
  t.same(rebalance(4, [{ used: 4, applied: 4, fixed: false }, { used: 0, applied: NONE, fixed: false }]), [4, NONE], 'all of it in use: the idle one holds none')
  t.same(rebalance(4, [{ used: 1, applied: 2, fixed: false }, { used: 0, applied: NONE, fixed: true }]), [3, NONE], 'a starting worker keeps what it was sent, and part of what is free is left for it')
})
