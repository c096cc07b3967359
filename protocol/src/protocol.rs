//! The versioned client ↔ gateway wire protocol. One schema, two encodings: JSON text frames and
//! MessagePack binary frames (maps with field names, so both carry the same `type` tag). Unknown
//! fields are ignored; an unknown `type` is reported as [`DecodeError::UnknownType`] so that the
//! gateway can answer with an error frame instead of closing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Id;

/// Bumped on incompatible changes; sent in `hello`.
pub const PROTOCOL_VERSION: u16 = 1;

/// How far back in time every catch-up reaches below the highest message id a client holds
/// (docs/PROTOCOL.md, "Delivery and catch-up"). A message can become visible after newer ones
/// (API replicas' clocks differ; concurrent sends commit out of id order), but never more than
/// this much older than any message a client could already hold: chat-api refuses to start with
/// settings under which a send could take longer (`chat_api::config`). The browser client
/// repeats it as `CATCHUP_OVERLAP_MS`.
pub const CATCHUP_OVERLAP: Duration = Duration::from_secs(30);

/// The `after` cursor of a catch-up of a chat held up to `held`: `held` moved back by
/// [`CATCHUP_OVERLAP`] in id space (saturating at 0). A chat needs the fetch when its
/// `last_message_id` is above it; what comes back is deduplicated by message id.
pub fn catch_up_after(held: Id) -> Id {
    held.earlier_by(CATCHUP_OVERLAP)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Msgpack,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "json" => Some(Encoding::Json),
            "msgpack" => Some(Encoding::Msgpack),
            _ => None,
        }
    }
}

/// A chat message as clients see it (frames and HTTP responses). A deleted message (a tombstone)
/// has `deleted: true` and no `body` (an empty body is never sent: live messages have at least
/// one byte); `edited_at` and `change_id` are absent until the message is first edited or
/// deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub chat_id: Id,
    pub message_id: Id,
    pub sender_id: String,
    pub client_msg_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Unix milliseconds, derived from the message id.
    pub sent_at_ms: u64,
    /// Unix milliseconds of the latest edit, derived from its change id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// The message was deleted: its body is gone from the store.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// The id of the latest change (edit or delete) of this message, from the same clock as
    /// message ids: the change cursor of `GET /v1/chats/{chat_id}/changes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<Id>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Message {
    /// A message as first stored: never edited, not deleted.
    pub fn new(
        chat_id: Id,
        message_id: Id,
        sender_id: String,
        client_msg_id: String,
        body: String,
    ) -> Message {
        Message {
            chat_id,
            message_id,
            sender_id,
            client_msg_id,
            body,
            sent_at_ms: message_id.unix_ms(),
            edited_at: None,
            deleted: false,
            change_id: None,
        }
    }

    /// Which of two states of the same message a client keeps: a deleted one is final,
    /// otherwise the one with the later change (an unchanged message is the oldest state).
    pub fn supersedes(&self, other: &Message) -> bool {
        match (self.deleted, other.deleted) {
            (true, false) => true,
            (false, true) => false,
            _ => self.change_id > other.change_id,
        }
    }
}

/// Frames the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        v: u16,
        connection_id: String,
        user_id: String,
        heartbeat_interval_ms: u64,
        idle_timeout_ms: u64,
        /// Unix seconds at which the token expires unless refreshed.
        token_expires_at: u64,
    },
    Message {
        message: Message,
    },
    /// A backend push event; `event` is whatever the service sent.
    Event {
        event: serde_json::Value,
    },
    Typing {
        chat_id: Id,
        user_id: String,
    },
    /// A user who shares a chat with the recipient came online (first socket anywhere) or went
    /// offline (last socket closed, after the grace period). `online` and `last_seen_ms` repeat
    /// `status` and `last_seen` in the form of protocol version 1's reserved frame, for clients
    /// written against it.
    Presence {
        user_id: String,
        status: PresenceStatus,
        /// Unix milliseconds: when the last socket closed (offline), or when the change was
        /// seen (online).
        last_seen: Option<u64>,
        online: bool,
        /// `last_seen` when offline, `None` when online.
        last_seen_ms: Option<u64>,
    },
    /// Answer to a client `ping`.
    Pong,
    /// The node may have missed deliveries (its routing backend was unreachable or lost its
    /// state): run the catch-up of `docs/PROTOCOL.md` now; the socket stays open.
    Resync,
    /// The token refresh was accepted.
    Refreshed {
        token_expires_at: u64,
    },
    /// An error answering one client frame; the socket stays open.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// `user_id` has read `chat_id` up to `message_id` (their read marker moved forward). Sent to
    /// the chat's members, the reader's own sockets included (other devices), in chats of at most
    /// `RECEIPTS_BROADCAST_MEMBERS_MAX` members; in larger ones to the reader's sockets only.
    Read {
        chat_id: Id,
        user_id: String,
        message_id: Id,
    },
    /// `user_id`'s devices have received `chat_id` up to `message_id` (their delivered marker
    /// moved forward, from `ack` frames). Sent to the chat's other members in chats of at most
    /// `RECEIPTS_BROADCAST_MEMBERS_MAX` members.
    Delivered {
        chat_id: Id,
        user_id: String,
        message_id: Id,
    },
    /// A message of one of the user's chats was edited: its current state.
    MessageUpdated {
        message: Message,
    },
    /// A message was deleted; history keeps it as a tombstone (`deleted: true`, no body).
    MessageDeleted {
        chat_id: Id,
        message_id: Id,
        /// The deletion's change id (see [`Message::change_id`]).
        change_id: Id,
    },
    /// The user was removed from the chat (or left it from another device): no further frame
    /// of that chat follows.
    ChatRemoved {
        chat_id: Id,
    },
}

/// A user's presence as `presence` frames carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl ServerFrame {
    /// The `presence` frame for a change of `user_id` to `online`, seen at `at_ms`
    /// (unix ms: the last socket's close when offline).
    pub fn presence(user_id: String, online: bool, at_ms: u64) -> ServerFrame {
        ServerFrame::Presence {
            user_id,
            status: if online {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            },
            last_seen: Some(at_ms),
            online,
            last_seen_ms: (!online).then_some(at_ms),
        }
    }
}

/// The `user_id` of a `presence` frame in canonical MessagePack (the form node-bus envelopes
/// carry), or `None` for any other frame. A byte-prefix check comes first (serde writes the `type`
/// tag as the map's first entry), so that other frames, messages above all, cost no decoding.
pub fn presence_user(msgpack: &[u8]) -> Option<String> {
    const TAG: &[u8] = b"\xa4type\xa8presence";
    if msgpack.get(1..1 + TAG.len())? != TAG {
        return None;
    }
    match decode_server(Encoding::Msgpack, msgpack).ok()? {
        ServerFrame::Presence { user_id, .. } => Some(user_id),
        _ => None,
    }
}

/// Frames the client sends. Messages and history go over HTTP, not the socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Application heartbeat; answered with `pong`.
    Ping,
    Typing {
        chat_id: Id,
    },
    /// A newer token for the same user, to keep the socket open past the old one's expiry.
    Refresh {
        token: String,
    },
    /// The client holds `chat_id` up to `message_id` (delivered receipt). Coalesced by the
    /// gateway (highest id per user and chat) and forwarded to chat-api in batches.
    Ack {
        chat_id: Id,
        message_id: Id,
    },
}

/// Error codes carried by `error` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON / MessagePack or did not match the schema.
    InvalidFrame,
    /// The frame's `type` is not one this server knows.
    UnknownType,
    /// A text frame on a MessagePack socket or a binary frame on a JSON socket.
    WrongEncoding,
    /// The refresh token was refused (bad signature, other user, expired).
    InvalidToken,
    /// The caller may not do this (e.g. typing in a chat it is not a member of).
    Forbidden,
    /// Too many frames of this kind; slow down.
    RateLimited,
    /// The server cannot serve this frame now (e.g. typing on a node without an API to forward
    /// to, or the API did not answer); the socket stays usable.
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    #[error("invalid frame: {0}")]
    Invalid(String),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::Invalid(_) => ErrorCode::InvalidFrame,
        }
    }
}

#[derive(Deserialize)]
struct TypeProbe {
    #[serde(rename = "type")]
    kind: String,
}

const CLIENT_TYPES: &[&str] = &["ping", "typing", "refresh", "ack"];

/// Decodes a client frame in the given encoding.
pub fn decode_client(encoding: Encoding, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    let parsed = match encoding {
        Encoding::Json => serde_json::from_slice::<ClientFrame>(bytes).map_err(|e| e.to_string()),
        Encoding::Msgpack => msgpack_from_slice::<ClientFrame>(bytes).map_err(|e| e.to_string()),
    };
    parsed.map_err(|err| {
        let probe = match encoding {
            Encoding::Json => serde_json::from_slice::<TypeProbe>(bytes).ok(),
            Encoding::Msgpack => msgpack_from_slice::<TypeProbe>(bytes).ok(),
        };
        match probe {
            Some(p) if !CLIENT_TYPES.contains(&p.kind.as_str()) => DecodeError::UnknownType(p.kind),
            _ => DecodeError::Invalid(err),
        }
    })
}

/// Nesting allowed in a client frame. rmp-serde's default (1024) lets a frame of a few KiB of
/// `[[[[…` recurse deep enough to overflow a small task stack; no client frame nests beyond a few
/// levels. (serde_json stops at 128 by itself.)
const MSGPACK_MAX_DEPTH: usize = 32;

fn msgpack_from_slice<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MSGPACK_MAX_DEPTH);
    T::deserialize(&mut de)
}

/// Encodes a server frame. Serialization of these types cannot fail (string keys only), so an
/// error here is a bug, reported as an empty frame rather than a panic on a hot path.
pub fn encode_server(encoding: Encoding, frame: &ServerFrame) -> Vec<u8> {
    let out = match encoding {
        Encoding::Json => serde_json::to_vec(frame).map_err(|e| e.to_string()),
        Encoding::Msgpack => rmp_serde::to_vec_named(frame).map_err(|e| e.to_string()),
    };
    out.unwrap_or_else(|e| {
        tracing::error!(error = %e, "server frame failed to encode");
        Vec::new()
    })
}

pub fn decode_server(encoding: Encoding, bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    match encoding {
        Encoding::Json => {
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))
        }
        Encoding::Msgpack => {
            rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))
        }
    }
}

/// Encodes a client frame (used by test and load clients).
pub fn encode_client(encoding: Encoding, frame: &ClientFrame) -> Vec<u8> {
    match encoding {
        Encoding::Json => serde_json::to_vec(frame).unwrap_or_default(),
        Encoding::Msgpack => rmp_serde::to_vec_named(frame).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_starts_the_overlap_below_the_id_held() {
        let held = Id::first_at(crate::ids::EPOCH_MS + 3_600_000);
        assert_eq!(
            catch_up_after(held),
            Id::first_at(crate::ids::EPOCH_MS + 3_600_000 - 30_000)
        );
        assert_eq!(catch_up_after(Id(17)), Id(0));
        // A message made 29.999 s before the held one is fetched; one made 30 s before is not.
        let just_inside = Id::first_at(held.unix_ms() - 29_999);
        assert!(just_inside > catch_up_after(held));
        assert!(Id::first_at(held.unix_ms() - 30_000) <= catch_up_after(held));
    }

    fn sample_frames() -> Vec<ServerFrame> {
        vec![
            ServerFrame::Hello {
                v: PROTOCOL_VERSION,
                connection_id: "c1".into(),
                user_id: "alice".into(),
                heartbeat_interval_ms: 25_000,
                idle_timeout_ms: 60_000,
                token_expires_at: 1_900_000_000,
            },
            ServerFrame::Message {
                message: Message {
                    chat_id: Id(7),
                    message_id: Id(u64::MAX),
                    sender_id: "bob".into(),
                    client_msg_id: "m-1".into(),
                    body: "héllo".into(),
                    sent_at_ms: 1,
                    edited_at: None,
                    deleted: false,
                    change_id: None,
                },
            },
            ServerFrame::Event {
                event: serde_json::json!({"kind": "invoice", "n": [1, 2.5, null]}),
            },
            ServerFrame::Typing {
                chat_id: Id(1),
                user_id: "bob".into(),
            },
            ServerFrame::presence("bob".into(), false, 5),
            ServerFrame::presence("carol".into(), true, 6),
            ServerFrame::Pong,
            ServerFrame::Resync,
            ServerFrame::Refreshed {
                token_expires_at: 3,
            },
            ServerFrame::Error {
                code: ErrorCode::UnknownType,
                message: "x".into(),
            },
            ServerFrame::Read {
                chat_id: Id(3),
                user_id: "carol".into(),
                message_id: Id(u64::MAX),
            },
            ServerFrame::Delivered {
                chat_id: Id(3),
                user_id: "dave".into(),
                message_id: Id(42),
            },
            ServerFrame::MessageUpdated {
                message: Message {
                    edited_at: Some(9),
                    change_id: Some(Id(u64::MAX - 1)),
                    ..Message::new(Id(7), Id(8), "bob".into(), "m-2".into(), "fixed".into())
                },
            },
            ServerFrame::MessageDeleted {
                chat_id: Id(7),
                message_id: Id(8),
                change_id: Id(10),
            },
            ServerFrame::ChatRemoved { chat_id: Id(7) },
        ]
    }

    #[test]
    fn edit_delete_and_removal_frames_have_the_documented_shape() {
        let json = |f: &ServerFrame| -> serde_json::Value {
            serde_json::from_slice(&encode_server(Encoding::Json, f)).unwrap()
        };
        let tombstone = Message {
            body: String::new(),
            deleted: true,
            change_id: Some(Id(10)),
            ..Message::new(Id(7), Id(8), "bob".into(), "m-2".into(), String::new())
        };
        let v = json(&ServerFrame::MessageUpdated {
            message: tombstone.clone(),
        });
        assert_eq!(v["type"], "message_updated");
        assert_eq!(v["message"]["deleted"], true);
        assert!(
            v["message"].get("body").is_none(),
            "a tombstone has no body"
        );
        assert!(v["message"].get("edited_at").is_none());
        let plain = json(&ServerFrame::Message {
            message: Message::new(Id(7), Id(8), "bob".into(), "m".into(), "hi".into()),
        });
        assert!(plain["message"].get("deleted").is_none());
        assert!(plain["message"].get("change_id").is_none());
        assert_eq!(
            json(&ServerFrame::MessageDeleted {
                chat_id: Id(7),
                message_id: Id(8),
                change_id: Id(10),
            }),
            serde_json::json!({"type": "message_deleted", "chat_id": "7", "message_id": "8", "change_id": "10"})
        );
        assert_eq!(
            json(&ServerFrame::ChatRemoved { chat_id: Id(7) }),
            serde_json::json!({"type": "chat_removed", "chat_id": "7"})
        );
        // Both encodings read the tombstone back without its body.
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let f = ServerFrame::MessageUpdated {
                message: tombstone.clone(),
            };
            assert_eq!(decode_server(enc, &encode_server(enc, &f)).unwrap(), f);
        }
    }

    #[test]
    fn a_deleted_state_is_final_and_later_changes_win() {
        let base = Message::new(Id(1), Id(2), "a".into(), "c".into(), "v1".into());
        let edited = Message {
            body: "v2".into(),
            edited_at: Some(5),
            change_id: Some(Id(50)),
            ..base.clone()
        };
        let later = Message {
            body: "v3".into(),
            change_id: Some(Id(60)),
            ..edited.clone()
        };
        let deleted = Message {
            body: String::new(),
            deleted: true,
            change_id: Some(Id(40)),
            ..base.clone()
        };
        assert!(edited.supersedes(&base));
        assert!(!base.supersedes(&edited));
        assert!(later.supersedes(&edited));
        assert!(deleted.supersedes(&later), "a delete wins over any edit");
        assert!(!later.supersedes(&deleted));
        assert!(
            !edited.supersedes(&edited),
            "the same state twice is no change"
        );
    }

    #[test]
    fn server_frames_round_trip_in_both_encodings() {
        for enc in [Encoding::Json, Encoding::Msgpack] {
            for f in sample_frames() {
                let bytes = encode_server(enc, &f);
                assert_eq!(decode_server(enc, &bytes).unwrap(), f, "{enc:?}");
            }
        }
    }

    #[test]
    fn json_shape_is_documented_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode_server(Encoding::Json, &ServerFrame::Pong)).unwrap();
        assert_eq!(v, serde_json::json!({"type": "pong"}));
        let t = ServerFrame::Typing {
            chat_id: Id(12),
            user_id: "u".into(),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_server(Encoding::Json, &t)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "typing", "chat_id": "12", "user_id": "u"})
        );
    }

    #[test]
    fn presence_frame_has_the_documented_fields_and_the_reserved_ones() {
        let v: serde_json::Value = serde_json::from_slice(&encode_server(
            Encoding::Json,
            &ServerFrame::presence("bob".into(), false, 1_700_000_000_000),
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "presence", "user_id": "bob", "status": "offline",
                "last_seen": 1_700_000_000_000u64, "online": false,
                "last_seen_ms": 1_700_000_000_000u64})
        );
        let v: serde_json::Value = serde_json::from_slice(&encode_server(
            Encoding::Json,
            &ServerFrame::presence("bob".into(), true, 7),
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "presence", "user_id": "bob", "status": "online",
                "last_seen": 7, "online": true, "last_seen_ms": null})
        );
    }

    #[test]
    fn presence_user_is_read_only_from_presence_frames() {
        for f in sample_frames() {
            let bytes = encode_server(Encoding::Msgpack, &f);
            let expected = match &f {
                ServerFrame::Presence { user_id, .. } => Some(user_id.clone()),
                _ => None,
            };
            assert_eq!(presence_user(&bytes), expected, "{f:?}");
        }
        assert_eq!(presence_user(b""), None);
        assert_eq!(presence_user(b"\x86\xa4type\xa8presence\xc1"), None);
    }

    #[test]
    fn client_frames_decode_and_ignore_unknown_fields() {
        let f = decode_client(
            Encoding::Json,
            br#"{"type":"typing","chat_id":"9","extra":1}"#,
        )
        .unwrap();
        assert_eq!(f, ClientFrame::Typing { chat_id: Id(9) });
        let mp = encode_client(
            Encoding::Msgpack,
            &ClientFrame::Refresh { token: "t".into() },
        );
        assert_eq!(
            decode_client(Encoding::Msgpack, &mp).unwrap(),
            ClientFrame::Refresh { token: "t".into() }
        );
    }

    #[test]
    fn receipt_frames_have_the_documented_shape() {
        let read = ServerFrame::Read {
            chat_id: Id(12),
            user_id: "u".into(),
            message_id: Id(34),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_server(Encoding::Json, &read)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "read", "chat_id": "12", "user_id": "u", "message_id": "34"})
        );
        let delivered = ServerFrame::Delivered {
            chat_id: Id(12),
            user_id: "u".into(),
            message_id: Id(34),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_server(Encoding::Json, &delivered)).unwrap();
        assert_eq!(v["type"], "delivered");
        assert_eq!(v["message_id"], "34");
    }

    #[test]
    fn ack_frames_round_trip_in_both_encodings() {
        let ack = ClientFrame::Ack {
            chat_id: Id(9),
            message_id: Id(u64::MAX),
        };
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let bytes = encode_client(enc, &ack);
            assert_eq!(decode_client(enc, &bytes).unwrap(), ack, "{enc:?}");
        }
        assert_eq!(
            decode_client(
                Encoding::Json,
                br#"{"type":"ack","chat_id":"9","message_id":"18446744073709551615"}"#
            )
            .unwrap(),
            ack
        );
        // An ack whose ids are not ids is a bad frame, not an unknown type.
        for bad in [
            &br#"{"type":"ack","chat_id":"9"}"#[..],
            br#"{"type":"ack","chat_id":"9","message_id":"x"}"#,
            br#"{"type":"ack","chat_id":"-1","message_id":"1"}"#,
        ] {
            assert_eq!(
                decode_client(Encoding::Json, bad).unwrap_err().code(),
                ErrorCode::InvalidFrame
            );
        }
    }

    #[test]
    fn unknown_type_is_told_apart_from_garbage() {
        let e = decode_client(Encoding::Json, br#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::UnknownType);
        for bad in [
            &b"{not json"[..],
            b"[]",
            br#"{"type":"typing"}"#,
            b"\xff\x00",
        ] {
            assert_eq!(
                decode_client(Encoding::Json, bad).unwrap_err().code(),
                ErrorCode::InvalidFrame
            );
        }
        let mp = rmp_serde::to_vec_named(&serde_json::json!({"type": "dance"})).unwrap();
        assert_eq!(
            decode_client(Encoding::Msgpack, &mp).unwrap_err().code(),
            ErrorCode::UnknownType
        );
        assert_eq!(
            decode_client(Encoding::Msgpack, b"\xc1")
                .unwrap_err()
                .code(),
            ErrorCode::InvalidFrame
        );
    }
}
