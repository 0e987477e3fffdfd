import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import { FerryClient } from '../src/client/index.js'
import { parseResumeOffer } from '../src/client/wire.js'
import { ROOT, waitFor, type Teardown } from './helpers/ferry.js'
import { freePort } from './helpers/redis.js'

/**
 * ferry/client against a real `ws` server on 127.0.0.1 playing the gateway's side of the ferry.v1 wire:
 * which closes end it, exact ack counting and resend after a partial welcome, plain mode with an
 * application subprotocol, refused handshakes. client-lib.test.ts covers resume through kills, resets,
 * bounds and retry hints; resume.test.ts the real gateways and backends.
 */

interface Conn { ws: WebSocket, protocols: string[], at: number }

async function server (t: Teardown, opts: { ferry?: boolean, onConn?: (c: Conn) => void, app?: string } = {}): Promise<{ url: string, conns: Conn[] }> {
  const conns: Conn[] = []
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    handleProtocols: (protocols) => (opts.ferry ?? true) && protocols.has('ferry.v1') ? 'ferry.v1' : opts.app !== undefined && protocols.has(opts.app) ? opts.app : false,
  })
  wss.on('connection', (ws, req) => {
    const c = { ws, protocols: String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim()), at: Date.now() }
    conns.push(c)
    opts.onConn?.(c)
  })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate()
    await new Promise((resolve) => wss.close(resolve))
  })
  return { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}/x`, conns }
}

function welcome (ws: WebSocket, extra: Record<string, unknown> = {}): void {
  ws.send('c' + JSON.stringify({ t: 'welcome', token: 'tok0123456789abcdefgh', session: 's1', resumed: false, received: 0, protocol: '', ...extra }))
}

function client (t: Teardown, url: string, opts: Record<string, unknown> = {}): { c: FerryClient, events: string[], errors: Error[] } {
  const c = new FerryClient(url, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 10, maxDelayMs: 50 }, ...opts })
  const events: string[] = []
  const errors: Error[] = []
  for (const e of ['open', 'reconnecting', 'reset', 'close'] as const) c.on(e, (info: unknown) => { events.push(`${e} ${JSON.stringify(info)}`) })
  c.on('error', (err: Error) => { errors.push(err) })
  t.teardown(() => { c.close() })
  return { c, events, errors }
}

const text = (d: RawData): string => Buffer.isBuffer(d) ? d.toString() : Buffer.from(d as ArrayBuffer).toString()

t.test('terminal closes: 1000 from the application, 4001 (resumed elsewhere) and 1008 end the client; 1012 and 1006 reconnect', async (t) => {
  for (const [code, terminal] of [[1000, true], [4001, true], [1008, true], [1012, false], [1001, false]] as const) {
    const s = await server(t, { onConn: (c) => { welcome(c.ws); if (s.conns.length === 1) setTimeout(() => { c.ws.close(code, 'bye') }, 20) } })
    const { c, events } = client(t, s.url)
    if (terminal) {
      await waitFor(`close after ${code}`, () => c.state === 'closed')
      await new Promise((r) => setTimeout(r, 150))
      t.equal(s.conns.length, 1, `${code}: no reconnect`)
      t.ok(events.some((e) => e.startsWith(`close {"code":${code}`)), `${code}: 'close' with the code`)
    } else {
      await waitFor(`reconnect after ${code}`, () => s.conns.length === 2 && c.state === 'open')
      t.ok(events.some((e) => e.startsWith('reconnecting') && e.includes(`"code":${code}`)), `${code}: reconnected ('reconnecting' with the code)`)
      t.notOk(events.some((e) => e.startsWith('close')), `${code}: no 'close'`)
      t.ok(parseResumeOffer(s.conns[1]!.protocols.find((p) => p.startsWith('ferry.r.'))!) !== undefined, `${code}: the reconnect offered to resume with the token`)
    }
    c.close()
  }
})

t.test('wire: data and topic messages both ways, acks every ackEvery messages, resend after a resume welcome', async (t) => {
  const got: string[] = []
  const s = await server(t, {
    onConn: (c) => {
      c.ws.on('message', (d) => { got.push(text(d)) })
      if (s.conns.length === 1) {
        welcome(c.ws)
        for (let i = 1; i <= 10; i++) c.ws.send(`mdown${i}`)
        c.ws.send('ptopic!')
        c.ws.send(Buffer.from([0x6d, 1, 2, 3]))
      } else {
        welcome(c.ws, { resumed: true, received: 2 }) // the server had 2 of the client's 4 messages
      }
    },
  })
  const messages: Array<[string, boolean, boolean]> = []
  const { c } = client(t, s.url, { ackEvery: 4, ackIntervalMs: 10_000 })
  c.on('message', (d: string | Uint8Array, info: { binary: boolean, topic: boolean }) => { messages.push([typeof d === 'string' ? d : Buffer.from(d).toString('hex'), info.binary, info.topic]) })
  await waitFor('messages', () => messages.length === 12)
  t.same(messages.slice(9), [['down10', false, false], ['topic!', false, true], ['010203', true, false]], 'text, topic and binary messages arrive as such, without the kind byte')
  // The client's acks travel back over the socket: wait for them rather than assume they beat the check.
  await waitFor('acks', () => got.filter((m) => m.startsWith('a')).length >= 2)
  await new Promise((r) => setTimeout(r, 50))
  t.same(got.filter((m) => m.startsWith('a')), ['a4', 'a8'], 'acks go out every 4 data messages (topic messages are not counted)')
  for (const m of ['u1', 'u2', 'u3', 'u4']) c.send(m)
  await waitFor('sent', () => got.filter((m) => m.startsWith('m')).length === 4)
  s.conns[0]!.ws.terminate()
  await waitFor('resumed', () => s.conns.length === 2 && c.state === 'open')
  const offer = parseResumeOffer(s.conns[1]!.protocols.find((p) => p.startsWith('ferry.r.'))!)
  t.same(offer, { token: 'tok0123456789abcdefgh', received: 11, sent: 4 }, 'the resume offer carries the token and both counts')
  await waitFor('resent', () => got.filter((m) => m.startsWith('m')).length === 6)
  t.same(got.filter((m) => m.startsWith('m')).slice(4), ['mu3', 'mu4'], 'after a welcome with received: 2 the client resends exactly messages 3 and 4')
})

t.test('a server that does not speak ferry.v1 (it selects the application subprotocol): a plain reconnecting WebSocket', async (t) => {
  const got: string[] = []
  const s = await server(t, { ferry: false, app: 'chat.v1', onConn: (c) => { c.ws.on('message', (d) => { got.push(text(d)) }); c.ws.send('hello plain') } })
  const { c, events } = client(t, s.url, { protocols: ['chat.v1'] })
  const messages: string[] = []
  c.on('message', (d: string | Uint8Array) => { messages.push(String(d)) })
  c.send('queued before open')
  await waitFor('plain open', () => c.state === 'open')
  t.equal(c.resumable, false, 'not resumable')
  t.equal(c.protocol, 'chat.v1', 'the application subprotocol was selected')
  await waitFor('messages', () => messages.length === 1 && got.length === 1)
  t.same(messages, ['hello plain'], 'messages arrive unchanged')
  t.same(got, ['queued before open'], 'a message queued before the open is sent unchanged once open')
  s.conns[0]!.ws.terminate()
  await waitFor('reconnected', () => s.conns.length === 2 && c.state === 'open')
  t.ok(events.some((e) => e.startsWith('reconnecting')), 'it reconnects after the connection is lost')
})

t.test('a handshake the WebSocket implementation refuses is reported on every attempt, not swallowed', async (t) => {
  // Node's ws refuses a 101 without a subprotocol when it offered some (browsers accept it).
  const s = await server(t, { ferry: false })
  const { c, errors } = client(t, s.url)
  await waitFor('two failed attempts', () => errors.length >= 2 && s.conns.length >= 2)
  t.match(errors[0]!.message, /subprotocol/, `each failed attempt emits 'error' (${errors[0]!.message})`)
  t.equal(c.state, 'reconnecting', 'and the client keeps trying with backoff')
})

t.test('an error nobody listens for is one console line per failed attempt, no stack trace (a real process, the built client)', async (t) => {
  // The README's client without an 'error' listener, while the server is down: it keeps trying.
  const port = await freePort()
  const script = `
    import WebSocket from 'ws'
    import { FerryClient } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'client', 'index.js')).href)}
    const c = new FerryClient('ws://127.0.0.1:${port}/chat', { WebSocket, reconnect: { minDelayMs: 10, maxDelayMs: 40 } })
    let attempts = 0
    c.on('reconnecting', () => { if (++attempts === 4) { c.close(); console.log('attempts', attempts) } })
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d })
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  t.equal(code, 0, 'the process ends by itself once the client is closed')
  t.match(out, /attempts 4/, 'the client kept reconnecting')
  const lines = err.trim().split('\n')
  t.ok(lines.length >= 3 && lines.length <= 5, `one stderr line per failed connect (${lines.length} lines for 4 reconnects)`)
  for (const l of lines) t.match(l, /^ferry\/client: .*ECONNREFUSED.*\(no 'error' listener\)$/, `"${l}"`)
  t.notMatch(err, /\n\s+at /, 'no stack trace')
})

t.test('a gateway that answers ferry.v1 but never welcomes: the connection is dropped after welcomeTimeoutMs and retried', async (t) => {
  const s = await server(t, { onConn: (c) => { if (s.conns.length >= 2) welcome(c.ws) } })
  const { c, errors } = client(t, s.url, { welcomeTimeoutMs: 200 })
  await waitFor('welcomed on the second connection', () => s.conns.length === 2 && c.state === 'open', 5000)
  t.match(errors[0]?.message ?? '', /no welcome within 200 ms/, 'reported as an error, then retried')
  t.ok(s.conns[1]!.at - s.conns[0]!.at >= 200, 'not before the timeout')
})
