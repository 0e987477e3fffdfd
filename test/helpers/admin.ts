import { request, type ClientRequest, type IncomingMessage } from 'node:http'
import type { FerryProcess } from './ferry.js'

/** A request to the admin listener on its own connection: status and body. */
export async function adminRequest (f: FerryProcess, path: string, opts: { method?: string, token?: string, headers?: Record<string, string> } = {}): Promise<{ status: number, headers: IncomingMessage['headers'], body: string }> {
  const headers: Record<string, string> = { ...opts.headers }
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: f.adminPort, path, method: opts.method ?? 'GET', headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, body }) })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

export interface SseEvent { event: string, id: number, data: any }

/** A Server-Sent Events client of /events that records every event and whether the stream ended. */
export interface SseClient {
  readonly status: number
  readonly events: SseEvent[]
  /** Resolves with the first event (from now on, or already received) that `pred` accepts. */
  waitFor: (pred: (e: SseEvent) => boolean, what: string, timeoutMs?: number) => Promise<SseEvent>
  readonly ended: Promise<void>
  close: () => void
}

export async function sseClient (f: FerryProcess, token: string | undefined): Promise<SseClient> {
  const events: SseEvent[] = []
  const waiters = new Set<() => void>()
  let req: ClientRequest
  let endedResolve!: () => void
  const ended = new Promise<void>((resolve) => { endedResolve = resolve })
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    req = request({ host: '127.0.0.1', port: f.adminPort, path: '/events', headers: token === undefined ? {} : { authorization: `Bearer ${token}` }, agent: false }, resolve)
    req.on('error', reject)
    req.end()
  })
  let buf = ''
  res.setEncoding('utf8')
  res.on('data', (d: string) => {
    buf += d
    let i
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i)
      buf = buf.slice(i + 2)
      const e: SseEvent = { event: 'message', id: -1, data: undefined }
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) e.event = line.slice(7)
        else if (line.startsWith('id: ')) e.id = Number(line.slice(4))
        else if (line.startsWith('data: ')) e.data = JSON.parse(line.slice(6))
      }
      events.push(e)
    }
    for (const w of [...waiters]) w()
  })
  res.on('close', () => { endedResolve(); for (const w of [...waiters]) w() })
  res.on('error', () => {})
  return {
    status: res.statusCode ?? 0,
    events,
    ended,
    close: () => { req.destroy() },
    waitFor: async (pred, what, timeoutMs = 15_000) => await new Promise<SseEvent>((resolve, reject) => {
      let from = 0
      const check = (): void => {
        for (; from < events.length; from++) {
          if (pred(events[from]!)) { cleanup(); resolve(events[from]!); return }
        }
      }
      const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)) }, timeoutMs)
      const cleanup = (): void => { clearTimeout(timer); waiters.delete(check) }
      waiters.add(check)
      check()
    }),
  }
}
