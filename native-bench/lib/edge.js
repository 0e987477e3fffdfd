// native-bench edge section: what auth and rate limits cost per request, Ferry beside nginx and HAProxy
// where they can do the same job. Runs against the HTTP section's processes (same backend, same
// one-worker targets) plus a redis-server for Ferry's cluster-wide limit. Each repeat runs every
// (workload, target) pair in interleaved order, the plain keep-alive baseline included, so every
// ratio compares runs made side by side.
import { createHash } from 'node:crypto'
import { SignJWT } from 'jose'

export const EDGE_SECRET = 'native-bench-jwt-secret-of-32-characters!'
export const EDGE_API_KEY = 'native-bench-api-key-0123456789abcdef'

/** An HS256 token valid for a day, with the claims Ferry's policy requires. */
export async function edgeToken () {
  return await new SignJWT({ sub: 'bench-user', tenant: 'bench' }).setProtectedHeader({ alg: 'HS256' })
    .setIssuedAt().setExpirationTime('1d').sign(new TextEncoder().encode(EDGE_SECRET))
}

/** The cluster-wide limit with leases: tokens taken from Redis per round trip. */
export const LEASE_TOKENS = 100

/** Ferry: routes under /edge/ with one policy each (rate limits far above what a run can reach: the cost, never a 429). */
export function ferryEdgeYaml ({ host, redisPort }) {
  const huge = 'ratePerSec: 100000000, burst: 100000000'
  return {
    routes: `  - { match: { path: /edge/jwt-nocache }, upstream: api, auth: jwt-nocache }
  - { match: { path: /edge/jwt }, upstream: api, auth: jwt }
  - { match: { path: /edge/key }, upstream: api, auth: key }
  - { match: { path: /edge/rl-redis }, upstream: api, rateLimits: [ip-redis] }
  - { match: { path: /edge/rl-lease }, upstream: api, rateLimits: [ip-lease] }
  - { match: { path: /edge/rl }, upstream: api, rateLimits: [ip] }
  - { match: { path: /edge/all }, upstream: api, auth: jwt, rateLimits: [ip, tenant] }
`,
    top: `auth:
  policies:
    jwt: { jwt: { algorithms: [HS256], secret: "${EDGE_SECRET}", requiredClaims: [tenant] }, forward: { claims: { sub: x-auth-subject, tenant: x-auth-tenant } } }
    jwt-nocache: { jwt: { algorithms: [HS256], secret: "${EDGE_SECRET}", requiredClaims: [tenant], cacheEntries: 0 }, forward: { claims: { sub: x-auth-subject, tenant: x-auth-tenant } } }
    key: { apiKey: { keys: [{ id: bench, sha256: ${createHash('sha256').update(EDGE_API_KEY).digest('hex')}, claims: { tenant: bench } }] } }
rateLimits:
  redis: { url: "redis://${host}:${redisPort}", timeoutMs: 50, failMode: closed }
  policies:
    ip: { key: ip, ${huge} }
    tenant: { key: "claim:tenant", ${huge} }
    ip-redis: { key: ip, ${huge}, scope: redis }
    ip-lease: { key: ip, ${huge}, scope: redis, leaseTokens: ${LEASE_TOKENS} }
`,
  }
}

/** nginx: limit_req per client address (its local rate limit), far above what a run reaches. */
export const nginxEdgeHttp = 'limit_req_zone $binary_remote_addr zone=perip:10m rate=10000000r/s;'
export const nginxEdgeLocation = (upstream) => `location /edge/rl { limit_req zone=perip burst=1000000 nodelay; proxy_pass http://${upstream}; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For $remote_addr; }`

/** HAProxy 2.6: a stick table per client address (its rate limit) and jwt_verify (HS256 signature; it checks no claims). */
export const haproxyEdgeFrontend = `  stick-table type ip size 100k expire 60s store http_req_rate(1s)
  acl edge_rl path_beg /edge/rl
  acl edge_jwt path_beg /edge/jwt
  http-request track-sc0 src if edge_rl
  http-request deny deny_status 429 if edge_rl { sc_http_req_rate(0) gt 100000000 }
  http-request deny deny_status 401 if edge_jwt !{ http_auth_bearer,jwt_verify("HS256","${EDGE_SECRET}") -m int 1 }
`

/** The edge workloads, and which targets can run each (nginx open source has no JWT). */
export function edgeWorkloads (token) {
  const bearer = ['-H', `Authorization: Bearer ${token}`]
  return [
    { name: 'edge-base', label: 'keep-alive, no edge checks (baseline)', path: '/', wrkArgs: [], targets: ['ferry', 'nginx', 'haproxy'] },
    { name: 'edge-jwt', label: 'JWT HS256 (Ferry: verified-token cache; HAProxy: jwt_verify, signature only)', path: '/edge/jwt', wrkArgs: bearer, targets: ['ferry', 'haproxy'] },
    { name: 'edge-jwt-nocache', label: 'JWT HS256, every request verified (Ferry cacheEntries 0)', path: '/edge/jwt-nocache', wrkArgs: bearer, targets: ['ferry'] },
    { name: 'edge-key', label: 'API key (SHA-256 lookup)', path: '/edge/key', wrkArgs: ['-H', `X-Api-Key: ${EDGE_API_KEY}`], targets: ['ferry'] },
    { name: 'edge-rl', label: 'rate limit per client IP, local (nginx limit_req, HAProxy stick table)', path: '/edge/rl', wrkArgs: [], targets: ['ferry', 'nginx', 'haproxy'] },
    { name: 'edge-rl-redis', label: 'rate limit per client IP, cluster-wide in Redis (a round trip per request)', path: '/edge/rl-redis', wrkArgs: [], targets: ['ferry'] },
    { name: 'edge-rl-lease', label: `rate limit per client IP, cluster-wide in Redis, leaseTokens ${LEASE_TOKENS} (a round trip per ${LEASE_TOKENS} requests)`, path: '/edge/rl-lease', wrkArgs: [], targets: ['ferry'] },
    { name: 'edge-all', label: 'JWT + per-IP + per-tenant limits (local)', path: '/edge/all', wrkArgs: bearer, targets: ['ferry'] },
  ]
}

/**
 * Runs the section. deps: { targets (name → { port, label }), measure(target, seconds, wrkArgs, path),
 * httpGet, repeats, seconds, log }. Returns { workloads, runs, summary, checks }.
 */
export async function runEdgeSection (deps) {
  const { targets, measure, httpGet, repeats, seconds, log } = deps
  const token = await edgeToken()
  const workloads = edgeWorkloads(token)
  const checks = []
  // Each target must answer the credentialed request 200 and refuse it without (a policy that does
  // not refuse measures nothing).
  for (const w of workloads) {
    for (const name of w.targets) {
      const port = targets[name].port
      const headers = {}
      for (let i = 0; i < w.wrkArgs.length; i += 2) { const h = w.wrkArgs[i + 1]; const c = h.indexOf(':'); headers[h.slice(0, c)] = h.slice(c + 2) }
      const ok = await httpGet(port, w.path, headers)
      if (ok.status !== 200) throw new Error(`edge: ${name} answered ${w.path} with ${ok.status}, expected 200`)
      if (Object.keys(headers).length > 0) {
        const refused = await httpGet(port, w.path)
        checks.push({ level: refused.status === 401 ? 'ok' : 'WARN', text: `edge ${w.name}: ${targets[name].label} refuses the request without its credential (${refused.status})` })
      }
    }
  }
  const runs = []
  for (let rep = 0; rep < repeats; rep++) {
    for (const w of workloads) {
      for (const name of w.targets) {
        const r = await measure(name, seconds, w.wrkArgs, w.path)
        runs.push({ rep, workload: w.name, target: name, ...r })
        log(`rep ${rep + 1}/${repeats} ${w.name.padEnd(16)} ${name.padEnd(7)} ${r.rps.toFixed(0).padStart(7)} req/s  p99 ${r.p99ms.toFixed(2).padStart(6)} ms  non-2xx ${r.non2xx}  cpu ${(r.proxyCpu * 100).toFixed(0)}%`)
      }
    }
  }
  const median = (xs) => { const s = xs.filter(Number.isFinite).sort((a, b) => a - b); const m = Math.floor(s.length / 2); return s.length === 0 ? NaN : s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2 }
  const summary = []
  for (const w of workloads) {
    for (const name of w.targets) {
      const rs = runs.filter((r) => r.workload === w.name && r.target === name)
      const base = runs.filter((r) => r.workload === 'edge-base' && r.target === name)
      // Per repeat: this run's req/s over the same target's baseline run of the same repeat.
      const ratios = rs.map((r) => r.rps / (base.find((b) => b.rep === r.rep)?.rps ?? NaN))
      const rps = median(rs.map((r) => r.rps))
      const baseRps = median(base.map((r) => r.rps))
      summary.push({
        workload: w.name, target: name, rps, rpsMin: Math.min(...rs.map((r) => r.rps)), rpsMax: Math.max(...rs.map((r) => r.rps)),
        p99ms: median(rs.map((r) => r.p99ms)), vsBaseline: median(ratios), vsBaselineMin: Math.min(...ratios), vsBaselineMax: Math.max(...ratios),
        // CPU per request beyond the baseline, in microseconds of the proxy's core.
        extraCpuUsPerRequest: (median(rs.map((r) => r.proxyCpu / r.rps)) - median(base.map((r) => r.proxyCpu / r.rps))) * 1e6,
        baseRps, non2xx: rs.reduce((a, r) => a + r.non2xx, 0), proxyCpu: median(rs.map((r) => r.proxyCpu)),
      })
    }
  }
  const bad = summary.filter((s) => s.non2xx > 0)
  checks.push({ level: bad.length === 0 ? 'ok' : 'WARN', text: `edge: no non-2xx responses in the measured runs${bad.length ? ` (${bad.map((s) => `${s.workload} ${s.target}: ${s.non2xx}`).join(', ')})` : ''}` })
  return { workloads: workloads.map(({ name, label, path, targets: ts }) => ({ name, label, path, targets: ts })), runs, summary, checks }
}

export function edgeMarkdown (edge, { repeats, seconds, labels }) {
  const fmt = (n, d = 0) => Number.isFinite(n) ? n.toFixed(d) : '—'
  return [
    '', '## Edge checks: auth and rate limits', '',
    `Same processes as the HTTP section, keep-alive, wrk 1 thread × 50 connections, ${repeats} interleaved repeats × ${seconds} s. \`vs baseline\` = the target's req/s with the check ÷ its req/s without it in the same repeat (median, min–max); extra CPU = proxy CPU per request above its baseline. Limits are set far above what a run reaches: this is the cost of checking, not of refusing.`,
    '',
    '| workload | target | req/s | vs baseline | p99 ms | extra proxy CPU per request |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
    ...edge.summary.map((s) => `| ${edge.workloads.find((w) => w.name === s.workload).label} | ${labels[s.target]} | ${fmt(s.rps)} (${fmt(s.rpsMin)}–${fmt(s.rpsMax)}) | ${s.workload === 'edge-base' ? '1.00' : `${fmt(s.vsBaseline, 2)} (${fmt(s.vsBaselineMin, 2)}–${fmt(s.vsBaselineMax, 2)})`} | ${fmt(s.p99ms, 2)} | ${s.workload === 'edge-base' ? '—' : `${fmt(s.extraCpuUsPerRequest, 1)} µs`} |`),
  ]
}
