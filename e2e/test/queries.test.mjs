// HTTP queries answered for the whole cluster (ask gateway A about clients on
// gateway B), `info` on triggers and batches, and pusher_internal:subscription_count.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makePusherClient, makeServerSdk, waitForState, waitForSubscribed } from '../lib/clients.mjs';
import {
  assertStatus,
  clTest,
  closeRaw,
  eventually,
  json,
  mark,
  openRaw,
  parseData,
  rawSubscribeOk,
  sleep,
  useCluster,
} from '../lib/cluster-suite.mjs';

const ref = useCluster({
  apps: [
    { name: 'main', subscription_count: true },
    { name: 'plain' }, // subscription_count off (the default)
    { name: 'conn' }, // only for GET /connections
  ],
});

const tag = () => `q${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

async function rawOn(t, view, channels, presenceUser) {
  const raw = await openRaw(view);
  t.after(() => closeRaw(raw));
  for (const ch of channels) {
    let auth = {};
    if (ch.startsWith('presence-')) auth = ref.sdk(0, view.appName).authorizeChannel(raw.socketId, ch, { user_id: presenceUser, user_info: { n: presenceUser } });
    else if (ch.startsWith('private-')) auth = ref.sdk(0, view.appName).authorizeChannel(raw.socketId, ch);
    await rawSubscribeOk(raw, ch, auth);
  }
  return raw;
}

/** A presence channel with users '1' (A), '2' (B) and '1' again (B); and a public channel with one subscriber on each gateway. */
async function scene(t, cluster, app = 'main') {
  const p = tag();
  const presence = `presence-${p}-room`;
  const pub = `${p}-pub`;
  await rawOn(t, cluster.gw(0, app), [presence, pub], '1');
  await rawOn(t, cluster.gw(1, app), [presence, pub], '2');
  await rawOn(t, cluster.gw(1, app), [presence], '1');
  return { p, presence, pub };
}

const get = (i, path, params, app = 'main') => json(ref.sdk(i, app).get({ path, params }));

clTest(ref, 'GET /channels through A lists the occupied channels of both gateways, filtered by prefix, never unoccupied ones', 20_000, async (t, { cluster }) => {
  const p = tag();
  await rawOn(t, cluster.A, [`${p}-on-a`]);
  const rb = await rawOn(t, cluster.B, [`${p}-on-b`, `${p}-left`, `private-${p}-x`]);
  rb.send({ event: 'pusher:unsubscribe', data: { channel: `${p}-left` } });
  await eventually(async () => {
    const body = await get(0, '/channels', { filter_by_prefix: p });
    assert.deepEqual(body, { channels: { [`${p}-on-a`]: {}, [`${p}-on-b`]: {} } });
  });
  const priv = await get(1, '/channels', { filter_by_prefix: `private-${p}` });
  assert.deepEqual(priv, { channels: { [`private-${p}-x`]: {} } });
  const all = await get(0, '/channels');
  for (const ch of [`${p}-on-a`, `${p}-on-b`, `private-${p}-x`]) assert.ok(ch in all.channels, `${ch} in the unfiltered list`);
  assert.ok(!(`${p}-left` in all.channels), 'an unoccupied channel must not be listed');
});

clTest(ref, 'GET /channels?filter_by_prefix=presence-…&info=user_count counts users (not connections) across gateways', 20_000, async (t, { cluster }) => {
  const { p, presence } = await scene(t, cluster);
  await eventually(async () => {
    const body = await get(0, '/channels', { filter_by_prefix: `presence-${p}`, info: 'user_count' });
    assert.deepEqual(body, { channels: { [presence]: { user_count: 2 } } });
  });
});

// Reverb answers these 200 and leaves out what does not apply (Pusher's
// reference says 400); a Laravel app that works on Reverb must not start
// throwing here (issue 12). pusher-php-server's getChannels and the npm SDK's
// get() make the same signed GET.
clTest(ref, 'GET /channels?info=user_count without a presence- filter is 200: user_count on presence channels only (Reverb)', 20_000, async (t, { cluster }) => {
  const { p, presence, pub } = await scene(t, cluster);
  await eventually(async () => {
    const body = await get(0, '/channels', { filter_by_prefix: `presence-${p}`, info: 'user_count' });
    assert.deepEqual(body, { channels: { [presence]: { user_count: 2 } } });
  });
  const all = await get(1, '/channels', { info: 'user_count,subscription_count' });
  assert.deepEqual(all.channels[presence], { user_count: 2 });
  assert.deepEqual(all.channels[pub], { subscription_count: 2 });
  assert.deepEqual(await get(0, '/channels', { filter_by_prefix: p, info: 'user_count' }), { channels: { [pub]: {} } });
});

clTest(ref, 'GET /channels?info=user_count with a non-presence prefix filter is 200 and leaves user_count out (Reverb)', 15_000, async (t, { cluster }) => {
  const p = tag();
  await rawOn(t, cluster.B, [`private-${p}-x`]);
  await eventually(async () => {
    assert.deepEqual(await get(1, '/channels', { info: 'user_count', filter_by_prefix: `private-${p}` }), { channels: { [`private-${p}-x`]: {} } });
  });
});

clTest(ref, 'GET /channels/{public}?info=subscription_count counts subscriptions on both gateways; unoccupied is {"occupied":false}', 20_000, async (t, { cluster }) => {
  const { pub } = await scene(t, cluster);
  await eventually(async () => {
    assert.deepEqual(await get(0, `/channels/${pub}`, { info: 'subscription_count' }), { occupied: true, subscription_count: 2 });
  });
  assert.deepEqual(await get(1, `/channels/${pub}`, {}), { occupied: true });
  assert.deepEqual(await get(0, `/channels/${tag()}-nobody`, {}), { occupied: false });
});

clTest(ref, 'GET /channels/{presence}?info=user_count counts distinct users across gateways', 20_000, async (t, { cluster }) => {
  const { presence } = await scene(t, cluster);
  await eventually(async () => {
    assert.deepEqual(await get(1, `/channels/${presence}`, { info: 'user_count' }), { occupied: true, user_count: 2 });
  });
});

clTest(ref, 'GET /channels/{public}?info=user_count is 200 without user_count (Reverb)', 15_000, async (t, { cluster }) => {
  const { pub } = await scene(t, cluster);
  await eventually(async () => {
    assert.deepEqual(await get(0, `/channels/${pub}`, { info: 'user_count' }), { occupied: true });
  });
  assert.deepEqual(await get(1, `/channels/${pub}`, { info: 'user_count,subscription_count,cache' }), { occupied: true, subscription_count: 2 });
});

clTest(ref, "getChannelInfo('presence-…', {info: 'subscription_count,user_count'}) is 200 with user_count alone, as on Reverb (issue 12)", 15_000, async (t, { cluster }) => {
  const { presence } = await scene(t, cluster);
  await eventually(async () => {
    assert.deepEqual(await get(0, `/channels/${presence}`, { info: 'subscription_count,user_count' }), { occupied: true, user_count: 2 });
  });
  assert.deepEqual(await get(1, `/channels/${presence}`, { info: 'subscription_count' }), { occupied: true });
  assert.deepEqual(await get(1, `/channels/${presence}`, { info: 'occupied,cache,unknown' }), { occupied: true });
});

clTest(ref, 'a trigger whose info names attributes that do not apply, or unknown ones, is stored and answered 200 (Reverb)', 15_000, async (t, { cluster }) => {
  const { presence, pub } = await scene(t, cluster);
  const raw = await rawOn(t, cluster.A, [pub]);
  await eventually(async () => {
    const body = await json(ref.sdk(1).trigger([presence, pub], 'ev-info', { n: 1 }, { info: 'subscription_count,user_count,bogus' }));
    assert.deepEqual(body, { channels: { [presence]: { user_count: 2 }, [pub]: { subscription_count: 3 } } });
  });
  await raw.waitForMessage((d) => d.channel === pub && d.event === 'ev-info', 5000, 'the event whose trigger asked for odd info');
});

clTest(ref, 'GET /channels/{presence}/users lists each user once, across gateways, with string ids', 20_000, async (t, { cluster }) => {
  const { presence } = await scene(t, cluster);
  await eventually(async () => {
    const body = await get(0, `/channels/${presence}/users`);
    assert.deepEqual(Object.keys(body), ['users']);
    assert.deepEqual([...body.users].sort((a, b) => a.id.localeCompare(b.id)), [{ id: '1' }, { id: '2' }]);
  });
});

clTest(ref, 'GET /channels/{non-presence}/users is 400', 15_000, async (t, { cluster }) => {
  const { pub } = await scene(t, cluster);
  await assertStatus(ref.sdk(1).get({ path: `/channels/${pub}/users` }), 400);
  await assertStatus(ref.sdk(1).get({ path: `/channels/private-${tag()}/users` }), 400);
});

clTest(ref, 'GET /connections counts connections subscribed to at least one channel, on both gateways, per app', 30_000, async (t, { cluster }) => {
  const conns = () => get(0, '/connections', {}, 'conn');
  assert.deepEqual(await conns(), { connections: 0 });
  const idle = await openRaw(cluster.gw(1, 'conn')); // connected, subscribed to nothing
  t.after(() => closeRaw(idle));
  const c1 = await rawOn(t, cluster.gw(0, 'conn'), [`${tag()}-a`, `${tag()}-b`]);
  await rawOn(t, cluster.gw(1, 'conn'), [`${tag()}-c`]);
  await eventually(async () => assert.deepEqual(await conns(), { connections: 2 }));
  assert.deepEqual(await json(ref.sdk(1, 'conn').get({ path: '/connections' })), { connections: 2 }, 'the same answer from gateway B');
  c1.close();
  await eventually(async () => assert.deepEqual(await conns(), { connections: 1 }));
});

clTest(ref, 'a trigger with info=user_count on a presence channel returns {"channels":{name:{"user_count":N}}}', 20_000, async (t, { cluster }) => {
  const { presence } = await scene(t, cluster);
  await eventually(async () => {
    const body = await json(ref.sdk(0).trigger(presence, 'ev', {}, { info: 'user_count' }));
    assert.deepEqual(body, { channels: { [presence]: { user_count: 2 } } });
  });
});

clTest(ref, 'a trigger to two public channels with info=subscription_count returns both counts', 20_000, async (t, { cluster }) => {
  const { p, pub } = await scene(t, cluster);
  const lonely = `${p}-lonely`;
  await rawOn(t, cluster.B, [lonely]);
  await eventually(async () => {
    const body = await json(ref.sdk(1).trigger([pub, lonely], 'ev', {}, { info: 'subscription_count' }));
    assert.deepEqual(body, { channels: { [pub]: { subscription_count: 2 }, [lonely]: { subscription_count: 1 } } });
  });
});

clTest(ref, 'a trigger without info returns {}', 15_000, async () => {
  assert.deepEqual(await json(ref.sdk(0).trigger(`${tag()}-x`, 'ev', {})), {});
});

clTest(ref, 'triggerBatch with info returns {"batch":[...]} aligned with the items', 20_000, async (t, { cluster }) => {
  const { presence, pub } = await scene(t, cluster);
  await eventually(async () => {
    const body = await json(ref.sdk(1).triggerBatch([
      { channel: presence, name: 'ev', data: { n: 1 }, info: 'user_count' },
      { channel: pub, name: 'ev', data: { n: 2 }, info: 'subscription_count' },
      { channel: `${tag()}-none`, name: 'ev', data: { n: 3 } },
    ]));
    assert.deepEqual(body, { batch: [{ user_count: 2 }, { subscription_count: 2 }, {}] });
  });
});

clTest(ref, 'query endpoints signed with a wrong secret are 401', 15_000, async (t, { cluster }) => {
  const bad = makeServerSdk(cluster.A, { secret: 'wrong' });
  await assertStatus(bad.get({ path: '/channels' }), 401);
  await assertStatus(bad.get({ path: '/channels/x' }), 401);
  await assertStatus(bad.get({ path: '/channels/presence-x/users' }), 401);
  await assertStatus(bad.get({ path: '/connections' }), 401);
});

clTest(ref, "queries are per app: another app does not see this app's channels", 15_000, async (t, { cluster }) => {
  const { p, presence, pub } = await scene(t, cluster);
  await eventually(async () => assert.ok(pub in (await get(0, '/channels', { filter_by_prefix: p })).channels));
  assert.deepEqual(await get(0, '/channels', { filter_by_prefix: p }, 'plain'), { channels: {} });
  assert.deepEqual(await get(1, `/channels/${pub}`, {}, 'plain'), { occupied: false });
  const pres = await get(1, `/channels/${presence}`, { info: 'user_count' }, 'plain');
  assert.equal(pres.occupied, false, JSON.stringify(pres));
  assert.ok(!pres.user_count, `no users of app main may be counted: ${JSON.stringify(pres)}`);
});

// --- pusher_internal:subscription_count ---------------------------------

const counts = (raw, channel, from = 0) => raw.messages.items
  .slice(from)
  .filter((m) => m.data?.event === 'pusher_internal:subscription_count' && m.data.channel === channel)
  .map((m) => parseData(m.data.data));

function waitCount(raw, channel, n, from = 0) {
  return raw.waitForMessage((d) => d.event === 'pusher_internal:subscription_count' && d.channel === channel && parseData(d.data)?.subscription_count === n, 5000, `subscription_count ${n} on ${channel}`, from);
}

clTest(ref, 'subscription_count: true → pusher_internal:subscription_count {"subscription_count":N} on every subscribe/unsubscribe, counted across gateways', 20_000, async (t, { cluster }) => {
  const channel = `${tag()}-counted`;
  const r1 = await rawOn(t, cluster.A, [channel]);
  const m1 = await waitCount(r1, channel, 1);
  assert.deepEqual(parseData(m1.data.data), { subscription_count: 1 });
  const from1 = mark(r1);
  const r2 = await rawOn(t, cluster.B, [channel]);
  await waitCount(r1, channel, 2, from1);
  await waitCount(r2, channel, 2);
  const from1b = mark(r1);
  r2.send({ event: 'pusher:unsubscribe', data: { channel } });
  await waitCount(r1, channel, 1, from1b);
  // A disconnect counts as an unsubscribe.
  const from1c = mark(r1);
  const r3 = await rawOn(t, cluster.B, [channel]);
  await waitCount(r1, channel, 2, from1c);
  const from1d = mark(r1);
  r3.close();
  await waitCount(r1, channel, 1, from1d);
  assert.deepEqual(counts(r1, channel).map((c) => c.subscription_count), [1, 2, 1, 2, 1]);
});

clTest(ref, "pusher-js exposes the count as the channel's subscriptionCount and pusher:subscription_count", 20_000, async (t, { cluster }) => {
  const p = tag();
  const client = makePusherClient(cluster.B);
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const ch = client.subscribe(`${p}-pjs`);
  const seen = new Inbox();
  ch.bind('pusher:subscription_count', (d) => seen.push(d.subscription_count));
  await waitForSubscribed(ch);
  await rawOn(t, cluster.A, [`${p}-pjs`]);
  await seen.waitFor((xs) => xs.includes(2), 5000, () => `subscription_count 2 (seen ${JSON.stringify(seen.items)})`);
  assert.equal(ch.subscriptionCount, 2);
});

clTest(ref, 'no pusher_internal:subscription_count on presence channels, nor for apps without subscription_count', 20_000, async (t, { cluster }) => {
  const p = tag();
  const presence = `presence-${p}`;
  const rp = await rawOn(t, cluster.A, [presence], 'a');
  await rawOn(t, cluster.B, [presence], 'b');
  const plainCh = `${p}-plain`;
  const rq = await rawOn(t, cluster.gw(0, 'plain'), [plainCh]);
  await rawOn(t, cluster.gw(1, 'plain'), [plainCh]);
  // Sentinels: server events after the subscriptions.
  await ref.sdk(0).trigger(presence, 'sentinel', {});
  await ref.sdk(0, 'plain').trigger(plainCh, 'sentinel', {});
  await rp.waitForMessage((d) => d.event === 'sentinel', 5000, 'the presence sentinel');
  await rq.waitForMessage((d) => d.event === 'sentinel', 5000, 'the plain-app sentinel');
  await sleep(300);
  assert.deepEqual(counts(rp, presence), []);
  assert.deepEqual(counts(rq, plainCh), []);
});
