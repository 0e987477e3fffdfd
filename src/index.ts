/** `ferry`: start a gateway programmatically. */
export { Gateway, type GatewayOptions, type GatewayState, type BoundPorts } from './gateway.js'
export { loadConfig, validateConfig, ConfigError, EMBEDDED_DEFAULTS, type Config } from './config/load.js'
export type { ConfigInput } from './config/schema.js'
export { FerryError, ERRORS, type FerryErrorCode } from './errors.js'
export { Metrics } from './observability/metrics.js'
export { createLogger } from './observability/logger.js'
export { loadNativeUws } from './front/uws.js'
export { VERSION } from './version.js'
