import { STATUS_CODES } from 'node:http'
import type { HttpResponse } from 'uWebSockets.js'
import type { FerryError } from '../errors.js'

/**
 * A Ferry-generated response: JSON body with the stable error code; Retry-After on 503.
 *
 * With `close`, the connection ends after it and nothing the client sent after the request may be served:
 * the framing of what follows cannot be trusted (smuggling), or the body was left unread. uWS 20.30 does not
 * stop parsing a read when a response ends with closeConnection: a request pipelined behind the refused one
 * in the same read would still reach a handler. It does cut a connection whose next request arrives while
 * the previous response is still pending. So a closing response is written one loop turn later: bytes that
 * came in the same read as the refused request end the connection (the client gets no response, and no
 * request after the refused one is ever dispatched); otherwise the response goes out and uWS closes.
 *
 * `atHead`: called from the request handler itself, for a request that declared a Content-Length body.
 * Before that read ends uWS hands the handler what followed the head in it (onData, possibly nothing).
 * Nothing means nothing can be pipelined behind the request yet, so the answer is written right there,
 * in the same send as what uWS queued for the read: uWS 20.30 writes `100 Continue` for
 * `Expect: 100-continue` by itself before any handler runs, and a refusal written a loop turn later
 * arrives after it, so the client had already been invited to upload. Bytes after the head: a loop turn
 * later, as above.
 */
export function sendError (res: HttpResponse, status: number, err: FerryError, requestId: string, requestIdHeader: string, close: boolean, extraHeader?: readonly [string, string], atHead = false): void {
  const body = JSON.stringify({ error: { code: err.code, message: err.status >= 500 && err.code !== 'FERRY_ERR_QUEUE_FULL' && err.code !== 'FERRY_ERR_QUEUE_TIMEOUT' ? STATUS_CODES[status] : err.message, requestId } })
  const write = (): void => {
    res.cork(() => {
      res.writeStatus(`${status} ${STATUS_CODES[status] ?? ''}`)
      res.writeHeader('content-type', 'application/json')
      res.writeHeader(requestIdHeader, requestId)
      if (status === 503 && extraHeader?.[0] !== 'retry-after') res.writeHeader('retry-after', '1')
      if (extraHeader !== undefined) res.writeHeader(extraHeader[0], extraHeader[1])
      res.end(body, close)
    })
  }
  if (!close) { write(); return }
  let gone = false
  let answered = false
  const answer = (): void => {
    if (gone || answered) return
    answered = true
    try { write() } catch { try { res.close() } catch { /* already gone */ } }
  }
  res.onAborted(() => { gone = true })
  if (atHead) {
    let first = true
    res.onData((chunk) => {
      if (first && chunk.byteLength === 0) answer()
      first = false
    })
  }
  setImmediate(answer)
}
