import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseAllDocuments } from 'yaml'
import { validateConfig } from '../src/config/load.js'
import { ROOT } from './helpers/ferry.js'

t.test('k8s manifests agree with the config schema', async (t) => {
  const docs = parseAllDocuments(readFileSync(join(ROOT, 'k8s/ferry.yaml'), 'utf8')).map((d) => d.toJS() as any)
  const cm = docs.find((d) => d.kind === 'ConfigMap')
  const dep = docs.find((d) => d.kind === 'Deployment')
  const svc = docs.find((d) => d.kind === 'Service' && d.metadata.name === 'ferry')
  t.ok(cm !== undefined && dep !== undefined && svc !== undefined, 'ConfigMap, Deployment and Service present')
  const { parse } = await import('yaml')
  const cfg = validateConfig(parse(cm.data['ferry.yaml']), 'k8s ConfigMap ferry.yaml')
  const c = dep.spec.template.spec.containers[0]
  const port = (name: string): number => c.ports.find((p: any) => p.name === name).containerPort
  t.equal(port('http'), cfg.listen.http.port, 'container http port = listen.http.port')
  t.equal(port('admin'), cfg.listen.admin.port, 'container admin port = listen.admin.port')
  t.equal(c.readinessProbe.httpGet.path, '/readyz', 'readiness probe on /readyz')
  t.equal(c.livenessProbe.httpGet.path, '/healthz', 'liveness probe on /healthz')
  t.equal(cfg.listen.admin.host, '0.0.0.0', 'admin binds all interfaces in the pod so the kubelet can probe it')
  t.equal(svc.spec.ports[0].targetPort, 'http', 'service targets the http port')
  // Affinity in Redis and the shared resume secret.
  const redisSvc = docs.find((d) => d.kind === 'Service' && d.metadata.name === 'ferry-redis')
  const redisUrl = new URL(cfg.affinity.redis.url)
  t.equal(cfg.affinity.store, 'redis', 'pods share the Redis affinity store')
  t.equal(redisUrl.hostname, redisSvc?.metadata.name, 'affinity.redis.url names the Redis Service')
  t.equal(Number(redisUrl.port), redisSvc?.spec.ports[0].port, 'on its port')
  const volumes = dep.spec.template.spec.volumes as any[]
  const secretMount = c.volumeMounts.find((m: any) => volumes.find((v) => v.name === m.name)?.secret !== undefined)
  t.ok(secretMount !== undefined && cfg.resume.secretFile?.startsWith(secretMount.mountPath + '/'), 'resume.secretFile lies in the mounted Secret')
})
