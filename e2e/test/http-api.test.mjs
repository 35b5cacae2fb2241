// HTTP API authentication, through the pusher server SDK.
import assert from 'node:assert/strict';
import { Inbox, closeAll, connectAndSubscribe, makeServerSdk } from '../lib/clients.mjs';
import { gwTest, uniqueChannel, useGateway } from '../lib/suite.mjs';

const ref = useGateway();

/** Asserts that `promise` rejects with the SDK's RequestError for HTTP 401 and a JSON {"error": ...} body. */
async function assert401(promise) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.status, 401, `expected HTTP 401, got ${err.status} (${err.message}; body ${JSON.stringify(err.body)})`);
    let body;
    try {
      body = JSON.parse(err.body);
    } catch {
      assert.fail(`401 body is not JSON: ${JSON.stringify(err.body)}`);
    }
    assert.equal(typeof body.error, 'string', `401 body must be {"error": "..."}, got ${err.body}`);
    assert.ok(body.error.length > 0, '401 error message must not be empty');
    return true;
  });
}

gwTest(ref, 'the SDK with the right secret gets 200 from /events and /batch_events', 15_000, async (t, gw) => {
  const sdk = makeServerSdk(gw);
  const r1 = await sdk.trigger(uniqueChannel('nobody'), 'ev', { a: 1 });
  assert.equal(r1.status, 200);
  const r2 = await sdk.triggerBatch([{ channel: uniqueChannel('nobody'), name: 'ev', data: 'x' }]);
  assert.equal(r2.status, 200);
});

gwTest(ref, 'a trigger signed with a wrong secret gets 401 and is not delivered', 20_000, async (t, gw) => {
  const name = uniqueChannel('auth');
  const { client, channels: [channel] } = await connectAndSubscribe(gw, [name]);
  t.after(() => closeAll(client));
  const got = new Inbox();
  channel.bind_global((event, data) => { if (!event.startsWith('pusher')) got.push({ event, data }); });

  const bad = makeServerSdk(gw, { secret: `${gw.secret}-wrong` });
  await assert401(bad.trigger(name, 'forged', { evil: true }));

  // Per-channel order: once "after" arrives, "forged" would have arrived first.
  await makeServerSdk(gw).trigger(name, 'after', {});
  await got.waitForCount(1, 10_000, `events on ${name}`);
  assert.deepEqual(got.items.map((x) => x.event), ['after'], 'the rejected event must not be delivered');
});

gwTest(ref, 'a batch signed with a wrong secret gets 401', 15_000, async (t, gw) => {
  const bad = makeServerSdk(gw, { secret: 'not-the-secret' });
  await assert401(bad.triggerBatch([{ channel: uniqueChannel('auth-batch'), name: 'forged', data: '{}' }]));
});

gwTest(ref, "a request signed with another app's key and secret gets 401", 15_000, async (t, gw) => {
  const bad = makeServerSdk(gw, { key: 'some-other-key', secret: 'some-other-secret' });
  await assert401(bad.trigger(uniqueChannel('auth-key'), 'forged', {}));
});
