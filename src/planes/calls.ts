/** A call on the control plane that got no answer within its budget (or the worker is closing). */
export class CallUnanswered extends Error {
  override name = 'CallUnanswered'

  /** `closed`: the worker is closing (nobody waits for answers); else the budget ran out. */
  constructor (message: string, readonly closed = false) {
    super(message)
  }
}

/**
 * The calls a worker makes on its control plane over the IPC channel: each is a message with an `id`
 * the answer repeats. `call` resolves with the answer's body, or rejects with CallUnanswered after
 * `budgetMs` (a busy or gone control plane never holds a request longer than that).
 */
export class ControlCalls {
  private next = 1
  private readonly pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  private closed = false

  constructor (readonly budgetMs: number) {}

  async call<T> (send: (id: number) => void): Promise<T> {
    if (this.closed) throw new CallUnanswered('closed', true)
    const id = this.next++
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new CallUnanswered(`the control plane did not answer within ${this.budgetMs} ms`))
      }, this.budgetMs)
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer })
      send(id)
    })
  }

  /** The control plane's answer to call `id`; false when that call is no longer waiting (it timed out). */
  answer (id: number, body: unknown): boolean {
    const p = this.pending.get(id)
    if (p === undefined) return false
    this.pending.delete(id)
    clearTimeout(p.timer)
    p.resolve(body)
    return true
  }

  close (): void {
    this.closed = true
    for (const [id, p] of this.pending) { clearTimeout(p.timer); this.pending.delete(id); p.reject(new CallUnanswered('closed', true)) }
  }
}
