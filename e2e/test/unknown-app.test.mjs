// Connecting with an app key the gateway does not know.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Inbox, RawClient, closeAll, makePusherClient, parseData, recordStates } from '../lib/clients.mjs';
import { gwTest, useGateway } from '../lib/suite.mjs';

const ref = useGateway();

gwTest(ref, 'pusher-js with an unknown key is refused (error 4001) and does not reconnect', 20_000, async (t, gw) => {
  const client = makePusherClient(gw, { key: 'no-such-key' });
  t.after(() => closeAll(client));
  const states = recordStates(client);
  const errors = new Inbox();
  client.connection.bind('error', (err) => errors.push(err));

  const terminal = (s) => s === 'disconnected' || s === 'failed';
  await states.waitFor(
    (xs) => xs.includes('connecting') && terminal(xs.at(-1)),
    10_000,
    (xs) => `a disconnected/failed state after connecting (states: ${xs.join(' -> ')})`,
  );
  const settledAt = states.items.length;
  // pusher-js retries after 1 s on a close it may reconnect from; wait well past that.
  await sleep(2500);
  assert.deepEqual(states.items.slice(settledAt), [], `no state change expected after refusal (states: ${states.items.join(' -> ')})`);
  assert.ok(terminal(client.connection.state), `final state ${client.connection.state}`);
  assert.ok(!states.items.includes('connected'), `must never be connected (states: ${states.items.join(' -> ')})`);

  const codes = errors.items.map((e) => e?.error?.data?.code);
  assert.ok(codes.includes(4001), `expected an error with code 4001, got ${JSON.stringify(errors.items)}`);
});

gwTest(ref, 'raw WebSocket with an unknown key: upgrade, pusher:error 4001 first, then close code 4001', 15_000, async (t, gw) => {
  const raw = new RawClient(gw.wsUrl('no-such-key'));
  t.after(() => raw.close());
  await raw.waitOpen(); // the upgrade itself must succeed
  const first = await raw.nth(1, 5000);
  assert.ok(first.data, `first message is not JSON: ${first.raw}`);
  assert.equal(first.data.event, 'pusher:error', `first message: ${first.raw}`);
  const data = parseData(first.data.data);
  assert.equal(data?.code, 4001, `pusher:error data: ${first.raw}`);
  assert.equal(typeof data.message, 'string');
  const { code } = await raw.waitClose(5000);
  assert.equal(code, 4001, `close code (1006 means the TCP connection was dropped without a close frame)`);
  assert.equal(raw.messages.items.length, 1, `exactly one message expected, got: ${raw.messages.items.map((m) => m.raw).join(' | ')}`);
});
