import type { Config } from './config/load.js'
import { resolveAdminToken } from './admin/token.js'
import { authPolicyProblems } from './edge/auth.js'
import { readFrontTls } from './front/tls.js'
import { readTlsMaterial } from './net/tls.js'
import { resolveResumeSecret } from './sessions/token.js'
import { upstreamTlsProblems } from './upstream/registry.js'

/**
 * `ferry check` beyond the schema: every file (and secret from the environment) `ferry start` reads
 * before it listens, read the same way and by the same functions, so that what would stop `start` stops
 * here, each problem naming its field: the TLS certificates, keys and passphrases (front, TCP listeners,
 * upstreams), admin.tokenFile / FERRY_ADMIN_TOKEN, resume.secretFile / FERRY_RESUME_SECRET, and the auth
 * policies' key files (jwt.secretFile, publicKeyFile, jwksFile; apiKey.keysFile). Empty: none.
 */
export function startFileProblems (cfg: Config, env: NodeJS.ProcessEnv = process.env): string[] {
  const problems: string[] = []
  const refusal = (read: () => unknown): void => {
    try { read() } catch (err) { problems.push((err as Error).message) }
  }
  const front = cfg.listen.http.tls === undefined ? undefined : readFrontTls(cfg.listen.http.tls)
  if (front !== undefined && 'problems' in front) problems.push(...front.problems)
  cfg.listen.tcp.forEach((l, i) => {
    const m = l.tls === undefined ? undefined : readTlsMaterial(l.tls, `listen.tcp[${i}].tls`)
    if (m !== undefined && 'problems' in m) problems.push(...m.problems)
  })
  problems.push(...upstreamTlsProblems(cfg))
  refusal(() => resolveAdminToken(cfg.admin, env))
  refusal(() => resolveResumeSecret(cfg.resume, env))
  problems.push(...authPolicyProblems(cfg.auth.policies))
  return problems
}
