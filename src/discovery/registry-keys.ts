import { checkLabels, type Labels } from '../config/labels.js'

/**
 * The Redis layout of the endpoint registry, shared by the backend library (which registers) and the
 * gateway (which watches). For service S under prefix P (default `ferry:reg:`):
 *   P S :ep: ADDRESS   a string (JSON {address, id, at, labels?}) with a TTL, renewed by the backend's heartbeat
 *   P S :members       a set of the ADDRESSes that registered (entries whose key expired are dead)
 *   P S                the pub/sub channel: {"event":"up"|"down","address":…} on register/deregister
 * Any process can register the same way (docs/discovery.md).
 */
export interface RegistryKeys {
  readonly endpoint: (address: string) => string
  readonly members: string
  readonly channel: string
}

export function registryKeys (prefix: string, service: string): RegistryKeys {
  const base = `${prefix}${service}`
  return { endpoint: (address) => `${base}:ep:${address}`, members: `${base}:members`, channel: base }
}

/**
 * The labels in a registry entry's value (`{"address":…,"labels":{"version":"v2"}}`): none when the entry
 * has no `labels` (or is not JSON: an older or foreign registrant), undefined when they are malformed.
 */
/** The heartbeat period an entry announces (a third of its `ttlMs`); undefined when it says none. */
export function registryHeartbeatMs (value: string): number | undefined {
  let j: unknown
  try { j = JSON.parse(value) } catch { return undefined }
  const ttl = (j as { ttlMs?: unknown } | null)?.ttlMs
  return typeof ttl === 'number' && Number.isFinite(ttl) && ttl > 0 ? ttl / 3 : undefined
}

export function registryLabels (value: string): Labels | undefined {
  let j: unknown
  try { j = JSON.parse(value) } catch { return {} }
  if (j === null || typeof j !== 'object') return {}
  return checkLabels((j as { labels?: unknown }).labels)
}
