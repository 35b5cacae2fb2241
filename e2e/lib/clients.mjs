// Client helpers: real pusher-js / laravel-echo / pusher (server SDK) clients
// pointed at a gateway, a raw `ws` client for frame-level checks, and bounded
// wait helpers so that no test can hang.
import Pusher from 'pusher-js';
import Echo from 'laravel-echo';
import PusherServer from 'pusher';
import WebSocket from 'ws';

export { Pusher, Echo, PusherServer, WebSocket };

/** pusher-js client options for a gateway (plain ws, no cluster lookup). */
export function pusherOptions(gw, extra = {}) {
  return {
    cluster: '', // pusher-js 8 insists on a cluster option; wsHost overrides the host it implies
    wsHost: gw.host,
    wsPort: gw.port,
    wssPort: gw.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    ...(gw.prefix ? { wsPath: gw.prefix } : {}), // REVERB_SERVER_PATH
    ...extra,
  };
}

/** A pusher-js client connected (asynchronously) to the gateway. */
export function makePusherClient(gw, { key = gw.key, ...extra } = {}) {
  return new Pusher(key, pusherOptions(gw, extra));
}

/**
 * A laravel-echo instance with the 'reverb' broadcaster. In Node there is no
 * window.Pusher, so the Pusher class is passed through the `Pusher` option
 * (laravel-echo's PusherConnector does `new options.Pusher(options.key, options)`).
 */
export function makeEcho(gw, { key = gw.key, ...extra } = {}) {
  return new Echo({
    broadcaster: 'reverb',
    key,
    wsHost: gw.host,
    wsPort: gw.port,
    wssPort: gw.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    ...(gw.prefix ? { wsPath: gw.prefix } : {}), // REVERB_SERVER_PATH
    Pusher,
    ...extra,
  });
}

/** The `pusher` server SDK pointed at the gateway's HTTP API. */
export function makeServerSdk(gw, { secret = gw.secret, key = gw.key, appId = gw.appId, encryptionMasterKeyBase64 } = {}) {
  return new PusherServer({
    appId,
    key,
    secret,
    host: gw.host,
    // The SDK has no path option; a REVERB_SERVER_PATH prefix goes in the
    // base URL, so that it signs /apps/{id}/... without it, as
    // pusher-http-php does with its 'path' option.
    port: `${gw.port}${gw.prefix ?? ''}`,
    useTLS: false,
    timeout: 10_000,
    ...(encryptionMasterKeyBase64 ? { encryptionMasterKeyBase64 } : {}),
  });
}

/** Rejects with `message` if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${typeof message === 'function' ? message() : message}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Collects items (events, messages, states) and lets a test wait, bounded,
 * until a condition over everything collected so far holds.
 */
export class Inbox {
  constructor() {
    this.items = [];
    this.waiters = new Set();
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) w.check();
  }

  /** Waits until `pred(items)` is truthy; resolves with its value. */
  waitFor(pred, ms, describe) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          let v;
          try {
            v = pred(this.items);
          } catch (err) {
            cleanup();
            reject(err);
            return;
          }
          if (v) {
            cleanup();
            resolve(v);
          }
        },
      };
      const timer = setTimeout(() => {
        cleanup();
        const what = typeof describe === 'function' ? describe(this.items) : describe;
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(w);
      };
      this.waiters.add(w);
      w.check();
    });
  }

  /** Waits until at least `n` items have arrived; resolves with the items. */
  waitForCount(n, ms, what = 'items') {
    return this.waitFor((items) => items.length >= n && items, ms, (items) => `${n} ${what} (got ${items.length})`);
  }
}

/**
 * Records every connection state of a pusher-js client, starting with the
 * current one.
 */
export function recordStates(pusher) {
  const states = new Inbox();
  states.push(pusher.connection.state);
  pusher.connection.bind('state_change', ({ current }) => states.push(current));
  return states;
}

/** Waits until the pusher-js connection is in `state`. */
export function waitForState(pusher, state, ms = 10_000) {
  if (pusher.connection.state === state) return Promise.resolve(state);
  const seen = [pusher.connection.state];
  let onChange;
  const p = new Promise((resolve) => {
    onChange = ({ current }) => {
      seen.push(current);
      if (current === state) resolve(state);
    };
    pusher.connection.bind('state_change', onChange);
  });
  return withTimeout(p, ms, () => `pusher-js state "${state}" (states seen: ${seen.join(' -> ')})`).finally(() => {
    pusher.connection.unbind('state_change', onChange);
  });
}

/** Waits for pusher:subscription_succeeded on a pusher-js channel. */
export function waitForSubscribed(channel, ms = 10_000) {
  if (channel.subscribed) return Promise.resolve(channel);
  let ok;
  let fail;
  const p = new Promise((resolve, reject) => {
    ok = () => resolve(channel);
    fail = (status) => reject(new Error(`subscription to ${channel.name} failed: ${JSON.stringify(status)}`));
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', fail);
  });
  return withTimeout(p, ms, `subscription_succeeded on "${channel.name}"`).finally(() => {
    channel.unbind('pusher:subscription_succeeded', ok);
    channel.unbind('pusher:subscription_error', fail);
  });
}

/** Connects a pusher-js client and subscribes it to the given channels. */
export async function connectAndSubscribe(gw, channelNames, ms = 10_000) {
  const client = makePusherClient(gw);
  try {
    await waitForState(client, 'connected', ms);
    const channels = channelNames.map((n) => client.subscribe(n));
    await Promise.all(channels.map((c) => waitForSubscribed(c, ms)));
    return { client, channels };
  } catch (err) {
    client.disconnect();
    throw err;
  }
}

/** Disconnects pusher-js clients / Echo instances, ignoring errors. */
export function closeAll(...clients) {
  for (const c of clients.flat()) {
    if (!c) continue;
    try {
      c.disconnect();
    } catch {
      /* already closed */
    }
  }
}

/**
 * A raw WebSocket (the `ws` package) with an inbox of received messages and
 * a promise of the close event, for frame-level protocol checks.
 */
export class RawClient {
  constructor(url, opts = {}) {
    this.url = url;
    this.ws = new WebSocket(url, { handshakeTimeout: 5000, ...opts });
    this.messages = new Inbox(); // {data: parsed JSON or null, raw: string, isBinary}
    this.errors = [];
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
      this.ws.once('error', reject);
    });
    this.opened.catch(() => {}); // observed via waitOpen()
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.ws.on('error', (err) => this.errors.push(err));
    this.ws.on('message', (buf, isBinary) => {
      const raw = buf.toString();
      let data = null;
      try {
        data = JSON.parse(raw);
      } catch {
        /* not JSON */
      }
      this.messages.push({ data, raw, isBinary });
    });
  }

  waitOpen(ms = 5000) {
    return withTimeout(this.opened, ms, `WebSocket open to ${this.url}`);
  }

  waitClose(ms = 5000) {
    return withTimeout(this.closed, ms, () => `close of ${this.url} (messages so far: ${this.messages.items.map((m) => m.raw).join(' | ')})`);
  }

  /** Waits for the n-th (1-based) message received; resolves with it. */
  async nth(n, ms = 5000) {
    const items = await this.messages.waitForCount(n, ms, 'messages');
    return items[n - 1];
  }

  /** Waits for the first message whose parsed JSON satisfies pred, received after index `from`. */
  async waitForMessage(pred, ms = 5000, what = 'a matching message', from = 0) {
    return this.messages.waitFor(
      (items) => items.slice(from).find((m) => m.data && pred(m.data)),
      ms,
      (items) => `${what} (received: ${items.map((m) => m.raw).join(' | ') || 'nothing'})`,
    );
  }

  /** Waits for pusher:connection_established and returns its parsed data. */
  async established(ms = 5000) {
    const m = await this.waitForMessage((d) => d.event === 'pusher:connection_established', ms, 'pusher:connection_established');
    return typeof m.data.data === 'string' ? JSON.parse(m.data.data) : m.data.data;
  }

  send(msg) {
    this.ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  close() {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    try {
      this.ws.terminate();
    } catch {
      /* ignore */
    }
  }
}

/** Parses a Pusher event's `data` (a JSON string on the wire, usually). */
export function parseData(data) {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}
