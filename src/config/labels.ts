/**
 * Endpoint labels (docs/canary.md): what a route's `split` selects on. Kept apart from the schema so
 * `ferry/backend` (which announces labels in the registry) checks them the same way without loading it.
 */

/** Labels of an endpoint or a subset: key → value. */
export type Labels = Readonly<Record<string, string>>

/** Kubernetes' syntax for a label key: a name of at most 63 characters, with an optional `dns-name/` prefix. */
export const LABEL_KEY_RE = /^(?:[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/
/** A label value: 1-63 letters, digits, `-_.`, starting and ending with a letter or digit. */
export const LABEL_VALUE_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/
/** Labels one endpoint (or one subset) may carry. */
export const MAX_LABELS = 16

export const NO_LABELS: Labels = Object.freeze({})

/** Every label of `want` is in `have` (an endpoint may carry more). */
export function labelsMatch (want: Labels, have: Labels | undefined): boolean {
  for (const k in want) if (have?.[k] !== want[k]) return false
  return true
}

/** `a=1,b=2`: labels in key order, for change detection, logs and messages. */
export function labelsText (labels: Labels): string {
  return Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(',')
}

/** Checks labels from outside the config (a registry entry, `register.labels`): undefined when malformed. */
export function checkLabels (labels: unknown): Labels | undefined {
  if (labels === undefined) return NO_LABELS
  if (labels === null || typeof labels !== 'object' || Array.isArray(labels)) return undefined
  const entries = Object.entries(labels as Record<string, unknown>)
  if (entries.length > MAX_LABELS) return undefined
  const out: Record<string, string> = {}
  for (const [k, v] of entries) {
    if (!LABEL_KEY_RE.test(k) || typeof v !== 'string' || !LABEL_VALUE_RE.test(v)) return undefined
    out[k] = v
  }
  return Object.freeze(out)
}
