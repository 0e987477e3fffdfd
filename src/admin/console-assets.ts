import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/**
 * The console's files are plain HTML/CSS/JS (no build step) kept in src/admin/console/ and shipped in the
 * package as they are. This module is src/admin/*.ts under tsx and dist/admin/*.js when built: both are
 * two levels below the package root, so one relative path finds them from either.
 */
export const CONSOLE_DIR = fileURLToPath(new URL('../../src/admin/console/', import.meta.url))

export interface Asset {
  readonly type: string
  readonly body: Buffer
}

const FILES: Record<string, string> = {
  '/': 'index.html',
  '/console.js': 'console.js',
  '/console.css': 'console.css',
}

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
}

/** The console's files by URL path, read once; throws when one is missing (a broken package). */
export function loadConsoleAssets (dir = CONSOLE_DIR): Map<string, Asset> {
  const out = new Map<string, Asset>()
  for (const [path, file] of Object.entries(FILES)) {
    out.set(path, { type: TYPES[file.split('.').at(-1)!]!, body: readFileSync(`${dir}${file}`) })
  }
  return out
}
