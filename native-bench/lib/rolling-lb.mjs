// The load balancer of native-bench/rolling-upgrade (a Kubernetes Service stand-in), its own process so
// its sockets (two per client connection) and CPU are not the fleet's. Driven over the IPC channel; it
// exits when its parent goes away.
//
// A TCP forwarder on 127.0.0.1:0. Every ~200 ms it asks each registered pod's admin GET /readyz; each NEW
// client connection goes to the next ready pod, round robin (none ready: the connection is closed).
// Established connections stay where they are. Like kube-proxy it does not retry: a pod that refuses the
// connection (its listener is closed) resets the client's.
//
// Counts, per pod, the new connections it sent there, split by their first bytes into WebSocket
// upgrades ("upgrade: websocket" in the request head: handshakes) and the rest (HTTP), with the
// time of each WebSocket one, and connect failures.
//
// IPC in:  { cmd: 'pods', pods: [{ id, http, admin }] }   the pods to balance over (replaces the list)
//          { cmd: 'report' }                              → { type: 'report', pods: { id: { ws: [ms…], http, refused, ready } }, noPod }
// IPC out: { type: 'listening', port }, { type: 'pods', ready: [id…] } after each change of the ready set
import { createServer, connect } from 'node:net'

const POLL_MS = Number(process.argv[2] ?? 200)
const send = (m) => { if (process.connected) process.send(m) }
process.on('disconnect', () => process.exit(0))
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))

/** id → { id, http, admin, ready, ws: number[], http: number, refused: number } */
const pods = new Map()
const stats = new Map()
let rr = 0
let noPod = 0
const sockets = new Set()
/** Open pairs (for the 'pairs' debug command). */
const pairs = new Set()
const WS_RE = /\r\nupgrade:[ \t]*websocket/i

function statsOf (id) {
  let s = stats.get(id)
  if (s === undefined) { s = { ws: [], http: 0, refused: 0, conns: 0 }; stats.set(id, s) }
  return s
}

function pick () {
  const ready = [...pods.values()].filter((p) => p.ready)
  if (ready.length === 0) return undefined
  return ready[rr++ % ready.length]
}

const server = createServer({ noDelay: true }, (client) => {
  const pod = pick()
  client.on('error', () => {})
  if (pod === undefined) { noPod++; client.destroy(); return }
  const st = statsOf(pod.id)
  st.conns++
  const upstream = connect({ port: pod.http, host: '127.0.0.1', noDelay: true })
  upstream.on('error', (err) => { if (err.code === 'ECONNREFUSED') st.refused++ })
  for (const s of [client, upstream]) { sockets.add(s); s.on('close', () => sockets.delete(s)) }
  const pair = { pod: pod.id, client, upstream, kind: '?', at: Date.now(), head: '' }
  pairs.add(pair)
  upstream.on('close', () => pairs.delete(pair))
  client.once('data', (chunk) => {
    const head = chunk.toString('latin1', 0, Math.min(chunk.length, 4096))
    pair.head = head.slice(0, head.indexOf('\r\n'))
    if (WS_RE.test(head)) { pair.kind = 'ws'; st.ws.push(Date.now()) } else { pair.kind = 'http'; st.http++ }
  })
  client.pipe(upstream)
  upstream.pipe(client)
  // A reset on one side resets the other; a clean close ends the other after what it has queued.
  client.on('close', (hadError) => { if (hadError) upstream.destroy(); else upstream.end() })
  upstream.on('close', (hadError) => { if (hadError) client.destroy(); else client.end() })
  // Never leave a half-closed pair behind.
  const reap = () => setTimeout(() => { client.destroy(); upstream.destroy() }, 5000).unref()
  client.on('end', reap)
  upstream.on('end', reap)
})
server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => send({ type: 'listening', port: server.address().port }))

let lastReady = ''
async function poll () {
  await Promise.all([...pods.values()].map(async (p) => {
    try {
      const r = await fetch(`http://127.0.0.1:${p.admin}/readyz`, { signal: AbortSignal.timeout(1000) })
      await r.arrayBuffer()
      p.ready = r.status === 200 && pods.get(p.id) === p
    } catch {
      p.ready = false
    }
  }))
  const ready = [...pods.values()].filter((p) => p.ready).map((p) => p.id).join(',')
  if (ready !== lastReady) { lastReady = ready; send({ type: 'pods', ready: ready === '' ? [] : ready.split(',') }) }
}
let polling = false
setInterval(() => {
  if (polling) return
  polling = true
  poll().finally(() => { polling = false })
}, POLL_MS)

process.on('message', (m) => {
  if (m?.cmd === 'pods') {
    const next = new Map()
    for (const p of m.pods) {
      const old = pods.get(p.id)
      next.set(p.id, old !== undefined && old.http === p.http && old.admin === p.admin ? old : { ...p, ready: false })
      statsOf(p.id)
    }
    pods.clear()
    for (const [k, v] of next) pods.set(k, v)
    lastReady = '\u0000' // report the ready set after the next poll
  } else if (m?.cmd === 'report') {
    const out = {}
    for (const [id, s] of stats) out[id] = { ...s, ready: pods.get(id)?.ready ?? false }
    send({ type: 'report', pods: out, noPod, open: sockets.size })
  } else if (m?.cmd === 'pairs') {
    const now = Date.now()
    send({ type: 'pairs', pairs: [...pairs].filter((p) => m.pod === undefined || p.pod === m.pod).map((p) => ({ pod: p.pod, kind: p.kind, head: p.head, ageMs: now - p.at, upstreamLocalPort: p.upstream.localPort, clientRemotePort: p.client.remotePort, clientRead: p.client.bytesRead, clientWritten: p.client.bytesWritten, clientDestroyed: p.client.destroyed, upstreamDestroyed: p.upstream.destroyed })) })
  }
})
