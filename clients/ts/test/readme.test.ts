// The README's TypeScript example, run against a real server (tests/test_clients.py checks the two agree).
import { afterAll, beforeAll, expect, it } from "vitest";
import { nodeClient, nodeConnection } from "../src/node.js";
import { NatterServer, PASSWORD, received } from "./support.js";

const server = new NatterServer();
beforeAll(() => server.start());
afterAll(() => server.stop());

/** The README's lines, with the server's address as a parameter. */
async function readme(address: string): Promise<void> {
  const client = nodeClient(address); // native gRPC over HTTP/2; webClient(url) in a browser
  await client.login("alice", "correct horse battery", "laptop");
  const conn = await nodeConnection(client).start(); // in sync: replay done, outbox sent
  const sent = await conn.send("hi bob", { recipient: "bob" }); // once stored; retried with the same id
  console.log(`stored as #${sent.seq} of thread ${sent.threadId}`);
  await conn.close();
}

it("the README's example sends a message", async () => {
  for (const name of ["alice", "bob"]) await nodeClient(server.address).register(name, PASSWORD);
  await readme(server.address);
  const bob = nodeClient(server.address);
  await bob.login("bob", PASSWORD);
  const conn = nodeConnection(bob);
  await conn.start(false);
  expect((await received(conn, 1)).map((m) => m.text)).toEqual(["hi bob"]);
  await conn.close();
});
