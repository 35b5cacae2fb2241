// How the real pusher-js reacts to the close codes a gateway sends. pusher-js
// maps them by range (src/core/connection/protocol/protocol.ts,
// getCloseAction): 4000 tls_only, 4001-4099 "refused" (it disconnects and
// does not come back), 4100-4199 "backoff" (retry in 1 s), 4200-4299
// "retry" (at once). A gateway draining on SIGTERM sends 4200, so that its
// clients move to another gateway straight away; terminate_connections
// sends 4009, so that the user's connections stay closed.
import assert from 'node:assert/strict';
import { Inbox, closeAll, makePusherClient, recordStates, waitForState, waitForSubscribed } from '../lib/clients.mjs';
import { clTest, useCluster } from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';
import { startTcpProxy, throughProxy } from '../lib/tcp-proxy.mjs';

// A short drain window: a drained gateway's clients all get 4200 within 1 s.
const ref = useCluster({ apps: [{ name: 'main' }], extraEnv: { RESOUND_DRAIN_WINDOW: '1' } });

/**
 * Records every delay pusher-js's connection manager schedules a
 * reconnection with (retryIn), and every error it emits: what pusher-js
 * decided, without timing it.
 */
function spy(client) {
  const retries = [];
  const errors = new Inbox();
  const manager = client.connection;
  const retryIn = manager.retryIn.bind(manager);
  manager.retryIn = (delay) => {
    retries.push(delay);
    return retryIn(delay);
  };
  manager.bind('error', (e) => errors.push(e));
  return { retries, errors };
}

const closeCode = (e) => e?.error?.data?.code ?? e?.data?.code;

clTest(ref, 'pusher-js closed with 4009 (terminate_connections) does not reconnect', 20_000, async (t, { cluster }) => {
  const sdk = ref.sdk(1);
  const channelName = uniqueChannel('presence-term');
  const client = makePusherClient(cluster.B, {
    channelAuthorization: {
      customHandler: ({ socketId, channelName: name }, callback) => callback(null, sdk.authorizeChannel(socketId, name, { user_id: 'u-4009', user_info: {} })),
    },
  });
  t.after(() => closeAll(client));
  const states = recordStates(client);
  await waitForState(client, 'connected');
  await waitForSubscribed(client.subscribe(channelName));
  const { retries, errors } = spy(client);

  await sdk.terminateUserConnections('u-4009');
  const [err] = await errors.waitFor((items) => {
    const e = items.find((x) => closeCode(x) === 4009);
    return e && [e];
  }, 5000, (items) => `an error with code 4009 (got ${JSON.stringify(items)})`);
  assert.equal(closeCode(err), 4009);
  await waitForState(client, 'disconnected', 5000);
  // "refused": pusher-js disconnects and schedules nothing.
  assert.deepEqual(retries, [], 'pusher-js scheduled a reconnection after 4009');
  assert.equal(client.connection.retryTimer ?? null, null, 'a reconnection timer is pending after 4009');
  assert.equal(states.items.at(-1), 'disconnected', `states: ${states.items.join(' -> ')}`);
});

// Last in the file: it stops gateway A.
clTest(ref, 'pusher-js closed with 4200 (a gateway draining on SIGTERM) reconnects at once, to the next gateway, and gets events again', 30_000, async (t, { cluster }) => {
  const proxy = await startTcpProxy([cluster.A.port, cluster.B.port]);
  t.after(() => proxy.close());
  const client = makePusherClient(throughProxy(cluster.A, proxy));
  t.after(() => closeAll(client));
  await waitForState(client, 'connected');
  const name = uniqueChannel('drained');
  const channel = client.subscribe(name);
  await waitForSubscribed(channel);
  const first = client.connection.socket_id;
  assert.equal(proxy.forwarded.items.at(-1).upstream, cluster.A.port, 'the client starts on gateway A');
  const { retries, errors } = spy(client);
  const states = recordStates(client);

  await cluster.killGateway(0, 'SIGTERM');
  await errors.waitFor((items) => items.some((x) => closeCode(x) === 4200), 5000, (items) => `an error with code 4200 (got ${JSON.stringify(items)})`);
  // "retry": the first reconnection pusher-js schedules is immediate.
  assert.equal(retries[0], 0, `pusher-js scheduled its reconnection in ${retries[0]} ms, want 0 (all: ${retries})`);
  await waitForState(client, 'connected', 10_000);
  assert.notEqual(client.connection.socket_id, first, 'a new connection');
  assert.equal(proxy.forwarded.items.at(-1).upstream, cluster.B.port, 'the new connection is on gateway B');
  assert.ok(!states.items.includes('disconnected') && !states.items.includes('failed'), `states: ${states.items.join(' -> ')}`);

  // pusher-js resubscribes by itself; events reach it on gateway B.
  const got = new Inbox();
  channel.bind('after', (d) => got.push(d));
  await waitForSubscribed(channel);
  await ref.sdk(1).trigger(name, 'after', { n: 1 });
  assert.deepEqual((await got.waitForCount(1, 5000, 'an event after the move'))[0], { n: 1 });
});
