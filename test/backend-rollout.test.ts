import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'

/**
 * The backend-rollout proof (native-bench/backend-rollout.mjs, handoff run only, small): two Ferry pods,
 * a `protocol: mux` upstream fed by the Redis registry, two `ferry/backend` processes at v1; 200 plain
 * WebSocket sessions and 50 ferry/client sessions exchanging numbered messages (echoed with the
 * session's counter, the state the `handoff` hook carries), in rooms the backends publish to. Then v1-a
 * is drained (SIGTERM → server.drain()) and replaced by v2-a, and v1-b is killed (SIGKILL) and replaced
 * by v2-b. Real processes, loopback only; the script stops everything it started, also when it fails.
 */

interface Check { name: string, ok: boolean, gate: boolean, detail: string }
interface Counts { drain: number, kill: number, outside: number }
interface Step {
  kind: 'drain' | 'kill'
  backend: string
  exitCode: number | null
  plainCloses: number
  ferryCloses: number
  ferryResets: number
  plain: { lost: number, duplicated: number, reordered: number, stateBreaks: number }
  handoffs: { moved: number, lost_moved: number, failed: number, client_gone: number }
  arrivalsWithState: number
  arrivalsLost: number
  drain?: { handedOff: number, closed: number, ms: number }
  latencyBackendMs: { n: number, p50: number, p99: number }
}
interface Run {
  steps: Step[]
  closes: { plain: Counts, ferry: Counts }
  messages: { plain: { sent: number, lost: Counts, duplicated: Counts, reordered: Counts, stateBreaks: Counts }, ferry: { sent: number, lost: Counts, duplicated: Counts, reordered: Counts, stateBreaks: Counts } }
  plain: { sessions: number, up: number, onV2: number, onV2StateIntact: number, gotFinalTopic: number }
  ferryClient: { sessions: number, open: number, resets: number }
}
interface Bench {
  run: (opts: Record<string, unknown>, log?: (s: string) => void) => Promise<{ runs: { handoff: Run }, checks: Check[], ok: boolean }>
}

const PLAIN = 200
const FERRY = 50

t.test(`backend rollout under ${PLAIN} plain + ${FERRY} ferry/client sessions: a drain disconnects and resets no client and loses, doubles or reorders nothing; a kill fails over`, { timeout: 60_000 }, async (t) => {
  const bench = await import(new URL('../native-bench/backend-rollout.mjs', import.meta.url).href) as Bench
  const workDir = mkdtempSync(join(tmpdir(), 'ferry-rollout-'))
  t.teardown(() => { rmSync(workDir, { recursive: true, force: true }) })
  const started = Date.now()
  // The run is bounded by timeoutMs (every wait inside it too); tap's timeout above is the backstop.
  const res = await bench.run({ plain: PLAIN, ferry: FERRY, steps: 'drain,kill', targets: 'handoff', stepEveryMs: 6000, baselineMs: 2000, settleMs: 1500, write: false, workDir, timeoutMs: 45_000 }, (s) => { t.comment(s) })
  const r = res.runs.handoff
  const [drain, kill] = r.steps
  t.comment(`whole test ${((Date.now() - started) / 1000).toFixed(1)} s; drain: ${JSON.stringify(drain!.drain)}, handoff latency p50 ${drain!.latencyBackendMs.p50} ms p99 ${drain!.latencyBackendMs.p99} ms`)

  t.equal(r.plain.sessions, PLAIN, `${PLAIN} plain WebSocket sessions took part`)
  t.equal(r.ferryClient.sessions, FERRY, `${FERRY} ferry/client sessions took part`)
  t.same(r.steps.map((s) => s.kind), ['drain', 'kill'], 'one drain, then one kill')
  t.equal(drain!.exitCode, 0, 'the drained backend exited 0')
  t.ok(r.messages.plain.sent > PLAIN * 5, `messages were checked (${r.messages.plain.sent} plain messages, bound > ${PLAIN * 5})`)

  // The drain: every plain session moved with its client connected, nothing lost, doubled or reordered.
  t.equal(r.closes.plain.drain, 0, 'no plain client WebSocket was closed by the drain')
  t.equal(r.messages.plain.lost.drain, 0, 'no plain message was lost in the drain')
  t.equal(r.messages.plain.duplicated.drain, 0, 'none was duplicated')
  t.equal(r.messages.plain.reordered.drain, 0, 'none was reordered')
  t.equal(r.messages.plain.stateBreaks.drain, 0, 'every moved session kept its state (echo counter = message number)')
  t.equal(drain!.plainCloses, 0, 'the drain step closed no plain session')
  t.ok(drain!.handoffs.moved > 0 && drain!.handoffs.failed === 0, `the gateways moved ${drain!.handoffs.moved} sessions (ferry_mux_handoffs_total moved > 0), failed none`)
  t.equal(drain!.drain!.handedOff, drain!.handoffs.moved, `drain() handed over as many sessions as the gateways moved (${drain!.drain!.handedOff})`)
  t.ok(drain!.arrivalsWithState > 0, `${drain!.arrivalsWithState} sessions arrived on other backends with their state (bound > 0)`)
  // ferry/client sessions move with their resume state: no close, no reset, nothing lost.
  t.equal(drain!.ferryCloses, 0, 'no ferry/client WebSocket was closed by the drain')
  t.equal(drain!.ferryResets, 0, 'no ferry/client session was reset by the drain')
  t.equal(drain!.drain!.closed, 0, 'drain() closed no session')
  t.equal(r.messages.ferry.lost.drain + r.messages.ferry.duplicated.drain + r.messages.ferry.reordered.drain, 0, 'no ferry/client message was lost, duplicated or reordered in the drain')

  // The kill: no plain client closed either (crash failover), the state of its sessions is gone.
  t.equal(kill!.plainCloses, 0, 'no plain client WebSocket was closed by the kill (its sessions reopened elsewhere)')
  t.ok(kill!.handoffs.lost_moved > 0 && kill!.arrivalsLost === kill!.handoffs.lost_moved, `${kill!.handoffs.lost_moved} sessions reopened with handoff.lost (as many arrivals: ${kill!.arrivalsLost})`)

  t.equal(r.plain.up, PLAIN, 'every plain session is open at the end')
  t.equal(r.plain.onV2, PLAIN, 'and on a v2 backend')
  t.equal(r.plain.gotFinalTopic, PLAIN, 'every plain session still receives its room\'s topic messages (subscriptions moved)')
  t.equal(r.ferryClient.open, FERRY, 'every ferry/client session is open again at the end')

  // The script's own verdict (what makes `node native-bench/backend-rollout.mjs` exit 1) agrees.
  t.ok(res.ok, 'the script\'s verdict is ok')
  for (const c of res.checks.filter((x) => x.gate)) t.ok(c.ok, `script check: ${c.name} (${c.detail})`)
})
