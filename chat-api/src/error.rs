//! The one error type of the HTTP API, rendered as `application/problem+json` (RFC 9457) with a
//! stable `type` URI per kind. Details of 5xx answers are logged once here and never sent.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::routing::RoutingError;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response as DocResponse, ResponseBuilder};

use crate::store::StoreError;

/// Prefix of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://chat.example/problems/";

/// Every problem type this API answers with: (slug, status, title). Kept in one list so that the
/// OpenAPI document and the tests can check them.
pub const PROBLEM_TYPES: &[(&str, u16, &str)] = &[
    ("unauthorized", 401, "Authentication required"),
    ("forbidden", 403, "Not allowed"),
    ("not-a-member", 403, "Not a member of this chat"),
    ("invalid-body", 400, "Request body is not valid"),
    ("invalid-query", 400, "Query string is not valid"),
    ("invalid-path", 400, "Path parameter is not valid"),
    ("validation-failed", 422, "A field is out of bounds"),
    ("payload-too-large", 413, "Request body too large"),
    ("unsupported-media-type", 415, "Expected application/json"),
    ("not-found", 404, "No such resource"),
    ("method-not-allowed", 405, "Method not allowed"),
    ("rate-limited", 429, "Too many requests"),
    ("service-unavailable", 503, "Temporarily unavailable"),
    ("timeout", 503, "Request timed out"),
    ("internal", 500, "Internal error"),
    ("message-not-found", 404, "No such message in this chat"),
    ("member-not-found", 404, "No such member of this chat"),
    ("conflict", 409, "Conflicts with the current state"),
];

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or invalid token; the detail says which.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (wrong kind of token, missing scope, not the chat's owner).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown chat or not a member: one answer, so that ids cannot be probed.
    #[error("you are not a member of this chat (or it does not exist)")]
    NotAMember,
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidPath(String),
    /// A field broke a rule or limit; `field` names it.
    #[error("{detail}")]
    Validation { field: &'static str, detail: String },
    #[error("request body exceeds {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("send the body as `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("no route for this path")]
    NotFound,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// A rate limit (`what`) is exhausted; retry after `retry_after`.
    #[error("too many {what}; retry after {retry_after:?}")]
    RateLimited {
        what: &'static str,
        retry_after: Duration,
    },
    /// A dependency (store, routing backend) is unreachable or overloaded; retry after `retry_after`.
    #[error("{what} unavailable: {reason}")]
    Unavailable {
        what: &'static str,
        reason: String,
        retry_after: Duration,
    },
    #[error("request exceeded its {0:?} deadline")]
    Timeout(Duration),
    #[error("{0}")]
    Internal(String),
    /// The caller is a member, but the chat holds no message with this id.
    #[error("this chat has no message with this id")]
    MessageNotFound,
    /// The caller may act on the chat, but the target user is not a member.
    #[error("this user is not a member of this chat")]
    MemberNotFound,
    /// The request contradicts the resource's state (editing a deleted message, changing the
    /// owner's role); the detail says which.
    #[error("{0}")]
    Conflict(String),
}

/// The errors every authenticated route may answer, for the OpenAPI document
/// (`#[utoipa::path(responses(…, AuthErrors))]`).
pub struct AuthErrors;

impl utoipa::IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<DocResponse>> {
        [
            ("401", "missing or invalid token (`unauthorized`)"),
            ("500", "internal error (`internal`)"),
            (
                "503",
                "a dependency is unavailable (`service-unavailable`, `timeout`); honour Retry-After",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/problem+json", content);
            (status.to_string(), response.into())
        })
        .collect()
    }
}

/// The RFC 9457 body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// For `rate-limited`: the wait in milliseconds (`Retry-After` has whole seconds only).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn validation(field: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::Validation {
            field,
            detail: detail.into(),
        }
    }

    /// Maps a store error; `retry_after` is the configured back-off for 503s.
    pub fn store(e: StoreError, retry_after: Duration) -> ApiError {
        match e {
            StoreError::Unavailable(reason) => ApiError::Unavailable {
                what: "message store",
                reason,
                retry_after,
            },
            StoreError::Internal(reason) => ApiError::Internal(format!("message store: {reason}")),
        }
    }

    pub fn routing(e: RoutingError, retry_after: Duration) -> ApiError {
        ApiError::Unavailable {
            what: "routing backend",
            reason: e.to_string(),
            retry_after,
        }
    }

    /// The problem type slug (the last segment of the `type` URI).
    pub fn slug(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotAMember => "not-a-member",
            ApiError::InvalidBody(_) => "invalid-body",
            ApiError::InvalidQuery(_) => "invalid-query",
            ApiError::InvalidPath(_) => "invalid-path",
            ApiError::Validation { .. } => "validation-failed",
            ApiError::PayloadTooLarge { .. } => "payload-too-large",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::NotFound => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Unavailable { .. } => "service-unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
            ApiError::MessageNotFound => "message-not-found",
            ApiError::MemberNotFound => "member-not-found",
            ApiError::Conflict(_) => "conflict",
        }
    }

    fn status_and_title(&self) -> (StatusCode, &'static str) {
        let slug = self.slug();
        let (_, status, title) = PROBLEM_TYPES
            .iter()
            .find(|(s, _, _)| *s == slug)
            .copied()
            .unwrap_or(("internal", 500, "Internal error"));
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            title,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title) = self.status_and_title();
        metrics::counter!(crate::telemetry::REJECTED_TOTAL, "reason" => self.slug()).increment(1);
        let detail = if status.is_server_error() {
            // The cause goes to the log, once; the client gets a generic sentence.
            match &self {
                ApiError::Internal(_) => {
                    tracing::error!(error = %self, "request failed");
                    metrics::counter!(crate::telemetry::INTERNAL_ERRORS_TOTAL).increment(1);
                    "an internal error occurred; it has been logged".to_string()
                }
                ApiError::Unavailable { what, .. } => {
                    tracing::warn!(error = %self, "dependency unavailable");
                    format!("the {what} is unavailable; retry later")
                }
                _ => {
                    tracing::warn!(error = %self, "request timed out");
                    "the request took too long; retry later".to_string()
                }
            }
        } else {
            self.to_string()
        };
        let field = match &self {
            ApiError::Validation { field, .. } => Some(*field),
            _ => None,
        };
        let body = Problem {
            kind: format!("{PROBLEM_BASE}{}", self.slug()),
            title,
            status: status.as_u16(),
            detail,
            field,
            retry_after_ms: match &self {
                ApiError::RateLimited { retry_after, .. } => {
                    Some(retry_after.as_millis().max(1) as u64)
                }
                _ => None,
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"chat\""),
                );
            }
            ApiError::Unavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, retry_after_value(*retry_after));
            }
            ApiError::Timeout(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, retry_after_ceil(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds rounded up, at least 1: a client that waits this long is allowed again.
fn retry_after_ceil(d: Duration) -> HeaderValue {
    HeaderValue::from(shared::ratelimit::retry_after_secs(d))
}

/// Whole seconds, at least 1 (the header has no fractions).
fn retry_after_value(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_listed_type() {
        let all = [
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::NotAMember,
            ApiError::InvalidBody(String::new()),
            ApiError::InvalidQuery(String::new()),
            ApiError::InvalidPath(String::new()),
            ApiError::validation("x", ""),
            ApiError::PayloadTooLarge { limit_bytes: 1 },
            ApiError::UnsupportedMediaType,
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::RateLimited {
                what: "x",
                retry_after: Duration::ZERO,
            },
            ApiError::Unavailable {
                what: "x",
                reason: String::new(),
                retry_after: Duration::ZERO,
            },
            ApiError::Timeout(Duration::ZERO),
            ApiError::Internal(String::new()),
            ApiError::MessageNotFound,
            ApiError::MemberNotFound,
            ApiError::Conflict(String::new()),
        ];
        assert_eq!(all.len(), PROBLEM_TYPES.len());
        for e in all {
            let slug = e.slug();
            assert!(PROBLEM_TYPES.iter().any(|(s, _, _)| *s == slug), "{slug}");
        }
    }

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        use http_body_util::BodyExt;
        let r = ApiError::Internal("secret path /var/db".into()).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "https://chat.example/problems/internal");
        assert_eq!(v["status"], 500);
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
        let r = ApiError::store(
            StoreError::Unavailable("disk /x full".into()),
            Duration::from_millis(1500),
        )
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
