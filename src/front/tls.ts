import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AppOptions, HttpResponse, TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import type { HttpTlsConfig } from '../config/schema.js'
import { FerryError } from '../errors.js'
import { TlsFiles, type CertPair } from '../net/tls.js'
import type { Metrics } from '../observability/metrics.js'
import type { Uws } from './uws.js'

export type { CertPair } from '../net/tls.js'

/** Everything listen.http.tls names, read from disk and checked. */
export interface TlsMaterial {
  readonly passphrase: string | undefined
  readonly default: CertPair
  readonly sni: ReadonlyArray<{ readonly names: readonly string[], readonly pair: CertPair }>
  readonly fingerprint: string
}

const PROBLEM_FIELD = 'listen.http.tls'

/**
 * Reads and checks every file of `cfg` (readable, PEM, key matches certificate, valid now) and returns
 * what uWS is to be given, or the problems, each naming its field. uWebSockets.js 20.30 crashes the
 * process (SIGSEGV) when addServerName gets a file it cannot use, so nothing reaches it unchecked.
 */
export function readTlsMaterial (cfg: HttpTlsConfig, now = Date.now()): TlsMaterial | { problems: string[] } {
  const files = new TlsFiles(now)
  const passphrase = files.passphrase(`${PROBLEM_FIELD}.passphraseFile`, cfg.passphraseFile)
  const def = files.pair(PROBLEM_FIELD, cfg.certFile, cfg.keyFile, passphrase)
  const sni = cfg.sni.map((e, i) => ({ names: e.serverNames.map((n) => n.toLowerCase()), pair: files.pair(`${PROBLEM_FIELD}.sni[${i}]`, e.certFile, e.keyFile, passphrase) }))
  if (files.problems.length > 0 || def === undefined) return { problems: files.problems }
  const all = createHash('sha256').update(def.fingerprint)
  for (const e of sni) all.update(e.names.join(',')).update(e.pair!.fingerprint)
  return { passphrase: passphrase.value, default: def, sni: sni.map((e) => ({ names: e.names, pair: e.pair! })), fingerprint: all.digest('hex') }
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
  private material: TlsMaterial
  private cfg: HttpTlsConfig
  private readonly registrations: RouteRegistration[] = []
  /** Registered server name → fingerprint of the pair it serves. */
  private readonly names = new Map<string, string>()
  private readonly watch: NodeJS.Timeout
  /** Content last refused by the watch: not logged again every tick. */
  private refusedFingerprint = ''
  private readonly counts: Record<'applied' | 'unchanged' | 'refused', { inc: () => void }>

  constructor (private readonly deps: TlsFrontDeps, cfg: HttpTlsConfig) {
    const m = readTlsMaterial(cfg)
    if ('problems' in m) throw new FerryError('FERRY_ERR_TLS_CERT', `listen.http.tls: ${m.problems.length} problem${m.problems.length === 1 ? '' : 's'}\n  ${m.problems.join('\n  ')}`)
    this.cfg = cfg
    this.material = m
    this.counts = {
      applied: deps.metrics.tlsCertChecks.labels('applied'),
      unchanged: deps.metrics.tlsCertChecks.labels('unchanged'),
      refused: deps.metrics.tlsCertChecks.labels('refused'),
    }
    let app: TemplatedApp | undefined
    try {
      app = withFiles(m.default, (files) => deps.uws.SSLApp({ ...files, ...this.common() }))
    } catch (err) {
      // Node's checks passed, so what BoringSSL refused is the cipher list (or a key type it lacks).
      throw new FerryError('FERRY_ERR_TLS_CERT', `listen.http.tls: uWebSockets.js refused the certificate${cfg.ciphers !== undefined ? ' or listen.http.tls.ciphers (no cipher of the list is known to BoringSSL)' : ''} (${(err as Error).message})`)
    }
    this.app = app
    this.syncNames()
    this.watch = setInterval(() => { this.safely('watch', () => { this.check('watch') }) }, cfg.watchIntervalMs)
    this.watch.unref()
    deps.log.info({ default: m.default.serial, sni: m.sni.map((e) => ({ names: e.names, serial: e.pair.serial })) }, 'TLS certificates loaded')
  }

  private common (): AppOptions {
    return { ...(this.material.passphrase !== undefined ? { passphrase: this.material.passphrase } : {}), ...(this.cfg.ciphers !== undefined ? { ssl_ciphers: this.cfg.ciphers } : {}) }
  }

  /** A timer or a committed reload must not throw (a failed temp-file write, say): logged and counted instead. */
  private safely (trigger: string, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.counts.refused.inc()
      this.deps.log.error({ trigger, err, code: 'FERRY_ERR_TLS_CERT' }, 'applying TLS certificate files failed')
    }
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
    const out = new Map<string, CertPair>()
    for (const e of this.material.sni) for (const n of e.names) if (!out.has(n)) out.set(n, e.pair)
    for (const n of this.material.default.dnsNames) if (!out.has(n)) out.set(n, this.material.default)
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

  /**
   * Reads the files of `cfg` (a reload's config, or the running one) and checks them without applying:
   * the problems, or a function that applies them (a reload applies once nothing else refused it).
   */
  prepare (cfg: HttpTlsConfig): { problems: string[] } | { apply: () => void } {
    const m = readTlsMaterial(cfg)
    if ('problems' in m) return m
    return { apply: () => { this.safely('reload', () => { this.use(cfg, m, 'reload') }) } }
  }

  private use (cfg: HttpTlsConfig, m: TlsMaterial, trigger: string): void {
    this.cfg = cfg
    if (m.fingerprint === this.material.fingerprint) { this.counts.unchanged.inc(); return }
    const before = this.material
    this.material = m
    this.syncNames()
    this.refusedFingerprint = ''
    this.counts.applied.inc()
    const defaultChanged = before.default.fingerprint !== m.default.fingerprint
    this.deps.log.info({ trigger, default: m.default.serial, sni: m.sni.map((e) => ({ names: e.names, serial: e.pair.serial })) }, 'TLS certificates changed: new handshakes get them, open connections keep theirs')
    if (defaultChanged) this.deps.log.warn({ serial: before.default.serial }, 'listen.http.tls default certificate changed: its DNS names get the new one; handshakes without SNI or for other names keep the start-up certificate until a restart (uWebSockets.js 20.30 cannot replace it)')
  }

  /** A watch tick or a reload with no TLS change of its own: applies changed, valid files; refuses bad ones. */
  check (trigger: string): void {
    const m = readTlsMaterial(this.cfg)
    if ('problems' in m) {
      const fp = m.problems.join('\n')
      if (trigger === 'watch' && fp === this.refusedFingerprint) return
      this.refusedFingerprint = fp
      this.counts.refused.inc()
      this.deps.log.error({ trigger, errors: m.problems, code: 'FERRY_ERR_TLS_CERT' }, 'TLS certificate files refused; the running certificates stay')
      return
    }
    if (m.fingerprint === this.material.fingerprint) { if (trigger !== 'watch') this.counts.unchanged.inc(); return }
    this.use(this.cfg, m, trigger)
  }

  /** Problems a reload's TLS files have, counted and logged as a refusal (the reload is refused by its caller). */
  refused (problems: string[]): void {
    this.counts.refused.inc()
    this.deps.log.error({ trigger: 'reload', errors: problems, code: 'FERRY_ERR_TLS_CERT' }, 'TLS certificate files refused; the running certificates stay')
  }

  close (): void {
    clearInterval(this.watch)
  }
}

/**
 * `listen.http.redirectHttpPort`: a plain-HTTP uWS app that answers every request with 308 to the same
 * URL over https on the TLS port. Nothing is read beyond the request head.
 */
export function redirectApp (uws: Uws, httpsPort: () => number): TemplatedApp {
  const app = uws.App()
  app.any('/*', (res: HttpResponse, req) => {
    const host = req.getHeader('host').replace(/:\d+$/, '')
    const q = req.getQuery()
    const url = req.getUrl()
    const port = httpsPort()
    const ok = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$/.test(host)
    res.cork(() => {
      if (!ok) { res.writeStatus('400 Bad Request').writeHeader('connection', 'close').end('bad Host header\n', true); return }
      res.writeStatus('308 Permanent Redirect')
        .writeHeader('location', `https://${host}${port === 443 ? '' : `:${port}`}${url}${q === undefined || q === '' ? '' : `?${q}`}`)
        .writeHeader('connection', 'close')
        .end('', true)
    })
  })
  return app
}
