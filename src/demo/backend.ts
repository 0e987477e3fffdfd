#!/usr/bin/env node
/**
 * The bundled demo backend for `make run`: a plain node:http server that says which TCP connection
 * served each request, so a user sees Ferry reusing a few backend connections for many clients.
 *   GET /            → JSON hello (connection id, total connections accepted)
 *   GET /stats       → connections accepted so far
 *   POST /echo       → streams the body back
 *   GET /chat.html   → the chat example's page (its WebSocket goes to Ferry's /chat mux route)
 *   GET /ferry-client/index.js, wire.js → ferry/client for that page (compiled ES modules)
 */
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { parseArgs } from 'node:util'

const CHAT_PAGE = new URL('../../examples/chat/index.html', import.meta.url)
/** ferry/client as browsers load it: the compiled ES modules, no bundler. */
const CLIENT_DIR = new URL('../client/', import.meta.url)
const CLIENT_FILES = new Set(['index.js', 'wire.js'])

const { values } = parseArgs({ options: { port: { type: 'string', default: '3000' }, host: { type: 'string', default: '127.0.0.1' } } })
let accepted = 0
let open = 0
const server = createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
  const conn = (req.socket as unknown as { ferryConnId: number }).ferryConnId
  if (req.method === 'POST' && req.url === '/echo') {
    res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' })
    req.pipe(res)
    return
  }
  const client = /^\/ferry-client\/([a-z]+\.js)$/.exec(req.url ?? '')
  if (client !== null && CLIENT_FILES.has(client[1]!)) {
    res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' })
    res.end(readFileSync(new URL(client[1]!, CLIENT_DIR)))
    return
  }
  if (req.url === '/chat.html') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
    res.end(readFileSync(CHAT_PAGE))
    return
  }
  const body = req.url === '/stats'
    ? { connectionsAccepted: accepted, connectionsOpen: open }
    : { hello: 'from the Ferry demo backend', path: req.url, backendConnection: conn, connectionsAccepted: accepted, forwardedFor: req.headers['x-forwarded-for'], requestId: req.headers['x-request-id'] }
  res.writeHead(200, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body) + '\n')
})
server.on('connection', (sock) => {
  (sock as unknown as { ferryConnId: number }).ferryConnId = ++accepted
  open++
  sock.on('close', () => { open-- })
})
server.headersTimeout = 60_000
server.listen(Number(values.port), values.host, () => {
  process.stdout.write(`demo backend listening on http://${values.host}:${values.port}\n`)
})
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { server.close(); server.closeAllConnections(); process.exit(0) })
