import { createPublicKey, KeyObject, type webcrypto } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createVerifier, TokenError } from 'fast-jwt'
import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import type { JwtAuthConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'

/** Longest a verified token is trusted from the cache (a revoked JWKS key stops working within this). */
const CACHE_MAX_MS = 60_000
/** Keys taken from a JWKS (by kid and alg), each with its own synchronous verifier. */
const MAX_JWKS_KEYS = 64

type SyncVerify = (token: string) => JWTPayload
/** A key Ferry holds itself (verified at once) or a JWKS that jose resolves by `kid` (fetch, cache, rotation). */
type Key = { kind: 'static', material: string | Buffer } | { kind: 'jwks', getKey: JWTVerifyGetKey, ttlMs: number }

/**
 * Verifies JWTs. Signatures and claims are checked synchronously with fast-jwt (node:crypto), so a
 * request with a token stays on the synchronous path; only the first use of a JWKS key waits, while
 * jose finds (and for a URL, fetches) the key for the token's `kid`. Verified tokens are cached
 * (bounded, insertion order = eviction order) until their `exp` or CACHE_MAX_MS, whichever is first.
 * Throws (or rejects with) FerryError AUTH_INVALID / AUTH_EXPIRED / AUTH_UNAVAILABLE.
 */
export class JwtVerifier {
  private readonly cache = new Map<string, { claims: JWTPayload, until: number }>()
  /** fast-jwt verifier for a static key; or, for a JWKS, jose's lookup by `kid`. */
  private readonly staticVerify: SyncVerify | undefined
  private readonly jwks: Extract<Key, { kind: 'jwks' }> | undefined
  /** JWKS keys already resolved: `kid alg` → verifier, until the JWKS cache would have refetched. */
  private readonly jwksVerify = new Map<string, { verify: SyncVerify, until: number }>()
  private readonly required: string[]

  /** `field` names the config path for errors reading key files (`auth.policies.X.jwt`). */
  constructor (private readonly cfg: JwtAuthConfig, field: string) {
    const key = loadKey(cfg, field)
    // jose required iss/aud when they were configured; fast-jwt checks only claims that are present.
    this.required = [...new Set(['exp', ...(cfg.issuer !== undefined ? ['iss'] : []), ...(cfg.audience !== undefined ? ['aud'] : []), ...cfg.requiredClaims])]
    if (key.kind === 'jwks') this.jwks = key
    else {
      try { this.staticVerify = this.verifierFor(key.material) } catch (err) {
        throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}: the key does not fit algorithms [${cfg.algorithms.join(', ')}]: ${(err as Error).message}`)
      }
    }
  }

  verify (token: string): JWTPayload | Promise<JWTPayload> {
    if (token.length > this.cfg.maxTokenBytes) throw new FerryError('FERRY_ERR_AUTH_INVALID', `token longer than maxTokenBytes ${this.cfg.maxTokenBytes}`)
    const hit = this.cache.get(token)
    if (hit !== undefined) {
      if (Date.now() < hit.until) return hit.claims
      this.cache.delete(token)
    }
    if (this.staticVerify !== undefined) return this.run(this.staticVerify, token)
    const header = decodeHeader(token)
    if (!this.cfg.algorithms.includes(header.alg as never)) throw new FerryError('FERRY_ERR_AUTH_INVALID', `invalid token: algorithm ${String(header.alg)} is not accepted`)
    const id = `${String(header.kid)} ${header.alg}`
    const known = this.jwksVerify.get(id)
    if (known !== undefined && Date.now() < known.until) return this.run(known.verify, token)
    return this.verifyWithJwks(token, header, id)
  }

  /** First use of a JWKS key: jose resolves it (a URL may be fetched), then it verifies synchronously. */
  private async verifyWithJwks (token: string, header: { alg: string, kid?: string }, id: string): Promise<JWTPayload> {
    const jwks = this.jwks!
    let verify: SyncVerify
    try {
      const [protectedHeader = '', payload = '', signature = ''] = token.split('.')
      const key = await jwks.getKey(header, { protected: protectedHeader, payload, signature })
      verify = this.verifierFor(keyMaterial(key as webcrypto.CryptoKey | KeyObject | Uint8Array), [header.alg])
    } catch (err) {
      throw joseToFerry(err)
    }
    if (this.jwksVerify.size >= MAX_JWKS_KEYS) this.jwksVerify.delete(this.jwksVerify.keys().next().value!)
    this.jwksVerify.set(id, { verify, until: Date.now() + jwks.ttlMs })
    return this.run(verify, token)
  }

  private verifierFor (material: string | Buffer, algorithms: readonly string[] = this.cfg.algorithms): SyncVerify {
    return createVerifier({
      key: material,
      algorithms: algorithms as never,
      allowedIss: this.cfg.issuer,
      allowedAud: this.cfg.audience,
      clockTolerance: this.cfg.clockSkewSec * 1000,
      requiredClaims: this.required,
      cache: false,
    }) as SyncVerify
  }

  private run (verify: SyncVerify, token: string): JWTPayload {
    let claims: JWTPayload
    try { claims = verify(token) } catch (err) { throw fastJwtToFerry(err) }
    if (this.cfg.cacheEntries > 0) {
      const now = Date.now()
      const until = Math.min(now + CACHE_MAX_MS, (claims.exp! + this.cfg.clockSkewSec) * 1000)
      if (until > now) {
        if (this.cache.size >= this.cfg.cacheEntries) this.cache.delete(this.cache.keys().next().value!)
        this.cache.set(token, { claims, until })
      }
    }
    return claims
  }
}

/** The JOSE header, for the key lookup; anything that is not a JWS compact header is an invalid token. */
function decodeHeader (token: string): { alg: string, kid?: string } {
  const dot = token.indexOf('.')
  try {
    if (dot <= 0) throw new Error('not a JWS')
    const h = JSON.parse(Buffer.from(token.slice(0, dot), 'base64url').toString('utf8')) as { alg?: unknown, kid?: unknown }
    if (typeof h !== 'object' || h === null || typeof h.alg !== 'string' || (h.kid !== undefined && typeof h.kid !== 'string')) throw new Error('bad header')
    return h as { alg: string, kid?: string }
  } catch {
    throw new FerryError('FERRY_ERR_AUTH_INVALID', 'invalid token: malformed header')
  }
}

/** What fast-jwt takes as a key: the secret's bytes, or a public key as SPKI PEM. */
function keyMaterial (key: webcrypto.CryptoKey | KeyObject | Uint8Array): string | Buffer {
  if (key instanceof Uint8Array) return Buffer.from(key)
  const ko = key instanceof KeyObject ? key : KeyObject.from(key)
  return ko.type === 'secret' ? ko.export() : ko.export({ type: 'spki', format: 'pem' }) as string
}

function fastJwtToFerry (err: unknown): FerryError {
  if (err instanceof FerryError) return err
  if (err instanceof TokenError && err.code === TokenError.codes.expired) return new FerryError('FERRY_ERR_AUTH_EXPIRED', 'token expired')
  return new FerryError('FERRY_ERR_AUTH_INVALID', `invalid token: ${(err as Error)?.message ?? String(err)}`)
}

function loadKey (cfg: JwtAuthConfig, field: string): Key {
  const stat = (material: string | Buffer): Key => ({ kind: 'static', material })
  const read = (file: string, which: string): string => {
    try { return readFileSync(file, 'utf8') } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.${which}: cannot read ${file}: ${(err as Error).message}`)
    }
  }
  if (cfg.secret !== undefined) return stat(Buffer.from(cfg.secret, 'utf8'))
  if (cfg.secretFile !== undefined) {
    const secret = read(cfg.secretFile, 'secretFile').trim()
    if (secret.length < 32) throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.secretFile: the secret in ${cfg.secretFile} must be at least 32 characters`)
    return stat(Buffer.from(secret, 'utf8'))
  }
  if (cfg.publicKeyFile !== undefined) {
    // A certificate or any PEM public key, as SPKI PEM (what fast-jwt reads).
    try { return stat(createPublicKey(read(cfg.publicKeyFile, 'publicKeyFile')).export({ type: 'spki', format: 'pem' }) as string) } catch (err) {
      if (err instanceof FerryError) throw err
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.publicKeyFile: ${cfg.publicKeyFile} holds no PEM public key or certificate: ${(err as Error).message}`)
    }
  }
  if (cfg.jwksFile !== undefined) {
    try { return { kind: 'jwks', getKey: createLocalJWKSet(JSON.parse(read(cfg.jwksFile, 'jwksFile'))), ttlMs: Infinity } } catch (err) {
      if (err instanceof FerryError) throw err
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.jwksFile: ${cfg.jwksFile} is not a JWKS document: ${(err as Error).message}`)
    }
  }
  // A key taken from the URL is used synchronously for jwksCacheMs, then looked up again (jose refetches).
  return {
    kind: 'jwks',
    ttlMs: cfg.jwksCacheMs,
    getKey: createRemoteJWKSet(new URL(cfg.jwksUrl!), {
      cacheMaxAge: cfg.jwksCacheMs,
      cooldownDuration: cfg.jwksCooldownMs,
      timeoutDuration: cfg.jwksTimeoutMs,
    }),
  }
}

function joseToFerry (err: unknown): FerryError {
  if (err instanceof FerryError) return err
  if (err instanceof joseErrors.JWTExpired) return new FerryError('FERRY_ERR_AUTH_EXPIRED', 'token expired')
  if (err instanceof joseErrors.JWKSTimeout) return new FerryError('FERRY_ERR_AUTH_UNAVAILABLE', 'the JWKS URL did not answer in time')
  if (err instanceof joseErrors.JOSEError) {
    // A JWKS fetch that failed (HTTP error, bad JSON) says nothing about the token.
    if (err.code === 'ERR_JOSE_GENERIC' && /fetch|JSON Web Key Set/i.test(err.message)) return new FerryError('FERRY_ERR_AUTH_UNAVAILABLE', `JWKS unavailable: ${err.message}`)
    return new FerryError('FERRY_ERR_AUTH_INVALID', `invalid token: ${err.message}`)
  }
  // Network errors from the JWKS fetch (connection refused, …).
  if (err instanceof TypeError || (err as { name?: string })?.name === 'AbortError') return new FerryError('FERRY_ERR_AUTH_UNAVAILABLE', `JWKS unavailable: ${(err as Error).message}`)
  return new FerryError('FERRY_ERR_AUTH_INVALID', `invalid token: ${(err as Error)?.message ?? String(err)}`)
}
