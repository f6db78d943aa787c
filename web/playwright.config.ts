import { defineConfig } from "@playwright/test";

// End-to-end tests in Debian's Chromium (never a downloaded browser) against
// a fresh `confab dev` that tests/global-setup.ts starts and serves dist/ from.
export default defineConfig({
  testDir: "tests",
  globalSetup: "./tests/global-setup.ts",
  outputDir: "test-results",
  // One browser at a time: the machine has two cores and the server is one process.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 180_000,
  expect: { timeout: 15_000 },
  reporter: [["list"]],
  use: {
    browserName: "chromium",
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
    viewport: { width: 1280, height: 800 },
    actionTimeout: 15_000,
    trace: "off",
    screenshot: "only-on-failure",
  },
});
