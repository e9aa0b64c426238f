//! The journal's thread: group commit, and the handles the rest of the daemon talks to it with.
//!
//! Sources send `Append { press, reply }` and wait for the reply. The thread takes the first
//! request, then every request already waiting (up to [`MAX_GROUP`]), appends all presses in one
//! batch with one flush + fsync, and only then answers each reply and broadcasts the accepted
//! votes. A dedicated OS thread rather than a tokio task: each commit blocks on fsync, and the
//! journal must keep committing even when the async runtime is busy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};

use super::{CountsForTallies, Journal, JournalError, JournalStats, Outcome};
use crate::model::{Press, Seq, TerminalId, Vote};

/// Most requests handled per commit: bounds the latency of the last one in a burst.
const MAX_GROUP: usize = 128;
/// How long the thread waits for work before making pending acks durable and retrying a closed
/// store.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// How long a commit may wait for the appends its predecessor had: the sources answered by one
/// commit send their next press a few microseconds apart, and a commit that leaves half of them
/// for the next one doubles the fsyncs (measured with 8 appenders: 5 votes per commit without the
/// wait, 8 with it). Well below one fsync, and only ever spent when the last commit was larger.
const GATHER_WAIT: Duration = Duration::from_micros(200);
/// Votes buffered per subscriber of [`JournalService::subscribe`]; a subscriber that lags more
/// misses votes (and is told so by the broadcast channel), it never slows the journal.
const BROADCAST_CAPACITY: usize = 4096;

enum Request {
    Append {
        press: Press,
        reply: oneshot::Sender<Result<Outcome, JournalError>>,
    },
    Ack {
        through: Seq,
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    Read {
        after: Seq,
        max: usize,
        reply: oneshot::Sender<Result<Vec<Vote>, JournalError>>,
    },
    UnreportedDrops {
        reply: oneshot::Sender<Result<Vec<(Seq, Seq)>, JournalError>>,
    },
    ForgetDrops {
        through: Seq,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    CountsForTallies {
        quarters_from_minute: u32,
        reply: oneshot::Sender<Result<CountsForTallies, JournalError>>,
    },
    SetFilter {
        default: Duration,
        intervals: HashMap<TerminalId, Duration>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// A cheap, cloneable way to talk to the journal thread.
#[derive(Clone)]
pub struct JournalHandle {
    requests: mpsc::Sender<Request>,
}

impl JournalHandle {
    /// Appends a press; returns once it is durable (or known to be a duplicate).
    pub async fn append(&self, press: Press) -> Result<Outcome, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Append { press, reply })?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// Deletes buffered votes up to `through`; returns how many.
    pub async fn ack_through(&self, through: Seq) -> Result<u64, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Ack { through, reply })?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// The dropped seq ranges not yet reported (see [`Journal::unreported_drops`]).
    pub async fn unreported_drops(&self) -> Result<Vec<(Seq, Seq)>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::UnreportedDrops { reply })?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// Forgets the dropped ranges up to `through` (see [`Journal::forget_drops_through`]).
    pub async fn forget_drops_through(&self, through: Seq) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ForgetDrops { through, reply })?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// Up to `max` buffered votes with a seq above `after`, oldest first.
    pub async fn read_after(&self, after: Seq, max: usize) -> Result<Vec<Vote>, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Read { after, max, reply })?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    /// Sets the anti-abuse filter's intervals (see [`Journal::set_filter`]); presses appended
    /// after this call are judged with them.
    pub fn set_filter(
        &self,
        default: Duration,
        intervals: HashMap<TerminalId, Duration>,
    ) -> Result<(), JournalError> {
        self.send(Request::SetFilter { default, intervals })
    }

    /// The counts the tallies rebuild from (see [`Journal::counts_for_tallies`]).
    pub async fn counts_for_tallies(
        &self,
        quarters_from_minute: u32,
    ) -> Result<CountsForTallies, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::CountsForTallies {
            quarters_from_minute,
            reply,
        })?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }

    fn send(&self, request: Request) -> Result<(), JournalError> {
        self.requests
            .send(request)
            .map_err(|_| JournalError::Stopped)
    }
}

/// The running journal: its handle, its broadcast of accepted votes and its counters.
pub struct JournalService {
    handle: JournalHandle,
    votes: broadcast::Sender<Vote>,
    stats: watch::Receiver<JournalStats>,
    heartbeat: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl JournalService {
    /// A handle for appending, reading and acknowledging.
    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// Every vote accepted from now on, in seq order, after it is durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Vote> {
        self.votes.subscribe()
    }

    /// The journal's counters, updated after every change.
    pub fn stats(&self) -> watch::Receiver<JournalStats> {
        self.stats.clone()
    }

    /// A counter the journal thread increments at least every 0.5 s while it is alive: the
    /// systemd watchdog is fed only while it moves.
    pub fn heartbeat(&self) -> Arc<AtomicU64> {
        self.heartbeat.clone()
    }

    /// Finishes every request sent before this call, makes everything durable and stops the
    /// thread. Handles still held elsewhere get [`JournalError::Stopped`] afterwards.
    pub async fn shutdown(self) -> Result<(), JournalError> {
        let (reply, answer) = oneshot::channel();
        self.handle.send(Request::Shutdown { reply })?;
        let result = answer.await.map_err(|_| JournalError::Stopped)?;
        let thread = self.thread;
        // The thread returns right after replying.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        result
    }
}

/// Starts the journal thread.
pub fn spawn(journal: Journal) -> std::io::Result<JournalService> {
    let (requests, inbox) = mpsc::channel();
    let (votes, _) = broadcast::channel(BROADCAST_CAPACITY);
    let (stats_tx, stats) = watch::channel(journal.stats());
    let thread_votes = votes.clone();
    let heartbeat = Arc::new(AtomicU64::new(0));
    let thread_heartbeat = heartbeat.clone();
    let thread = std::thread::Builder::new()
        .name("journal".to_string())
        .spawn(move || {
            Committer {
                last_appends: 0,
                journal,
                votes: thread_votes,
                stats: stats_tx,
                heartbeat: thread_heartbeat,
            }
            .run(inbox)
        })?;
    Ok(JournalService {
        handle: JournalHandle { requests },
        votes,
        stats,
        heartbeat,
        thread,
    })
}

struct Committer {
    /// Appends in the last commit.
    last_appends: usize,
    journal: Journal,
    votes: broadcast::Sender<Vote>,
    stats: watch::Sender<JournalStats>,
    heartbeat: Arc<AtomicU64>,
}

impl Committer {
    /// Waits up to [`GATHER_WAIT`] for as many appends as the last commit had.
    fn gather_stragglers(&mut self, inbox: &mpsc::Receiver<Request>, group: &mut Vec<Request>) {
        let appends = |group: &[Request]| {
            group
                .iter()
                .filter(|r| matches!(r, Request::Append { .. }))
                .count()
        };
        let mut gathered = appends(group);
        if gathered > 0 && gathered < self.last_appends {
            let deadline = std::time::Instant::now() + GATHER_WAIT;
            while gathered < self.last_appends && group.len() < MAX_GROUP {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match inbox.recv_timeout(left) {
                    Ok(request) => {
                        gathered += usize::from(matches!(request, Request::Append { .. }));
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
        }
        self.last_appends = gathered;
    }

    fn run(mut self, inbox: mpsc::Receiver<Request>) {
        loop {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let first = match inbox.recv_timeout(IDLE_TICK) {
                Ok(request) => request,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.idle();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Every handle is gone without a shutdown request: still flush.
                    if let Err(err) = self.finish() {
                        log::error!("final journal flush failed: {err}");
                    }
                    return;
                }
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match inbox.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.gather_stragglers(&inbox, &mut group);
            if let Some(reply) = self.handle_group(group) {
                let result = self.finish();
                let _ = reply.send(result);
                return;
            }
        }
    }

    /// Handles one group; returns the shutdown reply if the group asked to stop.
    fn handle_group(
        &mut self,
        group: Vec<Request>,
    ) -> Option<oneshot::Sender<Result<(), JournalError>>> {
        let mut presses = Vec::new();
        let mut replies = Vec::new();
        let mut others = Vec::new();
        for request in group {
            match request {
                Request::Append { press, reply } => {
                    presses.push(press);
                    replies.push(reply);
                }
                // Before the group's appends: a reload's filter applies to what follows it.
                Request::SetFilter { default, intervals } => {
                    self.journal.set_filter(default, intervals);
                }
                other => others.push(other),
            }
        }
        if !presses.is_empty() {
            self.commit(presses, replies);
        }
        let mut shutdown = None;
        for request in others {
            match request {
                Request::Ack { through, reply } => {
                    let _ = reply.send(self.journal.ack_through(through));
                }
                Request::Read { after, max, reply } => {
                    let _ = reply.send(self.journal.read_after(after, max));
                }
                Request::UnreportedDrops { reply } => {
                    let _ = reply.send(self.journal.unreported_drops());
                }
                Request::ForgetDrops { through, reply } => {
                    let _ = reply.send(self.journal.forget_drops_through(through));
                }
                Request::CountsForTallies {
                    quarters_from_minute,
                    reply,
                } => {
                    let _ = reply.send(self.journal.counts_for_tallies(quarters_from_minute));
                }
                Request::Shutdown { reply } => shutdown = Some(reply),
                Request::Append { .. } | Request::SetFilter { .. } => {}
            }
        }
        self.publish_stats();
        shutdown
    }

    fn commit(
        &mut self,
        presses: Vec<Press>,
        replies: Vec<oneshot::Sender<Result<Outcome, JournalError>>>,
    ) {
        match self.journal.append(presses) {
            Ok(outcomes) => {
                // Counters first: whoever gets a reply then sees stats that include its vote.
                self.publish_stats();
                for (outcome, reply) in outcomes.into_iter().zip(replies) {
                    if let Outcome::Accepted(vote) = &outcome {
                        log::debug!(
                            terminal:% = vote.terminal, seq = vote.seq, button = vote.button.number();
                            "vote accepted"
                        );
                        // No subscribers is fine: nobody is watching.
                        let _ = self.votes.send(vote.clone());
                    }
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                log::error!(
                    "journal append failed, {} presses not acknowledged: {err}",
                    replies.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn idle(&mut self) {
        if self.journal.has_unsynced_acks() || !self.journal.is_available() {
            if let Err(err) = self.journal.sync() {
                log::warn!("journal sync failed, will retry: {err}");
            }
        }
        self.publish_stats();
    }

    fn finish(&mut self) -> Result<(), JournalError> {
        let result = self.journal.sync();
        self.publish_stats();
        result
    }

    fn publish_stats(&self) {
        let stats = self.journal.stats();
        self.stats.send_if_modified(|current| {
            let changed = *current != stats;
            *current = stats;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Limits;
    use crate::model::{BootId, Button, PressTime, TerminalId};

    fn press(terminal: &str, term_seq: u64) -> Press {
        Press {
            terminal: TerminalId::new(terminal).expect("valid id"),
            button: Button::Happy,
            term_seq: Some(term_seq),
            at: PressTime {
                ts_ms: 1_795_000_000_000,
                clock_synced: true,
                boot_id: BootId([1; 16]),
                mono_ms: term_seq,
            },
            filtered: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits_and_are_broadcast_in_seq_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service =
            spawn(Journal::open(dir.path(), Limits::default()).expect("open")).expect("spawn");
        let mut votes = service.subscribe();
        let appends: Vec<_> = (0..200)
            .map(|n| {
                let handle = service.handle();
                tokio::spawn(async move { handle.append(press(&format!("t{}", n % 8), n)).await })
            })
            .collect();
        for append in appends {
            assert!(matches!(
                append.await.expect("task"),
                Ok(Outcome::Accepted(_))
            ));
        }
        let stats = service.stats().borrow().clone();
        assert_eq!(stats.depth, 200);
        assert!(
            stats.commits < 200,
            "no group commit happened: {} commits",
            stats.commits
        );
        let mut last = 0;
        for _ in 0..200 {
            let vote = votes.recv().await.expect("broadcast");
            assert!(vote.seq > last, "broadcast out of order");
            last = vote.seq;
        }
        service.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn shutdown_makes_acks_durable_and_stops_the_handles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service =
            spawn(Journal::open(dir.path(), Limits::default()).expect("open")).expect("spawn");
        let handle = service.handle();
        for n in 0..10 {
            handle.append(press("a", n)).await.expect("append");
        }
        assert_eq!(handle.ack_through(4).await, Ok(4));
        let unsent = handle.read_after(0, 100).await.expect("read");
        assert_eq!(
            unsent.iter().map(|v| v.seq).collect::<Vec<_>>(),
            (5..=10).collect::<Vec<_>>()
        );
        service.shutdown().await.expect("shutdown");
        assert_eq!(
            handle.append(press("a", 99)).await,
            Err(JournalError::Stopped)
        );

        let mut reopened = Journal::open(dir.path(), Limits::default()).expect("reopen");
        assert_eq!(reopened.stats().depth, 6);
        assert_eq!(reopened.stats().oldest_seq, Some(5));
        // The acked votes are gone, but retransmitting one still maps to its seq.
        assert_eq!(
            reopened.append(vec![press("a", 2)]),
            Ok(vec![Outcome::Duplicate(3)])
        );
    }
}
