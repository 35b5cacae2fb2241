// A tiny auth endpoint, as a Laravel app would serve /broadcasting/auth and
// /broadcasting/user-auth: it answers pusher-js's form-encoded POSTs by calling
// the `pusher` SDK's authorizeChannel() and authenticateUser().
//
// The test picks the app, user and behaviour in the endpoint URL it gives the
// client, e.g. `${auth.channelEndpoint({ app: 'main', user: '3' })}`:
//
//   app=NAME        which app's credentials sign (default 'main')
//   user=ID         presence user_id / signin id (default '1')
//   numeric=1       presence user_id as a JSON number (what Laravel sends for int ids)
//   info=JSON       presence user_info / signin user_info (default {"name":"user <ID>"})
//   watchlist=a,b   signin user_data.watchlist
//   mode=forge      a correct key with a wrong signature
//   mode=wrongkey   a correct signature with another key in front
//   mode=otherapp   signed with app `as` (default 'other'): its key and secret
//   mode=http403    the endpoint refuses (HTTP 403), as Laravel does for a denied channel
import http from 'node:http';
import { createHmac, randomBytes } from 'node:crypto';
import { PusherServer } from './clients.mjs';
import { HOST } from './gateway.mjs';

/** 32 random bytes, base64: an encryption master key for the pusher SDK. */
export function newMasterKey() {
  return randomBytes(32).toString('base64');
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      body += d;
      if (body.length > 1_000_000) req.destroy(new Error('body too large'));
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

export class AuthServer {
  /**
   * @param apps [{name, appId, key, secret}] the cluster's apps
   * @param masterKey base64 encryption master key shared with the SDK that triggers
   */
  constructor(apps, masterKey = newMasterKey()) {
    this.apps = apps;
    this.masterKey = masterKey;
    this.requests = []; // {path, query, form, status, response}
    this.sdks = new Map();
  }

  /** The SDK for app `name` (used only for signing, so host/port do not matter). */
  sdk(name = 'main') {
    if (!this.sdks.has(name)) {
      const a = this.apps.find((x) => x.name === name);
      if (!a) throw new Error(`auth server: no app named ${name}`);
      this.sdks.set(name, new PusherServer({ appId: a.appId, key: a.key, secret: a.secret, host: HOST, useTLS: false, encryptionMasterKeyBase64: this.masterKey }));
    }
    return this.sdks.get(name);
  }

  async start() {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: String(err?.message ?? err) }));
      });
    });
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, HOST, resolve);
    });
    this.port = this.server.address().port;
    return this;
  }

  async close() {
    if (!this.server) return;
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  url(pathname, params = {}) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]));
    const qs = q.toString();
    return `http://${HOST}:${this.port}${pathname}${qs ? `?${qs}` : ''}`;
  }

  /** Channel-authorization endpoint URL (pusher-js channelAuthorization.endpoint, Echo authEndpoint). */
  channelEndpoint(params = {}) { return this.url('/auth', params); }

  /** User-authentication endpoint URL (pusher-js / Echo userAuthentication.endpoint). */
  userEndpoint(params = {}) { return this.url('/user-auth', params); }

  /** Presence channel_data object for the given query params. */
  static presenceData(q) {
    const user = q.get('user') ?? '1';
    const info = q.has('info') ? JSON.parse(q.get('info')) : { name: `user ${user}` };
    return { user_id: q.get('numeric') ? Number(user) : user, user_info: info };
  }

  /** Applies mode=forge|wrongkey|otherapp to a result of authorizeChannel/authenticateUser. */
  tamper(q, result, sign) {
    const mode = q.get('mode');
    if (!mode) return result;
    const [key, sig] = result.auth.split(':');
    if (mode === 'forge') {
      const forged = createHmac('sha256', `not-the-secret-${randomBytes(4).toString('hex')}`).update(sig).digest('hex');
      return { ...result, auth: `${key}:${forged}` };
    }
    if (mode === 'wrongkey') {
      const other = this.apps.find((a) => a.key !== key);
      return { ...result, auth: `${other ? other.key : 'not-the-key'}:${sig}` };
    }
    if (mode === 'otherapp') return sign(this.sdk(q.get('as') ?? 'other'));
    throw new Error(`auth server: unknown mode ${mode}`);
  }

  async handle(req, res) {
    const u = new URL(req.url, `http://${HOST}`);
    const q = u.searchParams;
    const body = await readBody(req);
    const form = new URLSearchParams(body);
    const record = { path: u.pathname, query: Object.fromEntries(q), form: Object.fromEntries(form), headers: req.headers };
    this.requests.push(record);
    const send = (status, obj) => {
      record.status = status;
      record.response = obj;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(obj));
    };
    if (req.method !== 'POST') return send(405, { error: 'POST only' });
    if (q.get('mode') === 'http403') return send(403, { message: 'This action is unauthorized.' });
    const socketId = form.get('socket_id');
    const appName = q.get('app') ?? 'main';

    if (u.pathname === '/auth') {
      const channel = form.get('channel_name');
      const presence = channel?.startsWith('presence-') ? AuthServer.presenceData(q) : undefined;
      const sign = (sdk) => sdk.authorizeChannel(socketId, channel, presence);
      return send(200, this.tamper(q, sign(this.sdk(appName)), sign));
    }
    if (u.pathname === '/user-auth') {
      const user = q.get('user') ?? '1';
      const userData = { id: user };
      if (q.has('info')) userData.user_info = JSON.parse(q.get('info'));
      if (q.has('watchlist')) userData.watchlist = q.get('watchlist').split(',').filter(Boolean);
      const sign = (sdk) => sdk.authenticateUser(socketId, userData);
      return send(200, this.tamper(q, sign(this.sdk(appName)), sign));
    }
    return send(404, { error: 'not found' });
  }
}

export async function startAuthServer(apps, masterKey) {
  return new AuthServer(apps, masterKey).start();
}
