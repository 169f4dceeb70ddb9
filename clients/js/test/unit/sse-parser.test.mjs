// The SSE line parser on its own: records as the gateway writes them, in any chunking.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser } from "../../dist/transport/sse-parser.js";

const frame = '{"type":"execution.progress","channel":"executions","offset":7,"data":{}}';

test("an event record: id, event and data; a blank line dispatches it", () => {
  const p = new SseParser();
  assert.deepEqual(p.push(`id: 7\nevent: execution.progress\ndata: ${frame}\n`), []);
  assert.deepEqual(p.push("\n"), [{ data: frame, event: "execution.progress", id: "7" }]);
});

test("a control record carries no id; `retry:` (a draining replica's delay) is read as a number", () => {
  const p = new SseParser();
  const records = p.push('retry: 1234\nevent: reconnect\ndata: {"type":"reconnect"}\n\nevent: subscribed\ndata: {"type":"subscribed"}\n\n');
  assert.deepEqual(records, [
    { data: '{"type":"reconnect"}', event: "reconnect", retry: 1234 },
    { data: '{"type":"subscribed"}', event: "subscribed" },
  ]);
  assert.deepEqual(p.push("retry: soon\ndata: x\n\n"), [{ data: "x" }], "a retry that is not digits is ignored");
});

test("heartbeat comments and records without data dispatch nothing, and fields do not leak into the next record", () => {
  const p = new SseParser();
  assert.deepEqual(p.push(": heartbeat\n\n: heartbeat\n\n"), []);
  assert.deepEqual(p.push("id: 3\nevent: x\n\n"), []);
  assert.deepEqual(p.push("data: a\n\n"), [{ data: "a" }]);
});

test("any chunking gives the same records: split lines, CRLF, and UTF-8 split inside a character", () => {
  const text = `id: 1\r\nevent: log.appended\r\ndata: {"text":"héllo ✓"}\r\n\r\n: heartbeat\n\nid: 2\ndata: {"n":2}\n\n`;
  const bytes = new TextEncoder().encode(text);
  const whole = new SseParser().push(bytes);
  assert.deepEqual(whole, [
    { data: '{"text":"héllo ✓"}', event: "log.appended", id: "1" },
    { data: '{"n":2}', id: "2" },
  ]);
  for (const size of [1, 2, 3, 5, 7, 13]) {
    const p = new SseParser();
    const got = [];
    for (let i = 0; i < bytes.length; i += size) got.push(...p.push(bytes.subarray(i, i + size)));
    assert.deepEqual(got, whole, `chunks of ${size} bytes`);
  }
});

test("several data lines join with newlines; one leading space is dropped, a line without a colon is a field without value", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data:one\ndata:  two\ndata\n\n"), [{ data: "one\n two\n" }]);
});

test("an unfinished record stays buffered until its blank line arrives", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: {\"a\":"), []);
  assert.deepEqual(p.push("1}\n"), []);
  assert.deepEqual(p.push("\n"), [{ data: '{"a":1}' }]);
});
