import { createServer } from 'node:http'
import t from 'tap'
import { WebSocketServer } from 'ws'
import { startFerry } from './helpers/ferry.js'
import { connect } from './helpers/mux.js'

t.test('an upgrade on a route to an http upstream is passed through to its endpoints (like nginx with Upgrade headers); plain requests still pooled', async (t) => {
  const wss = new WebSocketServer({ noServer: true })
  const upgrades: string[] = []
  const server = createServer((req, res) => { res.end(`plain ${req.url}`) })
  server.on('upgrade', (req, socket, head) => {
    upgrades.push(req.url ?? '')
    wss.handleUpgrade(req, socket, head, (ws) => { ws.on('message', (d, b) => { ws.send(d, { binary: b }) }) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  const port = (server.address() as { port: number }).port
  const f = await startFerry(t, { upstreams: { app: { protocol: 'http', endpoints: [`127.0.0.1:${port}`] } }, routes: [{ match: { path: '/' }, upstream: 'app' }] })
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/live?x=1`)
  c.ws.send('over the http route')
  await c.waitMessages(1)
  t.equal(c.messages[0]!.data.toString(), 'over the http route', 'WebSocket echo through an http route')
  t.same(upgrades, ['/live?x=1'], 'the backend saw the upgrade with its path and query')
  const r = await fetch(`http://127.0.0.1:${f.httpPort}/plain`)
  t.equal(await r.text(), 'plain /plain', 'plain requests on the same route still go through the HTTP pool')
  c.ws.close()
})
