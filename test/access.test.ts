import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import WebSocket, { WebSocketServer } from 'ws'
import { parse, stringify } from 'yaml'
import { startBackend } from './helpers/backend.js'
import { metric, runCli, startFerry, writeConfig, type Teardown } from './helpers/ferry.js'
import { send } from './helpers/http.js'

/**
 * Access lists (issue 21, item 5; docs/edge.md): per route `access.allow` / `access.deny` (client
 * addresses) and `access.origins` (WebSocket Origin allowlist), checked right after routing and before
 * anything else, 403 FERRY_ERR_ACCESS_DENIED, counted, reloadable. Real HTTP and ws backends; real ws
 * clients sending the Origin a browser would.
 */

async function wsBackend (t: Teardown): Promise<{ port: number, upgrades: () => number }> {
  let n = 0
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  wss.on('connection', (ws) => { n++; ws.on('message', (d) => ws.send(d)) })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise((resolve) => wss.close(resolve)) })
  return { port: (wss.address() as { port: number }).port, upgrades: () => n }
}

/** Opens a WebSocket; resolves with 101 or the HTTP status it was refused with. */
async function upgrade (url: string, headers: Record<string, string> = {}): Promise<number> {
  return await new Promise((resolve) => {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false })
    ws.once('open', () => { ws.close(); resolve(101) })
    ws.once('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); ws.terminate() })
    ws.once('error', () => resolve(0))
  })
}

function config (httpPort: number, wsPort: number, access: Record<string, unknown>): Record<string, unknown> {
  return {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${httpPort}`] }, chat: { protocol: 'ws', endpoints: [`127.0.0.1:${wsPort}`] } },
    routes: [
      { match: { path: '/private' }, upstream: 'api', access: access.private },
      { match: { path: '/blocked' }, upstream: 'api', access: access.blocked },
      { match: { path: '/chat' }, upstream: 'chat', access: access.chat },
      { match: { path: '/' }, upstream: 'api' },
    ].map((r) => r.access === undefined ? (({ access: _a, ...rest }) => rest)(r) : r),
    http: { trustedProxies: ['127.0.0.2'] },
    logging: { level: 'info', accessLog: false },
  }
}

t.test('addresses: deny before allow, allow when it lists anything, the client as trusted proxies resolve it; nothing reaches the backend; counted', async (t) => {
  const seen: string[] = []
  const api = await startBackend(t, (req, res) => { seen.push(req.url ?? ''); res.end('ok') })
  const chat = await wsBackend(t)
  const f = await startFerry(t, config(api.port, chat.port, {
    private: { allow: ['10.0.0.0/8'] },
    blocked: { allow: ['127.0.0.0/8'], deny: ['127.0.0.1'] },
    chat: { deny: ['127.0.0.1/32'] },
  }))
  const r1 = await send(f, '/private/x')
  t.equal(r1.status, 403, '127.0.0.1 is not in allow 10.0.0.0/8: 403')
  t.equal(r1.code, 'FERRY_ERR_ACCESS_DENIED', 'error code FERRY_ERR_ACCESS_DENIED')
  t.equal((await send(f, '/blocked')).status, 403, 'deny 127.0.0.1 wins over allow 127.0.0.0/8')
  t.equal((await send(f, '/open')).status, 200, 'a route without an access list serves 127.0.0.1')
  t.equal(await upgrade(`ws://127.0.0.1:${f.httpPort}/chat`), 403, 'a WebSocket upgrade from a denied address: 403')
  t.equal(chat.upgrades(), 0, 'the ws backend saw no upgrade')
  t.same(seen, ['/open'], 'the http backend saw only the admitted request')
  // Through a trusted proxy (127.0.0.2), the client is the X-Forwarded-For address.
  const viaProxy = async (xff: string): Promise<number> => await new Promise((resolve) => {
    import('node:http').then(({ request }) => {
      const req = request({ host: '127.0.0.1', port: f.httpPort, path: '/private/y', localAddress: '127.0.0.2', headers: { 'x-forwarded-for': xff } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
      req.on('error', () => resolve(0))
      req.end()
    }, () => resolve(0))
  })
  t.equal(await viaProxy('10.1.2.3'), 200, 'via a trusted proxy, client 10.1.2.3 is in allow 10.0.0.0/8: 200')
  t.equal(await viaProxy('192.168.1.1'), 403, 'client 192.168.1.1: 403')
  t.equal(await metric(f, 'ferry_access_denied_total{route="*/private",reason="ip"}'), 2, 'ferry_access_denied_total{route="*/private",reason="ip"} = 2')
  t.equal(await metric(f, 'ferry_access_denied_total{route="*/chat",reason="ip"}'), 1, 'and 1 on */chat')
})

t.test('WebSocket Origin allowlist: listed origins and subdomains of a wildcard pass, others 403, no Origin passes', async (t) => {
  const api = await startBackend(t, (_req, res) => { res.end('ok') })
  const chat = await wsBackend(t)
  const f = await startFerry(t, config(api.port, chat.port, { chat: { origins: ['https://chat.example.com', 'https://*.example.org', 'http://localhost:3000'] } }))
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const cases: Array<[string | undefined, number]> = [
    ['https://chat.example.com', 101],
    ['HTTPS://CHAT.EXAMPLE.COM', 101],
    ['https://a.example.org', 101],
    ['https://deep.a.example.org', 101],
    ['http://localhost:3000', 101],
    [undefined, 101],
    ['https://evil.example.net', 403],
    ['https://example.org', 403],
    ['https://evilexample.org', 403],
    ['http://chat.example.com', 403],
    ['https://chat.example.com:8443', 403],
    ['http://localhost:3001', 403],
    ['null', 403],
  ]
  for (const [origin, want] of cases) {
    t.equal(await upgrade(url, origin === undefined ? {} : { origin }), want, `Origin ${origin ?? '(none)'}: ${want}`)
  }
  t.equal(chat.upgrades(), 6, 'the backend saw exactly the 6 admitted upgrades')
  t.equal(await metric(f, 'ferry_access_denied_total{route="*/chat",reason="origin"}'), 7, 'ferry_access_denied_total{reason="origin"} = 7')
})

t.test('reloadable: an access list added by a reload applies to the next request; removed, it is gone', async (t) => {
  const api = await startBackend(t, (_req, res) => { res.end('ok') })
  const chat = await wsBackend(t)
  const f = await startFerry(t, config(api.port, chat.port, {}))
  const file = String(f.child.spawnargs.at(-1))
  // The running file (with the ports the test helper chose), its /private route edited.
  const edit = (access: Record<string, unknown> | undefined): void => {
    const c = parse(readFileSync(file, 'utf8')) as { routes: Array<Record<string, unknown>> }
    if (access === undefined) delete c.routes[0]!.access
    else c.routes[0]!.access = access
    writeFileSync(file, stringify(c))
  }
  t.equal((await send(f, '/private')).status, 200, 'no list: 200')
  edit({ deny: ['127.0.0.0/8'] })
  t.equal((await (await fetch(`${f.adminUrl}/reload`, { method: 'POST' })).json()).result, 'ok', 'reload ok')
  t.equal((await send(f, '/private')).status, 403, 'after the reload: 403')
  edit(undefined)
  await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  t.equal((await send(f, '/private')).status, 200, 'list removed: 200 again')
})

t.test('config: a bad CIDR or origin names its field and the process does not start', async (t) => {
  for (const [access, field] of [
    [{ allow: ['10.0.0.0/33'] }, 'routes[0].access.allow[0]'],
    [{ deny: ['not-an-ip'] }, 'routes[0].access.deny[0]'],
    [{ origins: ['chat.example.com'] }, 'routes[0].access.origins[0]'],
    [{ origins: ['https://chat.example.com/path'] }, 'routes[0].access.origins[0]'],
  ] as const) {
    const file = writeConfig({ upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } }, routes: [{ match: { path: '/' }, upstream: 'api', access }] })
    const r = await runCli(['check', '--config', file])
    t.not(r.code, 0, `${JSON.stringify(access)}: refused`)
    t.ok((r.stdout + r.stderr).includes(field), `names ${field}`)
  }
})
