// The mux echo backend of native-bench: Ferry's own backend library (dist/backend, `ferry/backend`), one
// process. Sessions arrive from Ferry as streams over its links. Same roles as ws-echo.cjs:
//   any path                 echo each message back as it came
//   …/fanout?topic=T         session.subscribe(T)
//   …/ctl?topic=T            each message is published once with server.publish(T, …); Ferry fans it out
// Prints "listening PORT" once it listens.   node mux-echo.mjs PORT [HOST]
import { join, dirname } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const port = Number(process.argv[2])
const host = process.argv[3] ?? '127.0.0.1'
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { createMuxServer } = await import(pathToFileURL(join(root, 'dist/backend/index.js')).href)

const server = createMuxServer({ host, port })
server.on('error', (err) => { console.error(`mux-echo: ${err?.stack ?? err}`) })
server.on('session', (s) => {
  const topic = s.query.get('topic') ?? ''
  if (s.path.endsWith('/ctl')) {
    s.on('message', (data, isBinary) => { server.publish(topic, data, { binary: isBinary }) })
    return
  }
  if (s.path.endsWith('/fanout') && topic !== '') s.subscribe(topic)
  s.on('message', (data, isBinary) => { s.send(data, { binary: isBinary }) })
  s.on('error', () => {})
})
await server.listening
console.log(`listening ${server.address().port}`)
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    const t = setTimeout(() => process.exit(0), 1000)
    server.close().finally(() => { clearTimeout(t); process.exit(0) })
  })
}
