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
 *   server.publish('room:lobby', 'hello everyone')   // one frame per subscribed link; Ferry fans it out
 *
 * A Session feels like `ws`'s WebSocket: `send` returns false once the stream's credit is used up (the
 * client is slow) and `drain` follows when it is not; messages arrive whole (fragments reassembled).
 */
import { EventEmitter, once } from 'node:events'
import { Counter, Gauge, type Registry } from 'prom-client'
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net'
import { hostname } from 'node:os'
import { createServer as createTlsServer, type TlsOptions } from 'node:tls'
import { encodePublish, GoawayCode, ResetCode } from '../mux/codec.js'
import { MuxConnection, type Hello } from '../mux/connection.js'
import type { MuxStream, StreamEvents } from '../mux/stream.js'
import { checkRegisterLabels, defaultAdvertise, Registration, type RegisterOptions } from './register.js'
import { RateWindow } from '../net/rate-window.js'
import { ACK_EVERY, checkTopic, Session, type Link, type ResumeCarry, type SendData, type SessionHost, type SessionInfo } from './session.js'

export { Session, type SendData, type SessionInfo } from './session.js'
export type { RegisterOptions } from './register.js'

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
  /**
   * Resumable sessions (clients using `ferry/client`; docs/resume.md). A session whose client went away
   * is parked for `windowMs` (default 30 s): the application sees no `close`, `send` keeps the messages
   * (up to `maxBufferedBytes`, default 8 MiB, counting everything the client has not acknowledged), and
   * a client that resumes through any gateway gets exactly what it missed. `false` turns it off (those
   * clients then get plain sessions).
   */
  resume?: { windowMs?: number, maxBufferedBytes?: number } | false
  /**
   * Backend handoff (docs/backend-handoff.md): `server.drain()` moves every session to another backend of
   * the same upstream through the gateway, and sessions from a drained or crashed process arrive here with
   * `session.handoff`. `timeoutMs` (default 2 s) bounds the `handoff` hook; `maxStateBytes` (default
   * 32 KiB, and never more than the gateway's maxFrameBytes allows) bounds its JSON. A resumable
   * (`ferry/client`) session moves with its resume state; `ackWaitMs` (default 1 s) bounds how long the
   * old process waits for its client to acknowledge what it got before it hands over. `false` turns
   * handoff off: `drain()` then closes sessions 1012 in paced waves.
   */
  handoff?: { timeoutMs?: number, maxStateBytes?: number, ackWaitMs?: number } | false
  /** A prom-client Registry to register the library's metrics in (ferry_backend_*; read from `stats()` at scrape time). */
  registry?: Registry
  /**
   * Register in Ferry's endpoint registry once listening (gateways with `registry: { redis, service }`
   * pick this backend up at once): a key with a TTL renewed every third of `ttlMs`, removed by `close()`
   * before the links GOAWAY. Redis errors are emitted as 'error' only if someone listens; they never
   * stop the server (the registration expires, and comes back with the next heartbeat that succeeds).
   */
  register?: RegisterOptions
}

/** Counters of the resume machinery (`server.stats()`). */
export interface MuxServerStats {
  sessions: number
  parked: number
  resumed: number
  /** Resumes refused, by reason (`unknown`, `stale`, `bad_ack`, `invalid`): those clients got a fresh session. */
  resumeRefused: Record<string, number>
  /** Parked sessions closed because the window passed or the buffer filled. */
  expired: number
  /** Messages sent again to resuming clients. */
  replayed: number
  /** Sessions handed over to another backend (`drain()`), and those that arrived by a handoff (`lost`: from a process that died). */
  handoff: { out: number, in: number, lostIn: number, stateErrors: Record<string, number> }
}

/** What `drain()` did. */
export interface DrainResult {
  /** Sessions handed over to another backend through the gateway; their clients stayed connected. */
  handedOff: number
  /** Sessions closed 1012 instead: their gateway does not speak handoff, they are resumable, or the deadline passed. */
  closed: number
  ms: number
}

interface ServerEvents {
  listening: []
  session: [session: Session]
  /**
   * A session is being handed to another backend: the (first) listener returns its state, JSON-serialisable,
   * or a promise of it (bounded by `handoff.timeoutMs`); the new process gets it as `session.handoff.state`.
   */
  handoff: [session: Session]
  error: [err: Error]
  /** A gateway link connected or went away. */
  link: [info: { gateway: string, instance: string, remoteAddress: string, event: 'ready' | 'closed', reason?: string }]
  close: []
}

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

export class MuxServer extends EventEmitter<ServerEvents> implements SessionHost {
  /** Resolves once the server listens (rejects if it cannot). */
  readonly listening: Promise<void>
  private readonly server: NetServer
  private readonly links_ = new Set<Link>()
  private readonly sessionSet = new Set<Session>()
  private readonly opts: Required<Omit<MuxServerOptions, 'tls' | 'resume' | 'registry' | 'register' | 'handoff'>>
  /** The registry entry (with `register`), once listening. */
  registration: Registration | undefined
  readonly resumeEnabled: boolean
  readonly resumeWindowMs: number
  readonly maxReplayBytes: number
  /** Resumable sessions by id (attached and parked). */
  private readonly resumable = new Map<string, Session>()
  private parkedCount = 0
  private readonly counts = { resumed: 0, expired: 0, replayed: 0, refused: {} as Record<string, number> }
  private readonly acksDue = new Set<Session>()
  private ackTimer: NodeJS.Timeout | undefined
  private closing = false
  /** Every socket accepted and not yet closed, links or not (one still in its HELLO, one a link let go). */
  private readonly sockets = new Set<Socket>()
  private draining: Promise<DrainResult> | undefined
  private readonly handoffOpts: { timeoutMs: number, maxStateBytes: number } | undefined
  readonly handoffAckWaitMs: number
  private readonly handoffCounts = { out: 0, in: 0, lostIn: 0, stateErrors: {} as Record<string, number> }
  private nextLinkId = 0
  /** TCP connections accepted since start (links, including ones that never completed HELLO). */
  connectionsAccepted = 0

  constructor (options: MuxServerOptions = {}) {
    super()
    if (options.register !== undefined) checkRegisterLabels(options.register)
    this.opts = {
      port: options.port ?? 0,
      host: options.host ?? '0.0.0.0',
      id: options.id ?? `${hostname()}/${process.pid}`,
      initialWindow: options.initialWindow ?? 256 * 1024,
      maxFrameBytes: options.maxFrameBytes ?? 64 * 1024,
      maxMessageBytes: options.maxMessageBytes ?? 16 * 1024 * 1024,
    }
    this.resumeEnabled = options.resume !== false
    const r = options.resume === false ? {} : options.resume ?? {}
    this.resumeWindowMs = r.windowMs ?? 30_000
    this.maxReplayBytes = r.maxBufferedBytes ?? 8 * 1024 * 1024
    this.handoffOpts = options.handoff === false ? undefined : { timeoutMs: options.handoff?.timeoutMs ?? 2000, maxStateBytes: options.handoff?.maxStateBytes ?? 32 * 1024 }
    this.handoffAckWaitMs = options.handoff === false ? 0 : options.handoff?.ackWaitMs ?? 1000
    if (options.registry !== undefined) this.registerMetrics(options.registry)
    const onSocket = (socket: Socket): void => { this.accept(socket) }
    this.server = options.tls !== undefined ? createTlsServer(options.tls, onSocket) : createNetServer(onSocket)
    this.listening = new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.opts.port, this.opts.host, () => {
        this.server.off('error', reject)
        this.server.on('error', (err) => { this.emit('error', err) })
        if (options.register !== undefined) {
          const reg = options.register
          this.registration = new Registration(reg, reg.advertise ?? defaultAdvertise(this.opts.host, this.address().port), this.opts.id, (err) => {
            if (this.listenerCount('error') > 0) this.emit('error', err)
          })
          // Registered before `listening` resolves: a caller that awaits it can count on gateways finding it.
          this.registration.start().then(resolve, (err: Error) => { if (this.listenerCount('error') > 0) this.emit('error', err); resolve() })
        } else resolve()
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
   * Sends `data` to every client subscribed to `topic`, through every gateway connected to this
   * backend: one PUBLISH frame on each link that carries a subscribed session (not one per client);
   * Ferry fans it out with uWS pub/sub. A PUBLISH travels on the same link as its subscribers' own
   * streams, so each client gets topic messages in publish order and in order with the messages its
   * session sent before, and never misses one published after its `subscribe()`.
   * Returns the number of links it was sent on. The message must fit one frame (the gateway's
   * maxFrameBytes, 64 KiB by default, minus the topic).
   */
  publish (topic: string, data: SendData, opts: { binary?: boolean } = {}): number {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data instanceof ArrayBuffer ? new Uint8Array(data) : data
    const binary = opts.binary ?? typeof data !== 'string'
    checkTopic(topic)
    const frame = encodePublish(topic, bytes, binary)
    const to: Link[] = []
    for (const l of this.links_) {
      if (!l.topics.has(topic) || (l.conn.state !== 'ready' && l.conn.state !== 'draining')) continue
      const peerMax = l.conn.peer?.maxFrameBytes ?? 0
      if (frame.length - 12 > peerMax) throw new RangeError(`topic message of ${bytes.length} bytes does not fit the gateway's maxFrameBytes ${peerMax}`)
      to.push(l)
    }
    for (const l of to) l.conn.write(frame)
    return to.length
  }

  stats (): MuxServerStats {
    return {
      sessions: this.sessionSet.size,
      parked: this.parkedCount,
      resumed: this.counts.resumed,
      resumeRefused: { ...this.counts.refused },
      expired: this.counts.expired,
      replayed: this.counts.replayed,
      handoff: { ...this.handoffCounts, stateErrors: { ...this.handoffCounts.stateErrors } },
    }
  }

  /**
   * Drains this process for a deploy without disconnecting anyone: stops listening and leaves the
   * registry, says GOAWAY on every link (gateways open no new session here), then asks the gateway to move
   * each session to another endpoint of its upstream, at most `maxMigrationsPerSec` a second (default 100).
   * A moved session's client stays connected; the application's `handoff` hook gives each one's state;
   * a resumable session takes its resume state along (its id, counts and unacknowledged messages).
   * Sessions that cannot move (their gateway does not speak handoff, or a parked resumable session, whose
   * client is away) are closed 1012 in the same paced waves; whatever is left at `deadlineMs` (default 30 s) is closed 1012. Then the
   * server closes. Calling it again returns the same promise.
   */
  async drain (opts: { deadlineMs?: number, maxMigrationsPerSec?: number } = {}): Promise<DrainResult> {
    this.draining ??= this.runDrain(opts.deadlineMs ?? 30_000, opts.maxMigrationsPerSec ?? 100)
    return await this.draining
  }

  private async runDrain (deadlineMs: number, perSec: number): Promise<DrainResult> {
    const started = Date.now()
    const result = { handedOff: 0, closed: 0, ms: 0 }
    const outBefore = this.handoffCounts.out
    await this.registration?.stop()
    if (this.server.listening) this.server.close()
    for (const l of this.links_) l.conn.goaway(GoawayCode.NORMAL, 'backend draining')
    // Waves every 100 ms (or sooner when the budget frees up), oldest first: at most perSec sessions
    // in any one second (a sliding window, so no second gets two waves' worth at its edges).
    const pace = new RateWindow(perSec)
    const perWave = Math.max(1, Math.ceil(perSec / 10))
    while (this.sessionSet.size > 0 && Date.now() - started < deadlineMs) {
      let wait = 100
      let n = 0
      for (const s of this.sessionSet) {
        if (s.leaving) continue
        if (n++ >= perWave) break
        const w = pace.take(performance.now())
        if (w > 0) { wait = Math.min(wait, w); break }
        if (this.handoffOpts === undefined || !s.requestMove('backend draining')) { s.close(1012, 'backend restarting; reconnect'); result.closed++ }
      }
      await new Promise((resolve) => setTimeout(resolve, wait))
    }
    for (const s of [...this.sessionSet]) { s.close(1012, 'backend restarting; reconnect'); result.closed++ }
    result.handedOff = this.handoffCounts.out - outBefore
    await this.close()
    result.ms = Date.now() - started
    return result
  }

  /** @internal The state a session takes along: the `handoff` hook's answer, bounded in time and size. */
  async handoffState (s: Session): Promise<{ state?: unknown, stateError?: string }> {
    const hook = this.listeners('handoff')[0] as ((s: Session) => unknown) | undefined
    if (hook === undefined || this.handoffOpts === undefined) return {}
    const fail = (why: string, err?: unknown): { stateError: string } => {
      this.handoffCounts.stateErrors[why] = (this.handoffCounts.stateErrors[why] ?? 0) + 1
      if (err !== undefined) this.appError(err, s)
      return { stateError: why }
    }
    let state: unknown
    try {
      const v = hook(s)
      if (v instanceof Promise) {
        let timer: NodeJS.Timeout | undefined
        const late = Symbol('late')
        state = await Promise.race([v, new Promise((resolve) => { timer = setTimeout(() => resolve(late), this.handoffOpts!.timeoutMs) })]).finally(() => { clearTimeout(timer) })
        if (state === late) return fail('timeout')
      } else state = v
    } catch (err) {
      return fail('threw', err)
    }
    if (state === undefined) return {}
    let json: string
    try { json = JSON.stringify({ state }) } catch (err) { return fail('not_json', err) }
    // The HANDOFF frame must fit the gateway's maxFrameBytes (with room for the wrapper).
    const peerMax = s.linkMaxFrame
    const max = Math.min(this.handoffOpts.maxStateBytes, peerMax - 64)
    if (Buffer.byteLength(json) > max) return fail('too_large')
    return { state }
  }

  /** @internal */
  handedOff (_s: Session): void {
    this.handoffCounts.out++
  }

  private registerMetrics (registry: Registry): void {
    const self = this
    const registers = [registry]
    new Gauge({ name: 'ferry_backend_sessions', help: 'Open sessions (attached and parked).', registers, collect () { this.set(self.sessionSet.size) } })
    new Gauge({ name: 'ferry_backend_parked_sessions', help: 'Resumable sessions whose client is away, waiting up to resume.windowMs.', registers, collect () { this.set(self.parkedCount) } })
    new Gauge({ name: 'ferry_backend_links', help: 'Gateway links connected.', registers, collect () { this.set(self.links_.size) } })
    // The library counts in plain numbers; the counters take them at scrape time.
    const counts = this.counts
    new Counter({
      name: 'ferry_backend_resumes_total', help: 'Resume attempts by outcome: resumed, or why the client got a fresh session (unknown, stale, bad_ack, invalid).', labelNames: ['outcome'], registers,
      collect () {
        this.reset()
        this.labels('resumed').inc(counts.resumed)
        for (const [k, v] of Object.entries(counts.refused)) this.labels(k).inc(v)
      },
    })
    new Counter({ name: 'ferry_backend_resume_expired_total', help: 'Parked sessions closed because the window passed or the replay buffer filled.', registers, collect () { this.reset(); this.inc(counts.expired) } })
    new Counter({ name: 'ferry_backend_replayed_messages_total', help: 'Messages sent again to resuming clients.', registers, collect () { this.reset(); this.inc(counts.replayed) } })
  }

  /** Stops listening, closes every session (1001) and link (GOAWAY first). */
  async close (): Promise<void> {
    if (this.closing) return
    this.closing = true
    // Deregister first: gateways stop opening sessions here before the links say GOAWAY.
    await this.registration?.stop()
    const closed = this.server.listening ? once(this.server, 'close') : Promise.resolve()
    this.server.close()
    for (const s of [...this.sessionSet]) s.close(1001, 'backend shutting down')
    for (const l of [...this.links_]) {
      l.conn.goaway(GoawayCode.NORMAL, 'backend shutting down')
      l.conn.destroy({ code: 'FERRY_ERR_WS_UPSTREAM_LOST', message: 'backend shutting down' })
    }
    // Whatever the links left open (a socket still in its HELLO is not a link yet): the server's
    // 'close' waits for every accepted socket, so a close must not depend on the gateway ending them.
    for (const s of this.sockets) s.destroy()
    await closed
    this.emit('close')
  }

  private accept (socket: Socket): void {
    this.connectionsAccepted++
    if (this.closing) { socket.destroy(); return }
    this.sockets.add(socket)
    socket.once('close', () => { this.sockets.delete(socket) })
    const remoteAddress = socket.remoteAddress ?? ''
    const remotePort = socket.remotePort ?? 0
    let link: Link | undefined
    const conn = new MuxConnection(socket, {
      role: 'backend',
      id: this.opts.id,
      maxFrameBytes: this.opts.maxFrameBytes,
      initialWindow: this.opts.initialWindow,
      maxMessageBytes: this.opts.maxMessageBytes,
      resume: this.resumeEnabled,
      handoff: this.handoffOpts !== undefined,
    }, {
      ready: (peer: Hello) => {
        link = { id: ++this.nextLinkId, conn, instance: String(peer.instance), gateway: String(peer.id), remoteAddress, remotePort, topics: new Map() }
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
    let m: Partial<Omit<SessionInfo, 'handoff'>> & { resumable?: unknown, resume?: { session?: unknown, epoch?: unknown, received?: unknown }, handoff?: unknown }
    try {
      m = JSON.parse(meta.toString('utf8')) as typeof m
      info = {
        key: String(m.key ?? ''),
        session: String(m.session ?? m.key ?? ''),
        path: String(m.path ?? '/'),
        query: String(m.query ?? ''),
        headers: m.headers !== null && typeof m.headers === 'object' ? m.headers : {},
        remoteAddress: String(m.remoteAddress ?? ''),
        protocol: String(m.protocol ?? ''),
        route: String(m.route ?? ''),
        ...handoffFrom(m.handoff),
      }
    } catch {
      stream.reset(ResetCode.PROTOCOL, 'OPEN metadata is not JSON', 'FERRY_ERR_MUX_BAD_FRAME')
      return { message: () => {}, end: () => {}, drain: () => {} }
    }
    const resumable = this.resumeEnabled && m.resumable === true
    // A resumable session handed over by another process: it continues here under its id.
    const carry = resumable ? resumeCarryFrom(m.handoff) : undefined
    if (carry !== undefined) {
      info.session = carry.session
      this.resumable.get(carry.session)?.close(4001, 'session resumed elsewhere')
    }
    let refused: string | undefined
    if (resumable && m.resume !== undefined && m.resume !== null) {
      const r = m.resume
      const old = typeof r.session === 'string' ? this.resumable.get(r.session) : undefined
      const epoch = Number(r.epoch)
      const received = Number(r.received)
      if (!Number.isSafeInteger(epoch) || !Number.isSafeInteger(received) || received < 0) refused = 'invalid'
      else if (old === undefined || old.key !== info.key) refused = 'unknown'
      else refused = old.resumeRefusal(epoch, received)
      if (refused === undefined) {
        this.counts.resumed++
        const { events, replayed } = old!.attach(stream, link, received)
        this.counts.replayed += replayed
        return events
      }
      this.counts.refused[refused] = (this.counts.refused[refused] ?? 0) + 1
    }
    const session = new Session(stream, info, link, this, resumable)
    this.sessionSet.add(session)
    if (resumable) {
      // A fresh id always: a refused resume must never continue under the old session's name.
      this.resumable.set(session.id, session)
      if (carry !== undefined) {
        session.adopt(carry)
        // Nothing is replayed: the client got every message over the connection it still has.
        stream.sendAccept({ resumed: true, session: session.id, epoch: carry.epoch, received: carry.received, replayed: 0, handoff: true })
      } else stream.sendAccept({ resumed: false, session: session.id, epoch: 0, received: 0, ...(refused !== undefined ? { reason: refused } : {}) })
    }
    const events = session.events()
    stream.events = events
    if (info.handoff !== undefined) {
      if (info.handoff.lost === true) this.handoffCounts.lostIn++
      else this.handoffCounts.in++
      // The topics it had on the old process: its client keeps getting them through this one.
      for (const t of handoffTopics(m.handoff)) session.subscribe(t)
    }
    // Synchronously: DATA right behind the OPEN in the same read must find the application's listeners.
    try {
      this.emit('session', session)
    } catch (err) {
      this.appError(err, session)
    }
    return events
  }

  /** @internal A resumable session received a client message: ACK now after ACK_EVERY, else within 100 ms. */
  ackDue (s: Session): void {
    if (s.unackedIn >= ACK_EVERY) { s.flushAck(); this.acksDue.delete(s); return }
    this.acksDue.add(s)
    if (this.ackTimer === undefined) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = undefined
        const due = [...this.acksDue]
        this.acksDue.clear()
        for (const x of due) x.flushAck()
      }, 100)
      this.ackTimer.unref()
    }
  }

  /** @internal */
  parked (_s: Session, parked: boolean): void {
    this.parkedCount += parked ? 1 : -1
  }

  /** @internal A parked session was closed: its window passed or its buffer filled. */
  expired (): void {
    this.counts.expired++
  }

  /** @internal */
  sessionEnded (s: Session): void {
    this.sessionSet.delete(s)
    this.acksDue.delete(s)
    if (this.resumable.get(s.id) === s) this.resumable.delete(s.id)
  }

  /** @internal An application handler threw: report it, keep the session and the link. */
  appError (err: unknown, session: Session): void {
    const e = err instanceof Error ? err : new Error(String(err))
    if (session.listenerCount('error') > 0) { session.emit('error', e); return }
    if (this.listenerCount('error') > 0) { this.emit('error', e); return }
    process.emitWarning(`ferry/backend: an application handler threw (session ${session.key}): ${e.stack ?? e.message}`)
  }
}

/** The `handoff` member of OPEN metadata, as SessionInfo carries it (malformed: none). */
function handoffFrom (h: unknown): { handoff?: SessionInfo['handoff'] } {
  if (h === null || typeof h !== 'object') return {}
  const o = h as Record<string, unknown>
  const from = typeof o.from === 'string' ? o.from : ''
  if (o.lost === true) return { handoff: { lost: true, from } }
  return { handoff: { state: o.state, from, ...(typeof o.stateError === 'string' ? { stateError: o.stateError } : {}) } }
}

/** The resume state in OPEN `handoff.resume` (a resumable session handed over), checked; malformed: none. */
function resumeCarryFrom (h: unknown): ResumeCarry | undefined {
  const r = h !== null && typeof h === 'object' ? (h as { resume?: unknown }).resume : undefined
  if (r === null || typeof r !== 'object') return undefined
  const c = r as Record<string, unknown>
  const n = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0
  if (typeof c.session !== 'string' || c.session === '' || c.session.length > 256) return undefined
  if (!n(c.epoch) || !n(c.received) || !n(c.sent) || !n(c.acked) || c.acked > c.sent || !Array.isArray(c.unacked)) return undefined
  if (c.unacked.length !== c.sent - c.acked) return undefined
  if (!c.unacked.every((m) => Array.isArray(m) && typeof m[0] === 'string' && (m[1] === 0 || m[1] === 1))) return undefined
  return c as unknown as ResumeCarry
}

function handoffTopics (h: unknown): string[] {
  const t = h !== null && typeof h === 'object' ? (h as { topics?: unknown }).topics : undefined
  if (!Array.isArray(t)) return []
  return t.filter((x): x is string => typeof x === 'string' && Buffer.byteLength(x) >= 1 && Buffer.byteLength(x) <= 1024).slice(0, 10_000)
}

/** Starts a mux server; `await server.listening` before reading `server.address()`. */
export function createMuxServer (options: MuxServerOptions = {}): MuxServer {
  return new MuxServer(options)
}
