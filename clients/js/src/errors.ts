/** A REST error: `{"error": {"code", "message"}}` with its HTTP status (DESIGN §3). */
export class RuncastApiError extends Error {
  constructor(public readonly status: number, public readonly code: string, message: string) {
    super(message);
    this.name = "RuncastApiError";
  }
}

/** The gateway refused a subscription (an `error` message for it over WebSocket, or a 4xx for its
 * SSE stream): `code` is the gateway's (`unknown_channel`, `invalid_filter`, `permission_denied`,
 * `too_many_subscriptions`, …), `channel` the subscription's. Retrying the same subscribe would
 * fail the same way, so the subscription is dropped. */
export class RuncastSubscriptionError extends Error {
  constructor(public readonly channel: string | undefined, public readonly code: string, message: string) {
    super(channel !== undefined ? `subscription to ${channel} refused (${code}): ${message}` : `gateway error (${code}): ${message}`);
    this.name = "RuncastSubscriptionError";
  }
}
