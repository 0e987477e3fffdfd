import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { ROOT } from './helpers/ferry.js'

/**
 * The module graph of src/, read from the import lines (type-only imports included: a cycle of types
 * is still two modules that cannot be understood, moved or split apart one without the other).
 */
const SRC = join(ROOT, 'src')

function sources (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [join(dir, e.name)] : [])
}

/** Relative module specifiers of `import … from`, `export … from`, `import '…'` and `import('…')`. */
const SPECIFIER = /\bfrom\s*'(\.{1,2}\/[^']+)'|\bimport\s*'(\.{1,2}\/[^']+)'|\bimport\(\s*'(\.{1,2}\/[^']+)'\s*\)/g

/** src-relative path → the src-relative paths it imports. */
function importGraph (): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  for (const file of sources(SRC)) {
    const out: string[] = []
    for (const m of readFileSync(file, 'utf8').matchAll(SPECIFIER)) {
      const spec = (m[1] ?? m[2] ?? m[3])!
      out.push(relative(SRC, resolve(dirname(file), spec.replace(/\.js$/, '.ts'))))
    }
    graph.set(relative(SRC, file), out)
  }
  return graph
}

/** Every strongly connected component of more than one module (or a module importing itself): its modules, and one cycle through them. */
function cycles (graph: Map<string, string[]>): Array<{ modules: string[], cycle: string[] }> {
  // Tarjan's algorithm (iterative enough for a few hundred modules: recursion depth ≤ the module count).
  let index = 0
  const idx = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const found: Array<{ modules: string[], cycle: string[] }> = []
  const visit = (v: string): void => {
    idx.set(v, index); low.set(v, index); index++
    stack.push(v); onStack.add(v)
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue
      if (!idx.has(w)) { visit(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)) } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!))
    }
    if (low.get(v) !== idx.get(v)) return
    const scc: string[] = []
    let w: string
    do { w = stack.pop()!; onStack.delete(w); scc.push(w) } while (w !== v)
    if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) found.push({ modules: scc.sort(), cycle: cycleThrough(graph, new Set(scc), v) })
  }
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) visit(v)
  return found
}

/** One concrete cycle from `start` back to it inside the component (a readable failure message). */
function cycleThrough (graph: Map<string, string[]>, scc: Set<string>, start: string): string[] {
  const prev = new Map<string, string>()
  const queue = [start]
  while (queue.length > 0) {
    const v = queue.shift()!
    for (const w of graph.get(v) ?? []) {
      if (!scc.has(w)) continue
      if (w === start) {
        const path = [start]
        for (let x = v; x !== start; x = prev.get(x)!) path.splice(1, 0, x)
        return [...path, start]
      }
      if (!prev.has(w)) { prev.set(w, v); queue.push(w) }
    }
  }
  return [start]
}

t.test('src/ has no import cycle', async (t) => {
  const graph = importGraph()
  t.ok(graph.size > 50, `read the import lines of ${graph.size} modules`)
  const found = cycles(graph)
  t.same(found.map((c) => `${c.modules.join(', ')} (one cycle: ${c.cycle.join(' → ')})`), [], 'no module imports itself through others (0 strongly connected groups)')
})

/**
 * The stages meet in src/contracts/ only: the client side (front/ for HTTP and WebSocket, tcp/ for TCP
 * listeners) and the backend side (upstream/) never import each other, and the contracts import neither.
 */
const APART: Array<[from: string, to: string]> = [
  ['front/', 'upstream/'], ['upstream/', 'front/'],
  ['tcp/', 'upstream/'], ['upstream/', 'tcp/'],
  ['contracts/', 'front/'], ['contracts/', 'upstream/'], ['contracts/', 'tcp/'],
]

/** Imports that cross a line of APART, as `file → import`. */
function crossings (graph: Map<string, string[]>): string[] {
  const out: string[] = []
  for (const [file, imports] of graph) {
    for (const to of imports) if (APART.some(([a, b]) => file.startsWith(a) && to.startsWith(b))) out.push(`${file} → ${to}`)
  }
  return out.sort()
}

t.test('front/ and tcp/ meet upstream/ only through contracts/', async (t) => {
  const graph = importGraph()
  t.ok([...graph.keys()].some((f) => f.startsWith('contracts/')), 'src/contracts/ exists')
  t.same(crossings(graph), [], 'no import between front/ or tcp/ and upstream/, and none from contracts/ into them (0 crossings)')
})

t.test('outside src/upstream/, only the registry of upstream/ is imported', async (t) => {
  const graph = importGraph()
  const reaching: string[] = []
  for (const [file, imports] of graph) {
    if (file.startsWith('upstream/')) continue
    for (const to of imports) if (to.startsWith('upstream/') && to !== 'upstream/registry.ts') reaching.push(`${file} → ${to}`)
  }
  t.same(reaching.sort(), [], 'the upstream kinds are built, kept on a reload and retired in upstream/registry.ts only (0 other imports)')
})

/** Calls that decide whether a request or upgrade is admitted: the pipeline's stages. */
const ADMISSION_CALLS = /\brouter\.match\(|\.refusesIp\(|\.refusesOrigin\(|\btakeRequest\(|\btakeSession\(|\badmission\.take\(|\bedge\.guard\(|\bguard\.check\(/

t.test('the HTTP and WebSocket fronts admit through one pipeline (src/front/admit.ts)', async (t) => {
  const front = sources(join(SRC, 'front')).map((f) => relative(SRC, f))
  t.ok(front.includes('front/admit.ts'), 'src/front/admit.ts exists')
  const deciding = front.filter((f) => f !== 'front/admit.ts' && ADMISSION_CALLS.test(readFileSync(join(SRC, f), 'utf8')))
  t.same(deciding, [], 'no other module of front/ routes, checks access, takes a concurrency slot or admission token, or runs the edge checks itself')
  for (const f of ['front/http-front.ts', 'front/ws-front.ts']) t.match(readFileSync(join(SRC, f), 'utf8'), /this\.(deps\.)?admit\.(http|ws)\(/, `${f} asks the pipeline`)
  t.ok(ADMISSION_CALLS.test('const r = table.router.match(host, path)') && ADMISSION_CALLS.test('limits.takeSession(ip)'), 'the pattern finds such a call')
})

t.test('the layer check finds a crossing', async (t) => {
  const g = new Map([['front/a.ts', ['upstream/x.ts', 'contracts/c.ts']], ['upstream/x.ts', ['contracts/c.ts']], ['tcp/l.ts', ['upstream/tcp/u.ts']], ['contracts/c.ts', []]])
  t.same(crossings(g), ['front/a.ts → upstream/x.ts', 'tcp/l.ts → upstream/tcp/u.ts'], 'front → upstream and tcp → upstream, not the contract imports')
})

t.test('the cycle finder finds a cycle', async (t) => {
  const g = new Map([['a.ts', ['b.ts']], ['b.ts', ['c.ts', 'x.ts']], ['c.ts', ['a.ts']], ['x.ts', []]])
  t.same(cycles(g), [{ modules: ['a.ts', 'b.ts', 'c.ts'], cycle: ['a.ts', 'b.ts', 'c.ts', 'a.ts'] }], 'a → b → c → a, and x outside it')
})
