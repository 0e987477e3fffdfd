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

  clear (): void {
    this.items = []
    this.head = 0
    this.bytes = 0
  }
}
