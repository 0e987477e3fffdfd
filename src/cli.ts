#!/usr/bin/env node
import { parseArgs } from 'node:util'
import { loadConfig } from './config/load.js'
import { renderConfigReference, renderErrorReference } from './config/reference.js'
import { isFerryError } from './errors.js'
import { Gateway } from './gateway.js'
import { createLogger, flushLogger } from './observability/logger.js'
import { VERSION } from './version.js'

const USAGE = `ferry ${VERSION}: connection-offloading gateway

usage:
  ferry start [--config FILE]      run the gateway (no file: embedded defaults, demo backend on 127.0.0.1:3000)
  ferry check --config FILE        validate a config; exit 1 listing every problem by field path
  ferry config-reference           print the config reference (docs/config.md) generated from the schema
  ferry errors-reference           print the error code reference (docs/errors.md)
  ferry version

environment:
  FERRY_CONFIG=FILE                config file when --config is not given
  FERRY__a__b=value                override config field a.b (value read as YAML), e.g. FERRY__listen__http__port=8081
`

function fail (msg: string, code = 1): never {
  process.stderr.write(msg.endsWith('\n') ? msg : `${msg}\n`)
  process.exit(code)
}

async function start (file: string | undefined): Promise<void> {
  const config = loadConfig(file)
  const log = createLogger({ level: config.logging.level, pretty: config.logging.pretty, base: { gw: config.gateway.id } })
  const gateway = new Gateway({ config, log })
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    log.info({ signal }, 'stopping')
    const deadline = setTimeout(() => { log.warn('stop deadline reached, exiting'); flushLogger(log); process.exit(0) }, 15000)
    deadline.unref()
    gateway.stop('flush').then(() => { flushLogger(log); process.exit(0) }, (err: unknown) => {
      log.error({ err }, 'stop failed'); flushLogger(log); process.exit(1)
    })
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('uncaughtException', (err) => {
    // A bug, not bad input (bad input is handled where it arrives): log it and let the supervisor restart us.
    log.fatal({ err }, 'uncaught exception')
    flushLogger(log)
    process.exit(70)
  })
  try {
    await gateway.start()
  } catch (err) {
    flushLogger(log)
    throw err
  }
}

async function main (argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv
  const { values } = parseArgs({ args: rest, options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: false, strict: true })
  if (values.help === true) { process.stdout.write(USAGE); return }
  const file = values.config ?? process.env.FERRY_CONFIG
  switch (cmd) {
    case 'start':
      await start(file)
      return
    case 'check': {
      if (file === undefined) fail('ferry check: --config FILE is required')
      const cfg = loadConfig(file)
      process.stdout.write(`${file}: ok (${Object.keys(cfg.upstreams).length} upstreams, ${cfg.routes.length} routes)\n`)
      return
    }
    case 'config-reference':
      process.stdout.write(renderConfigReference())
      return
    case 'errors-reference':
      process.stdout.write(renderErrorReference())
      return
    case 'version': case '--version':
      process.stdout.write(`${VERSION}\n`)
      return
    case undefined: case 'help': case '--help': case '-h':
      process.stdout.write(USAGE)
      return
    default:
      fail(`ferry: unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`, 2)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (isFerryError(err)) fail(`ferry: ${err.code}: ${err.message}`)
  if ((err as { code?: string })?.code?.startsWith('ERR_PARSE_ARGS') === true) fail(`ferry: ${(err as Error).message}\n\n${USAGE}`, 2)
  fail(`ferry: ${(err as Error)?.stack ?? String(err)}`)
})
