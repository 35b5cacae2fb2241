#!/usr/bin/env node
// A Laravel app's two sides against a gateway serving TLS, configured from
// the same variables a Laravel .env holds with REVERB_SCHEME=https:
//   - the browser side: laravel-echo (broadcaster 'reverb', over pusher-js)
//     set up exactly as the README shows, from VITE_REVERB_*;
//   - the PHP side: the `pusher` server SDK set up as Laravel's
//     config/broadcasting.php sets up its reverb connection (host, port,
//     scheme, useTLS = scheme === 'https').
// Node trusts the test CA through NODE_EXTRA_CA_CERTS, which it reads at
// start-up; that is why this runs as a process of its own.
//
// It subscribes, triggers, waits for the event, queries the channel, and
// prints one JSON line {socketId, url, received, channelInfo}; exit 1
// on any failure or after RESOUND_TIMEOUT_MS.
import Echo from 'laravel-echo';
import Pusher from 'pusher-js';
import PusherServer from 'pusher';

const env = process.env;
const timeoutMs = Number(env.RESOUND_TIMEOUT_MS || 10_000);
const timer = setTimeout(() => fail(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);

// config/broadcasting.php, 'reverb' connection.
const scheme = env.REVERB_SCHEME ?? 'https';
const server = new PusherServer({
  appId: env.REVERB_APP_ID,
  key: env.REVERB_APP_KEY,
  secret: env.REVERB_APP_SECRET,
  host: env.REVERB_HOST,
  port: env.REVERB_PORT ?? '443',
  scheme,
  useTLS: scheme === 'https',
  timeout: timeoutMs,
});

// resources/js/echo.js, as the README shows it.
const echo = new Echo({
  broadcaster: 'reverb',
  key: env.VITE_REVERB_APP_KEY,
  wsHost: env.VITE_REVERB_HOST,
  wsPort: env.VITE_REVERB_PORT ?? 80,
  wssPort: env.VITE_REVERB_PORT ?? 443,
  forceTLS: (env.VITE_REVERB_SCHEME ?? 'https') === 'https',
  enabledTransports: ['ws', 'wss'],
  Pusher, // no window.Pusher in Node
});

function fail(err) {
  console.error(`laravel-https-client: ${err.message}${err.status ? ` (HTTP ${err.status}: ${err.body})` : ''}`);
  echo.disconnect();
  process.exit(1);
}

const channelName = env.CHANNEL || 'orders';
const conn = echo.connector.pusher.connection;
conn.bind('error', (err) => console.error('connection error:', JSON.stringify(err)));
echo.channel(channelName)
  .subscribed(async () => {
    try {
      await server.trigger(channelName, 'OrderShipped', { id: 42 });
    } catch (err) {
      fail(err);
    }
  })
  .listen('.OrderShipped', async (data) => {
    try {
      const res = await server.get({ path: `/channels/${channelName}`, params: { info: 'subscription_count' } });
      const channelInfo = await res.json();
      clearTimeout(timer);
      console.log(JSON.stringify({
        socketId: echo.socketId(),
        // pusher-js's transport is named 'ws' over TLS too; its URL tells.
        url: conn.connection?.transport?.socket?.url ?? null,
        received: data,
        channelInfo,
      }));
      echo.disconnect();
      process.exit(0);
    } catch (err) {
      fail(err);
    }
  });
