import type { Logger } from 'pino'
import { FerryError } from '../errors.js'
import { readTlsMaterial, type CertFilesConfig, type TlsMaterial } from './tls.js'

/** The `result` label of the certificate-check counters. */
export type CertCheckResult = 'applied' | 'unchanged' | 'refused'

export type CertCheckCounts = Readonly<Record<CertCheckResult, { inc: () => void }>>

/** A server-side tls block: its files and how often they are looked at. */
export type WatchedTls = CertFilesConfig & { readonly watchIntervalMs: number }

/** What the owner of a TLS listener does with checked files. */
export interface CertWatchHooks<C, B> {
  /** Makes what the listener serves from checked files; throws an Error whose message names the field when it cannot (a cipher list OpenSSL refuses). */
  build: (m: TlsMaterial, cfg: C) => B
  /** Serves `built` to new handshakes from now on (open connections keep theirs); `before` is the material it replaces. */
  install: (built: B, m: TlsMaterial, before: TlsMaterial, trigger: string) => void
  /** What of `cfg`, besides the files, makes a new build worth it (a TCP listener's ciphers): compared as text. */
  key?: (cfg: C) => string
}

/**
 * The certificate files of one TLS listener (listen.http.tls, listen.tcp[i].tls) and their rotation:
 * read and checked at start (a problem stops the start), again on every reload (a problem refuses the
 * reload) and every `watchIntervalMs` (a problem is logged once per distinct problem); a valid change is
 * built and installed, the running one stays otherwise. Every check after the start is counted by its
 * result, watch ticks included: `unchanged` growing every interval is how an operator sees the watch is
 * alive, and `refused` growing while bad files stay keeps an alert on it firing until they are put right.
 */
export class CertWatch<C extends WatchedTls, B> {
  private material: TlsMaterial
  private cfg: C
  private key: string
  /** Problems last refused by the watch: not logged again every tick. */
  private refusedFingerprint = ''
  private readonly timer: NodeJS.Timeout
  /** What `build` made at start, for the owner to serve first. */
  readonly initial: B

  constructor (
    readonly field: string,
    cfg: C,
    private readonly log: Logger,
    private readonly counts: CertCheckCounts,
    private readonly hooks: CertWatchHooks<C, B>,
  ) {
    const r = this.read(cfg)
    if ('problems' in r) throw new FerryError('FERRY_ERR_TLS_CERT', `${field}: ${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}\n  ${r.problems.join('\n  ')}`)
    this.cfg = cfg
    this.material = r.m
    this.key = hooks.key?.(cfg) ?? ''
    this.initial = r.built
    this.timer = setInterval(() => { this.safely('watch', () => { this.check('watch') }) }, cfg.watchIntervalMs)
    this.timer.unref()
    log.info({ tls: field, default: r.m.default.serial, sni: r.m.sni.map((e) => ({ names: e.names, serial: e.pair.serial })) }, 'TLS certificates loaded')
  }

  get current (): TlsMaterial {
    return this.material
  }

  private read (cfg: C): { m: TlsMaterial, built: B } | { problems: string[] } {
    const m = readTlsMaterial(cfg, this.field)
    if ('problems' in m) return m
    try {
      return { m, built: this.hooks.build(m, cfg) }
    } catch (err) {
      return { problems: [(err as Error).message] }
    }
  }

  /** A timer or a committed reload must not throw (a failed temp-file write, say): logged and counted instead. */
  private safely (trigger: string, fn: () => void): void {
    try {
      fn()
    } catch (err) {
      this.counts.refused.inc()
      this.log.error({ tls: this.field, trigger, err, code: 'FERRY_ERR_TLS_CERT' }, 'applying TLS certificate files failed')
    }
  }

  /**
   * Reads the files of `cfg` (a reload's config, or the running one) and checks them without applying:
   * the problems, or a function that applies them (a reload applies once nothing else refused it).
   */
  prepare (cfg: C): { problems: string[] } | { apply: () => void } {
    const r = this.read(cfg)
    if ('problems' in r) return r
    return { apply: () => { this.safely('reload', () => { this.use(cfg, r.m, r.built, 'reload') }) } }
  }

  private use (cfg: C, m: TlsMaterial, built: B, trigger: string): void {
    this.cfg = cfg
    const key = this.hooks.key?.(cfg) ?? ''
    if (m.fingerprint === this.material.fingerprint && key === this.key) { this.counts.unchanged.inc(); return }
    const before = this.material
    this.material = m
    this.key = key
    this.hooks.install(built, m, before, trigger)
    this.refusedFingerprint = ''
    this.counts.applied.inc()
    this.log.info({ tls: this.field, trigger, default: m.default.serial, sni: m.sni.map((e) => ({ names: e.names, serial: e.pair.serial })) }, 'TLS certificates changed: new handshakes get them, open connections keep theirs')
  }

  /** A watch tick: applies changed, valid files; refuses bad ones. */
  check (trigger: string): void {
    const r = this.read(this.cfg)
    if ('problems' in r) {
      const fp = r.problems.join('\n')
      this.counts.refused.inc()
      if (trigger === 'watch' && fp === this.refusedFingerprint) return
      this.refusedFingerprint = fp
      this.log.error({ tls: this.field, trigger, errors: r.problems, code: 'FERRY_ERR_TLS_CERT' }, 'TLS certificate files refused; the running certificates stay')
      return
    }
    // Files that did not change are counted as `unchanged` there.
    this.use(this.cfg, r.m, r.built, trigger)
  }

  /** Problems a reload's TLS files have, counted and logged as a refusal (the reload is refused by its caller). */
  refused (problems: string[]): void {
    this.counts.refused.inc()
    this.log.error({ tls: this.field, trigger: 'reload', errors: problems, code: 'FERRY_ERR_TLS_CERT' }, 'TLS certificate files refused; the running certificates stay')
  }

  close (): void {
    clearInterval(this.timer)
  }
}
