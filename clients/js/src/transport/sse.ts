// The SSE transport: one `GET /sse` stream per subscription, read with fetch streaming so the
// token travels in the Authorization header; the offset to resume from in Last-Event-ID.
import type { Subscription } from "../subscription.js";
import { parseServerMessage } from "../types.js";
import { SseParser } from "./sse-parser.js";
import type { Transport, TransportHost } from "./transport.js";

/** `http(s)://host` from the gateway's base URL (http(s) or ws(s)). */
export function httpBase(gatewayUrl: string): string {
  return gatewayUrl.replace(/\/+$/, "").replace(/^ws/, "http");
}

/** Checks that the gateway answers (`/healthz`), then resolves with the transport; each
 * subscription opens its own stream. A stream that fails or ends early is reported to
 * `host.dropped`; one that ended cleanly after a while (resync, proxy timeout) resumes alone. */
export async function openSse(doFetch: typeof fetch | undefined, base: string, host: TransportHost): Promise<Transport> {
  if (!doFetch) throw new Error("no fetch implementation (pass options.fetch)");
  // Probe: the gateway must answer (readiness of the SSE path is checked by the first stream).
  const probe = await doFetch(`${base}/healthz`).catch((err: Error) => {
    throw new Error(`sse: ${err.message}`);
  });
  if (!probe.ok) throw new Error(`sse: gateway answered ${probe.status}`);
  const streams = new Map<string, AbortController>();
  const transport: Transport = {
    kind: "sse",
    subscribe(sub) {
      streams.get(sub.channel)?.abort();
      const abort = new AbortController();
      streams.set(sub.channel, abort);
      void run(sub, abort);
    },
    unsubscribe(sub) {
      streams.get(sub.channel)?.abort();
      streams.delete(sub.channel);
    },
    auth() {
      /* used by the next stream; SSE has no in-band auth */
    },
    close() {
      for (const a of streams.values()) a.abort();
      streams.clear();
    },
  };
  const run = async (sub: Subscription, abort: AbortController) => {
    const q = sub.sseQuery();
    const headers: Record<string, string> = { authorization: `Bearer ${host.token()}`, accept: "text/event-stream" };
    const since = sub.resume.since_offset;
    if (since !== undefined) headers["last-event-id"] = String(since);
    let reason = "stream ended";
    const started = host.timers.now();
    let clean = false;
    try {
      const res = await doFetch(`${base}/sse?${q}`, { headers, signal: abort.signal, cache: "no-store" });
      if (!res.ok || !res.body) {
        const text = await res.text().catch(() => "");
        if (res.status >= 400 && res.status < 500 && res.status !== 401 && res.status !== 408 && res.status !== 429) {
          // The gateway refused this channel or its filters (not the connection): the same
          // request would fail again, so the subscription fails instead of reconnecting.
          let err: { code?: string; message?: string } | undefined;
          try {
            err = JSON.parse(text).error;
          } catch {
            err = undefined;
          }
          if (streams.get(sub.channel) === abort) streams.delete(sub.channel);
          host.message({ type: "error", channel: sub.channel, id: sub.channel, code: err?.code ?? `http_${res.status}`, message: err?.message ?? text }, transport);
          return;
        }
        throw new Error(`sse ${sub.channel}: ${res.status} ${text}`);
      }
      const reader = res.body.getReader();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        // `id:` equals the frame's `offset` and `event:` its `type`, so the JSON is all we need.
        for (const record of parser.push(value)) {
          const message = parseServerMessage(record.data);
          if (!message) continue; // a record that is not JSON: skipped
          try {
            host.message(message, transport);
          } catch {
            /* a handler's exception does not end the stream */
          }
        }
      }
      clean = true;
    } catch (err) {
      if (abort.signal.aborted) return;
      reason = (err as Error).message;
    }
    if (abort.signal.aborted || streams.get(sub.channel) !== abort) return;
    if (!host.current()) return;
    // A stream that ended cleanly after a while (resync, proxy timeout): resume just this one
    // from its last offset. Anything else (refused, drained, gateway gone): reconnect all.
    if (clean && host.timers.now() - started > 1000) transport.subscribe(sub);
    else host.dropped(reason);
  };
  return transport;
}
