// Unit tests of the client's sync and outbox logic (no browser needed).
import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: { conditions: ["natter-source"], preserveSymlinks: true },
  ssr: { resolve: { conditions: ["natter-source"], externalConditions: ["natter-source"] } },
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
