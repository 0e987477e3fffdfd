import type { Writable } from 'node:stream'

/**
 * Sockets corked since the loop's last check phase. A poll phase hands JavaScript one callback per
 * incoming message (uWS, a mux frame batch, ...), and each callback may write to a socket at once; a
 * socket corked on its first write of the turn and uncorked at the check phase sends the turn's writes
 * in one writev instead of one syscall each, and in the same loop turn, so no latency is added. One
 * setImmediate serves every socket.
 *
 * A plain array, swapped with a spare one at each check phase, not a Set: a Set emptied every turn
 * re-grew its table (a rehash, and fresh pages) on every turn's first writes, and copying it out for
 * the loop allocated an array per turn (both showed in the WebSocket passthrough profile). Whether a
 * socket is in the list is read from its own cork count: a socket is only corked here, or inside a
 * synchronous cork()/uncork() pair of the code that writes to it, which never calls in here.
 */
let corked: Writable[] = []
let spare: Writable[] = []

function uncorkAll (): void {
  // Swapped first: a write made while uncorking corks its socket again for the next check phase.
  const list = corked
  corked = spare
  for (let i = 0; i < list.length; i++) list[i]!.uncork() // a no-op on an ended or destroyed stream
  list.length = 0
  spare = list
}

/** Corks `s` until this loop turn's check phase, unless it already is; call before each write. */
export function corkUntilCheck (s: Writable): void {
  if (s.writableCorked > 0) return
  corked.push(s)
  s.cork()
  if (corked.length === 1) setImmediate(uncorkAll)
}

/** Sends what `s` holds corked now (before end() or destroy(), which should not wait for the check phase). */
export function uncorkNow (s: Writable): void {
  const i = corked.indexOf(s)
  if (i < 0) return
  corked.splice(i, 1)
  s.uncork()
}
