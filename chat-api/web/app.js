// The demo chat page: logs in with a development token (embedded mode), lists and creates chats,
// shows messages in real time (each once, ordered by id), loads older history on scroll, and
// shows typing, presence, unread badges, delivered/read ticks on your own messages and the
// connection state. Everything goes through client.js.

import { ChatClient, compareIds } from "/client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// History page size (`?page=` lets a test page through a short chat).
const PAGE = Math.min(200, Math.max(1, Number(params.get("page")) || 50));

const demo = {
  client: null,
  user: null,
  chats: new Map(), // chat_id -> chat
  current: null, // chat_id
  shown: new Map(), // message_id -> <li> in the current chat
  pending: new Map(), // client_msg_id -> <li> of a message being sent
  oldest: null,
  hasOlder: false,
  loadingOlder: false,
  // The open chat's markers: user -> { read: id|null, delivered: id|null }.
  receipts: new Map(),
  stats: { live: 0, catchup: 0, sent: 0, reconnects: 0, catchups: 0 },
};
// For tests and curious developers.
window.chatDemo = demo;

function note(text) {
  $("log").textContent = `${new Date().toLocaleTimeString()}  ${text}`;
}

async function loadConfig() {
  const res = await fetch("/config.json");
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  return res.json();
}

async function devToken(user) {
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || `HTTP ${res.status}`);
  return body.token;
}

async function start(config, user, encoding, pastedToken) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const gatewayUrl = `${scheme}://${location.hostname}:${config.gateway_port}${config.gateway_path}`;
  const token = config.dev_tokens ? () => devToken(user) : pastedToken;
  const client = new ChatClient({ gatewayUrl, apiUrl: location.origin, token, encoding });
  demo.client = client;
  demo.user = user;
  $("me").textContent = `${user} · ${encoding}`;
  $("login").hidden = true;
  $("main").hidden = false;

  client.on("state", ({ state, delayMs, code }) => {
    const el = $("conn-state");
    el.dataset.state = state;
    el.textContent =
      state === "reconnecting" ? `reconnecting in ${(delayMs / 1000).toFixed(1)} s (closed ${code})` : state;
    if (state === "reconnecting") demo.stats.reconnects++;
  });
  client.on("close", ({ code, reason, willReconnect }) => {
    if (!willReconnect) note(`disconnected for good: ${code} ${reason}`);
  });
  client.on("chats", ({ chats }) => renderChats(chats));
  client.on("catchup", ({ messages }) => {
    demo.stats.catchups++;
    if (messages) note(`caught up ${messages} message(s) missed while away`);
  });
  client.on("message", ({ message, source }) => {
    demo.stats[source] = (demo.stats[source] || 0) + 1;
    onMessage(message);
  });
  // Edits and deletes redraw the message in place when it is shown.
  client.on("update", ({ message }) => {
    const li = demo.shown.get(message.message_id);
    if (li && message.chat_id === demo.current) fill(li, message);
  });
  client.on("delete", ({ message_id }) => {
    const li = demo.shown.get(message_id);
    if (li) li.querySelector(".body").textContent = "(deleted)";
  });
  client.on("chat_removed", ({ chat_id }) => note(`you were removed from chat ${chat_id}`));
  client.on("typing", ({ chat_id, user_id }) => {
    if (chat_id === demo.current && user_id !== demo.user) showTyping(user_id);
  });
  client.on("presence", (p) => updatePresence([p]));
  client.on("unread", () => renderChats([]));
  client.on("read", ({ chat_id, user_id, message_id }) => onReceipt(chat_id, user_id, "read", message_id));
  client.on("delivered", ({ chat_id, user_id, message_id }) => onReceipt(chat_id, user_id, "delivered", message_id));
  client.on("error", ({ code, message }) => {
    // Typing frames are best effort: a gateway without them answers `invalid_frame`.
    if (code !== "invalid_frame") note(`${code}: ${message}`);
  });
  // Presence is pushed (`presence` frames); it is read once per chat opened and again after
  // each (re)connect or resync, when pushed changes may have been missed.
  client.on("resync", () => refreshPresence());
  client.on("hello", () => refreshPresence());
  client.connect();
  if (params.get("chat")) openChat(params.get("chat"));
}

// ---- chats --------------------------------------------------------------------------------

function renderChats(chats) {
  for (const c of chats) demo.chats.set(c.chat_id, { ...demo.chats.get(c.chat_id), ...c });
  const list = $("chats");
  list.textContent = "";
  const sorted = [...demo.chats.values()].sort((a, b) =>
    compareIds(b.last_message_id || b.chat_id, a.last_message_id || a.chat_id),
  );
  for (const c of sorted) {
    const li = document.createElement("li");
    li.dataset.chatId = c.chat_id;
    li.className = c.chat_id === demo.current ? "current" : "";
    li.textContent = c.title || `chat ${c.chat_id.slice(-6)}`;
    const unread = demo.client.unreadCount(c.chat_id);
    if (unread && unread.count && c.chat_id !== demo.current) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = unread.capped ? `${unread.count}+` : String(unread.count);
      li.append(" ", badge);
    }
    li.addEventListener("click", () => openChat(c.chat_id));
    list.append(li);
  }
}

async function openChat(chatId) {
  demo.current = chatId;
  demo.shown.clear();
  demo.pending.clear();
  demo.receipts.clear();
  $("list").textContent = "";
  $("chat").hidden = false;
  $("empty").hidden = true;
  $("typing").textContent = "";
  try {
    const chat = await demo.client.chat(chatId);
    demo.chats.set(chatId, chat);
    $("chat-title").textContent = chat.title || `chat ${chatId.slice(-6)}`;
    $("chat-title").title = `members: ${chat.members.join(", ")}`;
    const page = await demo.client.history(chatId, { limit: PAGE });
    if (demo.current !== chatId) return;
    for (const m of page.messages) onMessage(m);
    demo.oldest = page.messages[0]?.message_id ?? null;
    demo.hasOlder = page.has_more;
    scrollToBottom();
    const newest = page.messages[page.messages.length - 1];
    if (newest) markRead(chatId, newest.message_id);
    loadReceipts(chatId);
    renderChats([]);
    refreshPresence();
    const keep = new URLSearchParams(location.search);
    keep.set("chat", chatId);
    history.replaceState(null, "", `?${keep}`);
  } catch (e) {
    note(`could not open the chat: ${e.message}`);
  }
}

async function loadOlder() {
  if (!demo.hasOlder || demo.loadingOlder || !demo.oldest) return;
  demo.loadingOlder = true;
  $("older").hidden = false;
  const chatId = demo.current;
  const box = $("messages");
  const before = box.scrollHeight;
  try {
    const page = await demo.client.history(chatId, { before: demo.oldest, limit: PAGE });
    if (demo.current !== chatId) return;
    for (const m of page.messages) onMessage(m);
    demo.oldest = page.messages[0]?.message_id ?? demo.oldest;
    demo.hasOlder = page.has_more;
    box.scrollTop += box.scrollHeight - before; // keep the reader where they were
  } catch (e) {
    note(`could not load older messages: ${e.message}`);
  } finally {
    demo.loadingOlder = false;
    $("older").hidden = true;
  }
}

// ---- messages -----------------------------------------------------------------------------

function onMessage(m) {
  if (m.chat_id !== demo.current) {
    // The client counts unread messages itself (the `unread` event redraws the badges).
    if (!demo.chats.has(m.chat_id)) demo.client.chats().then(({ chats }) => renderChats(chats)).catch(() => {});
    const c = demo.chats.get(m.chat_id);
    if (c) c.last_message_id = m.message_id;
    renderChats([]);
    return;
  }
  if (demo.shown.has(m.message_id)) return; // shown once, whichever path brought it first
  const pending = m.sender_id === demo.user ? demo.pending.get(m.client_msg_id) : null;
  const li = pending || document.createElement("li");
  demo.pending.delete(m.client_msg_id);
  fill(li, m);
  li.classList.remove("pending", "failed");
  demo.shown.set(m.message_id, li);
  const stick = nearBottom();
  place(li, m.message_id);
  if (stick || m.sender_id === demo.user) scrollToBottom();
  if (m.message_id) renderTick(li, m);
  // Seen in the open chat: mark it read (the other members see the ticks turn).
  if (m.sender_id !== demo.user && m.message_id && document.visibilityState !== "hidden") markRead(m.chat_id, m.message_id);
}

// ---- read state -----------------------------------------------------------------------------

const readTimers = new Map();
/** Marks `chatId` read up to `id`, at most every 300 ms per chat (the highest id wins). */
function markRead(chatId, id) {
  const t = readTimers.get(chatId);
  if (t && compareIds(id, t.id) <= 0) return;
  if (t) clearTimeout(t.timer);
  const timer = setTimeout(() => {
    readTimers.delete(chatId);
    demo.client.markRead(chatId, id).catch((e) => note(`could not mark read: ${e.message}`));
  }, 300);
  readTimers.set(chatId, { id, timer });
}

async function loadReceipts(chatId) {
  try {
    const { receipts } = await demo.client.receipts(chatId);
    if (demo.current !== chatId) return;
    for (const r of receipts) {
      if (r.read_up_to) onReceipt(chatId, r.user_id, "read", r.read_up_to);
      if (r.delivered_up_to) onReceipt(chatId, r.user_id, "delivered", r.delivered_up_to);
    }
  } catch {
    /* ticks stay as they are; frames update them */
  }
}

function onReceipt(chatId, userId, kind, id) {
  if (chatId !== demo.current || userId === demo.user) return;
  const r = demo.receipts.get(userId) || { read: null, delivered: null };
  if (r[kind] && compareIds(id, r[kind]) <= 0) return;
  r[kind] = id;
  // What was read was delivered.
  if (kind === "read" && (!r.delivered || compareIds(id, r.delivered) > 0)) r.delivered = id;
  demo.receipts.set(userId, r);
  for (const li of demo.shown.values()) if (li.classList.contains("mine")) renderTick(li, { message_id: li.dataset.id, sender_id: demo.user });
}

/** ✓ sent, ✓✓ delivered to a member, ✓✓ in blue once a member read it (own messages only). */
function renderTick(li, m) {
  if (m.sender_id !== demo.user) return;
  let tick = "sent";
  for (const r of demo.receipts.values()) {
    if (r.read && compareIds(r.read, m.message_id) >= 0) tick = "read";
    else if (tick === "sent" && r.delivered && compareIds(r.delivered, m.message_id) >= 0) tick = "delivered";
  }
  li.dataset.tick = tick;
  let el = li.querySelector(".tick");
  if (!el) {
    el = document.createElement("span");
    el.className = "tick";
    li.append(el);
  }
  el.textContent = tick === "sent" ? "✓" : "✓✓";
  el.title = tick;
}

function fill(li, m) {
  li.className = `msg${m.sender_id === demo.user ? " mine" : ""}`;
  li.dataset.id = m.message_id || "";
  li.dataset.clientMsgId = m.client_msg_id;
  li.textContent = "";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.sender_id;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = m.deleted ? "(deleted)" : m.edited_at ? `${m.body} (edited)` : m.body;
  const when = document.createElement("time");
  when.textContent = m.sent_at_ms ? new Date(m.sent_at_ms).toLocaleTimeString() : "sending…";
  li.append(who, body, when);
}

/** Inserts `li` in message-id order; pending messages stay at the end. */
function place(li, id) {
  const list = $("list");
  li.remove();
  for (const other of list.children) {
    const oid = other.dataset.id;
    if (!oid || compareIds(id, oid) < 0) {
      list.insertBefore(li, other);
      return;
    }
  }
  list.append(li);
}

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

async function send(body, clientMsgId) {
  const chatId = demo.current;
  let li = demo.pending.get(clientMsgId);
  if (!li) {
    li = document.createElement("li");
    fill(li, { sender_id: demo.user, client_msg_id: clientMsgId, body });
    li.classList.add("pending");
    demo.pending.set(clientMsgId, li);
    $("list").append(li);
    scrollToBottom();
  }
  li.classList.remove("failed");
  li.classList.add("pending");
  try {
    // Retries inside keep the same client_msg_id: a retry never stores the message twice.
    await demo.client.send(chatId, body, { clientMsgId, attempts: 8 });
  } catch (e) {
    if (!demo.pending.has(clientMsgId)) return;
    li.classList.remove("pending");
    li.classList.add("failed");
    li.title = `not sent (${e.message}); click to retry`;
    li.onclick = () => send(body, clientMsgId);
  }
}

// ---- typing and presence ------------------------------------------------------------------

let typingTimer = null;
function showTyping(user) {
  $("typing").textContent = `${user} is typing…`;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => ($("typing").textContent = ""), 4_000);
}

let lastTypingSent = 0;
function typed() {
  if (!demo.current || Date.now() - lastTypingSent < 2_500) return;
  lastTypingSent = Date.now();
  demo.client.typing(demo.current);
}

const presence = new Map();
async function refreshPresence() {
  const chat = demo.chats.get(demo.current);
  const others = (chat?.members || []).filter((u) => u !== demo.user).slice(0, 100);
  if (!others.length) return renderPresence();
  try {
    const { presence: list } = await demo.client.presence(others);
    updatePresence(list);
  } catch {
    /* read again at the next (re)connect; pushed changes keep it current meanwhile */
  }
}

function updatePresence(list) {
  for (const p of list) presence.set(p.user_id, p);
  renderPresence();
}

function renderPresence() {
  const chat = demo.chats.get(demo.current);
  const el = $("presence");
  el.textContent = "";
  for (const u of (chat?.members || []).filter((x) => x !== demo.user)) {
    const p = presence.get(u);
    const span = document.createElement("span");
    span.className = `who-presence ${p?.online ? "online" : "offline"}`;
    span.dataset.user = u;
    span.textContent = p?.online
      ? `${u} online`
      : `${u} ${p?.last_seen_ms ? "seen " + new Date(p.last_seen_ms).toLocaleTimeString() : "offline"}`;
    el.append(span);
  }
}

// ---- wiring -------------------------------------------------------------------------------

async function main() {
  let config;
  try {
    config = await loadConfig();
  } catch (e) {
    note(`cannot load /config.json: ${e.message}`);
    return;
  }
  if (!config.dev_tokens) {
    $("token-label").hidden = false;
    $("login-hint").textContent = "This server has a real signing key: paste a token for your user.";
  }
  if (params.get("encoding")) $("encoding").value = params.get("encoding");
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const user = $("user").value.trim();
    start(config, user, $("encoding").value, $("token").value.trim()).catch((err) => note(err.message));
  });
  $("new-chat").addEventListener("submit", async (e) => {
    e.preventDefault();
    const members = $("new-members").value.split(/[\s,]+/).filter(Boolean);
    try {
      const chat = await demo.client.createChat({ members, title: $("new-title").value.trim() || undefined });
      $("new-members").value = "";
      $("new-title").value = "";
      renderChats([chat]);
      openChat(chat.chat_id);
    } catch (err) {
      note(`could not create the chat: ${err.message}`);
    }
  });
  $("compose").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = $("text").value;
    if (!body.trim() || !demo.current) return;
    $("text").value = "";
    send(body, crypto.randomUUID());
  });
  $("text").addEventListener("input", typed);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
  });
  if (params.get("user")) {
    $("user").value = params.get("user");
    $("login-form").requestSubmit();
  }
}

main();
