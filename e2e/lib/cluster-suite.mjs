// node:test glue for cluster-mode files: one cluster (nats-server, two
// gateways, a worker) and one auth endpoint server per test file, plus
// frame-level helpers shared by the cluster tests.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAuthServer, newMasterKey } from './auth-server.mjs';
import { Inbox, RawClient, makeServerSdk, parseData, withTimeout } from './clients.mjs';
import { startCluster } from './cluster.mjs';

const START_TIMEOUT_MS = 10 * 60_000; // may include cold Go builds

/**
 * Starts a cluster with `apps` (see startCluster) and an auth server before
 * the file's tests; stops both after them. Returns a ref with `.cluster`,
 * `.auth` and `.masterKey`.
 */
export function useCluster(options = {}) {
  const ref = { cluster: null, auth: null, masterKey: newMasterKey() };
  before(async () => {
    ref.cluster = await startCluster(options);
    ref.auth = await startAuthServer(ref.cluster.apps, ref.masterKey);
  }, { timeout: START_TIMEOUT_MS });
  after(async () => {
    if (ref.auth) await ref.auth.close();
    if (ref.cluster) await ref.cluster.stop();
  }, { timeout: 60_000 });
  /** The SDK of app `appName` through gateway `i`, with the encryption master key. */
  ref.sdk = (i = 0, appName = 'main') => makeServerSdk(ref.cluster.gw(i, appName), { encryptionMasterKeyBase64: ref.masterKey });
  return ref;
}

/**
 * A test with a mandatory timeout. On failure it prints the tail of every
 * cluster process's log (and keeps the temp dir). It also fails if a
 * cluster process died during the test.
 */
export function clTest(ref, name, timeoutMs, fn) {
  return test(name, { timeout: timeoutMs }, async (t) => {
    try {
      await fn(t, ref);
      const dead = ref.cluster?.deadProcs() ?? [];
      assert.deepEqual(dead.map((p) => `${p.name}: ${p.status()}`), [], 'a cluster process exited during the test');
    } catch (err) {
      if (ref.cluster) {
        ref.cluster.failed = true;
        ref.cluster.printLogTail(`"${name}" failed`);
      }
      throw err;
    }
  });
}

// ---------------------------------------------------------------------------
// Raw-frame helpers

/** Opens a raw WebSocket to `view`, waits for connection_established; sets raw.socketId. */
export async function openRaw(view, opts = {}, { key, query, ms = 5000 } = {}) {
  const raw = new RawClient(view.wsUrl(key ?? view.key, query), opts);
  try {
    await raw.waitOpen(ms);
    const est = await raw.established(ms);
    raw.socketId = est.socket_id;
    raw.view = view;
    return raw;
  } catch (err) {
    raw.close();
    throw err;
  }
}

export function closeRaw(...raws) {
  for (const r of raws.flat()) if (r) r.close();
}

/** Index to pass as `from` so that only messages after now are considered. */
export const mark = (raw) => raw.messages.items.length;

/**
 * Sends pusher:subscribe and waits for the subscription's outcome on that
 * channel: {ok: true, msg} on subscription_succeeded, {ok: false, msg} on
 * pusher:subscription_error.
 */
export async function rawSubscribe(raw, channel, { auth, channel_data } = {}, ms = 5000) {
  const from = mark(raw);
  const data = { channel };
  if (auth !== undefined) data.auth = auth;
  if (channel_data !== undefined) data.channel_data = channel_data;
  raw.send({ event: 'pusher:subscribe', data });
  const m = await raw.waitForMessage(
    (d) => d.channel === channel && (d.event === 'pusher_internal:subscription_succeeded' || d.event === 'pusher:subscription_error'),
    ms,
    `subscription_succeeded or subscription_error for ${channel}`,
    from,
  );
  return { ok: m.data.event === 'pusher_internal:subscription_succeeded', msg: m, data: parseData(m.data.data), from };
}

/** rawSubscribe that must succeed. */
export async function rawSubscribeOk(raw, channel, auth = {}, ms = 5000) {
  const r = await rawSubscribe(raw, channel, auth, ms);
  assert.ok(r.ok, `subscription to ${channel} failed: ${r.msg.raw}`);
  return r;
}

/** Signs a private/presence/encrypted subscription for raw clients with the pusher SDK. */
export function signChannel(sdk, raw, channel, presenceData) {
  return sdk.authorizeChannel(raw.socketId, channel, presenceData);
}

/** Waits for a pusher:error after `from` and returns its parsed data ({code, message}). */
export async function waitPusherError(raw, from = 0, ms = 5000) {
  const m = await raw.waitForMessage((d) => d.event === 'pusher:error', ms, 'pusher:error', from);
  return parseData(m.data.data);
}

/**
 * Asserts the contract's rejected-subscription sequence: a
 * pusher:subscription_error for `channel` with data {type, error, status},
 * then a pusher:error with code 4009; and the connection stays open.
 */
export async function expectSubscriptionRejected(raw, channel, auth, { status, type } = {}, ms = 5000) {
  const r = await rawSubscribe(raw, channel, auth, ms);
  assert.equal(r.ok, false, `subscription to ${channel} must be rejected, got ${r.msg.raw}`);
  const d = r.data;
  assert.equal(typeof d, 'object', `subscription_error data must be an object: ${r.msg.raw}`);
  if (status !== undefined) assert.equal(d.status, status, `subscription_error status: ${r.msg.raw}`);
  if (type !== undefined) assert.equal(d.type, type, `subscription_error type: ${r.msg.raw}`);
  assert.equal(typeof d.type, 'string', `subscription_error needs a type: ${r.msg.raw}`);
  assert.equal(typeof d.error, 'string', `subscription_error needs an error message: ${r.msg.raw}`);
  const err = await waitPusherError(raw, r.from, ms);
  assert.equal(err?.code, 4009, `pusher:error after the subscription_error: ${JSON.stringify(err)}`);
  // The error must come after the subscription_error.
  const idxSubErr = raw.messages.items.indexOf(r.msg);
  const idxErr = raw.messages.items.findIndex((m, i) => i > r.from && m.data?.event === 'pusher:error');
  assert.ok(idxErr > idxSubErr, 'pusher:error 4009 must follow pusher:subscription_error');
  await assertAlive(raw);
  return { subscriptionError: d, error: err };
}

/** Asserts that the raw connection is open and answers pusher:ping. */
export async function assertAlive(raw, ms = 5000) {
  assert.ok(raw.isOpen, `connection must still be open (messages: ${raw.messages.items.map((m) => m.raw).join(' | ')})`);
  const from = mark(raw);
  raw.send({ event: 'pusher:ping', data: {} });
  await raw.waitForMessage((d) => d.event === 'pusher:pong', ms, 'pusher:pong (connection still usable)', from);
}

/** Events (non pusher:/pusher_internal:) received on `channel` after `from`. */
export function channelEvents(raw, channel, from = 0) {
  return raw.messages.items
    .slice(from)
    .filter((m) => m.data && m.data.channel === channel && !String(m.data.event).startsWith('pusher'))
    .map((m) => m.data);
}

/** Waits for an event named `event` on `channel` after `from`. */
export async function waitEvent(raw, channel, event, from = 0, ms = 5000) {
  const m = await raw.waitForMessage((d) => d.channel === channel && d.event === event, ms, `"${event}" on ${channel}`, from);
  return m.data;
}

/**
 * Asserts that a connection still receives events on `channel`: triggers a
 * sentinel through `sdk` and waits for it.
 */
export async function assertReceives(raw, channel, sdk, ms = 5000) {
  const from = mark(raw);
  const n = Math.random().toString(36).slice(2);
  await sdk.trigger(channel, 'sentinel', { n });
  await raw.waitForMessage((d) => d.channel === channel && d.event === 'sentinel' && parseData(d.data)?.n === n, ms, `the sentinel event on ${channel}`, from);
}

/**
 * Polls `fn` until it returns without throwing, for at most `ms`; rethrows
 * the last error. For cluster-wide state that converges (HTTP queries).
 */
export async function eventually(fn, ms = 3000, every = 100) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(every);
    }
  }
}

/** Parses a pusher SDK response body as JSON. */
export async function json(resPromise) {
  const res = await resPromise;
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    assert.fail(`response body is not JSON: ${text}`);
  }
}

/** Asserts that `promise` (a pusher SDK call) rejects with HTTP `status`; returns the error body. */
export async function assertStatus(promise, status) {
  let caught;
  await assert.rejects(promise, (err) => {
    caught = err;
    assert.equal(err.status, status, `expected HTTP ${status}, got ${err.status} (${err.message}; body ${JSON.stringify(err.body)})`);
    return true;
  });
  return caught.body;
}

export { Inbox, withTimeout, parseData, sleep };
