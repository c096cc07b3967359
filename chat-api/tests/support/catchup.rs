//! A client that holds what it received (over its socket and by catch-up over HTTP) and catches
//! up the way docs/PROTOCOL.md tells clients to: from the highest id held minus the overlap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use shared::protocol::{catch_up_after, Encoding, Message, ServerFrame};
use shared::Id;

use super::*;

/// A client that follows the catch-up algorithm of `docs/PROTOCOL.md`: it keeps every message
/// it holds per chat (by id, so repeats between frames and history collapse), and after each
/// (re)connect pages `GET .../messages?after=<highest held − CATCHUP_OVERLAP>` for every chat
/// whose `last_message_id` is above that.
pub struct CatchUpClient {
    pub user: String,
    pub token: String,
    pub encoding: Encoding,
    pub socket: Option<WsClient>,
    /// chat → message id → message.
    pub held: HashMap<Id, BTreeMap<Id, Message>>,
    /// Message ids each connection has received as frames, to catch a socket that gets the
    /// same message twice (a delivery bug, unlike a frame repeating history).
    per_socket: HashSet<Id>,
    pub socket_repeats: Vec<Id>,
    pub connections: usize,
    pub fetched_from_history: usize,
    /// The server sent `resync`: the client owes a catch-up.
    pub resync_requested: bool,
    pub resyncs: usize,
    /// Why each socket closed, in order.
    pub closes: Vec<String>,
    /// chat → the highest change id held (from frames and change pages).
    pub changes_held: HashMap<Id, Id>,
    /// Changed messages fetched by catch-ups of changes.
    pub fetched_changes: usize,
    /// `message_updated` and `message_deleted` frames received.
    pub updates_received: usize,
    pub deletes_received: usize,
    /// Chats whose `chat_removed` frame arrived, and frames of them that came after it.
    pub removed_chats: HashSet<Id>,
    pub frames_after_removal: Vec<String>,
}

impl CatchUpClient {
    pub fn new(user: &str, token: String, encoding: Encoding) -> CatchUpClient {
        CatchUpClient {
            user: user.to_string(),
            token,
            encoding,
            socket: None,
            held: HashMap::new(),
            per_socket: HashSet::new(),
            socket_repeats: Vec::new(),
            connections: 0,
            fetched_from_history: 0,
            resync_requested: false,
            resyncs: 0,
            closes: Vec::new(),
            changes_held: HashMap::new(),
            fetched_changes: 0,
            updates_received: 0,
            deletes_received: 0,
            removed_chats: HashSet::new(),
            frames_after_removal: Vec::new(),
        }
    }

    /// Connects to `ws_url`, then catches up through the API at `api`.
    pub async fn connect(&mut self, http: &Http, ws_url: &str, api: &str) {
        if let Err(e) = self.try_connect(http, ws_url, api).await {
            panic!("{} connecting to {ws_url}: {e}", self.user);
        }
    }

    /// Like [`CatchUpClient::connect`], but a refused connection is an `Err` to retry.
    pub async fn try_connect(
        &mut self,
        http: &Http,
        ws_url: &str,
        api: &str,
    ) -> anyhow::Result<()> {
        let socket = WsClient::connect(ws_url, &self.token, self.encoding).await?;
        self.attach(http, socket, api).await;
        Ok(())
    }

    /// Takes `socket` (already past `hello`) as this client's connection and catches up if it
    /// is a reconnect.
    pub async fn attach(&mut self, http: &Http, socket: WsClient, api: &str) {
        self.socket = Some(socket);
        self.per_socket.clear();
        self.connections += 1;
        if self.connections > 1 {
            self.catch_up(http, api).await;
        }
    }

    fn highest(&self, chat: Id) -> Option<Id> {
        self.held
            .get(&chat)
            .and_then(|m| m.keys().next_back().copied())
    }

    /// Keeps `message` unless the state held is newer (a delete is final; otherwise the later
    /// change wins), so that frames and pages arriving in any order end in the current state.
    fn hold(&mut self, message: Message) {
        if let Some(change) = message.change_id {
            let c = self.changes_held.entry(message.chat_id).or_insert(change);
            *c = (*c).max(change);
        }
        let chat = self.held.entry(message.chat_id).or_default();
        match chat.get(&message.message_id) {
            Some(held) if !message.supersedes(held) => {}
            _ => {
                chat.insert(message.message_id, message);
            }
        }
    }

    /// A `message_deleted` frame: the held message becomes a tombstone.
    fn hold_deleted(&mut self, chat_id: Id, message_id: Id, change_id: Id) {
        let c = self.changes_held.entry(chat_id).or_insert(change_id);
        *c = (*c).max(change_id);
        if let Some(m) = self
            .held
            .get_mut(&chat_id)
            .and_then(|c| c.get_mut(&message_id))
        {
            m.body.clear();
            m.deleted = true;
            m.edited_at = None;
            m.change_id = m.change_id.max(Some(change_id));
        }
    }

    /// The `after` of a catch-up of changes: the highest change id held minus the overlap, or
    /// (no change seen yet) the lowest message id held minus it, since a change to a message
    /// has a later id than the message. `None` when nothing is held: the message catch-up then
    /// reads the whole chat in its current state.
    fn changes_after(&self, chat: Id) -> Option<Id> {
        match self.changes_held.get(&chat) {
            Some(c) => Some(catch_up_after(*c)),
            None => self
                .held
                .get(&chat)
                .and_then(|m| m.keys().next().copied())
                .map(catch_up_after),
        }
    }

    pub async fn catch_up(&mut self, http: &Http, api: &str) {
        self.resync_requested = false;
        let chats = http.get(api, &self.token, "/v1/chats").await;
        assert_eq!(
            chats.status, 200,
            "{}: GET /v1/chats: {}",
            self.user, chats.body
        );
        let list = chats.body["chats"].as_array().cloned().unwrap_or_default();
        for chat in list {
            let chat_id: Id = chat["chat_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("chat_id in {chat}"));
            // Changes first, from the cursors as they were before this catch-up.
            let last_change = chat["last_change_id"]
                .as_str()
                .and_then(|s| s.parse::<Id>().ok());
            if let (Some(last_change), Some(after)) = (last_change, self.changes_after(chat_id)) {
                if last_change > after {
                    self.catch_up_changes(http, api, chat_id, after).await;
                }
            }
            let Some(last) = chat["last_message_id"]
                .as_str()
                .and_then(|s| s.parse::<Id>().ok())
            else {
                continue;
            };
            // From the highest id held minus the overlap (a message may land below ids already
            // held, by up to that much), or the whole chat when nothing is held.
            let mut after = self.highest(chat_id).map(catch_up_after).unwrap_or(Id(0));
            if last <= after {
                continue;
            }
            for _page in 0..10_000 {
                let path = format!("/v1/chats/{chat_id}/messages?after={after}&limit=200");
                let page = http.get(api, &self.token, &path).await;
                assert_eq!(page.status, 200, "{}: GET {path}: {}", self.user, page.body);
                let messages: Vec<Message> = serde_json::from_value(page.body["messages"].clone())
                    .unwrap_or_else(|e| panic!("messages in {}: {e}", page.body));
                let Some(newest) = messages.last().map(|m| m.message_id) else {
                    break;
                };
                self.fetched_from_history += messages.len();
                messages.into_iter().for_each(|m| self.hold(m));
                if page.body["has_more"] != Value::Bool(true) {
                    break;
                }
                after = newest;
            }
        }
    }

    /// Pages `GET /v1/chats/{chat_id}/changes?after=` to the end, holding each changed message.
    async fn catch_up_changes(&mut self, http: &Http, api: &str, chat_id: Id, mut after: Id) {
        for _page in 0..10_000 {
            let path = format!("/v1/chats/{chat_id}/changes?after={after}&limit=200");
            let page = http.get(api, &self.token, &path).await;
            assert_eq!(page.status, 200, "{}: GET {path}: {}", self.user, page.body);
            let messages: Vec<Message> = serde_json::from_value(page.body["messages"].clone())
                .unwrap_or_else(|e| panic!("messages in {}: {e}", page.body));
            self.fetched_changes += messages.len();
            messages.into_iter().for_each(|m| self.hold(m));
            if page.body["has_more"] != Value::Bool(true) {
                break;
            }
            after = page.body["next_after"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("next_after in {}", page.body));
        }
    }

    /// Reads frames until `deadline`, or until it holds every id in `want` (when given).
    /// Returns `Some(reason)` if the socket closed.
    pub async fn pump(&mut self, deadline: Instant, want: Option<&HashSet<Id>>) -> Option<String> {
        loop {
            if let Some(want) = want {
                if want.iter().all(|id| self.holds(*id)) {
                    return None;
                }
            }
            let socket = self.socket.as_mut()?;
            match socket.recv(deadline).await {
                Recv::Frame(ServerFrame::Message { message }) => {
                    self.note_after_removal(message.chat_id, "message");
                    if !self.per_socket.insert(message.message_id) {
                        self.socket_repeats.push(message.message_id);
                    }
                    self.hold(message);
                }
                Recv::Frame(ServerFrame::Resync) => {
                    self.resync_requested = true;
                    self.resyncs += 1;
                    return None;
                }
                Recv::Frame(ServerFrame::MessageUpdated { message }) => {
                    self.note_after_removal(message.chat_id, "message_updated");
                    self.updates_received += 1;
                    self.hold(message);
                }
                Recv::Frame(ServerFrame::MessageDeleted {
                    chat_id,
                    message_id,
                    change_id,
                }) => {
                    self.note_after_removal(chat_id, "message_deleted");
                    self.deletes_received += 1;
                    self.hold_deleted(chat_id, message_id, change_id);
                }
                Recv::Frame(ServerFrame::ChatRemoved { chat_id }) => {
                    self.removed_chats.insert(chat_id);
                }
                Recv::Frame(_) => {}
                Recv::Timeout => return None,
                Recv::Closed(why) => {
                    self.socket = None;
                    self.closes.push(why.clone());
                    return Some(why);
                }
            }
        }
    }

    fn note_after_removal(&mut self, chat_id: Id, what: &str) {
        if self.removed_chats.contains(&chat_id) {
            self.frames_after_removal
                .push(format!("{what} in {chat_id}"));
        }
    }

    /// The held state of one message.
    pub fn message(&self, chat: Id, id: Id) -> Option<&Message> {
        self.held.get(&chat).and_then(|m| m.get(&id))
    }

    pub fn holds(&self, id: Id) -> bool {
        self.held.values().any(|m| m.contains_key(&id))
    }

    /// Everything held in one chat, in id order.
    pub fn chat(&self, chat: Id) -> Vec<Message> {
        self.held
            .get(&chat)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
