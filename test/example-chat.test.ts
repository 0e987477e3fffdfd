import { spawn } from 'node:child_process'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { FerryClient } from '../src/client/index.js'
import { ROOT, startFerry, waitFor, type Teardown } from './helpers/ferry.js'
import { connect } from './helpers/mux.js'
import { startSwitch } from './helpers/switch.js'

/** Starts examples/chat/backend.mjs on a free port (killed at teardown); resolves with the port. */
async function startChatBackend (t: Teardown): Promise<number> {
  const child = spawn(process.execPath, [join(ROOT, 'examples', 'chat', 'backend.mjs'), '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { const m = /listening on [\d.]+:(\d+)/.exec(d); if (m !== null) resolve(Number(m[1])) })
    child.once('exit', (code) => { reject(new Error(`chat backend exited ${code}`)) })
  })
  return port
}

t.test('examples/chat: rooms are topics; a message said in a room reaches its members only, through Ferry', async (t) => {
  const port = await startChatBackend(t)
  // Several links: a member's own "joined" (a topic message) must reach it however its session and the
  // other members' are spread over the links (docs/mux-protocol.md, Topics).
  const f = await startFerry(t, { upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${port}`], pool: { links: 3 } } }, routes: [{ match: { path: '/chat' }, upstream: 'chat' }] })
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const ann = await connect(`${url}?room=lobby&name=ann`)
  const bob = await connect(`${url}?room=lobby&name=bob`)
  const eve = await connect(`${url}?room=other&name=eve`)
  await bob.waitMessages(2) // welcome + own join
  ann.ws.send('hi bob')
  await bob.waitMessages(3)
  const said = bob.messages.map((m) => JSON.parse(m.data.toString())).find((m) => m.type === 'said')
  t.match(said, { type: 'said', room: 'lobby', name: 'ann', text: 'hi bob' }, 'bob hears ann in the lobby')
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.notOk(eve.messages.some((m) => m.data.toString().includes('hi bob')), 'eve in another room does not')
  for (const c of [ann, bob, eve]) c.ws.close()
})

t.test('examples/chat with ferry/client: a gateway restart does not end the chat session', async (t) => {
  const port = await startChatBackend(t)
  const config = { upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${port}`], pool: { links: 2 } } }, routes: [{ match: { path: '/chat' }, upstream: 'chat' }] }
  const env = { FERRY_RESUME_SECRET: 'example-chat-test-secret-0123456789abcdef' }
  const a = await startFerry(t, config, { env })
  const b = await startFerry(t, config, { env })
  const sw = await startSwitch(t, a.httpPort)
  const ann = new FerryClient(sw.url('/chat?room=lobby&name=ann'), { WebSocket: WebSocket as never, reconnect: { minDelayMs: 20, maxDelayMs: 100 } })
  // Listeners first: the welcome may arrive while bob connects.
  const opens: boolean[] = []
  ann.on('open', ({ resumed }) => { opens.push(resumed) })
  const seen: string[] = []
  ann.on('error', (e: Error) => { seen.push(`error ${e.message}`) })
  ann.on('reconnecting', (r: unknown) => { seen.push(`reconnecting ${JSON.stringify(r)}`) })
  const bob = await connect(`ws://127.0.0.1:${b.httpPort}/chat?room=lobby&name=bob`)
  t.teardown(() => { ann.close(); bob.ws.close() })
  await waitFor('ann joined', () => opens.length === 1, 20_000).catch((err: Error) => { throw new Error(`${err.message}; client saw: ${seen.join('; ')}`) })
  sw.target = b.httpPort
  await a.stop()
  await waitFor('ann resumed through the other gateway', () => opens.length === 2, 10_000)
  t.same(opens, [false, true], 'ann\'s session resumed after her gateway stopped')
  ann.send('still here')
  await waitFor('bob hears ann', () => bob.messages.some((m) => m.data.toString().includes('still here')))
  const left = bob.messages.map((m) => JSON.parse(m.data.toString())).filter((m) => m.type === 'left')
  t.same(left, [], 'and the room never saw her leave')
})
