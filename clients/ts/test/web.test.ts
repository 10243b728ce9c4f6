// The browser entry point under Node: calls through the Connect gateway, the stream over the
// WebSocket, chatting with a device on native gRPC (Node's WebSocket: --experimental-websocket).
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Event } from "../src/index.js";
import { nodeConnection } from "../src/node.js";
import { webClient, webConnection } from "../src/web.js";
import { NatterServer, PASSWORD, nameOf, newUser, received, until } from "./support.js";

const server = new NatterServer();
beforeAll(() => server.start());
afterAll(() => server.stop());

it("a WebSocket device and a gRPC device chat; logging out ends the socket for good", async () => {
  expect(typeof globalThis.WebSocket).toBe("function");
  const base = `http://127.0.0.1:${server.httpPort}`;
  const bob = await newUser(server.address, "bob");
  const alice = webClient(base);
  const name = `alice-web-${process.pid % 10000}`;
  await alice.register(name, PASSWORD);
  await alice.login(name, PASSWORD, "browser");
  const ca = await webConnection(alice, base).start();
  const cb = await nodeConnection(bob).start();
  const sent = await ca.send("over the socket", { recipient: nameOf(bob) });
  const [got] = await received(cb, 1);
  expect(got.text).toBe("over the socket");
  expect(got.seq).toBe(sent.seq);
  await cb.send("over gRPC", { threadId: Number(got.threadId) });
  expect((await received(ca, 1)).map((m) => m.text)).toEqual(["over gRPC"]);
  await alice.logout();
  const end = (await until(ca, (e) => e.type === "disconnected")).pop() as Extract<Event, { type: "disconnected" }>;
  expect(end.final).toBe(true);
  expect(end.error?.unauthenticated).toBe(true);
  expect(end.error?.reason).toBe("DEVICE_LOGGED_OUT");
  await ca.close();
  await cb.close();
});
