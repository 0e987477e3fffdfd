import { createServer, connect as netConnect, type Socket } from 'node:net'
import type { Teardown } from './ferry.js'

/**
 * A TCP forwarder on 127.0.0.1:0 standing in for a Kubernetes Service in front of gateway pods: new
 * connections go to `target` (changeable at any time); existing ones stay where they are. Closed, with
 * every socket it opened, at teardown.
 */
export async function startSwitch (t: Teardown, target: number): Promise<{ port: number, target: number, url: (path: string) => string }> {
  const sockets = new Set<Socket>()
  const sw = { port: 0, target, url: (path: string) => `ws://127.0.0.1:${sw.port}${path}` }
  const server = createServer((client) => {
    const upstream = netConnect(sw.target, '127.0.0.1')
    for (const s of [client, upstream]) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}) }
    client.pipe(upstream)
    upstream.pipe(client)
    client.on('close', () => { upstream.destroy() })
    upstream.on('close', () => { client.destroy() })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  sw.port = (server.address() as { port: number }).port
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return sw
}
