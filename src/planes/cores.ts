import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'

/** What `gateway.workers: auto` counts, and where each figure came from (logged at start, shown in /status). */
export interface Cores {
  /** The workers `auto` starts: the smaller of the two below, at least 1. */
  readonly usable: number
  /** CPUs this process may run on (its affinity mask: os.availableParallelism()). */
  readonly affinity: number
  /** The cgroup CPU quota in cores, rounded up (a Kubernetes CPU limit of 1500m is 2); undefined: none. */
  readonly quota: number | undefined
}

function read (path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** `150000 100000` (cgroup v2 cpu.max) → 2 cores; `max 100000` → none. */
export function quotaOfCpuMax (text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  const [quota, period] = text.split(/\s+/)
  return cores(Number(quota), Number(period ?? 100000))
}

function cores (quota: number, period: number): number | undefined {
  if (!Number.isFinite(quota) || !Number.isFinite(period) || quota <= 0 || period <= 0) return undefined
  return Math.max(1, Math.ceil(quota / period))
}

/** The cgroup v2 path of this process (`0::/kubepods/…`), or undefined on a v1-only host. */
function unifiedPath (procSelfCgroup: string | undefined): string | undefined {
  for (const line of (procSelfCgroup ?? '').split('\n')) if (line.startsWith('0::')) return line.slice(3)
  return undefined
}

/**
 * The CPU quota of this process's cgroup, in cores: cgroup v2's cpu.max along its own path up to the
 * root (the tightest wins), else cgroup v1's cpu.cfs_quota_us ÷ cpu.cfs_period_us. Inside a container
 * the cgroup root is usually the container's own cgroup, so `/sys/fs/cgroup/cpu.max` is the limit.
 */
export function cgroupQuota (root = '/sys/fs/cgroup', procSelfCgroup = read('/proc/self/cgroup')): number | undefined {
  const path = unifiedPath(procSelfCgroup)
  let tightest: number | undefined
  if (path !== undefined) {
    const parts = path.split('/').filter((p) => p !== '')
    for (let i = parts.length; i >= 0; i--) {
      const q = quotaOfCpuMax(read(join(root, ...parts.slice(0, i), 'cpu.max')))
      if (q !== undefined && (tightest === undefined || q < tightest)) tightest = q
    }
    if (tightest !== undefined) return tightest
  }
  for (const dir of ['cpu', 'cpu,cpuacct']) {
    const q = read(join(root, dir, 'cpu.cfs_quota_us'))
    if (q === undefined) continue
    return cores(Number(q), Number(read(join(root, dir, 'cpu.cfs_period_us')) ?? 100000))
  }
  return undefined
}

export function usableCores (affinity = availableParallelism(), quota = cgroupQuota()): Cores {
  return { usable: Math.max(1, Math.min(affinity, quota ?? affinity)), affinity, quota }
}
