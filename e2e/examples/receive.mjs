#!/usr/bin/env node
// "It works" demo: subscribe with pusher-js, trigger one event with the pusher
// server SDK, print what arrives, exit 0 (exit 1 on error or timeout).
//
//   RESOUND_URL=http://127.0.0.1:8080 \
//   REVERB_APP_ID=my-app REVERB_APP_KEY=my-key REVERB_APP_SECRET=my-secret \
//   node examples/receive.mjs
//
// RESOUND_HOST / RESOUND_PORT may be used instead of RESOUND_URL.
import Pusher from 'pusher-js';
import PusherServer from 'pusher';

const url = new URL(process.env.RESOUND_URL || `http://${process.env.RESOUND_HOST || '127.0.0.1'}:${process.env.RESOUND_PORT || '8080'}`);
const host = url.hostname;
const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
const tls = url.protocol === 'https:';
const appId = process.env.REVERB_APP_ID;
const key = process.env.REVERB_APP_KEY;
const secret = process.env.REVERB_APP_SECRET;
const timeoutMs = Number(process.env.RESOUND_TIMEOUT_MS || 10_000);

if (!appId || !key || !secret) {
  console.error('set REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET (and RESOUND_URL)');
  process.exit(2);
}

const client = new Pusher(key, {
  cluster: '',
  wsHost: host,
  wsPort: port,
  wssPort: port,
  forceTLS: tls,
  // pusher-js names its WebSocket transport 'ws' even over TLS (forceTLS
  // makes it wss://); 'wss' alone would leave it no transport at all.
  enabledTransports: ['ws', 'wss'],
});
const server = new PusherServer({ appId, key, secret, host, port: String(port), useTLS: tls, timeout: timeoutMs });

function finish(code, message) {
  clearTimeout(timer);
  (code === 0 ? console.log : console.error)(message);
  client.disconnect();
  process.exit(code);
}

const timer = setTimeout(() => finish(1, `timed out after ${timeoutMs} ms (connection state: ${client.connection.state})`), timeoutMs);

client.connection.bind('error', (err) => console.error('connection error:', JSON.stringify(err)));
client.connection.bind('connected', () => console.log(`connected to ${host}:${port}, socket_id ${client.connection.socket_id}`));

const channel = client.subscribe('demo');
channel.bind('pusher:subscription_succeeded', async () => {
  try {
    await server.trigger('demo', 'hello', { message: 'Hello from Resound!', at: new Date().toISOString() });
  } catch (err) {
    finish(1, `trigger failed: ${err.message}${err.status ? ` (HTTP ${err.status}: ${err.body})` : ''}`);
  }
});
channel.bind('hello', (data) => finish(0, `received "hello" on "demo": ${JSON.stringify(data)}`));
