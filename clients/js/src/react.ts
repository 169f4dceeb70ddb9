// React binding (`@runcast/client/react`): subscriptions in effects with cleanup, reads through
// useSyncExternalStore, derived data in render. React is a peer dependency.
import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useSyncExternalStore, type ReactNode } from "react";
import { filterExecutions, type RuncastClient } from "./client.js";
import type { ConnectionState } from "./connection.js";
import type { Agent, Execution, ExecutionStatus, LogLine } from "./types.js";

const ClientContext = createContext<RuncastClient | null>(null);

export function RuncastProvider({ client, children }: { client: RuncastClient; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

export function useRuncastClient(client?: RuncastClient): RuncastClient {
  const fromContext = useContext(ClientContext);
  const c = client ?? fromContext;
  if (!c) throw new Error("no RuncastClient: wrap the tree in <RuncastProvider client={…}> or pass one");
  return c;
}

export function useConnectionState(client?: RuncastClient): ConnectionState {
  const c = useRuncastClient(client);
  const subscribe = useCallback((cb: () => void) => c.connection.onStateChange(cb), [c]);
  const get = useCallback(() => c.connection.state, [c]);
  return useSyncExternalStore(subscribe, get, get);
}

function useStoreSubscribe(c: RuncastClient) {
  return useCallback((cb: () => void) => c.store.subscribe(cb), [c]);
}

export interface UseExecutionsOptions {
  workflowId?: string;
  statuses?: readonly ExecutionStatus[];
  client?: RuncastClient;
}

/** Executions, newest first, loaded over REST and kept live; filtered by workflow and status. */
export function useExecutions({ workflowId, statuses, client }: UseExecutionsOptions = {}): Execution[] {
  const c = useRuncastClient(client);
  useEffect(() => {
    const watch = c.watchExecutions({ workflowId });
    return () => watch.stop();
  }, [c, workflowId]);
  const all = useSyncExternalStore(useStoreSubscribe(c), useCallback(() => c.store.getExecutions(), [c]), () => c.store.getExecutions());
  const key = statuses?.join(",") ?? "";
  // eslint-disable-next-line react-hooks/exhaustive-deps
  return useMemo(() => filterExecutions(all, workflowId, statuses), [all, workflowId, key]);
}

/** One execution (snapshot + live events) and its log lines. */
export function useExecution(id: string | undefined, { client, logs = true }: { client?: RuncastClient; logs?: boolean } = {}): {
  execution: Execution | undefined;
  logs: LogLine[];
} {
  const c = useRuncastClient(client);
  useEffect(() => {
    if (!id) return;
    const watch = c.watchExecution(id, { logs });
    return () => watch.stop();
  }, [c, id, logs]);
  const subscribe = useStoreSubscribe(c);
  const getExecution = useCallback(() => (id ? c.store.getExecution(id) : undefined), [c, id]);
  const getLogs = useCallback(() => (id ? c.store.getLogs(id) : EMPTY), [c, id]);
  const execution = useSyncExternalStore(subscribe, getExecution, getExecution);
  const lines = useSyncExternalStore(subscribe, getLogs, getLogs);
  return { execution, logs: lines };
}

/** Agents with live telemetry and presence. */
export function useAgents(client?: RuncastClient): Agent[] {
  const c = useRuncastClient(client);
  useEffect(() => {
    const watch = c.watchAgents();
    return () => watch.stop();
  }, [c]);
  return useSyncExternalStore(useStoreSubscribe(c), useCallback(() => c.store.getAgents(), [c]), () => c.store.getAgents());
}

const EMPTY: LogLine[] = [];
