// Per-device persistence in localStorage, and which tab holds which device (one tab, one device).
import type { DeviceState } from "./model";

const INDEX = "natter.devices";
const deviceKey = (id: number) => `natter.device.${id}`;
const claimKey = (id: number) => `natter.claim.${id}`;
const TAB_DEVICE = "natter.tab.device"; // sessionStorage: survives reloads of this tab only
const KEEP_MESSAGES = 300;
const CLAIM_FRESH_MS = 10_000;

const tabId = Math.random().toString(36).slice(2);

function readJson<T>(storage: Storage, key: string): T | null {
  try {
    const raw = storage.getItem(key);
    return raw ? (JSON.parse(raw) as T) : null;
  } catch {
    return null;
  }
}

function index(): number[] {
  return readJson<number[]>(localStorage, INDEX) ?? [];
}

export function loadDevice(id: number): DeviceState | null {
  const s = readJson<DeviceState>(localStorage, deviceKey(id));
  return s && s.version === 1 ? s : null;
}

export function saveDevice(s: DeviceState): void {
  const trimmed: DeviceState = { ...s, messages: {} };
  for (const [id, list] of Object.entries(s.messages)) {
    trimmed.messages[Number(id)] = list.slice(-KEEP_MESSAGES);
    if (list.length > KEEP_MESSAGES) trimmed.olderMore = { ...trimmed.olderMore, [Number(id)]: true };
  }
  try {
    localStorage.setItem(deviceKey(s.deviceId), JSON.stringify(trimmed));
  } catch {
    // Full: keep fewer messages rather than nothing.
    for (const id of Object.keys(trimmed.messages)) {
      trimmed.messages[Number(id)] = trimmed.messages[Number(id)].slice(-50);
    }
    try {
      localStorage.setItem(deviceKey(s.deviceId), JSON.stringify(trimmed));
    } catch {
      /* storage unavailable: the app still works online */
    }
  }
  const ids = index().filter((x) => x !== s.deviceId);
  localStorage.setItem(INDEX, JSON.stringify([s.deviceId, ...ids]));
}

export function forgetDevice(id: number): void {
  localStorage.removeItem(deviceKey(id));
  localStorage.removeItem(claimKey(id));
  localStorage.setItem(INDEX, JSON.stringify(index().filter((x) => x !== id)));
  if (sessionStorage.getItem(TAB_DEVICE) === String(id)) sessionStorage.removeItem(TAB_DEVICE);
}

interface Claim {
  tab: string;
  at: number;
}

/** Free when no open tab has refreshed its claim lately (a closed tab removes its own). */
function claimable(id: number): boolean {
  const c = readJson<Claim>(localStorage, claimKey(id));
  return !c || c.tab === tabId || Date.now() - c.at > CLAIM_FRESH_MS;
}

let held = 0;
let beat: ReturnType<typeof setInterval> | undefined;

function writeClaim(id: number): void {
  localStorage.setItem(claimKey(id), JSON.stringify({ tab: tabId, at: Date.now() } satisfies Claim));
}

/** This tab owns the device until it closes: other tabs log in as devices of their own. */
export function hold(id: number): void {
  release();
  held = id;
  sessionStorage.setItem(TAB_DEVICE, String(id));
  writeClaim(id);
  beat = setInterval(() => writeClaim(id), CLAIM_FRESH_MS / 3);
}

export function release(): void {
  if (beat !== undefined) clearInterval(beat);
  beat = undefined;
  if (held) {
    const c = readJson<Claim>(localStorage, claimKey(held));
    if (c?.tab === tabId) localStorage.removeItem(claimKey(held));
  }
  held = 0;
}

addEventListener("pagehide", () => {
  // A reload or a closed tab frees the device; sessionStorage brings a reload back to it.
  if (held) {
    const c = readJson<Claim>(localStorage, claimKey(held));
    if (c?.tab === tabId) localStorage.removeItem(claimKey(held));
  }
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The device this tab should be: the one it had before a reload, else one no open tab holds
 * (so an installed app opens offline to its last state), else none (log in as a new device).
 */
export async function claimDevice(): Promise<DeviceState | null> {
  const mine = Number(sessionStorage.getItem(TAB_DEVICE) ?? 0);
  const order = mine ? [mine, ...index().filter((x) => x !== mine)] : index();
  for (const id of order) {
    const state = loadDevice(id);
    if (!state || !claimable(id)) continue;
    writeClaim(id);
    await sleep(30); // two tabs opening at once: the last writer wins, the other moves on
    const c = readJson<Claim>(localStorage, claimKey(id));
    if (c?.tab !== tabId) continue;
    hold(id);
    return state;
  }
  sessionStorage.removeItem(TAB_DEVICE);
  return null;
}
