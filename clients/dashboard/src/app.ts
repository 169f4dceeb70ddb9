// What every view shares: the client, batched rendering (one render per animation frame), the
// toast, the copy button, the current route, and how an SDK failure is handled.
import type { RuncastClient } from "@runcast/client";
import { $, el } from "./dom.js";

export interface Route {
  /** The execution page's id (`#/executions/{id}`). */
  detailId: string | undefined;
  /** The Agents page (`#/agents`). */
  agentsView: boolean;
}

export interface App {
  readonly client: RuncastClient;
  readonly route: Route;
  /** Runs `fn` in the next animation frame (once, however often it is scheduled before). */
  schedule(fn: () => void): void;
  showError(message: string): void;
  showNotice(message: string): void;
  copyButton(text: string): HTMLElement;
  /** For every SDK promise: a 401 rejects the token, anything else is `otherwise`'s. */
  onFailure(otherwise?: (err: Error) => void): (err: Error) => void;
}

export function createApp(client: RuncastClient, onFailure: App["onFailure"]): App {
  const renderStats = { frames: 0, ms: 0, maxMs: 0 };
  (window as any).runcastRenderStats = renderStats;
  // --- batched rendering: every store change marks the frame dirty; one render per frame
  let frame = 0;
  const scheduled = new Set<() => void>();
  const schedule = (fn: () => void) => {
    scheduled.add(fn);
    if (!frame) frame = requestAnimationFrame(() => {
      frame = 0;
      const fns = [...scheduled];
      scheduled.clear();
      const t0 = performance.now();
      for (const f of fns) f();
      renderStats.frames++;
      renderStats.ms += performance.now() - t0;
      renderStats.maxMs = Math.max(renderStats.maxMs, performance.now() - t0);
    });
  };

  const toast = $("#toast");
  let toastTimer: ReturnType<typeof setTimeout> | undefined;
  const show = (message: string, className: string, ms: number) => {
    toast.textContent = message;
    toast.className = className;
    toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (toast.hidden = true), ms);
  };
  const showError = (message: string) => show(message, "toast", 8000);
  const showNotice = (message: string) => show(message, "toast notice", 5000);

  const copyButton = (text: string) => {
    const b = el("button", "copy", "copy");
    b.title = `copy ${text}`;
    b.setAttribute("aria-label", `copy ${text}`);
    b.addEventListener("click", (ev) => {
      ev.preventDefault();
      ev.stopPropagation();
      void navigator.clipboard?.writeText(text).then(() => showNotice(`Copied ${text}`), () => showNotice(text));
    });
    return b;
  };

  return { client, route: { detailId: undefined, agentsView: false }, schedule, showError, showNotice, copyButton, onFailure };
}
