// Frame-level Pusher protocol checks with a raw WebSocket (the `ws` package).
import assert from 'node:assert/strict';
import { RawClient, parseData } from '../lib/clients.mjs';
import { gwTest, uniqueChannel, useGateway } from '../lib/suite.mjs';

const ref = useGateway();

async function openEstablished(gw, opts) {
  const raw = new RawClient(gw.wsUrl(), opts);
  await raw.waitOpen();
  const est = await raw.established();
  return { raw, est };
}

gwTest(ref, 'connection_established carries a socket_id and a non-zero activity_timeout as a JSON string', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const first = await raw.nth(1);
  assert.equal(first.data.event, 'pusher:connection_established', `first message: ${first.raw}`);
  assert.equal(typeof first.data.data, 'string', 'data must be a JSON-encoded string');
  const data = JSON.parse(first.data.data);
  assert.match(data.socket_id, /^\d+\.\d+$/);
  assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0, `activity_timeout: ${data.activity_timeout}`);
});

gwTest(ref, 'pusher:ping gets pusher:pong', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const from = raw.messages.items.length;
  raw.send({ event: 'pusher:ping', data: {} });
  await raw.waitForMessage((d) => d.event === 'pusher:pong', 5000, 'pusher:pong', from);
});

gwTest(ref, 'subscribe to a public channel gets pusher_internal:subscription_succeeded', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const channel = uniqueChannel('raw-sub');
  raw.send({ event: 'pusher:subscribe', data: { channel } });
  const m = await raw.waitForMessage((d) => d.event === 'pusher_internal:subscription_succeeded', 5000, 'subscription_succeeded');
  assert.equal(m.data.channel, channel);
});

gwTest(ref, 'malformed JSON gets pusher:error and the connection stays open', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  let from = raw.messages.items.length;
  raw.send('{"event": "pusher:ping", "data": {');
  const err = await raw.waitForMessage((d) => d.event === 'pusher:error', 5000, 'pusher:error', from);
  const data = parseData(err.data.data);
  assert.equal(typeof data?.message, 'string', `pusher:error data: ${err.raw}`);
  // Still usable afterwards.
  from = raw.messages.items.length;
  raw.send({ event: 'pusher:ping', data: {} });
  await raw.waitForMessage((d) => d.event === 'pusher:pong', 5000, 'pusher:pong after the malformed message', from);
  assert.ok(raw.isOpen, 'connection must stay open');
});

gwTest(ref, 'a message just under the max message size (10000 bytes) is accepted', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const from = raw.messages.items.length;
  const base = JSON.stringify({ event: 'pusher:ping', data: { pad: '' } });
  const msg = JSON.stringify({ event: 'pusher:ping', data: { pad: 'x'.repeat(9000 - base.length) } });
  assert.equal(Buffer.byteLength(msg), 9000);
  raw.send(msg);
  await raw.waitForMessage((d) => d.event === 'pusher:pong', 5000, 'pusher:pong to a 9000-byte ping', from);
  assert.ok(raw.isOpen);
});

gwTest(ref, 'a message larger than the max message size (10000 bytes) is closed with 1009', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const channel = uniqueChannel('raw-big');
  raw.send({ event: 'pusher:subscribe', data: { channel } });
  await raw.waitForMessage((d) => d.event === 'pusher_internal:subscription_succeeded', 5000, 'subscription_succeeded');
  const msg = JSON.stringify({ event: 'client-big', channel, data: { pad: 'x'.repeat(20_000) } });
  assert.ok(Buffer.byteLength(msg) > 10_000);
  raw.send(msg);
  const { code } = await raw.waitClose(5000);
  assert.equal(code, 1009);
});
