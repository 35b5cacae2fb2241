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

const MAX_MESSAGE_SIZE = 10_000; // the default max_message_size

/** A pusher:ping message of exactly `size` bytes. */
function pingOfSize(size) {
  const base = JSON.stringify({ event: 'pusher:ping', data: { pad: '' } });
  const msg = JSON.stringify({ event: 'pusher:ping', data: { pad: 'x'.repeat(size - base.length) } });
  assert.equal(Buffer.byteLength(msg), size);
  return msg;
}

gwTest(ref, 'a message of exactly the max message size (10000 bytes) is accepted', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const from = raw.messages.items.length;
  raw.send(pingOfSize(MAX_MESSAGE_SIZE));
  await raw.waitForMessage((d) => d.event === 'pusher:pong', 5000, `pusher:pong to a ${MAX_MESSAGE_SIZE}-byte ping`, from);
  assert.ok(raw.isOpen);
});

gwTest(ref, 'a message one byte over the max message size is closed with 1009', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  raw.send(pingOfSize(MAX_MESSAGE_SIZE + 1));
  const { code } = await raw.waitClose(5000);
  assert.equal(code, 1009, `close code (messages: ${raw.messages.items.map((m) => m.raw).join(' | ')})`);
});

gwTest(ref, 'a large client event (20 KB) on a subscribed channel is closed with 1009', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const channel = uniqueChannel('raw-big');
  raw.send({ event: 'pusher:subscribe', data: { channel } });
  await raw.waitForMessage((d) => d.event === 'pusher_internal:subscription_succeeded', 5000, 'subscription_succeeded');
  const msg = JSON.stringify({ event: 'client-big', channel, data: { pad: 'x'.repeat(20_000) } });
  assert.ok(Buffer.byteLength(msg) > MAX_MESSAGE_SIZE);
  raw.send(msg);
  const { code } = await raw.waitClose(5000);
  assert.equal(code, 1009);
});

/** Sends `msg` as a fragmented WebSocket message of `parts` frames. */
function sendFragmented(raw, msg, parts) {
  const buf = Buffer.from(msg);
  const step = Math.ceil(buf.length / parts);
  for (let off = 0; off < buf.length; off += step) {
    const chunk = buf.subarray(off, Math.min(off + step, buf.length));
    raw.ws.send(chunk, { binary: false, fin: off + step >= buf.length });
  }
}

gwTest(ref, 'a message fragmented into several frames is reassembled', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  const from = raw.messages.items.length;
  sendFragmented(raw, pingOfSize(3000), 3);
  await raw.waitForMessage((d) => d.event === 'pusher:pong', 5000, 'pusher:pong to a fragmented ping', from);
  assert.ok(raw.isOpen);
});

gwTest(ref, 'a fragmented message whose frames add up to more than the max message size is closed with 1009', 10_000, async (t, gw) => {
  const { raw } = await openEstablished(gw);
  t.after(() => raw.close());
  sendFragmented(raw, pingOfSize(12_000), 4); // every frame is under 10000 bytes
  const { code } = await raw.waitClose(5000);
  assert.equal(code, 1009, `close code (messages: ${raw.messages.items.map((m) => m.raw).join(' | ')})`);
});
