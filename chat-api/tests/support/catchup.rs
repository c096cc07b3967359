//! A client that holds what it received (over its socket and by catch-up over HTTP) and catches
//! up the way docs/PROTOCOL.md tells clients to: from the highest id held minus the overlap,
//! with the reference client of `chat-client` (the one the load generator runs too).

use std::collections::HashSet;

use chat_client::{Api, Cursors, Held, Holder, Source};
use tokio::time::Instant;

use shared::protocol::{Encoding, Message, ServerFrame};
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
    /// Messages held, by chat and id, in their newest state.
    pub held: Held,
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
            held: Held::default(),
            per_socket: HashSet::new(),
            socket_repeats: Vec::new(),
            connections: 0,
            fetched_from_history: 0,
            resync_requested: false,
            resyncs: 0,
            closes: Vec::new(),
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

    /// Catches up every chat with the reference client; a failed request fails the test.
    pub async fn catch_up(&mut self, http: &Http, api: &str) {
        self.resync_requested = false;
        let client = Api::new(http.client.clone(), api, &self.token);
        if let Err(e) = chat_client::catch_up(&client, None, self).await {
            panic!("{}: catch-up: {e}", self.user);
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
                    self.held.hold(message);
                }
                Recv::Frame(ServerFrame::Resync) => {
                    self.resync_requested = true;
                    self.resyncs += 1;
                    return None;
                }
                Recv::Frame(ServerFrame::MessageUpdated { message }) => {
                    self.note_after_removal(message.chat_id, "message_updated");
                    self.updates_received += 1;
                    self.held.hold(message);
                }
                Recv::Frame(ServerFrame::MessageDeleted {
                    chat_id,
                    message_id,
                    change_id,
                }) => {
                    self.note_after_removal(chat_id, "message_deleted");
                    self.deletes_received += 1;
                    self.held.hold_deleted(chat_id, message_id, change_id);
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
        self.held.message(chat, id)
    }

    pub fn holds(&self, id: Id) -> bool {
        self.held.holds(id)
    }

    /// Everything held in one chat, in id order.
    pub fn chat(&self, chat: Id) -> Vec<Message> {
        self.held.chat(chat)
    }
}

impl Holder for CatchUpClient {
    fn cursors(&self, chat: Id) -> Cursors {
        self.held.cursors(chat)
    }

    fn take(&mut self, source: Source, messages: Vec<Message>) {
        match source {
            Source::History => self.fetched_from_history += messages.len(),
            Source::Changes => self.fetched_changes += messages.len(),
        }
        for m in messages {
            self.held.hold(m);
        }
    }
}
