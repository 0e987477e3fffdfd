import type { Logger } from 'pino'
import type { UpstreamConfig } from '../config/schema.js'
import type { Metrics } from '../observability/metrics.js'
import { DnsSource } from './dns.js'
import { RegistrySource } from './registry.js'
import { StaticSource, type EndpointSource } from './source.js'

export { StaticSource, type EndpointSource } from './source.js'

export interface SourceDeps {
  readonly log: Logger
  readonly metrics: Metrics
}

/** The endpoint source an upstream's config names (`endpoints`, `dns` or `registry`; the schema ensures exactly one). */
export function createEndpointSource (upstream: string, cfg: UpstreamConfig, deps: SourceDeps): EndpointSource {
  if (cfg.dns !== undefined) return new DnsSource(upstream, cfg.dns, deps.log, deps.metrics)
  if (cfg.registry !== undefined) return new RegistrySource(upstream, cfg.registry, deps.log, deps.metrics)
  return new StaticSource(cfg.endpoints ?? [])
}
