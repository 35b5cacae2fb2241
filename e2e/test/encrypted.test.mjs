// End-to-end encrypted channels (private-encrypted-): authorised like private
// channels, payloads relayed untouched (pusher-js decrypts them with the
// shared_secret from the auth endpoint), client events refused.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makeEcho, makePusherClient, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import {
  assertAlive,
  clTest,
  closeRaw,
  expectSubscriptionRejected,
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

const ref = useCluster({ apps: [{ name: 'main' }, { name: 'other' }] });

clTest(ref, "Echo encryptedPrivate('x').listen() decrypts an event the SDK encrypted and triggered through the other gateway", 30_000, async (t, { cluster, auth }) => {
  const base = uniqueChannel('vault');
  const echo = makeEcho(cluster.B, { authEndpoint: auth.channelEndpoint() });
  t.after(() => closeAll(echo));
  await waitForState(echo.connector.pusher, 'connected');
  const got = new Inbox();
  const ch = echo.encryptedPrivate(base).listen('.Secret', (d) => got.push(d));
  assert.equal(ch.name, `private-encrypted-${base}`);
  await withTimeout(new Promise((resolve) => ch.subscribed(resolve)), 10_000, 'Echo encrypted subscription');
  const req = auth.requests.find((r) => r.form.channel_name === ch.name);
  assert.equal(typeof req?.response?.shared_secret, 'string', 'the auth endpoint returns a shared_secret');

  const payload = { card: '4111 1111 1111 1111', note: 'héllo ✓' };
  await ref.sdk(0).trigger(ch.name, 'Secret', payload);
  const [d] = await got.waitForCount(1, 5000, 'the decrypted event');
  assert.deepEqual(d, payload);
});

clTest(ref, 'pusher-js on gateway A decrypts a triggerBatch item encrypted by the SDK', 20_000, async (t, { cluster, auth }) => {
  const name = uniqueChannel('private-encrypted-batch');
  const client = makePusherClient(cluster.A, { channelAuthorization: { endpoint: auth.channelEndpoint(), transport: 'ajax' } });
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const channel = client.subscribe(name);
  await waitForSubscribed(channel);
  const got = new Inbox();
  channel.bind('batched', (d) => got.push(d));
  await ref.sdk(1).triggerBatch([{ channel: name, name: 'batched', data: { n: 1 } }]);
  const [d] = await got.waitForCount(1, 5000, 'the decrypted batch event');
  assert.deepEqual(d, { n: 1 });
});

clTest(ref, 'raw: the data of an event on an encrypted channel is relayed byte for byte', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-encrypted-raw');
  const raw = await openRaw(cluster.B);
  t.after(() => closeRaw(raw));
  await rawSubscribeOk(raw, channel, signChannel(ref.sdk(1), raw, channel));
  const data = JSON.stringify({ nonce: 'bm9uY2Vub25jZW5vbmNlbm9uY2Vub25j', ciphertext: 'Y2lwaGVydGV4dCB0aGF0IGlzIG5vdCByZWFsbHkgZW5jcnlwdGVk/+==' });
  const from = mark(raw);
  // A hand-made body, so the exact data string is known.
  await ref.sdk(0).post({ path: '/events', body: { name: 'opaque', channels: [channel], data } });
  const m = await raw.waitForMessage((d) => d.event === 'opaque' && d.channel === channel, 5000, 'the opaque event', from);
  assert.equal(m.data.data, data, 'data must be relayed untouched');
});

clTest(ref, 'raw: a client event on an encrypted channel gets pusher:error 4009; other subscribers do not get it', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-encrypted-whisper');
  const by = await openRaw(cluster.B);
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(by, raw));
  await rawSubscribeOk(by, channel, signChannel(ref.sdk(1), by, channel));
  await rawSubscribeOk(raw, channel, signChannel(ref.sdk(0), raw, channel));
  const fromBy = mark(by);
  const from = mark(raw);
  raw.send({ event: 'client-typing', channel, data: { nonce: 'x', ciphertext: 'y' } });
  const err = await waitPusherError(raw, from);
  assert.equal(err.code, 4009, JSON.stringify(err));
  await assertAlive(raw);
  // The bystander still receives server events, and never got the client event.
  await ref.sdk(0).post({ path: '/events', body: { name: 'after', channels: [channel], data: '{"nonce":"a","ciphertext":"b"}' } });
  await by.waitForMessage((d) => d.event === 'after' && d.channel === channel, 5000, 'the event after the refused client event', fromBy);
  await sleep(100);
  assert.ok(!by.messages.items.slice(fromBy).some((m) => m.data?.event === 'client-typing'), 'the refused client event must not be relayed');
});

clTest(ref, 'raw: a forged signature on an encrypted channel gets subscription_error 401 + 4009', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('private-encrypted-forged');
  const raw = await openRaw(cluster.A);
  t.after(() => closeRaw(raw));
  const good = signChannel(ref.sdk(0), raw, channel).auth;
  await expectSubscriptionRejected(raw, channel, { auth: `${good.split(':')[0]}:${'f'.repeat(64)}` }, { type: 'AuthError', status: 401 });
});

clTest(ref, 'pusher-js with the wrong shared secret cannot read the payload (the server does not decrypt)', 20_000, async (t, { cluster, auth }) => {
  // Trigger with an SDK whose master key differs from the one the auth endpoint uses.
  const name = uniqueChannel('private-encrypted-wrongkey');
  const client = makePusherClient(cluster.B, { channelAuthorization: { endpoint: auth.channelEndpoint(), transport: 'ajax' } });
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const channel = client.subscribe(name);
  await waitForSubscribed(channel);
  const got = new Inbox();
  channel.bind('leak', (d) => got.push(d));
  const { makeServerSdk } = await import('../lib/clients.mjs');
  const { newMasterKey } = await import('../lib/auth-server.mjs');
  await makeServerSdk(cluster.A, { encryptionMasterKeyBase64: newMasterKey() }).trigger(name, 'leak', { secret: 1 });
  await ref.sdk(0).trigger(name, 'leak', { secret: 2 });
  await got.waitForCount(1, 5000, 'the readable event');
  await sleep(300);
  assert.deepEqual(got.items.map((x) => parseData(x)), [{ secret: 2 }]);
});
