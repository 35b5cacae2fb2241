// A small live line chart on a canvas: the last five minutes of one rate,
// one point a second. Hand-written rather than a charting library: four
// sparkline-sized series need about a hundred lines, nothing to vendor or
// keep up to date, and nothing that could need an inline style.

import { rate, clockSeconds } from './format.js';

const WINDOW_MS = 5 * 60 * 1000;
// Until five minutes of data have come, the axis spans what there is, but
// at least a minute, so a page just opened shows a line, not a dot.
const MIN_SPAN_MS = 60 * 1000;
// A longer silence than this (the stream was away) breaks the line
// instead of drawing a slope across the gap.
const GAP_MS = 3500;
const TOP = 16; // room for the scale's label
const BOTTOM = 4;

/** The smallest of 1, 2, 2.5, 5 × 10^k that is at least v (and at least 1). */
function niceMax(v) {
  if (!(v > 1)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export class Chart {
  /**
   * figure holds a figcaption (.chart-name, .chart-now) and a canvas;
   * color names the CSS custom property of the line's colour.
   */
  constructor(figure, color) {
    this.figure = figure;
    this.canvas = figure.querySelector('canvas');
    this.nowEl = figure.querySelector('.chart-now');
    this.name = figure.querySelector('.chart-name').textContent;
    this.color = color;
    this.points = []; // {t, v}, oldest first, t in server milliseconds
    this.hoverX = null;
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(this.canvas);
    this.canvas.addEventListener('pointermove', (e) => { this.hoverX = e.offsetX; this.draw(); });
    this.canvas.addEventListener('pointerleave', () => { this.hoverX = null; this.draw(); });
    this.describe();
  }

  push(t, v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return;
    const last = this.points[this.points.length - 1];
    if (last && t <= last.t) return; // a repeat after a reconnect
    this.points.push({ t, v });
    const from = t - WINDOW_MS;
    let drop = 0;
    while (drop < this.points.length && this.points[drop].t < from) drop++;
    if (drop) this.points.splice(0, drop);
    this.describe();
    if (!document.hidden) this.draw();
  }

  reset() {
    this.points = [];
    this.describe();
    this.draw();
  }

  peak() {
    let m = 0;
    for (const p of this.points) if (p.v > m) m = p.v;
    return m;
  }

  describe() {
    const last = this.points[this.points.length - 1];
    if (!last) {
      this.nowEl.textContent = '';
      this.canvas.setAttribute('aria-label', `${this.name}: no data yet`);
      return;
    }
    const peak = this.peak();
    this.nowEl.textContent = `${rate(last.v)} now · peak ${rate(peak)}`;
    this.canvas.setAttribute('aria-label', `${this.name}: ${rate(last.v)} now, peak ${rate(peak)} over the last 5 minutes`);
  }

  draw() {
    const c = this.canvas;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    const dpr = window.devicePixelRatio || 1;
    const pw = Math.round(w * dpr);
    const ph = Math.round(hgt * dpr);
    if (c.width !== pw || c.height !== ph) {
      c.width = pw;
      c.height = ph;
    }
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);

    const line = cssVar(this.color) || '#4f46e5';
    const grid = cssVar('--chart-grid') || '#e5e7eb';
    const text = cssVar('--chart-text') || '#6b7280';
    const font = `11px ${cssVar('--font-sans') || 'system-ui, sans-serif'}`;

    const last = this.points[this.points.length - 1];
    const end = last ? last.t : Date.now();
    const first = this.points[0];
    const span = first ? Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, end - first.t)) : MIN_SPAN_MS;
    const start = end - span;
    const max = niceMax(this.peak());
    const plotH = hgt - TOP - BOTTOM;
    const x = (t) => ((t - start) / span) * w;
    const y = (v) => TOP + (1 - v / max) * plotH;

    // Grid: the baseline, half and the top, labelled with the scale.
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.beginPath();
    for (const f of [0, 0.5, 1]) {
      const gy = Math.round(y(max * f)) + 0.5;
      ctx.moveTo(0, gy);
      ctx.lineTo(w, gy);
    }
    ctx.stroke();
    ctx.fillStyle = text;
    ctx.font = font;
    ctx.textBaseline = 'bottom';
    ctx.textAlign = 'left';
    ctx.fillText(rate(max), 2, TOP - 2);
    ctx.textAlign = 'right';
    ctx.fillText(span >= WINDOW_MS ? 'last 5 min' : `last ${Math.round(span / 60000)} min`, w - 2, TOP - 2);

    if (!this.points.length) return;

    // The runs of points with no gap, each filled below and stroked.
    const runs = [];
    let run = [];
    for (const p of this.points) {
      if (run.length && p.t - run[run.length - 1].t > GAP_MS) {
        runs.push(run);
        run = [];
      }
      run.push(p);
    }
    runs.push(run);
    for (const r of runs) {
      ctx.beginPath();
      r.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.strokeStyle = line;
      ctx.lineWidth = 1.5;
      ctx.lineJoin = 'round';
      ctx.stroke();
      ctx.lineTo(x(r[r.length - 1].t), y(0));
      ctx.lineTo(x(r[0].t), y(0));
      ctx.closePath();
      ctx.globalAlpha = 0.14;
      ctx.fillStyle = line;
      ctx.fill();
      ctx.globalAlpha = 1;
    }

    // The point under the pointer, with its time and value.
    if (this.hoverX !== null) {
      const t = start + (this.hoverX / w) * span;
      let best = null;
      for (const p of this.points) if (!best || Math.abs(p.t - t) < Math.abs(best.t - t)) best = p;
      if (best && Math.abs(x(best.t) - this.hoverX) < 20) {
        const px = x(best.t);
        const py = y(best.v);
        ctx.strokeStyle = text;
        ctx.globalAlpha = 0.5;
        ctx.beginPath();
        ctx.moveTo(Math.round(px) + 0.5, TOP);
        ctx.lineTo(Math.round(px) + 0.5, hgt - BOTTOM);
        ctx.stroke();
        ctx.globalAlpha = 1;
        ctx.fillStyle = line;
        ctx.beginPath();
        ctx.arc(px, py, 3, 0, 2 * Math.PI);
        ctx.fill();
        const label = `${clockSeconds(best.t)}  ${rate(best.v)}`;
        ctx.font = font;
        ctx.textBaseline = 'bottom';
        ctx.textAlign = px > w / 2 ? 'right' : 'left';
        ctx.fillStyle = text;
        ctx.fillText(label, px + (px > w / 2 ? -6 : 6), TOP - 2 + 14);
      }
    }
  }
}
