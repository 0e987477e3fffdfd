import { randomBytes } from 'node:crypto'
import type { HttpRequest, HttpResponse, TemplatedApp, us_socket_context_t, WebSocketBehavior } from 'uWebSockets.js'
import type { Logger } from 'pino'
import type { WebSocketRouteConfig } from '../config/schema.js'
import { DEFAULT_WS_SETTINGS, wsSettingsByPath } from '../config/ws-settings.js'
import { FerryError, toFerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { Route } from '../routing/router.js'
import type { RouteTable } from './route-table.js'
import { sendError } from '../net/error-response.js'
import { canonicalTarget } from './target.js'
import { keptRequestId } from './http-request.js'
import type { Uws } from './uws.js'
import { ClientSession, flushOutboxes, RefusedClient, SessionCounters, type SessionRegistry, type WsUserData } from './ws-session.js'
import { readAffinityKey, type ResumeOffer, type TopicPublisher, type UpstreamLeg, type WsHandshake } from '../contracts/ws.js'
import { parseResumeOffer, SUBPROTOCOL as FERRY_SUBPROTOCOL } from '../client/wire.js'
import { applyAdmitted, type Admitted } from '../edge/guard.js'
import { isRefused, type Admit, type Refused } from './admit.js'
import { splitAsk, type SplitAsk } from '../routing/split.js'
import { resolveClientIp } from '../edge/client-ip.js'
import { CorkAnchor } from './cork-anchor.js'
import { Networks, normalizeIp } from '../net/address.js'
import type { ProxyGate } from './proxy-gate.js'

export interface WsFrontDeps {
  readonly uws: Uws
  readonly table: RouteTable
  readonly log: Logger
  readonly metrics: Metrics
  /** The admission pipeline (shared with the HTTP front). */
  readonly admit: Admit
  /** Registers a route on every router of the app (a TLS front has one per SNI name); absent: the app's. */
  readonly routes?: (fn: (app: TemplatedApp) => void) => void
  /** X-Forwarded-Proto towards the backend: `https` on a TLS front (a trusted proxy's own value is passed on instead). */
  readonly proto?: 'http' | 'https'
  /** Who spoke HTTP to the front: the TCP peer or a PROXY header's source (listen.http.acceptProxyProtocol). */
  readonly gate: ProxyGate
}

const TOPIC_CHECK_BYTES = 64 * 1024

/**
 * The WebSocket half of the uWS front. uWS binds payload limit, idle timeout, compression and
 * backpressure to a URL pattern, so each WebSocket route path gets its own behavior (`/chat` and
 * `/chat/*`); a catch-all `/*` behavior takes every other upgrade and answers it with the right HTTP
 * error. The upgrade picks the route with Ferry's router (host + path), opens the upstream leg
 * asynchronously, and upgrades only if the client is still there.
 */
export class WsFront implements TopicPublisher, SessionRegistry {
  /** The sessions, each with the release of its concurrency-limit slot (src/edge/limits.ts), called by `forget`. */
  private readonly sessions = new Map<ClientSession, () => void>()
  private readonly counters = new Map<string, SessionCounters>()
  private readonly idPrefix = randomBytes(6).toString('base64url')
  private nextId = 0
  private accepting = true
  private readonly sweep: NodeJS.Timeout
  /** Upgrades that complete outside a uWS callback run in its cork (started at the first upgrade). */
  private readonly anchor: CorkAnchor
  /** Subscribers per (scoped) topic, and bytes published to it since its subscribers were last checked. */
  private readonly topics = new Map<string, { subs: Set<ClientSession>, sinceCheck: number }>()
  /** Subscribers not upgraded yet, per topic: they get topic messages into their early queue. */
  private readonly pendingTopics = new Map<string, Set<ClientSession>>()
  /** Any WebSocket route compresses: topic messages are sent with the compress flag (per-socket negotiation decides). */
  private readonly compressTopics: boolean

  private table: RouteTable
  /** http.trustedProxies of the current table. */
  private trusted: Networks
  private readonly patterns = new Set<string>()

  constructor (private readonly app: TemplatedApp, private readonly deps: WsFrontDeps) {
    this.anchor = new CorkAnchor(deps.uws, deps.log.child({ component: 'cork-anchor' }))
    this.table = deps.table
    this.trusted = new Networks(deps.table.config.http.trustedProxies)
    const byPath = wsSettingsByPath(deps.table.config)
    this.registerPaths(byPath)
    this.add('/*', byPath.get('/') ?? DEFAULT_WS_SETTINGS)
    this.compressTopics = [...byPath.values()].some((s) => s.compression !== 'off')
    // One timer for all sessions: topic fan-out has no credit, so a subscriber's queue can only be
    // watched, not held. O(sessions) once a second.
    this.sweep = setInterval(() => { for (const s of this.sessions.keys()) s.checkBackpressure() }, 1000)
    this.sweep.unref()
    this.startAnchor(deps.table)
  }

  /** The anchor is wanted once WebSocket sessions can be opened: with an upstream of protocol ws or mux. */
  private startAnchor (table: RouteTable): void {
    if (Object.values(table.config.upstreams).some((u) => u.protocol === 'ws' || u.protocol === 'mux')) this.anchor.start()
  }

  private add (pattern: string, s: WebSocketRouteConfig): void {
    if (this.patterns.has(pattern)) return
    this.patterns.add(pattern)
    const behavior = this.behavior(s)
    // Through `routes`: on a TLS front every SNI name has a router of its own (src/front/tls.ts).
    if (this.deps.routes !== undefined) this.deps.routes((app) => { app.ws(pattern, behavior) })
    else this.app.ws(pattern, behavior)
  }

  private registerPaths (byPath: Map<string, WebSocketRouteConfig>): void {
    // Registration order does not matter: uWS's router prefers static segments over wildcards.
    for (const [path, s] of byPath) {
      if (path === '/') continue
      const base = path.endsWith('/') ? path.slice(0, -1) : path
      this.add(base, s)
      this.add(`${base}/*`, s)
    }
  }

  /** A reload: new upgrades use `table`; a new WebSocket path gets its uWS behavior now (the reload checked that existing paths keep their uWS settings). */
  setTable (table: RouteTable): void {
    this.table = table
    this.startAnchor(table)
    this.trusted = new Networks(table.config.http.trustedProxies)
    this.registerPaths(wsSettingsByPath(table.config))
  }

  private behavior (s: WebSocketRouteConfig): WebSocketBehavior<WsUserData> {
    const uws = this.deps.uws
    return {
      // uWS 20.30 drops a connection whose message passes its limit without a close frame (the client
      // sees 1006), so uWS gets twice the route's limit and Ferry closes 1009 itself up to there.
      maxPayloadLength: Math.min(2 * s.maxPayloadLength, 0x7fffffff),
      idleTimeout: s.idleTimeoutSec,
      sendPingsAutomatically: true,
      // Ferry's sweep closes a client past maxBackpressure with 1008 and a reason (checkBackpressure);
      // uWS's own cut (no close frame, no reason) is the last resort at twice that.
      maxBackpressure: Math.min(2 * s.maxBackpressure, 0x7fffffff),
      closeOnBackpressureLimit: 1,
      compression: s.compression === 'shared'
        ? uws.SHARED_COMPRESSOR | uws.SHARED_DECOMPRESSOR
        : s.compression === 'dedicated' ? uws.DEDICATED_COMPRESSOR_32KB | uws.DEDICATED_DECOMPRESSOR_32KB : uws.DISABLED,
      upgrade: (res, req, context) => { this.onUpgrade(res, req, context) },
      open: (ws) => { ws.getUserData().session.opened(ws) },
      message: (ws, message, isBinary) => { ws.getUserData().session.fromClient(message, isBinary) },
      drain: (ws) => { ws.getUserData().session.drained() },
      close: (ws, code, message) => { ws.getUserData().session.closed(code, message) },
    }
  }

  private sessionCounters (route: Route, mode: 'ws' | 'mux'): SessionCounters {
    const k = `${route.name}\0${mode}`
    let c = this.counters.get(k)
    if (c === undefined) { c = new SessionCounters(this.deps.metrics, route.name, mode); this.counters.set(k, c) }
    return c
  }

  private fail (res: HttpResponse, route: string, err: FerryError, requestId: string, extraHeader?: readonly [string, string]): void {
    this.deps.metrics.wsUpgradeFailures.labels(route, err.code).inc()
    try {
      res.cork(() => { sendError(res, err.status || 500, err, requestId, this.table.config.http.requestIdHeader, true, extraHeader) })
    } catch { /* the client went away meanwhile */ }
  }

  /**
   * A refused upgrade, counted per route and code: an HTTP error response, or for a ferry/client client
   * on a mux route past a rate (admission, a rate limit) an upgrade closed 1013 with the retry hint.
   * `inCallback`: still inside uWS's upgrade callback (else the reply runs in the anchor's cork).
   */
  private refuse (res: HttpResponse, context: us_socket_context_t, key: string, requestId: string, r: Refused, inCallback: boolean): void {
    if (r.close1013 === undefined) { this.fail(res, r.route?.name ?? '', r.err, requestId, r.header); return }
    this.deps.metrics.wsUpgradeFailures.labels(r.route?.name ?? '', r.err.code).inc()
    const reason = r.close1013
    const upgrade = (): void => { res.upgrade<WsUserData>({ session: new RefusedClient(1013, reason) }, key, FERRY_SUBPROTOCOL, '', context) }
    if (inCallback) upgrade()
    else this.anchor.run(upgrade)
  }

  /** read → admit (src/front/admit.ts: route, access, kind, shape, rate, limit, guard) → open the upstream leg → upgrade. */
  private onUpgrade (res: HttpResponse, req: HttpRequest, context: us_socket_context_t): void {
    // A refused PROXY peer is closed before anything else: it gets no response.
    const peer = this.deps.gate.peer(res)
    if (peer === '') return
    // Everything from `req` is copied now: it is invalid after this function returns.
    let aborted = false
    let session: ClientSession | undefined
    /** The session slot the pipeline took, while no session holds it (then `forget` releases it). */
    let slot: (() => void) | undefined
    const giveBack = (): void => { slot?.(); slot = undefined }
    res.onAborted(() => { aborted = true; giveBack(); session?.abandon('client went away during the handshake') })
    const rawPath = req.getUrl()
    const rawQuery = req.getQuery() ?? ''
    const host = req.getHeader('host')
    const key = req.getHeader('sec-websocket-key')
    const extensions = req.getHeader('sec-websocket-extensions')
    const offered = req.getHeader('sec-websocket-protocol')
    const version = req.getHeader('sec-websocket-version')
    const origin = req.getHeader('origin')
    const sentId = req.getHeader(this.table.config.http.requestIdHeader)
    // The client's id when an HTTP request would keep it too (it is echoed on a refusal and forwarded).
    const requestId = keptRequestId(sentId) ? sentId : `${this.idPrefix}-${(++this.nextId).toString(36)}`
    const raw: string[] = []
    const xff: string[] = []
    const xfp: string[] = []
    req.forEach((k, v) => { raw.push(k, v); if (k === 'x-forwarded-for') xff.push(v); else if (k === 'x-forwarded-proto') xfp.push(v) })
    // The client as http.trustedProxies resolves it: what limits, logs, `hash` balancing and the backend see.
    const client = resolveClientIp(peer, xff, this.trusted)
    const remoteAddress = client.ip
    try {
      if (!this.accepting) throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', 'gateway is stopping')
      const table = this.table
      // One canonical target for routing, auth, limits and the backend leg (src/front/target.ts).
      if (rawPath.charCodeAt(0) !== 47 /* / */) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'request target must be origin-form (/path)')
      if (rawPath.includes('#') || rawQuery.includes('#')) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'a fragment (#) is not part of a request target')
      const { path, query } = canonicalTarget(rawPath, rawQuery, table.config.http.mergeSlashes)
      // `ferry.*` offers are Ferry's own (ferry/client); the rest are the application's.
      let ferryClient = false
      let resume: ResumeOffer | undefined
      const protocols: string[] = []
      for (const p of offered === '' ? [] : offered.split(',')) {
        const t = p.trim()
        if (t === '') continue
        if (!t.startsWith('ferry.')) protocols.push(t)
        else if (t === FERRY_SUBPROTOCOL) ferryClient = true
        else resume ??= parseResumeOffer(t)
      }
      const pass = this.deps.admit.ws(table, { host, path, clientIp: remoteAddress, origin, raw, key, version, ferryClient })
      if (isRefused(pass)) { this.refuse(res, context, key, requestId, pass, true); return }
      slot = pass.release
      const { route, upstream } = pass
      const settings = route.websocket ?? DEFAULT_WS_SETTINGS
      const headers: Record<string, string> = {}
      for (let i = 0; i < raw.length; i += 2) {
        const k = raw[i]!
        if (k !== 'x-forwarded-for' && settings.forwardHeaders.includes(k)) headers[k] = headers[k] === undefined ? raw[i + 1]! : `${headers[k]}, ${raw[i + 1]!}`
      }
      headers['x-forwarded-for'] = client.forwardedFor
      // A trusted proxy's own X-Forwarded-Proto goes on as it said it (it knows what the client used).
      headers['x-forwarded-proto'] = xfp.length > 0 && this.trusted.size > 0 && this.trusted.contains(normalizeIp(peer)) ? xfp.join(', ') : this.deps.proto ?? 'http'
      headers['x-forwarded-host'] = host
      headers[table.config.http.requestIdHeader] = requestId
      // Opens the session once the edge (auth, rate limits) let it through: synchronously when it can.
      const open = (a: Admitted | undefined): void => {
        if (a !== undefined) {
          for (const h of a.strip) delete headers[h]
          for (let i = 0; i < a.add.length; i += 2) headers[a.add[i]!] = a.add[i + 1]!
        }
        const hs: WsHandshake = {
          sessionId: `${this.idPrefix}.${(++this.nextId).toString(36)}`,
          route: route.name,
          path,
          query,
          host,
          remoteAddress,
          protocols,
          headers,
          settings,
          affinityKey: readAffinityKey(route.affinityKey, raw, query),
          // Read from the headers as auth left them, like an HTTP request's (a pin may come from a claim).
          split: route.split === undefined ? undefined : splitAsk(route.split, a === undefined ? raw : applyAdmitted(raw, a), query, remoteAddress),
          // A resume offer without `ferry.v1` itself is not a ferry client.
          ferry: ferryClient ? { resume } : undefined,
        }
        const s = new ClientSession(hs, this.sessionCounters(route, upstream.mode), settings.compression !== 'off', this)
        session = s
        // The session holds the slot from here: `forget` releases it.
        this.sessions.set(s, pass.release)
        slot = undefined
        upstream.open(hs, s).then((leg) => {
          if (aborted || s.state !== 'connecting') {
            this.forget(s)
            leg.clientClosed(1001, 'client went away during the handshake')
            return
          }
          s.leg = leg
          // Not inside res.cork(): uWS 20.30's cork() can mistake the freshly upgraded socket for the HTTP
          // one (the adopt realloc keeps its address) and close it right after `open` when stray bytes at
          // the HTTP state offset look like "Connection: close" (uNetworking/uWebSockets#1929, fixed after
          // 20.30; seen here as a random new session closed 1006). Inside the anchor's cork instead, so uWS
          // does not print its "writes must be made from within a corked callback" warning (cork-anchor.ts).
          this.anchor.run(() => { res.upgrade<WsUserData>({ session: s }, key, leg.protocol, extensions, context) })
        }, (err: unknown) => {
          this.forget(s)
          s.abandon('upstream refused')
          if (aborted) return
          const ferr = toFerryError(err, 'unexpected')
          if (ferr.code === 'FERRY_ERR_INTERNAL') this.deps.log.error({ err: ferr, route: route.name }, 'websocket upgrade failed')
          this.fail(res, route.name, ferr, requestId)
        })
      }
      /** Stage `guard`, then open; `inCallback`: still inside uWS's upgrade callback. */
      const guarded = (inCallback: boolean): void => {
        const guard = this.deps.admit.guardOf(table, route)
        if (guard === undefined) { open(undefined); return }
        const verdict = this.deps.admit.guard(guard, route, { method: 'GET', host, target: rawQuery === '' ? rawPath : `${rawPath}?${rawQuery}`, query, headers: raw, clientIp: remoteAddress, hasBody: false }, ferryClient && upstream.mode === 'mux')
        if (isRefused(verdict)) { giveBack(); this.refuse(res, context, key, requestId, verdict, inCallback); return }
        const admitted = verdict.admitted
        if (!(admitted instanceof Promise)) { open(admitted); return }
        admitted.then((a) => {
          if (aborted) return
          try { open(a) } catch (err) { giveBack(); this.refuse(res, context, key, requestId, { stage: 'guard', route, err: toFerryError(err, 'unexpected') }, false) }
        }, (r: Refused) => {
          giveBack()
          if (!aborted) this.refuse(res, context, key, requestId, r, false)
        })
      }
      const held = pass.held
      if (held === undefined) { guarded(true); return }
      // A worker of a pod borrowing the per-IP slot from its control plane: the guard runs after the answer.
      held.then((r) => {
        if (aborted) return
        if (r !== undefined) { giveBack(); this.refuse(res, context, key, requestId, r, false); return }
        try { guarded(false) } catch (err) { giveBack(); this.refuse(res, context, key, requestId, { stage: 'guard', route, err: toFerryError(err, 'unexpected') }, false) }
      }, (err: unknown) => {
        giveBack()
        if (!aborted) this.refuse(res, context, key, requestId, { stage: 'limit', route, err: toFerryError(err, 'unexpected') }, false)
      })
    } catch (err) {
      giveBack()
      const ferr = toFerryError(err, 'unexpected')
      if (ferr.code === 'FERRY_ERR_INTERNAL') this.deps.log.error({ err: ferr }, 'websocket upgrade failed')
      if (!aborted) this.fail(res, '', ferr, requestId)
    }
  }

  /** Topic fan-out through uWS's native pub/sub; returns the subscribers reached. */
  publish (topic: string, data: Uint8Array, binary: boolean): number {
    const pending = this.pendingTopics.get(topic)
    if (pending !== undefined) for (const s of pending) s.deliver(data, binary)
    const t = this.topics.get(topic)
    if (t === undefined || t.subs.size === 0) return pending?.size ?? 0
    // Session messages decoded before this PUBLISH (same link, same read) go out first.
    flushOutboxes()
    this.app.publish(topic, data, binary, this.compressTopics)
    // Topic messages have no credit: every 64 KiB published, look at the subscribers' queues and close
    // (1008) the ones past maxBackpressure before uWS's own cut at twice that.
    t.sinceCheck += data.length
    if (t.sinceCheck >= TOPIC_CHECK_BYTES) {
      t.sinceCheck = 0
      for (const s of [...t.subs]) s.checkBackpressure()
    }
    return t.subs.size + (pending?.size ?? 0)
  }

  hasSubscribers (topic: string): boolean {
    return (this.topics.get(topic)?.subs.size ?? 0) > 0 || this.pendingTopics.has(topic)
  }

  topicPending (topic: string, s: ClientSession, pending: boolean): void {
    let set = this.pendingTopics.get(topic)
    if (pending) {
      if (set === undefined) { set = new Set(); this.pendingTopics.set(topic, set) }
      set.add(s)
    } else if (set !== undefined) {
      set.delete(s)
      if (set.size === 0) this.pendingTopics.delete(topic)
    }
  }

  /** ClientSession joined / left a topic (the front's registry; uWS holds the real subscription). */
  topicJoined (topic: string, s: ClientSession): void {
    let t = this.topics.get(topic)
    if (t === undefined) { t = { subs: new Set(), sinceCheck: 0 }; this.topics.set(topic, t) }
    t.subs.add(s)
  }

  topicLeft (topic: string, s: ClientSession): void {
    const t = this.topics.get(topic)
    if (t === undefined) return
    t.subs.delete(s)
    if (t.subs.size === 0) this.topics.delete(topic)
  }

  /** Stops taking upgrades; the listen socket itself is closed by the HTTP front. */
  stopAccepting (): void {
    this.accepting = false
  }

  /** Scrape time: per-message counts into the counters. */
  collect (): void {
    for (const c of this.counters.values()) c.flush()
  }

  sessionClosed (s: ClientSession): void {
    this.forget(s)
  }

  /** The one way out of `sessions`: its concurrency-limit slot is released exactly once. */
  private forget (s: ClientSession): void {
    const release = this.sessions.get(s)
    if (release === undefined) return
    this.sessions.delete(s)
    release()
  }

  /** All sessions are gone: the sweep stops. */
  close (): void {
    clearInterval(this.sweep)
    this.anchor.close()
  }

  /** Closes every session (1001 going away, or 1012 at a drain's deadline); their legs close their backend sides. Returns how many. */
  closeAll (code: number, reason: string, errorCode = 'FERRY_ERR_GATEWAY_STOPPING'): number {
    const all = [...this.sessions.keys()]
    for (const s of all) s.closeClient(code, reason, errorCode)
    this.close()
    return all.length
  }

  /** Drain: migrates up to `n` open sessions, oldest first (sessions still in their handshake wait for a later wave). */
  migrate (n: number): { resumable: number, plain: number } {
    const moved = { resumable: 0, plain: 0 }
    for (const s of this.sessions.keys()) {
      if (moved.resumable + moved.plain >= n) break
      const kind = s.migrate()
      if (kind !== undefined) moved[kind]++
    }
    return moved
  }

  /** The open sessions of `route` that its split placed, with their legs (a split rebalance). */
  splitSessions (route: string): Array<{ leg: UpstreamLeg, split: SplitAsk }> {
    const out: Array<{ leg: UpstreamLeg, split: SplitAsk }> = []
    for (const s of this.sessions.keys()) {
      if (s.hs.route !== route || s.hs.split === undefined || s.state !== 'open' || s.leg === undefined) continue
      out.push({ leg: s.leg, split: s.hs.split })
    }
    return out
  }

  get sessionCount (): number {
    return this.sessions.size
  }

  status (): { sessions: number, byRoute: Record<string, number>, byMode: { ws: number, mux: number } } {
    const byRoute: Record<string, number> = {}
    const byMode = { ws: 0, mux: 0 }
    for (const s of this.sessions.keys()) {
      byRoute[s.hs.route] = (byRoute[s.hs.route] ?? 0) + 1
      byMode[s.mode]++
    }
    return { sessions: this.sessions.size, byRoute, byMode }
  }
}
