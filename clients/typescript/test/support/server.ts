// Starts a real `confab dev` for the integration tests: free ports, a fresh
// data dir, ready once GET /v1/auth answers; killed after.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";

export interface TestServer {
  /** The HTTP listener: WebSocket, gRPC-Web, /v1/auth, /v1/dev/token. */
  baseUrl: string;
  /** The gRPC listener (host:port). */
  grpcAddr: string;
  /** What the server wrote to stderr so far (for failure messages). */
  logs(): string;
  /** Stops it (SIGTERM) and starts it again on the same ports and data. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export function confabBin(): string {
  return process.env.CONFAB_BIN || join(homedir(), ".cache/confab-target/debug/confab");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once("exit", () => resolve());
  });
}

/** One `confab dev` process, ready once GET /v1/auth answers. */
async function launch(bin: string, env: NodeJS.ProcessEnv, baseUrl: string, log: (b: Buffer) => void) {
  const child = spawn(bin, ["dev"], { env, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout!.on("data", log);
  child.stderr!.on("data", log);
  const gone = exited(child);
  let dead = false;
  void gone.then(() => (dead = true));
  /** SIGTERM (the gateway closes its sessions with 4014), SIGKILL if it hangs. */
  const kill = async () => {
    if (!dead) {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await gone;
      clearTimeout(t);
    }
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (dead) return { error: `confab dev exited (code ${child.exitCode}) before it was ready`, kill };
    try {
      const res = await fetch(`${baseUrl}/v1/auth`, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) {
        await res.text();
        return { kill };
      }
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      await kill();
      return { error: "confab dev did not answer GET /v1/auth within 30 s", kill };
    }
    // Poll again after a short interval, or at once when the process exits.
    await Promise.race([new Promise((r) => setTimeout(r, 50)), gone]);
  }
}

export async function startServer(extraEnv: Record<string, string> = {}): Promise<TestServer> {
  const bin = confabBin();
  if (!existsSync(bin)) {
    throw new Error(`no confab binary at ${bin}: build it (cargo build -p confab) or set CONFAB_BIN`);
  }
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), "confab-ts-"));
  const grpcAddr = `127.0.0.1:${grpcPort}`;
  const baseUrl = `http://127.0.0.1:${httpPort}`;
  const env = {
    ...process.env,
    CONFAB_LISTEN: grpcAddr,
    CONFAB_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
    CONFAB_DATA_DIR: dataDir,
    RUST_LOG: "warn",
    ...extraEnv,
  };
  let log = "";
  const keep = (b: Buffer) => {
    log = (log + b.toString()).slice(-20_000);
  };
  let proc = await launch(bin, env, baseUrl, keep);
  const cleanup = async () => {
    await proc.kill();
    rmSync(dataDir, { recursive: true, force: true });
  };
  if (proc.error) {
    await cleanup();
    throw new Error(`${proc.error}:\n${log}`);
  }
  return {
    baseUrl,
    grpcAddr,
    logs: () => log,
    stop: cleanup,
    async restart() {
      await proc.kill();
      proc = await launch(bin, env, baseUrl, keep);
      if (proc.error) throw new Error(`${proc.error} (restart):\n${log}`);
    },
  };
}
