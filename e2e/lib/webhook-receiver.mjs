// A webhook receiver, as an app's server would be: a node:http server that
// checks every POST with the `pusher` SDK's own validator
// (pusher.webhook({headers, rawBody}) → isValid(), getEvents(), getTime()),
// records everything, and answers 200, or 500 while a test tells it to fail.
//
// Each receiver URL names an app and a label: http://HOST:port/<app>/<label>.
// The app (by name) picks the key and secret to validate with; the label
// tells a test's receivers apart (one app may have several webhooks).
import http from 'node:http';
import { Inbox, PusherServer } from './clients.mjs';
import { HOST } from './gateway.mjs';

const MAX_BODY = 4 * 1024 * 1024;

function readRaw(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (d) => {
      size += d.length;
      if (size > MAX_BODY) req.destroy(new Error('webhook body too large'));
      else chunks.push(d);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

export class WebhookReceiver {
  /** @param apps [{name, appId, key, secret}]: the apps whose webhooks come here */
  constructor(apps = []) {
    this.apps = new Map();
    for (const a of apps) this.addApp(a);
    /** Every request, accepted or not: {n, at, app, label, method, headers, rawBody, status, valid, validWrongSecret, validWrongKey, time, events, error}. */
    this.requests = [];
    /** Every event of every request answered 200: {app, label, at, req, time_ms, ...the event's fields}. */
    this.events = new Inbox();
    /** Labels whose requests are answered 500 (a receiver that is down). */
    this.failing = new Set();
  }

  /** Adds an app to validate for: {name, appId, key, secret}. */
  addApp({ name, appId, key, secret }) {
    const sdk = (k, s) => new PusherServer({ appId, key: k, secret: s, host: HOST, useTLS: false });
    this.apps.set(name, {
      name, appId, key, secret,
      sdk: sdk(key, secret),
      wrongSecret: sdk(key, `${secret}-not`),
      wrongKey: sdk(`${key}-not`, secret),
    });
  }

  async start() {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        if (!res.headersSent) res.writeHead(500);
        res.end(String(err?.message ?? err));
      });
    });
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, HOST, resolve);
    });
    this.port = this.server.address().port;
    return this;
  }

  async close() {
    if (!this.server) return;
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** The URL to configure for app `app`'s webhook labelled `label`. */
  url(app, label) { return `http://${HOST}:${this.port}/${encodeURIComponent(app)}/${encodeURIComponent(label)}`; }

  async handle(req, res) {
    const rawBody = (await readRaw(req)).toString('utf8');
    const [, appName, label] = new URL(req.url, `http://${HOST}`).pathname.split('/').map(decodeURIComponent);
    const r = { n: this.requests.length, at: Date.now(), app: appName, label, method: req.method, headers: req.headers, rawBody };
    this.requests.push(r);
    const answer = (status) => {
      r.status = status;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(status === 200 ? '{}' : JSON.stringify({ error: r.error ?? 'failing on purpose' }));
    };
    const app = this.apps.get(appName);
    if (!app || req.method !== 'POST') {
      r.error = app ? `method ${req.method}` : `no app named ${appName}`;
      return answer(404);
    }
    // The SDK wants the headers with lower-case names, which is what node gives.
    const hook = app.sdk.webhook({ headers: req.headers, rawBody });
    r.valid = hook.isValid();
    r.validWrongSecret = app.wrongSecret.webhook({ headers: req.headers, rawBody }).isValid();
    r.validWrongKey = app.wrongKey.webhook({ headers: req.headers, rawBody }).isValid();
    if (!r.valid) {
      r.error = 'invalid webhook (the pusher SDK validator said so)';
      return answer(401);
    }
    r.time = hook.getTime();
    r.events = hook.getEvents();
    if (this.failing.has(label)) return answer(500);
    answer(200);
    for (const e of r.events) this.events.push({ ...e, app: appName, label, at: r.at, req: r.n, time_ms: hook.getData().time_ms });
  }

  /** The events delivered (answered 200) to `label`, optionally only those on `channel`, in arrival order. */
  delivered(label, channel) {
    return this.events.items.filter((e) => e.label === label && (channel === undefined || e.channel === channel));
  }

  /** The requests made to `label` (answered or not). */
  requestsTo(label) { return this.requests.filter((r) => r.label === label); }

  /**
   * Waits until `pred(events delivered to label)` is truthy, for at most
   * `ms`; resolves with its value.
   */
  waitDelivered(label, pred, ms, what) {
    return this.events.waitFor(
      () => pred(this.delivered(label)),
      ms,
      () => `${what} at receiver "${label}" (delivered there: ${JSON.stringify(this.delivered(label).map(brief))})`,
    );
  }

  /** Waits for an event named `name` on `channel` delivered to `label`; resolves with it. */
  waitEvent(label, channel, name, ms = 10_000, match = () => true) {
    return this.waitDelivered(label, (evs) => evs.find((e) => e.channel === channel && e.name === name && match(e)), ms,
      `"${name}" on ${channel}`);
  }

  /** A summary of what arrived, for a failing test's output. */
  dump(max = 60) {
    const lines = this.requests.slice(-max).map((r) => `#${r.n} +${r.at % 100000}ms ${r.app}/${r.label} ${r.status} valid=${r.valid} ${r.error ?? ''} ${r.rawBody.slice(0, 300)}`);
    return `webhook receiver: ${this.requests.length} requests, ${this.events.items.length} events delivered; last ${lines.length}:\n${lines.join('\n')}`;
  }
}

/** An event without the receiver's bookkeeping: Pusher's fields only. */
export function pusherFields(e) {
  const { app, label, at, req, time_ms: _t, ...fields } = e;
  return fields;
}

/** A short form of an event for messages: name channel [user_id|event data|count]. */
export function brief(e) {
  return [e.name, e.channel, e.user_id, e.event, e.data, e.subscription_count].filter((x) => x !== undefined).join(' ');
}

export async function startWebhookReceiver(apps) {
  return new WebhookReceiver(apps).start();
}
