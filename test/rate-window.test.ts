import t from 'tap'
import { RateWindow } from '../src/net/rate-window.js'

/**
 * The pacing budget of backend handoff (handoff.maxPerSec at the gateway, maxMigrationsPerSec in
 * ferry/backend's drain): never more than perSec events in any one second, at its edges included.
 * The token bucket it replaces let 220 through in a second at 200/s (rate + burst).
 */

/** Largest number of events in any closed window [t, t + 1000]. */
function peak (times: number[]): number {
  let best = 0
  let lo = 0
  for (let hi = 0; hi < times.length; hi++) {
    while (times[hi]! - times[lo]! > 1000) lo++
    best = Math.max(best, hi - lo + 1)
  }
  return best
}

t.test('seeded random demand: never more than perSec in any closed 1 s window, and the budget is used', async (t) => {
  let seed = 7
  const rnd = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  for (const perSec of [1, 10, 100, 200]) {
    const w = new RateWindow(perSec)
    const admitted: number[] = []
    let now = 0
    // 20 s of callers that retry after the wait they are told, in bursts.
    while (now < 20_000) {
      const burst = 1 + Math.floor(rnd() * perSec)
      for (let i = 0; i < burst; i++) { if (w.take(now) === 0) admitted.push(now) }
      now += Math.floor(rnd() * 120)
    }
    t.ok(peak(admitted) <= perSec, `${perSec}/s: peak ${peak(admitted)} in any closed second`)
    t.ok(admitted.length >= perSec * 20 * 0.5, `${perSec}/s: ${admitted.length} admitted in 20 s (the budget is used, not starved)`)
  }
})

t.test('the wait it returns is enough: asking again then succeeds', async (t) => {
  const w = new RateWindow(5)
  for (let i = 0; i < 5; i++) t.equal(w.take(0), 0)
  const wait = w.take(0)
  t.equal(wait, 1001, 'the 6th at t=0 waits until the first is more than 1000 ms old')
  t.ok(w.take(wait - 1) > 0, 'not a millisecond earlier')
  t.equal(w.take(wait), 0, 'then it may')
})
