import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffCeiling, backoffDelay } from "../../dist/index.js";

test("the ceiling doubles from 1 s and stops at 60 s", () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8, 50, 5000].map((n) => backoffCeiling(n)), [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000]);
  assert.equal(backoffCeiling(0), 0);
});

test("full jitter: the delay is uniform in [0, ceiling)", () => {
  assert.equal(backoffDelay(3, {}, () => 0), 0);
  assert.equal(backoffDelay(3, {}, () => 0.5), 2000);
  assert.equal(backoffDelay(3, {}, () => 0.999999), 3999);
  for (let n = 1; n < 12; n++) {
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(n);
      assert.ok(d >= 0 && d < backoffCeiling(n), `attempt ${n}: ${d}`);
    }
  }
  // not constant: jitter spreads retries
  const samples = new Set(Array.from({ length: 50 }, () => backoffDelay(6)));
  assert.ok(samples.size > 10);
});

test("custom base and cap", () => {
  assert.equal(backoffCeiling(4, { baseMs: 100, capMs: 500 }), 500);
  assert.equal(backoffCeiling(2, { baseMs: 100, capMs: 500 }), 200);
});
