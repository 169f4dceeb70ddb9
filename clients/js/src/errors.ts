/** A REST error: `{"error": {"code", "message"}}` with its HTTP status (DESIGN §3). */
export class RuncastApiError extends Error {
  constructor(public readonly status: number, public readonly code: string, message: string) {
    super(message);
    this.name = "RuncastApiError";
  }
}
