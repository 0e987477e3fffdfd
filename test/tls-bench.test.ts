import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'

/**
 * The TLS benchmark (native-bench/tls.mjs), run small so it cannot rot: Ferry and nginx terminating TLS
 * with the same throwaway certificate, full handshakes (wrk with lib/no-resume.c preloaded), WSS echo
 * (lib/wss-client.mjs), and two certificate rotations under open WSS sessions. What it pins is what the
 * results rely on: every handshake counted was a full one, the CPU per handshake and per message is
 * computed from the proxy's processes, and a rotation closes no session and loses no message while new
 * handshakes get the new certificate. Real processes on loopback; needs the benchmark's tools
 * (scripts/setup.sh --bench).
 */

interface Run { workload: string, target: string, requests: number, units: number, rate: number, errors: number, proxyCpuSeconds: number, usPerUnit: number, tls: string, handshakes?: { full: number, resumed: number } }
interface Check { name: string, ok: boolean, gate?: boolean, detail: string }
interface Rotation { sessions: number, closed: number, open: number, lost: number, bad: number, phases: Array<{ name: string, sent: number, received: number }>, steps: Array<{ how: string, sniFingerprint: string, applied: number, noSniGets: string }> }
interface Bench {
  DEFAULTS: Record<string, unknown>
  run: (o: Record<string, unknown>) => Promise<{ runs: Run[], checks: Check[], ok: boolean, certificate: { fingerprints: string[] }, rotation: Rotation, summary: Array<{ workload: string, target: string, ratios: Record<string, { rate: { median: number }, usPerUnit: { median: number } }> }> }>
}

const missing = [...['nginx', 'wrk', 'gcc', 'openssl'].filter((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0), ...existsSync('/usr/include/openssl/ssl.h') ? [] : ['libssl-dev']]
const SESSIONS = 40

t.test('TLS benchmark, small: full handshakes only, CPU per handshake and message, rotation under open sessions', {
  timeout: 120_000, skip: missing.length > 0 ? `needs ${missing.join(', ')} (scripts/setup.sh --bench)` : false,
}, async (t) => {
  const bench = await import(new URL('../native-bench/tls.mjs', import.meta.url).href) as Bench
  const workDir = mkdtempSync(join(tmpdir(), 'ferry-tls-bench-'))
  t.teardown(() => { rmSync(workDir, { recursive: true, force: true }) })
  const res = await bench.run({ ...bench.DEFAULTS, repeats: 1, seconds: 1, warmupSeconds: 0, workloads: 'hs,wss,rotate', targets: 'ferry,nginx', wssSessions: 10, rotateSessions: SESSIONS, rotateIntervalMs: 200, phaseSeconds: 1, write: false, workDir })

  for (const c of res.checks) if (c.gate !== false) t.ok(c.ok, `script check: ${c.name} (${c.detail})`)
  t.ok(res.ok, 'the script\'s verdict: ok')
  for (const target of ['ferry', 'nginx']) {
    const hs = res.runs.find((r) => r.workload === 'hs' && r.target === target)!
    t.ok(hs.requests > 0 && hs.errors === 0, `hs ${target}: ${hs.requests} requests, no errors`)
    t.equal(hs.handshakes!.resumed, 0, `hs ${target}: no handshake resumed`)
    t.ok(hs.handshakes!.full >= hs.requests, `hs ${target}: a full handshake per request at least (${hs.handshakes!.full} ≥ ${hs.requests})`)
    t.equal(hs.units, hs.handshakes!.full, `hs ${target}: CPU is divided by the handshakes`)
    t.match(hs.tls, /^TLSv1\.2 ECDHE-ECDSA-/, `hs ${target}: TLS 1.2 with the ECDSA certificate (${hs.tls})`)
    const wss = res.runs.find((r) => r.workload === 'wss' && r.target === target)!
    t.ok(wss.requests > 0 && wss.errors === 0, `wss ${target}: ${wss.requests} echoes, none lost, wrong or closed`)
    for (const r of [hs, wss]) t.ok(r.proxyCpuSeconds > 0 && Math.abs(r.usPerUnit - r.proxyCpuSeconds / r.units * 1e6) < 1e-6, `${r.workload} ${target}: ${r.usPerUnit.toFixed(1)} µs of proxy CPU per unit`)
  }
  const f = res.summary.find((s) => s.workload === 'hs' && s.target === 'ferry')!
  t.ok(Number.isFinite(f.ratios.nginx!.rate.median) && Number.isFinite(f.ratios.nginx!.usPerUnit.median), 'the ratios against nginx are computed')

  const rot = res.rotation
  t.equal(rot.closed, 0, 'rotation: no session closed')
  t.equal(rot.open, SESSIONS, 'rotation: every session still open at the end')
  t.equal(rot.lost + rot.bad, 0, 'rotation: no message lost or wrong')
  t.same(rot.phases.map((p) => p.name), ['before', 'watch', 'after-watch', 'reload', 'after-reload'], 'rotation: the five phases')
  t.ok(rot.phases.every((p) => p.sent > 0 && p.received === p.sent), `rotation: messages sent and echoed in every phase (${rot.phases.map((p) => p.sent).join(', ')})`)
  t.same(rot.steps.map((s) => [s.how, s.sniFingerprint]), [['watch', res.certificate.fingerprints[1]], ['reload', res.certificate.fingerprints[2]]], 'rotation: new handshakes got renewal 1 (file watch), then renewal 2 (POST /reload)')
  t.ok(rot.steps.every((s) => s.applied >= 1 && s.noSniGets === 'the start certificate'), 'each renewal counted as applied; without SNI the start certificate (docs/tls.md)')
})
