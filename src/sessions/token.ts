import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto'
import { readSecret } from '../config/secret.js'

/** What a resume token says (sealed: clients can neither read nor change it). */
export interface ResumeClaims {
  /** Session id (stable across resumes). */
  readonly s: string
  /** Placement key: the store key that locates the session's backend endpoint. */
  readonly k: string
  /** Upstream name: a token resumes only on a route to the upstream that issued it. */
  readonly u: string
  /** Fencing epoch the backend expects (bumped by every resume). */
  readonly e: number
  /**
   * The endpoint (`host:port`) that holds the session: a resume goes back there first, whatever a route
   * split or the affinity store says now. Absent in tokens of older gateways.
   */
  readonly a?: string
  /** Issued at, ms since the epoch. */
  readonly t: number
}

export type TokenRefusal = 'invalid' | 'expired'

const VERSION = 1
const IV_BYTES = 12
const TAG_BYTES = 16

/**
 * Resume tokens: AES-256-GCM sealed claims, base64url. Authenticated encryption, so a token cannot be
 * forged or altered without the secret (every pod shares it: `resume.secret`), and it does not show
 * the placement key or session id to the client. Expired after `ttlMs`; live sessions get a fresh one
 * every `ttlMs / 2`. A token is only a claim: the backend also fences by epoch (a replayed token is
 * `stale` there).
 */
export class ResumeTokens {
  private readonly key: Buffer

  constructor (secret: string | Buffer, readonly ttlMs: number) {
    this.key = createHash('sha256').update('ferry resume token v1\0').update(secret).digest()
  }

  seal (claims: Omit<ResumeClaims, 't'>, now = Date.now()): string {
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.key, iv)
    const body = Buffer.concat([cipher.update(JSON.stringify({ ...claims, t: now }), 'utf8'), cipher.final()])
    return Buffer.concat([Buffer.of(VERSION), iv, body, cipher.getAuthTag()]).toString('base64url')
  }

  open (token: string, now = Date.now()): ResumeClaims | TokenRefusal {
    const raw = Buffer.from(token, 'base64url')
    if (raw.length < 1 + IV_BYTES + TAG_BYTES + 2 || raw[0] !== VERSION) return 'invalid'
    let claims: ResumeClaims
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, raw.subarray(1, 1 + IV_BYTES))
      decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES))
      const plain = Buffer.concat([decipher.update(raw.subarray(1 + IV_BYTES, raw.length - TAG_BYTES)), decipher.final()])
      claims = JSON.parse(plain.toString('utf8')) as ResumeClaims
    } catch {
      return 'invalid'
    }
    if (typeof claims.s !== 'string' || typeof claims.k !== 'string' || typeof claims.u !== 'string' ||
        !Number.isSafeInteger(claims.e) || !Number.isSafeInteger(claims.t) || (claims.a !== undefined && typeof claims.a !== 'string')) return 'invalid'
    if (now - claims.t > this.ttlMs || claims.t - now > 60_000) return 'expired'
    return claims
  }
}

/** Where the secret came from (for /status and the start-up log; never the secret itself). */
export type SecretSource = 'config' | 'file' | 'env' | 'random'

/**
 * The resume secret: `resume.secret`, else `resume.secretFile`, else FERRY_RESUME_SECRET, else a random
 * one (tokens then only resume on this process). Throws FERRY_ERR_CONFIG_INVALID naming the field for a
 * file that cannot be read or a secret shorter than 32 characters.
 */
export function resolveResumeSecret (cfg: { secret?: string | undefined, secretFile?: string | undefined }, env: NodeJS.ProcessEnv = process.env): { secret: string, source: SecretSource } {
  const found = readSecret({ value: cfg.secret, file: cfg.secretFile }, { fileField: 'resume.secretFile', envName: 'FERRY_RESUME_SECRET', minLength: 32, what: 'secret' }, env)
  return found === undefined ? { secret: randomBytes(32).toString('base64url'), source: 'random' } : { secret: found.value, source: found.source }
}
