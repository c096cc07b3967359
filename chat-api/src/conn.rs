//! The API's HTTP/1.1 connections, served with hyper directly (`axum::serve` has no timeouts): a
//! request head must be complete within the header-read timeout of its first byte (a trickled
//! head is cut), and a connection with no request in progress is closed after the keep-alive
//! timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

/// The two deadlines of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// From the first byte of a request head to its end.
    pub header_read: Duration,
    /// From the end of the last request (or the accept) to the first byte of the next.
    pub keep_alive: Duration,
}

/// Where a connection stands; shared by its reader, its service and its watchdog.
struct Activity {
    in_flight: usize,
    /// When the first byte of the request head being read arrived.
    head_started: Option<Instant>,
    /// When the connection last became idle (no request in progress).
    idle_since: Instant,
}

/// What the watchdog does next.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// Nothing is due before this instant.
    Until(Instant),
    /// A request head took longer than the header-read timeout: cut the connection.
    SlowHead,
    /// Idle past the keep-alive timeout: close it (gracefully, it has nothing in progress).
    Idle,
}

impl Activity {
    fn new(now: Instant) -> Activity {
        Activity {
            in_flight: 0,
            head_started: None,
            idle_since: now,
        }
    }

    /// Returns whether a request head began (the watchdog must look at its new deadline).
    fn on_read(&mut self, now: Instant) -> bool {
        let begins = self.in_flight == 0 && self.head_started.is_none();
        if begins {
            self.head_started = Some(now);
        }
        begins
    }

    fn request_started(&mut self) {
        self.in_flight += 1;
        self.head_started = None;
    }

    fn request_done(&mut self, now: Instant) {
        self.in_flight -= 1;
        if self.in_flight == 0 {
            self.idle_since = now;
        }
    }

    fn check(&self, t: ConnTimeouts, now: Instant) -> Check {
        if let Some(started) = self.head_started {
            let due = started + t.header_read;
            return if now >= due {
                Check::SlowHead
            } else {
                Check::Until(due)
            };
        }
        if self.in_flight == 0 {
            let due = self.idle_since + t.keep_alive;
            return if now >= due {
                Check::Idle
            } else {
                Check::Until(due)
            };
        }
        // A request is being handled (bounded by API_REQUEST_TIMEOUT); look again later.
        Check::Until(now + t.header_read.min(t.keep_alive))
    }
}

/// A connection's [`Activity`] and the watchdog's wake-up when a deadline may have moved.
struct Watch {
    activity: Mutex<Activity>,
    changed: Notify,
}

type Shared = Arc<Watch>;

/// The TCP stream, noting when request bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Shared,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.activity.activity.lock().on_read(Instant::now())
        {
            self.activity.changed.notify_one();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Marks one request in progress until dropped.
struct Busy(Shared);

impl Busy {
    fn start(activity: &Shared) -> Busy {
        activity.activity.lock().request_started();
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.lock().request_done(Instant::now());
        self.0.changed.notify_one();
    }
}

/// Serves one connection until it ends, a deadline passes, or `stop` flips (then in-progress
/// requests finish and the connection closes).
pub async fn serve(
    stream: TcpStream,
    router: Router,
    timeouts: ConnTimeouts,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity: Shared = Arc::new(Watch {
        activity: Mutex::new(Activity::new(Instant::now())),
        changed: Notify::new(),
    });
    let io = Watched {
        io: stream,
        activity: activity.clone(),
    };
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let busy = Busy::start(&service_activity);
        async move {
            let response = router.oneshot(req.map(axum::body::Body::new)).await;
            drop(busy);
            response
        }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let check = activity.activity.lock().check(timeouts, Instant::now());
        let due = match check {
            Check::Until(due) => due,
            Check::SlowHead => {
                metrics::counter!(crate::telemetry::CONNECTIONS_CUT_TOTAL, "reason" => crate::telemetry::cut_reason::HEADER_READ_TIMEOUT)
                    .increment(1);
                return;
            }
            Check::Idle if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                // Idle: the connection closes at once; bound it anyway.
                Instant::now() + timeouts.header_read
            }
            Check::Idle => return,
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(due) => {}
            _ = activity.changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ConnTimeouts = ConnTimeouts {
        header_read: Duration::from_secs(10),
        keep_alive: Duration::from_secs(60),
    };

    #[test]
    fn deadlines_follow_the_connection_state() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut a = Activity::new(t0);
        assert_eq!(a.check(T, s(1)), Check::Until(s(60)));
        assert_eq!(a.check(T, s(60)), Check::Idle);
        // A head begins: the header-read deadline counts from its first byte.
        assert!(a.on_read(s(5)));
        assert!(!a.on_read(s(9)));
        assert_eq!(a.check(T, s(14)), Check::Until(s(15)));
        assert_eq!(a.check(T, s(15)), Check::SlowHead);
        // The head completes: the request runs, then the connection idles again.
        a.request_started();
        assert!(matches!(a.check(T, s(100)), Check::Until(_)));
        assert!(!a.on_read(s(101))); // body bytes, not a new head
        a.request_done(s(102));
        assert_eq!(a.check(T, s(103)), Check::Until(s(162)));
    }
}
