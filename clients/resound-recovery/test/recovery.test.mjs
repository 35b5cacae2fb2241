// The plugin's logic against a pusher-js-shaped fake (test/fake-pusher.mjs).
// The e2e suite (e2e/test/recovery*.test.mjs) runs it with the real pusher-js
// and laravel-echo against real gateways.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { REFETCH_EVENT, RESUMED_EVENT, withRecovery } from '../index.js';
import { FakePusher } from './fake-pusher.mjs';

const ev = (channel, name, data, position) => {
  const f = { event: name, channel, data: JSON.stringify(data) };
  if (position !== undefined) f.position = position;
  return f;
};

function connected(channels) {
  const p = new FakePusher();
  for (const c of channels) p.subscribe(c);
  p.connect();
  p.succeedAll();
  return p;
}

test('records the last position seen on each channel, before the app sees the event', () => {
  const p = connected(['a', 'private-b']);
  const h = withRecovery(p);
  const seenByApp = [];
  p.channel('a').bind('tick', () => seenByApp.push(h.position('a')));
  p.receive(ev('a', 'tick', { n: 1 }, '17.1700000000000'));
  p.receive(ev('a', 'tick', { n: 2 }, '33.1700000000001'));
  p.receive(ev('private-b', 'tick', { n: 1 }, '18.1700000000000'));
  assert.deepEqual(h.positions(), { a: '33.1700000000001', 'private-b': '18.1700000000000' });
  assert.deepEqual(seenByApp, ['17.1700000000000', '33.1700000000001']);
});

test('ignores events without a position, and positions of channels it is not on', () => {
  const p = connected(['a']);
  const h = withRecovery(p);
  p.receive(ev('a', 'tick', {}, '17.1'));
  p.receive(ev('a', 'client-typing', {})); // client events carry none
  p.receive({ event: 'pusher_internal:member_added', channel: 'a', data: '{"user_id":"2"}' });
  p.receive(ev('elsewhere', 'tick', {}, '99.1'));
  p.receive(ev('a', 'tick', {}, ''));
  // "position" inside the payload is data, not a position.
  p.receive(ev('a', 'tick', { position: '5.5' }));
  p.receive({ event: 'tick', channel: 'a', data: { position: '6.6' } });
  assert.deepEqual(h.positions(), { a: '17.1' });
});

test('a frame that is not JSON is left to pusher-js', () => {
  const p = connected(['a']);
  const h = withRecovery(p);
  assert.throws(() => p.receive('{"position": nope'), SyntaxError); // the fake's own decode throws
  assert.deepEqual(h.positions(), {});
});

test('adds the last position to pusher:subscribe when pusher-js subscribes again, and only then', () => {
  const p = connected(['a', 'private-b', 'presence-c', 'quiet']);
  withRecovery(p);
  p.receive(ev('a', 'tick', {}, '17.1'));
  p.receive(ev('private-b', 'tick', {}, '18.1'));
  p.receive(ev('presence-c', 'tick', {}, '19.1'));
  const firstRound = p.subscribes();
  assert.ok(firstRound.every((d) => !('position' in d)), 'the first subscriptions carry no position');

  p.sent.length = 0;
  p.drop();
  p.connect(); // subscribeAll
  const again = Object.fromEntries(p.subscribes().map((d) => [d.channel, d]));
  assert.deepEqual(again.a, { auth: '', channel_data: undefined, channel: 'a', position: '17.1' });
  assert.deepEqual(again['private-b'], { auth: 'key:sig-private', channel_data: undefined, channel: 'private-b', position: '18.1' });
  assert.deepEqual(again['presence-c'], { auth: 'key:sig-presence', channel_data: '{"user_id":"1"}', channel: 'presence-c', position: '19.1' });
  assert.equal('position' in again.quiet, false, 'a channel without events has nothing to give');
});

test("does not change the caller's subscribe data", () => {
  const p = connected(['a']);
  withRecovery(p);
  p.receive(ev('a', 'tick', {}, '17.1'));
  const data = { auth: '', channel: 'a' };
  p.send_event('pusher:subscribe', data);
  assert.deepEqual(data, { auth: '', channel: 'a' });
  assert.deepEqual(p.sent.at(-1).data, { auth: '', channel: 'a', position: '17.1' });
  p.send_event('pusher:unsubscribe', { channel: 'a' });
  assert.deepEqual(p.sent.at(-1).data, { channel: 'a' });
});

test('pusher_internal:resumed calls onResumed and emits resound:resumed on the channel', () => {
  const p = connected(['a']);
  const calls = [];
  const h = withRecovery(p, { onResumed: (c, n) => calls.push(['cb', c, n]) });
  p.channel('a').bind(RESUMED_EVENT, (d) => calls.push(['event', d]));
  p.channel('a').bind('tick', (d) => calls.push(['tick', d.n]));
  p.receive(ev('a', 'tick', { n: 1 }, '17.1'));
  p.drop();
  p.connect();
  p.succeedAll();
  p.receive(ev('a', 'tick', { n: 2 }, '33.1'));
  p.receive(ev('a', 'tick', { n: 3 }, '49.1'));
  p.receive({ event: 'pusher_internal:resumed', channel: 'a', data: '{"replayed":2}' });
  assert.deepEqual(calls, [['tick', 1], ['tick', 2], ['tick', 3], ['cb', 'a', 2], ['event', { replayed: 2 }]]);
  assert.equal(h.position('a'), '49.1');
});

test('pusher_internal:resume_failed forgets the position, calls onRefetch and emits resound:refetch', () => {
  const p = connected(['a', 'b']);
  const calls = [];
  const h = withRecovery(p, { onRefetch: (c, info) => calls.push(['cb', c, info, h.position(c)]) });
  p.channel('a').bind(REFETCH_EVENT, (d) => calls.push(['event', d]));
  p.receive(ev('a', 'tick', {}, '17.1'));
  p.receive(ev('b', 'tick', {}, '18.1'));
  p.drop();
  p.connect();
  p.succeedAll();
  p.receive({ event: 'pusher_internal:resume_failed', channel: 'a', data: '{"reason":"expired"}' });
  assert.deepEqual(calls, [['cb', 'a', { reason: 'expired' }, undefined], ['event', { reason: 'expired' }]]);
  assert.deepEqual(h.positions(), { b: '18.1' });
  p.receive(ev('a', 'tick', {}, '65.1'));
  assert.equal(h.position('a'), '65.1', 'the next event sets a position again');
  // Data given as an object, as some servers send it, is read too.
  p.receive({ event: 'pusher_internal:resume_failed', channel: 'b', data: { reason: 'unknown' } });
  assert.deepEqual(calls.at(-1), ['cb', 'b', { reason: 'unknown' }, undefined]);
});

test('unsubscribe forgets the channel: subscribing again later starts afresh', () => {
  const p = connected(['a']);
  const h = withRecovery(p);
  p.receive(ev('a', 'tick', {}, '17.1'));
  p.unsubscribe('a');
  assert.deepEqual(h.positions(), {});
  // A late event of the channel left (still in flight) sets nothing.
  p.receive(ev('a', 'tick', {}, '33.1'));
  assert.deepEqual(h.positions(), {});
  p.sent.length = 0;
  p.subscribe('a');
  assert.deepEqual(p.subscribes(), [{ auth: '', channel_data: undefined, channel: 'a' }]);
});

test('reads the frames of each new connection, and no longer those of the old one', () => {
  const p = connected(['a']);
  const h = withRecovery(p);
  const first = p.transport;
  p.drop();
  const second = p.connect();
  assert.equal(first.global_callbacks.length, 0, 'the old transport is let go');
  assert.equal(second.global_callbacks.length, 1);
  p.succeedAll();
  p.receive(ev('a', 'tick', {}, '33.1'));
  assert.equal(h.position('a'), '33.1');
});

test('installed before the connection is up, it attaches on "connected"', () => {
  const p = new FakePusher();
  const h = withRecovery(p);
  p.subscribe('a');
  p.connect();
  p.succeedAll();
  p.receive(ev('a', 'tick', {}, '17.1'));
  assert.equal(h.position('a'), '17.1');
});

test('takes the Pusher of a laravel-echo Echo', () => {
  const p = connected(['a']);
  const echo = { connector: { pusher: p }, options: {} };
  const h = withRecovery(echo);
  p.receive(ev('a', 'tick', {}, '17.1'));
  assert.equal(h.position('a'), '17.1');
});

test('refuses what is not a Pusher or an Echo, and a second install', () => {
  assert.throws(() => withRecovery({}), TypeError);
  assert.throws(() => withRecovery(null), TypeError);
  assert.throws(() => withRecovery({ connector: { socket: {} } }), TypeError); // Echo with socket.io
  const p = connected(['a']);
  const h = withRecovery(p);
  assert.throws(() => withRecovery(p), /already installed/);
  h.stop();
  withRecovery(p).stop();
});

test('stop() puts pusher-js back as it was', () => {
  const p = connected(['a']);
  const before = { send: p.send_event, unsub: p.unsubscribe, own: Object.keys(p).sort(), connListeners: p.connection.listenerCount() };
  const h = withRecovery(p, { onRefetch: () => assert.fail('stopped') });
  p.receive(ev('a', 'tick', {}, '17.1'));
  h.stop();
  assert.equal(p.send_event, before.send);
  assert.equal(p.unsubscribe, before.unsub);
  assert.deepEqual(Object.keys(p).sort(), before.own);
  assert.equal(p.connection.listenerCount(), before.connListeners);
  assert.equal(p.transport.global_callbacks.length, 0);
  p.receive({ event: 'pusher_internal:resume_failed', channel: 'a', data: '{"reason":"expired"}' });
  p.drop();
  p.sent.length = 0;
  p.connect();
  assert.ok(p.subscribes().every((d) => !('position' in d)));
  h.stop(); // twice is fine
});

test('stop() leaves a wrapper installed after it in place, passing through', () => {
  const p = connected(['a']);
  const h = withRecovery(p);
  const ours = p.send_event;
  const theirs = function (...args) { return ours.apply(this, args); };
  p.send_event = theirs;
  p.receive(ev('a', 'tick', {}, '17.1'));
  h.stop();
  assert.equal(p.send_event, theirs);
  p.send_event('pusher:subscribe', { channel: 'a' });
  assert.deepEqual(p.sent.at(-1).data, { channel: 'a' });
});

test('an exception in onRefetch does not stop the frame from reaching pusher-js', async () => {
  const p = connected(['a']);
  const thrown = new Error('app bug');
  withRecovery(p, { onRefetch: () => { throw thrown; } });
  const ticks = [];
  p.channel('a').bind('tick', () => ticks.push(1));
  // The error is thrown again from a timer; catch it there.
  const caught = new Promise((resolve) => {
    const realSetTimeout = globalThis.setTimeout;
    globalThis.setTimeout = (fn, ms) => {
      globalThis.setTimeout = realSetTimeout;
      try {
        fn();
      } catch (err) {
        resolve(err);
      }
      return 0;
    };
  });
  p.receive({ event: 'pusher_internal:resume_failed', channel: 'a', data: '{"reason":"expired"}' });
  assert.equal(await caught, thrown);
  p.receive(ev('a', 'tick', {}, '17.1'));
  assert.deepEqual(ticks, [1]);
});

test('the CommonJS build is the same module', () => {
  const require = createRequire(import.meta.url);
  const cjs = require('../index.cjs');
  assert.deepEqual(Object.keys(cjs).sort(), ['REFETCH_EVENT', 'RESUMED_EVENT', 'withRecovery']);
  assert.equal(cjs.REFETCH_EVENT, REFETCH_EVENT);
  const p = connected(['a']);
  const h = cjs.withRecovery(p);
  p.receive(ev('a', 'tick', {}, '17.1'));
  assert.equal(h.position('a'), '17.1');
  // The two builds see each other's install on the same instance.
  assert.throws(() => withRecovery(p), /already installed/);
});
