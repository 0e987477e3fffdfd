import t from 'tap'
import { writeFileSync } from 'node:fs'
import { stringify } from 'yaml'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, runCli, writeConfig, metric, type FerryProcess } from './helpers/ferry.js'
import { adminRequest, sseClient } from './helpers/admin.js'

/**
 * admin.token: every admin endpoint but the probes (and /metrics unless protectMetrics) needs
 * `Authorization: Bearer TOKEN`; the console's files are open (they hold no data); POSTs from another
 * origin are refused; `ferry drain`/`ferry reload` send the config's token.
 */

const TOKEN = 'admin-token-0123456789abcdef'

async function unauthorizedCount (f: FerryProcess, path: string): Promise<number> {
  // /metrics stays open in these configs, so the counter can be read without the token.
  return await metric(f, `ferry_admin_unauthorized_total{path="${path}"}`)
}

t.test('admin.token: 401 without or with a wrong token, 200 with it; probes, console files and /metrics stay open', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, httpConfig([backend.address], {}, { admin: { token: TOKEN } }))

  for (const path of ['/status', '/events']) {
    const none = await adminRequest(f, path)
    t.equal(none.status, 401, `${path} without a token → 401`)
    t.match(none.headers['www-authenticate'] ?? '', /^Bearer /, `${path}: the 401 names the Bearer scheme`)
    t.equal(JSON.parse(none.body).error.code, 'FERRY_ERR_ADMIN_UNAUTHORIZED', `${path}: the 401 body carries FERRY_ERR_ADMIN_UNAUTHORIZED`)
    const wrong = await adminRequest(f, path, { token: TOKEN + 'x' })
    t.equal(wrong.status, 401, `${path} with a token one character longer → 401`)
    const prefix = await adminRequest(f, path, { token: TOKEN.slice(0, -1) })
    t.equal(prefix.status, 401, `${path} with a prefix of the token → 401`)
    const basic = await adminRequest(f, path, { headers: { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` } })
    t.equal(basic.status, 401, `${path} with the token in another scheme (Basic) → 401`)
    t.equal(await unauthorizedCount(f, path), 4, `${path}: 4 refusals counted in ferry_admin_unauthorized_total`)
  }
  const ok = await adminRequest(f, '/status', { token: TOKEN })
  t.equal(ok.status, 200, '/status with the token → 200')
  const st = JSON.parse(ok.body)
  t.equal(st.state, 'running', '/status with the token is the status document (state running)')
  t.same(st.admin.token, 'config', '/status says where the admin token came from (config), never the token')
  t.notMatch(ok.body, TOKEN, '/status does not contain the token')

  for (const [path, want] of [['/healthz', 'ok\n'], ['/readyz', 'ready\n']] as const) {
    const r = await adminRequest(f, path)
    t.equal(r.status, 200, `${path} stays open without a token (Kubernetes probes)`)
    t.equal(r.body, want, `${path} body`)
  }
  t.equal((await adminRequest(f, '/metrics')).status, 200, '/metrics stays open without a token (protectMetrics is off)')
  for (const path of ['/', '/console.js', '/console.css']) {
    const r = await adminRequest(f, path)
    t.equal(r.status, 200, `console file ${path} is served without a token (it holds no data)`)
    t.match(r.headers['content-security-policy'] ?? '', /default-src 'none'/, `${path} carries a strict Content-Security-Policy`)
  }

  const drainNoToken = await adminRequest(f, '/drain', { method: 'POST' })
  t.equal(drainNoToken.status, 401, 'POST /drain without the token → 401')
  const reloadNoToken = await adminRequest(f, '/reload', { method: 'POST' })
  t.equal(reloadNoToken.status, 401, 'POST /reload without the token → 401')
  const cross = await adminRequest(f, '/drain', { method: 'POST', token: TOKEN, headers: { origin: 'http://evil.example' } })
  t.equal(cross.status, 403, 'POST /drain from another origin, even with the token → 403')
  t.equal(JSON.parse(cross.body).error.code, 'FERRY_ERR_ADMIN_CROSS_ORIGIN', 'naming FERRY_ERR_ADMIN_CROSS_ORIGIN')
  const after = JSON.parse((await adminRequest(f, '/status', { token: TOKEN })).body)
  t.equal(after.state, 'running', 'the refused drains did nothing: still running')
  t.equal(after.drain.phase, 'idle', 'and the drain phase is idle')
  t.equal((await adminRequest(f, '/readyz')).status, 200, 'and /readyz is still 200')

  // The CLI sends the token of the config it is given.
  const cfgFile = writeConfig({ ...httpConfig([backend.address]), listen: { admin: { host: '127.0.0.1', port: f.adminPort } }, admin: { token: TOKEN } })
  const bare = await runCli(['reload', '--admin', `127.0.0.1:${f.adminPort}`], { FERRY_ADMIN_TOKEN: '' })
  t.equal(bare.code, 1, '`ferry reload` without any token exits 1')
  t.match(bare.stderr, /401/, 'naming the 401')
  const withCfg = await runCli(['reload', '--config', cfgFile])
  t.equal(withCfg.code, 0, `\`ferry reload --config\` sends the config's admin.token and the reload succeeds (stderr: ${withCfg.stderr.trim()})`)
  const withEnv = await runCli(['drain', '--admin', `127.0.0.1:${f.adminPort}`], { FERRY_ADMIN_TOKEN: TOKEN })
  t.equal(withEnv.code, 0, `\`ferry drain\` with FERRY_ADMIN_TOKEN is accepted (stderr: ${withEnv.stderr.trim()})`)
  t.equal(await f.stop(), 0, 'the drained gateway exits 0')
})

t.test('admin.protectMetrics and admin.tokenFile; a reload that changes the token ends live channels opened with the old one', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const tokenFile = writeConfig({}).replace(/ferry\.yaml$/, 'token')
  writeFileSync(tokenFile, `  ${TOKEN}\n`)
  const base = { ...httpConfig([backend.address]), admin: { tokenFile, protectMetrics: true } }
  const f = await startFerry(t, base)
  t.equal((await adminRequest(f, '/metrics')).status, 401, 'with protectMetrics, /metrics without the token → 401')
  const m = await adminRequest(f, '/metrics', { token: TOKEN })
  t.equal(m.status, 200, 'with protectMetrics, /metrics with the token (read from tokenFile, whitespace trimmed) → 200')
  t.match(m.body, /ferry_admin_unauthorized_total\{path="\/metrics"\} 1/, 'the refused scrape was counted')
  t.equal((await adminRequest(f, '/healthz')).status, 200, '/healthz stays open')

  // A new token on reload: the old one stops working at once, the new one works.
  const NEW = 'the-new-admin-token-42'
  const file = String(f.child.spawnargs.at(-1))
  const next = { ...base, admin: { token: NEW, protectMetrics: true }, listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } }, logging: { pretty: false }, drain: { acceptGraceMs: 0, spreadMs: 0, deadlineMs: 5000 } }
  const live = await sseClient(f, TOKEN)
  t.equal(live.status, 200, 'a live channel opened with the old token → 200')
  await live.waitFor((e) => e.event === 'snapshot', 'a first snapshot')
  t.teardown(() => { live.close() })
  writeFileSync(file, stringify(next))
  const r = await adminRequest(f, '/reload', { method: 'POST', token: TOKEN })
  t.equal(r.status, 200, `POST /reload with the old token → 200 (body: ${r.body.slice(0, 200)})`)
  t.equal((await adminRequest(f, '/status', { token: TOKEN })).status, 401, 'after the reload the old token → 401')
  t.equal((await adminRequest(f, '/status', { token: NEW })).status, 200, 'and the new one → 200')
  await live.ended
  t.pass('the live channel opened with the old token was ended by the reload')

  // A tokenFile that cannot be read: the reload is refused by field, the running token stays.
  writeFileSync(file, stringify({ ...next, admin: { tokenFile: '/nonexistent/ferry-token' } }))
  const bad = await adminRequest(f, '/reload', { method: 'POST', token: NEW })
  t.equal(bad.status, 400, 'a reload whose admin.tokenFile cannot be read → 400')
  t.match(JSON.parse(bad.body).errors.join('\n'), /admin\.tokenFile: cannot read \/nonexistent\/ferry-token/, 'naming admin.tokenFile')
  t.equal((await adminRequest(f, '/status', { token: NEW })).status, 200, 'the running token still works')
})

t.test('no token configured: the admin API stays open as before; a too-short token is refused at start by field', async (t) => {
  const backend = await startBackend(t, (_req, res) => { res.end('ok') })
  const f = await startFerry(t, httpConfig([backend.address]), { env: { FERRY_ADMIN_TOKEN: '' } })
  const st = await adminRequest(f, '/status')
  t.equal(st.status, 200, 'without admin.token, /status needs no token')
  t.equal(JSON.parse(st.body).admin.token, 'none', 'and /status says the token source is none')
  const check = await runCli(['check', '--config', writeConfig({ ...httpConfig([backend.address]), admin: { token: 'short' } })])
  t.equal(check.code, 1, '`ferry check` refuses a 5-character admin.token')
  t.match(check.stderr, /admin\.token: must be at least 16 characters/, 'naming admin.token')
  const both = await runCli(['check', '--config', writeConfig({ ...httpConfig([backend.address]), admin: { token: TOKEN, tokenFile: '/x' } })])
  t.match(both.stderr, /admin\.tokenFile: give either admin\.token or admin\.tokenFile/, 'token and tokenFile together are refused')
})
