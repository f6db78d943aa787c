// Starts a fresh `confab dev` for the test run: free ports, a new data
// directory, the built app (dist/) as its web directory. The tests find it at
// process.env.CONFAB_TEST_URL.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const artifacts = join(web, "test-artifacts");

/** A port nothing listens on now: bind port 0, read it, close. */
function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

async function waitForAuth(url: string, child: ChildProcess, log: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`confab dev exited (${child.exitCode ?? child.signalCode}) before serving ${url}/v1/auth; see ${log}`);
    }
    try {
      const res = await fetch(`${url}/v1/auth`);
      if (res.ok) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = String((e as Error).message ?? e);
    }
    // Polling interval of a readiness probe, not a wait for a result.
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`confab dev did not answer ${url}/v1/auth within ${timeoutMs} ms (last: ${last}); see ${log}`);
}

export interface RunningServer {
  url: string;
  stop: () => Promise<void>;
}

/** Starts `confab dev` on free ports with a fresh data directory; ready once GET /v1/auth answers. */
export async function startConfab(name: string, extraEnv: Record<string, string> = {}): Promise<RunningServer> {
  const bin = process.env.CONFAB_BIN ?? join(homedir(), ".cache", "confab-target", "debug", "confab");
  if (!existsSync(bin)) throw new Error(`no confab binary at ${bin} (set CONFAB_BIN)`);
  const dist = join(web, "dist");
  if (!existsSync(join(dist, "index.html"))) throw new Error(`no built app in ${dist}: run npm run build first`);
  mkdirSync(artifacts, { recursive: true });

  const [grpc, http] = [await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), "confab-web-e2e-"));
  const url = `http://127.0.0.1:${http}`;
  const log = join(artifacts, `${name}.log`);
  const out = createWriteStream(log);
  const child = spawn(bin, ["dev"], {
    env: {
      ...process.env,
      CONFAB_LISTEN: `127.0.0.1:${grpc}`,
      CONFAB_HTTP_LISTEN: `127.0.0.1:${http}`,
      CONFAB_DATA_DIR: dataDir,
      CONFAB_WEB_DIR: dist,
      RUST_LOG: process.env.RUST_LOG ?? "warn",
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  try {
    await waitForAuth(url, child, log, 60_000);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { url, stop };
}

export default async function globalSetup() {
  const server = await startConfab("confab");
  process.env.CONFAB_TEST_URL = server.url;
  return server.stop;
}
