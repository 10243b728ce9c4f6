// The SDK's tests under Node: unit tests, and scenarios against a real natter server.
import { defineConfig } from "vitest/config";

// Node 20 has a WebSocket behind a flag (on by default from Node 22): the browser entry point's
// test uses it. Test processes inherit this.
if (!process.env.NODE_OPTIONS?.includes("--experimental-websocket") && Number(process.versions.node.split(".")[0]) < 22) {
  process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ""} --experimental-websocket`.trim();
}

export default defineConfig({
  test: { include: ["test/**/*.test.ts"], environment: "node", testTimeout: 90_000, hookTimeout: 90_000, fileParallelism: false },
});
