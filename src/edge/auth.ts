import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { apiKeyList, type ApiKeyEntry, type AuthPolicyConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { HmacVerifier, HMAC_HEADERS } from './hmac.js'
import { JwtVerifier } from './jwt.js'
import type { EdgeRedis } from './redis.js'
import { readSource } from './source.js'

export type AuthMethod = 'jwt' | 'apiKey' | 'hmac'

/** Who the caller is, once a credential verified. */
export interface Principal {
  readonly method: AuthMethod
  readonly claims: Readonly<Record<string, unknown>>
  /** hmac: the body must hash to this as it streams. */
  readonly bodySha256?: string | undefined
}

/** What the edge reads from a request or a WebSocket handshake. */
export interface EdgeRequest {
  readonly method: string
  readonly host: string
  /** Path and query as received. */
  readonly target: string
  readonly query: string
  /** Flat `[name, value, …]`, lower-case names. */
  readonly headers: readonly string[]
  readonly clientIp: string
  readonly hasBody: boolean
}

/**
 * One named auth policy: the methods it accepts, tried by which credential the request carries
 * (an HMAC signature, then a JWT, then an API key: the first present decides, so a bad token is
 * refused even if an API key is there too). Verification is synchronous where it can be (API keys,
 * HMAC with the memory replay store, JWTs in the verified-token cache) and a promise otherwise.
 */
export class AuthPolicy {
  private readonly jwt: JwtVerifier | undefined
  private readonly hmac: HmacVerifier | undefined
  /** sha256(key) hex → entry. */
  private readonly apiKeys = new Map<string, ApiKeyEntry>()
  /** Header names the client may not send (forwarded claims, the method header; credentials unless forwarded). */
  readonly stripped: ReadonlySet<string>
  /** The WWW-Authenticate challenge of a 401, when JWT is accepted. */
  readonly challenge: string | undefined

  constructor (readonly name: string, readonly cfg: AuthPolicyConfig, redis: EdgeRedis | undefined) {
    const field = `auth.policies.${name}`
    this.jwt = cfg.jwt !== undefined ? new JwtVerifier(cfg.jwt, `${field}.jwt`) : undefined
    this.hmac = cfg.hmac !== undefined ? new HmacVerifier(cfg.hmac, redis) : undefined
    if (cfg.apiKey !== undefined) {
      const entries = [...cfg.apiKey.keys, ...(cfg.apiKey.keysFile !== undefined ? readKeysFile(cfg.apiKey.keysFile, `${field}.apiKey.keysFile`) : [])]
      for (const e of entries) this.apiKeys.set(e.sha256 ?? sha256hex(e.key!), e)
    }
    const stripped = new Set([...Object.values(cfg.forward.claims), cfg.forward.methodHeader])
    if (!cfg.forward.credentials) {
      for (const src of [...(cfg.jwt?.from ?? []), ...(cfg.apiKey?.from ?? [])]) if (src.startsWith('header:')) stripped.add(src.slice(7).toLowerCase())
    }
    this.stripped = stripped
    this.challenge = cfg.jwt !== undefined ? 'Bearer realm="ferry"' : undefined
  }

  /** The caller, undefined for an anonymous request on an `optional` policy; throws/rejects FerryError. */
  authenticate (req: EdgeRequest): Principal | undefined | Promise<Principal> {
    const header = (name: string): string | undefined => readSource(`header:${name}`, req.headers, '')
    if (this.hmac !== undefined) {
      const signed = { method: req.method, host: req.host, target: req.target, hasBody: req.hasBody, header }
      if (this.hmac.present(signed)) {
        const p = tagged('hmac', () => this.hmac!.verify(signed))
        const toPrincipal = (h: { keyId: string, claims: Readonly<Record<string, string>>, bodySha256: string | undefined }): Principal => ({ method: 'hmac', claims: { ...h.claims, sub: h.keyId }, bodySha256: h.bodySha256 })
        return p instanceof Promise ? p.then(toPrincipal) : toPrincipal(p)
      }
    }
    if (this.jwt !== undefined) {
      for (const src of this.cfg.jwt!.from) {
        let token = readSource(src, req.headers, req.query)
        if (token === undefined) continue
        if (src === 'header:authorization') {
          const m = /^Bearer +(\S+) *$/i.exec(token)
          if (m === null) continue // another scheme (Basic, a signature): not a JWT credential
          token = m[1]!
        }
        const c = tagged('jwt', () => this.jwt!.verify(token))
        return c instanceof Promise ? c.then((claims) => ({ method: 'jwt', claims })) : { method: 'jwt', claims: c }
      }
    }
    if (this.cfg.apiKey !== undefined) {
      for (const src of this.cfg.apiKey.from) {
        const key = readSource(src, req.headers, req.query)
        if (key === undefined) continue
        if (key.length > 1024) throw Object.assign(new FerryError('FERRY_ERR_AUTH_INVALID', 'API key too long'), { authMethod: 'apiKey' })
        // Looked up by the key's SHA-256: timing reveals nothing about the stored keys themselves.
        const e = this.apiKeys.get(sha256hex(key))
        if (e === undefined) {
          throw Object.assign(new FerryError('FERRY_ERR_AUTH_INVALID', 'unknown API key'), { authMethod: 'apiKey' })
        }
        return { method: 'apiKey', claims: { ...e.claims, sub: e.id } }
      }
    }
    if (this.cfg.optional) return undefined
    throw new FerryError('FERRY_ERR_AUTH_MISSING', `credentials required: ${this.expected()}`)
  }

  private expected (): string {
    const what: string[] = []
    if (this.cfg.hmac !== undefined) what.push(`an HMAC signature (${HMAC_HEADERS.signature})`)
    if (this.cfg.jwt !== undefined) what.push(`a JWT (${this.cfg.jwt.from.join(', ')})`)
    if (this.cfg.apiKey !== undefined) what.push(`an API key (${this.cfg.apiKey.from.join(', ')})`)
    return what.join(' or ')
  }
}

/** Runs a verifier, marking what it throws or rejects with the method (the ferry_auth_total label). */
function tagged<T> (method: AuthMethod, fn: () => T | Promise<T>): T | Promise<T> {
  const tag = (err: unknown): never => { throw Object.assign(err as object, { authMethod: method }) }
  let r: T | Promise<T>
  try { r = fn() } catch (err) { return tag(err) }
  return r instanceof Promise ? r.catch(tag) : r
}

/**
 * `ferry check`: what building each policy at start would refuse (its key files are read now: an
 * unreadable one, a short HMAC secret, a file that is no PEM key, JWKS or key list), one line each.
 */
export function authPolicyProblems (policies: Readonly<Record<string, AuthPolicyConfig>>): string[] {
  const problems: string[] = []
  for (const [name, cfg] of Object.entries(policies)) {
    try {
      // No Redis: an HMAC replay store is only reached per request, never while the policy is built.
      void new AuthPolicy(name, cfg, undefined)
    } catch (err) {
      problems.push((err as Error).message)
    }
  }
  return problems
}

function sha256hex (s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

function readKeysFile (file: string, field: string): ApiKeyEntry[] {
  let doc: unknown
  try {
    doc = parseYaml(readFileSync(file, 'utf8'), { maxAliasCount: 100 })
  } catch (err) {
    throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}: cannot read ${file}: ${(err as Error).message}`)
  }
  const r = apiKeyList.safeParse(doc)
  if (!r.success) {
    const i = r.error.issues[0]!
    throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${field}: ${file}${i.path.length ? ' at ' + i.path.join('.') : ''}: ${i.message}`)
  }
  return r.data
}
