//! Alerts: rules over a window of the tallies that open an alert when they hold and close it by
//! themselves once they have not held for a hold-down period. Pure: time and counts are passed
//! in; [`outbox`] keeps what must survive a restart or an outage.
//!
//! A rule is one of four kinds, each over the last `window` minutes and only with at least
//! `min-votes` counted votes in it:
//! - `negative-share`: (very unhappy + unhappy) / counted × 100 ≥ `threshold`;
//! - `index-below` / `index-above`: the happy index (0…100) below / above `threshold`;
//! - `button-count`: presses of `button` ≥ `threshold`.
//!
//! A rule watches the site, one terminal, or each terminal. An alert is identified by its rule
//! and scope: while one is open no second opens for the same pair; once closed, the next time
//! the rule holds opens a new alert with a new id.

pub mod outbox;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Button, TerminalId};
use crate::tallies::{rfc3339_utc, Counts};

/// Closed alerts kept for `GET /api/v1/alerts`…
const RECENT_CAPACITY: usize = 50;
/// …for at most this long after they closed.
const RECENT_MS: i64 = 24 * 3_600_000;

/// What a rule compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// Share of very unhappy and unhappy presses, in percent, at or above the threshold.
    NegativeShare,
    /// Happy index below the threshold.
    IndexBelow,
    /// Happy index above the threshold.
    IndexAbove,
    /// Presses of one button at or above the threshold.
    ButtonCount,
}

impl AlertKind {
    /// The kinds as config files name them.
    pub const NAMES: [(&'static str, AlertKind); 4] = [
        ("negative-share", AlertKind::NegativeShare),
        ("index-below", AlertKind::IndexBelow),
        ("index-above", AlertKind::IndexAbove),
        ("button-count", AlertKind::ButtonCount),
    ];

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::NegativeShare => "negative-share",
            AlertKind::IndexBelow => "index-below",
            AlertKind::IndexAbove => "index-above",
            AlertKind::ButtonCount => "button-count",
        }
    }
}

/// What a rule watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertScope {
    /// The whole site's votes.
    Site,
    /// One terminal's.
    Terminal(TerminalId),
    /// Each terminal's on its own (`terminal = "*"`; the default rule).
    EachTerminal,
}

/// One `[[alert]]` rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    /// What it compares.
    pub kind: AlertKind,
    /// The threshold (percent, index points or presses).
    pub threshold: f64,
    /// The window, in whole minutes (the current minute and the ones before it).
    pub window_minutes: u32,
    /// Fewer counted votes than this in the window never open an alert.
    pub min_votes: u64,
    /// What it watches.
    pub scope: AlertScope,
    /// The button a `button-count` rule counts.
    pub button: Option<Button>,
    /// How long the rule must have stopped holding before its alert closes.
    pub hold_down_ms: i64,
}

impl AlertRule {
    /// The rule that is on when none is configured: 50 % or more negative presses over 15
    /// minutes with at least 4 votes, per terminal, closing after 5 minutes of recovery.
    pub fn default_rule() -> AlertRule {
        AlertRule {
            kind: AlertKind::NegativeShare,
            threshold: 50.0,
            window_minutes: 15,
            min_votes: 4,
            scope: AlertScope::EachTerminal,
            button: None,
            hold_down_ms: DEFAULT_HOLD_DOWN_MS,
        }
    }

    /// The number the rule compares, when there are enough votes to judge.
    pub fn value(&self, counts: &Counts) -> Option<f64> {
        if counts.total() == 0 || counts.total() < self.min_votes {
            return None;
        }
        match self.kind {
            AlertKind::NegativeShare => counts
                .positive_pct()
                .map(|positive| round_2(100.0 - positive)),
            AlertKind::IndexBelow | AlertKind::IndexAbove => counts.happy_index().map(round_2),
            AlertKind::ButtonCount => self.button.map(|b| counts.0[b.index()] as f64),
        }
    }

    /// Whether the rule holds for `value`.
    pub fn holds(&self, value: f64) -> bool {
        match self.kind {
            AlertKind::NegativeShare | AlertKind::ButtonCount => value >= self.threshold,
            AlertKind::IndexBelow => value < self.threshold,
            AlertKind::IndexAbove => value > self.threshold,
        }
    }

    fn window_text(&self) -> String {
        if self.window_minutes % 60 == 0 {
            format!("{}h", self.window_minutes / 60)
        } else {
            format!("{}m", self.window_minutes)
        }
    }

    /// The scopes this rule is evaluated for, given the site's terminals.
    fn scopes(&self, terminals: &[TerminalId]) -> Vec<Option<TerminalId>> {
        match &self.scope {
            AlertScope::Site => vec![None],
            AlertScope::Terminal(id) => vec![Some(id.clone())],
            AlertScope::EachTerminal => terminals.iter().cloned().map(Some).collect(),
        }
    }
}

impl fmt::Display for AlertRule {
    /// `negative-share >= 50 over 15m, min 4 votes` (the `rule` field of an alert: an open
    /// alert belongs to the rule with the same text).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let comparison = match self.kind {
            AlertKind::NegativeShare | AlertKind::ButtonCount => ">=",
            AlertKind::IndexBelow => "<",
            AlertKind::IndexAbove => ">",
        };
        write!(f, "{}", self.kind.name())?;
        if let Some(button) = self.button {
            write!(f, " of button {}", button.number())?;
        }
        write!(
            f,
            " {comparison} {} over {}, min {} votes",
            self.threshold,
            self.window_text(),
            self.min_votes
        )
    }
}

/// The default hold-down: 5 minutes.
pub const DEFAULT_HOLD_DOWN_MS: i64 = 5 * 60_000;

fn round_2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Open or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The rule holds (or stopped holding less than its hold-down ago).
    Open,
    /// It stopped holding.
    Closed,
}

/// One alert, as `GET /api/v1/alerts`, the live events and the MQTT topic show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Increases with every alert this gateway opens (kept across restarts).
    pub id: u64,
    /// `site`, or the terminal's id.
    pub scope: String,
    /// The rule, as text (see [`AlertRule`]'s `Display`).
    pub rule: String,
    /// The rule's kind.
    pub kind: AlertKind,
    /// Its threshold.
    pub threshold: f64,
    /// Its window (`15m`, `1h`).
    pub window: String,
    /// Its minimum votes.
    pub min_votes: u64,
    /// The button a `button-count` rule counts (1…4).
    pub button: Option<u8>,
    /// Open or closed.
    pub state: AlertState,
    /// When it opened (RFC 3339 UTC).
    pub opened_at: String,
    /// When it closed.
    pub closed_at: Option<String>,
    /// The number that opened it: the negative share in percent, the index, or the count.
    pub value: f64,
    /// Counted votes in the window when it opened.
    pub votes: u64,
}

/// An alert opening or closing.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertEvent {
    /// A rule started to hold.
    Opened(Alert),
    /// It stopped holding for its hold-down (or the rule is gone).
    Closed(Alert),
}

impl AlertEvent {
    /// The alert as it is now.
    pub fn alert(&self) -> &Alert {
        match self {
            AlertEvent::Opened(alert) | AlertEvent::Closed(alert) => alert,
        }
    }

    /// `alert-opened` or `alert-closed` (the live event's name).
    pub fn name(&self) -> &'static str {
        match self {
            AlertEvent::Opened(_) => "alert-opened",
            AlertEvent::Closed(_) => "alert-closed",
        }
    }
}

/// `GET /api/v1/alerts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertsSnapshot {
    /// Open alerts, oldest first.
    pub open: Vec<Alert>,
    /// Alerts closed in the last 24 hours, newest first (at most 50).
    pub recent: Vec<Alert>,
}

/// What must survive a restart: the next id and the open alerts (so that an alert open before
/// a restart is not opened again with a new id, and closes as the same alert).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertsState {
    /// The id the next alert gets.
    pub next_id: u64,
    /// Open alerts.
    pub open: Vec<Alert>,
}

/// An open alert and since when its rule has stopped holding.
#[derive(Clone, Debug)]
struct OpenAlert {
    alert: Alert,
    clear_since: Option<i64>,
}

/// The alert rules and the alerts they opened.
#[derive(Clone, Debug)]
pub struct AlertEngine {
    rules: Vec<AlertRule>,
    /// By (rule text, scope).
    open: BTreeMap<(String, String), OpenAlert>,
    /// Closed, newest first.
    recent: VecDeque<(i64, Alert)>,
    next_id: u64,
}

impl AlertEngine {
    /// An engine for `rules` that goes on from `state` (what [`AlertEngine::state`] gave
    /// before a restart).
    pub fn new(rules: Vec<AlertRule>, state: AlertsState) -> AlertEngine {
        let open = state
            .open
            .into_iter()
            .map(|alert| {
                let key = (alert.rule.clone(), alert.scope.clone());
                (
                    key,
                    OpenAlert {
                        alert,
                        clear_since: None,
                    },
                )
            })
            .collect();
        AlertEngine {
            rules,
            open,
            recent: VecDeque::new(),
            next_id: state.next_id.max(1),
        }
    }

    /// New rules (a reload). Alerts of rules that are gone close at the next evaluation.
    pub fn set_rules(&mut self, rules: Vec<AlertRule>) {
        self.rules = rules;
    }

    /// Evaluates every rule at `now_ms` for the site and `terminals`; `counts(terminal,
    /// minutes)` gives the counted votes of a terminal (or the site, for `None`) in the last
    /// `minutes` minutes. Returns the alerts that opened or closed.
    pub fn evaluate(
        &mut self,
        now_ms: i64,
        terminals: &[TerminalId],
        counts: impl Fn(Option<&TerminalId>, u32) -> Counts,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let mut live = Vec::new();
        let rules = self.rules.clone();
        for rule in &rules {
            let rule_text = rule.to_string();
            for terminal in rule.scopes(terminals) {
                let scope = terminal
                    .as_ref()
                    .map_or_else(|| "site".to_string(), |t| t.as_str().to_string());
                let key = (rule_text.clone(), scope);
                let window = counts(terminal.as_ref(), rule.window_minutes);
                let value = rule.value(&window).filter(|v| rule.holds(*v));
                live.push(key.clone());
                match (self.open.get_mut(&key), value) {
                    (Some(open), Some(_)) => open.clear_since = None,
                    (Some(open), None) => {
                        let since = *open.clear_since.get_or_insert(now_ms);
                        if now_ms - since >= rule.hold_down_ms {
                            events.extend(self.close(&key, now_ms));
                        }
                    }
                    (None, Some(value)) => {
                        events.push(self.open(rule, key, value, window.total(), now_ms));
                    }
                    (None, None) => {}
                }
            }
        }
        let orphans: Vec<(String, String)> = self
            .open
            .keys()
            .filter(|key| !live.contains(key))
            .cloned()
            .collect();
        for key in orphans {
            events.extend(self.close(&key, now_ms));
        }
        self.recent
            .retain(|(closed_ms, _)| now_ms - closed_ms < RECENT_MS);
        events
    }

    fn open(
        &mut self,
        rule: &AlertRule,
        key: (String, String),
        value: f64,
        votes: u64,
        now_ms: i64,
    ) -> AlertEvent {
        let alert = Alert {
            id: self.next_id,
            scope: key.1.clone(),
            rule: key.0.clone(),
            kind: rule.kind,
            threshold: rule.threshold,
            window: rule.window_text(),
            min_votes: rule.min_votes,
            button: rule.button.map(Button::number),
            state: AlertState::Open,
            opened_at: rfc3339_utc(now_ms),
            closed_at: None,
            value,
            votes,
        };
        self.next_id += 1;
        self.open.insert(
            key,
            OpenAlert {
                alert: alert.clone(),
                clear_since: None,
            },
        );
        AlertEvent::Opened(alert)
    }

    fn close(&mut self, key: &(String, String), now_ms: i64) -> Option<AlertEvent> {
        let mut alert = self.open.remove(key)?.alert;
        alert.state = AlertState::Closed;
        alert.closed_at = Some(rfc3339_utc(now_ms));
        self.recent.push_front((now_ms, alert.clone()));
        self.recent.truncate(RECENT_CAPACITY);
        Some(AlertEvent::Closed(alert))
    }

    /// When an open alert may close without a vote arriving (its hold-down ends), if any.
    pub fn next_check(&self) -> Option<i64> {
        self.open
            .values()
            .filter_map(|open| {
                let since = open.clear_since?;
                let rule = self.rules.iter().find(|r| r.to_string() == open.alert.rule);
                Some(since + rule.map_or(0, |r| r.hold_down_ms))
            })
            .min()
    }

    /// The open and recently closed alerts.
    pub fn snapshot(&self) -> AlertsSnapshot {
        let mut open: Vec<Alert> = self.open.values().map(|o| o.alert.clone()).collect();
        open.sort_by_key(|alert| alert.id);
        AlertsSnapshot {
            open,
            recent: self.recent.iter().map(|(_, alert)| alert.clone()).collect(),
        }
    }

    /// What to keep across a restart.
    pub fn state(&self) -> AlertsState {
        AlertsState {
            next_id: self.next_id,
            open: self.snapshot().open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    const T0: i64 = 1_795_000_000_000;

    fn id(name: &str) -> TerminalId {
        TerminalId::new(name).expect("id")
    }

    fn rule(kind: AlertKind, threshold: f64) -> AlertRule {
        AlertRule {
            kind,
            threshold,
            window_minutes: 15,
            min_votes: 4,
            scope: AlertScope::Site,
            button: None,
            hold_down_ms: 5 * MINUTE,
        }
    }

    /// Evaluates with the same counts for every scope.
    fn run(engine: &mut AlertEngine, now: i64, counts: [u64; 4]) -> Vec<AlertEvent> {
        engine.evaluate(now, &[id("a")], |_, _| Counts(counts))
    }

    fn opened(events: &[AlertEvent]) -> Vec<&Alert> {
        events
            .iter()
            .filter_map(|e| match e {
                AlertEvent::Opened(a) => Some(a),
                AlertEvent::Closed(_) => None,
            })
            .collect()
    }

    fn closed(events: &[AlertEvent]) -> Vec<&Alert> {
        events
            .iter()
            .filter_map(|e| match e {
                AlertEvent::Closed(a) => Some(a),
                AlertEvent::Opened(_) => None,
            })
            .collect()
    }

    #[test]
    fn negative_share_opens_holds_and_closes_after_the_hold_down() {
        let mut engine = AlertEngine::new(
            vec![rule(AlertKind::NegativeShare, 50.0)],
            AlertsState::default(),
        );
        // Three of four negative: 75 % ≥ 50 %.
        let events = run(&mut engine, T0, [2, 1, 1, 0]);
        let alert = opened(&events)[0].clone();
        assert_eq!((alert.id, alert.value, alert.votes), (1, 75.0, 4));
        assert_eq!(alert.scope, "site");
        assert_eq!(alert.rule, "negative-share >= 50 over 15m, min 4 votes");
        // Still holding: nothing new, one open.
        assert!(run(&mut engine, T0 + MINUTE, [3, 1, 1, 0]).is_empty());
        assert_eq!(engine.snapshot().open.len(), 1);
        // Recovers: stays open through the hold-down…
        assert!(run(&mut engine, T0 + 2 * MINUTE, [2, 1, 4, 0]).is_empty());
        assert_eq!(engine.next_check(), Some(T0 + 7 * MINUTE));
        assert!(run(&mut engine, T0 + 6 * MINUTE, [2, 1, 4, 0]).is_empty());
        // …and closes when it ends.
        let events = run(&mut engine, T0 + 7 * MINUTE, [2, 1, 4, 0]);
        let closed = closed(&events);
        assert_eq!(closed[0].id, 1);
        assert_eq!(closed[0].state, AlertState::Closed);
        assert!(closed[0].closed_at.is_some());
        assert!(engine.snapshot().open.is_empty());
        assert_eq!(engine.snapshot().recent.len(), 1);
        // Holding again opens a new alert.
        let events = run(&mut engine, T0 + 8 * MINUTE, [4, 0, 0, 0]);
        assert_eq!(opened(&events)[0].id, 2);
    }

    #[test]
    fn a_relapse_within_the_hold_down_keeps_the_same_alert() {
        let mut engine = AlertEngine::new(
            vec![rule(AlertKind::NegativeShare, 50.0)],
            AlertsState::default(),
        );
        run(&mut engine, T0, [4, 0, 0, 0]);
        assert!(run(&mut engine, T0 + MINUTE, [4, 0, 5, 0]).is_empty());
        assert!(run(&mut engine, T0 + 3 * MINUTE, [9, 0, 5, 0]).is_empty());
        // The clear clock restarted: 5 minutes from the second recovery.
        assert!(run(&mut engine, T0 + 4 * MINUTE, [9, 0, 20, 0]).is_empty());
        assert!(run(&mut engine, T0 + 8 * MINUTE, [9, 0, 20, 0]).is_empty());
        assert_eq!(
            closed(&run(&mut engine, T0 + 9 * MINUTE, [9, 0, 20, 0])).len(),
            1
        );
        assert_eq!(engine.snapshot().recent[0].id, 1);
    }

    #[test]
    fn too_few_votes_never_open_an_alert() {
        let mut engine = AlertEngine::new(
            vec![rule(AlertKind::NegativeShare, 50.0)],
            AlertsState::default(),
        );
        assert!(run(&mut engine, T0, [3, 0, 0, 0]).is_empty());
        assert!(run(&mut engine, T0, [0, 0, 0, 0]).is_empty());
        assert_eq!(opened(&run(&mut engine, T0, [4, 0, 0, 0])).len(), 1);
    }

    #[test]
    fn index_below_and_above_compare_the_happy_index() {
        let mut engine = AlertEngine::new(
            vec![
                rule(AlertKind::IndexBelow, 40.0),
                rule(AlertKind::IndexAbove, 90.0),
            ],
            AlertsState::default(),
        );
        // Index of [1,1,1,1] = 50: neither.
        assert!(run(&mut engine, T0, [1, 1, 1, 1]).is_empty());
        // [2,1,1,0]: (0+0+1+2)/12 = 25 < 40.
        let events = run(&mut engine, T0, [2, 1, 1, 0]);
        let below = opened(&events);
        assert_eq!(below.len(), 1);
        assert_eq!(below[0].kind, AlertKind::IndexBelow);
        assert_eq!(below[0].value, 25.0);
        // All very happy: 100 > 90; the low one starts to clear.
        let events = run(&mut engine, T0 + MINUTE, [0, 0, 0, 4]);
        let above = opened(&events);
        assert_eq!(above[0].kind, AlertKind::IndexAbove);
        assert_eq!(above[0].id, 2);
    }

    #[test]
    fn button_count_counts_one_button() {
        let mut count = rule(AlertKind::ButtonCount, 3.0);
        count.button = Some(Button::VeryUnhappy);
        count.min_votes = 0;
        let mut engine = AlertEngine::new(vec![count], AlertsState::default());
        assert!(run(&mut engine, T0, [2, 9, 9, 9]).is_empty());
        let events = run(&mut engine, T0, [3, 0, 0, 0]);
        assert_eq!(opened(&events)[0].value, 3.0);
        assert_eq!(opened(&events)[0].button, Some(1));
    }

    #[test]
    fn the_default_rule_watches_each_terminal_on_its_own() {
        let mut engine = AlertEngine::new(vec![AlertRule::default_rule()], AlertsState::default());
        let (a, b) = (id("a"), id("b"));
        let events = engine.evaluate(T0, &[a.clone(), b.clone()], |terminal, minutes| {
            assert_eq!(minutes, 15);
            match terminal {
                Some(t) if *t == a => Counts([4, 0, 0, 0]),
                _ => Counts([0, 0, 0, 4]),
            }
        });
        let opened = opened(&events);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].scope, "a");
    }

    #[test]
    fn open_alerts_and_ids_survive_a_restart_and_a_removed_rule_closes_its_alert() {
        let mut engine = AlertEngine::new(
            vec![rule(AlertKind::NegativeShare, 50.0)],
            AlertsState::default(),
        );
        run(&mut engine, T0, [4, 0, 0, 0]);
        let state = engine.state();
        assert_eq!(state.next_id, 2);
        let mut restarted = AlertEngine::new(vec![rule(AlertKind::NegativeShare, 50.0)], state);
        assert!(run(&mut restarted, T0 + MINUTE, [4, 0, 0, 0]).is_empty());
        assert_eq!(restarted.snapshot().open[0].id, 1);
        restarted.set_rules(vec![rule(AlertKind::IndexBelow, 10.0)]);
        let events = run(&mut restarted, T0 + 2 * MINUTE, [4, 0, 0, 0]);
        assert_eq!(closed(&events)[0].id, 1);
        assert_eq!(
            opened(&events)[0].id,
            2,
            "the new rule holds too: index 0 < 10"
        );
    }

    #[test]
    fn closed_alerts_are_kept_a_day() {
        let mut fast = rule(AlertKind::NegativeShare, 50.0);
        fast.hold_down_ms = 0;
        let mut engine = AlertEngine::new(vec![fast], AlertsState::default());
        run(&mut engine, T0, [4, 0, 0, 0]);
        assert_eq!(
            closed(&run(&mut engine, T0 + MINUTE, [0, 0, 0, 4])).len(),
            1
        );
        run(&mut engine, T0 + 23 * 60 * MINUTE, [0, 0, 0, 4]);
        assert_eq!(engine.snapshot().recent.len(), 1);
        run(&mut engine, T0 + 25 * 60 * MINUTE, [0, 0, 0, 4]);
        assert!(engine.snapshot().recent.is_empty());
    }
}
