import type { HttpRequest, HttpResponse } from 'uWebSockets.js'
import { FerryError } from '../errors.js'
import { formatAddress } from './address.js'

/** Everything Ferry needs from a client request, copied out of uWS's stack-allocated request object. */
export interface ClientRequest {
  readonly method: string
  /** Path and query as received (`/a/b?x=1`). */
  readonly target: string
  readonly path: string
  readonly host: string
  readonly clientIp: string
  readonly requestId: string
  /** Flat `[name, value, name, value, …]` with hop-by-hop headers removed and X-Forwarded-* set. */
  readonly headers: string[]
  /** Declared body length; `undefined` with `chunked` true for a chunked body; 0 when there is none. */
  readonly contentLength: number | undefined
  readonly chunked: boolean
  /** The client asked to close after this response (`Connection: close`). */
  readonly close: boolean
}

/** Hop-by-hop headers (RFC 9110 §7.6.1) plus ones undici refuses to forward (expect). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings'])

export interface RequestOptions {
  requestIdHeader: string
  trustForwardedFor: boolean
  nextRequestId: () => string
}

const HOST_RE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::\d{1,5})?$/

/**
 * Copies and checks the request synchronously (uWS invalidates `req` when the handler returns).
 * Throws FerryError('FERRY_ERR_BAD_REQUEST') for what uWS's parser lets through but a proxy must not
 * forward: conflicting Content-Length values (request smuggling), a bad Host, a non-origin-form target.
 */
export function readClientRequest (res: HttpResponse, req: HttpRequest, opts: RequestOptions): ClientRequest {
  const method = req.getCaseSensitiveMethod()
  const path = req.getUrl()
  const query = req.getQuery() ?? ''
  const raw: string[] = []
  req.forEach((k, v) => { raw.push(k, v) })
  const clientIp = formatAddress(res.getRemoteAddress())

  let host = ''
  let contentLength: number | undefined
  let chunked = false
  let connectionTokens: string[] | undefined
  let requestId = ''
  let xff = ''
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!
    const v = raw[i + 1]!
    switch (k) {
      case 'host':
        if (host !== '') throw new FerryError('FERRY_ERR_BAD_REQUEST', 'more than one Host header')
        host = v
        break
      case 'content-length': {
        if (!/^\d{1,15}$/.test(v)) throw new FerryError('FERRY_ERR_BAD_REQUEST', `bad Content-Length ${JSON.stringify(v.slice(0, 40))}`)
        const n = Number(v)
        if (contentLength !== undefined && contentLength !== n) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'conflicting Content-Length headers')
        contentLength = n
        break
      }
      case 'transfer-encoding':
        if (v.toLowerCase().split(',').map((s) => s.trim()).at(-1) !== 'chunked') throw new FerryError('FERRY_ERR_BAD_REQUEST', `unsupported Transfer-Encoding ${JSON.stringify(v.slice(0, 40))}`)
        chunked = true
        break
      case 'connection':
        connectionTokens = (connectionTokens ?? []).concat(v.toLowerCase().split(',').map((s) => s.trim()))
        break
      case 'x-forwarded-for':
        xff = xff === '' ? v : `${xff}, ${v}`
        break
      default:
        if (k === opts.requestIdHeader) requestId = v
    }
  }
  if (host === '' || !HOST_RE.test(host)) throw new FerryError('FERRY_ERR_BAD_REQUEST', host === '' ? 'missing Host header' : `bad Host header ${JSON.stringify(host.slice(0, 60))}`)
  if (path.charCodeAt(0) !== 47 /* / */) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'request target must be origin-form (/path)')
  if (chunked && contentLength !== undefined) throw new FerryError('FERRY_ERR_BAD_REQUEST', 'both Content-Length and Transfer-Encoding')
  if (requestId === '' || requestId.length > 200) requestId = opts.nextRequestId()

  const headers: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!
    if (HOP_BY_HOP.has(k) || k === 'x-forwarded-for' || k === 'x-forwarded-proto' || k === 'x-forwarded-host' || k === opts.requestIdHeader) continue
    if (connectionTokens?.includes(k) === true) continue
    headers.push(k, raw[i + 1]!)
  }
  headers.push(
    'x-forwarded-for', opts.trustForwardedFor && xff !== '' ? `${xff}, ${clientIp}` : clientIp,
    'x-forwarded-proto', 'http',
    'x-forwarded-host', host,
    opts.requestIdHeader, requestId,
  )
  return {
    method,
    target: query === '' ? path : `${path}?${query}`,
    path,
    host,
    clientIp,
    requestId,
    headers,
    contentLength: chunked ? undefined : (contentLength ?? 0),
    chunked,
    close: connectionTokens?.includes('close') === true,
  }
}
