// The client library falls back to the `ws` package where there is no global
// WebSocket (Node 20). Browsers always have one, so the bundle gets this
// instead of `ws` (vite.config.ts aliases it; tsconfig.json maps its type).
const WebSocket: unknown = undefined;
export default WebSocket;
export { WebSocket };
