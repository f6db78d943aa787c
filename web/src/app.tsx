import { useEffect, useMemo, useState } from "preact/hooks";
import { authInfo, devToken } from "./client";
import { loadAuth, saveAuth, tokenSubject, type Auth } from "./auth";
import { ChatStore, errText } from "./store";
import { useStore } from "./hooks";
import { Inbox } from "./inbox";
import { ConversationView } from "./conversation";

export function App() {
  const [auth, setAuth] = useState<Auth | null>(loadAuth);
  if (!auth) {
    return (
      <SignIn
        onSignedIn={(a) => {
          saveAuth(a);
          setAuth(a);
        }}
      />
    );
  }
  return (
    <Chat
      key={auth.token}
      auth={auth}
      onSignOut={() => {
        saveAuth(null);
        location.hash = "";
        setAuth(null);
      }}
    />
  );
}

function SignIn({ onSignedIn }: { onSignedIn: (a: Auth) => void }) {
  const [dev, setDev] = useState<boolean | null>(null);
  const [value, setValue] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    authInfo(location.origin)
      .then((i) => setDev(i.devTokens))
      .catch((e) => {
        setDev(false);
        setError(`could not reach the server: ${errText(e)}`);
      });
  }, []);

  const submit = async (e: Event) => {
    e.preventDefault();
    const v = value.trim();
    if (!v) return;
    setBusy(true);
    setError("");
    try {
      if (dev) {
        const token = await devToken(location.origin, v);
        onSignedIn({ token, userId: v });
      } else {
        const sub = tokenSubject(v);
        if (!sub) throw new Error("that is not a token (a JWT whose sub is your user id)");
        onSignedIn({ token: v, userId: sub });
      }
    } catch (err) {
      setError(errText(err));
    } finally {
      setBusy(false);
    }
  };

  const label = dev ? "User" : "Token";
  return (
    <main class="signin">
      <h1>Confab</h1>
      {dev === null ? (
        <p role="status">Loading…</p>
      ) : (
        <form onSubmit={submit}>
          <label for="signin-input">{label}</label>
          <input
            id="signin-input"
            type="text"
            autocomplete={dev ? "username" : "off"}
            spellcheck={false}
            value={value}
            autoFocus
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          />
          <button type="submit" disabled={busy}>
            Sign in
          </button>
          {dev && <p class="hint">Development server: any user id signs in.</p>}
        </form>
      )}
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
    </main>
  );
}

function currentRoute(): string | null {
  const m = /^#\/c\/(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function Chat({ auth, onSignOut }: { auth: Auth; onSignOut: () => void }) {
  const store = useMemo(() => new ChatStore(location.origin, auth.token, auth.userId), [auth]);
  useEffect(() => () => store.close(), [store]);
  useStore(store);

  // The open conversation follows the URL's hash, so Back works and a reload
  // reopens it.
  useEffect(() => {
    const sync = () => store.open(currentRoute());
    sync();
    window.addEventListener("hashchange", sync);
    return () => window.removeEventListener("hashchange", sync);
  }, [store]);

  const openConversation = (id: string | null) => {
    const h = id ? `#/c/${encodeURIComponent(id)}` : "#/";
    if (location.hash !== h) location.hash = h;
    else store.open(id);
  };

  const unread = store.totalUnread();
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) Confab` : "Confab";
  }, [unread]);
  useEffect(() => () => void (document.title = "Confab"), []);

  const conn = store.connection;
  const openId = store.openId;
  return (
    <div class={`shell ${openId ? "has-open" : ""}`}>
      <header class="topbar">
        <span class="brand">Confab</span>
        <span class="me">
          Signed in as <strong>{store.me}</strong>
        </span>
        <button type="button" class="link" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      {conn.state !== "open" && (
        <div role="status" class={`connection ${conn.state}`}>
          {conn.state === "connecting"
            ? "Connecting…"
            : conn.state === "reconnecting"
              ? `Reconnecting…${conn.attempt > 1 ? ` (attempt ${conn.attempt})` : ""}`
              : `Disconnected${conn.error ? `: ${conn.error}` : ""}`}
        </div>
      )}
      {store.errors.length > 0 && (
        <div role="alert" class="errors">
          {store.errors.map((e, i) => (
            <p key={i}>{e}</p>
          ))}
          <button type="button" class="link" onClick={() => store.dismissErrors()}>
            Dismiss
          </button>
        </div>
      )}
      <div class="columns">
        <Inbox store={store} onOpen={openConversation} />
        <main class="pane" aria-label="Conversation">
          {openId ? (
            <ConversationView key={openId} store={store} id={openId} onBack={() => openConversation(null)} onOpen={openConversation} />
          ) : (
            <p class="empty">Pick a conversation, or start a new one.</p>
          )}
        </main>
      </div>
    </div>
  );
}
