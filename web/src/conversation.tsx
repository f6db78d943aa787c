import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { ConversationKind, MembershipEvent_Change, MessageKind, type Message } from "./client";
import { tsMillis, type ChatStore, type Pending } from "./store";

/** The reactions offered on every message. */
export const EMOJI = ["👍", "❤️", "😂", "🎉", "😮"];

/** "❤" and "❤️" are one reaction (the server stores the fully qualified form). */
const sameEmoji = (a: string, b: string) => a.replace(/\uFE0F/g, "") === b.replace(/\uFE0F/g, "");

/** How often an active typing indicator is renewed, and when it lapses. */
const TYPING_RENEW_MS = 3000;
const TYPING_IDLE_MS = 5000;

function timeOf(m: Message): string {
  const ms = tsMillis(m.createdAt);
  if (ms === undefined) return "";
  const d = new Date(ms);
  const sameDay = new Date().toDateString() === d.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function systemText(m: Message, me: string): string {
  const ev = m.membership;
  const who = (u: string) => (u === me ? "you" : u);
  if (!ev) return m.body || "conversation changed";
  const users = ev.userIds.map(who).join(", ");
  switch (ev.change) {
    case MembershipEvent_Change.CREATED: {
      const others = ev.userIds.filter((u) => u !== ev.actorId).map(who);
      return `${who(ev.actorId)} created the conversation${others.length ? ` with ${others.join(", ")}` : ""}`;
    }
    case MembershipEvent_Change.ADDED:
      return `${who(ev.actorId)} added ${users}`;
    case MembershipEvent_Change.REMOVED:
      return ev.userIds.length === 1 && ev.userIds[0] === ev.actorId ? `${users} left` : `${who(ev.actorId)} removed ${users}`;
    case MembershipEvent_Change.ROLE_CHANGED:
      return `${who(ev.actorId)} changed the role of ${users}`;
    case MembershipEvent_Change.TITLE_CHANGED:
      return `${who(ev.actorId)} renamed the conversation to “${ev.title}”`;
    case MembershipEvent_Change.VISIBILITY_CHANGED:
      return `${who(ev.actorId)} changed who can read the history`;
    default:
      return "conversation changed";
  }
}

export function ConversationView({
  store,
  id,
  onBack,
}: {
  store: ChatStore;
  id: string;
  onBack: () => void;
  onOpen: (id: string | null) => void;
}) {
  const st = store.conversations.get(id);
  const t = store.timelines.get(id);
  const msgs = store.messages(id).filter((m) => m.kind === MessageKind.TEXT || m.kind === MessageKind.SYSTEM);
  const [replyTo, setReplyTo] = useState<Message | null>(null);
  const [editing, setEditing] = useState<bigint | null>(null);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  /** Where the reader was when an older page was asked for. */
  const anchor = useRef<{ height: number; top: number; oldest?: bigint } | null>(null);

  const title = st ? store.title(st.conv) : "…";
  const partner = st ? store.partner(st.conv) : undefined;
  const presence = partner ? store.presence.get(partner) : undefined;
  const typers = store.typingIn(id);

  // The newest of my messages that someone else has read.
  let seen: { seq: bigint; by: string[] } | null = null;
  for (let i = msgs.length - 1; i >= 0; i--) {
    const m = msgs[i];
    if (m.kind !== MessageKind.TEXT || m.senderId !== store.me) continue;
    const by = store.seenBy(id, m.seq);
    if (by.length > 0) {
      seen = { seq: m.seq, by };
      break;
    }
  }

  // Stay at the bottom as messages arrive (unless the reader scrolled up),
  // and keep the reader's place when an older page is put above.
  const oldest = msgs.length ? msgs[0].seq : undefined;
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const a = anchor.current;
    if (a && oldest !== a.oldest) {
      el.scrollTop = a.top + (el.scrollHeight - a.height);
      anchor.current = null;
    } else if (!a && stick.current) {
      el.scrollTop = el.scrollHeight;
    }
  });

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 60;
    if (el.scrollTop < 40 && t?.hasOlder && !t.loadingOlder) loadOlder();
  };

  const loadOlder = () => {
    const el = scroller.current;
    if (el) anchor.current = { height: el.scrollHeight, top: el.scrollTop, oldest };
    void store.loadOlder(id).then(() => {
      // Nothing was put above (an error): no place to keep.
      if (anchor.current && anchor.current.oldest === oldestNow()) anchor.current = null;
    });
  };
  const oldestNow = () => store.messages(id)[0]?.seq;

  return (
    <section class="conversation" aria-labelledby="conv-title">
      <header class="conv-header">
        <button type="button" class="back" aria-label="Back to conversations" onClick={onBack}>
          ←
        </button>
        <h2 id="conv-title">{title}</h2>
        {partner && (
          <span class="presence">
            <span class={`dot ${presence?.online ? "on" : "off"}`} aria-hidden="true" />
            <span>{presence?.online ? `${partner} is online` : `${partner} is offline`}</span>
          </span>
        )}
        {st && st.conv.kind === ConversationKind.GROUP && (
          <span class="members">{st.conv.memberIds.join(", ")}</span>
        )}
      </header>
      <div class="scroller" ref={scroller} onScroll={onScroll}>
        {t?.hasOlder && (
          <button type="button" class="older" onClick={loadOlder} disabled={t.loadingOlder}>
            {t.loadingOlder ? "Loading…" : "Load older"}
          </button>
        )}
        {t && !t.loaded && <p role="status">Loading messages…</p>}
        <ul class="messages" aria-label="Messages">
          {msgs.map((m) =>
            m.kind === MessageKind.SYSTEM ? (
              <li key={m.seq.toString()} class="system" data-seq={m.seq.toString()}>
                {systemText(m, store.me)}
              </li>
            ) : (
              <MessageItem
                key={m.seq.toString()}
                store={store}
                id={id}
                m={m}
                seenBy={seen && seen.seq === m.seq ? seen.by : null}
                editing={editing === m.seq}
                onEdit={(on) => setEditing(on ? m.seq : null)}
                onReply={() => setReplyTo(m)}
              />
            ),
          )}
          {t?.pending.map((p) => <PendingItem key={`p${p.id}`} store={store} id={id} p={p} />)}
        </ul>
      </div>
      <p class="typing" aria-live="polite">
        {typers.length === 1
          ? `${typers[0]} is typing…`
          : typers.length > 1
            ? `${typers.join(", ")} are typing…`
            : ""}
      </p>
      <Composer
        store={store}
        id={id}
        replyTo={replyTo}
        onClearReply={() => setReplyTo(null)}
        onSent={() => {
          // What one sends is shown, wherever one had scrolled to.
          stick.current = true;
        }}
      />
    </section>
  );
}

function MessageItem({
  store,
  id,
  m,
  seenBy,
  editing,
  onEdit,
  onReply,
}: {
  store: ChatStore;
  id: string;
  m: Message;
  seenBy: string[] | null;
  editing: boolean;
  onEdit: (on: boolean) => void;
  onReply: () => void;
}) {
  const mine = m.senderId === store.me;
  const deleted = !!m.deleted;
  const [draft, setDraft] = useState(m.body);
  useEffect(() => {
    if (editing) setDraft(m.body);
  }, [editing]);

  const save = (e: Event) => {
    e.preventDefault();
    const body = draft.trim();
    if (body && body !== m.body) void store.edit(id, m.seq, body);
    onEdit(false);
  };

  return (
    <li class={`msg ${mine ? "mine" : ""} ${deleted ? "deleted" : ""}`} data-seq={m.seq.toString()}>
      <div class="meta">
        <span class="sender">{m.senderId}</span>
        <span class="sep">: </span>
        <time>{timeOf(m)}</time>
      </div>
      {m.replyToSeq > 0n && (
        <blockquote class="quote">
          <span class="quote-label">Reply to {m.replyTo?.senderId ?? "a message"}: </span>
          {m.replyTo?.deleted ? <em>message deleted</em> : (m.replyTo?.body ?? "")}
        </blockquote>
      )}
      {editing ? (
        <form class="edit" onSubmit={save}>
          <input
            type="text"
            aria-label="Edit message"
            value={draft}
            autoFocus
            onInput={(e) => setDraft((e.target as HTMLInputElement).value)}
            onKeyDown={(e) => {
              if (e.key === "Escape") onEdit(false);
            }}
          />
          <button type="submit">Save</button>
          <button type="button" class="link" onClick={() => onEdit(false)}>
            Cancel
          </button>
        </form>
      ) : deleted ? (
        <p class="body">
          <em>message deleted</em>
        </p>
      ) : (
        <p class="body">
          {m.body}
          {m.editCount > 0 && <span class="edited"> (edited)</span>}
        </p>
      )}
      {!deleted && m.reactions.length > 0 && (
        <div class="reactions" role="group" aria-label="Reactions">
          {m.reactions.map((r) => (
            <button
              type="button"
              key={r.emoji}
              class="reaction"
              aria-pressed={r.reacted ? "true" : "false"}
              aria-label={`${r.emoji} ${Number(r.count)}`}
              onClick={() => void store.react(id, m.seq, r.emoji, r.reacted)}
            >
              {r.emoji}
              <span class="count">{Number(r.count)}</span>
            </button>
          ))}
        </div>
      )}
      {!deleted && !editing && (
        <div class="tools" role="group" aria-label="Message actions">
          {EMOJI.map((emoji) => {
            const r = m.reactions.find((x) => sameEmoji(x.emoji, emoji));
            const mineToo = !!r?.reacted;
            return (
              <button
                type="button"
                key={emoji}
                class="tool emoji"
                aria-label={mineToo ? `Take back ${emoji}` : `React with ${emoji}`}
                title={mineToo ? `Take back ${emoji}` : `React with ${emoji}`}
                onClick={() => void store.react(id, m.seq, r?.emoji ?? emoji, mineToo)}
              >
                {emoji}
              </button>
            );
          })}
          <button type="button" class="tool" onClick={onReply}>
            Reply
          </button>
          {mine && (
            <>
              <button type="button" class="tool" onClick={() => onEdit(true)}>
                Edit
              </button>
              <button type="button" class="tool" onClick={() => void store.remove(id, m.seq)}>
                Delete
              </button>
            </>
          )}
        </div>
      )}
      {seenBy && <p class="seen">Seen by {seenBy.join(", ")}</p>}
    </li>
  );
}

function PendingItem({ store, id, p }: { store: ChatStore; id: string; p: Pending }) {
  return (
    <li class="msg mine pending">
      <div class="meta">
        <span class="sender">{store.me}</span>
        <span class="sep">: </span>
        <span class="status">{p.error ? "not sent" : "sending…"}</span>
      </div>
      <p class="body">{p.body}</p>
      {p.error && (
        <div class="actions">
          <span class="error">{p.error}</span>{" "}
          <button
            type="button"
            class="link"
            onClick={() => {
              store.dropPending(id, p);
              void store.send(id, p.body, p.replyToSeq);
            }}
          >
            Retry
          </button>
          <button type="button" class="link" onClick={() => store.dropPending(id, p)}>
            Discard
          </button>
        </div>
      )}
    </li>
  );
}

function Composer({
  store,
  id,
  replyTo,
  onClearReply,
  onSent,
}: {
  store: ChatStore;
  id: string;
  replyTo: Message | null;
  onClearReply: () => void;
  onSent: () => void;
}) {
  const [text, setText] = useState("");
  const typingSentAt = useRef(0);
  const idle = useRef<ReturnType<typeof setTimeout> | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);

  const stopTyping = () => {
    if (idle.current) clearTimeout(idle.current);
    idle.current = null;
    if (typingSentAt.current) {
      typingSentAt.current = 0;
      store.typingFrame(id, false);
    }
  };
  useEffect(() => stopTyping, [id]);
  useEffect(() => {
    if (replyTo) input.current?.focus();
  }, [replyTo]);

  const onInput = (value: string) => {
    setText(value);
    if (!value.trim()) {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (now - typingSentAt.current >= TYPING_RENEW_MS) {
      typingSentAt.current = now;
      store.typingFrame(id, true);
    }
    if (idle.current) clearTimeout(idle.current);
    idle.current = setTimeout(stopTyping, TYPING_IDLE_MS);
  };

  const send = () => {
    const body = text.trim();
    if (!body) return;
    stopTyping();
    onSent();
    void store.send(id, body, replyTo?.seq);
    setText("");
    onClearReply();
  };

  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
    >
      {replyTo && (
        <div class="replying">
          <span>
            Replying to {replyTo.senderId}: “{replyTo.body.slice(0, 80)}”
          </span>
          <button type="button" class="link" onClick={onClearReply}>
            Cancel reply
          </button>
        </div>
      )}
      <div class="row">
        <textarea
          ref={input}
          aria-label="Message"
          rows={1}
          placeholder="Write a message"
          value={text}
          onInput={(e) => onInput((e.target as HTMLTextAreaElement).value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              send();
            } else if (e.key === "Escape" && replyTo) {
              onClearReply();
            }
          }}
        />
        <button type="submit">Send</button>
      </div>
    </form>
  );
}
