import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { parse as parseYaml, YAMLParseError } from 'yaml'
import type { z } from 'zod'
import { FerryError } from '../errors.js'
import { configSchema, ENDPOINT_RE, upstreamSchema, type ConfigInput, type ParsedConfig } from './schema.js'

/** A validated endpoint address. */
export interface Endpoint {
  readonly host: string
  readonly port: number
  /** `host:port` as written in the config (brackets kept for IPv6): the name in logs, metrics and /status. */
  readonly address: string
  readonly origin: string
}

/** The validated, defaulted and frozen configuration every module receives. */
export type Config = Readonly<ParsedConfig & { gateway: { id: string } }>

/**
 * What `ferry start` runs with no config file: the bundled demo backend on 127.0.0.1:3000 and the
 * chat example (examples/chat/backend.mjs, ferry/backend) on 127.0.0.1:7000, behind :8080.
 */
export const EMBEDDED_DEFAULTS: ConfigInput = {
  upstreams: {
    demo: { protocol: 'http', endpoints: ['127.0.0.1:3000'] },
    chat: { protocol: 'mux', endpoints: ['127.0.0.1:7000'] },
  },
  routes: [{ match: { path: '/' }, upstream: 'demo' }, { match: { path: '/chat' }, upstream: 'chat' }],
  // Local: no load balancer to wait for, so Ctrl-C drains in about 2 s.
  drain: { acceptGraceMs: 0, spreadMs: 2000, deadlineMs: 10000 },
}

export class ConfigError extends FerryError {
  constructor (readonly problems: string[], source: string) {
    super('FERRY_ERR_CONFIG_INVALID', `${source}: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n  ${problems.join('\n  ')}`)
  }
}

/** An endpoint string (`host:port`, `[v6]:port`, optionally after a scheme: TLS is the upstream's, not the address's). */
export function parseEndpoint (s: string): Endpoint {
  const m = ENDPOINT_RE.exec(s)
  if (m === null) throw new FerryError('FERRY_ERR_CONFIG_INVALID', `bad endpoint ${s}`)
  const host = m[2]!
  const port = Number(m[3])
  const address = `${host}:${port}`
  return { host: host.replace(/^\[|\]$/g, ''), port, address, origin: `http://${address}` }
}

function formatPath (path: readonly PropertyKey[]): string {
  let out = ''
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`
    // A key that is empty, blank or odd is quoted, so the problem line still shows where it is.
    else if (!/^[A-Za-z0-9_$-]+$/.test(String(seg))) out += `[${JSON.stringify(String(seg))}]`
    else out += (out === '' ? '' : '.') + String(seg)
  }
  return out === '' ? '(root)' : out
}

function describeValue (v: unknown): string {
  if (v === undefined) return 'nothing'
  let s: string | undefined
  try {
    s = JSON.stringify(v)
  } catch {
    return typeof v === 'object' ? 'a self-referencing value (YAML alias cycle?)' : String(v)
  }
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s
}

function valueAt (root: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = root
  for (const seg of path) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Record<PropertyKey, unknown>)[seg]
  }
  return v
}

const RENAMED: Record<string, string> = {
  maxConns: 'maxConnections', connections: 'maxConnections', timeout: 'timeouts', upstream: 'upstreams', route: 'routes',
  queueSize: 'queueLimit', lb: 'balance', loadBalancing: 'balance', trustForwardedFor: 'trustedProxies',
}

/** `"http", "tcp"`: the upstream kinds the schema knows, for the bad-protocol message. */
const PROTOCOLS = upstreamSchema.options.map((o) => JSON.stringify(o.shape.protocol.value)).join(', ')

/**
 * Every key an upstream of some protocol may have. Without a valid `protocol` no kind is chosen, so zod
 * checks no keys: one that no kind has is still reported (`protocl` is why `protocol` is missing).
 */
const UPSTREAM_KEYS = new Set(upstreamSchema.options.flatMap((o) => Object.keys(o.shape)))

function unknownKey (path: readonly PropertyKey[]): string {
  const key = String(path.at(-1))
  const hint = RENAMED[key] !== undefined ? ` (did you mean ${RENAMED[key]}?)` : ''
  return `${formatPath(path)}: unknown key${hint}`
}

/** Every problem, one line each: `field.path: what was expected (got value)`. */
export function formatIssues (issues: readonly z.core.$ZodIssue[], input: unknown): string[] {
  const out: string[] = []
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) out.push(unknownKey([...issue.path, key]))
      continue
    }
    // An upstream without a valid `protocol` (the discriminated union); other unions carry their own message.
    if (issue.code === 'invalid_union' && (issue.path.at(-1) === 'protocol' || (issue.path[0] === 'upstreams' && issue.path.length === 2))) {
      // a discriminated union without a valid discriminator
      const parent = issue.path.at(-1) === 'protocol' ? issue.path.slice(0, -1) : issue.path
      const got = valueAt(input, parent)
      const fields = got !== null && typeof got === 'object' && !Array.isArray(got) ? got as Record<string, unknown> : {}
      for (const key of Object.keys(fields)) if (!UPSTREAM_KEYS.has(key)) out.push(unknownKey([...parent, key]))
      out.push(`${formatPath([...parent, 'protocol'])}: must be one of ${PROTOCOLS} (got ${describeValue(fields.protocol)})`)
      continue
    }
    if (issue.code === 'invalid_union') {
      // `"host:port"` or `{ address, labels }`: when only one kind of entry fits the value's type, its own
      // problems say more than "must be one or the other".
      const fitting = issue.errors.filter((branch) => !branch.some((i) => i.code === 'invalid_type' && i.path.length === 0))
      if (fitting.length === 1) {
        out.push(...formatIssues(fitting[0]!.map((i) => ({ ...i, path: [...issue.path, ...i.path] })), input))
        continue
      }
    }
    if (issue.code === 'invalid_key') {
      // A map key (a label key, a policy name): what the key itself should look like.
      out.push(`${formatPath(issue.path)}: bad key: ${issue.issues[0]?.message ?? issue.message}`)
      continue
    }
    const got = valueAt(input, issue.path)
    out.push(`${formatPath(issue.path)}: ${issue.message} (got ${describeValue(got)})`)
  }
  return out
}

export function deepFreeze<T> (o: T): T {
  if (o !== null && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o)
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}

/** Validates a plain object (YAML already parsed, env applied). Throws ConfigError listing every problem. */
export function validateConfig (input: unknown, source = 'config'): Config {
  const res = configSchema.safeParse(input)
  if (!res.success) throw new ConfigError(formatIssues(res.error.issues, input), source)
  const cfg = res.data
  const id = cfg.gateway.id ?? hostname()
  return deepFreeze({ ...cfg, gateway: { ...cfg.gateway, id } })
}

/**
 * Environment overrides: `FERRY__listen__http__port=8081` sets `listen.http.port`. The value is read as a
 * YAML scalar (numbers, booleans), path segments keep their case.
 */
export function applyEnvOverrides (input: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out = structuredClone(input)
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('FERRY__') || raw === undefined) continue
    const path = name.slice('FERRY__'.length).split('__').filter(Boolean)
    if (path.length === 0) continue
    let node: Record<string, unknown> = out
    for (const seg of path.slice(0, -1)) {
      const next = node[seg]
      if (next === null || typeof next !== 'object') node[seg] = {}
      node = node[seg] as Record<string, unknown>
    }
    node[path.at(-1)!] = parseYaml(raw) as unknown
  }
  return out
}

/** Reads and validates a YAML config file (or the embedded defaults when `file` is undefined). */
export function loadConfig (file: string | undefined, env: NodeJS.ProcessEnv = process.env): Config {
  let input: unknown
  const source = file ?? 'embedded defaults'
  if (file === undefined) {
    input = structuredClone(EMBEDDED_DEFAULTS)
  } else {
    let text: string
    try {
      text = readFileSync(file, 'utf8')
    } catch (err) {
      throw new FerryError('FERRY_ERR_CONFIG_READ', `cannot read config ${file}: ${(err as Error).message}`, { cause: err })
    }
    try {
      input = parseYaml(text, { prettyErrors: true }) ?? {}
    } catch (err) {
      const msg = err instanceof YAMLParseError ? err.message : String(err)
      throw new FerryError('FERRY_ERR_CONFIG_READ', `${file}: not valid YAML: ${msg}`, { cause: err })
    }
  }
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError(['(root): must be a mapping of sections (gateway, listen, upstreams, routes, ...)'], source)
  }
  return validateConfig(applyEnvOverrides(input as Record<string, unknown>, env), source)
}
