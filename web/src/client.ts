// The one place the app imports the client library from, so the rest of the
// app does not depend on how @confab/client lays out its exports.
export { Confab, Session, authInfo, devToken, newClientMsgId } from "@confab/client";
export type { ConnectionState } from "@confab/client";
export {
  ConversationKind,
  MessageKind,
  MembershipEvent_Change,
} from "@confab/client";
export type {
  Conversation,
  Message,
  Presence,
  ReactionCount,
  Receipt,
  SearchHit,
  Typing,
} from "@confab/client";
