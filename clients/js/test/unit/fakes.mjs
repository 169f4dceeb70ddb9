// Test doubles: a manual clock, a scriptable WebSocket, and JWT-shaped tokens.
export class Clock {
  now = 1_000_000;
  timers = [];
  seq = 0;
  setTimeout = (fn, ms) => {
    const t = { id: ++this.seq, at: this.now + ms, fn };
    this.timers.push(t);
    return t.id;
  };
  clearTimeout = (id) => {
    this.timers = this.timers.filter((t) => t.id !== id);
  };
  /** Runs every timer due within `ms`, in time order. */
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.now = next.at;
      next.fn();
      await flush();
    }
    this.now = end;
    await flush();
  }
}

export const flush = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    static sockets = sockets;
    readyState = 0;
    sent = [];
    onopen = null; onclose = null; onerror = null; onmessage = null;
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      sockets.push(this);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close() { this.readyState = 3; }
    // server side
    open() { this.readyState = 1; this.onopen?.({}); }
    refuse(code = 1006) { this.readyState = 3; this.onerror?.({}); this.onclose?.({ code }); }
    drop(code = 1006, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
    deliver(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
    event(channel, offset, state = {}) {
      this.deliver({ type: "execution.progress", channel, offset, data: { type: "execution.progress", offset, execution_id: state.execution_id ?? "e1", state: { execution_id: "e1", version: offset, status: "running", ...state } } });
    }
    subscribes() { return this.sent.filter((m) => m.type === "subscribe"); }
  }
  return FakeWebSocket;
}

export function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${b64({ alg: "HS256" })}.${b64(claims)}.sig`;
}
