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

/// The whole document.
pub fn spec() -> Value {
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
                        `has_more`, ask again with `after=next_after`.",
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
            "/v1/chats/{chat_id}/members/{user_id}": {"delete": {
                "summary": "Leave the chat, or (the creator only) remove a member",
                "description": "Idempotent: removing a non-member answers 204 too.",
                "parameters": [chat_id_param(),
                    {"name": "user_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": common_errors(json!({"204": {"description": "removed"},
                    "403": problem("not a member, or not the creator removing someone else")}))}},
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
            "/v1/chats/{chat_id}/typing": {"post": {"summary": "Tell the chat's other members that you are typing",
                "description": "Ephemeral: delivered as a `typing` frame to the other members' sockets, \
                    never stored. At most one per user and chat per second (429 with Retry-After).",
                "parameters": [chat_id_param()],
                "responses": common_errors(json!({"202": ok("handed to gateways", "TypingAccepted"),
                    "403": problem("not a member"), "429": problem("too many typing notices (`rate-limited`)")}))}},
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
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
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
                    "last_message_id": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}]}}},
                "ChatWithMembers": {"allOf": [{"$ref": "#/components/schemas/Chat"}, {"type": "object",
                    "properties": {"members": {"type": "array", "items": {"type": "string"}}}}]},
                "ChatList": {"type": "object", "required": ["chats", "has_more"], "properties": {
                    "chats": {"type": "array", "items": {"$ref": "#/components/schemas/Chat"}},
                    "has_more": {"type": "boolean"},
                    "next_after": {"$ref": "#/components/schemas/Id"}}},
                "AddMembers": {"type": "object", "required": ["user_ids"], "properties": {
                    "user_ids": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/UserId"}}}},
                "MemberList": {"type": "object", "properties": {"chat_id": {"$ref": "#/components/schemas/Id"},
                    "members": {"type": "array", "items": {"type": "string"}}}},
                "SendMessage": {"type": "object", "required": ["client_msg_id", "body"], "properties": {
                    "client_msg_id": {"type": "string", "minLength": 1, "maxLength": 64},
                    "body": {"type": "string", "minLength": 1, "description": "at most 4096 UTF-8 bytes"}}},
                "Message": {"type": "object", "properties": {
                    "chat_id": {"$ref": "#/components/schemas/Id"}, "message_id": {"$ref": "#/components/schemas/Id"},
                    "sender_id": {"type": "string"}, "client_msg_id": {"type": "string"},
                    "body": {"type": "string"}, "sent_at_ms": {"type": "integer"}}},
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
            }
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
