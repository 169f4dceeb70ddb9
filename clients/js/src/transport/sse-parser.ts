// The text/event-stream format, incrementally: bytes in (any chunking, UTF-8 split anywhere),
// records out. The gateway writes `id:` (the frame's offset), `event:` (its type), `retry:` (on
// `reconnect`) and one `data:` line per record, and comment lines (`: heartbeat`) when idle.

/** One dispatched record: its `data:` lines joined by "\n", and the other fields when present. */
export interface SseRecord {
  data: string;
  event?: string;
  id?: string;
  retry?: number;
}

export class SseParser {
  private readonly decoder = new TextDecoder();
  private buffer = "";
  private data: string[] = [];
  private event: string | undefined;
  private id: string | undefined;
  private retry: number | undefined;

  /** Feeds a chunk (bytes are decoded as a UTF-8 stream); returns the records it completed. */
  push(chunk: Uint8Array | string): SseRecord[] {
    this.buffer += typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    const records: SseRecord[] = [];
    let nl: number;
    while ((nl = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, "");
      this.buffer = this.buffer.slice(nl + 1);
      const record = this.line(line);
      if (record) records.push(record);
    }
    return records;
  }

  /** One line: a blank line ends the record (dispatched when it has data); a line starting with
   * `:` is a comment; otherwise `field: value` (one leading space of the value dropped). */
  private line(line: string): SseRecord | undefined {
    if (line === "") {
      const record = this.data.length ? this.record() : undefined;
      this.data = [];
      this.event = undefined;
      this.id = undefined;
      this.retry = undefined;
      return record;
    }
    if (line.startsWith(":")) return undefined;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.event = value;
        break;
      case "id":
        this.id = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      // other fields are ignored
    }
    return undefined;
  }

  private record(): SseRecord {
    const record: SseRecord = { data: this.data.join("\n") };
    if (this.event !== undefined) record.event = this.event;
    if (this.id !== undefined) record.id = this.id;
    if (this.retry !== undefined) record.retry = this.retry;
    return record;
  }
}
