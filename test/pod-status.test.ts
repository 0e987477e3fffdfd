import t from 'tap'
import { podUpstreams } from '../src/planes/pod-status.js'
import type { WorkerStatus } from '../src/planes/messages.js'

// How the control plane makes the pod's /status upstreams from its workers' heartbeats
// (src/planes/pod-status.ts): what is held is summed, an endpoint's state is the least advanced worker's,
// a drain is drained once every worker's is. test/workers.test.ts checks the same through a real pod.

function worker (upstreams: unknown[]): WorkerStatus {
  return { state: 'running', clients: { httpRequestsInFlight: 0, httpRequestsServed: 0, webSocketSessions: 0, tcpConnections: 0 }, drain: { phase: 'idle' }, upstreams }
}

const drain = (state: string, left: number, drainedAt: string | null): object => ({ state, cause: 'operator', startedAt: 't0', drainedAt, sessionsAtStart: 3, moved: 3 - left, sessionsLeft: left, open: left })

t.test('endpoint rows: counts summed, state the least advanced worker\'s, drains added up, a removed row and a new one at the same address kept apart', async (t) => {
  const a = { name: 'chat', protocol: 'ws', balance: 'round_robin', endpoints: [
    { address: 'h:1', state: 'draining', admin: 'drain', health: 'up', sessions: 2, handshaking: 1, closing: 0, drain: drain('draining', 2, null) },
    { address: 'h:2', state: 'active', admin: 'ready', health: 'up', sessions: 5, handshaking: 0, closing: 1 },
    { address: 'h:2', state: 'drained', admin: 'ready', health: 'up', sessions: 0, handshaking: 0, closing: 0, drain: drain('drained', 0, 't1') },
  ] }
  const b = { ...a, endpoints: [
    { address: 'h:1', state: 'drained', admin: 'drain', health: 'ejected', sessions: 0, handshaking: 0, closing: 0, drain: drain('drained', 0, 't2') },
    { address: 'h:2', state: 'active', admin: 'ready', health: 'up', sessions: 4, handshaking: 2, closing: 0 },
    { address: 'h:2', state: 'drained', admin: 'ready', health: 'up', sessions: 0, handshaking: 0, closing: 0, drain: drain('drained', 0, 't3') },
  ] }
  const http = { name: 'api', protocol: 'http', queued: 3, queueLimit: 1000, maxConnectionsPerEndpoint: 16, endpoints: [{ address: 'h:3', state: 'active', admin: 'ready', inflight: 1, held: 0, connected: 4 }] }
  const mux = { name: 'm', protocol: 'mux', endpoints: [{ address: 'h:4', state: 'active', admin: 'ready', streams: 7, links: [{ link: 0, state: 'ready' }] }] }
  const [chat, api, m] = podUpstreams([worker([a, http, mux]), worker([b, { ...http, queued: 2 }, { ...mux, endpoints: [{ ...mux.endpoints[0], streams: 1, links: [{ link: 0, state: 'connecting' }] }] }])]) as any[]

  t.match(chat.endpoints[0], { address: 'h:1', state: 'draining', sessions: 2, handshaking: 1, health: 'up', drain: { state: 'draining', drainedAt: null, sessionsAtStart: 6, moved: 4, sessionsLeft: 2, open: 2 } }, 'h:1 drained in one worker, draining in the other: draining, with both workers\' progress (health: the first worker\'s)')
  t.match(chat.endpoints[1], { address: 'h:2', state: 'active', sessions: 9, handshaking: 2, closing: 1 }, 'h:2 in the set: its sessions on both workers, 9')
  t.match(chat.endpoints[2], { address: 'h:2', state: 'drained', sessions: 0, drain: { state: 'drained', drainedAt: 't1', sessionsAtStart: 6 } }, 'the removed h:2 still finishing is its own row, drained in both: drained')
  t.equal(chat.endpoints.length, 3, 'no row lost or added')
  t.match(api, { queued: 5, queueLimit: 1000, maxConnectionsPerEndpoint: 16, endpoints: [{ inflight: 2, held: 0, connected: 8 }] }, 'http: queued requests and connections summed, configured figures as they are')
  t.match(m.endpoints[0], { streams: 8, links: [{ link: 0, state: 'ready' }, { link: 0, state: 'connecting' }] }, 'mux: streams summed, every worker\'s links listed')
  t.same(podUpstreams([]), [], 'no worker reporting yet: no upstreams')
})
