// A phone's width: one column (the inbox, or the open conversation), and the
// keyboard alone signs in, picks a conversation and sends.
import { expect, test } from "@playwright/test";
import { conversations, messageItem, printTrailIfFailed, screenshot, send, serverUrl, signedIn } from "./helpers";

test.afterEach(({}, info) => printTrailIfFailed(info));

const phone = { width: 375, height: 700 };

test("at a phone's width: sign in, open a conversation and send, by keyboard", async ({ browser }) => {
  // dave starts a conversation with carol, so carol has one to open.
  const dave = await signedIn(browser, "dave");
  const d = dave.page;
  await d.getByRole("button", { name: "New conversation" }).click();
  await d.getByRole("textbox", { name: "Members" }).fill("carol");
  await d.getByRole("button", { name: "Create" }).click();
  await send(d, "carol, try this on your phone");

  const context = await browser.newContext({ baseURL: serverUrl(), viewport: phone, hasTouch: true, isMobile: true });
  const p = await context.newPage();
  await p.goto("/");
  // Sign in with the keyboard: the User box has focus.
  await expect(p.getByRole("textbox", { name: "User" })).toBeFocused();
  await p.keyboard.type("carol");
  await p.keyboard.press("Enter");

  const item = conversations(p).getByRole("listitem", { name: /^dave, 1 unread/ });
  await expect(item).toBeVisible();
  // One column: no conversation pane yet.
  await expect(p.getByRole("list", { name: "Messages" })).toHaveCount(0);
  await screenshot(p, "inbox-phone.png");

  // Tab to dave's conversation and open it with Enter.
  const target = item.getByRole("button");
  for (let i = 0; i < 20 && !(await target.evaluate((el) => el === document.activeElement)); i++) {
    await p.keyboard.press("Tab");
  }
  await expect(target).toBeFocused();
  await p.keyboard.press("Enter");

  await expect(p.getByRole("heading", { name: "dave", level: 2 })).toBeVisible();
  await expect(messageItem(p, "carol, try this on your phone")).toBeVisible();
  // The inbox is hidden while a conversation is open.
  await expect(conversations(p)).toBeHidden();

  // Type and send with Enter.
  const box = p.getByRole("textbox", { name: "Message" });
  await box.focus();
  await p.keyboard.type("sent from a phone");
  await p.keyboard.press("Enter");
  await expect(messageItem(p, "sent from a phone").filter({ hasNotText: "sending…" })).toBeVisible();
  await expect(messageItem(d, "sent from a phone")).toBeVisible();

  // No sideways scrolling at this width.
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  expect(overflow).toBeLessThanOrEqual(0);
  await screenshot(p, "conversation-phone.png");

  // Back to the inbox.
  await p.getByRole("button", { name: "Back to conversations" }).click();
  await expect(conversations(p).getByRole("listitem", { name: /^dave/ })).toBeVisible();
  await expect(conversations(p).getByRole("listitem", { name: /^dave/ })).not.toHaveAccessibleName(/unread/);

  // A reload stays signed in (sessionStorage) and reopens nothing.
  await p.reload();
  await expect(p.getByText("Signed in as carol")).toBeVisible();

  await context.close();
  await dave.context.close();
});
