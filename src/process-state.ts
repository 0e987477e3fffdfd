import type { Logger } from 'pino'

/** The life of a serving process: a Gateway (one process, or one worker of a pod) or a Pod's control plane. */
export type GatewayState = 'created' | 'starting' | 'running' | 'draining' | 'stopping' | 'stopped'

/**
 * The state of a Gateway or a Pod and the rules both follow on it: the one place either's state moves
 * (logged as `gateway running`, `pod draining`), what start, reload, drain and the health probes may
 * do in each state. The owner does the work; this says whether it may.
 */
export class ProcessState {
  private current: GatewayState = 'created'

  constructor (private readonly log: Logger, private readonly what: 'gateway' | 'pod') {}

  get value (): GatewayState {
    return this.current
  }

  to (next: GatewayState): void {
    this.log.info({ from: this.current, to: next }, `${this.what} ${next}`)
    this.current = next
  }

  /** start(): created → starting; a second start() is a programming error. */
  begin (): void {
    if (this.current !== 'created') throw new Error(`start() in state ${this.current}`)
    this.to('starting')
  }

  /** A reload is refused with this problem unless the process runs. */
  get reloadRefusal (): string | undefined {
    return this.current === 'running' ? undefined : `(gateway): cannot reload while ${this.current}`
  }

  /** A drain asked now: waits for start-up (`pending`), comes too late (`stopped`), or may go ahead (undefined). */
  get drainPhase (): 'pending' | 'stopped' | undefined {
    if (this.current === 'created' || this.current === 'starting') return 'pending'
    if (this.current === 'stopping' || this.current === 'stopped') return 'stopped'
    return undefined
  }

  /** Stopping or stopped: nothing new begins. */
  get ending (): boolean {
    return this.current === 'stopping' || this.current === 'stopped'
  }

  /** /healthz: the process is up (from start until it has stopped). */
  get live (): boolean {
    return this.current !== 'created' && this.current !== 'stopped'
  }

  /** /readyz: it takes new clients. */
  get ready (): boolean {
    return this.current === 'running'
  }
}
