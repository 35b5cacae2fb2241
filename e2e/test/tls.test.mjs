// Native TLS: a gateway given RESOUND_TLS_CERT and RESOUND_TLS_KEY serves
// wss:// and https:// on its one port. The real pusher-js (forceTLS,
// wssPort), laravel-echo and the `pusher` server SDK (useTLS, scheme
// https) reach it, trusting a test CA the set-up generates with the
// project's own generator. Node reads NODE_EXTRA_CA_CERTS at start-up only,
// so the clients run as child processes given it, as a developer's would.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { E2E_DIR, generateCertificate, startGateway } from '../lib/gateway.mjs';
import { withTimeout } from '../lib/clients.mjs';

const ref = { gw: null, certs: null, dir: null };

before(async () => {
  ref.dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'resound-e2e-tls-'));
  ref.certs = await generateCertificate(ref.dir);
  ref.gw = await startGateway({ tls: ref.certs });
}, { timeout: 10 * 60_000 });

after(async () => {
  if (ref.gw) await ref.gw.stop();
  if (ref.dir) await fsp.rm(ref.dir, { recursive: true, force: true });
}, { timeout: 30_000 });

function runNode(script, env) {
  const child = spawn(process.execPath, [script], {
    cwd: E2E_DIR,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: ref.certs.ca, RESOUND_TIMEOUT_MS: '10000', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

async function check(t, name, fn) {
  try {
    await fn();
  } catch (err) {
    ref.gw.failed = true;
    ref.gw.printLogTail(`"${name}" failed`);
    throw err;
  }
}

test('pusher-js over wss:// and the pusher SDK over https:// (examples/receive.mjs)', { timeout: 30_000 }, async (t) => {
  await check(t, 'receive.mjs over TLS', async () => {
    const gw = ref.gw;
    const { child, done } = runNode(path.join(E2E_DIR, 'examples', 'receive.mjs'), {
      RESOUND_URL: gw.httpUrl, REVERB_APP_ID: gw.appId, REVERB_APP_KEY: gw.key, REVERB_APP_SECRET: gw.secret,
    });
    t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    assert.match(gw.httpUrl, /^https:/);
    const { code, stdout, stderr } = await withTimeout(done, 20_000, 'receive.mjs to exit');
    assert.equal(code, 0, `exit code ${code}\nstdout: ${stdout}\nstderr: ${stderr}`);
    assert.match(stdout, /received "hello" on "demo": .*Hello from Resound!/);
  });
});

test('a Laravel .env with REVERB_SCHEME=https: Echo over wss://, the SDK over https://', { timeout: 30_000 }, async (t) => {
  await check(t, 'Laravel https', async () => {
    const gw = ref.gw;
    const { child, done } = runNode(path.join(E2E_DIR, 'lib', 'laravel-https-client.mjs'), {
      REVERB_APP_ID: gw.appId, REVERB_APP_KEY: gw.key, REVERB_APP_SECRET: gw.secret,
      REVERB_HOST: 'localhost', REVERB_PORT: String(gw.port), REVERB_SCHEME: 'https',
      VITE_REVERB_APP_KEY: gw.key, VITE_REVERB_HOST: 'localhost', VITE_REVERB_PORT: String(gw.port), VITE_REVERB_SCHEME: 'https',
      CHANNEL: `orders-${Date.now().toString(36)}`,
    });
    t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    const { code, stdout, stderr } = await withTimeout(done, 20_000, 'laravel-https-client.mjs to exit');
    assert.equal(code, 0, `exit code ${code}\nstdout: ${stdout}\nstderr: ${stderr}`);
    const out = JSON.parse(stdout.trim().split('\n').pop());
    assert.deepEqual(out.received, { id: 42 });
    assert.match(out.url, new RegExp(`^wss://localhost:${gw.port}/app/${gw.key}\\?`));
    assert.match(out.socketId, /^\d+\.\d+$/);
    assert.deepEqual(out.channelInfo, { occupied: true, subscription_count: 1 });
  });
});

test('without the CA, clients refuse the certificate', { timeout: 30_000 }, async (t) => {
  await check(t, 'untrusted', async () => {
    const gw = ref.gw;
    const { child, done } = runNode(path.join(E2E_DIR, 'examples', 'receive.mjs'), {
      NODE_EXTRA_CA_CERTS: '', RESOUND_TIMEOUT_MS: '3000',
      RESOUND_URL: gw.httpUrl, REVERB_APP_ID: gw.appId, REVERB_APP_KEY: gw.key, REVERB_APP_SECRET: gw.secret,
    });
    t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
    const { code, stdout } = await withTimeout(done, 20_000, 'receive.mjs to exit');
    assert.equal(code, 1);
    assert.doesNotMatch(stdout, /received/);
  });
});

test('a plain http:// request to the TLS port gets 400 saying why', { timeout: 15_000 }, async () => {
  await check(null, 'plain request', async () => {
    const res = await fetch(`http://${ref.gw.host}:${ref.gw.port}/up`, { signal: AbortSignal.timeout(5000) });
    assert.equal(res.status, 400);
    assert.match(await res.text(), /TLS/);
  });
});

test('a plain ws:// upgrade to the TLS port is refused, not hung', { timeout: 15_000 }, async () => {
  await check(null, 'plain ws', async () => {
    const head = await new Promise((resolve, reject) => {
      const s = net.connect(ref.gw.port, ref.gw.host, () => {
        s.write(`GET /app/${ref.gw.key}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
      });
      let buf = '';
      s.on('data', (d) => { buf += d; });
      s.on('end', () => resolve(buf));
      s.on('error', reject);
      s.setTimeout(10_000, () => { s.destroy(); reject(new Error('no answer')); });
    });
    assert.match(head, /^HTTP\/1\.1 400 /);
  });
});
