// Webhooks end to end: a real cluster (nats-server, two gateways, a worker)
// POSTs Pusher's webhooks to a real HTTP receiver that checks each request
// with the `pusher` SDK's own validator (lib/webhook-receiver.mjs), while
// pusher-js clients on both gateways make the transitions.
//
// The apps come from an apps file in soketi's shape ("webhooks": [{url,
// event_types, headers, filter}]), and one app from the environment
// (REVERB_APP_* with RESOUND_WEBHOOK_URL / RESOUND_WEBHOOK_EVENTS). The
// delay and batch settings are short so that the file stays quick.
//
// Absence checks ("nothing more arrives") cannot wait for a condition: each
// waits QUIET_MS after a later marker webhook has arrived. A channel's
// webhooks go out in order, so anything recorded before the marker on the
// same channel would have come before it; the bounded wait covers the
// other channels, which may be on other lanes.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { startAuthServer } from '../lib/auth-server.mjs';
import { closeAll, connectAndSubscribe, makePusherClient, makeServerSdk, waitForState, waitForSubscribed } from '../lib/clients.mjs';
import { clTest, eventually, json, sleep } from '../lib/cluster-suite.mjs';
import { GatewayView, startCluster } from '../lib/cluster.mjs';
import { uniqueChannel } from '../lib/suite.mjs';
import { brief, pusherFields, startWebhookReceiver } from '../lib/webhook-receiver.mjs';

const DELAY_MS = 1000; // RESOUND_WEBHOOK_DELAY
const BATCH_MAX = 5; // RESOUND_WEBHOOK_BATCH_MAX
const QUIET_MS = 600; // how long an absence check waits after its marker
const START_TIMEOUT_MS = 10 * 60_000; // may include cold Go builds

const OCCUPIED = 'channel_occupied';
const VACATED = 'channel_vacated';
const ADDED = 'member_added';
const REMOVED = 'member_removed';
const CLIENT = 'client_event';
const CACHE_MISS = 'cache_miss';
const COUNT = 'subscription_count';

// The environment app: REVERB_APP_* plus RESOUND_WEBHOOK_URL/EVENTS.
const envApp = { name: 'env', appId: String(9_000_000 + Math.floor(Math.random() * 900_000)), key: `key-env-${Date.now().toString(36)}`, secret: `secret-env-${Math.random().toString(36).slice(2)}` };

const ref = { cluster: null, auth: null, rx: null };

before(async () => {
  ref.rx = await startWebhookReceiver();
  const rx = ref.rx;
  const client = [OCCUPIED, VACATED, CLIENT];
  ref.cluster = await startCluster({
    apps: [
      {
        name: 'main',
        webhooks: [
          // Everything but subscription_count, which this app does not count.
          { url: rx.url('main', 'all'), event_types: [OCCUPIED, VACATED, ADDED, REMOVED, CLIENT, CACHE_MISS], headers: { 'X-Resound-Test': 'all' } },
          // Two event types, and only on private-…-f channels.
          {
            url: rx.url('main', 'filtered'),
            event_types: [OCCUPIED, CLIENT],
            headers: { 'X-Resound-Test': 'filtered', Authorization: 'Bearer t0ken' },
            filter: { channel_name_starts_with: 'private-', channel_name_ends_with: '-f' },
          },
        ],
      },
      { name: 'counted', subscription_count: true, webhooks: [{ url: rx.url('counted', 'count'), event_types: [COUNT] }] },
      // Two receivers of the same events: "down" fails while a test says so, "up" never does.
      { name: 'flaky', webhooks: [{ url: rx.url('flaky', 'down'), event_types: client }, { url: rx.url('flaky', 'up'), event_types: client }] },
    ],
    extraEnv: {
      RESOUND_WEBHOOK_DELAY: String(DELAY_MS / 1000),
      RESOUND_WEBHOOK_BATCH_WINDOW: '0.05',
      RESOUND_WEBHOOK_BATCH_MAX: String(BATCH_MAX),
      RESOUND_WEBHOOK_RETRY_FOR: '60',
      RESOUND_WEBHOOK_TIMEOUT: '2',
      REVERB_APP_ID: envApp.appId,
      REVERB_APP_KEY: envApp.key,
      REVERB_APP_SECRET: envApp.secret,
      RESOUND_WEBHOOK_URL: rx.url('env', 'env'),
      RESOUND_WEBHOOK_EVENTS: OCCUPIED,
    },
  });
  for (const a of ref.cluster.apps) rx.addApp(a);
  rx.addApp(envApp);
  ref.auth = await startAuthServer(ref.cluster.apps);
}, { timeout: START_TIMEOUT_MS });

after(async () => {
  if (ref.auth) await ref.auth.close();
  if (ref.cluster) await ref.cluster.stop();
  if (ref.rx) await ref.rx.close();
}, { timeout: 60_000 });

/** clTest, printing what the receiver got when the test fails. */
function hookTest(name, ms, fn) {
  return clTest(ref, name, ms, async (t, r) => {
    try {
      await fn(t, r);
    } catch (err) {
      process.stderr.write(`\n${ref.rx.dump()}\n`);
      throw err;
    }
  });
}

/** A connected pusher-js client on `view`, authorized (private and presence) as `user` by the auth server. */
async function pjs(t, view, { user } = {}) {
  const c = makePusherClient(view, {
    channelAuthorization: { endpoint: ref.auth.channelEndpoint({ app: view.appName, ...(user ? { user } : {}) }), transport: 'ajax' },
  });
  t.after(() => closeAll(c));
  await waitForState(c, 'connected');
  return c;
}

const subscribe = (client, name) => waitForSubscribed(client.subscribe(name));

/** Waits until no gateway has a subscriber of `channel` (the HTTP API asks them all). */
async function waitUnoccupied(view, channel) {
  const sdk = makeServerSdk(view);
  await eventually(async () => {
    const info = await json(sdk.get({ path: `/channels/${channel}` }));
    assert.equal(info.occupied, false, `${channel} is still occupied`);
  }, 5000, 20);
}

const count = (evs, name, match = () => true) => evs.filter((e) => e.name === name && match(e)).length;

/** The webhooks of `channel` at `label` as a sorted multiset of brief strings. */
const multiset = (label, channel) => ref.rx.delivered(label, channel).map(brief).sort();

hookTest('channel_occupied once for subscribers on both gateways; channel_vacated once, after the delay, when all have left', 20_000, async (t, { cluster }) => {
  const { rx } = ref;
  const channel = uniqueChannel('hook-occ');
  // Four subscribers, two on each gateway, all at once: both gateways race for the 0 → 1 transition.
  const subs = await Promise.all([0, 1, 0, 1].map((i) => connectAndSubscribe(cluster.gw(i), [channel])));
  const clients = subs.map((s) => s.client);
  t.after(() => closeAll(clients));
  await rx.waitEvent('all', channel, OCCUPIED);

  // Two unsubscribe, two disconnect.
  const leftAt = Date.now();
  clients[0].unsubscribe(channel);
  clients[1].unsubscribe(channel);
  closeAll(clients[2], clients[3]);
  const vacated = await rx.waitEvent('all', channel, VACATED, 10_000);
  // A lower bound only: the vacated waits RESOUND_WEBHOOK_DELAY after the last leave (the clocks are the same machine's).
  assert.ok(vacated.at - leftAt >= DELAY_MS - 50, `channel_vacated came ${vacated.at - leftAt} ms after the last leave, before the ${DELAY_MS} ms delay`);

  await sleep(QUIET_MS); // absence check after the marker (the vacated)
  assert.deepEqual(rx.delivered('all', channel).map(pusherFields), [{ name: OCCUPIED, channel }, { name: VACATED, channel }]);
});

hookTest('presence: one user on two gateways is one member_added, and one member_removed once both connections have left', 25_000, async (t, { cluster }) => {
  const { rx } = ref;
  const channel = `presence-${uniqueChannel('hook-members')}`;
  const u1a = await pjs(t, cluster.A, { user: '1' });
  const u1b = await pjs(t, cluster.B, { user: '1' });
  await Promise.all([subscribe(u1a, channel), subscribe(u1b, channel)]);
  // Marker: user 2 joins after both of user 1's connections; a second member_added(1) would come before member_added(2).
  const u2 = await pjs(t, cluster.B, { user: '2' });
  await subscribe(u2, channel);
  await rx.waitEvent('all', channel, ADDED, 10_000, (e) => e.user_id === '2');
  assert.equal(count(rx.delivered('all', channel), ADDED, (e) => e.user_id === '1'), 1, 'member_added for user 1');

  // User 1 closes one of two connections, then user 2 leaves: the marker is member_removed(2), held for the delay
  // as a premature member_removed(1) would have been, and after it on the channel.
  closeAll(u1a);
  closeAll(u2);
  await rx.waitEvent('all', channel, REMOVED, 10_000, (e) => e.user_id === '2');
  assert.equal(count(rx.delivered('all', channel), REMOVED, (e) => e.user_id === '1'), 0, 'user 1 still has a connection: no member_removed(1)');

  // User 1's last connection leaves.
  closeAll(u1b);
  await rx.waitEvent('all', channel, REMOVED, 10_000, (e) => e.user_id === '1');
  await rx.waitEvent('all', channel, VACATED, 10_000);
  await sleep(QUIET_MS); // absence check after the markers
  const evs = rx.delivered('all', channel);
  assert.deepEqual(evs.filter((e) => e.name === ADDED || e.name === REMOVED).map(pusherFields), [
    { name: ADDED, channel, user_id: '1' },
    { name: ADDED, channel, user_id: '2' },
    { name: REMOVED, channel, user_id: '2' },
    { name: REMOVED, channel, user_id: '1' },
  ]);
  assert.deepEqual(multiset('all', channel), [`${ADDED} ${channel} 1`, `${ADDED} ${channel} 2`, `${OCCUPIED} ${channel}`, `${REMOVED} ${channel} 1`, `${REMOVED} ${channel} 2`, `${VACATED} ${channel}`].sort());
});

hookTest('a leave and rejoin inside the delay sends nothing: neither vacated/occupied nor member_removed/member_added', 25_000, async (t, { cluster }) => {
  const { rx } = ref;
  const channel = `presence-${uniqueChannel('hook-rejoin')}`;
  const a7 = await pjs(t, cluster.A, { user: '7' });
  const b7 = await pjs(t, cluster.B, { user: '7' });
  await subscribe(a7, channel);
  await rx.waitEvent('all', channel, ADDED, 10_000, (e) => e.user_id === '7');
  await rx.waitEvent('all', channel, OCCUPIED);

  // The channel empties on A and fills again on B, well inside the delay. The rejoin waits until the
  // gateways say nobody is subscribed, so that A's leave is counted before B's join.
  const leftAt = Date.now();
  a7.unsubscribe(channel);
  await waitUnoccupied(cluster.A, channel);
  await subscribe(b7, channel);
  assert.ok(Date.now() - leftAt < DELAY_MS, `the rejoin took ${Date.now() - leftAt} ms, not inside the ${DELAY_MS} ms delay: the test proves nothing`);

  // The same for a member, with user 8 watching so that the channel stays occupied and the leave and
  // the rejoin are both seen to happen (pusher:member_removed, then pusher:member_added at user 8).
  const w8 = await pjs(t, cluster.B, { user: '8' });
  const watch = w8.subscribe(channel);
  const seen = [];
  watch.bind('pusher:member_removed', (m) => seen.push(`removed ${m.id}`));
  watch.bind('pusher:member_added', (m) => seen.push(`added ${m.id}`));
  await waitForSubscribed(watch);
  await rx.waitEvent('all', channel, ADDED, 10_000, (e) => e.user_id === '8');
  const memberLeftAt = Date.now();
  b7.unsubscribe(channel);
  await eventually(() => assert.deepEqual(seen, ['removed 7']), 5000, 10);
  await subscribe(a7, channel);
  await eventually(() => assert.deepEqual(seen, ['removed 7', 'added 7']), 5000, 10);
  assert.ok(Date.now() - memberLeftAt < DELAY_MS, `the member's rejoin took ${Date.now() - memberLeftAt} ms, not inside the ${DELAY_MS} ms delay`);

  // Marker: everyone leaves; the vacated and both member_removed come after the delay, and anything the
  // rejoins had sent would have come before them.
  closeAll(a7, w8);
  await rx.waitEvent('all', channel, VACATED, 10_000);
  await rx.waitDelivered('all', (evs) => count(evs, REMOVED, (e) => e.channel === channel) >= 2, 10_000, `two member_removed on ${channel}`);
  await sleep(QUIET_MS);
  assert.deepEqual(multiset('all', channel), [
    `${ADDED} ${channel} 7`, `${ADDED} ${channel} 8`, `${OCCUPIED} ${channel}`,
    `${REMOVED} ${channel} 7`, `${REMOVED} ${channel} 8`, `${VACATED} ${channel}`,
  ].sort());
});

hookTest("client_event with Pusher's fields: socket_id, and user_id on presence channels; data as the client sent it", 20_000, async (t, { cluster }) => {
  const { rx } = ref;
  const priv = `private-${uniqueChannel('hook-ce')}`;
  const pres = `presence-${uniqueChannel('hook-ce')}`;
  const sender = await pjs(t, cluster.A, { user: '11' });
  const other = await pjs(t, cluster.B, { user: '22' });
  await Promise.all([subscribe(sender, priv), subscribe(other, priv), subscribe(sender, pres), subscribe(other, pres)]);
  const relayed = [];
  other.channel(priv).bind('client-typing', (d) => relayed.push(d));

  assert.equal(sender.channel(priv).trigger('client-typing', { who: 'eleven', n: 1 }), true);
  assert.equal(sender.channel(priv).trigger('client-plain', 'just a string'), true);
  assert.equal(sender.channel(pres).trigger('client-typing', { who: 'eleven', n: 2 }), true);
  const socketId = sender.connection.socket_id;

  const onPriv = await rx.waitDelivered('all', (evs) => {
    const xs = evs.filter((e) => e.channel === priv && e.name === CLIENT);
    return xs.length >= 2 && xs;
  }, 10_000, `two client_event on ${priv}`);
  const [typing, plain] = onPriv.map(pusherFields);
  assert.deepEqual(JSON.parse(typing.data), { who: 'eleven', n: 1 });
  assert.deepEqual({ ...typing, data: '(checked)' }, { name: CLIENT, channel: priv, event: 'client-typing', data: '(checked)', socket_id: socketId });
  assert.deepEqual(plain, { name: CLIENT, channel: priv, event: 'client-plain', data: 'just a string', socket_id: socketId }, 'a string is sent as that string');

  const onPres = pusherFields(await rx.waitEvent('all', pres, CLIENT));
  assert.deepEqual(JSON.parse(onPres.data), { who: 'eleven', n: 2 });
  assert.deepEqual({ ...onPres, data: '(checked)' }, { name: CLIENT, channel: pres, event: 'client-typing', data: '(checked)', socket_id: socketId, user_id: '11' });
  await eventually(() => assert.deepEqual(relayed, [{ who: 'eleven', n: 1 }], 'the client event was relayed too'), 5000, 20);
});

hookTest('cache_miss when a cache channel with nothing cached is subscribed; none when it has an event', 20_000, async (t, { cluster }) => {
  const { rx } = ref;
  const empty = uniqueChannel('cache-hook-empty');
  const cached = uniqueChannel('cache-hook-full');
  const sdk = makeServerSdk(cluster.gw(0));
  await sdk.trigger(cached, 'kept', { x: 1 });
  // The trigger's 200 means the job is stored; the worker writes the cache after it.
  await eventually(async () => {
    const info = await json(sdk.get({ path: `/channels/${cached}`, params: { info: 'cache' } }));
    assert.equal(info.cache?.event, 'kept', JSON.stringify(info));
  }, 10_000, 20);

  const c = await pjs(t, cluster.B);
  const got = [];
  c.subscribe(cached).bind('kept', (d) => got.push(d));
  await waitForSubscribed(c.channel(cached));
  await eventually(() => assert.deepEqual(got, [{ x: 1 }]), 5000, 20);
  // Marker: a miss on the other channel, after the subscription with a cached event.
  await subscribe(c, empty);
  const miss = await rx.waitEvent('all', empty, CACHE_MISS);
  assert.deepEqual(pusherFields(miss), { name: CACHE_MISS, channel: empty });
  await sleep(QUIET_MS);
  assert.equal(count(rx.delivered('all', empty), CACHE_MISS), 1, 'one cache_miss for one subscription');
  assert.equal(count(rx.delivered('all', cached), CACHE_MISS), 0, 'a channel with a cached event has no miss');
});

hookTest('subscription_count (an app with subscription_count on) follows the cluster-wide count', 20_000, async (t, { cluster }) => {
  const { rx } = ref;
  const channel = uniqueChannel('hook-count');
  const a = await pjs(t, cluster.gw(0, 'counted'));
  const b = await pjs(t, cluster.gw(1, 'counted'));
  await subscribe(a, channel);
  await subscribe(b, channel);
  const last = (evs) => evs.filter((e) => e.channel === channel && e.name === COUNT).at(-1);
  await rx.waitDelivered('count', (evs) => last(evs)?.subscription_count === 2, 10_000, `subscription_count 2 on ${channel}`);
  b.unsubscribe(channel);
  await rx.waitDelivered('count', (evs) => last(evs)?.subscription_count === 1, 10_000, `subscription_count 1 on ${channel}`);
  for (const e of rx.delivered('count', channel)) {
    assert.deepEqual(Object.keys(pusherFields(e)).sort(), ['channel', 'name', 'subscription_count'], `fields of ${JSON.stringify(e)}`);
    assert.ok([1, 2].includes(e.subscription_count), `counts while subscribed are 1 or 2: ${brief(e)}`);
  }
});

hookTest('event_types and filter are honoured per webhook; its headers arrive', 20_000, async (t, { cluster }) => {
  const { rx } = ref;
  const base = uniqueChannel('hook-filter');
  const match = `private-${base}-f`;
  const wrongEnd = `private-${base}-g`;
  const wrongStart = `${base}-f`;
  const a = await pjs(t, cluster.A);
  const b = await pjs(t, cluster.B);
  for (const ch of [match, wrongEnd, wrongStart]) await subscribe(a, ch);
  for (const ch of [match, wrongEnd]) await subscribe(b, ch);
  a.channel(match).trigger('client-f', { on: 'match' });
  a.channel(wrongEnd).trigger('client-f', { on: 'wrongEnd' });
  // The client events are relayed (so accepted) before anyone leaves.
  await rx.waitDelivered('all', (evs) => count(evs, CLIENT, (e) => e.channel === match || e.channel === wrongEnd) === 2, 10_000, 'both client events');
  closeAll(a, b);
  // Marker: every channel's vacated at the receiver that takes everything.
  await rx.waitDelivered('all', (evs) => [match, wrongEnd, wrongStart].every((ch) => count(evs, VACATED, (e) => e.channel === ch) === 1), 10_000, 'the three vacated');
  await sleep(QUIET_MS);
  const filtered = rx.events.items.filter((e) => e.label === 'filtered' && [match, wrongEnd, wrongStart].includes(e.channel));
  assert.deepEqual(filtered.map(brief), [`${OCCUPIED} ${match}`, `${CLIENT} ${match} client-f {"on":"match"}`],
    'the filtered webhook gets only channel_occupied and client_event, only on private-…-f');
  for (const ch of [match, wrongEnd, wrongStart]) {
    assert.deepEqual(rx.delivered('all', ch).filter((e) => e.name !== CLIENT).map(brief), [`${OCCUPIED} ${ch}`, `${VACATED} ${ch}`], `everything on ${ch} at the unfiltered webhook`);
  }
  for (const r of rx.requestsTo('filtered')) {
    assert.equal(r.headers['x-resound-test'], 'filtered');
    assert.equal(r.headers.authorization, 'Bearer t0ken');
  }
  for (const r of rx.requestsTo('all')) assert.equal(r.headers['x-resound-test'], 'all');
  assert.equal(rx.requestsTo('count').some((r) => 'x-resound-test' in r.headers), false, "one webhook's headers do not reach another's");
});

hookTest('the environment app: RESOUND_WEBHOOK_URL gets the RESOUND_WEBHOOK_EVENTS only', 20_000, async (t, { cluster }) => {
  const { rx } = ref;
  const view = (i) => new GatewayView(cluster.gateways[i], envApp, i);
  const first = uniqueChannel('hook-env');
  const second = uniqueChannel('hook-env');
  const beside = uniqueChannel('hook-env-main');
  const { client } = await connectAndSubscribe(view(0), [first]);
  const mainClient = await pjs(t, cluster.A);
  t.after(() => closeAll(client));
  await subscribe(mainClient, beside);
  assert.deepEqual(pusherFields(await rx.waitEvent('env', first, OCCUPIED)), { name: OCCUPIED, channel: first });
  await rx.waitEvent('all', beside, OCCUPIED);
  // The env app's channel and a main-app channel are vacated together. The main app's vacated (which its
  // webhook wants) is the marker: a vacated of the env app, held as long, would have gone out with it.
  client.unsubscribe(first);
  mainClient.unsubscribe(beside);
  await rx.waitEvent('all', beside, VACATED, 10_000);
  const other = await connectAndSubscribe(view(1), [second]);
  t.after(() => closeAll(other.client));
  await rx.waitEvent('env', second, OCCUPIED);
  await sleep(QUIET_MS);
  assert.deepEqual(rx.delivered('env').filter((e) => e.channel === first || e.channel === second).map(brief), [`${OCCUPIED} ${first}`, `${OCCUPIED} ${second}`]);
  for (const r of rx.requestsTo('env')) assert.equal(r.headers['x-pusher-key'], envApp.key);
});

hookTest('a receiver that fails (500) for a while and then recovers gets everything, once each, in order per channel; the other receiver is not held back', 40_000, async (t, { cluster }) => {
  const { rx } = ref;
  rx.failing.add('down');
  t.after(() => rx.failing.delete('down'));
  const channels = [`private-${uniqueChannel('hook-flaky')}`, `private-${uniqueChannel('hook-flaky')}`];
  const sender = await pjs(t, cluster.gw(0, 'flaky'));
  const other = await pjs(t, cluster.gw(1, 'flaky'));
  const expected = {};
  for (const ch of channels) {
    await subscribe(sender, ch);
    await subscribe(other, ch);
    // The occupied is recorded before the client events are sent, so the order they happened in is plain.
    await rx.waitEvent('up', ch, OCCUPIED);
    for (const n of [1, 2, 3]) sender.channel(ch).trigger('client-n', { n });
    expected[ch] = [`${OCCUPIED} ${ch}`, ...[1, 2, 3].map((n) => `${CLIENT} ${ch} client-n {"n":${n}}`), `${VACATED} ${ch}`];
  }
  await rx.waitDelivered('up', (evs) => channels.every((ch) => count(evs, CLIENT, (e) => e.channel === ch) === 3), 10_000, 'the client events');
  closeAll(sender, other);

  // "up" gets everything while "down" fails: a receiver that is down holds back only its own webhooks.
  await rx.waitDelivered('up', (evs) => channels.every((ch) => count(evs, VACATED, (e) => e.channel === ch) === 1), 10_000, 'both vacated');
  // "down" is retried: let it fail at least twice before it recovers.
  await eventually(() => assert.ok(rx.requestsTo('down').filter((r) => r.status === 500).length >= 2, 'two failed attempts'), 20_000, 50);
  assert.deepEqual(rx.delivered('down'), [], 'nothing was answered 200 at "down" yet');
  const failedAttempts = rx.requestsTo('down').length;
  rx.failing.delete('down');

  await rx.waitDelivered('down', (evs) => channels.every((ch) => count(evs, VACATED, (e) => e.channel === ch) >= 1), 30_000, 'both vacated, after recovering');
  await sleep(QUIET_MS); // absence check (duplicates) after the markers
  for (const ch of channels) {
    assert.deepEqual(rx.delivered('down', ch).map(brief), expected[ch], `everything on ${ch}, once each and in order, at the receiver that failed`);
    assert.deepEqual(rx.delivered('up', ch).map(brief), expected[ch], `everything on ${ch}, once each and in order, at the receiver that did not`);
  }
  t.diagnostic(`"down" failed ${failedAttempts} attempts before it recovered`);
});

hookTest("every request of the file: valid for the pusher SDK's validator with the app's key and secret, invalid with a wrong secret or key; batches of at most RESOUND_WEBHOOK_BATCH_MAX", 10_000, async () => {
  const { rx } = ref;
  assert.ok(rx.requests.length > 0, 'no webhook arrived at all');
  const byLabel = {};
  for (const r of rx.requests) {
    const where = `request #${r.n} to ${r.app}/${r.label}: ${r.rawBody.slice(0, 200)}`;
    byLabel[r.label] = (byLabel[r.label] ?? 0) + 1;
    assert.equal(r.method, 'POST', where);
    assert.equal(r.valid, true, `${where}: the validator refused it (${r.error}; headers ${JSON.stringify(r.headers)})`);
    assert.equal(r.validWrongSecret, false, `${where}: valid with a wrong secret`);
    assert.equal(r.validWrongKey, false, `${where}: valid with a wrong key`);
    assert.equal(r.headers['content-type'], 'application/json', where);
    assert.equal(r.headers['x-pusher-key'], rx.apps.get(r.app).key, where);
    assert.ok(r.events.length >= 1 && r.events.length <= BATCH_MAX, `${where}: ${r.events.length} events`);
    // time_ms is when the webhook was made: a loose sanity bound on the clock, not a latency check.
    assert.ok(Math.abs(r.time.getTime() - r.at) < 5 * 60_000, `${where}: time_ms ${r.time.toISOString()}`);
  }
  for (const label of ['all', 'filtered', 'count', 'down', 'up', 'env']) assert.ok(byLabel[label] > 0, `no request to ${label}`);
});
