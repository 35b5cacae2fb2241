// A tiny TCP load balancer for client-side failover tests: clients connect to
// one address, as they would to a deployment's load balancer, and each new
// connection goes to the first upstream that accepts it. When a gateway dies,
// its clients' connections close and their reconnects land on the next one.
//
// hold() parks new connections (accepted, nothing read, no upstream yet)
// until release(): a test can keep a client away while it triggers events,
// so that what the client gets afterwards is certainly a replay.
import net from 'node:net';
import { Inbox } from './clients.mjs';
import { HOST } from './gateway.mjs';

export class TcpProxy {
  /** @param upstreams ports on HOST, or {host, port}, in order of preference */
  constructor(upstreams) {
    this.upstreams = upstreams.map((u) => (typeof u === 'number' ? { host: HOST, port: u } : u));
    this.host = HOST;
    this.port = 0;
    // Every connection forwarded: {upstream: port, failed: [ports refused first]}.
    this.forwarded = new Inbox();
    this.parked = new Inbox(); // sockets parked while held (never removed: a count)
    this.waiting = [];
    this.holding = false;
    this.sockets = new Set();
  }

  async start() {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, HOST, resolve);
    });
    this.port = this.server.address().port;
    return this;
  }

  /** Parks new connections until release(). */
  hold() {
    this.holding = true;
  }

  /** Forwards the parked connections (still open) and the ones to come. */
  release() {
    this.holding = false;
    const waiting = this.waiting;
    this.waiting = [];
    for (const client of waiting) this.forward(client, 0, []);
  }

  /** Closes the listener and every connection through it. */
  async close() {
    for (const s of this.sockets) s.destroy();
    if (this.server) await new Promise((resolve) => this.server.close(() => resolve()));
  }

  track(socket) {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => {}); // a reset is how these tests end connections
  }

  accept(client) {
    this.track(client);
    if (this.holding) {
      client.pause(); // what the client sends waits in the socket
      this.waiting.push(client);
      this.parked.push(client);
      return;
    }
    this.forward(client, 0, []);
  }

  forward(client, i, failed) {
    if (client.destroyed) return;
    if (i >= this.upstreams.length) {
      client.destroy();
      return;
    }
    const { host, port } = this.upstreams[i];
    const up = net.connect({ host, port });
    this.track(up);
    let connected = false;
    up.once('connect', () => {
      connected = true;
      this.forwarded.push({ upstream: port, failed });
      client.pipe(up);
      up.pipe(client);
      client.resume();
    });
    up.once('close', () => {
      if (connected) client.destroy();
      else this.forward(client, i + 1, [...failed, port]);
    });
    client.once('close', () => up.destroy());
  }
}

export async function startTcpProxy(upstreams) {
  return new TcpProxy(upstreams).start();
}

/** A gateway view (lib/cluster.mjs GatewayView) reached through the proxy instead. */
export function throughProxy(view, proxy) {
  return Object.assign(Object.create(Object.getPrototypeOf(view)), view, { host: proxy.host, port: proxy.port });
}
