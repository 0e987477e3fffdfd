import { createHash, createPrivateKey, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'

/**
 * TLS files and TLS errors, for both ends of Ferry: the HTTP front's certificates (listen.http.tls) and
 * the upstreams' CA and client certificates (upstreams.NAME.tls). One set of checks, one wording.
 */

/** One certificate and its key, read and checked; `field` is its config path (`listen.http.tls.sni[0]`). */
export interface CertPair {
  readonly field: string
  readonly cert: Buffer
  readonly key: Buffer
  /** Hex serial of the leaf certificate, for logs and /status. */
  readonly serial: string
  readonly notAfter: string
  /** DNS names of the leaf's subjectAltName (IP addresses are not SNI names). */
  readonly dnsNames: readonly string[]
  /** sha256 of cert, key and passphrase: what changed means a new context. */
  readonly fingerprint: string
}

/** Where a key's passphrase comes from: its field (named when it is missing or wrong) and the value read. */
export interface Passphrase {
  readonly field: string
  readonly file: string | undefined
  readonly value: string | undefined
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g

/**
 * Reads the files of one config section and checks them, collecting every problem as a line that names
 * its field (`upstreams.api.tls.keyFile: cannot read /x (ENOENT)`) instead of stopping at the first.
 */
export class TlsFiles {
  readonly problems: string[] = []

  constructor (private readonly now = Date.now()) {}

  read (field: string, path: string): Buffer | undefined {
    try {
      return readFileSync(path)
    } catch (err) {
      this.problems.push(`${field}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
      return undefined
    }
  }

  /** A passphrase file: its content without trailing newlines. */
  passphrase (field: string, path: string | undefined): Passphrase {
    return { field, file: path, value: path === undefined ? undefined : this.read(field, path)?.toString('utf8').replace(/[\r\n]+$/, '') }
  }

  /**
   * `field.certFile` and `field.keyFile`: readable, PEM, the key opens (with the passphrase) and matches
   * the certificate, and the certificate is valid now (not expired, not before its start).
   */
  pair (field: string, certFile: string, keyFile: string, passphrase: Passphrase): CertPair | undefined {
    const cert = this.read(`${field}.certFile`, certFile)
    const key = this.read(`${field}.keyFile`, keyFile)
    if (cert === undefined || key === undefined) return undefined
    let x509: X509Certificate
    try {
      x509 = new X509Certificate(cert)
    } catch (err) {
      this.problems.push(`${field}.certFile: ${certFile} is not a PEM certificate (${(err as Error).message})`)
      return undefined
    }
    let ok = this.validNow(`${field}.certFile`, certFile, x509)
    try {
      const k = createPrivateKey({ key, format: 'pem', ...(passphrase.value !== undefined ? { passphrase: passphrase.value } : {}) })
      if (!x509.checkPrivateKey(k)) { this.problems.push(`${field}.keyFile: ${keyFile} does not match the certificate in ${field}.certFile (serial ${x509.serialNumber})`); ok = false }
    } catch (err) {
      this.problems.push(`${field}.keyFile: ${keyFile} is not a usable PEM private key${passphrase.file === undefined ? ` (an encrypted key needs ${passphrase.field})` : ' (or the passphrase is wrong)'} (${(err as Error).message})`)
      return undefined
    }
    if (!ok) return undefined
    const dnsNames = (x509.subjectAltName ?? '').split(/,\s*/).filter((s) => s.startsWith('DNS:')).map((s) => s.slice(4).toLowerCase())
    const fingerprint = createHash('sha256').update(cert).update('\0').update(key).update('\0').update(passphrase.value ?? '').digest('hex')
    return { field, cert, key, serial: x509.serialNumber, notAfter: new Date(Date.parse(x509.validTo)).toISOString(), dnsNames, fingerprint }
  }

  /** A CA bundle: readable, one or more PEM certificates that all parse, not every one of them expired. */
  caBundle (field: string, path: string): { pem: Buffer, count: number } | undefined {
    const pem = this.read(field, path)
    if (pem === undefined) return undefined
    const blocks = pem.toString('latin1').match(PEM_CERT) ?? []
    if (blocks.length === 0) { this.problems.push(`${field}: ${path} holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)`); return undefined }
    let expired = 0
    for (const [i, block] of blocks.entries()) {
      let x509: X509Certificate
      try {
        x509 = new X509Certificate(block)
      } catch (err) {
        this.problems.push(`${field}: certificate ${i + 1} of ${blocks.length} in ${path} is not a PEM certificate (${(err as Error).message})`)
        return undefined
      }
      if (!(Date.parse(x509.validTo) > this.now)) expired++
    }
    if (expired === blocks.length) { this.problems.push(`${field}: every certificate in ${path} has expired (${expired})`); return undefined }
    return { pem, count: blocks.length }
  }

  private validNow (field: string, file: string, x509: X509Certificate): boolean {
    const notAfter = Date.parse(x509.validTo)
    const notBefore = Date.parse(x509.validFrom)
    let ok = true
    if (!(notAfter > this.now)) { this.problems.push(`${field}: ${file} (serial ${x509.serialNumber}) expired on ${new Date(notAfter).toISOString()}`); ok = false }
    if (notBefore > this.now) { this.problems.push(`${field}: ${file} (serial ${x509.serialNumber}) is not valid before ${new Date(notBefore).toISOString()}`); ok = false }
    return ok
  }
}

/** What a server-side tls block names (listen.http.tls, listen.tcp[].tls): a default pair, SNI pairs, a passphrase. */
export interface CertFilesConfig {
  readonly certFile: string
  readonly keyFile: string
  readonly passphraseFile?: string | undefined
  readonly sni: ReadonlyArray<{ readonly serverNames: readonly string[], readonly certFile: string, readonly keyFile: string }>
}

/** Everything a server-side tls block names, read from disk and checked. */
export interface TlsMaterial {
  readonly passphrase: string | undefined
  readonly default: CertPair
  readonly sni: ReadonlyArray<{ readonly names: readonly string[], readonly pair: CertPair }>
  readonly fingerprint: string
}

/**
 * Reads and checks every file of the tls block at `field` (readable, PEM, key matches certificate, valid
 * now) and returns them, or the problems, each naming its field (`listen.tcp[0].tls.sni[1].keyFile: ...`).
 */
export function readTlsMaterial (cfg: CertFilesConfig, field: string, now = Date.now()): TlsMaterial | { problems: string[] } {
  const files = new TlsFiles(now)
  const passphrase = files.passphrase(`${field}.passphraseFile`, cfg.passphraseFile)
  const def = files.pair(field, cfg.certFile, cfg.keyFile, passphrase)
  const sni = cfg.sni.map((e, i) => ({ names: e.serverNames.map((n) => n.toLowerCase()), pair: files.pair(`${field}.sni[${i}]`, e.certFile, e.keyFile, passphrase) }))
  if (files.problems.length > 0 || def === undefined) return { problems: files.problems }
  const all = createHash('sha256').update(def.fingerprint)
  for (const e of sni) all.update(e.names.join(',')).update(e.pair!.fingerprint)
  return { passphrase: passphrase.value, default: def, sni: sni.map((e) => ({ names: e.names, pair: e.pair! })), fingerprint: all.digest('hex') }
}

/**
 * Whether the SNI name `name` (lower case) matches `pattern` (lower case): equal, or equal label by label
 * where a `*` label of the pattern stands for exactly one label of the name (`*.example.com` matches
 * `a.example.com`, not `example.com` nor `a.b.example.com`).
 */
export function serverNameMatches (pattern: string, name: string): boolean {
  if (pattern === name) return true
  if (!pattern.includes('*')) return false
  const p = pattern.split('.')
  const n = name.split('.')
  if (p.length !== n.length) return false
  for (let i = 0; i < p.length; i++) if (p[i] !== '*' && p[i] !== n[i]) return false
  return n.every((l) => l.length > 0)
}

/**
 * Why a TLS handshake with a peer failed: `verify` (its certificate does not chain to a trusted CA, or is
 * expired), `name` (it does not name the host or SNI name asked for), `refused` (the peer sent an alert:
 * it refused our client certificate, or wanted one) or `protocol` (no TLS spoken, or nothing in common).
 */
export type TlsFailureKind = 'verify' | 'name' | 'refused' | 'protocol'

export interface TlsFailure {
  readonly kind: TlsFailureKind
  /** The error's code (`UNABLE_TO_VERIFY_LEAF_SIGNATURE`, `ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`, ...). */
  readonly code: string
  readonly message: string
}

/** OpenSSL's X509 verification results as Node reports them (err.code) when rejectUnauthorized is on. */
const VERIFY_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_CRL', 'UNABLE_TO_DECRYPT_CERT_SIGNATURE', 'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE', 'CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED', 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_CHAIN_TOO_LONG', 'CERT_REVOKED', 'INVALID_CA', 'PATH_LENGTH_EXCEEDED', 'INVALID_PURPOSE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
])

/** The TLS failure `err` is (a socket error of a TLS connection), or undefined when it is something else (refused, reset, timeout). */
export function tlsFailure (err: unknown): TlsFailure | undefined {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code !== 'string') return undefined
  const message = (err as Error).message
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return { kind: 'name', code, message }
  if (VERIFY_CODES.has(code)) return { kind: 'verify', code, message }
  if (code.startsWith('ERR_SSL_') && code.includes('ALERT')) return { kind: 'refused', code, message }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || code === 'EPROTO') return { kind: 'protocol', code, message }
  return undefined
}
