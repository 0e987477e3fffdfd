import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import type { AuthPolicyConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { EdgeRedisUnavailable, type EdgeRedis } from './redis.js'

type HmacConfig = NonNullable<AuthPolicyConfig['hmac']>

export const HMAC_HEADERS = {
  keyId: 'x-ferry-key-id',
  timestamp: 'x-ferry-timestamp',
  nonce: 'x-ferry-nonce',
  contentSha256: 'x-ferry-content-sha256',
  signature: 'x-ferry-signature',
} as const

export const EMPTY_SHA256 = createHash('sha256').digest('hex')

/** The string a client signs (docs/edge.md): every part on its own line. */
export function stringToSign (p: { timestamp: string, nonce: string, method: string, host: string, target: string, contentSha256: string }): string {
  return `FERRY-HMAC-SHA256\n${p.timestamp}\n${p.nonce}\n${p.method}\n${p.host.toLowerCase()}\n${p.target}\n${p.contentSha256}`
}

export interface SignedRequest {
  readonly method: string
  readonly host: string
  readonly target: string
  /** The request has a body (Content-Length > 0 or chunked). */
  readonly hasBody: boolean
  readonly header: (name: string) => string | undefined
}

export interface HmacPrincipal {
  readonly keyId: string
  readonly claims: Readonly<Record<string, string>>
  /** The body must hash to this (checked as it streams); undefined when the request has none. */
  readonly bodySha256: string | undefined
}

/**
 * HMAC-SHA256 request signatures: key id, timestamp (unix seconds, within ±windowSec), nonce (used once
 * within the window), and the hex signature of stringToSign(). The signature covers the body through
 * its declared SHA-256, which the HTTP exchange checks as the body streams.
 */
export class HmacVerifier {
  private readonly keys: Map<string, { secret: Buffer, claims: Record<string, string> }>
  /** memory replay store: `keyId nonce` → expiry (ms); insertion order is expiry order. */
  private readonly seen = new Map<string, number>()

  constructor (private readonly cfg: HmacConfig, private readonly redis: EdgeRedis | undefined) {
    this.keys = new Map(cfg.keys.map((k) => [k.id, { secret: Buffer.from(k.secret), claims: k.claims }]))
  }

  /** True when the request carries a signature (any of the headers): then it must verify. */
  present (req: SignedRequest): boolean {
    return req.header(HMAC_HEADERS.signature) !== undefined || req.header(HMAC_HEADERS.keyId) !== undefined
  }

  verify (req: SignedRequest): HmacPrincipal | Promise<HmacPrincipal> {
    const keyId = req.header(HMAC_HEADERS.keyId)
    const timestamp = req.header(HMAC_HEADERS.timestamp)
    const nonce = req.header(HMAC_HEADERS.nonce)
    const signature = req.header(HMAC_HEADERS.signature)
    if (keyId === undefined || timestamp === undefined || nonce === undefined || signature === undefined) {
      throw new FerryError('FERRY_ERR_AUTH_INVALID', `a signed request needs ${Object.values(HMAC_HEADERS).filter((h) => h !== HMAC_HEADERS.contentSha256).join(', ')}`)
    }
    const key = this.keys.get(keyId)
    if (key === undefined) throw new FerryError('FERRY_ERR_AUTH_INVALID', 'unknown signing key')
    if (!/^\d{1,12}$/.test(timestamp)) throw new FerryError('FERRY_ERR_AUTH_INVALID', `${HMAC_HEADERS.timestamp} must be unix seconds`)
    if (!/^[A-Za-z0-9_.~+/=-]{16,128}$/.test(nonce)) throw new FerryError('FERRY_ERR_AUTH_INVALID', `${HMAC_HEADERS.nonce} must be 16-128 characters of [A-Za-z0-9_.~+/=-]`)
    if (!/^[0-9a-f]{64}$/.test(signature)) throw new FerryError('FERRY_ERR_AUTH_INVALID', `${HMAC_HEADERS.signature} must be 64 lower-case hex digits`)
    let contentSha256 = req.header(HMAC_HEADERS.contentSha256)
    if (contentSha256 !== undefined && !/^[0-9a-f]{64}$/.test(contentSha256)) throw new FerryError('FERRY_ERR_AUTH_INVALID', `${HMAC_HEADERS.contentSha256} must be 64 lower-case hex digits`)
    if (contentSha256 === undefined) {
      if (req.hasBody) throw new FerryError('FERRY_ERR_AUTH_INVALID', `a signed request with a body needs ${HMAC_HEADERS.contentSha256}`)
      contentSha256 = EMPTY_SHA256
    }
    const expected = createHmac('sha256', key.secret).update(stringToSign({ timestamp, nonce, method: req.method, host: req.host, target: req.target, contentSha256 })).digest()
    if (!timingSafeEqual(expected, Buffer.from(signature, 'hex'))) throw new FerryError('FERRY_ERR_AUTH_INVALID', 'signature does not match')
    // Only a valid signature is checked for time and replay: forged requests cannot fill the nonce store.
    const now = Date.now()
    if (Math.abs(now - Number(timestamp) * 1000) > this.cfg.windowSec * 1000) throw new FerryError('FERRY_ERR_AUTH_EXPIRED', `signature timestamp outside ±${this.cfg.windowSec} s`)
    const principal: HmacPrincipal = { keyId, claims: key.claims, bodySha256: req.hasBody ? contentSha256 : undefined }
    // Remembered for twice the window: a timestamp may be up to windowSec in the future.
    const ttlMs = 2 * this.cfg.windowSec * 1000
    const id = `${keyId} ${nonce}`
    if (this.cfg.replayStore === 'redis' && this.redis !== undefined) return this.claimRemote(id, ttlMs, principal)
    this.claimLocal(id, now, now + ttlMs)
    return principal
  }

  private claimLocal (id: string, now: number, expires: number): void {
    for (const [k, until] of this.seen) {
      if (until > now) break
      this.seen.delete(k)
    }
    if (this.seen.has(id)) throw new FerryError('FERRY_ERR_AUTH_REPLAY', 'nonce already used')
    if (this.seen.size >= this.cfg.maxNonces) throw new FerryError('FERRY_ERR_AUTH_UNAVAILABLE', `replay store full (maxNonces ${this.cfg.maxNonces})`)
    this.seen.set(id, expires)
  }

  private async claimRemote (id: string, ttlMs: number, principal: HmacPrincipal): Promise<HmacPrincipal> {
    let fresh: boolean
    try {
      fresh = await this.redis!.claimOnce(`nonce:${id}`, ttlMs)
    } catch (err) {
      if (!(err instanceof EdgeRedisUnavailable)) throw err
      // The replay check cannot be skipped quietly: fail closed whatever rate limits do.
      throw new FerryError('FERRY_ERR_AUTH_UNAVAILABLE', `replay store unavailable: ${err.message}`)
    }
    if (!fresh) throw new FerryError('FERRY_ERR_AUTH_REPLAY', 'nonce already used')
    return principal
  }
}
