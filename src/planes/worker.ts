/**
 * The entry of a pod's worker process (src/planes/worker-main.ts is the worker). Signals are the control
 * plane's to act on (a terminal's Ctrl-C reaches every process of the group): it drains the workers
 * itself. They are ignored from this first line, before the gateway's modules load (about a second on
 * a loaded machine): a Ctrl-C in that time would otherwise kill a starting worker and fail the pod's
 * start instead of draining it once started (docs/drain.md).
 */
process.on('SIGTERM', () => {})
process.on('SIGINT', () => {})
process.on('SIGHUP', () => {})
await import('./worker-main.js')
