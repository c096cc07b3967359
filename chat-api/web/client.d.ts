// Types of the browser client (client.js) and its MessagePack codec (msgpack.js).

/** Decimal string (64-bit ids do not fit a JavaScript number). */
export type Id = string;

export interface Message {
  chat_id: Id;
  message_id: Id;
  sender_id: string;
  client_msg_id: string;
  /** Absent on a deleted message (a tombstone). */
  body?: string;
  sent_at_ms: number;
  /** Unix ms of the latest edit; absent if never edited. */
  edited_at?: number;
  /** True on a deleted message: its body is gone. */
  deleted?: boolean;
  /** Id of the latest edit or delete; absent if never changed. Newer state = higher id. */
  change_id?: Id;
}

export type Role = "owner" | "admin" | "member";

export interface ChangesPage {
  /** Changed messages in their current state (tombstones included), in change order. */
  messages: Message[];
  has_more: boolean;
  next_after: Id | null;
}

export interface Chat {
  chat_id: Id;
  title: string | null;
  created_by: string;
  created_at_ms: number;
  last_message_id: Id | null;
  /** The newest edit or delete in the chat (the change cursor of catch-up). */
  last_change_id: Id | null;
  members?: string[];
  /** Members holding `admin` (the owner is `created_by`); with `chat()` only. */
  admins?: string[];
}

/** A chat as `GET /v1/chats` lists it: with the caller's read state. */
export interface ChatSummary extends Chat {
  /** Your read marker, or null. */
  read_up_to: Id | null;
  /** Messages from other members after `read_up_to`, at most 99. */
  unread_count: number;
  /** There may be more than `unread_count` (show "99+"). */
  unread_capped: boolean;
}

/** A chat's unread state as the client keeps it (`unreadCount()`, `unread` events). */
export interface UnreadState {
  read_up_to: Id | null;
  count: number;
  capped: boolean;
}

/** A `read` or `delivered` receipt: `user_id` holds `chat_id` up to `message_id`. */
export interface Receipt {
  chat_id: Id;
  user_id: string;
  message_id: Id;
}

export interface ReceiptList {
  chat_id: Id;
  /** Every current member, sorted by user id. */
  receipts: { user_id: string; read_up_to: Id | null; delivered_up_to: Id | null }[];
}

export interface HistoryPage {
  /** Ascending by message id. */
  messages: Message[];
  has_more: boolean;
}

export interface Hello {
  type: "hello";
  v: number;
  connection_id: string;
  user_id: string;
  heartbeat_interval_ms: number;
  idle_timeout_ms: number;
  token_expires_at: number;
}

/** A user's presence: from `presence` frames (pushed to co-members) and `GET /v1/presence`. */
export interface Presence {
  user_id: string;
  /** `unknown` (only from `GET /v1/presence`): the user shares no chat with you. */
  status: "online" | "offline" | "unknown";
  online: boolean;
  /** Unix ms when the last socket closed (offline), or the change was seen (online); events only. */
  last_seen?: number | null;
  /** Unix ms when the last socket closed; null when online or unknown. */
  last_seen_ms: number | null;
}

/** Reads a `presence` frame (new or version-1 fields) into a {@link Presence}. */
export declare function presenceOf(frame: Record<string, unknown>): Presence;

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ChatEvents {
  state: { state: ConnectionState; attempt: number; code?: number; reason?: string; delayMs?: number; connection_id?: string };
  hello: Hello;
  /** Each message once: `live` (a frame), `catchup` (history after a reconnect or a `resync`), `sent` (this client's send). */
  message: { message: Message; source: "live" | "catchup" | "sent" };
  typing: { chat_id: Id; user_id: string };
  /** A co-member came online (first socket anywhere) or went offline (after the grace period). */
  presence: Presence;
  /** A backend push. */
  event: { event: unknown };
  /** The socket closed; `willReconnect` false means it stays closed until `connect()`. */
  close: { code: number; reason: string; willReconnect: boolean; delayMs?: number };
  /** A message was edited (live, caught up, or by this client): once per change. Keep it only
   * over an older state (lower or no `change_id`); a deleted message stays deleted. */
  update: { message: Message; source: "live" | "catchup" | "sent" };
  /** A message was deleted (live or caught up): drop its body, keep a tombstone. Final. */
  delete: { chat_id: Id; message_id: Id; change_id: Id; source: "live" | "catchup" };
  /** This user was removed from the chat: nothing more of it arrives. */
  chat_removed: { chat_id: Id };
  /** Catch-up after a (re)connect finished: messages and changes reported. */
  catchup: { messages: number; changes: number };
  /** The node may have missed deliveries: a catch-up follows at once; the socket stays open. */
  resync: Record<string, never>;
  /** The chat list fetched at each (re)connect. */
  chats: { chats: ChatSummary[] };
  /** A member read a chat up to a message (your own other devices included). */
  read: Receipt;
  /** A member's devices received a chat up to a message. */
  delivered: Receipt;
  /** A chat's unread state changed (chat list, new message from someone else, read elsewhere). */
  unread: UnreadState & { chat_id: Id };
  refreshed: { token_expires_at: number };
  /** Server `error` frames (`code` from docs/PROTOCOL.md) and client-side failures (`token_failed`, `catchup_failed`, `bad_frame`, ...). */
  error: { code: string; message: string; cause?: unknown };
}

export interface Backoff {
  /** First delay (default 500). */
  initialMs?: number;
  /** Largest delay (default 30000). */
  maxMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Share of each delay removed at random, 0 to 1 (default 0.5). */
  jitter?: number;
}

export interface ChatClientOptions {
  /** `ws://host:8080/ws` (the gateway). */
  gatewayUrl: string;
  /** `http://host:8081` (the API); default: the page's origin. */
  apiUrl?: string;
  /** A token, or a function that returns a fresh one (enables refresh and renewal after 401/4201). */
  token: string | (() => string | Promise<string>);
  encoding?: "json" | "msgpack";
  backoff?: Backoff;
  /** A connection open this long resets the backoff (default 10000). */
  stableAfterMs?: number;
  /** No `hello` this long after opening: reconnect (default 15000). */
  handshakeTimeoutMs?: number;
  /** Refresh the token this long before it expires, at most half its remaining life (default 60000). */
  refreshMarginMs?: number;
  /** Per HTTP request (default 10000). */
  requestTimeoutMs?: number;
  /** Tries per HTTP request, the first included (default 5). */
  requestAttempts?: number;
  catchUpPageSize?: number;
  catchUpPagesMax?: number;
  /** Reconnect at once on the browser's `online` event (default true). */
  watchOnline?: boolean;
  /** Acknowledge received messages with `ack` frames (delivered receipts; default true). */
  autoAck?: boolean;
  /** Acks are coalesced per chat over this long (default 250). */
  ackDelayMs?: number;
  /** Injection points (tests, other runtimes). */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  random?: () => number;
  now?: () => number;
}

export declare class ApiError extends Error {
  readonly status: number;
  /** The `application/problem+json` body, when there was one. */
  readonly problem: { type: string; title: string; status: number; detail: string; field?: string } | null;
  readonly retryable: boolean;
}

export declare const Advice: {
  readonly NOW: "now";
  readonly BACKOFF: "backoff";
  readonly NEW_TOKEN: "new_token";
  readonly NEW_TOKEN_BACKOFF: "new_token_backoff";
  readonly STOP: "stop";
};
export type AdviceValue = (typeof Advice)[keyof typeof Advice];

export declare const State: {
  readonly IDLE: "idle";
  readonly CONNECTING: "connecting";
  readonly OPEN: "open";
  readonly RECONNECTING: "reconnecting";
  readonly CLOSED: "closed";
};

export declare const PROTOCOL_VERSION: 1;
export declare const DEFAULT_BACKOFF: Required<Backoff>;
export declare function closeAdvice(code: number): AdviceValue;
export declare function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;
export declare function compareIds(a: Id, b: Id): -1 | 0 | 1;
export declare function tokenExpiry(token: string): number | undefined;
export declare function newClientMsgId(): string;

/** How far back in time (ms) every catch-up reaches below the highest id held (docs/PROTOCOL.md). */
export declare const CATCHUP_OVERLAP_MS: 30000;
/** `id` moved `overlapMs` back in time, in id space (`id − overlapMs << 22`, at least "0"). */
export declare function overlapFloor(id: Id, overlapMs?: number): Id;

/** Per chat: the highest id held, and every id seen above the window's floor (the lowest cursor a
 * catch-up may start from), for deduplication. */
export declare class MessageLog {
  constructor(overlapMs?: number);
  readonly overlapMs: number;
  cursor(chatId: Id): Id | undefined;
  advance(chatId: Id, messageId: Id): void;
  /** Ids above it are remembered; ids at or below it are not. */
  floor(chatId: Id): Id;
  /** Keeps ids above `floor` remembered until the returned function is called. */
  hold(chatId: Id, floor: Id): () => void;
  /** True when `message` was not seen before (an id at or below the floor is always reported). */
  accept(message: Message): boolean;
  /** Forgets the ids at or below the floor. */
  prune(chatId: Id): void;
  /** The `after` of a catch-up of changes, or undefined when nothing of the chat is held. */
  changeFloor(chatId: Id): Id | undefined;
  /** True when the change id was not seen before. */
  acceptChange(chatId: Id, changeId: Id): boolean;
  /** Forgets everything of a chat. */
  forget(chatId: Id): void;
}

export declare class ChatClient {
  constructor(options: ChatClientOptions);
  readonly state: ConnectionState;
  /** Reconnect attempts since the last stable connection. */
  readonly attempt: number;
  /** The current connection's `hello`, or null. */
  readonly hello: Hello | null;
  readonly log: MessageLog;
  /** chat → unread state (prefer `unreadCount()`). */
  readonly unread: Map<Id, UnreadState>;
  on<K extends keyof ChatEvents>(type: K, listener: (event: ChatEvents[K]) => void): () => void;
  off<K extends keyof ChatEvents>(type: K, listener: (event: ChatEvents[K]) => void): void;
  connect(): void;
  close(): void;
  setToken(token: string): void;
  /** Sends a `typing` frame; false when not connected. */
  typing(chatId: Id): boolean;
  /** Declares the highest message held for a chat, so that catch-up fetches from it minus the
   * overlap; messages in the overlap the log has not seen are reported again (keep them by id). */
  track(chatId: Id, lastMessageId?: Id): void;
  send(chatId: Id, body: string, options?: { clientMsgId?: string; signal?: AbortSignal; attempts?: number }): Promise<Message>;
  history(chatId: Id, page?: { before?: Id; after?: Id; limit?: number }): Promise<HistoryPage>;
  chats(): Promise<{ chats: ChatSummary[] }>;
  /** Marks a chat read up to a message (forward only; an id past the newest counts as the newest). */
  markRead(chatId: Id, messageId: Id): Promise<void>;
  /** Acknowledges receipt up to a message (coalesced `ack` frames; automatic unless `autoAck` is false). */
  ack(chatId: Id, messageId: Id): void;
  /** The chat's unread state, or undefined before the chat list was fetched. */
  unreadCount(chatId: Id): UnreadState | undefined;
  receipts(chatId: Id): Promise<ReceiptList>;
  chat(chatId: Id): Promise<Chat>;
  createChat(chat: { members: string[]; title?: string }): Promise<Chat>;
  addMembers(chatId: Id, userIds: string[]): Promise<{ chat_id: Id; members: string[] }>;
  /** Edits one's own message (same body twice = one edit). */
  edit(chatId: Id, messageId: Id, body: string): Promise<Message>;
  /** Deletes a message (one's own; any as owner or admin). */
  deleteMessage(chatId: Id, messageId: Id): Promise<null>;
  changes(chatId: Id, page?: { after?: Id; limit?: number }): Promise<ChangesPage>;
  /** The owner grants or revokes admin. */
  setRole(chatId: Id, userId: string, role: "admin" | "member"): Promise<{ chat_id: Id; user_id: string; role: Role }>;
  /** Leave (oneself) or remove a member (owners and admins). */
  removeMember(chatId: Id, userId: string): Promise<null>;
  presence(userIds: string[]): Promise<{ presence: Presence[] }>;
}
