/** What the session uses of a WebSocket: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drops the connection without a closing handshake. */
  terminate?: () => void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** Opens a WebSocket to `url` offering `protocols`. */
export type WebSocketFactory = (url: string, protocols: string[]) => WebSocketLike | Promise<WebSocketLike>;

type WebSocketCtor = new (url: string, protocols: string[]) => WebSocketLike;

let nodeWebSocket: Promise<WebSocketCtor> | undefined;

/** The global WebSocket (browsers, Node 22+), else the `ws` package (Node 20). */
async function webSocketClass(): Promise<WebSocketCtor> {
  const global = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  if (global) return global;
  nodeWebSocket ??= import("ws").then((m) => (m.default ?? m.WebSocket) as unknown as WebSocketCtor);
  return nodeWebSocket;
}

export async function openWebSocket(url: string, protocols: string[], factory?: WebSocketFactory): Promise<WebSocketLike> {
  if (factory) return factory(url, protocols);
  const Ctor = await webSocketClass();
  return new Ctor(url, protocols);
}
