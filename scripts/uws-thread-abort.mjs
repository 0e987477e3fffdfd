#!/usr/bin/env node
// Why Ferry's workers are processes, not threads (docs/workers.md): a worker thread that holds a
// uWebSockets.js listen socket takes the whole process down when it ends without closing it first
// (uv_loop_close() with an open handle: Node aborts, SIGABRT). Run: node scripts/uws-thread-abort.mjs throw|exit|terminate
import { createRequire } from 'node:module'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'

const require = createRequire(import.meta.url)
const how = isMainThread ? (process.argv[2] ?? 'throw') : workerData
if (!['throw', 'exit', 'terminate'].includes(how)) throw new Error('usage: uws-thread-abort.mjs throw|exit|terminate')

if (isMainThread) {
  const w = new Worker(new URL(import.meta.url), { workerData: how })
  w.on('error', (err) => { process.stdout.write(`main: the worker threw: ${err.message}\n`) })
  w.on('message', () => { process.stdout.write('main: terminating the hung worker\n'); void w.terminate() })
  w.on('exit', (code) => {
    process.stdout.write(`main: worker exited with ${code}\n`)
    // Reached only if the process survived the worker's end.
    setTimeout(() => { process.stdout.write('main: still alive\n'); process.exit(0) }, 300)
  })
} else {
  const uws = require('uWebSockets.js')
  uws.App().get('/*', (res) => res.end('ok')).listen('127.0.0.1', 0, (socket) => {
    if (!socket) throw new Error('cannot listen')
    if (how === 'throw') setTimeout(() => { throw new Error('a bug in a worker') }, 50)
    if (how === 'exit') setTimeout(() => process.exit(3), 50)
    if (how === 'terminate') { parentPort.postMessage('listening'); setTimeout(() => { for (;;); }, 50) }
  })
}
