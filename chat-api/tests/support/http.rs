//! An HTTP client of the public API: every answer as status, `Retry-After`, replay flag and JSON
//! body; sends whose transport failure is an error to retry rather than a panic.

use std::time::Duration;

use serde_json::Value;

use shared::Id;

/// One HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<String>,
    /// `Idempotent-Replayed: true` was set (a retried send returned the stored original).
    pub replayed: bool,
    pub body: Value,
}

#[derive(Clone)]
pub struct Http {
    pub(crate) client: reqwest::Client,
}

impl Http {
    pub(crate) fn new() -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("HTTP client"),
        }
    }

    pub(crate) async fn ready(&self, url: &str) -> bool {
        matches!(
            self.client.get(url).timeout(Duration::from_secs(1)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    async fn finish(r: reqwest::Result<reqwest::Response>, what: &str) -> Resp {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        Self::read(r).await
    }

    async fn read(r: reqwest::Response) -> Resp {
        let replayed = r
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            retry_after,
            replayed,
            body,
        }
    }

    pub async fn post(&self, base: &str, token: &str, path: &str, body: &Value) -> Resp {
        let r = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        Self::finish(r, &format!("POST {base}{path}")).await
    }

    pub async fn patch(&self, base: &str, token: &str, path: &str, body: &Value) -> Resp {
        let r = self
            .client
            .patch(format!("{base}{path}"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        Self::finish(r, &format!("PATCH {base}{path}")).await
    }

    pub async fn delete(&self, base: &str, token: &str, path: &str) -> Resp {
        let r = self
            .client
            .delete(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await;
        Self::finish(r, &format!("DELETE {base}{path}")).await
    }

    pub async fn get(&self, base: &str, token: &str, path: &str) -> Resp {
        let r = self
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await;
        Self::finish(r, &format!("GET {base}{path}")).await
    }

    /// A send whose transport failure (a replica killed mid-request, a refused connection) is an
    /// `Err` to retry, not a panic; each attempt bounded by `limit`.
    pub async fn try_send_message(
        &self,
        base: &str,
        token: &str,
        chat: Id,
        client_msg_id: &str,
        body: &str,
        limit: Duration,
    ) -> Result<Resp, String> {
        let r = self
            .client
            .post(format!("{base}/v1/chats/{chat}/messages"))
            .bearer_auth(token)
            .timeout(limit)
            .json(&serde_json::json!({ "client_msg_id": client_msg_id, "body": body }))
            .send()
            .await
            // Debug keeps the cause (refused, reset, incomplete message).
            .map_err(|e| format!("{e:?}"))?;
        Ok(Self::read(r).await)
    }

    pub async fn send_message(
        &self,
        base: &str,
        token: &str,
        chat: Id,
        client_msg_id: &str,
        body: &str,
    ) -> Resp {
        self.post(
            base,
            token,
            &format!("/v1/chats/{chat}/messages"),
            &serde_json::json!({ "client_msg_id": client_msg_id, "body": body }),
        )
        .await
    }
}
