// Private channels in cluster mode: pusher-js and laravel-echo authorised by
// an auth endpoint that calls the pusher SDK (as Laravel does), and every way
// a subscription can be refused.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makeEcho, makePusherClient, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import {
  assertAlive,
  assertReceives,
  channelEvents,
  clTest,
  closeRaw,
  expectSubscriptionRejected,
  mark,
  openRaw,
  rawSubscribeOk,
  signChannel,
  sleep,
  useCluster,
} from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';

const ref = useCluster({ apps: [{ name: 'main' }, { name: 'other' }] });

function echoSubscribed(ch, ms = 10_000) {
  return withTimeout(new Promise((resolve) => ch.subscribed(resolve)), ms, `Echo subscription to ${ch.name}`);
}

async function connectedEcho(view, extra) {
  const echo = makeEcho(view, extra);
  try {
    await waitForState(echo.connector.pusher, 'connected', 10_000);
  } catch (err) {
    closeAll(echo);
    throw err;
  }
  return echo;
}

/** A raw connection on gateway B properly subscribed to `channel` (the bystander). */
async function bystander(t, channel) {
  const { cluster } = ref;
  const raw = await openRaw(cluster.B);
  t.after(() => closeRaw(raw));
  await rawSubscribeOk(raw, channel, signChannel(ref.sdk(1), raw, channel));
  return raw;
}

/** The bystander still gets events and the rejected connection got none on the channel. */
async function assertBystanderUnaffected(bystanderRaw, rejectedRaw, channel) {
  const from = mark(rejectedRaw);
  await assertReceives(bystanderRaw, channel, ref.sdk(0));
  await sleep(200);
  assert.deepEqual(channelEvents(rejectedRaw, channel, from), [], 'the rejected connection must not receive events on the channel');
}

clTest(ref, 'pusher-js subscribes to a private channel through the auth endpoint and gets an event triggered on the other gateway', 20_000, async (t, { cluster, auth }) => {
  const name = uniqueChannel('private-pjs');
  const client = makePusherClient(cluster.B, { channelAuthorization: { endpoint: auth.channelEndpoint(), transport: 'ajax' } });
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const channel = client.subscribe(name);
  await waitForSubscribed(channel);
  const req = auth.requests.find((r) => r.form.channel_name === name);
  assert.ok(req, 'the auth endpoint must have been called');
  assert.equal(req.form.socket_id, client.connection.socket_id);

  const got = new Inbox();
  channel.bind('Secret', (d) => got.push(d));
  await ref.sdk(0).trigger(name, 'Secret', { n: 1 });
  const [d] = await got.waitForCount(1, 5000, 'the event on B');
  assert.deepEqual(d, { n: 1 });
});

clTest(ref, "Echo private('x').listen() on both gateways receives an event triggered through gateway A", 20_000, async (t, { cluster, auth }) => {
  const base = uniqueChannel('orders');
  const e1 = await connectedEcho(cluster.A, { authEndpoint: auth.channelEndpoint() });
  const e2 = await connectedEcho(cluster.B, { authEndpoint: auth.channelEndpoint() });
  t.after(() => closeAll(e1, e2));
  const got1 = new Inbox();
  const got2 = new Inbox();
  const c1 = e1.private(base).listen('OrderShipped', (d) => got1.push(d));
  const c2 = e2.private(base).listen('OrderShipped', (d) => got2.push(d));
  assert.equal(c1.name, `private-${base}`);
  await Promise.all([echoSubscribed(c1), echoSubscribed(c2)]);
  await ref.sdk(0).trigger(`private-${base}`, 'App\\Events\\OrderShipped', { id: 7 });
  await got1.waitForCount(1, 5000, 'the event at the Echo on A');
  await got2.waitForCount(1, 5000, 'the event at the Echo on B');
  assert.deepEqual(got1.items, [{ id: 7 }]);
  assert.deepEqual(got2.items, [{ id: 7 }]);
});

clTest(ref, "Echo .error(cb) fires for a forged auth signature; the connection stays connected and others on the channel are unaffected", 20_000, async (t, { cluster, auth }) => {
  const base = uniqueChannel('forged');
  const good = await connectedEcho(cluster.B, { authEndpoint: auth.channelEndpoint() });
  const bad = await connectedEcho(cluster.A, { authEndpoint: auth.channelEndpoint({ mode: 'forge' }) });
  t.after(() => closeAll(good, bad));
  const connErrors = new Inbox();
  bad.connector.pusher.connection.bind('error', (e) => connErrors.push(e));
  const goodGot = new Inbox();
  const badGot = new Inbox();
  const errors = new Inbox();
  const gc = good.private(base).listen('.ping', (d) => goodGot.push(d));
  await echoSubscribed(gc);
  bad.private(base).listen('.ping', (d) => badGot.push(d)).error((e) => errors.push(e));

  const [e] = await errors.waitForCount(1, 5000, "Echo's .error() callback");
  assert.equal(e.type, 'AuthError', `error: ${JSON.stringify(e)}`);
  assert.equal(e.status, 401, `error: ${JSON.stringify(e)}`);
  assert.equal(typeof e.error, 'string');
  const [ce] = await connErrors.waitForCount(1, 5000, 'pusher:error on the connection');
  assert.equal(ce?.data?.code, 4009, `connection error: ${JSON.stringify(ce)}`);

  await ref.sdk(0).trigger(`private-${base}`, 'ping', { n: 1 });
  await goodGot.waitForCount(1, 5000, 'the event at the properly authorised Echo');
  await sleep(300);
  assert.deepEqual(badGot.items, [], 'the refused Echo must not get channel events');
  assert.equal(bad.connectionStatus(), 'connected', 'a refused subscription must not close the connection');
});

clTest(ref, "pusher-js: a forged signature fires the channel's pusher:subscription_error (AuthError, 401)", 20_000, async (t, { cluster, auth }) => {
  const name = uniqueChannel('private-forged-pjs');
  const client = makePusherClient(cluster.A, { channelAuthorization: { endpoint: auth.channelEndpoint({ mode: 'forge' }), transport: 'ajax' } });
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const errs = new Inbox();
  const channel = client.subscribe(name);
  channel.bind('pusher:subscription_error', (e) => errs.push(e));
  const [e] = await errs.waitForCount(1, 5000, 'pusher:subscription_error');
  assert.equal(e.type, 'AuthError');
  assert.equal(e.status, 401);
  assert.equal(channel.subscribed, false);
  await sleep(300);
  assert.equal(client.connection.state, 'connected');
});

clTest(ref, 'raw: a forged private signature gets subscription_error (AuthError 401) + pusher:error 4009; a bystander is unaffected', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-raw-forged');
  const by = await bystander(t, channel);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const good = signChannel(ref.sdk(0), raw, channel).auth;
  const forged = `${good.split(':')[0]}:${'0'.repeat(64)}`;
  await expectSubscriptionRejected(raw, channel, { auth: forged }, { type: 'AuthError', status: 401 });
  await assertBystanderUnaffected(by, raw, channel);
});

clTest(ref, "raw: a valid signature behind another app's key gets subscription_error 401 + 4009; a bystander is unaffected", 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-raw-wrongkey');
  const by = await bystander(t, channel);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const sig = signChannel(ref.sdk(0), raw, channel).auth.split(':')[1];
  await expectSubscriptionRejected(raw, channel, { auth: `${cluster.app('other').key}:${sig}` }, { type: 'AuthError', status: 401 });
  await assertBystanderUnaffected(by, raw, channel);
});

clTest(ref, "raw: auth signed by another app (its key and secret) gets subscription_error 401 + 4009; a bystander is unaffected", 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-raw-otherapp');
  const by = await bystander(t, channel);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const otherAuth = signChannel(ref.sdk(0, 'other'), raw, channel).auth;
  assert.ok(otherAuth.startsWith(`${cluster.app('other').key}:`));
  await expectSubscriptionRejected(raw, channel, { auth: otherAuth }, { type: 'AuthError', status: 401 });
  await assertBystanderUnaffected(by, raw, channel);
});

clTest(ref, 'raw: a private subscription without auth gets subscription_error 401 + 4009; a bystander is unaffected', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-raw-noauth');
  const by = await bystander(t, channel);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  await expectSubscriptionRejected(raw, channel, {}, { type: 'AuthError', status: 401 });
  await assertBystanderUnaffected(by, raw, channel);
});

clTest(ref, 'raw: a signature for another socket_id is refused (401 + 4009)', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-raw-othersocket');
  const by = await bystander(t, channel);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const stolen = signChannel(ref.sdk(0), by, channel).auth; // signed for the bystander's socket
  await expectSubscriptionRejected(raw, channel, { auth: stolen }, { type: 'AuthError', status: 401 });
  await assertBystanderUnaffected(by, raw, channel);
});

function nameOfLength(prefix, len) {
  const base = `${prefix}${Date.now().toString(36)}-`;
  return base + 'x'.repeat(len - base.length);
}

clTest(ref, 'raw: a 165-character private channel name (correctly signed) is refused with subscription_error + 4009; the connection and its other channel are unaffected', 20_000, async (t, { cluster }) => {
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const okChannel = uniqueChannel('private-ok');
  await rawSubscribeOk(raw, okChannel, signChannel(ref.sdk(0), raw, okChannel));
  const long = nameOfLength('private-long-', 165);
  assert.equal(long.length, 165);
  const { subscriptionError } = await expectSubscriptionRejected(raw, long, signChannel(ref.sdk(0), raw, long));
  assert.ok(subscriptionError.status >= 400 && subscriptionError.status < 500, `status: ${JSON.stringify(subscriptionError)}`);
  await assertReceives(raw, okChannel, ref.sdk(1));
});

clTest(ref, 'raw: a 165-character public channel name is refused with subscription_error + 4009; a 164-character one is accepted', 20_000, async (t, { cluster }) => {
  const raw = await openRaw(cluster.B);
  t.after(() => closeRaw(raw));
  const long = nameOfLength('long-', 165);
  await expectSubscriptionRejected(raw, long, {});
  const max = nameOfLength('max-', 164);
  assert.equal(max.length, 164);
  await rawSubscribeOk(raw, max);
  await assertReceives(raw, max, ref.sdk(0));
  await assertAlive(raw);
});

clTest(ref, 'raw: a channel name with a character outside Pusher\'s set is refused with subscription_error + 4009', 15_000, async (t, { cluster }) => {
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  await expectSubscriptionRejected(raw, `bad channel!${Date.now()}`, {});
  await expectSubscriptionRejected(raw, `bad/slash${Date.now()}`, {});
  const ok = uniqueChannel('ok_chars-=@,.;');
  await rawSubscribeOk(raw, ok);
});
