import { routeName } from '../routing/router.js'
import { ConfigError, validateConfig, type Config } from './load.js'
import { subsetName } from './schema.js'

/** What new weights for a route's split would make of `cfg`: the next config, or why not. */
export type SplitPlan =
  | { result: 'ok', route: string, index: number, weights: Record<string, number>, next: Config }
  | { result: 'refused', errors: string[] }
  | { result: 'not_found', errors: string[] }

/**
 * `PUT /routes/NAME/split`: new weights (`{ "v1": 50, "v2": 50 }`, every subset by name, summing to
 * 100) for the split of route `route` (its name as /status gives it; `*` is the root route `*​/`),
 * checked and applied to a copy of `cfg`, which is validated as a config file would be.
 */
export function planSplitChange (cfg: Config, route: string, weights: unknown): SplitPlan {
  // Every route name has a `/` (its path): a name without one is `HOST/`, so `*` is the root route `*/`.
  if (!route.includes('/')) route += '/'
  const i = cfg.routes.findIndex((r) => routeName(r) === route)
  const r = cfg.routes[i]
  if (r === undefined) return { result: 'not_found', errors: [`no route ${route} (routes: ${cfg.routes.map((x) => routeName(x)).join(', ') || 'none'})`] }
  if (r.split === undefined) return { result: 'not_found', errors: [`route ${route} has no split`] }
  const names = r.split.subsets.map((x) => subsetName(x))
  const errors: string[] = []
  if (weights === null || typeof weights !== 'object' || Array.isArray(weights)) {
    errors.push(`weights: must be an object of subset name → weight (subsets: ${names.join(', ')}) (got ${JSON.stringify(weights) ?? 'nothing'})`)
  } else {
    const w = weights as Record<string, unknown>
    for (const [k, v] of Object.entries(w)) {
      if (!names.includes(k)) errors.push(`weights.${k}: names no subset of route ${route} (subsets: ${names.join(', ')})`)
      else if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 100) errors.push(`weights.${k}: must be an integer of 0-100 (got ${JSON.stringify(v)})`)
    }
    const missing = names.filter((n) => !Object.hasOwn(w, n))
    if (missing.length > 0) errors.push(`weights: must give every subset (missing: ${missing.join(', ')})`)
    if (errors.length === 0) {
      const sum = names.reduce((n, k) => n + (w[k] as number), 0)
      if (sum !== 100) errors.push(`weights: must sum to 100 (got ${sum}: ${names.map((k) => `${k} ${String(w[k])}`).join(' + ')})`)
    }
  }
  if (errors.length > 0) return { result: 'refused', errors }
  const w = weights as Record<string, number>
  const input = structuredClone(cfg) as { routes: Array<{ split: { subsets: Array<{ weight: number }> } }> }
  names.forEach((n, j) => { input.routes[i]!.split.subsets[j]!.weight = w[n]! })
  try {
    return { result: 'ok', route, index: i, weights: w, next: validateConfig(input, `PUT /routes/${route}/split`) }
  } catch (err) {
    return { result: 'refused', errors: err instanceof ConfigError ? err.problems : [(err as Error).message] }
  }
}
