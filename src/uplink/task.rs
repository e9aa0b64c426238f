//! The uplink loop: connect, then keep the in-flight slots full, live votes first, and delete
//! from the journal what the broker acknowledged. Reconnects with exponential backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch;
use super::inflight::{InFlight, Tag};
use super::mqtt::{Session, SessionEvent, UplinkError};
use super::payload::{encode, DroppedRange, WireVote};
use super::ratelimit::RateLimit;
use super::{Connection, UplinkSettings, UplinkState};
use crate::alerts::outbox::Outbox;
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::journal::{JournalHandle, JournalStats};
use crate::model::{Seq, Vote};

/// How long the broker has to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// The broker closing the connection this many times in a row while the same batch was in flight
/// means it refuses the batch (usually its packet size limit): batches are halved.
const OVERSIZE_STRIKES: u32 = 3;
const MIN_PAYLOAD_BYTES: usize = 1024;
/// Dropped ranges reported per batch at most (they are few; more go with the next batches).
const DROPPED_PER_BATCH: usize = 64;
/// Alert messages published per pass (they are rare; a backlog goes out in steps).
const ALERTS_PER_FILL: usize = 16;

/// Builds the telemetry payload (JSON) from the daemon's status.
pub type Telemetry = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The running uplink.
pub struct Uplink {
    settings: UplinkSettings,
    gateway_id: String,
    site: String,
    journal: JournalHandle,
    stats: watch::Receiver<JournalStats>,
    clock: Arc<dyn Clock>,
    state: watch::Sender<UplinkState>,
    telemetry: Telemetry,
    max_payload_bytes: usize,
    /// The batch (by `after`) in flight at the last connection losses, and how many in a row.
    suspect: Option<(Seq, u32)>,
    rate: RateLimit,
    /// Alert messages to deliver, if the daemon keeps them.
    alerts: Option<Arc<Outbox>>,
}

/// How a connection ended.
enum Ended {
    Shutdown,
    Lost { error: UplinkError, acked_any: bool },
}

/// Per-connection cursors into the journal.
struct Cursors {
    inflight: InFlight,
    /// Backlog: votes below `live_start`, sent oldest first.
    backlog_cursor: Seq,
    backlog_done: bool,
    /// Live: votes from `live_start` on.
    live_start: Seq,
    live_cursor: Seq,
    /// When unsent live votes were first noticed (they may wait `max_batch_age` to share a batch).
    live_since: Option<Instant>,
    /// Alert messages up to this number were published on this connection.
    alerts_sent: u64,
    /// When to look again without an event (linger or rate limit).
    wake_at: Option<Instant>,
    acked_any: bool,
}

impl Uplink {
    /// An uplink for `settings`, reporting its state on `state`. The sender outlives one uplink:
    /// a reload replaces the uplink and keeps the counters. The problem of an earlier uplink is
    /// forgotten: new settings are judged afresh.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: UplinkSettings,
        gateway_id: &str,
        site: &str,
        journal: JournalHandle,
        stats: watch::Receiver<JournalStats>,
        clock: Arc<dyn Clock>,
        telemetry: Telemetry,
        state: watch::Sender<UplinkState>,
        alerts: Option<Arc<Outbox>>,
    ) -> Uplink {
        state.send_modify(|s| {
            s.connection = Connection::Connecting;
            s.last_error = None;
            s.undelivered_since = Some(Instant::now());
            s.max_payload_bytes = settings.max_payload_bytes;
        });
        let rate = RateLimit::new(
            settings.max_publishes_per_second,
            settings.max_bytes_per_second,
            std::time::Instant::now(),
        );
        Uplink {
            max_payload_bytes: settings.max_payload_bytes,
            settings,
            gateway_id: gateway_id.to_string(),
            site: site.to_string(),
            journal,
            stats,
            clock,
            state,
            telemetry,
            suspect: None,
            rate,
            alerts,
        }
    }

    /// Runs until `shutdown`, reconnecting whenever the connection is lost.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, self.settings.backoff_cap);
        let mut rng = fastrand::Rng::new();
        let endpoint = format!("{}:{}", self.settings.host, self.settings.port);
        loop {
            self.state
                .send_modify(|s| s.connection = Connection::Connecting);
            let ended = match Session::open(&self.settings) {
                Ok(session) => self.connection(session, &shutdown).await,
                Err(error) => Ended::Lost {
                    error,
                    acked_any: false,
                },
            };
            let Ended::Lost { error, acked_any } = ended else {
                return;
            };
            if acked_any {
                backoff.reset();
            }
            if backoff.failures() % 10 == 0 {
                log::warn!(broker:% = endpoint, fault:? = error.fault(); "uplink: {error}; votes stay in the journal, retrying");
            } else {
                log::debug!(broker:% = endpoint; "uplink: {error}; retrying");
            }
            self.state.send_modify(|s| {
                s.connection = Connection::Disconnected;
                s.last_error = Some(error);
                s.undelivered_since.get_or_insert_with(Instant::now);
            });
            let delay = backoff.next_delay(&mut rng);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connection(&mut self, mut session: Session, shutdown: &CancellationToken) -> Ended {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            connected = tokio::time::timeout(CONNECT_TIMEOUT, wait_connected(&mut session)) => connected,
        };
        match connected {
            Err(_) => return lost(UplinkError::Timeout(CONNECT_TIMEOUT), false),
            Ok(Err(error)) => return lost(error, false),
            Ok(Ok(())) => {}
        }
        log::info!(broker:% = format!("{}:{}", self.settings.host, self.settings.port); "uplink connected");
        self.state.send_modify(|s| {
            s.connection = Connection::Connected;
            s.connections += 1;
        });
        let stats = self.stats.borrow().clone();
        let frontier = stats
            .oldest_seq
            .map_or(stats.next_seq.saturating_sub(1), |s| s - 1);
        let mut cursors = Cursors {
            inflight: InFlight::new(frontier),
            backlog_cursor: frontier,
            backlog_done: false,
            live_start: stats.next_seq,
            live_cursor: stats.next_seq.saturating_sub(1),
            live_since: None,
            alerts_sent: 0,
            wake_at: None,
            acked_any: false,
        };
        cursors.inflight.requested(Tag::Other);
        if let Err(error) = session
            .publish(
                &self.settings.status_topic(),
                b"online".to_vec(),
                true,
                true,
            )
            .await
        {
            return lost(error, false);
        }
        let mut telemetry = tokio::time::interval(self.settings.telemetry_interval);
        let alerts = self.alerts.clone();
        loop {
            if let Err(error) = self.fill(&session, &mut cursors).await {
                return self.lost_with(error, &cursors);
            }
            if let Err(error) = self.send_alerts(&session, &mut cursors).await {
                return self.lost_with(error, &cursors);
            }
            let wake_at = cursors.wake_at.take();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    cursors.inflight.requested(Tag::Other);
                    let _ = session.publish(&self.settings.status_topic(), b"offline".to_vec(), true, true).await;
                    session.disconnect().await;
                    log::info!("uplink disconnected cleanly");
                    return Ended::Shutdown;
                }
                event = session.events.recv() => match event {
                    Some(SessionEvent::Written(pkid)) => cursors.inflight.written(pkid),
                    Some(SessionEvent::Acked(pkid)) => {
                        self.state.send_if_modified(|s| s.undelivered_since.take().is_some());
                        if let Some(number) = cursors.inflight.acked_alert(pkid) {
                            self.alert_delivered(number).await;
                        }
                        if let Some(through) = cursors.inflight.acked_drops(pkid) {
                            if let Err(err) = self.journal.forget_drops_through(through).await {
                                log::warn!("uplink: reported drops not forgotten ({err}); they will be reported again");
                            }
                        }
                        if let Some(frontier) = cursors.inflight.acked(pkid) {
                            self.acknowledge(frontier, &mut cursors).await;
                        }
                    }
                    Some(SessionEvent::Connected) => {}
                    Some(SessionEvent::Lost(error)) => return self.lost_with(error, &cursors),
                    None => return self.lost_with(UplinkError::Closed("session ended".into()), &cursors),
                },
                changed = self.stats.changed() => {
                    if changed.is_err() {
                        return Ended::Shutdown; // the journal is gone: the daemon is stopping
                    }
                }
                _ = sleep_until(wake_at), if wake_at.is_some() => {}
                _ = alerts_changed(alerts.as_deref()), if alerts.is_some() => {}
                _ = telemetry.tick() => {
                    cursors.inflight.requested(Tag::Other);
                    if let Err(error) = session.publish(&self.settings.telemetry_topic(), (self.telemetry)(), false, false).await {
                        return self.lost_with(error, &cursors);
                    }
                }
            }
        }
    }

    /// Publishes batches while slots are free: live votes first, then the backlog.
    async fn fill(&mut self, session: &Session, cursors: &mut Cursors) -> Result<(), UplinkError> {
        while cursors.inflight.batches_in_flight() < self.settings.max_in_flight {
            let now = Instant::now();
            let newest = self.stats.borrow().next_seq.saturating_sub(1);
            if newest > cursors.live_cursor {
                let since = *cursors.live_since.get_or_insert(now);
                let waiting = usize::try_from(newest - cursors.live_cursor).unwrap_or(usize::MAX);
                let due = now >= since + self.settings.max_batch_age
                    || waiting >= self.settings.max_batch_votes;
                if due {
                    let votes = self.read(cursors.live_cursor, None).await?;
                    match self
                        .send(session, cursors, cursors.live_cursor, &votes)
                        .await?
                    {
                        Some(last) => {
                            cursors.live_cursor = last;
                            if last >= newest {
                                cursors.live_since = None;
                            }
                            continue;
                        }
                        None => return Ok(()), // rate limited
                    }
                }
                cursors.wake_at = Some(since + self.settings.max_batch_age);
            }
            if cursors.backlog_done {
                return Ok(());
            }
            let votes = self
                .read(cursors.backlog_cursor, Some(cursors.live_start))
                .await?;
            if votes.is_empty() {
                // Nothing left below the live votes: close the chain up to them.
                cursors.backlog_done = true;
                let end = cursors.live_start.saturating_sub(1);
                if end > cursors.backlog_cursor {
                    if let Some(frontier) = cursors.inflight.skip(cursors.backlog_cursor, end) {
                        self.acknowledge(frontier, cursors).await;
                    }
                }
                continue;
            }
            match self
                .send(session, cursors, cursors.backlog_cursor, &votes)
                .await?
            {
                Some(last) => cursors.backlog_cursor = last,
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Publishes the alert messages waiting in the outbox that this connection has not sent.
    async fn send_alerts(
        &mut self,
        session: &Session,
        cursors: &mut Cursors,
    ) -> Result<(), UplinkError> {
        let Some(outbox) = &self.alerts else {
            return Ok(());
        };
        for (number, bytes) in outbox.waiting_after(cursors.alerts_sent, ALERTS_PER_FILL) {
            cursors.inflight.requested(Tag::Alert(number));
            session
                .publish(&self.settings.alerts_topic(), bytes.to_vec(), true, false)
                .await?;
            cursors.alerts_sent = number;
            log::debug!(message = number; "uplink: alert published");
        }
        Ok(())
    }

    /// The broker has alert message `number`: it leaves the outbox.
    async fn alert_delivered(&self, number: u64) {
        let Some(outbox) = self.alerts.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || outbox.delivered(number)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => log::warn!("{err}; the alert may be sent again"),
            Err(err) => log::warn!("alerts outbox: {err}; the alert may be sent again"),
        }
    }

    /// Votes after `after` (below `below`, if given), up to a batch's worth.
    async fn read(&self, after: Seq, below: Option<Seq>) -> Result<Vec<Vote>, UplinkError> {
        let mut votes = self
            .journal
            .read_after(after, self.settings.max_batch_votes)
            .await
            .map_err(|e| UplinkError::Protocol(format!("journal: {e}")))?;
        if let Some(below) = below {
            votes.retain(|v| v.seq < below);
        }
        Ok(votes)
    }

    /// Publishes one batch of `votes` (read after `after`). Returns its last seq, or `None` when
    /// the rate limit says wait (then `wake_at` is set).
    async fn send(
        &mut self,
        session: &Session,
        cursors: &mut Cursors,
        after: Seq,
        votes: &[Vote],
    ) -> Result<Option<Seq>, UplinkError> {
        let now = self.clock.now();
        let wire: Vec<WireVote> = votes.iter().map(|v| WireVote::from_vote(v, &now)).collect();
        let dropped: Vec<DroppedRange> = self
            .journal
            .unreported_drops()
            .await
            .map_err(|e| UplinkError::Protocol(format!("journal: {e}")))?
            .into_iter()
            .take(DROPPED_PER_BATCH)
            .map(|(first_seq, last_seq)| DroppedRange {
                first_seq,
                last_seq,
            })
            .collect();
        let Some((payload, _taken)) = batch::cut(
            &wire,
            &dropped,
            &self.gateway_id,
            &self.site,
            self.settings.format,
            self.settings.max_batch_votes,
            self.max_payload_bytes,
        ) else {
            return Ok(Some(after));
        };
        let bytes = encode(&payload, self.settings.format);
        let wait = self.rate.try_take(bytes.len(), std::time::Instant::now());
        if !wait.is_zero() {
            cursors.wake_at = Some(Instant::now() + wait);
            return Ok(None);
        }
        let last = payload.last_seq;
        let drops_through = payload.dropped.last().map(|range| range.last_seq);
        cursors.inflight.requested(Tag::Batch {
            after,
            last,
            drops_through,
        });
        session
            .publish(&self.settings.votes_topic(), bytes, true, false)
            .await?;
        log::debug!(first_seq = payload.first_seq, last_seq = last, votes = payload.votes.len(); "uplink: batch published");
        Ok(Some(last))
    }

    async fn acknowledge(&mut self, frontier: Seq, cursors: &mut Cursors) {
        cursors.acked_any = true;
        self.suspect = None;
        match self.journal.ack_through(frontier).await {
            Ok(deleted) => {
                let now_ms = self.clock.now().wall_ms;
                self.state.send_modify(|s| {
                    s.votes_acked += deleted;
                    s.batches_acked += 1;
                    s.last_upload_ms = Some(now_ms);
                });
            }
            Err(err) => log::warn!(
                "uplink: acknowledged votes not deleted yet ({err}); they will be sent again"
            ),
        }
    }

    /// Records a lost connection; lowers the batch size when the broker keeps refusing one batch.
    fn lost_with(&mut self, error: UplinkError, cursors: &Cursors) -> Ended {
        if let Some(after) = cursors.inflight.oldest_unacked() {
            let strikes = match self.suspect {
                Some((seq, strikes)) if seq == after => strikes + 1,
                _ => 1,
            };
            self.suspect = Some((after, strikes));
            if strikes >= OVERSIZE_STRIKES && self.max_payload_bytes > MIN_PAYLOAD_BYTES {
                let lowered = (self.max_payload_bytes / 2).max(MIN_PAYLOAD_BYTES);
                log::warn!(
                    "uplink: the broker closed the connection {strikes} times while the batch after seq {after} was in flight: \
                     lowering batches from {} to {lowered} bytes (set uplink.max-payload-size below the broker's packet limit)",
                    self.max_payload_bytes
                );
                self.max_payload_bytes = lowered;
                self.suspect = None;
                self.state.send_modify(|s| s.max_payload_bytes = lowered);
            }
        }
        lost(error, cursors.acked_any)
    }
}

fn lost(error: UplinkError, acked_any: bool) -> Ended {
    Ended::Lost { error, acked_any }
}

async fn wait_connected(session: &mut Session) -> Result<(), UplinkError> {
    loop {
        match session.events.recv().await {
            Some(SessionEvent::Connected) => return Ok(()),
            Some(SessionEvent::Lost(error)) => return Err(error),
            Some(_) => {}
            None => return Err(UplinkError::Closed("session ended".into())),
        }
    }
}

async fn alerts_changed(outbox: Option<&Outbox>) {
    match outbox {
        Some(outbox) => outbox.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
