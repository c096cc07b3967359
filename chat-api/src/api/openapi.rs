//! `GET /v1/openapi.json`: the hand-written OpenAPI 3.1 description of this API. A test checks
//! that its paths and methods are exactly the router's.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::error::{PROBLEM_BASE, PROBLEM_TYPES};

pub async fn document() -> impl IntoResponse {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = DOC.get_or_init(|| serde_json::to_vec(&spec()).unwrap_or_default());
    (
        [(header::CONTENT_TYPE, "application/json")],
        bytes.as_slice(),
    )
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

fn chat_id_param() -> Value {
    json!({"name": "chat_id", "in": "path", "required": true,
           "schema": {"$ref": "#/components/schemas/Id"}})
}

fn admin_user_param() -> Value {
    json!({"name": "user_id", "in": "path", "required": true,
           "schema": {"$ref": "#/components/schemas/UserId"}})
}

/// The errors every authenticated route may answer.
fn common_errors(mut responses: Value) -> Value {
    let map = responses.as_object_mut().expect("responses is an object");
    map.insert(
        "401".into(),
        problem("missing or invalid token (`unauthorized`)"),
    );
    map.insert(
        "503".into(),
        problem(
            "a dependency is unavailable (`service-unavailable`, `timeout`); honour Retry-After",
        ),
    );
    map.insert("500".into(), problem("internal error (`internal`)"));
    responses
}

fn user_id_param() -> Value {
    json!({"name": "user_id", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn message_id_param() -> Value {
    json!({"name": "message_id", "in": "path", "required": true,
           "schema": {"$ref": "#/components/schemas/Id"}})
}

fn message_schema() -> Value {
    json!({"type": "object", "properties": {
        "chat_id": {"$ref": "#/components/schemas/Id"}, "message_id": {"$ref": "#/components/schemas/Id"},
        "sender_id": {"type": "string"}, "client_msg_id": {"type": "string"},
        "body": {"type": "string", "description": "absent on a deleted message"},
        "sent_at_ms": {"type": "integer"},
        "edited_at": {"type": "integer", "description": "Unix ms of the latest edit; absent if never edited"},
        "deleted": {"type": "boolean", "description": "present (true) on a deleted message: a tombstone without body"},
        "change_id": {"$ref": "#/components/schemas/Id",
            "description": "id of the latest edit or delete; absent if never changed"}}})
}

fn member_item() -> Value {
    json!({
        "delete": {
            "summary": "Leave the chat, or (an owner or admin) remove a member",
            "description": "Idempotent: removing a non-member answers 204 too. Admins remove plain \
                members only; the owner removes anyone. The removed member's sockets get `chat_removed`.",
            "parameters": [chat_id_param(), user_id_param()],
            "responses": common_errors(json!({"204": {"description": "removed"},
                "403": problem("not a member (`not-a-member`), or not allowed to remove this member (`forbidden`)")}))},
        "patch": {
            "summary": "Grant or revoke admin (the owner only)",
            "parameters": [chat_id_param(), user_id_param()],
            "requestBody": body("SetRole"),
            "responses": common_errors(json!({"200": ok("the member's role", "MemberRole"),
                "400": problem("invalid body"),
                "403": problem("not a member (`not-a-member`) or not the owner (`forbidden`)"),
                "404": problem("the user is not a member (`member-not-found`)"),
                "409": problem("the owner's role cannot change (`conflict`)"),
                "422": problem("role other than admin or member")}))}
    })
}

fn message_item() -> Value {
    json!({
        "patch": {
            "summary": "Edit a message (its author only)",
            "description": "Replaces the body; the answer carries `edited_at` and `change_id`, and live \
                members get `message_updated`. Editing to the current body changes nothing (200 with the \
                message). Body limits and the per-user message rate apply as for sends.",
            "parameters": [chat_id_param(), message_id_param()],
            "requestBody": body("EditMessage"),
            "responses": common_errors(json!({"200": ok("the edited message", "Message"),
                "400": problem("invalid body or id"),
                "403": problem("not a member (`not-a-member`) or not the author (`forbidden`)"),
                "404": problem("no such message in this chat (`message-not-found`)"),
                "409": problem("the message was deleted (`conflict`)"),
                "422": problem("empty or oversized body"), "429": problem("message rate exceeded")}))},
        "delete": {
            "summary": "Delete a message (its author, or an owner or admin)",
            "description": "The body is removed from the store; history keeps `{message_id, deleted: true}` \
                without it, and live members get `message_deleted`. Deleting again answers 204.",
            "parameters": [chat_id_param(), message_id_param()],
            "responses": common_errors(json!({"204": {"description": "deleted"},
                "403": problem("not a member (`not-a-member`), or neither author nor owner/admin (`forbidden`)"),
                "404": problem("no such message in this chat (`message-not-found`)"),
                "429": problem("message rate exceeded")}))}
    })
}

fn changes_item() -> Value {
    json!({
        "get": {
            "summary": "Edited and deleted messages, by change id (catch-up of changes)",
            "description": "The changed messages with a change id above `after`, in their current state, \
                in change order. Catch up from your highest change id held minus the catch-up overlap \
                (docs/PROTOCOL.md); while `has_more`, ask again with `after=next_after`.",
            "parameters": [chat_id_param(),
                {"name": "after", "in": "query", "schema": {"$ref": "#/components/schemas/Id"},
                    "description": "only changes with a greater change id (default: all)"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                    "default": 50, "description": "capped at the configured maximum (200)"}}],
            "responses": common_errors(json!({"200": ok("page", "ChangesPage"),
                "400": problem("a bad cursor or limit"), "403": problem("not a member")}))}
    })
}

/// The component schemas.
fn schemas() -> Value {
    json!({
        "Id": {"type": "string", "pattern": "^[0-9]{1,20}$", "description": "64-bit id as a decimal string"},
        "UserId": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$"},
        "Problem": {"type": "object", "required": ["type", "title", "status", "detail"],
            "properties": {"type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "field": {"type": "string", "description": "the offending field, for validation-failed"}}},
        "CreateChat": {"type": "object", "required": ["members"], "properties": {
            "members": {"type": "array", "items": {"$ref": "#/components/schemas/UserId"}},
            "title": {"type": "string", "minLength": 1, "maxLength": 200}}},
        "Chat": {"type": "object", "required": ["chat_id", "created_by", "created_at_ms"], "properties": {
            "chat_id": {"$ref": "#/components/schemas/Id"}, "title": {"type": ["string", "null"]},
            "created_by": {"type": "string"}, "created_at_ms": {"type": "integer"},
            "last_message_id": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}]},
            "last_change_id": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
                "description": "the newest edit or delete in the chat: catch up changes when above your change cursor"}},
            "description": "`created_by` is the chat's owner (while a member)"},
        "ChatWithMembers": {"allOf": [{"$ref": "#/components/schemas/Chat"}, {"type": "object",
            "properties": {"members": {"type": "array", "items": {"type": "string"}},
                "admins": {"type": "array", "items": {"type": "string"},
                    "description": "members holding `admin`"}}}]},
        "ChatListItem": {"allOf": [{"$ref": "#/components/schemas/Chat"}, {"type": "object",
            "required": ["read_up_to", "unread_count", "unread_capped"], "properties": {
                "read_up_to": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
                    "description": "your read marker, null when never set"},
                "unread_count": {"type": "integer", "minimum": 0,
                    "maximum": crate::api::receipts::UNREAD_COUNT_MAX,
                    "description": format!("messages from other members above `read_up_to`, at most {}",
                        crate::api::receipts::UNREAD_COUNT_MAX)},
                "unread_capped": {"type": "boolean", "description": format!("there may be more than \
                    `unread_count` (show \"{}+\"): each count reads at most {} messages above the marker",
                    crate::api::receipts::UNREAD_COUNT_MAX, crate::api::receipts::UNREAD_COUNT_MAX + 1)}}}]},
        "MarkRead": {"type": "object", "required": ["message_id"], "properties": {
            "message_id": {"$ref": "#/components/schemas/Id"}}},
        "ReceiptList": {"type": "object", "required": ["chat_id", "receipts"], "properties": {
            "chat_id": {"$ref": "#/components/schemas/Id"},
            "receipts": {"type": "array", "description": "every current member, sorted by user id", "items": {
                "type": "object", "required": ["user_id", "read_up_to", "delivered_up_to"], "properties": {
                    "user_id": {"type": "string"},
                    "read_up_to": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}]},
                    "delivered_up_to": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
                        "description": "the delivered marker, or the read marker when higher"}}}}}},
        "ChatList": {"type": "object", "required": ["chats", "has_more"], "properties": {
            "chats": {"type": "array", "items": {"$ref": "#/components/schemas/ChatListItem"}},
            "has_more": {"type": "boolean"},
            "next_after": {"$ref": "#/components/schemas/Id"}}},
        "AddMembers": {"type": "object", "required": ["user_ids"], "properties": {
            "user_ids": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/UserId"}}}},
        "MemberList": {"type": "object", "properties": {"chat_id": {"$ref": "#/components/schemas/Id"},
            "members": {"type": "array", "items": {"type": "string"}}}},
        "SendMessage": {"type": "object", "required": ["client_msg_id", "body"], "properties": {
            "client_msg_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "body": {"type": "string", "minLength": 1, "description": "at most 4096 UTF-8 bytes"}}},
        "Message": message_schema(),
        "EditMessage": {"type": "object", "required": ["body"], "properties": {
            "body": {"type": "string", "minLength": 1, "description": "at most 4096 UTF-8 bytes"}}},
        "SetRole": {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["admin", "member"]}}},
        "MemberRole": {"type": "object", "properties": {"chat_id": {"$ref": "#/components/schemas/Id"},
            "user_id": {"type": "string"}, "role": {"type": "string", "enum": ["owner", "admin", "member"]}}},
        "ChangesPage": {"type": "object", "properties": {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"},
                "description": "changed messages in their current state (deleted ones as tombstones), in change order"},
            "has_more": {"type": "boolean"},
            "next_after": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
                "description": "pass as `after` for the next page; null unless `has_more`"}}},
        "HistoryPage": {"type": "object", "properties": {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
            "has_more": {"type": "boolean", "description": "more messages exist past this page in its \
                direction (older without a cursor or with `before`, newer with `after`)"},
            "next_before": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
                "description": "pass as `before` for the next older page; null unless `has_more` on a backward page"},
            "next_after": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
                "description": "pass as `after` for the next newer page; null unless `has_more` on a forward page"}}},
        "Push": {"type": "object", "required": ["user_ids", "event"], "properties": {
            "user_ids": {"type": "array", "items": {"$ref": "#/components/schemas/UserId"}},
            "event": {"description": "any JSON value, delivered as is"}}},
        "TypingAccepted": {"type": "object", "properties": {"recipients_online": {"type": "integer"}}},
        "PushAccepted": {"type": "object", "properties": {"recipients_online": {"type": "integer"}}},
        "PresenceList": {"type": "object", "properties": {"presence": {"type": "array", "items": {
            "type": "object", "properties": {"user_id": {"type": "string"},
                "status": {"type": "string", "enum": ["online", "offline", "unknown"],
                    "description": "`unknown`: the user shares no chat with the caller (or does not exist)"},
                "online": {"type": "boolean", "description": "false when unknown"},
                "last_seen_ms": {"type": ["integer", "null"], "description": "unix ms the last socket closed; null when online or unknown"}}}}}}
    })
}

/// The whole document.
pub fn spec() -> Value {
    let mut doc = spec_core();
    if let (Some(paths), Value::Object(admin)) = (doc["paths"].as_object_mut(), admin_paths()) {
        paths.extend(admin);
    }
    if let (Some(schemas), Value::Object(admin)) = (
        doc["components"]["schemas"].as_object_mut(),
        admin_schemas(),
    ) {
        schemas.extend(admin);
    }
    doc
}

/// `/v1/admin/…` (kept apart: one `json!` literal of the whole document passes the macro
/// recursion limit).
fn admin_paths() -> Value {
    json!({
        "/v1/admin/users/{user_id}/disconnect": {"post": {
            "summary": "Close every socket of a user on every gateway (service scope `admin`)",
            "description": "Every live gateway node closes the user's sockets with close code 4104 \
                (`disconnected by an operator`: the client may reconnect after a backoff; its token \
                stays good), within about a second.",
            "parameters": [admin_user_param()],
            "responses": common_errors(json!({"202": ok("handed to every live gateway node", "Disconnected"),
                "403": problem("user token or missing scope"), "422": problem("bad user id")}))}},
        "/v1/admin/users/{user_id}/revoke": {"post": {
            "summary": "Revoke a user's tokens issued up to now and close their sockets (service scope `admin`)",
            "description": "From now on, the user's tokens with an `iat` below `not_before` (the \
                second after this one), or without `iat`, are refused for connecting (401), \
                refreshing (`invalid_token`) and HTTP (401); every socket of the user closes with 4205 \
                (`token revoked`: reconnect only with a new token). Applies at once on every gateway \
                and on the replica that answers, and within REVOCATION_CACHE_TTL on other replicas; \
                kept for REVOCATION_TTL. A retry revokes again from its own time.",
            "parameters": [admin_user_param()],
            "responses": common_errors(json!({"200": ok("revoked; sockets closing", "Revoked"),
                "403": problem("user token or missing scope"), "422": problem("bad user id")}))}},
        "/v1/admin/nodes": {"get": {
            "summary": "Live gateway nodes with their incarnations and socket counts (service scope `admin`)",
            "description": "Counts are each node's last report (every second); `null` before a node's first.",
            "responses": common_errors(json!({"200": ok("live nodes", "NodeList"),
                "403": problem("user token or missing scope")}))}}
    })
}

fn admin_schemas() -> Value {
    json!({
            "Disconnected": {"type": "object", "properties": {"user_id": {"type": "string"},
                "nodes": {"type": "integer", "description": "gateway nodes told (every live node)"}}},
            "Revoked": {"type": "object", "properties": {"user_id": {"type": "string"},
                "not_before": {"type": "integer", "description": "Unix seconds: tokens with a smaller `iat`, or none, are refused"},
                "nodes": {"type": "integer", "description": "gateway nodes told (every live node)"}}},
            "NodeList": {"type": "object", "properties": {
                "nodes": {"type": "array", "items": {"type": "object", "properties": {
                    "node_id": {"type": "string"},
                    "incarnation": {"$ref": "#/components/schemas/Id"},
                    "sockets": {"type": ["integer", "null"]}, "users": {"type": ["integer", "null"]},
                    "reported_at_ms": {"type": ["integer", "null"]}}}},
                "sockets": {"type": "integer", "description": "sockets on all listed nodes"}}}
    })
}

/// Everything but the admin API.
fn spec_core() -> Value {
    let problem_types: Vec<Value> = PROBLEM_TYPES
        .iter()
        .map(|(slug, status, title)| {
            json!({"type": format!("{PROBLEM_BASE}{slug}"), "status": status, "title": title})
        })
        .collect();
    let member_only = "403: `not-a-member` for non-members and unknown chats alike, whatever the id (up to 2^64-1) and the store.";
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "chat-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Stateless chat HTTP API. Ids are 64-bit and sent as decimal strings. \
                Errors are application/problem+json (RFC 9457); see x-problem-types.",
            "x-problem-types": problem_types
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: store reachable, clock trusted (distributed mode) and not draining", "security": [],
                "responses": {"200": {"description": "ready"}, "503": problem("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                "responses": {"200": {"description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "404": problem("no metrics recorder in this process")}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document"}}}},
            "/v1/chats": {
                "post": {"summary": "Create a chat; the caller becomes a member",
                    "requestBody": body("CreateChat"),
                    "responses": common_errors(json!({
                        "201": ok("created", "ChatWithMembers"),
                        "400": problem("invalid body"), "403": problem("service token"),
                        "413": problem("body too large"), "415": problem("not JSON"),
                        "422": problem("bad user id, title or too many members")}))},
                "get": {"summary": "One page of the caller's chats",
                    "description": "Pages cover ascending ranges of chat ids (new activity never \
                        moves a chat to another page); inside a page, newest activity first. While \
                        `has_more`, ask again with `after=next_after`. Each chat carries your read state: \
                        `read_up_to`, `unread_count` (capped) and `unread_capped`.",
                    "parameters": [
                        {"name": "after", "in": "query", "schema": {"$ref": "#/components/schemas/Id"},
                            "description": "the previous page's `next_after`"},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                            "default": crate::api::chats::CHATS_PAGE_MAX,
                            "description": format!("capped at {}", crate::api::chats::CHATS_PAGE_MAX)}}],
                    "responses": common_errors(json!({"200": ok("chats", "ChatList"),
                        "400": problem("a bad cursor or limit"), "403": problem("service token")}))}
            },
            "/v1/chats/{chat_id}": {"get": {"summary": "A chat with its members",
                "description": member_only, "parameters": [chat_id_param()],
                "responses": common_errors(json!({"200": ok("chat", "ChatWithMembers"),
                    "400": problem("chat_id is not an id"), "403": problem("not a member")}))}},
            "/v1/chats/{chat_id}/members": {"post": {"summary": "Add members (members only)",
                "description": member_only, "parameters": [chat_id_param()],
                "requestBody": body("AddMembers"),
                "responses": common_errors(json!({"200": ok("the new member list", "MemberList"),
                    "400": problem("invalid body"), "403": problem("not a member"),
                    "422": problem("bad user id or too many members")}))}},
            "/v1/chats/{chat_id}/members/{user_id}": member_item(),
            "/v1/chats/{chat_id}/messages": {
                "post": {"summary": "Send a message; durable before 201",
                    "description": "Idempotent per (chat, sender, client_msg_id): a retry returns the \
                        original with the same status and body and `Idempotent-Replayed: true`, and delivers it \
                        to the members' sockets again (clients deduplicate by `message_id`). A replica whose clock \
                        cannot be trusted (off Redis time by more than API_MAX_CLOCK_SKEW) answers 503.",
                    "parameters": [chat_id_param()], "requestBody": body("SendMessage"),
                    "responses": common_errors(json!({
                        "201": {"description": "stored (or replayed)",
                            "headers": {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}},
                        "400": problem("invalid body"), "403": problem("not a member"),
                        "413": problem("body too large"), "422": problem("empty or oversized body, bad client_msg_id")}))},
                "get": {"summary": "History page, ascending; cursor by message id",
                    "description": "Without a cursor: the newest `limit` messages. Every page lists its \
                        messages oldest first. To page back, pass the page's `next_before` as `before`; to page \
                        forward (catch-up), pass `next_after` as `after`; stop when `has_more` is false.",
                    "parameters": [chat_id_param(),
                        {"name": "before", "in": "query", "schema": {"$ref": "#/components/schemas/Id"},
                            "description": "only messages with a smaller id: the `limit` newest of them (paging back)"},
                        {"name": "after", "in": "query", "schema": {"$ref": "#/components/schemas/Id"},
                            "description": "only messages with a greater id: the `limit` oldest of them (paging forward); \
                                not together with `before`"},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                            "default": 50, "description": "capped at the configured maximum (200)"}}],
                    "responses": common_errors(json!({"200": ok("page", "HistoryPage"),
                        "400": problem("both cursors, or a bad value"), "403": problem("not a member")}))}
            },
            "/v1/chats/{chat_id}/messages/{message_id}": message_item(),
            "/v1/chats/{chat_id}/changes": changes_item(),
            "/v1/chats/{chat_id}/typing": {"post": {"summary": "Tell the chat's other members that you are typing",
                "description": "Ephemeral: delivered as a `typing` frame to the other members' sockets, \
                    never stored. At most one per user and chat per second (429 with Retry-After).",
                "parameters": [chat_id_param()],
                "responses": common_errors(json!({"202": ok("handed to gateways", "TypingAccepted"),
                    "403": problem("not a member"), "429": problem("too many typing notices (`rate-limited`)")}))}},
            "/v1/chats/{chat_id}/read": {"post": {"summary": "Move your read marker in the chat forward",
                "description": format!("A marker only moves forward: an id at or below it is accepted and \
                    changes nothing. An id above the chat's `last_message_id` is clamped to it (so any id at \
                    or above the newest marks everything read); in a chat without messages nothing is stored. \
                    When the marker moves, the chat's members (your other devices included) get a `read` frame; \
                    in chats of more than {} members only your own devices do. {member_only}",
                    crate::api::receipts::RECEIPTS_BROADCAST_MEMBERS_MAX),
                "parameters": [chat_id_param()], "requestBody": body("MarkRead"),
                "responses": common_errors(json!({"204": {"description": "stored (or already at or past it)"},
                    "400": problem("invalid body, or `message_id` is not an id"), "403": problem("not a member")}))}},
            "/v1/chats/{chat_id}/delivered": {"post": {"summary": "Move your delivered marker in the chat forward",
                "description": format!("What gateways call with their sockets' coalesced `ack` frames; \
                    clients may call it directly. The same rules as `/read`; when the marker moves, the other \
                    members get a `delivered` frame (none in chats of more than {} members). {member_only}",
                    crate::api::receipts::RECEIPTS_BROADCAST_MEMBERS_MAX),
                "parameters": [chat_id_param()], "requestBody": body("MarkRead"),
                "responses": common_errors(json!({"204": {"description": "stored (or already at or past it)"},
                    "400": problem("invalid body, or `message_id` is not an id"), "403": problem("not a member")}))}},
            "/v1/chats/{chat_id}/receipts": {"get": {"summary": "Every member's read and delivered markers",
                "description": member_only, "parameters": [chat_id_param()],
                "responses": common_errors(json!({"200": ok("markers", "ReceiptList"),
                    "400": problem("chat_id is not an id"), "403": problem("not a member")}))}},
            "/v1/push": {"post": {"summary": "Push an event to users' sockets (service scope `push`)",
                "requestBody": body("Push"),
                "responses": common_errors(json!({"202": ok("handed to gateways", "PushAccepted"),
                    "403": problem("user token or missing scope"), "422": problem("bad user ids")}))}},
            "/v1/presence": {"get": {"summary": "Online state of up to 100 users",
                "description": "A user reads only themselves and users sharing a chat of at most \
                    API_PRESENCE_MAX_CHAT_MEMBERS (100) members with them (among their first \
                    API_PRESENCE_MAX_CHATS chats); anyone else reads as `unknown`, like a user who \
                    does not exist. Service tokens read everyone. Changes are also pushed to \
                    co-members' sockets as `presence` frames (docs/PROTOCOL.md).",
                "parameters": [{"name": "user_ids", "in": "query", "required": true,
                    "schema": {"type": "string"}, "description": "comma-separated user ids"}],
                "responses": common_errors(json!({"200": ok("presence", "PresenceList"),
                    "400": problem("missing or too many ids")}))}}
        },
        "webhooks": {
            "notification": {"post": {
                "summary": "Messages a user missed while offline (NOTIFY_WEBHOOK_URL)",
                "description": "Sent by chat-api to NOTIFY_WEBHOOK_URL, one request per user and \
                    chat per batch (NOTIFY_BATCH_WINDOW). At least once: a retried or re-sent \
                    batch of the same messages carries the same Idempotency-Key. Verify \
                    X-Chat-Signature over the raw body first. Any non-2xx answer is retried with \
                    backoff, up to NOTIFY_MAX_ATTEMPTS (docs/OPERATIONS.md).",
                "security": [],
                "parameters": [
                    {"name": "X-Chat-Signature", "in": "header", "required": true,
                        "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
                        "description": "hex HMAC-SHA256 of the body keyed with NOTIFY_WEBHOOK_SECRET"},
                    {"name": "Idempotency-Key", "in": "header", "required": true,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        "description": "the same for every delivery of this user's batch of these messages"}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["user_id", "chat_id", "message_ids", "count"],
                    "properties": {
                        "user_id": {"$ref": "#/components/schemas/UserId"},
                        "chat_id": {"$ref": "#/components/schemas/Id"},
                        "message_ids": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Id"},
                            "description": "ascending, no duplicates"},
                        "count": {"type": "integer", "minimum": 1},
                        "preview": {"type": "string",
                            "description": "start of the newest message's body (NOTIFY_PREVIEW_CHARS); absent when previews are off"}}}}}},
                "responses": {"2XX": {"description": "taken; the batch is not sent again"},
                    "default": {"description": "retried later with the same Idempotency-Key"}}
            }}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas()
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn document_lists_exactly_the_routes_served() {
        let doc = super::spec();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = crate::app::routes()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served);
    }
}
