// Typed errors carrying natter's reason codes, from Connect/gRPC errors and refused stream frames.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { ConnectError } from "@connectrpc/connect";

/** google.rpc.Code values, as gRPC statuses and StreamError frames carry them. */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const NAMES = Object.fromEntries(Object.entries(Code).map(([k, v]) => [v, k])) as Record<number, string>;

export function codeName(code: number): string {
  return NAMES[code] ?? String(code);
}

/**
 * A failure the server (or the connection) reports: `code` is the google.rpc code, `reason`
 * natter's machine-readable reason (`BAD_TOKEN`, `NOT_A_MEMBER`, `RATE_LIMITED`, ...).
 */
export class NatterError extends Error {
  readonly code: number;
  readonly reason: string;

  constructor(code: number, message: string, reason = "") {
    super(message);
    this.name = "NatterError";
    this.code = code;
    this.reason = reason || codeName(code);
  }

  /** The same request may succeed later: the connection retries such sends by itself. */
  get transient(): boolean {
    if (this.code === Code.RESOURCE_EXHAUSTED) return this.reason === "RATE_LIMITED";
    return this.code === Code.UNAVAILABLE || this.code === Code.DEADLINE_EXCEEDED || this.code === Code.INTERNAL;
  }

  get unauthenticated(): boolean {
    return this.code === Code.UNAUTHENTICATED;
  }

  /** From anything a call threw: a ConnectError keeps its code and ErrorInfo reason. */
  static from(e: unknown): NatterError {
    if (e instanceof NatterError) return e;
    if (e instanceof ConnectError) {
      let reason = "";
      for (const d of e.details) {
        if ("type" in d && "value" in d && d.type === "google.rpc.ErrorInfo" && d.value instanceof Uint8Array) {
          reason = errorInfoReason(d.value) ?? "";
          if (reason) break;
        }
      }
      // A cancelled call is a lost connection as far as the caller can tell.
      const code = e.code === Code.CANCELLED ? Code.UNAVAILABLE : e.code;
      return new NatterError(code, e.rawMessage || codeName(code), reason);
    }
    return new NatterError(Code.UNKNOWN, e instanceof Error ? e.message : String(e));
  }
}

/** The `reason` (field 1) of a serialized google.rpc.ErrorInfo. */
function errorInfoReason(bytes: Uint8Array): string | undefined {
  try {
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (field === 1 && wire === WireType.LengthDelimited) return r.string();
      r.skip(wire);
    }
  } catch {
    /* not an ErrorInfo after all */
  }
  return undefined;
}
