import type { HttpResponse } from 'uWebSockets.js'
import type { FerryError, FerryErrorCode } from '../errors.js'
import type { Route } from '../routing/router.js'

/**
 * The contract between the HTTP front (which reads a client request off uWS and routes it) and the
 * HTTP upstream kind (which proxies it: src/upstream/http/). The front knows an upstream only as an
 * HttpTarget; the upstream knows the client only through the ClientRequest the front copied and the
 * uWS response it is handed.
 */

/** Everything Ferry needs from a client request, copied out of uWS's stack-allocated request object. */
export interface ClientRequest {
  readonly method: string
  /** Path and query in their canonical form (src/front/target.ts): what routing, auth and the backend see. */
  readonly target: string
  readonly path: string
  /** The target as uWS gave it, before canonicalisation: what an HMAC-signing client signed. */
  readonly rawTarget: string
  readonly host: string
  /** The client's address as resolved with http.trustedProxies (the TCP peer, or the source of an accepted PROXY header, unless a trusted proxy says otherwise). */
  readonly clientIp: string
  /**
   * The client reached Ferry over https: a TLS front, or the peer is one of http.trustedProxies and
   * says so in X-Forwarded-Proto (what a sticky cookie's `Secure` follows; the backend gets that
   * proxy's X-Forwarded-Proto as it said it).
   */
  readonly secure: boolean
  readonly requestId: string
  /** Flat `[name, value, name, value, …]` with hop-by-hop headers removed and X-Forwarded-* set. */
  readonly headers: string[]
  /** Every value in `headers` is ASCII: they go to a latin1 writer (undici) as they are (src/net/header-bytes.ts). */
  readonly asciiHeaders: boolean
  /** Declared body length; `undefined` with `chunked` true for a chunked body; 0 when there is none. */
  readonly contentLength: number | undefined
  readonly chunked: boolean
  /** The connection closes after this response: the client asked (`Connection: close`), or uWS will (a 5-byte first Connection value). */
  readonly close: boolean
}

/** What the edge decided for a request: the headers to send upstream, and the body digest a signature demands. */
export interface Admission {
  readonly headers: readonly string[]
  /** Hex SHA-256 the request body must have (HMAC-signed requests); checked before its last byte goes upstream. */
  readonly bodySha256?: string | undefined
}

/** An edge refusal: the error and the response header that goes with it (Retry-After, WWW-Authenticate). */
export interface Refusal {
  readonly err: FerryError
  readonly header?: readonly [string, string] | undefined
}

/** Shared by every exchange of a gateway: the drain controller reads and sets it. */
export interface HttpLifecycle {
  /** Draining: responses say `Connection: close`, so clients take their next request elsewhere. */
  draining: boolean
  /** Client requests being served now. */
  inFlight: number
  /** Client requests taken since start (each worker's share of a pod's traffic in /status). */
  served: number
}

/** The request body limits the front's `limits` enforce (src/edge/limits.ts), keyed on the client IP. */
export interface BodyLimits {
  /**
   * A body that streams into a backend connection while it arrives: a slot released once. In a worker of
   * a pod `held` may say the pod is asked (it resolves to the refusal, or to undefined once held).
   */
  takeStream: (ip: string) => FerryError | { readonly release: () => void, readonly held?: Promise<FerryError | undefined> | undefined }
  /**
   * Bytes of a body held in memory: refused (nothing counted), or counted and released by `releaseBody`
   * with the same total; a promise while a worker of a pod borrows for the client's budget (the bytes
   * count meanwhile, and stay counted until released whatever it resolves to).
   */
  chargeBody: (ip: string, bytes: number) => FerryError | undefined | Promise<FerryError | undefined>
  releaseBody: (ip: string, bytes: number) => void
  readonly retryAfter: readonly [string, string]
}

/**
 * How client request bodies are read (config `http`), shared by every exchange of a config: the
 * deadlines (bodyIdleMs, bodyTimeoutMs; 0: none), the minimum rate of streamed bodies
 * (minBodyRateBytesPerSec over minBodyRateWindowMs; 0: none) and the limits they are counted against.
 */
export interface BodyPolicy {
  readonly idleMs: number
  readonly totalMs: number
  readonly minRate: number
  readonly rateWindowMs: number
  readonly limits?: BodyLimits | undefined
}

/** What one request's route allows: maxBodyBytes, and bufferBodyBytes (bodies up to it are buffered). */
export interface BodySize {
  readonly maxBytes: number
  readonly bufferBytes: number
}

/** Counters of one HTTP upstream that the front also bumps: a request refused before its exchange exists counts on its route. */
export interface RequestCounters {
  requests: (route: string, status: number) => void
  error: (code: FerryErrorCode) => void
}

/** One client request handed to an upstream: nothing goes upstream before `start`. */
export interface ClientExchange {
  /** `gate`: the edge's verdict (a promise while it decides; a rejection with a Refusal answers the client); `verifyBody`: check the body against `bodySha256`. */
  start: (gate?: Admission | Promise<Admission | undefined>, verifyBody?: boolean) => void
}

/** What the front hands a routed request to: an HTTP upstream under the running config. */
export interface HttpTarget {
  readonly metrics: RequestCounters
  /** The exchange of one request; it owns `res` from now on and calls `release` once when it ends. */
  exchange: (res: HttpResponse, req: ClientRequest, route: Route, size: BodySize, policy: BodyPolicy, release: () => void) => ClientExchange
}
