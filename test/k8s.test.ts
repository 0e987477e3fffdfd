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
  t.equal(cfg.gateway.workers, Number(c.resources.requests.cpu), 'one worker per requested core (gateway.workers = the CPU request)')
  // Affinity in Redis and the shared resume secret.
  const redisSvc = docs.find((d) => d.kind === 'Service' && d.metadata.name === 'ferry-redis')
  const redisUrl = new URL(cfg.affinity.redis.url)
  t.equal(cfg.affinity.store, 'redis', 'pods share the Redis affinity store')
  t.equal(redisUrl.hostname, redisSvc?.metadata.name, 'affinity.redis.url names the Redis Service')
  t.equal(Number(redisUrl.port), redisSvc?.spec.ports[0].port, 'on its port')
  const volumes = dep.spec.template.spec.volumes as any[]
  const secretMount = c.volumeMounts.find((m: any) => volumes.find((v) => v.name === m.name)?.secret !== undefined)
  t.ok(secretMount !== undefined && cfg.resume.secretFile?.startsWith(secretMount.mountPath + '/'), 'resume.secretFile lies in the mounted Secret')
  // Disruption budget, autoscaler and spreading all point at the Ferry pods.
  const pdb = docs.find((d) => d.kind === 'PodDisruptionBudget')
  const hpa = docs.find((d) => d.kind === 'HorizontalPodAutoscaler')
  t.same(pdb?.spec.selector.matchLabels, dep.spec.selector.matchLabels, 'the PodDisruptionBudget selects the Ferry pods')
  t.equal(pdb?.spec.maxUnavailable, 1, 'one pod down at a time')
  t.match(hpa?.spec.scaleTargetRef, { kind: 'Deployment', name: dep.metadata.name }, 'the HPA scales the Ferry Deployment')
  t.ok(hpa?.spec.minReplicas >= 2 && hpa?.spec.minReplicas <= hpa?.spec.maxReplicas, 'with at least 2 replicas')
  t.same(dep.spec.template.spec.affinity?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution?.[0]?.podAffinityTerm.labelSelector.matchLabels, dep.spec.selector.matchLabels, 'pods spread over nodes (anti-affinity on their own labels)')
  // The example mux backend: every ConfigMap endpoint of the chat upstream is a pod of the StatefulSet behind the headless Service.
  const headless = docs.find((d) => d.kind === 'Service' && d.spec.clusterIP === 'None')
  const sts = docs.find((d) => d.kind === 'StatefulSet')
  t.equal(sts?.spec.serviceName, headless?.metadata.name, 'the StatefulSet is governed by the headless Service')
  const chat = cfg.upstreams.chat!
  // The chat route's split names labels the chat endpoints carry (the schema checks that too).
  const split = cfg.routes.find((r) => r.upstream === 'chat')?.split
  t.ok(split !== undefined && chat.endpoints!.every((e) => typeof e !== 'string' && e.labels.version === split.subsets[0]!.labels.version), 'every chat endpoint carries the version label the chat route\'s split selects')
  for (const entry of chat.endpoints!) {
    const e = typeof entry === 'string' ? entry : entry.address
    const [host, port] = e.split(':') as [string, string]
    const [pod, svcName] = host.split('.') as [string, string]
    const ordinal = Number(pod.slice(sts.metadata.name.length + 1))
    t.ok(svcName === headless.metadata.name && pod.startsWith(`${sts.metadata.name}-`) && ordinal < sts.spec.replicas, `${e}: a pod of the StatefulSet (${sts.spec.replicas} replicas) behind the headless Service`)
    t.equal(Number(port), headless.spec.ports[0].port, `${e}: the headless Service's port`)
  }
  const args: string[] = sts.spec.template.spec.containers[0].command
  t.equal(args[args.indexOf('--port') + 1], String(headless.spec.ports[0].port), 'the chat backend listens on that port')
  // The image every manifest names is built by the Dockerfile (Node 20 on Debian 12, Ferry's CLI as entrypoint).
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  t.match(dockerfile, /^FROM node:20-bookworm-slim$/m, 'Dockerfile: Node 20 on Debian 12 (glibc 2.36, the uWS binary loads)')
  t.match(dockerfile, /ENTRYPOINT \["node", ("--[a-z-]+=[0-9a-z]+", )*"dist\/cli\.js"\]/, 'Dockerfile: the entrypoint is Ferry\'s CLI (the Deployment passes start --config)')
  t.match(dockerfile, /ENTRYPOINT \[[^\]]*"--max-semi-space-size=32"/, 'Dockerfile: with the young-generation size Ferry is measured with (native-bench/results/semi-space-ab.md)')
  t.equal(c.args[0], 'start', 'the Deployment starts the gateway')
  // Drain timings: the pod exits by itself before the kubelet's SIGKILL; preStop starts the drain.
  const grace = dep.spec.template.spec.terminationGracePeriodSeconds as number
  const drainS = (cfg.drain.acceptGraceMs + cfg.drain.deadlineMs) / 1000
  t.ok(grace > drainS, `terminationGracePeriodSeconds ${grace} > drain.acceptGraceMs + drain.deadlineMs (${drainS} s)`)
  t.ok(cfg.drain.spreadMs < cfg.drain.deadlineMs, 'sessions are spread over less than the deadline')
  const preStop: string[] = c.lifecycle?.preStop?.exec?.command ?? []
  t.same(preStop.slice(0, 3), ['node', 'dist/cli.js', 'drain'], 'preStop runs `ferry drain`')
  t.equal(preStop[preStop.indexOf('--admin') + 1], `127.0.0.1:${cfg.listen.admin.port}`, 'against this pod\'s admin port')
  t.equal(dep.spec.strategy?.rollingUpdate?.maxUnavailable, 0, 'rolling update: a replacement is ready before a pod drains (maxUnavailable 0)')
  t.ok(cfg.admission.handshakesPerSec > 0, 'admission control is on')
  // TCP passthrough ports: container port and Service port per listener.
  for (const l of cfg.listen.tcp) {
    const cp = c.ports.find((p: any) => p.containerPort === l.port)
    t.ok(cp !== undefined, `listen.tcp ${l.name}: container port ${l.port}`)
    t.ok(svc.spec.ports.some((p: any) => p.targetPort === cp?.name), `listen.tcp ${l.name}: the Service exposes it`)
  }
})
