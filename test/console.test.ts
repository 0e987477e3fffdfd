import t, { type Test } from 'tap'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { stringify } from 'yaml'
import { startFerry, waitFor, ROOT, type FerryProcess } from './helpers/ferry.js'
import { startMuxBackend, connect, type Client } from './helpers/mux.js'
import { WebSocketServer } from 'ws'
import { startRedis } from './helpers/redis.js'
import { startBackend } from './helpers/backend.js'
import { adminRequest } from './helpers/admin.js'

/**
 * The status console end to end, in real headless Chromium (Debian's /usr/bin/chromium driven by
 * playwright-core; scripts/setup.sh --test installs it): two real Ferry pods sharing a real
 * redis-server, a real mux backend, real WebSocket clients. Screenshots go to test/artifacts/:
 * console.png every run (sessions open, charts drawn, two pods), console-failure-*.png on a failure.
 */

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
const ARTIFACTS = join(ROOT, 'test', 'artifacts')
const TOKEN = 'console-e2e-token-0123456789'
/** Bound of every wait on the page: conditions, not time; generous for a busy 2-core machine. */
const WAIT_MS = 45_000

async function launch (t: Test): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] })
  t.teardown(async () => { await browser.close() })
  return browser
}

/** Saves a screenshot of `page` when the test has failed by the time it ends. */
function screenshotOnFailure (t: Test, page: Page, name: string): void {
  t.teardown(async () => {
    if (t.passing()) return
    mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: join(ARTIFACTS, `console-failure-${name}.png`), fullPage: true }).catch(() => {})
  })
}

/** Waits until the text of `selector` (trimmed) satisfies `pred`; the page's CSP forbids eval, so it is polled from here. */
async function waitText (page: Page, selector: string, pred: (s: string) => boolean, what: string): Promise<string> {
  let last = '(missing)'
  try {
    return await waitFor(what, async () => {
      const e = page.locator(selector).first()
      last = (await e.count()) === 0 ? '(missing)' : ((await e.textContent()) ?? '').trim()
      return last !== '(missing)' && pred(last) ? last : undefined
    }, WAIT_MS, 100)
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${selector} is ${JSON.stringify(last)}`)
  }
}

async function login (page: Page, f: FerryProcess): Promise<void> {
  await page.goto(`${f.adminUrl}/`)
  await page.locator('#token').fill(TOKEN)
  await page.getByRole('button', { name: 'Connect' }).click()
  await waitText(page, '#gateway-state', (s) => s === 'running', 'the gateway state running')
}

function podRow (id: string): string {
  return `#pods tbody tr[data-pod="${id}"] td:nth-child(4)`
}

t.test('console: token prompt, live session counts, charts, two pods over Redis, a refused reload, drain progress', async (t) => {
  const redis = await startRedis(t)
  const backend = await startMuxBackend(t, (s) => { s.on('message', (d, binary) => { s.send(d, { binary }) }) })
  const api = await startBackend(t, (_req, res) => { res.end('ok') })
  const pod = (id: string, drain?: Record<string, unknown>): Record<string, unknown> => ({
    gateway: { id },
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backend.port}`], pool: { links: 2 } }, api: { protocol: 'http', endpoints: [api.address] } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }, { match: { path: '/api' }, upstream: 'api' }],
    logging: { level: 'info', accessLog: false },
    affinity: { store: 'redis', redis: { url: redis.url, podTtlMs: 3000 } },
    admin: { token: TOKEN, console: { intervalMs: 250 } },
    ...(drain === undefined ? {} : { drain }),
  })
  // pod-a drains slowly enough to watch: 0.5 s of accept grace, its sessions spread over 3 s.
  const a = await startFerry(t, pod('pod-a', { acceptGraceMs: 500, spreadMs: 3000, maxMigrationsPerSec: 1000, deadlineMs: 30000 }))
  const b = await startFerry(t, pod('pod-b'))
  const clients: Client[] = []
  t.teardown(() => { for (const c of clients) c.ws.terminate() })

  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } })
  screenshotOnFailure(t, page, 'pod-a')

  // ---- the token ----------------------------------------------------------------------------------
  await page.goto(`${a.adminUrl}/`)
  await page.locator('#login').waitFor({ state: 'visible', timeout: WAIT_MS })
  t.match(await page.locator('#login-why').textContent(), /needs its admin token/, 'without a token the page asks for it')
  t.ok(await page.locator('#dashboard').isHidden(), 'and shows no data')
  t.equal(await page.evaluate(async () => (await fetch('/status')).status), 401, 'the page\'s own fetch of /status without the token is 401')
  await page.locator('#token').fill('not-the-token-at-all')
  await page.getByRole('button', { name: 'Connect' }).click()
  await waitText(page, '#login-why', (s) => s.includes('refused'), 'the refused-token message')
  t.pass('a wrong token is refused and the page asks again')
  await page.locator('#token').fill(TOKEN)
  await page.locator('#token').press('Enter')
  await waitText(page, '#gateway-state', (s) => s === 'running', 'the dashboard of a running gateway')
  t.equal(await page.locator('#pod-id').textContent(), 'pod-a', 'the console names its pod (pod-a)')
  t.equal(await page.evaluate(() => sessionStorage.getItem('ferry.adminToken')), TOKEN, 'the token is kept in sessionStorage')

  // ---- live counts ---------------------------------------------------------------------------------
  const N = 5
  for (let i = 0; i < N; i++) clients.push(await connect(`ws://127.0.0.1:${a.httpPort}/chat`))
  await waitText(page, '#sessions-total', (s) => s === `${N}`, `${N} sessions`)
  t.pass(`with ${N} WebSocket sessions open the console shows ${N}`)
  t.equal(await page.locator('#sessions-kind').textContent(), `mux ${N} · ws 0`, 'by kind: all mux')
  t.equal(await page.locator('#routes tbody tr').count(), 2, 'the routes table lists the 2 routes')
  t.equal(await page.locator('#routes tbody tr').first().locator('td').last().textContent(), String(N), `and the WebSocket route's session count (${N})`)
  const upstreamRows = await page.locator('#upstreams tbody tr').allTextContents()
  t.ok(upstreamRows.some((r) => /^chatmux127\.0\.0\.1:\d+up2\/2 links ready, 5 streamsDrain$/.test(r)), `the upstream rows show chat: mux, endpoint up, 2/2 links ready, 5 streams, a Drain button (${JSON.stringify(upstreamRows)})`)
  for (const c of clients.splice(0, 2)) { c.ws.close(); await c.closed }
  await waitText(page, '#sessions-total', (s) => s === `${N - 2}`, `${N - 2} sessions after 2 closed`)
  t.pass(`after 2 sessions closed the console shows ${N - 2}`)

  // ---- pods: each lists the other with its sessions (Redis) ------------------------------------------
  const onB: Client[] = []
  for (let i = 0; i < 2; i++) onB.push(await connect(`ws://127.0.0.1:${b.httpPort}/chat`))
  clients.push(...onB)
  await waitText(page, podRow('pod-b'), (s) => s === '2', 'pod-b listed with 2 sessions on pod-a\'s console')
  t.pass('pod-a\'s console lists pod-b with its 2 sessions (announced in Redis)')
  t.equal(await page.locator(podRow('pod-a')).textContent(), String(N - 2), `and itself (this pod) with ${N - 2}`)
  t.equal(await page.locator('#affinity-state').textContent(), 'connected', 'the affinity store is shown connected')
  const pageB = await browser.newPage({ viewport: { width: 1280, height: 1100 } })
  screenshotOnFailure(t, pageB, 'pod-b')
  await login(pageB, b)
  await waitText(pageB, podRow('pod-a'), (s) => s === `${N - 2}`, 'pod-a listed on pod-b\'s console')
  t.pass(`pod-b's console lists pod-a with its ${N - 2} sessions`)

  // ---- charts: messages flow until both pages draw a non-zero rate ---------------------------------
  let pumping = true
  const pump = (async () => {
    while (pumping) {
      for (const c of clients) if (c.ws.readyState === c.ws.OPEN) c.ws.send('hello')
      const target = a.child.exitCode === null ? a : b
      await fetch(`${target.url}/api/x`).then(async (r) => { await r.text() }, () => {})
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  })()
  t.teardown(async () => { pumping = false; await pump })
  await waitText(page, '#rate-messages', (s) => Number(s) > 0, 'a message rate above 0')
  await waitText(page, '#rate-requests', (s) => Number(s) > 0, 'a request rate above 0')
  // A few seconds of history so the charts show a line, not a dot (16 samples of 250 ms).
  await page.waitForFunction(() => Number(document.getElementById('chart-messages')?.dataset.points ?? 0) >= 16, undefined, { timeout: WAIT_MS })
  t.ok(await page.locator('#chart-messages polyline').count() === 1, 'the messages chart draws its line (inline SVG)')
  t.match(await page.locator('#chart-messages').getAttribute('aria-label') ?? '', /WebSocket messages per second: now [\d.]+, peak [\d.]+/, 'the chart carries a text alternative with the current and peak rate')
  mkdirSync(ARTIFACTS, { recursive: true })
  await page.screenshot({ path: join(ARTIFACTS, 'console.png'), fullPage: true })
  t.pass('screenshot of a realistic state saved as test/artifacts/console.png')

  // ---- a refused reload: the field-named error is shown, the running config stays --------------------
  const version = await page.locator('#config-version').textContent()
  const file = String(a.child.spawnargs.at(-1))
  const broken = { ...pod('pod-a'), routes: [{ match: { path: '/chat' }, upstream: 'nope' }], listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } } }
  writeFileSync(file, stringify(broken))
  await page.getByRole('button', { name: 'Reload config' }).press('Enter')
  await waitText(page, '#action-result', (s) => s.includes('Reload refused'), 'the refused reload')
  const shown = await page.locator('#action-errors li').allTextContents()
  t.ok(shown.some((e) => /^routes\[0\]\.upstream: names no upstream/.test(e)), `the error names the field routes[0].upstream (shown: ${JSON.stringify(shown)})`)
  await waitText(page, '#config-last', (s) => s.startsWith('refused'), 'the last reload shown as refused')
  t.match((await page.locator('#config-errors li').allTextContents()).join('\n'), /routes\[0\]\.upstream/, 'the configuration section lists the same error')
  t.equal(await page.locator('#config-version').textContent(), version, `the config version is unchanged (${version})`)
  const st = JSON.parse((await adminRequest(a, '/status', { token: TOKEN })).body)
  t.equal(st.config.version, version, 'and /status agrees: the old config is running')
  const probe = await connect(`ws://127.0.0.1:${a.httpPort}/chat`)
  probe.ws.close()
  await probe.closed
  t.pass('the old route still takes sessions')

  // ---- drain: confirm, then sessions move to pod-b (the clients reconnect there) ----------------------
  for (const c of clients.filter((c) => !onB.includes(c))) {
    void c.closed.then(async (e) => { if (e.code === 1012) clients.push(await connect(`ws://127.0.0.1:${b.httpPort}/chat`)) })
  }
  await page.getByRole('button', { name: 'Drain this pod…' }).click()
  const dialog = page.getByRole('dialog', { name: 'Drain this pod?' })
  await dialog.waitFor({ state: 'visible', timeout: WAIT_MS })
  t.pass('Drain asks for a confirmation first (a modal dialog)')
  await dialog.getByRole('button', { name: 'Cancel' }).click()
  t.equal(JSON.parse((await adminRequest(a, '/status', { token: TOKEN })).body).drain.phase, 'idle', 'Cancel does not drain')
  await page.getByRole('button', { name: 'Drain this pod…' }).click()
  await dialog.getByRole('button', { name: 'Drain', exact: true }).click()
  await waitText(page, '#gateway-state', (s) => s === 'draining', 'the state draining')
  t.pass('after confirming, the console shows the state draining')
  t.match(await page.locator('#conn').textContent(), /draining/, 'the change is announced in the live region')
  await waitText(page, '#drain-moved', (s) => /^[1-9]\d* \/ |\/ [1-9]\d* \//.test(s), 'sessions moved')
  t.pass('drain progress: sessions are moved (resumable / plain counters rise)')
  t.equal(await page.locator('#drain-start').textContent(), String(N - 2), `the drain started with ${N - 2} sessions`)
  t.notOk(await page.locator('#drain-progress').isHidden(), 'the progress bar is shown')
  await pageB.waitForFunction(() => document.querySelector('#pods tbody tr[data-pod="pod-a"] td:nth-child(5)')?.textContent === 'draining' || document.querySelector('#pods tbody tr[data-pod="pod-a"]') === null, undefined, { timeout: WAIT_MS })
  t.pass('pod-b\'s console shows pod-a draining (or already gone)')
  await waitText(pageB, podRow('pod-b'), (s) => s === `${N}`, `pod-b with all ${N} sessions`)
  t.pass(`the sessions moved: pod-b now holds all ${N} (2 of its own + ${N - 2} from pod-a)`)
  await waitFor('pod-a exited after its drain', () => a.child.exitCode !== null, WAIT_MS)
  t.equal(a.child.exitCode, 0, 'pod-a exited 0 after the drain')
  await waitText(page, '#gateway-state', (s) => s === 'not answering', 'pod-a shown as not answering')
  t.pass('pod-a\'s console says its gateway no longer answers')
  await pageB.waitForFunction(() => document.querySelector('#pods tbody tr[data-pod="pod-a"]') === null, undefined, { timeout: WAIT_MS })
  t.pass('pod-a left the pod list of pod-b (withdrawn on shutdown)')
  pumping = false
  await pump
})

t.test('console without an admin token: no request answered 404 (no /favicon.ico), and no "Forget token" button', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, { upstreams: { api: { protocol: 'http', endpoints: [backend.address] } }, routes: [{ match: { path: '/' }, upstream: 'api' }] })
  const browser = await launch(t)
  const page = await browser.newPage()
  screenshotOnFailure(t, page, 'no-token')
  const asked: string[] = []
  const missing: string[] = []
  page.on('request', (r) => { asked.push(new URL(r.url()).pathname) })
  page.on('response', (r) => { if (r.status() === 404) missing.push(new URL(r.url()).pathname) })
  await page.goto(`${f.adminUrl}/`)
  await waitText(page, '#gateway-state', (s) => s === 'running', 'the dashboard, without a token prompt')
  // A browser asks for /favicon.ico unless the page names its icon (headless Chromium never asks, so the
  // page itself is checked): an inline one, so nothing goes to the admin listener for it.
  const icon = await page.evaluate(() => document.querySelector('link[rel~="icon"]')?.getAttribute('href') ?? null)
  t.match(icon, /^data:/, `the page names an inline icon (${String(icon)}), so no browser asks the admin listener for /favicon.ico`)
  t.notOk(asked.includes('/favicon.ico'), `the page never asked for /favicon.ico (asked: ${[...new Set(asked)].join(' ')})`)
  t.same(missing, [], 'no request was answered 404')
  t.equal(await page.locator('#logout-btn').isVisible(), false, 'with no token held, there is no "Forget token" button')
})

t.test('console: the page is usable with the keyboard and has landmarks, headed tables and a live region', async (t) => {
  const backend = await startMuxBackend(t, () => {})
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${backend.port}`] } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat' }],
    admin: { token: TOKEN },
  })
  const browser = await launch(t)
  const page = await browser.newPage()
  screenshotOnFailure(t, page, 'a11y')
  await page.goto(`${f.adminUrl}/`)
  // Keyboard only: Tab to the token field, type, Enter.
  await page.locator('#token').waitFor({ state: 'visible', timeout: WAIT_MS })
  t.equal(await page.evaluate(() => document.activeElement?.id), 'token', 'the token field has the focus when the page asks for it')
  await page.keyboard.type(TOKEN)
  await page.keyboard.press('Enter')
  await waitText(page, '#gateway-state', (s) => s === 'running', 'the dashboard')
  t.equal(await page.getByRole('button', { name: 'Forget token' }).isVisible(), true, 'with a token held, the "Forget token" button is there')
  t.equal(await page.getByRole('main').count(), 1, 'one main landmark')
  t.equal(await page.getByRole('banner').count(), 1, 'one banner landmark (header)')
  t.equal(await page.locator('[aria-live="polite"]').count(), 2, 'two polite live regions (connection/state, action results)')
  for (const id of ['pods', 'upstreams', 'listeners', 'routes']) {
    t.ok(await page.locator(`#${id} thead th[scope="col"]`).count() >= 3, `table ${id} has column headers`)
  }
  // The drain dialog opens and closes with the keyboard, and Escape drains nothing.
  await page.getByRole('button', { name: 'Drain this pod…' }).focus()
  await page.keyboard.press('Enter')
  await page.getByRole('dialog', { name: 'Drain this pod?' }).waitFor({ state: 'visible', timeout: WAIT_MS })
  t.equal(await page.evaluate(() => document.activeElement?.textContent), 'Cancel', 'the dialog focuses Cancel, not Drain')
  await page.keyboard.press('Escape')
  await page.getByRole('dialog').waitFor({ state: 'hidden', timeout: WAIT_MS })
  t.equal(JSON.parse((await adminRequest(f, '/status', { token: TOKEN })).body).drain.phase, 'idle', 'Escape closes the dialog and drains nothing')
  // Text contrast: the body text on its background is at least 7:1.
  // A string, not a function: the test runner's transpiler (tsx) names inner functions with a helper the page does not have.
  const ratio = await page.evaluate<number>(`(() => {
    const lum = (rgb) => {
      const [r, g, b] = (rgb.match(/\\d+/g) ?? []).slice(0, 3).map((v) => {
        const c = Number(v) / 255
        return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4
      })
      return 0.2126 * r + 0.7152 * g + 0.0722 * b
    }
    const dd = document.getElementById('sessions-total')
    const card = dd.closest('.card')
    const fg = lum(getComputedStyle(dd).color)
    const bg = lum(getComputedStyle(card).backgroundColor)
    return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05)
  })()`)
  t.ok(ratio >= 7, `figures on cards have a contrast of at least 7:1 (${ratio.toFixed(1)}:1)`)
})

t.test('console: an endpoint\'s Drain button drains it with the admin token (its sessions close 1012, new ones avoid it); Ready brings it back', async (t) => {
  const backends = await Promise.all(['A', 'B'].map(async (id) => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
    await new Promise<void>((resolve) => wss.once('listening', resolve))
    wss.on('connection', (ws) => { ws.on('error', () => {}); ws.send(id) })
    t.teardown(async () => { for (const c of wss.clients) c.terminate(); await new Promise((resolve) => wss.close(resolve)) })
    return `127.0.0.1:${(wss.address() as { port: number }).port}`
  }))
  const [a, b] = backends as [string, string]
  const f = await startFerry(t, {
    upstreams: { legacy: { protocol: 'ws', endpoints: [a, b], drain: { maxMigrationsPerSec: 100, spreadMs: 0 } } },
    routes: [{ match: { path: '/ws' }, upstream: 'legacy' }],
    admin: { token: TOKEN, console: { intervalMs: 250 } },
    logging: { level: 'info', accessLog: false },
  })
  const url = `ws://127.0.0.1:${f.httpPort}/ws`
  const clients: Client[] = []
  t.teardown(() => { for (const c of clients) c.ws.terminate() })
  for (let i = 0; i < 4; i++) { const c = await connect(url); await c.waitMessages(1); clients.push(c) }
  const onA = clients.filter((c) => c.messages[0]!.data.toString() === 'A')
  t.equal(onA.length, 2, '2 of 4 sessions on A')
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } })
  screenshotOnFailure(t, page, 'endpoint-drain')
  await login(page, f)
  const status = async (): Promise<any> => JSON.parse((await adminRequest(f, '/status', { token: TOKEN })).body).upstreams[0].endpoints.find((e: any) => e.address === a)
  await page.getByRole('button', { name: `Drain legacy ${a}` }).click()
  await waitText(page, '#action-result', (s) => s.includes(`legacy ${a}: draining`), 'the drain acknowledged')
  t.pass('the Drain button of endpoint A (POST with the admin token) is acknowledged on the page')
  const closes = await Promise.all(onA.map(async (c) => await c.closed))
  t.same(closes.map((e) => e.code), [1012, 1012], 'A\'s 2 sessions were closed 1012')
  t.match(await status(), { admin: 'drain' }, '/status: A is drained by the operator')
  await waitText(page, `#upstreams tbody tr[data-endpoint="${a}"] td:nth-child(3)`, (s) => s.includes('drained by the operator: 2 moved, 0 left'), 'A shown drained with its progress')
  t.pass('the row shows A drained by the operator, 2 moved, 0 left')
  const fresh: Client[] = []
  for (let i = 0; i < 4; i++) { const c = await connect(url); await c.waitMessages(1); fresh.push(c); clients.push(c) }
  t.same([...new Set(fresh.map((c) => c.messages[0]!.data.toString()))], ['B'], 'new sessions all go to B')
  await page.getByRole('button', { name: `Ready legacy ${a}` }).click()
  await waitText(page, '#action-result', (s) => s.includes(`legacy ${a}: ready`), 'ready acknowledged')
  t.match(await status(), { admin: 'ready', state: 'active' }, 'Ready: /status shows A ready and active')
  await page.getByRole('button', { name: `Drain legacy ${a}` }).waitFor({ state: 'visible', timeout: WAIT_MS })
  t.pass('and its button is Drain again')
})

t.test('console: a pod with gateway.workers 2 shows each worker; a killed worker is shown restarted, its exit named', async (t) => {
  const api = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, {
    gateway: { workers: 2, workerHangMs: 3000 },
    upstreams: { api: { protocol: 'http', endpoints: [api.address] } },
    routes: [{ match: { path: '/' }, upstream: 'api' }],
    admin: { token: TOKEN, console: { intervalMs: 250 } },
    logging: { level: 'info', accessLog: false },
  }, { timeoutMs: 60_000 })
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } })
  screenshotOnFailure(t, page, 'workers')
  await login(page, f)
  const cell = (worker: number, col: number): string => `#workers tbody tr[data-worker="${worker}"] td:nth-child(${col})`
  await waitText(page, '#workers-summary', (s) => s.startsWith('2 workers on '), 'the workers summary')
  for (const w of [0, 1]) await waitText(page, cell(w, 3), (s) => s === 'running', `worker ${w} running`)
  t.pass('the Workers card lists both workers, running')
  const pid = Number(await waitText(page, cell(1, 2), (s) => /^\d+$/.test(s), 'worker 1\'s pid'))
  // Reaped on teardown in case the pod is gone before it restarts.
  t.teardown(() => { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } })
  process.kill(pid, 'SIGKILL')
  await waitText(page, cell(1, 7), (s) => s === '1', 'worker 1 restarted once')
  const exit = await waitText(page, cell(1, 8), (s) => s.startsWith('crash'), 'worker 1\'s last exit')
  t.match(exit, /^crash \(SIGKILL\) at /, `its last exit is named: ${exit}`)
  const newPid = await waitText(page, cell(1, 2), (s) => /^\d+$/.test(s) && Number(s) !== pid, 'worker 1\'s new pid')
  await waitText(page, cell(1, 3), (s) => s === 'running', 'worker 1 running again')
  t.pass(`worker 1 runs again as pid ${newPid}`)
  await waitText(page, '#workers-summary', (s) => s.includes('· 1 restarts'), 'the pod\'s restart count')
  t.equal(await f.stop(), 0, 'the pod stops with 0')
})

t.test('console: a single-process gateway shows no Workers card', async (t) => {
  const api = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, { upstreams: { api: { protocol: 'http', endpoints: [api.address] } }, routes: [{ match: { path: '/' }, upstream: 'api' }], admin: { token: TOKEN, console: { intervalMs: 250 } } })
  const browser = await launch(t)
  const page = await browser.newPage()
  screenshotOnFailure(t, page, 'no-workers')
  await login(page, f)
  await waitText(page, '#sessions-total', (s) => s === '0', 'the overview filled in')
  t.equal(await page.locator('#workers-card').isVisible(), false, 'no Workers card')
})
