// User authentication (pusher-js signin()), server-to-user messages
// (sendToUser), terminate_connections and watchlist events, across two gateways.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makePusherClient, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import {
  assertAlive,
  clTest,
  closeRaw,
  expectSubscriptionRejected,
  mark,
  openRaw,
  parseData,
  rawSubscribeOk,
  sleep,
  useCluster,
  waitPusherError,
} from '../lib/cluster-suite.mjs';

const ref = useCluster({ apps: [{ name: 'main' }, { name: 'other' }] });

let userSeq = 0;
/** A user id unique to this run (ids are global per app across the file's tests). */
const uid = (label = 'u') => `${label}${Date.now().toString(36)}${++userSeq}`;

/** A pusher-js client on `view` that signs in as `user` (with an optional watchlist) and waits until it is signed in. */
async function signedInClient(t, view, user, { watchlist } = {}) {
  const client = makePusherClient(view, {
    userAuthentication: { endpoint: ref.auth.userEndpoint({ app: view.appName, user, watchlist: watchlist?.join(',') }), transport: 'ajax' },
    channelAuthorization: { endpoint: ref.auth.channelEndpoint({ app: view.appName, user }), transport: 'ajax' },
  });
  t.after(() => closeAll(client));
  const errors = new Inbox();
  client.user.bind('pusher:signin_error', (e) => errors.push(e));
  await waitForState(client, 'connected');
  client.signin();
  await withTimeout(client.user.signinDonePromise, 5000, () => `signin of ${user} (errors: ${JSON.stringify(errors.items)})`);
  assert.equal(client.user.user_data?.id, user, `signin failed (errors: ${JSON.stringify(errors.items)})`);
  await waitForSubscribed(client.user.serverToUserChannel, 5000);
  return client;
}

/** Signs a raw connection in as `userData` (default {id}); resolves with the signin_success message. */
async function rawSignin(raw, userData, appName = 'main') {
  const from = mark(raw);
  const signed = ref.sdk(0, appName).authenticateUser(raw.socketId, userData);
  raw.send({ event: 'pusher:signin', data: signed });
  const m = await raw.waitForMessage((d) => d.event === 'pusher:signin_success' || d.event === 'pusher:error', 5000, 'signin_success', from);
  assert.equal(m.data.event, 'pusher:signin_success', `signin of ${JSON.stringify(userData)}: ${m.raw}`);
  return { m, signed };
}

/** A raw connection on `view` signed in as `user` and subscribed to its #server-to-user channel. */
async function rawUser(t, view, user) {
  const raw = await openRaw(view);
  t.after(() => closeRaw(raw));
  await rawSignin(raw, { id: user }, view.appName);
  await rawSubscribeOk(raw, `#server-to-user-${user}`);
  return raw;
}

clTest(ref, "pusher-js signin() then sendToUser() through gateway A reaches the user's connections on both gateways only", 30_000, async (t, { cluster }) => {
  const alice = uid('alice');
  const bob = uid('bob');
  const a1 = await signedInClient(t, cluster.B, alice);
  const a2 = await signedInClient(t, cluster.A, alice);
  const b1 = await signedInClient(t, cluster.B, bob);
  const got = [new Inbox(), new Inbox(), new Inbox()];
  [a1, a2, b1].forEach((c, i) => c.user.bind('notice', (d) => got[i].push(d)));

  await ref.sdk(0).sendToUser(alice, 'notice', { text: 'for alice' });
  await got[0].waitForCount(1, 5000, 'the user event at alice on B');
  await got[1].waitForCount(1, 5000, 'the user event at alice on A');
  await ref.sdk(1).sendToUser(bob, 'notice', { text: 'for bob' });
  await got[2].waitForCount(1, 5000, 'the user event at bob');
  await sleep(200);
  assert.deepEqual(got[0].items, [{ text: 'for alice' }]);
  assert.deepEqual(got[1].items, [{ text: 'for alice' }]);
  assert.deepEqual(got[2].items, [{ text: 'for bob' }], "bob must not get alice's event");
});

clTest(ref, 'raw: pusher:signin gets pusher:signin_success carrying the user_data', 15_000, async (t, { cluster }) => {
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const { m, signed } = await rawSignin(raw, { id: uid(), user_info: { name: 'Zoë' } });
  const data = parseData(m.data.data);
  assert.equal(data.user_data, signed.user_data);
});

clTest(ref, 'raw: a forged signin gets pusher:error 4009; a signed-in user on the same app is unaffected', 20_000, async (t, { cluster }) => {
  const victim = uid('v');
  const by = await rawUser(t, cluster.B, victim);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const good = ref.sdk(0).authenticateUser(raw.socketId, { id: victim });
  const from = mark(raw);
  raw.send({ event: 'pusher:signin', data: { auth: `${good.auth.split(':')[0]}:${'a'.repeat(64)}`, user_data: good.user_data } });
  const err = await waitPusherError(raw, from);
  assert.equal(err.code, 4009, JSON.stringify(err));
  assert.ok(!raw.messages.items.some((m) => m.data?.event === 'pusher:signin_success'), 'no signin_success for a forged signin');
  const fromBy = mark(by);
  await ref.sdk(0).sendToUser(victim, 'still', { ok: 1 });
  await by.waitForMessage((d) => d.event === 'still', 5000, 'the user event at the bystander', fromBy);
});

clTest(ref, 'pusher-js signin() with a forged signature gets error 4009 and is not signed in', 20_000, async (t, { cluster, auth }) => {
  const client = makePusherClient(cluster.B, { userAuthentication: { endpoint: auth.userEndpoint({ user: uid(), mode: 'forge' }), transport: 'ajax' } });
  t.after(() => closeAll(client));
  const errors = new Inbox();
  client.connection.bind('error', (e) => errors.push(e));
  await waitForState(client, 'connected');
  client.signin();
  await errors.waitFor((xs) => xs.some((e) => (e?.data?.code ?? e?.error?.data?.code) === 4009), 5000, () => `error 4009 (errors: ${JSON.stringify(errors.items)})`);
  await sleep(200);
  assert.equal(client.user.user_data, null, 'must not be signed in');
});

clTest(ref, "raw: a signin signed with another app's secret gets pusher:error 4009", 15_000, async (t, { cluster }) => {
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const from = mark(raw);
  raw.send({ event: 'pusher:signin', data: ref.sdk(0, 'other').authenticateUser(raw.socketId, { id: uid() }) });
  const err = await waitPusherError(raw, from);
  assert.equal(err.code, 4009, JSON.stringify(err));
});

clTest(ref, 'raw: subscribing to #server-to-user-X without signing in gets subscription_error + 4009', 15_000, async (t, { cluster }) => {
  const target = uid('t');
  const victim = await rawUser(t, cluster.B, target);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  await expectSubscriptionRejected(raw, `#server-to-user-${target}`, {});
  const from = mark(raw);
  const fromV = mark(victim);
  await ref.sdk(0).sendToUser(target, 'private-note', { n: 1 });
  await victim.waitForMessage((d) => d.event === 'private-note', 5000, 'the user event at the real user', fromV);
  await sleep(200);
  assert.ok(!raw.messages.items.slice(from).some((m) => m.data?.event === 'private-note'), 'the eavesdropper must not get the user event');
});

clTest(ref, 'raw: signed in as Y, subscribing to #server-to-user-X gets subscription_error + 4009 (and #server-to-user-Y works)', 15_000, async (t, { cluster }) => {
  const x = uid('x');
  const y = uid('y');
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  await rawSignin(raw, { id: y });
  await expectSubscriptionRejected(raw, `#server-to-user-${x}`, {});
  await rawSubscribeOk(raw, `#server-to-user-${y}`);
});

clTest(ref, "terminateUserConnections(id) through gateway A closes the user's signed-in connections on both gateways with 4009; other users stay", 30_000, async (t, { cluster }) => {
  const victim = uid('victim');
  const other = uid('other');
  const v1 = await rawUser(t, cluster.A, victim);
  const v2 = await rawUser(t, cluster.B, victim);
  const o1 = await rawUser(t, cluster.B, other);

  const res = await ref.sdk(0).terminateUserConnections(victim);
  assert.equal(res.status, 200);
  for (const [label, v] of [['on A', v1], ['on B', v2]]) {
    const { code } = await v.waitClose(5000);
    assert.equal(code, 4009, `close code of the victim's connection ${label}`);
    const errs = v.messages.items.filter((m) => m.data?.event === 'pusher:error').map((m) => parseData(m.data.data));
    assert.equal(errs.at(-1)?.code, 4009, `pusher:error before the close ${label}: ${JSON.stringify(errs)}`);
  }
  await assertAlive(o1);
  const fromO = mark(o1);
  await ref.sdk(1).sendToUser(other, 'still-here', {});
  await o1.waitForMessage((d) => d.event === 'still-here', 5000, "the other user's event", fromO);
});

clTest(ref, 'terminateUserConnections(id) also closes a presence member with that user_id (Reverb), and leaves other users alone', 30_000, async (t, { cluster }) => {
  // Resound closes signed-in connections (Pusher) and connections whose
  // presence channel_data carries the id (Reverb, whose apps rely on it).
  const victim = uid('victim');
  const v1 = await rawUser(t, cluster.B, victim);
  const presenceOnly = await openRaw(cluster.A);
  const bystander = await openRaw(cluster.A);
  t.after(() => closeRaw(presenceOnly, bystander));
  const pch = `presence-term-${Date.now().toString(36)}`;
  await rawSubscribeOk(presenceOnly, pch, ref.sdk(0).authorizeChannel(presenceOnly.socketId, pch, { user_id: victim, user_info: {} }));
  await rawSubscribeOk(bystander, pch, ref.sdk(0).authorizeChannel(bystander.socketId, pch, { user_id: uid('other'), user_info: {} }));
  await ref.sdk(0).terminateUserConnections(victim);
  assert.equal((await v1.waitClose(5000)).code, 4009);
  assert.equal((await presenceOnly.waitClose(5000)).code, 4009);
  await assertAlive(bystander);
});

clTest(ref, 'watchlist: pusher-js gets online when a watched user signs in on the other gateway and offline when their last connection goes', 45_000, async (t, { cluster }) => {
  const watcher = uid('w');
  const u2 = uid('two');
  const u3 = uid('three');
  const w = await signedInClient(t, cluster.A, watcher, { watchlist: [u2, u3] });
  const events = new Inbox();
  w.user.watchlist.bind('online', (e) => events.push({ name: 'online', ids: e.user_ids }));
  w.user.watchlist.bind('offline', (e) => events.push({ name: 'offline', ids: e.user_ids }));
  const seen = (name, id) => (xs) => xs.some((e) => e.name === name && e.ids.includes(id));
  const flat = (name) => events.items.filter((e) => e.name === name).flatMap((e) => e.ids);

  const c2a = await signedInClient(t, cluster.B, u2);
  await events.waitFor(seen('online', u2), 5000, () => `online [${u2}] (events: ${JSON.stringify(events.items)})`);
  const c2b = await signedInClient(t, cluster.A, u2); // second connection: no second online
  const c3 = await signedInClient(t, cluster.B, u3); // sentinel
  await events.waitFor(seen('online', u3), 5000, () => `online [${u3}] (events: ${JSON.stringify(events.items)})`);
  await sleep(200);
  assert.deepEqual(flat('online'), [u2, u3], 'one online per user');

  closeAll(c2a); // u2 still has c2b
  closeAll(c3); // sentinel
  await events.waitFor(seen('offline', u3), 5000, () => `offline [${u3}] (events: ${JSON.stringify(events.items)})`);
  await sleep(200);
  assert.deepEqual(flat('offline'), [u3], `${u2} still has a connection`);
  closeAll(c2b);
  await events.waitFor(seen('offline', u2), 5000, () => `offline [${u2}] (events: ${JSON.stringify(events.items)})`);
  assert.deepEqual(flat('offline'), [u3, u2]);
});

clTest(ref, 'raw: watchlist events arrive as pusher_internal:watchlist_events {events:[{name,user_ids}]}', 20_000, async (t, { cluster }) => {
  const watched = uid('watched');
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  await rawSignin(raw, { id: uid('watcher'), watchlist: [watched] });
  const from = mark(raw);
  const other = await openRaw(cluster.B);
  t.after(() => closeRaw(other));
  await rawSignin(other, { id: watched });
  const m = await raw.waitForMessage((d) => d.event === 'pusher_internal:watchlist_events', 5000, 'watchlist_events', from);
  assert.deepEqual(parseData(m.data.data), { events: [{ name: 'online', user_ids: [watched] }] });
});
