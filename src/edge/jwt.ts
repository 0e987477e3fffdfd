import { createPublicKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import type { JwtAuthConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'

/** Longest a verified token is trusted from the cache (a revoked JWKS key stops working within this). */
const CACHE_MAX_MS = 60_000

type Key = Uint8Array | KeyObject | JWTVerifyGetKey

/**
 * Verifies JWTs with jose against one key source. Verified tokens are cached (bounded, insertion order
 * = eviction order) until their `exp` or CACHE_MAX_MS, whichever is first, so a client's repeated
 * requests cost a map lookup and stay synchronous; a miss verifies asynchronously (WebCrypto).
 * Throws (or rejects with) FerryError AUTH_INVALID / AUTH_EXPIRED / AUTH_UNAVAILABLE.
 */
export class JwtVerifier {
  private readonly key: Key
  private readonly cache = new Map<string, { claims: JWTPayload, until: number }>()
  private readonly required: string[]

  /** `field` names the config path for errors reading key files (`auth.policies.X.jwt`). */
  constructor (private readonly cfg: JwtAuthConfig, field: string) {
    this.key = loadKey(cfg, field)
    this.required = [...new Set(['exp', ...cfg.requiredClaims])]
  }

  verify (token: string): JWTPayload | Promise<JWTPayload> {
    if (token.length > this.cfg.maxTokenBytes) throw new FerryError('FERRY_ERR_AUTH_INVALID', `token longer than maxTokenBytes ${this.cfg.maxTokenBytes}`)
    const hit = this.cache.get(token)
    if (hit !== undefined) {
      if (Date.now() < hit.until) return hit.claims
      this.cache.delete(token)
    }
    return this.verifySlow(token)
  }

  private async verifySlow (token: string): Promise<JWTPayload> {
    let claims: JWTPayload
    try {
      const r = await jwtVerify(token, this.key as Uint8Array, {
        algorithms: this.cfg.algorithms,
        issuer: this.cfg.issuer,
        audience: this.cfg.audience,
        clockTolerance: this.cfg.clockSkewSec,
        requiredClaims: this.required,
      })
      claims = r.payload
    } catch (err) {
      throw joseToFerry(err)
    }
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

function loadKey (cfg: JwtAuthConfig, field: string): Key {
  const read = (file: string, which: string): string => {
    try { return readFileSync(file, 'utf8') } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.${which}: cannot read ${file}: ${(err as Error).message}`)
    }
  }
  if (cfg.secret !== undefined) return new TextEncoder().encode(cfg.secret)
  if (cfg.secretFile !== undefined) {
    const secret = read(cfg.secretFile, 'secretFile').trim()
    if (secret.length < 32) throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.secretFile: the secret in ${cfg.secretFile} must be at least 32 characters`)
    return new TextEncoder().encode(secret)
  }
  if (cfg.publicKeyFile !== undefined) {
    try { return createPublicKey(read(cfg.publicKeyFile, 'publicKeyFile')) } catch (err) {
      if (err instanceof FerryError) throw err
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.publicKeyFile: ${cfg.publicKeyFile} holds no PEM public key or certificate: ${(err as Error).message}`)
    }
  }
  if (cfg.jwksFile !== undefined) {
    try { return createLocalJWKSet(JSON.parse(read(cfg.jwksFile, 'jwksFile'))) } catch (err) {
      if (err instanceof FerryError) throw err
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}.jwksFile: ${cfg.jwksFile} is not a JWKS document: ${(err as Error).message}`)
    }
  }
  return createRemoteJWKSet(new URL(cfg.jwksUrl!), {
    cacheMaxAge: cfg.jwksCacheMs,
    cooldownDuration: cfg.jwksCooldownMs,
    timeoutDuration: cfg.jwksTimeoutMs,
  })
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
