import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { Config } from '../config/load.js'
import type { AdminState } from '../drain/endpoint-drain.js'
import type { BoundPorts, WorkerRole } from '../gateway.js'
import type { AffinityCall } from './affinity.js'
import type { BucketCall } from './buckets.js'
import type { IpCall, IpToWorker } from './ip-counts.js'
import type { Budget } from './share.js'

/**
 * The control plane's side of the conversation with a worker process (Node's cluster IPC channel,
 * `advanced` serialization). Requests carry an `id` that the answer repeats.
 */
export type ToWorker =
  | { t: 'start', config: Config, role: WorkerRole }
  | { t: 'reload', id: number, config: Config, version: string, budget: Budget }
  | { t: 'budget', budget: Budget }
  | { t: 'split', id: number, route: string, weights: unknown }
  | { t: 'endpoint', id: number, upstream: string, address: string, admin: AdminState }
  | { t: 'metrics', id: number }
  /** The counters the console's rates difference (answered with TrafficTotals). */
  | { t: 'totals', id: number }
  | { t: 'drain', reason: string }
  | { t: 'hurry' }
  | { t: 'stop' }
  | { t: 'affinity-answer', id: number, body: unknown }
  | { t: 'bucket-answer', id: number, body: unknown }
  /** Per-IP leases: grants and requests to cede (src/planes/ip-counts.ts). */
  | { t: 'ip', batch: IpToWorker[] }

/** A worker's side: loaded (`hello`: messages sent before it would be lost), started (or not), a heartbeat with its status every beat, answers. */
export type FromWorker =
  | { t: 'hello' }
  | { t: 'ready', ports: BoundPorts }
  | { t: 'failed', code: string, message: string }
  | { t: 'beat', status: WorkerStatus }
  | { t: 'answer', id: number, body: unknown }
  | { t: 'metrics', id: number, metrics: Array<MetricObjectWithValues<MetricValue<string>>> }
  | { t: 'affinity', id: number, call: AffinityCall }
  | { t: 'bucket', id: number, call: BucketCall }
  /** Per-IP leases borrowed and returned, one turn's worth (src/planes/ip-counts.ts). */
  | { t: 'ip', calls: IpCall[] }

/** What a worker reports with each heartbeat: its Gateway's /status. */
export type WorkerStatus = Record<string, unknown> & {
  state: string
  clients: { httpRequestsInFlight: number, httpRequestsServed: number, webSocketSessions: number, tcpConnections: number }
  drain: { phase: string }
}

/** How often a worker sends its heartbeat (and status). */
export const BEAT_MS = 500
