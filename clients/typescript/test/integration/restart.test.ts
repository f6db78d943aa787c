// The server restarts under live sessions: they are closed with 4014
// (UNAVAILABLE), reconnect with backoff until it is back, and resume.
import { afterAll, beforeAll, expect, test } from "vitest";
import { Confab, ConversationKind, devToken, type StateEvent } from "../../src/index";
import { next, Recorder, until } from "../support/events";
import { startServer, type TestServer } from "../support/server";

let server: TestServer;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});

test("a server restart: 4014, reconnect with backoff, resume; a send queued meanwhile is delivered once", async () => {
  const token = async (id: string) => devToken(server.baseUrl, id);
  const aliceToken = await token("alice-r");
  const bobToken = await token("bob-r");
  const alice = new Confab({ baseUrl: server.baseUrl, token: aliceToken });
  const bob = new Confab({ baseUrl: server.baseUrl, token: bobToken });
  const conv = await alice.chat.createConversation({ kind: ConversationKind.GROUP, title: "r", memberIds: ["bob-r"] });
  const b = bob.connect({ backoff: { initialMs: 50, maxMs: 400 } });
  try {
    await next(b, "synced");
    const rb = new Recorder(b);
    const states: StateEvent[] = [];
    b.on("state", (s) => states.push(s));
    for (let i = 0; i < 3; i++) await alice.chat.sendMessage({ conversationId: conv.id, clientMsgId: `before-${i}`, body: `before ${i}` });
    await until(() => rb.seqs(conv.id).length === 3, "3 messages before the restart");

    const down = next<StateEvent>(b, "state", (s) => s.state === "reconnecting");
    const restarted = server.restart();
    const why = await down;
    expect(why.error).toMatchObject({ code: 14 }); // 4014: the gateway is shutting down
    const queued = b.send(conv.id, "sent while the server was down", { clientMsgId: "queued-1" });
    await restarted;
    await next(b, "synced", () => true, 30_000);
    for (let i = 0; i < 3; i++) await alice.chat.sendMessage({ conversationId: conv.id, clientMsgId: `after-${i}`, body: `after ${i}` });
    const ack = await queued;
    await until(() => rb.seqs(conv.id).length === 7, "7 messages in all", 30_000);
    expect(rb.seqs(conv.id)).toEqual([2n, 3n, 4n, 5n, 6n, 7n, 8n]);
    expect(rb.messages.filter((m) => m.clientMsgId === "queued-1").map((m) => m.seq)).toEqual([ack.seq]);
    expect(rb.errors).toEqual([]);
    expect(states.some((s) => s.state === "open")).toBe(true);
  } finally {
    b.close();
  }
});
