/**
 * `ferry/backend`: the library a backend uses to take WebSocket sessions from Ferry over mux links.
 *
 *   import { createMuxServer } from 'ferry/backend'
 *   const server = createMuxServer({ port: 7000 })
 *   server.on('session', (session) => {
 *     session.subscribe('room:lobby')
 *     session.on('message', (data, isBinary) => session.send(data, { binary: isBinary }))
 *     session.on('close', (code, reason) => { … })
 *   })
 *   server.publish('room:lobby', 'hello everyone')   // one frame per gateway; Ferry fans it out
 *
 * A Session feels like `ws`'s WebSocket: `send` returns false once the stream's credit is used up (the
 * client is slow) and `drain` follows when it is not; messages arrive whole (fragments reassembled).
 */
import { EventEmitter, once } from 'node:events'
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net'
import { hostname } from 'node:os'
import { createServer as createTlsServer, type TlsOptions } from 'node:tls'
import { encodePublish, encodeTopicFrame, FrameType, GoawayCode, ResetCode } from '../mux/codec.js'
import { MuxConnection, type Hello } from '../mux/connection.js'
import type { MuxStream, StreamEvents } from '../mux/stream.js'

export interface MuxServerOptions {
  /** TCP port to listen on; 0 picks a free one (see `address()`). Default 0. */
  port?: number
  /** Address to bind. Default `0.0.0.0`. */
  host?: string
  /** This backend's id in HELLO (gateway logs). Default: host name and pid. */
  id?: string
  /** Per-stream credit granted to the gateway (bytes a client may have in flight towards the app). Default 256 KiB. */
  initialWindow?: number
  /** Largest frame payload accepted. Default 64 KiB. */
  maxFrameBytes?: number
  /** Largest client message reassembled; larger resets the stream. Default 16 MiB. */
  maxMessageBytes?: number
  /** Serve links over TLS with these options (key, cert, …). */
  tls?: TlsOptions
}

/** What the gateway tells the backend about a session (OPEN metadata). */
export interface SessionInfo {
  /** The session's affinity key (the route's `affinity.key` value), or Ferry's session id when it has none. */
  key: string
  /** Ferry's id for this client connection. */
  session: string
  path: string
  query: string
  headers: Record<string, string>
  remoteAddress: string
  /** The subprotocol selected for the client ('' for none). */
  protocol: string
  /** The gateway route name. */
  route: string
}

export type SendData = string | Buffer | Uint8Array | ArrayBuffer

const enum ReadyState { CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3 }

interface SessionEvents {
  message: [data: Buffer, isBinary: boolean]
  close: [code: number, reason: string]
  drain: []
  error: [err: Error]
}

/** One client session, as the application sees it. */
export class Session extends EventEmitter<SessionEvents> {
  static readonly CONNECTING = 0
  static readonly OPEN = 1
  static readonly CLOSING = 2
  static readonly CLOSED = 3
  readyState: number = ReadyState.OPEN
  /** The affinity key (from the route's `affinity.key`), else the same as `id`. */
  readonly key: string
  /** Ferry's id for this client connection. */
  readonly id: string
  readonly path: string
  readonly query: URLSearchParams
  readonly headers: Readonly<Record<string, string>>
  readonly remoteAddress: string
  readonly protocol: string
  readonly route: string
  /** The gateway instance the session came through. */
  readonly gateway: string
  /** The id of the link the session's stream is on (see `server.links()`). */
  readonly linkId: number
  private readonly subscribed = new Set<string>()

  /** @internal */
  constructor (private readonly stream: MuxStream, info: SessionInfo, link: Link, private readonly server: MuxServer) {
    super()
    this.key = info.key
    this.id = info.session
    this.path = info.path
    this.query = new URLSearchParams(info.query)
    this.headers = info.headers
    this.remoteAddress = info.remoteAddress
    this.protocol = info.protocol
    this.route = info.route
    this.gateway = link.gateway
    this.linkId = link.id
    this.writeFrame = (frame) => { link.conn.write(frame) }
  }

  private readonly writeFrame: (frame: Buffer) => void

  /** Bytes queued because the stream has no credit (the client is not reading fast enough). */
  get bufferedAmount (): number {
    return this.stream.queued
  }

  get topics (): ReadonlySet<string> {
    return this.subscribed
  }

  /**
   * Sends one message: strings go as text unless `binary`, bytes as binary unless `binary: false`.
   * Returns false when it had to be queued for credit; wait for `drain` before sending much more.
   */
  send (data: SendData, opts: { binary?: boolean } = {}): boolean {
    if (this.readyState !== ReadyState.OPEN) return false
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data instanceof ArrayBuffer ? new Uint8Array(data) : data
    const binary = opts.binary ?? typeof data !== 'string'
    return this.stream.send(bytes, binary)
  }

  /** Closes the session; the client gets this code and reason (≤ 123 bytes). `close` is emitted. */
  close (code = 1000, reason = ''): void {
    if (this.readyState !== ReadyState.OPEN) return
    this.readyState = ReadyState.CLOSING
    this.stream.close(code, reason)
    this.ended(code, reason)
  }

  /** The client joins `topic` (1–1024 bytes of UTF-8): `server.publish(topic, …)` reaches it. */
  subscribe (topic: string): void {
    this.topicFrame(FrameType.SUBSCRIBE, topic)
    this.subscribed.add(topic)
  }

  unsubscribe (topic: string): void {
    if (!this.subscribed.delete(topic)) return
    this.topicFrame(FrameType.UNSUBSCRIBE, topic)
  }

  private topicFrame (type: typeof FrameType.SUBSCRIBE | typeof FrameType.UNSUBSCRIBE, topic: string): void {
    const n = Buffer.byteLength(topic)
    if (n < 1 || n > 1024) throw new RangeError(`topic must be 1-1024 bytes of UTF-8 (got ${n})`)
    if (this.readyState !== ReadyState.OPEN) return
    this.writeFrame(encodeTopicFrame(type, this.stream.id, topic))
  }

  /** @internal The stream's events, bridged to the EventEmitter API; application errors are contained. */
  events (): StreamEvents {
    return {
      message: (data, binary) => { this.safeEmit('message', data, binary) },
      end: (code, reason) => { this.ended(code === 1012 ? 1006 : code, reason) },
      drain: () => { this.safeEmit('drain') },
    }
  }

  private ended (code: number, reason: string): void {
    if (this.readyState === ReadyState.CLOSED) return
    this.readyState = ReadyState.CLOSED
    this.subscribed.clear()
    this.server.sessionEnded(this)
    // Like ws: 'close' comes after the call that closed returns.
    process.nextTick(() => { this.safeEmit('close', code, reason) })
  }

  private safeEmit<K extends keyof SessionEvents> (event: K, ...args: SessionEvents[K]): void {
    try {
      (this.emit as (e: K, ...a: SessionEvents[K]) => boolean)(event, ...args)
    } catch (err) {
      this.server.appError(err, this)
    }
  }
}

interface ServerEvents {
  listening: []
  session: [session: Session]
  error: [err: Error]
  /** A gateway link connected or went away. */
  link: [info: { gateway: string, instance: string, remoteAddress: string, event: 'ready' | 'closed', reason?: string }]
  close: []
}

/** A link and the gateway instance it belongs to. */
interface Link { id: number, conn: MuxConnection, instance: string, gateway: string, remoteAddress: string, remotePort: number }

/** One gateway link, as `server.links()` lists it. */
export interface LinkInfo {
  readonly id: number
  readonly gateway: string
  readonly instance: string
  readonly remoteAddress: string
  readonly remotePort: number
  /** Open sessions (streams) on the link. */
  readonly sessions: number
  /** Cuts the link now (its sessions close with 1006): for operators and failure tests. */
  terminate: () => void
}

export class MuxServer extends EventEmitter<ServerEvents> {
  /** Resolves once the server listens (rejects if it cannot). */
  readonly listening: Promise<void>
  private readonly server: NetServer
  private readonly links_ = new Set<Link>()
  private readonly sessionSet = new Set<Session>()
  private readonly opts: Required<Omit<MuxServerOptions, 'tls'>>
  private closing = false
  private nextLinkId = 0
  /** TCP connections accepted since start (links, including ones that never completed HELLO). */
  connectionsAccepted = 0

  constructor (options: MuxServerOptions = {}) {
    super()
    this.opts = {
      port: options.port ?? 0,
      host: options.host ?? '0.0.0.0',
      id: options.id ?? `${hostname()}/${process.pid}`,
      initialWindow: options.initialWindow ?? 256 * 1024,
      maxFrameBytes: options.maxFrameBytes ?? 64 * 1024,
      maxMessageBytes: options.maxMessageBytes ?? 16 * 1024 * 1024,
    }
    const onSocket = (socket: Socket): void => { this.accept(socket) }
    this.server = options.tls !== undefined ? createTlsServer(options.tls, onSocket) : createNetServer(onSocket)
    this.listening = new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject)
        this.server.on('error', (err) => { this.emit('error', err) })
        resolve()
        this.emit('listening')
      })
    })
    // A listen failure is reported through `listening` (and 'error' if someone listens for it).
    this.listening.catch((err: Error) => { if (this.listenerCount('error') > 0) this.emit('error', err) })
  }

  address (): AddressInfo {
    return this.server.address() as AddressInfo
  }

  /** The gateway links connected now (HELLO done). */
  links (): LinkInfo[] {
    return [...this.links_].map((l) => ({
      id: l.id, gateway: l.gateway, instance: l.instance, remoteAddress: l.remoteAddress, remotePort: l.remotePort,
      sessions: l.conn.streams.size,
      terminate: () => { l.conn.socket.destroy() },
    }))
  }

  /** Open sessions. */
  get sessions (): ReadonlySet<Session> {
    return this.sessionSet
  }

  /**
   * Sends `data` to every client subscribed to `topic` on every gateway connected to this backend:
   * one PUBLISH frame per gateway instance (not per link), always on that gateway's oldest link, so
   * topic messages arrive in publish order; Ferry fans it out with uWS pub/sub. (Relative to a
   * session's own messages, which travel on its stream's link, order holds only with `links: 1`.)
   * Returns the number of gateways it was sent to. The message must fit one frame (the gateway's
   * maxFrameBytes, 64 KiB by default, minus the topic).
   */
  publish (topic: string, data: SendData, opts: { binary?: boolean } = {}): number {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data instanceof ArrayBuffer ? new Uint8Array(data) : data
    const binary = opts.binary ?? typeof data !== 'string'
    const t = Buffer.byteLength(topic)
    if (t < 1 || t > 1024) throw new RangeError(`topic must be 1-1024 bytes of UTF-8 (got ${t})`)
    const frame = encodePublish(topic, bytes, binary)
    const chosen = new Map<string, Link>()
    for (const l of this.links_) {
      if (l.conn.state !== 'ready' && l.conn.state !== 'draining') continue
      const peerMax = l.conn.peer?.maxFrameBytes ?? 0
      if (frame.length - 12 > peerMax) throw new RangeError(`topic message of ${bytes.length} bytes does not fit the gateway's maxFrameBytes ${peerMax}`)
      // Always the same link per gateway (the oldest): topic messages keep their publish order.
      const best = chosen.get(l.instance)
      if (best === undefined || l.id < best.id) chosen.set(l.instance, l)
    }
    for (const l of chosen.values()) l.conn.write(frame)
    return chosen.size
  }

  /** Stops listening, closes every session (1001) and link (GOAWAY first). */
  async close (): Promise<void> {
    if (this.closing) return
    this.closing = true
    const closed = this.server.listening ? once(this.server, 'close') : Promise.resolve()
    this.server.close()
    for (const s of [...this.sessionSet]) s.close(1001, 'backend shutting down')
    for (const l of [...this.links_]) {
      l.conn.goaway(GoawayCode.NORMAL, 'backend shutting down')
      l.conn.destroy({ code: 'FERRY_ERR_WS_UPSTREAM_LOST', message: 'backend shutting down' })
    }
    await closed
    this.emit('close')
  }

  private accept (socket: Socket): void {
    this.connectionsAccepted++
    if (this.closing) { socket.destroy(); return }
    const remoteAddress = socket.remoteAddress ?? ''
    const remotePort = socket.remotePort ?? 0
    let link: Link | undefined
    const conn = new MuxConnection(socket, {
      role: 'backend',
      id: this.opts.id,
      maxFrameBytes: this.opts.maxFrameBytes,
      initialWindow: this.opts.initialWindow,
      maxMessageBytes: this.opts.maxMessageBytes,
    }, {
      ready: (peer: Hello) => {
        link = { id: ++this.nextLinkId, conn, instance: String(peer.instance), gateway: String(peer.id), remoteAddress, remotePort }
        this.links_.add(link)
        this.emit('link', { gateway: link.gateway, instance: link.instance, remoteAddress, event: 'ready' })
      },
      open: (stream, meta) => this.openSession(stream, meta, link),
      goaway: () => { /* the gateway stops opening streams here; open ones continue */ },
      protocolError: () => { /* the stream or link is already reset/closed; sessions hear close */ },
      closed: (end) => {
        if (link !== undefined) {
          this.links_.delete(link)
          this.emit('link', { gateway: link.gateway, instance: link.instance, remoteAddress, event: 'closed', reason: end.message })
        }
      },
    })
  }

  private openSession (stream: MuxStream, meta: Buffer, link: Link | undefined): StreamEvents | undefined {
    if (this.closing || link === undefined) return undefined
    let info: SessionInfo
    try {
      const m = JSON.parse(meta.toString('utf8')) as Partial<SessionInfo>
      info = {
        key: String(m.key ?? ''),
        session: String(m.session ?? m.key ?? ''),
        path: String(m.path ?? '/'),
        query: String(m.query ?? ''),
        headers: m.headers !== null && typeof m.headers === 'object' ? m.headers : {},
        remoteAddress: String(m.remoteAddress ?? ''),
        protocol: String(m.protocol ?? ''),
        route: String(m.route ?? ''),
      }
    } catch {
      stream.reset(ResetCode.PROTOCOL, 'OPEN metadata is not JSON', 'FERRY_ERR_MUX_BAD_FRAME')
      return { message: () => {}, end: () => {}, drain: () => {} }
    }
    const session = new Session(stream, info, link, this)
    this.sessionSet.add(session)
    const events = session.events()
    stream.events = events
    // Synchronously: DATA right behind the OPEN in the same read must find the application's listeners.
    try {
      this.emit('session', session)
    } catch (err) {
      this.appError(err, session)
    }
    return events
  }

  /** @internal */
  sessionEnded (s: Session): void {
    this.sessionSet.delete(s)
  }

  /** @internal An application handler threw: report it, keep the session and the link. */
  appError (err: unknown, session: Session): void {
    const e = err instanceof Error ? err : new Error(String(err))
    if (session.listenerCount('error') > 0) { session.emit('error', e); return }
    if (this.listenerCount('error') > 0) { this.emit('error', e); return }
    process.emitWarning(`ferry/backend: an application handler threw (session ${session.key}): ${e.stack ?? e.message}`)
  }
}

/** Starts a mux server; `await server.listening` before reading `server.address()`. */
export function createMuxServer (options: MuxServerOptions = {}): MuxServer {
  return new MuxServer(options)
}
