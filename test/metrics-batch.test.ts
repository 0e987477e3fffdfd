import t from 'tap'
import { Histogram, Registry } from 'prom-client'
import { HistogramBatch } from '../src/observability/histogram-batch.js'
import { Metrics } from '../src/observability/metrics.js'
import { flushHttpMetrics, upstreamMetrics } from '../src/upstream/http/metrics.js'

/**
 * HistogramBatch (ferry_upstream_response_seconds is observed through it, once per HTTP request): what a
 * scrape reads must be what prom-client's own observe per value gives. A twin histogram in another
 * registry is observed directly with the same values; the rendered texts are compared line by line,
 * buckets and counts exactly, the sum up to floating-point rounding.
 */

const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

function twins (): { direct: Histogram<'upstream'>, batched: Histogram<'upstream'>, render: () => Promise<[string, string]> } {
  const r1 = new Registry()
  const r2 = new Registry()
  const make = (r: Registry): Histogram<'upstream'> => new Histogram({ name: 'h_seconds', help: 'h', labelNames: ['upstream'], buckets: BUCKETS, registers: [r] })
  const direct = make(r1)
  const batched = make(r2)
  return { direct, batched, render: async () => [await r1.metrics(), await r2.metrics()] }
}

/** Asserts the two texts are equal, `_sum` lines within rounding. */
function same (t: Tap.Test, got: string, want: string, what: string): void {
  const g = got.trim().split('\n')
  const w = want.trim().split('\n')
  t.equal(g.length, w.length, `${what}: as many lines`)
  for (let i = 0; i < w.length; i++) {
    const m = /^(h_seconds_sum\{[^}]*\}) (\S+)$/.exec(w[i]!)
    if (m === null) { t.equal(g[i], w[i], `${what}: ${w[i]}`); continue }
    const gm = /^(h_seconds_sum\{[^}]*\}) (\S+)$/.exec(g[i]!)
    t.equal(gm?.[1], m[1], `${what}: ${m[1]}`)
    t.ok(Math.abs(Number(gm?.[2]) - Number(m[2])) <= 1e-9 * Math.max(1, Math.abs(Number(m[2]))), `${what}: sum ${gm?.[2]} ≈ ${m[2]}`)
  }
}

t.test('renders what observe per value renders: buckets (bounds included), above the last bound, several series, several flushes', async (t) => {
  const { direct, batched, render } = twins()
  const a = new HistogramBatch(batched, { upstream: 'a' })
  const b = new HistogramBatch(batched, { upstream: 'b' })
  // Every bound itself (le is ≤), just above each, 0, and values above the last bound (only +Inf, count, sum).
  const values = [0, ...BUCKETS, ...BUCKETS.map((x) => x * 1.0001), 31, 1000, 0.0001, 0.0007, 0.003]
  for (const v of values) { direct.observe({ upstream: 'a' }, v); a.observe(v) }
  // Before a flush the series does not exist yet: nothing is rendered for it.
  const [, before] = await render()
  t.notMatch(before, /upstream="a"/, 'nothing before the first flush')
  a.flush()
  b.flush() // no observations: no series, as prom-client creates none without an observe
  let [want, got] = await render()
  same(t, got, want, 'first flush')
  t.notMatch(got, /upstream="b"/, 'a batch without observations creates no series')
  // More observations on both, flushed again: added to what is there.
  for (const v of [0.002, 0.002, 7, 0.04]) { direct.observe({ upstream: 'a' }, v); a.observe(v) }
  for (const v of [0.3, 40]) { direct.observe({ upstream: 'b' }, v); b.observe(v) }
  a.flush(); b.flush(); a.flush()
  ;[want, got] = await render()
  same(t, got, want, 'second flush')
  t.match(got, /^h_seconds_count\{upstream="a"\} 40$/m, 'count of a: 36 + 4')
  t.match(got, /^h_seconds_bucket\{le="0.0025",upstream="a"\} 10$/m, 'bucket le=0.0025 of a: 0, 0.0001, 0.0005, 0.0005…, 0.0007, 0.001, 0.001…, 0.0025 (its bound included), 0.002 twice')
  t.match(got, /^h_seconds_bucket\{le="\+Inf",upstream="b"\} 2$/m, '+Inf of b')
})

t.test('a reset registry starts the series again; a non-finite value is refused as prom-client refuses it', async (t) => {
  const { direct, batched, render } = twins()
  const a = new HistogramBatch(batched, { upstream: 'a' })
  a.observe(0.01); a.flush()
  batched.reset(); direct.reset()
  a.observe(0.2); direct.observe({ upstream: 'a' }, 0.2); a.flush()
  const [want, got] = await render()
  same(t, got, want, 'after reset')
  t.throws(() => { a.observe(NaN) }, TypeError, 'NaN throws a TypeError')
  t.throws(() => { direct.observe({ upstream: 'a' }, Infinity) }, TypeError, '(as prom-client throws for Infinity)')
  t.throws(() => { a.observe(Infinity) }, TypeError, 'Infinity throws a TypeError')
})

t.test('ferry_upstream_response_seconds through upstreamMetrics: counted once flushed at scrape time', async (t) => {
  const m = new Metrics()
  const um = upstreamMetrics(m, 'api')
  for (const v of [0.0004, 0.003, 0.003, 2]) um.latency.observe(v)
  const text = await m.render() // runs the collectors: flushHttpMetrics
  t.match(text, /^ferry_upstream_response_seconds_count\{upstream="api"\} 4$/m, 'count 4')
  t.match(text, /^ferry_upstream_response_seconds_bucket\{le="0.0005",upstream="api"\} 1$/m, 'le=0.0005: 1')
  t.match(text, /^ferry_upstream_response_seconds_bucket\{le="0.005",upstream="api"\} 3$/m, 'le=0.005: 3')
  t.match(text, /^ferry_upstream_response_seconds_bucket\{le="2.5",upstream="api"\} 4$/m, 'le=2.5: 4')
  t.match(text, /^ferry_upstream_response_seconds_sum\{upstream="api"\} 2.0064/m, 'sum')
  um.latency.observe(0.001)
  flushHttpMetrics(m)
  t.match(await m.render(), /^ferry_upstream_response_seconds_count\{upstream="api"\} 5$/m, 'count 5 after another flush')
})

t.test('ferry_client_requests_in_flight through upstreamMetrics: a request that ends with none started since the last scrape moves the gauge too', async (t) => {
  const m = new Metrics()
  const um = upstreamMetrics(m, 'api')
  um.inFlight(1)
  t.match(await m.render(), /^ferry_client_requests_in_flight\{kind="http"\} 1$/m, 'one started: 1')
  um.inFlight(-1)
  t.match(await m.render(), /^ferry_client_requests_in_flight\{kind="http"\} 0$/m, 'it ended, nothing started since: 0 (was stuck at 1)')
})
