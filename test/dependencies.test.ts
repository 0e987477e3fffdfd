import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ROOT } from './helpers/ferry.js'

/** Runtime dependencies nothing in src/ imports because another dependency loads them. */
const LOADED_BY_ANOTHER: Record<string, string> = {
  bufferutil: 'ws loads it for native frame masking when it is installed',
  'pino-pretty': 'pino loads it by name as the transport of logging.pretty (what make run uses)',
}

function sources (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? sources(join(dir, e.name)) : /\.(ts|js|mjs)$/.test(e.name) ? [join(dir, e.name)] : [])
}

t.test('every runtime dependency in package.json is used: imported by src/, or loaded by another dependency', async (t) => {
  const deps = Object.keys((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies)
  const imported = new Set<string>()
  for (const file of sources(join(ROOT, 'src'))) {
    for (const m of readFileSync(file, 'utf8').matchAll(/(?:from\s+|import\(\s*|require\(\s*)'((?:@[^/']+\/)?[^/'.][^/']*)/g)) imported.add(m[1]!)
  }
  for (const dep of deps) {
    if (LOADED_BY_ANOTHER[dep] !== undefined) t.pass(`${dep}: ${LOADED_BY_ANOTHER[dep]}`)
    else t.ok(imported.has(dep), `${dep} is imported by src/ (a dependency nothing uses is dead weight in every install)`)
  }
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dependencies?: Record<string, string> }> }
  t.same(Object.keys(lock.packages['']?.dependencies ?? {}).sort(), [...deps].sort(), 'package-lock.json declares the same runtime dependencies')
})
