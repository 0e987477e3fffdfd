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
  const dest = pino.destination({ dest: 1, sync: false, minLength: 0 })
  // stdout's reader went away (EPIPE): drop logs rather than let a flush at exit retry forever,
  // which blocked the main thread (and the stop deadline with it).
  dest.on('error', () => {
    BROKEN.add(logger)
    try { dest.destroy() } catch { /* already closed */ }
  })
  const logger = pino({ level: opts.level, base: opts.base ?? null, timestamp: pino.stdTimeFunctions.isoTime }, dest)
  return logger
}

const BROKEN = new WeakSet<Logger>()

export function flushLogger (logger: Logger): void {
  if (BROKEN.has(logger)) return
  try { logger.flush() } catch { /* destination already closed */ }
}
