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
