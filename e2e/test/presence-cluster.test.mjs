// Presence channels across two gateways: laravel-echo's join()/here/joining/
// leaving with users spread over both gateways (one user on two connections),
// the subscription_succeeded payload, and the per-app presence limits.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makeEcho, waitForState, withTimeout } from '../lib/clients.mjs';
import {
  assertAlive,
  assertReceives,
  clTest,
  closeRaw,
  expectSubscriptionRejected,
  mark,
  openRaw,
  parseData,
  rawSubscribe,
  rawSubscribeOk,
  sleep,
  useCluster,
} from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';

const ref = useCluster({
  apps: [
    { name: 'main' },
    { name: 'small', max_presence_members: 3 },
  ],
});

const infoOf = (id) => ({ id, name: `User ${id}` });

/** An Echo client for `user` on `view` that joins presence-`base` and records here/joining/leaving. */
async function joinEcho(t, view, base, user) {
  const echo = makeEcho(view, { authEndpoint: ref.auth.channelEndpoint({ app: view.appName, user, info: JSON.stringify(infoOf(user)) }) });
  t.after(() => closeAll(echo));
  await waitForState(echo.connector.pusher, 'connected', 10_000);
  const log = new Inbox();
  const errors = new Inbox();
  const ch = echo
    .join(base)
    .here((users) => log.push({ type: 'here', users: users.map((u) => u.id).sort() }))
    .joining((u) => log.push({ type: 'joining', user: u.id }))
    .leaving((u) => log.push({ type: 'leaving', user: u.id }))
    .error((e) => errors.push(e));
  await withTimeout(
    log.waitFor((xs) => xs.some((x) => x.type === 'here'), 10_000, 'here()'),
    11_000,
    () => `here() for user ${user} (errors: ${JSON.stringify(errors.items)})`,
  );
  return { echo, ch, log, user, view };
}

const joined = (c) => c.log.items.filter((x) => x.type === 'joining').map((x) => x.user);
const left = (c) => c.log.items.filter((x) => x.type === 'leaving').map((x) => x.user);
const here = (c) => c.log.items.find((x) => x.type === 'here').users;

function waitJoining(c, user, ms = 5000) {
  return c.log.waitFor((xs) => xs.some((x) => x.type === 'joining' && x.user === user), ms, () => `joining(${user}) at user ${c.user} on ${c.view.label} (log: ${JSON.stringify(c.log.items)})`);
}
function waitLeaving(c, user, ms = 5000) {
  return c.log.waitFor((xs) => xs.some((x) => x.type === 'leaving' && x.user === user), ms, () => `leaving(${user}) at user ${c.user} on ${c.view.label} (log: ${JSON.stringify(c.log.items)})`);
}

clTest(ref, "Echo join(): here/joining/leaving across two gateways; a user's second connection neither joins nor leaves", 60_000, async (t, { cluster }) => {
  const base = uniqueChannel('room');
  const A = cluster.gw(0);
  const B = cluster.gw(1);

  const u1 = await joinEcho(t, A, base, '1');
  assert.deepEqual(here(u1), ['1']);

  const u2 = await joinEcho(t, B, base, '2');
  assert.deepEqual(here(u2), ['1', '2']);
  await waitJoining(u1, '2');

  const u3a = await joinEcho(t, A, base, '3');
  assert.deepEqual(here(u3a), ['1', '2', '3']);
  await Promise.all([waitJoining(u1, '3'), waitJoining(u2, '3')]);

  // User 3 again, on the other gateway: no joining anywhere.
  const u3b = await joinEcho(t, B, base, '3');
  assert.deepEqual(here(u3b), ['1', '2', '3'], 'here() lists each user once');
  assert.equal(u3b.ch.subscription.members.count, 3);

  // Sentinel: user 4 joins on B; once everyone saw that, a duplicate joining(3) would have arrived.
  const u4 = await joinEcho(t, B, base, '4');
  assert.deepEqual(here(u4), ['1', '2', '3', '4']);
  await Promise.all([u1, u2, u3a, u3b].map((c) => waitJoining(c, '4')));
  await sleep(300);
  assert.deepEqual(joined(u1), ['2', '3', '4'], "user 1's joining() calls");
  assert.deepEqual(joined(u2), ['3', '4'], "user 2's joining() calls");
  assert.deepEqual(joined(u3a), ['4'], "user 3 (A)'s joining() calls");
  assert.deepEqual(joined(u3b), ['4'], "user 3 (B)'s joining() calls");
  assert.equal(u1.ch.subscription.members.count, 4);

  // Close one of user 3's two connections: no leaving.
  closeAll(u3a.echo);
  // Sentinel: user 4 leaves; once everyone saw that, a premature leaving(3) would have arrived.
  closeAll(u4.echo);
  await Promise.all([u1, u2, u3b].map((c) => waitLeaving(c, '4')));
  await sleep(300);
  assert.deepEqual(left(u1), ['4'], "user 3 still has a connection: no leaving(3) at user 1");
  assert.deepEqual(left(u2), ['4'], "user 3 still has a connection: no leaving(3) at user 2");
  assert.equal(u1.ch.subscription.members.count, 3);

  // Close user 3's last connection: leaving(3) everywhere.
  closeAll(u3b.echo);
  await Promise.all([waitLeaving(u1, '3'), waitLeaving(u2, '3')]);
  assert.deepEqual(left(u1), ['4', '3']);
  assert.deepEqual(left(u2), ['4', '3']);
  assert.equal(u1.ch.subscription.members.count, 2);
});

/** Subscribes a raw connection to a presence channel as `user`. */
function presenceAuth(raw, channel, user, info = infoOf(String(user)), app = 'main') {
  return ref.sdk(0, app).authorizeChannel(raw.socketId, channel, { user_id: user, user_info: info });
}

clTest(ref, 'raw: presence subscription_succeeded is {presence:{ids,hash,count}}, unique by user across gateways, ids as strings', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-raw');
  const r1 = await openRaw(cluster.A);
  const r2 = await openRaw(cluster.B);
  const r3 = await openRaw(cluster.B);
  t.after(() => closeRaw(r1, r2, r3));
  const s1 = await rawSubscribeOk(r1, channel, presenceAuth(r1, channel, 'a'));
  assert.deepEqual(s1.data, { presence: { ids: ['a'], hash: { a: infoOf('a') }, count: 1 } });
  assert.equal(typeof s1.msg.data.data, 'string', 'subscription_succeeded data must be a JSON string');

  const s2 = await rawSubscribeOk(r2, channel, presenceAuth(r2, channel, 'b'));
  assert.deepEqual([...s2.data.presence.ids].sort(), ['a', 'b']);
  assert.deepEqual(s2.data.presence.hash, { a: infoOf('a'), b: infoOf('b') });
  assert.equal(s2.data.presence.count, 2);

  const added = await r1.waitForMessage((d) => d.event === 'pusher_internal:member_added' && d.channel === channel, 5000, 'member_added for b at r1');
  assert.deepEqual(parseData(added.data.data), { user_id: 'b', user_info: infoOf('b') });

  // 'a' again, on B.
  const from1 = mark(r1);
  const from2 = mark(r2);
  const s3 = await rawSubscribeOk(r3, channel, presenceAuth(r3, channel, 'a'));
  assert.deepEqual([...s3.data.presence.ids].sort(), ['a', 'b']);
  assert.equal(s3.data.presence.count, 2);
  // Unsubscribing one of a's two connections sends nothing; the sentinel trigger proves the quiet.
  r1.send({ event: 'pusher:unsubscribe', data: { channel } });
  await assertReceives(r2, channel, ref.sdk(0));
  await sleep(300);
  const memberEvents = (raw, from) => raw.messages.items.slice(from).filter((m) => /member_(added|removed)/.test(m.data?.event ?? '')).map((m) => m.raw);
  assert.deepEqual(memberEvents(r2, from2), [], "a's second connection and its first one's unsubscribe must not change membership");
  assert.deepEqual(memberEvents(r1, from1), []);
  // Now a's last connection goes.
  r3.close();
  const removed = await r2.waitForMessage((d) => d.event === 'pusher_internal:member_removed' && d.channel === channel, 5000, 'member_removed for a', from2);
  assert.deepEqual(parseData(removed.data.data), { user_id: 'a' });
});

clTest(ref, 'raw: a numeric user_id (as Laravel sends for int ids) is listed as a string id', 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-num');
  const r1 = await openRaw(cluster.A);
  const r2 = await openRaw(cluster.B);
  t.after(() => closeRaw(r1, r2));
  await rawSubscribeOk(r1, channel, presenceAuth(r1, channel, 42, { name: 'Forty-two' }));
  const s2 = await rawSubscribeOk(r2, channel, presenceAuth(r2, channel, 7, { name: 'Seven' }));
  assert.deepEqual([...s2.data.presence.ids].sort(), ['42', '7']);
  assert.deepEqual(s2.data.presence.hash, { 42: { name: 'Forty-two' }, 7: { name: 'Seven' } });
});

clTest(ref, 'raw: presence channel_data altered after signing is refused (401 + 4009); members are unaffected', 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-tamper');
  const member = await openRaw(cluster.B);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(member, raw));
  await rawSubscribeOk(member, channel, presenceAuth(member, channel, 'm'));
  const from = mark(member);
  const signed = presenceAuth(raw, channel, 'x');
  const tampered = { auth: signed.auth, channel_data: JSON.stringify({ user_id: 'admin', user_info: infoOf('admin') }) };
  await expectSubscriptionRejected(raw, channel, tampered, { type: 'AuthError', status: 401 });
  await assertReceives(member, channel, ref.sdk(0));
  assert.ok(!member.messages.items.slice(from).some((m) => m.data?.event === 'pusher_internal:member_added'), 'no member_added for a refused subscription');
});

async function fillSmallRoom(t, channel, cluster) {
  const members = [];
  for (const [i, user] of ['1', '2', '3'].entries()) {
    const raw = await openRaw(cluster.gw(i % 2, 'small'));
    t.after(() => closeRaw(raw));
    await rawSubscribeOk(raw, channel, presenceAuth(raw, channel, user, infoOf(user), 'small'));
    members.push(raw);
  }
  return members;
}

clTest(ref, 'max_presence_members=3: a 4th distinct member gets subscription_error (LimitReached 403) + 4009; members are unaffected', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-full');
  const members = await fillSmallRoom(t, channel, cluster);
  const froms = members.map(mark);
  const raw = await openRaw(cluster.gw(1, 'small'));
  t.after(() => closeRaw(raw));
  await expectSubscriptionRejected(raw, channel, presenceAuth(raw, channel, '4', infoOf('4'), 'small'), { type: 'LimitReached', status: 403 });
  for (const [i, m] of members.entries()) {
    await assertReceives(m, channel, ref.sdk(0, 'small'));
    assert.ok(!m.messages.items.slice(froms[i]).some((x) => x.data?.event === 'pusher_internal:member_added' && parseData(x.data.data)?.user_id === '4'), `member ${i + 1} must not see member_added for the refused user`);
    await assertAlive(m);
  }
});

clTest(ref, 'max_presence_members=3: a second connection of an existing member is accepted when the channel is full', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-full-again');
  await fillSmallRoom(t, channel, cluster);
  const raw = await openRaw(cluster.gw(1, 'small'));
  t.after(() => closeRaw(raw));
  const s = await rawSubscribeOk(raw, channel, presenceAuth(raw, channel, '1', infoOf('1'), 'small'));
  assert.equal(s.data.presence.count, 3);
});

clTest(ref, 'max_presence_members=3: when a member leaves, a new member fits again', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-full-leave');
  const members = await fillSmallRoom(t, channel, cluster);
  const from = mark(members[1]);
  members[0].close();
  await members[1].waitForMessage((d) => d.event === 'pusher_internal:member_removed' && d.channel === channel, 5000, 'member_removed for user 1', from);
  const raw = await openRaw(cluster.gw(0, 'small'));
  t.after(() => closeRaw(raw));
  const s = await rawSubscribeOk(raw, channel, presenceAuth(raw, channel, '4', infoOf('4'), 'small'));
  assert.deepEqual([...s.data.presence.ids].sort(), ['2', '3', '4']);
});

/** A user_info object whose JSON encoding is exactly `bytes` long. */
function infoOfSize(bytes) {
  const base = JSON.stringify({ name: '' }).length;
  const info = { name: 'x'.repeat(bytes - base) };
  assert.equal(Buffer.byteLength(JSON.stringify(info)), bytes);
  return info;
}

clTest(ref, 'user_info over max_presence_user_info (1025 bytes > 1024) gets subscription_error 400 + 4009; members are unaffected', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-biginfo');
  const member = await openRaw(cluster.B);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(member, raw));
  await rawSubscribeOk(member, channel, presenceAuth(member, channel, 'm'));
  const from = mark(member);
  await expectSubscriptionRejected(raw, channel, presenceAuth(raw, channel, 'big', infoOfSize(1025)), { status: 400 });
  await assertReceives(member, channel, ref.sdk(0));
  assert.ok(!member.messages.items.slice(from).some((m) => m.data?.event === 'pusher_internal:member_added'));
});

clTest(ref, 'user_info of exactly 1024 bytes is accepted', 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-maxinfo');
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const s = await rawSubscribeOk(raw, channel, presenceAuth(raw, channel, 'fits', infoOfSize(1024)));
  assert.equal(s.data.presence.count, 1);
});

clTest(ref, 'a user_id longer than max_presence_user_id_length (129 > 128) gets subscription_error 400 + 4009; members are unaffected', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-longid');
  const member = await openRaw(cluster.B);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(member, raw));
  await rawSubscribeOk(member, channel, presenceAuth(member, channel, 'm'));
  const from = mark(member);
  await expectSubscriptionRejected(raw, channel, presenceAuth(raw, channel, 'u'.repeat(129), { name: 'long' }), { status: 400 });
  await assertReceives(member, channel, ref.sdk(0));
  assert.ok(!member.messages.items.slice(from).some((m) => m.data?.event === 'pusher_internal:member_added'));
});

clTest(ref, 'a user_id of exactly 128 characters is accepted', 15_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-maxid');
  const raw = await openRaw(cluster.B);
  t.after(() => closeRaw(raw));
  const id = 'u'.repeat(128);
  const s = await rawSubscribe(raw, channel, presenceAuth(raw, channel, id, { name: 'ok' }));
  assert.ok(s.ok, `refused: ${s.msg.raw}`);
  assert.deepEqual(s.data.presence.ids, [id]);
});
