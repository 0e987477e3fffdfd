import { createHash, timingSafeEqual } from 'node:crypto'
import { readSecret } from '../config/secret.js'

/** Where the admin token came from; 'none': the admin API is open (as before tokens existed). */
export type AdminTokenSource = 'config' | 'file' | 'env' | 'none'

const MIN_TOKEN_LENGTH = 16

/**
 * The admin token: `admin.token`, else `admin.tokenFile`, else FERRY_ADMIN_TOKEN, else none. Throws
 * FERRY_ERR_CONFIG_INVALID naming the field for a file that cannot be read or a token that is too short.
 */
export function resolveAdminToken (cfg: { token?: string | undefined, tokenFile?: string | undefined }, env: NodeJS.ProcessEnv = process.env): { token: string | undefined, source: AdminTokenSource } {
  const found = readSecret({ value: cfg.token, file: cfg.tokenFile }, { fileField: 'admin.tokenFile', envName: 'FERRY_ADMIN_TOKEN', minLength: MIN_TOKEN_LENGTH, what: 'token' }, env)
  return found === undefined ? { token: undefined, source: 'none' } : { token: found.value, source: found.source }
}

function digest (s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

/**
 * Checks `Authorization: Bearer TOKEN`. Both sides are compared as SHA-256 digests with timingSafeEqual:
 * equal lengths whatever was presented, so neither the token's content nor its length leaks through timing.
 */
export class AdminToken {
  private readonly expected: Buffer | undefined

  constructor (token: string | undefined, readonly source: AdminTokenSource) {
    this.expected = token === undefined ? undefined : digest(token)
  }

  get required (): boolean {
    return this.expected !== undefined
  }

  /** True when no token is configured, or the header carries it. */
  allows (authorization: string): boolean {
    if (this.expected === undefined) return true
    const m = /^Bearer +([^\s]+) *$/i.exec(authorization)
    // A missing or malformed header is still hashed and compared: every refusal costs the same.
    return timingSafeEqual(digest(m?.[1] ?? ''), this.expected) && m !== null
  }

  /** True when `other` checks the same token (a reload that kept it keeps the open live channels). */
  same (other: AdminToken): boolean {
    if (this.expected === undefined || other.expected === undefined) return this.expected === other.expected
    return timingSafeEqual(this.expected, other.expected)
  }
}
