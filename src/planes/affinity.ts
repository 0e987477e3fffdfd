import type { Logger } from 'pino'
import type { AffinityRecord, AffinityState, AffinityStore, AffinityStoreStatus, ClaimResult } from '../affinity/index.js'
import { CallUnanswered, ControlCalls } from './calls.js'

/** The store operations a worker asks the control plane for. */
export type AffinityCall =
  | { op: 'get', key: string }
  | { op: 'set', key: string, record: AffinityRecord, ttlMs: number | undefined }
  | { op: 'touch', key: string, ttlMs: number | undefined }
  | { op: 'delete', key: string }
  | { op: 'claim', key: string, pod: string, expectedEpoch: number }

/** How long a worker waits for the control plane's answer before it takes the fallback answer. */
const BUDGET_MS = 250

/**
 * `affinity.store: memory` in a pod with several workers: one memory store, the control plane's, so a
 * client's records (learned cookies, session keys) are the same whichever worker its next connection
 * reaches. Each call is a message to the control plane; one not answered within BUDGET_MS resolves to
 * the store's fallback answer (get → undefined: rendezvous hashing picks, as every worker agrees) and
 * the state is 'fallback' until an answer arrives again.
 */
export class PodAffinityStore implements AffinityStore {
  readonly kind = 'memory' as const
  private current: AffinityState = 'ok'
  private readonly calls = new ControlCalls(BUDGET_MS)

  constructor (private readonly ttlMs: number, private readonly send: (id: number, call: AffinityCall) => void, private readonly log: Logger) {}

  get state (): AffinityState {
    return this.current
  }

  /** The control plane's answer to call `id`. */
  answer (id: number, body: unknown): void {
    if (!this.calls.answer(id, body)) return
    if (this.current === 'fallback') this.log.info('the control plane answers affinity lookups again')
    this.current = 'ok'
  }

  private async call<T> (call: AffinityCall, fallback: T): Promise<T> {
    try {
      return await this.calls.call<T>((id) => { this.send(id, call) })
    } catch (err) {
      if (!(err instanceof CallUnanswered && err.closed)) {
        if (this.current === 'ok') this.log.warn({ op: call.op, budgetMs: BUDGET_MS }, 'the control plane did not answer an affinity lookup in time: rendezvous hashing picks meanwhile')
        this.current = 'fallback'
      }
      return fallback
    }
  }

  async get (key: string): Promise<AffinityRecord | undefined> {
    return await this.call({ op: 'get', key }, undefined)
  }

  async set (key: string, record: AffinityRecord, ttlMs?: number): Promise<boolean> {
    return await this.call({ op: 'set', key, record, ttlMs }, false)
  }

  async touch (key: string, ttlMs?: number): Promise<boolean> {
    return await this.call({ op: 'touch', key, ttlMs }, false)
  }

  async delete (key: string): Promise<boolean> {
    return await this.call({ op: 'delete', key }, false)
  }

  async claim (key: string, pod: string, expectedEpoch: number): Promise<ClaimResult> {
    return await this.call<ClaimResult>({ op: 'claim', key, pod, expectedEpoch }, { ok: false, record: undefined, reason: 'unavailable' })
  }

  async ready (): Promise<AffinityState> {
    return this.current
  }

  async close (): Promise<void> {
    this.calls.close()
  }

  status (): AffinityStoreStatus {
    return { store: 'memory', state: this.current, ttlMs: this.ttlMs, sharedBy: 'the pod\'s workers (kept by the control plane)' }
  }
}

/** The control plane's side: a worker's call on the pod's memory store. */
export async function serveAffinity (store: AffinityStore, c: AffinityCall): Promise<unknown> {
  switch (c.op) {
    case 'get': return await store.get(c.key)
    case 'set': return await store.set(c.key, c.record, c.ttlMs)
    case 'touch': return await store.touch(c.key, c.ttlMs)
    case 'delete': return await store.delete(c.key)
    case 'claim': return await store.claim(c.key, c.pod, c.expectedEpoch)
  }
}
