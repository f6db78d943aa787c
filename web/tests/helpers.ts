import { expect, type Browser, type BrowserContext, type Locator, type Page, type TestInfo } from "@playwright/test";
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const artifacts = join(webDir, "test-artifacts");

/** The server global-setup started. */
export function serverUrl(): string {
  const url = process.env.CONFAB_TEST_URL;
  if (!url) throw new Error("CONFAB_TEST_URL is not set: global-setup did not start the server");
  return url;
}

export interface User {
  context: BrowserContext;
  page: Page;
  name: string;
}

/**
 * What each signed-in page logged and what its WebSockets did (opened,
 * closed, frames each way with their sizes), with the seconds since the
 * test's first page, so a failure that depends on timing (a reconnect, a
 * frame that never came) explains itself: `printTrailIfFailed` prints it
 * after a failed test; `DEBUG_WS=1` prints it as it happens.
 */
const trail: string[] = [];
let trailStart = 0;

function note(line: string) {
  if (trail.length === 0) trailStart = Date.now();
  const entry = `${((Date.now() - trailStart) / 1000).toFixed(2)} ${line}`;
  trail.push(entry);
  if (process.env.DEBUG_WS) console.error(entry);
}

function follow(page: Page, name: string) {
  page.on("console", (m) => note(`[${name}] console.${m.type()}: ${m.text()}`));
  page.on("websocket", (ws) => {
    note(`[${name}] ws open ${ws.url()}`);
    ws.on("close", () => note(`[${name}] ws closed`));
    ws.on("socketerror", (e) => note(`[${name}] ws error: ${e}`));
    ws.on("framereceived", (f) => note(`[${name}] ws <- ${f.payload.length} B`));
    ws.on("framesent", (f) => note(`[${name}] ws -> ${f.payload.length} B`));
  });
}

/** After each test: prints the trail if it failed, and starts a new one. */
export function printTrailIfFailed(info: TestInfo) {
  if (info.status !== info.expectedStatus && trail.length > 0) {
    console.error(`--- what the pages logged and their WebSockets did (seconds) ---\n${trail.join("\n")}`);
  }
  trail.length = 0;
}

/** A user in a browser context of their own, signed in with a dev token. */
export async function signedIn(
  browser: Browser,
  name: string,
  viewport = { width: 1280, height: 800 },
): Promise<User> {
  const context = await browser.newContext({ baseURL: serverUrl(), viewport });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  follow(page, name);
  await page.goto("/");
  await page.getByRole("textbox", { name: "User" }).fill(name);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("list", { name: "Conversations" })).toBeAttached();
  await expect(page.getByRole("button", { name: "New conversation" })).toBeVisible();
  await expect(page.getByText(`Signed in as ${name}`)).toBeVisible();
  return { context, page, name };
}

export const conversations = (p: Page) => p.getByRole("list", { name: "Conversations" });
export const messages = (p: Page) => p.getByRole("list", { name: "Messages" });
/** The Messages item whose body is exactly `body`. */
export const messageItem = (p: Page, body: string | RegExp) =>
  messages(p)
    .getByRole("listitem")
    .filter({ has: p.locator(".body", { hasText: body }) });

export async function send(p: Page, body: string) {
  const box = p.getByRole("textbox", { name: "Message" });
  await box.fill(body);
  await box.press("Enter");
  await expect(box).toHaveValue("");
  // Acknowledged: in the list, no longer "sending…".
  await expect(messageItem(p, body).filter({ hasNotText: "sending…" })).toHaveCount(1);
}

export async function screenshot(p: Page, name: string): Promise<string> {
  mkdirSync(artifacts, { recursive: true });
  const path = join(artifacts, name);
  await p.screenshot({ path });
  return path;
}

/** The `data-seq`s of the Messages items, in document order. */
export async function seqs(list: Locator): Promise<number[]> {
  const raw = await list.locator("li[data-seq]").evaluateAll((els) => els.map((e) => e.getAttribute("data-seq")));
  return raw.map((s) => Number(s));
}

/** A mouse user's way to a message's tools: hover the message, click the tool. */
export async function messageTool(p: Page, body: string | RegExp, tool: string) {
  const item = messageItem(p, body);
  await item.hover();
  await item.getByRole("group", { name: "Message actions" }).getByRole("button", { name: tool }).click();
}
