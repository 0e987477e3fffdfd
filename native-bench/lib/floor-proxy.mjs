// The floor of Ferry's stack: a proxy on the same parts (uWebSockets.js front, an undici Pool of 16
// connections with pipelining 1, the `ws` client for WebSocket passthrough) that does nothing but forward,
// adding X-Forwarded-For as the nginx and HAProxy it is compared with do (`proxy_set_header
// X-Forwarded-For $remote_addr`, `option forwardfor`): the client's address is one getpeername per request.
// No checks, no routing, no metrics, no limits, no timers of its own, no error handling worth the name:
// not a product, a measuring stick. What it spends per request is what this stack costs before Ferry
// adds anything (native-bench/cpu-per-request.mjs, target `floor`).
//   node floor-proxy.mjs PORT HTTP_BACKEND_PORT WS_BACKEND_PORT [HOST]
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const [port, httpPort, wsPort] = process.argv.slice(2, 5).map(Number)
const host = process.argv[5] ?? '127.0.0.1'
const req = createRequire(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json'))
const uWS = req(`uWebSockets.js/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`)
const { Pool } = req('undici')
const WebSocket = req('ws')
uWS._cfg('silent')

const pool = new Pool(`http://${host}:${httpPort}`, { connections: 16, pipelining: 1 })
const app = uWS.App()

app.ws('/ws', {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  idleTimeout: 0,
  upgrade: (res, r, context) => {
    const key = r.getHeader('sec-websocket-key')
    const url = r.getUrl()
    let aborted = false
    res.onAborted(() => { aborted = true })
    const up = new WebSocket(`ws://${host}:${wsPort}${url}`, { perMessageDeflate: false })
    up.on('open', () => {
      if (aborted) { up.terminate(); return }
      res.cork(() => res.upgrade({ up }, key, '', '', context))
    })
    up.on('error', () => { if (!aborted) res.cork(() => res.writeStatus('502 Bad Gateway').end()) })
  },
  open: (ws) => {
    const { up } = ws.getUserData()
    up.on('message', (data, isBinary) => { ws.send(data, isBinary) })
    up.on('close', () => { try { ws.end(1000) } catch {} })
  },
  message: (ws, message, isBinary) => { ws.getUserData().up.send(Buffer.from(message), { binary: isBinary }) },
  close: (ws) => { ws.getUserData().up.close() },
})

app.any('/*', (res, r) => {
  const headers = []
  r.forEach((k, v) => { if (k !== 'connection' && k !== 'x-forwarded-for') headers.push(k, v) })
  headers.push('x-forwarded-for', Buffer.from(res.getRemoteAddressAsText()).toString('latin1'))
  const method = r.getCaseSensitiveMethod()
  const q = r.getQuery()
  const path = q ? `${r.getUrl()}?${q}` : r.getUrl()
  const close = r.getHeader('connection').toLowerCase() === 'close'
  let done = false
  res.onAborted(() => { done = true })
  pool.dispatch({ path, method, headers, body: null, blocking: false }, {
    onRequestStart () {},
    onResponseStart (_c, status, h, msg) { this.head = { status, h, msg } },
    onResponseData (_c, chunk) {
      if (done) return
      const { status, h, msg } = this.head
      res.cork(() => {
        res.writeStatus(`${status} ${msg || ''}`)
        for (const k in h) if (k !== 'content-length' && k !== 'connection' && k !== 'date' && k !== 'keep-alive') res.writeHeader(k, h[k])
        if (close) res.writeHeader('connection', 'close')
        res.end(chunk)
      })
      done = true
    },
    onResponseEnd () { if (!done) { done = true; res.cork(() => res.end()) } },
    onResponseError () { if (!done) { done = true; res.cork(() => res.writeStatus('502 Bad Gateway').end()) } },
  })
})

app.listen(host, port, (token) => {
  if (!token) { console.error(`floor-proxy: cannot listen on ${host}:${port}`); process.exit(1) }
  console.log(`listening ${port}`)
})
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
