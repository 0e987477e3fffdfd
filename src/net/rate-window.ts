/**
 * At most `perSec` events in any 1000 ms window (closed at both ends): a sliding log of the last `perSec` event times. This is
 * what a pacing budget ("at most N handoffs a second") promises; a token bucket with a burst admits
 * rate + burst in some windows.
 */
export class RateWindow {
  private readonly times: Float64Array
  private next = 0

  constructor (readonly perSec: number) {
    this.times = new Float64Array(Math.max(1, Math.floor(perSec))).fill(-Infinity)
  }

  /** 0 when an event may happen at `now` (it is counted), else how many ms until one may. */
  take (now: number): number {
    // The slot to overwrite holds the perSec-th most recent event.
    const oldest = this.times[this.next]!
    // A closed window: events 1000 ms apart count as one second's.
    if (now - oldest <= 1000) return Math.max(1, Math.ceil(1000 - (now - oldest)) + 1)
    this.times[this.next] = now
    this.next = (this.next + 1) % this.times.length
    return 0
  }
}
