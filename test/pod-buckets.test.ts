import t from 'tap'
import { pino } from 'pino'
import { PodBuckets, PodBucketStore } from '../src/planes/buckets.js'
import { fullBucket, takeTokens } from '../src/edge/token-bucket.js'
import { EdgeRedisUnavailable } from '../src/edge/redis.js'

t.test('takeTokens: as many whole tokens as the bucket holds, up to the number wanted; none and the wait when empty', async (t) => {
  const b = fullBucket(5, 0)
  t.same(takeTokens(b, 0, 1, 5, 3), { granted: 3, waitMs: 0 }, '3 of 5')
  t.same(takeTokens(b, 0, 1, 5, 3), { granted: 2, waitMs: 0 }, 'the 2 left')
  t.same(takeTokens(b, 0, 1, 5, 3), { granted: 0, waitMs: 1000 }, 'empty: 1 s until the next at 1/s')
  t.same(takeTokens(b, 1500, 1, 5, 3), { granted: 1, waitMs: 0 }, '1.5 s later: one whole token')
})

t.test('PodBucketStore: one bucket per key for the pod; a changed rate or burst (a reload) is a new set', async (t) => {
  const s = new PodBucketStore()
  const call = { key: 'per-ip:10.0.0.1', ratePerSec: 1, burst: 2, want: 1, maxKeys: 10 }
  t.equal(s.take(call, 0).granted, 1, 'first')
  t.equal(s.take(call, 0).granted, 1, 'second')
  t.equal(s.take(call, 0).granted, 0, 'the key\'s burst of 2 is spent, whichever worker asks')
  t.equal(s.take({ ...call, key: 'per-ip:10.0.0.2' }, 0).granted, 1, 'another key has its own bucket')
  t.equal(s.take({ ...call, burst: 3 }, 0).granted, 1, 'a new burst (a reloaded policy) starts a fresh bucket')
  t.equal(s.take({ ...call, want: 50 }, 5000).granted, 2, 'a lease is capped by the burst')
})

t.test('PodBuckets: an unanswered take rejects as unavailable within its budget (the policy fails open); answers resolve', async (t) => {
  const sent: Array<[number, unknown]> = []
  const p = new PodBuckets((id, call) => { sent.push([id, call]) }, pino({ level: 'silent' }))
  const answered = p.take('a:b', 1, 2)
  p.answer(sent[0]![0], { granted: 1, waitMs: 0 })
  t.same(await answered, { granted: 1, waitMs: 0 }, 'the control plane\'s answer')
  t.same(sent[0]![1], { key: 'a:b', ratePerSec: 1, burst: 2, want: 1, maxKeys: 10000 }, 'the call carries the policy shape')
  const t0 = Date.now()
  await t.rejects(p.take('a:b', 1, 2), EdgeRedisUnavailable, 'no answer: unavailable')
  t.ok(Date.now() - t0 < 1000, `within the budget (${Date.now() - t0} ms)`)
  t.equal(p.failOpen, true, 'a local policy lets the request through then')
  p.close()
  await t.rejects(p.take('a:b', 1, 2), EdgeRedisUnavailable, 'closed: unavailable at once')
})
