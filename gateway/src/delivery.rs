//! Reads this node's stream from the node bus in batches and writes each envelope to the local
//! sockets of its recipients, encoding the frame at most once per encoding (and compressing it at most once per encoding).

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::OpCode;
use tokio::sync::watch;

use shared::backoff::Backoff;
use shared::protocol::{decode_server, Encoding};
use shared::routing::{Envelope, Subscription};

use crate::hub::{Enqueue, SocketHandle};
use crate::node::Node;
use crate::wsio::Outgoing;

/// Pauses after a failed subscribe or read: the one layer that waits on a node-bus failure (the
/// bus itself returns errors at once).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Subscribes to this node's stream and delivers from it until `stop` is set.
pub async fn delivery_task(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut sub: Box<dyn Subscription> = loop {
        match node.deps.bus.subscribe(&node.info).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "node bus subscribe failed; retrying");
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    backoff.reset();
    let mut failed = false;
    let mut wakes = Wakes::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            batch = sub.next_batch(node.settings.stream_batch) => match batch {
                Ok(batch) => {
                    backoff.reset();
                    if std::mem::take(&mut failed) {
                        // Deliveries may have been lost while the stream was unreachable.
                        node.resync.request("node stream was unreachable");
                    }
                    // Before this batch is delivered: its envelopes are newer than the lost ones.
                    if sub.take_gap() {
                        metrics::counter!(crate::telemetry::STREAM_GAPS_TOTAL).increment(1);
                        node.resync.request("node stream lost deliveries before they were read");
                    }
                    if !batch.is_empty() {
                        metrics::histogram!(crate::telemetry::STREAM_BATCH_SIZE).record(batch.len() as f64);
                        if let Some(age) = sub.oldest_age() {
                            metrics::histogram!(crate::telemetry::STREAM_LAG_SECONDS).record(age.as_secs_f64());
                        }
                    }
                    // Every socket the batch reaches is woken once, after the whole batch is queued,
                    // so that its frames leave in one vectored write.
                    for envelope in &batch {
                        if envelope.is_node_gap() {
                            // An API replica could not deliver a message here (docs/RELIABILITY.md).
                            node.resync.request("an API replica could not deliver a message here");
                        } else if let Some(control) = envelope.control() {
                            crate::admin::apply(&node, &envelope.recipients, control);
                        } else {
                            deliver_deferred(&node, envelope, &mut wakes);
                        }
                    }
                    wakes.wake_all();
                    // Under load, let the next read take what arrives meanwhile (bounded by the
                    // linger); a full read means a backlog, read on at once.
                    let linger = node.settings.stream_read_linger;
                    if !batch.is_empty() && batch.len() < node.settings.stream_batch && !linger.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(linger) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node bus read failed; retrying");
                    metrics::counter!(crate::telemetry::STREAM_ERRORS_TOTAL).increment(1);
                    failed = true;
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}

/// Sockets with frames queued by [`deliver_deferred`] and not yet woken.
#[derive(Default)]
pub struct Wakes(Vec<Arc<SocketHandle>>);

impl Wakes {
    /// Wakes each socket once; keeps the list's allocation for the next batch (bounded by the
    /// largest number of sockets one batch reached).
    pub fn wake_all(&mut self) {
        for socket in self.0.drain(..) {
            socket.writer.wake();
        }
    }
}

/// Hands one envelope to every local socket of its recipients and wakes them. Returns the frames
/// queued.
pub fn deliver(node: &Node, envelope: &Envelope) -> usize {
    let mut wakes = Wakes::default();
    let queued = deliver_deferred(node, envelope, &mut wakes);
    wakes.wake_all();
    queued
}

/// [`deliver`] without waking the sockets: those that need it are added to `wakes`, which the
/// caller wakes once it has queued the rest of its batch.
pub fn deliver_deferred(node: &Node, envelope: &Envelope, wakes: &mut Wakes) -> usize {
    let limits = node.queue_limits();
    let epoch = node.resync.epoch();
    let min_bytes = node.settings.ws_compression_min_bytes;
    let mut msgpack: Option<Outgoing> = None;
    let mut json: Option<Option<Outgoing>> = None;
    let mut queued = 0;
    let mut dropped = 0u64;
    let mut unwatched = 0u64;
    // Presence frames go only to sockets watching fewer than PRESENCE_WATCH_MAX users.
    let presence_of = shared::protocol::presence_user(&envelope.frame);
    let watch_max = node.settings.presence_watch_max;
    for user in &envelope.recipients {
        node.hub.for_each_socket(user, |socket| {
            if let Some(p) = &presence_of {
                if !socket.watch(p, watch_max) {
                    unwatched += 1;
                    return;
                }
            }
            let frame = match socket.encoding {
                Encoding::Msgpack => msgpack
                    .get_or_insert_with(|| {
                        Outgoing::new(OpCode::Binary, &envelope.frame, min_bytes)
                    })
                    .for_socket(socket.deflate),
                Encoding::Json => {
                    match json.get_or_insert_with(|| to_json_frame(&envelope.frame, min_bytes)) {
                        Some(f) => f.for_socket(socket.deflate),
                        None => return,
                    }
                }
            };
            let resync = node.resync.frame(socket.encoding);
            let (result, owed) = socket
                .writer
                .push_delivery_deferred(frame, limits, epoch, resync);
            if owed {
                wakes.0.push(socket.clone());
            }
            match result {
                Enqueue::Queued => queued += 1,
                Enqueue::Overflow => dropped += 1,
                Enqueue::Closed => {}
            }
        });
    }
    metrics::counter!(crate::telemetry::DELIVERIES_TOTAL).increment(queued as u64);
    if dropped > 0 {
        metrics::counter!(crate::telemetry::SEND_QUEUE_DROPS_TOTAL).increment(dropped);
    }
    if unwatched > 0 {
        metrics::counter!(crate::telemetry::PRESENCE_UNWATCHED_TOTAL).increment(unwatched);
    }
    queued
}

/// Transcodes the canonical MessagePack frame to a JSON text frame (once per envelope).
fn to_json_frame(msgpack: &[u8], min_bytes: usize) -> Option<Outgoing> {
    match decode_server(Encoding::Msgpack, msgpack) {
        Ok(frame) => Some(Outgoing::frame(Encoding::Json, &frame, min_bytes)),
        Err(e) => {
            tracing::error!(error = %e, "undecodable envelope on the node bus; dropped for JSON sockets");
            None
        }
    }
}
