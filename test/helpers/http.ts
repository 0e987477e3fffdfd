import { request, type IncomingHttpHeaders } from 'node:http'
import type { FerryProcess } from './ferry.js'

export interface Reply {
  status: number
  headers: IncomingHttpHeaders
  body: string
  /** `error.code` when the body is a Ferry error document. */
  code?: string
  /** `error.requestId` when the body is a Ferry error document. */
  errorRequestId?: string
}

/** Parses a Ferry error body `{"error":{"code","message","requestId"}}`; empty object for anything else. */
export function ferryError (body: string): { code?: string, requestId?: string } {
  try {
    const e = (JSON.parse(body) as { error?: { code?: string, requestId?: string } }).error
    return e === undefined ? {} : { code: e.code, requestId: e.requestId }
  } catch {
    return {}
  }
}

/** One HTTP request to the front on its own connection (no agent: no keep-alive reuse across calls). */
export async function send (f: FerryProcess, path: string, opts: { method?: string, headers?: Record<string, string>, body?: string | Buffer } = {}): Promise<Reply> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: f.httpPort, path, method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => {
        const e = ferryError(body)
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, code: e.code, errorRequestId: e.requestId })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}
