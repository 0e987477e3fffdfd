import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import type { HttpResponse } from 'uWebSockets.js'
import type { Logger } from 'pino'
import { listenLoopback, type ListenSocket } from './listen.js'
import type { Uws } from './uws.js'

/** idle: not started. connecting: the anchor request is on its way (or will be asked again). parked: `run` corks. closed: for good. */
export type CorkAnchorState = 'idle' | 'connecting' | 'parked' | 'closed'

/** How long after losing its request the anchor asks again. */
const RETRY_MS = 1000

/**
 * A response that never ends, kept only so that writes made outside a uWS callback can run inside a
 * cork callback.
 *
 * uWebSockets.js 20.30 prints "Warning: uWS.HttpResponse writes must be made from within a corked
 * callback" on stderr for every `res.upgrade()` made outside one: one line per WebSocket upgrade that
 * completes after the backend answered (passthrough), or after an asynchronous edge check. Corking the
 * upgrading response itself is not an option: its cork() can take the freshly upgraded socket for the
 * HTTP one (the adopt realloc keeps the address) and close it right after `open` (uNetworking/
 * uWebSockets#1929, fixed after 20.30). The check behind the warning is one flag for the whole module,
 * set by any response's cork() (tried: an upgrade inside another response's cork prints nothing, on
 * App and SSLApp alike), so `run` corks this anchor's response instead: a different, live socket, which
 * the #1929 comparison can never confuse with the upgraded one.
 *
 * The anchor is a loopback listener of this process's own (never shared with a pod's other workers)
 * and one connection to it carrying one request; other requests there get 404. While the anchor is not
 * parked (start-up, or its connection lost), `run` calls its function plainly: the only cost is the warning.
 */
export class CorkAnchor {
  private current: CorkAnchorState = 'idle'
  private res: HttpResponse | undefined
  private socket: ListenSocket | undefined
  private client: Socket | undefined
  private retry: NodeJS.Timeout | undefined
  private readonly path = `/ferry-cork-anchor/${randomBytes(16).toString('hex')}`

  constructor (private readonly uws: Uws, private readonly log: Logger) {}

  get state (): CorkAnchorState {
    return this.current
  }

  private to (next: CorkAnchorState): void {
    if (this.current === next) return
    if (this.log.isLevelEnabled('debug')) this.log.debug({ from: this.current, to: next }, `cork anchor ${next}`)
    this.current = next
  }

  start (): void {
    if (this.current !== 'idle') return
    this.to('connecting')
    const app = this.uws.App()
    app.any('/*', (res, req) => {
      if (req.getUrl() !== this.path || this.res !== undefined || this.current !== 'connecting') {
        res.writeStatus('404 Not Found').writeHeader('connection', 'close').end()
        return
      }
      res.onAborted(() => {
        if (this.res !== res) return
        this.res = undefined
        this.lost()
      })
      this.res = res
      this.to('parked')
    })
    this.socket = listenLoopback(this.uws, app, 'cork anchor (internal)')
    this.ask()
  }

  /** Runs `fn` inside the anchor's cork callback when it is parked, plainly otherwise. */
  run (fn: () => void): void {
    const res = this.res
    if (res === undefined) { fn(); return }
    let ran = false
    try {
      res.cork(() => { ran = true; fn() })
    } catch (err) {
      if (ran) throw err
      // The response went away without its onAborted yet: run without the cork.
      this.res = undefined
      fn()
    }
  }

  close (): void {
    if (this.current === 'closed') return
    this.to('closed')
    clearTimeout(this.retry)
    this.res = undefined
    this.client?.destroy()
    this.socket?.close()
  }

  private ask (): void {
    if (this.current === 'closed' || this.socket === undefined) return
    const client = connect(this.socket.port, '127.0.0.1')
    this.client = client
    client.setNoDelay(true)
    client.on('connect', () => { client.write(`GET ${this.path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`) })
    client.on('data', () => { client.destroy() }) // an answer means the request was refused
    client.on('error', () => { /* 'close' follows */ })
    client.on('close', () => {
      if (this.client !== client) return
      this.client = undefined
      this.lost()
    })
  }

  private lost (): void {
    if (this.current === 'closed') return
    this.res = undefined
    const client = this.client
    this.client = undefined
    client?.destroy()
    this.to('connecting')
    clearTimeout(this.retry)
    this.log.debug('cork anchor lost its request; asking again')
    this.retry = setTimeout(() => { this.ask() }, RETRY_MS)
    this.retry.unref()
  }
}
