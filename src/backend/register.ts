import { networkInterfaces } from 'node:os'
import { Redis } from 'ioredis'
import { checkLabels, type Labels } from '../config/labels.js'
import { registryKeys, type RegistryKeys } from '../discovery/registry-keys.js'
import { formatAddress } from '../discovery/source.js'

export interface RegisterOptions {
  /** Redis URL (`redis://host:port`), the one the gateways' `registry.redis` names. */
  redis: string
  /** Service name; the gateway's upstream has `registry: { service }` with the same. */
  service: string
  /** How long the registration lives without a heartbeat (renewed every third of it). Default 10 s. */
  ttlMs?: number
  /** `host:port` gateways should connect to. Default: the listening port on the listening address, or on the first non-internal IPv4 address when listening on all of them. */
  advertise?: string
  /** Key prefix (default `ferry:reg:`), the same as the gateways'. */
  keyPrefix?: string
  /**
   * Labels of this endpoint (e.g. `{ version: 'v2' }`), announced with the registration: a gateway route's
   * `split` sends its share of new sessions to the endpoints whose labels match. Keys and values as in
   * Kubernetes (letters, digits, `-_.`, at most 63 characters), at most 16. Default: none.
   */
  labels?: Record<string, string>
}

/**
 * The checked `register.labels` (createMuxServer calls it first, so a mistake throws there, not later in
 * the listen callback). A gateway would drop malformed labels and warn; refused here, where it is made.
 */
export function checkRegisterLabels (opts: RegisterOptions): Labels {
  const labels = checkLabels(opts.labels)
  if (labels === undefined) throw new TypeError('register.labels: at most 16 labels; keys and values of letters, digits, - _ . (1-63 characters, starting and ending with a letter or digit; a key may have a dns-name/ prefix)')
  return labels
}

/** created → registered (heartbeat running) → deregistered (closed). */
export type RegistrationState = 'created' | 'registered' | 'deregistered'

/** The address to advertise for a server listening on `host`:`port`. */
export function defaultAdvertise (host: string, port: number): string {
  if (host !== '0.0.0.0' && host !== '::' && host !== '') return formatAddress(host, port)
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return `${a.address}:${port}`
  }
  return `127.0.0.1:${port}`
}

/**
 * A backend's registration in the endpoint registry: a key with a TTL that a heartbeat renews, its
 * address in the service's member set, and a notice on the service channel when it comes and goes.
 * Owns its Redis connection and its one timer. A heartbeat that finds its key gone (Redis restarted,
 * or the key expired during a pause) registers again with a fresh notice. Redis errors never throw
 * into the backend: they are reported through `onError` and retried on the next beat.
 */
export class Registration {
  state: RegistrationState = 'created'
  private readonly redis: Redis
  private readonly keys: RegistryKeys
  private readonly ttlMs: number
  private timer: NodeJS.Timeout | undefined
  private readonly value: string

  constructor (opts: RegisterOptions, readonly address: string, id: string, private readonly onError: (err: Error) => void) {
    this.ttlMs = opts.ttlMs ?? 10_000
    this.keys = registryKeys(opts.keyPrefix ?? 'ferry:reg:', opts.service)
    const labels = checkRegisterLabels(opts)
    this.value = JSON.stringify({ address, id, at: new Date().toISOString(), ttlMs: this.ttlMs, ...(Object.keys(labels).length > 0 ? { labels } : {}) })
    this.redis = new Redis(opts.redis, { maxRetriesPerRequest: 1, lazyConnect: false })
    this.redis.on('error', (err: Error) => { this.onError(err) })
  }

  /** Registers now and starts the heartbeat. */
  async start (): Promise<void> {
    if (this.state !== 'created') return
    this.state = 'registered'
    this.timer = setInterval(() => { void this.beat() }, Math.max(100, Math.floor(this.ttlMs / 3)))
    this.timer.unref()
    await this.register()
  }

  private async register (): Promise<void> {
    await this.redis.multi()
      .set(this.keys.endpoint(this.address), this.value, 'PX', this.ttlMs)
      .sadd(this.keys.members, this.address)
      .publish(this.keys.channel, JSON.stringify({ event: 'up', address: this.address }))
      .exec()
  }

  private async beat (): Promise<void> {
    if (this.state !== 'registered') return
    try {
      const renewed = await this.redis.set(this.keys.endpoint(this.address), this.value, 'PX', this.ttlMs, 'XX')
      if (renewed === null && this.state === 'registered') await this.register()
    } catch (err) {
      this.onError(err as Error)
    }
  }

  /** Deregisters (the gateways stop opening sessions here at once) and closes the connection. Idempotent. */
  async stop (): Promise<void> {
    if (this.state === 'deregistered') return
    const was = this.state
    this.state = 'deregistered'
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    try {
      if (was === 'registered') {
        await this.redis.multi()
          .del(this.keys.endpoint(this.address))
          .srem(this.keys.members, this.address)
          .publish(this.keys.channel, JSON.stringify({ event: 'down', address: this.address }))
          .exec()
      }
    } catch (err) {
      this.onError(err as Error) // the key expires by itself after ttlMs
    } finally {
      this.redis.disconnect()
    }
  }
}
