// Compile-time check of client.d.ts (tsc --noEmit): the documented usage type-checks, misuse does not.
import { ChatClient, ApiError, closeAdvice, MessageLog, overlapFloor, CATCHUP_OVERLAP_MS, type Message, type ConnectionState } from "../client.js";
import { encode, decode } from "../msgpack.js";

const chat = new ChatClient({ gatewayUrl: "ws://127.0.0.1:8080/ws", token: async () => "t", encoding: "msgpack" });
chat.on("message", ({ message, source }) => {
  const id: string = message.message_id;
  const s: "live" | "catchup" | "sent" = source;
  void id, s;
});
chat.on("state", ({ state }) => {
  const st: ConnectionState = state;
  void st;
});
chat.on("close", ({ code, willReconnect }) => void (code + (willReconnect ? 1 : 0)));
// @ts-expect-error: no such event
chat.on("nope", () => {});
// @ts-expect-error: the token is required
new ChatClient({ gatewayUrl: "ws://x/ws" });
const sent: Promise<Message> = chat.send("1", "hi", { clientMsgId: "m-1" });
sent.catch((e: unknown) => e instanceof ApiError && e.status === 422);
const advice: string = closeAdvice(4201);
const bytes: Uint8Array = encode({ type: "ping" });
void advice, decode(bytes), chat.history("1", { before: "9", limit: 50 }).then((p) => p.has_more);
const floor: string = overlapFloor("4194304000", CATCHUP_OVERLAP_MS);
const release: () => void = new MessageLog().hold("1", floor);
release();
// Read state and receipts.
chat.on("read", ({ chat_id, user_id, message_id }) => void (chat_id + user_id + message_id));
chat.on("delivered", ({ message_id }) => void message_id);
chat.on("unread", ({ chat_id, count, capped }) => void (chat_id + String(count) + String(capped)));
const marked: Promise<void> = chat.markRead("1", "2");
void marked;
chat.ack("1", "2");
const u = chat.unreadCount("1");
if (u) void (u.count + (u.capped ? 1 : 0));
void chat.chats().then(({ chats }) => chats.map((c) => c.unread_count + (c.read_up_to ?? "")));
void chat.receipts("1").then((r) => r.receipts.map((x) => x.delivered_up_to));
// @ts-expect-error: markRead needs a message id
chat.markRead("1");
