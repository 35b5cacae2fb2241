// Client resume (docs/recovery.md) with the real pusher-js and laravel-echo
// and the @resound/recovery plugin: a client whose gateway is killed
// (SIGKILL) reconnects through its normal reconnect, through a load balancer
// (lib/tcp-proxy.mjs), to another gateway, and gets every event it missed,
// exactly once, in order, then new ones. Stock clients on the same app go on
// as ever. recovery-window.test.mjs covers a client away longer than the
// history window.
import assert from 'node:assert/strict';
import { withRecovery } from '@resound/recovery';
import { Inbox, closeAll, makeEcho, makePusherClient, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import { clTest, closeRaw, mark, openRaw, rawSubscribeOk, signChannel, useCluster } from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';
import { startTcpProxy, throughProxy } from '../lib/tcp-proxy.mjs';

// Three gateways: the first two tests each kill one (A, then B); C stays.
const ref = useCluster({ apps: [{ name: 'main', recovery: true }, { name: 'plain' }], gateways: 3 });

const POSITION = /^\d+\.\d+$/;
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** Triggers "tick" {n} for n in from..to on each channel: one batch (one job, stored in order) per channel. */
async function ticks(sdk, channels, from, to) {
  for (const channel of channels) {
    await sdk.triggerBatch(range(from, to).map((n) => ({ channel, name: 'tick', data: { n } })));
  }
}

/** What `log` holds for one channel: its entries without the channel name. */
const of = (log, channel) => log.items.filter((e) => e[0] === channel).map((e) => e.slice(1));

/** Waits until every channel has tick `n` in `log`. */
function waitTick(log, channels, n, ms = 10_000) {
  return log.waitFor(
    (items) => channels.every((c) => items.some((e) => e[0] === c && e[1] === 'tick' && e[2] === n)),
    ms,
    () => `tick ${n} on ${channels.join(', ')} (log: ${JSON.stringify(log.items)})`,
  );
}

/**
 * A raw connection on a gateway that stays up, subscribed to the channels:
 * when it has an event, that event is out (and in the history).
 */
async function bystander(t, view, sdk, channels) {
  const raw = await openRaw(view);
  t.after(() => closeRaw(raw));
  for (const ch of channels) {
    const presence = ch.startsWith('presence-') ? { user_id: 'bystander', user_info: {} } : undefined;
    const auth = ch.startsWith('private-') || ch.startsWith('presence-') ? signChannel(sdk, raw, ch, presence) : {};
    await rawSubscribeOk(raw, ch, auth);
  }
  return raw;
}

/** Waits until the bystander has `count` ticks on each channel after `from`; returns them per channel. */
async function bystanderTicks(raw, channels, count, from, ms = 10_000) {
  const per = (items) => Object.fromEntries(channels.map((c) => [c, items.slice(from).filter((m) => m.data?.channel === c && m.data.event === 'tick').map((m) => m.data)]));
  return raw.messages.waitFor((items) => {
    const p = per(items);
    return channels.every((c) => p[c].length >= count) && p;
  }, ms, (items) => `${count} ticks on each of ${channels.join(', ')} at the bystander (got ${JSON.stringify(Object.fromEntries(Object.entries(per(items)).map(([c, l]) => [c, l.length])))})`);
}

/** Counts pusher:subscription_succeeded per channel of a pusher-js client. */
function countSubscriptions(client, channels) {
  const counts = new Inbox();
  for (const c of channels) client.channel(c).bind('pusher:subscription_succeeded', () => counts.push(c));
  return {
    waitFor: (n, ms = 15_000) => counts.waitFor((items) => channels.every((c) => items.filter((x) => x === c).length >= n), ms, () => `${n} subscriptions of each of ${channels.join(', ')} (got ${items.join(', ')})`),
  };
}

clTest(ref, 'pusher-js with the plugin: gateway A is killed; pusher-js reconnects to B and gets every event it missed, once, in order, then new ones; a stock pusher-js beside it goes on without them', 120_000, async (t, { cluster, auth }) => {
  const [A, B] = [cluster.gateways[0].port, cluster.gateways[1].port];
  const proxy = await startTcpProxy([A, B]);
  t.after(() => proxy.close());
  const via = throughProxy(cluster.A, proxy);
  const pub = uniqueChannel('feed');
  const priv = uniqueChannel('private-orders');
  const channels = [pub, priv];
  const authOpts = { channelAuthorization: { endpoint: auth.channelEndpoint(), transport: 'ajax' } };

  const client = makePusherClient(via, authOpts);
  const stock = makePusherClient(via, authOpts);
  t.after(() => closeAll(client, stock));
  const log = new Inbox(); // [channel, 'tick', n] | [channel, 'resumed', replayed] | [channel, 'refetch']
  const rec = withRecovery(client, {
    onResumed: (channel, replayed) => log.push([channel, 'resumed', replayed]),
    onRefetch: (channel) => log.push([channel, 'refetch']),
  });
  const stockLog = new Inbox();
  await Promise.all([waitForState(client, 'connected'), waitForState(stock, 'connected')]);
  for (const name of channels) {
    client.subscribe(name).bind('tick', (d) => log.push([name, 'tick', d.n]));
    stock.subscribe(name).bind('tick', (d) => stockLog.push([name, 'tick', d.n]));
  }
  const stockSubs = countSubscriptions(stock, channels);
  await Promise.all(channels.flatMap((n) => [waitForSubscribed(client.channel(n)), waitForSubscribed(stock.channel(n))]));
  assert.deepEqual(proxy.forwarded.items.map((f) => f.upstream), [A, A], 'both clients start on gateway A');

  const sdk = ref.sdk(1); // through B, which stays up
  const watcher = await bystander(t, cluster.B, sdk, channels);
  let from = mark(watcher);
  await ticks(sdk, channels, 1, 3);
  await waitTick(log, channels, 3);
  await waitTick(stockLog, channels, 3);
  const seen = await bystanderTicks(watcher, channels, 3, from);
  for (const c of channels) {
    assert.ok(seen[c].every((m) => POSITION.test(m.position)), `events of an app with recovery carry a position: ${JSON.stringify(seen[c])}`);
    assert.equal(rec.position(c), seen[c][2].position, `the plugin kept the last position of ${c}`);
  }

  // Gateway A dies. Both clients lose their connection; their reconnects
  // wait at the load balancer while events are triggered, so that what the
  // plugin's client gets afterwards can only come from the history.
  proxy.hold();
  await cluster.killGateway(0);
  await proxy.parked.waitForCount(2, 20_000, 'both clients reconnecting (parked at the load balancer)');
  from = mark(watcher);
  await ticks(sdk, channels, 4, 8);
  await bystanderTicks(watcher, channels, 5, from);
  proxy.release();

  await log.waitFor((items) => channels.every((c) => items.some((e) => e[0] === c && e[1] === 'resumed')), 20_000, () => `resumed on both channels (log: ${JSON.stringify(log.items)})`);
  await stockSubs.waitFor(2);
  await ticks(sdk, channels, 9, 10);
  await waitTick(log, channels, 10);
  await waitTick(stockLog, channels, 10);

  const ticksOf = (ns) => ns.map((n) => ['tick', n]);
  for (const c of channels) {
    assert.deepEqual(of(log, c), [...ticksOf(range(1, 8)), ['resumed', 5], ...ticksOf([9, 10])], `${c}: every event once, in order, the missed ones before "resumed"`);
    assert.deepEqual(of(stockLog, c), ticksOf([1, 2, 3, 9, 10]), `${c}: the stock client asked for nothing and got the new events only`);
  }
  const reconnects = proxy.forwarded.items.slice(2);
  assert.deepEqual(reconnects.map((f) => [f.upstream, f.failed]), [[B, [A]], [B, [A]]], 'both reconnected to B, A refusing');
  assert.equal(client.connection.state, 'connected');
});

clTest(ref, "laravel-echo with the plugin: public, private, presence and encrypted channels resume on another gateway after theirs is killed; .listen('.resound:resumed') tells", 120_000, async (t, { cluster, auth }) => {
  const [B, C] = [cluster.gateways[1].port, cluster.gateways[2].port];
  const proxy = await startTcpProxy([B, C]);
  t.after(() => proxy.close());
  const base = uniqueChannel('shop');
  const echo = makeEcho(throughProxy(cluster.B, proxy), { authEndpoint: auth.channelEndpoint({ user: '7' }) });
  t.after(() => closeAll(echo));
  const refetched = [];
  withRecovery(echo, { onRefetch: (c) => refetched.push(c) });
  await waitForState(echo.connector.pusher, 'connected');

  const log = new Inbox();
  const listen = (ch) => ch
    .listen('.tick', (d) => log.push([ch.name, 'tick', d.n]))
    .listen('.resound:resumed', (e) => log.push([ch.name, 'resumed', e.replayed]))
    .listen('.resound:refetch', () => log.push([ch.name, 'refetch']));
  const echoChannels = [
    listen(echo.channel(base)),
    listen(echo.private(base)),
    listen(echo.join(base).here(() => {})),
    listen(echo.encryptedPrivate(base)),
  ];
  const channels = echoChannels.map((c) => c.name);
  assert.deepEqual(channels, [base, `private-${base}`, `presence-${base}`, `private-encrypted-${base}`]);
  await Promise.all(echoChannels.map((c) => withTimeout(new Promise((resolve) => c.subscribed(resolve)), 10_000, `Echo subscription to ${c.name}`)));

  const sdk = ref.sdk(2); // through C, which stays up; it has the encryption master key
  const watcher = await bystander(t, cluster.gw(2), sdk, channels);
  let from = mark(watcher);
  await ticks(sdk, channels, 1, 2);
  await waitTick(log, channels, 2);
  await bystanderTicks(watcher, channels, 2, from);

  proxy.hold();
  await cluster.killGateway(1);
  await proxy.parked.waitForCount(1, 20_000, 'Echo reconnecting (parked at the load balancer)');
  from = mark(watcher);
  await ticks(sdk, channels, 3, 5);
  await bystanderTicks(watcher, channels, 3, from);
  proxy.release();

  await log.waitFor((items) => channels.every((c) => items.some((e) => e[0] === c && e[1] === 'resumed')), 20_000, () => `resumed on every channel (log: ${JSON.stringify(log.items)})`);
  await ticks(sdk, channels, 6, 6);
  await waitTick(log, channels, 6);
  for (const c of channels) {
    assert.deepEqual(of(log, c), [['tick', 1], ['tick', 2], ['tick', 3], ['tick', 4], ['tick', 5], ['resumed', 3], ['tick', 6]], `${c}: every event once, in order`);
  }
  assert.deepEqual(refetched, []);
  assert.deepEqual(proxy.forwarded.items.map((f) => f.upstream), [B, C]);
  const presence = echoChannels[2].subscription;
  assert.ok(presence.members.get('7'), 'the presence member list came back with the resubscription');
});

clTest(ref, 'stock pusher-js and laravel-echo on the app with recovery get events as ever (the position is a field they ignore); the plugin on an app without recovery changes nothing', 60_000, async (t, { cluster, auth }) => {
  const C = cluster.gw(2);
  const name = uniqueChannel('news');
  const pjs = makePusherClient(C);
  const echo = makeEcho(C, { authEndpoint: auth.channelEndpoint() });
  t.after(() => closeAll(pjs, echo));
  await Promise.all([waitForState(pjs, 'connected'), waitForState(echo.connector.pusher, 'connected')]);
  const got = new Inbox();
  const ch = pjs.subscribe(name);
  ch.bind_global((event, data) => got.push(['pusher-js', event, data]));
  const ech = echo.channel(name).listenToAll((event, data) => got.push(['echo', event, data]));
  await Promise.all([waitForSubscribed(ch), withTimeout(new Promise((resolve) => ech.subscribed(resolve)), 10_000, 'Echo subscription')]);
  const raw = await openRaw(C);
  t.after(() => closeRaw(raw));
  await rawSubscribeOk(raw, name);
  const from = mark(raw);
  await ref.sdk(2).trigger(name, 'Posted', { id: 1, title: 'héllo' });
  await got.waitFor((items) => items.filter((e) => e[1] === 'Posted' || e[1] === '.Posted').length === 2, 10_000, 'the event at both clients');
  const events = (who) => got.items.filter((e) => e[0] === who && !e[1].startsWith('pusher:')).map((e) => e.slice(1));
  assert.deepEqual(events('pusher-js'), [['Posted', { id: 1, title: 'héllo' }]]);
  assert.deepEqual(events('echo'), [['.Posted', { id: 1, title: 'héllo' }]]);
  const [frame] = await eventFrames(raw, name, from);
  assert.match(frame.position, POSITION, `the frame carries its position: ${JSON.stringify(frame)}`);
  assert.deepEqual(Object.keys(frame).sort(), ['channel', 'data', 'event', 'position']);

  // The plugin on an app without recovery: no position anywhere, and a
  // reconnect subscribes plainly.
  const plainView = cluster.gw(2, 'plain');
  const plain = makePusherClient(plainView);
  t.after(() => closeAll(plain));
  const rec = withRecovery(plain, { onRefetch: () => assert.fail('no refetch on an app without recovery'), onResumed: () => assert.fail('no resume on an app without recovery') });
  await waitForState(plain, 'connected');
  const plainGot = new Inbox();
  const pch = plain.subscribe(name);
  pch.bind('Posted', (d) => plainGot.push(d.id));
  await waitForSubscribed(pch);
  const plainSdk = ref.sdk(2, 'plain');
  await plainSdk.trigger(name, 'Posted', { id: 1 });
  await plainGot.waitForCount(1, 10_000, 'the event on the plain app');
  assert.deepEqual(rec.positions(), {});
  plain.disconnect();
  await waitForState(plain, 'disconnected');
  plain.connect();
  await waitForState(plain, 'connected');
  await waitForSubscribed(pch);
  await plainSdk.trigger(name, 'Posted', { id: 2 });
  await plainGot.waitForCount(2, 10_000, 'the event after the reconnect');
  assert.deepEqual(plainGot.items, [1, 2]);
});

/** The event frames on `channel` a raw client got after `from`, at least one. */
async function eventFrames(raw, channel, from, ms = 10_000) {
  await raw.waitForMessage((d) => d.channel === channel && !String(d.event).startsWith('pusher'), ms, `an event on ${channel}`, from);
  return raw.messages.items.slice(from).filter((m) => m.data?.channel === channel && !String(m.data.event).startsWith('pusher')).map((m) => m.data);
}
