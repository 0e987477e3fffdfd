import type { Histogram, LabelValues } from 'prom-client'

/**
 * One series of a prom-client histogram, observed on a hot path: each observation is counted in a small
 * array by bucket here, and the counts are added to the histogram by `flush()` (at scrape time, with
 * the other per-request counts). prom-client's `observe` validates the labels, hashes them and looks the
 * series up on every call, which showed in the keep-alive profile (issue 20).
 *
 * What a scrape reads is the same as with `observe` per value: the same buckets, count and series
 * (created on the first flush with observations, as the first `observe` would have), and the same sum
 * up to floating-point rounding (the values are added here, then to the series' sum once per flush).
 * The series is written in prom-client 15's own state (`hashMap`, `upperBounds`, lib/histogram.js);
 * test/metrics-batch.test.ts compares the rendered text with an `observe`d twin, so an upgrade that
 * changes it fails there.
 */
export class HistogramBatch<T extends string> {
  private readonly bounds: readonly number[]
  /** Observations per bucket not yet flushed (index i: ≤ bounds[i], not counted in a lower bucket); the last: above every bound. */
  private readonly counts: number[]
  private sum = 0
  private count = 0

  constructor (private readonly hist: Histogram<T>, private readonly labels: LabelValues<T>) {
    this.bounds = (hist as unknown as PromHistogram).upperBounds
    this.counts = new Array<number>(this.bounds.length + 1).fill(0)
  }

  observe (value: number): void {
    // What prom-client refuses (it throws a TypeError) goes to it, to be refused the same way.
    if (!Number.isFinite(value)) { this.hist.observe(this.labels, value); return }
    const b = this.bounds
    let i = 0
    while (i < b.length && value > b[i]!) i++
    this.counts[i]!++
    this.sum += value
    this.count++
  }

  /** Adds the pending observations to the histogram. */
  flush (): void {
    if (this.count === 0) return
    let s = this.series()
    if (s === undefined) {
      this.hist.zero(this.labels)
      s = this.series()!
    }
    const c = this.counts
    for (let i = 0; i < this.bounds.length; i++) {
      if (c[i]! > 0) { s.bucketValues[this.bounds[i]!]! += c[i]!; c[i] = 0 }
    }
    c[this.bounds.length] = 0
    s.sum += this.sum
    s.count += this.count
    this.sum = 0
    this.count = 0
  }

  /** This batch's series in the histogram's state (looked up per flush: a registry reset replaces the state). */
  private series (): PromSeries | undefined {
    const want = Object.entries(this.labels as Record<string, string | number>)
    for (const s of Object.values((this.hist as unknown as PromHistogram).hashMap)) {
      const have = Object.keys(s.labels)
      if (have.length === want.length && want.every(([k, v]) => String(s.labels[k]) === String(v))) return s
    }
    return undefined
  }
}

/** The parts of prom-client 15's Histogram state that flush writes (lib/histogram.js). */
interface PromHistogram {
  readonly upperBounds: readonly number[]
  readonly hashMap: Record<string, PromSeries>
}
interface PromSeries {
  labels: Record<string, string | number>
  bucketValues: Record<number, number>
  sum: number
  count: number
}
