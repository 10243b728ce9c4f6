// Browser tests: real Chromium (Debian's, driven by playwright-core) against a running natter.
//   NATTER_URL=http://127.0.0.1:7080 node e2e/run.mjs [scenario ...]
// Scenarios: chat, offline, group, mobile, expired, settings, report, typing, logins, rich, push (default: all but push, which needs
// NATTER_PUSH_PAYLOADS from tests/test_web.py). Prints "N passed, N failed";
// exits 0 when all passed, 1 otherwise.
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { deflateSync } from "node:zlib";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.NATTER_URL ?? "http://127.0.0.1:7080";
const SHOTS = resolve(process.env.NATTER_SCREENSHOTS ?? join(here, "..", "..", "docs", "screenshots"));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PASSWORD = "correct horse battery";
const WAIT = 15_000;
// axe-core's source, evaluated in the page through the DevTools protocol (Runtime.evaluate),
// which the app's CSP (script-src 'self', nothing inline) does not apply to.
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const run = Math.random().toString(36).slice(2, 7);
let scenario = "";

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A person in a browser context of their own; collects page errors and CSP violations. */
async function person(browser, name, options = {}) {
  const context = await browser.newContext({ baseURL: BASE, ...options });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  const username = `${name}-${scenario}-${run}`;
  return { name, username, context, page, problems };
}

async function register(p, display) {
  const { page } = p;
  await page.goto("/");
  await named(p, "the login page");
  await page.getByRole("button", { name: "Create an account instead" }).click();
  await page.getByLabel("Username").fill(p.username);
  await page.getByLabel("Display name (optional)").fill(display);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByRole("navigation", { name: "Chats" }).waitFor({ timeout: WAIT });
  await connected(p);
  await named(p, "the chat list");
}

async function connected(p) {
  await p.page.locator('.shell[data-conn="online"]').waitFor({ timeout: WAIT });
}

async function addContact(p, other) {
  const { page } = p;
  await page.goto("/#/contacts");
  await page.getByLabel("Add a contact by username or phone").fill(other.username);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await page.locator(`[data-contact="${other.username}"]`).waitFor({ timeout: WAIT });
}

async function openChatWith(p, other, display) {
  await addContact(p, other);
  await named(p, "the contacts page");
  await p.page.getByRole("button", { name: `Message ${display}` }).click();
  await p.page.getByRole("log").waitFor({ state: "attached", timeout: WAIT });
  await p.page.getByLabel("Message", { exact: true }).waitFor({ timeout: WAIT });
}

async function openThread(p, title) {
  const link = p.page.getByRole("navigation", { name: "Chats" }).getByRole("link", { name: new RegExp(`^${title}`) });
  await link.first().click();
  await p.page.getByRole("log").waitFor({ state: "attached", timeout: WAIT });
  await p.page.getByLabel("Message", { exact: true }).waitFor({ timeout: WAIT });
}

async function type(p, text) {
  const box = p.page.getByLabel("Message", { exact: true });
  await box.fill(text);
  await box.press("Enter");
}

function bubble(p, text) {
  return p.page.locator('[data-testid="message"]').filter({ has: p.page.locator(".text", { hasText: text }) }).last();
}

async function seen(p, text, timeout = WAIT) {
  await bubble(p, text).waitFor({ timeout });
}

async function tick(p, text, want, timeout = WAIT) {
  const b = bubble(p, text);
  await b.locator(`[data-tick="${want}"]`).waitFor({ timeout });
}

/** Every control on the page has an accessible name (label, text, aria-label or title). */
async function named(p, where) {
  const unnamed = await p.page.evaluate(() =>
    [...document.querySelectorAll("button, a[href], input, textarea, select")]
      .filter((el) => el.getClientRects().length)
      .filter((el) => {
        const label = el.getAttribute("aria-label") || el.getAttribute("title") || el.textContent?.trim();
        const labels = "labels" in el && el.labels ? [...el.labels].map((l) => l.textContent?.trim()).join("") : "";
        return !(label || labels);
      })
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  check(unnamed.length === 0, `controls without a name on ${where}: ${unnamed.join(" | ")}`);
  await accessible(p, where);
}

/** axe-core finds no serious or critical violation on the screen as it is now. */
async function accessible(p, where) {
  const { page } = p;
  if (!(await page.evaluate(() => "axe" in window))) await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef -- axe is the global the evaluated source defines
    const res = await axe.run(document, { resultTypes: ["violations"] });
    return res.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}) ×${v.nodes.length}: ${v.nodes[0]?.target.join(" ")} — ${v.help}`);
  });
  check(violations.length === 0, `axe-core on ${where}:\n  ${violations.join("\n  ")}`);
}

/** From the chat list to a sent message and back, by keyboard alone. */
async function keyboardOnly(p, title) {
  const { page } = p;
  await page.goto("/#/");
  await page.getByRole("navigation", { name: "Chats" }).waitFor({ timeout: WAIT });
  await page.locator("body").focus();
  let onThread = false;
  for (let i = 0; i < 25 && !onThread; i++) {
    await page.keyboard.press("Tab");
    onThread = await page.evaluate((t) => document.activeElement?.matches(".thread") && document.activeElement.textContent.includes(t), title);
  }
  check(onThread, `Tab reaches the chat with ${title}`);
  // The focus ring is drawn inside the item, where the scrolling list cannot clip it.
  const offset = await page.evaluate(() => parseFloat(getComputedStyle(document.activeElement).outlineOffset));
  check(offset < 0, `the chat-list focus ring is inside the item (offset ${offset})`);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.activeElement?.id === "composer-text", null, { timeout: WAIT });
  await page.keyboard.type("sent by keyboard alone");
  await page.keyboard.press("Enter");
  await seen(p, "sent by keyboard alone");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => location.hash === "#/", null, { timeout: WAIT });
}

function noProblems(...people) {
  const all = people.flatMap((p) => p.problems.map((x) => `${p.name}: ${x}`));
  check(all.length === 0, all.join("\n"));
}

// -- scenarios -----------------------------------------------------------------------------

async function chat(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  await register(alice, "Alice");
  await register(bob, "Bob");
  await openChatWith(alice, bob, "Bob");
  await named(alice, "a chat");
  await type(alice, "hello bob <b>not bold</b>");
  await tick(alice, "hello bob", "delivered"); // bob's tab is connected and acks
  // Bob sees the thread with an unread count and a preview, then reads it.
  const row = bob.page.getByRole("navigation", { name: "Chats" }).getByRole("link", { name: /Alice.*1 unread/ });
  await row.waitFor({ timeout: WAIT });
  await openThread(bob, "Alice");
  await seen(bob, "hello bob");
  check((await bubble(bob, "hello bob").locator(".text").innerHTML()).includes("&lt;b&gt;"), "text is not HTML");
  await tick(alice, "hello bob", "read");
  // Typing indicator, then the reply.
  await bob.page.getByLabel("Message", { exact: true }).pressSequentially("hi al", { delay: 20 });
  await alice.page.getByText("Bob is typing…").first().waitFor({ timeout: WAIT });
  await bob.page.getByLabel("Message", { exact: true }).press("Enter");
  await seen(alice, "hi al");
  await tick(bob, "hi al", "read"); // alice has the chat open
  // Announced for screen readers.
  await alice.page.locator('[data-testid="announcer"]', { hasText: "Bob: hi al" }).waitFor({ timeout: WAIT });
  // Reload keeps history; scroll-back loads older pages.
  for (let i = 0; i < 55; i++) await type(alice, `bulk ${i}`);
  await tick(alice, "bulk 54", "read");
  await bob.page.reload();
  await openThread(bob, "Alice");
  await seen(bob, "bulk 54");
  await seen(bob, "hello bob"); // older than one page, still shown after reload
  // A fresh device of bob's pages back through history from the server.
  const bob2 = await person(browser, "bob2");
  await bob2.page.goto("/");
  await bob2.page.getByLabel("Username").fill(bob.username);
  await bob2.page.getByLabel("Password").fill(PASSWORD);
  await bob2.page.getByRole("button", { name: "Log in" }).click();
  await connected(bob2);
  await openThread(bob2, "Alice");
  await seen(bob2, "bulk 54");
  check((await bubble(bob2, "hello bob").count()) === 0, "only the newest page at first");
  // Scrolling to the top loads the older page (the "Load older messages" button does too).
  await bob2.page.getByRole("button", { name: "Load older messages" }).waitFor({ timeout: WAIT });
  await bob2.page.locator(".messages").evaluate((el) => (el.scrollTop = 0));
  await seen(bob2, "hello bob");
  await named(bob2, "a chat with long history");
  // The devices page lists both of bob's tabs.
  await bob2.page.goto("/#/devices");
  await bob2.page.getByText("(this device)").waitFor({ timeout: WAIT });
  check((await bob2.page.locator("[data-device]").count()) === 2, "bob has two devices");
  await named(bob2, "the devices page");
  await keyboardOnly(alice, "Bob");
  noProblems(alice, bob, bob2);
}

async function offline(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  await register(alice, "Alice");
  await register(bob, "Bob");
  // Online status shows to mutual contacts only: bob has alice, then she adds him.
  await addContact(bob, alice);
  await openChatWith(alice, bob, "Bob");
  await type(alice, "before");
  await openThread(bob, "Alice");
  await seen(bob, "before");
  await alice.page.locator(".subtitle", { hasText: "online" }).waitFor({ timeout: WAIT });
  // Bob loses his network; alice sees him go, keeps writing; bob writes too.
  await bob.context.setOffline(true);
  await bob.page.locator('.shell[data-conn="offline"]').waitFor({ timeout: WAIT });
  await alice.page.locator(".subtitle", { hasText: "last seen" }).waitFor({ timeout: WAIT });
  for (const t of ["while you were away 1", "while you were away 2", "while you were away 3"]) await type(alice, t);
  await tick(alice, "while you were away 3", "sent");
  await type(bob, "typed offline");
  await tick(bob, "typed offline", "pending");
  check((await bubble(bob, "while you were away 1").count()) === 0, "nothing arrives while offline");
  // Back online: everything arrives, in order, and the outbox drains.
  await bob.context.setOffline(false);
  await connected(bob);
  await seen(bob, "while you were away 3");
  const texts = await bob.page.locator('[data-testid="message"] .text').allTextContents();
  const mine = texts.filter((t) => t.startsWith("while you were away"));
  check(JSON.stringify(mine) === JSON.stringify(["while you were away 1", "while you were away 2", "while you were away 3"]), `order: ${mine}`);
  await tick(bob, "typed offline", "read");
  await seen(alice, "typed offline");
  await tick(alice, "while you were away 3", "read");
  await alice.page.locator(".subtitle", { hasText: "online" }).waitFor({ timeout: WAIT });
  // Exactly once, after all that.
  check((await bubble(alice, "typed offline").count()) === 1, "sent once");
  // The contacts page shows who is online.
  await alice.page.goto("/#/contacts");
  await alice.page.locator(`[data-contact="${bob.username}"] .dot.online`).waitFor({ timeout: WAIT });
  noProblems(alice, bob);
}

async function group(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  const carol = await person(browser, "carol");
  await register(alice, "Alice");
  await register(bob, "Bob");
  await register(carol, "Carol");
  await addContact(alice, bob);
  await alice.page.goto("/#/new-group");
  await named(alice, "the new group page");
  await alice.page.getByLabel("Group name").fill("Weekend trip");
  await alice.page.getByRole("checkbox", { name: /Bob/ }).check();
  await alice.page.getByLabel("Other members (usernames, separated by commas)").fill(carol.username);
  await alice.page.getByRole("button", { name: "Create group" }).click();
  await alice.page.getByLabel("Message", { exact: true }).waitFor({ timeout: WAIT });
  await type(alice, "who brings the tent?");
  for (const p of [bob, carol]) {
    await openThread(p, "Weekend trip");
    await seen(p, "who brings the tent?");
  }
  await type(bob, "me");
  await type(carol, "I bring food");
  for (const p of [alice, bob]) await seen(p, "I bring food");
  await seen(carol, "me");
  await tick(alice, "who brings the tent?", "read");
  await alice.page.screenshot({ path: join(SHOTS, "desktop-group.png") });
  await named(alice, "a group chat");
  // Group info: members, remove and add.
  await alice.page.getByRole("link", { name: "Group info" }).click();
  await alice.page.locator(`[data-member="${carol.username}"]`).waitFor({ timeout: WAIT });
  check((await alice.page.locator("[data-member]").count()) === 3, "three members");
  await named(alice, "the group info page");
  await alice.page.getByRole("button", { name: "Remove Carol" }).click();
  await alice.page.locator(`[data-member="${carol.username}"]`).waitFor({ state: "detached", timeout: WAIT });
  await alice.page.getByLabel("Add members (usernames, separated by commas)").fill(carol.username);
  await alice.page.getByRole("button", { name: "Add", exact: true }).click();
  await alice.page.locator(`[data-member="${carol.username}"]`).waitFor({ timeout: WAIT });
  noProblems(alice, bob, carol);
}

async function mobile(browser) {
  const phone = { viewport: { width: 360, height: 640 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };
  const dana = await person(browser, "dana", phone);
  const eli = await person(browser, "eli");
  await dana.page.goto("/");
  await dana.page.getByRole("heading", { name: "Log in to natter" }).waitFor();
  await dana.page.screenshot({ path: join(SHOTS, "mobile-login.png") });
  await named(dana, "the login page on a phone");
  await register(eli, "Eli Laptop");
  await register(dana, "Dana Phone");
  const outside = await dana.page.evaluate(() =>
    [...document.querySelectorAll("button, a, input, textarea, h1, .thread-time")]
      .filter((el) => el.getClientRects().length && el.getBoundingClientRect().right > innerWidth + 0.5)
      .map((el) => el.textContent),
  );
  check(outside.length === 0, `nothing sticks out of a 360 px screen: ${outside}`);
  await openChatWith(dana, eli, "Eli Laptop");
  await type(dana, "Hi Eli, this is my phone");
  await openThread(eli, "Dana Phone");
  await type(eli, "Hello Dana! Here is a longer message to show how bubbles wrap on a small screen.");
  await seen(dana, "Hello Dana!");
  await tick(dana, "this is my phone", "read");
  await dana.page.screenshot({ path: join(SHOTS, "mobile-chat.png") });
  await named(dana, "a chat on a phone");
  // Touch-sized targets: every visible button and link is at least 44 px tall.
  const small = await dana.page.evaluate(() =>
    [...document.querySelectorAll("button, a.button, .thread")]
      .filter((el) => el.getClientRects().length && el.getBoundingClientRect().height < 43.5)
      .map((el) => el.textContent),
  );
  check(small.length === 0, `small targets: ${small}`);
  await dana.page.getByRole("button", { name: "Back to chats" }).click();
  await dana.page.getByRole("navigation", { name: "Chats" }).waitFor();
  await dana.page.screenshot({ path: join(SHOTS, "mobile-chats.png") });
  await named(dana, "the chat list on a phone");
  // Installable: a manifest and a service worker that opens the app offline to the last state.
  const manifest = await dana.page.evaluate(async () => (await fetch("/manifest.webmanifest")).json());
  check(manifest.display === "standalone" && manifest.icons.length >= 2, "manifest");
  await dana.page.waitForFunction(async () => Boolean((await navigator.serviceWorker.getRegistration())?.active), null, { timeout: WAIT });
  await dana.context.setOffline(true);
  await dana.page.reload();
  await dana.page.getByRole("navigation", { name: "Chats" }).getByRole("link", { name: /Eli Laptop/ }).waitFor({ timeout: WAIT });
  await openThread(dana, "Eli Laptop");
  await seen(dana, "Hello Dana!");
  await dana.page.getByTestId("connection").filter({ hasText: "Offline: messages wait" }).waitFor({ timeout: WAIT });
  await dana.page.screenshot({ path: join(SHOTS, "mobile-offline.png") });
  await dana.context.setOffline(false);
  // A wide screen, for the README.
  await eli.page.setViewportSize({ width: 1100, height: 680 });
  await eli.page.screenshot({ path: join(SHOTS, "desktop-chat.png") });
  noProblems(dana, eli);
}

async function expired(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  await register(alice, "Alice");
  await register(bob, "Bob");
  await openChatWith(alice, bob, "Bob");
  // Oversized text is refused before sending.
  const box = alice.page.getByLabel("Message", { exact: true });
  await box.fill("x".repeat(64 * 1024 + 1));
  await alice.page.getByRole("alert").filter({ hasText: "the limit is 65,536" }).waitFor({ timeout: WAIT });
  check(await alice.page.getByRole("button", { name: "Send" }).isDisabled(), "send disabled when too long");
  await box.fill("");
  // Alice goes offline, writes, and meanwhile her device is logged out elsewhere.
  await alice.context.setOffline(true);
  await alice.page.locator('.shell[data-conn="offline"]').waitFor({ timeout: WAIT });
  await type(alice, "written before the token died");
  await tick(alice, "written before the token died", "pending");
  const token = await alice.page.evaluate(() => window.natter.state.token);
  const res = await fetch(`${BASE}/natter.v1.AccountService/Logout`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
    body: "{}",
  });
  check(res.status === 200, `logout ${res.status}`);
  await alice.context.setOffline(false);
  await alice.page.getByRole("heading", { name: "Log in to natter" }).waitFor({ timeout: WAIT });
  await alice.page.getByText("1 unsent message is kept").waitFor({ timeout: WAIT });
  check((await alice.page.getByLabel("Username").inputValue()) === alice.username, "username kept");
  // By keyboard this time.
  await alice.page.getByLabel("Password").focus();
  await alice.page.keyboard.type(PASSWORD);
  await alice.page.keyboard.press("Enter");
  await connected(alice);
  await openThread(bob, "Alice");
  await seen(bob, "written before the token died");
  noProblems(alice, bob);
}

async function login(p, username = p.username) {
  await p.page.goto("/");
  await p.page.getByLabel("Username").fill(username);
  await p.page.getByLabel("Password").fill(PASSWORD);
  await p.page.getByRole("button", { name: "Log in" }).click();
  await connected(p);
}

async function chatMenu(p, item) {
  await p.page.getByRole("button", { name: "Chat menu" }).click();
  await p.page.getByRole("menuitem", { name: item }).click();
}

/** The settings area with two people and a second device: block, mute, devices, password, theme, search, badge, delete. */
async function settings(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob", { viewport: { width: 1100, height: 760 } });
  const carol = await person(browser, "carol");
  await register(alice, "Alice");
  await register(bob, "Bob");
  await register(carol, "Carol");
  await openChatWith(alice, bob, "Bob");
  await type(alice, "hello bob");
  await tick(alice, "hello bob", "delivered");
  // The unread count is in bob's tab title and on its favicon.
  await bob.page.waitForFunction(() => document.title === "(1) natter", null, { timeout: WAIT });
  const badge = await bob.page.locator('link[rel="icon"]').getAttribute("data-unread");
  check(badge === "1", `favicon badge ${badge}`);
  // Bob finds the chat, and a contact without one, through the chat-list search.
  await addContact(bob, carol);
  await bob.page.goto("/#/");
  const search = bob.page.getByLabel("Search chats and contacts");
  await search.fill("ali");
  const chats = bob.page.getByRole("navigation", { name: "Chats" });
  await chats.getByRole("link", { name: /^Alice/ }).waitFor({ timeout: WAIT });
  check((await chats.locator("[data-thread]").count()) === 1, "only the matching chat");
  await search.fill("caro");
  await chats.getByRole("button", { name: "Message Carol" }).waitFor({ timeout: WAIT });
  check((await chats.locator("[data-thread]").count()) === 0, "no chat matches carol");
  await search.fill("");
  await openThread(bob, "Alice");
  await seen(bob, "hello bob");
  await bob.page.waitForFunction(() => document.title === "natter", null, { timeout: WAIT });
  await named(bob, "a chat with its menu");
  // Mute from the chat's menu: the chat list marks it, Settings lists it, unmute there.
  await chatMenu(bob, "Mute for 8 hours");
  const thread = await chats.locator("[data-thread]").first().getAttribute("data-thread");
  await chats.locator(`[data-thread="${thread}"] [data-muted]`).waitFor({ timeout: WAIT });
  await chats.getByRole("link", { name: /^Alice\b.*\bmuted\b/ }).waitFor({ timeout: WAIT });
  // Block from the chat's menu: alice's next message is refused and says so.
  await chatMenu(bob, "Block Alice");
  await bob.page.getByRole("button", { name: "Chat menu" }).click();
  await bob.page.getByRole("menuitem", { name: "Unblock Alice" }).waitFor({ timeout: WAIT });
  await bob.page.keyboard.press("Escape");
  await type(alice, "are you there");
  await tick(alice, "are you there", "failed");
  await alice.page.getByText("cannot be delivered").first().waitFor({ timeout: WAIT });
  await bob.page.goto("/#/settings");
  await bob.page.getByRole("heading", { name: "Settings" }).waitFor({ timeout: WAIT });
  await bob.page.locator(`[data-blocked="${alice.username}"]`).waitFor({ timeout: WAIT });
  await bob.page.locator(`[data-muted="${thread}"]`).waitFor({ timeout: WAIT });
  await named(bob, "the settings page");
  await bob.page.screenshot({ path: join(SHOTS, "settings.png"), fullPage: false });
  await bob.page.getByRole("button", { name: "Unblock Alice" }).click();
  await bob.page.locator(`[data-blocked="${alice.username}"]`).waitFor({ state: "detached", timeout: WAIT });
  await bob.page.getByRole("button", { name: "Unmute Alice" }).click();
  await bob.page.locator(`[data-muted="${thread}"]`).waitFor({ state: "detached", timeout: WAIT });
  check((await chats.locator(`[data-thread="${thread}"] [data-muted]`).count()) === 0, "unmuted in the chat list");
  // Privacy mode and last seen are the account's: GetMe agrees with the screen.
  await bob.page.getByLabel("Sender only").check();
  await bob.page.getByLabel("Show when I was last online").uncheck();
  const bobToken = await bob.page.evaluate(() => window.natter.state.token);
  const me = async () =>
    (
      await fetch(`${BASE}/natter.v1.AccountService/GetMe`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${bobToken}` },
        body: "{}",
      })
    ).json();
  const deadline = Date.now() + WAIT;
  let got = await me();
  while (!(got.notificationPreview === "NOTIFICATION_PREVIEW_SENDER_ONLY" && got.hideLastSeen) && Date.now() < deadline) {
    await bob.page.waitForTimeout(100);
    got = await me();
  }
  check(got.notificationPreview === "NOTIFICATION_PREVIEW_SENDER_ONLY" && got.hideLastSeen, `GetMe: ${JSON.stringify(got)}`);
  // Display name.
  await bob.page.getByLabel("Display name").fill("Bobby");
  await bob.page.getByRole("button", { name: "Save" }).click();
  await bob.page.locator(".me", { hasText: "Bobby" }).waitFor({ timeout: WAIT });
  // The dark theme: by the switch, and by the system's preference.
  await bob.page.getByLabel("Dark").check();
  check((await bob.page.evaluate(() => document.documentElement.dataset.theme)) === "dark", "data-theme=dark");
  const dark = await bob.page.evaluate(() => getComputedStyle(document.querySelector(".page")).backgroundColor);
  check(dark === "rgb(15, 21, 19)", `dark background ${dark}`);
  await bob.page.screenshot({ path: join(SHOTS, "settings-dark.png"), fullPage: false });
  await bob.page.getByLabel("Like the system").check();
  const sys = await person(browser, "sys", { colorScheme: "dark" });
  await sys.page.goto("/");
  const auto = await sys.page.evaluate(() => getComputedStyle(document.body).color);
  check(auto === "rgb(228, 235, 231)", `prefers-color-scheme dark text ${auto}`);
  // Alice logs in on a second device; from the first she logs it out: it is signed out.
  const phone = await person(browser, "alice-phone", { viewport: { width: 360, height: 640 }, isMobile: true, hasTouch: true });
  await login(phone, alice.username);
  await alice.page.goto("/#/devices");
  await alice.page.getByText("(this device)").waitFor({ timeout: WAIT });
  await alice.page.locator("[data-device]:not([data-current])").waitFor({ timeout: WAIT });
  check((await alice.page.locator("[data-device]").count()) === 2, "two devices");
  await named(alice, "the devices page");
  await alice.page.screenshot({ path: join(SHOTS, "devices.png"), fullPage: false });
  await alice.page.locator("[data-device]:not([data-current])").getByRole("button", { name: /^Log out/ }).click();
  await phone.page.getByRole("heading", { name: "Log in to natter" }).waitFor({ timeout: WAIT });
  await alice.page.getByRole("status").filter({ hasText: "was logged out" }).waitFor({ timeout: WAIT });
  // The phone again, then a new password from the laptop logs it out too.
  await login(phone, alice.username);
  await phone.page.goto("/#/settings");
  await phone.page.getByRole("heading", { name: "Settings" }).waitFor({ timeout: WAIT });
  await named(phone, "the settings page on a phone");
  await phone.page.screenshot({ path: join(SHOTS, "mobile-settings.png"), fullPage: false });
  await alice.page.goto("/#/settings");
  await alice.page.getByLabel("Current password").fill(PASSWORD);
  await alice.page.getByLabel("New password (at least 8 characters)").fill("a brand new password");
  await alice.page.getByRole("button", { name: "Change password" }).click();
  await alice.page.getByText("1 other device was logged out").waitFor({ timeout: WAIT });
  await phone.page.getByRole("heading", { name: "Log in to natter" }).waitFor({ timeout: WAIT });
  // Carol deletes her account (the password confirms it) and cannot log in again.
  await carol.page.goto("/#/settings");
  await carol.page.getByRole("button", { name: "Delete my account…" }).click();
  await carol.page.getByLabel("Your password, to confirm").fill("not her password");
  await carol.page.getByRole("button", { name: "Delete my account for good" }).click();
  await carol.page.getByRole("alert").first().waitFor({ timeout: WAIT });
  await carol.page.getByLabel("Your password, to confirm").fill(PASSWORD);
  await carol.page.getByRole("button", { name: "Delete my account for good" }).click();
  await carol.page.getByRole("heading", { name: "Log in to natter" }).waitFor({ timeout: WAIT });
  await carol.page.getByLabel("Username").fill(carol.username);
  await carol.page.getByLabel("Password").fill(PASSWORD);
  await carol.page.getByRole("button", { name: "Log in" }).click();
  await carol.page.getByRole("alert").first().waitFor({ timeout: WAIT });
  noProblems(alice, bob, carol, phone, sys);
}

/** Report a person from the chat's menu (and block them with it). */
async function report(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  await register(alice, "Alice");
  await register(bob, "Bob");
  await openChatWith(alice, bob, "Bob");
  await type(alice, "buy my coins");
  await openThread(bob, "Alice");
  await seen(bob, "buy my coins");
  await chatMenu(bob, "Report Alice");
  await bob.page.getByRole("heading", { name: "Report Alice" }).waitFor({ timeout: WAIT });
  await named(bob, "the report page");
  await bob.page.getByLabel("Scam or fraud").check();
  await bob.page.getByLabel("Anything the admins should know (optional)").fill("asks for money");
  await bob.page.getByRole("button", { name: "Send report" }).click();
  await bob.page.getByRole("status").filter({ hasText: "Alice is blocked" }).waitFor({ timeout: WAIT });
  await bob.page.goto("/#/settings");
  await bob.page.locator(`[data-blocked="${alice.username}"]`).waitFor({ timeout: WAIT });
  noProblems(alice, bob);
}

/** Typing at a fast human pace is never rate limited; the indicator ends with the message, and when the box is cleared. */
async function typing(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  const limited = [];
  alice.page.on("console", (m) => {
    if (/RATE_LIMITED|limited/.test(m.text())) limited.push(m.text());
  });
  await register(alice, "Alice");
  await register(bob, "Bob");
  await openChatWith(alice, bob, "Bob");
  await type(alice, "hi");
  await openThread(bob, "Alice");
  await seen(bob, "hi");
  const box = alice.page.getByLabel("Message", { exact: true });
  const typingShown = bob.page.locator(".chat-head .subtitle", { hasText: "Alice is typing…" });
  // 12 short messages typed at ~12 keys a second, each sent at once.
  for (let i = 0; i < 12; i++) {
    await box.pressSequentially(`ok ${i}`, { delay: 80 });
    if (i === 0) await typingShown.waitFor({ timeout: WAIT });
    await box.press("Enter");
  }
  await seen(bob, "ok 11");
  // The message ended the indicator: it is gone as soon as the message is there.
  check((await typingShown.count()) === 0, "typing cleared by the message");
  // Typing then clearing the box: the indicator goes well before it would expire (6 s).
  await box.pressSequentially("wait", { delay: 80 });
  await typingShown.waitFor({ timeout: WAIT });
  const cleared = Date.now();
  await box.fill("");
  await box.dispatchEvent("input");
  await typingShown.waitFor({ state: "detached", timeout: WAIT });
  check(Date.now() - cleared < 3000, `indicator gone ${Date.now() - cleared} ms after clearing`);
  check(limited.length === 0, `rate limited: ${limited.join(" | ")}`);
  noProblems(alice, bob);
}

/**
 * The service worker's push handling, through the DevTools protocol (no vendor push service
 * here): NATTER_PUSH_PAYLOADS holds what natter really sent to a subscription of
 * NATTER_PUSH_USER (decrypted by the test's push service); each is delivered with
 * ServiceWorker.deliverPushMessage, the notification is read back from the registration,
 * and a tap on it opens the chat.
 */
async function push(browser) {
  const payloads = JSON.parse(process.env.NATTER_PUSH_PAYLOADS ?? "[]");
  const username = process.env.NATTER_PUSH_USER ?? "";
  check(payloads.length >= 2 && username, "NATTER_PUSH_PAYLOADS (2) and NATTER_PUSH_USER are set");
  const bob = await person(browser, "bob");
  await bob.context.grantPermissions(["notifications"], { origin: BASE });
  const { page } = bob;
  await page.goto("/");
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await connected(bob);
  await page.waitForFunction(() => Boolean(navigator.serviceWorker.controller), null, { timeout: WAIT });
  const cdp = await bob.context.newCDPSession(page);
  const registrations = [];
  cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => registrations.push(...e.registrations));
  await cdp.send("ServiceWorker.enable");
  const deadline = Date.now() + WAIT;
  while (!registrations.some((r) => !r.isDeleted) && Date.now() < deadline) await page.waitForTimeout(50);
  const registration = registrations.find((r) => !r.isDeleted);
  check(registration, "the service worker's registration is known");
  const notifications = () =>
    page.evaluate(async () =>
      (await (await navigator.serviceWorker.ready).getNotifications()).map((n) => ({
        title: n.title,
        body: n.body,
        tag: n.tag,
        data: n.data,
      })),
    );
  const deliver = async (data) => {
    await cdp.send("ServiceWorker.deliverPushMessage", {
      origin: new URL(BASE).origin,
      registrationId: registration.registrationId,
      data: JSON.stringify(data),
    });
  };
  const [full, hidden] = payloads;
  await deliver(full);
  await page.waitForFunction(async () => (await (await navigator.serviceWorker.ready).getNotifications()).length === 1, null, { timeout: WAIT });
  let [shown] = await notifications();
  check(shown.title === full.sender, `title is the sender: ${shown.title}`);
  check(shown.body === full.text, `body is the text: ${shown.body}`);
  check(shown.tag === `natter-thread-${full.thread_id}`, `tag per chat: ${shown.tag}`);
  // The same chat again, in privacy mode: it replaces the first (one per chat), says nothing.
  // Chromium replaces a tagged notification asynchronously (a read may still return the
  // old one): the checks look at the first read that shows one notification from natter.
  await deliver(hidden);
  let all;
  const deadlineReplaced = Date.now() + WAIT;
  do {
    all = await notifications();
    if (all.length === 1 && all[0].title === "natter") break;
    await page.waitForTimeout(50);
  } while (Date.now() < deadlineReplaced);
  check(all.length === 1, `one notification per chat, not ${JSON.stringify(all)}`);
  [shown] = all;
  check(shown.body === "New message" && hidden.text === undefined, `hidden: ${shown.body}`);
  // A tap opens the chat. The click is dispatched in the worker (CDP cannot tap a
  // notification); its handler is the one a real tap runs.
  const [worker] = bob.context.serviceWorkers();
  check(worker, "the service worker runs");
  await worker.evaluate(async () => {
    const [n] = await self.registration.getNotifications();
    // eslint-disable-next-line no-undef -- runs in the service worker, which has it
    self.dispatchEvent(new NotificationEvent("notificationclick", { notification: n }));
  });
  await page.waitForFunction((id) => location.hash === `#/chat/${id}`, full.thread_id, { timeout: WAIT });
  await seen(bob, full.text);
  check((await notifications()).length === 0, "the tapped notification is closed");
  noProblems(bob);
}


/** A width×height PNG of a gradient, made here (no fixture files). */
function png(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) row.set([(x * 255) / width, (y * 255) / height, 160], 1 + x * 3);
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** Opens a bubble's actions (hover, as on a desktop) and clicks one. */
async function action(p, text, name) {
  const b = bubble(p, text);
  await b.hover();
  await b.getByRole("button", { name, exact: true }).click();
}

async function rich(browser) {
  const alice = await person(browser, "alice");
  const bob = await person(browser, "bob");
  const carol = await person(browser, "carol");
  alice.page.on("dialog", (d) => void d.accept());
  await register(alice, "Alice");
  await register(bob, "Bob");
  await register(carol, "Carol");
  await addContact(alice, bob);
  await alice.page.goto("/#/new-group");
  await alice.page.getByLabel("Group name").fill("Photos");
  await alice.page.getByRole("checkbox", { name: /Bob/ }).check();
  await alice.page.getByLabel("Other members (usernames, separated by commas)").fill(carol.username);
  await alice.page.getByRole("button", { name: "Create group" }).click();
  await alice.page.getByLabel("Message", { exact: true }).waitFor({ timeout: WAIT });
  await type(alice, "see you at the harbour at eight");
  await type(alice, "this one goes to the wrong chat");
  await openThread(bob, "Photos");
  await seen(bob, "wrong chat");
  // Carol's device goes offline and stays so through all of it.
  await openThread(carol, "Photos");
  await seen(carol, "wrong chat");
  await carol.context.setOffline(true);
  await carol.page.locator('.shell[data-conn="offline"]').waitFor({ timeout: WAIT });

  // Alice attaches a photo (the picker; drop and paste take the same path) and sends it with a caption.
  await alice.page.locator("#composer-file").setInputFiles({ name: "harbour.png", mimeType: "image/png", buffer: png(320, 200) });
  await alice.page.locator('[data-upload="harbour.png"][data-done="true"]').waitFor({ timeout: WAIT });
  await type(alice, "the harbour");
  await named(alice, "a chat with a photo");
  // Bob sees the thumbnail at once and the full image on tap; Escape closes the viewer.
  const photo = bubble(bob, "the harbour").locator(".photo img.loaded");
  await photo.waitFor({ timeout: WAIT });
  await bubble(bob, "the harbour").getByRole("button", { name: "Open photo harbour.png" }).click();
  const viewer = bob.page.getByRole("dialog", { name: "Photo harbour.png" });
  await viewer.locator("img[data-full]").waitFor({ timeout: WAIT });
  check(await viewer.locator("img[data-full]").evaluate((img) => img.complete && img.naturalWidth === 320), "the full image loaded");
  await bob.page.keyboard.press("Escape");
  await viewer.waitFor({ state: "detached", timeout: WAIT });

  // Bob replies quoting the photo, reacts 👍 to the first message, then edits his reply.
  await action(bob, "the harbour", "Reply");
  await bob.page.locator('[data-testid="replying"]').waitFor({ timeout: WAIT });
  await type(bob, "lovely photo");
  await action(bob, "at eight", "React");
  await bob.page.getByRole("button", { name: "React 👍" }).click();
  await action(bob, "lovely photo", "More actions");
  await bob.page.getByRole("menuitem", { name: "Edit" }).click();
  const box = bob.page.getByLabel("Message", { exact: true });
  // The menu's Edit fills the box on the next render: wait for it rather than read it at once.
  const filled = await box
    .evaluate((el, want) => new Promise((ok) => {
      const seen = () => el.value === want && (ok(true), true);
      if (seen()) return;
      const t = setInterval(() => seen() && clearInterval(t), 20);
      setTimeout(() => (clearInterval(t), ok(false)), 5000);
    }), "lovely photo");
  check(filled, "the box holds the text to edit");
  await box.fill("lovely photo of the harbour");
  await box.press("Enter");
  // Alice deletes her wrong message for everyone.
  await action(alice, "wrong chat", "More actions");
  await alice.page.getByRole("menuitem", { name: "Delete for everyone" }).click();

  /** What a device shows of the thread, to compare across devices. */
  async function thread(p) {
    await seen(p, "lovely photo of the harbour");
    await p.page.locator('.bubble [data-deleted="true"]').waitFor({ timeout: WAIT });
    await bubble(p, "at eight").locator('.reaction[data-emoji="👍"]').waitFor({ timeout: WAIT });
    await p.page.locator(".photo img.loaded").first().waitFor({ timeout: WAIT });
    return p.page.locator('[data-testid="message"]').evaluateAll((els) =>
      els.map((el) => ({
        text: el.querySelector(".text")?.textContent ?? "",
        quote: el.querySelector(".quote .quote-text")?.textContent ?? "",
        photo: !!el.querySelector(".photo"),
        edited: !!el.querySelector("[data-edited]"),
        deleted: !!el.querySelector("[data-deleted]"),
        reactions: [...el.querySelectorAll(".reaction")].map((r) => r.textContent),
      })),
    );
  }
  const seenByAlice = await thread(alice);
  const seenByBob = await thread(bob);
  check(JSON.stringify(seenByAlice) === JSON.stringify(seenByBob), `alice and bob see the same thread:\n${JSON.stringify(seenByAlice)}\n${JSON.stringify(seenByBob)}`);
  const reply = seenByBob.find((m) => m.text.includes("lovely photo"));
  check(reply?.quote === "the harbour" && reply.edited, `the reply quotes the photo and is marked edited: ${JSON.stringify(reply)}`);
  check(seenByBob.find((m) => m.text.includes("at eight"))?.reactions[0]?.includes("1"), "one 👍");
  check(!seenByBob.some((m) => m.text.includes("wrong chat")), "the deleted text is gone");
  await bob.page.screenshot({ path: join(SHOTS, "desktop-rich.png") });

  // Tapping the quote jumps to the original.
  await bubble(bob, "lovely photo").locator(".quote").click();
  await bob.page.locator(".bubble.flash").filter({ hasText: "the harbour" }).waitFor({ timeout: WAIT });

  // Bob searches his history for a word and jumps to the message.
  await bob.page.getByRole("button", { name: "Search messages" }).click();
  await bob.page.getByRole("searchbox", { name: "Search messages" }).fill("harbour");
  await bob.page.getByRole("button", { name: "Search", exact: true }).click();
  const hit = bob.page.locator("[data-hit]").filter({ hasText: "at eight" });
  await hit.waitFor({ timeout: WAIT });
  await named(bob, "search results");
  await hit.click();
  await bob.page.locator(".bubble.flash").filter({ hasText: "at eight" }).waitFor({ timeout: WAIT });

  // Carol's device comes back and shows the same thread.
  await carol.context.setOffline(false);
  await connected(carol);
  const seenByCarol = await thread(carol);
  check(JSON.stringify(seenByCarol) === JSON.stringify(seenByBob), `carol converges:\n${JSON.stringify(seenByCarol)}\n${JSON.stringify(seenByBob)}`);
  noProblems(alice, bob, carol);
}

/**
 * Fresh logins, one after another, each in a new browser context (no stored device): every one
 * must reach the chat list and come online. A stall fails with the tab's connection log.
 * NATTER_LOGINS sets how many (default 8).
 */
async function logins(browser) {
  const times = Number(process.env.NATTER_LOGINS ?? 8);
  const first = await person(browser, "lee");
  await register(first, "Lee");
  // The debug page shows the steps that led here, and passes the same checks as any screen.
  await first.page.goto("/#/debug");
  await first.page.getByRole("heading", { name: "Connection log" }).waitFor({ timeout: WAIT });
  for (const step of ["register", "log in", "logged in", "connect", "welcome", "sync done"]) {
    check((await first.page.locator(`tr[data-event="${step}"]`).count()) >= 1, `the log has "${step}"`);
  }
  check((await first.page.getByTestId("conn-state").textContent()) === "online", "the debug page says online");
  await named(first, "the connection log");
  await first.context.close();
  const took = [];
  for (let i = 0; i < times; i++) {
    const p = await person(browser, `lee${i}`);
    const started = Date.now();
    await p.page.goto("/");
    await p.page.getByLabel("Username").fill(first.username);
    await p.page.getByLabel("Password").fill(PASSWORD);
    await p.page.getByRole("button", { name: "Log in" }).click();
    try {
      await p.page.getByRole("navigation", { name: "Chats" }).waitFor({ timeout: WAIT });
      await connected(p);
    } catch (e) {
      const log = await p.page.evaluate(() => window.natter.log.map((x) => `${new Date(x.at).toISOString()} ${x.event}: ${x.detail} → ${x.conn}`));
      throw new Error(`login ${i + 1} of ${times} stalled: ${e.message}\n  ${log.join("\n  ")}`, { cause: e });
    }
    took.push(Date.now() - started);
    noProblems(p);
    await p.context.close();
  }
  took.sort((a, b) => a - b);
  console.log(`${times} logins: median ${took[Math.floor(times / 2)]} ms, slowest ${took[times - 1]} ms`);
}

const SCENARIOS = { chat, offline, group, mobile, expired, settings, report, typing, logins, rich, push };

const wanted = process.argv.slice(2).length ? process.argv.slice(2) : Object.keys(SCENARIOS).filter((s) => s !== "push");
mkdirSync(SHOTS, { recursive: true });
let passed = 0;
let failed = 0;
const browser = await launch();
for (const name of wanted) {
  const fn = SCENARIOS[name];
  if (!fn) {
    console.error(`unknown scenario ${name}`);
    failed++;
    continue;
  }
  const started = Date.now();
  scenario = name;
  try {
    await fn(browser);
    passed++;
    console.log(`ok ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
  } finally {
    for (const c of browser.contexts()) await c.close().catch(() => {});
  }
}
await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
