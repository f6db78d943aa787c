import { useState } from "preact/hooks";
import { MessageKind, type Message, type SearchHit } from "./client";
import { errText, type ChatStore } from "./store";

/** One line of text for a message in a preview. */
export function previewText(m: Message | undefined, me: string): string {
  if (!m) return "";
  const who = m.senderId === me ? "you" : m.senderId;
  switch (m.kind) {
    case MessageKind.TEXT:
      return m.deleted ? `${who}: message deleted` : `${who}: ${m.body}`;
    case MessageKind.EDIT:
      return `${who}: ${m.body}`;
    case MessageKind.DELETE:
      return `${who} deleted a message`;
    case MessageKind.REACTION:
      return m.reactionRemoved ? `${who} took back ${m.emoji}` : `${who} reacted ${m.emoji}`;
    default:
      return "";
  }
}

export function Inbox({ store, onOpen }: { store: ChatStore; onOpen: (id: string | null) => void }) {
  const convs = store.sortedConversations();
  return (
    <nav class="inbox" aria-label="Inbox">
      <SearchBox store={store} onOpen={onOpen} />
      <NewConversation store={store} onOpen={onOpen} />
      <h2 id="conversations-heading">Conversations</h2>
      {store.listLoaded && convs.length === 0 && <p class="empty">No conversations yet.</p>}
      <ul class="conversations" aria-label="Conversations">
        {convs.map((c) => {
          const title = store.title(c.conv);
          const preview = previewText(c.preview, store.me);
          const partner = store.partner(c.conv);
          const online = partner ? store.presence.get(partner)?.online : undefined;
          const name = [title, c.unread > 0 ? `${c.unread} unread` : "", preview].filter(Boolean).join(", ");
          const current = store.openId === c.conv.id;
          return (
            <li key={c.conv.id} aria-label={name} class={current ? "current" : ""}>
              <button
                type="button"
                class="conv"
                aria-label={name}
                aria-current={current ? "true" : undefined}
                onClick={() => onOpen(c.conv.id)}
              >
                <span class="conv-title">
                  {online !== undefined && <span class={`dot ${online ? "on" : "off"}`} aria-hidden="true" />}
                  {title}
                </span>
                {c.unread > 0 && (
                  <span class="badge" aria-hidden="true">
                    {c.unread}
                  </span>
                )}
                <span class="conv-preview" aria-hidden="true">
                  {preview}
                </span>
              </button>
            </li>
          );
        })}
      </ul>
    </nav>
  );
}

function SearchBox({ store, onOpen }: { store: ChatStore; onOpen: (id: string | null) => void }) {
  const [q, setQ] = useState("");
  const [hits, setHits] = useState<SearchHit[] | null>(null);
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  const run = async (e: Event) => {
    e.preventDefault();
    const query = q.trim();
    if (!query) {
      setHits(null);
      return;
    }
    setBusy(true);
    setError("");
    try {
      setHits(await store.search(query));
    } catch (err) {
      setError(errText(err));
      setHits(null);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="search" role="search" onSubmit={run}>
      <input
        type="text"
        aria-label="Search"
        placeholder="Search messages"
        value={q}
        onInput={(e) => setQ((e.target as HTMLInputElement).value)}
      />
      <button type="submit" disabled={busy}>
        Find
      </button>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      {hits && (
        <div class="results">
          <p role="status">{hits.length === 0 ? "No messages found" : `${hits.length} found`}</p>
          <ul aria-label="Search results">
            {hits.map((h) => {
              const c = store.conversations.get(h.conversationId);
              const where = c ? store.title(c.conv) : h.conversationId;
              return (
                <li key={`${h.conversationId}/${h.seq}`}>
                  <button
                    type="button"
                    class="hit"
                    onClick={() => {
                      setHits(null);
                      onOpen(h.conversationId);
                    }}
                  >
                    <span class="hit-where">{where}</span> <span class="hit-who">{h.senderId}:</span>{" "}
                    <Highlighted hit={h} />
                  </button>
                </li>
              );
            })}
          </ul>
          <button type="button" class="link" onClick={() => setHits(null)}>
            Close results
          </button>
        </div>
      )}
    </form>
  );
}

/** A snippet with its matches marked; offsets count code points. */
function Highlighted({ hit }: { hit: SearchHit }) {
  const cps = Array.from(hit.snippet);
  const parts: preact.ComponentChildren[] = [];
  let at = 0;
  for (const h of hit.highlights) {
    if (h.start < at || h.end > cps.length || h.start >= h.end) continue;
    if (h.start > at) parts.push(cps.slice(at, h.start).join(""));
    parts.push(<mark key={h.start}>{cps.slice(h.start, h.end).join("")}</mark>);
    at = h.end;
  }
  if (at < cps.length) parts.push(cps.slice(at).join(""));
  return <span class="snippet">{parts}</span>;
}

function NewConversation({ store, onOpen }: { store: ChatStore; onOpen: (id: string | null) => void }) {
  const [open, setOpen] = useState(false);
  const [members, setMembers] = useState("");
  const [title, setTitle] = useState("");
  const [busy, setBusy] = useState(false);

  if (!open) {
    return (
      <button type="button" class="new" onClick={() => setOpen(true)}>
        New conversation
      </button>
    );
  }
  const submit = async (e: Event) => {
    e.preventDefault();
    const ids = members
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    if (ids.length === 0) return;
    setBusy(true);
    const id = await store.create(ids, title.trim());
    setBusy(false);
    if (id) {
      setOpen(false);
      setMembers("");
      setTitle("");
      onOpen(id);
    }
  };
  return (
    <form class="newconv" onSubmit={submit} aria-label="New conversation">
      <label>
        Members
        <input
          type="text"
          value={members}
          placeholder="bob, carol"
          autoFocus
          onInput={(e) => setMembers((e.target as HTMLInputElement).value)}
        />
      </label>
      <label>
        Title
        <input
          type="text"
          value={title}
          placeholder="(none for a direct chat)"
          onInput={(e) => setTitle((e.target as HTMLInputElement).value)}
        />
      </label>
      <div class="row">
        <button type="submit" disabled={busy}>
          Create
        </button>
        <button type="button" class="link" onClick={() => setOpen(false)}>
          Cancel
        </button>
      </div>
    </form>
  );
}
