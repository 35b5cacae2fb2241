// REVERB_SERVER_PATH with a trailing slash, as a Laravel .env may have it:
// Reverb strips the slash (Symfony's addPrefix) and starts, so Resound must
// too (issue 12). Then the WebSocket (pusher-js, Echo) and the HTTP API (the
// pusher SDK, signing /apps/... without the prefix as pusher-http-php does)
// work under the prefix, through a running gateway, and not beside it.
import assert from 'node:assert/strict';
import {
  Inbox,
  WebSocket,
  closeAll,
  connectAndSubscribe,
  makeEcho,
  makeServerSdk,
  waitForState,
  withTimeout,
} from '../lib/clients.mjs';
import { gwTest, uniqueChannel, useGateway } from '../lib/suite.mjs';

// The gateway is ready only when GET /reverb/up answers 200 (lib/gateway.mjs
// probes under the prefix), so a start-up refusal fails every test here.
const ref = useGateway({ extraEnv: { REVERB_SERVER_PATH: '/reverb/' } });

gwTest(ref, 'REVERB_SERVER_PATH=/reverb/ starts; /up sits under /reverb, not beside it', 15_000, async (t, gw) => {
  assert.equal(gw.prefix, '/reverb');
  const up = await fetch(`${gw.httpUrl}/reverb/up`);
  assert.equal(up.status, 200);
  assert.deepEqual(await up.json(), { health: 'OK' });
  const bare = await fetch(`${gw.httpUrl}/up`);
  await bare.arrayBuffer();
  assert.equal(bare.status, 404);
});

gwTest(ref, 'pusher-js (wsPath /reverb) receives an event the SDK triggers under the prefix; the query API answers there too', 20_000, async (t, gw) => {
  const name = uniqueChannel('path');
  const { client, channels: [channel] } = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(client));
  const inbox = new Inbox();
  channel.bind('greet', (data) => inbox.push(data));
  const sdk = makeServerSdk(gw);
  await sdk.trigger(name, 'greet', { n: 1 });
  assert.deepEqual((await inbox.waitForCount(1, 5000, 'greet events'))[0], { n: 1 });
  const res = await sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count,user_count' } });
  assert.deepEqual(await res.json(), { occupied: true, subscription_count: 1 });
});

gwTest(ref, 'laravel-echo (broadcaster reverb) with wsPath /reverb listens under the prefix', 20_000, async (t, gw) => {
  const echo = makeEcho(gw);
  t.after(() => closeAll(echo));
  await waitForState(echo.connector.pusher, 'connected', 10_000);
  const name = uniqueChannel('path-echo');
  const inbox = new Inbox();
  const subscribed = new Promise((resolve) => echo.channel(name).subscribed(resolve).listen('.OrderShipped', (e) => inbox.push(e)));
  await withTimeout(subscribed, 10_000, `Echo subscribed to ${name}`);
  await makeServerSdk(gw).trigger(name, 'OrderShipped', { id: 7 });
  assert.deepEqual((await inbox.waitForCount(1, 5000, 'OrderShipped'))[0], { id: 7 });
});

gwTest(ref, 'a WebSocket upgrade without the prefix is refused with 404', 15_000, async (t, gw) => {
  const ws = new WebSocket(`ws://${gw.host}:${gw.port}/app/${gw.key}?protocol=7&client=js&version=8.6.0`);
  t.after(() => ws.terminate());
  const status = await withTimeout(new Promise((resolve) => {
    ws.once('unexpected-response', (req, res) => resolve(res.statusCode));
    ws.once('open', () => resolve('open'));
    ws.once('error', () => resolve('error'));
  }), 5000, 'the refused upgrade');
  assert.equal(status, 404);
});
