// Against a real `confab dev` (test/support/server.ts): no mock server.
import { ConnectError, Code as ConnectCode } from "@connectrpc/connect";
import { fromBinary } from "@bufbuild/protobuf";
import WebSocket from "ws";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import {
  authInfo,
  Confab,
  ConfabError,
  ConversationKind,
  devToken,
  MessageKind,
  ServerFrameSchema,
  type Conversation,
  type Presence,
  type Receipt,
  type ServerFrame,
  type Session,
  type SessionOptions,
  type StateEvent,
  type Typing,
  type WebSocketFactory,
  type WebSocketLike,
} from "../../src/index";
import { next, Recorder, until, withTimeout } from "../support/events";
import { startProxy } from "../support/proxy";
import { startServer, type TestServer } from "../support/server";

let server: TestServer;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});

const sessions: Session[] = [];
afterEach(() => sessions.splice(0).forEach((s) => s.close()));

let userCounter = 0;
/** A fresh user (ids unique per test, so tests never see each other's traffic). */
async function user(name: string): Promise<{ id: string; confab: Confab; token: string }> {
  const id = `${name}-${++userCounter}-${Math.random().toString(36).slice(2, 8)}`;
  const token = await devToken(server.baseUrl, id);
  return { id, token, confab: new Confab({ baseUrl: server.baseUrl, token }) };
}

/** A session that is synced (live for every conversation). */
async function live(confab: Confab, opts: SessionOptions = {}): Promise<Session> {
  const s = confab.connect({ backoff: { initialMs: 50, maxMs: 500 }, ...opts });
  sessions.push(s);
  await next(s, "synced");
  return s;
}

/** A real `ws` socket whose incoming frames pass through `pass` first (to lose one in transit). */
class FilteringSocket implements WebSocketLike {
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(
    private readonly ws: WebSocket,
    pass: (frame: ServerFrame) => boolean,
  ) {
    ws.onopen = (ev) => this.onopen?.(ev);
    ws.onclose = (ev) => this.onclose?.(ev);
    ws.onerror = (ev) => this.onerror?.(ev);
    ws.onmessage = (ev) => {
      if (pass(fromBinary(ServerFrameSchema, new Uint8Array(ev.data as ArrayBuffer)))) this.onmessage?.(ev);
    };
  }
  get binaryType(): string {
    return this.ws.binaryType;
  }
  set binaryType(v: string) {
    this.ws.binaryType = v as WebSocket["binaryType"];
  }
  get protocol(): string {
    return this.ws.protocol;
  }
  send(d: Uint8Array): void {
    this.ws.send(d);
  }
  close(code?: number, reason?: string): void {
    this.ws.close(code, reason);
  }
  terminate(): void {
    this.ws.terminate();
  }
}

/** Opens real `ws` sockets and keeps them, so a test can cut one. */
function capturingSockets(): { factory: WebSocketFactory; sockets: WebSocket[] } {
  const sockets: WebSocket[] = [];
  const factory: WebSocketFactory = (url, protocols) => {
    const ws = new WebSocket(url, protocols);
    sockets.push(ws);
    return ws as unknown as WebSocketLike;
  };
  return { factory, sockets };
}

async function group(owner: Confab, members: string[]): Promise<Conversation> {
  return owner.chat.createConversation({ kind: ConversationKind.GROUP, title: "t", memberIds: members });
}

describe("HTTP endpoints", () => {
  test("GET /v1/auth and POST /v1/dev/token", async () => {
    expect(await authInfo(server.baseUrl)).toEqual({ devTokens: true });
    const token = await devToken(server.baseUrl, "someone");
    expect(token.split(".")).toHaveLength(3);
  });
});

describe("sessions against confab dev", () => {
  test("alice and bob exchange messages: each arrives once, in order, for both", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(alice.confab, [bob.id]);
    expect(conv.lastSeq).toBe(1n);
    const a = await live(alice.confab);
    const b = await live(bob.confab);
    expect(b.lastSeq(conv.id)).toBe(1n); // learned from sync, tracked from its last seq
    const ra = new Recorder(a);
    const rb = new Recorder(b);

    const acks = [];
    for (let i = 1; i <= 10; i++) acks.push(await a.send(conv.id, `hello ${i}`));
    expect(acks.map((x) => x.seq)).toEqual([2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n]);
    const back = await b.send(conv.id, "hi alice");
    expect(back.seq).toBe(12n);

    await until(() => rb.seqs(conv.id).length === 11 && ra.seqs(conv.id).length === 11, "both to have 11 messages");
    const want = [2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n, 12n];
    expect(rb.seqs(conv.id)).toEqual(want);
    expect(ra.seqs(conv.id)).toEqual(want);
    expect(rb.messages[0]).toMatchObject({ senderId: alice.id, body: "hello 1", kind: MessageKind.TEXT, clientMsgId: acks[0].clientMsgId });
    expect(ra.messages.at(-1)).toMatchObject({ senderId: bob.id, body: "hi alice" });
    expect(b.lastSeq(conv.id)).toBe(12n);
    expect([...ra.errors, ...rb.errors]).toEqual([]);
  });

  test("a reply carries reply_to_seq; edit, delete and reaction arrive as message events", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await alice.confab.chat.createConversation({ kind: ConversationKind.DIRECT, memberIds: [bob.id] });
    const b = await live(bob.confab);
    const a = await live(alice.confab);
    const rb = new Recorder(b);

    const first = await a.send(conv.id, "original");
    const reply = await b.send(conv.id, "a reply", { replyToSeq: first.seq });
    await alice.confab.chat.editMessage({ conversationId: conv.id, seq: first.seq, body: "edited", clientMsgId: "e1" });
    await bob.confab.chat.react({ conversationId: conv.id, seq: first.seq, emoji: "👍", clientMsgId: "r1" });
    await alice.confab.chat.deleteMessage({ conversationId: conv.id, seq: first.seq, clientMsgId: "d1" });

    await until(() => rb.seqs(conv.id).length === 5, "five events");
    const [text, replyMsg, edit, reaction, del] = rb.messages;
    expect(text).toMatchObject({ kind: MessageKind.TEXT, body: "original" });
    expect(replyMsg).toMatchObject({ kind: MessageKind.TEXT, seq: reply.seq, replyToSeq: first.seq });
    expect(edit).toMatchObject({ kind: MessageKind.EDIT, targetSeq: first.seq, body: "edited", senderId: alice.id });
    expect(reaction).toMatchObject({ kind: MessageKind.REACTION, targetSeq: first.seq, emoji: "👍", reactionRemoved: false, senderId: bob.id });
    expect(del).toMatchObject({ kind: MessageKind.DELETE, targetSeq: first.seq });
    expect(rb.seqs(conv.id)).toEqual([first.seq, first.seq + 1n, first.seq + 2n, first.seq + 3n, first.seq + 4n]);
    expect(rb.errors).toEqual([]);
  });

  test("receipts, typing and presence reach the other user", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await alice.confab.chat.createConversation({ kind: ConversationKind.DIRECT, memberIds: [bob.id] });
    const a = await live(alice.confab);
    const bobOnline = next<Presence>(a, "presence", (p) => p.userId === bob.id && p.online);
    const b = await live(bob.confab);
    await bobOnline;

    const { seq } = await a.send(conv.id, "read me");
    const receipt = next<Receipt>(a, "receipt", (r) => r.userId === bob.id);
    const state = await b.markRead(conv.id, seq);
    expect(state).toMatchObject({ conversationId: conv.id, readSeq: seq, unreadCount: 0n });
    expect(await receipt).toMatchObject({ conversationId: conv.id, userId: bob.id, readSeq: seq });

    const typing = next<Typing>(a, "typing", (t) => t.userId === bob.id);
    b.typing(conv.id, true);
    expect(await typing).toMatchObject({ conversationId: conv.id, userId: bob.id, active: true });

    const bobOffline = next<Presence>(a, "presence", (p) => p.userId === bob.id && !p.online, 30_000);
    b.close();
    expect(await bobOffline).toMatchObject({ online: false });
  });

  test("a refused send and a refused read reject with the server's code", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(bob.confab, []); // alice is no member
    const a = await live(alice.confab);
    const errors = new Recorder(a).errors;
    const refused = await a.send(conv.id, "let me in").catch((e) => e);
    expect(refused).toBeInstanceOf(ConfabError);
    expect(refused.kind).toBe("refused");
    expect([5, 7]).toContain(refused.code); // NOT_FOUND or PERMISSION_DENIED
    const readRefused = await a.markRead(conv.id, 1n).catch((e) => e);
    expect(readRefused).toMatchObject({ kind: "refused" });
    expect(errors).toEqual([]);
  });

  test("bob's socket is cut while alice sends 50: bob reconnects by itself, every message once, in order", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(alice.confab, [bob.id]);
    const a = await live(alice.confab);
    const { factory, sockets } = capturingSockets();
    const b = await live(bob.confab, { webSocket: factory });
    const rb = new Recorder(b);
    const states: string[] = [];
    b.on("state", (s) => states.push(s.state));

    const sends: Promise<{ seq: bigint }>[] = [];
    for (let i = 1; i <= 50; i++) {
      sends.push(a.send(conv.id, `n${i}`));
      if (i === 10) await until(() => rb.messages.length >= 3, "bob to see traffic");
      if (i === 15) {
        expect(rb.messages.length).toBeLessThan(15);
        sockets[0].terminate(); // the connection drops mid-traffic
      }
      if (i % 5 === 0) await sends[i - 1];
    }
    // Concurrent sends take their seqs in the order the server commits them
    // (not necessarily the order sent): every one is acked with a distinct seq.
    const acked = await Promise.all(sends);
    const range = Array.from({ length: 50 }, (_, i) => BigInt(i + 2));
    expect(acked.map((x) => x.seq).sort((x, y) => (x < y ? -1 : x > y ? 1 : 0))).toEqual(range);
    await until(() => rb.seqs(conv.id).length >= 50, "bob to have all 50", 30_000);
    expect(rb.seqs(conv.id)).toEqual(range); // once each, in seq order, across the reconnect
    const bodyOfSeq = new Map(acked.map((x, i) => [x.seq, `n${i + 1}`]));
    expect(rb.messages.map((m) => m.body)).toEqual(range.map((seq) => bodyOfSeq.get(seq)));
    expect(rb.errors).toEqual([]);
    expect(sockets.length).toBeGreaterThanOrEqual(2);
    expect(states).toContain("reconnecting");
    expect(states.at(-1)).toBe("open");
  });

  test("a dead network path (no FIN, no RST): the missing pong drops it; bob reconnects and misses nothing", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(alice.confab, [bob.id]);
    const proxy = await startProxy(server.baseUrl);
    try {
      const viaProxy = new Confab({ baseUrl: proxy.url, token: bob.token });
      const b = await live(viaProxy, { pingMs: 300 });
      const rb = new Recorder(b);
      const states: StateEvent[] = [];
      b.on("state", (s) => states.push(s));
      await alice.confab.chat.sendMessage({ conversationId: conv.id, clientMsgId: "d0", body: "before" });
      await until(() => rb.seqs(conv.id).length === 1, "the first message");

      proxy.blackhole();
      for (let i = 1; i <= 10; i++) {
        await alice.confab.chat.sendMessage({ conversationId: conv.id, clientMsgId: `d${i}`, body: `during ${i}` });
      }
      await until(() => rb.seqs(conv.id).length === 11, "all 11 after the reconnect");
      expect(rb.seqs(conv.id)).toEqual(Array.from({ length: 11 }, (_, i) => BigInt(i + 2)));
      expect(states.find((s) => s.state === "reconnecting")?.error).toMatchObject({ code: 4 }); // DEADLINE_EXCEEDED: no pong
      expect(rb.errors).toEqual([]);
    } finally {
      await proxy.close();
    }
  });

  test("a send whose ack is lost to a disconnect is retried with the same client_msg_id, acked once, stored once", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(alice.confab, [bob.id]);
    const b = await live(bob.confab);
    const rb = new Recorder(b);

    // Alice's first connection loses the ack: the server stored the message,
    // then the connection drops before the ack reaches her session.
    const sockets: WebSocket[] = [];
    let ackDropped = false;
    const factory: WebSocketFactory = (url, protocols) => {
      const ws = new WebSocket(url, protocols);
      sockets.push(ws);
      const n = sockets.length;
      return new FilteringSocket(ws, (frame) => {
        if (n === 1 && frame.frame.case === "ack") {
          ackDropped = true;
          ws.terminate();
          return false;
        }
        return true;
      });
    };
    const a = await live(alice.confab, { webSocket: factory });
    const result = await a.send(conv.id, "exactly once", { clientMsgId: "once-1" });
    expect(ackDropped).toBe(true);
    expect(sockets.length).toBe(2);
    expect(result).toEqual({ seq: 2n, clientMsgId: "once-1" });

    // Stored once: history has it once, and the next message takes the next seq.
    const next3 = await a.send(conv.id, "after");
    expect(next3.seq).toBe(3n);
    const history = await bob.confab.chat.getHistory({ conversationId: conv.id, afterSeq: 0n });
    expect(history.messages.filter((m) => m.clientMsgId === "once-1").map((m) => m.seq)).toEqual([2n]);
    await until(() => rb.seqs(conv.id).length === 2, "bob to get both");
    expect(rb.seqs(conv.id)).toEqual([2n, 3n]);
    expect(rb.errors).toEqual([]);
  });

  test("a send written just before the socket drops is delivered once after the reconnect", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(alice.confab, [bob.id]);
    const b = await live(bob.confab);
    const rb = new Recorder(b);
    const { factory, sockets } = capturingSockets();
    const a = await live(alice.confab, { webSocket: factory });
    const pending = a.send(conv.id, "in flight", { clientMsgId: "flight-1" });
    sockets[0].terminate();
    expect(await pending).toEqual({ seq: 2n, clientMsgId: "flight-1" });
    expect((await a.send(conv.id, "next")).seq).toBe(3n);
    await until(() => rb.seqs(conv.id).length === 2, "bob to get both");
    expect(rb.messages.map((m) => m.clientMsgId)).toEqual(["flight-1", rb.messages[1].clientMsgId]);
  });

  test("a new session from a persisted cursor and last seqs gets exactly what it missed", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const conv = await group(alice.confab, [bob.id]);
    const b1 = await live(bob.confab);
    await alice.confab.chat.sendMessage({ conversationId: conv.id, clientMsgId: "p1", body: "seen" });
    await until(() => b1.lastSeq(conv.id) === 2n, "bob to see seq 2");
    const saved = { cursor: b1.cursor, lastSeq: b1.lastSeqs() };
    b1.close();
    expect(saved.cursor).not.toBe("");

    for (let i = 0; i < 5; i++) {
      await alice.confab.chat.sendMessage({ conversationId: conv.id, clientMsgId: `q${i}`, body: `missed ${i}` });
    }
    const conv2 = await group(alice.confab, [bob.id]); // new while bob was away: learned from sync

    const b2 = bob.confab.connect(saved);
    sessions.push(b2);
    const rb = new Recorder(b2);
    const convs: Conversation[] = [];
    b2.on("conversation", (c) => convs.push(c));
    await next(b2, "synced");
    await until(() => rb.seqs(conv.id).length === 5, "the 5 missed messages");
    expect(rb.seqs(conv.id)).toEqual([3n, 4n, 5n, 6n, 7n]);
    expect(convs.map((c) => c.id).sort()).toEqual([conv.id, conv2.id].sort());
    expect(b2.lastSeq(conv2.id)).toBe(1n);
    expect(rb.errors).toEqual([]);
  });

  test("a conversation created while connected arrives live from seq 1; a removal is reported by the next sync", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const { factory, sockets } = capturingSockets();
    const b = await live(bob.confab, { webSocket: factory });
    const rb = new Recorder(b);
    const removed: string[] = [];
    b.on("removed", (id) => removed.push(id));

    const conv = await group(alice.confab, [bob.id]);
    await alice.confab.chat.sendMessage({ conversationId: conv.id, clientMsgId: "l1", body: "live" });
    await until(() => rb.seqs(conv.id).length === 2, "the CREATED event and the message");
    expect(rb.messages[0]).toMatchObject({ seq: 1n, kind: MessageKind.SYSTEM });
    expect(rb.messages[1]).toMatchObject({ seq: 2n, body: "live" });

    await alice.confab.chat.removeMember({ conversationId: conv.id, memberId: bob.id });
    await until(() => rb.seqs(conv.id).length === 3, "the REMOVED event");
    expect(rb.messages[2]).toMatchObject({ seq: 3n, kind: MessageKind.SYSTEM, membership: { userIds: [bob.id] } });
    expect(b.lastSeq(conv.id)).toBeUndefined(); // not resumed on the next connect

    const synced = next(b, "synced");
    sockets[0].terminate();
    await synced;
    expect(removed).toEqual([conv.id]);
    expect(b.lastSeq(conv.id)).toBeUndefined();
    expect(rb.errors).toEqual([]);
  });

  test("a bad token: the session ends closed with UNAUTHENTICATED; unary calls fail with Unauthenticated", async () => {
    const bad = new Confab({ baseUrl: server.baseUrl, token: "not-a-jwt" });
    const s = bad.connect({ backoff: { initialMs: 10, maxMs: 50 } });
    sessions.push(s);
    const errors = new Recorder(s).errors;
    const closed = await next<StateEvent>(s, "state", (e) => e.state === "closed");
    expect(closed.error).toBeInstanceOf(ConfabError);
    expect(closed.error).toMatchObject({ kind: "closed", code: 16 });
    expect(errors.at(-1)).toMatchObject({ kind: "closed", code: 16 });
    expect(s.state).toBe("closed");
    await expect(s.send("c", "x")).rejects.toMatchObject({ kind: "closed" });

    const err = await bad.chat.listConversations({}).catch((e) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(ConnectCode.Unauthenticated);
  });

  test("a token function that keeps giving bad tokens: three tries, then closed with UNAUTHENTICATED", async () => {
    let calls = 0;
    const confab = new Confab({ baseUrl: server.baseUrl, token: async () => `bad-${++calls}` });
    const s = confab.connect({ backoff: { initialMs: 10, maxMs: 50 } });
    sessions.push(s);
    const closed = await next<StateEvent>(s, "state", (e) => e.state === "closed");
    // Three 4016 closes in a row end it. (Now and then the server's 4016
    // close frame is lost when the client has already sent its first
    // frames: the gateway drops the TCP connection right after writing the
    // close frame, without the closing handshake, and the client's unread
    // frames make that a reset. That close reads as 1006, a lost
    // connection, retried without counting: so at least 3 tries.)
    expect(calls).toBeGreaterThanOrEqual(3);
    expect(closed.error).toMatchObject({ kind: "closed", code: 16 });
    expect(closed.error?.message).toContain("token is malformed");
  });

  test("an expired token function is called again on reconnect", async () => {
    const alice = await user("alice");
    let calls = 0;
    const confab = new Confab({
      baseUrl: server.baseUrl,
      token: () => (++calls === 1 ? "expired.or.bad" : alice.token),
    });
    const s = confab.connect({ backoff: { initialMs: 10, maxMs: 50 } });
    sessions.push(s);
    const reconnecting = next<StateEvent>(s, "state", (e) => e.state === "reconnecting");
    await withTimeout(next(s, "synced"), 15_000, "synced after a fresh token");
    // 4016 (code 16); now and then the server's close frame is lost and it
    // reads as 1006, a lost connection (code 14): see the 4016 test above.
    expect([16, 14]).toContain((await reconnecting).error?.code);
    expect(calls).toBe(2);
  });
});
