/** gRPC status codes (google.rpc.Code), as the server uses them in frames and close codes. */
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

/**
 * What went wrong:
 * - `gap`: a seq arrived more than one past the last one seen (something was missed);
 * - `repeat`: a seq arrived that was already delivered (dropped);
 * - `refused`: the server refused a frame or a request (the `code` says why);
 * - `closed`: the session is closed (by `close()`, or for good after auth failures);
 * - `protocol`: the server or the connection broke the wire contract.
 */
export type ConfabErrorKind = "gap" | "repeat" | "refused" | "closed" | "protocol";

export class ConfabError extends Error {
  /** A gRPC status code (see {@link Code}). */
  readonly code: number;
  readonly kind: ConfabErrorKind;
  /** The conversation concerned, when there is one. */
  readonly conversationId?: string;

  constructor(kind: ConfabErrorKind, code: number, message: string, conversationId?: string) {
    super(message);
    this.name = "ConfabError";
    this.kind = kind;
    this.code = code;
    this.conversationId = conversationId;
  }
}

/** The gRPC code that an HTTP status stands for (as gRPC's HTTP mapping does). */
export function codeFromHttpStatus(status: number): number {
  switch (status) {
    case 400:
      return Code.INVALID_ARGUMENT;
    case 401:
      return Code.UNAUTHENTICATED;
    case 403:
      return Code.PERMISSION_DENIED;
    case 404:
      return Code.UNIMPLEMENTED;
    case 429:
      return Code.RESOURCE_EXHAUSTED;
    case 502:
    case 503:
    case 504:
      return Code.UNAVAILABLE;
    default:
      return Code.UNKNOWN;
  }
}
