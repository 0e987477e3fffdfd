import { createRequire } from 'node:module'
import { FerryError } from '../errors.js'
import type * as UWS from 'uWebSockets.js'

export type Uws = typeof UWS

const require = createRequire(import.meta.url)

/**
 * Loads uWebSockets.js and proves it is the native binary. The republished package silently falls back
 * to a JavaScript implementation (no backpressure, no real upgrade, no remote address) when the binary
 * does not load or UWS_USE_FALLBACK is set; Ferry refuses to run on that.
 */
export function loadNativeUws (): Uws {
  const binary = `uWebSockets.js/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`
  let native: Uws
  try {
    native = require(binary) as Uws
  } catch (err) {
    throw new FerryError('FERRY_ERR_UWS_FALLBACK',
      `the uWebSockets.js native binary ${binary} does not load on this machine (Node ${process.version}, ` +
      `${process.platform}/${process.arch}; it needs glibc 2.36+ and Node 16/18/20): ${(err as Error).message}`, { cause: err })
  }
  const loaded = loadPackage()
  assertNative(loaded, native)
  // uWS writes `uWebSockets: 20` into every response it sends (HTTP and 101) unless its loop is set
  // "silent"; `_cfg('silent')` does that for this thread's loop (uWebSockets.js addon.cpp, uWS_cfg).
  // A gateway does not advertise the server behind it.
  native._cfg('silent')
  return native
}

function loadPackage (): Uws {
  // The package prints its fallback warnings with console.*; keep them, they explain the refusal below.
  return require('uWebSockets.js') as Uws
}

/** Throws unless `loaded` (what `require('uWebSockets.js')` gave) is the native module itself. */
export function assertNative (loaded: unknown, native: unknown): void {
  if (loaded !== native) {
    const why = process.env.UWS_USE_FALLBACK !== undefined ? ' (UWS_USE_FALLBACK is set in the environment)' : ''
    throw new FerryError('FERRY_ERR_UWS_FALLBACK',
      `uWebSockets.js loaded its JavaScript fallback instead of the native binary${why}; Ferry refuses to run on it`)
  }
}

/**
 * uWS 20.30 closes the connection after the response when the request's first Connection value is 5
 * bytes long, whatever it says (`close`, but also `Close` or `other`), and writes no Connection header
 * for it: a response Ferry writes must then say `Connection: close` itself.
 */
export function uwsClosesAfter (connection: string): boolean {
  return connection.length === 5
}
