import { Balancer, hashKey, type Balanced } from '../routing/balancer.js'

const ALWAYS = (): boolean => true

/**
 * The endpoint every pod picks for `key` when the store has no answer: rendezvous hashing through the
 * routing Balancer's 'hash' policy (the same weights the ws and mux upstreams use for `affinity.key`),
 * so there is one way to pick an endpoint by key. `endpoints` are the healthy `host:port`s; the answer
 * depends on the key and the addresses only, not on their order, and removing an endpoint moves only
 * the keys that were on it. Undefined when the list is empty.
 */
export function pickByRendezvous (key: string, endpoints: readonly string[]): string | undefined {
  if (endpoints.length === 0) return undefined
  const views: Balanced[] = endpoints.map((address) => ({ address, inflight: 0, acceptsAt: ALWAYS }))
  return new Balancer(views, 'hash').pick(Infinity, 0, undefined, hashKey(key))?.address
}
