// laravel-echo (broadcaster 'reverb') against one gateway, events sent with
// the pusher server SDK the way Laravel's broadcaster sends them.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makeEcho, makeServerSdk, waitForState, withTimeout } from '../lib/clients.mjs';
import { gwTest, useGateway } from '../lib/suite.mjs';

const ref = useGateway();

/** Resolves once Echo's channel has been subscribed. */
function subscribed(echoChannel, ms = 10_000) {
  if (echoChannel.subscription.subscribed) return Promise.resolve();
  return withTimeout(new Promise((resolve) => echoChannel.subscribed(resolve)), ms, `Echo subscription to ${echoChannel.name}`);
}

async function connectedEcho(gw) {
  const echo = makeEcho(gw);
  try {
    await waitForState(echo.connector.pusher, 'connected', 10_000);
  } catch (err) {
    closeAll(echo);
    throw err;
  }
  return echo;
}

const order = {
  order: { id: 1234, lines: [{ sku: 'A-1', qty: 2 }, { sku: 'B-2', qty: 1 }], total: 19.99 },
  customer: 'Zoë <zoe@example.com>',
  shippedAt: null,
};

gwTest(ref, "Echo connects with broadcaster 'reverb' and reports a socket id", 15_000, async (t, gw) => {
  const echo = await connectedEcho(gw);
  t.after(() => closeAll(echo));
  assert.equal(echo.connectionStatus(), 'connected');
  assert.match(echo.socketId(), /^\d+\.\d+$/);
});

gwTest(ref, "Echo.channel('orders').listen('.OrderShipped') receives the event with its data", 20_000, async (t, gw) => {
  const echo = await connectedEcho(gw);
  t.after(() => closeAll(echo));
  const got = new Inbox();
  const ch = echo.channel('orders').listen('.OrderShipped', (data) => got.push(data));
  await subscribed(ch);
  await makeServerSdk(gw).trigger('orders', 'OrderShipped', order);
  const [data] = await got.waitForCount(1, 10_000, "'.OrderShipped' events");
  assert.deepEqual(data, order);
});

gwTest(ref, "Echo .listen('OrderShipped') receives the event named App\\Events\\OrderShipped", 20_000, async (t, gw) => {
  const echo = await connectedEcho(gw);
  t.after(() => closeAll(echo));
  const fq = new Inbox();
  const literal = new Inbox();
  const done = new Inbox();
  const ch = echo
    .channel('orders')
    .listen('OrderShipped', (data) => fq.push(data))
    .listen('.OrderShipped', (data) => literal.push(data))
    .listen('.done', (data) => done.push(data));
  await subscribed(ch);
  const sdk = makeServerSdk(gw);
  // What Laravel sends for an event class without broadcastAs().
  await sdk.trigger('orders', 'App\\Events\\OrderShipped', order);
  await sdk.trigger('orders', 'done', {});
  await done.waitForCount(1, 10_000, "'.done' events");
  assert.deepEqual(fq.items, [order]);
  assert.deepEqual(literal.items, [], "the '.OrderShipped' listener must not see App\\Events\\OrderShipped");
});

gwTest(ref, 'Echo: a trigger with the socket_id of one Echo client (toOthers) skips only that client', 25_000, async (t, gw) => {
  const sender = await connectedEcho(gw);
  t.after(() => closeAll(sender));
  const other = await connectedEcho(gw);
  t.after(() => closeAll(other));
  const atSender = new Inbox();
  const atOther = new Inbox();
  const chS = sender.channel('orders').listen('.Note', (d) => atSender.push(d.n));
  const chO = other.channel('orders').listen('.Note', (d) => atOther.push(d.n));
  await Promise.all([subscribed(chS), subscribed(chO)]);
  const sdk = makeServerSdk(gw);
  await sdk.trigger('orders', 'Note', { n: 1 }, { socket_id: sender.socketId() });
  await atOther.waitForCount(1, 10_000, 'notes at the other client');
  await sdk.trigger('orders', 'Note', { n: 2 });
  await atSender.waitForCount(1, 10_000, 'notes at the sender');
  await atOther.waitForCount(2, 10_000, 'notes at the other client');
  assert.deepEqual(atSender.items, [2]);
  assert.deepEqual(atOther.items, [1, 2]);
});
