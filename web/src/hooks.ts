import { useEffect, useReducer } from "preact/hooks";
import type { ChatStore } from "./store";

/** Re-renders the calling component whenever the store changes. */
export function useStore(store: ChatStore) {
  const [, bump] = useReducer((n: number) => n + 1, 0);
  useEffect(() => store.subscribe(() => bump(undefined)), [store]);
}
