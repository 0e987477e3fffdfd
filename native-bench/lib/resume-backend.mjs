// The backend of native-bench/resume: ferry/backend (dist/backend), one process, echoing every message.
// Prints "listening PORT", then a JSON line of counters every 250 ms:
//   { sessions, closes (opened / closed so far), the same for resumable (ferry/client) sessions only
//     as ferrySessions / ferryCloses, open, parked, resumed, refused, replayed }
//   node resume-backend.mjs [HOST]
import { join, dirname } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const host = process.argv[2] ?? '127.0.0.1'
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { createMuxServer } = await import(pathToFileURL(join(root, 'dist/backend/index.js')).href)

const server = createMuxServer({ host, port: 0, resume: { windowMs: 60_000 } })
let sessions = 0
let closes = 0
let ferrySessions = 0
let ferryCloses = 0
server.on('session', (s) => {
  sessions++
  if (s.resumable) ferrySessions++
  s.on('message', (data, isBinary) => { s.send(data, { binary: isBinary }) })
  s.on('close', () => { closes++; if (s.resumable) ferryCloses++ })
  s.on('error', () => {})
})
await server.listening
console.log(`listening ${server.address().port}`)
const timer = setInterval(() => {
  const st = server.stats()
  const refused = Object.values(st.resumeRefused).reduce((a, b) => a + b, 0)
  console.log(JSON.stringify({ sessions, closes, ferrySessions, ferryCloses, open: st.sessions, parked: st.parked, resumed: st.resumed, refused, replayed: st.replayed }))
}, 250)
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { clearInterval(timer); server.close().finally(() => process.exit(0)) })
}
