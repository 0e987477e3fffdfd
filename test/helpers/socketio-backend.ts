import { createServer } from 'node:http'
import { Server } from 'socket.io'

/**
 * One Socket.IO backend process (test/http-sticky.test.ts): its own socket.io Server, default transports,
 * no shared adapter, so a session exists on this process only. `echo` acks what it gets. GET /whoami
 * answers its name (GET /slow too, after 1.5 s); GET /stats the counts below as JSON. Prints `{"port":N}` once listening.
 */
const name = process.argv[2] ?? 'backend'
let connections = 0
let upgrades = 0
const errors: Record<string, number> = {}
const server = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0]
  if (path === '/whoami') { res.end(name); return }
  if (path === '/slow') { setTimeout(() => { res.end(name) }, 1500); return }
  if (path === '/stats') { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ name, connections, upgrades, errors })); return }
  // Everything else is socket.io's (it attaches its own 'request' listener).
})
// `cookie` as the third argument: socket.io's own `cookie` option (it sets `io=<sid>` on the handshake).
const io = new Server(server, process.argv[3] === 'cookie' ? { cookie: true } : {})
io.engine.on('connection_error', (err: { code: number, message: string }) => {
  errors[err.message] = (errors[err.message] ?? 0) + 1
})
io.on('connection', (socket) => {
  connections++
  socket.conn.once('upgrade', () => { upgrades++ })
  socket.on('echo', (x: unknown, ack: (y: unknown) => void) => { ack(x) })
})
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as { port: number }).port }) + '\n')
})
process.on('SIGTERM', () => { io.close(); process.exit(0) })
