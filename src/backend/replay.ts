/**
 * The messages a resumable session sent that the client has not acknowledged yet, in order: what a
 * resume replays. A queue with a moving head (acks drop from the front in O(1) amortised).
 */
export class ReplayBuffer {
  private items: Array<{ data: Buffer, binary: boolean }> = []
  private head = 0
  /** Bytes held. */
  bytes = 0
  /** Sequence number of the last message pushed (messages are numbered 1, 2, 3…). */
  sent = 0
  /** Messages the client acknowledged (all with seq ≤ acked are dropped). */
  acked = 0

  get length (): number {
    return this.items.length - this.head
  }

  /** Keeps a message (the buffer owns `data`); returns its sequence number. */
  push (data: Buffer, binary: boolean): number {
    this.items.push({ data, binary })
    this.bytes += data.length
    return ++this.sent
  }

  /** The client received everything up to `count`; false when `count` is outside [acked, sent]. */
  ack (count: number): boolean {
    if (count < this.acked || count > this.sent) return false
    while (this.acked < count) {
      const it = this.items[this.head]!
      this.bytes -= it.data.length
      this.items[this.head++] = undefined as never
      this.acked++
    }
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    return true
  }

  /** The messages after `count`, oldest first (count must be within [acked, sent]). */
  * after (count: number): Generator<{ data: Buffer, binary: boolean }> {
    for (let i = this.head + (count - this.acked); i < this.items.length; i++) yield this.items[i]!
  }

  /**
   * Backend handoff: the newest unacknowledged messages whose base64 fits `budget` bytes, oldest first,
   * and the count before them (`acked` as the next process will know it: messages older than what fits
   * are given up, and a resume that needs them is refused as bad_ack).
   */
  carry (budget: number): { acked: number, unacked: Array<[string, 0 | 1]> } {
    const out: Array<[string, 0 | 1]> = []
    let used = 0
    for (let i = this.items.length - 1; i >= this.head; i--) {
      const it = this.items[i]!
      const b64 = it.data.toString('base64')
      // Each entry costs its base64 plus `["",0],` in JSON.
      if (used + b64.length + 8 > budget) break
      used += b64.length + 8
      out.push([b64, it.binary ? 1 : 0])
    }
    out.reverse()
    return { acked: this.sent - out.length, unacked: out }
  }

  /** Backend handoff: starts from another process's buffer (`unacked` are the messages after `acked`, up to `sent`). */
  restore (sent: number, acked: number, unacked: ReadonlyArray<{ data: Buffer, binary: boolean }>): void {
    this.clear()
    this.sent = sent
    this.acked = acked
    for (const m of unacked) { this.items.push(m); this.bytes += m.data.length }
  }

  clear (): void {
    this.items = []
    this.head = 0
    this.bytes = 0
  }
}
