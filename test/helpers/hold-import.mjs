/**
 * A preload for a Ferry process under test (`node --import this-file dist/cli.js ...`): in a process
 * whose entry script's name ends with FERRY_TEST_HOLD_ENTRY (`cli.js`, or `worker.js` for a pod's
 * workers, which are forked with the same flags and environment), it holds the first module the entry
 * imports until the file FERRY_TEST_HOLD_RELEASE exists, after writing the file FERRY_TEST_HOLD_MARKER-PID
 * (its content: that module's specifier). A test knows then, without timing, that
 * the process runs its entry's JS and has not loaded what it imports yet: the moment to send a signal.
 * Plain JavaScript: the process under test runs the built dist/, not TypeScript. Module hooks run on
 * their own thread (Node >= 20.6), so the entry's event loop runs while the import is held.
 */
import { existsSync, realpathSync, writeFileSync } from 'node:fs'
import { register } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import { isMainThread } from 'node:worker_threads'

/** On the hooks thread: what to hold (until it has been held once). */
let hold

export function initialize (data) {
  hold = data
}

export async function resolve (specifier, context, next) {
  if (hold !== undefined && context.parentURL === hold.entry) {
    const { marker, release } = hold
    hold = undefined
    writeFileSync(`${marker}-${process.pid}`, specifier)
    // Bounded: a test that never releases must not leave a process waiting forever.
    for (let i = 0; i < 3000 && !existsSync(release); i++) await sleep(20)
  }
  return next(specifier, context)
}

const { FERRY_TEST_HOLD_MARKER: marker, FERRY_TEST_HOLD_RELEASE: release, FERRY_TEST_HOLD_ENTRY: suffix } = process.env
const entry = process.argv[1] === undefined ? undefined : realpathSync(process.argv[1])
if (isMainThread && marker !== undefined && release !== undefined && suffix !== undefined && entry?.endsWith(suffix) === true) {
  register(import.meta.url, { data: { marker, release, entry: pathToFileURL(entry).href } })
}
