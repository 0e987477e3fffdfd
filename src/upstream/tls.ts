import { createHash } from 'node:crypto'
import { isIP } from 'node:net'
import { createSecureContext, type SecureContext } from 'node:tls'
import type { Logger } from 'pino'
import type { Config, Endpoint } from '../config/load.js'
import { upstreamTlsSettings, type UpstreamConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { TlsFiles, tlsFailure, type TlsFailure } from '../net/tls.js'
import type { Metrics } from '../observability/metrics.js'

/** What an upstream's `tls` names, read from disk and checked once: the context all its connections share. */
export interface UpstreamTlsMaterial {
  /** CA, client certificate and key, parsed once (not per connection). */
  readonly secureContext: SecureContext
  readonly serverName: string | undefined
  readonly rejectUnauthorized: boolean
  /** sha256 of the files' contents: an upstream whose files changed is built anew on a reload. */
  readonly fingerprint: string
  /** What /status shows (no secret). */
  readonly summary: {
    readonly caFile: string | null
    readonly caCertificates: number | null
    readonly clientCertificate: { readonly serial: string, readonly notAfter: string } | null
    readonly serverName: string | null
    readonly verify: boolean
  }
}

/**
 * Reads and checks the files of upstream `name`'s TLS (readable, PEM, the client key opens and matches
 * its certificate, which is valid now; the CA file holds certificates) with the checks the HTTP front's
 * certificates get (src/net/tls.ts). Undefined: the upstream speaks plain.
 */
export function readUpstreamTls (name: string, u: UpstreamConfig, now = Date.now()): UpstreamTlsMaterial | undefined | { problems: string[] } {
  const tls = upstreamTlsSettings(u)
  if (tls === undefined) return undefined
  const field = `upstreams.${name}.tls`
  const files = new TlsFiles(now)
  const ca = tls.caFile !== undefined ? files.caBundle(`${field}.caFile`, tls.caFile) : undefined
  const passphrase = files.passphrase(`${field}.passphraseFile`, tls.passphraseFile)
  const pair = tls.certFile !== undefined && tls.keyFile !== undefined ? files.pair(field, tls.certFile, tls.keyFile, passphrase) : undefined
  if (files.problems.length > 0) return { problems: files.problems }
  let secureContext: SecureContext
  try {
    // With `ca` the context trusts those certificates only (Node's bundled CAs otherwise).
    secureContext = createSecureContext({ ca: ca?.pem, cert: pair?.cert, key: pair?.key, passphrase: passphrase.value })
  } catch (err) {
    return { problems: [`${field}: Node's TLS refused these files (${(err as Error).message})`] }
  }
  const fingerprint = createHash('sha256').update(ca?.pem ?? '').update('\0').update(pair?.fingerprint ?? '').digest('hex')
  return {
    secureContext,
    serverName: tls.serverName,
    rejectUnauthorized: tls.rejectUnauthorized,
    fingerprint,
    summary: {
      caFile: tls.caFile ?? null,
      caCertificates: ca?.count ?? null,
      clientCertificate: pair !== undefined ? { serial: pair.serial, notAfter: pair.notAfter } : null,
      serverName: tls.serverName ?? null,
      verify: tls.rejectUnauthorized,
    },
  }
}

/** Bad TLS files of one or more upstreams, each problem naming its field. */
export class UpstreamTlsFilesError extends FerryError {
  constructor (readonly problems: string[]) {
    super('FERRY_ERR_TLS_CERT', `upstream TLS files: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n  ${problems.join('\n  ')}`)
  }
}

/** Every upstream's TLS material by name (undefined: plain), or throws UpstreamTlsFilesError listing every problem. */
export function readAllUpstreamTls (cfg: Config, now = Date.now()): Map<string, UpstreamTlsMaterial | undefined> {
  const out = new Map<string, UpstreamTlsMaterial | undefined>()
  const problems: string[] = []
  for (const [name, u] of Object.entries(cfg.upstreams)) {
    const m = readUpstreamTls(name, u, now)
    if (m !== undefined && 'problems' in m) problems.push(...m.problems)
    else out.set(name, m)
  }
  if (problems.length > 0) throw new UpstreamTlsFilesError(problems)
  return out
}

/** `ferry check`: the problems of every upstream's TLS files (empty: none). */
export function upstreamTlsProblems (cfg: Config): string[] {
  try {
    readAllUpstreamTls(cfg)
    return []
  } catch (err) {
    return (err as UpstreamTlsFilesError).problems
  }
}

/** A failure already logged for an endpoint is logged again only after this long (with the count not logged). */
const LOG_AGAIN_MS = 5 * 60_000
/** Endpoints remembered for that; beyond it the memory starts over (DNS churn must not grow it without bound). */
const MAX_REMEMBERED = 1024

/**
 * An upstream's TLS client side: the options every connection to one of its endpoints is made with, and
 * what happens when a handshake fails (counted by reason; logged once per endpoint and reason, not per
 * request). Made once per built upstream and shared by its instances (an HTTP upstream and its
 * WebSocket twin).
 */
export class UpstreamTlsClient {
  private readonly logged = new Map<string, { message: string, at: number, notLogged: number }>()

  /** `log`: the upstream's logger (it names the upstream). */
  constructor (readonly upstream: string, readonly material: UpstreamTlsMaterial, private readonly log: Logger, private readonly metrics: Metrics) {
    if (!material.rejectUnauthorized) log.warn(`upstreams.${upstream}.tls.rejectUnauthorized is false: its endpoints' certificates are not verified (traffic is encrypted, but to whoever answers)`)
  }

  /** SNI for `ep`: tls.serverName, else its host when that is a DNS name (an IP address gets none). */
  servername (ep: Endpoint): string | undefined {
    return this.material.serverName ?? (isIP(ep.host) === 0 ? ep.host : undefined)
  }

  /** tls.connect options for a connection to `ep`. */
  options (ep: Endpoint): { secureContext: SecureContext, servername: string | undefined, rejectUnauthorized: boolean } {
    return { secureContext: this.material.secureContext, servername: this.servername(ep), rejectUnauthorized: this.material.rejectUnauthorized }
  }

  /**
   * When `err` (from a connection to `address`) is a TLS failure: counts and logs it, and returns it as
   * FERRY_ERR_UPSTREAM_TLS. Undefined for anything else (refused, reset, timeout: the caller's own).
   */
  failure (address: string, err: unknown): FerryError | undefined {
    const f = tlsFailure(err)
    if (f === undefined) return undefined
    this.metrics.upstreamTlsFailures.labels(this.upstream, address, f.kind).inc()
    const message = describeFailure(address, f)
    const now = Date.now()
    const last = this.logged.get(address)
    if (last !== undefined && last.message === message && now - last.at < LOG_AGAIN_MS) {
      last.notLogged++
    } else {
      if (this.logged.size >= MAX_REMEMBERED) this.logged.clear()
      this.log.warn({ endpoint: address, code: 'FERRY_ERR_UPSTREAM_TLS', reason: f.kind, tlsCode: f.code, notLogged: last?.notLogged ?? 0 }, message)
      this.logged.set(address, { message, at: now, notLogged: 0 })
    }
    return new FerryError('FERRY_ERR_UPSTREAM_TLS', message, { cause: err })
  }

  status (): object {
    return this.material.summary
  }
}

function describeFailure (address: string, f: TlsFailure): string {
  switch (f.kind) {
    case 'verify': return `TLS to ${address}: its certificate does not verify (${f.code}: ${f.message}); tls.caFile must hold the CA that signed it`
    case 'name': return `TLS to ${address}: its certificate does not name the server name asked for (${f.message}); see tls.serverName`
    case 'refused': return `TLS to ${address}: the endpoint refused the handshake (${f.code}): it did not accept Ferry's client certificate (tls.certFile), or wants one`
    case 'protocol': return `TLS to ${address}: handshake failed (${f.code}: ${f.message}); does the endpoint speak TLS?`
  }
}
