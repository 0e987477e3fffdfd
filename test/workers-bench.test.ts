import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'

/**
 * The workers benchmark (native-bench/workers.mjs), run small: Ferry with gateway.workers 1 and 2 in
 * front of the reference nginx backend (HTTP keep-alive, wrk) and the uWS echo backend (WebSocket
 * passthrough, wsgen). What it pins is what the results table relies on: a 2-worker pod's CPU per
 * request counts the control plane and both workers, and both workers took traffic in every run.
 * Real processes on loopback; needs the benchmark's tools (scripts/setup.sh --bench).
 */

interface Proc { pid: number, cpuSeconds: number }
interface WorkerPart { index: number, pid: number, served: number, sessions: number, cpuSeconds: number }
interface Run { workload: string, target: string, requests: number, rate: number, errors: number, proxyCpuSeconds: number, usPerRequest: number, perProcess: Proc[], workers?: WorkerPart[], controlCpuSeconds?: number }
interface Check { name: string, ok: boolean, gate?: boolean, detail: string }
interface Bench {
  DEFAULTS: Record<string, unknown>
  run: (o: Record<string, unknown>) => Promise<{ runs: Run[], checks: Check[], ok: boolean, summary: Array<{ workload: string, target: string, ratios: Record<string, { rate: { median: number }, usPerRequest: { median: number } }> }> }>
}

const missing = ['nginx', 'wrk', 'gcc'].filter((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0)
const SESSIONS = 40

t.test('workers benchmark, small: Ferry ×2 is measured as its control plane plus both workers, and both take traffic', {
  timeout: 180_000, skip: missing.length > 0 ? `needs ${missing.join(', ')} (scripts/setup.sh --bench)` : false,
}, async (t) => {
  const bench = await import(new URL('../native-bench/workers.mjs', import.meta.url).href) as Bench
  const workDir = mkdtempSync(join(tmpdir(), 'ferry-workers-bench-'))
  t.teardown(() => { rmSync(workDir, { recursive: true, force: true }) })
  const res = await bench.run({ ...bench.DEFAULTS, repeats: 1, seconds: 1, warmupSeconds: 1, workloads: 'ka,ws', targets: 'ferry1,ferry2', wsSessions: SESSIONS, write: false, workDir })

  for (const c of res.checks) if (c.gate !== false) t.ok(c.ok, `script check: ${c.name} (${c.detail})`)
  t.ok(res.ok, 'the script\'s verdict: ok')
  for (const w of ['ka', 'ws']) {
    const one = res.runs.find((r) => r.workload === w && r.target === 'ferry1')!
    const two = res.runs.find((r) => r.workload === w && r.target === 'ferry2')!
    t.equal(one.perProcess.length, 1, `${w}, workers: 1: one process measured`)
    t.equal(two.workers?.length, 2, `${w}, workers: 2: two workers in /status`)
    const pids = two.perProcess.map((p) => p.pid)
    t.equal(pids.length, 3, `${w}, workers: 2: CPU read for three processes (${pids.join(', ')})`)
    t.ok(two.workers!.every((x) => pids.includes(x.pid)), 'both workers among them')
    const sum = two.perProcess.reduce((a, p) => a + p.cpuSeconds, 0)
    t.ok(Math.abs(sum - two.proxyCpuSeconds) < 1e-6, `the pod's CPU is their sum (${two.proxyCpuSeconds.toFixed(2)} s, control plane ${two.controlCpuSeconds!.toFixed(2)} s)`)
    t.ok(two.workers!.every((x) => x.cpuSeconds > 0), `both workers used CPU in the window (${two.workers!.map((x) => x.cpuSeconds.toFixed(2)).join(' + ')} s)`)
    for (const r of [one, two]) {
      t.ok(r.requests > 0 && r.errors === 0, `${w} ${r.target}: ${r.requests} ${w === 'ka' ? 'requests' : 'round trips'}, no errors`)
      t.ok(Number.isFinite(r.usPerRequest) && r.usPerRequest > 0, `${w} ${r.target}: ${r.usPerRequest.toFixed(1)} µs of proxy CPU per request`)
    }
    if (w === 'ka') {
      const served = two.workers!.map((x) => x.served)
      t.ok(served.every((n) => n > 0), `keep-alive: both workers served requests (${served.join(' + ')})`)
      // wrk counts what completed in its window; Ferry also what wrk abandoned when it stopped.
      const total = served[0]! + served[1]!
      t.ok(total >= two.requests && total <= two.requests + 100, `their /status counts (${total}) are wrk's requests (${two.requests}) plus at most its 50 abandoned at the end`)
    } else {
      const sessions = two.workers!.map((x) => x.sessions)
      t.equal(sessions[0]! + sessions[1]!, SESSIONS, `WebSocket: the ${SESSIONS} sessions are on the two workers (${sessions.join(' + ')})`)
      t.ok(sessions.every((n) => n > 0), 'both hold some')
    }
    const s = res.summary.find((x) => x.workload === w && x.target === 'ferry2')!
    const scale = s.ratios.ferry1!
    t.ok(Number.isFinite(scale.rate.median) && Number.isFinite(scale.usPerRequest.median), `${w}: the scaling ratios are computed (rate ${scale.rate.median.toFixed(2)}, CPU per request ${scale.usPerRequest.median.toFixed(2)})`)
  }
})
