//! The typed reference client of catch-up (`docs/PROTOCOL.md`, "Catch-up"): what a client holds
//! per chat ([`Held`]: messages by id, so repeats between frames and history collapse, and the
//! change cursor), the cursors it catches up from (the highest id held minus
//! [`CATCHUP_OVERLAP`](chat_protocol::protocol::CATCHUP_OVERLAP)), and the paging of
//! `GET /v1/chats`, `…/changes?after=` and `…/messages?after=` with `next_after` ([`catch_up`]).
//! The chat-api tests and `loadtest catchup` both run it, so the algorithm they check is one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chat_protocol::ids::Id;
use chat_protocol::protocol::{catch_up_after, Message};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Page size asked of history and changes (the API caps it at its configured maximum).
pub const PAGE_LIMIT: usize = 200;
/// Pages read per chat and kind in one catch-up: a bound, never reached by a client that
/// catches up regularly.
pub const PAGES_MAX: usize = 10_000;

/// One chat of `GET /v1/chats`, the fields catch-up reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatSummary {
    pub chat_id: Id,
    #[serde(default)]
    pub last_message_id: Option<Id>,
    #[serde(default)]
    pub last_change_id: Option<Id>,
}

/// A page of `GET /v1/chats`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatList {
    pub chats: Vec<ChatSummary>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub next_after: Option<Id>,
}

/// A page of `GET /v1/chats/{chat_id}/messages` or `…/changes`.
#[derive(Clone, Debug, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
    #[serde(default)]
    pub next_after: Option<Id>,
    #[serde(default)]
    pub next_before: Option<Id>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("GET {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url}: the answer is not the expected JSON: {source}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: `has_more` without `next_after`")]
    NoCursor { url: String },
}

/// chat-api at `base`, called with one user's token.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    retries: u32,
    pause: Duration,
}

impl Api {
    /// No retries: the first failure is the answer (tests want to see it).
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> Api {
        Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            retries: 0,
            pause: Duration::ZERO,
        }
    }

    /// Retries a failed request up to `retries` times, pausing `pause` times the attempt
    /// number before each (a client riding out a restart).
    pub fn with_retries(mut self, retries: u32, pause: Duration) -> Api {
        self.retries = retries;
        self.pause = pause;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CatchUpError> {
        let mut attempt = 0;
        loop {
            match self.get_once(path).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt >= self.retries => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(self.pause * attempt).await;
                }
            }
        }
    }

    async fn get_once<T: DeserializeOwned>(&self, path: &str) -> Result<T, CatchUpError> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| CatchUpError::Transport {
                url: url.clone(),
                source,
            })?;
        let status = answer.status().as_u16();
        if status != 200 {
            let body = answer.text().await.unwrap_or_default();
            return Err(CatchUpError::Status { url, status, body });
        }
        answer
            .json()
            .await
            .map_err(|source| CatchUpError::Body { url, source })
    }

    /// Every chat of the caller, all pages of `GET /v1/chats`.
    pub async fn chats(&self) -> Result<Vec<ChatSummary>, CatchUpError> {
        let mut chats = Vec::new();
        let mut path = "/v1/chats".to_string();
        for _ in 0..PAGES_MAX {
            let page: ChatList = self.get(&path).await?;
            chats.extend(page.chats);
            if !page.has_more {
                break;
            }
            let Some(next) = page.next_after else {
                return Err(CatchUpError::NoCursor { url: path });
            };
            path = format!("/v1/chats?after={next}");
        }
        Ok(chats)
    }

    /// One page of a chat's messages with ids above `after`, oldest first.
    pub async fn messages_after(&self, chat: Id, after: Id) -> Result<MessagePage, CatchUpError> {
        self.get(&format!(
            "/v1/chats/{chat}/messages?after={after}&limit={PAGE_LIMIT}"
        ))
        .await
    }

    /// One page of a chat's changed messages with change ids above `after`, in change order.
    pub async fn changes_after(&self, chat: Id, after: Id) -> Result<MessagePage, CatchUpError> {
        self.get(&format!(
            "/v1/chats/{chat}/changes?after={after}&limit={PAGE_LIMIT}"
        ))
        .await
    }
}

/// Where a catch-up starts in one chat, taken before anything of it is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursors {
    /// Fetch messages above this (the highest id held minus the overlap; 0: nothing held).
    pub messages_after: Id,
    /// Fetch changes above this; `None` (nothing held): the message pages bring the current
    /// state of everything.
    pub changes_after: Option<Id>,
}

/// Where the messages of a catch-up came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    History,
    Changes,
}

/// What a catch-up reads from and writes to: the client's held state.
pub trait Holder {
    /// The cursors of `chat` as held now.
    fn cursors(&self, chat: Id) -> Cursors;
    /// Takes one fetched page.
    fn take(&mut self, source: Source, messages: Vec<Message>);
}

/// One catch-up: for every chat of the caller (or only `only`), takes the cursors first, then
/// pages the changes when the chat's `last_change_id` is above the change cursor, and the
/// messages when its `last_message_id` is above the message cursor, each with `next_after`
/// until `has_more` is false.
pub async fn catch_up(
    api: &Api,
    only: Option<Id>,
    holder: &mut impl Holder,
) -> Result<(), CatchUpError> {
    for chat in api.chats().await? {
        if only.is_some_and(|only| only != chat.chat_id) {
            continue;
        }
        let cursors = holder.cursors(chat.chat_id);
        if let (Some(last), Some(after)) = (chat.last_change_id, cursors.changes_after) {
            if last > after {
                page(api, chat.chat_id, after, Source::Changes, holder).await?;
            }
        }
        if chat
            .last_message_id
            .is_some_and(|last| last > cursors.messages_after)
        {
            page(
                api,
                chat.chat_id,
                cursors.messages_after,
                Source::History,
                holder,
            )
            .await?;
        }
    }
    Ok(())
}

async fn page(
    api: &Api,
    chat: Id,
    mut after: Id,
    source: Source,
    holder: &mut impl Holder,
) -> Result<(), CatchUpError> {
    for _ in 0..PAGES_MAX {
        let page = match source {
            Source::History => api.messages_after(chat, after).await?,
            Source::Changes => api.changes_after(chat, after).await?,
        };
        let next = page.next_after;
        let more = page.has_more;
        holder.take(source, page.messages);
        match next {
            Some(next) if more => after = next,
            None if more => {
                return Err(CatchUpError::NoCursor {
                    url: format!("{}/v1/chats/{chat}/…?after={after}", api.base()),
                })
            }
            _ => break,
        }
    }
    Ok(())
}

/// What a client holds: per chat, its messages by id in their newest state, and the highest
/// change id seen (the change cursor).
#[derive(Clone, Debug, Default)]
pub struct Held {
    chats: HashMap<Id, BTreeMap<Id, Message>>,
    changes: HashMap<Id, Id>,
}

impl Held {
    /// Keeps `message` unless the state held is newer (a delete is final; otherwise the later
    /// change wins), so that frames and pages arriving in any order end in the current state.
    /// `true` when this was a message not held before.
    pub fn hold(&mut self, message: Message) -> bool {
        if let Some(change) = message.change_id {
            self.note_change(message.chat_id, change);
        }
        let chat = self.chats.entry(message.chat_id).or_default();
        match chat.get(&message.message_id) {
            Some(held) if !message.supersedes(held) => false,
            Some(_) => {
                chat.insert(message.message_id, message);
                false
            }
            None => {
                chat.insert(message.message_id, message);
                true
            }
        }
    }

    /// A `message_deleted` frame: the held message becomes a tombstone (one not held yet
    /// comes as one from history, which shows the current state).
    pub fn hold_deleted(&mut self, chat_id: Id, message_id: Id, change_id: Id) {
        self.note_change(chat_id, change_id);
        if let Some(m) = self
            .chats
            .get_mut(&chat_id)
            .and_then(|c| c.get_mut(&message_id))
        {
            m.body.clear();
            m.deleted = true;
            m.edited_at = None;
            m.change_id = m.change_id.max(Some(change_id));
        }
    }

    fn note_change(&mut self, chat: Id, change: Id) {
        let c = self.changes.entry(chat).or_insert(change);
        *c = (*c).max(change);
    }

    /// The highest message id held in `chat`.
    pub fn highest(&self, chat: Id) -> Option<Id> {
        self.chats
            .get(&chat)
            .and_then(|m| m.keys().next_back().copied())
    }

    /// The catch-up cursors of `chat`. Changes start at the highest change id held minus the
    /// overlap or, no change seen yet, at the lowest message id held minus it (a change to a
    /// message has a later id than the message).
    pub fn cursors(&self, chat: Id) -> Cursors {
        let lowest = self.chats.get(&chat).and_then(|m| m.keys().next().copied());
        Cursors {
            messages_after: self.highest(chat).map(catch_up_after).unwrap_or(Id(0)),
            changes_after: self
                .changes
                .get(&chat)
                .copied()
                .or(lowest)
                .map(catch_up_after),
        }
    }

    /// The held state of one message.
    pub fn message(&self, chat: Id, id: Id) -> Option<&Message> {
        self.chats.get(&chat).and_then(|m| m.get(&id))
    }

    /// Whether any chat holds message `id`.
    pub fn holds(&self, id: Id) -> bool {
        self.chats.values().any(|m| m.contains_key(&id))
    }

    /// Everything held in one chat, in id order.
    pub fn chat(&self, chat: Id) -> Vec<Message> {
        self.chats
            .get(&chat)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(chat: u64, id: u64, change: Option<u64>, deleted: bool) -> Message {
        Message {
            chat_id: Id(chat),
            message_id: Id(id),
            sender_id: "a".into(),
            client_msg_id: format!("c{id}"),
            body: if deleted { String::new() } else { "x".into() },
            sent_at_ms: 0,
            edited_at: None,
            deleted,
            change_id: change.map(Id),
        }
    }

    /// The first id of Unix millisecond `ms`.
    fn id_at(ms: u64) -> u64 {
        Id::first_at(ms).0
    }

    #[test]
    fn repeats_collapse_and_the_newest_state_wins_in_any_order() {
        let mut held = Held::default();
        assert!(held.hold(message(1, 10, None, false)));
        assert!(!held.hold(message(1, 10, None, false)), "a repeat");
        held.hold(message(1, 10, Some(30), true));
        held.hold(message(1, 10, Some(20), false));
        assert!(
            held.message(Id(1), Id(10)).unwrap().deleted,
            "a delete is final"
        );
        assert_eq!(held.chat(Id(1)).len(), 1);
        held.hold_deleted(Id(1), Id(99), Id(40));
        assert!(
            !held.holds(Id(99)),
            "a delete of a message not held adds nothing"
        );
        assert_eq!(
            held.cursors(Id(1)).changes_after,
            Some(catch_up_after(Id(40)))
        );
    }

    #[test]
    fn cursors_start_the_overlap_below_what_is_held() {
        let mut held = Held::default();
        let empty = held.cursors(Id(1));
        assert_eq!(empty.messages_after, Id(0));
        assert_eq!(
            empty.changes_after, None,
            "nothing held: history brings everything"
        );
        // A minute apart (more than the overlap), after the ids' epoch.
        let now = chat_protocol::ids::now_unix_ms();
        let (low, high) = (id_at(now), id_at(now + 60_000));
        held.hold(message(1, low, None, false));
        held.hold(message(1, high, None, false));
        let c = held.cursors(Id(1));
        assert_eq!(c.messages_after, catch_up_after(Id(high)));
        assert!(Id(low) < c.messages_after && c.messages_after < Id(high));
        assert_eq!(
            c.changes_after,
            Some(catch_up_after(Id(low))),
            "no change seen yet"
        );
    }
}
