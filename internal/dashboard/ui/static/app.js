// The dashboard page: sign-in, the app picker, and one app's overview
// (tiles, charts, recent errors) and debug console. Routes live in the
// URL's fragment (#/apps/<id>, #/apps/<id>/console), so the page works
// under any dashboard path and REVERB_SERVER_PATH prefix.

import * as api from './api.js';
import { Chart } from './chart.js';
import { DebugConsole } from './console.js';
import { h, count, rate, clockSeconds } from './format.js';

const $ = (id) => document.getElementById(id);
const RECENT_EVERY_MS = 5000;
const STALE_AFTER_MS = 3500; // stats come every second

const state = {
  apps: null, // [{id, key}] once signed in
  app: null, // the open app's id
  tab: null, // 'overview' or 'console'
  stats: null, // api.Stream
  consoleStream: null, // api.Stream, only while the console is shown
  recentTimer: 0,
  staleTimer: 0,
};

let charts = null;
let debugConsole = null;

// ---- views ----

const VIEWS = ['view-signin', 'view-apps', 'view-app'];

function show(view) {
  $('loading').hidden = true;
  for (const v of VIEWS) $(v).hidden = v !== view;
  $('signout').hidden = view === 'view-signin';
  // The switch is for moving between apps; the picker view is the list.
  $('app-switch').hidden = view !== 'view-app' || !state.apps || state.apps.length < 2;
  $('live').hidden = view !== 'view-app';
  document.body.dataset.view = view;
}

function setLive(s) {
  const el = $('live');
  el.dataset.state = s;
  $('live-text').textContent = { live: 'Live', connecting: 'Connecting…', retrying: 'Reconnecting…', stale: 'Waiting for data…' }[s] || 'Offline';
}

// ---- sign-in ----

function signinMethod() {
  return document.querySelector('input[name="method"]:checked').value;
}

function showSignin(message) {
  closeApp();
  state.apps = null;
  show('view-signin');
  document.title = 'Sign in · Resound';
  const err = $('signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  (signinMethod() === 'token' ? $('token') : $('app-key')).focus();
}

function wireSignin() {
  const sync = () => {
    const token = signinMethod() === 'token';
    $('fields-token').hidden = !token;
    $('fields-app').hidden = token;
  };
  for (const r of document.querySelectorAll('input[name="method"]')) r.addEventListener('change', sync);
  sync();

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const err = $('signin-error');
    let creds;
    if (signinMethod() === 'token') {
      const token = $('token').value.trim();
      if (!token) return fail('Enter the dashboard token.', $('token'));
      creds = { token };
    } else {
      const key = $('app-key').value.trim();
      const secret = $('app-secret').value;
      if (!key) return fail('Enter the app key.', $('app-key'));
      if (!secret) return fail('Enter the app secret.', $('app-secret'));
      creds = { app_key: key, app_secret: secret };
    }
    const button = $('signin-submit');
    button.disabled = true;
    button.textContent = 'Signing in…';
    err.hidden = true;
    try {
      state.apps = await api.login(creds);
      $('token').value = '';
      $('app-secret').value = '';
      fillAppSwitch();
      if (!appRoute() && state.apps.length === 1) {
        location.hash = appHash(state.apps[0].id, 'overview');
      } else {
        route();
      }
    } catch (e) {
      const msg = e instanceof api.Unauthorized
        ? (e.message && e.message !== 'Not signed in' ? e.message : 'Those credentials were not accepted.')
        : `Could not sign in: ${e.message}`;
      fail(msg, signinMethod() === 'token' ? $('token') : $('app-key'));
    } finally {
      button.disabled = false;
      button.textContent = 'Sign in';
    }

    function fail(msg, field) {
      err.textContent = msg;
      err.hidden = false;
      field.focus();
    }
  });

  $('signout').addEventListener('click', async () => {
    try { await api.logout(); } catch { /* signed out anyway */ }
    showSignin('');
  });
}

function sessionEnded() {
  showSignin('Your session ended. Sign in again.');
}

// ---- routing ----

function appHash(id, tab) {
  return `#/apps/${encodeURIComponent(id)}${tab === 'console' ? '/console' : ''}`;
}

function appRoute() {
  const m = /^#\/apps\/([^/]+)(\/console)?\/?$/.exec(location.hash);
  if (!m) return null;
  let id;
  try { id = decodeURIComponent(m[1]); } catch { return null; }
  return { id, tab: m[2] ? 'console' : 'overview' };
}

function route() {
  if (!state.apps) return showSignin('');
  const r = appRoute();
  if (r && state.apps.some((a) => a.id === r.id)) return openApp(r.id, r.tab);
  closeApp();
  showApps(r ? `You cannot see an app "${r.id}" with this sign-in.` : '');
}

// ---- the app picker ----

function fillAppSwitch() {
  const sel = $('app-select');
  sel.replaceChildren(...state.apps.map((a) => h('option', { value: a.id }, `${a.id} (${a.key})`)));
  if (state.app) sel.value = state.app;
}

function showApps(message) {
  show('view-apps');
  document.title = 'Apps · Resound';
  const list = $('app-list');
  const items = state.apps.map((a) => h('li', null,
    h('a', { className: 'app-card card', href: appHash(a.id, 'overview') },
      h('span', { className: 'app-card-id' }, a.id),
      h('span', { className: 'app-card-key mono' }, `key ${a.key}`))));
  if (message) items.unshift(h('li', { className: 'form-error', role: 'alert' }, message));
  if (!state.apps.length) items.push(h('li', { className: 'empty' }, 'No apps are configured.'));
  list.replaceChildren(...items);
}

// ---- one app ----

function openApp(id, tab) {
  const first = state.app !== id;
  if (first) {
    closeApp();
    state.app = id;
    resetOverview();
    debugConsole.reset();
    state.stats = new api.Stream('api/stats', { app: id }, {
      events: { stats: onStats },
      onState: (s) => {
        if (s !== 'open') setLive(s);
      },
      onUnauthorized: sessionEnded,
    });
    setLive('connecting');
  }
  const app = state.apps.find((a) => a.id === id);
  show('view-app');
  fillAppSwitch();
  $('app-title').textContent = `App ${id}`;
  $('app-meta').textContent = `key ${app.key}`;
  document.title = `${tab === 'console' ? 'Debug console' : 'Overview'} · App ${id} · Resound`;

  state.tab = tab;
  for (const [name, el] of [['overview', $('tab-overview')], ['console', $('tab-console')]]) {
    el.href = appHash(id, name);
    if (name === tab) el.setAttribute('aria-current', 'page');
    else el.removeAttribute('aria-current');
  }
  $('panel-overview').hidden = tab !== 'overview';
  $('panel-console').hidden = tab !== 'console';

  if (tab === 'console') {
    stopRecent();
    // The console is watched only while it is on screen: each process
    // sends entries for an app only while someone watches it.
    if (!state.consoleStream) {
      state.consoleStream = new api.Stream('api/console', { app: id }, {
        events: {
          entry: (e) => debugConsole.add(e),
          dropped: (d) => debugConsole.dropped(d && d.count),
        },
        onState: (s) => debugConsole.setStream(s),
        onUnauthorized: sessionEnded,
      });
    }
  } else {
    closeConsole();
    startRecent();
    // Charts hidden a moment ago have no size until drawn again.
    requestAnimationFrame(() => { for (const c of Object.values(charts)) c.draw(); });
  }
}

function closeConsole() {
  if (state.consoleStream) state.consoleStream.close();
  state.consoleStream = null;
  debugConsole.setStream('');
}

function closeApp() {
  if (state.stats) state.stats.close();
  state.stats = null;
  closeConsole();
  stopRecent();
  clearTimeout(state.staleTimer);
  state.app = null;
  state.tab = null;
}

function resetOverview() {
  for (const id of ['t-connections', 't-channels', 't-subscriptions', 't-presence', 't-in', 't-out', 't-errors', 't-wh-sent', 't-wh-failed', 't-wh-dropped']) {
    $(id).textContent = '–';
  }
  $('t-cluster').textContent = '';
  $('t-wh-rate').textContent = '';
  $('charts-updated').textContent = '';
  for (const c of Object.values(charts)) c.reset();
  $('recent-list').replaceChildren();
  $('recent-empty').hidden = false;
}

function onStats(d) {
  if (!d || (d.app && d.app !== state.app)) return;
  setLive('live');
  clearTimeout(state.staleTimer);
  state.staleTimer = setTimeout(() => setLive('stale'), STALE_AFTER_MS);

  const wh = d.webhooks || {};
  $('t-connections').textContent = count(d.connections);
  const gw = d.gateways ?? 0;
  const wk = d.workers ?? 0;
  $('t-cluster').textContent = `${count(gw)} ${gw === 1 ? 'gateway' : 'gateways'} · ${count(wk)} ${wk === 1 ? 'worker' : 'workers'}`;
  $('t-channels').textContent = count(d.channels);
  $('t-subscriptions').textContent = count(d.subscriptions);
  $('t-presence').textContent = count(d.presence_members);
  $('t-in').textContent = rate(d.messages_in_per_s);
  $('t-out').textContent = rate(d.deliveries_out_per_s);
  $('t-errors').textContent = rate(d.errors_per_s);
  $('tile-errors').classList.toggle('tile-alert', d.errors_per_s > 0);
  $('t-wh-sent').textContent = count(wh.sent);
  $('t-wh-failed').textContent = count(wh.failed);
  $('t-wh-dropped').textContent = count(wh.dropped);
  $('t-wh-failed').classList.toggle('warn', wh.failed > 0);
  $('t-wh-dropped').classList.toggle('bad', wh.dropped > 0);
  $('t-wh-rate').textContent = `${rate(wh.sent_per_s)} sent per second`;

  const t = typeof d.time_ms === 'number' ? d.time_ms : Date.now();
  charts.in.push(t, d.messages_in_per_s);
  charts.out.push(t, d.deliveries_out_per_s);
  charts.webhooks.push(t, wh.sent_per_s);
  charts.errors.push(t, d.errors_per_s);
  $('charts-updated').textContent = `updated ${clockSeconds(t)}`;
}

// ---- recent errors ----

function startRecent() {
  stopRecent();
  const tick = async () => {
    const app = state.app;
    try {
      const entries = await api.recent(app);
      if (app === state.app) renderRecent(entries);
    } catch (e) {
      if (e instanceof api.Unauthorized) return sessionEnded();
    }
    if (app === state.app && state.tab === 'overview') state.recentTimer = setTimeout(tick, RECENT_EVERY_MS);
  };
  tick();
}

function stopRecent() {
  clearTimeout(state.recentTimer);
  state.recentTimer = 0;
}

function renderRecent(entries) {
  const sorted = entries.filter((e) => e && typeof e === 'object')
    .sort((a, b) => (b.time_ms || 0) - (a.time_ms || 0)).slice(0, 50);
  $('recent-empty').hidden = sorted.length > 0;
  $('recent-list').replaceChildren(...sorted.map((e) => {
    const where = [e.channel && `channel ${e.channel}`, e.socket_id && `socket ${e.socket_id}`, e.process && `on ${e.process}`]
      .filter(Boolean).join(' · ');
    return h('li', null,
      h('time', { datetime: new Date(e.time_ms || 0).toISOString() }, clockSeconds(e.time_ms || 0)),
      h('span', { className: 'recent-detail' }, e.detail || e.event || 'error'),
      where ? h('span', { className: 'recent-where muted small' }, where) : null);
  }));
}

// ---- start ----

async function start() {
  charts = {
    in: new Chart($('chart-in'), '--c-in'),
    out: new Chart($('chart-out'), '--c-out'),
    webhooks: new Chart($('chart-webhooks'), '--c-webhooks'),
    errors: new Chart($('chart-errors'), '--c-errors'),
  };
  debugConsole = new DebugConsole();
  wireSignin();
  $('app-select').addEventListener('change', (ev) => {
    location.hash = appHash(ev.target.value, state.tab || 'overview');
  });
  $('recent-refresh').addEventListener('click', () => startRecent());
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && charts) for (const c of Object.values(charts)) c.draw();
  });

  try {
    state.apps = await api.apps();
  } catch (e) {
    return showSignin(e instanceof api.Unauthorized ? '' : `Could not reach the dashboard: ${e.message}`);
  }
  fillAppSwitch();
  if (!location.hash && state.apps.length === 1) location.replace(appHash(state.apps[0].id, 'overview'));
  else route();
}

start();
