import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http'
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import type { Teardown } from './ferry.js'

export interface Backend {
  readonly port: number
  readonly address: string
  /** TCP connections this backend accepted so far. */
  accepted: () => number
  /** Connections open now. */
  open: () => number
  /** Largest number of connections open at once. */
  peakOpen: () => number
  readonly server: Server
  close: () => Promise<void>
}

/**
 * A real node:http backend on 127.0.0.1:0 that counts the TCP connections it accepts (the thing Ferry
 * promises to keep small). Keep-alive is long so reuse, not backend timeouts, decides the count.
 */
export async function startBackend (t: Teardown, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Backend> {
  let accepted = 0
  let open = 0
  let peak = 0
  const sockets = new Set<Socket>()
  const server = createServer({ keepAliveTimeout: 120_000, requestTimeout: 0, headersTimeout: 60_000 }, handler)
  server.on('connection', (s: Socket) => {
    accepted++
    open++
    if (open > peak) peak = open
    sockets.add(s)
    s.on('close', () => { open--; sockets.delete(s) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  t.teardown(close)
  return { port, address: `127.0.0.1:${port}`, accepted: () => accepted, open: () => open, peakOpen: () => peak, server, close }
}

/** A raw TCP server on 127.0.0.1:0 whose connection handler does whatever a test needs (garbage, hang, reset). */
export async function startRawBackend (t: Teardown, onConnection: (s: Socket) => void): Promise<{ port: number, address: string, server: NetServer, accepted: () => number }> {
  let accepted = 0
  const sockets = new Set<Socket>()
  const server = createNetServer((s) => {
    accepted++
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    onConnection(s)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { port, address: `127.0.0.1:${port}`, server, accepted: () => accepted }
}

/** A port on 127.0.0.1 with nothing listening (bound then released). */
export async function deadPort (): Promise<number> {
  const s = createNetServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const port = (s.address() as { port: number }).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

/** Minimal HTTP upstream config for one or more backends. */
export function httpConfig (endpoints: string[], extra: Record<string, unknown> = {}, top: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: { api: { protocol: 'http', endpoints, ...extra } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
    ...top,
  }
}
