// The WebSocket echo backend of native-bench: uWebSockets.js (the native binary Ferry itself runs on),
// one process, one thread. Serves every path:
//   any path                 echo: each message goes back as it came (text stays text)
//   …/fanout?topic=T         the session subscribes to topic T (and still echoes)
//   …/ctl?topic=T            control session: each message it sends is published to topic T (app.publish,
//                            uWS's own pub/sub), so the backend fans out itself: the reference for Ferry's
//                            mux fan-out, and through a passthrough proxy one message per subscriber
// Prints "listening PORT" once it listens.   node ws-echo.cjs PORT [HOST]
'use strict'
const { createRequire } = require('node:module')
const { join } = require('node:path')

const port = Number(process.argv[2])
const host = process.argv[3] ?? '127.0.0.1'
const root = join(__dirname, '..', '..')
const req = createRequire(join(root, 'package.json'))
// The binary itself, as Ferry loads it: the package would silently fall back to a JavaScript version.
const uWS = req(`uWebSockets.js/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`)

let opened = 0
const app = uWS.App()
app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  maxBackpressure: 64 * 1024 * 1024,
  idleTimeout: 0,
  upgrade: (res, req, context) => {
    const url = req.getUrl()
    const topic = new URLSearchParams(req.getQuery() ?? '').get('topic') ?? ''
    const role = url.endsWith('/ctl') ? 'ctl' : url.endsWith('/fanout') ? 'sub' : 'echo'
    res.upgrade({ role, topic }, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'), req.getHeader('sec-websocket-extensions'), context)
  },
  open: (ws) => {
    opened++
    const u = ws.getUserData()
    if (u.role === 'sub' && u.topic !== '') ws.subscribe(u.topic)
  },
  message: (ws, message, isBinary) => {
    const u = ws.getUserData()
    if (u.role === 'ctl') app.publish(u.topic, message, isBinary)
    else ws.send(message, isBinary)
  },
})
app.get('/stats', (res) => { res.end(JSON.stringify({ opened })) })
app.listen(host, port, (token) => {
  if (!token) { console.error(`ws-echo: cannot listen on ${host}:${port}`); process.exit(1) }
  console.log(`listening ${port}`)
})
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
