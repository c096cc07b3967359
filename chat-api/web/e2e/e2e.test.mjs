// End-to-end test of the demo page and the browser client in headless Chromium (the system
// browser, driven by playwright-core): a real `chat-api embedded` on free ports with a temp
// DATA_DIR; two users in two browser contexts chat; every message is shown once; the server is
// killed and restarted mid-conversation (same DATA_DIR) and the pages reconnect and catch up with
// nothing lost and nothing doubled. Writes screenshots and the server log to $WEB_E2E_OUT.
//
// Environment: CHAT_API_BIN (the chat-api binary), CHROMIUM (default /usr/bin/chromium),
// WEB_E2E_OUT (default ./web-e2e-out).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, openSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { chromium } from "playwright-core";

const BIN = process.env.CHAT_API_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = resolve(process.env.WEB_E2E_OUT || "web-e2e-out");
const WAIT_MS = 20_000;

assert.ok(BIN, "set CHAT_API_BIN to the chat-api binary");
mkdirSync(OUT, { recursive: true });

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value, at most `ms`. */
async function until(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
}

class Server {
  constructor() {
    this.dataDir = mkdtempSync(join(tmpdir(), "chat-web-e2e-"));
    this.starts = 0;
    this.proc = null;
  }
  async init() {
    this.apiPort = await freePort();
    this.gatewayPort = await freePort();
    this.url = `http://127.0.0.1:${this.apiPort}`;
    // A page on another origin uses the library (README, "Browser client").
    this.otherOrigin = await otherOriginSite(this);
  }
  async start() {
    this.starts++;
    const log = openSync(join(OUT, `server-${this.starts}.log`), "w");
    const env = {
      ...process.env,
      API_ADDR: `127.0.0.1:${this.apiPort}`,
      GATEWAY_ADDR: `127.0.0.1:${this.gatewayPort}`,
      DATA_DIR: this.dataDir,
      RUST_LOG: process.env.RUST_LOG || "info",
      CORS_ALLOWED_ORIGINS: this.otherOrigin.url,
      PRESENCE_GRACE: "1s",
    };
    // The demo's development tokens need the development key: no configured key.
    for (const k of ["JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_ISSUER", "JWT_AUDIENCE", "STORE_URL"]) delete env[k];
    this.proc = spawn(BIN, ["embedded"], {
      env,
      stdio: ["ignore", log, log],
    });
    const proc = this.proc;
    await until("the server's /healthz", async () => {
      if (proc.exitCode !== null) throw new Error(`chat-api exited with ${proc.exitCode}; see ${OUT}/server-${this.starts}.log`);
      const res = await fetch(`${this.url}/healthz`);
      return res.ok;
    }, 30_000);
  }
  /** SIGKILL: no drain, no goodbye to the sockets. */
  async kill() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
  }
  async stop() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Serves one page on its own origin that imports the client library from the API and chats. */
async function otherOriginSite(server) {
  const port = await freePort();
  const page = `<!doctype html><meta charset="utf-8"><title>another site</title><pre id="out"></pre>
<script type="module">
  import { ChatClient } from "${server.url}/client.js";
  const out = (line) => (document.getElementById("out").textContent += line + "\\n");
  const token = decodeURIComponent(location.hash.slice(1));
  const chat = new ChatClient({ apiUrl: "${server.url}", gatewayUrl: "ws://127.0.0.1:${server.gatewayPort}/ws", token });
  chat.on("state", ({ state }) => out("state " + state));
  chat.on("message", ({ message, source }) => out("message " + source + " " + message.body));
  chat.on("hello", async () => {
    const c = await chat.createChat({ members: ["alice"], title: "from another site" });
    await chat.send(c.chat_id, "hello from another origin");
    out("sent");
  });
  chat.connect();
</script>`;
  const http = await import("node:http");
  const site = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page);
  });
  await new Promise((r) => site.listen(port, "127.0.0.1", r));
  after(() => site.close());
  return { url: `http://127.0.0.1:${port}` };
}

const server = new Server();
let browser;

after(async () => {
  await browser?.close().catch(() => {});
  await server.stop();
});

/** Texts of the message bodies shown in the open chat, in order. */
const bodies = (page) => page.$$eval("#list .msg .body", (els) => els.map((e) => e.textContent));

async function expectShownOnce(page, expected, who) {
  // A message being sent is shown (pending, without an id) before its 201 arrives: wait for
  // every one to be acknowledged too.
  await until(`${who} to show ${expected.length} messages, none pending`, async () => {
    const shown = await bodies(page);
    const ids = await page.$$eval("#list .msg", (els) => els.map((e) => e.dataset.id));
    return expected.every((b) => shown.includes(b)) && ids.every(Boolean);
  });
  const shown = await bodies(page);
  for (const b of expected) {
    assert.equal(shown.filter((s) => s === b).length, 1, `${who} shows ${JSON.stringify(b)} once: ${JSON.stringify(shown)}`);
  }
  const ids = await page.$$eval("#list .msg", (els) => els.map((e) => e.dataset.id));
  assert.equal(new Set(ids).size, ids.length, `${who}: no message id twice`);
  assert.ok(ids.every(Boolean), `${who}: nothing left pending`);
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.click("#send-btn");
}

const connState = (page) => page.$eval("#conn-state", (e) => e.dataset.state);

test("two users chat in the demo page, across a server restart", { timeout: 240_000 }, async () => {
  await server.init();
  await server.start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60_000,
  });
  const viewport = { width: 1100, height: 680 };
  const aliceCtx = await browser.newContext({ viewport });
  const bobCtx = await browser.newContext({ viewport });
  const alice = await aliceCtx.newPage();
  const bob = await bobCtx.newPage();
  const pageErrors = [];
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    p.on("pageerror", (e) => pageErrors.push(`${name}: ${e.message}`));
    p.setDefaultTimeout(WAIT_MS);
    // Records what each socket negotiated (`WebSocket.extensions`), for the compression check.
    await p.addInitScript(() => {
      const Native = window.WebSocket;
      window.wsExtensions = [];
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          this.addEventListener("open", () => window.wsExtensions.push(this.extensions));
        }
      };
    });
  }

  // Bob speaks MessagePack, Alice JSON: both encodings in one conversation.
  await bob.goto(`${server.url}/?user=bob&encoding=msgpack`);
  await alice.goto(`${server.url}/?user=alice`);
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    await until(`${name} connected`, async () => (await connState(p)) === "open");
  }

  // Chromium offers permessage-deflate and the gateway takes it (docs/PROTOCOL.md, "Compression").
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    assert.deepEqual(
      await p.evaluate(() => window.wsExtensions),
      ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
      `${name}'s socket negotiated compression`,
    );
  }

  // Alice creates a chat with Bob from the page.
  await alice.fill("#new-members", "bob");
  await alice.fill("#new-title", "lunch");
  await alice.click("#create-btn");
  await alice.waitForSelector("#chat:not([hidden])");
  await send(alice, "hi bob, lunch at 12:30?");

  // Bob learns of the chat from the live message and opens it.
  await bob.waitForSelector("#chats li:has-text('lunch')");
  await bob.click("#chats li:has-text('lunch')");
  await expectShownOnce(bob, ["hi bob, lunch at 12:30?"], "bob");

  // Typing and presence: the page shows them when the server sends them.
  await bob.type("#text", "sure", { delay: 20 });
  await bob.fill("#text", "");
  await until("alice to see bob online", () => alice.$(".who-presence.online[data-user='bob']"));
  // Presence is pushed, not polled: Bob's page goes away (its socket closes) and Alice sees him
  // offline after the grace period (PRESENCE_GRACE=1s here); he comes back and she sees him
  // online, both from `presence` frames (her page reads presence over HTTP only when it opens a
  // chat or (re)connects).
  const bobUrl = bob.url();
  await bob.goto("about:blank");
  await until("alice to see bob offline (pushed)", () => alice.$(".who-presence.offline[data-user='bob']"));
  await bob.goto(bobUrl);
  await until("bob connected again", async () => (await connState(bob)) === "open");
  await until("alice to see bob online again (pushed)", () => alice.$(".who-presence.online[data-user='bob']"));

  // Receipts: bob opened the chat, so his page marked it read and alice's message turns to ✓✓ read.
  await until("alice to see her message read", () => alice.$("#list .msg.mine[data-tick='read']"));
  // Unread badge: a message in another chat shows a count on bob's list until he opens it.
  await alice.fill("#new-members", "bob");
  await alice.fill("#new-title", "dinner");
  await alice.click("#create-btn");
  await until("alice to open dinner", async () => (await alice.$eval("#chat-title", (e) => e.textContent)) === "dinner");
  await send(alice, "dinner at 8?");
  await send(alice, "or 9?");
  await until("bob to see 2 unread in dinner", async () => {
    const badge = await bob.$("#chats li:has-text('dinner') .badge");
    return badge && (await badge.textContent()) === "2";
  });
  await until("alice's dinner messages delivered to bob", () => alice.$("#list .msg.mine[data-tick='delivered'], #list .msg.mine[data-tick='read']"));
  await bob.click("#chats li:has-text('dinner')");
  await expectShownOnce(bob, ["dinner at 8?", "or 9?"], "bob");
  await until("bob's dinner badge to clear", async () => !(await bob.$("#chats li:has-text('dinner') .badge")));
  await until("alice to see both dinner messages read", async () => {
    const ticks = await alice.$$eval("#list .msg.mine", (els) => els.map((e) => e.dataset.tick));
    return ticks.length === 2 && ticks.every((t) => t === "read");
  });
  // Back to lunch for the rest of the conversation.
  await alice.click("#chats li:has-text('lunch')");
  await bob.click("#chats li:has-text('lunch')");
  await until("both back in lunch", async () =>
    (await alice.$eval("#chat-title", (e) => e.textContent)) === "lunch" && (await bob.$eval("#chat-title", (e) => e.textContent)) === "lunch");

  const before = [];
  for (let i = 1; i <= 3; i++) {
    const a = `alice ${i}`;
    const b = `bob ${i}`;
    await send(alice, a);
    await send(bob, b);
    before.push(a, b);
  }
  const all = ["hi bob, lunch at 12:30?", ...before];
  await expectShownOnce(alice, all, "alice");
  await expectShownOnce(bob, all, "bob");

  // The conversation so far reached the browsers compressed, and they read it.
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  const compressed = Number(/^gateway_deflate_frames_total (\d+)/m.exec(metrics)?.[1] ?? 0);
  assert.ok(compressed > 0, `compressed frames sent: ${compressed}`);

  // ---- the server dies mid-conversation --------------------------------------------------
  await server.kill();
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    await until(`${name} to notice the outage`, async () => ["reconnecting", "connecting"].includes(await connState(p)));
  }
  // Bob's browser goes offline too, so that what follows can only reach him by catch-up.
  await bobCtx.setOffline(true);
  // Alice sends while the server is down: the page keeps it pending and retries it.
  await send(alice, "sent during the outage");
  await sleep(500);
  await server.start();
  await until("alice reconnected", async () => (await connState(alice)) === "open", 45_000);
  await send(alice, "after the restart 1");
  await send(alice, "after the restart 2");
  const missed = ["sent during the outage", "after the restart 1", "after the restart 2"];
  await expectShownOnce(alice, [...all, ...missed], "alice");
  assert.notEqual(await connState(bob), "open", "bob is still offline");
  const bobBefore = await bob.evaluate(() => ({ ...window.chatDemo.stats }));

  await bobCtx.setOffline(false);
  await until("bob reconnected", async () => (await connState(bob)) === "open", 45_000);
  await expectShownOnce(bob, [...all, ...missed], "bob");
  const bobAfter = await bob.evaluate(() => ({ ...window.chatDemo.stats }));
  assert.ok(bobAfter.catchup - bobBefore.catchup >= missed.length, `bob caught up ${JSON.stringify({ bobBefore, bobAfter })}`);

  // Live again in both directions, and nothing doubled anywhere.
  await send(bob, "back online");
  await send(alice, "welcome back");
  const final = [...all, ...missed, "back online", "welcome back"];
  await expectShownOnce(alice, final, "alice");
  await expectShownOnce(bob, final, "bob");
  assert.equal((await bodies(alice)).length, final.length, "alice shows exactly the messages sent");
  assert.equal((await bodies(bob)).length, final.length, "bob shows exactly the messages sent");
  // The store agrees: each message stored once (the retried send included).
  const token = await (await fetch(`${server.url}/dev/token`, { method: "POST", headers: { "content-type": "application/json" }, body: '{"user":"alice"}' })).json();
  const chatId = await alice.evaluate(() => window.chatDemo.current);
  const page = await (await fetch(`${server.url}/v1/chats/${chatId}/messages?limit=200`, { headers: { authorization: `Bearer ${token.token}` } })).json();
  assert.deepEqual(page.messages.map((m) => m.body).sort(), [...final].sort());

  // History scrolling: a fresh page with 4-message pages loads older pages as it scrolls up.
  const reader = await bobCtx.newPage();
  reader.on("pageerror", (e) => pageErrors.push(`reader: ${e.message}`));
  await reader.goto(`${server.url}/?user=bob&page=4&chat=${chatId}`);
  await until("the latest page", async () => (await bodies(reader)).length >= 4);
  assert.equal((await bodies(reader)).length, 4, "one page until the reader scrolls");
  await until("all history after scrolling up", async () => {
    await reader.$eval("#messages", (e) => (e.scrollTop = 0));
    await reader.$eval("#messages", (e) => e.dispatchEvent(new Event("scroll")));
    return (await bodies(reader)).length === final.length;
  });
  assert.deepEqual(await bodies(reader), page.messages.map((m) => m.body), "history in id order, each once");
  await reader.close();

  // A page on another origin imports the library from the API (CORS) and writes to Alice.
  const carolToken = (await (await fetch(`${server.url}/dev/token`, { method: "POST", headers: { "content-type": "application/json" }, body: '{"user":"carol"}' })).json()).token;
  const carol = await (await browser.newContext()).newPage();
  carol.on("pageerror", (e) => pageErrors.push(`carol: ${e.message}`));
  await carol.goto(`${server.otherOrigin.url}/#${encodeURIComponent(carolToken)}`);
  await until("the other site to send", async () => (await carol.textContent("#out")).includes("sent"));
  // Its own message comes back once: from the HTTP answer or the live frame, whichever is first.
  const carolLines = (await carol.textContent("#out")).split("\n");
  assert.equal(carolLines.filter((l) => /^message (sent|live) hello from another origin$/.test(l)).length, 1, carolLines.join(" | "));
  await alice.waitForSelector("#chats li:has-text('from another site')");

  await alice.fill("#text", "see you there");
  await alice.screenshot({ path: join(OUT, "demo.png") });
  await bob.screenshot({ path: join(OUT, "demo-bob.png") });
  assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
  console.log(`screenshots and server logs in ${OUT}`);
});
