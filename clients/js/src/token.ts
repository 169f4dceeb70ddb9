/** A token, or a function that returns a fresh one (called again before the current one expires). */
export type TokenProvider = string | (() => string | Promise<string>);

export async function resolveToken(provider: TokenProvider): Promise<string> {
  return typeof provider === "function" ? await provider() : provider;
}

function base64UrlDecode(text: string): string {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  if (typeof atob === "function") {
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }
  return (globalThis as any).Buffer.from(b64, "base64").toString("utf8");
}

/** `exp` of a JWT in milliseconds since the epoch, or undefined when it is not a JWT with `exp`. */
export function tokenExpiry(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]!));
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** When to fetch the next token: 80 % into its lifetime, and at least 5 s before `exp`. */
export function refreshDelay(token: string, now: number = Date.now()): number | undefined {
  const exp = tokenExpiry(token);
  if (exp === undefined) return undefined;
  const left = exp - now;
  return Math.max(0, Math.min(left * 0.8, left - 5000));
}
