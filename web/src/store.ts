// The signed-in user's chat state: conversations with exact unread counts,
// each open conversation's timeline (keyed by seq, so nothing shows twice or
// out of order), read positions, typing and presence. Views read it and
// re-render when it notifies.
import {
  Confab,
  ConversationKind,
  MessageKind,
  newClientMsgId,
  type ConnectionState,
  type Conversation,
  type Message,
  type Presence,
  type Receipt,
  type SearchHit,
  type Session,
  type Typing,
} from "./client";

/** How long a typing indicator lasts after the last frame that renewed it. */
export const TYPING_TTL_MS = 6000;

/** One conversation in the inbox. */
export interface ConvState {
  /** The newest state the server gave (title, kind, members). */
  conv: Conversation;
  /** The newest seq known here (server state or a live message). */
  lastSeq: bigint;
  /** The caller's read position. */
  readSeq: bigint;
  /** TEXT messages from others after readSeq. */
  unread: number;
  /** Milliseconds since the epoch of the newest message or event. */
  lastActivity: number;
  /** The newest message that the inbox previews. */
  preview?: Message;
  /** Every member's read position, for "seen by". */
  reads: Map<string, bigint>;
}

/** A TEXT or SYSTEM message in a timeline, with the newest seq it reflects. */
export interface Item {
  msg: Message;
  /** Events with a seq up to this are already applied to `msg`. */
  snapshot: bigint;
}

/** A message being sent, not yet acknowledged. */
export interface Pending {
  id: number;
  /** Chosen here, so the live copy of the message replaces this one. */
  clientMsgId: string;
  body: string;
  replyToSeq?: bigint;
  error?: string;
}

/** One conversation's loaded messages. */
export interface Timeline {
  items: Map<bigint, Item>;
  /** EDIT, DELETE and REACTION events seen, by seq. */
  events: Map<bigint, Message>;
  /** The oldest seq fetched from history. */
  oldest?: bigint;
  hasOlder: boolean;
  loaded: boolean;
  loadingOlder: boolean;
  pending: Pending[];
}

export interface ConnectionInfo {
  state: ConnectionState;
  attempt: number;
  error?: string;
}

const isEvent = (k: MessageKind) =>
  k === MessageKind.EDIT || k === MessageKind.DELETE || k === MessageKind.REACTION;

/** Milliseconds of a protobuf Timestamp. */
export function tsMillis(t?: { seconds: bigint; nanos: number }): number | undefined {
  if (!t) return undefined;
  return Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
}

export const maxBig = (a: bigint, b: bigint) => (a > b ? a : b);


export class ChatStore {
  readonly confab: Confab;
  readonly session: Session;
  readonly me: string;
  conversations = new Map<string, ConvState>();
  timelines = new Map<string, Timeline>();
  /** user -> presence, for DIRECT partners. */
  presence = new Map<string, Presence>();
  /** conversation -> user -> when the indicator ends (ms). */
  typing = new Map<string, Map<string, number>>();
  connection: ConnectionInfo = { state: "connecting", attempt: 0 };
  openId: string | null = null;
  listLoaded = false;
  errors: string[] = [];
  /** Live messages of conversations not known yet, replayed once they are. */
  private early = new Map<string, Message[]>();
  private fetching = new Set<string>();
  private listeners = new Set<() => void>();
  private notifyQueued = false;
  private offs: Array<() => void> = [];
  private timer: ReturnType<typeof setInterval>;
  private wasOpen = false;
  private marking = new Map<string, bigint>();
  private pendingIds = 0;
  /** The last send of each conversation: the next waits for it. */
  private sendChains = new Map<string, Promise<void>>();

  constructor(baseUrl: string, token: string, me: string) {
    this.me = me;
    this.confab = new Confab({ baseUrl, token });
    this.session = this.confab.connect();
    const s = this.session;
    this.offs.push(
      s.on("state", (st) => this.onState(st)),
      s.on("message", (m) => this.onMessage(m)),
      s.on("conversation", (c) => this.applyConversation(c)),
      s.on("removed", (id) => this.onRemoved(id)),
      s.on("receipt", (r) => this.onReceipt(r)),
      s.on("typing", (t) => this.onTyping(t)),
      s.on("presence", (p) => this.onPresence(p)),
      s.on("error", (e) => {
        // Gaps and repeats are the session's own bookkeeping: it resumes by itself.
        if (e.kind === "gap" || e.kind === "repeat") console.warn(`confab: ${e.message}`);
        else this.addError(e.message);
      }),
    );
    this.timer = setInterval(() => this.expireTyping(), 500);
    // Messages that came while the tab was hidden are read once it shows.
    const onVisible = () => {
      if (this.openId) this.markOpenRead(this.openId);
    };
    document.addEventListener("visibilitychange", onVisible);
    this.offs.push(() => document.removeEventListener("visibilitychange", onVisible));
    void this.loadConversations();
  }

  close() {
    clearInterval(this.timer);
    for (const off of this.offs) off();
    this.session.close();
  }

  subscribe(cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  private notify() {
    if (this.notifyQueued) return;
    this.notifyQueued = true;
    queueMicrotask(() => {
      this.notifyQueued = false;
      for (const cb of this.listeners) cb();
    });
  }

  addError(msg: string) {
    this.errors = [...this.errors.slice(-2), msg];
    this.notify();
  }

  dismissErrors() {
    this.errors = [];
    this.notify();
  }

  // ---- conversations ----

  /** Unread messages over all conversations. */
  totalUnread(): number {
    let n = 0;
    for (const c of this.conversations.values()) n += c.unread;
    return n;
  }

  /** Conversations, newest activity first. */
  sortedConversations(): ConvState[] {
    return [...this.conversations.values()].sort(
      (a, b) => b.lastActivity - a.lastActivity || (a.conv.id < b.conv.id ? -1 : 1),
    );
  }

  title(c: Conversation): string {
    if (c.title) return c.title;
    const others = c.memberIds.filter((m) => m !== this.me);
    if (others.length === 0) return this.me;
    return others.join(", ");
  }

  /** The other member of a DIRECT conversation. */
  partner(c: Conversation): string | undefined {
    if (c.kind !== ConversationKind.DIRECT) return undefined;
    return c.memberIds.find((m) => m !== this.me) ?? c.memberIds[0];
  }

  async loadConversations() {
    try {
      let pageToken = "";
      for (;;) {
        const r = await this.confab.chat.listConversations({ pageToken, limit: 200 });
        for (const c of r.conversations) this.applyConversation(c);
        if (!r.nextPageToken) break;
        pageToken = r.nextPageToken;
      }
      this.listLoaded = true;
      // Conversations heard of while the list was loading.
      for (const id of this.early.keys()) void this.fetchConversation(id);
      this.notify();
    } catch (e) {
      this.addError(`could not list conversations: ${errText(e)}`);
    }
  }

  private async fetchConversation(id: string) {
    if (this.fetching.has(id)) return;
    this.fetching.add(id);
    try {
      const c = await this.confab.chat.getConversation({ conversationId: id });
      this.applyConversation(c);
    } catch (e) {
      this.addError(`could not load conversation: ${errText(e)}`);
    } finally {
      this.fetching.delete(id);
    }
  }

  /** Takes a conversation's server state (list, sync, get, create). */
  applyConversation(c: Conversation) {
    const cur = this.conversations.get(c.id);
    const reads = new Map(cur?.reads ?? []);
    for (const r of c.memberReads) reads.set(r.userId, maxBig(reads.get(r.userId) ?? 0n, r.readSeq));
    const activity = tsMillis(c.lastActivityAt) ?? tsMillis(c.createdAt) ?? Date.now();
    if (!cur) {
      const st: ConvState = {
        conv: c,
        lastSeq: c.lastSeq,
        readSeq: c.readSeq,
        unread: Number(c.unreadCount),
        lastActivity: activity,
        preview: c.lastMessage,
        reads,
      };
      this.conversations.set(c.id, st);
      // Live messages that arrived before the state: count the ones it lacks.
      const early = this.early.get(c.id);
      this.early.delete(c.id);
      for (const m of early ?? []) this.countLive(st, m);
    } else if (c.lastSeq > cur.lastSeq || (c.lastSeq === cur.lastSeq && c.readSeq >= cur.readSeq)) {
      cur.conv = c;
      cur.lastSeq = c.lastSeq;
      cur.readSeq = maxBig(cur.readSeq, c.readSeq);
      cur.unread = Number(c.unreadCount);
      cur.lastActivity = Math.max(cur.lastActivity, activity);
      if (c.lastMessage && (!cur.preview || c.lastMessage.seq >= cur.preview.seq)) cur.preview = c.lastMessage;
      cur.reads = reads;
    } else {
      // Older than what live messages told us: keep the counts, take the rest.
      cur.conv = c;
      cur.reads = reads;
    }
    this.markOpenRead(c.id);
    this.notify();
  }

  private onRemoved(id: string) {
    this.conversations.delete(id);
    this.timelines.delete(id);
    if (this.openId === id) this.openId = null;
    this.notify();
  }

  /** Counts a live message into its conversation's state. */
  private countLive(st: ConvState, m: Message) {
    if (m.seq <= st.lastSeq) {
      this.updatePreview(st, m);
      return; // already in the server state we hold
    }
    st.lastSeq = m.seq;
    st.lastActivity = Math.max(st.lastActivity, tsMillis(m.createdAt) ?? Date.now());
    if (m.kind === MessageKind.TEXT) {
      if (m.senderId === this.me) {
        st.readSeq = maxBig(st.readSeq, m.seq);
        st.unread = 0;
        st.reads.set(this.me, st.readSeq);
      } else if (!this.reading(m.conversationId)) {
        st.unread += 1;
      }
    }
    this.updatePreview(st, m);
  }

  private updatePreview(st: ConvState, m: Message) {
    const p = st.preview;
    if (m.kind === MessageKind.TEXT) {
      if (!p || m.seq >= p.seq) st.preview = m;
    } else if (p && m.targetSeq === p.seq) {
      if (m.kind === MessageKind.EDIT && m.seq > p.seq) st.preview = { ...p, body: m.body, editCount: p.editCount + 1 };
      if (m.kind === MessageKind.DELETE) st.preview = { ...p, body: "", deleted: { $typeName: "confab.v1.Tombstone", deletedBy: m.senderId, deletedAt: m.createdAt } };
    }
  }

  // ---- live frames ----

  private onState(s: { state: ConnectionState; attempt: number; error?: Error }) {
    this.connection = { state: s.state, attempt: s.attempt, error: s.error?.message };
    if (s.state === "open") {
      if (this.wasOpen) {
        // Back after a break: the server's view of read positions and presence.
        void this.loadConversations();
        if (this.openId) void this.refreshOpen(this.openId);
      }
      this.wasOpen = true;
    }
    this.notify();
  }

  private onMessage(m: Message) {
    const st = this.conversations.get(m.conversationId);
    if (st) {
      this.countLive(st, m);
    } else {
      const list = this.early.get(m.conversationId) ?? [];
      list.push(m);
      this.early.set(m.conversationId, list);
      if (this.listLoaded) void this.fetchConversation(m.conversationId);
    }
    const t = this.timelines.get(m.conversationId);
    if (t) {
      this.insert(t, m, m.seq, false);
      // The live copy of a message being sent from here: it is sent.
      if (m.senderId === this.me && t.pending.some((p) => p.clientMsgId === m.clientMsgId)) {
        t.pending = t.pending.filter((p) => p.clientMsgId !== m.clientMsgId);
      }
    }
    if (m.kind === MessageKind.TEXT && m.senderId !== this.me) {
      this.typing.get(m.conversationId)?.delete(m.senderId);
    }
    this.markOpenRead(m.conversationId);
    this.notify();
  }

  private onReceipt(r: Receipt) {
    const st = this.conversations.get(r.conversationId);
    if (!st) return;
    st.reads.set(r.userId, maxBig(st.reads.get(r.userId) ?? 0n, r.readSeq));
    if (r.userId === this.me) {
      st.readSeq = maxBig(st.readSeq, r.readSeq);
      if (st.readSeq >= st.lastSeq) st.unread = 0;
    }
    this.notify();
  }

  private onTyping(t: Typing) {
    if (t.error || t.userId === this.me) return;
    let m = this.typing.get(t.conversationId);
    if (!m) this.typing.set(t.conversationId, (m = new Map()));
    if (t.active) m.set(t.userId, Date.now() + TYPING_TTL_MS);
    else m.delete(t.userId);
    this.notify();
  }

  private expireTyping() {
    const now = Date.now();
    let changed = false;
    for (const m of this.typing.values()) {
      for (const [u, until] of m) {
        if (until <= now) {
          m.delete(u);
          changed = true;
        }
      }
    }
    if (changed) this.notify();
  }

  typingIn(conversationId: string): string[] {
    const m = this.typing.get(conversationId);
    if (!m) return [];
    const now = Date.now();
    return [...m].filter(([, until]) => until > now).map(([u]) => u).sort();
  }

  private onPresence(p: Presence) {
    this.presence.set(p.userId, p);
    this.notify();
  }

  // ---- an open conversation ----

  open(id: string | null) {
    this.openId = id;
    this.notify();
    if (!id) return;
    if (!this.timelines.has(id)) {
      this.timelines.set(id, {
        items: new Map(),
        events: new Map(),
        hasOlder: false,
        loaded: false,
        loadingOlder: false,
        pending: [],
      });
      void this.loadNewest(id);
    }
    if (!this.conversations.has(id)) void this.fetchConversation(id);
    void this.refreshOpen(id);
    this.markOpenRead(id);
  }

  /** Read positions and presence of the open conversation, from the server. */
  private async refreshOpen(id: string) {
    try {
      const c = await this.confab.chat.getConversation({ conversationId: id });
      this.applyConversation(c);
      const partner = this.partner(c);
      if (partner) {
        const r = await this.confab.chat.getPresence({ userIds: [partner] });
        for (const p of r.presences) this.presence.set(p.userId, p);
        this.notify();
      }
    } catch (e) {
      this.addError(`could not load conversation: ${errText(e)}`);
    }
  }

  /** Moves the read position of the open conversation to its newest seq. */
  /** Whether the user is looking at a conversation: open, in a tab in view. */
  private reading(id: string): boolean {
    return this.openId === id && (typeof document === "undefined" || document.visibilityState !== "hidden");
  }

  private markOpenRead(id: string) {
    if (!this.reading(id)) return;
    const st = this.conversations.get(id);
    if (!st) return;
    const seq = st.lastSeq;
    if (seq === 0n) return;
    if (st.readSeq >= seq && st.unread === 0) return;
    if ((this.marking.get(id) ?? 0n) >= seq) return;
    this.marking.set(id, seq);
    st.unread = 0;
    const done = (rs: { readSeq: bigint; unreadCount: bigint }) => {
      const cur = this.conversations.get(id);
      if (cur) {
        cur.readSeq = maxBig(cur.readSeq, rs.readSeq);
        cur.reads.set(this.me, cur.readSeq);
        if (rs.readSeq >= cur.lastSeq) cur.unread = Number(rs.unreadCount);
      }
      this.notify();
    };
    this.session
      .markRead(id, seq)
      .then(done)
      .catch(() =>
        // The session may be between connections: the same over gRPC-Web.
        this.confab.chat.markRead({ conversationId: id, seq }).then(done),
      )
      .catch((e) => {
        this.marking.delete(id);
        this.addError(`could not mark read: ${errText(e)}`);
      });
  }

  private async loadNewest(id: string) {
    const t = this.timelines.get(id)!;
    const before = this.conversations.get(id)?.lastSeq ?? 0n;
    try {
      const r = await this.confab.chat.getHistory({ conversationId: id, limit: 50 });
      let snapshot = before;
      for (const m of r.messages) snapshot = maxBig(snapshot, m.seq);
      for (const m of r.messages) this.insert(t, m, snapshot, true);
      t.hasOlder = r.hasMore;
      t.loaded = true;
      this.notify();
    } catch (e) {
      this.addError(`could not load history: ${errText(e)}`);
    }
  }

  async loadOlder(id: string) {
    const t = this.timelines.get(id);
    if (!t || !t.loaded || !t.hasOlder || t.loadingOlder || t.oldest === undefined) return;
    t.loadingOlder = true;
    this.notify();
    const before = this.conversations.get(id)?.lastSeq ?? 0n;
    try {
      const r = await this.confab.chat.getHistory({ conversationId: id, beforeSeq: t.oldest, limit: 50 });
      for (const m of r.messages) this.insert(t, m, before, true);
      t.hasOlder = r.hasMore;
    } catch (e) {
      this.addError(`could not load older messages: ${errText(e)}`);
    } finally {
      t.loadingOlder = false;
      this.notify();
    }
  }

  /**
   * Puts a message or event into a timeline. `snapshot`: the newest seq its
   * state reflects (history: the conversation's at fetch time).
   */
  private insert(t: Timeline, m: Message, snapshot: bigint, fromHistory: boolean) {
    if (fromHistory && (t.oldest === undefined || m.seq < t.oldest)) t.oldest = m.seq;
    if (isEvent(m.kind)) {
      if (t.events.has(m.seq)) return;
      t.events.set(m.seq, m);
      const target = t.items.get(m.targetSeq);
      if (target && m.seq > target.snapshot) {
        target.msg = applyEvent(target.msg, m, this.me);
        target.snapshot = m.seq;
      }
      this.updateReplies(t, m.targetSeq);
      return;
    }
    const cur = t.items.get(m.seq);
    if (cur && cur.snapshot >= snapshot) return;
    const item: Item = { msg: m, snapshot };
    // Events already seen that this state does not reflect yet.
    const later = [...t.events.values()]
      .filter((e) => e.targetSeq === m.seq && e.seq > snapshot)
      .sort((a, b) => (a.seq < b.seq ? -1 : 1));
    for (const e of later) {
      item.msg = applyEvent(item.msg, e, this.me);
      item.snapshot = e.seq;
    }
    t.items.set(m.seq, item);
  }

  /** Replies quoting a message show it as it is now. */
  private updateReplies(t: Timeline, target: bigint) {
    const src = t.items.get(target)?.msg;
    if (!src) return;
    for (const it of t.items.values()) {
      if (it.msg.replyToSeq === target && it.msg.replyTo) {
        it.msg = {
          ...it.msg,
          replyTo: { ...it.msg.replyTo, body: src.deleted ? "" : src.body.slice(0, 100), deleted: !!src.deleted },
        };
      }
    }
  }

  /** The TEXT and SYSTEM messages of a timeline, in seq order. */
  messages(id: string): Message[] {
    const t = this.timelines.get(id);
    if (!t) return [];
    return [...t.items.values()]
      .map((i) => i.msg)
      .sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  }

  message(id: string, seq: bigint): Message | undefined {
    return this.timelines.get(id)?.items.get(seq)?.msg;
  }

  /** Members other than the caller whose read position is at or past `seq`. */
  seenBy(id: string, seq: bigint): string[] {
    const st = this.conversations.get(id);
    if (!st) return [];
    return [...st.reads]
      .filter(([u, r]) => u !== this.me && r >= seq)
      .map(([u]) => u)
      .sort();
  }

  // ---- actions ----

  async send(id: string, body: string, replyToSeq?: bigint) {
    const t = this.timelines.get(id);
    const p: Pending = { id: ++this.pendingIds, clientMsgId: newClientMsgId(), body, replyToSeq };
    t?.pending.push(p);
    this.notify();
    // One send at a time per conversation: the gateway handles the send
    // frames of one stream concurrently, so two written back to back may be
    // stored in either order; waiting for each ack keeps the order typed.
    const prev = this.sendChains.get(id) ?? Promise.resolve();
    const mine = prev.then(() =>
      this.session.send(id, body, { clientMsgId: p.clientMsgId, ...(replyToSeq ? { replyToSeq } : {}) }),
    );
    this.sendChains.set(id, mine.then(() => undefined, () => undefined));
    try {
      const r = await mine;
      if (t) {
        t.pending = t.pending.filter((x) => x !== p);
        if (!t.items.has(r.seq)) {
          // The live copy has not arrived yet: show what we know until it does.
          const quoted = replyToSeq ? t.items.get(replyToSeq)?.msg : undefined;
          const m = {
            $typeName: "confab.v1.Message",
            conversationId: id,
            seq: r.seq,
            senderId: this.me,
            clientMsgId: r.clientMsgId,
            body,
            kind: MessageKind.TEXT,
            replyToSeq: replyToSeq ?? 0n,
            replyTo: quoted
              ? { $typeName: "confab.v1.ReplyPreview", senderId: quoted.senderId, body: quoted.body.slice(0, 100), deleted: !!quoted.deleted }
              : undefined,
            editCount: 0,
            reactions: [],
            targetSeq: 0n,
            emoji: "",
            reactionRemoved: false,
          } as unknown as Message;
          // Snapshot 0: the live copy, when it comes, replaces this one.
          t.items.set(r.seq, { msg: m, snapshot: 0n });
        }
      }
      const st = this.conversations.get(id);
      if (st) {
        st.readSeq = maxBig(st.readSeq, r.seq);
        st.reads.set(this.me, st.readSeq);
      }
      this.notify();
    } catch (e) {
      p.error = errText(e);
      this.notify();
    }
  }

  dropPending(id: string, p: Pending) {
    const t = this.timelines.get(id);
    if (t) t.pending = t.pending.filter((x) => x !== p);
    this.notify();
  }

  async edit(id: string, seq: bigint, body: string) {
    try {
      const r = await this.confab.chat.editMessage({ conversationId: id, seq, body, clientMsgId: newClientMsgId() });
      if (r.event) this.onMessage(r.event);
    } catch (e) {
      this.addError(`could not edit: ${errText(e)}`);
    }
  }

  async remove(id: string, seq: bigint) {
    try {
      const r = await this.confab.chat.deleteMessage({ conversationId: id, seq, clientMsgId: newClientMsgId() });
      if (r.event) this.onMessage(r.event);
    } catch (e) {
      this.addError(`could not delete: ${errText(e)}`);
    }
  }

  async react(id: string, seq: bigint, emoji: string, remove: boolean) {
    try {
      const r = await this.confab.chat.react({ conversationId: id, seq, emoji, remove, clientMsgId: newClientMsgId() });
      if (r.event) this.onMessage(r.event);
    } catch (e) {
      this.addError(`could not react: ${errText(e)}`);
    }
  }

  async create(memberIds: string[], title: string): Promise<string | undefined> {
    const others = memberIds.filter((m) => m !== this.me);
    const direct = others.length === 1 && !title;
    try {
      const c = await this.confab.chat.createConversation({
        kind: direct ? ConversationKind.DIRECT : ConversationKind.GROUP,
        title: direct ? "" : title,
        memberIds: others,
      });
      this.applyConversation(c);
      return c.id;
    } catch (e) {
      this.addError(`could not create the conversation: ${errText(e)}`);
      return undefined;
    }
  }

  async search(query: string): Promise<SearchHit[]> {
    const r = await this.confab.chat.searchMessages({ query, limit: 20 });
    return r.hits;
  }

  typingFrame(id: string, active: boolean) {
    try {
      this.session.typing(id, active);
    } catch {
      // Typing is best effort: nothing to do while disconnected.
    }
  }
}

/** A TEXT message with an EDIT, DELETE or REACTION event applied. */
export function applyEvent(m: Message, e: Message, me: string): Message {
  switch (e.kind) {
    case MessageKind.EDIT:
      if (m.deleted) return m;
      return { ...m, body: e.body, editCount: m.editCount + 1, editedAt: e.createdAt };
    case MessageKind.DELETE:
      return {
        ...m,
        body: "",
        reactions: [],
        deleted: { $typeName: "confab.v1.Tombstone", deletedBy: e.senderId, deletedAt: e.createdAt },
      };
    case MessageKind.REACTION: {
      if (m.deleted) return m;
      const reactions = m.reactions.map((r) => ({ ...r }));
      let r = reactions.find((x) => x.emoji === e.emoji);
      if (!e.reactionRemoved) {
        if (!r) {
          r = { $typeName: "confab.v1.ReactionCount", emoji: e.emoji, count: 0n, reacted: false };
          reactions.push(r);
        }
        r.count += 1n;
        if (e.senderId === me) r.reacted = true;
      } else if (r) {
        r.count -= 1n;
        if (e.senderId === me) r.reacted = false;
      }
      return {
        ...m,
        reactions: reactions.filter((x) => x.count > 0n).sort((a, b) => (a.emoji < b.emoji ? -1 : a.emoji > b.emoji ? 1 : 0)),
      };
    }
    default:
      return m;
  }
}

export function errText(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
