import type { Socket } from 'node:net'
import type { SecureContext } from 'node:tls'
import { buildConnector } from 'undici'

/**
 * A backend's interim (1xx) responses, removed from the byte stream before undici's parser sees them.
 *
 * RFC 9110 §15.2: a client must be able to parse 1xx responses before the final one even when it did
 * not ask for them. undici 7 (client-h1.js, onHeadersComplete) destroys the connection on any
 * `100 Continue` ("bad response": the client got 502 and the endpoint counted a failure), whatever the
 * request. Ferry never sends `Expect` upstream, so every 100 it gets is unsolicited; uWS 20.30 cannot
 * write an interim response to the client either (one status line per response), so they are dropped
 * here, 102 and 103 too, and the final response goes through. 101 is not interim for this purpose (it
 * ends HTTP on the connection; undici refuses it on a request that did not ask to upgrade).
 *
 * How a response start is known: the pool runs pipelining 1, so a response begins only after a request
 * head was written, and undici writes every head as one latin1 string starting with the method (body
 * chunks are Buffers, chunk framing strings start with CR). From such a write until the first byte of
 * a final status line, reads are inspected; after it they pass untouched (one boolean per read).
 */

/** undici's default maxHeaderSize: an interim head larger than this goes to undici, which refuses it. */
const MAX_INTERIM_BYTES = 16 * 1024
const PREFIX = Buffer.from('HTTP/1.')
const CRLFCRLF = Buffer.from('\r\n\r\n')

/**
 * For bytes at the start of a response: -1 when they are not an interim response (pass them on),
 * 0 when more bytes are needed to tell, else the length of the interim response head to drop.
 */
export function interimLength (buf: Buffer): number {
  const n = Math.min(buf.length, PREFIX.length)
  for (let i = 0; i < n; i++) if (buf[i] !== PREFIX[i]) return -1
  // `HTTP/1.x 1dd`: 12 bytes tell; 101 is passed on.
  if (buf.length > 8 && buf[8] !== 0x20) return -1
  if (buf.length > 9 && buf[9] !== 0x31) return -1
  if (buf.length < 12) return 0
  if (buf[10] === 0x30 && buf[11] === 0x31) return -1
  const end = buf.subarray(0, MAX_INTERIM_BYTES).indexOf(CRLFCRLF)
  if (end !== -1) return end + 4
  return buf.length >= MAX_INTERIM_BYTES ? -1 : 0
}

/**
 * The byte filter of one connection. `awaiting`: a request head went out and no byte of its final
 * response has been passed on yet. Bounded: at most one interim head (MAX_INTERIM_BYTES) is held.
 */
export class InterimSkipper {
  awaiting = false
  private held: Buffer | undefined

  /**
   * While awaiting: takes the next chunk read from the socket (null: none), returns the bytes to hand to
   * the parser, or null when there are none yet (what was held waits for the next chunk).
   */
  take (chunk: Buffer | null): Buffer | null {
    if (chunk !== null) this.held = this.held === undefined ? chunk : Buffer.concat([this.held, chunk])
    let held = this.held
    while (held !== undefined) {
      const cut = interimLength(held)
      if (cut === 0) break
      if (cut < 0) {
        this.awaiting = false
        this.held = undefined
        return held
      }
      held = cut === held.length ? undefined : held.subarray(cut)
    }
    this.held = held
    return null
  }
}

/** Makes `socket` drop interim responses (see above). Called once per upstream connection. */
export function skipInterimResponses (socket: Socket): void {
  const f = new InterimSkipper()
  const read = socket.read
  const write = socket.write
  // Fixed parameters, not `...args` and apply(): this runs for every write undici makes (Writable.write
  // reads an absent encoding or callback the same as an undefined one).
  socket.write = function (this: Socket, data: unknown, encoding?: unknown, cb?: unknown): boolean {
    if (typeof data === 'string' && data.charCodeAt(0) !== 13 /* \r */) f.awaiting = true
    return (write as (d: unknown, e?: unknown, c?: unknown) => boolean).call(this, data, encoding, cb)
  } as Socket['write']
  socket.read = function (this: Socket, size?: number): any {
    if (!f.awaiting) return read.call(this, size)
    for (;;) {
      const chunk = read.call(this, size) as Buffer | null
      const out = f.take(chunk)
      // Nothing to pass on yet: read on while the socket has bytes; else undici reads again on 'readable'.
      if (out !== null || chunk === null) return out
    }
  }
}

/** TLS towards an endpoint: the upstream's context and verification, and the SNI name of this endpoint (none for an IP address). */
export interface ConnectorTls {
  readonly secureContext: SecureContext
  readonly servername: string | undefined
  readonly rejectUnauthorized: boolean
}

/**
 * undici's connector (with `timeout` as the connect timeout, the budget of the TLS handshake too) whose
 * sockets skip interim responses. With `tls` (an https origin) the SNI name is the endpoint's, never the
 * one undici derives from each request's Host header (the client's: a backend's certificate names the
 * backend).
 */
export function interimSkippingConnector (timeout: number, tls?: ConnectorTls): buildConnector.connector {
  const connect = buildConnector(tls === undefined ? { timeout } : { timeout, secureContext: tls.secureContext, rejectUnauthorized: tls.rejectUnauthorized })
  return (opts, callback) => {
    connect(tls === undefined ? opts : { ...opts, servername: tls.servername }, (err, socket) => {
      // undici calls back with (err) alone when the connection fails.
      if (err === null && socket != null) skipInterimResponses(socket)
      ;(callback as (e: Error | null, s: Socket | null) => void)(err, socket)
    })
  }
}
