// Cache channels (cache-, private-cache-, private-encrypted-cache-,
// presence-cache-): the last API-triggered event is kept even with no
// subscriber and sent right after subscription_succeeded, else pusher:cache_miss.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makePusherClient, waitForState, waitForSubscribed } from '../lib/clients.mjs';
import {
  clTest,
  closeRaw,
  eventually,
  json,
  mark,
  openRaw,
  parseData,
  rawSubscribeOk,
  signChannel,
  useCluster,
} from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';

const ref = useCluster({ apps: [{ name: 'main' }, { name: 'other' }] });

/** The message right after this subscription's subscription_succeeded, on the same channel. */
async function firstAfterSucceeded(raw, channel, from, ms = 5000) {
  await raw.waitForMessage((d) => d.event === 'pusher_internal:subscription_succeeded' && d.channel === channel, ms, `subscription_succeeded on ${channel}`, from);
  const m = await raw.waitForMessage((d) => d.channel === channel && d.event !== 'pusher_internal:subscription_succeeded' && !String(d.event).startsWith('pusher_internal:'), ms, `the first event on ${channel} after subscription_succeeded`, from);
  // Nothing else on this channel may come between subscription_succeeded and it.
  const items = raw.messages.items.slice(from).filter((x) => x.data?.channel === channel);
  const i = items.findIndex((x) => x.data.event === 'pusher_internal:subscription_succeeded');
  const between = items.slice(i + 1, items.indexOf(m)).filter((x) => !String(x.data.event).startsWith('pusher_internal:'));
  assert.deepEqual(between.map((x) => x.raw), [], 'the cached event / cache_miss must come first');
  return m;
}

/**
 * Waits until the cluster's cache of `channel` holds `event` (with `data`,
 * when given), as GET /channels/{channel}?info=cache reports it. A trigger's
 * 200 means the job is stored; the worker writes the cache after that, so a
 * subscriber that came at once would race the write.
 */
async function awaitCached(channel, event, data, { sdk = ref.sdk(0) } = {}) {
  await eventually(async () => {
    const body = await json(sdk.get({ path: `/channels/${channel}`, params: { info: 'cache' } }));
    assert.equal(body.cache?.event, event, `cached event of ${channel}: ${JSON.stringify(body)}`);
    if (data !== undefined) assert.equal(body.cache.data, JSON.stringify(data), `cached data of ${channel}: ${JSON.stringify(body)}`);
  }, 10_000);
}

async function subscribeAndFirst(view, channel, auth = {}) {
  const raw = await openRaw(view);
  const from = mark(raw);
  const data = { channel, ...auth };
  raw.send({ event: 'pusher:subscribe', data });
  try {
    const m = await firstAfterSucceeded(raw, channel, from);
    return { raw, m };
  } catch (err) {
    raw.close();
    throw err;
  }
}

clTest(ref, 'cache-: an event triggered with nobody subscribed is delivered right after subscription_succeeded on the other gateway', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('cache-prices');
  await ref.sdk(0).trigger(channel, 'Price', { eur: 10 });
  await awaitCached(channel, 'Price', { eur: 10 });
  const { raw, m } = await subscribeAndFirst(cluster.B, channel);
  t.after(() => closeRaw(raw));
  assert.equal(m.data.event, 'Price');
  assert.deepEqual(parseData(m.data.data), { eur: 10 });
});

clTest(ref, 'cache-: only the last triggered event is kept', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('cache-last');
  const sdk = ref.sdk(1);
  await sdk.trigger(channel, 'Price', { eur: 1 });
  await sdk.trigger(channel, 'Price', { eur: 2 });
  await sdk.triggerBatch([{ channel, name: 'Price', data: { eur: 3 } }]);
  await awaitCached(channel, 'Price', { eur: 3 }, { sdk });
  const { raw, m } = await subscribeAndFirst(cluster.A, channel);
  t.after(() => closeRaw(raw));
  assert.deepEqual(parseData(m.data.data), { eur: 3 });
  await sdk.trigger(channel, 'live', {});
  await raw.waitForMessage((d) => d.event === 'live', 5000, 'a live event');
  const prices = raw.messages.items.filter((x) => x.data?.event === 'Price').map((x) => parseData(x.data.data).eur);
  assert.deepEqual(prices, [3], 'only the last cached event, once');
});

clTest(ref, 'cache-: a fresh channel gets exactly {"event":"pusher:cache_miss","channel":...} after subscription_succeeded', 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('cache-empty');
  const { raw, m } = await subscribeAndFirst(cluster.A, channel);
  t.after(() => closeRaw(raw));
  assert.deepEqual(m.data, { event: 'pusher:cache_miss', channel });
});

clTest(ref, "pusher-js: the channel's pusher:cache_miss fires on a fresh cache channel", 15_000, async (t, { cluster }) => {
  const client = makePusherClient(cluster.B);
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const misses = new Inbox();
  const channel = client.subscribe(uniqueChannel('cache-pjs'));
  channel.bind('pusher:cache_miss', (d) => misses.push(d ?? null));
  await waitForSubscribed(channel);
  await misses.waitForCount(1, 5000, 'pusher:cache_miss');
});

clTest(ref, 'cache-: the cached event outlives its subscribers', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('cache-outlive');
  const first = await openRaw(cluster.A);
  await rawSubscribeOk(first, channel);
  await ref.sdk(0).trigger(channel, 'Kept', { v: 'x' });
  await first.waitForMessage((d) => d.event === 'Kept', 5000, 'the live event');
  first.close();
  // The channel must be empty cluster-wide before the next subscriber comes.
  await eventually(async () => {
    assert.deepEqual(await json(ref.sdk(1).get({ path: `/channels/${channel}` })), { occupied: false });
  }, 10_000);
  await awaitCached(channel, 'Kept', { v: 'x' });
  const { raw, m } = await subscribeAndFirst(cluster.B, channel);
  t.after(() => closeRaw(raw));
  assert.equal(m.data.event, 'Kept');
});

clTest(ref, 'private-cache-: the cached event is sent after an authorised subscription', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-cache-acct');
  await ref.sdk(0).trigger(channel, 'Balance', { total: 5 });
  await awaitCached(channel, 'Balance', { total: 5 });
  const raw = await openRaw(cluster.B);
  t.after(() => closeRaw(raw));
  const from = mark(raw);
  raw.send({ event: 'pusher:subscribe', data: { channel, ...signChannel(ref.sdk(1), raw, channel) } });
  const m = await firstAfterSucceeded(raw, channel, from);
  assert.equal(m.data.event, 'Balance');
  assert.deepEqual(parseData(m.data.data), { total: 5 });
});

clTest(ref, 'presence-cache-: the cached event follows the presence subscription_succeeded', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-cache-lobby');
  await ref.sdk(1).trigger(channel, 'Topic', { topic: 'hello' });
  await awaitCached(channel, 'Topic', { topic: 'hello' });
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const from = mark(raw);
  raw.send({ event: 'pusher:subscribe', data: { channel, ...ref.sdk(0).authorizeChannel(raw.socketId, channel, { user_id: '1', user_info: {} }) } });
  const m = await firstAfterSucceeded(raw, channel, from);
  assert.equal(m.data.event, 'Topic');
  assert.deepEqual(parseData(m.data.data), { topic: 'hello' });
});

clTest(ref, 'private-encrypted-cache-: pusher-js decrypts the cached event the SDK encrypted', 20_000, async (t, { cluster, auth }) => {
  const name = uniqueChannel('private-encrypted-cache-vault');
  await ref.sdk(0).trigger(name, 'Sealed', { pin: '0000' });
  await awaitCached(name, 'Sealed'); // its data is the ciphertext
  const client = makePusherClient(cluster.B, { channelAuthorization: { endpoint: auth.channelEndpoint(), transport: 'ajax' } });
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const got = new Inbox();
  const misses = new Inbox();
  const channel = client.subscribe(name);
  channel.bind('Sealed', (d) => got.push(d));
  channel.bind('pusher:cache_miss', () => misses.push(1));
  const [d] = await got.waitForCount(1, 5000, 'the cached encrypted event');
  assert.deepEqual(d, { pin: '0000' });
  assert.equal(misses.items.length, 0);
});

clTest(ref, 'a non-cache channel gets neither a cached event nor cache_miss', 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('plain');
  // A first subscriber receiving Old proves it was delivered before the
  // second one subscribes (which could otherwise get it live).
  const first = await openRaw(cluster.A);
  t.after(() => closeRaw(first));
  await rawSubscribeOk(first, channel);
  await ref.sdk(0).trigger(channel, 'Old', {});
  await first.waitForMessage((d) => d.event === 'Old', 5000, 'Old, live');
  const raw = await openRaw(cluster.B);
  t.after(() => closeRaw(raw));
  await rawSubscribeOk(raw, channel);
  await ref.sdk(0).trigger(channel, 'New', {});
  await raw.waitForMessage((d) => d.event === 'New', 5000, 'the live event');
  const names = raw.messages.items.filter((x) => x.data?.channel === channel).map((x) => x.data.event);
  assert.deepEqual(names, ['pusher_internal:subscription_succeeded', 'New']);
});

clTest(ref, "the cache is per app: another app's subscriber of the same cache channel gets cache_miss", 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('cache-shared-name');
  await ref.sdk(0).trigger(channel, 'MainOnly', {});
  await awaitCached(channel, 'MainOnly', {}); // cached for app main, so the miss below means per app
  const { raw, m } = await subscribeAndFirst(cluster.gw(1, 'other'), channel);
  t.after(() => closeRaw(raw));
  assert.deepEqual(m.data, { event: 'pusher:cache_miss', channel });
});

clTest(ref, 'client events are not cached (the API-triggered event stays cached)', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-cache-whisper');
  await ref.sdk(0).trigger(channel, 'FromServer', { s: 1 });
  await awaitCached(channel, 'FromServer', { s: 1 });
  const a = await openRaw(cluster.A);
  t.after(() => closeRaw(a));
  await rawSubscribeOk(a, channel, signChannel(ref.sdk(0), a, channel));
  // A bystander on the other gateway receiving the client event means it
  // has gone all the way through the cluster.
  const bystander = await openRaw(cluster.B);
  t.after(() => closeRaw(bystander));
  await rawSubscribeOk(bystander, channel, signChannel(ref.sdk(1), bystander, channel));
  a.send({ event: 'client-typing', channel, data: { c: 1 } });
  await bystander.waitForMessage((d) => d.event === 'client-typing', 5000, 'the client event on the other gateway');
  await awaitCached(channel, 'FromServer', { s: 1 });
  const raw2 = await openRaw(cluster.B);
  t.after(() => closeRaw(raw2));
  const from = mark(raw2);
  raw2.send({ event: 'pusher:subscribe', data: { channel, ...signChannel(ref.sdk(1), raw2, channel) } });
  const m2 = await firstAfterSucceeded(raw2, channel, from);
  assert.equal(m2.data.event, 'FromServer', `a client event must not replace the cached server event (got ${m2.raw})`);
});

clTest(ref, 'GET /channels/{cache channel}?info=cache reports the cached event (Pusher\'s {data, ttl})', 15_000, async (t) => {
  const channel = uniqueChannel('cache-info');
  await ref.sdk(0).trigger(channel, 'Snap', { a: 1 });
  const body = await eventually(async () => {
    const b = await json(ref.sdk(1).get({ path: `/channels/${channel}`, params: { info: 'cache' } }));
    assert.equal(b.cache?.event, 'Snap', `the worker's cache write: ${JSON.stringify(b)}`);
    return b;
  }, 10_000);
  assert.equal(body.occupied, false, JSON.stringify(body));
  assert.equal(typeof body.cache, 'object', `cache attribute: ${JSON.stringify(body)}`);
  assert.equal(body.cache.data, JSON.stringify({ a: 1 }), JSON.stringify(body));
  assert.ok(Number.isInteger(body.cache.ttl) && body.cache.ttl > 0 && body.cache.ttl <= 1800, JSON.stringify(body));
});
