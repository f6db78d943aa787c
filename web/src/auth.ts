// The signed-in user, kept in sessionStorage so a reload stays signed in
// (and a new tab, or closing the browser, signs out).
const KEY = "confab.auth";

export interface Auth {
  token: string;
  userId: string;
}

export function loadAuth(): Auth | null {
  try {
    const raw = sessionStorage.getItem(KEY);
    if (!raw) return null;
    const a = JSON.parse(raw) as Auth;
    return a.token && a.userId ? a : null;
  } catch {
    return null;
  }
}

export function saveAuth(a: Auth | null) {
  if (a) sessionStorage.setItem(KEY, JSON.stringify(a));
  else sessionStorage.removeItem(KEY);
}

/** The user id (`sub`) of a JWT, or null when it is not one. */
export function tokenSubject(token: string): string | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(b64 + "===".slice((b64.length + 3) % 4));
    const claims = JSON.parse(json) as { sub?: unknown };
    return typeof claims.sub === "string" && claims.sub ? claims.sub : null;
  } catch {
    return null;
  }
}
