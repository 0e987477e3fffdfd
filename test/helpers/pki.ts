import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Teardown } from './ferry.js'

/** Runs `cmd args` with `input` on stdin (15 s at most); never rejects. */
export async function run (cmd: string, args: string[], input = ''): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise((resolve) => {
    const c = execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout, stderr })
    })
    // A child that exits before reading its stdin (EPIPE) is not an error here.
    c.stdin!.on('error', () => {})
    c.stdin!.end(input)
  })
}

/** The openssl CLI; throws with its stderr when it fails. */
export async function openssl (args: string[]): Promise<string> {
  const r = await run('openssl', args)
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

/** A throwaway CA in a temp dir; `issue` signs a P-256 leaf for `sans` with a chosen serial. */
export interface Pki {
  dir: string
  ca: string
  /** `days` 0: a certificate that has already expired. Serves as a server or a client certificate (no extendedKeyUsage). */
  issue: (name: string, sans: string, serial: string, days?: number) => Promise<{ cert: string, key: string }>
}

/** A CA made with the openssl CLI (`cn` its name), removed at teardown. */
export async function makePki (t: Teardown, cn = 'Ferry test CA'): Promise<Pki> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-tls-test-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const ca = join(dir, 'ca.pem')
  const caKey = join(dir, 'ca.key')
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', `/CN=${cn}`])
  return {
    dir,
    ca,
    issue: async (name, sans, serial, days = 1) => {
      const key = join(dir, `${name}.key`)
      const cert = join(dir, `${name}.pem`)
      const csr = join(dir, `${name}.csr`)
      const ext = join(dir, `${name}.ext`)
      await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`])
      writeFileSync(ext, `subjectAltName=${sans}\n`)
      await openssl(['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-set_serial', `0x${serial}`, '-days', String(days), '-extfile', ext, '-out', cert])
      return { cert, key }
    },
  }
}
