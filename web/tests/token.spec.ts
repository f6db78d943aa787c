// Sign-in on a server without development tokens: the app asks for a token
// (a JWT signed with the server's secret) and keeps it for reloads.
import { expect, test } from "@playwright/test";
import { createHmac, randomBytes } from "node:crypto";
import { startConfab, type RunningServer } from "./global-setup";

const secret = randomBytes(32).toString("hex");
let server: RunningServer;

test.beforeAll(async () => {
  server = await startConfab("confab-secret", { CONFAB_JWT_SECRET: secret });
});
test.afterAll(async () => {
  await server?.stop();
});

/** An HS256 JWT for `sub`, valid for an hour. */
function jwt(sub: string, key: string): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${head}.${createHmac("sha256", key).update(head).digest("base64url")}`;
}

test("without dev tokens: sign in with a token; a reload stays signed in; a wrong token is refused", async ({ browser }) => {
  const auth = await (await fetch(`${server.url}/v1/auth`)).json();
  expect(auth).toEqual({ dev_tokens: false });

  const context = await browser.newContext({ baseURL: server.url });
  const p = await context.newPage();
  await p.goto("/");
  await expect(p.getByRole("textbox", { name: "User" })).toHaveCount(0);
  await p.getByRole("textbox", { name: "Token" }).fill(jwt("grace", secret));
  await p.getByRole("button", { name: "Sign in" }).click();
  await expect(p.getByText("Signed in as grace")).toBeVisible();
  await expect(p.getByRole("status").filter({ hasText: /Connecting|Reconnecting|Disconnected/ })).toHaveCount(0);
  await expect(p.getByRole("alert")).toHaveCount(0);

  await p.reload();
  await expect(p.getByText("Signed in as grace")).toBeVisible();
  await p.getByRole("button", { name: "Sign out" }).click();

  // Signed with another key: the server refuses it, and the app says so.
  await p.getByRole("textbox", { name: "Token" }).fill(jwt("mallory", "not the secret"));
  await p.getByRole("button", { name: "Sign in" }).click();
  await expect(p.getByRole("alert").first()).toBeVisible();
  await expect(p.getByRole("status").filter({ hasText: /Disconnected|Reconnecting/ })).toBeVisible();
  await context.close();
});
