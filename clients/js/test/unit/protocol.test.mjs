// The server messages as a union on `type`: parsing a frame, and telling events from controls.
import { test } from "node:test";
import assert from "node:assert/strict";
import { CONTROL_TYPES, isEventMessage, parseServerMessage } from "../../dist/index.js";

test("a frame parses to a message only when it is a JSON object with a string type", () => {
  assert.deepEqual(parseServerMessage('{"type":"pong","timestamp":"2026-12-01T00:00:00.000Z"}'), { type: "pong", timestamp: "2026-12-01T00:00:00.000Z" });
  for (const text of ["not json", "null", "7", '"pong"', "[1]", '{"channel":"executions"}', '{"type":3}']) {
    assert.equal(parseServerMessage(text), undefined, text);
  }
});

test("every control type is a control, every other type an event frame", () => {
  assert.deepEqual([...CONTROL_TYPES].sort(), ["error", "pong", "reconnect", "resync", "snapshot", "subscribed", "unsubscribed"]);
  for (const type of CONTROL_TYPES) assert.equal(isEventMessage({ type }), false, type);
  for (const type of ["execution.created", "log.appended", "agent.heartbeat"]) {
    assert.equal(isEventMessage({ type, channel: "executions", offset: 1, data: {} }), true, type);
  }
});
