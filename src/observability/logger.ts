import pino, { type Logger } from 'pino'

export type { Logger }

export interface LoggerOptions {
  level: string
  pretty: boolean
  /** Extra fields on every line (gateway id). */
  base?: Record<string, unknown>
}

/**
 * JSON lines on stdout (pino). Writes are asynchronous with a small buffer so access logging stays off
 * the request path's critical cost; `flushLogger` is called on shutdown.
 */
export function createLogger (opts: LoggerOptions): Logger {
  if (opts.pretty) {
    return pino({ level: opts.level, base: opts.base ?? null, transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } })
  }
  return pino({ level: opts.level, base: opts.base ?? null, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: 1, sync: false, minLength: 0 }))
}

export function flushLogger (logger: Logger): void {
  try { logger.flush() } catch { /* destination already closed */ }
}
