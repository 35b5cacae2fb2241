// node:test glue: one gateway per test file, and tests that print the
// gateway's log tail when they fail.
import { after, before, test } from 'node:test';
import { startGateway } from './gateway.mjs';

// The first file of a run may have to compile the gateway (cold Go cache).
const START_TIMEOUT_MS = 10 * 60_000;

/**
 * Starts a gateway before the file's tests and stops it after them.
 * Returns a ref whose `.gw` is the running Gateway.
 */
export function useGateway(options = {}) {
  const ref = { gw: null };
  before(async () => {
    ref.gw = await startGateway(options);
  }, { timeout: START_TIMEOUT_MS });
  after(async () => {
    if (ref.gw) await ref.gw.stop();
  }, { timeout: 30_000 });
  return ref;
}

/**
 * Like node:test's test(), with a mandatory timeout, and on failure prints
 * the tail of the gateway's log (and keeps its temp dir).
 */
export function gwTest(ref, name, timeoutMs, fn) {
  return test(name, { timeout: timeoutMs }, async (t) => {
    try {
      await fn(t, ref.gw);
    } catch (err) {
      if (ref.gw) {
        ref.gw.failed = true;
        ref.gw.printLogTail(`"${name}" failed`);
      }
      throw err;
    }
  });
}

/** A unique channel name for one test. */
export function uniqueChannel(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
