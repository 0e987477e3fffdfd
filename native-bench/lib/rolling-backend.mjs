// A backend of native-bench/rolling-upgrade, one process each, driven over the IPC channel (it exits
// when its parent goes away):
//
//   node rolling-backend.mjs mux [NAME]   a ferry/backend (dist/backend) echo server, resume on (30 s window)
//   node rolling-backend.mjs http         a plain HTTP/1.1 server answering 200 "ok" to anything
//
// It sends { type: 'listening', port } once it listens, then answers commands:
//   { cmd: 'stream', on, everyMs }  mux: start/stop a numbered message stream to every resumable
//                                   session ("s:<k>", one per everyMs per session, from k = 1)
//   { cmd: 'report' }               → { type: 'report', … } (counters; mux: one row per ferry/client session)
//
// Resumable (ferry/client) sessions are identified by their `cid` query parameter (stable across
// resumes). Their client sends "c:<k>" (k = 1, 2, …): the backend checks that sequence (missing,
// duplicated, reordered) and answers "e:<k>". Plain sessions are echoed as they are.
import { createServer } from 'node:http'
import { join, dirname } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const mode = process.argv[2]
const name = process.argv[3] ?? mode
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const send = (m) => { if (process.connected) process.send(m) }
process.on('disconnect', () => process.exit(0))
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))

if (mode === 'http') {
  let requests = 0
  const server = createServer((req, res) => {
    requests++
    req.resume()
    req.on('end', () => { res.setHeader('content-type', 'text/plain'); res.end('ok') })
  })
  server.keepAliveTimeout = 120_000
  server.listen({ port: 0, host: '127.0.0.1', backlog: 1024 }, () => send({ type: 'listening', port: server.address().port }))
  process.on('message', (m) => {
    if (m?.cmd === 'report') send({ type: 'report', requests })
  })
} else if (mode === 'mux') {
  const { createMuxServer } = await import(pathToFileURL(join(root, 'dist/backend/index.js')).href)
  const server = createMuxServer({ host: '127.0.0.1', port: 0, id: name, resume: { windowMs: 30_000 } })
  const counts = { created: { resumable: 0, plain: 0 }, closed: { resumable: 0, plain: 0 }, detaches: 0, resumes: 0, plainMessages: 0 }
  /** cid → { s (the Session), sent, in: { count, max, missing, dup, reordered }, sessions, closes } */
  const recs = new Map()
  const closeCodes = {}
  let stream
  server.on('session', (s) => {
    const resumable = s.resumable
    counts.created[resumable ? 'resumable' : 'plain']++
    s.on('error', () => {})
    s.on('close', (code) => {
      counts.closed[resumable ? 'resumable' : 'plain']++
      if (resumable) {
        closeCodes[code] = (closeCodes[code] ?? 0) + 1
        const r = recs.get(s.query.get('cid') ?? '')
        if (r !== undefined) r.closes++
      }
    })
    if (!resumable) {
      s.on('message', (data, binary) => { counts.plainMessages++; s.send(data, { binary }) })
      return
    }
    const cid = s.query.get('cid') ?? `?${s.id}`
    let r = recs.get(cid)
    if (r === undefined) {
      r = { s, sent: 0, due: 0, in: { count: 0, max: 0, missing: new Set(), dup: 0, reordered: 0 }, sessions: 0, closes: 0 }
      recs.set(cid, r)
    }
    r.s = s
    r.sessions++
    r.due = performance.now() + Math.random() * (stream?.everyMs ?? 0)
    s.on('detach', () => { counts.detaches++ })
    s.on('resume', () => { counts.resumes++ })
    s.on('message', (data) => {
      const text = data.toString()
      if (!text.startsWith('c:')) return
      const k = Number(text.slice(2))
      const x = r.in
      x.count++
      if (k === x.max + 1) x.max = k
      else if (k > x.max + 1) { for (let j = x.max + 1; j < k; j++) x.missing.add(j); x.max = k } else if (x.missing.delete(k)) x.reordered++
      else x.dup++
      s.send(`e:${k}`)
    })
  })
  await server.listening
  send({ type: 'listening', port: server.address().port })
  process.on('message', (m) => {
    if (m?.cmd === 'stream') {
      if (stream !== undefined) { clearInterval(stream.timer); stream = undefined }
      if (m.on) {
        const everyMs = m.everyMs
        const now = performance.now()
        for (const r of recs.values()) r.due = now + Math.random() * everyMs
        stream = {
          everyMs,
          timer: setInterval(() => {
            const t = performance.now()
            for (const r of recs.values()) {
              if (r.due > t || r.s.readyState !== 1) continue
              r.due += everyMs
              if (r.due < t) r.due = t + everyMs
              r.s.send(`s:${++r.sent}`)
            }
          }, 50),
        }
      }
      send({ type: 'stream', on: stream !== undefined })
    } else if (m?.cmd === 'report') {
      const st = server.stats()
      const rows = []
      for (const [cid, r] of recs) rows.push([cid, r.sent, r.in.count, r.in.max, r.in.missing.size, r.in.dup, r.in.reordered, r.sessions, r.closes, r.s.parked ? 1 : 0])
      send({ type: 'report', name, counts, closeCodes, stats: { sessions: st.sessions, parked: st.parked, resumed: st.resumed, refused: st.resumeRefused, expired: st.expired, replayed: st.replayed }, links: server.links().map((l) => ({ gateway: l.gateway, sessions: l.sessions })), rows })
    }
  })
} else {
  console.error('usage: rolling-backend.mjs mux [NAME] | http')
  process.exit(2)
}
