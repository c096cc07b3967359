//! Drain: closing every socket with the draining code, spread over the drain window so that
//! clients do not all reconnect elsewhere at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use shared::close::CloseCode;

use crate::node::Node;

/// Closes every socket with the draining code, spread evenly over the drain window (socket `i` of
/// `n` at `window × i / n`) so that clients do not reconnect elsewhere all at once, then waits for
/// the sockets to finish (bounded by `deadline`).
pub(crate) async fn drain_sockets(node: &Arc<Node>, deadline: Instant) {
    let sockets = node.hub.all_sockets();
    let window = node.settings.drain_window;
    spread(&sockets, window, deadline, |s| s.close(CloseCode::Draining)).await;
    while node.hub.socket_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `f` on each socket, socket `i` of `n` at `window × i / n` from now (all at once when the
/// window is zero, the rest at once when `deadline` comes first).
pub(crate) async fn spread<T>(
    items: &[T],
    window: Duration,
    deadline: Instant,
    mut f: impl FnMut(&T),
) {
    let start = Instant::now();
    let n = items.len().max(1) as f64;
    for (i, item) in items.iter().enumerate() {
        let at = (start + window.mul_f64(i as f64 / n)).min(deadline);
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        f(item);
    }
}

