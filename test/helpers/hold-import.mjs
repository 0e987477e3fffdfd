/**
 * A preload for a Ferry process under test (`node --import this-file dist/cli.js ...`): it holds the first
 * module the entry script imports until the file FERRY_TEST_HOLD_RELEASE exists, after writing the file
 * FERRY_TEST_HOLD_MARKER (its content: that module's specifier). A test knows then, without timing, that
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
    writeFileSync(marker, specifier)
    // Bounded: a test that never releases must not leave a process waiting forever.
    for (let i = 0; i < 3000 && !existsSync(release); i++) await sleep(20)
  }
  return next(specifier, context)
}

const { FERRY_TEST_HOLD_MARKER: marker, FERRY_TEST_HOLD_RELEASE: release } = process.env
if (isMainThread && marker !== undefined && release !== undefined) {
  // This process only: a pod's workers (forked with the same flags and environment) are not held.
  delete process.env.FERRY_TEST_HOLD_MARKER
  delete process.env.FERRY_TEST_HOLD_RELEASE
  register(import.meta.url, { data: { marker, release, entry: pathToFileURL(realpathSync(process.argv[1])).href } })
}
