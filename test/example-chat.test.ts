import { spawn } from 'node:child_process'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { FerryClient } from '../src/client/index.js'
import { ROOT, startFerry, waitFor, type Teardown } from './helpers/ferry.js'
import { connect } from './helpers/mux.js'
import { startSwitch } from './helpers/switch.js'
import { freePort } from './helpers/redis.js'

/** Starts examples/chat/backend.mjs on a free port (killed at teardown); resolves with the port. */
async function startChatBackend (t: Teardown, port = 0, onChild?: (c: ReturnType<typeof spawn>) => void): Promise<number> {
  const child = spawn(process.execPath, [join(ROOT, 'examples', 'chat', 'backend.mjs'), '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill('SIGKILL') })
  onChild?.(child)
  const bound = await new Promise<number>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { const m = /listening on [\d.]+:(\d+)/.exec(d); if (m !== null) resolve(Number(m[1])) })
    child.once('exit', (code) => { reject(new Error(`chat backend exited ${code}`)) })
  })
  return bound
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

t.test('examples/chat: a backend deploy (SIGTERM) hands the room to the other backend; nobody is disconnected or announced as left', async (t) => {
  let first: ReturnType<typeof spawn> | undefined
  const p1 = await startChatBackend(t, 0, (c) => { first = c })
  const p2 = await freePort()
  const f = await startFerry(t, { upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${p1}`, `127.0.0.1:${p2}`], pool: { links: 2 }, reconnect: { minDelayMs: 20, maxDelayMs: 200 } } }, routes: [{ match: { path: '/chat' }, upstream: 'chat' }] })
  const url = `ws://127.0.0.1:${f.httpPort}/chat`
  const ann = await connect(`${url}?room=lobby&name=ann`)
  const bob = await connect(`${url}?room=lobby&name=bob`)
  await bob.waitMessages(2) // welcome + own join
  // The new version comes up beside it, then the old one gets SIGTERM (what a rolling deploy does).
  await startChatBackend(t, p2)
  await waitFor('links to the new backend', async () => {
    const st = await (await fetch(`${f.adminUrl}/status`)).json() as any
    return st.upstreams[0].endpoints.find((e: any) => e.address === `127.0.0.1:${p2}`)?.links.every((l: any) => l.state === 'ready') === true
  }, 10_000)
  const exited = new Promise<number | null>((resolve) => first!.once('exit', resolve))
  first!.kill('SIGTERM')
  t.equal(await exited, 0, 'the old backend drained and exited 0')
  t.equal(ann.ws.readyState, WebSocket.OPEN, 'ann is still connected')
  t.equal(bob.ws.readyState, WebSocket.OPEN, 'bob is still connected')
  const before = bob.messages.length
  ann.ws.send('still here?')
  await bob.waitMessages(before + 1)
  const heard = bob.messages.slice(before).map((m) => JSON.parse(m.data.toString()))
  t.match(heard.find((m) => m.type === 'said'), { type: 'said', room: 'lobby', name: 'ann', text: 'still here?' }, 'bob hears ann through the new backend')
  t.notOk(bob.messages.some((m) => JSON.parse(m.data.toString()).type === 'left'), 'nobody was announced as having left')
  t.equal(bob.messages.filter((m) => JSON.parse(m.data.toString()).type === 'welcome').length, 1, 'and nobody was welcomed twice')
  for (const c of [ann, bob]) c.ws.close()
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
