// Register and log in; after an expired session, logging in again keeps the outbox.
import { useState } from "preact/hooks";
import { problem } from "../api";
import type { Natter } from "../natter";

function defaultDeviceName(): string {
  const ua = navigator.userAgent;
  const kind = /Mobi|Android|iPhone/.test(ua) ? "phone" : "browser";
  return `${kind} ${new Date().toLocaleDateString()}`;
}

export function Auth({ n }: { n: Natter }) {
  const expired = n.state?.expired ? n.state : null;
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState(expired?.me.username ?? "");
  const [password, setPassword] = useState("");
  const [displayName, setDisplayName] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      const user = username.trim().toLowerCase();
      if (mode === "register") await n.register(user, password, displayName.trim());
      await n.login(user, password, defaultDeviceName());
    } catch (err) {
      setError(problem(err));
    } finally {
      setBusy(false);
    }
  }

  const registering = mode === "register";
  return (
    <main class="auth" aria-labelledby="auth-title">
      <div class="auth-card">
        <div class="brand" aria-hidden="true">
          <img src="/icons/icon.svg" alt="" width="56" height="56" />
        </div>
        <h1 id="auth-title">{registering ? "Create your natter account" : "Log in to natter"}</h1>
        {n.notice && (
          <p class="notice" role="status">
            {n.notice}
          </p>
        )}
        <form onSubmit={submit}>
          <label for="auth-username">Username</label>
          <input
            id="auth-username"
            name="username"
            autocomplete="username"
            autocapitalize="none"
            spellcheck={false}
            required
            minLength={3}
            maxLength={32}
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
          />
          {registering && (
            <>
              <label for="auth-display">Display name (optional)</label>
              <input
                id="auth-display"
                name="displayName"
                autocomplete="name"
                maxLength={64}
                value={displayName}
                onInput={(e) => setDisplayName(e.currentTarget.value)}
              />
            </>
          )}
          <label for="auth-password">Password</label>
          <input
            id="auth-password"
            name="password"
            type="password"
            autocomplete={registering ? "new-password" : "current-password"}
            required
            minLength={registering ? 8 : 1}
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
          {error && (
            <p class="error" role="alert">
              {error}
            </p>
          )}
          <button class="primary" type="submit" disabled={busy}>
            {busy ? "Please wait…" : registering ? "Create account" : "Log in"}
          </button>
        </form>
        <p class="switch">
          {registering ? "Already registered?" : "New here?"}{" "}
          <button
            type="button"
            class="link"
            onClick={() => {
              setMode(registering ? "login" : "register");
              setError("");
            }}
          >
            {registering ? "Log in instead" : "Create an account instead"}
          </button>
        </p>
        <p class="switch">
          <a href="#/debug">Connection log</a>
        </p>
      </div>
    </main>
  );
}
