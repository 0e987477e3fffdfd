// A backend of native-bench/backend-rollout.mjs, one process each, driven over the IPC channel (it exits
// when its parent goes away):
//
//   node rollout-backend.mjs mux NAME JSON   a ferry/backend (dist/backend) server on a port of its own,
//                                            registered in Ferry's Redis registry (JSON: { redis, service,
//                                            ttlMs, topicEveryMs, drain: { maxMigrationsPerSec, deadlineMs } });
//                                            SIGTERM: server.drain(…), then it reports and exits 0
//   node rollout-backend.mjs ws NAME JSON    a plain WebSocket server (the `ws` package) on JSON.port (the
//                                            same port for every version: nginx and Ferry passthrough
//                                            list it statically); SIGTERM: closes every session 1001
//                                            (what a WebSocket server does when it stops), reports, exits 0
//
// The application, the same in both: a session (query: kind=p|f, room=R) counts the client messages it
// processed, `n` (its state); each client message "c:<k>" is answered "e:<k>:<n>:<NAME>". A client whose
// echoes always carry n = k saw its state survive every move. The `handoff` hook (mux) takes { n,
// frozenAt } along; the new process restores n and measures frozenAt → arrival. Every session is
// subscribed to its room; every topicEveryMs the backend publishes "t:<room>:<NAME>:<seq>" to each room.
//
// IPC out: { type: 'listening', port } once it listens; { type: 'drained', result, report } after SIGTERM.
// IPC in:  { cmd: 'report' } → { type: 'report', … }; { cmd: 'marker' } → publishes "t:<room>:<NAME>:end"
//          to every room → { type: 'marker', rooms }.
import { createServer } from 'node:http'
import { join, dirname } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const [mode, name, json] = process.argv.slice(2)
const opts = JSON.parse(json ?? '{}')
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const send = (m, cb) => { if (process.connected) process.send(m, cb); else cb?.() }
process.on('disconnect', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))

const counts = { created: { p: 0, f: 0 }, closed: { p: 0, f: 0 }, handedOffOut: 0, closeCodes: {} }
/** How sessions arrived: fresh, handed over with state, handed over after a crash (lost), with a state error. */
const arrivals = { fresh: 0, state: 0, lost: 0, stateError: 0, withoutTopic: 0 }
/** ms since epoch of each handoff arrival (`state`, `lost`) and of each `handoff` hook call (drain). */
const times = { state: [], lost: [], hook: [] }
/** frozenAt (the old process's hook) → 'session' here, per session handed over with state. */
const handoffMs = []
/** Open sessions → their record; rooms → the sessions in them (ws mode publishes itself). */
const open = new Map()
const rooms = new Map()
let topicSeq = 0

function session (s, kind, room, restored) {
  const rec = { kind, room, n: restored ?? 0 }
  open.set(s, rec)
  counts.created[kind]++
  let set = rooms.get(room)
  if (set === undefined) { set = new Set(); rooms.set(room, set) }
  set.add(s)
  return rec
}
function ended (s, code) {
  const rec = open.get(s)
  if (rec === undefined) return
  open.delete(s)
  rooms.get(rec.room)?.delete(s)
  counts.closed[rec.kind]++
  counts.closeCodes[code] = (counts.closeCodes[code] ?? 0) + 1
}
/** "c:<k>" → "e:<k>:<n>:<NAME>", n counted in the session's state. */
function answer (rec, data) {
  const text = data.toString()
  if (!text.startsWith('c:')) return undefined
  rec.n++
  return `e:${text.slice(2)}:${rec.n}:${name}`
}
function report () {
  let p = 0
  let f = 0
  for (const r of open.values()) { if (r.kind === 'p') p++; else f++ }
  return { type: 'report', name, counts, arrivals, times, handoffMs, sessions: { p, f }, topicSeq, stats: server?.stats?.() }
}

let server
let publish
if (mode === 'mux') {
  const { createMuxServer } = await import(pathToFileURL(join(root, 'dist/backend/index.js')).href)
  server = createMuxServer({ host: '127.0.0.1', port: 0, id: name, register: { redis: opts.redis, service: opts.service, ttlMs: opts.ttlMs } })
  server.on('error', () => {})
  server.on('session', (s) => {
    const q = s.query
    const kind = q.get('kind') === 'f' ? 'f' : 'p'
    const room = q.get('room') ?? 'lobby'
    const h = s.handoff
    let restored
    if (h === undefined) arrivals.fresh++
    else if (h.lost === true) { arrivals.lost++; times.lost.push(Date.now()) } else if (h.stateError !== undefined || h.state === undefined) arrivals.stateError++
    else {
      arrivals.state++
      times.state.push(Date.now())
      restored = h.state.n
      if (typeof h.state.frozenAt === 'number') handoffMs.push(Date.now() - h.state.frozenAt)
    }
    const rec = session(s, kind, room, restored)
    // A moved session arrives subscribed to its topics (the gateway carries them); a fresh one joins its room.
    if (h === undefined) s.subscribe(room)
    else if (!s.topics.has(room)) { arrivals.withoutTopic++; s.subscribe(room) }
    s.on('error', () => {})
    s.on('message', (data) => { const out = answer(rec, data); if (out !== undefined) s.send(out) })
    s.on('close', (code) => { if (s.handedOff) counts.handedOffOut++; ended(s, code) })
  })
  server.on('handoff', (s) => {
    times.hook.push(Date.now())
    return { n: open.get(s)?.n ?? 0, frozenAt: Date.now() }
  })
  await server.listening
  publish = (room, text) => { server.publish(room, text) }
  process.on('SIGTERM', () => {
    server.drain({ maxMigrationsPerSec: opts.drain.maxMigrationsPerSec, deadlineMs: opts.drain.deadlineMs }).then((result) => {
      send({ type: 'drained', result, report: report() }, () => process.exit(0))
    }, (err) => { console.error(err); process.exit(1) })
  })
  send({ type: 'listening', port: server.address().port })
} else if (mode === 'ws') {
  const { WebSocketServer } = await import(pathToFileURL(join(root, 'node_modules/ws/wrapper.mjs')).href)
  const http = createServer()
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false })
  wss.on('connection', (ws, req) => {
    const q = new URL(req.url, 'http://x').searchParams
    const rec = session(ws, q.get('kind') === 'f' ? 'f' : 'p', q.get('room') ?? 'lobby')
    arrivals.fresh++
    ws.on('error', () => {})
    ws.on('message', (data) => { const out = answer(rec, data); if (out !== undefined) ws.send(out) })
    ws.on('close', (code) => { ended(ws, code) })
  })
  await new Promise((resolve, reject) => { http.once('error', reject); http.listen({ port: opts.port, host: '127.0.0.1', backlog: 4096 }, resolve) })
  publish = (room, text) => { for (const ws of rooms.get(room) ?? []) if (ws.readyState === 1) ws.send(text) }
  process.on('SIGTERM', () => {
    http.close()
    for (const ws of wss.clients) ws.close(1001, 'server going away')
    const t0 = Date.now()
    // Closing handshakes done (or 2 s), then report and go.
    const done = () => { if (wss.clients.size > 0 && Date.now() - t0 < 2000) { setTimeout(done, 20); return } send({ type: 'drained', result: { ms: Date.now() - t0 }, report: report() }, () => process.exit(0)) }
    done()
  })
  send({ type: 'listening', port: http.address().port })
} else {
  console.error('usage: rollout-backend.mjs mux|ws NAME JSON')
  process.exit(2)
}

setInterval(() => {
  topicSeq++
  for (const room of rooms.keys()) publish(room, `t:${room}:${name}:${topicSeq}`)
}, opts.topicEveryMs ?? 2000)

process.on('message', (m) => {
  if (m?.cmd === 'report') send(report())
  else if (m?.cmd === 'marker') {
    for (const room of rooms.keys()) publish(room, `t:${room}:${name}:end`)
    send({ type: 'marker', rooms: rooms.size })
  }
})
