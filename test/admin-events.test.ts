import t from 'tap'
import { connect as tcpConnect, type Socket } from 'node:net'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, metric, waitFor } from './helpers/ferry.js'
import { startMuxBackend, connect, muxConfig } from './helpers/mux.js'
import { adminRequest, sseClient } from './helpers/admin.js'

/**
 * The console's live channel, GET /events (Server-Sent Events): one timer pushes a snapshot of the
 * status to every subscriber; a subscriber that stops reading is dropped after admin.console.maxMissed
 * missed snapshots, counted, and the others keep receiving.
 */

const TOKEN = 'events-token-0123456789'

t.test('/events: hello with history, then snapshots in order carrying the live session count and message rate', async (t) => {
  const backend = await startMuxBackend(t, (s) => { s.on('message', (d, binary) => { s.send(d, { binary }) }) })
  const f = await startFerry(t, muxConfig([`127.0.0.1:${backend.port}`], {}, {}, { admin: { token: TOKEN, console: { intervalMs: 200 } } }))
  const sse = await sseClient(f, TOKEN)
  t.teardown(() => { sse.close() })
  t.equal(sse.status, 200, '/events with the token → 200')
  const hello = await sse.waitFor((e) => e.event === 'hello', 'the hello event')
  t.equal(hello.data.intervalMs, 200, 'the hello names the push interval (200 ms, as configured)')
  t.ok(Array.isArray(hello.data.history), 'the hello carries the rate history (an array)')
  const first = await sse.waitFor((e) => e.event === 'snapshot', 'a first snapshot')
  t.equal(first.data.status.state, 'running', 'a snapshot carries the status (state running)')
  t.equal(first.data.status.clients.webSocketSessions, 0, 'no sessions yet: 0 in the snapshot')

  const clients = await Promise.all(Array.from({ length: 3 }, async () => await connect(`ws://127.0.0.1:${f.httpPort}/chat`)))
  const three = await sse.waitFor((e) => e.event === 'snapshot' && e.data.status.clients.webSocketSessions === 3, 'a snapshot with 3 sessions')
  t.same(three.data.status.websocket.byMode, { ws: 0, mux: 3 }, 'the 3 sessions are counted by kind: mux 3, ws 0')
  // Messages flow until a snapshot shows a message rate above 0 (the echo doubles them).
  let sending = true
  const pump = (async () => {
    while (sending) {
      for (const c of clients) c.ws.send('ping')
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })()
  const busy = await sse.waitFor((e) => e.event === 'snapshot' && e.data.rates !== null && e.data.rates.messagesPerSec > 0, 'a snapshot with messagesPerSec > 0')
  sending = false
  await pump
  t.ok(busy.data.rates.messagesPerSec > 0, `the message rate is computed from the counters (${busy.data.rates.messagesPerSec}/s > 0)`)
  for (const c of clients) c.ws.close()
  await sse.waitFor((e) => e.event === 'snapshot' && e.data.status.clients.webSocketSessions === 0 && e.id > three.id, 'a snapshot with 0 sessions again')
  t.pass('after the clients closed, the count went back to 0')
  const snaps = sse.events.filter((e) => e.event === 'snapshot').map((e) => e.id)
  t.ok(snaps.every((id, i) => i === 0 || id > snaps[i - 1]!), `snapshot ids only grow (${snaps.length} snapshots)`)
  t.equal(await metric(f, 'ferry_console_subscribers'), 1, 'ferry_console_subscribers is 1')
  sse.close()
  await waitFor('the subscriber gone from ferry_console_subscribers', async () => await metric(f, 'ferry_console_subscribers') === 0)
  t.pass('a closed subscriber is removed (ferry_console_subscribers 0)')
})

t.test('/events: a subscriber that never reads is dropped and counted; another keeps receiving; maxSubscribers is enforced', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  // Many routes make snapshots large (~150 KB), so a socket that is never read fills its kernel
  // buffers within a few dozen snapshots instead of thousands.
  const routes = Array.from({ length: 1200 }, (_, i) => ({ match: { path: `/route-number-${String(i).padStart(5, '0')}/with/a/long/prefix` }, upstream: 'api' }))
  const f = await startFerry(t, {
    ...httpConfig([backend.address]),
    routes,
    admin: { token: TOKEN, console: { intervalMs: 100, maxMissed: 5, maxSubscribers: 2 } },
  }, { timeoutMs: 30_000 })

  const good = await sseClient(f, TOKEN)
  t.teardown(() => { good.close() })
  await good.waitFor((e) => e.event === 'snapshot', 'a first snapshot for the reading subscriber')

  // The slow one: a raw socket that sends its request and never reads a byte.
  const slow: Socket = tcpConnect(f.adminPort, '127.0.0.1')
  t.teardown(() => { slow.destroy() })
  slow.on('error', () => {})
  const slowClosed = new Promise<void>((resolve) => { slow.on('close', () => { resolve() }) })
  await new Promise<void>((resolve) => slow.once('connect', resolve))
  slow.pause()
  slow.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`)
  await waitFor('2 subscribers', async () => await metric(f, 'ferry_console_subscribers') === 2, 15_000)

  const third = await adminRequest(f, '/events', { token: TOKEN })
  t.equal(third.status, 503, 'a third subscriber beyond maxSubscribers 2 → 503')
  t.equal(JSON.parse(third.body).error.code, 'FERRY_ERR_CONSOLE_FULL', 'naming FERRY_ERR_CONSOLE_FULL')

  const started = Date.now()
  await waitFor('the slow subscriber dropped', async () => await metric(f, 'ferry_console_dropped_total') === 1, 120_000, 100)
  t.comment(`dropped after ${Date.now() - started} ms`)
  t.equal(await metric(f, 'ferry_console_dropped_total'), 1, 'exactly 1 subscriber dropped (ferry_console_dropped_total 1)')
  // A paused socket does not see its peer close: read what it was sent, then the end.
  slow.resume()
  await slowClosed
  t.pass('the slow subscriber\'s connection was closed by the gateway')
  const dropLogged = f.logs.find((l) => l.code === 'FERRY_ERR_CONSOLE_SLOW')
  t.ok(dropLogged, 'the drop was logged with FERRY_ERR_CONSOLE_SLOW')
  const seqAtDrop = good.events.at(-1)!.id
  const later = await good.waitFor((e) => e.event === 'snapshot' && e.id >= seqAtDrop + 3, 'three more snapshots for the reading subscriber')
  t.ok(later.id >= seqAtDrop + 3, `the reading subscriber keeps receiving (snapshot ${later.id} after ${seqAtDrop})`)
  t.equal(await metric(f, 'ferry_console_subscribers'), 1, 'the reading subscriber was not dropped (ferry_console_subscribers 1)')
  const st = JSON.parse((await adminRequest(f, '/status', { token: TOKEN })).body)
  t.same(st.admin.console, { subscribers: 1, dropped: 1, intervalMs: 100 }, '/status admin.console: 1 subscriber, 1 dropped')
})
