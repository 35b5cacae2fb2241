// RESOUND_CACHE_TTL: a cache channel's last event expires after it, even
// while the channel has subscribers (Pusher keeps it 30 minutes; Reverb
// keeps it until the channel empties). Short here: 3 s.
import assert from 'node:assert/strict';
import { Inbox, closeAll, connectAndSubscribe, makePusherClient, makeServerSdk, waitForState } from '../lib/clients.mjs';
import { gwTest, uniqueChannel, useGateway } from '../lib/suite.mjs';

const TTL = 3;
const ref = useGateway({ extraEnv: { RESOUND_CACHE_TTL: String(TTL) } });

/** Polls GET /channels/{channel}?info=cache until pred(body) holds; bounded. */
async function pollCache(sdk, channel, pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const body = await (await sdk.get({ path: `/channels/${channel}`, params: { info: 'cache' } })).json();
    if (pred(body)) return body;
    if (Date.now() > deadline) assert.fail(`no ${what} within ${ms} ms; last answer ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

gwTest(ref, 'a cached event expires after RESOUND_CACHE_TTL although the channel is occupied; then a subscriber gets pusher:cache_miss', 30_000, async (t, gw) => {
  const sdk = makeServerSdk(gw);
  const name = uniqueChannel('cache-ttl');
  const { client: staying } = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(staying));

  await sdk.trigger(name, 'Snap', { a: 1 });
  const cached = await pollCache(sdk, name, (b) => b.cache?.event === 'Snap', 10_000, 'cached event');
  assert.equal(cached.occupied, true);
  assert.ok(Number.isInteger(cached.cache.ttl) && cached.cache.ttl >= 0 && cached.cache.ttl <= TTL, `ttl ${cached.cache.ttl}, want at most ${TTL}`);

  // Expiry is the NATS KV bucket's; allow it a few of its checks.
  const expired = await pollCache(sdk, name, (b) => b.cache === undefined, TTL * 1000 + 15_000, 'expiry of the cached event');
  assert.deepEqual(expired, { occupied: true }, 'the channel is still occupied, its cache gone');

  const late = makePusherClient(gw);
  t.after(() => closeAll(late));
  await waitForState(late, 'connected');
  const seen = new Inbox();
  const channel = late.subscribe(name);
  channel.bind_global((event) => seen.push(event));
  await seen.waitFor((items) => items.includes('pusher:cache_miss'), 5000, (items) => `pusher:cache_miss (got ${items.join(', ')})`);
  assert.ok(!seen.items.includes('Snap'), `the expired event was sent: ${seen.items.join(', ')}`);
});
