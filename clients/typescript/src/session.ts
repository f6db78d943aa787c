import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  MembershipEvent_Change,
  MessageKind,
  ServerFrameSchema,
  type ClientFrame,
  type Conversation,
  type Message,
  type Presence,
  type ReadState,
  type Receipt,
  type ServerFrame,
  type Typing,
} from "./gen/confab/v1/chat_pb";
import { Code, ConfabError } from "./errors";
import { openWebSocket, type WebSocketFactory, type WebSocketLike } from "./websocket";

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface SessionOptions {
  /** The sync cursor persisted from an earlier session (`Session.cursor`); empty or unset: everything. */
  cursor?: string;
  /** The last seq seen of each conversation, persisted from an earlier session (`Session.lastSeq`). */
  lastSeq?: Record<string, bigint>;
  /** Reconnect delays: exponential from `initialMs` (default 500) up to `maxMs` (default 30000), with jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** How often the client pings (default 15000 ms); a ping not answered by the next one ends the connection. */
  pingMs?: number;
  /**
   * How to open the WebSocket (default: the global WebSocket, else the `ws`
   * package). For environments without either, and for tests.
   */
  webSocket?: WebSocketFactory;
  /** Consecutive UNAUTHENTICATED closes before the session gives up (default 3; 1 with a fixed token string). */
  maxAuthFailures?: number;
}

export type StateEvent = { state: ConnectionState; attempt: number; error?: ConfabError };

type Events = {
  state: StateEvent;
  message: Message;
  conversation: Conversation;
  removed: string;
  receipt: Receipt;
  typing: Typing;
  presence: Presence;
  error: ConfabError;
  synced: void;
};

export type TokenSource = string | (() => string | Promise<string>);

/** What a `Session` needs from its `Confab`. */
export interface SessionConfig {
  url: string;
  token: TokenSource;
}

interface PendingSend {
  frame: ClientFrame;
  conversationId: string;
  clientMsgId: string;
  /** The connection it was last written on (0: not written yet). */
  writtenOn: number;
  /** Encoded size, to find the culprit of a 1009 close. */
  size: number;
  /** Refused for now (rate limit, server busy): written again by the retry timer. */
  refused: boolean;
  waiters: { resolve: (r: { seq: bigint; clientMsgId: string }) => void; reject: (e: ConfabError) => void }[];
}

interface PendingRead {
  frame: ClientFrame;
  waiters: { resolve: (r: ReadState) => void; reject: (e: ConfabError) => void }[];
}

/**
 * Ack errors after which a send is tried again, after a backoff: the message
 * was not stored and may be next time (the rate limit, too many sends in
 * flight, a server busy or restarting).
 */
const RETRY_SEND_CODES: ReadonlySet<number> = new Set([
  Code.RESOURCE_EXHAUSTED,
  Code.UNAVAILABLE,
  Code.DEADLINE_EXCEEDED,
  Code.ABORTED,
]);

/** Resume refusals after which a conversation is not resumed again. */
const DROP_CONVERSATION_CODES: ReadonlySet<number> = new Set([
  Code.NOT_FOUND,
  Code.PERMISSION_DENIED,
  Code.INVALID_ARGUMENT,
]);

const FORMAT_PROTOCOL = "confab.v1.proto";
const BEARER_PREFIX = "confab.bearer.";

/** The user id (`sub`) of a JWT, if it can be read. */
function jwtSubject(token: string): string | undefined {
  try {
    const part = token.split(".")[1];
    if (!part) return undefined;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const sub = JSON.parse(new TextDecoder().decode(bytes)).sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

/** A random UUID (v4); `crypto.randomUUID` is missing on plain-http pages. */
export function newClientMsgId(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function closeCodeError(code: number, reason: string): ConfabError {
  const why = reason ? `: ${reason}` : "";
  if (code >= 4000 && code <= 4016) {
    return new ConfabError(code === 4016 ? "closed" : "refused", code - 4000, `session closed with ${code}${why}`);
  }
  if (code === 1009) {
    return new ConfabError("protocol", Code.RESOURCE_EXHAUSTED, `session closed with 1009 (message too big)${why}`);
  }
  if (code === 1003) {
    return new ConfabError("protocol", Code.INVALID_ARGUMENT, `session closed with 1003 (wrong frame format)${why}`);
  }
  return new ConfabError("closed", Code.UNAVAILABLE, `connection lost (close ${code})${why}`);
}

/**
 * One live session over WebSocket: resumes and syncs on every (re)connect,
 * delivers every sequenced event once and in order, retries sends until
 * acknowledged. Created by `Confab.connect`.
 */
export class Session {
  private readonly config: SessionConfig;
  private readonly opts: SessionOptions;
  private readonly listeners = new Map<keyof Events, Set<(v: never) => void>>();
  private readonly last = new Map<string, bigint>();
  private syncCursor: string;
  private current: ConnectionState = "connecting";
  private attempt = 0;
  private authFailures = 0;
  private ws: WebSocketLike | undefined;
  /** Increases with every connection attempt; events of older sockets are ignored. */
  private connId = 0;
  /** Whether the current connection is open and has been sent resume + sync. */
  private live = false;
  /** Whether the current connection has received a frame (it is past authentication). */
  private heard = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private pingNonce = 0n;
  private awaitingPong: bigint | undefined;
  private readonly sends = new Map<string, PendingSend>();
  private readonly reads = new Map<string, PendingRead>();
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Consecutive retry rounds of refused sends (the backoff grows with it). */
  private sendRetries = 0;
  /** Conversations resumed on this connection that have not caught up yet. */
  private readonly resuming = new Set<string>();
  /** Gaps already recovered from once (conversation -> "last>seq"): seen again, the message is taken. */
  private readonly gapsRetried = new Map<string, string>();
  private self: string | undefined;

  /** @internal Use `Confab.connect`. */
  constructor(config: SessionConfig, opts: SessionOptions = {}) {
    this.config = config;
    this.opts = opts;
    this.syncCursor = opts.cursor ?? "";
    for (const [id, seq] of Object.entries(opts.lastSeq ?? {})) this.last.set(id, BigInt(seq));
    void this.open();
  }

  /** The sync cursor: persist it with the `lastSeq` of each conversation to resume a later session. */
  get cursor(): string {
    return this.syncCursor;
  }

  get state(): ConnectionState {
    return this.current;
  }

  private get ended(): boolean {
    return this.current === "closed";
  }

  /** The last seq delivered (or the position sync started it at) for a conversation this session tracks. */
  lastSeq(conversationId: string): bigint | undefined {
    return this.last.get(conversationId);
  }

  /** Every tracked conversation's last seq (to persist, and pass back as `SessionOptions.lastSeq`). */
  lastSeqs(): Record<string, bigint> {
    return Object.fromEntries(this.last);
  }

  on(event: "state", cb: (s: StateEvent) => void): () => void;
  on(event: "message", cb: (m: Message) => void): () => void;
  on(event: "conversation", cb: (c: Conversation) => void): () => void;
  on(event: "removed", cb: (conversationId: string) => void): () => void;
  on(event: "receipt", cb: (r: Receipt) => void): () => void;
  on(event: "typing", cb: (t: Typing) => void): () => void;
  on(event: "presence", cb: (p: Presence) => void): () => void;
  on(event: "error", cb: (e: ConfabError) => void): () => void;
  /** After each (re)connect: the sync's pages are in, and live frames follow for every conversation. */
  on(event: "synced", cb: () => void): () => void;
  on<K extends keyof Events>(event: K, cb: (v: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(cb as (v: never) => void);
    return () => set.delete(cb as (v: never) => void);
  }

  /**
   * Sends a TEXT message. Queued while disconnected and written again after
   * every reconnect with the same client_msg_id until the server acknowledges
   * it (the server stores it once). Rejects with a `ConfabError` (kind
   * `refused`) when the server refuses it, or `closed` when the session closes first.
   */
  send(
    conversationId: string,
    body: string,
    opts: { replyToSeq?: bigint; clientMsgId?: string } = {},
  ): Promise<{ seq: bigint; clientMsgId: string }> {
    const clientMsgId = opts.clientMsgId ?? newClientMsgId();
    return new Promise((resolve, reject) => {
      if (this.ended) {
        reject(new ConfabError("closed", Code.CANCELLED, "the session is closed"));
        return;
      }
      const key = `${conversationId}\u0000${clientMsgId}`;
      const existing = this.sends.get(key);
      if (existing) {
        existing.waiters.push({ resolve, reject });
        return;
      }
      const frame = create(ClientFrameSchema, {
        frame: {
          case: "send",
          value: { conversationId, clientMsgId, body, replyToSeq: opts.replyToSeq ?? 0n },
        },
      });
      const pending: PendingSend = {
        frame,
        conversationId,
        clientMsgId,
        writtenOn: 0,
        size: 0,
        refused: false,
        waiters: [{ resolve, reject }],
      };
      this.sends.set(key, pending);
      if (this.live) this.writeSend(pending);
    });
  }

  /**
   * Moves this user's read position in a conversation to `seq` (answered by
   * the server's `read` frame). Queued while disconnected.
   */
  markRead(conversationId: string, seq: bigint, opts: { private?: boolean } = {}): Promise<ReadState> {
    return new Promise((resolve, reject) => {
      if (this.ended) {
        reject(new ConfabError("closed", Code.CANCELLED, "the session is closed"));
        return;
      }
      const key = `${conversationId}\u0000${seq}`;
      const existing = this.reads.get(key);
      if (existing) {
        existing.waiters.push({ resolve, reject });
        return;
      }
      const frame = create(ClientFrameSchema, {
        frame: { case: "read", value: { conversationId, seq, private: opts.private ?? false } },
      });
      this.reads.set(key, { frame, waiters: [{ resolve, reject }] });
      if (this.live) this.write(frame);
    });
  }

  /** Says this user is typing in a conversation, or stopped. Dropped while disconnected (typing is not stored). */
  typing(conversationId: string, active: boolean): void {
    if (!this.live) return;
    this.write(create(ClientFrameSchema, { frame: { case: "typing", value: { conversationId, active } } }));
  }

  /** Ends the session for good: the socket is closed, pending sends and reads are rejected. */
  close(): void {
    this.shutdown(undefined);
  }

  // ---- connection lifecycle ----

  private async open(): Promise<void> {
    if (this.ended) return;
    const id = ++this.connId;
    this.live = false;
    this.heard = false;
    this.resuming.clear();
    let token: string;
    try {
      const t = this.config.token;
      token = typeof t === "string" ? t : await t();
    } catch (e) {
      if (id !== this.connId) return;
      const err = new ConfabError("closed", Code.UNAUTHENTICATED, `could not get a token: ${(e as Error)?.message ?? e}`);
      this.emit("error", err);
      this.disconnected(err);
      return;
    }
    if (id !== this.connId || this.ended) return;
    this.self = jwtSubject(token);
    let ws: WebSocketLike;
    try {
      ws = await openWebSocket(this.config.url, [FORMAT_PROTOCOL, BEARER_PREFIX + token], this.opts.webSocket);
    } catch (e) {
      if (id !== this.connId) return;
      const err = new ConfabError("closed", Code.UNAVAILABLE, `cannot open a WebSocket: ${(e as Error)?.message ?? e}`);
      this.disconnected(err);
      return;
    }
    if (id !== this.connId || this.ended) {
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
      return;
    }
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (id === this.connId) this.opened();
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (id === this.connId) this.received(ev.data);
    };
    ws.onclose = (ev: { code: number; reason: string }) => {
      if (id !== this.connId) return;
      this.closedBy(ev.code, ev.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  private opened(): void {
    const ws = this.ws;
    if (!ws) return;
    if (ws.protocol && ws.protocol !== FORMAT_PROTOCOL) {
      this.protocolError(`the server chose subprotocol "${ws.protocol}", not ${FORMAT_PROTOCOL}`);
      return;
    }
    this.live = true;
    // Resume first: it is the stream's first frame, applied before any live
    // delivery, so nothing after these positions is missed. Then sync, whose
    // new conversations the server carries from their last_seq on.
    const lastSeq: Record<string, bigint> = Object.fromEntries(this.last);
    for (const id of this.last.keys()) this.resuming.add(id);
    this.write(create(ClientFrameSchema, { frame: { case: "resume", value: { lastSeq } } }));
    this.write(create(ClientFrameSchema, { frame: { case: "sync", value: { cursor: this.syncCursor } } }));
    for (const s of this.sends.values()) this.writeSend(s);
    for (const r of this.reads.values()) this.write(r.frame);
    this.awaitingPong = undefined;
    const pingMs = this.opts.pingMs ?? 15000;
    if (pingMs > 0) this.pingTimer = setInterval(() => this.pingTick(), pingMs);
    this.setState("open");
  }

  private pingTick(): void {
    if (!this.live) return;
    if (this.awaitingPong !== undefined) {
      this.dropConnection(new ConfabError("closed", Code.DEADLINE_EXCEEDED, "no pong from the server; reconnecting"));
      return;
    }
    this.awaitingPong = ++this.pingNonce;
    this.write(create(ClientFrameSchema, { frame: { case: "ping", value: { nonce: this.awaitingPong } } }));
  }

  private closedBy(code: number, reason: string): void {
    const err = closeCodeError(code, reason);
    const connId = this.connId;
    if (code === 4016) {
      this.authFailures++;
      const max = this.opts.maxAuthFailures ?? (typeof this.config.token === "string" ? 1 : 3);
      if (this.authFailures >= max) {
        const final = new ConfabError(
          "closed",
          Code.UNAUTHENTICATED,
          `authentication failed (${this.authFailures}x, close 4016)${reason ? `: ${reason}` : ""}`,
        );
        this.emit("error", final);
        this.shutdown(final);
        return;
      }
    }
    if (code === 1009) {
      // The biggest send written on this connection is the likely culprit:
      // refuse it rather than write it forever.
      let worst: PendingSend | undefined;
      for (const s of this.sends.values()) {
        if (s.writtenOn === connId && (!worst || s.size > worst.size)) worst = s;
      }
      if (worst) {
        this.sends.delete(`${worst.conversationId}\u0000${worst.clientMsgId}`);
        for (const w of worst.waiters) w.reject(new ConfabError("refused", Code.RESOURCE_EXHAUSTED, err.message, worst.conversationId));
      }
    }
    if (code === 1009 || code === 1003 || code === 4003) this.emit("error", err);
    this.disconnected(err);
  }

  /** The connection is gone: reconnect after a backoff. */
  private disconnected(error: ConfabError, immediately = false): void {
    this.stopConnection();
    if (this.ended) return;
    this.attempt++;
    this.setState("reconnecting", error);
    const delay = immediately ? 0 : this.backoffMs(this.attempt);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delay);
  }

  private backoffMs(attempt: number): number {
    const initial = this.opts.backoff?.initialMs ?? 500;
    const max = this.opts.backoff?.maxMs ?? 30000;
    const ceiling = Math.min(max, initial * 2 ** Math.min(attempt - 1, 30));
    // "Equal jitter": half fixed, half random, so reconnects spread out but never hammer.
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  /** Abandons the current socket at once (a dead or misbehaving connection) and reconnects. */
  private dropConnection(error: ConfabError, immediately = false): void {
    this.disconnected(error, immediately);
  }

  /** Forgets the current socket: closed politely (`graceful`, the user's `close()`), else dropped at once. */
  private stopConnection(graceful = false): void {
    this.live = false;
    this.connId++;
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        // `ws` (Node) can drop the TCP connection without waiting for a close handshake.
        if (!graceful && typeof ws.terminate === "function") ws.terminate();
        else ws.close(1000, graceful ? "closed by the client" : "reconnecting");
      } catch {
        /* already closed */
      }
    }
  }

  private shutdown(error: ConfabError | undefined): void {
    if (this.ended) return;
    this.stopConnection(error === undefined);
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const why = error ?? new ConfabError("closed", Code.CANCELLED, "the session was closed");
    for (const s of this.sends.values()) for (const w of s.waiters) w.reject(why);
    for (const r of this.reads.values()) for (const w of r.waiters) w.reject(why);
    this.sends.clear();
    this.reads.clear();
    this.setState("closed", error);
  }

  private setState(state: ConnectionState, error?: ConfabError): void {
    this.current = state;
    this.emit("state", { state, attempt: this.attempt, ...(error ? { error } : {}) });
  }

  private write(frame: ClientFrame): number {
    const bytes = toBinary(ClientFrameSchema, frame);
    try {
      this.ws?.send(bytes);
    } catch {
      /* the close event follows */
    }
    return bytes.length;
  }

  private writeSend(s: PendingSend): void {
    s.size = this.write(s.frame);
    s.writtenOn = this.connId;
    s.refused = false;
  }

  /**
   * Writes the sends refused for now again after a backoff, all in one round
   * and in the order they were made (so a burst over the rate limit keeps its order).
   */
  private scheduleSendRetry(): void {
    if (this.retryTimer !== undefined || this.ended) return;
    this.sendRetries++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.live) return; // written again on reconnect
      for (const p of this.sends.values()) if (p.refused) this.writeSend(p);
    }, this.backoffMs(this.sendRetries));
  }

  private protocolError(message: string): void {
    const err = new ConfabError("protocol", Code.INTERNAL, message);
    this.emit("error", err);
    this.dropConnection(err);
  }

  // ---- frames from the server ----

  private received(data: unknown): void {
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this.protocolError(`a ${typeof data} WebSocket message on ${FORMAT_PROTOCOL} (expected binary)`);
      return;
    }
    let frame: ServerFrame;
    try {
      frame = fromBinary(ServerFrameSchema, bytes);
    } catch (e) {
      this.protocolError(`a message that is not a ServerFrame: ${(e as Error).message}`);
      return;
    }
    this.handleFrame(frame);
  }

  /** @internal Handles one decoded server frame (exposed for unit tests of the ordering rules). */
  handleFrame(frame: ServerFrame): void {
    if (!this.heard) {
      // Past authentication: the server answered.
      this.heard = true;
      this.authFailures = 0;
      this.attempt = 0;
    }
    const f = frame.frame;
    switch (f.case) {
      case "message":
        this.onMessage(f.value);
        break;
      case "ack": {
        const a = f.value;
        const key = `${a.conversationId}\u0000${a.clientMsgId}`;
        const s = this.sends.get(key);
        if (!s) break; // an answer to a send already settled
        if (a.error && a.error.code !== Code.OK) {
          if (RETRY_SEND_CODES.has(a.error.code)) {
            s.refused = true;
            this.scheduleSendRetry();
            break;
          }
          this.sends.delete(key);
          const err = new ConfabError("refused", a.error.code, a.error.message, a.conversationId);
          for (const w of s.waiters) w.reject(err);
          break;
        }
        this.sends.delete(key);
        this.sendRetries = 0;
        for (const w of s.waiters) w.resolve({ seq: a.seq, clientMsgId: a.clientMsgId });
        break;
      }
      case "pong":
        if (f.value.nonce === this.awaitingPong) this.awaitingPong = undefined;
        break;
      case "caughtUp": {
        const c = f.value;
        if (c.conversationId === "") {
          if (c.error && c.error.code !== Code.OK) {
            this.emit("error", new ConfabError("refused", c.error.code, `sync refused: ${c.error.message}`));
            if (c.error.code === Code.INVALID_ARGUMENT && this.syncCursor !== "") {
              // A cursor the server does not take (another user's, or corrupt): start over.
              this.syncCursor = "";
              if (this.live) this.write(create(ClientFrameSchema, { frame: { case: "sync", value: { cursor: "" } } }));
            }
          } else {
            this.emit("synced", undefined);
          }
          break;
        }
        this.resuming.delete(c.conversationId);
        if (c.error && c.error.code !== Code.OK) {
          this.emit(
            "error",
            new ConfabError("refused", c.error.code, `resume of ${c.conversationId} refused: ${c.error.message}`, c.conversationId),
          );
          if (DROP_CONVERSATION_CODES.has(c.error.code)) this.last.delete(c.conversationId);
        }
        break;
      }
      case "receipt":
        this.emit("receipt", f.value);
        break;
      case "read": {
        const r = f.value;
        const key = `${r.conversationId}\u0000${r.seq}`;
        const p = this.reads.get(key);
        if (!p) break;
        this.reads.delete(key);
        if (r.error && r.error.code !== Code.OK) {
          const err = new ConfabError("refused", r.error.code, r.error.message, r.conversationId);
          for (const w of p.waiters) w.reject(err);
        } else if (!r.state) {
          const err = new ConfabError("protocol", Code.INTERNAL, "a read ack without state or error", r.conversationId);
          for (const w of p.waiters) w.reject(err);
        } else {
          for (const w of p.waiters) w.resolve(r.state);
        }
        break;
      }
      case "typing":
        if (f.value.error && f.value.error.code !== Code.OK) {
          const e = f.value.error;
          this.emit("error", new ConfabError("refused", e.code, `typing refused: ${e.message}`, f.value.conversationId));
        } else {
          this.emit("typing", f.value);
        }
        break;
      case "sync": {
        const page = f.value;
        for (const c of page.conversations) {
          // A conversation this session did not know: tracked from its last
          // seq on (older messages are for GetHistory), as the server carries it.
          if (!this.last.has(c.id)) this.last.set(c.id, c.lastSeq);
          this.emit("conversation", c);
        }
        for (const id of page.removedConversationIds) {
          this.last.delete(id);
          this.gapsRetried.delete(id);
          this.emit("removed", id);
        }
        if (page.cursor) this.syncCursor = page.cursor;
        break;
      }
      case "presence":
        this.emit("presence", f.value);
        break;
      default:
        // A frame kind newer than this client: ignored, as protobuf's evolution rules expect.
        break;
    }
  }

  /** Whether `m` is the event that (re-)added this user: what lies before it may not be readable (SINCE_JOINED). */
  private joinsSelf(m: Message): boolean {
    if (m.kind !== MessageKind.SYSTEM || !m.membership || this.self === undefined) return false;
    const change = m.membership.change;
    return (
      (change === MembershipEvent_Change.ADDED || change === MembershipEvent_Change.CREATED) &&
      m.membership.userIds.includes(this.self)
    );
  }

  private onMessage(m: Message): void {
    const conv = m.conversationId;
    const last = this.last.get(conv);
    if (last === undefined) {
      // A conversation this session does not track yet (new, or joined
      // live): the server carries it from here on.
      this.last.set(conv, m.seq);
      this.emit("message", m);
      return;
    }
    if (m.seq <= last) {
      this.emit(
        "error",
        new ConfabError("repeat", Code.ALREADY_EXISTS, `seq ${m.seq} of ${conv} arrived again (last seen ${last}); dropped`, conv),
      );
      return;
    }
    if (m.seq !== last + 1n && !this.joinsSelf(m)) {
      const gap = `${last}>${m.seq}`;
      if (this.gapsRetried.get(conv) !== gap) {
        this.gapsRetried.set(conv, gap);
        const err = new ConfabError(
          "gap",
          Code.DATA_LOSS,
          `seq ${m.seq} of ${conv} arrived after ${last}: seqs ${last + 1n}..${m.seq - 1n} are missing; reconnecting to resume from ${last}`,
          conv,
        );
        this.emit("error", err);
        // Resuming on a new stream sends everything after `last` in order.
        this.dropConnection(err, true);
        return;
      }
      // The same gap again after resuming: history has nothing in between for this user.
      this.emit(
        "error",
        new ConfabError(
          "gap",
          Code.DATA_LOSS,
          `seq ${m.seq} of ${conv} follows ${last} again after resuming; history has nothing in between for this user, taken`,
          conv,
        ),
      );
    }
    this.gapsRetried.delete(conv);
    this.last.set(conv, m.seq);
    // Removed from it: nothing more comes, and it is not resumed (which the
    // server would refuse); the next sync reports it removed. Added again,
    // it is tracked afresh from the first message that comes.
    if (this.removesSelf(m)) this.last.delete(conv);
    this.emit("message", m);
  }

  private removesSelf(m: Message): boolean {
    return (
      m.kind === MessageKind.SYSTEM &&
      m.membership?.change === MembershipEvent_Change.REMOVED &&
      this.self !== undefined &&
      m.membership.userIds.includes(this.self)
    );
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set || set.size === 0) {
      if (event === "error") console.warn(`confab: ${(value as ConfabError).message}`);
      return;
    }
    for (const cb of [...set]) {
      try {
        (cb as (v: Events[K]) => void)(value);
      } catch (e) {
        console.error(`confab: a "${event}" listener threw`, e);
      }
    }
  }
}
