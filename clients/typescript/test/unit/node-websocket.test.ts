// Node 20 has no global WebSocket: the session opens one with the `ws`
// package. A port nobody listens on: the attempt fails as a connection
// failure (not "cannot open a WebSocket") and the session goes on reconnecting.
import { createServer } from "node:net";
import { expect, test } from "vitest";
import { Confab, type StateEvent } from "../../src/index";
import { next } from "../support/events";

test("without a global WebSocket the `ws` package is used", async () => {
  expect((globalThis as { WebSocket?: unknown }).WebSocket).toBeUndefined();
  const port = await new Promise<number>((resolve) => {
    const srv = createServer().listen(0, "127.0.0.1", () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
  });
  const s = new Confab({ baseUrl: `http://127.0.0.1:${port}`, token: "t" }).connect({ backoff: { initialMs: 10, maxMs: 20 } });
  try {
    const e = await next<StateEvent>(s, "state", (e) => e.state === "reconnecting");
    expect(e.error?.message).toMatch(/connection lost \(close 1006\)/);
  } finally {
    s.close();
  }
});
