/** Exponential backoff with full jitter: attempt n (1-based) waits uniformly in
 * [0, min(cap, base · 2^(n-1))). Defaults: 1 s doubling to a 60 s cap. */
export interface BackoffOptions {
  baseMs?: number;
  capMs?: number;
}

export function backoffCeiling(attempt: number, { baseMs = 1000, capMs = 60000 }: BackoffOptions = {}): number {
  if (attempt < 1) return 0;
  // 2^(n-1) overflows to Infinity for huge n; min() keeps the cap.
  return Math.min(capMs, baseMs * Math.pow(2, Math.min(attempt - 1, 1023)));
}

export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  return Math.floor(random() * backoffCeiling(attempt, options));
}
