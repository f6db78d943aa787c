export { Confab, type ConfabOptions } from "./client";
export { Session, newClientMsgId, type ConnectionState, type SessionOptions, type StateEvent, type TokenSource } from "./session";
export { ConfabError, Code, type ConfabErrorKind } from "./errors";
export { authInfo, devToken } from "./http";
export type { WebSocketFactory, WebSocketLike } from "./websocket";
export * from "./gen/confab/v1/chat_pb";
