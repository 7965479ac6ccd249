// A Node.js http server with planted stalls of four kinds, for stallscope's JavaScript-frame
// tests (node*_js_frames in tests/tests/native_stacks.rs). Started without any flag.
//
// Usage: node node_stalls.js PORT FIFO   (PORT 0 = ephemeral; FIFO: a named pipe the test
//                                        writes to slowly)
// Prints "listening PORT", then serves on 127.0.0.1:
//   /spin     -> spinForMs(250): a JS busy loop (on-CPU, in V8's code)
//   /atomics  -> waitAtomicsMs(250) -> waitOnCell: Atomics.wait on the loop thread (blocked in
//                futex)
//   /pipe     -> readSlowPipe(): fs.readFileSync of FIFO, which the test writes after 250 ms
//                (blocked in read)
//   /pbkdf2   -> hashPasswordSync(250): crypto.pbkdf2Sync rounds for 250 ms (on-CPU, in OpenSSL)
//   /warmup   -> calls every planted function with tiny arguments, in small slices spread
//                over later loop turns (none long enough to be a stall), until V8 has compiled
//                them; answers "warm\n" once done
//   /quick    -> answers at once
//   /exit     -> exits (so that --cpu-prof writes its profile)
// Each planted stall prints "planted KIND DURATION_NS" (process.hrtime.bigint, CLOCK_MONOTONIC:
// the whole handler, answer included) once answered. The first call of a function runs in the
// interpreter; after /warmup the same call runs compiled code.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const PLANTED_MS = 250;
const fifo = process.argv[3];
// About 10 ms of PBKDF2 per round (calibrated at start-up).
let pbkdf2Iterations = 2000;

function spinForMs(ms) {
  const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  let x = 1;
  for (;;) {
    for (let i = 0; i < 20000; i++) {
      x = (Math.imul(x, 1103515245) + 12345) | 0;
    }
    if (process.hrtime.bigint() >= end) return x;
  }
}

const cell = new Int32Array(new SharedArrayBuffer(4));

function waitAtomicsMs(ms) {
  // A small helper, which V8 inlines here once this function is optimized (the tests expect it
  // as its own frame on top of this one all the same).
  return waitOnCell(ms);
}

function waitOnCell(ms) {
  // Nobody notifies: the wait times out after ms.
  return Atomics.wait(cell, 0, 0, ms);
}

function readSlowPipe(path) {
  return fs.readFileSync(path).length;
}

// Hashes in rounds of `iterations` until ms have passed (a loaded machine makes any fixed
// count a guess).
function hashPasswordSync(ms) {
  const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  let key;
  do {
    key = crypto.pbkdf2Sync('correct horse battery staple', 'stallscope-salt', pbkdf2Iterations, 64, 'sha512');
  } while (process.hrtime.bigint() < end);
  return key;
}

function quick(x) {
  return x;
}

// Five functions behind one call site (`work(arg)` in plant): a megamorphic call V8 does not
// inline, so each planted function keeps a frame of its own once compiled.
const handlers = {
  '/spin': [spinForMs, () => PLANTED_MS],
  '/atomics': [waitAtomicsMs, () => PLANTED_MS],
  '/pipe': [readSlowPipe, () => fifo],
  '/pbkdf2': [hashPasswordSync, () => PLANTED_MS],
  '/quick': [quick, () => 0],
};

function plant(kind, work, arg) {
  return work(arg);
}

// Warm-up slices: each a few milliseconds, run one per loop turn.
function warmUp(done) {
  const dummy = fs.mkdtempSync(require('os').tmpdir() + '/stalls-') + '/empty';
  fs.writeFileSync(dummy, '');
  let round = 0;
  let longestNs = 0n;
  // One PBKDF2 iteration per round while warming up.
  const iterations = pbkdf2Iterations;
  pbkdf2Iterations = 1;
  const slice = () => {
    const start = process.hrtime.bigint();
    for (let i = 0; i < 8; i++) {
      spinForMs(0);
      waitAtomicsMs(0);
      readSlowPipe(dummy);
      hashPasswordSync(0);
    }
    const took = process.hrtime.bigint() - start;
    if (took > longestNs) longestNs = took;
    round += 1;
    if (round < 500) {
      setImmediate(slice);
    } else {
      fs.rmSync(require('path').dirname(dummy), { recursive: true });
      pbkdf2Iterations = iterations;
      process.stdout.write(`warm longest-slice ${longestNs}\n`);
      done();
    }
  };
  setImmediate(slice);
}

// Iterations for ~10 ms per round, from one short run at start-up (OpenSSL only: the JS
// function still runs from cold at its first request).
(function calibrate() {
  const iterations = 2000;
  const start = process.hrtime.bigint();
  crypto.pbkdf2Sync('x', 'y', iterations, 64, 'sha512');
  const tookNs = Number(process.hrtime.bigint() - start);
  pbkdf2Iterations = Math.max(100, Math.round((iterations * 10e6) / tookNs));
})();

const server = http.createServer((req, res) => {
  // The whole handler is timed, answer included: the loop's iteration is what the agent sees.
  const start = process.hrtime.bigint();
  const answer = (text) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': text.length, Connection: 'close' });
    res.end(text);
  };
  if (req.url === '/warmup') {
    warmUp(() => answer('warm\n'));
    return;
  }
  if (req.url === '/exit') {
    answer('ok\n');
    setImmediate(() => process.exit(0));
    return;
  }
  const handler = handlers[req.url];
  if (handler) {
    plant(req.url.slice(1), handler[0], handler[1]());
  }
  answer('ok\n');
  if (handler && req.url !== '/quick') {
    process.stdout.write(`planted ${req.url.slice(1)} ${process.hrtime.bigint() - start}\n`);
  }
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
