//! Senders that keep sending through the API replicas (retrying a failed send with the same
//! `client_msg_id`) and log what was acknowledged, and the check that every member holds it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use shared::protocol::Message;
use shared::Id;

use super::*;

/// What a [`Sender`] recorded.
#[derive(Default, Debug)]
pub struct SendLog {
    /// Every acknowledged (201) message, in send order.
    pub acked: Vec<Message>,
    /// Attempts that did not answer 201: (client_msg_id, the status or the transport error).
    pub failures: Vec<(String, String)>,
    /// Sends whose answer was a replay of the stored original (`Idempotent-Replayed`).
    pub replayed: Vec<String>,
    /// The slowest single attempt.
    pub slowest: Duration,
}

/// A steady sender, as a client app sends: one message every `every`, the first attempt of
/// message `n` to replica `n % apis`; a failed attempt (an error status, a refused or cut
/// connection) is retried with the same `client_msg_id` on the next replica.
pub struct Sender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<SendLog>,
    /// Sends in flight to each API replica (by index into `cluster.apis`), so that a test can
    /// stop a replica at a moment when a send is on its way to it.
    in_flight: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

impl Sender {
    pub fn start(
        cluster: &Cluster,
        user: &str,
        chat: Id,
        every: Duration,
        body_bytes: usize,
    ) -> Sender {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (http, token, stop2, prefix) = (
            cluster.http.clone(),
            cluster.token(user),
            stop.clone(),
            format!("{user}-"),
        );
        let apis: Vec<String> = cluster.apis.iter().map(|a| a.base.clone()).collect();
        let in_flight: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>> =
            std::sync::Arc::new(apis.iter().map(|_| Default::default()).collect());
        let counts = in_flight.clone();
        let task = tokio::spawn(async move {
            let mut log = SendLog::default();
            let mut n = 0usize;
            while !stop2.load(Ordering::Acquire) {
                let cid = format!("{prefix}{n:05}");
                let mut body = format!("body {n} ");
                while body.len() < body_bytes {
                    body.push('x');
                }
                let give_up = Instant::now() + Duration::from_secs(20);
                let mut attempt = 0;
                loop {
                    let k = (n + attempt) % apis.len();
                    let started = Instant::now();
                    counts[k].fetch_add(1, Ordering::SeqCst);
                    let r = http
                        .try_send_message(
                            &apis[k],
                            &token,
                            chat,
                            &cid,
                            &body,
                            Duration::from_secs(3),
                        )
                        .await;
                    counts[k].fetch_sub(1, Ordering::SeqCst);
                    log.slowest = log.slowest.max(started.elapsed());
                    match r {
                        Ok(r) if r.status == 201 => {
                            if r.replayed {
                                log.replayed.push(cid.clone());
                            }
                            log.acked
                                .push(serde_json::from_value(r.body).expect("message"));
                            break;
                        }
                        Ok(r) => log.failures.push((cid.clone(), format!("{}", r.status))),
                        Err(e) => log.failures.push((cid.clone(), e)),
                    }
                    attempt += 1;
                    assert!(
                        Instant::now() < give_up,
                        "{cid} never acknowledged: {:?}",
                        log.failures
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
                tokio::time::sleep(every).await;
            }
            log
        });
        Sender {
            stop,
            task,
            in_flight,
        }
    }

    /// Sends in flight now to API replica `api`.
    pub fn in_flight(&self, api: usize) -> usize {
        self.in_flight[api].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops after the message in flight and returns what was recorded.
    pub async fn finish(self) -> SendLog {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.task.await.expect("sender task")
    }
}

/// SPEC §6 for one chat, once the clients are done reading: every client holds every
/// acknowledged message of `log` exactly once, in id order (`log.acked` must be in id order:
/// one sequential sender's send order, or sorted), and no socket got a message twice unless its
/// send was replayed (a replay is delivered again).
pub fn assert_every_member_holds(clients: &[CatchUpClient], chat: Id, log: &SendLog) {
    let acked: Vec<Id> = log.acked.iter().map(|m| m.message_id).collect();
    let unique: HashSet<Id> = acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "two sends acknowledged with one id"
    );
    let cids: HashSet<&str> = log.acked.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(
        cids.len(),
        acked.len(),
        "one client_msg_id acknowledged twice"
    );
    let mut sorted = log.acked.clone();
    sorted.sort_by_key(|m| m.message_id);
    assert!(
        sorted
            .iter()
            .map(|m| m.message_id)
            .eq(acked.iter().copied()),
        "id order must be send order for one sequential sender"
    );
    let replayed: HashSet<Id> = log
        .acked
        .iter()
        .filter(|m| log.replayed.contains(&m.client_msg_id))
        .map(|m| m.message_id)
        .collect();
    for c in clients {
        let missing: Vec<Id> = acked.iter().copied().filter(|id| !c.holds(*id)).collect();
        assert!(
            missing.is_empty(),
            "{}: {} of {} acknowledged messages missing: {missing:?}",
            c.user,
            missing.len(),
            acked.len()
        );
        let held = c.chat(chat);
        assert!(
            held == sorted,
            "{}: not every acknowledged message exactly once in id order (held {}, acked {}); \
             held ids {:?}",
            c.user,
            held.len(),
            sorted.len(),
            held.iter().map(|m| m.message_id).collect::<Vec<_>>()
        );
        let repeats: Vec<&Id> = c
            .socket_repeats
            .iter()
            .filter(|id| !replayed.contains(id))
            .collect();
        assert!(
            repeats.is_empty(),
            "{}: a socket got messages twice that were never replayed: {repeats:?}",
            c.user
        );
    }
}
