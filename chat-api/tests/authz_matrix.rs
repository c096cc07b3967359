//! The authorization matrix: every HTTP endpoint × every kind of caller, each cell on a fresh app
//! (real SQLite store), asserting the exact status and problem type, and that no answer to a
//! caller outside chat A carries anything of chat A (title, message bodies, member names).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chat_api::store::sqlite::SqliteStore;
use chat_api::{app, AppState, Limits};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use shared::auth::{Signer, DEV_SECRET};
use shared::routing::memory::{MemoryBus, MemoryRegistry};
use shared::IdGenerator;
use tower::ServiceExt;

/// Strings only chat A's members may ever see.
const SECRETS: &[&str] = &[
    "title-of-chat-a-7f3e",
    "body-of-chat-a-91c2",
    "member-two-ab12",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// Created chat A.
    Owner,
    /// A member of chat A who did not create it (the author of its first message).
    Member,
    /// A member of chat A granted `admin` by the owner.
    Admin,
    /// Never a member of chat A (has a chat B of its own).
    Stranger,
    /// Was a member of chat A and was removed.
    Removed,
    /// A service token with the `push` scope.
    ServicePush,
    /// A service token with another scope.
    ServiceOther,
    /// A service token with the `admin` scope.
    ServiceAdmin,
    /// A token signed with another key.
    Forged,
    /// No token.
    Anonymous,
}

const EVERYONE: [Who; 10] = [
    Who::Owner,
    Who::Member,
    Who::Admin,
    Who::Stranger,
    Who::Removed,
    Who::ServicePush,
    Who::ServiceOther,
    Who::ServiceAdmin,
    Who::Forged,
    Who::Anonymous,
];

struct World {
    router: Router,
    signer: Signer,
    chat_a: String,
    chat_b: String,
    /// member-two's message in chat A.
    message_m: String,
    /// owner-one's message in chat A.
    message_o: String,
    _dir: tempfile::TempDir,
}

impl World {
    fn token(&self, who: Who) -> Option<String> {
        let ttl = Duration::from_secs(600);
        Some(match who {
            Who::Owner => self.signer.token("owner-one", ttl, None),
            Who::Member => self.signer.token("member-two-ab12", ttl, None),
            Who::Admin => self.signer.token("admin-three", ttl, None),
            Who::Stranger => self.signer.token("stranger", ttl, None),
            Who::Removed => self.signer.token("removed-r", ttl, None),
            Who::ServicePush => self.signer.token("billing", ttl, Some("push")),
            Who::ServiceOther => self.signer.token("reports", ttl, Some("metrics")),
            Who::ServiceAdmin => self.signer.token("ops-console", ttl, Some("admin")),
            Who::Forged => Signer::hmac(
                jsonwebtoken::Algorithm::HS256,
                b"not-the-server-key-0123456789-abcdefgh",
            )
            .token("owner-one", ttl, None),
            Who::Anonymous => return None,
        })
    }

    async fn call(&self, who: Who, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = self.token(who) {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            content_type,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

struct Reply {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Reply {
    fn problem_type(&self) -> Option<String> {
        if self.content_type != "application/problem+json" {
            return None;
        }
        let v: Value = serde_json::from_str(&self.text).ok()?;
        Some(
            v["type"]
                .as_str()?
                .trim_start_matches("https://chat.example/problems/")
                .to_string(),
        )
    }
}

/// A fresh app: chat A (owner-one, member-two-ab12, admin-three made admin, third-member;
/// removed-r was in it and was removed) with a message by member-two and one by owner-one, and
/// chat B (stranger, owner-one).
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("chat.db")).unwrap());
    let verifier = shared::testkit::dev_key_verifier(Duration::from_secs(2));
    let state = AppState::new(
        store,
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::new(1024)),
        verifier,
        Arc::new(IdGenerator::new(3)),
    )
    .with_limits(Limits::default());
    let mut w = World {
        router: app(state),
        signer: Signer::hmac(jsonwebtoken::Algorithm::HS256, DEV_SECRET.as_bytes()),
        chat_a: String::new(),
        chat_b: String::new(),
        message_m: String::new(),
        message_o: String::new(),
        _dir: dir,
    };
    let r = w
        .call(
            Who::Owner,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": ["member-two-ab12", "admin-three", "third-member", "removed-r"], "title": SECRETS[0]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    w.chat_a = serde_json::from_str::<Value>(&r.text).unwrap()["chat_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = w
        .call(
            Who::Member,
            Method::POST,
            &format!("/v1/chats/{}/messages", w.chat_a),
            Some(json!({"client_msg_id": "m1", "body": SECRETS[1]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    w.message_m = serde_json::from_str::<Value>(&r.text).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = w
        .call(
            Who::Owner,
            Method::POST,
            &format!("/v1/chats/{}/messages", w.chat_a),
            Some(json!({"client_msg_id": "o1", "body": "from the owner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    w.message_o = serde_json::from_str::<Value>(&r.text).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = w
        .call(
            Who::Owner,
            Method::PATCH,
            &format!("/v1/chats/{}/members/admin-three", w.chat_a),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = w
        .call(
            Who::Owner,
            Method::DELETE,
            &format!("/v1/chats/{}/members/removed-r", w.chat_a),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = w
        .call(
            Who::Stranger,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": ["owner-one"], "title": "chat b"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    w.chat_b = serde_json::from_str::<Value>(&r.text).unwrap()["chat_id"]
        .as_str()
        .unwrap()
        .to_string();
    w
}

/// One endpoint of the matrix. `{a}` and `{b}` in the path stand for the chat ids.
struct Endpoint {
    method: Method,
    path: &'static str,
    body: Option<fn() -> Value>,
    /// Expected (status, problem type) per caller kind.
    expect: fn(Who) -> (u16, &'static str),
}

/// Authentication failures are the same everywhere.
fn auth_first(who: Who) -> Option<(u16, &'static str)> {
    match who {
        Who::Anonymous | Who::Forged => Some((401, "unauthorized")),
        _ => None,
    }
}

/// Chat endpoints: users only; inside chat A members only.
fn chat_a_members(ok: u16) -> impl Fn(Who) -> (u16, &'static str) {
    move |who| {
        auth_first(who).unwrap_or(match who {
            Who::Owner | Who::Member | Who::Admin => (ok, ""),
            Who::Stranger | Who::Removed => (403, "not-a-member"),
            _ => (403, "forbidden"),
        })
    }
}

/// Moderation in chat A: the owner and the admin; a plain member is refused.
fn moderators(who: Who, ok: u16) -> (u16, &'static str) {
    auth_first(who).unwrap_or(match who {
        Who::Owner | Who::Admin => (ok, ""),
        Who::Member => (403, "forbidden"),
        Who::Stranger | Who::Removed => (403, "not-a-member"),
        _ => (403, "forbidden"),
    })
}

/// The owner of chat A alone.
fn owner_only(who: Who, ok: u16) -> (u16, &'static str) {
    auth_first(who).unwrap_or(match who {
        Who::Owner => (ok, ""),
        Who::Member | Who::Admin => (403, "forbidden"),
        Who::Stranger | Who::Removed => (403, "not-a-member"),
        _ => (403, "forbidden"),
    })
}

/// Members of chat A get `problem`; everyone else what they get anywhere in chat A.
fn chat_a_members_problem(who: Who, status: u16, problem: &'static str) -> (u16, &'static str) {
    match chat_a_members(0)(who) {
        (0, _) => (status, problem),
        other => other,
    }
}

/// Admin endpoints: service tokens with the `admin` scope only; users and other scopes 403.
fn admin_only(ok: u16) -> impl Fn(Who) -> (u16, &'static str) {
    move |who| {
        auth_first(who).unwrap_or(match who {
            Who::ServiceAdmin => (ok, ""),
            _ => (403, "forbidden"),
        })
    }
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: Method::GET,
            path: "/v1/chats",
            body: None,
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::ServicePush | Who::ServiceOther | Who::ServiceAdmin => (403, "forbidden"),
                    _ => (200, ""),
                })
            },
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/chats",
            body: Some(|| json!({"members": ["someone-else"]})),
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::ServicePush | Who::ServiceOther | Who::ServiceAdmin => (403, "forbidden"),
                    _ => (201, ""),
                })
            },
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/chats/{a}",
            body: None,
            expect: |w| chat_a_members(200)(w),
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/chats/{a}/members",
            body: Some(|| json!({"user_ids": ["newcomer"]})),
            expect: |w| chat_a_members(200)(w),
        },
        Endpoint {
            // Removing a plain member: an owner or admin.
            method: Method::DELETE,
            path: "/v1/chats/{a}/members/third-member",
            body: None,
            expect: |w| moderators(w, 204),
        },
        Endpoint {
            // Removing the owner: only the owner (leaving); an admin may not.
            method: Method::DELETE,
            path: "/v1/chats/{a}/members/owner-one",
            body: None,
            expect: |w| owner_only(w, 204),
        },
        Endpoint {
            // Removing an admin: the owner, or the admin leaving.
            method: Method::DELETE,
            path: "/v1/chats/{a}/members/admin-three",
            body: None,
            expect: |w| moderators(w, 204),
        },
        Endpoint {
            method: Method::PATCH,
            path: "/v1/chats/{a}/members/third-member",
            body: Some(|| json!({"role": "admin"})),
            expect: |w| owner_only(w, 200),
        },
        Endpoint {
            // The owner revokes an admin.
            method: Method::PATCH,
            path: "/v1/chats/{a}/members/admin-three",
            body: Some(|| json!({"role": "member"})),
            expect: |w| owner_only(w, 200),
        },
        Endpoint {
            // Only a member can be given a role.
            method: Method::PATCH,
            path: "/v1/chats/{a}/members/removed-r",
            body: Some(|| json!({"role": "admin"})),
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::Owner => (404, "member-not-found"),
                    Who::Member | Who::Admin => (403, "forbidden"),
                    Who::Stranger | Who::Removed => (403, "not-a-member"),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            // The owner's role is not for anyone to change.
            method: Method::PATCH,
            path: "/v1/chats/{a}/members/owner-one",
            body: Some(|| json!({"role": "member"})),
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::Owner => (409, "conflict"),
                    Who::Member | Who::Admin => (403, "forbidden"),
                    Who::Stranger | Who::Removed => (403, "not-a-member"),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            // Editing: the author only (member-two wrote {m}).
            method: Method::PATCH,
            path: "/v1/chats/{a}/messages/{m}",
            body: Some(|| json!({"body": "corrected"})),
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::Member => (200, ""),
                    Who::Owner | Who::Admin => (403, "forbidden"),
                    Who::Stranger | Who::Removed => (403, "not-a-member"),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            method: Method::PATCH,
            path: "/v1/chats/{a}/messages/123456789",
            body: Some(|| json!({"body": "corrected"})),
            expect: |w| chat_a_members_problem(w, 404, "message-not-found"),
        },
        Endpoint {
            // Deleting member-two's message: its author, an owner or an admin.
            method: Method::DELETE,
            path: "/v1/chats/{a}/messages/{m}",
            body: None,
            expect: |w| chat_a_members(204)(w),
        },
        Endpoint {
            // Deleting the owner's message: not a plain member who did not write it.
            method: Method::DELETE,
            path: "/v1/chats/{a}/messages/{o}",
            body: None,
            expect: |w| moderators(w, 204),
        },
        Endpoint {
            method: Method::DELETE,
            path: "/v1/chats/{a}/messages/123456789",
            body: None,
            expect: |w| chat_a_members_problem(w, 404, "message-not-found"),
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/chats/{a}/changes?after=0&limit=10",
            body: None,
            expect: |w| chat_a_members(200)(w),
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/chats/{b}/changes",
            body: None,
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::Stranger | Who::Owner => (200, ""),
                    Who::Member | Who::Removed | Who::Admin => (403, "not-a-member"),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/chats/{a}/messages",
            body: Some(|| json!({"client_msg_id": "x1", "body": "hello"})),
            expect: |w| chat_a_members(201)(w),
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/chats/{a}/messages?limit=50",
            body: None,
            expect: |w| chat_a_members(200)(w),
        },
        Endpoint {
            // A chat that does not exist answers exactly like one the caller is not in.
            method: Method::GET,
            path: "/v1/chats/999999999999/messages",
            body: None,
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::ServicePush | Who::ServiceOther | Who::ServiceAdmin => (403, "forbidden"),
                    _ => (403, "not-a-member"),
                })
            },
        },
        Endpoint {
            // Any id at or below the newest message: accepted, whatever it changes.
            method: Method::POST,
            path: "/v1/chats/{a}/read",
            body: Some(|| json!({"message_id": "1"})),
            expect: |w| chat_a_members(204)(w),
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/chats/{a}/delivered",
            body: Some(|| json!({"message_id": "18446744073709551615"})),
            expect: |w| chat_a_members(204)(w),
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/chats/{a}/receipts",
            body: None,
            expect: |w| chat_a_members(200)(w),
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/chats/999999999999/read",
            body: Some(|| json!({"message_id": "1"})),
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::ServicePush | Who::ServiceOther | Who::ServiceAdmin => (403, "forbidden"),
                    _ => (403, "not-a-member"),
                })
            },
        },
        Endpoint {
            // Chat B: only the stranger (its creator) and owner-one are members.
            method: Method::GET,
            path: "/v1/chats/{b}",
            body: None,
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::Stranger | Who::Owner => (200, ""),
                    Who::Member | Who::Removed | Who::Admin => (403, "not-a-member"),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/push",
            body: Some(|| json!({"user_ids": ["member-two-ab12"], "event": {"k": 1}})),
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::ServicePush => (202, ""),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/presence?user_ids=owner-one",
            body: None,
            expect: |w| auth_first(w).unwrap_or((200, "")),
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/admin/users/third-member/disconnect",
            body: None,
            expect: |w| admin_only(202)(w),
        },
        Endpoint {
            method: Method::POST,
            path: "/v1/admin/users/third-member/revoke",
            body: None,
            expect: |w| admin_only(200)(w),
        },
        Endpoint {
            // A user id that breaks the rules: refused before anything is revoked.
            method: Method::POST,
            path: "/v1/admin/users/a%20b/revoke",
            body: None,
            expect: |w| {
                auth_first(w).unwrap_or(match w {
                    Who::ServiceAdmin => (422, "validation-failed"),
                    _ => (403, "forbidden"),
                })
            },
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/admin/nodes",
            body: None,
            expect: |w| admin_only(200)(w),
        },
        Endpoint {
            method: Method::GET,
            path: "/healthz",
            body: None,
            expect: |_| (200, ""),
        },
        Endpoint {
            method: Method::GET,
            path: "/v1/openapi.json",
            body: None,
            expect: |_| (200, ""),
        },
    ]
}

#[tokio::test]
async fn every_endpoint_for_every_caller() {
    let mut failures = Vec::new();
    let mut cells = 0;
    for ep in endpoints() {
        for who in EVERYONE {
            let w = world().await;
            let path = ep
                .path
                .replace("{a}", &w.chat_a)
                .replace("{b}", &w.chat_b)
                .replace("{m}", &w.message_m)
                .replace("{o}", &w.message_o);
            let reply = w
                .call(who, ep.method.clone(), &path, ep.body.map(|b| b()))
                .await;
            cells += 1;
            let (status, kind) = (ep.expect)(who);
            let got_kind = reply.problem_type().unwrap_or_default();
            if reply.status.as_u16() != status || got_kind != kind {
                failures.push(format!(
                    "{} {} as {who:?}: expected {status} {kind:?}, got {} {got_kind:?}: {}",
                    ep.method, ep.path, reply.status, reply.text
                ));
            }
            if !reply.status.is_success() && reply.content_type != "application/problem+json" {
                failures.push(format!(
                    "{} {} as {who:?}: refusal is not problem+json",
                    ep.method, ep.path
                ));
            }
            // Chat A's content reaches only its current members.
            let may_see_a = matches!(who, Who::Owner | Who::Member | Who::Admin);
            if !may_see_a {
                for secret in SECRETS {
                    // The push endpoint's request names member-two as a recipient; the answer
                    // may not, and neither may anything else.
                    if reply.text.contains(secret) {
                        failures.push(format!(
                            "{} {} as {who:?}: answer leaks {secret:?}: {}",
                            ep.method, ep.path, reply.text
                        ));
                    }
                }
                if ep.path.starts_with("/v1/chats") && reply.status.is_success() {
                    assert!(
                        !reply.text.contains(&w.chat_a),
                        "{} {} as {who:?} lists chat A: {}",
                        ep.method,
                        ep.path,
                        reply.text
                    );
                }
            }
        }
    }
    assert!(cells >= 100, "{cells} cells");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The removed member's chat list no longer shows chat A, and a user in no chat sees an empty
/// list, not someone else's.
#[tokio::test]
async fn lists_show_only_own_chats() {
    let w = world().await;
    for (who, expect_a, expect_b) in [
        (Who::Owner, true, true),
        (Who::Member, true, false),
        (Who::Admin, true, false),
        (Who::Stranger, false, true),
        (Who::Removed, false, false),
    ] {
        let r = w.call(who, Method::GET, "/v1/chats", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text.contains(&w.chat_a), expect_a, "{who:?}: {}", r.text);
        assert_eq!(r.text.contains(&w.chat_b), expect_b, "{who:?}: {}", r.text);
    }
}

/// A revoke refuses the user's tokens issued before its `not_before`, and those without `iat`,
/// on every authenticated endpoint, while tokens issued from `not_before` on, and other users'
/// tokens, keep working.
#[tokio::test]
async fn a_revoke_refuses_older_tokens_over_http() {
    let w = world().await;
    let r = w
        .call(
            Who::ServiceAdmin,
            Method::POST,
            "/v1/admin/users/member-two-ab12/revoke",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let answer: Value = serde_json::from_str(&r.text).unwrap();
    let nbf = answer["not_before"].as_u64().unwrap();
    assert_eq!(answer["user_id"], "member-two-ab12");
    let now = shared::ids::now_unix_ms() / 1000;
    assert!(nbf > now && nbf <= now + 1, "not_before {nbf}, now {now}");
    let token = |iat: Option<u64>| {
        w.signer.sign(&shared::auth::Claims {
            sub: "member-two-ab12".into(),
            exp: now + 600,
            iat,
            nbf: None,
            iss: None,
            aud: None,
            scope: None,
        })
    };
    let get = |token: String| {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/v1/chats")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let router = w.router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    for (iat, want) in [
        (Some(nbf - 1), StatusCode::UNAUTHORIZED),
        (None, StatusCode::UNAUTHORIZED),
        (Some(nbf), StatusCode::OK),
        (Some(nbf + 5), StatusCode::OK),
    ] {
        let (status, body) = get(token(iat)).await;
        assert_eq!(status, want, "iat {iat:?}: {body}");
        if status == StatusCode::UNAUTHORIZED {
            assert!(body.contains("revoked"), "{body}");
        }
    }
    // Other users are untouched.
    let r = w.call(Who::Owner, Method::GET, "/v1/chats", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
