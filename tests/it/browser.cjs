// Drives headless Chromium (Debian's, through playwright-core) for tests/it/web.rs; prints one
// JSON line of what it saw, or fails with what went wrong.
//
//   node browser.cjs view BASE TOKEN SCREENSHOT NAMES  a live view while a job runs
//   node browser.cjs page FILE                         a report page (`--timings`)
//
// PLAYWRIGHT_CORE is the path of the playwright-core package; CHROMIUM the browser.
"use strict";

const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const SECOND = 1000;

/** Console errors and uncaught exceptions of `page`. */
function errorsOf(page) {
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") { errors.push(m.text()); } });
  page.on("pageerror", (e) => errors.push(String(e)));
  return errors;
}

/** The number of bars in the task stream and the first job's progress text. */
async function snapshot(page) {
  return page.evaluate(() => ({
    bars: document.querySelectorAll("#stream rect.task").length,
    progress: (document.querySelector("#jobs tr[data-job] td:nth-child(3)") || {}).textContent || "",
  }));
}

/** Whether a job of the view is in `state` (evaluated in the page). */
const jobIn = (state) => [...document.querySelectorAll("#jobs td.state")].some((td) => td.textContent === state);

async function view(browser, base, token, screenshot, names) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
  const refused = {};
  for (const path of ["/", "/api/status", "/api/events", "/api/journal", "/view.js"]) {
    refused[path] = (await context.request.get(base + path)).status();
  }
  refused.wrong = (await context.request.get(base + "/api/status", { headers: { Authorization: "Bearer wrong" } })).status();
  if (Object.values(refused).some((s) => s !== 401)) {
    throw new Error("a request without the token was not refused: " + JSON.stringify(refused));
  }
  const page = await context.newPage();
  const errors = errorsOf(page);
  await page.goto(base + "/?token=" + token);
  if (page.url() !== base + "/") {
    throw new Error("the token stayed in the address: " + page.url());
  }
  await page.waitForFunction(jobIn, "running", { timeout: 30 * SECOND });
  const first = await snapshot(page);
  await page.waitForFunction((f) => {
    const bars = document.querySelectorAll("#stream rect.task").length;
    const progress = (document.querySelector("#jobs tr[data-job] td:nth-child(3)") || {}).textContent;
    return bars > f.bars && progress !== f.progress;
  }, first, { timeout: 30 * SECOND });
  const later = await snapshot(page);
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.evaluate(() => document.querySelector("#stream rect.task").dispatchEvent(new MouseEvent("click", { bubbles: true })));
  await page.waitForFunction(() => document.querySelector("#detail").textContent.includes("Why there"), null, { timeout: 5 * SECOND });
  const detail = await page.textContent("#detail");
  await page.waitForFunction(jobIn, "finished", { timeout: 60 * SECOND });
  await page.waitForTimeout(600);
  const finished = await page.textContent("#finished");
  const missing = names.split(",").filter((n) => !finished.includes(n));
  if (missing.length > 0) {
    throw new Error("the finished job does not show " + missing.join(", ") + ": " + finished);
  }
  if (errors.length > 0) {
    throw new Error("console errors: " + errors.join("; "));
  }
  return { refused, first, later, detail, finished, live: await page.textContent("#live") };
}

async function report(browser, file) {
  const page = await browser.newPage();
  const errors = errorsOf(page);
  await page.goto("file://" + file);
  const seen = await page.evaluate(() => ({
    bars: document.querySelectorAll("rect.task").length,
    critical: document.querySelectorAll("rect.task.critical").length,
    headings: [...document.querySelectorAll("h2")].map((h) => h.textContent),
    bars_titled: [...document.querySelectorAll("rect.task title")].map((t) => t.textContent),
  }));
  if (errors.length > 0) {
    throw new Error("console errors: " + errors.join("; "));
  }
  return seen;
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const seen = mode === "view" ? await view(browser, ...args) : await report(browser, ...args);
    console.log(JSON.stringify(seen));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
