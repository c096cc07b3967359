//! HTTP side of the gateway: the accept loop, the upgrade at `/ws` (auth before the upgrade) and
//! the health, readiness and metrics endpoints on the same port.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use shared::auth::{query_param, token_from_request, AuthError};
use shared::protocol::Encoding;
use shared::ratelimit::{check_fail_open, retry_after_held, retry_after_secs, Decision};
use shared::telemetry::bucket;

use crate::handshakes::ip_key;
use crate::node::Node;
use crate::socket;
use crate::telemetry::{self, reason};

type Body = Full<Bytes>;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Accepts connections until `stop` flips.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(node.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    metrics::counter!(telemetry::ACCEPT_ERRORS_TOTAL).increment(1);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Answer to a connection over [`Settings::max_concurrent_handshakes`], written without parsing
/// anything the client sent.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\nconnection: close\r\n\r\n\
too many handshakes in progress\r\n";

/// Answer to a connection over [`Settings::max_handshakes_per_ip`], written without parsing
/// anything the client sent.
const BUSY_PER_IP_RESPONSE: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 51\r\nconnection: close\r\n\r\n\
too many handshakes in progress from this address\r\n";

async fn serve_connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = node.settings.socket_send_buffer_bytes {
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes) {
            tracing::debug!(error = %e, "could not set SO_SNDBUF");
        }
    }
    // A trusted proxy carries many clients: its connections count against the forwarded
    // client's handshakes once the request head names it (in the service below).
    let behind_proxy = node.settings.trusted_proxies.contains(peer.ip());
    let _ip_slot = if behind_proxy {
        None
    } else {
        match node.handshakes_per_ip.try_acquire(peer.ip()) {
            Some(slot) => Some(slot),
            None => {
                telemetry::rejected(reason::IP_HANDSHAKES_FULL);
                let _ = stream.try_write(BUSY_PER_IP_RESPONSE);
                return;
            }
        }
    };
    // The permit lives until the handshake ends (the upgrade hands the socket off, or the
    // connection closes), so slow or idle HTTP clients cannot pile up without bound.
    let Ok(_permit) = node.handshakes.clone().try_acquire_owned() else {
        telemetry::rejected(reason::HANDSHAKES_FULL);
        let _ = stream.try_write(BUSY_RESPONSE);
        return;
    };
    let timeout = node.settings.handshake_timeout;
    let svc_node = node.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let node = svc_node.clone();
        async move {
            let client = node.settings.trusted_proxies.client_ip(
                peer.ip(),
                req.headers()
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.as_bytes()),
            );
            if req.uri().path() != "/ws" {
                return Ok::<_, Infallible>(handle(node, req, client).await);
            }
            let _client_slot = if behind_proxy {
                match node.handshakes_per_ip.try_acquire(client) {
                    Some(slot) => Some(slot),
                    None => return Ok(too_many_handshakes_from(client)),
                }
            } else {
                None
            };
            if let Some(refused) = connect_rate(&node, client).await {
                return Ok(refused);
            }
            Ok(handle(node, req, client).await)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(node.settings.max_request_head_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    // Bounds slow or idle HTTP clients; an upgraded socket leaves this future as soon as the 101
    // response is written.
    if tokio::time::timeout(timeout, conn).await.is_err() {
        telemetry::rejected(reason::HANDSHAKE_TIMEOUT);
    }
}

/// The 429 for a forwarded client over MAX_HANDSHAKES_PER_IP.
fn too_many_handshakes_from(client: IpAddr) -> Response<Body> {
    tracing::debug!(%client, "too many handshakes in progress from this client");
    let mut r = reject(
        StatusCode::TOO_MANY_REQUESTS,
        reason::IP_HANDSHAKES_FULL,
        "too many handshakes in progress from this address\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from(1u32));
    r
}

/// Spends one upgrade attempt of the client's IP; over the limit, the 429 answer, after holding
/// the attempt for up to its retry-after (`shared::ratelimit::retry_after_held`).
async fn connect_rate(node: &Node, client: IpAddr) -> Option<Response<Body>> {
    let quota = node.settings.connect_rate_per_ip.as_ref()?;
    let Decision::Limited { retry_after } = check_fail_open(
        &*node.deps.limiter,
        bucket::CONNECTIONS,
        &ip_key(client),
        quota,
    )
    .await
    else {
        return None;
    };
    telemetry::rate_limited(telemetry::limit::IP_CONNECTIONS);
    let retry_after = retry_after_held(
        &node.held_refusals,
        retry_after,
        node.settings.connect_rate_limited_hold,
        telemetry::RATE_LIMITED_UNHELD_TOTAL,
    )
    .await;
    let mut r = text(
        StatusCode::TOO_MANY_REQUESTS,
        "too many connection attempts from this address; retry later\n",
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_secs(retry_after)),
    );
    Some(r)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    r
}

async fn handle(node: Arc<Node>, req: Request<Incoming>, client: IpAddr) -> Response<Body> {
    match req.uri().path() {
        "/ws" => upgrade(node, req, client).await,
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if node.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !node.registry_ok.load(Ordering::Acquire) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "route registry unreachable\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => match &node.deps.metrics {
            Some(handle) => {
                let mut r = Response::new(Full::new(Bytes::from(handle.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4".parse().expect("static header"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn reject(status: StatusCode, reason: &'static str, body: &'static str) -> Response<Body> {
    telemetry::rejected(reason);
    let mut r = text(status, body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
    }
    r
}

async fn upgrade(node: Arc<Node>, mut req: Request<Incoming>, client: IpAddr) -> Response<Body> {
    let started = std::time::Instant::now();
    if node.draining.load(Ordering::Acquire) {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            reason::DRAINING,
            "node is draining; connect to another node\n",
        );
    }
    if node.hub.socket_count() >= node.settings.max_connections {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            reason::MAX_CONNECTIONS,
            "node is full\n",
        );
    }
    let query = req.uri().query();
    let encoding = match query.and_then(|q| query_param(q, "encoding")) {
        None => Encoding::Json,
        Some(e) => match Encoding::parse(&e) {
            Some(e) => e,
            None => {
                return reject(
                    StatusCode::BAD_REQUEST,
                    reason::BAD_ENCODING,
                    "encoding must be json or msgpack\n",
                )
            }
        },
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_from_request(authorization, query);
    let identity = match &token {
        None => {
            return reject(
                StatusCode::UNAUTHORIZED,
                reason::AUTH,
                "missing token: use Authorization: Bearer or access_token\n",
            )
        }
        Some(token) => match node.deps.verifier.verify(token) {
            Ok(id) if id.is_service() => {
                return reject(
                    StatusCode::FORBIDDEN,
                    reason::AUTH,
                    "service tokens cannot open sockets\n",
                )
            }
            Ok(id) => id,
            Err(AuthError::Expired) => {
                return reject(StatusCode::UNAUTHORIZED, reason::AUTH, "token expired\n")
            }
            Err(e) => {
                metrics::counter!(telemetry::AUTH_FAILURES_TOTAL, "reason" => e.reason())
                    .increment(1);
                return reject(StatusCode::UNAUTHORIZED, reason::AUTH, "invalid token\n");
            }
        },
    };
    // A revoked token is refused before the upgrade, like an expired one (401: get a new token).
    if node.deps.revocations.is_revoked(&identity).await {
        return reject(StatusCode::UNAUTHORIZED, reason::REVOKED, "token revoked\n");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return reject(
            StatusCode::UPGRADE_REQUIRED,
            reason::NOT_UPGRADE,
            "this endpoint needs a WebSocket upgrade\n",
        );
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => {
            return reject(
                StatusCode::BAD_REQUEST,
                reason::BAD_HANDSHAKE,
                "invalid WebSocket handshake\n",
            )
        }
    };
    // permessage-deflate when enabled and offered in a form this server can honour; an offer it
    // cannot honour is declined (the socket runs uncompressed), never a failed handshake.
    let deflate = node
        .settings
        .ws_compression
        .then(|| {
            crate::deflate::negotiate(
                req.headers()
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .map(|v| v.as_bytes()),
            )
        })
        .flatten();
    let mut response = response.map(|_| Full::new(Bytes::new()));
    let deflate = deflate.and_then(|accepted| {
        let value = http::HeaderValue::from_str(&accepted.response).ok()?;
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
        metrics::counter!(telemetry::DEFLATE_SOCKETS_TOTAL).increment(1);
        Some(accepted.negotiated)
    });
    // Kept only where typing and ack frames are forwarded (with the socket's own token), so that
    // other nodes spend no memory on it.
    let token: Option<Arc<str>> = token
        .filter(|_| node.typing.is_some() || node.acks.is_some())
        .map(Arc::from);
    let task = async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, %client, "upgrade did not complete");
                return;
            }
        };
        // Take the bare TCP stream back (and whatever hyper read past the request) so that the
        // idle socket holds no frame reader.
        match ws
            .into_inner()
            .into_inner()
            .downcast::<TokioIo<TcpStream>>()
        {
            Ok(parts) => {
                metrics::histogram!(telemetry::HANDSHAKE_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                let hyper::upgrade::Parts { io, read_buf, .. } = parts;
                // `read_buf` is a view of hyper's whole HTTP read buffer (8 KiB, usually with
                // nothing left in it): copy the bytes out and drop the view now, or the idle
                // socket would keep that buffer for its whole life.
                let read_ahead = Bytes::copy_from_slice(&read_buf);
                drop(read_buf);
                socket::run(
                    node,
                    io.into_inner(),
                    read_ahead,
                    identity,
                    token,
                    encoding,
                    deflate,
                )
                .await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    };
    tokio::spawn(task);
    response
}
