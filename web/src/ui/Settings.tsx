// The settings area: profile, appearance, privacy and blocked people, notifications, devices, password, account deletion.
import { useEffect, useState } from "preact/hooks";
import { type DeviceRow, type Natter, NotificationPreview } from "../natter";
import type { Theme } from "../prefs";
import { clock, when } from "./format";
import { go } from "./hooks";
import { Page, useAction } from "./People";
import { Avatar } from "./Threads";

function Status({ error, done }: { error: string; done: string }) {
  if (error) {
    return (
      <p class="error" role="alert">
        {error}
      </p>
    );
  }
  return done ? (
    <p class="done" role="status">
      {done}
    </p>
  ) : null;
}

export function Settings({ n, narrow }: { n: Natter; narrow: boolean }) {
  useEffect(() => {
    void n.refreshAccount().catch(() => undefined);
  }, []);
  return (
    <Page title="Settings" narrow={narrow}>
      <nav class="settings-index" aria-label="Settings sections">
        <a href="#/devices">Devices</a>
      </nav>
      <Profile n={n} />
      <Appearance n={n} />
      <Privacy n={n} />
      <Notifications n={n} />
      <Password n={n} />
      <DeleteAccount n={n} />
    </Page>
  );
}

const MAX_ABOUT = 140;

function Profile({ n }: { n: Natter }) {
  const st = n.state!;
  const [name, setName] = useState(st.me.name);
  const [about, setAbout] = useState(st.me.about ?? "");
  const [chosen, setChosen] = useState<{ file: File; url: string } | null>(null);
  const [done, setDone] = useState("");
  const [error, busy, run] = useAction();
  useEffect(() => setAbout(st.me.about ?? ""), [st.me.about]);
  useEffect(() => () => chosen && URL.revokeObjectURL(chosen.url), [chosen]);
  const aboutLeft = MAX_ABOUT - [...about.trim()].length;
  return (
    <section class="settings-section" aria-labelledby="settings-profile">
      <h3 id="settings-profile">Profile</h3>
      <div class="profile-row">
        {chosen ? (
          <span class="avatar" aria-hidden="true" data-avatar="preview">
            <img src={chosen.url} alt="" />
          </span>
        ) : (
          <Avatar name={st.me.name} picture={st.me.picture} n={n} />
        )}
        <span class="person-main">
          <span class="person-name">{st.me.name}</span>
          <span class="person-sub">
            @{st.me.username}
            {n.me?.phone ? ` · ${n.me.phone}` : ""}
          </span>
        </span>
      </div>
      <div class="row picture-row">
        {chosen ? (
          <>
            <button
              type="button"
              class="primary"
              disabled={busy}
              onClick={() =>
                void run(async () => {
                  await n.setPicture(chosen.file);
                  setChosen(null);
                  setDone("Profile picture saved.");
                })
              }
            >
              Use this picture
            </button>
            <button type="button" class="secondary" disabled={busy} onClick={() => setChosen(null)}>
              Cancel
            </button>
          </>
        ) : (
          <>
            <label class="button secondary" for="profile-picture">
              {st.me.picture ? "Change picture" : "Add a picture"}
            </label>
            <input
              id="profile-picture"
              class="sr-only"
              type="file"
              accept="image/*"
              onChange={(e) => {
                const file = e.currentTarget.files?.[0];
                e.currentTarget.value = "";
                setDone("");
                if (file) setChosen({ file, url: URL.createObjectURL(file) });
              }}
            />
            {st.me.picture && (
              <button
                type="button"
                class="secondary"
                disabled={busy}
                onClick={() =>
                  void run(async () => {
                    await n.removePicture();
                    setDone("Profile picture removed.");
                  })
                }
              >
                Remove picture
              </button>
            )}
          </>
        )}
      </div>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setDone("");
          void run(async () => {
            await n.updateProfile(name.trim(), about.trim());
            setDone("Saved.");
          });
        }}
      >
        <label for="display-name">Display name</label>
        <input id="display-name" dir="auto" maxLength={64} required value={name} onInput={(e) => setName(e.currentTarget.value)} />
        <label for="about">About</label>
        <input
          id="about"
          dir="auto"
          maxLength={MAX_ABOUT}
          placeholder="Hey there! I am using natter."
          aria-describedby="about-left"
          value={about}
          onInput={(e) => setAbout(e.currentTarget.value)}
        />
        <p id="about-left" class="hint">
          {aboutLeft} characters left
        </p>
        <div class="row">
          <button class="primary" type="submit" disabled={busy || !name.trim() || aboutLeft < 0}>
            Save
          </button>
        </div>
      </form>
      <Status error={error} done={done} />
    </section>
  );
}

const THEMES: [Theme, string][] = [
  ["system", "Like the system"],
  ["light", "Light"],
  ["dark", "Dark"],
];

function Appearance({ n }: { n: Natter }) {
  return (
    <section class="settings-section" aria-labelledby="settings-appearance">
      <h3 id="settings-appearance">Appearance</h3>
      <fieldset>
        <legend>Theme</legend>
        {THEMES.map(([value, label]) => (
          <label class="check" key={value}>
            <input type="radio" name="theme" value={value} checked={n.prefs.theme === value} onChange={() => n.setPrefs({ theme: value })} />
            {label}
          </label>
        ))}
      </fieldset>
    </section>
  );
}

function Privacy({ n }: { n: Natter }) {
  const [error, busy, run] = useAction();
  const blocked = Object.values(n.blocked).sort((a, b) => a.name.localeCompare(b.name));
  return (
    <section class="settings-section" aria-labelledby="settings-privacy">
      <h3 id="settings-privacy">Privacy</h3>
      <label class="check">
        <input
          type="checkbox"
          checked={n.me ? !n.me.hideLastSeen : true}
          disabled={busy || !n.me}
          onChange={(e) => {
            const show = e.currentTarget.checked;
            void run(() => n.setHideLastSeen(!show));
          }}
        />
        Show when I was last online
      </label>
      <label class="check">
        <input type="checkbox" checked={n.prefs.hideBlocked} onChange={(e) => n.setPrefs({ hideBlocked: e.currentTarget.checked })} />
        Hide messages of people I blocked in groups
      </label>
      <h4 id="blocked-title">Blocked people</h4>
      {blocked.length === 0 ? (
        <p class="muted">Nobody. Block someone from their chat's menu.</p>
      ) : (
        <ul class="people" aria-labelledby="blocked-title">
          {blocked.map((p) => (
            <li key={p.id} data-blocked={p.username}>
              <Avatar name={p.name} />
              <span class="person-main">
                <span class="person-name">{p.name}</span>
                <span class="person-sub">@{p.username}</span>
              </span>
              <button type="button" class="secondary" disabled={busy} aria-label={`Unblock ${p.name}`} onClick={() => void run(() => n.unblock(p))}>
                Unblock
              </button>
            </li>
          ))}
        </ul>
      )}
      <Status error={error} done="" />
    </section>
  );
}

const PREVIEWS: [NotificationPreview, string][] = [
  [NotificationPreview.FULL, "Sender and message"],
  [NotificationPreview.SENDER_ONLY, "Sender only"],
  [NotificationPreview.HIDDEN, "Nothing (just “New message”)"],
];

function Notifications({ n }: { n: Natter }) {
  const [on, setOn] = useState<boolean | null>(null);
  const [done, setDone] = useState("");
  const [error, busy, run] = useAction();
  useEffect(() => {
    void run(async () => setOn(await n.pushOn()));
  }, []);
  const muted = Object.values(n.state!.threads).filter((t) => t.muted);
  return (
    <section class="settings-section" aria-labelledby="settings-notifications">
      <h3 id="settings-notifications">Notifications</h3>
      <label class="check">
        <input
          type="checkbox"
          checked={Boolean(on)}
          disabled={busy || on === null}
          onChange={(e) => {
            const want = e.currentTarget.checked;
            setDone("");
            void run(async () => {
              if (want) {
                const why = await n.enablePush();
                if (why) throw new Error(why);
              } else {
                await n.disablePush();
              }
              setOn(await n.pushOn());
              setDone(want ? "Notifications are on for this device." : "Notifications are off for this device.");
            });
          }}
        />
        Notify me on this device when the app is closed
      </label>
      <fieldset>
        <legend>Notifications show (on every device)</legend>
        {PREVIEWS.map(([value, label]) => (
          <label class="check" key={value}>
            <input
              type="radio"
              name="preview"
              checked={n.me?.preview === value}
              disabled={busy || !n.me}
              onChange={() => void run(() => n.setPreview(value))}
            />
            {label}
          </label>
        ))}
      </fieldset>
      <h4 id="muted-title">Muted chats</h4>
      {muted.length === 0 ? (
        <p class="muted">None. Mute a chat from its menu.</p>
      ) : (
        <ul class="people" aria-labelledby="muted-title">
          {muted.map((t) => (
            <li key={t.id} data-muted={t.id}>
              <Avatar name={t.title} />
              <span class="person-main">
                <span class="person-name">{t.title}</span>
                <span class="person-sub">{t.muteUntil ? `until ${when(t.muteUntil)} ${clock(t.muteUntil)}` : "always"}</span>
              </span>
              <button type="button" class="secondary" disabled={busy} aria-label={`Unmute ${t.title}`} onClick={() => void run(() => n.unmute(t.id))}>
                Unmute
              </button>
            </li>
          ))}
        </ul>
      )}
      <Status error={error} done={done} />
    </section>
  );
}

function Password({ n }: { n: Natter }) {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [keep, setKeep] = useState(false);
  const [done, setDone] = useState("");
  const [error, busy, run] = useAction();
  return (
    <section class="settings-section" aria-labelledby="settings-password">
      <h3 id="settings-password">Change password</h3>
      <form
        class="stack"
        onSubmit={(e) => {
          e.preventDefault();
          setDone("");
          void run(async () => {
            const out = await n.changePassword(current, next, keep);
            setCurrent("");
            setNext("");
            setDone(`Password changed.${out ? ` ${out} other device${out > 1 ? "s were" : " was"} logged out.` : ""}`);
          });
        }}
      >
        <label for="current-password">Current password</label>
        <input id="current-password" type="password" autocomplete="current-password" required value={current} onInput={(e) => setCurrent(e.currentTarget.value)} />
        <label for="new-password">New password (at least 8 characters)</label>
        <input id="new-password" type="password" autocomplete="new-password" minLength={8} required value={next} onInput={(e) => setNext(e.currentTarget.value)} />
        <label class="check">
          <input type="checkbox" checked={keep} onChange={(e) => setKeep(e.currentTarget.checked)} />
          Keep my other devices logged in
        </label>
        <button class="primary" type="submit" disabled={busy}>
          Change password
        </button>
      </form>
      <Status error={error} done={done} />
    </section>
  );
}

function DeleteAccount({ n }: { n: Natter }) {
  const [open, setOpen] = useState(false);
  const [password, setPassword] = useState("");
  const [error, busy, run] = useAction();
  return (
    <section class="settings-section" aria-labelledby="settings-delete">
      <h3 id="settings-delete">Delete account</h3>
      <p class="muted">
        Your messages stay in other people's chats, signed “Deleted account”; your contacts, groups, devices and settings are removed. This cannot be
        undone.
      </p>
      {!open ? (
        <button type="button" class="danger" onClick={() => setOpen(true)}>
          Delete my account…
        </button>
      ) : (
        <form
          class="stack"
          onSubmit={(e) => {
            e.preventDefault();
            void run(async () => {
              await n.deleteAccount(password);
              go("/");
            });
          }}
        >
          <label for="delete-password">Your password, to confirm</label>
          <input id="delete-password" type="password" autocomplete="current-password" required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
          <button class="danger" type="submit" disabled={busy}>
            Delete my account for good
          </button>
          <button type="button" class="secondary" onClick={() => setOpen(false)}>
            Cancel
          </button>
        </form>
      )}
      <Status error={error} done="" />
    </section>
  );
}

export function Devices({ n, narrow }: { n: Natter; narrow: boolean }) {
  const [rows, setRows] = useState<DeviceRow[] | null>(null);
  const [done, setDone] = useState("");
  const [error, busy, run] = useAction();
  const load = async () => setRows(await n.devices());
  useEffect(() => {
    void run(load);
  }, []);
  const st = n.state!;
  const others = rows?.filter((d) => !d.current).length ?? 0;
  return (
    <Page title="Your devices" narrow={narrow}>
      <p>
        Logged in as <strong>{st.me.name}</strong> (@{st.me.username}). Each browser tab is a device of its own. Log out a device you lost: it can
        no longer read or send anything.
      </p>
      {rows && (
        <ul class="people">
          {rows.map((d) => (
            <li key={d.id} data-device={d.id} data-current={d.current ? "true" : undefined}>
              <span class="person-main">
                <span class="person-name">
                  {d.name || `device ${d.id}`}
                  {d.current ? " (this device)" : ""}
                </span>
                <span class="person-sub">
                  {d.platform || "unknown"} · since {when(d.created)} {clock(d.created)}
                  {d.lastActive ? ` · active ${when(d.lastActive)} ${clock(d.lastActive)}` : ""}
                </span>
              </span>
              {!d.current && (
                <button
                  type="button"
                  class="secondary"
                  disabled={busy}
                  aria-label={`Log out ${d.name || `device ${d.id}`}`}
                  onClick={() =>
                    void run(async () => {
                      await n.revokeDevice(d.id);
                      setDone(`${d.name || `Device ${d.id}`} was logged out.`);
                      await load();
                    })
                  }
                >
                  Log out
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
      {others > 0 && (
        <button
          type="button"
          class="secondary wide"
          disabled={busy}
          onClick={() =>
            void run(async () => {
              const count = await n.revokeOtherDevices();
              setDone(`${count} other device${count === 1 ? " was" : "s were"} logged out.`);
              await load();
            })
          }
        >
          Log out all other devices
        </button>
      )}
      <Status error={error} done={done} />
      <button type="button" class="danger" disabled={busy} onClick={() => void n.logout().then(() => go("/"))}>
        Log out of this device
      </button>
      <p>
        <a href="#/debug">Connection log</a> <span class="muted">(for diagnosing a connection that will not come up)</span>
      </p>
    </Page>
  );
}
