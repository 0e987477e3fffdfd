import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AppOptions, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import type { HttpTlsConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { CertWatch } from '../net/cert-watch.js'
import { readTlsMaterial, type CertPair, type TlsMaterial } from '../net/tls.js'
import type { Metrics } from '../observability/metrics.js'
import { uwsClosesAfter, type Uws } from './uws.js'

export type { CertPair } from '../net/tls.js'

const PROBLEM_FIELD = 'listen.http.tls'

/**
 * Reads and checks every file of `cfg` and returns what uWS is to be given, or the problems, each naming
 * its field. uWebSockets.js 20.30 crashes the process (SIGSEGV) when addServerName gets a file it cannot
 * use, so nothing reaches it unchecked.
 */
export function readFrontTls (cfg: HttpTlsConfig, now = Date.now()): TlsMaterial | { problems: string[] } {
  return readTlsMaterial(cfg, PROBLEM_FIELD, now)
}

/**
 * Hands checked bytes to uWS through files of its own: uWS only takes file names, and a file an operator
 * replaces between the check and uWS's read must not reach it. The copies live in a private directory
 * only for the duration of `fn` (uWS reads them while the context is made).
 */
function withFiles<T> (pair: CertPair, fn: (paths: { cert_file_name: string, key_file_name: string }) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-tls-'))
  try {
    const certPath = join(dir, 'cert.pem')
    const keyPath = join(dir, 'key.pem')
    writeFileSync(certPath, pair.cert, { mode: 0o600 })
    writeFileSync(keyPath, pair.key, { mode: 0o600 })
    return fn({ cert_file_name: certPath, key_file_name: keyPath })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Where a route registration goes: uWS routes a connection whose SNI name matched to that name's own router. */
export type RouteRegistration = (app: TemplatedApp) => void

/** A name uWS never has: `domain()` with it points route registration back at the main router. */
const MAIN_ROUTER = '\u0001ferry-main'

export interface TlsFrontDeps {
  readonly uws: Uws
  readonly log: Logger
  readonly metrics: Metrics
}

/**
 * The TLS side of the HTTP front: owns the SSLApp's certificates, the SNI names registered on it, and
 * the watch of the certificate files.
 *
 * uWebSockets.js 20.30 cannot replace the context an SSLApp was made with. Rotation therefore goes
 * through server names: every `sni` name and every DNS name of the default certificate is registered
 * with `addServerName`, and a changed certificate is a `removeServerName` + `addServerName` of its
 * names (connections already open keep the context they were made with). A handshake without SNI, or
 * for a name no certificate lists, gets the start-up default until a restart (docs/tls.md).
 * uWS gives a connection whose name matched a router of that name's own, so every route registration
 * is replayed on each name (`register`).
 */
export class TlsFront {
  readonly app: TemplatedApp
  private cfg: HttpTlsConfig
  private readonly registrations: RouteRegistration[] = []
  /** Registered server name → fingerprint of the pair it serves. */
  private readonly names = new Map<string, string>()
  /** The certificate files and their rotation (a change re-registers the names it touches). */
  private readonly certs: CertWatch<HttpTlsConfig, HttpTlsConfig>

  constructor (private readonly deps: TlsFrontDeps, cfg: HttpTlsConfig) {
    this.cfg = cfg
    const c = deps.metrics.tlsCertChecks
    this.certs = new CertWatch(PROBLEM_FIELD, cfg, deps.log, { applied: c.labels('applied'), unchanged: c.labels('unchanged'), refused: c.labels('refused') }, {
      build: (_m, next) => next,
      install: (next, m, before) => { this.cfg = next; this.installed(m, before) },
    })
    let app: TemplatedApp | undefined
    try {
      app = withFiles(this.certs.current.default, (files) => deps.uws.SSLApp({ ...files, ...this.common() }))
    } catch (err) {
      this.certs.close()
      // Node's checks passed, so what BoringSSL refused is the cipher list (or a key type it lacks).
      throw new FerryError('FERRY_ERR_TLS_CERT', `listen.http.tls: uWebSockets.js refused the certificate${cfg.ciphers !== undefined ? ' or listen.http.tls.ciphers (no cipher of the list is known to BoringSSL)' : ''} (${(err as Error).message})`)
    }
    this.app = app
    this.syncNames()
  }

  private common (): AppOptions {
    const passphrase = this.certs.current.passphrase
    return { ...(passphrase !== undefined ? { passphrase } : {}), ...(this.cfg.ciphers !== undefined ? { ssl_ciphers: this.cfg.ciphers } : {}) }
  }

  /** Runs `fn` on the main router and on the router of every registered name, now and for names added later. */
  register (fn: RouteRegistration): void {
    this.registrations.push(fn)
    this.app.domain(MAIN_ROUTER)
    fn(this.app)
    for (const name of this.names.keys()) {
      this.app.domain(name)
      fn(this.app)
    }
    this.app.domain(MAIN_ROUTER)
  }

  /** Every name and the pair it is served with: `sni` entries first, then the default certificate's DNS names. */
  private wanted (): Map<string, CertPair> {
    const m = this.certs.current
    const out = new Map<string, CertPair>()
    for (const e of m.sni) for (const n of e.names) if (!out.has(n)) out.set(n, e.pair)
    for (const n of m.default.dnsNames) if (!out.has(n)) out.set(n, m.default)
    return out
  }

  /** Registers, replaces and removes server names until they match the material (only what changed). */
  private syncNames (): void {
    const wanted = this.wanted()
    for (const [name, fp] of this.names) {
      if (wanted.get(name)?.fingerprint === fp) continue
      this.app.removeServerName(name)
      this.names.delete(name)
    }
    const common = this.common()
    for (const [name, pair] of wanted) {
      if (this.names.has(name)) continue
      withFiles(pair, (files) => this.app.addServerName(name, { ...files, ...common }))
      this.names.set(name, pair.fingerprint)
      this.app.domain(name)
      for (const fn of this.registrations) fn(this.app)
    }
    this.app.domain(MAIN_ROUTER)
  }

  /** Changed, valid files: their names are registered anew (the CertWatch logs and counts it). */
  private installed (m: TlsMaterial, before: TlsMaterial): void {
    this.syncNames()
    if (before.default.fingerprint !== m.default.fingerprint) this.deps.log.warn({ serial: before.default.serial }, 'listen.http.tls default certificate changed: its DNS names get the new one; handshakes without SNI or for other names keep the start-up certificate until a restart (uWebSockets.js 20.30 cannot replace it)')
  }

  /**
   * Reads the files of `cfg` (a reload's config, or the running one) and checks them without applying:
   * the problems, or a function that applies them (a reload applies once nothing else refused it).
   */
  prepare (cfg: HttpTlsConfig): { problems: string[] } | { apply: () => void } {
    return this.certs.prepare(cfg)
  }

  /** Problems a reload's TLS files have, counted and logged as a refusal (the reload is refused by its caller). */
  refused (problems: string[]): void {
    this.certs.refused(problems)
  }

  close (): void {
    this.certs.close()
  }
}

/**
 * `listen.http.redirectHttpPort`: a plain-HTTP uWS app that answers every request with 308 to the same
 * URL over https on the TLS port. Nothing is read beyond the request head.
 *
 * Every answer closes the connection, and says so once: uWS 20.30 writes its own `Connection: close` for
 * `end(…, true)` unless it already marked the connection closing, which it does, silently
 * (uwsClosesAfter); only then is the header written here.
 */
export function redirectApp (uws: Uws, httpsPort: () => number): TemplatedApp {
  const app = uws.App()
  app.any('/*', (res: HttpResponse, req) => {
    const host = req.getHeader('host').replace(/:\d+$/, '')
    const q = req.getQuery()
    const url = req.getUrl()
    const port = httpsPort()
    const ok = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$/.test(host)
    const sayClose = uwsClosesAfter(req.getHeader('connection'))
    res.cork(() => {
      if (!ok) res.writeStatus('400 Bad Request')
      else res.writeStatus('308 Permanent Redirect').writeHeader('location', `https://${host}${port === 443 ? '' : `:${port}`}${url}${q === undefined || q === '' ? '' : `?${q}`}`)
      if (sayClose) res.writeHeader('connection', 'close')
      res.end(ok ? '' : 'bad Host header\n', true)
    })
  })
  return app
}
