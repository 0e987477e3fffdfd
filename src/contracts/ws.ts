import type { WebSocketRouteConfig } from '../config/schema.js'
import { readSource } from '../edge/source.js'
import type { SplitAsk } from '../routing/split.js'
import type { Upstream } from './upstream.js'

/**
 * The contract between the WebSocket front (which owns client sockets) and an upstream kind (which owns
 * the backend side of a session: a passthrough WebSocket or a mux stream). Neither side touches the
 * other's sockets: the front calls the leg, the leg calls the sink.
 */

/** Everything the upstream may know about a client's handshake, copied synchronously from uWS. */
export interface WsHandshake {
  /** Ferry's id for this session (logs, OPEN metadata `key` until affinity keys land). */
  readonly sessionId: string
  readonly route: string
  /** URL path, no query. */
  readonly path: string
  /** Raw query string without `?` ('' when none). */
  readonly query: string
  /** Host header as sent. */
  readonly host: string
  /** Client address (IPv4-mapped IPv6 normalised). */
  readonly remoteAddress: string
  /** Subprotocols the client offered, in its order (Sec-WebSocket-Protocol split on commas). */
  readonly protocols: readonly string[]
  /** The route's `websocket.forwardHeaders` that the client sent (lower-case names), plus x-forwarded-*. */
  readonly headers: Readonly<Record<string, string>>
  readonly settings: WebSocketRouteConfig
  /** The route's affinity key value for this client (from its cookie, header or query), if any. */
  readonly affinityKey: string | undefined
  /** The route's split (version-aware routing) with this client's key and pin; the upstream picks the subset. */
  readonly split: SplitAsk | undefined
  /**
   * The client offered the `ferry.v1` subprotocol (it uses `ferry/client`; src/client/wire.ts), with a
   * resume offer when it reconnects. Undefined for plain clients. `protocols` excludes the `ferry.*` offers.
   */
  readonly ferry: { readonly resume: ResumeOffer | undefined } | undefined
}

/** A reconnecting `ferry/client`'s offer: its token and the data messages it received and sent so far. */
export interface ResumeOffer {
  readonly token: string
  readonly received: number
  readonly sent: number
}

/** Reads a route's affinity key (`cookie:NAME`, `header:NAME`, `query:NAME`; `token` → none here) from a handshake; at most 256 characters. */
export function readAffinityKey (spec: string | undefined, rawHeaders: readonly string[], query: string): string | undefined {
  // `token`: the Ferry-issued key travels in the resume token (the mux upstream reads it), not in the handshake.
  if (spec === undefined || spec === 'token') return undefined
  const value = readSource(spec, rawHeaders, query)
  return value === undefined || value.length > 256 ? undefined : value
}

/** How the upstream leg talks to the client. Calls after the session closed are ignored. */
export interface ClientSink {
  /** Queues one message for the client; it is sent (copied by uWS) when the current backend read has been processed, together with the others for this client. `data` must stay unchanged until then. */
  deliver: (data: Uint8Array, binary: boolean) => void
  /** True while the client's socket holds more than the high watermark: stop granting backend credit (mux) or pause the backend socket (ws) until `UpstreamLeg.clientDrained`. */
  readonly congested: boolean
  /** Closes the client with this code and reason (the leg is finished: `clientClosed` is not called). */
  end: (code: number, reason: string, errorCode?: string) => void
  /** mux topics: the client joins / leaves an upstream-scoped uWS topic. */
  subscribe: (topic: string) => void
  unsubscribe: (topic: string) => void
}

/** The backend side of one session, as the front sees it. */
export interface UpstreamLeg {
  /** Subprotocol to answer the client with ('' for none). Read once, at upgrade. */
  readonly protocol: string
  /** Forwards one client message. `data` is valid only during the call: copy it if it is kept. */
  send: (data: Uint8Array, binary: boolean) => void
  /** Client→backend bytes this leg holds because the backend is not taking them (credit or socket full). */
  readonly buffered: number
  /** The client's socket drained below the low watermark after `congested` was true. */
  clientDrained: () => void
  /** The client's socket passed the high watermark (deliveries are batched, so this can come after `deliver` returned). */
  clientCongested?: () => void
  /** The client closed (or went away: 1006) or the front closed it; the leg closes its backend side. */
  clientClosed: (code: number, reason: string) => void
  /** Resumable legs only: drain is moving the session; tell the client (it is closed 1012 right after). */
  migrate?: () => void
}

/** How an upstream fans a topic message out to the gateway's clients (the uWS app's pub/sub). */
export interface TopicPublisher {
  /** Publishes to every client subscribed to `topic`; returns how many were subscribed. */
  publish: (topic: string, data: Uint8Array, binary: boolean) => number
  /** Some client is subscribed to `topic`. */
  hasSubscribers: (topic: string) => boolean
}

/** An upstream that can carry WebSocket sessions (`protocol: ws` or `protocol: mux`). */
export interface WsUpstream extends Upstream {
  readonly mode: 'ws' | 'mux'
  /**
   * Opens the backend side of a new session. Resolves once the backend can take it (passthrough: the
   * backend's handshake completed; mux: a link is ready and OPEN was sent); rejects with a FerryError
   * (its ERRORS status answers the client's upgrade). The sink's deliveries before the client upgrade
   * completes are buffered by the front.
   */
  open: (hs: WsHandshake, sink: ClientSink) => Promise<UpstreamLeg>
  /** No new sessions; open ones continue until they end. Resolves when the last is gone. */
  retire: () => Promise<void>
  /**
   * mux: a route split with `rebalance` changed its weights: move those of `sessions` (open sessions of
   * the route) that are outside their subset now, by backend handoff, paced. Returns how many it looks at.
   */
  rebalance?: (sessions: ReadonlyArray<{ readonly leg: UpstreamLeg, readonly split: SplitAsk }>) => number
  /** mux: the front's pub/sub, for the backend's PUBLISH frames. */
  bindPublisher?: (p: TopicPublisher) => void
}

/** WebSocket close codes a server may send (RFC 6455 §7.4; 1005/1006/1015 are never sent on the wire). */
export function sendableCloseCode (code: number, fallback = 1011): number {
  if (code === 1000 || code === 1001 || code === 1002 || code === 1003) return code
  if (code >= 1007 && code <= 1014) return code
  if (code >= 3000 && code <= 4999) return code
  if (code === 1005) return 1000
  return fallback
}

/** A close reason fits in 123 bytes of UTF-8; cut on a character boundary. */
export function closeReason (reason: string): string {
  if (Buffer.byteLength(reason) <= 123) return reason
  let s = reason.slice(0, 123)
  while (Buffer.byteLength(s) > 123) s = s.slice(0, -1)
  return s
}
