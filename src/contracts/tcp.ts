import type { Socket } from 'node:net'
import type { TcpUpstreamConfig } from '../config/schema.js'
import type { FerryError } from '../errors.js'

/**
 * The contract between a TCP listener's connections (src/tcp/, which own the client sockets) and the
 * TCP upstream kind (src/upstream/tcp/, which picks an endpoint and connects). The connection asks its
 * TcpTarget for a backend socket; the socket and the endpoint's count then belong to the connection
 * until it calls `release`.
 */

/** Socket options applied to every backend connection (from the listener that asks). */
export interface UpstreamSocketOptions {
  readonly noDelay: boolean
  readonly keepAlive: boolean
  readonly keepAliveDelayMs: number
}

/** Who receives the outcome of a connect (PendingConnect): exactly one of the two calls, once, unless cancelled. */
export interface ConnectOwner {
  /** The socket (connected, allowHalfOpen, no listeners of ours left) now belongs to the owner, who must call `upstream.release(ep)` after it closes. */
  onUpstreamConnected: (socket: Socket, ep: TcpBackend) => void
  /** Every endpoint tried within the budget failed (or none could be tried). */
  onUpstreamFailed: (err: FerryError) => void
}

/** A backend endpoint as the connection that holds a socket to it sees it. */
export interface TcpBackend {
  readonly address: string
}

/** A connect in progress for one client connection. */
export interface PendingConnect {
  /** The client went away: drop the attempt. Idempotent; a no-op once the outcome was delivered. */
  cancel: () => void
}

/**
 * What a TCP listener connects its clients to: a TCP upstream of the running config. Methods, not
 * function properties: the upstream takes back its own endpoint type in `release` (what it handed out).
 */
export interface TcpTarget {
  readonly name: string
  readonly cfg: Pick<TcpUpstreamConfig, 'balance'>
  /**
   * Starts getting a backend connection for `owner` (its outcome arrives through the owner); `key` is the
   * client's hashKey for the 'hash' policy. `preface` (a PROXY header) is written first on the backend's
   * TCP connection, before a TLS handshake when the upstream speaks TLS.
   */
  connect (owner: ConnectOwner, key: number | undefined, opts: UpstreamSocketOptions, preface?: Buffer): PendingConnect | undefined
  /** The owner of a connected backend socket calls this once after it closed. */
  release (ep: TcpBackend): void
  /** A connected backend socket failed with `err`: a TLS failure comes back (counted and logged by the upstream), anything else undefined. */
  socketError (ep: TcpBackend, err: Error): FerryError | undefined
}
