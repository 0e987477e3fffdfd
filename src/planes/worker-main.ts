/**
 * A data-plane worker process of a pod (forked by the control plane, src/planes/control.ts; loaded by
 * its entry, src/planes/worker.ts, once the signals are ignored). It runs one
 * Gateway without the admin listener, on the config the control plane sends (it reads no config file),
 * and answers over the cluster IPC channel: a heartbeat with its status every BEAT_MS, reloads, split
 * and endpoint changes, metrics for the pod's /metrics, drain and stop.
 */
import { deepFreeze, type Config } from '../config/load.js'
import { Gateway } from '../gateway.js'
import { createLogger, flushLogger, type Logger } from '../observability/logger.js'
import { PodAffinityStore } from './affinity.js'
import { PodBuckets } from './buckets.js'
import { PodIpCounts } from './ip-counts.js'
import { BEAT_MS, type FromWorker, type ToWorker, type WorkerStatus } from './messages.js'

let gateway: Gateway | undefined
let log: Logger | undefined
let affinity: PodAffinityStore | undefined
let buckets: PodBuckets | undefined
let ipCounts: PodIpCounts | undefined

function send (m: FromWorker): void {
  // The channel is gone once the control plane is: nothing to tell then (the disconnect handler exits).
  if (process.connected) process.send!(m)
}

function exit (code: number): never {
  if (log !== undefined) flushLogger(log)
  process.exit(code)
}

/** The heartbeat: this worker's status, every BEAT_MS and before each answer to a change. */
function beat (): void {
  if (gateway !== undefined) send({ t: 'beat', status: gateway.status() as WorkerStatus })
}

/**
 * Answers a change with a heartbeat first (the channel keeps their order): once the control plane has
 * every worker's answer, its /status shows the change, not the state of the beat before.
 */
function answer (id: number, body: unknown): void {
  beat()
  send({ t: 'answer', id, body })
}

async function start (config: Config, role: Extract<ToWorker, { t: 'start' }>['role']): Promise<void> {
  log = createLogger({ level: config.logging.level, pretty: config.logging.pretty, base: { gw: config.gateway.id, worker: role.index } })
  // affinity.store memory: the pod's one store, the control plane's (src/planes/affinity.ts).
  if (config.affinity.store === 'memory') affinity = new PodAffinityStore(config.affinity.ttlMs, (id, call) => { send({ t: 'affinity', id, call }) }, log.child({ component: 'affinity' }))
  // rateLimits with scope local: the pod's buckets, the control plane's (src/planes/buckets.ts).
  buckets = new PodBuckets((id, call) => { send({ t: 'bucket', id, call }) }, log.child({ component: 'rate-limits' }))
  // The per-IP figures (limits.*PerIp, listen.tcp[].maxConnectionsPerIp): the pod's, lent by the control plane (src/planes/ip-counts.ts).
  ipCounts = new PodIpCounts(role.count, (calls) => { send({ t: 'ip', calls }) }, log.child({ component: 'limits' }))
  let gw: Gateway
  try {
    // In the try: what the constructor refuses (a uWS fallback) is reported by its code as well.
    gw = new Gateway({ config, log, worker: role, store: affinity, buckets, ipCounts })
    gateway = gw
    const ports = await gw.start()
    send({ t: 'ready', ports })
  } catch (err) {
    const e = err as Error & { code?: string }
    send({ t: 'failed', code: e.code ?? 'FERRY_ERR_INTERNAL', message: e.message })
    log.error({ err }, 'worker start failed')
    exit(1)
  }
  beat()
  setInterval(beat, BEAT_MS)
  // Drained (or stopped): this worker's work is done.
  void gw.stopped.then(() => exit(0))
}

async function handle (m: ToWorker): Promise<void> {
  if (m.t === 'start') { await start(deepFreeze(m.config), m.role); return }
  if (m.t === 'affinity-answer') { affinity?.answer(m.id, m.body); return }
  if (m.t === 'bucket-answer') { buckets?.answer(m.id, m.body); return }
  if (m.t === 'ip') { ipCounts?.receive(m.batch); return }
  const gw = gateway
  if (gw === undefined) return
  switch (m.t) {
    case 'reload':
      gw.setBudget(m.budget)
      answer(m.id, await gw.reload(deepFreeze(m.config), m.version))
      return
    case 'budget':
      gw.setBudget(m.budget)
      return
    case 'split':
      answer(m.id, await gw.setSplitWeights(m.route, m.weights))
      return
    case 'endpoint':
      answer(m.id, gw.endpointAdmin(m.upstream, m.address, m.admin))
      return
    case 'metrics':
      send({ t: 'metrics', id: m.id, metrics: await gw.metrics.json() })
      return
    case 'totals':
      send({ t: 'answer', id: m.id, body: await gw.trafficTotals() })
      return
    case 'drain':
      gw.drain(m.reason)
      return
    case 'hurry':
      gw.hurryDrain()
      return
    case 'stop':
      await gw.stop('flush')
  }
}

process.on('message', (m: ToWorker) => {
  handle(m).catch((err: unknown) => {
    log?.fatal({ err, message: m.t }, 'worker failed to handle a control message')
    exit(70)
  })
})
// The control plane is gone (killed): nobody restarts, reloads or drains this worker any more.
process.on('disconnect', () => {
  log?.error('the control plane is gone; stopping')
  if (gateway === undefined) exit(1)
  const hard = setTimeout(() => exit(1), 5000)
  hard.unref()
  void gateway.stop('abort').finally(() => exit(1))
})
process.on('uncaughtException', (err) => {
  // A bug, not bad input: the control plane restarts this worker.
  log?.fatal({ err }, 'uncaught exception')
  exit(70)
})
// Listening now: the control plane sends `start` on this.
send({ t: 'hello' })
