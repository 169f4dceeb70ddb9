// Shared formatting: ids, relative times, durations, countdowns, label chips and one-line event
// summaries.
import type { RuncastEvent } from "@runcast/client";
import { el } from "./dom.js";

/** The last 8 characters of an id: execution ids are UUIDv7, whose first characters are a
 * timestamp shared by everything created in the same minute, and whose end is random. */
export function shortId(id: string): string {
  return id.length > 10 ? id.slice(-8) : id;
}

/** "3 s ago", "4 min ago", "2 h ago", "3 d ago" (a time a little in the future reads "just now"). */
export function ago(iso: string, now: number): string {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return "";
  const s = Math.floor((now - t) / 1000);
  if (s < 1) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** "21:57:03 · 4 s ago" (the date too when it is not today); "—" without a time. */
export function at(iso: string | undefined, now: number): string {
  const t = iso ? Date.parse(iso) : NaN;
  if (!Number.isFinite(t)) return "—";
  const d = new Date(t);
  const today = d.toDateString() === new Date(now).toDateString();
  return `${today ? d.toLocaleTimeString() : d.toLocaleString()} · ${ago(iso!, now)}`;
}

/** From `start` to `end` (or now): "850 ms", "12 s", "3 min 4 s", "2 h 5 min". */
export function duration(start: string, end: string | undefined, now: number): string {
  const a = Date.parse(start);
  const b = end ? Date.parse(end) : now;
  return Number.isFinite(a) && Number.isFinite(b) ? formatMs(Math.max(0, b - a)) : "—";
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** "2:05" (or "1:02:05") left. */
export function clock(ms: number): string {
  const s = Math.ceil(ms / 1000);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

/** Label chips, the trigger (`trigger`, else `source`) first. */
export function labelChips(labels: Record<string, string> | undefined): HTMLElement[] {
  const entries = Object.entries(labels ?? {});
  const trigger = entries.find(([k]) => k === "trigger") ?? entries.find(([k]) => k === "source");
  const chips: HTMLElement[] = [];
  if (trigger) chips.push(el("span", "chip trigger", trigger[1]));
  for (const [k, v] of entries) if (k !== trigger?.[0]) chips.push(el("span", "chip", `${k}=${v}`));
  return chips;
}

/** One line about an event, from its payload: the fields that say something (`{"status_changed":
 * {"from": "pending", "to": "running", "error": ""}}` reads `pending → running`). */
export function summarize(ev: RuncastEvent): string {
  let p = (ev.payload ?? {}) as Record<string, unknown>;
  // payloads are one-of wrappers: {"step_changed": {...}}
  const keys = Object.keys(p);
  if (keys.length === 1 && p[keys[0]!] && typeof p[keys[0]!] === "object" && !Array.isArray(p[keys[0]!])) p = p[keys[0]!] as Record<string, unknown>;
  const parts: string[] = [];
  if (typeof p.from === "string" && typeof p.to === "string" && p.from) parts.push(`${p.from} → ${p.to}`);
  for (const [k, v] of Object.entries(p)) {
    if (k === "from" || k === "to" || v === undefined || v === null || v === "" || (typeof v === "object" && !Object.keys(v as object).length)) continue;
    parts.push(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  const text = parts.join(" · ");
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}
