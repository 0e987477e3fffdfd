import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { FerryClient } from '../src/client/index.js'
import { usableCores } from '../src/planes/cores.js'
import { childrenOf, ROOT, runCli, startFerry, waitFor, writeConfig, type Teardown } from './helpers/ferry.js'
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

t.test('examples/chat under `make run`: the page\'s sentence holds: `make restart` restarts Ferry alone, and the tabs resume their sessions', async (t) => {
  // What the page promises, and the command it names.
  const page = readFileSync(join(ROOT, 'examples', 'chat', 'index.html'), 'utf8')
  const sentence = /Restart Ferry while chatting[^<]*<code>([^<]+)<\/code>[^.]*\.[^.]*\./.exec(page.replace(/\s+/g, ' '))
  t.ok(sentence, 'the page says how to restart Ferry while chatting')
  t.equal(sentence?.[1], 'make restart', 'with `make restart`')
  t.match(sentence?.[0] ?? '', /resumes the same session/, 'and that the tab resumes the same session')
  const recipe = /^restart:\n\t(.+)$/m.exec(readFileSync(join(ROOT, 'Makefile'), 'utf8'))
  t.equal(recipe?.[1], 'node dist/cli.js drain', '`make restart` drains the running Ferry (admin 127.0.0.1:9901 of the embedded defaults)')
  // The old run-demo.sh binds fixed ports and knows no restart: do not start it on a shared machine.
  if (sentence?.[1] !== 'make restart' || recipe === null) return

  const [demoPort, chatPort, httpPort, adminPort] = [await freePort(), await freePort(), await freePort(), await freePort()]
  const state = mkdtempSync(join(tmpdir(), 'ferry-demo-'))
  // The embedded defaults, on free ports.
  const file = writeConfig({
    upstreams: { demo: { protocol: 'http', endpoints: [`127.0.0.1:${demoPort}`] }, chat: { protocol: 'mux', endpoints: [`127.0.0.1:${chatPort}`] } },
    routes: [{ match: { path: '/' }, upstream: 'demo' }, { match: { path: '/chat' }, upstream: 'chat' }],
    drain: { acceptGraceMs: 0, spreadMs: 2000, deadlineMs: 10000 },
    listen: { http: { host: '127.0.0.1', port: httpPort }, admin: { host: '127.0.0.1', port: adminPort } },
    logging: { accessLog: false },
  })
  const env = { ...process.env, FERRY_DEMO_STATE: state, FERRY_DEMO_PORT: String(demoPort), FERRY_DEMO_CHAT_PORT: String(chatPort), FERRY__logging__pretty: 'false' }
  delete env.FERRY_RESUME_SECRET
  const run = spawn('bash', [join(ROOT, 'scripts', 'run-demo.sh'), '--config', file], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  run.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d })
  run.stderr!.setEncoding('utf8').on('data', (d: string) => { out += d })
  const runExit = new Promise<number | null>((resolve) => { run.once('exit', resolve) })
  const started = new Set<number>()
  t.teardown(async () => {
    // Ctrl-C: the script stops Ferry, then the backends. Whatever it started and is still there goes by PID.
    run.kill('SIGINT')
    await Promise.race([runExit, new Promise((resolve) => setTimeout(resolve, 15_000))])
    for (const pid of [...started, ...childrenOf(run.pid!)]) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
    if (run.exitCode === null) run.kill('SIGKILL')
  })
  const ready = async (): Promise<boolean> => await fetch(`http://127.0.0.1:${adminPort}/readyz`).then((r) => r.status === 200, () => false)
  await waitFor('Ferry started by run-demo.sh to be ready', ready, 30_000).catch((err: Error) => { throw new Error(`${err.message}; output: ${out}`) })
  for (const pid of childrenOf(run.pid!)) started.add(pid)
  t.equal(started.size, 3, 'run-demo.sh runs three processes: the demo backend, the chat backend and Ferry')
  const secret = join(state, 'resume-secret')
  t.equal(statSync(secret).mode & 0o777, 0o600, 'it created the resume secret once, readable by its owner only')
  const secretBefore = readFileSync(secret, 'utf8')
  t.ok(secretBefore.trim().length >= 32, 'a secret of at least 32 characters')
  const status = await (await fetch(`http://127.0.0.1:${adminPort}/status`)).json() as any
  t.equal(status.resume.secret, 'env', 'Ferry uses it (resume.secret source: env)')
  // The embedded defaults leave gateway.workers at its default, auto: a worker per usable core (one: no pod).
  const cores = usableCores().usable
  t.equal(status.pod?.workers, cores > 1 ? cores : undefined, `make run runs the default workers (${cores} usable cores)`)

  const clients = ['ann', 'bob'].map((name) => {
    const c = new FerryClient(`ws://127.0.0.1:${httpPort}/chat?room=lobby&name=${name}`, { WebSocket: WebSocket as never, reconnect: { minDelayMs: 50, maxDelayMs: 300 } })
    const x = { c, opens: [] as boolean[], got: [] as Array<Record<string, unknown>> }
    c.on('open', ({ resumed }: { resumed: boolean }) => { x.opens.push(resumed) })
    c.on('message', (d: string | Uint8Array) => { x.got.push(JSON.parse(typeof d === 'string' ? d : Buffer.from(d).toString())) })
    c.on('error', () => {})
    t.teardown(() => { c.close() })
    return x
  })
  const [ann, bob] = clients as [typeof clients[0], typeof clients[0]]
  await waitFor('ann and bob joined the lobby', () => ann.opens.length === 1 && bob.got.some((m) => m.type === 'joined' && m.name === 'bob'), 20_000)
  const ferryBefore = [...started].filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('cli.js'))

  // What `make restart` runs, pointed at this Ferry's admin port.
  const drain = await runCli(['drain', '--admin', `127.0.0.1:${adminPort}`])
  t.equal(drain.code, 0, '`ferry drain` (make restart) exits 0')
  await waitFor('run-demo.sh to start Ferry again', () => out.includes('starting it again'), 20_000)
  await waitFor('both tabs resumed through the new Ferry', () => ann.opens.length === 2 && bob.opens.length === 2, 20_000)
  t.same([ann.opens, bob.opens], [[false, true], [false, true]], 'ann\'s and bob\'s sessions resumed (not joined again)')
  const ferryAfter = childrenOf(run.pid!).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('cli.js'))
  t.ok(ferryAfter.length === 1 && ferryAfter[0] !== ferryBefore[0], `a new Ferry process (${ferryBefore.join()} → ${ferryAfter.join()})`)
  for (const pid of ferryAfter) started.add(pid)
  t.equal([...started].filter((pid) => !ferryBefore.includes(pid) && !ferryAfter.includes(pid) && existsSync(`/proc/${pid}`)).length, 2, 'the two backends kept running')
  t.equal(readFileSync(secret, 'utf8'), secretBefore, 'the restarted Ferry read the same secret (the file was not made again)')
  ann.c.send('still here')
  await waitFor('bob hears ann', () => bob.got.some((m) => m.type === 'said' && m.text === 'still here'), 10_000)
  t.same(bob.got.filter((m) => m.type === 'left' || m.type === 'welcome').map((m) => m.type), ['welcome'], 'bob was welcomed once and never saw anyone leave')

  run.kill('SIGINT')
  t.equal(await runExit, 0, 'Ctrl-C: run-demo.sh stops Ferry and the backends and exits 0')
  await waitFor('every process it started to be gone', () => [...started].every((pid) => !existsSync(`/proc/${pid}`)), 15_000)
  t.pass('Ferry and both backends are gone')
})
