import { spawn } from 'node:child_process'
import { join } from 'node:path'
import t from 'tap'
import { adminStatus, metric, ROOT, startFerry, waitFor, type FerryProcess } from './helpers/ferry.js'
import { connect, startMuxBackend } from './helpers/mux.js'
import { startRedis } from './helpers/redis.js'

const echo = (s: any): void => { s.on('message', (d: Buffer, bin: boolean) => { s.send(d, { binary: bin }) }) }

async function active (f: FerryProcess): Promise<string[]> {
  const s = await adminStatus(f)
  return s.upstreams.find((u: any) => u.name === 'chat').endpoints.filter((e: any) => e.state === 'active').map((e: any) => e.address).sort()
}

/** A ferry/backend in a process of its own (so it can be SIGKILLed: no deregistration), registered in `redis`. */
async function childBackend (tt: typeof t, redis: string, ttlMs: number): Promise<{ port: number, address: string, kill: () => Promise<void> }> {
  const code = `
    const { createMuxServer } = await import(process.argv[1])
    const s = createMuxServer({ host: '127.0.0.1', port: 0, register: { redis: process.argv[2], service: 'chat', ttlMs: Number(process.argv[3]) } })
    s.on('session', (x) => { x.on('message', (d, b) => { x.send(d, { binary: b }) }) })
    await s.listening
    console.log(JSON.stringify({ port: s.address().port }))`
  const child = spawn(process.execPath, ['--input-type=module', '-e', code, join(ROOT, 'dist', 'backend', 'index.js'), redis, String(ttlMs)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let exited = false
  const exit = new Promise<void>((resolve) => child.once('exit', () => { exited = true; resolve() }))
  tt.teardown(async () => { if (!exited) { child.kill('SIGKILL'); await exit } })
  const port = await new Promise<number>((resolve, reject) => {
    let buf = ''
    child.stdout!.on('data', (d: Buffer) => { buf += d.toString(); const m = /"port":(\d+)/.exec(buf); if (m !== null) resolve(Number(m[1])) })
    void exit.then(() => { reject(new Error('backend exited before listening')) })
  })
  return { port, address: `127.0.0.1:${port}`, kill: async () => { child.kill('SIGKILL'); await exit } }
}

t.test('registry via Redis: backends that register are used at once, a deregistered one drains, a killed one leaves after its TTL; sessions keep opening', async (t) => {
  const redis = await startRedis(t)
  const reg = { redis: redis.url, service: 'chat', ttlMs: 1000 }
  let m1Sessions = 0
  const m1 = await startMuxBackend(t, (s) => { m1Sessions++; echo(s) }, { register: reg })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', pool: { links: 1 }, registry: { redis: redis.url, service: 'chat', scanIntervalMs: 300 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
  })
  await waitFor('m1 in the set', async () => (await active(f)).length === 1, 5000)
  t.same(await active(f), [`127.0.0.1:${m1.port}`], 'the registered backend is the set')

  // Sessions open, echo once and close, from two loops, all test long.
  let running = true
  t.teardown(() => { running = false })
  let ok = 0
  const failed: string[] = []
  const loops = [0, 1].map(async () => {
    while (running) {
      try {
        const c = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
        c.ws.send('ping')
        // A session on the killed backend is reopened elsewhere (handoff.failover): its ping died with
        // that process, so it gets neither an echo nor a close (docs/backend-handoff.md).
        const got = await Promise.race([c.waitMessages(1).then(() => 'echo'), c.closed.then(() => 'closed'), new Promise<string>((resolve) => setTimeout(() => resolve('lost'), 3000))])
        c.ws.close()
        if (got === 'echo') ok++
        else failed.push(got === 'closed' ? 'closed before the echo' : 'no echo: the message was lost with its backend')
      } catch (err) {
        failed.push((err as Error).message)
      }
    }
  })

  let at = Date.now()
  const m2 = await startMuxBackend(t, echo, { register: reg })
  await waitFor('m2 in the set', async () => (await active(f)).includes(`127.0.0.1:${m2.port}`), 5000, 5)
  const timeToAdd = Date.now() - at
  await waitFor('sessions reach m2', () => m2.connectionsAccepted > 0 && m2.links().length === 1, 5000)
  const m2Before = ok
  await waitFor('traffic continues', () => ok > m2Before + 10, 10000)
  t.ok(timeToAdd < 2000, `a registered backend joined the set ${timeToAdd} ms after it registered (pub/sub notice; bound 2 s)`)

  const m3 = await childBackend(t, redis.url, 1000)
  await waitFor('m3 in the set', async () => (await active(f)).includes(m3.address), 5000)
  await waitFor('m3 takes sessions', async () => await metric(f, `ferry_mux_link_events_total{upstream="chat",endpoint="${m3.address}",event="connected"}`) >= 1, 5000)
  const failedBeforeKill = failed.length
  at = Date.now()
  await m3.kill()
  await waitFor('m3 leaves the set', async () => !(await active(f)).includes(m3.address), 10000, 10)
  const timeToDrop = Date.now() - at
  t.ok(timeToDrop <= 1000 + 300 + 2000, `a SIGKILLed backend left the set ${timeToDrop} ms after the kill (ttlMs 1000 + scanIntervalMs 300, +2 s slack)`)
  const failedByKill = failed.length - failedBeforeKill

  at = Date.now()
  await m1.registration!.stop()
  await waitFor('m1 leaves the set', async () => !(await active(f)).includes(`127.0.0.1:${m1.port}`), 5000, 5)
  const timeToRemove = Date.now() - at
  const afterRemoval = m1Sessions
  const okBefore = ok
  await waitFor('more sessions', () => ok > okBefore + 20, 10000)
  t.ok(afterRemoval > 0, `m1 had taken ${afterRemoval} sessions before`)
  t.equal(m1Sessions, afterRemoval, `no new session on m1 after it left the set (${ok - okBefore} opened elsewhere)`)
  await waitFor('m1\'s link closes (GOAWAY, last stream gone)', () => m1.links().length === 0, 5000)
  t.pass('the deregistered backend\'s link drained and closed')
  running = false
  await Promise.all(loops)
  t.comment(`measured: time to add (registered → in the set) = ${timeToAdd} ms; deregistered → out = ${timeToRemove} ms; SIGKILL → out = ${timeToDrop} ms (ttlMs 1000, scanIntervalMs 300)`)
  t.comment(`sessions: ${ok} ok, ${failed.length} failed (${failedByKill} around the kill: ${failed.join('; ')})`)
  t.ok(failed.length <= 2, `only sessions in flight on the killed process may fail (2 loops): ${failed.length} of ${ok + failed.length}`)
  t.ok(await metric(f, 'ferry_discovery_changes_total{upstream="chat",change="removed"}') >= 2, 'removals counted')
})

t.test('registry: Redis restarting keeps the set; the backends\' heartbeat registers them again', async (t) => {
  const redis = await startRedis(t)
  const m1 = await startMuxBackend(t, echo, { register: { redis: redis.url, service: 'chat', ttlMs: 900 } })
  const f = await startFerry(t, {
    // scanIntervalMs 300 is the backend's own heartbeat (ttlMs 900 / 3): an empty read is believed only
    // when one agrees after that heartbeat, announced in the entry, plus the backend's Redis reconnect
    // (2 s). Before entries announced it, a loaded machine saw the set emptied here before the heartbeat came.
    upstreams: { chat: { protocol: 'mux', pool: { links: 1 }, registry: { redis: redis.url, service: 'chat', scanIntervalMs: 300 } } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
  })
  await waitFor('m1 in the set', async () => (await active(f)).length === 1, 5000)
  await redis.kill()
  await waitFor('failed reads counted', async () => await metric(f, 'ferry_discovery_refreshes_total{upstream="chat",source="registry",result="failed"}') >= 1, 5000)
  t.same(await active(f), [`127.0.0.1:${m1.port}`], 'Redis down: the set is kept')
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/chat`)
  c.ws.send('x')
  await c.waitMessages(1)
  t.pass('sessions still open while Redis is down')
  await redis.restart()
  await waitFor('reads work again', async () => ((await adminStatus(f)).upstreams.find((u: any) => u.name === 'chat').source.consecutiveFailures === 0), 10000)
  await new Promise((resolve) => setTimeout(resolve, 900)) // a heartbeat period and more: m1 registered again
  t.same(await active(f), [`127.0.0.1:${m1.port}`], 'after the restart m1 registered again')
  t.equal(await metric(f, 'ferry_discovery_changes_total{upstream="chat",change="removed"}'), 0, 'and the restarted, empty Redis never emptied the set')
  c.ws.close()
})
