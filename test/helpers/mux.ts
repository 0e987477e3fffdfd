import { createServer, type Socket } from 'node:net'
import WebSocket from 'ws'
import { createMuxServer, type MuxServer, type MuxServerOptions, type Session } from '../../src/backend/index.js'
import { encodeFrame, FrameDecoder, FrameType, type Frame } from '../../src/mux/codec.js'
import type { Teardown } from './ferry.js'

/** A real ferry/backend server on 127.0.0.1:0, closed at teardown. */
export async function startMuxBackend (t: Teardown, onSession: (s: Session, server: MuxServer) => void, opts: MuxServerOptions = {}): Promise<MuxServer & { port: number }> {
  const server = createMuxServer({ host: '127.0.0.1', port: 0, ...opts })
  await server.listening
  server.on('session', (s) => { onSession(s, server) })
  t.teardown(async () => { await server.close() })
  return Object.assign(server, { port: server.address().port })
}

/** Config for one mux upstream `chat` at /chat, plus whatever else. */
export function muxConfig (endpoints: string[], upstream: Record<string, unknown> = {}, route: Record<string, unknown> = {}, top: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    upstreams: { chat: { protocol: 'mux', endpoints, ...upstream } },
    routes: [{ match: { path: '/chat' }, upstream: 'chat', ...route }],
    ...top,
  }
}

export interface Client {
  ws: WebSocket
  messages: Array<{ data: Buffer, binary: boolean }>
  closed: Promise<{ code: number, reason: string }>
  /** Resolves when `n` messages have arrived in all. */
  waitMessages: (n: number) => Promise<void>
}

/** A `ws` client that records every message; rejects if the upgrade fails. `headers`: sent with the handshake. */
export async function connect (url: string, protocols?: string[], headers?: Record<string, string>): Promise<Client> {
  const ws = new WebSocket(url, protocols, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024, headers })
  const messages: Client['messages'] = []
  let waiting: { n: number, resolve: () => void } | undefined
  ws.on('message', (data: Buffer, binary) => {
    messages.push({ data, binary })
    if (waiting !== undefined && messages.length >= waiting.n) { const w = waiting; waiting = undefined; w.resolve() }
  })
  const closed = new Promise<{ code: number, reason: string }>((resolve) => { ws.on('close', (code, reason) => { resolve({ code, reason: reason.toString() }) }) })
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => { reject(new Error(`upgrade answered ${res.statusCode}`)) })
  })
  ws.on('error', () => { /* recorded through close */ })
  return {
    ws,
    messages,
    closed,
    waitMessages: async (n) => {
      if (messages.length >= n) return
      await new Promise<void>((resolve) => { waiting = { n, resolve } })
    },
  }
}

/** A raw ferry.v1 connection (offering `offer`, a resume, when given): its first message must be the welcome. */
export async function rawFerry (url: string, offer?: string): Promise<{ client: Client, welcome: Record<string, any> }> {
  const client = await connect(url, offer === undefined ? ['ferry.v1'] : ['ferry.v1', offer])
  await client.waitMessages(1)
  const first = client.messages[0]!.data.toString()
  if (!first.startsWith('c')) throw new Error(`first message is not a control message: ${first.slice(0, 40)}`)
  return { client, welcome: JSON.parse(first.slice(1)) as Record<string, any> }
}

/** Opens `n` clients, at most `parallel` handshakes at a time. */
export async function connectMany (url: string, n: number, parallel = 200): Promise<Client[]> {
  const out: Client[] = new Array(n)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, async () => {
    while (next < n) {
      const i = next++
      out[i] = await connect(url)
    }
  }))
  return out
}

/** Status code of a failed upgrade (or 101). */
export async function upgradeStatus (url: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string, headers: Record<string, string | string[] | undefined> }> {
  return await new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers })
    ws.once('open', () => { ws.terminate(); resolve({ status: 101, body: '', headers: {} }) })
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body, headers: res.headers }) })
    })
    ws.once('error', (err) => { if (!/Unexpected server response/.test(err.message)) reject(err) })
  })
}

/**
 * A hand-driven mux backend for misbehaviour tests: answers HELLO and PING properly, and hands every
 * other frame and the socket to `onFrame`, so a test can send whatever bytes it wants.
 */
export async function startRawMuxBackend (t: Teardown, onFrame: (f: Frame, socket: Socket, meta: Record<string, unknown> | undefined) => void, hello: Record<string, unknown> = {}, opts: { answerPings?: boolean } = {}): Promise<{ port: number, accepted: () => number }> {
  let accepted = 0
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    accepted++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.write(encodeFrame(FrameType.HELLO, 0, 0, Buffer.from(JSON.stringify({ versions: [1], role: 'backend', id: 'evil', instance: `evil-${accepted}`, maxFrameBytes: 65536, initialWindow: 262144, ...hello }))))
    const dec = new FrameDecoder(16 * 1024 * 1024, (f) => {
      if (f.type === FrameType.PING) { if (opts.answerPings !== false) socket.write(encodeFrame(FrameType.PONG, 0, 0, f.payload)); return }
      if (f.type === FrameType.HELLO) return
      const meta = f.type === FrameType.OPEN ? JSON.parse(f.payload.toString()) as Record<string, unknown> : undefined
      onFrame({ ...f, payload: Buffer.from(f.payload) }, socket, meta)
    })
    socket.on('data', (c: Buffer) => { try { dec.push(c) } catch { socket.destroy() } })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return { port: (server.address() as { port: number }).port, accepted: () => accepted }
}
