// Waiting for conditions, never for fixed times.
import type { ConfabError, Message, Session } from "../../src/index";

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the first event `event` of `session` that `pred` accepts. */
export function next<T>(
  session: Session,
  event: "state" | "message" | "conversation" | "removed" | "receipt" | "typing" | "presence" | "error" | "synced",
  pred: (v: T) => boolean = () => true,
  ms = 15_000,
): Promise<T> {
  let off: () => void = () => {};
  const p = new Promise<T>((resolve) => {
    off = (session.on as (e: string, cb: (v: T) => void) => () => void)(event, (v: T) => {
      if (pred(v)) {
        off();
        resolve(v);
      }
    });
  });
  return withTimeout(p, ms, `a "${event}" event`).finally(() => off());
}

/** Polls `cond` on every event loop turn until it holds. */
export async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Records a session's messages and errors. */
export class Recorder {
  readonly messages: Message[] = [];
  readonly errors: ConfabError[] = [];
  constructor(session: Session) {
    session.on("message", (m) => this.messages.push(m));
    session.on("error", (e) => this.errors.push(e));
  }
  seqs(conversationId: string): bigint[] {
    return this.messages.filter((m) => m.conversationId === conversationId).map((m) => m.seq);
  }
}
