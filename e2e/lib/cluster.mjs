// Cluster mode: one real nats-server (JetStream), two gateway processes and
// one worker process, all sharing one apps file (RESOUND_APPS_FILE).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HOST, ensureBinary, freePort, probeUp, raceReport, tailOf } from './gateway.mjs';

const READY_TIMEOUT_MS = 20_000;
const STOP_GRACE_MS = 5_000;
const BIND_ATTEMPTS = 3;
export const WORKER_READY = '"message":"worker started"';

/** A child process whose stdout and stderr go to one log file. */
export class Proc {
  constructor(name, bin, args, env, logPath, cwd) {
    this.name = name;
    this.logPath = logPath;
    const logFd = fs.openSync(logPath, 'a');
    try {
      this.child = spawn(bin, args, { cwd, env, stdio: ['ignore', logFd, logFd] });
    } finally {
      fs.closeSync(logFd);
    }
    this.exited = null;
    this.spawnError = null;
    this.exitPromise = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
      this.child.once('error', (err) => {
        this.spawnError = err;
        if (this.child.pid === undefined && !this.exited) {
          this.exited = { code: null, signal: null, error: err };
          resolve(this.exited);
        }
      });
    });
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  logTail(lines = 40) { return tailOf(this.logPath, lines); }

  portTaken() { return !!this.exited && /address already in use/i.test(this.log()); }

  status() {
    return this.exited ? `exited code=${this.exited.code} signal=${this.exited.signal}` : `running pid=${this.child.pid}`;
  }

  async stop() {
    if (this.exited) return this.exited;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => {
      if (this.exited) return;
      process.stderr.write(`${this.name} pid ${this.child.pid} did not exit ${STOP_GRACE_MS} ms after SIGTERM; sending SIGKILL\n`);
      this.killed = true;
      this.child.kill('SIGKILL');
    }, STOP_GRACE_MS);
    await this.exitPromise;
    clearTimeout(t);
    return this.exited;
  }
}

/** Polls cond() until true, failing when `proc` exits or after `ms`. */
async function pollReady(proc, ms, what, cond) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (proc.exited) {
      const err = new Error(`${proc.name} exited (${proc.status()}) before ${what}; log tail:\n${proc.logTail()}`);
      err.portTaken = proc.portTaken();
      throw err;
    }
    if (await cond()) return;
    await sleep(50);
  }
  throw new Error(`${proc.name}: no ${what} within ${ms} ms; log tail:\n${proc.logTail()}`);
}

function baseEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith('REVERB_') || k.startsWith('RESOUND_') || k === 'NATS_URL') delete env[k];
  }
  env.RESOUND_LOG_FORMAT = 'json';
  return env;
}

const hex = (n) => randomBytes(n).toString('hex');

/**
 * Normalises the app specs: each {name, ...fields} gets app_id, key and
 * secret unless given. Returns [{name, appId, key, secret, fields}].
 */
function makeApps(specs) {
  const used = new Set();
  return specs.map((spec) => {
    const { name, ...fields } = spec;
    let id = fields.app_id;
    while (!id || used.has(id)) id = String(100000 + Math.floor(Math.random() * 800000));
    used.add(id);
    const key = fields.key ?? `key-${name}-${hex(6)}`;
    const secret = fields.secret ?? `secret-${name}-${hex(12)}`;
    return { name, appId: id, key, secret, fields: { ...fields, app_id: id, key, secret } };
  });
}

/** What a test needs to reach one app through one gateway (the shape lib/clients.mjs expects). */
export class GatewayView {
  constructor(gateway, app, index) {
    this.index = index; // 0 = gateway A, 1 = gateway B
    this.label = String.fromCharCode(65 + index);
    this.host = HOST;
    this.port = gateway.port;
    this.appId = app.appId;
    this.key = app.key;
    this.secret = app.secret;
    this.appName = app.name;
  }

  get httpUrl() { return `http://${this.host}:${this.port}`; }

  wsUrl(key = this.key, query = '?protocol=7&client=js&version=8.6.0&flash=false') {
    return `ws://${this.host}:${this.port}/app/${key}${query}`;
  }
}

export class Cluster {
  constructor({ tmpDir, apps }) {
    this.tmpDir = tmpDir;
    this.apps = apps; // [{name, appId, key, secret, fields}]
    this.procs = [];
    this.gateways = []; // [{port, proc}]
    this.nats = null;
    this.worker = null;
    this.failed = false;
  }

  app(name = 'main') {
    const a = this.apps.find((x) => x.name === name);
    if (!a) throw new Error(`no app named ${name} in this cluster`);
    return a;
  }

  /** The view of app `appName` through gateway `i` (0 = A, 1 = B). */
  gw(i, appName = 'main') {
    return new GatewayView(this.gateways[i], this.app(appName), i);
  }

  get A() { return this.gw(0); }
  get B() { return this.gw(1); }

  printLogTail(reason = 'test failed', lines = 40) {
    for (const p of this.procs) {
      process.stderr.write(`\n----- ${p.name} log tail (${reason}; ${p.status()}; ${p.logPath}) -----\n${p.logTail(lines)}\n----- end of ${p.name} log -----\n`);
    }
  }

  /** Every process that has exited although the cluster was not stopped (nor the process killed on purpose). */
  deadProcs() { return this.procs.filter((p) => p.exited && !p.killedOnPurpose); }

  /**
   * Kills gateway `i` with `signal` (SIGKILL: a crash, nothing drained) and
   * waits for it to exit. Its exit does not count as a dead process.
   */
  async killGateway(i, signal = 'SIGKILL') {
    const p = this.gateways[i].proc;
    p.killedOnPurpose = true;
    if (!p.exited) p.child.kill(signal);
    await p.exitPromise;
  }

  async stop() {
    await Promise.all(this.procs.filter((p) => p !== this.nats).map((p) => p.stop()));
    if (this.nats) await this.nats.stop();
    const races = this.procs.map((p) => [p, raceReport(p.logPath)]).filter(([, r]) => r);
    if (races.length) this.failed = true;
    if (this.failed || process.env.RESOUND_E2E_KEEP_DATA) {
      process.stderr.write(`cluster temp dir kept: ${this.tmpDir}\n`);
    } else {
      await fsp.rm(this.tmpDir, { recursive: true, force: true }).catch(() => {});
    }
    if (races.length) {
      throw new Error(races.map(([p, r]) => `${p.name} reported a data race (log ${p.logPath}):\n${r}`).join('\n'));
    }
  }
}

async function startNats(cluster, bin) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const mport = await freePort();
    const sd = path.join(cluster.tmpDir, `jetstream-${attempt}`);
    const p = new Proc(`nats-server`, bin, ['-js', '-sd', sd, '-a', HOST, '-p', String(port), '-m', String(mport)], baseEnv(),
      path.join(cluster.tmpDir, `nats-server.log`), cluster.tmpDir);
    cluster.procs.push(p);
    try {
      await pollReady(p, READY_TIMEOUT_MS, 'healthy /healthz', async () => {
        try {
          const res = await fetch(`http://${HOST}:${mport}/healthz`, { signal: AbortSignal.timeout(1000) });
          await res.arrayBuffer().catch(() => {});
          return res.status === 200;
        } catch {
          return false;
        }
      });
      cluster.nats = p;
      return `nats://${HOST}:${port}`;
    } catch (err) {
      cluster.procs.splice(cluster.procs.indexOf(p), 1);
      await p.stop();
      if (!err.portTaken || attempt >= BIND_ATTEMPTS) throw err;
    }
  }
}

async function startGatewayProc(cluster, bin, name, env) {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const p = new Proc(name, bin, [], { ...env, REVERB_SERVER_HOST: HOST, REVERB_SERVER_PORT: String(port) },
      path.join(cluster.tmpDir, `${name}.log`), cluster.tmpDir);
    cluster.procs.push(p);
    try {
      await pollReady(p, READY_TIMEOUT_MS, `200 on /up (port ${port})`, () => probeUp(port));
      return { port, proc: p };
    } catch (err) {
      if (!err.portTaken || attempt >= BIND_ATTEMPTS) throw err;
      cluster.procs.splice(cluster.procs.indexOf(p), 1);
      await p.stop();
    }
  }
}

/**
 * Starts nats-server, `gateways` gateway processes and one worker, all with
 * the given apps. `apps` is a list of {name, ...apps-file fields}; app_id,
 * key and secret are generated unless given. Resolves once every gateway
 * answers 200 on /up and the worker logged that it started.
 */
export async function startCluster({ apps = [{ name: 'main' }], gateways = 2, extraEnv = {} } = {}) {
  const gatewayBin = await ensureBinary('gateway');
  const workerBin = await ensureBinary('worker');
  const natsBin = await ensureBinary('nats-server');

  const tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'resound-e2e-cluster-'));
  const cluster = new Cluster({ tmpDir, apps: makeApps(apps) });
  const appsFile = path.join(tmpDir, 'apps.json');
  await fsp.writeFile(appsFile, JSON.stringify({ apps: cluster.apps.map((a) => a.fields) }, null, 2));
  cluster.appsFile = appsFile;

  try {
    const natsUrl = await startNats(cluster, natsBin);
    cluster.natsUrl = natsUrl;
    const env = { ...baseEnv(), NATS_URL: natsUrl, RESOUND_APPS_FILE: appsFile, ...extraEnv };
    const names = Array.from({ length: gateways }, (_, i) => `gateway-${String.fromCharCode(65 + i)}`);
    cluster.gateways = await Promise.all(names.map((n) => startGatewayProc(cluster, gatewayBin, n, env)));
    const worker = new Proc('worker', workerBin, [], { ...env, RESOUND_WORKERS: '2' }, path.join(tmpDir, 'worker.log'), tmpDir);
    cluster.procs.push(worker);
    cluster.worker = worker;
    await pollReady(worker, READY_TIMEOUT_MS, `${WORKER_READY} in its log`, async () => worker.log().includes(WORKER_READY));
    return cluster;
  } catch (err) {
    cluster.failed = true;
    await cluster.stop().catch(() => {});
    throw err;
  }
}
