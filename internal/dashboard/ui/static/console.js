// The debug console: a live table of one app's entries, newest first,
// with filters, pause and clear. It keeps at most CAP rows (the oldest
// go), and renders once per animation frame however fast entries come,
// so a busy app cannot make the page fall behind.

import { h, count, clock } from './format.js';

export const CAP = 1000;

// The kinds the server sends (wire.ConsoleEntry), in the order of the
// filter checkboxes.
export const KINDS = [
  ['connection', 'Connection'],
  ['disconnection', 'Disconnection'],
  ['subscribed', 'Subscribed'],
  ['unsubscribed', 'Unsubscribed'],
  ['api_message', 'API message'],
  ['client_event', 'Client event'],
  ['webhook', 'Webhook'],
  ['error', 'Error'],
];
const LABELS = new Map(KINDS);

export class DebugConsole {
  constructor() {
    const $ = (id) => document.getElementById(id);
    this.tbody = $('console-rows');
    this.emptyEl = $('console-empty');
    this.countEl = $('console-count');
    this.stateEl = $('console-state');
    this.droppedEl = $('console-dropped');
    this.filterEl = $('console-filter');
    this.pauseEl = $('console-pause');
    this.clearEl = $('console-clear');

    this.shown = new Set(KINDS.map(([k]) => k));
    this.text = '';
    this.pending = []; // received, not yet rendered
    this.held = []; // received while paused
    this.heldLost = 0; // held entries pushed out past CAP
    this.paused = false;
    this.frame = 0;
    this.droppedTotal = 0;
    this.visible = 0;
    this.streamState = '';

    const box = $('kind-filters');
    for (const [kind, label] of KINDS) {
      const input = h('input', { type: 'checkbox', id: `kind-${kind}`, value: kind, checked: true });
      input.addEventListener('change', () => {
        if (input.checked) this.shown.add(kind);
        else this.shown.delete(kind);
        this.applyFilter();
      });
      box.append(h('span', { className: 'kind-filter' }, input,
        h('label', { for: `kind-${kind}` }, h('span', { className: `swatch kind-${kind}`, 'aria-hidden': 'true' }), label)));
    }
    this.filterEl.addEventListener('input', () => {
      this.text = this.filterEl.value.trim().toLowerCase();
      this.applyFilter();
    });
    this.pauseEl.addEventListener('click', () => (this.paused ? this.resume() : this.pause()));
    this.clearEl.addEventListener('click', () => this.clear());
    this.update();
  }

  /** One entry from the server. */
  add(entry) {
    if (!entry || typeof entry !== 'object') return;
    // entry.dropped is not counted here: the server sends it on as a
    // "dropped" event before the entry, with what it dropped itself.
    if (this.paused) {
      this.held.push(entry);
      if (this.held.length > CAP) {
        this.held.shift();
        this.heldLost++;
      }
      this.updatePause();
      return;
    }
    this.pending.push(entry);
    if (this.pending.length > CAP) this.pending.splice(0, this.pending.length - CAP);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Entries were left out: by a process over its rate, or by the server for a browser that fell behind. */
  dropped(n) {
    if (!(n > 0)) return;
    this.droppedTotal += n;
    this.droppedEl.textContent = `${count(this.droppedTotal)} ${this.droppedTotal === 1 ? 'entry' : 'entries'} dropped: the console samples under load.`;
    this.droppedEl.hidden = false;
  }

  flush() {
    this.frame = 0;
    const batch = this.pending;
    this.pending = [];
    if (!batch.length) return;
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.append(this.row(batch[i]));
    this.tbody.prepend(frag);
    while (this.tbody.rows.length > CAP) this.tbody.lastElementChild.remove();
    this.recount();
  }

  row(e) {
    const kind = typeof e.kind === 'string' ? e.kind : '';
    const time = typeof e.time_ms === 'number' ? e.time_ms : Date.now();
    const socket = e.socket_id || '';
    const channel = e.channel || '';
    const event = e.event || '';
    let detail = e.detail || '';
    if (e.user_id) detail = detail ? `user ${e.user_id} · ${detail}` : `user ${e.user_id}`;
    const tr = h('tr', { dataset: { kind, text: `${channel}\n${event}\n${socket}`.toLowerCase() } },
      h('td', { className: 'c-time' }, h('time', { datetime: new Date(time).toISOString() }, clock(time))),
      h('td', { className: 'c-kind', title: e.process ? `from ${e.process}` : null },
        h('span', { className: `badge kind-${LABELS.has(kind) ? kind : 'other'}` }, LABELS.get(kind) || kind || '?')),
      h('td', { className: 'c-socket mono' }, socket),
      h('td', { className: 'c-channel mono' }, channel),
      h('td', { className: 'c-event mono' }, event),
      h('td', { className: 'c-detail', title: detail.length > 80 ? detail : null }, detail));
    tr.hidden = !this.matches(tr);
    return tr;
  }

  matches(tr) {
    const kind = tr.dataset.kind;
    if (LABELS.has(kind) && !this.shown.has(kind)) return false;
    return !this.text || tr.dataset.text.includes(this.text);
  }

  applyFilter() {
    for (const tr of this.tbody.rows) tr.hidden = !this.matches(tr);
    this.recount();
  }

  recount() {
    let visible = 0;
    for (const tr of this.tbody.rows) if (!tr.hidden) visible++;
    this.visible = visible;
    this.update();
  }

  pause() {
    this.paused = true;
    this.pauseEl.setAttribute('aria-pressed', 'true');
    this.updatePause();
    this.update();
  }

  resume() {
    this.paused = false;
    this.pauseEl.setAttribute('aria-pressed', 'false');
    this.pauseEl.textContent = 'Pause';
    const held = this.held;
    this.held = [];
    this.heldLost = 0;
    for (const e of held) this.add(e);
    this.update();
  }

  updatePause() {
    if (!this.paused) return;
    const n = this.held.length + this.heldLost;
    this.pauseEl.textContent = n ? `Resume (${count(n)} new)` : 'Resume';
  }

  clear() {
    this.tbody.replaceChildren();
    this.pending = [];
    this.held = [];
    this.heldLost = 0;
    this.droppedTotal = 0;
    this.droppedEl.hidden = true;
    this.droppedEl.textContent = '';
    this.updatePause();
    this.recount();
  }

  /** For another app: empty and running. */
  reset() {
    if (this.paused) this.resume();
    this.clear();
  }

  /** The stream's state: 'connecting', 'open', 'retrying' or ''. */
  setStream(state) {
    this.streamState = state;
    this.update();
  }

  update() {
    const total = this.tbody.rows.length;
    let text = `${count(total)} ${total === 1 ? 'entry' : 'entries'}`;
    if (this.visible !== total) text += ` · ${count(this.visible)} shown`;
    if (total >= CAP) text += ` · the oldest go past ${count(CAP)}`;
    this.countEl.textContent = text;
    let state = '';
    if (this.paused) state = 'Paused: new entries wait until you resume';
    else if (this.streamState === 'open') state = 'Live';
    else if (this.streamState === 'connecting') state = 'Connecting…';
    else if (this.streamState === 'retrying') state = 'Reconnecting…';
    this.stateEl.textContent = state;
    this.stateEl.dataset.state = this.paused ? 'paused' : this.streamState;
    this.emptyEl.hidden = this.visible > 0;
    this.emptyEl.textContent = total
      ? 'No entries match the filters.'
      : 'Waiting for activity… Connect a client or trigger an event through the HTTP API.';
  }
}
