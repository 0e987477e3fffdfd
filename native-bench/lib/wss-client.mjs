// wss-client: the WSS load generator of native-bench/tls.mjs (lib/wsgen.c speaks no TLS). One Node
// process, the `ws` package over Node's TLS, driven over stdin/stdout with one JSON line each way, like
// wsgen. Every payload carries its session and sequence number and every echo is checked byte for byte
// and in order (wrong: `bad`; never echoed: `lost`); a session closed by the far end counts in `closed`.
//
//   node wss-client.mjs '{"port":N,"path":"/ws","sessions":100,"size":64,"servername":"bench.test","ca":"FILE"}'
//
// It opens the sessions (at most 100 handshakes at once), prints {"event":"ready",opened,failed,error,version,cipher},
// then reads commands (`version` and `cipher`: the first session's TLS):
//   go SECONDS      ping-pong on every session (one message in flight each) for SECONDS; prints
//                   {"event":"result",received,seconds,p50ms,p99ms,lost,bad,closed,cpu}
//   steady MS       every session sends one message every MS ms (spread over the interval), latencies
//                   kept per phase; phase NAME starts the next phase; stop stops sending, waits (≤ 5 s)
//                   for the echoes under way and prints {"event":"steady",phases:[{name,sent,received,p50ms,
//                   p99ms,maxMs}],lost,bad,closed,closedDetail}
//   close           closes every session, prints {"event":"closed"} and exits (end of stdin: the same)
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json'))
const WebSocket = require('ws')

const o = JSON.parse(process.argv[2])
const size = o.size ?? 64
const out = (x) => process.stdout.write(JSON.stringify(x) + '\n')
const now = () => performance.now()
const pct = (xs, p) => { if (xs.length === 0) return NaN; const s = Float64Array.from(xs).sort(); return s[Math.min(s.length - 1, Math.max(0, Math.ceil(s.length * p / 100) - 1))] }

const payload = (i, seq) => { const h = `${i}:${seq}:`; return h + 'x'.repeat(Math.max(0, size - h.length)) }
const S = [] // { ws, i, sent, recv, sentAt: Map(seq → ms), open }
let bad = 0; let closed = 0; const closedDetail = []; let closing = false
let onEcho = () => {}

function open (i) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`wss://127.0.0.1:${o.port}${o.path}`, { servername: o.servername, ...(o.ca ? { ca: readFileSync(o.ca) } : { rejectUnauthorized: false }), perMessageDeflate: false })
    const s = { ws, i, sent: 0, recv: 0, sentAt: new Map(), open: false }
    ws.once('open', () => { s.open = true; S.push(s); resolve(null) })
    ws.once('error', (err) => { if (!s.open) resolve(err.message) })
    ws.on('message', (data, isBinary) => {
      const seq = s.recv + 1
      if (isBinary || data.toString() !== payload(i, seq)) bad++
      s.recv = seq
      const t0 = s.sentAt.get(seq); s.sentAt.delete(seq)
      onEcho(s, t0 === undefined ? NaN : now() - t0)
    })
    ws.on('close', (code) => { if (s.open && !closing) { closed++; if (closedDetail.length < 10) closedDetail.push({ session: i, code, at: Date.now() }) } })
  })
}
function send (s) { const seq = ++s.sent; s.sentAt.set(seq, now()); s.ws.send(payload(s.i, seq)) }

async function openAll () {
  let next = 0; let failed = 0; let error = ''
  const worker = async () => { while (next < o.sessions) { const e = await open(next++); if (e !== null) { failed++; error ||= e } } }
  await Promise.all(Array.from({ length: Math.min(100, o.sessions) }, worker))
  const sock = S[0]?.ws._socket
  out({ event: 'ready', opened: S.length, failed, error, version: sock?.getProtocol?.(), cipher: sock?.getCipher?.()?.name })
}

const lostNow = () => S.reduce((a, s) => a + (s.sent - s.recv), 0)

async function go (seconds) {
  const lat = []; let received = 0; let running = true
  const c0 = process.cpuUsage(); const t0 = now()
  onEcho = (s, ms) => { received++; lat.push(ms); if (running && s.ws.readyState === WebSocket.OPEN) send(s) }
  for (const s of S) send(s)
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  running = false
  const wall = (now() - t0) / 1000; const c = process.cpuUsage(c0)
  const got = received
  await drain()
  out({ event: 'result', received: got, seconds: wall, p50ms: pct(lat, 50), p99ms: pct(lat, 99), lost: lostNow(), bad, closed, cpu: (c.user + c.system) / 1e6 })
}

async function drain () {
  const until = now() + 5000
  while (lostNow() > 0 && now() < until && S.some((s) => s.ws.readyState === WebSocket.OPEN)) await new Promise((resolve) => setTimeout(resolve, 20))
}

let steady
function startSteady (ms) {
  steady = { phases: [{ name: 'start', sent: 0, received: 0, lat: [] }], timers: [] }
  const phaseOfSeq = new Map() // `${i}:${seq}` → the phase it was sent in
  onEcho = (s, latMs) => { const p = phaseOfSeq.get(`${s.i}:${s.recv}`); phaseOfSeq.delete(`${s.i}:${s.recv}`); if (p) { p.received++; p.lat.push(latMs) } }
  S.forEach((s, k) => {
    const tick = () => { if (s.ws.readyState !== WebSocket.OPEN) return; const p = steady.phases.at(-1); p.sent++; phaseOfSeq.set(`${s.i}:${s.sent + 1}`, p); send(s) }
    steady.timers.push(setTimeout(() => { tick(); steady.timers.push(setInterval(tick, ms)) }, Math.floor(k * ms / S.length)))
  })
}
async function stopSteady () {
  for (const t of steady.timers) clearInterval(t)
  await drain()
  out({ event: 'steady', phases: steady.phases.map((p) => ({ name: p.name, sent: p.sent, received: p.received, p50ms: pct(p.lat, 50), p99ms: pct(p.lat, 99), maxMs: pct(p.lat, 100) })), lost: lostNow(), bad, closed, closedDetail, open: S.filter((s) => s.ws.readyState === WebSocket.OPEN).length })
}

async function closeAll () {
  closing = true
  await Promise.race([Promise.all(S.map((s) => new Promise((resolve) => { if (s.ws.readyState === WebSocket.CLOSED) resolve(); else { s.ws.once('close', resolve); s.ws.close() } }))), new Promise((resolve) => setTimeout(resolve, 3000))])
  for (const s of S) s.ws.terminate()
  out({ event: 'closed' })
  process.exit(0)
}

await openAll()
const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/)
  if (cmd === 'go') go(Number(arg))
  else if (cmd === 'steady') startSteady(Number(arg))
  else if (cmd === 'phase') steady.phases.push({ name: arg, sent: 0, received: 0, lat: [] })
  else if (cmd === 'stop') stopSteady()
  else if (cmd === 'close') closeAll()
})
rl.on('close', () => { if (!closing) closeAll() })
