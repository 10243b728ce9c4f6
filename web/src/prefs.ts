// This browser's display preferences (not the account's): theme, hiding blocked people's messages, notification prompts.

export type Theme = "system" | "light" | "dark";

export interface Prefs {
  theme: Theme;
  /** Hide messages of people one blocked in groups shared with them (they are still delivered). */
  hideBlocked: boolean;
  /** The "turn on notifications?" prompt was answered: never ask again. */
  pushAsked: boolean;
  /** Notifications were turned on here: subscribe again at each start (endpoints change). */
  push: boolean;
}

const KEY = "natter.prefs";
const DEFAULTS: Prefs = { theme: "system", hideBlocked: false, pushAsked: false, push: false };

export function loadPrefs(): Prefs {
  try {
    return { ...DEFAULTS, ...(JSON.parse(localStorage.getItem(KEY) ?? "{}") as Partial<Prefs>) };
  } catch {
    return { ...DEFAULTS };
  }
}

export function savePrefs(p: Prefs): void {
  try {
    localStorage.setItem(KEY, JSON.stringify(p));
  } catch {
    /* full or disabled: the preference lasts this visit */
  }
}

/** Puts the theme on <html data-theme>: "system" follows prefers-color-scheme (theme.css). */
export function applyTheme(theme: Theme): void {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}
