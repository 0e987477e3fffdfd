import cluster from 'node:cluster'
import { createServer, connect, type Server, type Socket } from 'node:net'
import type { TemplatedApp } from 'uWebSockets.js'
import type { Logger } from 'pino'
import { FerryError } from '../errors.js'
import { normalizeIp, type Networks } from '../net/address.js'
import { ProxyHeaderReader } from '../net/proxy-protocol.js'
import { listenLoopback, type ListenSocket } from './listen.js'
import type { ProxyRefusals } from './proxy-gate.js'
import type { Uws } from './uws.js'

/**
 * listen.http.acceptProxyProtocol `v1+v2`: Ferry reads the PROXY header itself, in front of uWebSockets.js.
 *
 * uWebSockets.js 20.30 reads only v2 headers, with at most 36 bytes of addresses and TLVs, and on a TLS
 * front only inside the TLS stream (where no load balancer puts it); it gives JavaScript no hook at
 * accept and none to hand it a socket. So the public address is a node:net listener: each connection's
 * peer is checked against http.trustedProxies before anything is read, then its header is read (v1 or
 * v2, src/net/proxy-protocol.ts), then a connection is opened to uWS on a loopback port **from a
 * loopback address of its own** (127.a.b.c, Linux routes all of 127/8 to lo) and the bytes are piped
 * both ways, TLS records untouched. uWS's getRemoteAddress() gives that 127.a.b.c back and `clientOf`
 * maps it to the header's source: that carries the client address through TLS as well as plain HTTP.
 * A connection to the loopback port from any other address (another local process) maps to nothing
 * and is refused.
 *
 * The price is a second socket pair and a copy through JavaScript for every byte: measured in
 * docs/edge.md. uWS's own timeouts (HTTP idle, WebSocket idle) still close idle connections: this
 * pipe follows whichever side closes.
 */

/** listening: accepts; paused: resets each new connection (descriptors ran low); closed: for good. */
export type ReaderState = 'created' | 'listening' | 'paused' | 'closed'
/** header: reading the PROXY header; piping: bytes flow to and from uWS; closed: both sockets gone. */
export type ReaderConnState = 'header' | 'piping' | 'closed'

/** Loopback sources 127.a.b.c with a, b, c in 1-254: 127.0.0.1, what local processes use, is never one. */
const LOOPBACK_SPACE = 254 * 254 * 254

function loopbackOf (id: number): string {
  const i = id - 1
  return `127.${1 + Math.floor(i / 64516)}.${1 + (Math.floor(i / 254) % 254)}.${1 + (i % 254)}`
}

export interface ReaderDeps {
  readonly uws: Uws
  readonly app: TemplatedApp
  readonly log: Logger
  readonly refusals: ProxyRefusals
}

export class ProxyReader {
  private readonly server: Server
  private internal: ListenSocket | undefined
  private state: ReaderState = 'created'
  private readonly conns = new Set<ProxiedConnection>()
  /** Loopback source of a connection to uWS → the client address it carries. */
  private readonly clients = new Map<string, string>()
  /** Sources of closed connections, freed one sweep later: uWS may still be reading what was sent on them. */
  private retiring: string[] = []
  private retired: string[] = []
  private lastId = 0
  private sweepTimer: NodeJS.Timeout | undefined
  private publicPort = 0

  constructor (private readonly deps: ReaderDeps, private trusted: Networks, private headerTimeoutMs: number) {
    // Paused: nothing is read from a peer before it is known to be trusted. Half-open both ways, so a
    // client's FIN reaches uWS while uWS's answer still flows back.
    this.server = createServer({ pauseOnConnect: true, allowHalfOpen: true, noDelay: true }, (s) => { this.onConnection(s) })
  }

  get port (): number {
    return this.publicPort
  }

  /** The loopback port uWS listens on, once listening. */
  get internalPort (): number | undefined {
    return this.internal?.port
  }

  /** A reload: http.trustedProxies and proxyHeaderTimeoutMs apply to connections accepted from now on. */
  configure (trusted: Networks, headerTimeoutMs: number): void {
    this.trusted = trusted
    if (headerTimeoutMs === this.headerTimeoutMs) return
    this.headerTimeoutMs = headerTimeoutMs
    // The sweep runs at a quarter of the timeout.
    if (this.state === 'listening' || this.state === 'paused') this.armSweep()
  }

  /** The client a connection to uWS from `loopback` carries; undefined when no reader connection has that source. */
  clientOf (loopback: string): string | undefined {
    return this.clients.get(loopback)
  }

  /** Binds uWS on a free loopback port of its own, then the public address (exclusively, like every Ferry listener, but in a pod's worker). */
  async listen (host: string, port: number): Promise<number> {
    this.internal = listenLoopback(this.deps.uws, this.deps.app, 'listen.http (PROXY reader, internal)')
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (err: NodeJS.ErrnoException): void => {
          reject(new FerryError('FERRY_ERR_LISTEN', `listen.http: cannot listen on ${host}:${port}: ${err.code ?? err.message} (address in use, not available on this host, or not permitted)`, { cause: err }))
        }
        this.server.once('error', onError)
        // In a worker of a pod (src/planes/) the public socket is the control plane's, shared by every worker
        // (the TCP listeners' way); each worker's reader feeds its own uWS.
        this.server.listen({ host, port, exclusive: !cluster.isWorker, backlog: 511 }, () => {
          this.server.removeListener('error', onError)
          resolve()
        })
      })
    } catch (err) {
      this.internal.close()
      throw err
    }
    // After binding, server errors are accept failures (EMFILE): logged, never thrown.
    this.server.on('error', (err: Error) => { this.deps.log.warn({ err }, 'PROXY reader: accept failed') })
    this.publicPort = (this.server.address() as { port: number }).port
    this.state = 'listening'
    this.armSweep()
    return this.publicPort
  }

  private armSweep (): void {
    clearInterval(this.sweepTimer)
    this.sweepTimer = setInterval(() => { this.sweep() }, Math.min(1000, Math.max(50, Math.floor(this.headerTimeoutMs / 4))))
    this.sweepTimer.unref()
  }

  private sweep (): void {
    const now = Date.now()
    for (const c of this.conns) c.sweep(now, this.headerTimeoutMs)
    for (const a of this.retired) this.clients.delete(a)
    this.retired = this.retiring
    this.retiring = []
  }

  private onConnection (s: Socket): void {
    s.on('error', noop)
    if (this.state !== 'listening') {
      // Paused (descriptors low): a reset tells the client at once and frees the descriptor.
      if (this.state === 'paused') s.resetAndDestroy()
      else s.destroy()
      return
    }
    const peer = normalizeIp(s.remoteAddress ?? '')
    if (!this.trusted.contains(peer)) {
      s.destroy()
      this.deps.refusals.refused('FERRY_ERR_TCP_PROXY_UNTRUSTED', peer, `peer ${peer} is not in http.trustedProxies (listen.http.acceptProxyProtocol is v1+v2)`)
      return
    }
    const c = new ProxiedConnection(this, s, peer)
    this.conns.add(c)
    c.start()
  }

  /** A free loopback source for a connection carrying `client`. */
  take (client: string): string | undefined {
    for (let n = 0; n < LOOPBACK_SPACE; n++) {
      this.lastId = this.lastId % LOOPBACK_SPACE + 1
      const a = loopbackOf(this.lastId)
      if (!this.clients.has(a)) { this.clients.set(a, client); return a }
    }
    return undefined
  }

  /** Called once per connection when it closed. */
  closed (c: ProxiedConnection, source: string | undefined): void {
    this.conns.delete(c)
    if (source !== undefined) this.retiring.push(source)
  }

  refused (code: 'FERRY_ERR_TCP_PROXY_HEADER' | 'FERRY_ERR_TCP_PROXY_TIMEOUT', peer: string, detail: string): void {
    this.deps.refusals.refused(code, peer, detail)
  }

  /** A connection that ended before its first byte (a TCP health check). */
  probe (): void {
    this.deps.refusals.probe()
  }

  pause (): void {
    if (this.state === 'listening') this.state = 'paused'
  }

  resume (): void {
    if (this.state === 'paused') this.state = 'listening'
  }

  /** Stops accepting for good; connections under way go on. */
  stopAccepting (): void {
    if (this.state === 'closed') return
    const bound = this.state !== 'created'
    this.state = 'closed'
    if (bound) this.server.close()
    this.internal?.close()
  }

  /** The end of a drain (uWS closed its sockets): connections still reading their header go too. */
  closeAll (): void {
    this.stopAccepting()
    for (const c of [...this.conns]) c.close()
    clearInterval(this.sweepTimer)
  }
}

/** How long a client may take to read what uWS sent before uWS closed its side; then it is cut. */
const FLUSH_MS = 5000

/** One client connection through the reader: its header, then a pipe to uWS. Owns both sockets. */
class ProxiedConnection {
  private state: ReaderConnState = 'header'
  private readonly acceptedAt = Date.now()
  private readonly header = new ProxyHeaderReader()
  private upstream: Socket | undefined
  private source: string | undefined
  /** When uWS closed its side while the client still had bytes to read. */
  private flushingSince = 0

  constructor (private readonly reader: ProxyReader, private readonly client: Socket, private readonly peer: string) {}

  start (): void {
    this.client.on('data', this.onHeaderData)
    this.client.on('end', this.onHeaderEnd)
    this.client.on('close', this.onClientClose)
    this.client.resume()
  }

  private readonly onHeaderData = (chunk: Buffer): void => {
    if (this.state !== 'header') return
    const r = this.header.push(chunk)
    if (r.kind === 'incomplete') return
    if (r.kind === 'invalid') { this.refuse('FERRY_ERR_TCP_PROXY_HEADER', r.reason); return }
    // Stop the flow before taking the listeners off, or the next chunk would go to nobody.
    this.client.pause()
    this.client.removeListener('data', this.onHeaderData)
    this.client.removeListener('end', this.onHeaderEnd)
    // LOCAL, UNKNOWN, AF_UNSPEC and AF_UNIX headers keep the real peer (the spec says so).
    const h = r.header
    this.source = this.reader.take(h.command === 'proxy' && h.family !== 'unknown' ? h.source! : this.peer)
    if (this.source === undefined) { this.close(); return }
    const up = connect({ host: '127.0.0.1', port: this.reader.internalPort!, localAddress: this.source, noDelay: true, allowHalfOpen: true })
    this.upstream = up
    this.state = 'piping'
    up.on('error', noop)
    up.on('close', this.onUpstreamClose)
    if (r.rest !== undefined) up.write(r.rest)
    this.client.pipe(up)
    up.pipe(this.client)
  }

  private readonly onHeaderEnd = (): void => {
    // A trusted peer that connects and leaves without a byte is a TCP health check, not bad input.
    if (this.header.started) this.refuse('FERRY_ERR_TCP_PROXY_HEADER', 'connection ended inside the PROXY header')
    else { this.reader.probe(); this.close() }
  }

  private readonly onClientClose = (): void => {
    // The client is gone: nothing uWS still sends could reach it.
    this.upstream?.destroy()
    this.finish()
  }

  /** uWS closed (its idle timeout, a Connection: close, the end of a drain): what it sent still goes to the client, within FLUSH_MS. */
  private readonly onUpstreamClose = (): void => {
    if (this.client.destroyed) { this.finish(); return }
    this.flushingSince = Date.now()
    this.client.destroySoon()
  }

  private refuse (code: 'FERRY_ERR_TCP_PROXY_HEADER' | 'FERRY_ERR_TCP_PROXY_TIMEOUT', detail: string): void {
    if (this.state !== 'header') return
    this.reader.refused(code, this.peer, detail)
    this.close()
  }

  sweep (now: number, headerTimeoutMs: number): void {
    if (this.state === 'header' && now - this.acceptedAt >= headerTimeoutMs) this.refuse('FERRY_ERR_TCP_PROXY_TIMEOUT', `no complete PROXY header within ${headerTimeoutMs} ms`)
    else if (this.flushingSince > 0 && now - this.flushingSince >= FLUSH_MS) this.close()
  }

  /** Destroys both sockets now. Idempotent. */
  close (): void {
    this.client.destroy()
    this.upstream?.destroy()
    this.finish()
  }

  private finish (): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.header.clear()
    this.reader.closed(this, this.source)
  }
}

function noop (): void {}
