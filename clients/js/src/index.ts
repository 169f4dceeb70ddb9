export * from "./types.js";
export { backoffDelay, backoffCeiling, type BackoffOptions } from "./backoff.js";
export { tokenExpiry, refreshDelay, type TokenProvider } from "./token.js";
export { RuncastApiError } from "./errors.js";
export {
  Connection, ChannelCursor, Subscription, secondsUntilRetry,
  type ConnectionOptions, type ConnectionState, type SubscribeOptions, type TransportKind, type WebSocketFactory, type WebSocketLike,
} from "./connection.js";
export { RestClient, type RestOptions, type ListExecutionsQuery, type ListEventsQuery } from "./rest.js";
export { RuncastStore, type StoreOptions } from "./store.js";
export { RuncastClient, createClient, filterExecutions, type ClientOptions, type Watch, type WatchExecutionsOptions } from "./client.js";
