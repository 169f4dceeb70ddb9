// The WebSocket transport: one socket (subprotocol `runcast.v1.json`) carrying every
// subscription, the token in the URL and refreshed in band with `auth`.
import type { Subscription } from "../subscription.js";
import { parseServerMessage, type ClientMessage } from "../types.js";
import type { Transport, TransportHost } from "./transport.js";

export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol?: string;
  onopen: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketFactory = new (url: string, protocols?: string | string[]) => WebSocketLike;

export const JSON_SUBPROTOCOL = "runcast.v1.json";
const WS_OPEN = 1;

/** `ws(s)://host/ws?token=…` from the gateway's base URL (http(s) or ws(s)). */
export function webSocketUrl(gatewayUrl: string, token: string | undefined): string {
  const base = gatewayUrl.replace(/\/+$/, "").replace(/^http/, "ws");
  return `${base}/ws?token=${encodeURIComponent(token ?? "")}`;
}

/** Opens a socket; resolves with the transport once it is open, rejects when it is refused or
 * has not opened after `connectTimeoutMs`. Once open, its end is reported to `host.dropped`. */
export function openWebSocket(
  WS: WebSocketFactory | undefined,
  url: string,
  connectTimeoutMs: number,
  host: TransportHost,
): Promise<Transport> {
  if (!WS) return Promise.reject(new Error("no WebSocket implementation (pass options.WebSocket)"));
  const { timers } = host;
  return new Promise((resolve, reject) => {
    let ws: WebSocketLike;
    try {
      ws = new WS(url, JSON_SUBPROTOCOL);
    } catch (err) {
      reject(err);
      return;
    }
    let opened = false;
    const timer = timers.set(() => {
      if (!opened) {
        ws.onclose = ws.onerror = ws.onopen = ws.onmessage = null;
        try { ws.close(); } catch { /* already closing */ }
        reject(new Error("timed out"));
      }
    }, connectTimeoutMs);
    // Channels unsubscribed and not yet confirmed (`unsubscribed`); a subscription waiting to be
    // subscribed again once they are (a reload's unsubscribe + subscribe).
    const pendingUnsub = new Map<string, Subscription | undefined>();
    const send = (msg: ClientMessage) => {
      if (ws.readyState === WS_OPEN) ws.send(JSON.stringify(msg));
    };
    const transport: Transport = {
      kind: "websocket",
      subscribe: (sub) => {
        if (pendingUnsub.has(sub.channel)) {
          pendingUnsub.set(sub.channel, sub); // subscribe again once `unsubscribed` arrives
          return;
        }
        send(sub.subscribeRequest());
      },
      unsubscribe: (sub) => {
        pendingUnsub.set(sub.channel, undefined);
        send({ type: "unsubscribe", channel: sub.channel });
      },
      auth: (token) => send({ type: "auth", token }),
      close: () => {
        ws.onclose = ws.onerror = ws.onmessage = null;
        try { ws.close(1000); } catch { /* ignore */ }
      },
    };
    ws.onopen = () => {
      opened = true;
      timers.clear(timer);
      resolve(transport);
    };
    ws.onerror = () => {
      /* onclose follows */
    };
    ws.onclose = (ev: any) => {
      timers.clear(timer);
      if (!opened) {
        reject(new Error(`refused (close ${ev?.code ?? "?"})`));
        return;
      }
      host.dropped(`closed ${ev?.code ?? ""} ${ev?.reason ?? ""}`.trim(), ev?.code === 1001);
    };
    ws.onmessage = (ev: any) => {
      if (typeof ev.data !== "string") return;
      const message = parseServerMessage(ev.data);
      if (!message) return;
      if (message.type === "unsubscribed" && message.channel && pendingUnsub.has(message.channel)) {
        const again = pendingUnsub.get(message.channel);
        pendingUnsub.delete(message.channel);
        if (again && host.holds(again)) send(again.subscribeRequest());
        return;
      }
      if (message.type === "error" && message.code === "not_subscribed" && message.id === undefined) {
        // an unsubscribe raced a resync: resubscribe whatever waited for it
        for (const [channel, again] of pendingUnsub) {
          pendingUnsub.delete(channel);
          if (again && host.holds(again)) send(again.subscribeRequest());
        }
        return;
      }
      host.message(message, transport);
    };
  });
}
