// Ferry status console: plain JavaScript, no framework, no build step. Reads the live channel
// (/events, Server-Sent Events) with fetch() so the admin token travels in the Authorization header
// rather than in a URL; renders every snapshot with textContent (never HTML from the gateway).
'use strict'

const TOKEN_KEY = 'ferry.adminToken'
const WINDOW_MS = 120_000
const $ = (id) => document.getElementById(id)

const state = {
  controller: undefined,
  retryTimer: undefined,
  retries: 0,
  history: [],
  lastState: undefined,
  lastReloadAt: undefined,
}

function token () { return sessionStorage.getItem(TOKEN_KEY) ?? '' }
function authHeaders () {
  const t = token()
  return t === '' ? {} : { authorization: `Bearer ${t}` }
}

/** An element with attributes and children (strings become text nodes). */
function el (tag, attrs, ...children) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') e.className = v; else e.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children) if (c !== undefined && c !== null) e.append(c instanceof Node ? c : String(c))
  return e
}
function text (id, value) {
  const e = $(id)
  const s = String(value)
  if (e.textContent !== s) e.textContent = s
}
function setConn (msg) { text('conn', msg) }

// ---- the live channel --------------------------------------------------------------------------

function scheduleReconnect (why) {
  clearTimeout(state.retryTimer)
  const delay = Math.min(5000, 500 * 2 ** Math.min(state.retries++, 4)) * (0.5 + Math.random() / 2)
  setConn(`${why}; reconnecting in ${Math.ceil(delay / 1000)} s`)
  state.retryTimer = setTimeout(connect, delay)
}

async function connect () {
  clearTimeout(state.retryTimer)
  state.controller?.abort()
  const controller = new AbortController()
  state.controller = controller
  setConn('Connecting…')
  let res
  try {
    res = await fetch('/events', { headers: authHeaders(), signal: controller.signal, cache: 'no-store' })
  } catch {
    if (!controller.signal.aborted) { markGone(); scheduleReconnect('The admin listener does not answer') }
    return
  }
  if (res.status === 401) {
    showLogin(token() === '' ? 'This gateway needs its admin token (admin.token).' : 'The token was refused. Enter the admin token again.')
    return
  }
  if (!res.ok || res.body === null) {
    scheduleReconnect(`The live channel was refused (${res.status})`)
    return
  }
  showDashboard()
  state.retries = 0
  setConn('Live')
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  let buf = ''
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buf += value
      let i
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i)
        buf = buf.slice(i + 2)
        onEvent(block)
      }
    }
  } catch {
    if (controller.signal.aborted) return
  }
  if (controller.signal.aborted) return
  markGone()
  scheduleReconnect('The live channel closed')
}

function onEvent (block) {
  let event = 'message'
  let data = ''
  for (const line of block.split('\n')) {
    if (line.startsWith('event: ')) event = line.slice(7)
    else if (line.startsWith('data: ')) data += line.slice(6)
  }
  if (data === '') return
  const msg = JSON.parse(data)
  if (event === 'hello') {
    state.history = msg.history ?? []
  } else if (event === 'snapshot') {
    if (msg.rates !== null && msg.rates !== undefined && state.history.at(-1)?.t !== msg.rates.t) state.history.push(msg.rates)
    const cutoff = Date.now() - WINDOW_MS - 5000
    while (state.history.length > 0 && state.history[0].t < cutoff) state.history.shift()
    render(msg.status)
  }
}

function markGone () {
  const badge = $('gateway-state')
  badge.dataset.state = 'gone'
  badge.textContent = 'not answering'
}

// ---- login -------------------------------------------------------------------------------------

function showLogin (why) {
  $('dashboard').hidden = true
  $('login').hidden = false
  text('login-why', why)
  setConn('Waiting for the admin token')
  $('token').focus()
}

function showDashboard () {
  $('login').hidden = true
  $('dashboard').hidden = false
  // Only a token this tab holds can be forgotten (a gateway without admin.token asks for none).
  $('logout-btn').hidden = token() === ''
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault()
  sessionStorage.setItem(TOKEN_KEY, $('token').value.trim())
  $('token').value = ''
  void connect()
})

$('logout-btn').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY)
  state.controller?.abort()
  void connect()
})

// ---- actions -----------------------------------------------------------------------------------

function showResult (kind, message, errors) {
  const box = $('action-result')
  box.replaceChildren(el('p', { class: kind }, message))
  if (errors !== undefined && errors.length > 0) {
    box.append(el('ul', { class: 'errors', id: 'action-errors' }, ...errors.map((e) => el('li', null, e))))
  }
}

async function post (path) {
  const res = await fetch(path, { method: 'POST', headers: authHeaders() })
  let body = null
  try { body = await res.json() } catch { body = null }
  if (res.status === 401) showLogin('The token was refused. Enter the admin token again.')
  return { status: res.status, body }
}

$('drain-btn').addEventListener('click', () => {
  const dialog = $('drain-dialog')
  // Escape keeps the last returnValue: start each opening from none, so only the Drain button drains.
  dialog.returnValue = ''
  dialog.showModal()
})

$('drain-dialog').addEventListener('close', async () => {
  if ($('drain-dialog').returnValue !== 'confirm') return
  $('drain-btn').disabled = true
  try {
    const { status, body } = await post('/drain')
    if (status === 202) showResult('warn', `Drain started (phase ${body?.phase ?? '?'}).`)
    else showResult('bad', `Drain refused (${status}): ${body?.error?.message ?? ''}`)
  } catch (err) {
    showResult('bad', `Drain request failed: ${err.message}`)
  }
})

$('reload-btn').addEventListener('click', async () => {
  const btn = $('reload-btn')
  btn.disabled = true
  showResult('muted', 'Reloading…')
  try {
    const { status, body } = await post('/reload')
    if (status === 200) {
      const changed = ['added', 'changed', 'removed'].map((k) => `${k}: ${body[k]?.length ? body[k].join(', ') : 'none'}`).join('; ')
      showResult('ok', `Config reloaded: version ${body.version} (${changed}).`)
    } else if (status === 400) {
      showResult('bad', `Reload refused; the running config is kept. ${body?.errors?.length ?? 0} problem(s):`, body?.errors ?? [])
    } else if (status !== 401) {
      showResult('bad', `Reload failed (${status}).`)
    }
  } catch (err) {
    showResult('bad', `Reload request failed: ${err.message}`)
  } finally {
    btn.disabled = false
  }
})

// ---- rendering ---------------------------------------------------------------------------------

function duration (sec) {
  if (sec < 60) return `${sec} s`
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`
  return `${Math.floor(sec / 3600)} h ${Math.floor(sec % 3600 / 60)} min`
}
function when (iso) {
  if (iso === undefined || iso === null || iso === '') return '–'
  const d = new Date(iso)
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString()
}
function fillTable (id, rows) {
  const body = document.querySelector(`#${id} tbody`)
  body.replaceChildren(...rows)
}

function render (s) {
  text('pod-id', s.gateway)
  const badge = $('gateway-state')
  badge.dataset.state = s.state
  text('gateway-state', s.state)
  if (state.lastState !== undefined && state.lastState !== s.state) setConn(`Live: gateway ${s.state}`)
  state.lastState = s.state
  document.title = `Ferry ${s.gateway}: ${s.state}`

  const c = s.clients ?? {}
  const byMode = s.websocket?.byMode ?? {}
  text('sessions-total', c.webSocketSessions ?? 0)
  text('sessions-kind', `mux ${byMode.mux ?? 0} · ws ${byMode.ws ?? 0}`)
  text('http-inflight', c.httpRequestsInFlight ?? 0)
  text('tcp-open', c.tcpConnections ?? 0)
  text('ferry-version', s.version)
  text('uptime', duration(s.uptimeSeconds ?? 0))
  $('drain-btn').disabled = s.state !== 'running'

  renderCharts()
  renderDrain(s.drain)
  renderConfig(s.config)
  renderWorkers(s.pod, s.workers)
  renderPods(s.pods)
  renderUpstreams(s.upstreams ?? [])
  renderRoutes(s)
  renderAffinity(s.affinity)
}

function renderDrain (d) {
  const phases = { idle: 'Not draining.', grace: 'Accept grace: readiness is 503, listeners still accept.', migrating: 'Migrating sessions to other pods.', finishing: 'Finishing HTTP requests and TCP connections.', done: 'Drained.' }
  text('drain-phase', `${d.phase}: ${phases[d.phase] ?? ''}`)
  const bar = $('drain-progress')
  const moved = d.migrated.resumable + d.migrated.plain + d.migrated.forced
  bar.hidden = d.phase === 'idle'
  bar.max = Math.max(1, d.sessionsAtStart ?? 0)
  bar.value = Math.min(bar.max, moved)
  bar.setAttribute('aria-valuetext', `${moved} of ${d.sessionsAtStart ?? 0} sessions moved`)
  text('drain-start', d.phase === 'idle' ? '–' : d.sessionsAtStart ?? 0)
  text('drain-moved', d.phase === 'idle' ? '–' : `${d.migrated.resumable} / ${d.migrated.plain} / ${d.migrated.forced}`)
  text('drain-remaining', `${d.remaining.sessions} / ${d.remaining.httpRequests} / ${d.remaining.tcpConnections}`)
  text('drain-deadline', when(d.deadlineAt))
}

function renderConfig (cfg) {
  text('config-version', cfg.version)
  text('config-loaded', when(cfg.loadedAt))
  const last = cfg.lastReload
  text('config-last', last === null ? 'none since start' : `${last.result} at ${when(last.at)}`)
  const key = last === null ? '' : `${last.at}|${last.result}`
  if (key !== state.lastReloadAt) {
    state.lastReloadAt = key
    $('config-errors').replaceChildren(...(last?.errors ?? []).map((e) => el('li', null, e)))
  }
}

/** A pod with gateway.workers above 1: its worker processes (a single-process gateway has none). */
function renderWorkers (pod, workers) {
  $('workers-card').hidden = workers === undefined
  if (workers === undefined) return
  text('workers-summary', `${pod.workers} workers on ${pod.cores} cores · ${pod.restarts} restarts · a worker silent for ${pod.workerHangMs} ms is restarted`)
  const exit = (x) => x === null ? '–' : `${x.reason} (${x.signal ?? `code ${x.code}`}) at ${when(x.at)}`
  fillTable('workers', workers.map((w) => el('tr', { 'data-worker': String(w.index), 'data-state': w.state },
    el('th', { scope: 'row' }, `#${w.index}`),
    el('td', { class: 'num' }, w.pid ?? '–'),
    el('td', null, w.state),
    el('td', { class: 'num' }, w.clients?.webSocketSessions ?? '–'),
    el('td', { class: 'num' }, w.clients?.httpRequestsInFlight ?? '–'),
    el('td', { class: 'num' }, w.clients?.tcpConnections ?? '–'),
    el('td', { class: 'num' }, w.restarts),
    el('td', null, exit(w.lastExit)),
    el('td', { class: 'num' }, w.heartbeatAgeMs === null ? '–' : `${w.heartbeatAgeMs} ms ago`))))
}

function renderPods (p) {
  if (p === undefined) return
  const why = { ok: 'Pods announced in the shared affinity store (Redis).', unavailable: 'Pod list unavailable: Redis does not answer (the last list is shown).', local: 'Memory affinity store: this pod only (a Redis store lists every pod).' }
  text('pods-state', why[p.state] ?? p.state)
  $('pods-state').className = p.state === 'unavailable' ? 'bad' : 'muted'
  fillTable('pods', p.pods.map((pod) => el('tr', { 'data-pod': pod.id },
    el('th', { scope: 'row' }, pod.id, pod.self ? ' (this pod)' : ''),
    el('td', null, pod.host), el('td', null, pod.version),
    el('td', { class: 'num' }, pod.sessions),
    el('td', null, pod.draining ? 'draining' : 'ready'),
    el('td', null, when(pod.updatedAt)))))
}

function load (u, ep) {
  switch (u.protocol) {
    case 'http': return `${ep.connected} connections, ${ep.inflight} in flight`
    case 'mux': {
      const ready = ep.links.filter((l) => l.state === 'ready').length
      return `${ready}/${ep.links.length} links ready, ${ep.streams} streams`
    }
    case 'ws': return `${ep.sessions} sessions${ep.handshaking ? `, ${ep.handshaking} handshaking` : ''}`
    case 'tcp': return `${ep.connected} connections${ep.connecting ? `, ${ep.connecting} connecting` : ''}`
    default: return ''
  }
}

/** An endpoint's state as words: active, or leaving (why, and its drain's progress). */
function endpointState (ep) {
  if (ep.state === 'active') return ''
  const d = ep.drain
  if (d === undefined) return ` (${ep.state})`
  const why = { operator: 'by the operator', removed: 'removed', unhealthy: 'unhealthy' }[d.cause] ?? d.cause
  return ` (${ep.state} ${why}: ${d.moved} moved, ${d.sessionsLeft} left)`
}

/** Drain / Ready for an endpoint in the set; none for one that was removed (it is leaving anyway). */
function adminButton (u, ep) {
  const removed = ep.drain?.cause === 'removed' || (ep.state === 'draining' && ep.drain === undefined)
  if (removed) return '–'
  const action = ep.admin === 'drain' ? 'ready' : 'drain'
  const label = action === 'drain' ? 'Drain' : 'Ready'
  return el('button', { type: 'button', class: action === 'drain' ? 'quiet' : undefined, 'data-action': action, 'data-upstream': u.name, 'data-endpoint': ep.address, 'aria-label': `${label} ${u.name} ${ep.address}` }, label)
}

function renderUpstreams (ups) {
  // Rows are rebuilt on every snapshot: a focused Drain/Ready button keeps the focus.
  const focused = document.activeElement?.closest?.('#upstreams button[data-action]')
  const focusKey = focused ? `${focused.dataset.upstream} ${focused.dataset.endpoint}` : undefined
  const rows = []
  for (const u of ups) {
    const eps = u.endpoints ?? []
    if (eps.length === 0) rows.push(el('tr', null, el('th', { scope: 'row' }, u.name), el('td', null, u.protocol), el('td', { colspan: 4 }, 'no endpoints')))
    for (const ep of eps) {
      const health = ep.check ?? ep.health
      const cls = health === 'up' ? 'ok' : health === 'starting' ? 'warn' : 'bad'
      rows.push(el('tr', { 'data-endpoint': ep.address, 'data-state': ep.state },
        el('th', { scope: 'row' }, u.name), el('td', null, u.protocol),
        el('td', null, ep.address, endpointState(ep)),
        el('td', { class: cls }, health),
        el('td', null, load(u, ep)),
        el('td', null, adminButton(u, ep))))
    }
  }
  fillTable('upstreams', rows)
  if (focusKey === undefined) return
  for (const b of document.querySelectorAll('#upstreams button[data-action]')) {
    if (`${b.dataset.upstream} ${b.dataset.endpoint}` === focusKey) { b.focus(); break }
  }
}

// One listener for every row's button (the rows are rebuilt on every snapshot).
document.querySelector('#upstreams tbody').addEventListener('click', async (ev) => {
  const btn = ev.target.closest?.('button[data-action]')
  if (!btn) return
  const { action, upstream, endpoint } = btn.dataset
  btn.disabled = true
  try {
    const { status, body } = await post(`/upstreams/${encodeURIComponent(upstream)}/endpoints/${encodeURIComponent(endpoint)}/${action}`)
    if (status === 202 || status === 200) {
      const said = { draining: 'draining: no new sessions, its sessions move off paced', already_draining: 'already draining', ready: 'ready: it takes new sessions', already_ready: 'already ready' }[body?.result] ?? body?.result
      showResult(action === 'drain' ? 'warn' : 'ok', `${upstream} ${endpoint}: ${said}.`)
    } else if (status !== 401) {
      showResult('bad', `${action === 'drain' ? 'Drain' : 'Ready'} of ${upstream} ${endpoint} refused (${status}): ${body?.error?.message ?? ''}`)
    }
  } catch (err) {
    showResult('bad', `${action} request failed: ${err.message}`)
  } finally {
    btn.disabled = false
  }
})

function renderRoutes (s) {
  const l = s.listeners
  const rows = [
    el('tr', null, el('th', { scope: 'row' }, 'http'), el('td', null, `${l.http.host}:${l.http.port}`), el('td', null, 'HTTP and WebSocket front')),
    el('tr', null, el('th', { scope: 'row' }, 'admin'), el('td', null, `${l.admin.host}:${l.admin.port}`), el('td', null, `token: ${s.admin?.token ?? '?'}`)),
    ...l.tcp.map((t) => el('tr', null, el('th', { scope: 'row' }, `tcp ${t.name}`), el('td', null, `${t.host}:${t.port}`), el('td', null, `${t.state}, ${t.open} open → ${t.upstream}`))),
  ]
  fillTable('listeners', rows)
  const byRoute = s.websocket?.byRoute ?? {}
  fillTable('routes', s.routes.map((r) => el('tr', null,
    el('td', null, r.host ?? 'any'), el('th', { scope: 'row' }, r.path), el('td', null, r.kind), el('td', null, r.upstream),
    el('td', null, r.auth ?? 'none'), el('td', null, r.rateLimits.length ? r.rateLimits.join(', ') : 'none'),
    el('td', null, r.kind === 'websocket' ? byRoute[`${r.host ?? '*'}${r.path}`] ?? 0 : '–'))))
}

function renderAffinity (a) {
  if (a === undefined) return
  text('affinity-store', a.store)
  text('affinity-state', a.state === 'ok' ? (a.store === 'redis' ? 'connected' : 'ok') : 'fallback (rendezvous hashing)')
  $('affinity-state').className = a.state === 'ok' ? 'ok' : 'bad'
  text('affinity-detail', a.store === 'redis' ? `${a.redis} · ${a.connection} · ${a.cause}` : `${a.entries} records of at most ${a.maxEntries}`)
}

// ---- charts (inline SVG) -----------------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg'
function svg (tag, attrs, content) {
  const e = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v))
  if (content !== undefined) e.textContent = content
  return e
}

/** A ceiling that reads well on an axis: 1, 2, 5 × 10^n. */
function niceMax (v) {
  if (v <= 1) return 1
  const p = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p
  return 10 * p
}

function drawChart (id, key, label) {
  const W = 320; const H = 90; const top = 8; const bottom = 14; const left = 28
  const now = Date.now()
  const pts = state.history.filter((p) => p.t >= now - WINDOW_MS)
  const values = pts.map((p) => p[key])
  const max = niceMax(Math.max(0, ...values))
  const x = (t) => left + (W - left - 2) * (1 - (now - t) / WINDOW_MS)
  const y = (v) => H - bottom - (H - top - bottom) * (v / max)
  const chart = $(id)
  const nodes = [
    svg('line', { class: 'grid', x1: left, y1: y(0), x2: W, y2: y(0) }),
    svg('line', { class: 'grid', x1: left, y1: y(max), x2: W, y2: y(max) }),
    svg('text', { x: 2, y: y(max) + 3 }, String(max)),
    svg('text', { x: 2, y: y(0) + 3 }, '0'),
    svg('text', { x: left, y: H - 2 }, '−2 min'),
    svg('text', { x: W - 22, y: H - 2 }, 'now'),
  ]
  if (pts.length >= 2) {
    const line = pts.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ')
    nodes.push(svg('polygon', { class: 'area', points: `${x(pts[0].t).toFixed(1)},${y(0)} ${line} ${x(pts.at(-1).t).toFixed(1)},${y(0)}` }))
    nodes.push(svg('polyline', { class: 'line', points: line }))
  }
  chart.replaceChildren(...nodes)
  chart.dataset.points = String(pts.length)
  const current = values.at(-1) ?? 0
  const peak = Math.max(0, ...values)
  chart.setAttribute('aria-label', `${label}: now ${current}, peak ${peak} over the last 2 minutes`)
  return current
}

function renderCharts () {
  text('rate-messages', drawChart('chart-messages', 'messagesPerSec', 'WebSocket messages per second'))
  text('rate-requests', drawChart('chart-requests', 'requestsPerSec', 'HTTP requests per second'))
}

void connect()
