import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { TcpListenerConfig } from '../config/schema.js'
import type { FerryError, FerryErrorCode } from '../errors.js'
import { hashKey } from '../routing/balancer.js'
import type { ConnectOwner, PendingConnect, TcpBackend, TcpTarget, UpstreamSocketOptions } from '../contracts/tcp.js'
import { normalizeIp } from '../net/address.js'
import { encodeProxyV1, encodeProxyV2, ProxyHeaderReader, type ConnectionAddresses, type ProxyHeader } from '../net/proxy-protocol.js'
import { tlsFailure } from '../net/tls.js'
import type { TcpTls } from './tls.js'
import type { SniRoutes } from './sni-routes.js'
import { readClientHello } from '../net/client-hello.js'
import type { IpSlot } from '../edge/ip-slots.js'

/**
 * - `header`: reading an incoming PROXY header (acceptProxyProtocol); the client is not forwarded yet.
 * - `handshake`: (listener with `tls`) the client's TLS handshake; no backend connection yet.
 * - `hello`: (listener with `sniRoutes`) reading the client's ClientHello to choose the upstream; the
 *   bytes read are kept and forwarded untouched.
 * - `connecting`: waiting for a backend connection; the client socket is paused (the kernel holds its bytes).
 * - `piping`: bytes flow both ways; either direction may already have finished (half-close).
 * - `closing`: a flush close: queued bytes go out, then each socket is destroyed; nothing new is forwarded.
 * - `closed`: both sockets destroyed or closed, every count released.
 */
export type TcpConnState = 'header' | 'handshake' | 'hello' | 'connecting' | 'piping' | 'closing' | 'closed'

const ORDER: Record<TcpConnState, number> = { header: 0, handshake: 1, hello: 1, connecting: 2, piping: 3, closing: 4, closed: 5 }

/** A fatal TLS alert record, unrecognized_name (112), in a TLS 1.2 record (what a TLS 1.3 server sends too). */
const UNRECOGNIZED_NAME_ALERT = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70])

/** One direction of the pipe: `open` until its source sent FIN and we forwarded it with end(). */
type Direction = 'open' | 'ended'

/**
 * Why a connection ended (the `reason` label of ferry_tcp_closed_total): 'ok', 'probe' (the client
 * closed before sending a byte of the PROXY header, ClientHello or TLS handshake the listener waited
 * for: a load balancer's TCP health check, not bad input), or the error code.
 */
export type CloseReason = 'ok' | 'probe' | FerryErrorCode

/** What a connection needs from the listener that accepted it (the listener owns the shared state). */
export interface ListenerContext {
  readonly cfg: TcpListenerConfig
  readonly upstream: TcpTarget
  readonly socketOptions: UpstreamSocketOptions
  /** With `tls`: terminates the client's TLS before anything goes to a backend. */
  readonly tls: TcpTls | undefined
  /** With `sniRoutes`: the upstream a ClientHello's server name goes to. */
  readonly sni: SniRoutes | undefined
  /** A connection was routed by SNI to `target` (counted). */
  routed: (target: TcpTarget) => void
  /** Listener-wide byte totals, flushed into the counters at scrape time. */
  readonly bytes: { toUpstream: number, toClient: number }
  /** The listener's access list refuses `ip`. */
  refusesIp: (ip: string) => boolean
  /** Takes a per-IP slot for `ip` (released once by the connection), or says the IP is at maxConnectionsPerIp. */
  admitIp: (ip: string) => IpSlot<'refused'> | 'refused'
  /** The connection is closed: count it and forget it. Called exactly once per connection. */
  onClosed: (conn: TcpConnection, reason: CloseReason) => void
  /** Bad input or a failure worth a (rate-limited) log line. */
  report: (conn: TcpConnection, code: FerryErrorCode, detail: string) => void
}

function noop (): void {}

/**
 * One accepted client connection and, once connected, its backend connection: a 1:1 pipe with
 * backpressure both ways (a write that returns false pauses the other side until 'drain'), so each
 * direction buffers at most one read chunk plus the socket's high-water mark in this process.
 * Half-close: a FIN from one side is forwarded with end(); the other direction keeps flowing until it
 * ends too. A reset on one side resets the other. This object owns both sockets and is the only code
 * that destroys them; `close()` is idempotent.
 */
export class TcpConnection implements ConnectOwner {
  private state: TcpConnState
  readonly acceptedAt = Date.now()
  /** The client as the backend should see it: the socket peer, or the source of an accepted PROXY header. */
  clientIp: string
  clientPort: number | undefined
  private destIp: string | undefined
  private destPort: number | undefined
  /** Payload bytes forwarded each way (PROXY headers not included). */
  bytesToUpstream = 0
  bytesToClient = 0
  /** Idle sweep bookkeeping: the byte total last seen and when it last moved. */
  private seenBytes = 0
  private lastActive = this.acceptedAt
  private up: Direction = 'open'
  private down: Direction = 'open'
  private upstream: Socket | undefined
  private ep: TcpBackend | undefined
  private attempt: PendingConnect | undefined
  /** Bytes of the incoming PROXY header so far (bounded: the decoder rejects anything longer than a header). */
  private readonly header = new ProxyHeaderReader()
  /** Client bytes that arrived after the PROXY header, written to the backend first. */
  private pending: Buffer | undefined
  /** The IP holding a per-IP slot, released on close. */
  private ipSlot: IpSlot<'refused'> | undefined
  private socketsOpen: number
  /** The reason given to a flush close, reported once both sockets have closed. */
  private closeReason: CloseReason = 'ok'

  /** When the TLS handshake started (state `handshake`), for handshakeTimeoutMs. */
  private handshakeAt = this.acceptedAt
  /** The upstream this connection goes to: the listener's, or the one its SNI name chose. */
  private target: TcpTarget | undefined
  /** The client's socket: the accepted one, or the TLS socket over it once a handshake started (then the only one used). */
  private client: Socket
  /** The accepted socket (its bytesRead counts what TLS read from it too). */
  private readonly accepted: Socket
  /** The accepted socket's bytesRead where the TLS handshake starts (bytes put back for TLS not included). */
  private handshakeFrom = 0

  constructor (private readonly ctx: ListenerContext, client: Socket) {
    this.client = client
    this.accepted = client
    this.clientIp = normalizeIp(client.remoteAddress ?? '')
    this.clientPort = client.remotePort
    this.destIp = client.localAddress === undefined ? undefined : normalizeIp(client.localAddress)
    this.destPort = client.localPort
    this.socketsOpen = 1
    client.on('error', this.onClientError)
    client.on('close', this.onClientClose)
    client.on('end', this.onClientEnd)
    this.state = ctx.cfg.acceptProxyProtocol ? 'header' : ctx.tls !== undefined ? 'handshake' : ctx.sni !== undefined ? 'hello' : 'connecting'
  }

  get current (): TcpConnState {
    return this.state
  }

  /** The one place the state moves; every move is forward along header → connecting → piping → closing → closed. */
  private to (next: TcpConnState): void {
    if (ORDER[next] <= ORDER[this.state]) return
    this.state = next
  }

  /**
   * Called by the listener right after construction. The socket was accepted paused: nothing is read
   * before we know the peer may send a PROXY header, or before a backend is connected.
   */
  start (trustedPeer: boolean): void {
    if (this.state !== 'header') { this.admit(); return }
    if (!trustedPeer) {
      this.close('abort', 'FERRY_ERR_TCP_PROXY_UNTRUSTED', `peer ${this.clientIp} is not in trustedProxies`)
      return
    }
    this.client.on('data', this.onHeaderData)
    this.client.resume()
  }

  private admit (): void {
    if (this.ctx.refusesIp(this.clientIp)) {
      this.close('abort', 'FERRY_ERR_ACCESS_DENIED', `${this.clientIp} is refused by the listener's access list`)
      return
    }
    const slot = this.ctx.admitIp(this.clientIp)
    if (slot === 'refused') { this.ipLimit(); return }
    this.ipSlot = slot
    if (slot.held === undefined) { this.proceed(); return }
    // A worker of a pod borrows the slot from its control plane; the socket stays paused meanwhile.
    slot.held.then((refusal) => {
      if (this.state === 'closing' || this.state === 'closed') return
      if (refusal === undefined) this.proceed()
      else this.ipLimit()
    }, (err: unknown) => { this.close('abort', 'FERRY_ERR_INTERNAL', (err as Error).message) })
  }

  private ipLimit (): void {
    this.close('abort', 'FERRY_ERR_TCP_IP_LIMIT', `${this.clientIp} already holds maxConnectionsPerIp ${this.ctx.cfg.maxConnectionsPerIp} connections`)
  }

  /** Admitted: TLS, the SNI peek or the backend connection. */
  private proceed (): void {
    if (this.ctx.tls !== undefined) { this.handshake(this.ctx.tls); return }
    if (this.ctx.sni !== undefined) { this.readHello(); return }
    this.connect(this.ctx.upstream)
  }

  private connect (target: TcpTarget): void {
    this.to('connecting')
    this.target = target
    const key = target.cfg.balance === 'hash' ? hashKey(this.clientIp) : undefined
    // The PROXY header is the first thing on the backend's TCP connection (before a TLS handshake): the upstream writes it.
    const mode = this.ctx.cfg.proxyProtocol
    const preface = mode === 'off' ? undefined : mode === 'v1' ? encodeProxyV1(this.addresses()) : encodeProxyV2(this.addresses())
    const attempt = target.connect(this, key, this.ctx.socketOptions, preface)
    // connect() may already have reported a failure (and closed us) before returning
    if (this.state === 'connecting') this.attempt = attempt
  }

  // ---- TLS handshake (state 'handshake') ----

  /**
   * From here on the client is the TLS socket: the accepted socket's handle now belongs to it (its events
   * are its own; an error of the raw socket shows there too). Bytes read past a PROXY header are the
   * start of the ClientHello: put back for TLS to read.
   */
  private handshake (tls: TcpTls): void {
    this.to('handshake')
    this.handshakeAt = Date.now()
    const raw = this.client
    raw.removeListener('error', this.onClientError)
    raw.removeListener('close', this.onClientClose)
    raw.removeListener('end', this.onClientEnd)
    raw.on('error', noop)
    this.handshakeFrom = raw.bytesRead - (this.pending?.length ?? 0)
    if (this.pending !== undefined) { raw.unshift(this.pending); this.pending = undefined }
    let s: Socket
    try {
      s = tls.wrap(raw)
    } catch (err) {
      this.client.on('close', this.onClientClose)
      this.close('abort', 'FERRY_ERR_TCP_TLS_HANDSHAKE', `TLS could not start: ${(err as Error).message}`)
      return
    }
    this.client = s
    s.on('error', this.onClientError)
    s.on('close', this.onClientClose)
    s.on('end', this.onClientEnd)
    s.on('secure', this.onSecure)
  }

  private readonly onSecure = (): void => {
    if (this.state === 'handshake') {
      // Nothing is read before the backend is connected (the kernel and TLS buffers hold the client's bytes).
      this.client.pause()
      this.connect(this.ctx.upstream)
      return
    }
    // TLS 1.3 has no renegotiation, but OpenSSL may report the handshake done again after its post-handshake
    // messages (session tickets): only under TLS 1.2 is another 'secure' a second handshake, which OpenSSL
    // refused (SSL_OP_NO_RENEGOTIATION) with a no_renegotiation alert.
    if ((this.client as TLSSocket).getProtocol() !== 'TLSv1.2') return
    // A flush close, so that the alert OpenSSL queued goes out before the close_notify.
    this.close('flush', 'FERRY_ERR_TCP_TLS_RENEGOTIATION', 'the client asked to renegotiate the TLS session (refused)')
  }

  // ---- ClientHello (state 'hello') ----

  private readHello (): void {
    this.to('hello')
    this.handshakeAt = Date.now()
    const pending = this.pending
    this.pending = undefined
    this.client.on('data', this.onHelloData)
    // Bytes read past a PROXY header may hold the whole ClientHello already.
    if (pending !== undefined) this.onHelloData(pending)
    if (this.state === 'hello') this.client.resume()
  }

  /** Bounded: readClientHello refuses more than 16 KiB without a complete ClientHello. */
  private readonly onHelloData = (chunk: Buffer): void => {
    if (this.state !== 'hello') return
    const buf = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    const res = readClientHello(buf)
    if (res.kind === 'incomplete') { this.pending = buf; return }
    this.client.pause()
    this.client.removeListener('data', this.onHelloData)
    this.pending = buf
    if (res.kind === 'invalid') {
      this.close('abort', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO', `no readable ClientHello: ${res.reason}`)
      return
    }
    const sni = this.ctx.sni!
    const target = sni.pick(res.serverName) ?? (sni.unmatched === 'upstream' ? this.ctx.upstream : undefined)
    if (target === undefined) {
      this.refuseName(res.serverName)
      return
    }
    this.ctx.routed(target)
    this.connect(target)
  }

  /** sniUnmatched refuse: a fatal unrecognized_name alert, then FIN once it is written (the close is counted then). */
  private refuseName (name: string | undefined): void {
    this.ctx.report(this, 'FERRY_ERR_TCP_SNI_UNKNOWN', name === undefined ? 'the ClientHello names no server (no SNI)' : `no sniRoutes entry lists ${name}`)
    this.to('closing')
    this.closeReason = 'FERRY_ERR_TCP_SNI_UNKNOWN'
    this.pending = undefined
    this.client.write(UNRECOGNIZED_NAME_ALERT)
    this.client.destroySoon()
  }

  // ---- PROXY header (state 'header') ----

  private readonly onHeaderData = (chunk: Buffer): void => {
    if (this.state !== 'header') return
    const res = this.header.push(chunk)
    if (res.kind === 'incomplete') return
    if (res.kind === 'invalid') {
      this.close('abort', 'FERRY_ERR_TCP_PROXY_HEADER', res.reason)
      return
    }
    // Stop the flow before dropping the listener, or the next chunk would be emitted to nobody.
    this.client.pause()
    this.client.removeListener('data', this.onHeaderData)
    this.pending = res.rest
    this.useHeader(res.header)
    this.admit()
  }

  private useHeader (h: ProxyHeader): void {
    // LOCAL and unknown families keep the real connection addresses (the spec says so).
    if (h.command !== 'proxy' || h.family === 'unknown') return
    this.clientIp = h.source!
    this.clientPort = h.sourcePort
    this.destIp = h.destination
    this.destPort = h.destinationPort
  }

  // ---- connecting ----

  onUpstreamConnected (socket: Socket, ep: TcpBackend): void {
    this.attempt = undefined
    if (this.state !== 'connecting') {
      // cannot happen (close() cancels the attempt), but never leak a socket
      socket.on('error', noop)
      socket.destroy()
      this.target!.release(ep)
      return
    }
    this.to('piping')
    this.upstream = socket
    this.ep = ep
    this.socketsOpen++
    socket.on('error', this.onUpstreamError)
    socket.on('close', this.onUpstreamClose)
    socket.on('end', this.onUpstreamEnd)
    socket.on('data', this.onUpstreamData)
    socket.on('drain', this.onUpstreamDrain)
    this.client.on('drain', this.onClientDrain)
    const pending = this.pending
    this.pending = undefined
    if (pending !== undefined) {
      this.bytesToUpstream += pending.length
      this.ctx.bytes.toUpstream += pending.length
      socket.write(pending)
    }
    if (this.up === 'ended') {
      socket.end()
      return
    }
    this.client.on('data', this.onClientData)
    this.client.resume()
  }

  onUpstreamFailed (err: FerryError): void {
    this.attempt = undefined
    this.close('abort', err.code, err.message)
  }

  private addresses (): ConnectionAddresses {
    return { source: this.clientIp === '' ? undefined : this.clientIp, sourcePort: this.clientPort, destination: this.destIp, destinationPort: this.destPort }
  }

  // ---- piping: the per-chunk path (no allocation; one branch on state) ----

  private readonly onClientData = (chunk: Buffer): void => {
    if (this.state !== 'piping') return
    const n = chunk.length
    this.bytesToUpstream += n
    this.ctx.bytes.toUpstream += n
    if (!this.upstream!.write(chunk)) this.client.pause()
  }

  private readonly onUpstreamData = (chunk: Buffer): void => {
    if (this.state !== 'piping') return
    const n = chunk.length
    this.bytesToClient += n
    this.ctx.bytes.toClient += n
    if (!this.client.write(chunk)) this.upstream!.pause()
  }

  private readonly onUpstreamDrain = (): void => {
    if (this.state === 'piping' && this.up === 'open') this.client.resume()
  }

  private readonly onClientDrain = (): void => {
    if (this.state === 'piping' && this.down === 'open') this.upstream!.resume()
  }

  private readonly onClientEnd = (): void => {
    // A client that leaves without a byte of what we wait for is a TCP health check, not bad input.
    if (this.state === 'header') {
      if (this.header.started) this.close('abort', 'FERRY_ERR_TCP_PROXY_HEADER', 'connection ended inside the PROXY header')
      else this.close('abort', 'probe')
      return
    }
    if (this.state === 'handshake') {
      if (this.accepted.bytesRead > this.handshakeFrom) this.close('abort', 'FERRY_ERR_TCP_TLS_HANDSHAKE', 'connection ended during the TLS handshake')
      else this.close('abort', 'probe')
      return
    }
    if (this.state === 'hello') {
      if (this.pending !== undefined) this.close('abort', 'FERRY_ERR_TCP_SNI_CLIENT_HELLO', 'connection ended inside the ClientHello')
      else this.close('abort', 'probe')
      return
    }
    if (this.state !== 'piping' && this.state !== 'connecting') return
    this.up = 'ended'
    // while connecting, the FIN is forwarded once the backend is connected (after any pending bytes)
    if (this.state === 'piping') this.upstream!.end()
  }

  private readonly onUpstreamEnd = (): void => {
    if (this.state !== 'piping') return
    this.down = 'ended'
    this.client.end()
  }

  // ---- errors and close ----

  private readonly onClientError = (err: NodeJS.ErrnoException): void => {
    // OpenSSL's reasons (ERR_SSL_WRONG_VERSION_NUMBER, ERR_SSL_HTTP_REQUEST, ERR_SSL_UNSUPPORTED_PROTOCOL, ...) name the bad input.
    if (this.state === 'handshake' && tlsFailure(err) !== undefined) {
      this.close('abort', 'FERRY_ERR_TCP_TLS_HANDSHAKE', `TLS handshake failed: ${err.code ?? err.message}`)
      return
    }
    this.close('abort', 'FERRY_ERR_TCP_CLIENT_RESET', `client socket: ${err.code ?? err.message}`)
  }

  private readonly onUpstreamError = (err: NodeJS.ErrnoException): void => {
    // A TLS failure after the handshake (a client certificate refused under TLS 1.3) is the upstream's to count and log.
    const tls = this.ep !== undefined ? this.target!.socketError(this.ep, err) : undefined
    if (tls !== undefined) this.close('abort', tls.code, tls.message)
    else this.close('abort', 'FERRY_ERR_UPSTREAM_RESET', `backend ${this.ep?.address ?? ''} socket: ${err.code ?? err.message}`)
  }

  private readonly onClientClose = (): void => {
    this.socketClosed('FERRY_ERR_TCP_CLIENT_RESET', 'client closed the connection')
  }

  private readonly onUpstreamClose = (): void => {
    this.socketClosed('FERRY_ERR_UPSTREAM_RESET', `backend ${this.ep?.address ?? ''} closed the connection`)
  }

  /**
   * With allowHalfOpen a socket closes by itself only after it both received and sent FIN. One that
   * closes while a direction is still open was destroyed by an error or a reset: end the other side too.
   */
  private socketClosed (code: FerryErrorCode, detail: string): void {
    if (this.state === 'closed') return
    this.socketsOpen--
    if (this.state === 'closing') {
      if (this.socketsOpen === 0) this.finish('ok')
      return
    }
    if (this.state === 'piping' && this.up === 'ended' && this.down === 'ended') {
      if (this.socketsOpen === 0) this.finish('ok')
      return
    }
    this.close('abort', code, detail)
  }

  /**
   * Coarse idle check, called by the listener's shared sweep timer: no per-chunk timer work, so an idle
   * connection is found between `idleTimeoutMs` and `idleTimeoutMs` + one sweep interval.
   */
  sweep (now: number): void {
    if (this.state === 'header') {
      if (now - this.acceptedAt >= this.ctx.cfg.proxyHeaderTimeoutMs) {
        this.close('abort', 'FERRY_ERR_TCP_PROXY_TIMEOUT', `no complete PROXY header within ${this.ctx.cfg.proxyHeaderTimeoutMs} ms`)
      }
      return
    }
    if (this.state === 'handshake') {
      const limit = this.ctx.cfg.tls?.handshakeTimeoutMs ?? 0
      if (now - this.handshakeAt >= limit) this.close('abort', 'FERRY_ERR_TCP_TLS_TIMEOUT', `no complete TLS handshake within ${limit} ms`)
      return
    }
    if (this.state === 'hello') {
      const limit = this.ctx.cfg.clientHelloTimeoutMs
      if (now - this.handshakeAt >= limit) this.close('abort', 'FERRY_ERR_TCP_SNI_TIMEOUT', `no complete ClientHello within ${limit} ms`)
      return
    }
    if (this.state !== 'piping' && this.state !== 'closing') return
    const moved = this.bytesToUpstream + this.bytesToClient
    if (moved !== this.seenBytes) {
      this.seenBytes = moved
      this.lastActive = now
      return
    }
    const idle = this.ctx.cfg.idleTimeoutMs
    if (idle > 0 && now - this.lastActive >= idle) this.close('abort', 'FERRY_ERR_TCP_IDLE', `no bytes moved for ${now - this.lastActive} ms`)
  }

  /**
   * 'flush': stop forwarding, let bytes already queued on each socket go out, send FIN, then destroy it
   * (Socket.destroySoon). 'abort': destroy both now; when the cause is a reset by one peer, the other
   * peer gets a reset too (RST, not FIN), so neither mistakes a broken stream for a complete one; idle
   * and shutdown aborts reset both.
   */
  close (kind: 'flush' | 'abort', reason: CloseReason, detail = ''): void {
    if (this.state === 'closed') return
    if (reason !== 'ok' && reason !== 'probe') this.ctx.report(this, reason, detail)
    if (kind === 'flush' && (this.state === 'piping' || this.state === 'closing')) {
      if (this.state === 'closing') return
      this.to('closing')
      this.closeReason = reason
      this.client.destroySoon()
      this.upstream?.destroySoon()
      return
    }
    this.attempt?.cancel()
    this.attempt = undefined
    // Stalled and force-closed streams are reset both ways: a plain close would leave the kernel
    // holding their unsent bytes (an orphan socket) for a peer that is not reading.
    const resetBoth = reason === 'FERRY_ERR_TCP_IDLE' || reason === 'FERRY_ERR_TCP_SHUTDOWN'
    const resetClient = resetBoth || reason === 'FERRY_ERR_UPSTREAM_RESET'
    const resetUpstream = resetBoth || reason === 'FERRY_ERR_TCP_CLIENT_RESET'
    destroy(this.client, resetClient)
    if (this.upstream !== undefined) destroy(this.upstream, resetUpstream)
    this.finish(reason)
  }

  private finish (reason: CloseReason): void {
    if (this.state === 'closed') return
    const final = this.state === 'closing' && reason === 'ok' ? this.closeReason : reason
    this.to('closed')
    this.header.clear()
    this.pending = undefined
    if (this.ep !== undefined) {
      this.target!.release(this.ep)
      this.ep = undefined
    }
    if (this.ipSlot !== undefined) {
      this.ipSlot.release()
      this.ipSlot = undefined
    }
    this.ctx.onClosed(this, final)
  }

  /** For /status and logs. */
  get peer (): string {
    return this.clientIp.includes(':') ? `[${this.clientIp}]:${this.clientPort ?? ''}` : `${this.clientIp}:${this.clientPort ?? ''}`
  }
}

/** Destroys a socket we own; with `reset`, sends RST when the socket can. Never throws. */
function destroy (s: Socket, reset: boolean): void {
  if (s.destroyed) return
  s.on('error', noop)
  if (reset) {
    try {
      s.resetAndDestroy()
      return
    } catch {
      // not a TCP handle any more: plain destroy below
    }
  }
  s.destroy()
}
