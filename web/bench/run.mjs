// Browser benchmark: Enter → own bubble painted and keystroke → character painted, in a long chat,
// on a 360×640 phone viewport, with and without 4× CPU throttling (Debian's chromium, playwright-core).
//   NATTER_URL=... NATTER_BENCH_USER=... NATTER_BENCH_PEER="Display name" node bench/run.mjs
// Options (environment): NATTER_BENCH_PASSWORD, NATTER_BENCH_SENDS (default 30),
// NATTER_BENCH_KEYS (default 60), NATTER_BENCH_RATES (default "1,4"), CHROMIUM.
// "Painted" is the first animation frame after the DOM holds the change; the start is the
// keydown's own timestamp, so the time the page took to notice the key counts too.
// Prints a table and, last, one JSON line with every figure.
import { chromium } from "playwright-core";

const BASE = process.env.NATTER_URL ?? "http://127.0.0.1:7080";
const USER = process.env.NATTER_BENCH_USER ?? "";
const PEER = process.env.NATTER_BENCH_PEER ?? "";
const PASSWORD = process.env.NATTER_BENCH_PASSWORD ?? "correct horse battery";
const SENDS = Number(process.env.NATTER_BENCH_SENDS ?? 30);
const KEYS = Number(process.env.NATTER_BENCH_KEYS ?? 60);
const RATES = (process.env.NATTER_BENCH_RATES ?? "1,4").split(",").map(Number);
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT = 60_000;

if (!USER || !PEER) {
  console.error("set NATTER_BENCH_USER (who logs in) and NATTER_BENCH_PEER (the chat's title)");
  process.exit(2);
}

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function summary(values) {
  const s = [...values].sort((a, b) => a - b);
  return { p50: pct(s, 50), p95: pct(s, 95), max: s[s.length - 1], n: s.length };
}

/** Installs the page-side probes: keydown time, and the frame after the DOM shows a change. */
function probes() {
  const w = window;
  w.__bench = { key: 0, done: null };
  document.addEventListener("keydown", (e) => (w.__bench.key = e.timeStamp), true);
  // A sent bubble: the frame after a node holding the marker text is in the message list.
  w.__bench.expect = (marker) =>
    new Promise((resolve) => {
      const root = document.querySelector(".messages");
      const seen = () => root.textContent.includes(marker);
      const obs = new MutationObserver(() => {
        if (!seen()) return;
        obs.disconnect();
        requestAnimationFrame(() => resolve(performance.now() - w.__bench.key));
      });
      obs.observe(root, { childList: true, subtree: true, characterData: true });
    });
  // A typed character: the frame after the box's value holds it.
  w.__bench.typed = (ch) =>
    new Promise((resolve) => {
      const box = document.getElementById("composer-text");
      const on = () => {
        if (!box.value.endsWith(ch)) return;
        box.removeEventListener("input", on);
        requestAnimationFrame(() => resolve(performance.now() - w.__bench.key));
      };
      box.addEventListener("input", on);
    });
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run", "--disable-sync"],
});
const context = await browser.newContext({ baseURL: BASE, viewport: { width: 360, height: 640 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
const page = await context.newPage();
await page.goto("/");
await page.getByLabel("Username").fill(USER);
await page.getByLabel("Password").fill(PASSWORD);
await page.getByRole("button", { name: "Log in" }).click();
await page.locator('.shell[data-conn="online"]').waitFor({ timeout: WAIT });
await page.getByRole("navigation", { name: "Chats" }).getByRole("link", { name: new RegExp(`^${PEER}`) }).first().click();
await page.locator("#composer-text").waitFor({ timeout: WAIT });
// The chat is open once the app has its first page of messages.
await page.waitForFunction(() => {
  const n = window.natter;
  return n && n.openThread && Array.isArray(n.state.messages[n.openThread]);
}, undefined, { timeout: WAIT });
// Load the whole history into the app, page by page, as scrolling back would.
const loaded = await page.evaluate(async () => {
  const n = window.natter;
  const id = n.openThread;
  for (let i = 0; i < 1000 && n.state.olderMore[id] !== false; i++) await n.loadOlder(id);
  return n.state.messages[id].length;
});
await page.evaluate(probes);
const cdp = await context.newCDPSession(page);
const box = page.locator("#composer-text");
const results = { loaded, runs: [] };
let serial = 0;
for (const rate of RATES) {
  await cdp.send("Emulation.setCPUThrottlingRate", { rate });
  const enter = [];
  for (let i = 0; i < SENDS; i++) {
    const marker = `bench ${rate}x ${++serial} ${Math.random().toString(36).slice(2, 8)}`;
    await box.fill(marker);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50))));
    const painted = page.evaluate((m) => window.__bench.expect(m), marker);
    await box.press("Enter");
    enter.push(await painted);
  }
  const keys = [];
  await box.fill("");
  for (let i = 0; i < KEYS; i++) {
    const ch = "abcdefghijklmnopqrstuvwxyz"[i % 26];
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 30))));
    const painted = page.evaluate((c) => window.__bench.typed(c), ch);
    await box.press(ch);
    keys.push(await painted);
  }
  await box.fill("");
  const dom = await page.evaluate(() => ({
    messages: document.querySelectorAll('[data-testid="message"]').length,
    elements: document.querySelectorAll(".message-list > li").length,
    nodes: document.getElementsByTagName("*").length,
  }));
  results.runs.push({ rate, enter: summary(enter), key: summary(keys), dom });
}
await cdp.send("Emulation.setCPUThrottlingRate", { rate: 1 });
await browser.close();

const f = (x) => `${x.toFixed(1)} ms`;
console.log(`natter web app, 360×640, ${loaded} messages loaded in the chat`);
for (const r of results.runs) {
  console.log(
    `  CPU ${r.rate}×: Enter → own bubble painted p50 ${f(r.enter.p50)}, p95 ${f(r.enter.p95)} (max ${f(r.enter.max)}, n ${r.enter.n}); ` +
      `keystroke → character painted p50 ${f(r.key.p50)}, p95 ${f(r.key.p95)} (max ${f(r.key.max)}, n ${r.key.n}); ` +
      `in the DOM: ${r.dom.elements} message-list items, ${r.dom.nodes} elements in all`,
  );
}
console.log(JSON.stringify(results));
