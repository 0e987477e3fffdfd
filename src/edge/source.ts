/**
 * Reads `header:NAME`, `cookie:NAME` or `query:NAME` from a request: the affinity key, an auth
 * credential, a rate-limit key. `rawHeaders` is uWS's flat `[name, value, …]` with lower-case names.
 * Returns the raw value ('' counts as absent); callers bound its length.
 */
export function readSource (spec: string, rawHeaders: readonly string[], query: string): string | undefined {
  const colon = spec.indexOf(':')
  const kind = spec.slice(0, colon)
  const name = spec.slice(colon + 1)
  let value: string | null | undefined
  if (kind === 'query') {
    value = query === '' ? undefined : new URLSearchParams(query).get(name)
  } else if (kind === 'header') {
    const header = name.toLowerCase()
    for (let i = 0; i < rawHeaders.length; i += 2) {
      if (rawHeaders[i] === header) { value = rawHeaders[i + 1]; break }
    }
  } else if (kind === 'cookie') {
    value = readCookie(rawHeaders, name)
  }
  return value === null || value === undefined || value === '' ? undefined : value
}

function readCookie (rawHeaders: readonly string[], name: string): string | undefined {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i] !== 'cookie') continue
    for (const part of rawHeaders[i + 1]!.split(';')) {
      const eq = part.indexOf('=')
      if (eq !== -1 && part.slice(0, eq).trim() === name) return decodeURIComponentSafe(part.slice(eq + 1).trim())
    }
  }
  return undefined
}

function decodeURIComponentSafe (s: string): string {
  try { return decodeURIComponent(s) } catch { return s }
}
