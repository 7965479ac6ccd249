// A Node.js http server with planted stalls, for stallscope's JIT-frame tests
// (tests/tests/native_stacks.rs).
//
// Usage: node [--perf-basic-prof] node_app.js PORT   (PORT 0 = ephemeral)
// Prints "listening PORT", then serves on 127.0.0.1:
//   /pbkdf2 -> hashPasswordSync(200): crypto.pbkdf2Sync rounds on the loop thread for 200 ms
//              (on-CPU, in OpenSSL called from JS)
//   /spin   -> spinForMs(200): a JS busy loop on the loop thread (on-CPU, in JIT code)
//   /quick  -> answers at once
// Each planted stall prints "planted KIND DURATION_NS" (process.hrtime.bigint, i.e.
// CLOCK_MONOTONIC) before the answer "ok\n" is sent.
'use strict';

const crypto = require('crypto');
const http = require('http');

const PLANTED_MS = 200;

// Calibrated at start-up for about 20 ms of PBKDF2 a round.
let pbkdf2Iterations = 2000;

// Hashes in rounds until ms have passed (one round at least): a fixed count calibrated once
// is a guess on a loaded machine (a slow calibration made a planted call too short to stall).
function hashPasswordSync(ms) {
  const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  let key;
  do {
    key = crypto.pbkdf2Sync('correct horse battery staple', 'stallscope-salt', pbkdf2Iterations, 64, 'sha512');
  } while (process.hrtime.bigint() < end);
  return key;
}

function spinForMs(ms) {
  const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  let x = 1;
  for (;;) {
    // Read the clock only every 100k rounds so the samples land in this function.
    for (let i = 0; i < 100000; i++) {
      x = (Math.imul(x, 1103515245) + 12345) | 0;
    }
    if (process.hrtime.bigint() >= end) return x;
  }
}

// A long-running server's handlers are hot, so V8 has compiled them to machine code that
// --perf-basic-prof names in /tmp/perf-PID.map. Warm ours up the same way: a function V8 still
// interprets runs inside the shared Builtins_InterpreterEntryTrampoline and has no native frame
// of its own (short of --interpreted-frames-native-stack).
function warmUp() {
  const iterations = pbkdf2Iterations;
  pbkdf2Iterations = 1;
  for (let i = 0; i < 3000; i++) {
    hashPasswordSync(0);
    spinForMs(0);
  }
  pbkdf2Iterations = iterations;
}

function calibrate() {
  const start = process.hrtime.bigint();
  crypto.pbkdf2Sync('x', 'y', pbkdf2Iterations, 64, 'sha512');
  const tookNs = Number(process.hrtime.bigint() - start);
  pbkdf2Iterations = Math.max(100, Math.round((pbkdf2Iterations * 20e6) / tookNs));
}

function planted(kind, work) {
  const start = process.hrtime.bigint();
  work();
  const took = process.hrtime.bigint() - start;
  process.stdout.write(`planted ${kind} ${took}\n`);
}

warmUp();
calibrate();

const server = http.createServer((req, res) => {
  switch (req.url) {
    case '/pbkdf2':
      planted('pbkdf2', () => hashPasswordSync(PLANTED_MS));
      break;
    case '/spin':
      planted('spin', () => spinForMs(PLANTED_MS));
      break;
    default:
      break;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 3, Connection: 'close' });
  res.end('ok\n');
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
