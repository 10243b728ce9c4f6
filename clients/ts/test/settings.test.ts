// The account, device, safety, mute and push calls an app's settings screens make, against a real server.
import { createECDH, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NatterError, NotificationPreview, ReportReason, upload } from "../src/index.js";
import { nodeClient, nodeConnection } from "../src/node.js";
import { NatterServer, PASSWORD, nameOf, newUser, received, until } from "./support.js";

const server = new NatterServer();
beforeAll(() => server.start());
afterAll(() => server.stop());

async function refusal(p: Promise<unknown>): Promise<NatterError> {
  try {
    await p;
  } catch (e) {
    return NatterError.from(e);
  }
  throw new Error("the call was not refused");
}

describe("settings calls", () => {
  it("profile and privacy settings round-trip through GetMe", async () => {
    const alice = await newUser(server.address, "alice");
    await alice.updateSettings({ displayName: "Alice A.", hideLastSeen: true, notificationPreview: NotificationPreview.SENDER_ONLY });
    const me = await alice.me();
    expect([me.user?.displayName, me.hideLastSeen, me.notificationPreview]).toEqual(["Alice A.", true, NotificationPreview.SENDER_ONLY]);
    await alice.updateSettings({ hideLastSeen: false });
    expect((await alice.me()).hideLastSeen).toBe(false);
    expect((await alice.me()).user?.displayName).toBe("Alice A."); // left out: kept
  });

  it("profile: about and picture set, shown to a chat partner in lists and live, refused when invalid", async () => {
    const alice = await newUser(server.address, "alice");
    const bob = await newUser(server.address, "bob");
    const ca = await nodeConnection(alice).start();
    await ca.send("hi", { recipient: nameOf(bob) });
    const cb = await nodeConnection(bob).start();
    // A valid 1×1 PNG: every image gets a thumbnail, the avatar.
    const png = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", "base64");
    const pic = await upload(new Blob([png]), { name: "me.png", type: "image/png" }, { baseUrl: `http://127.0.0.1:${server.httpPort}`, token: alice.token });
    await alice.updateSettings({ about: "on a train", pictureId: pic.attachmentId });
    const me = (await alice.me()).user;
    expect([me?.about, me?.pictureId]).toEqual(["on a train", pic.attachmentId]);
    const ev = (await until(cb, (e) => e.type === "profile")).pop();
    expect(ev).toMatchObject({ type: "profile", user: { username: nameOf(alice), about: "on a train", pictureId: pic.attachmentId } });
    expect(cb.profiles.get(Number(me?.userId))?.about).toBe("on a train");
    const peer = (await bob.threads())[0].peer;
    expect([peer?.about, peer?.pictureId]).toEqual(["on a train", pic.attachmentId]);
    const links = await bob.attachmentLinks(pic.attachmentId);
    expect((await fetch(`http://127.0.0.1:${server.httpPort}${links.thumbnailUrl}`)).status).toBe(200);
    expect((await refusal(alice.updateSettings({ about: "x".repeat(141) }))).reason).toBe("ABOUT_TOO_LONG");
    await alice.updateSettings({ pictureId: "" });
    expect((await until(cb, (e) => e.type === "profile" && e.user.pictureId === "")).length).toBeGreaterThan(0);
    for (const c of [ca, cb]) await c.close();
  });

  it("devices: listed with this one marked, one logged out, then all others; a new password logs out the rest", async () => {
    const laptop = await newUser(server.address, "alice");
    const name = nameOf(laptop);
    const phone = nodeClient(server.address);
    await phone.login(name, PASSWORD, "phone");
    const tablet = nodeClient(server.address);
    await tablet.login(name, PASSWORD, "tablet");
    const devices = await laptop.devices();
    expect(devices.map((d) => d.name)).toEqual(["vitest", "phone", "tablet"]);
    expect(devices.filter((d) => d.current).map((d) => Number(d.deviceId))).toEqual([laptop.deviceId]);
    await laptop.revokeDevice(phone.deviceId);
    expect((await refusal(phone.me())).unauthenticated).toBe(true);
    expect(await laptop.revokeOtherDevices()).toBe(1);
    expect((await refusal(tablet.me())).unauthenticated).toBe(true);
    const again = nodeClient(server.address);
    await again.login(name, PASSWORD, "again");
    expect((await refusal(laptop.changePassword("wrong password", "a new password 1"))).code).not.toBe(0);
    expect(await laptop.changePassword(PASSWORD, "a new password 1")).toEqual([again.deviceId]);
    expect((await refusal(again.me())).unauthenticated).toBe(true);
    expect((await laptop.me()).user?.username).toBe(name);
  });

  it("block, list, unblock; report; mute and unmute reach the user's other devices", async () => {
    const alice = await newUser(server.address, "alice");
    const bob = await newUser(server.address, "bob");
    const ca = await nodeConnection(alice).start();
    const cb = await nodeConnection(bob).start();
    const sent = await ca.send("buy my coins", { recipient: nameOf(bob) });
    await received(cb, 1);
    const thread = Number(sent.threadId);
    const id = await bob.report({ threadId: thread, seqs: [Number(sent.seq)], reason: ReportReason.SCAM, text: "spam", block: true });
    expect(id).toBeGreaterThan(0);
    expect((await bob.blocked()).map((u) => u.username)).toEqual([nameOf(alice)]);
    await bob.unblock(nameOf(alice));
    expect(await bob.blocked()).toEqual([]);
    await bob.block(nameOf(alice));
    expect((await bob.blocked()).map((u) => u.username)).toEqual([nameOf(alice)]);
    await bob.unblock(nameOf(alice));

    const other = nodeClient(server.address);
    await other.login(nameOf(bob), PASSWORD, "tablet");
    const co = await nodeConnection(other).start();
    const muted = await bob.mute(thread, 8 * 3600);
    expect(muted?.muted).toBe(true);
    const end = Number(muted?.muteEndTime?.seconds ?? 0) * 1000;
    expect(Math.abs(end - (Date.now() + 8 * 3600_000))).toBeLessThan(60_000);
    const ev = (await until(co, (e) => e.type === "thread-mute")).pop();
    expect(ev).toMatchObject({ type: "thread-mute", threadId: thread, muted: true });
    expect((await bob.mute(thread))?.muteEndTime).toBeUndefined(); // forever
    expect((await bob.threads()).find((t) => Number(t.threadId) === thread)?.muted).toBe(true);
    expect((await bob.unmute(thread))?.muted).toBe(false);
    expect((await until(co, (e) => e.type === "thread-mute" && !e.muted)).length).toBeGreaterThan(0);
    for (const c of [ca, cb, co]) await c.close();
  });

  it("push: the server's config, this device's Web Push target set, read back and removed", async () => {
    const alice = await newUser(server.address, "alice");
    const config = await alice.pushConfig();
    expect(config.webPushEnabled).toBe(true);
    expect(Buffer.from(config.vapidPublicKey, "base64url").length).toBe(65);
    const ecdh = createECDH("prime256v1");
    ecdh.generateKeys();
    const keys = {
      endpoint: `https://fcm.googleapis.com/fcm/send/${randomBytes(8).toString("hex")}`,
      p256dh: ecdh.getPublicKey().toString("base64url"),
      auth: randomBytes(16).toString("base64url"),
    };
    await alice.setWebPush(keys);
    const target = await alice.pushTarget();
    expect(target?.target.case === "webPush" && target.target.value.endpoint).toBe(keys.endpoint);
    await alice.deletePushTarget();
    expect(await alice.pushTarget()).toBeUndefined();
    expect((await refusal(alice.setWebPush({ ...keys, endpoint: "https://attacker.example/x" }))).reason).toBe("PUSH_HOST_NOT_ALLOWED");
  });

  it("delete account needs the password, then the account is gone", async () => {
    const alice = await newUser(server.address, "alice");
    expect((await refusal(alice.deleteAccount("not the password"))).code).not.toBe(0);
    await alice.deleteAccount(PASSWORD);
    const again = nodeClient(server.address);
    expect((await refusal(again.login(nameOf(alice), PASSWORD))).unauthenticated).toBe(true);
  });
});
