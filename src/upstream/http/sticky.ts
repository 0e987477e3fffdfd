import { randomBytes } from 'node:crypto'
import type { ClientRequest } from '../../contracts/http.js'
import { readAffinityKey } from '../../contracts/ws.js'
import type { Route } from '../../routing/router.js'

/** A request's sticky key (route `affinity`), and the Set-Cookie its response carries when Ferry issued the key. */
export interface StickyKey {
  readonly key: string
  readonly setCookie: string | undefined
}

/**
 * The affinity key of a request on a route with `affinity` (read like a WebSocket handshake's, from the
 * headers as they go upstream and the canonical query), or, when it has none and the route sets a
 * cookie, a new random key with the cookie that carries it. Undefined: no key (balanced normally).
 */
export function stickyKey (route: Route, req: ClientRequest, headers: readonly string[]): StickyKey | undefined {
  if (route.affinityKey === undefined) return undefined
  const q = req.target.indexOf('?')
  const key = readAffinityKey(route.affinityKey, headers, q === -1 ? '' : req.target.slice(q + 1))
  if (key !== undefined) return { key, setCookie: undefined }
  const name = route.affinityCookie
  if (name === undefined) return undefined
  // 128 random bits: a key cannot be guessed to land in someone else's session.
  const issued = randomBytes(16).toString('base64url')
  return { key: issued, setCookie: `${name}=${issued}; Path=/; HttpOnly; SameSite=Lax${req.secure ? '; Secure' : ''}` }
}

/**
 * The value a backend response gives the route's affinity cookie (`cookie:NAME`) in its Set-Cookie, if
 * it sets one: the backend's own session cookie (Socket.IO's `cookie` option), learned so that the
 * requests presenting it come back to this endpoint. Undefined for other keys, other cookies, or a value
 * that could not be a key (empty, over 256 characters).
 */
export function learnedKey (spec: string, setCookie: string | string[] | undefined): string | undefined {
  if (setCookie === undefined || !spec.startsWith('cookie:')) return undefined
  const name = spec.slice('cookie:'.length)
  for (const line of typeof setCookie === 'string' ? [setCookie] : setCookie) {
    const eq = line.indexOf('=')
    if (eq === -1 || line.slice(0, eq).trim() !== name) continue
    const end = line.indexOf(';', eq)
    const raw = line.slice(eq + 1, end === -1 ? undefined : end).trim()
    let v = raw
    try { v = decodeURIComponent(raw) } catch { /* kept as sent, as the request side reads it */ }
    return v === '' || v.length > 256 ? undefined : v
  }
  return undefined
}
