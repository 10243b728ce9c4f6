// Builds the app into dist/ and writes a service worker that precaches the app shell.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { defaultClientConditions, defineConfig, type Plugin } from "vite";

const PUBLIC_SHELL = ["/manifest.webmanifest", "/icons/icon.svg", "/icons/icon-192.png", "/icons/icon-512.png"];

function serviceWorker(): Plugin {
  return {
    name: "natter-service-worker",
    apply: "build",
    generateBundle(_options, bundle) {
      const files = Object.keys(bundle)
        .filter((f) => !f.endsWith(".map") && f !== "index.html")
        .sort();
      const shell = ["/", ...files.map((f) => `/${f}`), ...PUBLIC_SHELL];
      const version = createHash("sha256").update(shell.join("\n")).digest("hex").slice(0, 12);
      const source = readFileSync(new URL("./sw/sw.js", import.meta.url), "utf8")
        .replace("__SHELL__", JSON.stringify(shell))
        .replace("__VERSION__", version);
      this.emitFile({ type: "asset", fileName: "sw.js", source });
    },
  };
}

export default defineConfig({
  plugins: [serviceWorker()],
  // The SDK (../clients/ts, linked by npm) from its TypeScript sources, with this app's one copy of
  // its dependencies.
  resolve: {
    conditions: ["natter-source", ...defaultClientConditions],
    preserveSymlinks: true,
    dedupe: ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web"],
  },
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, target: "es2022" },
  server: { proxy: { "/natter.v1.": "http://127.0.0.1:7080", "/ws": { target: "ws://127.0.0.1:7080", ws: true } } },
});
