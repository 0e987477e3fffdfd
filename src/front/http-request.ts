// Imported: the global `Buffer` is a getter in Node 20, run on each use (every request here).
import { Buffer } from 'node:buffer'
import type { HttpRequest } from 'uWebSockets.js'
import { FerryError } from '../errors.js'
import { resolveClientIp } from '../edge/client-ip.js'
import { normalizeIp, type Networks } from '../net/address.js'
import { canonicalTarget } from './target.js'
import { uwsClosesAfter } from './uws.js'
import type { ClientRequest } from '../contracts/http.js'

/**
 * Request headers Ferry does not copy upstream as they came: hop-by-hop (RFC 9110 §7.6.1), ones undici
 * refuses to forward (expect), and the ones Ferry writes itself (one normalised Content-Length, the
 * X-Forwarded-* it sets). A switch, not a Set: uWS hands over a new string per header name per request,
 * which a Set would hash first.
 */
function notCopied (name: string): boolean {
  switch (name) {
    case 'connection': case 'keep-alive': case 'proxy-connection': case 'te': case 'trailer': case 'transfer-encoding':
    case 'upgrade': case 'expect': case 'http2-settings':
    case 'content-length': case 'x-forwarded-for': case 'x-forwarded-proto': case 'x-forwarded-host':
      return true
    default:
      return false
  }
}

/** No X-Forwarded-For or -Proto header (most requests): one shared empty list, none made per request. */
const NONE: readonly string[] = Object.freeze([])

export interface RequestOptions {
  requestIdHeader: string
  /** http.trustedProxies */
  trusted: Networks
  maxUrlBytes: number
  maxHeaderBytes: number
  /** http.mergeSlashes */
  mergeSlashes: boolean
  nextRequestId: () => string
  /** X-Forwarded-Proto: `https` on a TLS front (a trusted proxy's own value is passed on instead). */
  proto: 'http' | 'https'
}

/** RFC 9110 §5.1 field-name: a token. */
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
/** RFC 9110 §5.5: a control character other than HTAB makes a field value invalid (obs-text is allowed). */
const CTL_RE = /[\x00-\x08\x0a-\x1f\x7f]/
/** A value of printable ASCII and HTAB only passes every value check: one test for most values instead of three. */
const NOT_PLAIN_RE = /[^\t\x20-\x7e]/
/** Bytes of a header line besides name and value: `: ` and CRLF. */
const LINE_OVERHEAD = 4

/** The longest client request id kept as it came (a longer one is replaced by a generated id). */
const MAX_REQUEST_ID = 200

/**
 * A client's request id that is kept, forwarded and echoed: non-empty, at most 200 characters, and a valid
 * header value itself (no control character, nothing lost in UTF-8 decoding). readClientRequest checks the
 * last two for every value already, so its hot path tests the first two only.
 */
export function keptRequestId (v: string): boolean {
  return v !== '' && v.length <= MAX_REQUEST_ID && !CTL_RE.test(v) && !v.includes('\ufffd')
}

/**
 * The request id of a request readClientRequest refused, for its error answer and its log line: the
 * client's (the last one, as readClientRequest takes it) when keptRequestId, else a generated one. The
 * head is read a second time, on this error path only; `req` must still be valid (inside the handler).
 */
export function refusedRequestId (req: HttpRequest, opts: RequestOptions): string {
  let v = ''
  req.forEach((k, x) => { if (k === opts.requestIdHeader) v = x })
  return keptRequestId(v) ? v : opts.nextRequestId()
}

const HOST_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::\d{1,5})?$/

/**
 * Copies and checks the request synchronously (uWS invalidates `req` when the handler returns).
 * Throws FerryError for what uWS's parser lets through but a proxy must not forward: a target or head
 * over the size caps (414, 431); conflicting Content-Length values, a Transfer-Encoding other than one
 * final `chunked` (request smuggling: 400, or 501 for codings Ferry cannot pass on), a header name that
 * is not a token or a value with control characters (the backend's parser would reject it and reset a
 * pooled connection), a bad Host, a target that is not origin-form or carries a fragment (400).
 * What uWS 20.30 refuses itself never gets here (docs/edge.md lists it).
 * `peer` is who spoke HTTP to the front (ProxyGate: the TCP peer, or a PROXY header's source).
 */
export function readClientRequest (req: HttpRequest, opts: RequestOptions, peer: string): ClientRequest {
  const method = req.getCaseSensitiveMethod()
  const path = req.getUrl()
  const query = req.getQuery() ?? ''
  // Sizes first: nothing else is looked at in a request over the caps.
  const targetBytes = Buffer.byteLength(path) + (query === '' ? 0 : 1 + Buffer.byteLength(query))
  if (targetBytes > opts.maxUrlBytes) throw new FerryError('FERRY_ERR_URI_TOO_LONG', `request target of ${targetBytes} bytes exceeds http.maxUrlBytes ${opts.maxUrlBytes}`)
  const raw: string[] = []
  let headBytes = method.length + targetBytes + 12 // `GET /x HTTP/1.1\r\n`
  req.forEach((k, v) => { raw.push(k, v); headBytes += k.length + v.length + LINE_OVERHEAD })
  if (headBytes > opts.maxHeaderBytes) throw new FerryError('FERRY_ERR_HEADERS_TOO_LARGE', `request head of about ${headBytes} bytes exceeds http.maxHeaderBytes ${opts.maxHeaderBytes}`)

  let host = ''
  let hosts = 0
  let contentLength: number | undefined
  let codings: string[] | undefined
  let connectionTokens: string[] | undefined
  let uwsCloses = false
  let requestId = ''
  let xff: string[] | undefined
  let xfp: string[] | undefined
  /** Every value is ASCII (so is everything Ferry adds from them): nothing to convert for undici's latin1 writer. */
  let ascii = true
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!
    const v = raw[i + 1]!
    if (!TOKEN_RE.test(k)) throw new FerryError('FERRY_ERR_BAD_REQUEST', `header name ${JSON.stringify(k.slice(0, 40))} is not a token`)
    if (NOT_PLAIN_RE.test(v)) {
      if (CTL_RE.test(v)) throw new FerryError('FERRY_ERR_BAD_REQUEST', `control character in the value of header ${k}`)
      // uWS hands values over UTF-8-decoded: bytes that were not UTF-8 are gone (U+FFFD) and cannot be passed on.
      if (v.includes('\ufffd')) throw new FerryError('FERRY_ERR_BAD_REQUEST', `the value of header ${k} is not valid UTF-8`)
      ascii = false
    }
    switch (k) {
      case 'host':
        if (++hosts > 1) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'more than one Host header')
        host = v
        break
      case 'content-length': {
        // RFC 9112 §6.3: identical repeated values are one value; differing ones are an attack. A list
        // ("5, 5") is refused: uWS 20.30 cannot frame it and would cut the connection after the dispatch.
        if (!/^\d{1,15}$/.test(v)) throw new FerryError('FERRY_ERR_BAD_REQUEST', `bad Content-Length ${JSON.stringify(v.slice(0, 40))}`)
        const n = Number(v)
        if (contentLength !== undefined && contentLength !== n) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'conflicting Content-Length headers')
        contentLength = n
        break
      }
      case 'transfer-encoding':
        codings = (codings ?? []).concat(v.toLowerCase().split(',').map((c) => c.trim()))
        break
      case 'connection':
        if (connectionTokens === undefined && uwsClosesAfter(v)) uwsCloses = true
        connectionTokens = (connectionTokens ?? []).concat(v.toLowerCase().split(',').map((c) => c.trim()))
        break
      case 'x-forwarded-for':
        xff ??= []
        xff.push(v)
        break
      case 'x-forwarded-proto':
        xfp ??= []
        xfp.push(v)
        break
      default:
        if (k === opts.requestIdHeader) requestId = v
    }
  }
  let chunked = false
  if (codings !== undefined) {
    // RFC 9112 §6.3: chunked must be the final coding, applied once; else the length cannot be known.
    if (codings.at(-1) !== 'chunked' || codings.indexOf('chunked') !== codings.length - 1) {
      throw new FerryError('FERRY_ERR_BAD_REQUEST', `Transfer-Encoding ${JSON.stringify(codings.join(', ').slice(0, 60))} does not end in a single chunked`)
    }
    // Transfer-Encoding is hop-by-hop: another coding under chunked could not be passed on (§6.1: 501).
    if (codings.length > 1) throw new FerryError('FERRY_ERR_UNSUPPORTED_TRANSFER_CODING', `transfer coding ${JSON.stringify(codings.slice(0, -1).join(', ').slice(0, 60))} is not supported (only chunked)`)
    chunked = true
  }
  if (host === '' || !HOST_RE.test(host)) throw new FerryError('FERRY_ERR_BAD_REQUEST', host === '' ? 'missing Host header' : `bad Host header ${JSON.stringify(host.slice(0, 60))}`)
  if (path.charCodeAt(0) !== 47 /* / */) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'request target must be origin-form (/path)')
  if (path.includes('#') || query.includes('#')) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'a fragment (#) is not part of a request target')
  const target = canonicalTarget(path, query, opts.mergeSlashes)
  if (chunked && contentLength !== undefined) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'both Content-Length and Transfer-Encoding')
  // Control characters and lost bytes were refused above: the rest of keptRequestId.
  if (requestId === '' || requestId.length > MAX_REQUEST_ID) requestId = opts.nextRequestId()

  const client = resolveClientIp(peer, xff ?? NONE, opts.trusted)
  // A trusted proxy (one that terminated TLS, say) knows the scheme the client used: its value goes on as it said it.
  const fromProxy = opts.trusted.size > 0 && xfp !== undefined && opts.trusted.contains(normalizeIp(peer))
  const proto = fromProxy ? xfp!.join(', ') : opts.proto

  const headers: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!
    if (notCopied(k) || k === opts.requestIdHeader) continue
    // A client may name hop-by-hop headers in Connection, but not Host: without it undici sends the
    // backend's own address instead. (The other headers Ferry owns are added below, after this filter.)
    if (k !== 'host' && connectionTokens?.includes(k) === true) continue
    headers.push(k, raw[i + 1]!)
  }
  // One normalised Content-Length (the client may have sent `005`, or the same value twice).
  if (contentLength !== undefined) headers.push('content-length', String(contentLength))
  headers.push(
    'x-forwarded-for', client.forwardedFor,
    'x-forwarded-proto', proto,
    'x-forwarded-host', host,
    opts.requestIdHeader, requestId,
  )
  return {
    method,
    target: target.query === '' ? target.path : `${target.path}?${target.query}`,
    path: target.path,
    rawTarget: query === '' ? path : `${path}?${query}`,
    host,
    clientIp: client.ip,
    // A TLS front; else what the nearest hop says it received (the last element), believed from a trusted proxy only.
    secure: opts.proto === 'https' || fromProxy && proto.slice(proto.lastIndexOf(',') + 1).trim().toLowerCase() === 'https',
    requestId,
    headers,
    asciiHeaders: ascii,
    contentLength: chunked ? undefined : (contentLength ?? 0),
    chunked,
    close: uwsCloses || connectionTokens?.includes('close') === true,
  }
}
