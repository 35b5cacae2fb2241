// A client away longer than the history window (RESOUND_HISTORY_TTL, 10 s
// here, the least it may be) cannot resume: the server answers
// pusher_internal:resume_failed and the @resound/recovery plugin tells the
// app to refetch (onRefetch, and the resound:refetch channel event that Echo
// users listen to), then keeps positions again from the next events.
import assert from 'node:assert/strict';
import { withRecovery } from '@resound/recovery';
import { Inbox, closeAll, makeEcho, makePusherClient, parseData, waitForState, waitForSubscribed, withTimeout } from '../lib/clients.mjs';
import { clTest, closeRaw, mark, openRaw, signChannel, sleep, useCluster } from '../lib/cluster-suite.mjs';
import { uniqueChannel } from '../lib/suite.mjs';

const TTL_SECONDS = 10;
const ref = useCluster({ apps: [{ name: 'main', recovery: true }], gateways: 1, extraEnv: { RESOUND_HISTORY_TTL: String(TTL_SECONDS) } });

/**
 * Waits until the server resumes none of the channels from their positions:
 * a raw connection subscribes to each with its position, as the plugin
 * would, until every answer is resume_failed rather than resumed. Bounded;
 * no fixed sleep decides. Returns the resume_failed data per channel.
 */
async function waitWindowPassed(view, sdk, positions, ms) {
  const deadline = Date.now() + ms;
  const history = [];
  for (;;) {
    const raw = await openRaw(view);
    const answers = {};
    try {
      for (const [channel, position] of Object.entries(positions)) {
        const from = mark(raw);
        const data = { channel, position };
        if (channel.startsWith('private-')) data.auth = signChannel(sdk, raw, channel).auth;
        raw.send({ event: 'pusher:subscribe', data });
        const m = await raw.waitForMessage(
          (d) => d.channel === channel && (d.event === 'pusher_internal:resumed' || d.event === 'pusher_internal:resume_failed' || d.event === 'pusher:subscription_error'),
          10_000, `the resume answer for ${channel}`, from);
        assert.notEqual(m.data.event, 'pusher:subscription_error', m.raw);
        answers[channel] = m.data.event === 'pusher_internal:resume_failed' ? parseData(m.data.data) : 'resumed';
      }
    } finally {
      closeRaw(raw);
    }
    history.push(answers);
    if (Object.values(answers).every((a) => a !== 'resumed')) return answers;
    if (Date.now() > deadline) throw new Error(`still resumed after ${ms} ms: ${JSON.stringify(history)}`);
    await sleep(1000);
  }
}

clTest(ref, 'pusher-js and laravel-echo away longer than the window get onRefetch and resound:refetch, miss nothing silently, and resume positions from the next events', 120_000, async (t, { cluster, auth }) => {
  const A = cluster.A;
  const pub = uniqueChannel('feed');
  const priv = uniqueChannel('private-orders');
  const echoBase = uniqueChannel('board');

  const client = makePusherClient(A, { channelAuthorization: { endpoint: auth.channelEndpoint(), transport: 'ajax' } });
  const echo = makeEcho(A, { authEndpoint: auth.channelEndpoint() });
  t.after(() => closeAll(client, echo));
  const log = new Inbox();
  const rec = withRecovery(client, {
    onRefetch: (channel, info) => log.push([channel, 'onRefetch', info.reason, rec.position(channel)]),
    onResumed: (channel) => log.push([channel, 'onResumed']),
  });
  const echoRec = withRecovery(echo, { onResumed: (channel) => log.push([channel, 'onResumed']) });
  await Promise.all([waitForState(client, 'connected'), waitForState(echo.connector.pusher, 'connected')]);
  for (const name of [pub, priv]) client.subscribe(name).bind('tick', (d) => log.push([name, 'tick', d.n]));
  const ech = echo.private(echoBase)
    .listen('.tick', (d) => log.push([ech.name, 'tick', d.n]))
    .listen('.resound:refetch', (e) => log.push([ech.name, 'resound:refetch', e.reason]));
  await Promise.all([
    waitForSubscribed(client.channel(pub)),
    waitForSubscribed(client.channel(priv)),
    withTimeout(new Promise((resolve) => ech.subscribed(resolve)), 10_000, 'Echo subscription'),
  ]);
  const channels = [pub, priv, ech.name];
  const sdk = ref.sdk(0);
  // One batch: one job, so the channels' deliveries are stored together and leave the window together.
  const tick = (n) => sdk.triggerBatch(channels.map((channel) => ({ channel, name: 'tick', data: { n } })));
  const hasTick = (n) => (items) => channels.every((c) => items.some((e) => e[0] === c && e[1] === 'tick' && e[2] === n));

  await tick(1);
  await log.waitFor(hasTick(1), 10_000, () => `tick 1 everywhere (log: ${JSON.stringify(log.items)})`);
  const before = { ...rec.positions(), ...echoRec.positions() };
  assert.deepEqual(Object.keys(before).sort(), [...channels].sort());

  // Away (the pusher-js connection closed, as a laptop lid does), while an
  // event is triggered and then the window passes.
  client.disconnect();
  echo.connector.pusher.disconnect();
  await Promise.all([waitForState(client, 'disconnected'), waitForState(echo.connector.pusher, 'disconnected')]);
  await tick(2);
  const answers = await waitWindowPassed(A, sdk, before, (TTL_SECONDS + 30) * 1000);
  assert.deepEqual(Object.values(answers), channels.map(() => ({ reason: 'expired' })));

  log.items.length = 0;
  client.connect();
  echo.connector.pusher.connect();
  await log.waitFor(
    (items) => [pub, priv].every((c) => items.some((e) => e[0] === c && e[1] === 'onRefetch')) && items.some((e) => e[0] === ech.name && e[1] === 'resound:refetch'),
    20_000, () => `the refetch answers (log: ${JSON.stringify(log.items)})`);
  assert.deepEqual(log.items.filter((e) => e[1] === 'onRefetch').sort(), [[priv, 'onRefetch', 'expired', undefined], [pub, 'onRefetch', 'expired', undefined]].sort(),
    'onRefetch once per channel, its position already forgotten');
  assert.deepEqual(log.items.filter((e) => e[0] === ech.name), [[ech.name, 'resound:refetch', 'expired']]);
  assert.deepEqual({ ...rec.positions(), ...echoRec.positions() }, {}, 'positions forgotten after the refetch');

  await tick(3);
  await log.waitFor(hasTick(3), 10_000, () => `tick 3 everywhere (log: ${JSON.stringify(log.items)})`);
  assert.deepEqual(log.items.filter((e) => e[1] === 'tick' && e[2] === 2), [], 'what was missed is for the app to refetch, not replayed');
  assert.deepEqual(log.items.filter((e) => e[1] === 'onResumed'), []);
  const after = { ...rec.positions(), ...echoRec.positions() };
  for (const c of channels) {
    assert.ok(after[c] && after[c] !== before[c], `${c} has a new position (${before[c]} -> ${after[c]})`);
  }
});
