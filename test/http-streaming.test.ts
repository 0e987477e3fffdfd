import t from 'tap'
import { createHash } from 'node:crypto'
import { request } from 'node:http'
import { startBackend, httpConfig } from './helpers/backend.js'
import { startFerry, waitFor, adminStatus, type FerryProcess } from './helpers/ferry.js'

const MB = 1024 * 1024
const TOTAL = 100 * MB
const BLOCK = 64 * 1024

/** Deterministic block i of the test stream (so both ends can hash without storing 100 MB). */
function block (i: number): Buffer {
  const b = Buffer.allocUnsafe(BLOCK)
  let x = (i * 2654435761) >>> 0 || 1
  for (let o = 0; o < BLOCK; o += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; b.writeUInt32LE(x >>> 0, o) }
  return b
}

function expectedHash (): string {
  const h = createHash('sha256')
  for (let i = 0; i < TOTAL / BLOCK; i++) h.update(block(i))
  return h.digest('hex')
}

/** Samples the gateway's RSS every 25 ms until stopped; returns the peak. */
function sampleRss (f: FerryProcess): { stop: () => number } {
  let peak = f.rss()
  const timer = setInterval(() => { peak = Math.max(peak, f.rss()) }, 25)
  return { stop: () => { clearInterval(timer); return Math.max(peak, f.rss()) } }
}

t.test('100 MB streamed up and down through Ferry with bounded gateway memory', async (t) => {
  const HASH = expectedHash()
  let backendWritten = 0
  let backendBlocked = false
  const backend = await startBackend(t, (req, res) => {
    if (req.method === 'POST') {
      const h = createHash('sha256')
      let n = 0
      req.on('data', (c: Buffer) => { n += c.length; h.update(c) })
      req.on('end', () => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ bytes: n, sha: h.digest('hex') })) })
      return
    }
    // GET: 100 MB with Content-Length, honouring backpressure.
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(TOTAL) })
    let i = 0
    backendWritten = 0
    const pump = (): void => {
      while (i < TOTAL / BLOCK) {
        const b = block(i++)
        backendWritten += b.length
        if (!res.write(b)) { backendBlocked = true; res.once('drain', () => { backendBlocked = false; pump() }); return }
      }
      res.end()
    }
    pump()
  })
  const ferry = await startFerry(t, httpConfig([backend.address], { pool: { maxConnections: 4 } }, { http: { maxBodyBytes: 200 * MB } }))
  // Let the process settle, then take the baseline.
  await fetch(`${ferry.url}/warmup`, { method: 'POST', body: 'x' })
  const baseline = ferry.rss()

  await t.test('upload', async (t) => {
    const rss = sampleRss(ferry)
    const result = await new Promise<{ bytes: number, sha: string }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: ferry.httpPort, method: 'POST', path: '/upload', headers: { 'content-length': String(TOTAL) } }, (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (d: string) => { body += d }).on('end', () => resolve(JSON.parse(body)))
      })
      req.on('error', reject)
      let i = 0
      const write = (): void => {
        while (i < TOTAL / BLOCK) { if (!req.write(block(i++))) { req.once('drain', write); return } }
        req.end()
      }
      write()
    })
    const growth = rss.stop() - baseline
    t.equal(result.bytes, TOTAL, 'backend received all 100 MB')
    t.equal(result.sha, HASH, 'backend received the same bytes (SHA-256)')
    // Whole-body buffering would cost ≥ 100 MB; what remains is garbage awaiting GC (copies of uWS chunks).
    t.ok(growth < 80 * MB, `gateway RSS grew ${(growth / MB).toFixed(1)} MB during a 100 MB upload (bound 80 MB)`)
  })

  await t.test('download', async (t) => {
    const rss = sampleRss(ferry)
    const { bytes, sha } = await new Promise<{ bytes: number, sha: string }>((resolve, reject) => {
      request({ host: '127.0.0.1', port: ferry.httpPort, path: '/download' }, (res) => {
        const h = createHash('sha256')
        let n = 0
        res.on('data', (c: Buffer) => { n += c.length; h.update(c) }).on('end', () => resolve({ bytes: n, sha: h.digest('hex') })).on('error', reject)
      }).on('error', reject).end()
    })
    const growth = rss.stop() - baseline
    t.equal(bytes, TOTAL, 'client received all 100 MB')
    t.equal(sha, HASH, 'client received the same bytes (SHA-256)')
    t.ok(growth < 80 * MB, `gateway RSS grew ${(growth / MB).toFixed(1)} MB during a 100 MB download (bound 80 MB)`)
  })

  await t.test('a client that stops reading holds the backend back instead of growing the gateway', async (t) => {
    const before = ferry.rss()
    let received = 0
    const h = createHash('sha256')
    let paused: (() => void) | undefined
    const done = new Promise<string>((resolve, reject) => {
      request({ host: '127.0.0.1', port: ferry.httpPort, path: '/download' }, (res) => {
        res.on('data', (c: Buffer) => {
          received += c.length
          h.update(c)
          if (paused === undefined && received >= MB) { res.pause(); paused = () => res.resume() }
        }).on('end', () => resolve(h.digest('hex'))).on('error', reject)
      }).on('error', reject).end()
    })
    // The backend blocks on write once the client socket, Ferry and the backend socket are all full.
    await waitFor('the backend to block on backpressure', () => paused !== undefined && backendBlocked, 20000)
    const writtenWhileBlocked = backendWritten
    const growth = ferry.rss() - before
    t.ok(writtenWhileBlocked < 50 * MB, `backend could write only ${(writtenWhileBlocked / MB).toFixed(1)} MB of 100 before blocking (bound 50 MB): backpressure reached it`)
    t.ok(growth < 48 * MB, `gateway RSS grew ${(growth / MB).toFixed(1)} MB while the client was not reading (bound 48 MB)`)
    paused!()
    t.equal(await done, HASH, 'after resuming, the client still gets all 100 MB intact')
    await waitFor('the pool slot to be released', async () => (await adminStatus(ferry)).upstreams[0].endpoints[0].inflight === 0)
    t.equal((await adminStatus(ferry)).upstreams[0].queued, 0, 'nothing queued afterwards')
  })
})
