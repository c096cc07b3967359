// Unit tests of the browser client's reconnect/backoff policy, catch-up and send retries, and of
// the MessagePack codec, under Node's test runner. The WebSocket, fetch and timers are scripted
// stand-ins injected through the client's options (named as such below); the real gateway and API
// are exercised by the browser end-to-end test (../e2e).

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  Advice,
  ChatClient,
  CATCHUP_OVERLAP_MS,
  MessageLog,
  backoffDelay,
  closeAdvice,
  compareIds,
  overlapFloor,
  presenceOf,
  tokenExpiry,
} from "../client.js";
import { decode, encode } from "../msgpack.js";

test("close codes map to the documented advice", () => {
  assert.equal(closeAdvice(1000), Advice.NOW);
  assert.equal(closeAdvice(4000), Advice.NOW);
  assert.equal(closeAdvice(4001), Advice.NOW);
  for (const c of [4100, 4101, 4102, 4103, 4104]) assert.equal(closeAdvice(c), Advice.BACKOFF, String(c));
  assert.equal(closeAdvice(4200), Advice.NEW_TOKEN_BACKOFF);
  assert.equal(closeAdvice(4205), Advice.NEW_TOKEN_BACKOFF);
  assert.equal(closeAdvice(4201), Advice.NEW_TOKEN);
  for (const c of [4202, 4203, 4204]) assert.equal(closeAdvice(c), Advice.STOP, String(c));
  // Dropped connections and refused handshakes (browsers report 1006) back off.
  assert.equal(closeAdvice(1006), Advice.BACKOFF);
  assert.equal(closeAdvice(1011), Advice.BACKOFF);
});

test("backoff grows exponentially, is capped, and jitter only shortens it", () => {
  const b = { initialMs: 100, maxMs: 1_000, factor: 2, jitter: 0.5 };
  const none = () => 0;
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, b, none)), [100, 200, 400, 800, 1000, 1000]);
  const most = () => 0.999999;
  assert.deepEqual([0, 1, 2, 3, 4].map((a) => backoffDelay(a, b, most)), [50, 100, 200, 400, 500]);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3, b);
    assert.ok(d >= 400 && d <= 800, `${d}`);
  }
  assert.equal(backoffDelay(10_000, b, none), 1000, "huge attempt counts stay finite");
});

/** A message id drawn `ms` milliseconds after a fixed instant (sequence `seq`), as the server
 * makes them: the millisecond timestamp sits above 22 bits of worker and sequence. */
const T0 = 100_000_000;
const idAt = (ms, seq = 0) => ((BigInt(T0 + ms) << 22n) + BigInt(seq)).toString();

test("ids compare as 64-bit decimals and the overlap moves an id back in time", () => {
  assert.equal(compareIds("9", "10"), -1);
  assert.equal(compareIds("18446744073709551615", "18446744073709551614"), 1);
  assert.equal(compareIds("42", "42"), 0);
  assert.equal(CATCHUP_OVERLAP_MS, 30_000);
  assert.equal(overlapFloor(idAt(40_000, 7)), idAt(40_000 - 30_000, 7));
  assert.equal(overlapFloor(idAt(0), 1), idAt(-1));
  assert.equal(overlapFloor("5"), "0", "saturates at zero");
  assert.equal(overlapFloor("18446744073709551615", 0), "18446744073709551615", "all 64 bits kept");
});

test("the log reports each message once and tells apart every id in the overlap, however many went through", () => {
  const log = new MessageLog();
  const m = (ms, seq = 0) => ({ chat_id: "c", message_id: idAt(ms, seq) });
  assert.equal(log.accept(m(5)), true);
  assert.equal(log.accept(m(5)), false);
  assert.equal(log.accept(m(7)), true);
  assert.equal(log.accept(m(6)), true, "below the highest id held but never seen");
  assert.equal(log.cursor("c"), idAt(7));
  // Far more ids than any count-based window would keep, all within one second.
  for (let i = 0; i < 5_000; i++) assert.equal(log.accept(m(1_000, i)), true);
  assert.equal(log.accept(m(6)), false, "still remembered: inside the overlap");
  assert.equal(log.accept(m(8)), true, "never seen: reported, though 5,000 newer ids went through");
  assert.equal(log.accept(m(1_000, 4_999)), false);
  // The cursor moves on: ids older than the overlap below it are forgotten (no catch-up asks
  // for them again), and the set shrinks to the window.
  log.accept(m(60_000));
  log.prune("c");
  assert.equal(log.floor("c"), idAt(30_000));
  assert.equal(log.seen.get("c").size, 1);
  assert.equal(log.accept(m(45_000)), true);
  assert.equal(log.accept(m(45_000)), false);
  // A catch-up in progress holds its own floor: what it fetches is told apart though live
  // frames raise the cursor far past it.
  const release = log.hold("c", idAt(50_000));
  log.accept(m(200_000));
  assert.equal(log.floor("c"), idAt(50_000));
  assert.equal(log.accept(m(55_000)), true);
  assert.equal(log.accept(m(55_000)), false, "held: not forgotten while the catch-up runs");
  release();
  assert.equal(log.floor("c"), idAt(170_000));
  assert.equal(log.seen.get("c").size, 1, "pruned to the window once the catch-up ended");
});

test("msgpack round-trips the protocol's values and refuses bad input", () => {
  const frame = {
    type: "message",
    message: { chat_id: "1", message_id: "18446744073709551615", body: "héllo ✓".repeat(10), sent_at_ms: 1_700_000_000_123 },
    n: [0, -1, -33, 127, 128, 255, 256, 65_535, 65_536, -129, -40_000, 2 ** 32, -(2 ** 40), 1.5],
    flags: [true, false, null],
    big: { ["k".repeat(40)]: "x".repeat(300) },
  };
  assert.deepEqual(decode(encode(frame)), frame);
  const long = Array.from({ length: 70_000 }, (_, i) => i % 7);
  assert.deepEqual(decode(encode(long)), long);
  assert.throws(() => decode(encode(frame).slice(0, 10)), /truncated/);
  assert.throws(() => decode(new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff])), /truncated/, "a lying count allocates nothing");
  assert.throws(() => decode(new Uint8Array([0xc1])), /unsupported/);
  assert.throws(() => decode(new Uint8Array([0x01, 0x02])), /trailing/);
});

test("tokenExpiry reads exp from a JWT without checking it", () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  assert.equal(tokenExpiry(`${b64({ alg: "HS256" })}.${b64({ sub: "a", exp: 1234 })}.sig`), 1234);
  assert.equal(tokenExpiry("not a token"), undefined);
});

// ---- scripted stand-ins ----------------------------------------------------------------------

/** Timers that run only when the test says so; records every delay asked for. */
function scriptedTimers() {
  let next = 1;
  const pending = new Map();
  return {
    pending,
    setTimeout: (fn, ms) => {
      const id = next++;
      pending.set(id, { fn, ms });
      return id;
    },
    clearTimeout: (id) => pending.delete(id),
    /** Runs the earliest-due timer whose delay satisfies `pick`, returning its delay. */
    fire(pick = () => true) {
      const entries = [...pending.entries()].filter(([, t]) => pick(t.ms)).sort((a, b) => a[1].ms - b[1].ms);
      assert.ok(entries.length, "no timer to fire");
      const [id, t] = entries[0];
      pending.delete(id);
      t.fn();
      return t.ms;
    },
  };
}

/** A WebSocket stand-in: records what the client sends; the test plays the server. */
function scriptedSockets() {
  const sockets = [];
  class ScriptedWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(data) {
      this.sent.push(typeof data === "string" ? JSON.parse(data) : decode(data));
    }
    close() {
      this.readyState = 3;
    }
    // server side
    hello(extra = {}) {
      this.readyState = 1;
      this.frame({ type: "hello", v: 1, connection_id: `c${sockets.length}`, user_id: "alice", heartbeat_interval_ms: 25_000, idle_timeout_ms: 60_000, token_expires_at: 0, ...extra });
    }
    frame(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { sockets, ScriptedWebSocket };
}

const flush = () => new Promise((r) => setImmediate(r));

function jsonResponse(status, body, headers = {}) {
  return new Response(body === null ? null : JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function newClient(extra = {}) {
  const timers = scriptedTimers();
  const ws = scriptedSockets();
  const client = new ChatClient({
    gatewayUrl: "ws://127.0.0.1:1/ws",
    apiUrl: "http://127.0.0.1:2",
    token: "t0",
    WebSocket: ws.ScriptedWebSocket,
    fetch: async () => jsonResponse(200, { chats: [] }),
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0,
    backoff: { initialMs: 100, maxMs: 1_600, factor: 2, jitter: 0.5 },
    watchOnline: false,
    ...extra,
  });
  return { client, timers, ...ws };
}

test("reconnects as each close code says, backing off on repeats", async () => {
  let tokens = 0;
  const { client, timers, sockets } = newClient({ token: async () => `tok${++tokens}` });
  const states = [];
  client.on("state", (s) => states.push(s.state));
  client.connect();
  await flush();
  assert.equal(sockets.length, 1);
  assert.match(sockets[0].url, /encoding=json&access_token=tok1$/);
  sockets[0].hello();
  assert.equal(client.state, "open");

  // Overloaded three times: 100, 200, 400 ms (random()=0: no jitter taken off).
  const delays = [];
  for (let i = 0; i < 3; i++) {
    sockets.at(-1).serverClose(4102, "server overloaded");
    assert.equal(client.state, "reconnecting");
    delays.push(timers.fire((ms) => ms >= 100));
    await flush();
  }
  assert.deepEqual(delays, [100, 200, 400]);
  assert.equal(sockets.length, 4);

  // Token expired: a new token, then reconnect.
  sockets.at(-1).hello();
  sockets.at(-1).serverClose(4201, "token expired");
  timers.fire((ms) => ms >= 100);
  await flush();
  assert.match(sockets.at(-1).url, /access_token=tok2$/);

  // A client bug: stays closed.
  sockets.at(-1).hello();
  sockets.at(-1).serverClose(4203, "frame too large");
  assert.equal(client.state, "closed");
  assert.equal([...timers.pending.values()].filter((t) => t.ms >= 100).length, 0);
  assert.ok(states.includes("reconnecting") && states.at(-1) === "closed");
});

test("a stable connection resets the backoff; a static token cannot be renewed", async () => {
  let now = 0;
  const { client, timers, sockets } = newClient({ now: () => now, stableAfterMs: 10_000 });
  client.connect();
  await flush();
  for (let i = 0; i < 3; i++) {
    sockets.at(-1).serverClose(1006);
    timers.fire((ms) => ms >= 100);
    await flush();
  }
  assert.equal(client.attempt, 3);
  sockets.at(-1).hello();
  now += 10_000;
  sockets.at(-1).serverClose(4100, "node draining");
  assert.equal(timers.fire((ms) => ms >= 100), 100, "back to the first delay");
  await flush();
  sockets.at(-1).hello();
  sockets.at(-1).serverClose(4201, "token expired");
  assert.equal(client.state, "closed", "a fixed token string cannot be renewed");
});

test("a silent connection is given up after two heartbeat intervals", async () => {
  const { client, timers, sockets } = newClient();
  client.connect();
  await flush();
  sockets[0].hello({ heartbeat_interval_ms: 1_000 });
  assert.equal(timers.fire((ms) => ms === 1_000), 1_000);
  assert.deepEqual(sockets[0].sent, [{ type: "ping" }]);
  timers.fire((ms) => ms === 2_000);
  assert.equal(client.state, "reconnecting");
});

test("the token is refreshed over the socket before it expires", async () => {
  let now = 1_000_000_000;
  let n = 0;
  const { client, timers, sockets } = newClient({ now: () => now, token: async () => `tok${++n}`, refreshMarginMs: 60_000 });
  client.connect();
  await flush();
  sockets[0].hello({ token_expires_at: now / 1000 + 600 });
  assert.equal(timers.fire((ms) => ms === 540_000), 540_000);
  await flush();
  assert.deepEqual(sockets[0].sent.at(-1), { type: "refresh", token: "tok2" });
});

test("catch-up pages from the cursor held at reconnect minus the overlap and reports each message once", async () => {
  const calls = [];
  const msg = (ms) => ({ chat_id: "7", message_id: idAt(ms), sender_id: "bob", client_msg_id: `m${ms}`, body: `b${ms}`, sent_at_ms: 1 });
  const floor = idAt(5_000 - CATCHUP_OVERLAP_MS);
  let sockets;
  const fetch = async (url) => {
    const u = new URL(url);
    calls.push(u.pathname + u.search);
    if (u.pathname === "/v1/chats") return jsonResponse(200, { chats: [{ chat_id: "7", last_message_id: idAt(12_000) }, { chat_id: "8", last_message_id: idAt(3_000) }] });
    const after = u.searchParams.get("after");
    if (after === floor) {
      // A live frame for a later message arrives while the first page is in flight.
      sockets.at(-1).frame({ type: "message", message: msg(11_000) });
      // 3 was committed after 5 (another replica's clock, or a slower concurrent send): below
      // the cursor held, and still owed.
      return jsonResponse(200, { messages: [msg(3_000), msg(5_000)], has_more: true });
    }
    if (after === idAt(5_000)) return jsonResponse(200, { messages: [msg(8_000), msg(11_000), msg(12_000)], has_more: false });
    throw new Error(`unexpected ${url}`);
  };
  const t = newClient({ fetch, catchUpPageSize: 2 });
  sockets = t.sockets;
  const { client } = t;
  client.log.accept(msg(5_000)); // held before the reconnect
  const seen = [];
  client.on("message", ({ message, source }) => seen.push(`${Number(BigInt(message.message_id) >> 22n) - T0}:${source}`));
  let caught;
  const done = new Promise((r) => client.on("catchup", (e) => r((caught = e))));
  client.connect();
  await flush();
  sockets[0].hello();
  await done;
  assert.deepEqual(calls, ["/v1/chats", `/v1/chats/7/messages?after=${floor}&limit=2`, `/v1/chats/7/messages?after=${idAt(5_000)}&limit=2`]);
  assert.deepEqual(seen, ["11000:live", "3000:catchup", "8000:catchup", "12000:catchup"]);
  assert.equal(caught.messages, 3);
  assert.equal(client.log.cursor("7"), idAt(12_000));
  assert.equal(client.log.cursor("8"), undefined, "untracked chats are left to the page");
});

test("a chat whose newest message is below the cursor held but inside the overlap is fetched", async () => {
  const calls = [];
  const msg = (ms) => ({ chat_id: "7", message_id: idAt(ms), sender_id: "bob", client_msg_id: `m${ms}`, body: `b${ms}`, sent_at_ms: 1 });
  const fetch = async (url) => {
    const u = new URL(url);
    calls.push(u.pathname + u.search);
    // The newest message (from a replica whose clock is 3 s behind) is below the one held.
    if (u.pathname === "/v1/chats") return jsonResponse(200, { chats: [{ chat_id: "7", last_message_id: idAt(7_000) }, { chat_id: "9", last_message_id: idAt(-40_000) }] });
    if (u.searchParams.get("after") === overlapFloor(idAt(10_000))) return jsonResponse(200, { messages: [msg(7_000), msg(10_000)], has_more: false });
    throw new Error(`unexpected ${url}`);
  };
  const t = newClient({ fetch });
  const { client } = t;
  client.log.accept(msg(10_000));
  client.track("9", idAt(0)); // nothing newer than 30 s before what is held: no request
  const seen = [];
  client.on("message", ({ message }) => seen.push(message.message_id));
  const done = new Promise((r) => client.on("catchup", r));
  client.connect();
  await flush();
  t.sockets[0].hello();
  await done;
  assert.deepEqual(calls, ["/v1/chats", `/v1/chats/7/messages?after=${overlapFloor(idAt(10_000))}&limit=200`]);
  assert.deepEqual(seen, [idAt(7_000)]);
});

test("resync catches up from the cursor held when it arrived, though newer frames follow", async () => {
  const calls = [];
  const msg = (ms) => ({ chat_id: "7", message_id: idAt(ms), sender_id: "bob", client_msg_id: `m${ms}`, body: `b${ms}`, sent_at_ms: 1 });
  let sockets;
  let catchUps = 0;
  const floor = overlapFloor(idAt(5_000));
  const fetch = async (url) => {
    const u = new URL(url);
    calls.push(u.pathname + u.search);
    if (u.pathname === "/v1/chats") {
      catchUps++;
      // After the resync, a live frame newer than the missed messages lands before the answer,
      // and far enough ahead that the missed ones are older than the overlap below it.
      if (catchUps === 2) sockets.at(-1).frame({ type: "message", message: msg(90_000) });
      return jsonResponse(200, { chats: [{ chat_id: "7", last_message_id: catchUps === 1 ? idAt(5_000) : idAt(90_000) }] });
    }
    if (u.searchParams.get("after") === floor) {
      return catchUps === 1
        ? jsonResponse(200, { messages: [msg(5_000)], has_more: false })
        : jsonResponse(200, { messages: [msg(5_000), msg(6_000), msg(7_000), msg(8_000), msg(90_000)], has_more: false });
    }
    throw new Error(`unexpected ${url}`);
  };
  const t = newClient({ fetch });
  sockets = t.sockets;
  const { client } = t;
  client.log.accept(msg(5_000));
  const seen = [];
  client.on("message", ({ message, source }) => seen.push(`${Number(BigInt(message.message_id) >> 22n) - T0}:${source}`));
  let resyncs = 0;
  client.on("resync", () => resyncs++);
  const caught = [];
  client.on("catchup", (e) => caught.push(e.messages));
  client.connect();
  await flush();
  sockets[0].hello();
  while (caught.length < 1) await flush();
  sockets[0].frame({ type: "resync" });
  while (caught.length < 2) await flush();
  assert.equal(resyncs, 1);
  assert.deepEqual(calls, ["/v1/chats", `/v1/chats/7/messages?after=${floor}&limit=200`, "/v1/chats", `/v1/chats/7/messages?after=${floor}&limit=200`]);
  assert.deepEqual(seen, ["90000:live", "6000:catchup", "7000:catchup", "8000:catchup"]);
  assert.deepEqual(caught, [0, 3]);
  assert.equal(client.log.cursor("7"), idAt(90_000));
  assert.equal(sockets.length, 1, "the socket stays open");
});

test("send retries failures with the same client_msg_id and honours Retry-After", async () => {
  const bodies = [];
  let n = 0;
  const stored = { chat_id: "7", message_id: "99", sender_id: "alice", client_msg_id: "", body: "hi", sent_at_ms: 1 };
  const fetch = async (url, init) => {
    bodies.push(JSON.parse(init.body));
    n++;
    if (n === 1) throw new TypeError("network down");
    if (n === 2) return jsonResponse(503, { type: "x", title: "t", status: 503, detail: "store unavailable" }, { "retry-after": "1" });
    return jsonResponse(201, { ...stored, client_msg_id: bodies[0].client_msg_id });
  };
  const sleeps = [];
  const { client } = newClient({
    fetch,
    setTimeout: (fn, ms) => {
      sleeps.push(ms);
      return setTimeout(fn, 0);
    },
    clearTimeout,
  });
  const events = [];
  client.on("message", (e) => events.push(e.source));
  const m = await client.send("7", "hi");
  assert.equal(n, 3);
  assert.ok(bodies[0].client_msg_id.length >= 16);
  assert.ok(bodies.every((b) => b.client_msg_id === bodies[0].client_msg_id && b.body === "hi"));
  assert.equal(m.message_id, "99");
  assert.ok(sleeps.includes(1_000), `Retry-After honoured: ${sleeps}`);
  assert.deepEqual(events, ["sent"]);

  // A 4xx is not retried.
  let calls = 0;
  const bad = newClient({ fetch: async () => (calls++, jsonResponse(422, { type: "v", title: "t", status: 422, detail: "body must be 1 to 4096 bytes" })) });
  await assert.rejects(bad.client.send("7", ""), (e) => e.name === "ApiError" && e.status === 422 && /4096/.test(e.message));
  assert.equal(calls, 1);
});

test("acks are coalesced per chat, and unread counts follow the chat list, frames and markRead", async () => {
  const posts = [];
  const fetch = async (url, init) => {
    const u = new URL(url);
    if (u.pathname === "/v1/chats") {
      return jsonResponse(200, { chats: [{ chat_id: "7", last_message_id: "40", read_up_to: "10", unread_count: 3, unread_capped: false }] });
    }
    if (init.method === "POST" && u.pathname === "/v1/chats/7/read") {
      posts.push(JSON.parse(init.body));
      return new Response(null, { status: 204 });
    }
    throw new Error(`unexpected ${init.method} ${url}`);
  };
  const { client, timers, sockets } = newClient({ fetch });
  const unread = [];
  client.on("unread", (u) => unread.push(`${u.chat_id}:${u.count}${u.capped ? "+" : ""}`));
  const receipts = [];
  client.on("read", (r) => receipts.push(`read:${r.user_id}:${r.message_id}`));
  client.on("delivered", (r) => receipts.push(`delivered:${r.user_id}:${r.message_id}`));
  const caughtUp = new Promise((r) => client.on("catchup", r));
  client.connect();
  await flush();
  sockets[0].hello();
  await caughtUp;
  assert.deepEqual(client.unreadCount("7"), { read_up_to: "10", count: 3, capped: false });

  const msg = (id, sender = "bob") => ({ chat_id: "7", message_id: id, sender_id: sender, client_msg_id: `m${id}`, body: "x", sent_at_ms: 1 });
  sockets[0].frame({ type: "message", message: msg("41") });
  sockets[0].frame({ type: "message", message: msg("43") });
  sockets[0].frame({ type: "message", message: msg("42", "alice") }); // own: neither counted nor acked
  sockets[0].frame({ type: "message", message: msg("43") }); // a repeat: counted once
  assert.equal(client.unreadCount("7").count, 5);
  assert.deepEqual(sockets[0].sent.filter((f) => f.type === "ack"), [], "acks wait for the coalescing delay");
  assert.equal(timers.fire((ms) => ms === 250), 250);
  assert.deepEqual(sockets[0].sent.filter((f) => f.type === "ack"), [{ type: "ack", chat_id: "7", message_id: "43" }], "one ack, the highest id");
  client.ack("7", "41"); // at or below what was acknowledged: nothing new
  assert.equal([...timers.pending.values()].filter((t) => t.ms === 250).length, 0);

  sockets[0].frame({ type: "delivered", chat_id: "7", user_id: "bob", message_id: "42" });
  // Read on another device of this user: the count follows.
  sockets[0].frame({ type: "read", chat_id: "7", user_id: "alice", message_id: "43" });
  assert.deepEqual(client.unreadCount("7"), { read_up_to: "43", count: 0, capped: false });
  assert.deepEqual(receipts, ["delivered:bob:42", "read:alice:43"]);

  sockets[0].frame({ type: "message", message: msg("44") });
  assert.equal(client.unreadCount("7").count, 1);
  await client.markRead("7", "44");
  assert.deepEqual(posts, [{ message_id: "44" }]);
  assert.deepEqual(client.unreadCount("7"), { read_up_to: "44", count: 0, capped: false });
  assert.deepEqual(unread, ["7:3", "7:4", "7:5", "7:0", "7:1", "7:0"]);
  client.close();
});

test("edits and deletes are emitted once, live or caught up through the chat's changes", async () => {
  const calls = [];
  const msg = (ms, extra = {}) => ({ chat_id: "7", message_id: idAt(ms), sender_id: "bob", client_msg_id: `m${ms}`, body: `b${ms}`, sent_at_ms: 1, ...extra });
  const edited = msg(5_000, { body: "fixed", edited_at: 9, change_id: idAt(9_000) });
  const tombstone = { chat_id: "7", message_id: idAt(4_000), sender_id: "bob", client_msg_id: "m4000", sent_at_ms: 1, deleted: true, change_id: idAt(20_000) };
  const floor = idAt(5_000 - CATCHUP_OVERLAP_MS);
  let sockets;
  const fetch = async (url) => {
    const u = new URL(url);
    calls.push(u.pathname + u.search);
    if (u.pathname === "/v1/chats") return jsonResponse(200, { chats: [{ chat_id: "7", last_message_id: idAt(5_000), last_change_id: idAt(20_000) }] });
    if (u.pathname === "/v1/chats/7/changes") {
      assert.equal(u.searchParams.get("after"), floor, "no change seen: from the lowest id held minus the overlap");
      // The edit also arrives live while the page is in flight: one `update` only.
      sockets.at(-1).frame({ type: "message_updated", message: edited });
      return jsonResponse(200, { messages: [edited, tombstone], has_more: false, next_after: null });
    }
    if (u.pathname === "/v1/chats/7/messages") return jsonResponse(200, { messages: [msg(5_000)], has_more: false });
    throw new Error(`unexpected ${url}`);
  };
  const t = newClient({ fetch });
  sockets = t.sockets;
  const { client } = t;
  client.log.accept(msg(5_000));
  const seen = [];
  client.on("update", ({ message, source }) => seen.push(`update:${message.body}:${source}`));
  client.on("delete", ({ message_id, source }) => seen.push(`delete:${Number(BigInt(message_id) >> 22n) - T0}:${source}`));
  client.on("chat_removed", ({ chat_id }) => seen.push(`removed:${chat_id}`));
  let caught;
  const done = new Promise((r) => client.on("catchup", (e) => r((caught = e))));
  client.connect();
  await flush();
  sockets[0].hello();
  await done;
  assert.deepEqual(seen, ["update:fixed:live", "delete:4000:catchup"]);
  assert.equal(caught.changes, 1, "the live copy was reported first");
  assert.equal(client.log.changeFloor("7"), overlapFloor(idAt(20_000)));
  // A repeated delete frame is not reported again; a new one is.
  sockets[0].frame({ type: "message_deleted", chat_id: "7", message_id: idAt(4_000), change_id: idAt(20_000) });
  sockets[0].frame({ type: "message_deleted", chat_id: "7", message_id: idAt(5_000), change_id: idAt(21_000) });
  sockets[0].frame({ type: "chat_removed", chat_id: "7" });
  assert.deepEqual(seen.slice(2), ["delete:5000:live", "removed:7"]);
  assert.equal(client.log.cursor("7"), undefined, "a removed chat is forgotten");
  assert.ok(calls.includes(`/v1/chats/7/changes?after=${floor}&limit=200`), calls.join(" "));
});

test("presence frames read the same in the current and the reserved version-1 form", () => {
  assert.deepEqual(
    presenceOf({ type: "presence", user_id: "bob", status: "offline", last_seen: 7, online: false, last_seen_ms: 7 }),
    { user_id: "bob", status: "offline", online: false, last_seen: 7, last_seen_ms: 7 },
  );
  assert.deepEqual(
    presenceOf({ type: "presence", user_id: "bob", status: "online", last_seen: 9, online: true, last_seen_ms: null }),
    { user_id: "bob", status: "online", online: true, last_seen: 9, last_seen_ms: null },
  );
  // A frame with only the version-1 fields.
  assert.deepEqual(presenceOf({ type: "presence", user_id: "bob", online: false, last_seen_ms: 5 }), {
    user_id: "bob",
    status: "offline",
    online: false,
    last_seen: 5,
    last_seen_ms: 5,
  });
});
