export * from "./types.js";
export { backoffDelay, backoffCeiling, type BackoffOptions } from "./backoff.js";
export { tokenExpiry, refreshDelay, type TokenProvider } from "./token.js";
export { RuncastApiError, RuncastSubscriptionError } from "./errors.js";
export {
  Connection, secondsUntilRetry, type ConnectionOptions, type ConnectionState, type ConnectionEvents, type TransportChange,
} from "./connection.js";
export { ChannelCursor, Subscription, type SubscribeOptions } from "./subscription.js";
export type { TransportKind } from "./transport/transport.js";
export type { WebSocketFactory, WebSocketLike } from "./transport/websocket.js";
export { RestClient, type RestOptions, type ListExecutionsQuery, type ListEventsQuery, type CommandOptions } from "./rest.js";
export { RuncastStore, type StoreOptions } from "./store.js";
export { RuncastClient, createClient, filterExecutions, type ClientOptions, type Watch, type WatchExecutionsOptions } from "./client.js";
