import { constants } from 'node:crypto'
import type { Socket } from 'node:net'
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls'
import type { Logger } from 'pino'
import type { TcpTlsConfig } from '../config/schema.js'
import { CertWatch, type CertCheckCounts } from '../net/cert-watch.js'
import { serverNameMatches, type TlsMaterial } from '../net/tls.js'

/** What new handshakes are served with: built from checked files, replaced whole on a rotation. */
interface Contexts {
  readonly def: SecureContext
  /** Exact names first (a map), then the patterns with a `*` label in config order. */
  readonly exact: ReadonlyMap<string, SecureContext>
  readonly wildcard: ReadonlyArray<{ readonly pattern: string, readonly ctx: SecureContext }>
  readonly alpn: readonly string[] | undefined
}

/**
 * Client-initiated renegotiation is refused by OpenSSL (a no_renegotiation alert): left to its defaults
 * Node 20 accepted one (openssl s_client `R`), a full handshake the client makes us pay for.
 */
const SECURE_OPTIONS = constants.SSL_OP_NO_RENEGOTIATION

function build (field: string, m: TlsMaterial, cfg: TcpTlsConfig): Contexts {
  if (cfg.ciphers !== undefined) {
    try {
      createSecureContext({ ciphers: cfg.ciphers })
    } catch (err) {
      throw new Error(`${field}.ciphers: OpenSSL finds no cipher it knows in ${cfg.ciphers} (${(err as Error).message})`)
    }
  }
  const make = (pair: { cert: Buffer, key: Buffer }, at: string): SecureContext => {
    try {
      return createSecureContext({
        cert: pair.cert,
        key: pair.key,
        ...(m.passphrase !== undefined ? { passphrase: m.passphrase } : {}),
        minVersion: cfg.minVersion,
        ...(cfg.ciphers !== undefined ? { ciphers: cfg.ciphers } : {}),
        secureOptions: SECURE_OPTIONS,
      })
    } catch (err) {
      throw new Error(`${at}: OpenSSL refused the certificate and key (${(err as Error).message})`)
    }
  }
  const exact = new Map<string, SecureContext>()
  const wildcard: Array<{ pattern: string, ctx: SecureContext }> = []
  m.sni.forEach((e, i) => {
    const ctx = make(e.pair, `${field}.sni[${i}]`)
    for (const n of e.names) {
      if (n.includes('*')) wildcard.push({ pattern: n, ctx })
      else if (!exact.has(n)) exact.set(n, ctx)
    }
  })
  return { def: make(m.default, field), exact, wildcard, alpn: cfg.alpn }
}

/** The SNI entry for `name`, or undefined (the default certificate). */
function pick (c: Contexts, name: string): SecureContext | undefined {
  const n = name.toLowerCase()
  return c.exact.get(n) ?? c.wildcard.find((w) => serverNameMatches(w.pattern, n))?.ctx
}

/**
 * The TLS side of one TCP listener (`listen.tcp[i].tls`): owns its secure contexts and the watch of its
 * certificate files. `wrap` starts the server side of a handshake on an accepted socket with the
 * contexts of the moment; a rotation replaces them for later handshakes only.
 */
export class TcpTls {
  private contexts: Contexts
  private readonly certs: CertWatch<TcpTlsConfig, Contexts>

  /** Throws FerryError FERRY_ERR_TLS_CERT naming every bad field. */
  constructor (readonly field: string, cfg: TcpTlsConfig, log: Logger, counts: CertCheckCounts) {
    this.certs = new CertWatch(field, cfg, log, counts, {
      build: (m, next) => build(field, m, next),
      install: (next) => { this.contexts = next },
      key: (next) => JSON.stringify([next.minVersion, next.ciphers ?? '', next.alpn ?? []]),
    })
    this.contexts = this.certs.initial
  }

  /** The server side of a TLS session on `raw` (accepted, not read from, or with unread bytes put back). */
  wrap (raw: Socket): TLSSocket {
    const c = this.contexts
    return new TLSSocket(raw, {
      isServer: true,
      secureContext: c.def,
      ...(c.exact.size > 0 || c.wildcard.length > 0 ? { SNICallback: (name: string, cb: (err: Error | null, ctx?: SecureContext) => void) => { cb(null, pick(c, name)) } } : {}),
      ...(c.alpn !== undefined ? { ALPNProtocols: [...c.alpn] } : {}),
    })
  }

  /** A reload's tls block: its problems (naming fields), or how to apply it once the reload goes ahead. */
  prepare (cfg: TcpTlsConfig): { problems: string[] } | { apply: () => void } {
    const r = this.certs.prepare(cfg)
    if ('problems' in r) this.certs.refused(r.problems)
    return r
  }

  status (): object {
    const m = this.certs.current
    return { default: { serial: m.default.serial, notAfter: m.default.notAfter }, sni: m.sni.map((e) => ({ names: e.names, serial: e.pair.serial, notAfter: e.pair.notAfter })) }
  }

  close (): void {
    this.certs.close()
  }
}
