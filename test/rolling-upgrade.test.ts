import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'

/**
 * The rolling-upgrade proof (native-bench/rolling-upgrade.mjs, paced run only): three Ferry processes
 * behind a readiness-polling load balancer, two ferry/backend echo backends (resume on), one HTTP
 * backend, redis for affinity; 2,000 ferry/client sessions and 200 plain WebSocket sessions sending
 * numbered messages, a steady HTTP request stream; then every pod in turn drained (SIGTERM) and
 * replaced by a fresh process. Real processes, loopback only. The script stops everything it started,
 * also when it fails (and SIGKILLs what is left if this process exits first).
 */

interface Check { name: string, ok: boolean, detail: string }
interface Flow { sent: number, received: number, lost: number, duplicated: number, reordered: number }
interface PacedRun {
  durationMs: number
  messages: { toBackend: Flow, toClient: Flow }
  ferryClient: { sessions: number, open: number, resumed: number, neverResumed: number, freshSessions: number, resets: number, terminalCloses: number, migrations: number }
  plain: { sessions: number, up: number, reconnects: number }
  backend: { ferryCreated: number, ferryClosed: number, plainClosed: number, resumes: number, sessionsWithMoreThanOneBackendSession: number }
  http: { total: number, failed: number, byReason: Record<string, number> }
  handshakes: { budgetPerPod: number, peakPerPod: number, refused: number, perPod: Array<{ pod: string, peakPerSec: number, perSecond: number[] }> }
  eventLoopLagMaxMs: { fleet: number, pods: number }
  reconnects: { peakPerSec: number, total: number }
  drains: Array<{ pod: string, exitCode: number | null, drainMs: number, ratePerSec?: number }>
}
interface Bench {
  run: (opts: Record<string, unknown>, log?: (s: string) => void) => Promise<{ runs: { paced: PacedRun }, checks: Check[], ok: boolean }>
}

const SESSIONS = 2000
const PLAIN = 200
const BUDGET = 200

t.test(`rolling upgrade of 3 pods under ${SESSIONS} ferry/client + ${PLAIN} plain sessions and HTTP: nothing lost, duplicated or re-created, no HTTP failure, handshakes within the budget`, { timeout: 240_000 }, async (t) => {
  const bench = await import(new URL('../native-bench/rolling-upgrade.mjs', import.meta.url).href) as Bench
  const workDir = mkdtempSync(join(tmpdir(), 'ferry-rolling-'))
  t.teardown(() => { rmSync(workDir, { recursive: true, force: true }) })
  const started = Date.now()
  // One scenario is bounded by timeoutMs (every wait inside it too); tap's timeout above is the backstop.
  const res = await bench.run({ sessions: SESSIONS, plain: PLAIN, budget: BUDGET, naive: false, write: false, workDir, timeoutMs: 200_000 }, (s) => { t.comment(s) })
  const r = res.runs.paced
  t.comment(`paced rollout ${(r.durationMs / 1000).toFixed(1)} s (whole test ${((Date.now() - started) / 1000).toFixed(1)} s); migration rates ${r.drains.map((d) => d.ratePerSec).join(', ')}/s; peak handshakes per pod ${r.handshakes.peakPerPod}/s; peak fleet reconnects ${r.reconnects.peakPerSec}/s; longest event-loop stall: fleet ${r.eventLoopLagMaxMs.fleet} ms, pods ${r.eventLoopLagMaxMs.pods} ms`)
  for (const p of r.handshakes.perPod) t.comment(`handshakes arriving at ${p.pod} per second: ${p.perSecond.join(' ')}`)

  t.equal(r.ferryClient.sessions, SESSIONS, `${SESSIONS} ferry/client sessions took part`)
  t.equal(r.plain.sessions, PLAIN, `${PLAIN} plain WebSocket sessions took part`)
  t.equal(r.drains.length, 3, 'all three pods were drained and replaced')
  t.ok(r.drains.every((d) => d.exitCode === 0), `every drained pod exited 0 (${r.drains.map((d) => `${d.pod} ${d.exitCode} after ${d.drainMs} ms`).join(', ')})`)

  const m = r.messages
  t.ok(m.toBackend.sent > SESSIONS && m.toClient.sent > SESSIONS, `messages were checked both ways (${m.toBackend.sent} client→backend, ${m.toClient.sent} backend→client)`)
  t.equal(m.toBackend.lost, 0, 'no ferry/client message to the backend was lost')
  t.equal(m.toClient.lost, 0, 'no backend message to a ferry/client client was lost (server stream and echoes)')
  t.equal(m.toBackend.duplicated + m.toClient.duplicated, 0, `no ferry/client message was duplicated (${m.toBackend.duplicated} to the backend, ${m.toClient.duplicated} to clients)`)
  t.equal(m.toBackend.reordered + m.toClient.reordered, 0, 'none arrived out of order')

  t.equal(r.ferryClient.neverResumed, 0, 'every ferry/client session was migrated at least once and resumed')
  t.ok(r.backend.resumes >= SESSIONS, `the backends saw ${r.backend.resumes} resumes (${r.ferryClient.migrations} migrations)`)
  t.equal(r.backend.ferryClosed, 0, 'the backends closed no ferry/client session')
  t.equal(r.backend.ferryCreated, 0, 'the backends created no new ferry/client session')
  t.equal(r.backend.sessionsWithMoreThanOneBackendSession, 0, 'no ferry/client session ever had a second backend session')
  t.equal(r.ferryClient.freshSessions + r.ferryClient.resets, 0, 'no client saw a fresh session or a reset')
  t.equal(r.ferryClient.open, SESSIONS, 'every ferry/client session is open at the end')
  t.equal(r.ferryClient.terminalCloses, 0, 'and none was closed for good')
  t.equal(r.plain.up, PLAIN, `every plain session reconnected by itself (${r.plain.reconnects} reconnects; the backends closed ${r.backend.plainClosed} plain sessions)`)

  t.ok(r.http.total > 0, `HTTP requests were made (${r.http.total})`)
  t.equal(r.http.failed, 0, `no HTTP request failed${r.http.failed > 0 ? `: ${JSON.stringify(r.http.byReason)}` : ''}`)

  t.equal(r.handshakes.budgetPerPod, BUDGET, `the budget: admission.handshakesPerSec = ${BUDGET} per pod`)
  t.ok(r.handshakes.peakPerPod <= BUDGET, `peak WebSocket handshakes arriving at any pod in any 1 s: ${r.handshakes.peakPerPod} ≤ ${BUDGET} (${r.handshakes.perPod.map((p) => `${p.pod} ${p.peakPerSec}`).join(', ')}; ${r.handshakes.refused} refused by admission)`)

  // The script's own verdict (what makes `node native-bench/rolling-upgrade.mjs` exit 1) agrees.
  for (const c of res.checks) t.ok(c.ok, `script check: ${c.name} (${c.detail})`)
})
