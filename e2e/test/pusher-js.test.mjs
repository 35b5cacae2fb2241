// pusher-js (client) + pusher (server SDK) against one gateway.
import assert from 'node:assert/strict';
import {
  Inbox,
  closeAll,
  connectAndSubscribe,
  makePusherClient,
  makeServerSdk,
  waitForState,
} from '../lib/clients.mjs';
import { gwTest, uniqueChannel, useGateway } from '../lib/suite.mjs';

const ref = useGateway();

/** Collects the non-protocol events that reach a pusher-js channel, in order. */
function collect(channel) {
  const inbox = new Inbox();
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:') || event.startsWith('pusher_internal:')) return;
    inbox.push({ channel: channel.name, event, data });
  });
  return inbox;
}

gwTest(ref, 'pusher-js connects and gets a socket_id', 15_000, async (t, gw) => {
  const client = makePusherClient(gw);
  t.after(() => closeAll(client));
  await waitForState(client, 'connected', 10_000);
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
});

gwTest(ref, 'an event triggered with the SDK reaches a pusher-js subscriber with its data intact', 20_000, async (t, gw) => {
  const name = uniqueChannel('basic');
  const { client, channels: [channel] } = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(client));
  const inbox = collect(channel);
  const payload = {
    id: 42,
    text: 'héllo wörld ✓ </script> & "quoted" \\ slash/',
    nested: { list: [1, 2.5, null, true, 'x'], empty: {} },
  };
  const sdk = makeServerSdk(gw);
  const res = await sdk.trigger(name, 'my-event', payload);
  assert.equal(res.status, 200);
  const [got] = await inbox.waitForCount(1, 10_000, `events on ${name}`);
  assert.equal(got.event, 'my-event');
  assert.deepEqual(got.data, payload);
});

gwTest(ref, '1,000 events on one channel arrive in order with no duplicates', 180_000, async (t, gw) => {
  const N = 1000;
  const name = uniqueChannel('ordered');
  const { client, channels: [channel] } = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(client));
  const inbox = collect(channel);
  const sdk = makeServerSdk(gw);
  for (let i = 0; i < N; i++) {
    // Awaiting each trigger before the next fixes the acceptance order.
    await sdk.trigger(name, 'seq', { i });
  }
  // The sentinel is accepted after all N, so once it is here every earlier
  // event must be here too, and nothing may follow it.
  await sdk.trigger(name, 'done', { n: N });
  const items = await inbox.waitFor(
    (xs) => xs.some((x) => x.event === 'done') && xs,
    60_000,
    (xs) => `the sentinel after ${N} events (got ${xs.length} events, last ${JSON.stringify(xs.at(-1))})`,
  );
  const seq = items.filter((x) => x.event === 'seq').map((x) => x.data.i);
  const dupes = seq.filter((v, idx) => seq.indexOf(v) !== idx);
  assert.deepEqual(dupes, [], 'duplicate events');
  const firstOutOfOrder = seq.findIndex((v, idx) => v !== idx);
  assert.equal(firstOutOfOrder, -1, `event #${firstOutOfOrder} was i=${seq[firstOutOfOrder]}`);
  assert.equal(seq.length, N, `expected ${N} events before the sentinel`);
  assert.equal(items.at(-1).event, 'done', 'the sentinel must be the last event');
});

gwTest(ref, '1,000 events sent as 100 batch_events calls of 10 arrive in order', 180_000, async (t, gw) => {
  const name = uniqueChannel('ordered-batch');
  const { client, channels: [channel] } = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(client));
  const inbox = collect(channel);
  const sdk = makeServerSdk(gw);
  for (let b = 0; b < 100; b++) {
    const batch = [];
    for (let k = 0; k < 10; k++) batch.push({ channel: name, name: 'seq', data: { i: b * 10 + k } });
    await sdk.triggerBatch(batch);
  }
  await sdk.trigger(name, 'done', {});
  const items = await inbox.waitFor(
    (xs) => xs.some((x) => x.event === 'done') && xs,
    60_000,
    (xs) => `the sentinel after 1000 batched events (got ${xs.length})`,
  );
  const seq = items.filter((x) => x.event === 'seq').map((x) => x.data.i);
  const firstOutOfOrder = seq.findIndex((v, idx) => v !== idx);
  assert.equal(firstOutOfOrder, -1, `event #${firstOutOfOrder} was i=${seq[firstOutOfOrder]}`);
  assert.equal(seq.length, 1000);
  assert.equal(items.at(-1).event, 'done');
});

gwTest(ref, 'socket_id on a trigger excludes that connection only', 30_000, async (t, gw) => {
  const name = uniqueChannel('exclude');
  const a = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(a.client));
  const b = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(b.client));
  const inboxA = collect(a.channels[0]);
  const inboxB = collect(b.channels[0]);
  const sdk = makeServerSdk(gw);
  const socketA = a.client.connection.socket_id;
  assert.notEqual(socketA, b.client.connection.socket_id);

  await sdk.trigger(name, 'excl', { n: 1 }, { socket_id: socketA });
  await inboxB.waitForCount(1, 10_000, 'events on B');
  // A follow-up without exclusion: once A has it, A would already have had
  // the first one if it had been sent to A (per-channel order).
  await sdk.trigger(name, 'excl', { n: 2 });
  await inboxA.waitForCount(1, 10_000, 'events on A');
  await inboxB.waitForCount(2, 10_000, 'events on B');

  assert.deepEqual(inboxA.items.map((x) => x.data.n), [2], 'A must get only the event that did not exclude it');
  assert.deepEqual(inboxB.items.map((x) => x.data.n), [1, 2]);
});

gwTest(ref, 'triggerBatch delivers each event to its own channel', 30_000, async (t, gw) => {
  const chA = uniqueChannel('batch-a');
  const chB = uniqueChannel('batch-b');
  const chC = uniqueChannel('batch-c'); // subscribed, but not in the batch
  const { client, channels } = await connectAndSubscribe(gw, [chA, chB, chC]);
  t.after(() => closeAll(client));
  const [inA, inB, inC] = channels.map(collect);
  const sdk = makeServerSdk(gw);

  const res = await sdk.triggerBatch([
    { channel: chA, name: 'ev-a1', data: { x: 1 } },
    { channel: chB, name: 'ev-b', data: { y: [2, 3] } },
    { channel: chA, name: 'ev-a2', data: 'a plain string' },
  ]);
  assert.equal(res.status, 200);
  // A multi-channel trigger accepted after the batch marks the end on every channel.
  await sdk.trigger([chA, chB, chC], 'end', {});
  const wait = (inbox, ch) => inbox.waitFor((xs) => xs.some((x) => x.event === 'end'), 10_000, `"end" on ${ch}`);
  await Promise.all([wait(inA, chA), wait(inB, chB), wait(inC, chC)]);

  const view = (inbox) => inbox.items.map(({ event, data }) => ({ event, data }));
  assert.deepEqual(view(inA), [
    { event: 'ev-a1', data: { x: 1 } },
    { event: 'ev-a2', data: 'a plain string' },
    { event: 'end', data: {} },
  ]);
  assert.deepEqual(view(inB), [
    { event: 'ev-b', data: { y: [2, 3] } },
    { event: 'end', data: {} },
  ]);
  assert.deepEqual(view(inC), [{ event: 'end', data: {} }]);
});
