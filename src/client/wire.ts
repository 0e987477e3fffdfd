/**
 * The `ferry.v1` client wire: how `ferry/client` and the gateway talk over one WebSocket when a session is
 * resumable. Browser-safe (no Node imports): shared by the client library and the gateway.
 *
 * Handshake: the client offers the subprotocol `ferry.v1` (and, when resuming, `ferry.r.<token>.<received>.<sent>`,
 * plus any application subprotocols). A gateway that can resume the session on this route answers
 * `ferry.v1`; any other answer means a plain session (no envelopes, no resume).
 *
 * Every WebSocket message of a ferry.v1 session starts with one ASCII kind byte (so text stays text):
 *   'm' data:    the rest is one application message (text or binary, as the WebSocket message); numbered
 *                implicitly 1, 2, 3… per direction for the whole session (across reconnects)
 *   'p' topic:   the rest is one topic message (fan-out): not numbered, not acknowledged, not replayed
 *   'a' ack:     text; the rest is the decimal count of data messages received so far in this session
 *   'c' control: text; the rest is JSON, `{ "t": "welcome" | "token" | "migrate", … }`
 */

export const SUBPROTOCOL = 'ferry.v1'
/** Prefix of the resume offer: `ferry.r.<token>.<received>.<sent>`. */
export const RESUME_OFFER = 'ferry.r.'

export const Kind = {
  DATA: 0x6d, // 'm'
  TOPIC: 0x70, // 'p'
  ACK: 0x61, // 'a'
  CONTROL: 0x63, // 'c'
} as const

/** The first message of every ferry.v1 session, from the gateway. */
export interface Welcome {
  t: 'welcome'
  /** The token to resume this session with (opaque; replaces any earlier one). */
  token: string
  /** The session's id (stable across resumes). */
  session: string
  /** True when this connection continues the session named by the offered token. */
  resumed: boolean
  /** Why a resume was not possible (`expired`, `unknown`, `stale`, `invalid`, …); only when resumed is false and a token was offered. */
  reason?: string
  /** Data messages of the client the backend has received in this session: the client resends those after it. */
  received: number
  /** The application subprotocol selected ('' for none). */
  protocol: string
}

/** A fresh token (the gateway re-issues tokens before they expire). */
export interface TokenRefresh { t: 'token', token: string }

/** The gateway is going away (drain): reconnect, after `afterMs` if given, and resume. */
export interface Migrate { t: 'migrate', afterMs?: number }

export type Control = Welcome | TokenRefresh | Migrate

/** Close codes with a meaning for the client (besides RFC 6455's). */
export const CloseCode = {
  /** Service restart: reconnect and resume. */
  RESTART: 1012,
  /** Try again later (admission control): reconnect with backoff, honouring a retry hint. */
  TRY_AGAIN: 1013,
  /** The session was resumed by another connection: this one must not reconnect. */
  TAKEN_OVER: 4001,
} as const

/** Parses `ferry.r.<token>.<received>.<sent>`; undefined when malformed. Tokens are base64url (no dots). */
export function parseResumeOffer (p: string): { token: string, received: number, sent: number } | undefined {
  if (!p.startsWith(RESUME_OFFER)) return undefined
  const parts = p.slice(RESUME_OFFER.length).split('.')
  if (parts.length !== 3) return undefined
  const [token, r, s] = parts as [string, string, string]
  if (!/^[A-Za-z0-9_-]{16,512}$/.test(token) || !/^\d{1,15}$/.test(r) || !/^\d{1,15}$/.test(s)) return undefined
  return { token, received: Number(r), sent: Number(s) }
}

export function resumeOffer (token: string, received: number, sent: number): string {
  return `${RESUME_OFFER}${token}.${received}.${sent}`
}
