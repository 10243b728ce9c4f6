// The SDK's tests under Node: unit tests, and scenarios against a real natter server.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: { include: ["test/**/*.test.ts"], environment: "node", testTimeout: 90_000, hookTimeout: 90_000, fileParallelism: false },
});
