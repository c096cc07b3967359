//! The admin API across real processes (a private Redis, two `gateway` nodes, two `chat-api
//! serve` replicas): the node listing with socket counts, a disconnect and a revoke that close
//! every socket of one user on both nodes within a second with their documented close codes while
//! other users stay connected, and after the revoke the old token refused for connecting,
//! refreshing and HTTP on every node and replica while a token issued after it works.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use shared::close::CloseCode;
use shared::protocol::{ClientFrame, Encoding, ErrorCode, ServerFrame};
use support::{now_ms, Cluster, Options, Recv, WsClient};

const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The bound the admin API promises for closing a user's sockets on every node.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// `GET /v1/admin/nodes` until every node reports `want` sockets (in node order), within `limit`.
async fn await_node_counts(
    cluster: &Cluster,
    api: usize,
    admin: &str,
    want: &[u64],
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = cluster
            .http
            .get(cluster.api(api), admin, "/v1/admin/nodes")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let counts: Vec<Option<u64>> = cluster
            .gateways
            .iter()
            .map(|g| {
                r.body["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["node_id"] == g.node_id.as_str())
                    .and_then(|n| n["sockets"].as_u64())
            })
            .collect();
        if counts.iter().copied().eq(want.iter().map(|w| Some(*w))) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "node counts {counts:?}, want {want:?}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every socket of `sockets` gets a close frame with `code` before `deadline`.
async fn assert_closed_with(sockets: &mut [WsClient], code: CloseCode, deadline: Instant) {
    let codes = join_all(sockets.iter_mut().map(|s| s.close_code(deadline))).await;
    assert!(
        codes.iter().all(|c| *c == Some(code.code())),
        "close codes {codes:?}, want {} on every socket",
        code.code()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disconnect_revoke_and_node_listing_across_two_gateways() {
    support::bounded_by(TEST_LIMIT, async {
        let cluster = Cluster::start(Options::default()).await;
        let admin = cluster.service_token("ops-console", "admin");
        let http = &cluster.http;

        // Nothing of the admin API for a user or a push service.
        for token in [
            cluster.token("victim"),
            cluster.service_token("billing", "push"),
        ] {
            let r = http.get(cluster.api(0), &token, "/v1/admin/nodes").await;
            assert_eq!(r.status, 403, "{}", r.body);
            let r = http
                .post(
                    cluster.api(1),
                    &token,
                    "/v1/admin/users/victim/revoke",
                    &Value::Null,
                )
                .await;
            assert_eq!(r.status, 403, "{}", r.body);
        }

        // The victim holds one socket on node 0 and two on node 1; a bystander one on each.
        let mut victim = vec![
            cluster.connect(0, "victim", Encoding::Json).await,
            cluster.connect(1, "victim", Encoding::Msgpack).await,
            cluster.connect(1, "victim", Encoding::Json).await,
        ];
        let mut bystanders = vec![
            cluster.connect(0, "bystander", Encoding::Msgpack).await,
            cluster.connect(1, "bystander", Encoding::Json).await,
        ];
        let listing = await_node_counts(&cluster, 1, &admin, &[2, 3], Duration::from_secs(5)).await;
        assert_eq!(listing["sockets"], 5, "{listing}");
        for node in listing["nodes"].as_array().unwrap() {
            let inc = node["incarnation"].as_str().unwrap();
            assert!(inc.parse::<u64>().is_ok(), "{node}");
            assert_eq!(node["users"], 2, "{node}");
        }

        // Disconnect: every socket of the victim closes with 4104 within a second.
        let asked = Instant::now();
        let r = http
            .post(
                cluster.api(0),
                &admin,
                "/v1/admin/users/victim/disconnect",
                &Value::Null,
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.body["nodes"], 2, "{}", r.body);
        assert_closed_with(&mut victim, CloseCode::Disconnected, asked + CLOSE_WITHIN).await;
        eprintln!(
            "disconnect closed 3 sockets on 2 nodes in {:?}",
            asked.elapsed()
        );
        for b in &mut bystanders {
            b.ping(Duration::from_secs(2)).await;
        }
        await_node_counts(&cluster, 0, &admin, &[1, 1], Duration::from_secs(5)).await;

        // A disconnect leaves the token good: the victim reconnects with the same one.
        let old_token = cluster.token("victim");
        let mut victim = vec![
            WsClient::connect(&cluster.gateways[0].ws_url(), &old_token, Encoding::Msgpack)
                .await
                .expect("reconnect after a disconnect"),
            WsClient::connect(&cluster.gateways[1].ws_url(), &old_token, Encoding::Json)
                .await
                .expect("reconnect after a disconnect"),
        ];
        let r = http.get(cluster.api(0), &old_token, "/v1/chats").await;
        assert_eq!(r.status, 200, "{}", r.body);

        // Revoke through the other replica: 4205 everywhere within a second.
        let asked = Instant::now();
        let r = http
            .post(
                cluster.api(1),
                &admin,
                "/v1/admin/users/victim/revoke",
                &Value::Null,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["nodes"], 2, "{}", r.body);
        let not_before = r.body["not_before"].as_u64().expect("not_before");
        assert_closed_with(&mut victim, CloseCode::TokenRevoked, asked + CLOSE_WITHIN).await;
        eprintln!(
            "revoke closed 2 sockets on 2 nodes in {:?}",
            asked.elapsed()
        );
        for b in &mut bystanders {
            b.ping(Duration::from_secs(2)).await;
        }

        // The old token: no socket on either node, no HTTP on either replica (at once on the
        // replica that revoked, within the cache TTL on the other).
        for gw in &cluster.gateways {
            let e = WsClient::connect(&gw.ws_url(), &old_token, Encoding::Json)
                .await
                .err()
                .unwrap_or_else(|| panic!("{} accepted a revoked token", gw.node_id));
            assert!(e.to_string().contains("401"), "{}: {e}", gw.node_id);
        }
        let r = http.get(cluster.api(1), &old_token, "/v1/chats").await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(
            r.body["detail"].as_str().unwrap().contains("revoked"),
            "{}",
            r.body
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let r = http.get(cluster.api(0), &old_token, "/v1/chats").await;
            if r.status == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica 0 still takes the old token: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A token issued after the revoke (iat has whole seconds: from `not_before` on) works
        // everywhere, and the old token cannot be refreshed onto its socket.
        while now_ms() / 1000 < not_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let new_token = cluster.token("victim");
        for api in 0..2 {
            let r = http.get(cluster.api(api), &new_token, "/v1/chats").await;
            assert_eq!(r.status, 200, "replica {api}: {}", r.body);
        }
        for (i, gw) in cluster.gateways.iter().enumerate() {
            let mut s = WsClient::connect(&gw.ws_url(), &new_token, Encoding::Json)
                .await
                .unwrap_or_else(|e| panic!("{}: a new token after the revoke: {e}", gw.node_id));
            s.send_frame(&ClientFrame::Refresh {
                token: old_token.clone(),
            })
            .await;
            match s.recv(Instant::now() + Duration::from_secs(2)).await {
                Recv::Frame(ServerFrame::Error { code, message }) => {
                    assert_eq!(code, ErrorCode::InvalidToken, "node {i}: {message}");
                    assert!(message.contains("revoked"), "node {i}: {message}");
                }
                other => panic!("node {i}: refresh with the old token answered {other:?}"),
            }
            s.send_frame(&ClientFrame::Refresh {
                token: new_token.clone(),
            })
            .await;
            match s.recv(Instant::now() + Duration::from_secs(2)).await {
                Recv::Frame(ServerFrame::Refreshed { .. }) => {}
                other => panic!("node {i}: refresh with the new token answered {other:?}"),
            }
            s.ping(Duration::from_secs(2)).await;
        }
        for b in &mut bystanders {
            b.ping(Duration::from_secs(2)).await;
        }
        cluster.assert_no_panics();
    })
    .await;
}
