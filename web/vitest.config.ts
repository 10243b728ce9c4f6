// Unit tests of the client's sync and outbox logic (no browser needed).
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
