// Two users in two browser contexts against a real server: a conversation
// from creation to search, including bob losing the network for a while.
import { expect, test } from "@playwright/test";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { conversations, messageItem, messages, messageTool, printTrailIfFailed, screenshot, send, seqs, signedIn, webDir } from "./helpers";

test.afterEach(({}, info) => printTrailIfFailed(info));

test("alice and bob chat: unread, seen by, typing, presence, offline catch-up, edit, delete, reactions, search", async ({ browser }) => {
  const alice = await signedIn(browser, "alice");
  const bob = await signedIn(browser, "bob");
  const a = alice.page;
  const b = bob.page;

  await test.step("alice starts a direct conversation with bob", async () => {
    await a.getByRole("button", { name: "New conversation" }).click();
    await a.getByRole("textbox", { name: "Members" }).fill("bob");
    await a.getByRole("button", { name: "Create" }).click();
    await expect(a.getByRole("heading", { name: "bob", level: 2 })).toBeVisible();
    await expect(conversations(a).getByRole("listitem", { name: /^bob/ })).toBeVisible();
    await send(a, "hello bob");
  });

  await test.step("bob's unread badge counts alice's messages", async () => {
    const item = conversations(b).getByRole("listitem", { name: /^alice/ });
    await expect(item).toHaveAccessibleName(/^alice, 1 unread, alice: hello bob$/);
    await send(a, "are you there?");
    await expect(item).toHaveAccessibleName(/^alice, 2 unread, alice: are you there\?$/);
    await expect(b).toHaveTitle("(2) Confab");
    await screenshot(b, "inbox-unread-desktop.png");
  });

  await test.step("bob opens the conversation: the badge clears, alice sees 'seen by bob'", async () => {
    await conversations(b).getByRole("listitem", { name: /^alice/ }).click();
    await expect(b.getByRole("heading", { name: "alice", level: 2 })).toBeVisible();
    await expect(messageItem(b, /^hello bob$/)).toContainText("alice");
    await expect(messageItem(b, /^are you there\?$/)).toBeVisible();
    await expect(conversations(b).getByRole("listitem", { name: /^alice/ })).not.toHaveAccessibleName(/unread/);
    await expect(b).toHaveTitle("Confab");
    await expect(messageItem(a, /^are you there\?$/).getByText("Seen by bob")).toBeVisible();
    // Only under the newest of alice's messages bob has read.
    await expect(messages(a).getByText(/Seen by/)).toHaveCount(1);
  });

  await test.step("presence: each sees the other online", async () => {
    await expect(a.getByText("bob is online")).toBeVisible();
    await expect(b.getByText("alice is online")).toBeVisible();
  });

  await test.step("typing shows on the other side and disappears when it stops", async () => {
    const box = b.getByRole("textbox", { name: "Message" });
    await box.pressSequentially("I am typ", { delay: 30 });
    await expect(a.getByText("bob is typing…")).toBeVisible();
    await box.fill("");
    await expect(a.getByText("bob is typing…")).toBeHidden({ timeout: 10_000 });
  });

  await test.step("bob replies to a message; the reply quotes it", async () => {
    await messageTool(b, /^hello bob$/, "Reply");
    await expect(b.getByText(/Replying to alice/)).toBeVisible();
    await send(b, "hi alice");
    const reply = messageItem(a, /^hi alice$/);
    await expect(reply.locator("blockquote")).toContainText("Reply to alice");
    await expect(reply.locator("blockquote")).toContainText("hello bob");
  });

  await test.step("reactions reach the other side with their counts", async () => {
    await messageTool(a, /^hi alice$/, "React with 👍");
    await expect(messageItem(a, /^hi alice$/).getByRole("button", { name: "👍 1" })).toHaveAttribute("aria-pressed", "true");
    await expect(messageItem(b, /^hi alice$/).getByRole("button", { name: "👍 1" })).toHaveAttribute("aria-pressed", "false");
  });

  await test.step("bob goes offline while alice sends; back online he sees each message once, in order", async () => {
    const before = await seqs(messages(b));
    await bob.context.setOffline(true);
    const sent = ["offline 1", "offline 2", "offline 3", "offline 4", "offline 5"];
    for (const body of sent) await send(a, body);
    const offline = messages(b).locator("li .body").filter({ hasText: /^offline \d$/ });
    // Chromium's offline mode does not close an open WebSocket, it stalls it:
    // bob's session notices by its unanswered pings (within 2 x 15 s) and
    // starts reconnecting; nothing alice sent has reached him.
    await expect(b.getByRole("status").filter({ hasText: /Reconnecting/ })).toBeVisible({ timeout: 45_000 });
    await expect(offline).toHaveCount(0);
    await bob.context.setOffline(false);
    await expect(offline).toHaveText(sent, { timeout: 60_000 });
    await expect(b.getByRole("status").filter({ hasText: /Reconnecting|Connecting/ })).toHaveCount(0, { timeout: 60_000 });
    const after = await seqs(messages(b));
    expect(new Set(after).size).toBe(after.length);
    expect([...after].sort((x, y) => x - y)).toEqual(after);
    expect(after.length).toBe(before.length + sent.length);
    await expect(conversations(b).getByRole("listitem", { name: /^alice/ })).not.toHaveAccessibleName(/unread/);
  });

  await test.step("an edit and a delete reach the other side", async () => {
    await messageTool(a, /^hello bob$/, "Edit");
    const edit = a.getByRole("textbox", { name: "Edit message" });
    await edit.fill("hello bob, edited");
    await edit.press("Enter");
    await expect(messageItem(b, /^hello bob, edited/)).toContainText("(edited)");
    // The reply quoting it shows it as it is now.
    await expect(messageItem(b, /^hi alice$/).locator("blockquote")).toContainText("hello bob, edited");

    await messageTool(a, /^are you there\?$/, "Delete");
    await expect(messages(b).getByText("are you there?")).toHaveCount(0);
    await expect(messages(b).getByText("message deleted")).toHaveCount(1);
    await expect(messages(a).getByText("message deleted")).toHaveCount(1);
  });

  await test.step("search finds a message; its result opens the conversation", async () => {
    // Another conversation open first, so opening the result is visible.
    await b.getByRole("button", { name: "New conversation" }).click();
    await b.getByRole("textbox", { name: "Members" }).fill("alice, carol");
    await b.getByRole("textbox", { name: "Title" }).fill("Project");
    await b.getByRole("button", { name: "Create" }).click();
    await expect(b.getByRole("heading", { name: "Project", level: 2 })).toBeVisible();
    // The newest activity first.
    await expect(conversations(a).getByRole("listitem").first()).toHaveAccessibleName(/^Project/);
    await expect(conversations(b).getByRole("listitem").first()).toHaveAccessibleName(/^Project/);

    await b.getByRole("textbox", { name: "Search" }).fill("edited");
    await b.getByRole("textbox", { name: "Search" }).press("Enter");
    const results = b.getByRole("list", { name: "Search results" });
    await expect(results.getByRole("listitem")).toHaveCount(1);
    await expect(results).toContainText("hello bob, edited");
    await results.getByRole("button").first().click();
    await expect(b.getByRole("heading", { name: "alice", level: 2 })).toBeVisible();
    await expect(messageItem(b, /^hello bob, edited/)).toBeVisible();

    // A deleted message is not found.
    await b.getByRole("textbox", { name: "Search" }).fill("there");
    await b.getByRole("textbox", { name: "Search" }).press("Enter");
    await expect(b.getByRole("status").filter({ hasText: "No messages found" })).toBeVisible();
  });

  await test.step("screenshots", async () => {
    await conversations(a).getByRole("listitem", { name: /^bob/ }).click();
    await messageTool(a, /^hi alice$/, "React with 🎉");
    await send(a, "all caught up? 🎉");
    await expect(messageItem(a, "all caught up?")).toBeInViewport();
    await expect(messageItem(b, "all caught up?")).toBeVisible();
    await expect(messageItem(a, "all caught up?").getByText("Seen by bob")).toBeVisible();
    await expect(conversations(a).getByRole("listitem").first()).toHaveAccessibleName(/^bob, you: all caught up/);
    await a.mouse.move(700, 770); // off the messages, so no message shows its tools
    await b.mouse.move(700, 770);
    const toolsShown = (p: typeof a) =>
      p.locator(".tools").evaluateAll((els) => els.filter((e) => getComputedStyle(e).opacity !== "0").length);
    await expect.poll(() => toolsShown(a)).toBe(0);
    await expect.poll(() => toolsShown(b)).toBe(0);
    const shot = await screenshot(a, "conversation-desktop.png");
    // The README's picture, refreshed on request only (the times in it
    // change every run): UPDATE_SCREENSHOT=1 npm test.
    if (process.env.UPDATE_SCREENSHOT) copyFileSync(shot, join(webDir, "..", "docs", "web-app.png"));
    await screenshot(b, "inbox-desktop.png");
  });

  await test.step("bob signs off: alice sees him offline", async () => {
    await bob.context.close();
    await expect(a.getByText("bob is offline")).toBeVisible({ timeout: 30_000 });
  });

  await alice.context.close();
});
