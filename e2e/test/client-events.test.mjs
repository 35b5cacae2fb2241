// Client events (client-*, Echo's whisper) across two gateways, and every
// way one is refused: public channel, non-member, app setting "none", rate limit.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makeEcho, makePusherClient, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import {
  assertAlive,
  assertReceives,
  clTest,
  closeRaw,
  mark,
  openRaw,
  parseData,
  rawSubscribeOk,
  signChannel,
  sleep,
  useCluster,
  waitPusherError,
} from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';

const ref = useCluster({
  apps: [
    { name: 'main' }, // accept_client_events_from "members", client_event_rate_limit 10 (the defaults)
    { name: 'none', accept_client_events_from: 'none' },
    { name: 'all', accept_client_events_from: 'all' },
  ],
});

function echoSubscribed(ch, ms = 10_000) {
  return withTimeout(new Promise((resolve) => ch.subscribed(resolve)), ms, `Echo subscription to ${ch.name}`);
}

async function connectedEcho(t, view, endpointParams = {}) {
  const echo = makeEcho(view, { authEndpoint: ref.auth.channelEndpoint({ app: view.appName, ...endpointParams }) });
  t.after(() => closeAll(echo));
  await waitForState(echo.connector.pusher, 'connected', 10_000);
  return echo;
}

/** Raw connection on `view` subscribed (with auth where needed) to `channel`. */
async function rawMember(t, view, channel, presenceUser) {
  const raw = await openRaw(view);
  t.after(() => closeRaw(raw));
  const sdk = ref.sdk(view.index, view.appName);
  const auth = channel.startsWith('private-') || channel.startsWith('presence-')
    ? signChannel(sdk, raw, channel, presenceUser ? { user_id: presenceUser, user_info: { name: presenceUser } } : undefined)
    : {};
  await rawSubscribeOk(raw, channel, auth);
  return raw;
}

const clientEvents = (raw, channel, from = 0) => raw.messages.items
  .slice(from)
  .filter((m) => m.data?.channel === channel && String(m.data.event).startsWith('client-'))
  .map((m) => ({ event: m.data.event, data: parseData(m.data.data), user_id: m.data.user_id }));

clTest(ref, 'Echo whisper()/listenForWhisper() on a private channel reaches clients on both gateways, not the sender', 30_000, async (t, { cluster }) => {
  const base = uniqueChannel('chat');
  const e1 = await connectedEcho(t, cluster.A);
  const e2 = await connectedEcho(t, cluster.B);
  const e3 = await connectedEcho(t, cluster.A);
  const got = [new Inbox(), new Inbox(), new Inbox()];
  const chans = [e1, e2, e3].map((e, i) => e.private(base).listenForWhisper('typing', (d) => got[i].push(d)));
  await Promise.all(chans.map((c) => echoSubscribed(c)));

  chans[0].whisper('typing', { name: 'Zoë', typing: true });
  await got[1].waitForCount(1, 5000, 'the whisper at the Echo on B');
  await got[2].waitForCount(1, 5000, 'the whisper at the other Echo on A');
  assert.deepEqual(got[1].items, [{ name: 'Zoë', typing: true }]);
  assert.deepEqual(got[2].items, [{ name: 'Zoë', typing: true }]);

  // The sender gets the reply, so it would already have had its own whisper.
  chans[1].whisper('typing', { name: 'Bob', typing: false });
  await got[0].waitForCount(1, 5000, 'the reply at the first sender');
  assert.deepEqual(got[0].items, [{ name: 'Bob', typing: false }], 'the sender must not receive its own whisper');
});

clTest(ref, 'presence: a client event carries the sender user_id (pusher-js metadata) and reaches Echo listenForWhisper on the other gateway', 30_000, async (t, { cluster, auth }) => {
  const base = uniqueChannel('room');
  const name = `presence-${base}`;
  const p1 = makePusherClient(cluster.A, { channelAuthorization: { endpoint: auth.channelEndpoint({ user: '11' }), transport: 'ajax' } });
  const p2 = makePusherClient(cluster.B, { channelAuthorization: { endpoint: auth.channelEndpoint({ user: '22' }), transport: 'ajax' } });
  t.after(() => closeAll(p1, p2));
  await Promise.all([waitForState(p1, 'connected'), waitForState(p2, 'connected')]);
  const c1 = p1.subscribe(name);
  const c2 = p2.subscribe(name);
  await Promise.all([waitForSubscribed(c1), waitForSubscribed(c2)]);
  const e3 = await connectedEcho(t, cluster.B, { user: '33' });
  const viaEcho = new Inbox();
  const ch3 = e3.join(base).listenForWhisper('typing', (d, meta) => viaEcho.push({ d, meta }));
  await echoSubscribed(ch3);

  const viaPjs = new Inbox();
  c2.bind('client-typing', (d, meta) => viaPjs.push({ d, meta }));
  const own = new Inbox();
  c1.bind('client-typing', (d) => own.push(d));
  assert.equal(c1.trigger('client-typing', { who: 'eleven' }), true);

  const [x] = await viaPjs.waitForCount(1, 5000, 'the client event at pusher-js on B');
  assert.deepEqual(x.d, { who: 'eleven' });
  assert.equal(x.meta?.user_id, '11', `metadata: ${JSON.stringify(x.meta)}`);
  const [y] = await viaEcho.waitForCount(1, 5000, 'the whisper at Echo on B');
  assert.deepEqual(y.d, { who: 'eleven' });
  assert.equal(y.meta?.user_id, '11');
  c2.trigger('client-typing', { who: 'twenty-two' });
  await own.waitForCount(1, 5000, 'the reply at the sender');
  assert.deepEqual(own.items, [{ who: 'twenty-two' }], 'the sender must not receive its own event');
});

clTest(ref, 'a client event on a public channel gets pusher:error 4009; subscribers do not get it and the sender stays connected', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('public-chat');
  const by = await rawMember(t, cluster.B, channel);
  const raw = await rawMember(t, cluster.A, channel);
  const fromBy = mark(by);
  const from = mark(raw);
  raw.send({ event: 'client-hello', channel, data: { x: 1 } });
  const err = await waitPusherError(raw, from);
  assert.equal(err.code, 4009, JSON.stringify(err));
  await assertAlive(raw);
  await assertReceives(by, channel, ref.sdk(0));
  assert.deepEqual(clientEvents(by, channel, fromBy), [], 'the refused client event must not be relayed');
});

clTest(ref, 'a client event on a private channel the sender is not subscribed to gets pusher:error 4009; subscribers do not get it', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-nonmember');
  const by = await rawMember(t, cluster.B, channel);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const fromBy = mark(by);
  raw.send({ event: 'client-hello', channel, data: { x: 1 } });
  const err = await waitPusherError(raw, 0);
  assert.equal(err.code, 4009, JSON.stringify(err));
  await assertAlive(raw);
  await assertReceives(by, channel, ref.sdk(0));
  assert.deepEqual(clientEvents(by, channel, fromBy), []);
});

clTest(ref, 'accept_client_events_from "none": a member\'s client event gets pusher:error 4301; other members do not get it', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-none');
  const by = await rawMember(t, cluster.gw(1, 'none'), channel);
  const raw = await rawMember(t, cluster.gw(0, 'none'), channel);
  const fromBy = mark(by);
  const from = mark(raw);
  raw.send({ event: 'client-hello', channel, data: { x: 1 } });
  const err = await waitPusherError(raw, from);
  assert.equal(err.code, 4301, JSON.stringify(err));
  await assertAlive(raw);
  await assertReceives(by, channel, ref.sdk(0, 'none'));
  assert.deepEqual(clientEvents(by, channel, fromBy), []);
});

clTest(ref, 'accept_client_events_from "all": a non-subscriber may send on a private channel; public channels still get 4009', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-all');
  const by = await rawMember(t, cluster.gw(1, 'all'), channel);
  const raw = await openRaw(cluster.gw(0, 'all'));
  t.after(() => closeRaw(raw));
  raw.send({ event: 'client-hello', channel, data: { x: 1 } });
  await by.waitForMessage((d) => d.event === 'client-hello' && d.channel === channel, 5000, 'the client event from a non-member in "all" mode');
  const pub = uniqueChannel('public-all');
  const from = mark(raw);
  raw.send({ event: 'client-hello', channel: pub, data: { x: 1 } });
  const err = await waitPusherError(raw, from);
  assert.equal(err.code, 4009, JSON.stringify(err));
});

clTest(ref, 'over client_event_rate_limit (10/s): pusher:error 4301, the connection stays open, the first 10 are delivered, others can still send', 30_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-flood');
  const receiver = await rawMember(t, cluster.B, channel);
  const other = await rawMember(t, cluster.B, channel);
  const sender = await rawMember(t, cluster.A, channel);
  const fromR = mark(receiver);
  const fromS = mark(sender);
  const N = 25;
  for (let i = 0; i < N; i++) sender.send({ event: 'client-n', channel, data: { i } });
  const err = await waitPusherError(sender, fromS);
  assert.equal(err.code, 4301, JSON.stringify(err));
  await assertAlive(sender);

  // Another member of the same channel is not throttled by the sender's flood.
  other.send({ event: 'client-other', channel, data: { ok: true } });
  await receiver.waitForMessage((d) => d.event === 'client-other', 5000, "the other member's client event", fromR);

  const got = clientEvents(receiver, channel, fromR).filter((e) => e.event === 'client-n').map((e) => e.data.i);
  assert.ok(got.length >= 10, `the first 10 events are within the limit (got ${JSON.stringify(got)})`);
  assert.ok(got.length < N, `some events must have been dropped (got ${got.length})`);
  assert.deepEqual(got.slice(0, 10), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

  // After a second the sender may send again.
  await sleep(1100);
  const from2 = mark(receiver);
  sender.send({ event: 'client-n', channel, data: { i: 'later' } });
  await receiver.waitForMessage((d) => d.event === 'client-n' && parseData(d.data)?.i === 'later', 5000, 'a client event a second after the flood', from2);
});
