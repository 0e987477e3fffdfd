import t from 'tap'
import { createHash, createHmac, generateKeyPairSync, randomBytes } from 'node:crypto'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { exportJWK, SignJWT } from 'jose'
import WebSocket, { WebSocketServer } from 'ws'
import { startBackend } from './helpers/backend.js'
import { startFerry, metric, runCli, singleProcess, writeConfig } from './helpers/ferry.js'
import { send } from './helpers/http.js'
import { connect, startMuxBackend, upgradeStatus } from './helpers/mux.js'

// Auth at the edge: JWT (HS256, RS256 via a JWKS URL with key rotation, ES256 via a PEM file), API
// keys and HMAC signatures, on HTTP requests and WebSocket upgrades, against real backends that
// record what reached them: refused requests must never reach a backend.

const SECRET = 'a-shared-secret-of-at-least-32-chars!!'
const enc = new TextEncoder()
const now = (): number => Math.floor(Date.now() / 1000)

async function hs256 (claims: Record<string, unknown>, opts: { exp?: number, secret?: string, alg?: string } = {}): Promise<string> {
  return await new SignJWT(claims).setProtectedHeader({ alg: opts.alg ?? 'HS256' }).setExpirationTime(opts.exp ?? now() + 300)
    .sign(enc.encode(opts.secret ?? SECRET))
}

/** A backend that records the headers (and body) of every complete request it gets. */
async function recordingBackend (tt: Parameters<typeof startBackend>[0]): Promise<{ port: number, seen: Array<{ url: string, headers: IncomingHttpHeaders, body: string }> }> {
  const seen: Array<{ url: string, headers: IncomingHttpHeaders, body: string }> = []
  const b = await startBackend(tt, (req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (d: string) => { body += d })
    req.on('end', () => {
      seen.push({ url: req.url ?? '', headers: req.headers, body })
      res.end('ok')
    })
  })
  return { port: b.port, seen }
}

function tmpFile (name: string, content: string): string {
  const f = join(mkdtempSync(join(tmpdir(), 'ferry-auth-')), name)
  writeFileSync(f, content)
  return f
}

t.test('JWT HS256 on HTTP: claims forwarded, client copies stripped, every failure 401 before the backend', async (t) => {
  const be = await recordingBackend(t)
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/api' }, upstream: 'api', auth: 'users' }, { match: { path: '/open' }, upstream: 'api' }],
    auth: { policies: { users: { jwt: { algorithms: ['HS256'], secret: SECRET, issuer: 'https://idp.test', audience: 'ferry', clockSkewSec: 30, requiredClaims: ['tenant'] }, forward: { claims: { sub: 'x-auth-subject', tenant: 'x-auth-tenant', roles: 'x-auth-roles' } } } } },
    logging: { accessLog: false },
  })
  const good = await hs256({ sub: 'alice', tenant: 'acme', roles: ['agent', 'admin'], iss: 'https://idp.test', aud: 'ferry' })
  const r = await send(f, '/api/x', { headers: { authorization: `Bearer ${good}`, 'x-auth-subject': 'mallory', 'x-auth-tenant': 'evil', 'x-auth-method': 'forged' } })
  t.equal(r.status, 200, 'a valid token passes')
  const h = be.seen.at(-1)!.headers
  t.equal(h['x-auth-subject'], 'alice', 'sub forwarded, the client\'s x-auth-subject replaced')
  t.equal(h['x-auth-tenant'], 'acme', 'tenant forwarded')
  t.equal(h['x-auth-roles'], '["agent","admin"]', 'a non-string claim travels as JSON')
  t.equal(h['x-auth-method'], 'jwt', 'the method header says jwt')
  t.equal(h.authorization, `Bearer ${good}`, 'the credential itself is forwarded (forward.credentials default)')

  const before = be.seen.length
  const cases: Array<[string, Record<string, string>, string]> = [
    ['no credential', {}, 'FERRY_ERR_AUTH_MISSING'],
    ['another scheme', { authorization: 'Basic YWxpY2U6cHc=' }, 'FERRY_ERR_AUTH_MISSING'],
    ['garbage token', { authorization: 'Bearer not.a.jwt' }, 'FERRY_ERR_AUTH_INVALID'],
    ['wrong secret', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'ferry' }, { secret: 'another-secret-of-at-least-32-characters' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['HS512 not allowed', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'ferry' }, { alg: 'HS512' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['alg none', { authorization: `Bearer ${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: 'a', tenant: 'x', exp: now() + 60 })).toString('base64url')}.` }, 'FERRY_ERR_AUTH_INVALID'],
    ['expired beyond skew', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'ferry' }, { exp: now() - 120 })}` }, 'FERRY_ERR_AUTH_EXPIRED'],
    ['wrong issuer', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://other', aud: 'ferry' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['wrong audience', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'other' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['required claim missing', { authorization: `Bearer ${await hs256({ sub: 'a', iss: 'https://idp.test', aud: 'ferry' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['not yet valid', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'ferry', nbf: now() + 600 })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['no exp', { authorization: `Bearer ${await new SignJWT({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'ferry' }).setProtectedHeader({ alg: 'HS256' }).sign(enc.encode(SECRET))}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['oversize token', { authorization: `Bearer ${'a'.repeat(9000)}` }, 'FERRY_ERR_AUTH_INVALID'],
    // issuer/audience configured: a token without the claim is refused, not waved through
    ['no iss claim', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', aud: 'ferry' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['no aud claim', { authorization: `Bearer ${await hs256({ sub: 'a', tenant: 'x', iss: 'https://idp.test' })}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['exp not a number', { authorization: `Bearer ${await new SignJWT({ sub: 'a', tenant: 'x', iss: 'https://idp.test', aud: 'ferry', exp: String(now() + 300) as unknown as number }).setProtectedHeader({ alg: 'HS256' }).sign(enc.encode(SECRET))}` }, 'FERRY_ERR_AUTH_INVALID'],
    ['payload swapped under a valid signature', { authorization: `Bearer ${good.split('.')[0]}.${Buffer.from(JSON.stringify({ sub: 'mallory', tenant: 'acme', roles: ['admin'], iss: 'https://idp.test', aud: 'ferry', exp: now() + 300 })).toString('base64url')}.${good.split('.')[2]}` }, 'FERRY_ERR_AUTH_INVALID'],
  ]
  for (const [what, headers, code] of cases) {
    const x = await send(f, '/api/x', { headers })
    t.equal(x.status, 401, `${what}: 401`)
    t.equal(x.code, code, `${what}: ${code}`)
    t.match(x.headers['www-authenticate'], /^Bearer realm="ferry"/, `${what}: WWW-Authenticate challenge`)
  }
  t.equal(be.seen.length, before, 'no refused request reached the backend')
  const skewed = await send(f, '/api/x', { headers: { authorization: `Bearer ${await hs256({ sub: 'bob', tenant: 'acme', iss: 'https://idp.test', aud: 'ferry' }, { exp: now() - 10 })}` } })
  t.equal(skewed.status, 200, 'expired 10 s ago is within clockSkewSec 30')
  const post = await send(f, '/api/upload', { method: 'POST', headers: { authorization: 'Bearer nope', 'content-type': 'text/plain' }, body: 'x'.repeat(100_000) })
  t.equal(post.status, 401, 'a refused request with a body gets its 401 too')
  const open = await send(f, '/open', { headers: { 'x-auth-subject': 'kept' } })
  t.equal(open.status, 200, 'a route without a policy needs no credential')
  t.equal(be.seen.at(-1)!.headers['x-auth-subject'], 'kept', 'and its headers are left alone')
  t.equal(await metric(f, 'ferry_auth_total{policy="users",method="jwt",result="ok"}'), 2, 'successes counted')
  t.equal(await metric(f, 'ferry_auth_total{policy="users",method="none",result="FERRY_ERR_AUTH_MISSING"}'), 2, 'missing credentials counted')
  t.equal(await metric(f, 'ferry_auth_total{policy="users",method="jwt",result="FERRY_ERR_AUTH_EXPIRED"}'), 1, 'expired counted')
  // The cache: the same token again is answered from it (same result, still checked for exp).
  for (let i = 0; i < 3; i++) t.equal((await send(f, '/api/x', { headers: { authorization: `Bearer ${good}` } })).status, 200, `cached token, request ${i + 1}`)
})

t.test('RS256 via a JWKS URL (cached, rotated by kid), ES256 from a PEM file, JWKS down → 503', async (t) => {
  const be = await recordingBackend(t)
  const k1 = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const k2 = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const jwk = async (k: typeof k1, kid: string): Promise<Record<string, unknown>> => ({ ...(await exportJWK(k.publicKey)), kid, alg: 'RS256', use: 'sig' })
  let keys = [await jwk(k1, 'k1')]
  let fetches = 0
  let jwksUp = true
  const jwks: Server = createServer((req, res) => {
    fetches++
    if (!jwksUp) { res.writeHead(500).end(); return }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }))
  })
  await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { jwks.closeAllConnections(); jwks.close() })
  const jwksPort = (jwks.address() as { port: number }).port
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = tmpFile('ec.pem', ec.publicKey.export({ type: 'spki', format: 'pem' }) as string)
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/rs' }, upstream: 'api', auth: 'idp' }, { match: { path: '/es' }, upstream: 'api', auth: 'device' }],
    auth: {
      policies: {
        idp: { jwt: { algorithms: ['RS256'], jwksUrl: `http://127.0.0.1:${jwksPort}/jwks.json`, jwksCooldownMs: 1, jwksTimeoutMs: 500, cacheEntries: 0 } },
        device: { jwt: { algorithms: ['ES256'], publicKeyFile: pem } },
      },
    },
    logging: { accessLog: false },
  })
  const rs = async (k: typeof k1, kid: string, sub: string): Promise<string> => await new SignJWT({ sub }).setProtectedHeader({ alg: 'RS256', kid }).setExpirationTime(now() + 300).sign(k.privateKey)
  t.equal((await send(f, '/rs', { headers: { authorization: `Bearer ${await rs(k1, 'k1', 'u1')}` } })).status, 200, 'RS256 verified with the JWKS key')
  for (let i = 0; i < 5; i++) await send(f, '/rs', { headers: { authorization: `Bearer ${await rs(k1, 'k1', `u${i}`)}` } })
  t.equal(fetches, 1, 'the JWKS is fetched once and cached')
  const rotated = await rs(k2, 'k2', 'u2')
  t.equal((await send(f, '/rs', { headers: { authorization: `Bearer ${rotated}` } })).code, 'FERRY_ERR_AUTH_INVALID', 'a kid the IdP does not publish yet: 401')
  keys = [await jwk(k1, 'k1'), await jwk(k2, 'k2')]
  t.equal((await send(f, '/rs', { headers: { authorization: `Bearer ${rotated}` } })).status, 200, 'once published, the new kid is fetched and accepted')
  const forgedKid = await rs(k2, 'k1', 'mallory')
  t.equal((await send(f, '/rs', { headers: { authorization: `Bearer ${forgedKid}` } })).code, 'FERRY_ERR_AUTH_INVALID', 'signed with k2 but claiming kid k1: 401')
  const hsWithPublic = await new SignJWT({ sub: 'x' }).setProtectedHeader({ alg: 'HS256', kid: 'k1' }).setExpirationTime(now() + 60).sign(enc.encode(JSON.stringify(keys[0])))
  t.equal((await send(f, '/rs', { headers: { authorization: `Bearer ${hsWithPublic}` } })).code, 'FERRY_ERR_AUTH_INVALID', 'algorithm confusion (HS256 signed with the public key): 401')
  jwksUp = false
  const k3 = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const unknown = await send(f, '/rs', { headers: { authorization: `Bearer ${await rs(k3, 'k3', 'u3')}` } })
  t.equal(unknown.status, 503, 'an unknown kid while the JWKS URL fails: 503, not a verdict on the token')
  t.equal(unknown.code, 'FERRY_ERR_AUTH_UNAVAILABLE')
  t.ok(unknown.headers['retry-after'], 'with Retry-After')
  t.equal((await send(f, '/rs', { headers: { authorization: `Bearer ${await rs(k1, 'k1', 'u9')}` } })).status, 200, 'known keys keep working while the JWKS URL is down')

  const es = await new SignJWT({ sub: 'device-7' }).setProtectedHeader({ alg: 'ES256' }).setExpirationTime(now() + 300).sign(ec.privateKey)
  t.equal((await send(f, '/es', { headers: { authorization: `Bearer ${es}` } })).status, 200, 'ES256 verified with the PEM key')
  t.equal(be.seen.at(-1)!.headers['x-auth-subject'], 'device-7')
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const bad = await new SignJWT({ sub: 'device-7' }).setProtectedHeader({ alg: 'ES256' }).setExpirationTime(now() + 300).sign(other.privateKey)
  t.equal((await send(f, '/es', { headers: { authorization: `Bearer ${bad}` } })).code, 'FERRY_ERR_AUTH_INVALID', 'ES256 signed by another key: 401')
})

t.test('API keys (hashed and plain, from a header or a keys file) and HMAC signatures with body check and replay window', async (t) => {
  const be = await recordingBackend(t)
  const keyA = 'key-a-' + randomBytes(16).toString('hex')
  const keyB = 'key-b-' + randomBytes(16).toString('hex')
  const keyC = 'key-c-' + randomBytes(16).toString('hex')
  const keysFile = tmpFile('keys.yaml', `- id: partner-c\n  key: ${keyC}\n  claims: { tenant: gamma }\n`)
  const hmacSecret = randomBytes(32).toString('hex')
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/keys' }, upstream: 'api', auth: 'partners' }, { match: { path: '/signed' }, upstream: 'api', auth: 'signed' }],
    auth: {
      policies: {
        partners: {
          apiKey: {
            keys: [{ id: 'partner-a', sha256: createHash('sha256').update(keyA).digest('hex'), claims: { tenant: 'alpha' } }, { id: 'partner-b', key: keyB, claims: { tenant: 'beta' } }],
            keysFile,
          },
          forward: { claims: { sub: 'x-auth-subject', tenant: 'x-auth-tenant' }, credentials: false },
        },
        signed: { hmac: { keys: [{ id: 'svc-1', secret: hmacSecret, claims: { tenant: 'ops' } }], windowSec: 60 }, forward: { claims: { sub: 'x-auth-subject', tenant: 'x-auth-tenant' } } },
      },
    },
    logging: { accessLog: false },
  })
  for (const [key, sub, tenant] of [[keyA, 'partner-a', 'alpha'], [keyB, 'partner-b', 'beta'], [keyC, 'partner-c', 'gamma']] as const) {
    t.equal((await send(f, '/keys', { headers: { 'x-api-key': key } })).status, 200, `${sub}'s key passes`)
    const h = be.seen.at(-1)!.headers
    t.same([h['x-auth-subject'], h['x-auth-tenant'], h['x-auth-method'], h['x-api-key']], [sub, tenant, 'apiKey', undefined], `${sub}: claims forwarded, the key itself not (credentials: false)`)
  }
  const n0 = be.seen.length
  t.equal((await send(f, '/keys', { headers: { 'x-api-key': keyA + 'x' } })).code, 'FERRY_ERR_AUTH_INVALID', 'an unknown key: 401')
  t.equal((await send(f, '/keys')).code, 'FERRY_ERR_AUTH_MISSING', 'no key: 401')
  t.equal(be.seen.length, n0, 'neither reached the backend')

  const sign = (method: string, target: string, body: string, o: { ts?: number, nonce?: string, secret?: string, declared?: string } = {}): Record<string, string> => {
    const ts = String(o.ts ?? now())
    const nonce = o.nonce ?? randomBytes(12).toString('base64url')
    const sha = o.declared ?? createHash('sha256').update(body).digest('hex')
    const sts = `FERRY-HMAC-SHA256\n${ts}\n${nonce}\n${method}\n127.0.0.1:${f.httpPort}\n${target}\n${sha}`
    return {
      'x-ferry-key-id': 'svc-1', 'x-ferry-timestamp': ts, 'x-ferry-nonce': nonce,
      'x-ferry-content-sha256': sha, 'x-ferry-signature': createHmac('sha256', o.secret ?? hmacSecret).update(sts).digest('hex'),
    }
  }
  t.equal((await send(f, '/signed/a?x=1', { headers: sign('GET', '/signed/a?x=1', '') })).status, 200, 'a signed GET passes')
  t.equal(be.seen.at(-1)!.headers['x-auth-subject'], 'svc-1', 'the key id is the subject')
  const body = JSON.stringify({ amount: 10, to: 'acct-1' }).repeat(2000)
  t.equal((await send(f, '/signed/pay', { method: 'POST', headers: sign('POST', '/signed/pay', body), body })).status, 200, 'a signed POST with its body passes')
  t.equal(be.seen.at(-1)!.body, body, 'and the backend got the body intact')
  const n1 = be.seen.length
  const tampered = body.replace('acct-1', 'acct-9')
  const mismatch = await send(f, '/signed/pay', { method: 'POST', headers: sign('POST', '/signed/pay', body), body: tampered })
  t.equal(mismatch.status, 401, 'a body that is not the signed one: 401')
  t.equal(mismatch.code, 'FERRY_ERR_AUTH_BODY_MISMATCH')
  const replayed = sign('GET', '/signed/r', '')
  t.equal((await send(f, '/signed/r', { headers: replayed })).status, 200, 'first use of a nonce passes')
  t.equal((await send(f, '/signed/r', { headers: replayed })).code, 'FERRY_ERR_AUTH_REPLAY', 'the same signed request again: 401 replay')
  t.equal((await send(f, '/signed/r', { headers: sign('GET', '/signed/r', '', { ts: now() - 120 }) })).code, 'FERRY_ERR_AUTH_EXPIRED', 'a timestamp outside ±60 s: 401')
  t.equal((await send(f, '/signed/r', { headers: sign('GET', '/signed/other', '') })).code, 'FERRY_ERR_AUTH_INVALID', 'signed for another target: 401')
  t.equal((await send(f, '/signed/r', { headers: sign('GET', '/signed/r', '', { secret: randomBytes(32).toString('hex') }) })).code, 'FERRY_ERR_AUTH_INVALID', 'signed with another secret: 401')
  t.equal((await send(f, '/signed/r', { headers: { ...sign('GET', '/signed/r', ''), 'x-ferry-key-id': 'svc-2' } })).code, 'FERRY_ERR_AUTH_INVALID', 'an unknown key id: 401')
  t.equal((await send(f, '/signed/r', { headers: { 'x-ferry-signature': 'zz' } })).code, 'FERRY_ERR_AUTH_INVALID', 'a partial signature: 401')
  t.equal((await send(f, '/signed/r', { method: 'POST', headers: { ...sign('POST', '/signed/r', ''), 'x-ferry-content-sha256': '' }, body: 'abc' })).status, 401, 'a body without its declared digest: 401')
  // Every refused one: the backend saw no complete request (the mismatched body never completed there).
  t.equal(be.seen.length, n1 + 1, 'only the first use of the nonce reached the backend')
  t.notOk(be.seen.some((s) => s.body.includes('acct-9')), 'the tampered body never reached the backend whole')
})

t.test('WebSocket upgrades: mux and passthrough sessions authenticate before anything opens upstream', async (t) => {
  const sessions: Array<Record<string, string>> = []
  const mux = await startMuxBackend(t, (s) => { sessions.push({ ...s.headers }); s.on('message', (d: Buffer) => { s.send(d) }) })
  const handshakes: IncomingHttpHeaders[] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  wss.on('connection', (ws, req) => { handshakes.push(req.headers); ws.on('message', (d) => { ws.send(d) }) })
  t.teardown(() => { for (const c of wss.clients) c.terminate(); wss.close() })
  const f = await startFerry(t, {
    upstreams: { chat: { protocol: 'mux', endpoints: [`127.0.0.1:${mux.port}`] }, legacy: { protocol: 'ws', endpoints: [`127.0.0.1:${(wss.address() as { port: number }).port}`] } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', auth: 'users' }, { match: { path: '/legacy' }, upstream: 'legacy', auth: 'users' }],
    auth: { policies: { users: { jwt: { algorithms: ['HS256'], secret: SECRET, from: ['header:authorization', 'query:access_token'] }, forward: { claims: { sub: 'x-auth-subject', tenant: 'x-auth-tenant' } } } } },
    logging: { accessLog: false },
  })
  const token = await hs256({ sub: 'carol', tenant: 'acme' })
  const c = await connect(`ws://127.0.0.1:${f.httpPort}/chat?access_token=${token}`)
  c.ws.send('hi')
  await c.waitMessages(1)
  t.equal(c.messages[0]!.data.toString(), 'hi', 'an authenticated mux session echoes')
  t.equal(sessions.at(-1)!['x-auth-subject'], 'carol', 'the backend session\'s OPEN metadata carries the subject')
  t.equal(sessions.at(-1)!['x-auth-tenant'], 'acme', 'and the tenant')
  c.ws.close()
  const nSessions = sessions.length
  const missing = await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/chat`, { 'x-auth-subject': 'mallory' })
  t.equal(missing.status, 401, 'an upgrade without a token: 401')
  t.match(missing.body, /FERRY_ERR_AUTH_MISSING/)
  t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/chat?access_token=${await hs256({ sub: 'x' }, { exp: now() - 600 })}`)).status, 401, 'an expired token: 401')
  t.equal(sessions.length, nSessions, 'no backend session was opened for a refused upgrade')

  const p = new WebSocket(`ws://127.0.0.1:${f.httpPort}/legacy`, { headers: { authorization: `Bearer ${token}`, 'x-auth-subject': 'mallory' } })
  await new Promise<void>((resolve, reject) => { p.once('open', resolve); p.once('error', reject) })
  t.equal(handshakes.at(-1)!['x-auth-subject'], 'carol', 'the passthrough backend\'s handshake carries the verified subject, not the client\'s')
  p.close()
  const nHs = handshakes.length
  t.equal((await upgradeStatus(`ws://127.0.0.1:${f.httpPort}/legacy`, { authorization: 'Bearer x.y.z' })).status, 401, 'a bad token on passthrough: 401')
  t.equal(handshakes.length, nHs, 'the passthrough backend saw no handshake for it')
})

t.test('bad auth config names the field and the process does not start', async (t) => {
  const base = { upstreams: { api: { protocol: 'http', endpoints: ['127.0.0.1:9'] } }, listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } } }
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['unknown policy', { routes: [{ match: { path: '/' }, upstream: 'api', auth: 'nope' }] }, /routes\[0\]\.auth.*names no auth policy/],
    ['algorithm confusion', { routes: [{ match: { path: '/' }, upstream: 'api', auth: 'p' }], auth: { policies: { p: { jwt: { algorithms: ['HS256', 'RS256'], secret: SECRET } } } } }, /auth\.policies\.p\.jwt\.algorithms/],
    ['two key sources', { routes: [{ match: { path: '/' }, upstream: 'api', auth: 'p' }], auth: { policies: { p: { jwt: { algorithms: ['RS256'], jwksUrl: 'http://127.0.0.1:1/j', publicKeyFile: '/x' } } } } }, /exactly one key source/],
    ['no method', { routes: [{ match: { path: '/' }, upstream: 'api', auth: 'p' }], auth: { policies: { p: {} } } }, /auth\.policies\.p.*at least one of jwt, apiKey, hmac/],
    ['unreadable key file', { routes: [{ match: { path: '/' }, upstream: 'api', auth: 'p' }], auth: { policies: { p: { jwt: { algorithms: ['ES256'], publicKeyFile: '/nonexistent/key.pem' } } } } }, /auth\.policies\.p\.jwt\.publicKeyFile: cannot read/],
    ['short secret', { routes: [{ match: { path: '/' }, upstream: 'api', auth: 'p' }], auth: { policies: { p: { hmac: { keys: [{ id: 'k', secret: 'short' }] } } } } }, /auth\.policies\.p\.hmac\.keys\[0\]\.secret/],
    ['unknown rate limit', { routes: [{ match: { path: '/' }, upstream: 'api', rateLimits: ['nope'] }] }, /routes\[0\]\.rateLimits\[0\].*names no rate limit policy/],
    ['bad limit key', { routes: [{ match: { path: '/' }, upstream: 'api', rateLimits: ['r'] }], rateLimits: { policies: { r: { key: 'cookie:x', ratePerSec: 1, burst: 1 } } } }, /rateLimits\.policies\.r\.key/],
  ]
  for (const [what, extra, re] of cases) {
    const r = await runCli(['start', '--config', writeConfig(singleProcess({ ...base, ...extra }))])
    t.not(r.code, 0, `${what}: does not start`)
    t.match(r.stderr + r.stdout, re, `${what}: the error names the field`)
  }
})

t.test('reload re-reads a keys file: a rotated key works, the old one is refused; an unreadable file refuses the reload', async (t) => {
  const be = await recordingBackend(t)
  const oldKey = 'old-key-' + randomBytes(12).toString('hex')
  const newKey = 'new-key-' + randomBytes(12).toString('hex')
  const keysFile = tmpFile('keys.yaml', `- { id: p, key: ${oldKey} }\n`)
  const f = await startFerry(t, {
    upstreams: { api: { protocol: 'http', endpoints: [`127.0.0.1:${be.port}`] } },
    routes: [{ match: { path: '/' }, upstream: 'api', auth: 'k' }],
    auth: { policies: { k: { apiKey: { keysFile } } } },
    logging: { accessLog: false },
  })
  t.equal((await send(f, '/', { headers: { 'x-api-key': oldKey } })).status, 200, 'the old key works')
  writeFileSync(keysFile, `- { id: p, key: ${newKey} }\n`)
  const r = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  t.equal(r.status, 200, 'reload accepted')
  t.equal((await send(f, '/', { headers: { 'x-api-key': newKey } })).status, 200, 'the rotated key works')
  t.equal((await send(f, '/', { headers: { 'x-api-key': oldKey } })).status, 401, 'the old key is refused')
  writeFileSync(keysFile, '- { id: p }\n')
  const bad = await fetch(`${f.adminUrl}/reload`, { method: 'POST' })
  const body = await bad.text()
  t.not(bad.status, 200, 'a keys file that does not validate refuses the reload')
  t.match(body, /auth\.policies\.k\.apiKey\.keysFile/, 'naming the field')
  t.equal((await send(f, '/', { headers: { 'x-api-key': newKey } })).status, 200, 'the running keys are kept')
})
