import t from 'tap'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, EMBEDDED_DEFAULTS, applyEnvOverrides, loadConfig, validateConfig } from '../src/config/load.js'
import { renderConfigReference, renderErrorReference } from '../src/config/reference.js'
import { ERRORS, FerryError } from '../src/errors.js'
import { ROOT, runCli, singleProcess, startFerry, writeConfig } from './helpers/ferry.js'

const valid = {
  upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:3000', '[::1]:3001', 'http://localhost:3002'] } },
  routes: [{ match: { path: '/api' }, upstream: 'api' }],
}

function problems (input: unknown): string[] {
  try {
    validateConfig(input)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  return []
}

t.test('a valid config gets its defaults and is frozen', async (t) => {
  const cfg = validateConfig(valid)
  t.equal(cfg.upstreams.api!.pool.maxConnections, 16, 'pool.maxConnections defaults to 16')
  t.equal(cfg.listen.http.port, 8080, 'listen.http.port defaults to 8080')
  t.equal(cfg.routes[0]!.match.path, '/api', 'route path kept')
  t.ok(cfg.gateway.id.length > 0, 'gateway id defaults to the host name')
  t.ok(Object.isFrozen(cfg.upstreams.api!.pool), 'nested objects are frozen')
  t.same(problems(EMBEDDED_DEFAULTS), [], 'embedded defaults are valid')
})

t.test('every problem is reported with its field path and the value seen', async (t) => {
  const found = problems({
    upstreams: { api: { protocol: 'http', endpoints: ['nohost'], pool: { maxConnections: -1, maxConns: 3 } }, db: { protocol: 'carrier-pigeon', endpoints: [] } },
    routes: [{ match: { path: 'api' }, upstream: 'api' }],
    listen: { http: { port: 70000 } },
    bogus: true,
  })
  const has = (prefix: string): boolean => found.some((p) => p.startsWith(prefix))
  t.ok(has('upstreams.api.pool.maxConnections: must be a positive integer (got -1)'), 'names pool.maxConnections and the bad value')
  t.ok(has('upstreams.api.endpoints[0]: must be host:port'), 'names the bad endpoint by index')
  t.ok(has('upstreams.api.pool.maxConns: unknown key (did you mean maxConnections?)'), 'unknown key with a hint')
  t.ok(has('upstreams.db.protocol: must be one of'), 'bad protocol names the field')
  t.ok(has('routes[0].match.path: must start with /'), 'route path checked')
  t.ok(has('listen.http.port:'), 'port range checked')
  t.ok(has('bogus: unknown key'), 'unknown top-level key')
  t.ok(found.length >= 7, `all problems collected, not just the first (got ${found.length})`)
})

t.test('a typo in an upstream\'s protocol key is named, beside the missing protocol (no kind is chosen, yet unknown keys are still reported)', async (t) => {
  const found = problems({ upstreams: { api: { protocl: 'http', endpoints: ['127.0.0.1:3000'], pool: { maxConnections: 4 }, maxConns: 2 } }, routes: [{ upstream: 'api' }] })
  t.ok(found.includes('upstreams.api.protocl: unknown key'), `the misspelt key is named (got ${JSON.stringify(found)})`)
  t.ok(found.includes('upstreams.api.maxConns: unknown key (did you mean maxConnections?)'), 'another unknown key, with its hint')
  t.ok(found.some((p) => p.startsWith('upstreams.api.protocol: must be one of "http", "ws", "mux", "tcp" (got nothing)')), 'and the missing protocol')
  t.notOk(found.some((p) => /upstreams\.api\.(endpoints|pool)/.test(p)), 'keys some upstream kind has are not called unknown')
  t.equal(found.length, 3, 'exactly those three problems')
  const wrong = problems({ upstreams: { api: { protocol: 'htp', endpoint: ['127.0.0.1:3000'] } }, routes: [{ upstream: 'api' }] })
  t.same(wrong, ['upstreams.api.endpoint: unknown key', 'upstreams.api.protocol: must be one of "http", "ws", "mux", "tcp" (got "htp")'], 'with a wrong protocol value too')
})

t.test('a route naming a missing upstream is an error naming the route', async (t) => {
  const found = problems({ ...valid, routes: [{ upstream: 'nope' }] })
  t.match(found.join('\n'), /routes\[0\]\.upstream: names no upstream \(known: api\)/, 'route upstream cross-checked')
})

t.test('route affinity: allowed on routes to http upstreams (issue 22.2); token and setCookie only where they mean something', async (t) => {
  const ws = { chat: { protocol: 'ws', endpoints: ['127.0.0.1:4000'] } }
  const route = (upstream: string, affinity: unknown): unknown => ({ upstreams: { ...valid.upstreams, ...ws }, routes: [{ upstream, affinity }] })
  t.same(problems(route('api', { key: 'cookie:io', setCookie: true })), [], 'http route: cookie key with setCookie')
  t.same(problems(route('api', { key: 'header:x-session' })), [], 'http route: header key')
  t.same(problems(route('api', { key: 'query:sid' })), [], 'http route: query key')
  t.equal(validateConfig(route('api', { key: 'query:sid' })).routes[0]!.affinity!.setCookie, false, 'setCookie defaults to false')
  t.match(problems(route('api', { key: 'token' })).join('\n'), /routes\[0\]\.affinity\.key: token is for routes to ws or mux upstreams/, 'token on an http route: refused')
  t.match(problems(route('api', { key: 'header:x', setCookie: true })).join('\n'), /routes\[0\]\.affinity\.setCookie: needs key: cookie:NAME/, 'setCookie with a header key: refused')
  t.match(problems(route('chat', { key: 'cookie:io', setCookie: true })).join('\n'), /routes\[0\]\.affinity\.setCookie: is for routes to http upstreams; chat is ws/, 'setCookie on a ws route: refused')
})

t.test('environment overrides use FERRY__path__to__field', async (t) => {
  const out = applyEnvOverrides(valid, { FERRY__listen__http__port: '9999', FERRY__upstreams__api__pool__maxConnections: '3', OTHER: 'x' })
  const cfg = validateConfig(out)
  t.equal(cfg.listen.http.port, 9999, 'port from env, parsed as a number')
  t.equal(cfg.upstreams.api!.pool.maxConnections, 3, 'nested field from env')
  t.equal((valid as any).listen, undefined, 'the input object is not modified')
})

t.test('YAML errors and unreadable files are FERRY_ERR_CONFIG_READ', async (t) => {
  const bad = writeConfig({})
  writeFileSync(bad, 'upstreams: [unclosed\n')
  t.throws(() => loadConfig(bad, {}), { code: 'FERRY_ERR_CONFIG_READ' }, 'bad YAML')
  t.throws(() => loadConfig('/nonexistent/ferry.yaml', {}), { code: 'FERRY_ERR_CONFIG_READ' }, 'missing file')
  writeFileSync(bad, 'upstreams: &u\n  api: *u\nroutes: []\n')
  t.throws(() => loadConfig(bad, {}), { code: 'FERRY_ERR_CONFIG_INVALID' }, 'a self-referencing YAML alias is a field error, not a crash')
  writeFileSync(bad, '- just\n- a list\n')
  t.throws(() => loadConfig(bad, {}), { code: 'FERRY_ERR_CONFIG_INVALID' }, 'a YAML list is not a config')
})

t.test('ferry check exits 1 naming the field, 0 on a good file', async (t) => {
  const bad = writeConfig({ upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:3000'], pool: { maxConnections: 0 } } }, routes: [{ upstream: 'api' }] })
  const r = await runCli(['check', '--config', bad])
  t.equal(r.code, 1, 'exit code 1 for an invalid config')
  t.match(r.stderr, 'upstreams.api.pool.maxConnections: must be a positive integer', 'stderr names the field path')
  t.match(r.stderr, 'FERRY_ERR_CONFIG_INVALID', 'stderr carries the error code')
  const good = writeConfig(valid)
  const ok = await runCli(['check', '--config', good])
  t.equal(ok.code, 0, 'exit code 0 for a valid config')
  t.match(ok.stdout, /ok \(1 upstreams, 1 routes\)/, 'says what it checked')
})

t.test('ferry start refuses an invalid config and does not listen', async (t) => {
  const bad = writeConfig({ upstreams: {}, routes: [] })
  const r = await runCli(['start', '--config', bad])
  t.equal(r.code, 1, 'exit code 1')
  t.match(r.stderr, 'routes: must have at least one route (or a listen.tcp listener)', 'names the field')
  t.notMatch(r.stdout, 'listening', 'never listened')
})

t.test('the resume secret: an unreadable secretFile or a short secret stops the start, naming the field', async (t) => {
  const base = { listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } }, upstreams: { chat: { protocol: 'mux', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/chat' }, upstream: 'chat' }] }
  const missing = await runCli(['start', '--config', writeConfig(singleProcess({ ...base, resume: { secretFile: '/nonexistent/ferry-secret' } }))])
  t.equal(missing.code, 1, 'a missing secretFile: exit code 1')
  t.match(missing.stderr + missing.stdout, 'resume.secretFile: cannot read /nonexistent/ferry-secret', 'names the field and the file')
  t.notMatch(missing.stdout, '"msg":"listening"', 'never listened')
  const short = await runCli(['start', '--config', writeConfig(singleProcess(base))], { FERRY_RESUME_SECRET: 'too-short' })
  t.equal(short.code, 1, 'a short FERRY_RESUME_SECRET: exit code 1')
  t.match(short.stderr + short.stdout, 'FERRY_RESUME_SECRET: the secret must be at least 32 characters', 'says why')
  const inline = await runCli(['check', '--config', writeConfig({ ...base, resume: { secret: 'short' } })])
  t.equal(inline.code, 1, 'a short resume.secret fails `ferry check`')
  t.match(inline.stderr, 'resume.secret: must be at least 32 characters', 'naming the field')
})

t.test('ferry check reads every file and secret start reads: what stops start stops check, naming the same field', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-check-'))
  const file = (name: string, text: string): string => { const p = join(dir, name); writeFileSync(p, text); return p }
  const base = { listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } }, upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ upstream: 'api' }] }
  const env = { FERRY_ADMIN_TOKEN: '', FERRY_RESUME_SECRET: '' }
  // The tester's case: a 12-character token file, and one that does not exist. start and check say the same.
  for (const [tokenFile, says] of [[file('token', 'abcdefghijkl\n'), 'admin.tokenFile: the token must be at least 16 characters (got 12)'], ['/nonexistent/ferry-token', 'admin.tokenFile: cannot read /nonexistent/ferry-token']] as const) {
    const cfg = writeConfig(singleProcess({ ...base, admin: { tokenFile } }))
    const check = await runCli(['check', '--config', cfg], env)
    t.equal(check.code, 1, `check: exit 1 (${says})`)
    t.match(check.stderr, says, 'check names the field and why')
    t.notMatch(check.stdout, 'ok', 'and does not say ok')
    const start = await runCli(['start', '--config', cfg], env)
    t.equal(start.code, 1, 'start refuses it too: exit 1')
    t.match(start.stderr, says, 'with the same line')
  }
  // Every other file-backed field, all at once: every problem is listed, not the first only.
  const cfg = writeConfig({
    ...base,
    resume: { secretFile: file('resume', 'short\n') },
    auth: {
      policies: {
        hs: { jwt: { algorithms: ['HS256'], secretFile: file('hs', 'only-twenty-characters') } },
        rs: { jwt: { algorithms: ['RS256'], publicKeyFile: file('pub.pem', 'not a key') } },
        jwks: { jwt: { algorithms: ['RS256'], jwksFile: '/nonexistent/jwks.json' } },
        keys: { apiKey: { keysFile: file('keys.yaml', '- { nope: 1 }\n') } },
      },
    },
  })
  const all = await runCli(['check', '--config', cfg], env)
  t.equal(all.code, 1, 'exit 1')
  t.match(all.stderr, 'FERRY_ERR_CONFIG_INVALID', 'the code start uses')
  t.match(all.stderr, /5 problems/, 'all five listed')
  t.match(all.stderr, 'resume.secretFile: the secret must be at least 32 characters (got 5)', 'resume.secretFile')
  t.match(all.stderr, /auth\.policies\.hs\.jwt\.secretFile: the secret in .* must be at least 32 characters/, 'jwt.secretFile')
  t.match(all.stderr, /auth\.policies\.rs\.jwt\.publicKeyFile: .* holds no PEM public key/, 'jwt.publicKeyFile')
  t.match(all.stderr, 'auth.policies.jwks.jwt.jwksFile: cannot read /nonexistent/jwks.json', 'jwt.jwksFile')
  t.match(all.stderr, /auth\.policies\.keys\.apiKey\.keysFile: /, 'apiKey.keysFile')
  // The secrets start takes from the environment are checked in check's environment.
  const envShort = await runCli(['check', '--config', writeConfig(base)], { FERRY_ADMIN_TOKEN: 'too-short', FERRY_RESUME_SECRET: '' })
  t.equal(envShort.code, 1, 'a short FERRY_ADMIN_TOKEN: exit 1')
  t.match(envShort.stderr, 'FERRY_ADMIN_TOKEN: the token must be at least 16 characters (got 9)', 'naming the variable')
  const good = writeConfig({ ...base, admin: { tokenFile: file('good-token', 'a-token-of-24-characters\n') }, resume: { secretFile: file('good-resume', 'x'.repeat(32)) } })
  const ok = await runCli(['check', '--config', good], env)
  t.equal(ok.code, 0, `good files: exit 0 (stderr: ${ok.stderr})`)
  t.match(ok.stdout, 'ok (1 upstreams, 1 routes)', 'says ok')
})

t.test('the unshared-resume-secret warning: only when resume tokens are issued (a mux upstream), once', async (t) => {
  const warning = (logs: Array<Record<string, unknown>>): number => logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('resume.secret is not set')).length
  const http = await startFerry(t, { upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/' }, upstream: 'api' }] })
  t.equal(warning(http.logs), 0, 'HTTP only, no secret: no warning (no resume token is ever issued)')
  const mux = await startFerry(t, { upstreams: { chat: { protocol: 'mux', endpoints: ['127.0.0.1:1'] } }, routes: [{ match: { path: '/chat' }, upstream: 'chat' }] })
  t.equal(warning(mux.logs), 1, 'a mux upstream and no secret: warned once')
})

t.test('docs/config.md names every upstream, route and drain setting of the embedded defaults', async (t) => {
  const doc = readFileSync(join(ROOT, 'docs/config.md'), 'utf8')
  const para = doc.slice(doc.indexOf('Embedded defaults'))
  t.ok(para.length > 0, 'docs/config.md has an embedded-defaults paragraph')
  for (const [name, u] of Object.entries(EMBEDDED_DEFAULTS.upstreams ?? {})) {
    t.ok(para.includes(`\`${name}\` (${u.protocol} at ${(u.endpoints ?? []).map((e) => `\`${e}\``).join(', ')})`), `it names upstream ${name} (${u.protocol}) and its endpoints`)
  }
  for (const r of EMBEDDED_DEFAULTS.routes ?? []) t.ok(para.includes(`\`${r.match?.path}\` → \`${r.upstream}\``), `it names the route ${r.match?.path} → ${r.upstream}`)
  for (const [k, v] of Object.entries(EMBEDDED_DEFAULTS.drain ?? {})) t.ok(para.includes(`\`${k}: ${String(v)}\``), `it names drain.${k}: ${String(v)}`)
})

t.test('docs/config.md and docs/errors.md match the schema and the error table', async (t) => {
  t.equal(readFileSync(join(ROOT, 'docs/config.md'), 'utf8'), renderConfigReference(), 'docs/config.md is current (run `make docs`)')
  const errorsDoc = readFileSync(join(ROOT, 'docs/errors.md'), 'utf8')
  t.equal(errorsDoc, renderErrorReference(), 'docs/errors.md is current (run `make docs`)')
  for (const code of Object.keys(ERRORS)) t.ok(errorsDoc.includes(`\`${code}\``), `${code} documented`)
  const reference = renderConfigReference()
  for (const field of ['upstreams.<name>.pool.maxConnections', 'upstreams.<name>.pool.queueLimit', 'upstreams.<name>.pool.queueTimeoutMs', 'http.maxBodyBytes', 'upstreams.<name>.timeouts.connectMs']) {
    t.ok(reference.includes(`\`${field}\``), `${field} in the reference`)
  }
})

t.test('property: mutated configs never crash the validator, only ConfigError', async (t) => {
  // Deterministic PRNG so a failure reproduces.
  let seed = 0x9e3779b9
  const rand = (): number => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) / 0x100000000 }
  const junk = [null, -1, 0, 1.5, 'x', '', true, [], {}, [1, 'a'], { a: 1 }, 'http', '127.0.0.1:0', 1e12, '/']
  const base = validateConfig(valid) as unknown
  const paths: string[][] = []
  const walk = (o: unknown, p: string[]): void => {
    if (o === null || typeof o !== 'object') return
    for (const [k, v] of Object.entries(o)) { paths.push([...p, k]); walk(v, [...p, k]) }
  }
  walk(base, [])
  let invalid = 0
  const N = 3000
  for (let i = 0; i < N; i++) {
    const doc = structuredClone(base) as Record<string, any>
    const mutations = 1 + Math.floor(rand() * 3)
    for (let m = 0; m < mutations; m++) {
      const p = paths[Math.floor(rand() * paths.length)]!
      let node = doc
      for (const seg of p.slice(0, -1)) { if (node[seg] === null || typeof node[seg] !== 'object') break; node = node[seg] }
      const r = rand()
      if (r < 0.2) delete node[p.at(-1)!]
      else if (r < 0.3) node[`extra${i}`] = 1
      else node[p.at(-1)!] = structuredClone(junk[Math.floor(rand() * junk.length)])
    }
    try {
      validateConfig(doc)
    } catch (err) {
      if (!(err instanceof FerryError) || err.code !== 'FERRY_ERR_CONFIG_INVALID') { t.fail(`case ${i} threw ${String(err)}`); return }
      if ((err as ConfigError).problems.some((p) => !/^[^:]+: /.test(p))) { t.fail(`case ${i}: a problem without a field path: ${err.message}`); return }
      invalid++
    }
  }
  t.ok(invalid > N / 2, `most of ${N} mutated configs rejected with field paths (${invalid})`)
})
