import type { Logger } from 'pino'
import { NO_LABELS, type Labels } from '../../config/labels.js'
import type { Counter } from 'prom-client'
import type { Endpoint } from '../../config/load.js'
import type { MuxUpstreamConfig } from '../../config/schema.js'
import type { EndpointSource } from '../../discovery/source.js'
import { FerryError } from '../../errors.js'
import { type ClientSink, type TopicPublisher, type UpstreamLeg, type WsHandshake, type WsUpstream } from '../../contracts/ws.js'
import type { ConnectionEnd } from '../../mux/connection.js'
import type { Metrics } from '../../observability/metrics.js'
import { Balancer, hashKey, within } from '../../routing/balancer.js'
import { EndpointSet, healthyAt, type SetMember } from '../endpoint-set.js'
import { PassiveHealth, type ActiveHealth } from '../health.js'
import { LinkSlot, type LinkOwner } from './link.js'
import { FERRY_TOPIC_SUFFIX, MuxLeg, ResumableLeg, type HandoffRequest, type LegMover } from './legs.js'
import { RateWindow } from '../../net/rate-window.js'
import type { AffinityPlacement } from '../../affinity/placement.js'
import type { RouteSplit, SplitAsk } from '../../routing/split.js'
import type { ResumeClaims, ResumeTokens } from '../../sessions/token.js'
import { Kind } from '../../client/wire.js'
import type { Histogram } from 'prom-client'
import { endpointDrainReason } from '../../drain/endpoint-drain.js'
import type { UpstreamTlsClient } from '../tls.js'

/**
 * One backend endpoint of a mux upstream: its link slots, passive health, and the topic scope of the
 * sessions it carries (a backend's PUBLISH reaches only the clients it subscribed itself, and each link
 * narrows the scope to its own sessions: see LinkSlot.topicPrefix).
 */
class MuxEndpoint implements SetMember, LinkOwner {
  readonly slots: LinkSlot[]
  readonly passive: PassiveHealth
  checked: ActiveHealth | undefined
  labels: Labels = NO_LABELS
  readonly topicPrefix: string
  /** The sessions whose stream is on this endpoint now (an operator drain moves them). */
  readonly legs = new Set<MuxLeg>()
  private readonly events: Record<'connected' | 'connect_failed' | 'lost' | 'goaway', Counter.Internal>

  constructor (readonly upstream: MuxUpstream, readonly endpoint: Endpoint) {
    const m = upstream.metrics
    this.passive = new PassiveHealth(upstream.name, endpoint.address, upstream.cfg.ejection, upstream.log, m)
    this.slots = Array.from({ length: upstream.cfg.pool.links }, (_, i) => new LinkSlot(i, this))
    this.topicPrefix = `${upstream.name}\u0001${endpoint.address}\u0001`
    const ev = (e: string): Counter.Internal => m.muxLinkEvents.labels(upstream.name, endpoint.address, e)
    this.events = { connected: ev('connected'), connect_failed: ev('connect_failed'), lost: ev('lost'), goaway: ev('goaway') }
  }

  get name (): string { return this.upstream.name }
  get address (): string { return this.endpoint.address }
  get cfg (): MuxUpstreamConfig { return this.upstream.cfg }
  get gatewayId (): string { return this.upstream.gatewayId }
  get log (): Logger { return this.upstream.log }
  get tls (): UpstreamTlsClient | undefined { return this.upstream.tls }

  /** Streams on all links (what least-streams balances). */
  get inflight (): number {
    let n = 0
    for (const s of this.slots) n += s.streams
    return n
  }

  acceptsAt (now: number): boolean {
    return healthyAt(this, now) && this.readyLink() !== undefined
  }

  /** Health check: a PING on the ready link with the fewest streams, answered by PONG. */
  async probe (): Promise<void> {
    const slot = this.readyLink()
    if (slot?.conn === undefined) throw new Error('no ready link')
    await slot.conn.ping()
  }

  /** Every link slot has stopped (after a retire: GOAWAY sent, last stream gone). */
  get stopped (): boolean {
    return this.slots.every((s) => s.state === 'stopped')
  }

  /** The ready link with the fewest streams whose socket is not backed up. */
  readyLink (): LinkSlot | undefined {
    let best: LinkSlot | undefined
    for (const s of this.slots) {
      if (s.state !== 'ready' || s.conn === undefined || !s.conn.writable) continue
      if (best === undefined || s.streams < best.streams) best = s
    }
    return best
  }

  linkReady (slot: LinkSlot): void {
    this.events.connected.inc()
    this.passive.succeeded('link connected')
    this.log.info({ endpoint: this.address, link: slot.index }, 'mux link ready')
    // A health check waiting for a ready link need not wait for the next interval.
    if (this.checked !== undefined && !this.checked.up) this.upstream.set.check(this)
    this.upstream.wake()
  }

  linkFailed (slot: LinkSlot, why: string): void {
    this.events.connect_failed.inc()
    this.passive.failed('link connect failures')
    this.log.debug({ endpoint: this.address, link: slot.index, why }, 'mux link connect failed')
  }

  linkLost (slot: LinkSlot, end: ConnectionEnd): void {
    this.events.lost.inc()
    this.log.warn({ endpoint: this.address, link: slot.index, code: end.code, why: end.message }, 'mux link lost; its sessions were closed 1012')
  }

  linkGoaway (slot: LinkSlot, reason: string): void {
    this.events.goaway.inc()
    this.log.info({ endpoint: this.address, link: slot.index, reason }, 'mux backend sent GOAWAY; link drains')
  }

  publish (scopedTopic: string, data: Buffer, binary: boolean): void {
    this.upstream.publish(scopedTopic, data, binary)
  }

  protocolError (code: string): void {
    this.upstream.protocolError(code)
  }

  /** A stream ended: a draining link closes once its last stream is gone. */
  afterStreamEnd (): void {
    for (const s of this.slots) if (s.state === 'draining') s.closeIfIdle()
  }

  /** The backend on this link resumes sessions (its HELLO says so). */
  static resumes (slot: LinkSlot): boolean {
    return slot.conn?.peer?.resume === true
  }
}

/** What a mux upstream shares with the gateway: the affinity store (through a placement) and resume tokens. */
export interface MuxUpstreamDeps {
  readonly gatewayId: string
  readonly placement?: AffinityPlacement
  readonly tokens?: ResumeTokens
  /** A route's split in the running config (a reload or an admin change replaces it), by route name. */
  readonly routeSplit?: (route: string) => RouteSplit | undefined
  /** TLS towards the endpoints (each link a TLS connection); undefined: plain. */
  readonly tls?: UpstreamTlsClient | undefined
}

/** A session a route split's rebalance may move: its leg and what its split asked when it opened. */
export interface SplitSession {
  readonly leg: UpstreamLeg
  readonly split: SplitAsk
}

/** How often a rebalance starts its next wave of handoffs (each wave: maxPerSec / 10 sessions). */
const REBALANCE_WAVE_MS = 100

/**
 * A `protocol: mux` upstream: `pool.links` links per endpoint, sessions as streams on the least-loaded
 * ready link of the endpoint the balancer picks. A session waits up to `timeouts.openMs` for a ready
 * link (links connect at start and reconnect with backoff), else its upgrade is answered 502.
 */
export class MuxUpstream implements WsUpstream, LegMover {
  readonly mode = 'mux'
  /** The endpoints, following the upstream's source: a removed one's links GOAWAY and close after their last stream. */
  readonly set: EndpointSet<MuxEndpoint>
  private readonly balancer: Balancer<MuxEndpoint>
  /** Rendezvous hashing of a session's affinity key: every pod picks the same endpoint for a key. */
  private readonly byKey: Balancer<MuxEndpoint>
  private waiters: Array<() => void> = []
  private publisher: TopicPublisher | undefined
  private closed = false
  private readonly published: Counter.Internal
  private readonly fanout: Counter.Internal
  private readonly stalls: { send: Counter.Internal, receive: Counter.Internal }
  private readonly protocolErrors = new Map<string, Counter.Internal>()
  private readonly resumeOutcomes = new Map<string, Counter.Internal>()
  private readonly resumeLatency: Histogram.Internal<'upstream'>
  private readonly replayed: { toClient: Counter.Internal, toUpstream: Counter.Internal }
  readonly gatewayId: string
  readonly tls: UpstreamTlsClient | undefined
  private readonly placement: AffinityPlacement | undefined
  private readonly tokens: ResumeTokens | undefined
  /** handoff.maxPerSec: one bucket for every session this upstream reopens elsewhere. */
  private readonly handoffPace: RateWindow
  private handoffsWaiting = 0
  private readonly handoffOutcomes = new Map<string, Counter.Internal>()
  private readonly handoffSeconds: Histogram.Internal<'upstream'>
  private readonly routeSplit: ((route: string) => RouteSplit | undefined) | undefined
  /** What each session's route split asked when it opened: where a handoff or a rebalance sends it now. */
  private readonly splitAsks = new WeakMap<MuxLeg, SplitAsk>()
  /** Sessions a rebalance still has to look at, and its wave timer (one rebalance at a time per upstream). */
  private rebalanceQueue: SplitSession[] = []
  private rebalanceTimer: NodeJS.Timeout | undefined

  constructor (readonly name: string, readonly cfg: MuxUpstreamConfig, readonly log: Logger, readonly metrics: Metrics, source: EndpointSource, deps: MuxUpstreamDeps) {
    this.gatewayId = deps.gatewayId
    this.tls = deps.tls
    this.routeSplit = deps.routeSplit
    this.handoffPace = new RateWindow(cfg.handoff.maxPerSec)
    this.handoffSeconds = metrics.muxHandoffSeconds.labels(name)
    this.placement = deps.placement
    this.tokens = deps.tokens
    this.resumeLatency = metrics.resumeSeconds.labels(name)
    this.replayed = { toClient: metrics.resumeReplayed.labels(name, 'to_client'), toUpstream: metrics.resumeReplayed.labels(name, 'to_upstream') }
    this.published = metrics.muxPublished.labels(name)
    this.fanout = metrics.muxFanout.labels(name)
    this.stalls = { send: metrics.muxCreditStalls.labels(name, 'to_upstream'), receive: metrics.muxCreditStalls.labels(name, 'to_client') }
    // Last: the set creates the endpoints of the source's current set at once (their links start connecting).
    this.set = new EndpointSet<MuxEndpoint>(name, source, {
      create: (endpoint) => {
        const ep = new MuxEndpoint(this, endpoint)
        for (const s of ep.slots) s.start()
        return ep
      },
      // Reload's retire, per endpoint: GOAWAY on each link, closed once its last stream ends, no reconnect.
      retire: (ep) => { for (const s of ep.slots) s.retire() },
      idle: (ep) => ep.stopped,
      close: async (ep) => { for (const s of ep.slots) s.stop() },
      probe: async (ep) => { await ep.probe() },
      changed: () => { this.wake() },
    }, cfg.healthCheck, log, metrics)
    const panic = cfg.whenAllUnhealthy === 'panic'
    this.balancer = new Balancer(this.set, cfg.balance === 'least-streams' ? 'least-connections' : cfg.balance, { panic, boundedLoadFactor: cfg.boundedLoadFactor })
    this.byKey = new Balancer(this.set, 'hash', { panic, boundedLoadFactor: cfg.boundedLoadFactor })
  }

  /** Active endpoints (in the set now). */
  get endpoints (): readonly MuxEndpoint[] {
    return this.set.active
  }

  bindPublisher (p: TopicPublisher): void {
    this.publisher = p
  }

  publish (topic: string, data: Buffer, binary: boolean): void {
    this.published.inc()
    const p = this.publisher
    if (p === undefined) return
    let n = p.publish(topic, data, binary)
    // ferry.v1 clients get their own copy, marked as a topic message (not numbered, not acknowledged).
    const ferryTopic = topic + FERRY_TOPIC_SUFFIX
    if (p.hasSubscribers(ferryTopic)) {
      const out = Buffer.allocUnsafe(data.length + 1)
      out[0] = Kind.TOPIC
      data.copy(out, 1)
      n += p.publish(ferryTopic, out, binary)
    }
    this.fanout.inc(n)
  }

  /** A ferry.v1 client broke the wire (shared by every leg of this upstream). */
  private readonly clientError = (code: string): void => { this.metrics.resumeClientErrors.labels(this.name, code).inc() }

  private resumeOutcome (outcome: string): void {
    let c = this.resumeOutcomes.get(outcome)
    if (c === undefined) { c = this.metrics.resumes.labels(this.name, outcome); this.resumeOutcomes.set(outcome, c) }
    c.inc()
  }

  protocolError (code: string): void {
    let c = this.protocolErrors.get(code)
    if (c === undefined) { c = this.metrics.muxProtocolErrors.labels(this.name, code); this.protocolErrors.set(code, c) }
    c.inc()
  }

  /** A link became ready: sessions waiting for one try again. */
  wake (): void {
    const w = this.waiters
    this.waiters = []
    for (const fn of w) fn()
  }

  async open (hs: WsHandshake, sink: ClientSink): Promise<UpstreamLeg> {
    if (this.closed) throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', 'upstream is closing')
    const started = Date.now()
    const refused = this.set.refusal(started, this.cfg.whenAllUnhealthy)
    if (refused !== undefined) throw refused
    // A ferry/client client: resumable if a link's backend resumes. Its token, when it offers one, must be ours.
    const ferry = hs.ferry !== undefined && this.tokens !== undefined
    const offer = ferry ? hs.ferry!.resume : undefined
    let claims: ResumeClaims | undefined
    let refusal: string | undefined
    if (offer !== undefined) {
      const c = this.tokens!.open(offer.token)
      refusal = typeof c === 'string' ? c : c.u !== this.name ? 'wrong_upstream' : undefined
      if (refusal !== undefined) this.resumeOutcome(refusal)
      else claims = c as ResumeClaims
    }
    // Where the session goes: the key's recorded endpoint (affinity store), else rendezvous hashing of
    // the key (every pod agrees), else the balance policy.
    const placementKey = claims?.k ?? hs.affinityKey ?? (ferry ? hs.sessionId : undefined)
    // A fresh ferry/client session's key is its new session id: nothing can be recorded for it yet.
    const lookup = claims !== undefined || hs.affinityKey !== undefined
    // A resume goes back to the endpoint its token names, where the session lives (older tokens name none).
    const tokenHome = claims?.a !== undefined ? this.set.get(claims.a) : undefined
    const known = tokenHome === undefined && lookup && this.placement !== undefined ? await this.placement.recorded(placementKey!) : undefined
    const recorded = tokenHome ?? (known !== undefined ? this.set.get(known) : undefined)
    const keyed = placementKey !== undefined
    const hashed = keyed ? hashKey(placementKey) : this.cfg.balance === 'hash' ? hashKey(hs.remoteAddress) : undefined
    const balancer = keyed ? this.byKey : this.balancer
    const deadline = started + this.cfg.timeouts.openMs
    let counted = false
    for (;;) {
      if (this.closed) throw new FerryError('FERRY_ERR_GATEWAY_STOPPING', 'upstream is closing')
      const now = Date.now()
      // The route's split narrows a new session to a label subset (counted once, however long it waits for
      // a link). A resume is not split again: it goes where the session lives, and the split only guides
      // the guess when nothing says where that is.
      const subset = hs.split?.split.assign(hs.split, this.set.active, now, undefined, claims === undefined && !counted)
      counted = true
      // A new session's recorded key endpoint outside that subset is passed over: new sessions follow the split.
      const home = recorded !== undefined && (claims !== undefined || subset === undefined || subset.matches(recorded.labels))
        ? recorded
        : claims !== undefined ? balancer.pick(Infinity, now, undefined, hashed, subset) : undefined
      let owner: MuxEndpoint | undefined
      // A session that lives somewhere (a resume, or a key with a record) waits for that endpoint's link
      // unless the endpoint is ejected; others take any endpoint with a ready link.
      // A recorded home that left the set (or is not healthy) is not waited for.
      if (home !== undefined && this.set.get(home.address) === home && healthyAt(home, now)) owner = home.readyLink() !== undefined ? home : undefined
      else {
        const picked = balancer.pick(Infinity, now, undefined, hashed, subset)
        // Panic (the balancer fell back to an endpoint without a ready link): any endpoint that has one.
        // (whenAllUnhealthy: fail: the balancer picks only healthy endpoints with a ready link, or none.)
        owner = picked?.acceptsAt(now) === true
          ? picked
          : this.cfg.whenAllUnhealthy === 'panic' ? this.set.active.find((e) => e.readyLink() !== undefined && within(e, subset)) ?? this.set.active.find((e) => e.readyLink() !== undefined) : undefined
      }
      const slot = owner?.readyLink()
      if (owner !== undefined && slot?.conn !== undefined) {
        const leg = await this.openOn(owner, slot, hs, sink, { ferry, claims, refusal, offer, placementKey, known, started, deadline })
        if (leg !== undefined) return leg
      }
      const left = deadline - Date.now()
      if (left <= 0 || this.closed) {
        throw new FerryError('FERRY_ERR_MUX_NO_LINK', `no ready mux link to ${home?.address ?? `any endpoint of ${this.name}`} within ${this.cfg.timeouts.openMs} ms`)
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { this.waiters = this.waiters.filter((w) => w !== done); resolve() }, left)
        const done = (): void => { clearTimeout(timer); resolve() }
        this.waiters.push(done)
      })
    }
  }

  /** Opens the session's stream on `slot`; undefined when the link cannot take it now (try again). */
  private async openOn (owner: MuxEndpoint, slot: LinkSlot, hs: WsHandshake, sink: ClientSink, o: {
    ferry: boolean, claims: ResumeClaims | undefined, refusal: string | undefined, offer: { received: number, sent: number } | undefined
    placementKey: string | undefined, known: string | undefined, started: number, deadline: number
  }): Promise<UpstreamLeg | undefined> {
    const appProtocol = hs.settings.subprotocols.find((p) => hs.protocols.includes(p)) ?? ''
    const resumable = o.ferry && MuxEndpoint.resumes(slot)
    if (o.offer !== undefined && o.claims !== undefined && !resumable) this.resumeOutcome('no_resume')
    const key = o.placementKey ?? hs.sessionId
    const meta = {
      key, session: hs.sessionId, path: hs.path, query: hs.query, headers: hs.headers, remoteAddress: hs.remoteAddress, protocol: appProtocol, route: hs.route,
      ...(resumable ? { resumable: true } : {}),
      ...(resumable && o.claims !== undefined ? { resume: { session: o.claims.s, epoch: o.claims.e, received: o.offer!.received } } : {}),
    }
    if (!resumable) {
      const leg = new MuxLeg(appProtocol, sink, slot, this.stalls)
      const stream = slot.conn!.openStream(meta, leg.events)
      if (stream === undefined) return undefined
      leg.stream = stream
      leg.meta = meta
      leg.address = owner.address
      leg.mover = this
      leg.home = owner.legs
      owner.legs.add(leg)
      if (hs.split !== undefined) this.splitAsks.set(leg, hs.split)
      if (hs.affinityKey !== undefined) this.track(leg, key, owner.address, o.known, 0)
      return leg
    }
    const leg = new ResumableLeg(appProtocol, sink, slot, this.stalls, this.tokens!, { k: key, u: this.name, a: owner.address }, o.offer?.received ?? 0, o.refusal)
    leg.onClientError = this.clientError
    const stream = slot.conn!.openStream(meta, leg.events)
    if (stream === undefined) return undefined
    leg.stream = stream
    // A handoff reopens it with this metadata: the session continues (handoff.resume), it does not resume.
    const { resume: _resume, ...next } = meta
    leg.meta = next
    leg.address = owner.address
    leg.mover = this
    leg.home = owner.legs
    owner.legs.add(leg)
    if (hs.split !== undefined) this.splitAsks.set(leg, hs.split)
    // The client is upgraded once the backend said whether the session resumed.
    let timer: NodeJS.Timeout | undefined
    let why = `did not accept the session within ${this.cfg.timeouts.openMs} ms`
    const accepted = await Promise.race([
      leg.accepted,
      new Promise<undefined>((resolve) => { timer = setTimeout(() => { resolve(undefined) }, Math.max(1, o.deadline - Date.now())) }),
    ]).catch((err: Error) => { why = err.message; return undefined }).finally(() => { clearTimeout(timer) })
    if (accepted === undefined) {
      // DETACH, not RESET: a resume the backend accepted late stays parked (the client retries it).
      stream.detach('no ACCEPT in time')
      throw new FerryError('FERRY_ERR_MUX_NO_LINK', `backend ${owner.address}: ${why}`)
    }
    if (o.claims !== undefined) {
      this.resumeOutcome(accepted.resumed ? 'resumed' : accepted.reason ?? 'unknown')
      if (accepted.resumed) {
        this.resumeLatency.observe((Date.now() - o.started) / 1000)
        this.replayed.toClient.inc(accepted.replayed)
        this.replayed.toUpstream.inc(Math.max(0, o.offer!.sent - accepted.received))
      }
    }
    this.track(leg, key, owner.address, o.known, accepted.epoch)
    return leg
  }

  // ---- backend handoff (LegMover) ------------------------------------------------------------------

  get handoffTimeoutMs (): number {
    return this.cfg.handoff.timeoutMs
  }

  get failover (): boolean {
    return this.cfg.handoff.failover && !this.closed
  }

  /**
   * Reopens `leg`'s session on another endpoint: waits its turn under handoff.maxPerSec, then for a
   * ready link of an endpoint other than the one it leaves (that one too if it is the only one with a
   * ready link: a restarted process), up to timeouts.openMs. Same key, same session id; OPEN carries
   * `handoff` (state, where from, topics). The placement record follows the session.
   */
  async move (leg: MuxLeg, req: HandoffRequest): Promise<void> {
    const from = this.set.get(leg.address)
    this.handoffsWaiting++
    try {
      for (;;) {
        if (this.closed) throw new FerryError('FERRY_ERR_HANDOFF_FAILED', `upstream ${this.name} is closing`)
        const wait = this.handoffPace.take(performance.now())
        if (wait === 0) break
        await new Promise((resolve) => setTimeout(resolve, wait))
      }
    } finally {
      this.handoffsWaiting--
    }
    const key = String(leg.meta.key ?? '')
    const hashed = key !== '' ? hashKey(key) : undefined
    const deadline = Date.now() + this.cfg.timeouts.openMs
    const ask = this.currentAsk(leg)
    for (;;) {
      if (leg.state === 'closed') throw new FerryError('FERRY_ERR_CLIENT_ABORTED', 'client left during the handoff')
      if (this.closed) throw new FerryError('FERRY_ERR_HANDOFF_FAILED', `upstream ${this.name} is closing`)
      const now = Date.now()
      const balancer = key !== '' ? this.byKey : this.balancer
      // A session of a route with a split goes to the subset its key is assigned now (after a weight
      // change: its new subset), falling back as a new session would. Not counted: it is not a new session.
      const subset = ask?.split.assign(ask, this.set.active, now, from, false)
      let owner = balancer.pick(Infinity, now, from, hashed, subset)
      if (owner?.acceptsAt(now) !== true) owner = this.set.active.find((e) => e !== from && e.acceptsAt(now) && within(e, subset)) ?? this.set.active.find((e) => e !== from && e.acceptsAt(now)) ?? (from?.acceptsAt(now) === true ? from : undefined)
      const slot = owner?.readyLink()
      // A resumable session goes only where the backend resumes and the link's handoff carries resume state.
      if (owner !== undefined && slot?.conn !== undefined && (!(leg instanceof ResumableLeg) || (slot.handoffResume && MuxEndpoint.resumes(slot)))) {
        const meta = fitOpen({
          ...leg.meta,
          handoff: req.lost
            ? { lost: true, from: leg.address, topics: req.topics }
            : { state: req.state, from: leg.address, topics: req.topics, ...(req.stateError !== undefined ? { stateError: req.stateError } : {}), ...(req.resume !== undefined ? { resume: req.resume } : {}) },
        }, slot.conn.peer?.maxFrameBytes ?? 0)
        const stream = slot.conn.openStream(meta, leg.nextEvents())
        if (stream !== undefined) {
          const old = leg.address
          leg.rebind(stream, slot, owner.address)
          leg.home = owner.legs
          owner.legs.add(leg)
          // Tracked sessions (an affinity key) have a record: it follows the session to its new home.
          if (this.placement !== undefined && leg.onFinished !== undefined && typeof leg.meta.key === 'string') this.placement.moved(leg.meta.key, owner.address)
          this.log.debug({ session: leg.meta.session, from: old, to: owner.address, lost: req.lost, why: req.why }, 'session moved to another backend')
          return
        }
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new FerryError('FERRY_ERR_HANDOFF_FAILED', `no other endpoint of ${this.name} with a ready link within ${this.cfg.timeouts.openMs} ms`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { this.waiters = this.waiters.filter((w) => w !== done); resolve() }, Math.min(left, 100))
        const done = (): void => { clearTimeout(timer); resolve() }
        this.waiters.push(done)
      })
    }
  }

  /** What `leg`'s key asks of its route's split now: the running config's split of its route (none if it has none any more). */
  private currentAsk (leg: MuxLeg): SplitAsk | undefined {
    const ask = this.splitAsks.get(leg)
    if (ask === undefined) return undefined
    const split = this.routeSplit !== undefined ? this.routeSplit(ask.split.route) : ask.split
    return split === undefined ? undefined : split === ask.split ? ask : { split, key: ask.key, pin: ask.pin }
  }

  /**
   * A route split with `rebalance` changed: its open sessions on this upstream whose endpoint is outside
   * the subset their key is assigned now move there by backend handoff, at most handoff.maxPerSec a
   * second (waves every 100 ms; each session is looked at again when its wave comes, against the split
   * running then). Sessions that cannot be handed over (a backend that does not speak handoff, or, for a
   * resumable session, does not carry resume state) stay. A newer rebalance replaces what is left of this one. Returns how many
   * sessions it will look at.
   */
  rebalance (sessions: ReadonlyArray<SplitSession>): number {
    this.rebalanceQueue = sessions.filter((s) => s.leg instanceof MuxLeg && s.leg.mover === this)
    if (this.rebalanceTimer === undefined && this.rebalanceQueue.length > 0) {
      this.rebalanceTimer = setInterval(() => { this.rebalanceWave() }, REBALANCE_WAVE_MS)
      this.rebalanceTimer.unref()
      this.rebalanceWave()
    }
    return this.rebalanceQueue.length
  }

  private rebalanceWave (): void {
    let budget = Math.max(1, Math.ceil(this.cfg.handoff.maxPerSec * REBALANCE_WAVE_MS / 1000))
    const now = Date.now()
    while (budget > 0 && this.rebalanceQueue.length > 0 && !this.closed) {
      const mux = this.rebalanceQueue.shift()!.leg as MuxLeg
      const ask = this.currentAsk(mux)
      const at = this.set.get(mux.address)
      if (ask === undefined || at === undefined) continue
      // The key's subset now, its own endpoint counted (a session where it belongs stays).
      const subset = ask.split.assign(ask, this.set.active, now, undefined, false)
      // Already in its subset, or nowhere better to go (no subset has an endpoint that takes sessions now).
      if (subset === undefined || subset.matches(at.labels)) continue
      if (!mux.startHandoff(`rebalance to subset ${subset.name}`)) continue
      subset.rebalanced()
      budget--
    }
    if (this.rebalanceQueue.length === 0 || this.closed) {
      this.rebalanceQueue = []
      if (this.rebalanceTimer !== undefined) clearInterval(this.rebalanceTimer)
      this.rebalanceTimer = undefined
    }
  }

  handoffDone (leg: MuxLeg, outcome: 'moved' | 'lost_moved' | 'failed' | 'client_gone', ms: number, err?: Error): void {
    let c = this.handoffOutcomes.get(outcome)
    if (c === undefined) { c = this.metrics.muxHandoffs.labels(this.name, outcome); this.handoffOutcomes.set(outcome, c) }
    c.inc()
    if (outcome === 'moved' || outcome === 'lost_moved') this.handoffSeconds.observe(ms / 1000)
    if (outcome === 'failed') this.log.warn({ session: leg.meta.session, from: leg.address, err: err?.message }, 'session could not be moved to another backend; client closed 1012')
  }

  /** Records where the key's session lives, for as long as the leg lasts. */
  private track (leg: MuxLeg, key: string, address: string, known: string | undefined, epoch: number): void {
    const placement = this.placement
    if (placement === undefined) return
    placement.opened(key, address, known, epoch)
    leg.onFinished = () => { placement.closed(key) }
  }

  /**
   * Moves up to `n` sessions off the endpoint at `address` (the operator drains it; the gateway's
   * EndpointDrainer paces the calls and already keeps new sessions off it): by live handoff (FREEZE,
   * the backend's HANDOFF, the session reopened elsewhere with its client connected) where the link
   * speaks it (for resumable sessions: carries resume state); the others are closed 1012 with a retry hint
   * (endpointDrainReason), their backend told CLOSE 1012. Returns how many it started moving.
   */
  moveSessionsOff (address: string, n: number): number {
    let moved = 0
    for (const ep of this.set.all()) {
      if (ep.address !== address) continue
      for (const leg of [...ep.legs]) {
        if (moved >= n) return moved
        if (leg.state !== 'open') continue // already moving
        // Live handoff where the link speaks it: the client stays connected (docs/backend-handoff.md).
        if (leg.startHandoff('endpoint draining')) { moved++; continue }
        // Else (a backend that predates handoff, or its resumable handoff): CLOSE goes to the backend, then
        // the leg hears the end like any local one: its client is closed 1012 after what the backend sent.
        const stream = leg.stream
        if (stream.state !== 'open') continue
        const reason = endpointDrainReason()
        stream.close(1012, reason)
        stream.events.end(1012, reason, 'reset', 'FERRY_ERR_ENDPOINT_DRAINING')
        moved++
      }
    }
    return moved
  }

  /** No new sessions; each link says GOAWAY and closes when its last stream ends (no reconnect). */
  async retire (): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.wake()
    await this.set.retireAll()
    this.placement?.stop()
  }

  async close (kind: 'flush' | 'abort'): Promise<void> {
    void kind // sessions were closed by the front already; links say GOAWAY and go
    this.closed = true
    this.placement?.stop()
    this.wake()
    await this.set.close('abort')
  }

  collect (): void {
    const m = this.metrics
    let links = 0
    this.set.collect()
    for (const ep of this.set.all()) {
      const byState: Record<string, number> = { connecting: 0, ready: 0, draining: 0, backoff: 0 }
      for (const s of ep.slots) {
        byState[s.state] = (byState[s.state] ?? 0) + 1
        m.muxStreamsPerLink.labels(this.name, ep.address, String(s.index)).set(s.streams)
        if (s.state === 'ready' || s.state === 'draining') links++
      }
      for (const [state, n] of Object.entries(byState)) m.muxLinks.labels(this.name, ep.address, state).set(n)
    }
    m.upstreamConnections.labels('upstream', 'mux', this.name).set(links)
    m.muxHandoffsWaiting.labels(this.name).set(this.handoffsWaiting)
  }

  labelled (): Array<{ labels: Labels, healthy: boolean }> {
    return this.set.labelled(Date.now())
  }

  status (): object {
    return {
      name: this.name,
      protocol: 'mux',
      balance: this.cfg.balance,
      whenAllUnhealthy: this.cfg.whenAllUnhealthy,
      source: this.set.sourceStatus(),
      tls: this.tls?.status() ?? null,
      endpoints: this.set.status((ep) => ({
        streams: ep.inflight,
        links: ep.slots.map((s) => s.status()),
      })),
    }
  }
}

/**
 * A handoff OPEN must fit the new backend's maxFrameBytes (a larger frame would end its whole link).
 * What gives way, in order: the oldest unacknowledged messages of a resumable session's resume state
 * (its `acked` moves up: a resume that needs them is refused), then the application state
 * (`stateError: "too_large"`).
 */
export function fitOpen (meta: Record<string, unknown> & { handoff: Record<string, unknown> }, maxFrameBytes: number): typeof meta {
  const size = (): number => Buffer.byteLength(JSON.stringify(meta))
  let over = size() - maxFrameBytes
  if (over <= 0 || maxFrameBytes <= 0) return meta
  const r = meta.handoff.resume as { acked?: unknown, unacked?: unknown } | undefined
  if (r !== undefined && r !== null && typeof r === 'object' && Array.isArray(r.unacked) && typeof r.acked === 'number') {
    const unacked = r.unacked as unknown[]
    let drop = 0
    while (over > 0 && drop < unacked.length) over -= JSON.stringify(unacked[drop++]).length + 1
    meta = { ...meta, handoff: { ...meta.handoff, resume: { ...r, acked: r.acked + drop, unacked: unacked.slice(drop) } } }
    if (over <= 0) return meta
  }
  if ('state' in meta.handoff) {
    const { state: _state, ...rest } = meta.handoff
    meta = { ...meta, handoff: { ...rest, stateError: 'too_large' } }
  }
  return meta
}
