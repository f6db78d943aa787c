// The session's frame handling, fed frames directly through a fake socket:
// ordering (gap, repeat), what it writes on (re)connect, send retries with
// the same client_msg_id, and the end after auth failures. Everything else is
// tested against a real server in test/integration.
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { afterEach, describe, expect, test } from "vitest";
import {
  ClientFrameSchema,
  Confab,
  MembershipEvent_Change,
  MessageKind,
  ServerFrameSchema,
  type ClientFrame,
  type ConfabError,
  type Session,
  type SessionOptions,
  type StateEvent,
  type WebSocketLike,
} from "../../src/index";
import { next, until } from "../support/events";

class FakeSocket implements WebSocketLike {
  binaryType = "blob";
  protocol = "";
  readonly sent: ClientFrame[] = [];
  closed: number | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}
  send(data: Uint8Array): void {
    this.sent.push(fromBinary(ClientFrameSchema, data));
  }
  close(code = 1000): void {
    this.closed = code;
  }
  terminate(): void {
    this.closed = 1006;
  }
  // The server's side:
  accept(): void {
    this.protocol = "confab.v1.proto";
    this.onopen?.({});
  }
  push(frame: MessageInitShape<typeof ServerFrameSchema>["frame"]): void {
    const bytes = toBinary(ServerFrameSchema, create(ServerFrameSchema, { frame }));
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
  hangUp(code: number, reason = ""): void {
    this.onclose?.({ code, reason });
  }
  kinds(): (string | undefined)[] {
    return this.sent.map((f) => f.frame.case);
  }
}

const sessions: Session[] = [];
afterEach(() => sessions.splice(0).forEach((s) => s.close()));

function fakeSession(opts: SessionOptions = {}, token: string | (() => string) = "header.e30.sig") {
  const sockets: FakeSocket[] = [];
  const session = new Confab({ baseUrl: "http://chat.test/base", token }).connect({
    backoff: { initialMs: 1, maxMs: 5 },
    pingMs: 0,
    ...opts,
    webSocket: (url, protocols) => {
      const s = new FakeSocket(url, protocols);
      sockets.push(s);
      return s;
    },
  });
  sessions.push(session);
  const socket = async (n: number) => {
    await until(() => sockets.length > n, `socket ${n}`, 2000);
    return sockets[n];
  };
  return { session, sockets, socket };
}

const msg = (conversationId: string, seq: bigint, extra: object = {}) =>
  ({ case: "message", value: { conversationId, seq, kind: MessageKind.TEXT, body: `m${seq}`, ...extra } }) as const;

describe("Session frame handling", () => {
  test("connects to ws(s)://<base>/v1/connect with the format and bearer subprotocols; resume, then sync", async () => {
    const { session, socket } = fakeSession({ lastSeq: { c1: 4n }, cursor: "cur0" });
    const s = await socket(0);
    expect(s.url).toBe("ws://chat.test/base/v1/connect");
    expect(s.protocols).toEqual(["confab.v1.proto", "confab.bearer.header.e30.sig"]);
    const open = next<StateEvent>(session, "state", (e) => e.state === "open");
    s.accept();
    await open;
    expect(s.kinds()).toEqual(["resume", "sync"]);
    expect(s.sent[0].frame.value).toMatchObject({ lastSeq: { c1: 4n } });
    expect(s.sent[1].frame.value).toMatchObject({ cursor: "cur0" });
  });

  test("tracks sync's new conversations from their last_seq; removed ones stop; cursor moves", async () => {
    const { session, socket } = fakeSession({ lastSeq: { c1: 4n } });
    const s = await socket(0);
    s.accept();
    const removed: string[] = [];
    session.on("removed", (id) => removed.push(id));
    s.push({
      case: "sync",
      value: { conversations: [{ id: "c1", lastSeq: 9n }, { id: "c2", lastSeq: 7n }], removedConversationIds: [], cursor: "k1", hasMore: true },
    });
    s.push({ case: "sync", value: { conversations: [], removedConversationIds: ["c3"], cursor: "k2" } });
    s.push({ case: "caughtUp", value: {} });
    expect(session.lastSeq("c1")).toBe(4n); // known: resumed from where it was
    expect(session.lastSeq("c2")).toBe(7n);
    expect(removed).toEqual(["c3"]);
    expect(session.cursor).toBe("k2");
  });

  test("a repeated seq is dropped and reported; in-order seqs are delivered", async () => {
    const { session, socket } = fakeSession({ lastSeq: { c: 2n } });
    const s = await socket(0);
    s.accept();
    const got: bigint[] = [];
    const errors: ConfabError[] = [];
    session.on("message", (m) => got.push(m.seq));
    session.on("error", (e) => errors.push(e));
    s.push(msg("c", 3n));
    s.push(msg("c", 3n));
    s.push(msg("c", 2n));
    s.push(msg("c", 4n));
    expect(got).toEqual([3n, 4n]);
    expect(errors.map((e) => [e.kind, e.conversationId])).toEqual([
      ["repeat", "c"],
      ["repeat", "c"],
    ]);
    expect(session.lastSeq("c")).toBe(4n);
  });

  test("a gap is reported, the message held back, and the session resumes from the last seq on a new connection", async () => {
    const { session, socket } = fakeSession({ lastSeq: { c: 2n } });
    const s0 = await socket(0);
    s0.accept();
    const got: bigint[] = [];
    const errors: ConfabError[] = [];
    session.on("message", (m) => got.push(m.seq));
    session.on("error", (e) => errors.push(e));
    s0.push(msg("c", 3n));
    s0.push(msg("c", 6n));
    expect(got).toEqual([3n]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ kind: "gap", code: 15, conversationId: "c" });
    expect(s0.closed).toBeDefined();
    const s1 = await socket(1);
    s1.accept();
    expect(s1.sent[0].frame).toMatchObject({ case: "resume", value: { lastSeq: { c: 3n } } });
    // Frames of the old socket are ignored from now on.
    s0.push(msg("c", 4n));
    s1.push(msg("c", 4n));
    s1.push(msg("c", 5n));
    s1.push(msg("c", 6n));
    s1.push({ case: "caughtUp", value: { conversationId: "c", seq: 6n } });
    expect(got).toEqual([3n, 4n, 5n, 6n]);
    expect(errors).toHaveLength(1);
  });

  test("the same gap after resuming is taken (history has nothing in between), and reported", async () => {
    const { session, socket } = fakeSession({ lastSeq: { c: 2n } });
    const s0 = await socket(0);
    s0.accept();
    const got: bigint[] = [];
    const errors: ConfabError[] = [];
    session.on("message", (m) => got.push(m.seq));
    session.on("error", (e) => errors.push(e));
    s0.push(msg("c", 5n));
    const s1 = await socket(1);
    s1.accept();
    s1.push(msg("c", 5n));
    expect(got).toEqual([5n]);
    expect(errors.map((e) => e.kind)).toEqual(["gap", "gap"]);
  });

  test("the event that adds this user may follow a gap (SINCE_JOINED history): no error", async () => {
    // A token whose payload is {"sub":"bob"}.
    const token = `x.${btoa(JSON.stringify({ sub: "bob" })).replace(/=+$/, "")}.y`;
    const { session, socket } = fakeSession({ lastSeq: { c: 2n } }, token);
    const s = await socket(0);
    s.accept();
    const got: bigint[] = [];
    const errors: ConfabError[] = [];
    session.on("message", (m) => got.push(m.seq));
    session.on("error", (e) => errors.push(e));
    s.push(msg("c", 9n, { kind: MessageKind.SYSTEM, membership: { change: MembershipEvent_Change.ADDED, userIds: ["bob"] } }));
    expect(got).toEqual([9n]);
    expect(errors).toEqual([]);
  });

  test("removed live: no longer tracked nor resumed; added again: tracked afresh without errors", async () => {
    const token = `x.${btoa(JSON.stringify({ sub: "bob" })).replace(/=+$/, "")}.y`;
    const { session, socket } = fakeSession({ lastSeq: { c: 2n } }, token);
    const s0 = await socket(0);
    s0.accept();
    const errors: ConfabError[] = [];
    session.on("error", (e) => errors.push(e));
    const system = (seq: bigint, change: MembershipEvent_Change) =>
      msg("c", seq, { kind: MessageKind.SYSTEM, membership: { change, userIds: ["bob"] } });
    s0.push(system(3n, MembershipEvent_Change.REMOVED));
    expect(session.lastSeq("c")).toBeUndefined();
    s0.push(msg("c", 5n)); // sent while bob was out (SHARED history), filled when he is back
    s0.push(system(6n, MembershipEvent_Change.ADDED));
    expect(session.lastSeq("c")).toBe(6n);
    expect(errors).toEqual([]);
  });

  test("a refused resume is reported and the conversation is no longer resumed", async () => {
    const { session, socket } = fakeSession({ lastSeq: { c: 2n, d: 1n } });
    const s0 = await socket(0);
    s0.accept();
    const errors: ConfabError[] = [];
    session.on("error", (e) => errors.push(e));
    s0.push({ case: "caughtUp", value: { conversationId: "c", error: { code: 7, message: "not a member" } } });
    s0.push({ case: "caughtUp", value: { conversationId: "d", seq: 1n } });
    expect(errors).toMatchObject([{ kind: "refused", code: 7, conversationId: "c" }]);
    expect(session.lastSeqs()).toEqual({ d: 1n });
    s0.hangUp(1006);
    const s1 = await socket(1);
    s1.accept();
    expect(s1.sent[0].frame).toMatchObject({ case: "resume", value: { lastSeq: { d: 1n } } });
  });

  test("a send is queued while disconnected, written again on reconnect with the same client_msg_id, resolved by its ack", async () => {
    const { session, socket } = fakeSession();
    const s0 = await socket(0);
    const sent = session.send("c", "hello", { replyToSeq: 3n });
    let settled = false;
    void sent.finally(() => (settled = true));
    s0.accept();
    expect(s0.kinds()).toEqual(["resume", "sync", "send"]);
    const first = s0.sent[2].frame.value as { clientMsgId: string; body: string; replyToSeq: bigint };
    expect(first).toMatchObject({ body: "hello", replyToSeq: 3n });
    expect(first.clientMsgId).toMatch(/^[0-9a-f-]{36}$/);
    s0.hangUp(1006);
    const s1 = await socket(1);
    s1.accept();
    expect(s1.kinds()).toEqual(["resume", "sync", "send"]);
    expect((s1.sent[2].frame.value as { clientMsgId: string }).clientMsgId).toBe(first.clientMsgId);
    expect(settled).toBe(false);
    s1.push({ case: "ack", value: { conversationId: "c", clientMsgId: first.clientMsgId, seq: 12n } });
    await expect(sent).resolves.toEqual({ seq: 12n, clientMsgId: first.clientMsgId });
  });

  test("a refused send rejects with the server's code", async () => {
    const { session, socket } = fakeSession();
    const s = await socket(0);
    s.accept();
    const sent = session.send("c", "x", { clientMsgId: "m1" });
    s.push({ case: "ack", value: { conversationId: "c", clientMsgId: "m1", error: { code: 7, message: "not a member" } } });
    await expect(sent).rejects.toMatchObject({ kind: "refused", code: 7, message: "not a member" });
  });

  test("sends refused for now (rate limit) are written again after a backoff, in order, and then acked", async () => {
    const { session, socket } = fakeSession();
    const s = await socket(0);
    s.accept();
    const one = session.send("c", "1", { clientMsgId: "a" });
    const two = session.send("c", "2", { clientMsgId: "b" });
    const limit = { code: 8, message: "rate limit" };
    s.push({ case: "ack", value: { conversationId: "c", clientMsgId: "a", error: limit } });
    s.push({ case: "ack", value: { conversationId: "c", clientMsgId: "b", error: limit } });
    await until(() => s.kinds().filter((k) => k === "send").length === 4, "both written again", 2000);
    expect(s.sent.slice(-2).map((f) => (f.frame.value as { clientMsgId: string }).clientMsgId)).toEqual(["a", "b"]);
    s.push({ case: "ack", value: { conversationId: "c", clientMsgId: "a", seq: 1n } });
    s.push({ case: "ack", value: { conversationId: "c", clientMsgId: "b", seq: 2n } });
    await expect(Promise.all([one, two])).resolves.toEqual([
      { seq: 1n, clientMsgId: "a" },
      { seq: 2n, clientMsgId: "b" },
    ]);
  });

  test("markRead resolves with the read ack's state", async () => {
    const { session, socket } = fakeSession();
    const s = await socket(0);
    s.accept();
    const read = session.markRead("c", 5n, { private: true });
    expect(s.sent[2].frame).toMatchObject({ case: "read", value: { conversationId: "c", seq: 5n, private: true } });
    s.push({ case: "read", value: { conversationId: "c", seq: 5n, state: { conversationId: "c", readSeq: 5n, unreadCount: 0n } } });
    await expect(read).resolves.toMatchObject({ readSeq: 5n });
  });

  test("a missing pong drops the connection and reconnects", async () => {
    const { session, socket } = fakeSession({ pingMs: 20 });
    const s0 = await socket(0);
    s0.accept();
    await until(() => s0.kinds().includes("ping"), "a ping", 2000);
    const s1 = await socket(1);
    expect(s0.closed).toBeDefined();
    s1.accept();
    await until(() => s1.kinds().includes("ping"), "a ping", 2000);
    const nonce = (s1.sent.find((f) => f.frame.case === "ping")!.frame.value as { nonce: bigint }).nonce;
    s1.push({ case: "pong", value: { nonce } });
    expect(session.state).toBe("open");
  });

  test("4016 with a token function fetches a new token; repeated 4016 ends in closed with UNAUTHENTICATED", async () => {
    let n = 0;
    const { session, socket } = fakeSession({}, () => `t${++n}`);
    const errors: ConfabError[] = [];
    session.on("error", (e) => errors.push(e));
    const closed = next<StateEvent>(session, "state", (e) => e.state === "closed");
    const pending = session.send("c", "x");
    for (let i = 0; i < 3; i++) {
      const s = await socket(i);
      expect(s.protocols[1]).toBe(`confab.bearer.t${i + 1}`);
      s.hangUp(4016, "token expired");
    }
    const end = await closed;
    expect(end.error).toMatchObject({ kind: "closed", code: 16 });
    expect(errors.at(-1)?.message).toContain("token expired");
    await expect(pending).rejects.toMatchObject({ code: 16 });
  });
});
