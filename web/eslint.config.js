// Lint rules for the web app: ESLint's and typescript-eslint's recommended sets (scripts/lint).
import js from "@eslint/js";
import { defineConfig } from "eslint/config";
import globals from "globals";
import tseslint from "typescript-eslint";

export default defineConfig(
  // Build output: not ours to lint.
  { ignores: ["dist/"] },
  js.configs.recommended,
  tseslint.configs.recommended,
  { files: ["src/**", "test/**"], languageOptions: { globals: globals.browser } },
  // vite.config.ts fills __SHELL__ in at build time.
  { files: ["sw/**"], languageOptions: { globals: { ...globals.serviceworker, __SHELL__: "readonly" } } },
  // Node scripts; the e2e scenarios and the benchmark also pass functions that run in the page (page.evaluate).
  { files: ["scripts/**", "*.config.{js,ts}", "test/**"], languageOptions: { globals: globals.node } },
  { files: ["e2e/**", "bench/**"], languageOptions: { globals: { ...globals.node, ...globals.browser } } },
);
