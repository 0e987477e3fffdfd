import { createHash, type Hash } from 'node:crypto'
import { Readable } from 'node:stream'
import { STATUS_CODES, type IncomingHttpHeaders } from 'node:http'
import type { HttpResponse } from 'uWebSockets.js'
import { FerryError } from '../../errors.js'
import type { BodyPolicy, BodySize, ClientRequest } from '../../contracts/http.js'
import { latin1Bytes } from '../../net/header-bytes.js'
import { sendError } from '../../net/error-response.js'
import type { ExchangeContext, ExchangeState } from './exchange-state.js'

/**
 * How the request body travels. `buffer`: read whole into memory (charged to the body limits) before a
 * pool slot is taken, then sent with its length. `stream`: larger than the buffer (declared, or a chunked
 * body that outgrew it): piped into the dispatch as it arrives, counted per client IP, and it must keep
 * the minimum rate. A `buffer` body moves to `stream` when it outgrows the buffer; nothing moves back.
 */
export type BodyMode = 'none' | 'buffer' | 'stream'

/**
 * uWS 20.30 closes a keep-alive connection idle for 10 s, on a 4 s tick: 8–12 s after its last response
 * (measured). A client that reuses it as it closes gets a reset. undici, and Node's http.Agent when it
 * has a timeout, take this hint and close an idle connection themselves 2 s / 1 s before the announced
 * timeout. 7 s: under the 8 s uWS may close at, for clients that read it literally.
 */
const KEEP_ALIVE_HINT = 'timeout=7'

/** Response headers Ferry does not copy: hop-by-hop, plus the ones uWS writes itself. */
const SKIP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'content-length', 'date'])
const BODY_HIGH_WATER = 64 * 1024
/** uWS's own request timer is re-armed at most this often while body bytes arrive (see onClientData). */
const REARM_EVERY_MS = 1000

/** What the client side of an exchange asks of its exchange (which owns the state and the ending). */
export interface ClientOwner {
  readonly state: ExchangeState
  /** isFinal(state): nothing more is read from or written to the client. */
  readonly final: boolean
  /** Ferry ends the request with an error (`header`: one more response header, Retry-After say). */
  fail: (err: FerryError, header?: readonly [string, string]) => void
  /** The request may go upstream now (its body is whole, or streams). */
  requestSlot: () => void
  /** uWS's onAborted: the client is gone. */
  clientAborted: () => void
  /** The client socket drained after a write was refused: the upstream may send more. */
  clientDrained: () => void
  /** The last response bytes, held back by backpressure after the upstream ended, went out. */
  responseWritten: () => void
}

/** How a response ends (`endResponse`): whole, its last bytes waiting for the socket, or short of its Content-Length. */
export type ResponseEnd = 'done' | 'tail' | 'short'

/**
 * The client half of an exchange. It owns the uWS response (onAborted, onData, onWritable; it is the
 * only code that writes to it), the request body (its buffer and what it charged to the body limits, or
 * its stream and the streamed-body count it took; released by `close`, once), the body timer with the
 * minimum-rate window, and the response as it is written with backpressure. Memory is bounded: a
 * buffered body by bufferBodyBytes (and the gateway's budget), a streamed one by BODY_HIGH_WATER before
 * the client socket is paused; the response holds at most one upstream chunk before the upstream is paused.
 */
export class ClientSide {
  bodyMode: BodyMode = 'none'
  /** The client sent its whole body (or had none to send: read only when bodyMode is not `none`). */
  bodyDone = false
  /** Request body bytes received, response body bytes written (the access log's `in` and `out`). */
  bodyBytesIn = 0
  bytesOut = 0
  /** The response's Content-Length; -1: unknown (chunked), until the head arrived. */
  responseLength = -1
  /** A buffered body's chunks while it arrives (made with the first chunk: most requests have no body). */
  private chunks: Buffer[] | undefined
  private bufferedBody: Buffer | undefined
  private body: Readable | undefined
  /** Bytes charged to limits.chargeBody and not yet released; a streamed body's slot (limits.maxStreamedBodiesPerIp). */
  private charged = 0
  private streamSlot: { readonly release: () => void } | undefined
  /** A worker of a pod borrows the streamed body's slot: the request goes on to a backend once it has it. */
  private streamPending = false
  /**
   * Charges of buffered body bytes a worker of a pod borrows for (the client's byte budget is the pod's):
   * the client is paused meanwhile (`chargePaused`), and a body whose last byte came waits for them
   * (`lastCharged`) before it goes on.
   */
  private chargesPending = 0
  private chargePaused = false
  private lastCharged = false
  private clientPaused = false
  /** Minimum-rate window of a streamed body: its start, the bytes in before it, whether Ferry paused the client in it. */
  private windowStart = 0
  private windowBytes = 0
  private windowPaused = false
  /** Body verification for signed requests: the running digest, the chunk held back, the expected value. */
  private bodyHash: Hash | undefined
  private heldChunk: Buffer | undefined
  private bodyDigest: string | undefined
  private expectedSha256: string | undefined
  /** One timer for the client body: the idle deadline, refreshed per chunk, or the total one if sooner. */
  private bodyTimer: NodeJS.Timeout | undefined
  private bodyDeadline = 0
  private lastChunkAt = 0
  private rearmedAt = 0
  /**
   * Response head received but not yet written (it goes out with the first body bytes): its headers
   * (undefined once written, or none yet), status and the affinity cookie. Fields, not an object per response.
   */
  private headHeaders: IncomingHttpHeaders | undefined
  private headStatus = 0
  private headMessage: string | undefined
  private headCookie: string | undefined
  /** What the last `write` left: the client socket is full. */
  private blocked = false
  /** Response chunk tryEnd could not fully write; kept until onWritable finishes it. */
  private pending: Buffer | undefined
  private pendingOffset = 0
  /** The response is complete as far as uWS is concerned (after a completed tryEnd it must not be touched). */
  private responseDone = false
  /** The upstream ended while `pending` was still partly unwritten. */
  private awaitingTail = false
  /** Whether uWS's onWritable handler is set: only once a write was refused (most responses never need it). */
  private watchingWritable = false

  constructor (
    private readonly owner: ClientOwner,
    private readonly res: HttpResponse,
    private readonly req: ClientRequest,
    private readonly ctx: ExchangeContext,
    private readonly size: BodySize,
    private readonly policy: BodyPolicy,
  ) {}

  /** Called synchronously from the uWS handler, before anything async. */
  watchAbort (): void {
    this.res.onAborted(() => this.owner.clientAborted())
  }

  /**
   * Starts reading the request body, if it has one. `verifyBody`: the edge may demand a body digest, so
   * the body is hashed as it arrives. False: the body was refused (the request failed).
   */
  readBody (verifyBody: boolean): boolean {
    const cl = this.req.contentLength
    if (!this.req.chunked && (cl ?? 0) <= 0) return true
    if (verifyBody) this.bodyHash = createHash('sha256')
    // A chunked body is buffered until it outgrows the buffer; a declared one by its length.
    if (this.req.chunked ? this.size.bufferBytes > 0 : cl! <= this.size.bufferBytes) this.bodyMode = 'buffer'
    else if (!this.startStreaming()) return false
    this.res.onData((chunk, isLast) => this.onClientData(chunk, isLast))
    this.armBodyTimer()
    return true
  }

  /** A buffered body still arriving (or a streamed one whose slot the pod is asked for): the request waits for it before it asks for a connection. */
  get awaitsBody (): boolean {
    return (this.bodyMode === 'buffer' && !this.bodyDone) || this.streamPending
  }

  /** The edge's demand: the body must hash to this (hex SHA-256; undefined: no demand). */
  expect (sha256: string | undefined): void {
    this.expectedSha256 = sha256
  }

  /** False (and the request failed) when the whole body is in and does not hash to what was signed. */
  bodyMatches (): boolean {
    if (this.expectedSha256 === undefined || this.bodyDigest === undefined || this.bodyDigest === this.expectedSha256) return true
    this.owner.fail(new FerryError('FERRY_ERR_AUTH_BODY_MISMATCH', 'request body does not match its signed x-ferry-content-sha256'))
    return false
  }

  /** What the dispatch sends: the stream, the whole buffered body, or nothing. */
  requestBody (): Readable | Buffer | null {
    return this.bodyMode === 'stream' ? this.body! : this.bufferedBody ?? null
  }

  /** The request was dispatched: a buffered body leaves the budget here (what dispatched requests hold is bounded by the pool). */
  dispatched (): void {
    this.releaseCharge()
  }

  /** The request ends without its body going on: a streamed body is destroyed (with `err`, the client is gone). */
  destroyBody (err?: Error): void {
    this.body?.destroy(err)
  }

  /**
   * The request is accounted: the body timer stops and what the body took from the limits goes back.
   * Called once, by the exchange's ending (each release is idempotent on its own too).
   */
  close (): void {
    this.clearBodyTimer()
    this.releaseCharge()
    this.releaseStreamCount()
    this.chunks = undefined
  }

  // ---- request body -------------------------------------------------------------------------------

  private onClientData (chunk: ArrayBuffer, isLast: boolean): void {
    if (this.owner.final || this.bodyMode === 'none' || this.body?.destroyed === true) return
    if (chunk.byteLength > 0 && this.bodyTimer !== undefined && !isLast) {
      this.lastChunkAt = performance.now()
      // uWS 20.30 gives a request body ~10 s in all, however steadily it arrives, then drops the connection
      // without a response; pause()+resume() re-arms that timer. So uWS's limit becomes ~10 s of silence
      // and Ferry's deadlines (shorter, answered with 408) decide.
      if (this.lastChunkAt - this.rearmedAt >= REARM_EVERY_MS && !this.clientPaused) {
        this.rearmedAt = this.lastChunkAt
        this.res.pause()
        this.res.resume()
      }
    }
    let data: Buffer | undefined
    if (chunk.byteLength > 0) {
      this.bodyBytesIn += chunk.byteLength
      if (this.bodyBytesIn > this.size.maxBytes) {
        this.owner.fail(new FerryError('FERRY_ERR_BODY_TOO_LARGE', `request body exceeds maxBodyBytes ${this.size.maxBytes}`))
        return
      }
      // uWS neuters the ArrayBuffer after this callback: copy.
      data = Buffer.copyBytesFrom(new Uint8Array(chunk))
    }
    if (this.bodyMode === 'buffer') {
      if (this.bodyBytesIn <= this.size.bufferBytes) {
        if (data !== undefined) {
          const charge = this.policy.limits?.chargeBody(this.req.clientIp, data.length)
          if (charge instanceof FerryError) { this.refuseBody(charge); return }
          this.charged += data.length
          this.chunks ??= []
          this.chunks.push(data)
          if (charge !== undefined) this.awaitCharge(charge)
        }
        if (isLast) {
          if (this.chargesPending > 0) this.lastCharged = true
          else this.onBufferedBody()
        }
        return
      }
      // A chunked body outgrew the buffer: it streams from here on, what was buffered first.
      const before = this.chunks
      this.chunks = undefined
      this.releaseCharge()
      if (!this.startStreaming()) return
      if (before !== undefined && !this.owner.final) this.streamData(Buffer.concat(before), false)
      if (this.owner.final) return
    }
    this.streamData(data, isLast)
  }

  /**
   * A worker of a pod borrows for this chunk's bytes: the client is paused until the pod answered; a
   * refusal fails the request (429), and the body goes on once every charge is granted.
   */
  private awaitCharge (charge: Promise<FerryError | undefined>): void {
    this.chargesPending++
    if (!this.clientPaused) { this.clientPaused = true; this.chargePaused = true; this.res.pause() }
    charge.then((err) => {
      this.chargesPending--
      if (this.owner.final) return
      // (A body that outgrew the buffer meanwhile no longer holds these bytes.)
      if (err !== undefined && this.bodyMode === 'buffer') { this.refuseBody(err); return }
      if (this.chargesPending > 0) return
      if (this.chargePaused) {
        this.chargePaused = false
        // A body that outgrew the buffer meanwhile streams: its stream resumes the client when it has room.
        if (this.bodyMode === 'buffer' || this.body!.readableLength < BODY_HIGH_WATER) this.resumeClient()
      }
      if (this.lastCharged && this.bodyMode === 'buffer') { this.lastCharged = false; this.onBufferedBody() }
    }, noop)
  }

  /** The last byte of a buffered body arrived: the request goes on to the pool queue if the edge let it through. */
  private onBufferedBody (): void {
    const chunks = this.chunks ?? []
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, this.bodyBytesIn)
    this.chunks = undefined
    this.bufferedBody = body
    if (this.bodyHash !== undefined) this.bodyDigest = this.bodyHash.update(body).digest('hex')
    this.bodyDone = true
    this.clearBodyTimer()
    if (this.owner.state === 'buffering' && this.bodyMatches()) this.owner.requestSlot()
  }

  /** Pushes streamed body bytes; a signed body holds one chunk back until its digest is known. */
  private streamData (chunk: Buffer | undefined, isLast: boolean): void {
    const body = this.body!
    let data = chunk
    if (data !== undefined) {
      if (this.bodyHash !== undefined) {
        // A signed body: one chunk is held back, so if the digest turns out wrong the backend has not
        // received the complete body (with Content-Length, the last byte would complete the request).
        this.bodyHash.update(data)
        const held = this.heldChunk
        this.heldChunk = isLast ? undefined : data
        if (held === undefined && !isLast) return
        data = held === undefined ? data : isLast ? Buffer.concat([held, data]) : held
      }
      if (isLast && this.bodyHash !== undefined) {
        this.bodyDigest = this.bodyHash.digest('hex')
        if (!this.bodyMatches()) return
      }
      if (!body.push(data) && !isLast) {
        this.clientPaused = true
        this.windowPaused = true
        this.res.pause()
      }
    } else if (isLast && this.bodyHash !== undefined) {
      this.bodyDigest = this.bodyHash.digest('hex')
      if (!this.bodyMatches()) return
      if (this.heldChunk !== undefined) { body.push(this.heldChunk); this.heldChunk = undefined }
    }
    if (isLast) {
      this.bodyDone = true
      this.clearBodyTimer()
      this.releaseStreamCount()
      body.push(null)
    }
  }

  /**
   * The body will stream into a backend connection as it arrives: counted per client IP
   * (limits.maxStreamedBodiesPerIp) and held to the minimum rate. False: refused (the request failed).
   */
  private startStreaming (): boolean {
    const limits = this.policy.limits
    if (limits !== undefined) {
      const slot = limits.takeStream(this.req.clientIp)
      if (slot instanceof FerryError) { this.refuseBody(slot); return false }
      this.streamSlot = slot
      if (slot.held !== undefined) {
        // A worker of a pod borrows the slot (src/planes/ip-counts.ts): the body streams into its
        // buffer meanwhile (the client is paused at its high-water mark), and no backend is taken yet.
        this.streamPending = true
        slot.held.then((err) => {
          this.streamPending = false
          if (this.owner.final) return
          if (err !== undefined) { this.streamSlot = undefined; this.refuseBody(err); return }
          if (this.owner.state === 'buffering' && !this.awaitsBody) this.owner.requestSlot()
        }, noop)
      }
    }
    this.bodyMode = 'stream'
    this.body = new Readable({ highWaterMark: BODY_HIGH_WATER, read: () => this.resumeClient() })
    // The body is destroyed with an error when the client goes away; until undici has taken the body
    // (a queued or gated request) nobody else listens, and an unhandled 'error' would end the process.
    this.body.on('error', noop)
    if (this.policy.minRate > 0) {
      this.startRateWindow(performance.now())
      if (this.bodyTimer !== undefined) this.aimBodyTimer(performance.now())
    }
    // Let through while it was being buffered: it has waited for its body long enough.
    if (this.owner.state === 'buffering' && !this.streamPending) this.owner.requestSlot()
    return true
  }

  /** A body limit refused the request: 429/503 with Retry-After. */
  private refuseBody (err: FerryError): void {
    this.owner.fail(err, this.policy.limits?.retryAfter)
  }

  private releaseCharge (): void {
    if (this.charged > 0) { this.policy.limits?.releaseBody(this.req.clientIp, this.charged); this.charged = 0 }
  }

  private releaseStreamCount (): void {
    const slot = this.streamSlot
    if (slot !== undefined) { this.streamSlot = undefined; slot.release() }
  }

  private resumeClient (): void {
    if (this.clientPaused && !this.owner.final) {
      this.clientPaused = false
      // Silence while Ferry held the client back is not the client's.
      this.lastChunkAt = this.rearmedAt = performance.now()
      this.res.resume()
    }
  }

  // ---- client body deadlines and minimum rate (slowloris) -----------------------------------------

  private armBodyTimer (): void {
    const { idleMs, totalMs, minRate } = this.policy
    if (idleMs <= 0 && totalMs <= 0 && (minRate <= 0 || this.bodyMode !== 'stream')) return
    const now = performance.now()
    this.lastChunkAt = this.rearmedAt = now
    this.bodyDeadline = totalMs > 0 ? now + totalMs : Infinity
    this.aimBodyTimer(now)
  }

  /** One timer, aimed at whichever comes first: the idle deadline, the total one, the end of the rate window. */
  private aimBodyTimer (now: number): void {
    const { idleMs, minRate, rateWindowMs } = this.policy
    const idleAt = this.clientPaused || idleMs <= 0 ? now + (idleMs > 0 ? idleMs : Infinity) : this.lastChunkAt + idleMs
    const windowEnd = this.bodyMode === 'stream' && minRate > 0 ? this.windowStart + rateWindowMs : Infinity
    const next = Math.min(idleAt, this.bodyDeadline, windowEnd)
    if (this.bodyTimer !== undefined) clearTimeout(this.bodyTimer)
    this.bodyTimer = undefined
    if (next === Infinity) return
    this.bodyTimer = setTimeout(() => this.onBodyTimer(), Math.max(1, next - now))
    this.bodyTimer.unref()
  }

  private onBodyTimer (): void {
    this.bodyTimer = undefined
    if (this.owner.final || this.bodyDone) return
    const now = performance.now()
    const { idleMs, totalMs, minRate, rateWindowMs } = this.policy
    const idleAt = this.clientPaused || idleMs <= 0 ? Infinity : this.lastChunkAt + idleMs
    if (now >= this.bodyDeadline) {
      this.owner.fail(new FerryError('FERRY_ERR_CLIENT_BODY_TIMEOUT', `request body not complete within http.bodyTimeoutMs ${totalMs} (${this.bodyBytesIn} bytes received)`))
      return
    }
    if (now >= idleAt) {
      this.owner.fail(new FerryError('FERRY_ERR_CLIENT_BODY_TIMEOUT', `no request body bytes for http.bodyIdleMs ${idleMs} (${this.bodyBytesIn} bytes received)`))
      return
    }
    if (this.bodyMode === 'stream' && minRate > 0 && now >= this.windowStart + rateWindowMs) {
      const elapsed = now - this.windowStart
      const got = this.bodyBytesIn - this.windowBytes
      // A window in which Ferry held the client back (backend or queue slower than the client) says nothing about the client.
      if (!this.windowPaused && !this.clientPaused && got * 1000 < minRate * elapsed) {
        this.owner.fail(new FerryError('FERRY_ERR_CLIENT_BODY_TIMEOUT', `request body arrived at ${Math.round(got * 1000 / elapsed)} bytes/s over ${Math.round(elapsed)} ms, below http.minBodyRateBytesPerSec ${minRate} (${this.bodyBytesIn} bytes received)`))
        return
      }
      this.startRateWindow(now)
    }
    this.aimBodyTimer(now)
  }

  private startRateWindow (now: number): void {
    this.windowStart = now
    this.windowBytes = this.bodyBytesIn
    this.windowPaused = this.clientPaused
  }

  private clearBodyTimer (): void {
    if (this.bodyTimer !== undefined) { clearTimeout(this.bodyTimer); this.bodyTimer = undefined }
  }

  // ---- response -----------------------------------------------------------------------------------

  /**
   * The upstream's response head (a final status). It is written together with the first body bytes
   * (one cork, one send) unless there is no body. `setCookie`: the affinity cookie Ferry issued.
   */
  respond (statusCode: number, statusMessage: string | undefined, headers: IncomingHttpHeaders, setCookie: string | undefined): void {
    const cl = headers['content-length']
    const noBody = this.req.method === 'HEAD' || statusCode === 204 || statusCode === 304
    this.responseLength = noBody ? 0 : typeof cl === 'string' ? Number(cl) : -1
    this.headHeaders = headers
    this.headStatus = statusCode
    this.headMessage = statusMessage
    this.headCookie = setCookie
    if (noBody || this.responseLength === 0) {
      const res = this.res
      res.cork(() => {
        this.writeHead()
        // uWS writes `Content-Length: <n>` for endWithoutBody(n); with no argument it writes none.
        if (!noBody) res.end()
        else if (statusCode !== 204 && statusCode !== 304 && typeof cl === 'string') res.endWithoutBody(Number(cl))
        else res.endWithoutBody()
      })
      this.responseDone = true
    }
  }

  /** Writes the status line and headers held since `respond` (inside the caller's cork). */
  private writeHead (): void {
    const headers = this.headHeaders!
    this.headHeaders = undefined
    const res = this.res
    res.writeStatus(statusLine(this.headStatus, this.headMessage))
    // Headers the backend named in its Connection header are hop-by-hop too (RFC 9110 §7.6.1).
    const conn = headers.connection
    // `keep-alive` (what most backends send) names only a header skipped anyway.
    const named = typeof conn === 'string' && conn !== 'keep-alive' ? conn.toLowerCase().split(',').map((x) => x.trim()) : undefined
    for (const name in headers) {
      if (SKIP_RESPONSE.has(name) || named?.includes(name) === true) continue
      const v = headers[name]
      if (v === undefined) continue
      // undici read the bytes as latin1; uWS would write the string as UTF-8.
      if (Array.isArray(v)) for (const x of v) res.writeHeader(name, latin1Bytes(x))
      else res.writeHeader(name, latin1Bytes(v))
    }
    if (headers[this.ctx.requestIdHeader] === undefined) res.writeHeader(this.ctx.requestIdHeader, this.req.requestId)
    if (this.headCookie !== undefined) res.writeHeader('set-cookie', this.headCookie)
    // uWS 20.30 closes the socket after answering a `Connection: close` request but does not say so in
    // the response; clients that reuse the socket meanwhile get a RST. Say it (RFC 9112 §9.6). While
    // draining, say it too: the client closes this connection and sends its next request elsewhere.
    if (this.req.close || this.ctx.lifecycle.draining) res.writeHeader('connection', 'close')
    else res.writeHeader('keep-alive', KEEP_ALIVE_HINT)
  }

  /** One upstream body chunk. True: the client socket is full; the upstream must pause until `clientDrained`. */
  write (chunk: Buffer): boolean {
    if (this.responseDone) return false
    this.bytesOut += chunk.length
    this.blocked = false
    // uWS runs the cork callback at once: the side and chunk are handed over in module variables, so
    // every write shares one function instead of making a closure per chunk.
    corkSide = this
    corkChunk = chunk
    try {
      this.res.cork(writeInCork)
    } finally {
      corkSide = undefined
      corkChunk = undefined
    }
    return this.blocked
  }

  /** `write`'s work inside uWS's cork (called by writeInCork only). */
  writeCorked (chunk: Buffer): void {
    const res = this.res
    if (this.headHeaders !== undefined) this.writeHead()
    if (this.responseLength >= 0) {
      const [ok, done] = res.tryEnd(chunk, this.responseLength)
      if (done) this.responseDone = true
      // uWS's write offset counts body bytes only, and every earlier chunk went out whole before this one
      // was taken (the upstream pauses while one is pending): the offset before this chunk is bytesOut
      // without it, so no getWriteOffset() call is made per chunk.
      else if (!ok) { this.pending = chunk; this.pendingOffset = this.bytesOut - chunk.length; this.blocked = true }
    } else if (!res.write(chunk)) {
      this.blocked = true // uWS buffered the chunk; wait for onWritable before reading more upstream
    }
    if (this.blocked) this.watchWritable()
  }

  private watchWritable (): void {
    if (this.watchingWritable) return
    this.watchingWritable = true
    this.res.onWritable((offset) => this.onWritable(offset))
  }

  /** uWS says the client socket drained. Finish a partial tryEnd chunk, then let the upstream go on. */
  private onWritable (offset: number): boolean {
    if (this.owner.state !== 'responding') return true
    const pending = this.pending
    if (pending !== undefined) {
      const [ok, done] = this.res.tryEnd(pending.subarray(offset - this.pendingOffset), this.responseLength)
      if (!ok && !done) return false
      this.pending = undefined
      if (done) {
        this.responseDone = true
        if (this.awaitingTail) { this.owner.responseWritten(); return true }
        // The last bytes are out but undici has not said the response ended: it may be paused on this
        // chunk, and only a resume lets it deliver onResponseEnd (which releases the pool slot).
      }
    }
    this.owner.clientDrained()
    return true
  }

  /** The upstream response ended: ends the client's (a chunked one), or says what is left to do. */
  endResponse (): ResponseEnd {
    if (this.responseDone) return 'done'
    if (this.pending !== undefined) {
      // The last tryEnd chunk is still partly unwritten: the response is done when onWritable drains it.
      this.awaitingTail = true
      return 'tail'
    }
    // undici checks Content-Length, so this means fewer bytes than announced: cut, never pad.
    if (this.responseLength >= 0) return 'short'
    this.res.cork(() => {
      if (this.headHeaders !== undefined) this.writeHead()
      this.res.end()
    })
    this.responseDone = true
    return 'done'
  }

  /** The client left while the response is drained upstream: nothing more is written to it. */
  dropPending (): void {
    this.pending = undefined
  }

  /**
   * Ferry ends the request with an error. Once the response head is out, the only honest signal left is
   * a truncated response (true); before that, the client gets `status` with the error (false).
   */
  cutResponse (wasResponding: boolean): boolean {
    if (!wasResponding || this.headHeaders !== undefined) return false
    // After a completed tryEnd the uWS response is gone and must not be touched.
    if (!this.responseDone) this.res.close()
    return true
  }

  sendFailure (status: number, err: FerryError, header: readonly [string, string] | undefined): void {
    // Close the connection when request body bytes may still be unread, so they are never parsed as a request.
    const close = this.req.close || this.ctx.lifecycle.draining || this.req.contentLength !== 0
    sendError(this.res, status, err, this.req.requestId, this.ctx.requestIdHeader, close, header)
  }
}

function noop (): void {}

/** The side and chunk of the `write` under way, for writeInCork. */
let corkSide: ClientSide | undefined
let corkChunk: Buffer | undefined
function writeInCork (): void {
  corkSide!.writeCorked(corkChunk!)
}

/** Status lines with their standard reason phrase, made once per status (most responses say `200 OK`). */
const STATUS_LINES = new Map<number, string>()

/** The status line uWS writes: the upstream's reason phrase, or the standard one when it sent none. */
function statusLine (code: number, message: string | undefined): string {
  const standard = STATUS_CODES[code]
  if (message !== undefined && message !== '' && message !== standard) return `${code} ${message}`
  let line = STATUS_LINES.get(code)
  if (line === undefined) { line = `${code} ${standard ?? ''}`; STATUS_LINES.set(code, line) }
  return line
}
