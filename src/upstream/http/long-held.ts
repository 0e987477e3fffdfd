import type { LongHeldWhy } from './pool.js'

const EIO_POLLING = /(?:^|&)transport=polling(?:&|$)/

/**
 * Whether a request is long-held from its start (the upstream's pool.longHeld budget), and why: every
 * request of a route marked `longHeld`; Server-Sent Events (`Accept: text/event-stream`); an Engine.IO
 * (Socket.IO) long-polling GET, which the backend holds until it has something to say (its POSTs are
 * short). `headers` is the flat `[name, value, …]` list with lower-case names.
 */
export function longHeldWhy (routeLongHeld: boolean, method: string, target: string, headers: readonly string[]): LongHeldWhy | undefined {
  if (routeLongHeld) return 'route'
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i] === 'accept' && headers[i + 1]!.toLowerCase().includes('text/event-stream')) return 'sse'
  }
  if (method === 'GET') {
    const q = target.indexOf('?')
    if (q !== -1) {
      const query = target.slice(q + 1)
      if (EIO_POLLING.test(query) && /(?:^|&)EIO=\d/.test(query)) return 'polling'
    }
  }
  return undefined
}
