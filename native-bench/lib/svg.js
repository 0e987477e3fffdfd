// Hand-written SVG bar charts for native-bench/results (no dependency): grouped bars, one colour per
// target (same colour for the same target in every chart), min–max whiskers, value labels, a legend.
const COLORS = {
  direct: '#9e9e9e', ferry: '#1f77b4', 'ferry-ws': '#1f77b4', 'ferry-mux': '#0b3d91', ferry1: '#6baed6', ferry2: '#0b3d91', nginx: '#2ca02c', nginx64: '#98df8a',
  haproxy: '#ff7f0e', pushpin: '#9467bd',
}
const FALLBACK = ['#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f']

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')
const short = (v, decimals) => {
  if (!Number.isFinite(v)) return ''
  if (v === 0) return '0'
  if (decimals !== undefined) return v.toFixed(decimals)
  if (v >= 1e6) return `${(v / 1e6).toFixed(v >= 1e7 ? 1 : 2)}M`
  if (v >= 1e4) return `${(v / 1e3).toFixed(v >= 1e5 ? 0 : 1)}k`
  if (v >= 1e3) return `${(v / 1e3).toFixed(2)}k`
  return v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)
}
function niceMax (v) {
  if (!(v > 0)) return 1
  const e = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * e >= v) return m * e
  return 10 * e
}

/**
 * groups: [{ label, bars: [{ label, key, value, min?, max?, note? }] }]; a bar whose value is not a number
 * is drawn as its `note` (e.g. "n/a") instead.
 */
export function barChart ({ title, unit, groups, decimals, width = 960, height = 420 }) {
  const keys = []
  const labels = new Map()
  for (const g of groups) for (const b of g.bars) if (!keys.includes(b.key)) { keys.push(b.key); labels.set(b.key, b.label) }
  const color = (k) => COLORS[k] ?? FALLBACK[keys.indexOf(k) % FALLBACK.length]
  const top = 70; const bottom = 50; const left = 70; const right = 20
  const plotW = width - left - right; const plotH = height - top - bottom
  const vmax = niceMax(Math.max(0, ...groups.flatMap((g) => g.bars.flatMap((b) => [b.value, b.max].filter(Number.isFinite)))))
  const y = (v) => top + plotH - (v / vmax) * plotH
  const out = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`)
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`)
  out.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`)
  // legend
  let lx = left
  for (const k of keys) {
    out.push(`<rect x="${lx}" y="36" width="12" height="12" fill="${color(k)}"/><text x="${lx + 16}" y="46">${esc(labels.get(k))}</text>`)
    lx += 28 + 7 * labels.get(k).length
  }
  // axis and grid
  for (let i = 0; i <= 5; i++) {
    const v = (vmax / 5) * i
    out.push(`<line x1="${left}" x2="${width - right}" y1="${y(v)}" y2="${y(v)}" stroke="#e0e0e0"/>`)
    out.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end" fill="#555">${esc(short(v, decimals))}</text>`)
  }
  out.push(`<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${top + plotH / 2})" text-anchor="middle" fill="#555">${esc(unit)}</text>`)
  out.push(`<line x1="${left}" x2="${width - right}" y1="${y(0)}" y2="${y(0)}" stroke="#333"/>`)
  // bars
  const gw = plotW / groups.length
  groups.forEach((g, gi) => {
    const n = g.bars.length
    const bw = Math.min(56, (gw * 0.8) / Math.max(1, n))
    const x0 = left + gi * gw + (gw - bw * n) / 2
    g.bars.forEach((b, bi) => {
      const x = x0 + bi * bw
      if (!Number.isFinite(b.value)) {
        out.push(`<text x="${x + bw / 2}" y="${y(0) - 6}" text-anchor="middle" fill="#888" font-size="11">${esc(b.note ?? '—')}</text>`)
        return
      }
      out.push(`<rect x="${x + 2}" y="${y(b.value)}" width="${bw - 4}" height="${Math.max(0, y(0) - y(b.value))}" fill="${color(b.key)}"><title>${esc(`${b.label}: ${short(b.value, decimals)} ${unit}${Number.isFinite(b.min) ? ` (${short(b.min, decimals)}–${short(b.max, decimals)})` : ''}`)}</title></rect>`)
      if (Number.isFinite(b.min) && Number.isFinite(b.max) && b.max > b.min) {
        const cx = x + bw / 2
        out.push(`<line x1="${cx}" x2="${cx}" y1="${y(b.min)}" y2="${y(b.max)}" stroke="#222"/><line x1="${cx - 5}" x2="${cx + 5}" y1="${y(b.min)}" y2="${y(b.min)}" stroke="#222"/><line x1="${cx - 5}" x2="${cx + 5}" y1="${y(b.max)}" y2="${y(b.max)}" stroke="#222"/>`)
      }
      const labelY = Math.min(y(b.value), Number.isFinite(b.max) ? y(b.max) : y(b.value)) - 5
      out.push(`<text x="${x + bw / 2}" y="${labelY}" text-anchor="middle" font-size="10">${esc(short(b.value, decimals))}</text>`)
    })
    out.push(`<text x="${left + gi * gw + gw / 2}" y="${y(0) + 20}" text-anchor="middle">${esc(g.label)}</text>`)
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}

/**
 * A line chart over time (x: seconds): one polyline per series, step markers along the x axis (a
 * triangle, or a cross with `shape: 'x'`), dashed reference lines, a legend line.
 *   series:   [{ label, title?, color, dash?, points: [{ x, y }], markers?: [{ x, title, shape? }] }]
 *   refLines: [{ y, color, label }] (drawn only when below the top of the axis)
 *   note:     text after the legend (what the markers mean)
 *   firstOnTop: paint the first series last (on top of the others where they overlap)
 */
export function lineChart ({ title, xLabel, yLabel, series, xmin, xmax, refLines = [], note, firstOnTop = false, width = 960, height = 420 }) {
  const fmtInt = (n) => Number(n).toLocaleString('en-US')
  const left = 70; const right = 20; const bottom = 55
  // The legend wraps onto more rows (18 px each) when it does not fit the width; the plot starts below it.
  const legend = []
  let lx = left
  let row = 0
  for (const s of series) {
    const w = 44 + 6.6 * s.label.length
    if (lx > left && lx + w - 20 > width - right) { row++; lx = left }
    legend.push({ s, x: lx, y: 42 + 18 * row })
    lx += w
  }
  const top = 70 + 18 * row
  const plotW = width - left - right; const plotH = height - top - bottom
  const vmax = niceMax(Math.max(1, ...series.flatMap((s) => s.points.map((p) => p.y))))
  const x = (s) => left + (s - xmin) / (xmax - xmin) * plotW
  const y = (v) => top + plotH - v / vmax * plotH
  const out = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`)
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`)
  out.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`)
  for (const { s, x: sx, y: sy } of legend) {
    out.push(`<line x1="${sx}" x2="${sx + 18}" y1="${sy}" y2="${sy}" stroke="${s.color}" stroke-width="2.5"${s.dash !== undefined ? ` stroke-dasharray="${s.dash}"` : ''}/><text x="${sx + 24}" y="${sy + 4}">${esc(s.label)}</text>`)
  }
  if (note !== undefined) out.push(`<text x="${lx}" y="${42 + 18 * row + 4}" fill="#555">${esc(note)}</text>`)
  for (let i = 0; i <= 5; i++) {
    const v = vmax / 5 * i
    out.push(`<line x1="${left}" x2="${width - right}" y1="${y(v)}" y2="${y(v)}" stroke="#e0e0e0"/>`)
    out.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end" fill="#555">${fmtInt(Math.round(v))}</text>`)
  }
  const step = (xmax - xmin) > 60 ? 10 : 5
  for (let s = Math.ceil(xmin / step) * step; s <= xmax; s += step) {
    out.push(`<line x1="${x(s)}" x2="${x(s)}" y1="${y(0)}" y2="${y(0) + 5}" stroke="#333"/><text x="${x(s)}" y="${y(0) + 18}" text-anchor="middle" fill="#555">${s}</text>`)
  }
  out.push(`<line x1="${left}" x2="${width - right}" y1="${y(0)}" y2="${y(0)}" stroke="#333"/><line x1="${left}" x2="${left}" y1="${top}" y2="${y(0)}" stroke="#333"/>`)
  out.push(`<text x="${left + plotW / 2}" y="${height - 12}" text-anchor="middle" fill="#555">${esc(xLabel)}</text>`)
  out.push(`<text x="18" y="${top + plotH / 2}" transform="rotate(-90 18 ${top + plotH / 2})" text-anchor="middle" fill="#555">${esc(yLabel)}</text>`)
  for (const r of refLines) {
    if (!(r.y < vmax)) continue
    out.push(`<line x1="${left}" x2="${width - right}" y1="${y(r.y)}" y2="${y(r.y)}" stroke="${r.color}" stroke-dasharray="5,4" opacity="0.6"/>`)
    out.push(`<text x="${width - right - 4}" y="${y(r.y) - 5}" text-anchor="end" fill="${r.color}" font-size="11">${esc(r.label)}</text>`)
  }
  // Painted in order, so the last is on top; firstOnTop paints the first series last.
  for (const s of firstOnTop ? [...series].reverse() : series) {
    const pts = s.points.map((p) => `${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(' ')
    out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${s.dash !== undefined ? ` stroke-dasharray="${s.dash}"` : ''} stroke-linejoin="round" points="${pts}"><title>${esc(s.title ?? s.label)}</title></polyline>`)
    for (const mk of s.markers ?? []) {
      const px = x(mk.x)
      if (mk.shape === 'x') out.push(`<path d="M${(px - 5).toFixed(1)},${(y(0) - 11).toFixed(1)} l10,10 m0,-10 l-10,10" stroke="${s.color}" stroke-width="2.5" opacity="0.8"><title>${esc(mk.title)}</title></path>`)
      else out.push(`<path d="M${px.toFixed(1)},${(y(0) - 10).toFixed(1)} l5,9 h-10 z" fill="${s.color}" opacity="0.8"><title>${esc(mk.title)}</title></path>`)
    }
  }
  out.push('</svg>')
  return out.join('\n') + '\n'
}
