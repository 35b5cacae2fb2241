// @resound/recovery with the real pusher-js and laravel-echo against a
// scripted Pusher-protocol server (a `ws` server the test drives frame by
// frame, no gateway): that the plugin's hooks into pusher-js see what they
// must, on every kind of channel, and that a stock pusher-js ignores the
// wire extension. recovery.test.mjs and recovery-window.test.mjs run it
// against real gateways.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocketServer } from 'ws';
import { REFETCH_EVENT, RESUMED_EVENT, withRecovery } from '@resound/recovery';
import { Inbox, closeAll, makeEcho, makePusherClient, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import { HOST } from '../lib/gateway.mjs';

const KEY = 'scripted-key';

/** A Pusher-protocol server whose every frame the test sees and sends. */
class ScriptedServer {
  constructor() {
    this.conns = new Inbox(); // {ws, socketId}
    this.received = new Inbox(); // {conn, msg}
  }

  async start() {
    this.wss = new WebSocketServer({ host: HOST, port: 0 });
    await new Promise((resolve, reject) => {
      this.wss.once('listening', resolve);
      this.wss.once('error', reject);
    });
    this.port = this.wss.address().port;
    this.wss.on('connection', (ws) => {
      const n = this.conns.items.length + 1;
      const conn = { ws, socketId: `${n}.${1000 + n}` };
      this.conns.push(conn);
      ws.on('message', (buf) => {
        const msg = JSON.parse(buf.toString());
        this.received.push({ conn, msg });
        if (msg.event === 'pusher:ping') this.send(conn, { event: 'pusher:pong', data: '{}' });
        if (msg.event === 'pusher:subscribe') {
          const ch = msg.data.channel;
          const data = ch.startsWith('presence-') ? { presence: { ids: ['1'], hash: { 1: { name: 'one' } }, count: 1 } } : {};
          this.send(conn, { event: 'pusher_internal:subscription_succeeded', channel: ch, data: JSON.stringify(data) });
        }
      });
      this.send(conn, { event: 'pusher:connection_established', data: JSON.stringify({ socket_id: conn.socketId, activity_timeout: 120 }) });
    });
    return this;
  }

  get view() { return { host: HOST, port: this.port, key: KEY }; }

  send(conn, frame) { conn.ws.send(JSON.stringify(frame)); }

  /** An event as a Resound app with recovery sends it. */
  event(conn, channel, name, data, position) {
    const f = { event: name, channel, data: JSON.stringify(data) };
    if (position !== undefined) f.position = position;
    this.send(conn, f);
  }

  /** The n-th connection (1-based), once it is there. */
  async conn(n, ms = 10_000) {
    const items = await this.conns.waitForCount(n, ms, 'connections');
    return items[n - 1];
  }

  /** The pusher:subscribe data each channel sent on connection `conn`, once all of `channels` have. */
  async subscribes(conn, channels, ms = 10_000) {
    return this.received.waitFor((items) => {
      const by = {};
      for (const { conn: c, msg } of items) if (c === conn && msg.event === 'pusher:subscribe') by[msg.data.channel] = msg.data;
      return channels.every((ch) => by[ch]) && by;
    }, ms, () => `pusher:subscribe for ${channels.join(', ')}`);
  }

  async close() {
    for (const c of this.conns.items) c.ws.terminate();
    await new Promise((resolve) => this.wss.close(() => resolve()));
  }
}

let server;
before(async () => { server = await new ScriptedServer().start(); });
after(async () => { await server?.close(); });

/** Auth without an HTTP endpoint: what a Laravel app would answer, signed with nothing real. */
function authorizer(calls) {
  return {
    customHandler({ channelName, socketId }, cb) {
      calls.push({ channelName, socketId });
      const r = { auth: `${KEY}:sig-${socketId}-${channelName}` };
      if (channelName.startsWith('presence-')) r.channel_data = JSON.stringify({ user_id: '1', user_info: { name: 'one' } });
      if (channelName.startsWith('private-encrypted-')) r.shared_secret = Buffer.alloc(32, 7).toString('base64');
      cb(null, r);
    },
  };
}

const CHANNELS = ['feed', 'private-orders', 'presence-room', 'private-encrypted-vault'];

test('pusher-js: the last position of each kind of channel goes back in pusher:subscribe after a reconnect; resumed and resume_failed reach the app', { timeout: 30_000 }, async (t) => {
  const calls = [];
  const client = makePusherClient(server.view, { key: KEY, channelAuthorization: authorizer(calls) });
  t.after(() => closeAll(client));
  const log = new Inbox();
  const rec = withRecovery(client, {
    onResumed: (channel, replayed) => log.push(['onResumed', channel, replayed]),
    onRefetch: (channel, info) => log.push(['onRefetch', channel, info.reason, rec.position(channel)]),
  });
  const nBefore = server.conns.items.length;
  await waitForState(client, 'connected');
  const c1 = await server.conn(nBefore + 1);
  const channels = CHANNELS.map((n) => client.subscribe(n));
  for (const ch of channels) {
    ch.bind('tick', (d) => log.push(['tick', ch.name, d.n]));
    ch.bind(RESUMED_EVENT, (d) => log.push([RESUMED_EVENT, ch.name, d.replayed]));
    ch.bind(REFETCH_EVENT, (d) => log.push([REFETCH_EVENT, ch.name, d.reason]));
  }
  await Promise.all(channels.map((c) => waitForSubscribed(c)));
  const first = await server.subscribes(c1, CHANNELS);
  for (const ch of CHANNELS) assert.equal('position' in first[ch], false, `a first subscription carries no position (${ch})`);

  // Events with positions (the encrypted one cannot be decrypted here; its
  // position counts all the same, being outside the payload).
  CHANNELS.forEach((ch, i) => server.event(c1, ch, 'tick', { n: 1 }, `${100 + i}.1765000000000`));
  CHANNELS.forEach((ch, i) => server.event(c1, ch, 'tick', { n: 2 }, `${200 + i}.1765000000001`));
  server.event(c1, 'feed', 'client-typing', {}); // no position: keeps the last
  await log.waitFor((items) => items.filter((e) => e[0] === 'tick').length === 6, 5000, 'the ticks');
  assert.deepEqual(rec.positions(), {
    feed: '200.1765000000001', 'private-orders': '201.1765000000001', 'presence-room': '202.1765000000001', 'private-encrypted-vault': '203.1765000000001',
  });

  // The server asks the client to reconnect (4200); pusher-js does and subscribes every channel again.
  c1.ws.close(4200, 'reconnect now');
  const c2 = await server.conn(nBefore + 2);
  const again = await server.subscribes(c2, CHANNELS);
  assert.equal(again.feed.position, '200.1765000000001');
  assert.equal(again['private-orders'].position, '201.1765000000001');
  assert.equal(again['presence-room'].position, '202.1765000000001');
  assert.equal(again['private-encrypted-vault'].position, '203.1765000000001');
  // Authorized for the new socket as ever: the plugin only adds the position.
  assert.equal(again['private-orders'].auth, `${KEY}:sig-${c2.socketId}-private-orders`);
  assert.equal(again['presence-room'].channel_data, JSON.stringify({ user_id: '1', user_info: { name: 'one' } }));
  assert.deepEqual(Object.keys(again['private-orders']).sort(), ['auth', 'channel', 'position']);

  log.items.length = 0;
  server.event(c2, 'feed', 'tick', { n: 3 }, '300.1');
  server.event(c2, 'feed', 'tick', { n: 4 }, '301.1');
  server.send(c2, { event: 'pusher_internal:resumed', channel: 'feed', data: '{"replayed":2}' });
  server.send(c2, { event: 'pusher_internal:resume_failed', channel: 'private-orders', data: '{"reason":"expired"}' });
  server.send(c2, { event: 'pusher_internal:resumed', channel: 'presence-room', data: '{"replayed":0}' });
  server.event(c2, 'feed', 'tick', { n: 5 }, '302.1');
  await log.waitFor((items) => items.some((e) => e[0] === 'tick' && e[2] === 5), 5000, 'the last tick');
  assert.deepEqual(log.items, [
    ['tick', 'feed', 3],
    ['tick', 'feed', 4],
    ['onResumed', 'feed', 2],
    [RESUMED_EVENT, 'feed', 2],
    ['onRefetch', 'private-orders', 'expired', undefined],
    [REFETCH_EVENT, 'private-orders', 'expired'],
    ['onResumed', 'presence-room', 0],
    [RESUMED_EVENT, 'presence-room', 0],
    ['tick', 'feed', 5],
  ]);
  assert.deepEqual(rec.positions(), { feed: '302.1', 'presence-room': '202.1765000000001', 'private-encrypted-vault': '203.1765000000001' });
  assert.equal(channels[2].members.count, 1, 'the presence channel works as ever');

  // Leaving a channel forgets it.
  client.unsubscribe('feed');
  assert.equal(rec.position('feed'), undefined);
  rec.stop();
});

test('pusher-js: disconnect() then connect() resumes too', { timeout: 20_000 }, async (t) => {
  const client = makePusherClient(server.view, { key: KEY });
  t.after(() => closeAll(client));
  const rec = withRecovery(client);
  const n = server.conns.items.length;
  await waitForState(client, 'connected');
  const c1 = await server.conn(n + 1);
  const news = client.subscribe('news');
  const ticked = new Promise((resolve) => news.bind('tick', resolve));
  await waitForSubscribed(news);
  server.event(c1, 'news', 'tick', { n: 1 }, '7.1');
  await withTimeout(ticked, 5000, 'the tick');
  client.disconnect();
  await waitForState(client, 'disconnected');
  client.connect();
  const c2 = await server.conn(n + 2);
  const again = await server.subscribes(c2, ['news']);
  assert.equal(again.news.position, '7.1');
  assert.equal(rec.position('news'), '7.1');
});

test("laravel-echo: one line; .listen('.resound:resumed') and .listen('.resound:refetch') on Echo channels; leave() forgets", { timeout: 30_000 }, async (t) => {
  const calls = [];
  const echo = makeEcho(server.view, { key: KEY, channelAuthorization: authorizer(calls) });
  t.after(() => closeAll(echo));
  const rec = withRecovery(echo, {});
  const n = server.conns.items.length;
  await waitForState(echo.connector.pusher, 'connected');
  const c1 = await server.conn(n + 1);
  const log = new Inbox();
  const pub = echo.channel('orders')
    .listen('.OrderShipped', (e) => log.push(['OrderShipped', 'orders', e.id]))
    .listen('.resound:resumed', (e) => log.push(['resumed', 'orders', e.replayed]));
  const priv = echo.private('orders.7')
    .listen('OrderShipped', (e) => log.push(['OrderShipped', 'private-orders.7', e.id])) // App\Events\OrderShipped
    .listen('.resound:refetch', (e) => log.push(['refetch', 'private-orders.7', e.reason]));
  const room = echo.join('room').here(() => {}).listen('.resound:resumed', (e) => log.push(['resumed', 'presence-room', e.replayed]));
  await Promise.all([pub, priv, room].map((c) => withTimeout(new Promise((resolve) => c.subscribed(resolve)), 5000, `Echo subscription to ${c.name}`)));
  server.event(c1, 'orders', 'OrderShipped', { id: 1 }, '10.1');
  server.event(c1, 'private-orders.7', 'App\\Events\\OrderShipped', { id: 2 }, '11.1');
  server.event(c1, 'presence-room', 'Moved', { id: 3 }, '12.1');
  await log.waitForCount(2, 5000, 'the two events');
  assert.deepEqual(rec.positions(), { orders: '10.1', 'private-orders.7': '11.1', 'presence-room': '12.1' });

  c1.ws.close(4200, 'reconnect now');
  const c2 = await server.conn(n + 2);
  const again = await server.subscribes(c2, ['orders', 'private-orders.7', 'presence-room']);
  assert.deepEqual([again.orders.position, again['private-orders.7'].position, again['presence-room'].position], ['10.1', '11.1', '12.1']);
  log.items.length = 0;
  server.event(c2, 'orders', 'OrderShipped', { id: 4 }, '20.1');
  server.send(c2, { event: 'pusher_internal:resumed', channel: 'orders', data: '{"replayed":1}' });
  server.send(c2, { event: 'pusher_internal:resume_failed', channel: 'private-orders.7', data: '{"reason":"expired"}' });
  server.send(c2, { event: 'pusher_internal:resumed', channel: 'presence-room', data: '{"replayed":0}' });
  await log.waitForCount(4, 5000, 'the replayed event and the three answers');
  assert.deepEqual(log.items, [['OrderShipped', 'orders', 4], ['resumed', 'orders', 1], ['refetch', 'private-orders.7', 'expired'], ['resumed', 'presence-room', 0]]);

  echo.leave('orders');
  assert.equal(rec.position('orders'), undefined, 'leaving forgets');
  assert.equal(rec.position('presence-room'), '12.1');
});

test('stock pusher-js (no plugin) delivers events that carry a position as usual and drops the resume answers', { timeout: 20_000 }, async (t) => {
  const client = makePusherClient(server.view, { key: KEY });
  t.after(() => closeAll(client));
  const n = server.conns.items.length;
  await waitForState(client, 'connected');
  const c1 = await server.conn(n + 1);
  const ch = client.subscribe('plain');
  await waitForSubscribed(ch);
  const got = new Inbox();
  ch.bind_global((event, data) => got.push([event, data]));
  client.bind_global((event) => { if (event.startsWith('pusher_internal:')) got.push(['global', event]); });
  server.event(c1, 'plain', 'tick', { n: 1 }, '5.1');
  server.send(c1, { event: 'pusher_internal:resumed', channel: 'plain', data: '{"replayed":0}' });
  server.send(c1, { event: 'pusher_internal:resume_failed', channel: 'plain', data: '{"reason":"expired"}' });
  server.event(c1, 'plain', 'tick', { n: 2 }, '6.1');
  await got.waitForCount(2, 5000, 'the two ticks');
  assert.deepEqual(got.items, [['tick', { n: 1 }], ['tick', { n: 2 }]]);
  assert.equal(client.send_event, Object.getPrototypeOf(client).send_event, 'untouched');
});
