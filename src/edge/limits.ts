import type { Counter } from 'prom-client'
import type { Config } from '../config/load.js'
import { FerryError } from '../errors.js'
import type { Metrics } from '../observability/metrics.js'
import type { PodIpCounts } from '../planes/ip-counts.js'
import { IpBytes, IpTable, takeIpSlot, type IpSlot } from './ip-slots.js'

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
 * One request's, session's or streamed body's hold on the limits (src/edge/ip-slots.ts): released once;
 * `held` while a worker of a pod borrows the per-IP slot, resolving to the refusal or to undefined.
 */
export type LimitSlot = IpSlot<FerryError>

/**
 * Concurrency limits of the HTTP/WebSocket front (config `limits`), keyed on the resolved client IP
 * (http.trustedProxies). uWS 20.30 gives JavaScript no hook at TCP accept, so what is limited is what
 * Ferry sees: HTTP requests in flight to upstreams, request bodies streaming into backend connections,
 * request body bytes held in memory, and WebSocket sessions (from the upgrade on).
 * `takeRequest`/`takeSession`/`takeStream` give a LimitSlot to release once; a `chargeBody` that returns
 * undefined or a promise must be matched by exactly one `releaseBody` with the same IP and amount. One
 * that returns an error took nothing. In a pod the per-IP figures of requests, sessions and streamed bodies are the
 * pod's (`pod`), buffered body bytes per IP too (counted in units of 1/64 of the figure).
 */
export class ConnectionLimits {
  private cfg: LimitsConfig
  private readonly http = new IpTable()
  private readonly ws = new IpTable()
  /** Requests whose body streams to a backend (larger than http.bufferBodyBytes) and is not complete yet. */
  private readonly streamed = new IpTable()
  /** Request body bytes held in memory (buffered bodies being read or waiting for a connection). */
  private readonly buffered: IpBytes
  private readonly refused: Record<LimitName, Counter.Internal>

  /**
   * `pod`: a worker of a pod, whose per-IP figures (requests, sessions, streamed bodies, buffered bytes) are the pod's, kept by the
   * control plane (src/planes/ip-counts.ts). Absent: this process is the whole gateway.
   */
  constructor (cfg: LimitsConfig, metrics: Metrics, private readonly pod?: PodIpCounts) {
    this.cfg = cfg
    this.buffered = new IpBytes(pod, 'body')
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
      metrics.bufferedBodyBytes.set(this.buffered.table.total)
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
    return takeIpSlot(this.http, ip, perIp, this.pod, 'http', this.requestRefused)
  }

  /** A request body that will stream into a backend connection while it arrives (held until its last byte). */
  takeStream (ip: string): FerryError | LimitSlot {
    return takeIpSlot(this.streamed, ip, this.cfg.maxStreamedBodiesPerIp, this.pod, 'stream', this.streamRefused)
  }

  /**
   * `bytes` more of a request body held in memory: refused past the gateway's or the client's budget
   * (nothing counted), else counted. In a worker of a pod the client's budget is the pod's: when the
   * worker must borrow for it, a promise of the refusal or undefined (counted either way until released).
   */
  chargeBody (ip: string, bytes: number): FerryError | undefined | Promise<FerryError | undefined> {
    const { maxBufferedBodyBytes: max, maxBufferedBodyBytesPerIp: perIp } = this.cfg
    if (max !== 0 && this.buffered.table.total + bytes > max) return this.refuse('http_buffered_bytes', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway buffers limits.maxBufferedBodyBytes ${held(max)} bytes of request bodies`)
    const now = this.buffered.charge(ip, bytes, perIp)
    if (now === true) return undefined
    if (now === false) return this.bytesRefused(ip)
    return now.then((ok) => ok ? undefined : this.bytesRefused(ip))
  }

  releaseBody (ip: string, bytes: number): void {
    this.buffered.release(ip, bytes)
  }

  takeSession (ip: string): FerryError | LimitSlot {
    const { maxWebSocketSessions: max, maxWebSocketSessionsPerIp: perIp } = this.cfg
    if (max !== 0 && this.ws.total >= max) return this.refuse('ws_sessions', 'FERRY_ERR_GLOBAL_LIMIT', `the gateway holds limits.maxWebSocketSessions ${held(max)} sessions`)
    return takeIpSlot(this.ws, ip, perIp, this.pod, 'ws', this.sessionRefused)
  }

  // The per-IP refusals, made once (takeIpSlot calls them only when it refuses).
  private readonly requestRefused = (ip: string): FerryError => this.refuse('http_in_flight_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} has limits.maxRequestsInFlightPerIp ${this.cfg.maxRequestsInFlightPerIp} requests in flight`)
  private readonly streamRefused = (ip: string): FerryError => this.refuse('http_streamed_bodies_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} streams limits.maxStreamedBodiesPerIp ${this.cfg.maxStreamedBodiesPerIp} request bodies`)
  private readonly bytesRefused = (ip: string): FerryError => this.refuse('http_buffered_bytes_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} has limits.maxBufferedBodyBytesPerIp ${this.cfg.maxBufferedBodyBytesPerIp} bytes of request bodies buffered${this.pod === undefined ? '' : ' in the pod'}`)
  private readonly sessionRefused = (ip: string): FerryError => this.refuse('ws_sessions_per_ip', 'FERRY_ERR_PER_IP_LIMIT', `${ip} holds limits.maxWebSocketSessionsPerIp ${this.cfg.maxWebSocketSessionsPerIp} sessions`)

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
      bufferedBodyBytes: this.buffered.table.total,
      bufferedClientIps: this.buffered.table.ips,
      wsSessions: this.ws.total,
      wsClientIps: this.ws.ips,
      // A worker of a pod: the per-IP slots the pod lent it (src/planes/ip-counts.ts).
      ...(this.pod === undefined ? {} : { podLeases: this.pod.status() }),
      ...this.cfg,
    }
  }
}
