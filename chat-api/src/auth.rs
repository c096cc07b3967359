//! Caller extractors: verify the `Authorization: Bearer` token (signature, claims, and that its
//! subject's tokens were not revoked) and sort callers into users and services. Service tokens
//! (those with a `scope` claim) may only push, read presence and, with the `admin` scope, call
//! `/v1/admin/…`; user tokens may do neither.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use shared::auth::{token_from_request, AuthError, Identity};
use shared::ratelimit::{check_all_fail_open, check_fail_open, Check, Decision};
use shared::telemetry::bucket;

use crate::app::AppState;
use crate::error::ApiError;
use crate::telemetry::{limit, AUTH_FAILURES_TOTAL};

/// Any authenticated caller, user or service.
#[derive(Clone, Debug)]
pub struct Caller(pub Identity);

/// An end user (a token without scopes); the chat endpoints take this.
#[derive(Clone, Debug)]
pub struct User(pub Identity);

impl User {
    pub fn id(&self) -> &str {
        &self.0.subject
    }
}

/// A service holding the `push` scope.
#[derive(Clone, Debug)]
pub struct Pusher(pub Identity);

pub const PUSH_SCOPE: &str = "push";

/// A service holding the `admin` scope (operators' tools: `/v1/admin/…`).
#[derive(Clone, Debug)]
pub struct Admin(pub Identity);

pub const ADMIN_SCOPE: &str = "admin";

/// An end user making a write (send, edit, delete): the request budget and the write budget
/// (`RATE_LIMIT_MESSAGES`, which edits and deletes share with sends) are spent together, in one
/// call to the limiter (one Redis round trip instead of two). The write budget is spent before
/// the body is read, so a refused or invalid write counts as a write.
#[derive(Clone, Debug)]
pub struct Writer(pub User);

/// Verifies the caller, then spends one unit of the caller's request budget.
async fn verify(parts: &Parts, state: &AppState) -> Result<Identity, ApiError> {
    let identity = authenticate(parts, state).await?;
    meter_requests(&identity, state).await?;
    Ok(identity)
}

/// Verifies the token and that it was not revoked; spends no budget.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Identity, ApiError> {
    let identity = verify_token(parts, state)?;
    if state.revocations.is_revoked(&identity).await {
        metrics::counter!(crate::telemetry::AUTH_FAILURES_TOTAL, "reason" => crate::telemetry::auth_reason::REVOKED).increment(1);
        return Err(ApiError::Unauthorized(
            "token revoked: tokens of this user issued before an operator's revoke are refused; \
             get a new one"
                .into(),
        ));
    }
    Ok(identity)
}

/// Spends one unit of the caller's request budget.
async fn meter_requests(identity: &Identity, state: &AppState) -> Result<(), ApiError> {
    if let Some(quota) = &state.limits.rate_requests {
        if let Decision::Limited { retry_after } =
            check_fail_open(&*state.limiter, bucket::REQUESTS, &identity.subject, quota).await
        {
            return Err(state
                .rate_limited(limit::USER_REQUESTS, "requests", retry_after)
                .await);
        }
    }
    Ok(())
}

/// Refuses service tokens where an end user is expected.
fn end_user(id: Identity) -> Result<User, ApiError> {
    if id.is_service() {
        return Err(ApiError::Forbidden(
            "service tokens may only call /v1/push, /v1/presence and (scope `admin`) /v1/admin"
                .into(),
        ));
    }
    Ok(User(id))
}

fn verify_token(parts: &Parts, state: &AppState) -> Result<Identity, ApiError> {
    let header = match parts.headers.get(AUTHORIZATION) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::Unauthorized("the Authorization header is not valid ASCII".into())
        })?),
    };
    // HTTP clients use the header; the `access_token` query form is for browser WebSockets only.
    let token = token_from_request(header, None).ok_or_else(|| {
        ApiError::Unauthorized(match header {
            None => AuthError::Missing.to_string(),
            Some(_) => "the Authorization header must be `Bearer <token>`".into(),
        })
    })?;
    state.verifier.verify(&token).map_err(|e| {
        metrics::counter!(AUTH_FAILURES_TOTAL, "reason" => e.reason()).increment(1);
        ApiError::Unauthorized(e.to_string())
    })
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        verify(parts, state).await.map(Caller)
    }
}

impl FromRequestParts<Arc<AppState>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        end_user(verify(parts, state).await?)
    }
}

impl FromRequestParts<Arc<AppState>> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let identity = authenticate(parts, state).await?;
        let limits = &state.limits;
        let quotas = [
            (bucket::REQUESTS, limits.rate_requests.as_ref()),
            (bucket::MESSAGES, limits.rate_messages.as_ref()),
        ];
        let checks: Vec<Check<'_>> = quotas
            .iter()
            .filter_map(|&(bucket, quota)| {
                quota.map(|quota| Check {
                    bucket,
                    key: &identity.subject,
                    quota,
                })
            })
            .collect();
        if !checks.is_empty() {
            if let Some((bucket, Decision::Limited { retry_after })) =
                check_all_fail_open(&*state.limiter, &checks).await
            {
                let (label, what) = if bucket == bucket::REQUESTS {
                    (limit::USER_REQUESTS, "requests")
                } else {
                    (limit::USER_MESSAGES, "messages")
                };
                return Err(state.rate_limited(label, what, retry_after).await);
            }
        }
        end_user(identity).map(Writer)
    }
}

impl FromRequestParts<Arc<AppState>> for Pusher {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let id = verify(parts, state).await?;
        if !id.is_service() {
            return Err(ApiError::Forbidden(
                "user tokens cannot push; use a service token with the `push` scope".into(),
            ));
        }
        if !id.has_scope(PUSH_SCOPE) {
            return Err(ApiError::Forbidden(
                "this service token lacks the `push` scope".into(),
            ));
        }
        Ok(Pusher(id))
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let id = verify(parts, state).await?;
        if !id.is_service() {
            return Err(ApiError::Forbidden(
                "user tokens cannot call the admin API; use a service token with the `admin` scope"
                    .into(),
            ));
        }
        if !id.has_scope(ADMIN_SCOPE) {
            return Err(ApiError::Forbidden(
                "this service token lacks the `admin` scope".into(),
            ));
        }
        Ok(Admin(id))
    }
}
