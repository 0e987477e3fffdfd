import cluster from 'node:cluster'
import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js'
import { FerryError } from '../errors.js'
import type { Uws } from './uws.js'

const EXCLUSIVE_PORT = 1 // LIBUS_LISTEN_EXCLUSIVE_PORT
/** SO_REUSEPORT: the workers of a pod (src/planes/) each bind the port; the control plane holds its lock. */
const SHARED_PORT = 0
const PORT_OPTIONS = cluster.isWorker ? SHARED_PORT : EXCLUSIVE_PORT

/** open: accepting. paused: not bound for now; `resume()` binds the same address again. closed: for good. */
export type ListenState = 'open' | 'paused' | 'closed'

/** A bound uWS listen socket; the only code that closes it is this class. */
export class ListenSocket {
  private socket: us_listen_socket | undefined
  private current: ListenState = 'open'

  constructor (private readonly uws: Uws, private readonly app: TemplatedApp, readonly name: string, socket: us_listen_socket, readonly host: string, readonly port: number) {
    this.socket = socket
  }

  get state (): ListenState {
    return this.current
  }

  /**
   * Stops accepting for now (descriptors ran low): the kernel refuses new connections at once instead of
   * queueing them where nobody accepts. Established connections are not touched.
   */
  pause (): void {
    if (this.current !== 'open') return
    this.uws.us_listen_socket_close(this.socket!)
    this.socket = undefined
    this.current = 'paused'
  }

  /** Binds the same host and port again (throws FERRY_ERR_LISTEN if that fails; it stays paused). */
  resume (): void {
    if (this.current !== 'paused') return
    this.socket = bind(this.app, this.name, this.host, this.port)
    this.current = 'open'
  }

  /** Stops accepting for good; established connections are not touched. */
  close (): void {
    if (this.socket !== undefined) this.uws.us_listen_socket_close(this.socket)
    this.socket = undefined
    this.current = 'closed'
  }
}

/** uWS calls the listen callback synchronously; this returns its socket or throws. */
function bind (app: TemplatedApp, name: string, host: string, port: number, options = PORT_OPTIONS): us_listen_socket {
  let socket: us_listen_socket | false = false
  // The typings lack the (host, port, options, cb) overload the binary has.
  const listenWithOptions = app.listen as unknown as (h: string, p: number, o: number, cb: (ls: us_listen_socket | false) => void) => void
  listenWithOptions.call(app, host, port, options, (ls) => { socket = ls })
  if (socket === false) throw new FerryError('FERRY_ERR_LISTEN', `${name}: cannot listen on ${host}:${port} (address in use, not available on this host, or not permitted)`)
  return socket
}

/**
 * Binds exclusively (no SO_REUSEPORT): a second process on the same port must fail loudly, not silently
 * share the traffic. In a worker of a pod the port is shared with the other workers (SO_REUSEPORT) and
 * the control plane holds a lock on it that a second Ferry cannot take (src/planes/port-lock.ts). `name` is the listener's config path, for the error.
 *
 * Port 0 is bound twice: once to learn a free port, then on that port. uSockets sets SO_REUSEADDR only
 * when it is given a port, and without it (on the listener, so on its accepted connections) the port
 * cannot be bound again while connections made on it are open, which a paused listener must do.
 */
export async function listen (uws: Uws, app: TemplatedApp, name: string, host: string, port: number): Promise<ListenSocket> {
  if (port !== 0) return new ListenSocket(uws, app, name, bind(app, name, host, port), host, port)
  for (let attempt = 1; ; attempt++) {
    const probe = bind(app, name, host, 0)
    const chosen = uws.us_socket_local_port(probe as never)
    uws.us_listen_socket_close(probe)
    try {
      return new ListenSocket(uws, app, name, bind(app, name, host, chosen), host, chosen)
    } catch (err) {
      // Someone else took the port in between: pick another.
      if (attempt >= 5) throw err
    }
  }
}

/**
 * A free loopback port of this process's own, bound once and exclusively even in a worker of a pod: the
 * PROXY reader's way into uWS (src/front/proxy-reader.ts), which must reach this process's app and no
 * other worker's. It is never paused, so the port-0 double bind above is not needed.
 */
export function listenLoopback (uws: Uws, app: TemplatedApp, name: string): ListenSocket {
  const socket = bind(app, name, '127.0.0.1', 0, EXCLUSIVE_PORT)
  return new ListenSocket(uws, app, name, socket, '127.0.0.1', uws.us_socket_local_port(socket as never))
}
