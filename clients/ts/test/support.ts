// Test support: a real `natter serve` process, a TCP proxy that cuts streams, waiting on conditions.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, existsSync, openSync, closeSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { NatterClient, type Connection, type Event } from "../src/index.js";
import type { Message } from "../src/v1.js";
import { MessageKind } from "../src/v1.js";
import { nodeClient } from "../src/node.js";

export const PASSWORD = "correct horse battery";
const BIN = process.env.NATTER_BIN ?? resolve(import.meta.dirname, "..", "..", "..", ".venv", "bin", "natter");

/** `natter serve` (embedded, SQLite in a temporary folder); kill() and start() again keep its ports and data. */
export class NatterServer {
  readonly dir = mkdtempSync(join(tmpdir(), "natter-ts-"));
  private proc: ChildProcess | null = null;
  grpcPort = 0;
  httpPort = 0;

  get address(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  async start(timeoutMs = 60_000): Promise<this> {
    if (!existsSync(BIN)) throw new Error(`no natter at ${BIN}: run scripts/install first`);
    const log = join(this.dir, "server.log");
    const from = existsSync(log) ? readFileSync(log).length : 0;
    const fd = openSync(log, "a");
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NATTER_")));
    this.proc = spawn(
      BIN,
      ["serve", "--data", join(this.dir, "data"), "--grpc", `127.0.0.1:${this.grpcPort}`, "--http", `127.0.0.1:${this.httpPort}`],
      {
        env: {
          ...env,
          NATTER_ARGON2_MEMORY_KIB: "1024",
          NATTER_ARGON2_TIME_COST: "1",
          NATTER_ACK_FLUSH_SECONDS: "0.05",
          NATTER_LOG_LEVEL: "INFO",
          // Every test registers its own people, all from 127.0.0.1.
          NATTER_REGISTRATIONS_PER_IP_PER_HOUR: "100000",
          NATTER_REGISTRATIONS_PER_HOUR: "100000",
        },
        stdio: ["ignore", fd, fd],
      },
    );
    closeSync(fd);
    await eventually(
      () => {
        if (this.proc?.exitCode !== null) throw new Error(`natter serve exited:\n${readFileSync(log, "utf8").slice(-3000)}`);
        const m = /serving gRPC on [^ ]+:(\d+) and HTTP on [^ ]+:(\d+)/.exec(readFileSync(log, "utf8").slice(from));
        if (!m) return false;
        this.grpcPort = Number(m[1]);
        this.httpPort = Number(m[2]);
        return true;
      },
      timeoutMs,
      "natter serve listening",
    );
    return this;
  }

  /** kill -9: no shutdown, nothing flushed beyond what was committed. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once("exit", r));
    p.kill("SIGKILL");
    await gone;
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (p && p.exitCode === null) {
      const gone = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await gone;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 15_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let serial = 0;

export async function newUser(address: string, base: string): Promise<NatterClient> {
  const name = `${base}-${process.pid % 10000}-${++serial}`;
  const client = nodeClient(address);
  await client.register(name, PASSWORD, base[0].toUpperCase() + base.slice(1));
  await client.login(name, PASSWORD, "vitest");
  return client;
}

export function nameOf(c: NatterClient): string {
  return c.user!.username;
}

/** Events up to and including the first that matches. */
export async function until(conn: Connection, match: (ev: Event) => boolean, timeoutMs = 15_000): Promise<Event[]> {
  const seen: Event[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no matching event within ${timeoutMs} ms; saw ${JSON.stringify(seen.slice(-3).map((e) => e.type))}`);
    const ev = await conn.next(left);
    if (!ev) continue;
    seen.push(ev);
    if (match(ev)) return seen;
  }
}

/** The next n text messages from other devices (other events are taken and skipped). */
export async function received(conn: Connection, n: number, timeoutMs = 20_000): Promise<Message[]> {
  const out: Message[] = [];
  if (n === 0) return out;
  await until(
    conn,
    (ev) => {
      if (ev.type === "message" && !ev.own && ev.message.kind === MessageKind.TEXT) out.push(ev.message);
      return out.length >= n;
    },
    timeoutMs,
  );
  return out;
}

/** A TCP proxy on loopback: hold() keeps the server's bytes from the client, cut() closes every connection. */
export class TcpProxy {
  private server: net.Server;
  private sockets = new Set<net.Socket>();
  private holding = false;
  private held: (() => void)[] = [];
  port = 0;

  constructor(private targetPort: number) {
    this.server = net.createServer((down) => {
      const up = net.connect(this.targetPort, "127.0.0.1");
      this.sockets.add(down).add(up);
      down.on("data", (b) => up.write(b));
      up.on("data", (b) => (this.holding ? this.held.push(() => down.write(b)) : down.write(b)));
      const end = () => {
        down.destroy();
        up.destroy();
      };
      for (const s of [down, up]) s.on("error", end).on("close", end);
    });
  }

  async listen(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  hold(): void {
    this.holding = true;
  }

  cut(): void {
    this.held = [];
    this.holding = false;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}
