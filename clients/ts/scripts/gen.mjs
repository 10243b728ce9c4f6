// Regenerates src/gen from ../proto with buf and the local protoc-gen-es (never edit src/gen).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const candidates = [process.env.BUF, join(pkg, "..", "..", ".venv", "bin", "buf"), "buf"].filter(Boolean);

function works(bin) {
  const r = spawnSync(bin, ["--version"], { stdio: "ignore" });
  return r.status === 0;
}

const buf = candidates.find(works);
if (!buf) {
  if (existsSync(join(pkg, "src", "gen", "natter", "v1", "types_pb.ts"))) {
    console.warn("gen: buf not found (run scripts/install); using the committed src/gen");
    process.exit(0);
  }
  console.error("gen: buf not found and src/gen is missing; run scripts/install first");
  process.exit(1);
}
const r = spawnSync(buf, ["generate"], { cwd: pkg, stdio: "inherit" });
process.exit(r.status ?? 1);
