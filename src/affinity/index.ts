import { MemoryAffinityStore } from './memory.js'
import { RedisAffinityStore } from './redis.js'
import type { AffinityDeps, AffinityOptions, AffinityStore } from './store.js'

export { MemoryAffinityStore } from './memory.js'
export { RedisAffinityStore, type RedisStorePhase } from './redis.js'
export { pickByRendezvous } from './fallback.js'
export type {
  AffinityDeps, AffinityMetrics, AffinityOp, AffinityOptions, AffinityRecord, AffinityState, AffinityStore,
  AffinityStoreKind, AffinityStoreStatus, ClaimResult, RedisAffinityOptions,
} from './store.js'

/**
 * The store `affinity.store` names. A Redis store starts connecting at once; `await store.ready()`
 * to begin in a known state (it never throws: an unreachable Redis is the 'fallback' state).
 */
export function createAffinityStore (opts: AffinityOptions, deps: AffinityDeps): AffinityStore {
  return opts.store === 'redis' ? new RedisAffinityStore(opts, deps) : new MemoryAffinityStore(opts, deps)
}
