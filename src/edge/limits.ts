import type { Counter } from 'prom-client'
import type { Config } from '../config/load.js'
import { FerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { IpScope, PodIpCounts } from '../planes/ip-counts.js'
import { IpTable, takeIpSlot } from './ip-slots.js'

export type LimitsConfig = Config['limits']

/** The `limit` label of ferry_limit_refused_total. */
export type LimitName = 'http_in_flight' | 'http_in_flight_per_ip' | 'ws_sessions' | 'ws_sessions_per_ip' |
  'http_streamed_bodies_per_ip' | 'http_buffered_bytes' | 'http_buffered_bytes_per_ip'

/**
 * How much of a pod-wide limit this process holds, for a refusal's message. A worker of a pod holds a
 * share of it (src/planes/share.ts), and a negative share is none of it for now (0 means no limit).
 */
function held (max: number): string {
  return max < 0 ? '0 (this worker\'s share of the pod\'s, for now)' : String(max)
}

/**
 * One request's or session's hold on the limits, given back once with `release` (a second call does
 * nothing). `held` is there when a pod had to be asked for a per-IP slot: it resolves to the refusal (the
 * slot was given back already) or to undefined (held). Until it resolves the slot counts as held here.
 */
export interface LimitSlot {
  readonly release: () => void
  readonly held?: Promise<FerryError | undefined>
}

/**
 * Concurrency limits of the HTTP/WebSocket front (config `limits`), keyed on the resolved client IP
 * (http.trustedProxies). uWS 20.30 gives JavaScript no hook at TCP accept, so what is limited is what
 * Ferry sees: HTTP requests in flight to upstreams, request bodies streaming into backend connections,
 * request body bytes held in memory, and WebSocket sessions (from the upgrade on).
 * `takeRequest`/`takeSession`/`takeStream` give a LimitSlot to release once; a `chargeBody` that returns
 * undefined must be matched by exactly one `releaseBody` with the same IP and amount. One that returns
 * an error took nothing. In a pod the per-IP figures of requests, sessions and streamed bodies are the
 * pod's (`pod`); buffered body bytes per IP are this process's.
 */
export class ConnectionLimits {
  private cfg: LimitsConfig
  private readonly http = new IpTable()
  private readonly ws = new IpTable()
  /** Requests whose body streams to a backend (larger than http.bufferBodyBytes) and is not complete yet. */
  private readonly streamed = new IpTable()
  /** Request body bytes held in memory (buffered bodies being read or waiting for a connection). */
  private readonly buffered = new IpTable()
  private readonly refused: Record<LimitName, Counter.Internal>

  /**
   * `pod`: a worker of a pod, whose per-IP counts of requests and sessions are the pod's, kept by the
   * control plane (src/planes/ip-counts.ts). Absent: this process is the whole gateway.
   */
  constructor (cfg: LimitsConfig, metrics: Metrics, private readonly pod?: PodIpCounts) {
    this.cfg = cfg
    const c = metrics.limitRefused
    this.refused = {
      http_in_flight: c.labels('http_in_flight'),
      http_in_flight_per_ip: c.labels('http_in_flight_per_ip'),
      ws_sessions: c.labels('ws_sessions'),
      ws_sessions_per_ip: c.labels('ws_sessions_per_ip'),
      http_streamed_bodies_per_ip: c.labels('http_streamed_bodies_per_ip'),
      http_buffered_bytes: c.labels('http_buffered_bytes'),
      http_buffered_bytes_per_ip: c.labels('http_buffered_bytes_per_ip'),
    }
    metrics.onCollect(() => {
      metrics.bufferedBodyBytes.set(this.buffered.total)
      metrics.streamedBodies.set(this.streamed.total)
    })
  }

  /** A reload: new limits apply to new requests and sessions; those counted stay counted. */
  configure (cfg: LimitsConfig): void {
    this.cfg = cfg
  }

  get retryAfter (): readonly [string, string] {
    return ['retry-after', String(this.cfg.retryAfterSec)]
  }

  takeRequest (ip: string): FerryError | LimitSlot {
    const { maxRequestsInFlight: max, maxRequestsInFlightPerIp: perIp } = this.cfg
    if (max !== 0 && this.http.total >= max) return this.refuse('http_in_flight', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway serves limits.maxRequestsInFlight ${held(max)} requests`)
    const refusal = (): FerryError => this.refuse('http_in_flight_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} has limits.maxRequestsInFlightPerIp ${perIp} requests in flight`)
    return this.slot(this.http, 'http', ip, perIp, refusal)
  }

  /** A request body that will stream into a backend connection while it arrives (held until its last byte). */
  takeStream (ip: string): FerryError | LimitSlot {
    const perIp = this.cfg.maxStreamedBodiesPerIp
    const refusal = (): FerryError => this.refuse('http_streamed_bodies_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} streams limits.maxStreamedBodiesPerIp ${perIp} request bodies`)
    return this.slot(this.streamed, 'stream', ip, perIp, refusal)
  }

  /** `bytes` more of a request body held in memory; refused past the gateway's or the client's budget. */
  chargeBody (ip: string, bytes: number): FerryError | undefined {
    const { maxBufferedBodyBytes: max, maxBufferedBodyBytesPerIp: perIp } = this.cfg
    if (max !== 0 && this.buffered.total + bytes > max) return this.refuse('http_buffered_bytes', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway buffers limits.maxBufferedBodyBytes ${held(max)} bytes of request bodies`)
    if (perIp > 0 && this.buffered.count(ip) + bytes > perIp) return this.refuse('http_buffered_bytes_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} has limits.maxBufferedBodyBytesPerIp ${perIp} bytes of request bodies buffered`)
    this.buffered.add(ip, bytes)
    return undefined
  }

  releaseBody (ip: string, bytes: number): void {
    this.buffered.remove(ip, bytes)
  }

  takeSession (ip: string): FerryError | LimitSlot {
    const { maxWebSocketSessions: max, maxWebSocketSessionsPerIp: perIp } = this.cfg
    if (max !== 0 && this.ws.total >= max) return this.refuse('ws_sessions', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway holds limits.maxWebSocketSessions ${held(max)} sessions`)
    const refusal = (): FerryError => this.refuse('ws_sessions_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} holds limits.maxWebSocketSessionsPerIp ${perIp} sessions`)
    return this.slot(this.ws, 'ws', ip, perIp, refusal)
  }

  /**
   * One slot of `ip` in `table` (src/edge/ip-slots.ts); in a worker of a pod with a per-IP figure set,
   * the pod's lease of that client too (`held` while the worker borrows).
   */
  private slot (table: IpTable, scope: IpScope, ip: string, perIp: number, refusal: () => FerryError): FerryError | LimitSlot {
    const s = takeIpSlot(table, ip, perIp, this.pod === undefined ? undefined : { pod: this.pod, scope })
    if (s === undefined) return refusal()
    if (s.held === undefined) return { release: s.release }
    return { release: s.release, held: s.held.then((ok) => ok ? undefined : refusal()) }
  }

  private refuse (limit: LimitName, code: 'FERRY_ERR_GLOBAL_LIMIT' | 'FERRY_ERR_PER_IP_LIMIT', msg: string): FerryError {
    this.refused[limit].inc()
    return new FerryError(code, `${msg}; retry in ${this.cfg.retryAfterSec} s`)
  }

  /** For /status: what is counted now, and how many client IPs the tables hold (0 when idle: no leak). */
  status (): object {
    return {
      httpInFlight: this.http.total,
      httpClientIps: this.http.ips,
      streamedBodies: this.streamed.total,
      bufferedBodyBytes: this.buffered.total,
      bufferedClientIps: this.buffered.ips,
      wsSessions: this.ws.total,
      wsClientIps: this.ws.ips,
      // A worker of a pod: the per-IP slots the pod lent it (src/planes/ip-counts.ts).
      ...(this.pod === undefined ? {} : { podLeases: this.pod.status() }),
      ...this.cfg,
    }
  }
}
