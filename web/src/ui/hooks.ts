// Hooks tying Preact views to the controller and to the address bar.
import { useEffect, useState } from "preact/hooks";
import type { Natter } from "../natter";

/** Re-render whenever the controller changes. */
export function useNatter(n: Natter): void {
  const [, setTick] = useState(0);
  useEffect(() => n.subscribe(() => setTick((x) => x + 1)), [n]);
}

export type Route =
  | { name: "home" }
  | { name: "chat"; id: number }
  | { name: "info"; id: number }
  | { name: "profile"; id: number }
  | { name: "contacts" }
  | { name: "newGroup" }
  | { name: "devices" }
  | { name: "settings" }
  | { name: "report"; id: number; seq: number }
  | { name: "debug" };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  if (parts[0] === "chat" && Number(parts[1]) > 0) {
    if (parts[2] === "info") return { name: "info", id: Number(parts[1]) };
    if (parts[2] === "profile") return { name: "profile", id: Number(parts[1]) };
    return { name: "chat", id: Number(parts[1]) };
  }
  if (parts[0] === "contacts") return { name: "contacts" };
  if (parts[0] === "new-group") return { name: "newGroup" };
  if (parts[0] === "devices") return { name: "devices" };
  if (parts[0] === "settings") return { name: "settings" };
  if (parts[0] === "report" && Number(parts[1]) > 0) return { name: "report", id: Number(parts[1]), seq: Number(parts[2]) || 0 };
  if (parts[0] === "debug") return { name: "debug" };
  return { name: "home" };
}

export function go(path: string): void {
  location.hash = path;
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}
