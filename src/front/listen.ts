import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js'
import { FerryError } from '../errors.js'
import type { Uws } from './uws.js'

const EXCLUSIVE_PORT = 1 // LIBUS_LISTEN_EXCLUSIVE_PORT

/** A bound uWS listen socket; the only code that closes it is `close()`. */
export class ListenSocket {
  private socket: us_listen_socket | undefined
  constructor (private readonly uws: Uws, socket: us_listen_socket, readonly host: string, readonly port: number) {
    this.socket = socket
  }

  /** Stops accepting; established connections are not touched. */
  close (): void {
    if (this.socket === undefined) return
    this.uws.us_listen_socket_close(this.socket)
    this.socket = undefined
  }
}

/**
 * Binds exclusively (no SO_REUSEPORT): a second process on the same port must fail loudly, not silently
 * share the traffic. `name` is the listener's config path, for the error.
 */
export async function listen (uws: Uws, app: TemplatedApp, name: string, host: string, port: number): Promise<ListenSocket> {
  return await new Promise((resolve, reject) => {
    // The typings lack the (host, port, options, cb) overload the binary has.
    const listenWithOptions = app.listen as unknown as (h: string, p: number, o: number, cb: (ls: us_listen_socket | false) => void) => void
    listenWithOptions.call(app, host, port, EXCLUSIVE_PORT, (ls) => {
      if (ls === false) {
        reject(new FerryError('FERRY_ERR_LISTEN', `${name}: cannot listen on ${host}:${port} (address in use, not available on this host, or not permitted)`))
        return
      }
      resolve(new ListenSocket(uws, ls, host, uws.us_socket_local_port(ls as never)))
    })
  })
}
