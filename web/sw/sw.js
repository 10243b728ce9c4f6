// natter's service worker: the app shell comes from the cache, so the app opens offline.
// Built by vite.config.ts, which fills in the shell's file list and a version.
const VERSION = "__VERSION__";
const SHELL = __SHELL__;
const CACHE = `natter-shell-${VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("natter-shell-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return; // the gateway's POSTs always go to the network
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname === "/ws" || url.pathname === "/healthz") return;
  if (request.mode === "navigate") {
    // Fresh when the server answers, the cached shell when it does not.
    event.respondWith(fetch(request).catch(() => caches.match("/").then((hit) => hit || Response.error())));
    return;
  }
  event.respondWith(caches.match(request).then((hit) => hit || fetch(request)));
});

// -- push notifications (docs/push.md) ------------------------------------------------------
// The server sends a push only while this device has no live stream with the app in front.
// The payload is JSON, decrypted by the browser: thread_id, seq, count, url, preview
// ("full", "sender_only", "hidden"), and by preview kind, sender, title, text, system.
// One notification per chat (its tag): a newer push for the chat replaces the older one.

function describe(data) {
  const count = Number(data.count) > 1 ? Number(data.count) : 1;
  const many = count > 1 ? `${count} new messages` : "New message";
  if (data.preview === "hidden" || !data.sender) return { title: "natter", body: many };
  const group = data.kind === "group";
  const title = group && data.title ? data.title : data.sender;
  if (data.preview !== "full" || typeof data.text !== "string") {
    return { title, body: group ? `${data.sender} · ${many}` : many };
  }
  const text = group && !data.system ? `${data.sender}: ${data.text}` : data.text;
  return { title, body: count > 1 ? `${text}\n(+${count - 1} more)` : text };
}

self.addEventListener("push", (event) => {
  let data;
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = {}; // not JSON: still say that something came
  }
  const { title, body } = describe(data);
  const thread = Number(data.thread_id) || 0;
  const shown = self.registration.showNotification(title, {
    body,
    tag: thread ? `natter-thread-${thread}` : "natter",
    renotify: true,
    icon: "/icons/icon-192.png",
    timestamp: data.time ? Date.parse(data.time) : Date.now(),
    data: { url: typeof data.url === "string" ? data.url : "/", thread_id: thread, seq: data.seq ?? 0 },
  });
  event.waitUntil(shown);
});

// Tapping a notification focuses a natter window on that chat, or opens one.
async function openChat(url) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const ours = windows.find((c) => new URL(c.url).origin === self.location.origin);
  if (!ours) {
    await self.clients.openWindow(url);
    return;
  }
  ours.postMessage({ type: "natter.open", url });
  try {
    await ours.navigate(url); // a new fragment: the app routes to the chat without reloading
  } catch {
    // an uncontrolled window cannot be navigated from here; the message above still tells it
  }
  try {
    await ours.focus();
  } catch {
    // focusing needs the tap's user activation
  }
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const path = event.notification.data?.url ?? "/";
  const url = new URL(path, self.location.origin);
  const done = openChat(url.origin === self.location.origin ? url.href : self.location.origin + "/");
  try {
    event.waitUntil(done);
  } catch {
    // only a trusted event can be extended; the work above runs all the same
  }
});
