// Several apps in one cluster: strict isolation, max_connections counted
// across gateways, allowed_origins, and the apps file's strictness.
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Inbox, closeAll, makePusherClient, makeServerSdk, parseData, recordStates, withTimeout } from '../lib/clients.mjs';
import { Proc } from '../lib/cluster.mjs';
import { ensureBinary, freePort } from '../lib/gateway.mjs';
import {
  assertAlive,
  assertStatus,
  clTest,
  closeRaw,
  eventually,
  mark,
  openRaw,
  rawSubscribeOk,
  sleep,
  useCluster,
} from '../lib/cluster-suite.mjs';
import { RawClient } from '../lib/clients.mjs';
import { uniqueChannel } from '../lib/suite.mjs';

const ref = useCluster({
  apps: [
    { name: 'main' },
    { name: 'other' },
    { name: 'limited', max_connections: 2 },
    { name: 'guarded', allowed_origins: ['app.example.com', '*.good.test'] },
  ],
});

clTest(ref, "isolation: app main's trigger never reaches app other's subscribers of the same channel name (both gateways)", 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('shared-name');
  const subs = {};
  for (const app of ['main', 'other']) {
    subs[app] = [];
    for (const i of [0, 1]) {
      const raw = await openRaw(cluster.gw(i, app));
      t.after(() => closeRaw(raw));
      await rawSubscribeOk(raw, channel);
      subs[app].push(raw);
    }
  }
  await ref.sdk(1, 'main').trigger(channel, 'for-main', { app: 'main' });
  await ref.sdk(0, 'other').trigger(channel, 'for-other', { app: 'other' });
  for (const app of ['main', 'other']) {
    for (const raw of subs[app]) await raw.waitForMessage((d) => d.event === `for-${app}`, 5000, `for-${app} at ${app}`);
  }
  await sleep(200);
  for (const app of ['main', 'other']) {
    for (const raw of subs[app]) {
      const names = raw.messages.items.filter((m) => m.data?.channel === channel && !m.data.event.startsWith('pusher')).map((m) => m.data.event);
      assert.deepEqual(names, [`for-${app}`], `${app} subscriber on ${raw.view.label}`);
    }
  }
});

clTest(ref, 'isolation: presence members of one app are invisible to another app on the same channel name', 20_000, async (t, { cluster }) => {
  const channel = uniqueChannel('presence-shared');
  const m = await openRaw(cluster.gw(0, 'main'));
  const o = await openRaw(cluster.gw(1, 'other'));
  t.after(() => closeRaw(m, o));
  await rawSubscribeOk(m, channel, ref.sdk(0, 'main').authorizeChannel(m.socketId, channel, { user_id: 'm1', user_info: {} }));
  const s = await rawSubscribeOk(o, channel, ref.sdk(0, 'other').authorizeChannel(o.socketId, channel, { user_id: 'o1', user_info: {} }));
  assert.deepEqual(s.data.presence.ids, ['o1']);
  await ref.sdk(0, 'main').trigger(channel, 'sentinel', {});
  await m.waitForMessage((d) => d.event === 'sentinel', 5000, 'sentinel');
  assert.ok(!m.messages.items.some((x) => x.data?.event === 'pusher_internal:member_added'), "main's member must not see other's member");
});

clTest(ref, "isolation: app main's secret cannot trigger on app other (401)", 15_000, async (t, { cluster }) => {
  const view = cluster.gw(0, 'other');
  const bad = makeServerSdk(view, { secret: cluster.app('main').secret });
  await assertStatus(bad.trigger(uniqueChannel('x'), 'ev', {}), 401);
});

/** Opens a raw connection and resolves with everything it got until it closed (bounded). */
async function refusedConnection(url, opts = {}) {
  const raw = new RawClient(url, opts);
  try {
    await raw.waitOpen();
    const { code } = await raw.waitClose(5000);
    return { raw, code, messages: raw.messages.items };
  } catch (err) {
    raw.close();
    throw err;
  }
}

function assertRefused({ code, messages }, expected) {
  const first = messages[0];
  assert.ok(first?.data, `no message before the close (close code ${code})`);
  assert.equal(first.data.event, 'pusher:error', `first message: ${first.raw}`);
  assert.equal(parseData(first.data.data)?.code, expected, `pusher:error: ${first.raw}`);
  assert.equal(code, expected, `close code (messages: ${messages.map((m) => m.raw).join(' | ')})`);
  assert.ok(!messages.some((m) => m.data?.event === 'pusher:connection_established'), `a refused connection must not be established: ${messages.map((m) => m.raw).join(' | ')}`);
}

clTest(ref, 'max_connections=2 across the cluster: the 3rd connection (either gateway) gets pusher:error 4004 then close 4004; the first two and other apps are unaffected', 30_000, async (t, { cluster }) => {
  const a = cluster.gw(0, 'limited');
  const b = cluster.gw(1, 'limited');
  // Earlier tests' connections of this app may still be closing.
  const c1 = await eventually(() => openRaw(a, {}, { ms: 1000 }), 5000, 200);
  t.after(() => closeRaw(c1));
  const c2 = await openRaw(b);
  t.after(() => closeRaw(c2));
  await sleep(500); // generous time for the count to reach the other gateway
  assertRefused(await refusedConnection(a.wsUrl()), 4004);
  assertRefused(await refusedConnection(b.wsUrl()), 4004);
  await assertAlive(c1);
  await assertAlive(c2);
  const channel = uniqueChannel('limited');
  await rawSubscribeOk(c1, channel);
  const ok = await openRaw(cluster.gw(0, 'main'));
  t.after(() => closeRaw(ok));
  await assertAlive(ok);
});

clTest(ref, 'max_connections=2: pusher-js as the 3rd connection gets error 4004 and does not reconnect', 30_000, async (t, { cluster }) => {
  const c1 = await eventually(() => openRaw(cluster.gw(0, 'limited'), {}, { ms: 1000 }), 5000, 200);
  t.after(() => closeRaw(c1));
  const c2 = await eventually(() => openRaw(cluster.gw(1, 'limited'), {}, { ms: 1000 }), 5000, 200);
  t.after(() => closeRaw(c2));
  await sleep(500);
  const client = makePusherClient(cluster.gw(1, 'limited'));
  t.after(() => closeAll(client));
  const states = recordStates(client);
  const errors = new Inbox();
  client.connection.bind('error', (e) => errors.push(e));
  const terminal = (x) => x === 'disconnected' || x === 'failed';
  await states.waitFor((xs) => xs.includes('connecting') && terminal(xs.at(-1)), 10_000, (xs) => `a disconnected/failed state (states: ${xs.join(' -> ')})`);
  const settled = states.items.length;
  await sleep(2500); // pusher-js would retry after 1 s on a close it may reconnect from
  assert.deepEqual(states.items.slice(settled), [], `no reconnect (states: ${states.items.join(' -> ')})`);
  assert.ok(!states.items.includes('connected'), `never connected (states: ${states.items.join(' -> ')})`);
  assert.ok(errors.items.some((e) => e?.error?.data?.code === 4004), `error 4004 expected, got ${JSON.stringify(errors.items)}`);
  await assertAlive(c1);
});

clTest(ref, 'max_connections=2: after a connection closes, a new one is accepted', 30_000, async (t, { cluster }) => {
  const a = cluster.gw(0, 'limited');
  const b = cluster.gw(1, 'limited');
  const c1 = await eventually(() => openRaw(a, {}, { ms: 1000 }), 5000, 200);
  t.after(() => closeRaw(c1));
  const c2 = await eventually(() => openRaw(b, {}, { ms: 1000 }), 5000, 200);
  t.after(() => closeRaw(c2));
  c1.close();
  const c3 = await eventually(() => openRaw(b, {}, { ms: 1000 }), 5000, 200);
  t.after(() => closeRaw(c3));
  await assertAlive(c3);
});

function originOpts(origin) {
  return { headers: { Origin: origin } };
}

clTest(ref, 'allowed_origins: matching Origins (exact host, wildcard, with a port) are accepted', 20_000, async (t, { cluster }) => {
  const g = cluster.gw(0, 'guarded');
  for (const origin of ['https://app.example.com', 'http://x.good.test', 'https://a.b.good.test', 'https://app.example.com:8443']) {
    const raw = await withTimeout(openRaw(g, originOpts(origin)), 6000, `connection with Origin ${origin}`);
    t.after(() => closeRaw(raw));
    await assertAlive(raw);
  }
});

clTest(ref, 'allowed_origins: a rejected Origin gets pusher:error 4009 then close 4009; an accepted connection of the app is unaffected', 20_000, async (t, { cluster }) => {
  const good = await openRaw(cluster.gw(1, 'guarded'), originOpts('https://app.example.com'));
  t.after(() => closeRaw(good));
  const channel = uniqueChannel('guarded');
  await rawSubscribeOk(good, channel);
  for (const [i, origin] of [[0, 'https://evil.example.org'], [1, 'https://app.example.com.evil.org'], [0, 'https://good.test.evil.org']]) {
    const r = await refusedConnection(cluster.gw(i, 'guarded').wsUrl(), originOpts(origin));
    assertRefused(r, 4009);
  }
  const from = mark(good);
  await ref.sdk(0, 'guarded').trigger(channel, 'still', {});
  await good.waitForMessage((d) => d.event === 'still', 5000, 'an event at the accepted connection', from);
});

clTest(ref, 'allowed_origins defaults to ["*"]: any Origin is accepted by an app without the setting', 15_000, async (t, { cluster }) => {
  const raw = await openRaw(cluster.gw(1, 'main'), originOpts('https://evil.example.org'));
  t.after(() => closeRaw(raw));
  await assertAlive(raw);
});

clTest(ref, 'an apps file with an unknown field stops the gateway at start-up', 20_000, async (t, { cluster }) => {
  const bin = await ensureBinary('gateway');
  const file = path.join(cluster.tmpDir, 'bad-apps.json');
  await fsp.writeFile(file, JSON.stringify({ apps: [{ app_id: '1', key: 'k', secret: 's', max_presence_memberz: 3 }] }));
  const port = await freePort();
  const env = { ...process.env, NATS_URL: cluster.natsUrl, RESOUND_APPS_FILE: file, REVERB_SERVER_HOST: '127.0.0.1', REVERB_SERVER_PORT: String(port), RESOUND_LOG_FORMAT: 'json' };
  for (const k of Object.keys(env)) if (k.startsWith('REVERB_APP_')) delete env[k];
  const p = new Proc('bad-gateway', bin, [], env, path.join(cluster.tmpDir, 'bad-gateway.log'), cluster.tmpDir);
  t.after(() => p.stop());
  const exit = await withTimeout(p.exitPromise, 15_000, () => `the gateway to exit (log: ${p.logTail()})`);
  assert.notEqual(exit.code, 0, `exit: ${JSON.stringify(exit)}`);
  assert.match(p.log(), /max_presence_memberz/, 'the error names the unknown field');
});
