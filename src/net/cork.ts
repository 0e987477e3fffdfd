import type { Writable } from 'node:stream'

/**
 * Sockets corked since the loop's last check phase. A poll phase hands JavaScript one callback per
 * incoming message (uWS, a mux frame batch, ...), and each callback may write to a socket at once; a
 * socket corked on its first write of the turn and uncorked at the check phase sends the turn's writes
 * in one writev instead of one syscall each, and in the same loop turn, so no latency is added. One
 * setImmediate serves every socket.
 */
const corked = new Set<Writable>()

function uncorkAll (): void {
  // Emptied first: a write made while uncorking corks its socket again for the next check phase.
  const list = [...corked]
  corked.clear()
  for (const s of list) s.uncork() // a no-op on an ended or destroyed stream
}

/** Corks `s` until this loop turn's check phase, unless it already is; call before each write. */
export function corkUntilCheck (s: Writable): void {
  if (corked.has(s)) return
  corked.add(s)
  s.cork()
  if (corked.size === 1) setImmediate(uncorkAll)
}

/** Sends what `s` holds corked now (before end() or destroy(), which should not wait for the check phase). */
export function uncorkNow (s: Writable): void {
  if (corked.delete(s)) s.uncork()
}
