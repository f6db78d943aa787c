// The bundle the server serves was built from the sources in this tree: a
// stale dist/ (sources changed since `npm run build`) fails here.
import { expect, test } from "@playwright/test";
// @ts-ignore: a plain .mjs script, shared with the build
import { sourceHash } from "../scripts/source-hash.mjs";
import { serverUrl } from "./helpers";

test("the served /source-hash.txt is the hash of the sources in the tree", async () => {
  const res = await fetch(`${serverUrl()}/source-hash.txt`);
  expect(res.status).toBe(200);
  const served = (await res.text()).trim();
  expect(served, "the served bundle is stale: run npm run build").toBe(sourceHash());
});

test("the server serves the app at /", async ({ page }) => {
  await page.goto(serverUrl() + "/");
  await expect(page).toHaveTitle("Confab");
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
});
