import { readFileSync } from 'node:fs'
import { FerryError } from '../errors.js'

/** Where a secret came from (for /status and logs; never the secret itself). */
export type SecretOrigin = 'config' | 'file' | 'env'

/**
 * A secret the config gives inline (`value`), in a file (`file`, a mounted Kubernetes Secret; surrounding
 * whitespace ignored) or in the environment variable `envName`, first found wins; undefined when none
 * does. Throws FERRY_ERR_CONFIG_INVALID naming `fileField` (or `envName`) for a file that cannot be read
 * or a secret shorter than `minLength` (an inline value is checked by the schema).
 */
export function readSecret (cfg: { value?: string | undefined, file?: string | undefined }, names: { fileField: string, envName: string, minLength: number, what: string }, env: NodeJS.ProcessEnv): { value: string, source: SecretOrigin } | undefined {
  if (cfg.value !== undefined) return { value: cfg.value, source: 'config' }
  let value: string
  let source: SecretOrigin
  if (cfg.file !== undefined) {
    try {
      value = readFileSync(cfg.file, 'utf8').trim()
    } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${names.fileField}: cannot read ${cfg.file}: ${(err as Error).message}`)
    }
    source = 'file'
  } else {
    const v = env[names.envName]
    if (v === undefined || v === '') return undefined
    value = v
    source = 'env'
  }
  if (value.length < names.minLength) throw new FerryError('FERRY_ERR_CONFIG_INVALID', `${source === 'file' ? names.fileField : names.envName}: the ${names.what} must be at least ${names.minLength} characters (got ${value.length})`)
  return { value, source }
}
