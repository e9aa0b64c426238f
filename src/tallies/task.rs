//! The tallies task: rebuilds the tallies from the journal's minute counts, then follows the
//! journal's accepted votes, publishing a snapshot (for `GET /api/v1/tallies`) and a live event
//! (for `GET /api/v1/events`) for each, and a fresh snapshot every minute as the windows roll.
//! A new [`TallySetup`] (a reload changed the time zone, the day start, the opening hours or the
//! terminals) rebuilds the tallies from the journal under the new rules: nothing is counted
//! twice, since votes below the journal's `next_seq` at the rebuild come from its counts only.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::feed::{LiveEvent, LiveFeed};
use super::{rfc3339_utc, Tallies, TalliesSnapshot, TallyRules};
use crate::alerts::outbox::AlertSink;
use crate::alerts::{AlertEngine, AlertEvent, AlertRule, AlertsSnapshot, AlertsState};
use crate::clock::Clock;
use crate::journal::{JournalError, JournalHandle};
use crate::model::{Seq, TerminalId, Vote};

/// How often the windows are recomputed without votes.
const ROLL_EVERY: Duration = Duration::from_secs(30);

/// What the tallies count by: the rules and the configured terminals.
#[derive(Clone, Debug)]
pub struct TallySetup {
    /// Time zone, day start, opening hours.
    pub rules: TallyRules,
    /// The configured terminals (each gets windows, votes or not).
    pub terminals: Vec<TerminalId>,
    /// The alert rules, evaluated on every vote and as the windows roll.
    pub alerts: Vec<AlertRule>,
}

/// Where the alerts start from, and where they go besides screens.
pub struct AlertsSetup {
    /// What the outbox kept from before a restart.
    pub state: AlertsState,
    /// The outbox (for the uplink), if there is one.
    pub sink: Option<AlertSink>,
}

/// What the tallies publish.
#[derive(Clone)]
pub struct TalliesOutput {
    /// The latest snapshot.
    pub snapshot: watch::Receiver<Arc<TalliesSnapshot>>,
    /// Live events for screens.
    pub feed: Arc<LiveFeed>,
    /// The open and recently closed alerts.
    pub alerts: watch::Receiver<Arc<AlertsSnapshot>>,
}

/// A vote event's JSON.
#[derive(Serialize)]
struct VoteEventData<'a> {
    vote: VoteJson<'a>,
    /// The tallies after this vote; only on the last vote of a burst that arrived together.
    tallies: Option<&'a TalliesSnapshot>,
}

/// Most votes taken from the broadcast before the tallies are computed once for all of them.
const BURST: usize = 256;

/// A vote as screens see it.
#[derive(Serialize)]
pub struct VoteJson<'a> {
    /// Its seq.
    pub seq: Seq,
    /// Its terminal.
    pub terminal: &'a str,
    /// 1 to 4.
    pub button: u8,
    /// RFC 3339 UTC.
    pub ts: String,
    /// Filtered by the anti-abuse rule (not counted).
    pub filtered: bool,
}

impl<'a> VoteJson<'a> {
    /// The screen view of a vote.
    pub fn of(vote: &'a Vote) -> VoteJson<'a> {
        VoteJson {
            seq: vote.seq,
            terminal: vote.terminal.as_str(),
            button: vote.button.number(),
            ts: rfc3339_utc(i64::try_from(vote.ts_ms).unwrap_or(i64::MAX)),
            filtered: vote.filtered,
        }
    }
}

/// Starts the tallies: loads the journal's minute counts and returns the outputs, plus the task
/// to spawn.
pub async fn start(
    rules: TallyRules,
    terminals: Vec<TerminalId>,
    journal: JournalHandle,
    votes: broadcast::Receiver<Vote>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(TalliesOutput, impl std::future::Future<Output = ()>), JournalError> {
    // The sender goes at once: this setup never changes.
    let setup = watch::channel(TallySetup {
        rules,
        terminals,
        alerts: vec![AlertRule::default_rule()],
    })
    .1;
    let alerts = AlertsSetup {
        state: AlertsState::default(),
        sink: None,
    };
    start_following(setup, alerts, journal, votes, clock, shutdown).await
}

/// [`start`] with a setup that may change (the daemon's reload).
pub async fn start_following(
    mut setup: watch::Receiver<TallySetup>,
    alerts: AlertsSetup,
    journal: JournalHandle,
    votes: broadcast::Receiver<Vote>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(TalliesOutput, impl std::future::Future<Output = ()>), JournalError> {
    let TallySetup {
        rules,
        terminals,
        alerts: alert_rules,
    } = setup.borrow_and_update().clone();
    let now = now_ms(&*clock);
    // `votes` was subscribed before this read: votes below `next_seq` are in the counts.
    let (tallies, next_seq) = load(&journal, &rules, &terminals, now).await?;
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(tallies.snapshot(now)));
    let feed = Arc::new(LiveFeed::new(next_seq));
    let engine = AlertEngine::new(alert_rules, alerts.state);
    let (alerts_tx, alerts_rx) = watch::channel(Arc::new(engine.snapshot()));
    let output = TalliesOutput {
        snapshot,
        feed: feed.clone(),
        alerts: alerts_rx,
    };
    let follower = Follower {
        rules,
        terminals,
        tallies,
        alerts: engine,
        alert_sink: alerts.sink,
        alerts_out: alerts_tx,
        skip_below: next_seq,
        journal,
        clock,
        snapshot: snapshot_tx,
        feed,
    };
    Ok((output, follower.run(votes, setup, shutdown)))
}

/// Tallies rebuilt from the journal's counts, and the seq below which every vote is in them.
async fn load(
    journal: &JournalHandle,
    rules: &TallyRules,
    terminals: &[TerminalId],
    now: i64,
) -> Result<(Tallies, Seq), JournalError> {
    let mut tallies = Tallies::new(rules.clone(), terminals);
    let counts = journal
        .counts_for_tallies(tallies.quarters_needed_from(now))
        .await?;
    tallies.load(&counts.minutes);
    tallies.load_quarters(&counts.quarters);
    Ok((tallies, counts.next_seq))
}

/// Sleeps until the wall clock reads `at_ms` (forever for `None`).
async fn sleep_until_wall(at_ms: Option<i64>, clock: &dyn Clock) {
    match at_ms {
        Some(at) => {
            let wait = u64::try_from(at - now_ms(clock)).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

fn now_ms(clock: &dyn Clock) -> i64 {
    i64::try_from(clock.now().wall_ms).unwrap_or(i64::MAX)
}

struct Follower {
    rules: TallyRules,
    terminals: Vec<TerminalId>,
    tallies: Tallies,
    alerts: AlertEngine,
    alert_sink: Option<AlertSink>,
    alerts_out: watch::Sender<Arc<AlertsSnapshot>>,
    skip_below: Seq,
    journal: JournalHandle,
    clock: Arc<dyn Clock>,
    snapshot: watch::Sender<Arc<TalliesSnapshot>>,
    feed: Arc<LiveFeed>,
}

impl Follower {
    async fn run(
        mut self,
        mut votes: broadcast::Receiver<Vote>,
        mut setup: watch::Receiver<TallySetup>,
        shutdown: CancellationToken,
    ) {
        let mut roll = tokio::time::interval(ROLL_EVERY);
        roll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut following = true;
        loop {
            let alert_check = self.alerts.next_check();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = roll.tick() => self.roll(),
                _ = sleep_until_wall(alert_check, &*self.clock), if alert_check.is_some() => {
                    self.evaluate_alerts(now_ms(&*self.clock));
                }
                changed = setup.changed(), if following => match changed {
                    Ok(()) => {
                        let TallySetup { rules, terminals, alerts } = setup.borrow_and_update().clone();
                        self.rules = rules;
                        self.terminals = terminals;
                        self.alerts.set_rules(alerts);
                        log::info!(terminals = self.terminals.len(); "tallies: new rules, rebuilding from the journal");
                        self.rebuild().await;
                    }
                    Err(_) => following = false,
                },
                received = votes.recv() => match received {
                    Ok(vote) => {
                        // Whatever else has arrived goes with it: the tallies cost one pass over
                        // every terminal's minutes, once per burst rather than once per vote.
                        let mut burst = vec![vote];
                        while burst.len() < BURST {
                            match votes.try_recv() {
                                Ok(vote) => burst.push(vote),
                                Err(_) => break,
                            }
                        }
                        self.add(&burst);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        log::warn!("tallies fell {missed} votes behind; rebuilding from the journal");
                        self.rebuild().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Counts votes that arrived together and publishes an event for each; the last carries
    /// the new tallies.
    fn add(&mut self, votes: &[Vote]) {
        let votes: Vec<&Vote> = votes.iter().filter(|v| v.seq >= self.skip_below).collect();
        let Some(last) = votes.last().map(|v| v.seq) else {
            return;
        };
        for vote in &votes {
            self.tallies.add(vote);
        }
        let now = now_ms(&*self.clock);
        let snapshot = Arc::new(self.tallies.snapshot(now));
        for vote in votes {
            let data = VoteEventData {
                vote: VoteJson::of(vote),
                tallies: (vote.seq == last).then_some(&*snapshot),
            };
            self.feed.publish(LiveEvent {
                id: Some(vote.seq),
                kind: "vote",
                data: serde_json::to_string(&data).unwrap_or_default(),
            });
        }
        self.snapshot.send_replace(snapshot);
        self.evaluate_alerts(now);
    }

    /// Evaluates the alert rules; publishes what opened or closed to screens, the outbox and
    /// `GET /api/v1/alerts`.
    fn evaluate_alerts(&mut self, now: i64) {
        let tallies = &self.tallies;
        let events = self
            .alerts
            .evaluate(now, &self.terminals, |terminal, minutes| {
                tallies.counts_in_last(terminal, minutes, now)
            });
        if events.is_empty() {
            return;
        }
        for event in &events {
            let alert = event.alert();
            match event {
                AlertEvent::Opened(_) => log::warn!(
                    alert = alert.id, scope:% = alert.scope, value = alert.value, votes = alert.votes;
                    "alert opened: {}", alert.rule
                ),
                AlertEvent::Closed(_) => log::info!(
                    alert = alert.id, scope:% = alert.scope;
                    "alert closed: {}", alert.rule
                ),
            }
            self.feed.publish(LiveEvent {
                id: None,
                kind: event.name(),
                data: serde_json::to_string(alert).unwrap_or_default(),
            });
        }
        if let Some(sink) = &self.alert_sink {
            sink.send(&events, self.alerts.state());
        }
        self.alerts_out
            .send_replace(Arc::new(self.alerts.snapshot()));
    }

    fn roll(&mut self) {
        let now = now_ms(&*self.clock);
        self.tallies.prune(now);
        let snapshot = Arc::new(self.tallies.snapshot(now));
        // Rolls that change nothing are not news (every snapshot differs in `generated_at`).
        if !self.snapshot.borrow().same_tallies(&snapshot) {
            self.feed.publish(LiveEvent {
                id: None,
                kind: "tallies",
                data: serde_json::to_string(&*snapshot).unwrap_or_default(),
            });
        }
        self.snapshot.send_replace(snapshot);
        self.evaluate_alerts(now);
    }

    async fn rebuild(&mut self) {
        let now = now_ms(&*self.clock);
        match load(&self.journal, &self.rules, &self.terminals, now).await {
            Ok((tallies, next_seq)) => {
                self.tallies = tallies;
                self.skip_below = next_seq;
                self.roll();
            }
            Err(err) => log::error!("tallies cannot rebuild from the journal: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::journal::{spawn, Journal, Limits};
    use crate::model::{Button, Press, PressTime};
    use jiff::tz::TimeZone;

    /// 2026-11-18 12:06:40 in Berlin: no day boundary within the test's 21 minutes.
    const MORNING_MS: u64 = 1_795_000_000_000;

    fn press_at(clock: &FakeClock) -> Press {
        let now = clock.now();
        Press {
            terminal: TerminalId::new("entrance").expect("id"),
            button: Button::Happy,
            term_seq: Some(1),
            at: PressTime {
                ts_ms: now.wall_ms,
                clock_synced: true,
                boot_id: now.boot_id,
                mono_ms: now.mono_ms,
            },
            filtered: false,
        }
    }

    /// Lets `minutes` of rolls happen, the wall clock keeping pace with tokio's paused one.
    async fn let_minutes_pass(clock: &FakeClock, minutes: u64) {
        for _ in 0..minutes * 2 {
            clock.advance_ms(30_000);
            tokio::time::sleep(ROLL_EVERY).await;
        }
    }

    fn kinds(events: &mut broadcast::Receiver<Arc<LiveEvent>>) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        loop {
            match events.try_recv() {
                Ok(event) => kinds.push(event.kind),
                Err(broadcast::error::TryRecvError::Empty) => return kinds,
                Err(err) => panic!("the screen's receiver: {err}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn screens_hear_of_a_roll_only_when_it_changes_the_windows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal =
            spawn(Journal::open(dir.path(), Limits::default()).expect("open")).expect("spawn");
        let clock = Arc::new(FakeClock::new(MORNING_MS));
        let shutdown = CancellationToken::new();
        let rules = TallyRules::new(
            TimeZone::get("Europe/Berlin").expect("tzdb"),
            "Europe/Berlin",
        );
        let terminals = vec![TerminalId::new("entrance").expect("id")];
        let (output, follower) = start(
            rules,
            terminals,
            journal.handle(),
            journal.subscribe(),
            clock.clone(),
            shutdown.clone(),
        )
        .await
        .expect("tallies");
        let (_, mut events) = output.feed.subscribe(None);
        let follower = tokio::spawn(follower);

        let_minutes_pass(&clock, 5).await;
        assert_eq!(kinds(&mut events), Vec::<&str>::new(), "an idle site");

        journal
            .handle()
            .append(press_at(&clock))
            .await
            .expect("append");
        let_minutes_pass(&clock, 1).await;
        assert_eq!(kinds(&mut events), ["vote"]);
        assert_eq!(output.snapshot.borrow().site.last_15m.total(), 1);

        // The vote leaves the last 15 minutes: that roll is news, the others are not.
        let_minutes_pass(&clock, 15).await;
        assert_eq!(kinds(&mut events), ["tallies"]);
        assert_eq!(output.snapshot.borrow().site.last_15m.total(), 0);
        assert_eq!(output.snapshot.borrow().site.last_60m.total(), 1);

        shutdown.cancel();
        follower.await.expect("follower");
        journal.shutdown().await.expect("journal");
    }
}
