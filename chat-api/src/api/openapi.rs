//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the one route list that also
//! builds the router (`crate::app`: each handler's `#[utoipa::path]`, the request and response
//! types' `ToSchema`) and completed here with what no handler owns (info, problem types,
//! security, the notification webhook) and with the running configuration's limits, so that the
//! numbers it states are the ones this process enforces.

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use serde_json::{json, Value};

use crate::config::Limits;
use crate::error::{PROBLEM_BASE, PROBLEM_TYPES};

/// The serialized document, built once with the router and handed to [`document`].
#[derive(Clone, Debug)]
pub struct Document(pub Bytes);

#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", summary = "This document", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document, with this process's limits", content_type = "application/json")))]
pub async fn document(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// The served document: `api` (the paths and schemas the route list collected) with the parts
/// no handler owns and the limits of `limits`.
pub fn finish(api: utoipa::openapi::OpenApi, limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    let problem_types: Vec<Value> = PROBLEM_TYPES
        .iter()
        .map(|(slug, status, title)| {
            json!({"type": format!("{PROBLEM_BASE}{slug}"), "status": status, "title": title})
        })
        .collect();
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "chat-api",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Stateless chat HTTP API. Ids are 64-bit and sent as decimal strings. \
            Errors are application/problem+json (RFC 9457); see x-problem-types. The limits \
            stated here are this process's configuration.",
        "x-problem-types": problem_types
    });
    doc["security"] = json!([{"bearer": []}]);
    doc["components"]["securitySchemes"] =
        json!({"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}});
    doc["webhooks"] = webhooks();
    for missing in apply_limits(&mut doc, limits) {
        tracing::warn!(%missing, "the OpenAPI document has no place for a limit");
    }
    doc
}

/// Writes the configured limits into the schemas and parameters they bound; returns the places
/// it did not find (a renamed type or field), which a test keeps empty.
pub fn apply_limits(doc: &mut Value, limits: &Limits) -> Vec<String> {
    use crate::api::chats::CHATS_PAGE_MAX;
    use crate::api::receipts::{RECEIPTS_BROADCAST_MEMBERS_MAX, UNREAD_COUNT_MAX};
    let body = json!({"minLength": 1, "x-max-bytes": limits.message_body_bytes_max,
        "description": format!("1 to {} bytes of UTF-8", limits.message_body_bytes_max)});
    let members = limits.members_per_chat_max;
    let page = json!({"minimum": 1, "default": limits.page_size_default,
        "description": format!("page size, capped at {}", limits.page_size_max)});
    let presence = &limits.presence;
    let mut edits = Edits::new(doc);
    edits.merge(
        "/components/schemas/SendMessage/properties/body",
        body.clone(),
    );
    edits.merge("/components/schemas/EditMessage/properties/body", body);
    edits.merge(
        "/components/schemas/SendMessage/properties/client_msg_id",
        json!({"minLength": 1, "maxLength": limits.client_msg_id_chars_max,
            "description": "the sender's id of this message: a retry with the same id returns the original"}),
    );
    edits.merge(
        "/components/schemas/CreateChat/properties/title",
        json!({"minLength": 1, "maxLength": limits.title_chars_max}),
    );
    edits.merge(
        "/components/schemas/CreateChat/properties/members",
        json!({"maxItems": members, "description": format!(
            "the other members (the caller is added); a chat holds at most {members} members")}),
    );
    edits.merge(
        "/components/schemas/AddMembers/properties/user_ids",
        json!({"minItems": 1, "maxItems": members, "description": format!(
            "a chat holds at most {members} members")}),
    );
    edits.merge(
        "/components/schemas/PushRequest/properties/user_ids",
        json!({"minItems": 1, "maxItems": limits.push_users_max}),
    );
    edits.merge(
        "/components/schemas/UnreadState/properties/unread_count",
        json!({"minimum": 0, "maximum": UNREAD_COUNT_MAX}),
    );
    edits.merge(
        "/components/schemas/UnreadState/properties/unread_capped",
        json!({"description": format!("there may be more than `unread_count` (show \"{UNREAD_COUNT_MAX}+\"): \
            each count reads at most {} messages above the marker", UNREAD_COUNT_MAX + 1)}),
    );
    edits.param("/v1/chats/{chat_id}/messages", "get", "limit", page.clone());
    edits.param("/v1/chats/{chat_id}/changes", "get", "limit", page);
    edits.param(
        "/v1/chats",
        "get",
        "limit",
        json!({"minimum": 1, "default": CHATS_PAGE_MAX,
            "description": format!("page size, capped at {CHATS_PAGE_MAX}")}),
    );
    edits.param(
        "/v1/presence",
        "get",
        "user_ids",
        json!({"description": format!("comma-separated user ids, at most {}",
            limits.presence_users_max)}),
    );
    edits.replace(
        "/v1/presence",
        "get",
        "API_PRESENCE_MAX_CHAT_MEMBERS",
        &format!(
            "API_PRESENCE_MAX_CHAT_MEMBERS ({})",
            presence.max_chat_members
        ),
    );
    edits.replace(
        "/v1/presence",
        "get",
        "API_PRESENCE_MAX_CHATS",
        &format!("API_PRESENCE_MAX_CHATS ({})", presence.max_chats),
    );
    for route in ["/v1/chats/{chat_id}/read", "/v1/chats/{chat_id}/delivered"] {
        edits.replace(
            route,
            "post",
            "RECEIPTS_BROADCAST_MEMBERS_MAX",
            &RECEIPTS_BROADCAST_MEMBERS_MAX.to_string(),
        );
    }
    edits.missing
}

/// Edits of the document by JSON pointer, remembering the places that were not there.
struct Edits<'a> {
    doc: &'a mut Value,
    missing: Vec<String>,
}

impl<'a> Edits<'a> {
    fn new(doc: &'a mut Value) -> Self {
        Edits {
            doc,
            missing: Vec::new(),
        }
    }

    /// Sets the fields of `with` in the object at `pointer`.
    fn merge(&mut self, pointer: &str, with: Value) {
        match (self.doc.pointer_mut(pointer), with) {
            (Some(Value::Object(target)), Value::Object(with)) => target.extend(with),
            _ => self.missing.push(pointer.to_string()),
        }
    }

    fn operation(&mut self, path: &str, method: &str) -> Option<&mut Value> {
        let pointer = format!(
            "/paths/{}/{method}",
            path.replace('~', "~0").replace('/', "~1")
        );
        self.doc.pointer_mut(&pointer)
    }

    /// Sets the fields of `with` in the schema of parameter `name` of an operation (the
    /// description on the parameter itself).
    fn param(&mut self, path: &str, method: &str, name: &str, mut with: Value) {
        let place = format!("{method} {path} parameter {name}");
        let parameter = self.operation(path, method).and_then(|op| {
            op["parameters"]
                .as_array_mut()?
                .iter_mut()
                .find(|p| p["name"] == name)
        });
        let (Some(parameter), Some(with)) = (parameter, with.as_object_mut()) else {
            self.missing.push(place);
            return;
        };
        if let Some(description) = with.remove("description") {
            parameter["description"] = description;
        }
        match parameter["schema"].as_object_mut() {
            Some(schema) => schema.extend(with.clone()),
            None => self.missing.push(place),
        }
    }

    /// Replaces `from` in an operation's description.
    fn replace(&mut self, path: &str, method: &str, from: &str, to: &str) {
        let place = format!("{method} {path} description ({from})");
        let description = self
            .operation(path, method)
            .and_then(|op| op.get_mut("description"));
        match description {
            Some(Value::String(text)) if text.contains(from) => *text = text.replace(from, to),
            _ => self.missing.push(place),
        }
    }
}

/// The offline hook's webhook: sent by chat-api, so no route of it is served.
fn webhooks() -> Value {
    json!({
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
                    "user_id": {"type": "string"},
                    "chat_id": {"$ref": "#/components/schemas/Id"},
                    "message_ids": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Id"},
                        "description": "ascending, no duplicates"},
                    "count": {"type": "integer", "minimum": 1},
                    "preview": {"type": "string",
                        "description": "start of the newest message's body (NOTIFY_PREVIEW_CHARS); absent when previews are off"}}}}}},
            "responses": {"2XX": {"description": "taken; the batch is not sent again"},
                "default": {"description": "retried later with the same Idempotency-Key"}}
        }}
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Limits;

    #[test]
    fn every_limit_finds_its_place() {
        let (_, api) = crate::app::route_list().split_for_parts();
        let mut doc = serde_json::to_value(&api).unwrap();
        let missing = super::apply_limits(&mut doc, &Limits::default());
        assert!(missing.is_empty(), "limits without a place: {missing:?}");
    }
}
