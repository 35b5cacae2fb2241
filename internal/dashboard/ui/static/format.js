// Small helpers for building the DOM and formatting numbers and times.
// Text always goes in through textContent, never as HTML, so nothing a
// client sends (a channel name, an event's payload) can become markup.

/** h('td', {className: 'x', title: 't'}, 'text', child) */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'className' || k === 'textContent') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

/** A count: 1,234 (and 1.2M past a million). */
export function count(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
  return Math.abs(n) >= 1e6 ? compact.format(n) : integer.format(n);
}

/** A rate: one decimal below 10, whole numbers above. */
export function rate(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
  if (Math.abs(n) >= 1e6) return compact.format(n);
  return Math.abs(n) < 10 ? oneDecimal.format(n) : integer.format(n);
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

/** 14:03:07.250, local time. */
export function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** 14:03:07, local time. */
export function clockSeconds(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
