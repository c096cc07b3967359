//! Drain: closing every socket with the draining code, spread over the drain window so that
//! clients do not all reconnect elsewhere at once.

use std::time::Duration;

use tokio::time::Instant;

use shared::close::CloseCode;

use crate::hub::Hub;

/// Closes every socket with the draining code, spread evenly over the drain window (socket `i` of
/// `n` at `window × i / n`) so that clients do not reconnect elsewhere all at once, then waits for
/// the sockets to finish (bounded by `deadline`).
pub(crate) async fn drain_sockets(hub: &Hub, window: Duration, deadline: Instant) {
    let sockets = hub.all_sockets();
    spread(&sockets, window, deadline, |s| s.close(CloseCode::Draining)).await;
    while hub.socket_count() > 0 && Instant::now() < deadline {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spread_calls_item_i_of_n_at_its_share_of_the_window_and_the_rest_at_the_deadline() {
        let start = Instant::now();
        let mut at = Vec::new();
        spread(
            &[0, 1, 2, 3],
            Duration::from_millis(200),
            start + Duration::from_secs(5),
            |_| at.push(start.elapsed()),
        )
        .await;
        for (i, t) in at.iter().enumerate() {
            assert!(
                *t >= Duration::from_millis(50 * i as u64),
                "item {i} at {t:?}"
            );
        }
        // A deadline inside the window: what is left goes at once when it comes.
        let start = Instant::now();
        let mut at = Vec::new();
        let deadline = start + Duration::from_millis(50);
        spread(&[0, 1, 2, 3], Duration::from_secs(60), deadline, |_| {
            at.push(start.elapsed())
        })
        .await;
        assert_eq!(at.len(), 4);
        assert!(
            at[3] >= Duration::from_millis(50) && at[3] < Duration::from_secs(5),
            "{at:?}"
        );
        // No window: all at once.
        let mut n = 0;
        spread(&[0, 1, 2], Duration::ZERO, Instant::now(), |_| n += 1).await;
        assert_eq!(n, 3);
    }
}
