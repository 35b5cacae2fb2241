// A stand-in for a pusher-js 8 Pusher instance with the same shape where the
// plugin touches it (pusher-js src/core: events/dispatcher.ts, pusher.ts,
// channels/channel.ts, connection/connection_manager.ts,
// connection/connection.ts, transports/transport_connection.ts), so that
// the plugin's logic can be tested without a server. The e2e suite tests it
// against the real pusher-js and laravel-echo.

/** events/dispatcher.ts: global callbacks first, then the event's own. */
export class Dispatcher {
  constructor() {
    this.callbacks = new Map();
    this.global_callbacks = [];
  }

  bind(name, fn) {
    if (!this.callbacks.has(name)) this.callbacks.set(name, []);
    this.callbacks.get(name).push(fn);
    return this;
  }

  unbind(name, fn) {
    if (name === undefined) this.callbacks.clear();
    else if (!fn) this.callbacks.delete(name);
    else this.callbacks.set(name, (this.callbacks.get(name) || []).filter((f) => f !== fn));
    return this;
  }

  bind_global(fn) {
    this.global_callbacks.push(fn);
    return this;
  }

  unbind_global(fn) {
    this.global_callbacks = fn ? this.global_callbacks.filter((f) => f !== fn) : [];
    return this;
  }

  emit(name, data) {
    for (const fn of this.global_callbacks) fn(name, data);
    for (const fn of [...(this.callbacks.get(name) || [])]) fn(data);
    return this;
  }

  listenerCount() {
    let n = this.global_callbacks.length;
    for (const list of this.callbacks.values()) n += list.length;
    return n;
  }
}

/** channels/channel.ts, reduced: authorize (sync here), subscribe, handleEvent. */
export class FakeChannel extends Dispatcher {
  constructor(name, pusher) {
    super();
    this.name = name;
    this.pusher = pusher;
    this.subscribed = false;
    this.subscriptionPending = false;
  }

  authorize() {
    if (this.name.startsWith('presence-')) return { auth: 'key:sig-presence', channel_data: '{"user_id":"1"}' };
    if (this.name.startsWith('private-')) return { auth: 'key:sig-private' };
    return { auth: '' };
  }

  subscribe() {
    if (this.subscribed) return;
    this.subscriptionPending = true;
    const a = this.authorize();
    this.pusher.send_event('pusher:subscribe', { auth: a.auth, channel_data: a.channel_data, channel: this.name });
  }

  unsubscribe() {
    this.subscribed = false;
    this.pusher.send_event('pusher:unsubscribe', { channel: this.name });
  }

  disconnect() {
    this.subscribed = false;
    this.subscriptionPending = false;
  }

  handleEvent(ev) {
    if (ev.event === 'pusher_internal:subscription_succeeded') {
      this.subscriptionPending = false;
      this.subscribed = true;
      this.emit('pusher:subscription_succeeded', ev.data);
    } else if (!ev.event.startsWith('pusher_internal:')) {
      this.emit(ev.event, ev.data);
    }
  }
}

/** transports/transport_connection.ts: emits "message" with {data: <raw frame>}. */
export class FakeTransport extends Dispatcher {}

/** connection/connection.ts: decodes the raw frame, keeping only what Protocol.decodeMessage keeps. */
class FakeConnection extends Dispatcher {
  constructor(transport) {
    super();
    this.transport = transport;
    transport.bind('message', (m) => {
      const f = JSON.parse(m.data);
      let data = f.data;
      if (typeof data === 'string') {
        try {
          data = JSON.parse(data);
        } catch {
          /* a string stays a string */
        }
      }
      const ev = { event: f.event, channel: f.channel, data };
      if (f.user_id) ev.user_id = f.user_id;
      this.emit('message', ev);
    });
  }
}

export class FakePusher {
  constructor() {
    this.channels = { channels: {} };
    this.sent = []; // every send_event: {event, data, channel}
    this.connection = new Dispatcher();
    this.connection.state = 'initialized';
    this.connection.connection = null;
    this.transport = null;
    // pusher.ts binds these first, in its constructor.
    this.connection.bind('connected', () => this.subscribeAll());
    this.connection.bind('message', (ev) => {
      const ch = ev.channel && this.channel(ev.channel);
      if (ch) ch.handleEvent(ev);
    });
  }

  channel(name) {
    return this.channels.channels[name];
  }

  subscribeAll() {
    for (const name of Object.keys(this.channels.channels)) this.subscribe(name);
  }

  subscribe(name) {
    let ch = this.channels.channels[name];
    if (!ch) ch = this.channels.channels[name] = new FakeChannel(name, this);
    if (!ch.subscriptionPending && this.connection.state === 'connected') ch.subscribe();
    return ch;
  }

  unsubscribe(name) {
    const ch = this.channels.channels[name];
    delete this.channels.channels[name];
    if (ch && ch.subscribed) ch.unsubscribe();
  }

  send_event(event, data, channel) {
    this.sent.push({ event, data, channel });
    return true;
  }

  /** A new transport and the "connected" state, as ConnectionManager does after a handshake. */
  connect() {
    this.transport = new FakeTransport();
    this.connection.connection = new FakeConnection(this.transport);
    this.connection.connection.bind('message', (ev) => this.connection.emit('message', ev));
    this.setState('connected');
    return this.transport;
  }

  /** The socket closed: channels disconnect, the state goes to "connecting". */
  drop() {
    this.connection.connection = null;
    this.setState('connecting');
    for (const ch of Object.values(this.channels.channels)) ch.disconnect();
  }

  setState(state) {
    const previous = this.connection.state;
    this.connection.state = state;
    this.connection.emit('state_change', { previous, current: state });
    this.connection.emit(state);
  }

  /** The server sends a frame (an object, encoded as JSON as on the wire). */
  receive(frame) {
    this.transport.emit('message', { data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }

  /** subscription_succeeded for every pending channel. */
  succeedAll() {
    for (const ch of Object.values(this.channels.channels)) {
      if (ch.subscriptionPending) this.receive({ event: 'pusher_internal:subscription_succeeded', channel: ch.name, data: '{}' });
    }
  }

  subscribes() {
    return this.sent.filter((s) => s.event === 'pusher:subscribe').map((s) => s.data);
  }
}
