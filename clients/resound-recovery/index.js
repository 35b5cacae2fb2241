// @resound/recovery: channel recovery for pusher-js and laravel-echo on a
// Resound server (docs/recovery.md in the Resound repository).
//
// On an app with recovery, every event a Resound server delivers carries a
// top-level "position" string. This plugin keeps the last one seen per
// channel and, when pusher-js subscribes a channel again (after a
// reconnect), adds it to the pusher:subscribe data. The server then sends
// what the channel missed, in order, and pusher_internal:resumed, or
// pusher_internal:resume_failed when the position is older than its window
// and the app must refetch.
//
// pusher-js 8 has no public hook for any of this, so the plugin holds on to
// three places of its internals that have been stable since pusher-js 4:
//   - pusher.connection.connection.transport, the TransportConnection whose
//     "message" events carry the raw frame ({data: "<json>"}). The decoded
//     event that pusher.connection emits keeps only event, channel, data and
//     user_id (Protocol.decodeMessage), so "position" is never seen there;
//     and pusher-js drops pusher_internal: events it does not know
//     (Channel.handleEvent), so resumed/resume_failed are not either.
//   - pusher.send_event, which Channel.subscribe calls for every
//     pusher:subscribe (public, private, presence, encrypted alike, after
//     authorization), and subscribeAll calls on every "connected".
//   - pusher.unsubscribe, where a channel is left.
// Both methods are wrapped on the instance, not on Pusher.prototype, so
// other Pusher instances are untouched.

/** The channel event emitted when a channel's resume failed: the app must refetch. */
export const REFETCH_EVENT = 'resound:refetch';

/** The channel event emitted when a channel resumed: what it missed has been delivered. */
export const RESUMED_EVENT = 'resound:resumed';

// On the Pusher instance, so that two copies of this package (the ESM and
// the CommonJS build, say) still see each other.
const INSTALLED = Symbol.for('@resound/recovery');

/**
 * Adds channel recovery to a pusher-js Pusher instance, or to the Pusher of
 * a laravel-echo Echo instance (broadcaster 'reverb' or 'pusher').
 *
 * @param {object} target a pusher-js Pusher or a laravel-echo Echo
 * @param {{onRefetch?: (channel: string, info: {reason: string}) => void,
 *          onResumed?: (channel: string, replayed: number) => void}} [options]
 * @returns {{positions(): Record<string, string>, position(channel: string): string | undefined,
 *            forget(channel?: string): void, stop(): void}}
 */
export function withRecovery(target, options) {
  const pusher = pusherOf(target);
  const opts = options || {};
  if (pusher[INSTALLED]) {
    throw new Error('@resound/recovery: withRecovery() is already installed on this Pusher instance; call stop() on its handle first');
  }

  const positions = new Map(); // channel name -> last position seen on it
  let transport = null; // the TransportConnection whose frames we read
  let stopped = false;
  let warned = false;

  function onTransportEvent(eventName, message) {
    if (eventName !== 'message' || !message || typeof message.data !== 'string') return;
    const raw = message.data;
    // Parse again only frames that may matter. In a JSON string a quote is
    // escaped, so '"position"' can only be a key, never a payload's text.
    if (raw.indexOf('"position"') === -1 && raw.indexOf('pusher_internal:resume') === -1) return;
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch (_) {
      return; // pusher-js reports unparseable frames itself
    }
    if (!msg || typeof msg.channel !== 'string') return;
    const name = msg.channel;
    const channel = pusher.channel(name);
    if (!channel) return; // left already: nothing to keep
    if (msg.event === 'pusher_internal:resume_failed') {
      // The app refetches; the channel's next events set a position again.
      positions.delete(name);
      const reason = String(field(msg.data, 'reason') || 'expired');
      report(opts.onRefetch, name, { reason });
      report(() => channel.emit(REFETCH_EVENT, { reason }));
      return;
    }
    if (msg.event === 'pusher_internal:resumed') {
      const replayed = Number(field(msg.data, 'replayed')) || 0;
      report(opts.onResumed, name, replayed);
      report(() => channel.emit(RESUMED_EVENT, { replayed }));
      return;
    }
    if (typeof msg.position === 'string' && msg.position !== '') {
      positions.set(name, msg.position);
    }
  }

  // Runs on every "connected" (after pusher-js's own handler, which sent the
  // subscriptions already; their answers cannot have arrived yet).
  function attach() {
    if (stopped) return;
    const conn = pusher.connection && pusher.connection.connection;
    const t = conn && conn.transport;
    if (t === transport) return;
    detach();
    if (t && typeof t.bind_global === 'function') {
      // A global callback runs before the transport's "message" listeners,
      // so a position is recorded before the app's handler sees the event.
      t.bind_global(onTransportEvent);
      transport = t;
    } else if (!warned && typeof console !== 'undefined') {
      warned = true;
      console.warn('@resound/recovery: cannot reach the raw frames of this pusher-js version; channels will not resume');
    }
  }

  function detach() {
    if (transport) {
      transport.unbind_global(onTransportEvent);
      transport = null;
    }
  }

  const originalSend = pusher.send_event;
  const ownSend = Object.prototype.hasOwnProperty.call(pusher, 'send_event');
  function sendEvent(eventName, data, channel) {
    if (!stopped && eventName === 'pusher:subscribe' && data && typeof data.channel === 'string') {
      const position = positions.get(data.channel);
      // A copy: the caller's object is not ours to change. The position is
      // not part of what a private channel's auth signs.
      if (position !== undefined) data = Object.assign({}, data, { position });
    }
    return originalSend.call(this, eventName, data, channel);
  }

  const originalUnsubscribe = pusher.unsubscribe;
  const ownUnsubscribe = Object.prototype.hasOwnProperty.call(pusher, 'unsubscribe');
  function unsubscribe(name) {
    if (!stopped) positions.delete(name);
    return originalUnsubscribe.call(this, name);
  }

  pusher.send_event = sendEvent;
  pusher.unsubscribe = unsubscribe;
  pusher.connection.bind('connected', attach);
  pusher[INSTALLED] = true;
  if (pusher.connection.state === 'connected') attach();

  function stop() {
    if (stopped) return;
    stopped = true;
    pusher.connection.unbind('connected', attach);
    detach();
    positions.clear();
    // Put the methods back unless someone wrapped them after us; then ours
    // stay, passing everything through.
    if (pusher.send_event === sendEvent) restore(pusher, 'send_event', ownSend, originalSend);
    if (pusher.unsubscribe === unsubscribe) restore(pusher, 'unsubscribe', ownUnsubscribe, originalUnsubscribe);
    delete pusher[INSTALLED];
  }

  return {
    /** The last position seen per channel, as a plain object (a copy). */
    positions() {
      const out = {};
      positions.forEach((p, name) => {
        out[name] = p;
      });
      return out;
    },
    /** The last position seen on one channel, or undefined. */
    position(name) {
      return positions.get(name);
    },
    /** Forgets one channel's position (or all): its next resubscription starts afresh. */
    forget(name) {
      if (name === undefined) positions.clear();
      else positions.delete(name);
    },
    /** Removes the plugin from the Pusher instance. */
    stop,
  };
}

/** The pusher-js instance behind a Pusher or an Echo. */
function pusherOf(target) {
  const connector = target && target.connector;
  if (connector && isPusher(connector.pusher)) return connector.pusher;
  if (isPusher(target)) return target;
  throw new TypeError('@resound/recovery: withRecovery() needs a pusher-js Pusher, or a laravel-echo Echo with the reverb or pusher broadcaster');
}

function isPusher(p) {
  return !!p && !!p.connection && typeof p.connection.bind === 'function' &&
    typeof p.send_event === 'function' && typeof p.channel === 'function' && typeof p.unsubscribe === 'function';
}

function restore(obj, key, wasOwn, original) {
  if (wasOwn) obj[key] = original;
  else delete obj[key];
}

/** A field of an event's data, which arrives as a JSON string (or, from some servers, an object). */
function field(data, key) {
  let d = data;
  if (typeof d === 'string') {
    try {
      d = JSON.parse(d);
    } catch (_) {
      return undefined;
    }
  }
  return d && typeof d === 'object' ? d[key] : undefined;
}

/**
 * Calls an application callback. An exception there must not break
 * pusher-js's handling of the frame (we run inside it), so it is thrown
 * again on its own, where the runtime reports uncaught errors.
 */
function report(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => {
      throw err;
    }, 0);
  }
}
