// Entry point: boots the controller, renders the app, registers the service worker.
import { render } from "preact";
import { Natter } from "./natter";
import { App } from "./ui/App";
import "./styles.css";
import "./theme.css";

const natter = new Natter(location.origin);
(window as unknown as { natter: Natter }).natter = natter; // for tests and the curious

void natter.boot().then(() => {
  render(<App n={natter} />, document.getElementById("app")!);
});

if (import.meta.env.PROD && "serviceWorker" in navigator) {
  addEventListener("load", () => {
    navigator.serviceWorker.register("/sw.js").catch((e) => console.warn("natter: no offline shell", e));
  });
}
