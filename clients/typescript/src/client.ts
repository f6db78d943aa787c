import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Chat } from "./gen/confab/v1/chat_pb";
import { httpUrl, wsUrl } from "./http";
import { Session, type SessionOptions, type TokenSource } from "./session";

export interface ConfabOptions {
  /** Where the gateway's HTTP listener is, e.g. `http://127.0.0.1:8080` (or `location.origin`). */
  baseUrl: string;
  /** A JWT, or a function that returns a fresh one (called for every call and every connect). */
  token: TokenSource;
  /** Passed to the gRPC-Web transport (e.g. to set `credentials`). */
  fetch?: typeof globalThis.fetch;
}

/** A Confab server: its unary RPCs (`chat`) and live sessions (`connect`). */
export class Confab {
  /** Every unary RPC of `confab.v1.Chat` over gRPC-Web, with the bearer token attached. */
  readonly chat: Client<typeof Chat>;
  readonly baseUrl: string;
  private readonly token: TokenSource;

  constructor(opts: ConfabOptions) {
    this.baseUrl = opts.baseUrl;
    this.token = opts.token;
    const token = opts.token;
    const auth: Interceptor = (next) => async (req) => {
      const t = typeof token === "string" ? token : await token();
      req.header.set("authorization", `Bearer ${t}`);
      return next(req);
    };
    // connect-web appends "/confab.v1.Chat/<Method>" to the base URL.
    const base = httpUrl(opts.baseUrl, "").replace(/\/$/, "");
    const transport = createGrpcWebTransport({
      baseUrl: base,
      useBinaryFormat: true,
      interceptors: [auth],
      ...(opts.fetch ? { fetch: opts.fetch } : {}),
    });
    this.chat = createClient(Chat, transport);
  }

  /** Opens a live session over the WebSocket at `/v1/connect`; it connects (and reconnects) by itself. */
  connect(opts: SessionOptions = {}): Session {
    return new Session({ url: wsUrl(this.baseUrl, "v1/connect"), token: this.token }, opts);
  }
}
