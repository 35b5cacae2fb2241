// Test harness for the Resound gateway: build once per test run, start a
// gateway on a free loopback port with a fresh data dir, wait for /up, stop it.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(E2E_DIR, '..');
export const BIN_DIR = path.join(E2E_DIR, '.bin');
export const BIN_PATH = path.join(BIN_DIR, 'gateway');

export const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;
const BUILD_TIMEOUT_MS = 8 * 60_000;
const LOCK_STALE_MS = 10 * 60_000;

/**
 * Identity of the current test run. `node --test` runs every test file as a
 * child process of one runner process (and sets NODE_TEST_CONTEXT in it), so
 * the parent's pid plus its start time (from /proc, where available) names
 * the run.
 */
function runIdentity() {
  // Outside `node --test` (e.g. `node test/x.test.mjs`) this process is the run.
  if (!process.env.NODE_TEST_CONTEXT) return `self:${process.pid}:${Date.now()}`;
  let start = '';
  try {
    const stat = fs.readFileSync(`/proc/${process.ppid}/stat`, 'utf8');
    // Field 22 (starttime); the comm field (2) may contain spaces, so split
    // after its closing parenthesis.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    start = rest[19] ?? '';
  } catch {
    start = 'noproc';
  }
  return `${process.ppid}:${start}`;
}

async function acquireLock(lockDir) {
  const deadline = Date.now() + BUILD_TIMEOUT_MS;
  for (;;) {
    try {
      await fsp.mkdir(lockDir);
      return;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      try {
        const st = await fsp.stat(lockDir);
        if (Date.now() - st.mtimeMs > LOCK_STALE_MS) {
          await fsp.rm(lockDir, { recursive: true, force: true });
          continue;
        }
      } catch {
        continue; // vanished meanwhile
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for build lock ${lockDir}`);
      await sleep(200);
    }
  }
}

function runGoBuild(binName = 'gateway', pkg = './cmd/gateway', race = false) {
  return new Promise((resolve, reject) => {
    const args = ['build', '-o', path.join('e2e', '.bin', binName), ...(race ? ['-race'] : []), pkg];
    const child = spawn('go', args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), BUILD_TIMEOUT_MS);
    child.on('error', (err) => { clearTimeout(timer); reject(new Error(`cannot run go: ${err.message}`)); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`go ${args.join(' ')} failed (code ${code}, signal ${signal}):\n${out}`));
    });
  });
}

let builtPath = null;

/**
 * Builds e2e/.bin/gateway once per test run (the first test file of a run to
 * get here builds it; the others reuse it). RESOUND_GATEWAY_BIN, when set,
 * names a prebuilt binary and skips the build.
 */
export async function ensureBuilt() {
  if (builtPath) return builtPath;
  builtPath = await ensureBinary('gateway');
  return builtPath;
}

/** The version of nats-server that go.mod pins (the build stamp for it). */
function natsServerVersion() {
  try {
    const mod = fs.readFileSync(path.join(REPO_ROOT, 'go.mod'), 'utf8');
    const m = mod.match(/github\.com\/nats-io\/nats-server\/v2\s+(\S+)/);
    return m ? `nats-server ${m[1]}` : 'nats-server ?';
  } catch {
    return 'nats-server ?';
  }
}

// The gateway and the worker run with the race detector (`race`); a race
// they report fails the run when they stop (raceReport).
const BINARIES = {
  gateway: { name: 'gateway', pkg: './cmd/gateway', envVar: 'RESOUND_GATEWAY_BIN', stampFile: '.build-stamp', race: true },
  worker: { name: 'worker', pkg: './cmd/worker', envVar: 'RESOUND_WORKER_BIN', stampFile: '.build-stamp-worker', race: true },
  // The go.mod tool directive; rebuilt only when its pinned version changes.
  'nats-server': { name: 'nats-server', pkg: 'github.com/nats-io/nats-server/v2', envVar: 'RESOUND_NATS_SERVER_BIN', stampFile: '.build-stamp-nats-server', stamp: natsServerVersion },
};

const builtBinaries = new Map();

/**
 * Builds e2e/.bin/<name> (gateway, worker or nats-server) once per test run,
 * like ensureBuilt() does for the gateway. An environment variable
 * (RESOUND_GATEWAY_BIN, RESOUND_WORKER_BIN, RESOUND_NATS_SERVER_BIN) names a
 * prebuilt binary instead. Returns the binary's path.
 */
export async function ensureBinary(spec) {
  const b = typeof spec === 'string' ? BINARIES[spec] : spec;
  if (!b) throw new Error(`unknown binary ${spec}`);
  if (builtBinaries.has(b.name)) return builtBinaries.get(b.name);
  if (process.env[b.envVar]) {
    const p = path.resolve(process.env[b.envVar]);
    builtBinaries.set(b.name, p);
    return p;
  }
  await fsp.mkdir(BIN_DIR, { recursive: true });
  const lockDir = path.join(BIN_DIR, '.build-lock');
  const stampPath = path.join(BIN_DIR, b.stampFile);
  const binPath = path.join(BIN_DIR, b.name);
  const id = b.stamp ? b.stamp() : runIdentity();
  await acquireLock(lockDir);
  try {
    let stamp = null;
    try { stamp = await fsp.readFile(stampPath, 'utf8'); } catch { /* none */ }
    if (stamp !== id || !fs.existsSync(binPath)) {
      await fsp.rm(stampPath, { force: true });
      await runGoBuild(b.name, b.pkg, b.race);
      await fsp.writeFile(stampPath, id);
    }
  } finally {
    await fsp.rm(lockDir, { recursive: true, force: true });
  }
  builtBinaries.set(b.name, binPath);
  return binPath;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function randomHex(n) {
  return randomBytes(n).toString('hex');
}

export async function probeUp(port, { prefix = '', ca = null } = {}) {
  if (ca) return probeUpTLS(port, ca, prefix);
  try {
    const res = await fetch(`http://${HOST}:${port}${prefix}/up`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer().catch(() => {});
    return res.status === 200;
  } catch {
    return false;
  }
}

const RACE_WARNING = 'WARNING: DATA RACE';

/**
 * The race detector's first report in a process's log, or null. The
 * binaries are built with -race; a report means the test run must fail even
 * if every assertion held.
 */
export function raceReport(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const at = text.indexOf(RACE_WARNING);
  if (at < 0) return null;
  const end = text.indexOf('==================', at);
  return text.slice(at, end < 0 ? at + 8000 : end);
}

/** GET https://HOST:port/up, trusting the CA certificate `ca` (PEM). */
function probeUpTLS(port, ca, prefix = '') {
  return new Promise((resolve) => {
    const req = https.get({ host: HOST, port, path: `${prefix}/up`, ca, timeout: 1000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200));
      res.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(false));
  });
}

/**
 * Writes a throwaway CA and a certificate for 127.0.0.1 and localhost into
 * dir with the project's own generator (internal/tlscert/tlstest/gencert), and
 * returns their paths {ca, cert, key}.
 */
export function generateCertificate(dir) {
  return new Promise((resolve, reject) => {
    const child = spawn('go', ['run', './internal/tlscert/tlstest/gencert', '-dir', dir, '127.0.0.1', 'localhost'],
      { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`gencert failed (code ${code}): ${err}`));
      else resolve(JSON.parse(out.trim().split('\n').pop()));
    });
  });
}

export function tailOf(file, lines) {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines).join('\n');
  } catch (err) {
    return `(no log: ${err.message})`;
  }
}

/**
 * The route prefix a REVERB_SERVER_PATH gives: slashes trimmed at both ends
 * and one put in front, as Reverb (Symfony's addPrefix) and Resound do.
 */
export function serverPrefix(setting = '') {
  const p = setting.trim().replace(/^\/+|\/+$/g, '');
  return p ? `/${p}` : '';
}

/**
 * A running gateway. Use `startGateway()`.
 */
export class Gateway {
  constructor({ child, port, dataDir, tmpDir, logPath, app, prefix = '', tls = null }) {
    this.child = child;
    this.tls = tls; // {ca, cert, key} paths when the gateway serves TLS
    this.host = HOST;
    this.port = port;
    /** The route prefix REVERB_SERVER_PATH gives ('' or e.g. '/reverb'). */
    this.prefix = prefix;
    this.dataDir = dataDir;
    this.tmpDir = tmpDir;
    this.logPath = logPath;
    this.appId = app.id;
    this.key = app.key;
    this.secret = app.secret;
    this.exited = null; // {code, signal} once the process exits
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
      // A spawn failure (e.g. ENOENT) may never emit 'exit'.
      child.once('error', (err) => {
        if (child.pid === undefined && !this.exited) {
          this.exited = { code: null, signal: null, error: err };
          resolve(this.exited);
        }
      });
    });
    this.failed = false;
  }

  get httpUrl() { return `${this.tls ? 'https' : 'http'}://${this.host}:${this.port}`; }

  wsUrl(key = this.key, query = '?protocol=7&client=js&version=8.6.0&flash=false') {
    return `${this.tls ? 'wss' : 'ws'}://${this.host}:${this.port}${this.prefix}/app/${key}${query}`;
  }

  logTail(lines = 60) { return tailOf(this.logPath, lines); }

  /** Prints the last lines of the gateway's log to stderr. */
  printLogTail(reason = 'test failed', lines = 60) {
    const status = this.exited ? `exited code=${this.exited.code} signal=${this.exited.signal}` : `running pid=${this.child.pid}`;
    process.stderr.write(`\n----- gateway log tail (${reason}; ${status}; ${this.logPath}) -----\n${this.logTail(lines)}\n----- end of gateway log -----\n`);
  }

  /** SIGTERM, then SIGKILL after a grace period. Returns the exit status. */
  async stop() {
    if (!this.exited) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => {
        if (this.exited) return;
        this.killed = true;
        process.stderr.write(`gateway pid ${this.child.pid} did not exit ${STOP_GRACE_MS} ms after SIGTERM; sending SIGKILL\n`);
        this.child.kill('SIGKILL');
      }, STOP_GRACE_MS);
      await this.exitPromise;
      clearTimeout(t);
    }
    const race = raceReport(this.logPath);
    if (race) this.failed = true;
    if (this.failed || process.env.RESOUND_E2E_KEEP_DATA) {
      process.stderr.write(`gateway temp dir kept: ${this.tmpDir}\n`);
    } else {
      await fsp.rm(this.tmpDir, { recursive: true, force: true }).catch(() => {});
    }
    if (race) throw new Error(`the gateway reported a data race (log ${this.logPath}):\n${race}`);
    return this.exited;
  }
}

/**
 * Builds (once per run) and starts a gateway on a free port with a fresh data
 * dir, in all-in-one mode (no NATS_URL). Resolves once GET /up answers 200.
 * With `tls: {ca, cert, key}` (see generateCertificate) it serves wss:// and
 * https:// with that certificate.
 */
export async function startGateway({ extraEnv = {}, attempts = 3, tls = null } = {}) {
  const bin = await ensureBuilt();
  let lastErr;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await startOnce(bin, extraEnv, tls);
    } catch (err) {
      lastErr = err;
      // A lost race for the port makes the gateway exit early; retry on a new
      // port. Anything else (e.g. not ready in time) is reported at once.
      if (!err.exitedEarly) break;
    }
  }
  throw lastErr;
}

async function startOnce(bin, extraEnv, tls) {
  const port = await freePort();
  const tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'resound-e2e-'));
  const dataDir = path.join(tmpDir, 'data');
  await fsp.mkdir(dataDir);
  const logPath = path.join(tmpDir, 'gateway.log');
  const app = { id: String(100000 + Math.floor(Math.random() * 800000)), key: `key-${randomHex(8)}`, secret: `secret-${randomHex(16)}` };

  const env = { ...process.env };
  delete env.NATS_URL; // all-in-one mode
  Object.assign(env, {
    REVERB_APP_ID: app.id,
    REVERB_APP_KEY: app.key,
    REVERB_APP_SECRET: app.secret,
    REVERB_SERVER_HOST: HOST,
    REVERB_SERVER_PORT: String(port),
    RESOUND_DATA_DIR: dataDir,
    RESOUND_LOG_FORMAT: 'json',
    ...(tls ? { RESOUND_TLS_CERT: tls.cert, RESOUND_TLS_KEY: tls.key } : {}),
    ...extraEnv,
  });
  const ca = tls ? fs.readFileSync(tls.ca) : null;

  // The gateway writes its log (stderr, and stdout too) straight into the file.
  const logFd = fs.openSync(logPath, 'a');
  let child;
  try {
    child = spawn(bin, [], { cwd: tmpDir, env, stdio: ['ignore', logFd, logFd] });
  } finally {
    fs.closeSync(logFd); // the child holds its own copy
  }
  const gw = new Gateway({ child, port, dataDir, tmpDir, logPath, app, prefix: serverPrefix(env.REVERB_SERVER_PATH), tls });
  let spawnErr = null;
  child.once('error', (err) => { spawnErr = err; });

  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (spawnErr) {
      await gw.stop().catch(() => {});
      throw new Error(`cannot start gateway ${bin}: ${spawnErr.message}`);
    }
    if (gw.exited) {
      gw.failed = true;
      const tail = gw.logTail();
      await gw.stop();
      const err = new Error(`gateway exited before it was ready (code=${gw.exited.code}, signal=${gw.exited.signal}); log tail:\n${tail}`);
      err.exitedEarly = true;
      throw err;
    }
    if (await probeUp(port, { prefix: gw.prefix, ca })) return gw;
    await sleep(100);
  }
  gw.failed = true;
  const tail = gw.logTail();
  await gw.stop();
  throw new Error(`gateway on port ${port} did not answer 200 on /up within ${READY_TIMEOUT_MS} ms; log tail:\n${tail}`);
}
