// A TCP proxy in front of the server that can silently stop carrying bytes on
// the connections it has (a dead network path: no FIN, no RST), while new
// connections go through.
import { connect, createServer, type Server, type Socket } from "node:net";

export interface Proxy {
  /** http://127.0.0.1:<port> of the proxy. */
  url: string;
  /** Stops carrying bytes on every connection open now; they stay open. */
  blackhole(): void;
  close(): Promise<void>;
}

export async function startProxy(target: string): Promise<Proxy> {
  const { hostname, port } = new URL(target);
  const live = new Set<{ client: Socket; upstream: Socket; dead: boolean }>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(port), hostname);
    const pair = { client, upstream, dead: false };
    live.add(pair);
    client.on("data", (d) => {
      if (!pair.dead) upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (!pair.dead) client.write(d);
    });
    const end = () => {
      live.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${addr.port}`,
    blackhole() {
      for (const p of live) p.dead = true;
    },
    close() {
      for (const p of live) {
        p.client.destroy();
        p.upstream.destroy();
      }
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
