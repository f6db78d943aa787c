// Scrolling back: a conversation longer than a page of history loads its
// newest page first and older pages on scroll to the top (or "Load older").
import { expect, test } from "@playwright/test";
import { conversations, messageItem, messages, printTrailIfFailed, seqs, signedIn } from "./helpers";

test.afterEach(({}, info) => printTrailIfFailed(info));

test("scroll back through history: older pages load above, in order, once", async ({ browser }) => {
  const erin = await signedIn(browser, "erin");
  const e = erin.page;
  await e.getByRole("button", { name: "New conversation" }).click();
  await e.getByRole("textbox", { name: "Members" }).fill("frank");
  await e.getByRole("button", { name: "Create" }).click();
  await expect(e.getByRole("heading", { name: "frank", level: 2 })).toBeVisible();
  const bodies = Array.from({ length: 60 }, (_, i) => `history ${String(i + 1).padStart(2, "0")}`);
  const box = e.getByRole("textbox", { name: "Message" });
  for (const body of bodies) {
    await box.fill(body);
    await box.press("Enter");
  }
  // Every one acknowledged, in the order sent.
  await expect(messages(e).locator("li:not(.pending) .body")).toHaveText(bodies, { timeout: 30_000 });

  const frank = await signedIn(browser, "frank");
  const f = frank.page;
  const item = conversations(f).getByRole("listitem", { name: /^erin/ });
  await expect(item).toHaveAccessibleName(/^erin, 60 unread, erin: history 60$/);
  await item.click();
  // The newest page: 50 of the 61 seqs (the first is the conversation's creation).
  const shown = messages(f).locator("li .body");
  await expect(shown).toHaveText(bodies.slice(10));
  await expect(item).not.toHaveAccessibleName(/unread/);
  await expect(f.getByRole("button", { name: "Load older" })).toBeVisible();
  await expect(messageItem(f, "history 60")).toBeInViewport();

  // Scrolled to the top, the older page loads above.
  await f.locator(".scroller").evaluate((el) => el.scrollTo({ top: 0 }));
  await expect(shown).toHaveText(bodies);
  // The reader keeps their place: what was at the top is still in view.
  await expect(messageItem(f, "history 11")).toBeInViewport();
  await expect(messageItem(f, "history 01")).not.toBeInViewport();
  await expect(messages(f).getByText("erin created the conversation with you")).toBeVisible();
  await expect(f.getByRole("button", { name: "Load older" })).toHaveCount(0);
  const all = await seqs(messages(f));
  expect(all).toEqual(Array.from({ length: 61 }, (_, i) => i + 1));

  await erin.context.close();
  await frank.context.close();
});
