// The TAP-like lines every Node.js runner of the interop suite prints: `ok - NAME: ...`
// or `not ok - NAME: ...: reason` per check, then the totals and `# runner-done`.

import * as grpc from '@grpc/grpc-js';

export function reporter(name) {
  let passed = 0;
  let failed = 0;
  async function check(what, fn) {
    try {
      await fn();
      passed += 1;
      console.log(`ok - ${name}: ${what}`);
    } catch (err) {
      failed += 1;
      const reason = err.code !== undefined && err.details !== undefined
        ? `RPC failed: ${grpc.status[err.code]}: ${err.details}`
        : String(err.message || err);
      console.log(`not ok - ${name}: ${what}: ${reason.replace(/\s+/g, ' ').slice(0, 1500)}`);
    }
  }
  // Prints the totals; the exit status is 1 when a check failed.
  function finish() {
    console.log(`# ${name}: ${passed} passed, ${failed} failed`);
    console.log('# runner-done');
    process.exit(failed ? 1 : 0);
  }
  return { check, finish };
}
