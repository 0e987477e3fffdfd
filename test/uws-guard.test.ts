import t from 'tap'
import { createRequire } from 'node:module'
import { assertNative, loadNativeUws } from '../src/front/uws.js'
import { httpConfig } from './helpers/backend.js'
import { runCli, writeConfig } from './helpers/ferry.js'

t.test('the native uWebSockets.js binary loads here', async (t) => {
  const uws = loadNativeUws()
  t.type(uws.App, 'function', 'App is exported')
  t.type(uws.us_socket_local_port, 'function', 'native-only helpers are present')
})

t.test('the JavaScript fallback is refused', async (t) => {
  const require = createRequire(import.meta.url)
  const fallback = require('uWebSockets.js/dist/index') as unknown
  const native = loadNativeUws()
  t.throws(() => assertNative(fallback, native), { code: 'FERRY_ERR_UWS_FALLBACK' }, 'a module that is not the native binary is rejected')
  t.doesNotThrow(() => assertNative(native, native), 'the native module passes')
})

t.test('ferry start exits 1 when uWebSockets.js falls back', async (t) => {
  const file = writeConfig(httpConfig(['127.0.0.1:1'], {}, { listen: { http: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 } } }))
  const r = await runCli(['start', '--config', file], { UWS_USE_FALLBACK: '1' })
  t.equal(r.code, 1, 'exit code 1')
  t.match(r.stderr, 'FERRY_ERR_UWS_FALLBACK', 'stderr names the error code')
  t.match(r.stderr, 'UWS_USE_FALLBACK', 'stderr says why')
  t.notMatch(r.stdout, 'listening', 'never listened')
})
