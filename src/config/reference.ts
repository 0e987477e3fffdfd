import { z } from 'zod'
import { ERRORS } from '../errors.js'
import { EMBEDDED_DEFAULTS, loadConfig } from './load.js'
import { configSchema } from './schema.js'

interface JsonSchema {
  type?: string | string[]
  description?: string
  default?: unknown
  enum?: unknown[]
  const?: unknown
  properties?: Record<string, JsonSchema>
  required?: string[]
  items?: JsonSchema
  additionalProperties?: JsonSchema | boolean
  anyOf?: JsonSchema[]
  oneOf?: JsonSchema[]
  minimum?: number
  maximum?: number
  exclusiveMinimum?: number
  minItems?: number
}

function typeOf (s: JsonSchema): string {
  if (s.const !== undefined) return JSON.stringify(s.const)
  const variants = s.anyOf ?? s.oneOf
  if (variants !== undefined && s.type === undefined) return [...new Set(variants.map(typeOf))].join(' \\| ')
  if (s.enum !== undefined) return s.enum.map((e) => JSON.stringify(e)).join(' \\| ')
  if (s.type === 'integer') {
    if (s.exclusiveMinimum === 0 || s.minimum === 1) return 'integer > 0'
    if (s.minimum === 0 && s.maximum === 65535) return 'port (0-65535)'
    if (s.minimum === 0) return 'integer ≥ 0'
    return 'integer'
  }
  if (s.type === 'array') return `list of ${s.items !== undefined ? typeOf(s.items) : 'values'}`
  if (s.type === 'object' && s.additionalProperties !== undefined && typeof s.additionalProperties === 'object') return `map of name → ${typeOf(s.additionalProperties)}`
  return Array.isArray(s.type) ? s.type.join(' \\| ') : (s.type ?? 'object')
}

function rows (s: JsonSchema, path: string, out: string[]): void {
  const variants = s.oneOf ?? s.anyOf
  // A union of objects (the upstream kinds): each variant's fields. A union of plain values (`auto` or a
  // number): one row, with the union's own default and description.
  if (variants !== undefined && variants.some((v) => v.properties !== undefined)) { for (const v of variants) rows(v, path, out); return }
  if (path !== '') {
    const required = s.default === undefined && !path.endsWith('?')
    const def = s.default !== undefined ? `\`${JSON.stringify(s.default)}\`` : required ? 'required' : '—'
    out.push(`| \`${path.replace(/\?$/, '')}\` | ${typeOf(s)} | ${def} | ${(s.description ?? '').replace(/\|/g, '\\|')} |`)
  }
  if (s.properties !== undefined) {
    for (const [k, v] of Object.entries(s.properties)) {
      const optional = !(s.required ?? []).includes(k) && v.default === undefined
      rows(v, `${path === '' ? '' : path + '.'}${k}${optional ? '?' : ''}`.replace(/\?\./g, '.'), out)
    }
  }
  if (s.type === 'object' && typeof s.additionalProperties === 'object') rows(s.additionalProperties, `${path}.<name>`, out)
  if (s.type === 'array' && s.items !== undefined && s.items.properties !== undefined) rows({ ...s.items, description: undefined, default: undefined, type: 'object', properties: s.items.properties }, `${path}[]`, out)
  // A list whose entries may also be objects (`endpoints: ["h:p", { address, labels }]`): the object's fields.
  const itemVariants = s.type === 'array' ? s.items?.anyOf ?? s.items?.oneOf : undefined
  for (const v of itemVariants ?? []) if (v.properties !== undefined) rows({ ...v, description: undefined, default: undefined, type: 'object' }, `${path.replace(/\?$/, '')}[]`, out)
}

/** docs/config.md, rendered from the schema: every option, its type, default and meaning. */
export function renderConfigReference (): string {
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema
  const out: string[] = []
  rows(schema, '', out)
  return `# Ferry configuration reference

Generated from the schema in \`src/config/schema.ts\` by \`ferry config-reference\`; a test fails when
this file and the schema disagree. Config is YAML (\`ferry start --config ferry.yaml\`); any field can be
overridden from the environment as \`FERRY__path__to__field=value\` (e.g. \`FERRY__listen__http__port=8081\`).
Unknown keys are errors. \`ferry check --config FILE\` lists every problem with its field path, the files and
secrets \`ferry start\` reads too (TLS certificates and keys, \`admin.tokenFile\`, \`resume.secretFile\`, the auth
policies' key files; \`FERRY_ADMIN_TOKEN\` and \`FERRY_RESUME_SECRET\` from its environment).

| field | type | default | meaning |
| --- | --- | --- | --- |
${out.filter((r) => !/^\| `[^`]*\[\]` \|/.test(r)).join('\n')}

${describeEmbeddedDefaults()}
`
}

/** The embedded-defaults paragraph, read from EMBEDDED_DEFAULTS itself so it cannot drift from what `ferry start` runs. */
export function describeEmbeddedDefaults (): string {
  const cfg = loadConfig(undefined, {})
  const code = (s: unknown): string => `\`${String(s)}\``
  const upstreams = Object.entries(EMBEDDED_DEFAULTS.upstreams ?? {}).map(([name, u]) => `${code(name)} (${u.protocol} at ${(u.endpoints ?? []).map(code).join(', ')})`)
  const routes = cfg.routes.map((r) => `${code(r.match.path)} → ${code(r.upstream)}`)
  const drain = Object.entries(EMBEDDED_DEFAULTS.drain ?? {}).map(([k, v]) => code(`${k}: ${String(v)}`))
  const { http, admin } = cfg.listen
  return `Embedded defaults (\`ferry start\` without a file; what \`make run\` runs): upstreams ${upstreams.join(' and ')}; ` +
    `routes ${routes.join(', ')}; HTTP front on ${code(`${http.host}:${http.port}`)}, admin on ${code(`${admin.host}:${admin.port}`)}; ` +
    `drain ${drain.join(', ')} (a local run has no load balancer to wait for); everything else as in the table.`
}

/** docs/errors.md, rendered from the error table. */
export function renderErrorReference (): string {
  const lines = Object.entries(ERRORS).map(([code, e]) => `| \`${code}\` | ${e.status === 0 ? '—' : e.status} | ${e.description} |`)
  return `# Ferry error codes

Every failure Ferry reports carries one of these stable codes: in the JSON body of an error response
(\`{"error":{"code":…}}\`), in logs (\`code\`), and as the \`code\` label of \`ferry_errors_total\`.
Generated by \`ferry errors-reference\` from \`src/errors.ts\`.

| code | HTTP status | meaning |
| --- | --- | --- |
${lines.join('\n')}
`
}
