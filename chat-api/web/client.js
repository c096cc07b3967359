// Browser (and Node ≥ 18) client for the chat service: one WebSocket to a gateway for real-time
// frames, the HTTP API for sending and history. Reconnects with exponential backoff and jitter as
// the close codes advise, catches up through history after every (re)connect, refreshes the token
// before it expires, and sends idempotently (automatic `client_msg_id`, safe retries). Keeps each
// chat's unread count, marks chats read, and acknowledges received messages (delivered receipts,
// coalesced per chat).
// Protocol: docs/PROTOCOL.md. Types: client.d.ts. No run-time dependencies.

import { encode as msgpackEncode, decode as msgpackDecode } from "./msgpack.js";

export const PROTOCOL_VERSION = 1;

/** What to do after a close code (docs/PROTOCOL.md, shared/src/close.rs). */
export const Advice = Object.freeze({
  /** Reconnect at once (a little jitter only). */
  NOW: "now",
  /** Reconnect after an exponential, jittered backoff. */
  BACKOFF: "backoff",
  /** Get a new token, then reconnect at once. */
  NEW_TOKEN: "new_token",
  /** Get a new token, then reconnect after a backoff; stop if no new token can be had. */
  NEW_TOKEN_BACKOFF: "new_token_backoff",
  /** Do not reconnect until something is fixed (client bug, too many sockets). */
  STOP: "stop",
});

/** The advice for a WebSocket close code. Codes the gateway never sends (1006: the connection
 * dropped or the handshake was refused, 1001, 1011, ...) get a backoff. */
export function closeAdvice(code) {
  if (code === 1000) return Advice.NOW;
  if (code >= 4000 && code <= 4099) return Advice.NOW;
  if (code >= 4100 && code <= 4199) return Advice.BACKOFF;
  if (code === 4201) return Advice.NEW_TOKEN;
  // 4200: the token was refused; 4205: an operator revoked it. Only a new one may reconnect.
  if (code === 4200 || code === 4205) return Advice.NEW_TOKEN_BACKOFF;
  if (code >= 4202 && code <= 4299) return Advice.STOP;
  return Advice.BACKOFF;
}

export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 30_000, factor: 2, jitter: 0.5 });

/** The delay before reconnect attempt `attempt` (0-based): `min(maxMs, initialMs × factor^attempt)`
 * shortened by up to `jitter` of itself at random, so that clients dropped together do not come
 * back together. `random` returns a number in [0, 1). */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const b = { ...DEFAULT_BACKOFF, ...backoff };
  const exp = Math.min(Math.max(0, attempt), 64);
  const base = Math.min(b.maxMs, b.initialMs * Math.pow(b.factor, exp));
  const jitter = Math.min(1, Math.max(0, b.jitter));
  return Math.round(base * (1 - jitter * random()));
}

/** Compares two decimal id strings (no leading zeros) without losing 64-bit precision. */
export function compareIds(a, b) {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The `exp` claim of a JWT in Unix seconds, or undefined; the signature is not checked (the
 * server does that), this only tells when to get a fresh token. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const json = typeof atob === "function" ? atob(b64) : Buffer.from(b64, "base64").toString("binary");
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** A random `client_msg_id`. */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** An HTTP API error: `status` and the `application/problem+json` body when there was one. */
export class ApiError extends Error {
  constructor(status, problem, message) {
    super(message || (problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem || null;
  }
  /** Whether the same request may succeed later (503, 502, 504, 429, 500). */
  get retryable() {
    return [500, 502, 503, 504, 429].includes(this.status);
  }
}

/** How far back in time every catch-up reaches below the highest id a client holds, in
 * milliseconds (docs/PROTOCOL.md, "Delivery and catch-up"). A message can become visible after
 * newer ones (clock differences between API replicas, concurrent sends committing out of id
 * order), but never more than this much older than the newest message held; the server refuses
 * configurations that could break that. A protocol constant: `CATCHUP_OVERLAP` in
 * shared/src/protocol.rs. */
export const CATCHUP_OVERLAP_MS = 30_000;

/** Bits below a message id's millisecond timestamp (10-bit worker, 12-bit sequence). */
const ID_TIME_SHIFT = 22n;

/** `id` moved `overlapMs` back in time, in id space (`id − overlapMs << 22`, at least "0"): the
 * `after` cursor of a catch-up for a chat held up to `id`. */
export function overlapFloor(id, overlapMs = CATCHUP_OVERLAP_MS) {
  const floor = BigInt(id) - (BigInt(overlapMs) << ID_TIME_SHIFT);
  return floor > 0n ? floor.toString() : "0";
}

/** Remembers, per chat, the highest message id held and every id seen above the lowest cursor a
 * catch-up may still start from (the highest id held, or the snapshot of a catch-up in progress,
 * minus the overlap), so that a message that arrives twice (a frame and a history page, the
 * sender's own copy, a replayed send) is reported once. The window is a span of time, not a count
 * of ids: an id above it is always told apart, however many newer ids went through meanwhile. */
export class MessageLog {
  constructor(overlapMs = CATCHUP_OVERLAP_MS) {
    this.overlapMs = overlapMs;
    this.highest = new Map();
    /** chat → ids seen above the window's floor. */
    this.seen = new Map();
    /** chat → floors of the catch-ups in progress (their pages start there). */
    this.holds = new Map();
    /** chat → set size after the last pruning (pruning runs when it doubles). */
    this.pruned = new Map();
    /** chat → the lowest message id accepted (the change cursor before any change is seen). */
    this.lowest = new Map();
    /** chat → the highest change id seen (edits and deletes). */
    this.changesHighest = new Map();
    /** chat → change ids seen above the change window's floor (same rule as message ids). */
    this.changesSeen = new Map();
  }
  /** The `after` of a catch-up of changes for `chatId`: the highest change id seen minus the
   * overlap, or (no change seen yet) the lowest message id held minus it (a change to a message
   * has a later id than the message); undefined when nothing is held. */
  changeFloor(chatId) {
    const held = this.changesHighest.get(chatId) ?? this.lowest.get(chatId);
    return held === undefined ? undefined : overlapFloor(held, this.overlapMs);
  }
  /** Records a change (`change_id` of an edit or delete) of `chatId`; true when it was not seen
   * before. Bounded like `accept`: ids at or below the window's floor are forgotten. */
  acceptChange(chatId, changeId) {
    const held = this.changesHighest.get(chatId);
    const floor = held === undefined ? "0" : overlapFloor(held, this.overlapMs);
    if (held !== undefined && compareIds(changeId, floor) <= 0) return true;
    let seen = this.changesSeen.get(chatId);
    if (!seen) this.changesSeen.set(chatId, (seen = new Set()));
    if (seen.has(changeId)) return false;
    seen.add(changeId);
    if (held === undefined || compareIds(changeId, held) > 0) this.changesHighest.set(chatId, changeId);
    if (seen.size >= 64) {
      const f = overlapFloor(this.changesHighest.get(chatId), this.overlapMs);
      for (const id of seen) if (compareIds(id, f) <= 0) seen.delete(id);
    }
    return true;
  }
  /** Forgets a chat (the user was removed from it). */
  forget(chatId) {
    for (const m of [this.highest, this.seen, this.holds, this.pruned, this.lowest, this.changesHighest, this.changesSeen]) m.delete(chatId);
  }
  /** The highest message id held for `chatId`, or undefined. */
  cursor(chatId) {
    return this.highest.get(chatId);
  }
  /** Raises the cursor of `chatId` to `messageId` (never lowers it). */
  advance(chatId, messageId) {
    const held = this.highest.get(chatId);
    if (held === undefined || compareIds(messageId, held) > 0) this.highest.set(chatId, messageId);
  }
  /** The window's floor for `chatId`: ids above it are remembered, ids at or below it are not
   * (no catch-up fetches them again). */
  floor(chatId) {
    const held = this.highest.get(chatId);
    let floor = held === undefined ? "0" : overlapFloor(held, this.overlapMs);
    for (const f of this.holds.get(chatId) || []) if (compareIds(f, floor) < 0) floor = f;
    return floor;
  }
  /** Keeps ids above `floor` remembered until the returned function is called: a catch-up that
   * pages from `floor` holds it while it runs, though live frames raise the cursor meanwhile. */
  hold(chatId, floor) {
    let list = this.holds.get(chatId);
    if (!list) this.holds.set(chatId, (list = []));
    list.push(floor);
    return () => {
      const i = list.indexOf(floor);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0 && this.holds.get(chatId) === list) this.holds.delete(chatId);
      this.prune(chatId);
    };
  }
  /** Records `message`; true when it was not seen before. An id at or below the window's floor
   * cannot be told apart and is reported: only a send replayed after the overlap can bring one,
   * and dropping it could lose a message never shown (apps that keep messages by id absorb it). */
  accept(message) {
    const { chat_id: chatId, message_id: id } = message;
    const low = this.lowest.get(chatId);
    if (low === undefined || compareIds(id, low) < 0) this.lowest.set(chatId, id);
    if (compareIds(id, this.floor(chatId)) <= 0) return true;
    let seen = this.seen.get(chatId);
    if (!seen) this.seen.set(chatId, (seen = new Set()));
    if (seen.has(id)) return false;
    seen.add(id);
    this.advance(chatId, id);
    if (seen.size >= 2 * (this.pruned.get(chatId) || 0) + 64) this.prune(chatId);
    return true;
  }
  /** Forgets the ids at or below the window's floor. */
  prune(chatId) {
    const seen = this.seen.get(chatId);
    if (!seen) return;
    const floor = this.floor(chatId);
    for (const id of seen) if (compareIds(id, floor) <= 0) seen.delete(id);
    this.pruned.set(chatId, seen.size);
  }
}

/** Connection states, in the order a session usually goes through them. */
/**
 * A `presence` frame as the `presence` event carries it: `status` and `last_seen` (unix ms), and
 * the older `online` / `last_seen_ms` pair. Frames from a server without `status` are read from
 * `online`.
 */
export function presenceOf(frame) {
  const status = frame.status ?? (frame.online ? "online" : "offline");
  const online = status === "online";
  const lastSeen = frame.last_seen ?? frame.last_seen_ms ?? null;
  return {
    user_id: frame.user_id,
    status,
    online,
    last_seen: lastSeen,
    last_seen_ms: online ? null : lastSeen,
  };
}

export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

const RETRY_STATUSES = new Set([500, 502, 503, 504, 429]);

export class ChatClient {
  /** See client.d.ts for the options. */
  constructor(options) {
    if (!options || !options.gatewayUrl) throw new TypeError("ChatClient: gatewayUrl is required");
    if (!options.token) throw new TypeError("ChatClient: token (a string or a function) is required");
    const o = options;
    this.gatewayUrl = o.gatewayUrl;
    this.apiUrl = (o.apiUrl ?? (globalThis.location ? globalThis.location.origin : "")).replace(/\/$/, "");
    this.encoding = o.encoding === "msgpack" ? "msgpack" : "json";
    this.backoff = { ...DEFAULT_BACKOFF, ...(o.backoff || {}) };
    this.stableAfterMs = o.stableAfterMs ?? 10_000;
    this.handshakeTimeoutMs = o.handshakeTimeoutMs ?? 15_000;
    this.refreshMarginMs = o.refreshMarginMs ?? 60_000;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 10_000;
    this.requestAttempts = Math.max(1, o.requestAttempts ?? 5);
    this.catchUpPageSize = o.catchUpPageSize ?? 200;
    this.catchUpPagesMax = o.catchUpPagesMax ?? 1000;
    this.autoAck = o.autoAck !== false;
    this.ackDelayMs = o.ackDelayMs ?? 250;
    this.log = new MessageLog();
    /** chat → { read_up_to, count, capped }: the unread state, from `GET /v1/chats` and kept
     * current by frames and `markRead`. */
    this.unread = new Map();
    /** chat → highest id waiting for the next `ack` frame; chat → highest id acknowledged. */
    this._acksPending = new Map();
    this._acked = new Map();
    /** chat → the newest message id the unread count already includes (the chat list's
     * `last_message_id`, then each counted frame), so that a frame racing the list is not
     * counted twice. */
    this._counted = new Map();
    this._tokenSource = o.token;
    this._token = typeof o.token === "string" ? o.token : undefined;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._fetch = o.fetch ?? globalThis.fetch?.bind(globalThis);
    this._setTimeout = o.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = o.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this._random = o.random ?? Math.random;
    this._now = o.now ?? Date.now;
    this._listeners = new Map();
    this.state = State.IDLE;
    this.attempt = 0;
    this.hello = null;
    this._ws = null;
    this._gen = 0;
    this._wanted = false;
    this._timers = {};
    this._openedAt = null;
    this._forceNewToken = false;
    if (typeof globalThis.addEventListener === "function" && o.watchOnline !== false) {
      // Back online: no reason to sit out the rest of a long backoff.
      this._onOnline = () => {
        if (this.state !== State.RECONNECTING) return;
        this._clear("retry");
        this._open();
      };
      globalThis.addEventListener("online", this._onOnline);
    }
  }

  // ---- events ----------------------------------------------------------------------------

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  _emit(type, detail) {
    for (const l of [...(this._listeners.get(type) || [])]) {
      try {
        l(detail);
      } catch (e) {
        // A broken listener must not break the connection logic.
        if (type !== "error") this._emit("error", { code: "listener_failed", message: String(e), cause: e });
      }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, attempt: this.attempt, ...extra });
  }

  // ---- connection ------------------------------------------------------------------------

  /** Opens the socket (and keeps it open until `close()`). */
  connect() {
    this._wanted = true;
    if (this.state === State.CONNECTING || this.state === State.OPEN) return;
    this._clear("retry");
    this._open();
  }

  /** Closes the socket for good (until `connect()` is called again). */
  close() {
    this._wanted = false;
    this._gen++;
    this._clearAll();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        /* already closed */
      }
    }
    if (this.state !== State.CLOSED) this._setState(State.CLOSED, { code: 1000, reason: "client closed" });
  }

  /** Replaces the token (used from the next connect, request and refresh on). */
  setToken(token) {
    this._token = token;
  }

  async _currentToken(forceNew) {
    if (typeof this._tokenSource !== "function") return this._token;
    const exp = this._token ? tokenExpiry(this._token) : undefined;
    const stale = exp !== undefined && exp * 1000 - this._now() < Math.min(this.refreshMarginMs, 5_000);
    if (forceNew || !this._token || stale) {
      const t = await this._tokenSource();
      if (typeof t !== "string" || t === "") throw new Error("the token function returned no token");
      this._token = t;
    }
    return this._token;
  }

  async _open() {
    const gen = ++this._gen;
    this._setState(State.CONNECTING);
    let token;
    try {
      token = await this._currentToken(this._forceNewToken);
      this._forceNewToken = false;
    } catch (e) {
      if (gen !== this._gen) return;
      this._emit("error", { code: "token_failed", message: String(e && e.message ? e.message : e), cause: e });
      return this._retry(Advice.BACKOFF, 0, "token function failed");
    }
    if (gen !== this._gen || !this._wanted) return;
    const sep = this.gatewayUrl.includes("?") ? "&" : "?";
    const url = `${this.gatewayUrl}${sep}encoding=${this.encoding}&access_token=${encodeURIComponent(token)}`;
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      this._emit("error", { code: "socket_failed", message: String(e && e.message ? e.message : e), cause: e });
      return this._retry(Advice.BACKOFF, 0, "socket could not be created");
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._openedAt = null;
    this._timer("handshake", this.handshakeTimeoutMs, () => this._kill(gen, "no hello from the server"));
    ws.onmessage = (ev) => gen === this._gen && this._onFrame(gen, ev.data);
    ws.onclose = (ev) => gen === this._gen && this._onClose(ev.code, ev.reason || "");
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  /** Gives up on a socket that looks dead and reconnects with a backoff. */
  _kill(gen, why) {
    if (gen !== this._gen) return;
    const ws = this._ws;
    this._gen++;
    this._ws = null;
    try {
      ws?.close(4000, why.slice(0, 100));
    } catch {
      /* already closed */
    }
    this._onCloseHandled(1006, why);
  }

  _onClose(code, reason) {
    this._gen++;
    this._ws = null;
    this._onCloseHandled(code, reason);
  }

  _onCloseHandled(code, reason) {
    this._clearAll();
    this.hello = null;
    const stable = this._openedAt !== null && this._now() - this._openedAt >= this.stableAfterMs;
    if (stable) this.attempt = 0;
    this._openedAt = null;
    if (!this._wanted) {
      this._setState(State.CLOSED, { code, reason });
      return;
    }
    this._retry(closeAdvice(code), code, reason);
  }

  _retry(advice, code, reason) {
    const canRenew = typeof this._tokenSource === "function";
    if (advice === Advice.STOP || ((advice === Advice.NEW_TOKEN || advice === Advice.NEW_TOKEN_BACKOFF) && !canRenew)) {
      this._wanted = false;
      this._emit("close", { code, reason, willReconnect: false });
      this._setState(State.CLOSED, { code, reason });
      return;
    }
    let delayMs;
    if (advice === Advice.NOW || advice === Advice.NEW_TOKEN) {
      // "Now", but a whole node's clients told at once should not all come back in the same
      // millisecond; a repeated "now" without a stable connection in between backs off.
      delayMs = this.attempt === 0 ? Math.round(this._random() * 250) : backoffDelay(this.attempt - 1, this.backoff, this._random);
    } else {
      delayMs = backoffDelay(this.attempt, this.backoff, this._random);
    }
    if (advice === Advice.NEW_TOKEN || advice === Advice.NEW_TOKEN_BACKOFF) this._forceNewToken = true;
    this.attempt++;
    this._emit("close", { code, reason, willReconnect: true, delayMs });
    this._setState(State.RECONNECTING, { code, reason, delayMs });
    this._timer("retry", delayMs, () => this._open());
  }

  _onFrame(gen, data) {
    let frame;
    try {
      frame = typeof data === "string" ? JSON.parse(data) : msgpackDecode(new Uint8Array(data));
    } catch (e) {
      this._emit("error", { code: "bad_frame", message: `undecodable frame: ${e.message}` });
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (this.state === State.OPEN) this._armLiveness(gen);
    switch (frame.type) {
      case "hello":
        return this._onHello(gen, frame);
      case "message":
        return this._deliver(frame.message, "live");
      case "message_updated":
        return this._change(frame.message, "live");
      case "message_deleted":
        return this._change({ chat_id: frame.chat_id, message_id: frame.message_id, change_id: frame.change_id, deleted: true }, "live");
      case "chat_removed":
        this.log.forget(frame.chat_id);
        return this._emit("chat_removed", { chat_id: frame.chat_id });
      case "typing":
        return this._emit("typing", { chat_id: frame.chat_id, user_id: frame.user_id });
      case "read":
        // Another device of this user read the chat: its unread state follows.
        if (this.hello && frame.user_id === this.hello.user_id) this._readUpTo(frame.chat_id, frame.message_id);
        return this._emit("read", { chat_id: frame.chat_id, user_id: frame.user_id, message_id: frame.message_id });
      case "delivered":
        return this._emit("delivered", { chat_id: frame.chat_id, user_id: frame.user_id, message_id: frame.message_id });
      case "presence":
        return this._emit("presence", presenceOf(frame));
      case "event":
        return this._emit("event", { event: frame.event });
      case "resync":
        // The node may have missed deliveries; the socket stays open. Catch up from what is
        // held now: frames after this one may be newer than the ones missed.
        this._emit("resync", {});
        return this._catchUp(gen);
      case "refreshed":
        if (this.hello) this.hello.token_expires_at = frame.token_expires_at;
        this._scheduleRefresh(gen, frame.token_expires_at);
        return this._emit("refreshed", { token_expires_at: frame.token_expires_at });
      case "error":
        return this._emit("error", { code: frame.code, message: frame.message });
      case "pong":
        return;
      default:
        return; // unknown frame types are ignored, as unknown fields are
    }
  }

  _onHello(gen, hello) {
    this._clear("handshake");
    this.hello = hello;
    this._openedAt = this._now();
    this._setState(State.OPEN, { connection_id: hello.connection_id });
    this._emit("hello", hello);
    const beat = Math.max(1_000, hello.heartbeat_interval_ms || 25_000);
    // Browsers answer the server's pings without telling the page, so the page sends its own
    // pings: the pongs prove the path still works.
    const ping = () => {
      if (gen !== this._gen) return;
      this._sendFrame({ type: "ping" });
      this._timer("ping", beat, ping);
    };
    this._timer("ping", beat, ping);
    this._armLiveness(gen);
    this._scheduleRefresh(gen, hello.token_expires_at);
    this._catchUp(gen);
  }

  _armLiveness(gen) {
    const beat = Math.max(1_000, this.hello?.heartbeat_interval_ms || 25_000);
    this._timer("liveness", beat * 2, () => this._kill(gen, "no frame for two heartbeat intervals"));
  }

  _scheduleRefresh(gen, expiresAtS) {
    if (typeof this._tokenSource !== "function" || !expiresAtS) return;
    const left = expiresAtS * 1000 - this._now();
    const wait = Math.max(0, left - Math.min(this.refreshMarginMs, left / 2));
    this._timer("refresh", wait, async () => {
      if (gen !== this._gen) return;
      try {
        const token = await this._currentToken(true);
        if (gen === this._gen) this._sendFrame({ type: "refresh", token });
      } catch (e) {
        this._emit("error", { code: "token_failed", message: String(e && e.message ? e.message : e), cause: e });
        // Try again shortly; at expiry the server closes with 4201 and a reconnect gets one.
        if (gen === this._gen) this._timer("refresh", Math.max(1_000, left / 4), () => this._scheduleRefresh(gen, expiresAtS));
      }
    });
  }

  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(this.encoding === "msgpack" ? msgpackEncode(frame) : JSON.stringify(frame));
    return true;
  }

  /** Tells the chat's other members that this user is typing (best effort). */
  typing(chatId) {
    return this.state === State.OPEN && this._sendFrame({ type: "typing", chat_id: chatId });
  }

  // ---- read state and receipts -------------------------------------------------------------

  /** Acknowledges that this client holds `chatId` up to `messageId` (a delivered receipt for
   * the other members). Coalesced: one `ack` frame per chat every `ackDelayMs` at most, with the
   * highest id; an id at or below one already acknowledged is skipped. Done automatically for
   * received messages unless `autoAck` is false. */
  ack(chatId, messageId) {
    const done = this._acked.get(chatId);
    if (done !== undefined && compareIds(messageId, done) <= 0) return;
    const pending = this._acksPending.get(chatId);
    if (pending === undefined || compareIds(messageId, pending) > 0) this._acksPending.set(chatId, messageId);
    if (this._timers.ack === undefined) this._timer("ack", this.ackDelayMs, () => this._flushAcks());
  }

  _flushAcks() {
    if (this.state !== State.OPEN) return; // kept: the next ack after a reconnect sends them
    for (const [chatId, messageId] of this._acksPending) {
      if (!this._sendFrame({ type: "ack", chat_id: chatId, message_id: messageId })) return;
      this._acked.set(chatId, messageId);
      this._acksPending.delete(chatId);
    }
  }

  /** Marks `chatId` read up to `messageId` (markers only move forward; an id above the chat's
   * newest message counts as the newest). Resolves when stored; the chat's unread count drops
   * at once when `messageId` is the newest message held. */
  async markRead(chatId, messageId) {
    await this._request("POST", `/v1/chats/${encodeURIComponent(chatId)}/read`, { message_id: messageId });
    this._readUpTo(chatId, messageId);
  }

  /** The unread state of `chatId` (`count` messages from others after `read_up_to`; `capped`:
   * there may be more, show "99+"), or undefined before the chat list was fetched. */
  unreadCount(chatId) {
    const u = this.unread.get(chatId);
    return u ? { ...u } : undefined;
  }

  /** Every member's read and delivered markers of a chat. */
  receipts(chatId) {
    return this._request("GET", `/v1/chats/${encodeURIComponent(chatId)}/receipts`);
  }

  _setUnread(chatId, state) {
    const before = this.unread.get(chatId);
    this.unread.set(chatId, state);
    if (!before || before.count !== state.count || before.capped !== state.capped || before.read_up_to !== state.read_up_to) {
      this._emit("unread", { chat_id: chatId, ...state });
    }
  }

  _readUpTo(chatId, messageId) {
    const u = this.unread.get(chatId) || { read_up_to: null, count: 0, capped: false };
    if (u.read_up_to !== null && compareIds(messageId, u.read_up_to) <= 0) return;
    const held = this.log.cursor(chatId);
    const all = held === undefined || compareIds(messageId, held) >= 0;
    this._setUnread(chatId, all ? { read_up_to: messageId, count: 0, capped: false } : { ...u, read_up_to: messageId });
  }

  /** A message seen for the first time: acknowledged when it came from the server; one more
   * unread when it is a live frame of someone else's above the read marker (a catch-up follows
   * the chat list, whose counts already include what it fetches). */
  _countIncoming(message, source) {
    const own = this.hello && message.sender_id === this.hello.user_id;
    if (source !== "sent" && this.autoAck && !own) this.ack(message.chat_id, message.message_id);
    if (own || source !== "live") return;
    const u = this.unread.get(message.chat_id);
    if (!u) return; // unknown until the chat list arrives (it counts this message then)
    if (u.read_up_to !== null && compareIds(message.message_id, u.read_up_to) <= 0) return;
    const counted = this._counted.get(message.chat_id);
    if (counted !== undefined && compareIds(message.message_id, counted) <= 0) return;
    this._counted.set(message.chat_id, message.message_id);
    this._setUnread(message.chat_id, { ...u, count: u.count + 1 });
  }

  // ---- messages and catch-up -------------------------------------------------------------

  _deliver(message, source) {
    if (!message || typeof message.message_id !== "string") return;
    if (this.log.accept(message)) {
      this._countIncoming(message, source);
      this._emit("message", { message, source });
    }
  }

  /** An edit or delete (a message in its new state, or a tombstone): emitted once per change id
   * as `update` or `delete`. Apply an `update` only over an older state (a lower `change_id`, or
   * none); a `delete` is final. */
  _change(message, source) {
    if (!message || typeof message.message_id !== "string" || typeof message.change_id !== "string") return false;
    if (!this.log.acceptChange(message.chat_id, message.change_id)) return false;
    if (message.deleted) {
      this._emit("delete", { chat_id: message.chat_id, message_id: message.message_id, change_id: message.change_id, source });
    } else {
      this._emit("update", { message, source });
    }
    return true;
  }

  /** Declares that the caller holds `chatId` up to `lastMessageId`, so that catch-up fetches
   * what may be missing: everything after `lastMessageId` minus the overlap. Messages in the
   * overlap that the log has not seen itself are reported again (keep messages by id).
   * `history()` does this on its own. */
  track(chatId, lastMessageId) {
    if (lastMessageId) this.log.advance(chatId, lastMessageId);
    else if (this.log.cursor(chatId) === undefined) this.log.highest.set(chatId, "0");
  }

  /** After `hello` or `resync`: fetch every tracked chat's messages from its cursor minus the
   * overlap (docs/PROTOCOL.md, "Delivery and catch-up"). The cursors are taken now,
   * synchronously: live frames that arrive meanwhile may raise the log's cursors past the gap,
   * and the gap must still be fetched. Retries with backoff while this socket lives. */
  async _catchUp(gen) {
    const floors = new Map();
    const changeFloors = new Map();
    const releases = [];
    for (const [chatId, held] of this.log.highest) {
      const floor = overlapFloor(held, this.log.overlapMs);
      floors.set(chatId, floor);
      releases.push(this.log.hold(chatId, floor));
      const changeFloor = this.log.changeFloor(chatId);
      if (changeFloor !== undefined) changeFloors.set(chatId, changeFloor);
    }
    let failures = 0;
    try {
      while (gen === this._gen) {
        try {
          const n = await this._catchUpOnce(gen, floors, changeFloors);
          if (gen === this._gen) this._emit("catchup", { messages: n.messages, changes: n.changes });
          return;
        } catch (e) {
          if (gen !== this._gen) return;
          this._emit("error", { code: "catchup_failed", message: String(e && e.message ? e.message : e), cause: e });
          await this._sleep(backoffDelay(failures++, this.backoff, this._random));
        }
      }
    } finally {
      for (const release of releases) release();
    }
  }

  async _catchUpOnce(gen, floors, changeFloors) {
    const { chats } = await this.chats();
    if (gen !== this._gen) return { messages: 0, changes: 0 };
    this._emit("chats", { chats });
    let delivered = 0;
    let changed = 0;
    for (const chat of chats) {
      // Edits and deletes made while away: the chat's changes above its change floor.
      const changeFloor = changeFloors.get(chat.chat_id);
      if (changeFloor !== undefined && chat.last_change_id && compareIds(chat.last_change_id, changeFloor) > 0) {
        let after = changeFloor;
        for (let page = 0; page < this.catchUpPagesMax; page++) {
          const q = `after=${encodeURIComponent(after)}&limit=${this.catchUpPageSize}`;
          const res = await this._request("GET", `/v1/chats/${encodeURIComponent(chat.chat_id)}/changes?${q}`);
          if (gen !== this._gen) return { messages: delivered, changes: changed };
          for (const m of res.messages) if (this._change(m, "catchup")) changed++;
          if (!res.has_more || !res.next_after) break;
          after = res.next_after;
        }
      }
      const floor = floors.get(chat.chat_id);
      // A message can land below the highest id held (by up to the overlap), so a chat whose
      // newest message is anywhere above the floor is fetched again from there.
      if (floor === undefined || !chat.last_message_id || compareIds(chat.last_message_id, floor) <= 0) continue;
      let after = floor;
      for (let page = 0; page < this.catchUpPagesMax; page++) {
        const q = `after=${encodeURIComponent(after)}&limit=${this.catchUpPageSize}`;
        const res = await this._request("GET", `/v1/chats/${encodeURIComponent(chat.chat_id)}/messages?${q}`);
        if (gen !== this._gen) return { messages: delivered, changes: changed };
        for (const m of res.messages) {
          if (this.log.accept(m)) {
            delivered++;
            this._countIncoming(m, "catchup");
            this._emit("message", { message: m, source: "catchup" });
          }
        }
        if (!res.has_more || res.messages.length === 0) break;
        after = res.messages[res.messages.length - 1].message_id;
      }
    }
    return { messages: delivered, changes: changed };
  }

  // ---- HTTP API --------------------------------------------------------------------------

  /** Sends a message; resolves with the stored message. Retries network failures, timeouts and
   * 5xx/429 answers with the same `client_msg_id`, so that a retry never stores it twice. */
  async send(chatId, body, options = {}) {
    const clientMsgId = options.clientMsgId || newClientMsgId();
    const message = await this._request(
      "POST",
      `/v1/chats/${encodeURIComponent(chatId)}/messages`,
      { client_msg_id: clientMsgId, body },
      { retry: true, signal: options.signal, attempts: options.attempts },
    );
    this._deliver(message, "sent");
    return message;
  }

  /** One page of history (ascending). Without a cursor: the latest page. Updates the catch-up
   * cursor of the chat; does not emit `message` events (render the returned page). */
  async history(chatId, { before, after, limit } = {}) {
    const q = new URLSearchParams();
    if (before) q.set("before", before);
    if (after) q.set("after", after);
    if (limit) q.set("limit", String(limit));
    const qs = q.toString();
    const page = await this._request("GET", `/v1/chats/${encodeURIComponent(chatId)}/messages${qs ? "?" + qs : ""}`);
    for (const m of page.messages) {
      this.log.accept(m);
      // The page shows the current state: its changes need no event.
      if (m.change_id) this.log.acceptChange(chatId, m.change_id);
    }
    if (this.log.cursor(chatId) === undefined) this.log.highest.set(chatId, "0");
    return page;
  }

  /** All the caller's chats, newest activity first (every page of `GET /v1/chats`, followed). */
  async chats() {
    const chats = [];
    let after;
    for (;;) {
      const page = await this._request("GET", `/v1/chats${after ? "?after=" + encodeURIComponent(after) : ""}`);
      chats.push(...page.chats);
      if (!page.has_more || !page.next_after) break;
      after = page.next_after;
    }
    const activity = (c) => BigInt(c.last_message_id ?? c.chat_id);
    chats.sort((a, b) => (activity(a) < activity(b) ? 1 : activity(a) > activity(b) ? -1 : 0));
    for (const c of chats) {
      if (typeof c.unread_count === "number") {
        if (c.last_message_id) this._counted.set(c.chat_id, c.last_message_id);
        this._setUnread(c.chat_id, { read_up_to: c.read_up_to ?? null, count: c.unread_count, capped: !!c.unread_capped });
      }
    }
    return { chats };
  }

  /** One chat with its members. */
  chat(chatId) {
    return this._request("GET", `/v1/chats/${encodeURIComponent(chatId)}`);
  }

  /** Creates a chat (not retried: a retry could create a second chat). */
  createChat({ members, title } = {}) {
    return this._request("POST", "/v1/chats", { members: members || [], ...(title ? { title } : {}) }, { retry: false });
  }

  /** Edits one's own message; resolves with the message, now with `edited_at`. Retried like a
   * send: the same body twice is one edit. Emits `update` (once) like a live change. */
  async edit(chatId, messageId, body) {
    const message = await this._request("PATCH", `/v1/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(messageId)}`, { body });
    if (message && message.change_id) this._change(message, "sent");
    return message;
  }

  /** Deletes a message (one's own, or any as an owner or admin). Retried: deleting twice is one
   * delete. The `delete` event comes with the live frame or the next catch-up. */
  deleteMessage(chatId, messageId) {
    return this._request("DELETE", `/v1/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(messageId)}`);
  }

  /** One page of a chat's changes (edited and deleted messages, in change order). */
  changes(chatId, { after, limit } = {}) {
    const q = new URLSearchParams();
    if (after) q.set("after", after);
    if (limit) q.set("limit", String(limit));
    const qs = q.toString();
    return this._request("GET", `/v1/chats/${encodeURIComponent(chatId)}/changes${qs ? "?" + qs : ""}`);
  }

  /** The owner grants (`"admin"`) or revokes (`"member"`) admin. */
  setRole(chatId, userId, role) {
    return this._request("PATCH", `/v1/chats/${encodeURIComponent(chatId)}/members/${encodeURIComponent(userId)}`, { role });
  }

  /** Leaves the chat (`userId` is oneself), or removes a member (owners and admins). */
  removeMember(chatId, userId) {
    return this._request("DELETE", `/v1/chats/${encodeURIComponent(chatId)}/members/${encodeURIComponent(userId)}`);
  }

  addMembers(chatId, userIds) {
    return this._request("POST", `/v1/chats/${encodeURIComponent(chatId)}/members`, { user_ids: userIds });
  }

  /** Whether users are online. */
  presence(userIds) {
    return this._request("GET", `/v1/presence?user_ids=${userIds.map(encodeURIComponent).join(",")}`);
  }

  async _request(method, path, body, { retry = true, signal, attempts } = {}) {
    const max = retry ? Math.max(1, attempts ?? this.requestAttempts) : 1;
    let renewed = false;
    let lastError;
    for (let attempt = 0; attempt < max; attempt++) {
      if (signal?.aborted) throw signal.reason ?? new Error("aborted");
      let wait = backoffDelay(attempt, this.backoff, this._random);
      try {
        const token = await this._currentToken(false);
        const res = await this._fetchWithTimeout(method, path, body, token, signal);
        if (res.ok) return res.status === 204 ? null : await res.json();
        const problem = await res.json().catch(() => null);
        const error = new ApiError(res.status, problem);
        if (res.status === 401 && !renewed && typeof this._tokenSource === "function") {
          renewed = true;
          this._token = undefined;
          attempt--; // a renewed token is not a retry
          continue;
        }
        if (!RETRY_STATUSES.has(res.status)) throw error;
        lastError = error;
        const after = Number(res.headers.get("retry-after"));
        if (Number.isFinite(after) && after > 0) wait = Math.max(wait, Math.min(after * 1000, this.backoff.maxMs));
      } catch (e) {
        if (e instanceof ApiError || signal?.aborted) throw e;
        lastError = e; // network failure or timeout: the request may or may not have arrived
      }
      if (attempt + 1 < max) await this._sleep(wait);
    }
    throw lastError;
  }

  async _fetchWithTimeout(method, path, body, token, signal) {
    const ctrl = new AbortController();
    const onAbort = () => ctrl.abort(signal.reason);
    signal?.addEventListener("abort", onAbort);
    const t = this._setTimeout(() => ctrl.abort(new Error(`request timed out after ${this.requestTimeoutMs} ms`)), this.requestTimeoutMs);
    try {
      const headers = { authorization: `Bearer ${token}`, accept: "application/json" };
      if (body !== undefined) headers["content-type"] = "application/json";
      return await this._fetch(this.apiUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctrl.signal,
      });
    } finally {
      this._clearTimeout(t);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  // ---- timers ----------------------------------------------------------------------------

  _sleep(ms) {
    return new Promise((resolve) => this._setTimeout(resolve, ms));
  }

  _timer(name, ms, fn) {
    this._clear(name);
    this._timers[name] = this._setTimeout(() => {
      delete this._timers[name];
      fn();
    }, ms);
  }

  _clear(name) {
    if (this._timers[name] !== undefined) {
      this._clearTimeout(this._timers[name]);
      delete this._timers[name];
    }
  }

  _clearAll() {
    for (const name of Object.keys(this._timers)) this._clear(name);
  }
}
