import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { cgroupQuota, quotaOfCpuMax, usableCores } from '../src/planes/cores.js'
import { workerCount } from '../src/planes/share.js'

function tree (t: { teardown: (fn: () => void) => void }, files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'ferry-cgroup-'))
  t.teardown(() => { rmSync(root, { recursive: true, force: true }) })
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true })
    writeFileSync(join(root, path), text)
  }
  return root
}

t.test('cpu.max (cgroup v2): a quota in cores rounded up; max, garbage and absence are no quota', async (t) => {
  t.equal(quotaOfCpuMax('150000 100000'), 2, '1.5 cores (a 1500m limit) → 2')
  t.equal(quotaOfCpuMax('100000 100000'), 1, '1 core')
  t.equal(quotaOfCpuMax('50000 100000'), 1, 'half a core → 1')
  t.equal(quotaOfCpuMax('400000 100000\n'), 4, '4 cores')
  t.equal(quotaOfCpuMax('max 100000'), undefined, 'max: no quota')
  t.equal(quotaOfCpuMax('garbage'), undefined, 'garbage: no quota')
  t.equal(quotaOfCpuMax(undefined), undefined, 'no file: no quota')
})

t.test('cgroupQuota: v2 along the process\'s own path (the tightest wins), else v1 cfs quota ÷ period', async (t) => {
  const v2 = tree(t, { 'cpu.max': 'max 100000', 'kubepods/pod1/cpu.max': '300000 100000', 'kubepods/pod1/ctr/cpu.max': 'max 100000', 'kubepods/cpu.max': '800000 100000' })
  t.equal(cgroupQuota(v2, '0::/kubepods/pod1/ctr\n'), 3, 'a container whose pod is limited to 3 cores')
  t.equal(cgroupQuota(tree(t, { 'cpu.max': '200000 100000' }), '0::/\n'), 2, 'inside a container: the cgroup root is its own')
  t.equal(cgroupQuota(tree(t, { 'cpu.max': 'max 100000' }), '0::/\n'), undefined, 'v2 without a limit')
  const v1 = tree(t, { 'cpu/cpu.cfs_quota_us': '250000', 'cpu/cpu.cfs_period_us': '100000' })
  t.equal(cgroupQuota(v1, '4:memory:/x\n1:cpu:/\n'), 3, 'v1: 2.5 cores → 3')
  t.equal(cgroupQuota(tree(t, { 'cpu,cpuacct/cpu.cfs_quota_us': '-1', 'cpu,cpuacct/cpu.cfs_period_us': '100000' }), '1:cpu,cpuacct:/\n'), undefined, 'v1 quota -1: none')
  t.equal(cgroupQuota(tree(t, {}), ''), undefined, 'no cgroup files at all: none')
})

t.test('usableCores and gateway.workers auto: the CPUs, capped by the quota, at least 1', async (t) => {
  t.same(usableCores(16, 2), { usable: 2, affinity: 16, quota: 2 }, 'a 2-core limit on a 16-CPU node: 2')
  t.same(usableCores(2, 8), { usable: 2, affinity: 2, quota: 8 }, 'a quota above the CPUs: the CPUs')
  t.same(usableCores(4, undefined), { usable: 4, affinity: 4, quota: undefined }, 'no quota: the CPUs')
  const here = usableCores()
  t.equal(workerCount({ gateway: { workers: 'auto' } } as never), here.usable, `auto on this machine: ${here.usable} (cpus ${here.affinity}, quota ${here.quota ?? 'none'})`)
  t.equal(workerCount({ gateway: { workers: 3 } } as never), 3, 'a number is that number')
})
