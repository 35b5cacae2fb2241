// The dashboard's HTTP API, reached through URLs relative to the page:
// the page sits at the dashboard path (with a trailing slash), under any
// REVERB_SERVER_PATH prefix, so 'api/login' is always the right one.

/** An answer of 401: the session ended, or the credentials are wrong. */
export class Unauthorized extends Error {
  constructor(message) {
    super(message || 'Not signed in');
    this.name = 'Unauthorized';
  }
}

function url(path, params) {
  const u = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(params || {})) u.searchParams.set(k, v);
  return u;
}

async function request(method, path, { body, params } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' }, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(url(path, params), init);
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  const message = data && typeof data.error === 'string' ? data.error : '';
  if (resp.status === 401) throw new Unauthorized(message);
  if (!resp.ok) throw new Error(message || `${method} ${path}: HTTP ${resp.status}`);
  return data;
}

/** Signs in with {token} or {app_key, app_secret}; resolves to the apps. */
export async function login(credentials) {
  const data = await request('POST', 'api/login', { body: credentials });
  return (data && Array.isArray(data.apps)) ? data.apps : [];
}

export function logout() {
  return request('POST', 'api/logout', { body: {} });
}

/** The apps this session may see: [{id, key}]; throws Unauthorized. */
export async function apps() {
  const data = await request('GET', 'api/apps');
  return Array.isArray(data) ? data : [];
}

/** The app's last errors, as console entries. */
export async function recent(app) {
  const data = await request('GET', 'api/recent', { params: { app } });
  return Array.isArray(data) ? data : [];
}

/**
 * A server-sent-event stream that keeps itself open. EventSource
 * reconnects by itself after a network error, but gives up for good on an
 * answer that is not 200 (a 401 after the session ended, a 503): then we
 * ask api/apps whether we are still signed in, and either report
 * onUnauthorized or open the stream again after a backoff.
 *
 * handlers: {events: {name: fn(data)}, onState(state), onUnauthorized()}
 * state is 'connecting', 'open' or 'retrying'.
 */
export class Stream {
  constructor(path, params, handlers) {
    this.url = url(path, params).toString();
    this.handlers = handlers;
    this.source = null;
    this.timer = 0;
    this.backoff = 1000;
    this.closed = false;
    this.open();
  }

  open() {
    if (this.closed) return;
    const source = new EventSource(this.url, { withCredentials: true });
    this.source = source;
    this.state('connecting');
    source.onopen = () => {
      this.backoff = 1000;
      this.state('open');
    };
    for (const [name, fn] of Object.entries(this.handlers.events || {})) {
      source.addEventListener(name, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch { return; }
        fn(data);
      });
    }
    source.onerror = () => {
      if (this.closed || this.source !== source) return;
      if (source.readyState === EventSource.CONNECTING) {
        this.state('retrying');
        return;
      }
      // CLOSED: EventSource will not try again by itself.
      source.close();
      this.source = null;
      this.state('retrying');
      this.recheck();
    };
  }

  async recheck() {
    try {
      await apps();
    } catch (err) {
      if (err instanceof Unauthorized) {
        if (!this.closed && this.handlers.onUnauthorized) this.handlers.onUnauthorized();
        return;
      }
    }
    if (this.closed) return;
    this.timer = setTimeout(() => this.open(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, 15000);
  }

  state(s) {
    if (this.handlers.onState) this.handlers.onState(s);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}
