// The README's "it works" demo (examples/receive.mjs) runs against a gateway.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { E2E_DIR } from '../lib/gateway.mjs';
import { withTimeout } from '../lib/clients.mjs';
import { gwTest, useGateway } from '../lib/suite.mjs';

const ref = useGateway();

function runExample(env) {
  const child = spawn(process.execPath, [path.join(E2E_DIR, 'examples', 'receive.mjs')], {
    cwd: E2E_DIR,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

gwTest(ref, 'examples/receive.mjs prints the event and exits 0', 20_000, async (t, gw) => {
  const { child, done } = runExample({
    RESOUND_URL: gw.httpUrl,
    REVERB_APP_ID: gw.appId,
    REVERB_APP_KEY: gw.key,
    REVERB_APP_SECRET: gw.secret,
    RESOUND_TIMEOUT_MS: '8000',
  });
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const { code, stdout, stderr } = await withTimeout(done, 15_000, 'examples/receive.mjs to exit');
  assert.equal(code, 0, `exit code ${code}\nstdout: ${stdout}\nstderr: ${stderr}`);
  assert.match(stdout, /received "hello" on "demo": .*Hello from Resound!/);
});

gwTest(ref, 'examples/receive.mjs exits 1 when the trigger is rejected', 20_000, async (t, gw) => {
  const { child, done } = runExample({
    RESOUND_URL: gw.httpUrl,
    REVERB_APP_ID: gw.appId,
    REVERB_APP_KEY: gw.key,
    REVERB_APP_SECRET: 'wrong-secret',
    RESOUND_TIMEOUT_MS: '3000',
  });
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const { code, stdout, stderr } = await withTimeout(done, 15_000, 'examples/receive.mjs to exit');
  assert.equal(code, 1, `exit code ${code}\nstdout: ${stdout}\nstderr: ${stderr}`);
});
