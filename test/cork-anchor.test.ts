import t from 'tap'
import { pino } from 'pino'
import { CorkAnchor } from '../src/front/cork-anchor.js'
import { loadNativeUws } from '../src/front/uws.js'
import { waitFor } from './helpers/ferry.js'

const quiet = pino({ level: 'silent' })

t.test('cork anchor: parks its request, runs functions in its cork, asks again when the request is lost, closes for good', async (t) => {
  const a = new CorkAnchor(loadNativeUws(), quiet)
  t.teardown(() => { a.close() })
  t.equal(a.state, 'idle', 'idle before start')
  let ran = 0
  a.run(() => { ran++ })
  t.equal(ran, 1, 'before start, run calls the function plainly')
  a.start()
  await waitFor('parked', () => a.state === 'parked')
  a.run(() => { ran++ })
  t.equal(ran, 2, 'parked: run calls the function (inside the anchor\'s cork)')
  t.throws(() => { a.run(() => { throw new Error('from fn') }) }, /from fn/, 'an exception from the function is not swallowed')
  // The anchor's own connection dropping (it never should) makes it ask again.
  ;(a as unknown as { client: { destroy: () => void } }).client.destroy()
  await waitFor('not parked', () => a.state !== 'parked')
  a.run(() => { ran++ })
  t.equal(ran, 3, 'while it asks again, run still calls the function')
  await waitFor('parked again', () => a.state === 'parked', 5000)
  a.close()
  t.equal(a.state, 'closed', 'closed')
  a.start()
  t.equal(a.state, 'closed', 'a closed anchor does not start again')
  a.run(() => { ran++ })
  t.equal(ran, 4, 'closed: run calls the function plainly')
})
