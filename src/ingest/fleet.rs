//! The fleet simulator's decisions (`votegate fleet-sim`, issue 17): what one simulated gateway
//! publishes, and when. Pure: no network, no clock, no files; the caller passes the wall clock
//! in ms and the gateway owns an injected [`fastrand::Rng`], so a seed replays every decision.
//! `cli/fleet_sim.rs` only moves bytes between a [`GatewaySim`] and its MQTT session.
//!
//! A simulated gateway behaves like the real one's uplink, on the real wire format (the batches
//! come from [`crate::uplink::batch::cut`] and [`crate::uplink::payload::encode`]):
//! - **Votes.** Each tick makes 50–150 % of `votes-per-batch` votes (at least one) with the next
//!   gateway-wide seqs, a random terminal (`t1`…) with its own increasing `term_seq`, a skewed
//!   button ([`BUTTON_WEIGHTS`]) and timestamps spread over the interval since the last tick.
//! - **Latency stamp.** The newest vote of each fresh batch is stamped with the wall clock right
//!   before the batch is published for the first time ([`GatewaySim::next_publish`]): the ingest
//!   measures publish → COMMIT from the newest vote's `ts_ms`.
//! - **Flow control.** At most `max-in-flight` publishes are unacknowledged; while that is full
//!   (or the gateway is offline) the tick's votes wait and join the next batch.
//! - **Drops.** With probability `drop` per tick the gateway skips a run of 1–[`LONGEST_DROP`]
//!   seqs (as drop-oldest would) and reports the range in the `dropped` field of every following
//!   batch until a batch carrying it is acknowledged (the gateway's rule, payload.rs).
//! - **Redelivery.** With probability `redeliver` per acknowledged batch the gateway publishes
//!   it again, byte for byte (what a gateway does when a PubAck was lost).
//! - **Reconnects.** After a lost (or deliberately dropped) connection every unacknowledged
//!   batch is published again unchanged, oldest first.
//!
//! Every seq from `first_seq` to `last_seq` of a [`GatewaySummary`] is in an acknowledged batch
//! or in `dropped` once [`GatewaySim::is_settled`]: the ground truth that
//! `votegate ingest report` must agree with.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MqttSettings;
use crate::uplink::batch;
use crate::uplink::payload::{encode, DroppedRange, PayloadFormat, WireVote};
use crate::uplink::UplinkSettings;

/// How often each button is pressed, in per cent (button 1 = very unhappy … 4 = very happy).
pub const BUTTON_WEIGHTS: [u32; 4] = [10, 15, 40, 35];
/// The longest run of seqs one drop skips.
pub const LONGEST_DROP: u64 = 50;
/// Dropped ranges reported per batch at most (the gateway's uplink uses the same number).
pub const DROPPED_PER_BATCH: usize = 64;
/// Fresh ticks vary by this fraction around the nominal interval, so that gateways started
/// together drift apart.
pub const TICK_JITTER: f64 = 0.1;
/// Connections are opened over this long at the start (a thousand TLS handshakes at once would
/// be a storm of the simulator's own making).
pub const CONNECT_SPREAD: Duration = Duration::from_secs(2);

/// A simulator parameter out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FleetError {
    /// The option's value cannot be used.
    #[error("--{option} {value}: {problem}")]
    Invalid {
        /// The command-line option, without the dashes.
        option: &'static str,
        /// The value given.
        value: String,
        /// What is wrong, and what would do.
        problem: String,
    },
}

/// What every simulated gateway of a run shares.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetParams {
    /// How many gateways.
    pub gateways: usize,
    /// Gateway ids are `{prefix}-0001`…; each is also the gateway's MQTT client id.
    pub gateway_prefix: String,
    /// Gateway `n` belongs to site `site-{n % sites}`.
    pub sites: usize,
    /// Batches (ticks) per second per gateway.
    pub rate: f64,
    /// Mean votes per tick.
    pub votes_per_batch: u32,
    /// Terminals per gateway (`t1`…).
    pub terminals: u32,
    /// Probability per acknowledged batch of publishing it again.
    pub redeliver: f64,
    /// Probability per tick of dropping a run of seqs.
    pub drop: f64,
    /// Mean deliberate reconnects per gateway per hour (0: none).
    pub reconnects_per_hour: f64,
    /// Unacknowledged publishes per gateway, at most.
    pub max_in_flight: usize,
    /// The first seq of every gateway.
    pub start_seq: u64,
    /// Payload encoding.
    pub format: PayloadFormat,
    /// Most votes per batch (the gateway's `max-batch-votes`).
    pub max_batch_votes: usize,
    /// Most bytes per batch payload (the gateway's `max-payload-bytes`).
    pub max_payload_bytes: usize,
}

impl FleetParams {
    /// The default site count for `gateways`: one site per ten gateways, rounded up.
    pub fn default_sites(gateways: usize) -> usize {
        gateways.div_ceil(10).max(1)
    }

    /// Checks every value; the error names the option.
    pub fn validate(&self) -> Result<(), FleetError> {
        let invalid = |option: &'static str, value: String, problem: &str| {
            Err(FleetError::Invalid {
                option,
                value,
                problem: problem.to_string(),
            })
        };
        if !(1..=100_000).contains(&self.gateways) {
            return invalid("gateways", self.gateways.to_string(), "must be 1 to 100000");
        }
        if self.gateway_prefix.is_empty()
            || self.gateway_prefix.len() > 64
            || self.gateway_prefix.contains(['/', '+', '#'])
        {
            return invalid(
                "gateway-prefix",
                format!("{:?}", self.gateway_prefix),
                "must be 1 to 64 characters without '/', '+' or '#' (it goes into topics)",
            );
        }
        if self.sites == 0 {
            return invalid("sites", self.sites.to_string(), "must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1000.0) {
            return invalid(
                "rate",
                self.rate.to_string(),
                "must be above 0 and at most 1000 batches per second",
            );
        }
        if !(1..=100_000).contains(&self.votes_per_batch) {
            return invalid(
                "votes-per-batch",
                self.votes_per_batch.to_string(),
                "must be 1 to 100000",
            );
        }
        if !(1..=10_000).contains(&self.terminals) {
            return invalid(
                "terminals",
                self.terminals.to_string(),
                "must be 1 to 10000",
            );
        }
        for (option, p) in [("redeliver", self.redeliver), ("drop", self.drop)] {
            if !(0.0..=1.0).contains(&p) {
                return invalid(option, p.to_string(), "must be a probability from 0 to 1");
            }
        }
        if !(self.reconnects_per_hour.is_finite() && self.reconnects_per_hour >= 0.0) {
            return invalid(
                "reconnect",
                self.reconnects_per_hour.to_string(),
                "must be 0 or more reconnects per hour",
            );
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return invalid(
                "max-in-flight",
                self.max_in_flight.to_string(),
                "must be 1 to 1000",
            );
        }
        if self.start_seq == 0 || self.start_seq > u64::MAX / 2 {
            return invalid(
                "start-seq",
                self.start_seq.to_string(),
                "must be 1 or more (seq 0 does not exist)",
            );
        }
        Ok(())
    }

    /// The id of gateway `n` (1-based): `{prefix}-0001`.
    pub fn gateway_id(&self, n: usize) -> String {
        format!("{}-{n:04}", self.gateway_prefix)
    }

    /// The site of gateway `n`: `site-{n % sites}`.
    pub fn site(&self, n: usize) -> String {
        format!("site-{}", n % self.sites.max(1))
    }

    /// The nominal time between two ticks of one gateway.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// When gateway `n` (1-based) opens its first connection, after the start.
    pub fn connect_delay(&self, n: usize) -> Duration {
        let gateways = self.gateways.max(1) as u32;
        CONNECT_SPREAD / gateways * (n.saturating_sub(1) as u32)
    }

    /// The connection settings of one simulated gateway: the ingest config's broker and identity,
    /// the gateway's own client id and topic prefix `votegate/{site}/{gateway_id}`.
    pub fn uplink_settings(
        &self,
        mqtt: &MqttSettings,
        gateway_id: &str,
        site: &str,
    ) -> UplinkSettings {
        let (username, password_file) = match &mqtt.credentials {
            Some((user, file)) => (Some(user.clone()), Some(file.clone())),
            None => (None, None),
        };
        UplinkSettings {
            host: mqtt.host.clone(),
            port: mqtt.port,
            tls: mqtt.tls_settings(),
            username,
            password_file,
            client_id: gateway_id.to_string(),
            topic_prefix: format!("votegate/{site}/{gateway_id}"),
            format: self.format,
            max_batch_votes: self.max_batch_votes,
            max_payload_bytes: self.max_payload_bytes,
            max_batch_age: Duration::from_secs(1),
            max_in_flight: self.max_in_flight,
            keepalive: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(10),
            telemetry_interval: Duration::from_secs(60),
            max_publishes_per_second: None,
            max_bytes_per_second: None,
        }
    }
}

/// Why a payload is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishKind {
    /// A new batch, published for the first time.
    Fresh,
    /// An unacknowledged batch again, after a reconnect.
    Republish,
    /// An acknowledged batch again (a lost PubAck, simulated).
    Redelivery,
}

/// A payload to publish on the gateway's `{prefix}/votes` at QoS 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Why.
    pub kind: PublishKind,
    /// The batch's id (its first seq).
    pub batch_id: u64,
    /// The encoded batch.
    pub payload: Vec<u8>,
}

/// What a packet id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// A batch not yet acknowledged (fresh or republished).
    Batch(u64),
    /// A redelivery of an acknowledged batch.
    Redelivery(u64),
}

/// A batch published and not yet acknowledged.
#[derive(Clone, Debug)]
struct SimBatch {
    votes: u64,
    /// The last dropped seq it reports, if it reports any.
    drops_through: Option<u64>,
    payload: Vec<u8>,
}

/// One gateway's line of the summary (and the numbers behind it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySummary {
    /// The gateway.
    pub gateway_id: String,
    /// Its site.
    pub site: String,
    /// Its first seq.
    pub first_seq: u64,
    /// Its last seq (a vote's or a dropped one's); `first_seq - 1` when it made none.
    pub last_seq: u64,
    /// Votes made.
    pub votes_created: u64,
    /// Votes in acknowledged batches (each counted once).
    pub votes_acked: u64,
    /// Every range of seqs it dropped, as `[first, last]`.
    pub dropped: Vec<[u64; 2]>,
    /// Batches made (each counted once, however often published).
    pub batches: u64,
    /// Acknowledged batches published again.
    pub redelivered_batches: u64,
    /// Connections made after the first (deliberate reconnects and lost connections).
    pub reconnects: u64,
    /// Connections lost without being dropped deliberately.
    pub lost_connections: u64,
    /// Votes that waited at their tick (flow control full, or offline).
    pub held_votes: u64,
    /// Publishes of any kind.
    pub publishes: u64,
    /// Batches still unacknowledged at the end (0 unless the run failed).
    pub unacked_batches: u64,
    /// Votes made but never put in a batch (0 unless the run failed).
    pub unsent_votes: u64,
}

impl GatewaySummary {
    /// Seqs dropped.
    pub fn dropped_seqs(&self) -> u64 {
        self.dropped.iter().map(|[a, b]| b - a + 1).sum()
    }
}

/// One simulated gateway: its votes, batches, in-flight publishes and counters.
#[derive(Debug)]
pub struct GatewaySim {
    gateway_id: String,
    site: String,
    params: Arc<FleetParams>,
    rng: fastrand::Rng,
    next_seq: u64,
    /// The last `term_seq` of each terminal.
    term_seqs: Vec<u64>,
    last_tick_ms: Option<u64>,
    /// Votes made and not yet in a batch (flow control).
    pending: Vec<WireVote>,
    /// Dropped ranges no acknowledged batch has carried yet, oldest first.
    to_report: Vec<DroppedRange>,
    /// Every dropped range, oldest first.
    dropped: Vec<DroppedRange>,
    /// Batches not yet acknowledged, by id.
    unacked: BTreeMap<u64, SimBatch>,
    /// To publish before any fresh batch: republishes, then redeliveries.
    queue: VecDeque<(Tag, Vec<u8>)>,
    /// Redeliveries queued or in flight.
    redeliveries_outstanding: usize,
    /// Publishes handed to the session, waiting for their packet id (request order).
    requested: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    connected: bool,
    connections: u64,
    summary: GatewaySummary,
}

impl GatewaySim {
    /// Gateway `n` (1-based) of the fleet, deciding with `rng`.
    pub fn new(params: Arc<FleetParams>, n: usize, rng: fastrand::Rng) -> GatewaySim {
        let gateway_id = params.gateway_id(n);
        let site = params.site(n);
        let start = params.start_seq;
        let terminals = params.terminals.max(1) as usize;
        GatewaySim {
            summary: GatewaySummary {
                gateway_id: gateway_id.clone(),
                site: site.clone(),
                first_seq: start,
                last_seq: start.saturating_sub(1),
                ..GatewaySummary::default()
            },
            gateway_id,
            site,
            params,
            rng,
            next_seq: start,
            term_seqs: vec![0; terminals],
            last_tick_ms: None,
            pending: Vec::new(),
            to_report: Vec::new(),
            dropped: Vec::new(),
            unacked: BTreeMap::new(),
            queue: VecDeque::new(),
            redeliveries_outstanding: 0,
            requested: VecDeque::new(),
            by_pkid: HashMap::new(),
            connected: false,
            connections: 0,
        }
    }

    /// The gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// The gateway's site.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// A generator for the caller's own timing jitter (reconnect backoff), split off this one.
    pub fn fork_rng(&mut self) -> fastrand::Rng {
        self.rng.fork()
    }

    /// The delay before the first tick: a random phase within one interval, so that a fleet's
    /// ticks spread evenly.
    pub fn first_tick_delay(&mut self) -> Duration {
        self.params.tick_interval().mul_f64(self.rng.f64())
    }

    /// The delay from one tick to the next: the interval ± [`TICK_JITTER`].
    pub fn next_tick_delay(&mut self) -> Duration {
        let factor = 1.0 - TICK_JITTER + 2.0 * TICK_JITTER * self.rng.f64();
        self.params.tick_interval().mul_f64(factor)
    }

    /// The delay until the next deliberate reconnect (exponentially distributed, mean one hour
    /// over `reconnects_per_hour`); `None` when there are none.
    pub fn next_reconnect_delay(&mut self) -> Option<Duration> {
        let per_hour = self.params.reconnects_per_hour;
        if per_hour <= 0.0 {
            return None;
        }
        let mean_s = 3600.0 / per_hour;
        // 1 - f64() is in (0, 1]: its logarithm is finite.
        let delay_s = -mean_s * (1.0 - self.rng.f64()).ln();
        Some(Duration::from_secs_f64(delay_s.min(1e9)))
    }

    /// Makes one tick's votes (and maybe drops a run of seqs before them). `now_ms` is the wall
    /// clock; the votes' timestamps spread over the time since the previous tick.
    pub fn tick(&mut self, now_ms: u64) {
        let interval_ms = self.params.tick_interval().as_millis() as u64;
        let since = self
            .last_tick_ms
            .unwrap_or_else(|| now_ms.saturating_sub(interval_ms))
            .min(now_ms);
        self.last_tick_ms = Some(now_ms);
        if self.params.drop > 0.0 && self.rng.f64() < self.params.drop {
            let length = self.rng.u64(1..=LONGEST_DROP);
            let range = DroppedRange {
                first_seq: self.next_seq,
                last_seq: self.next_seq + length - 1,
            };
            self.next_seq += length;
            self.to_report.push(range);
            self.dropped.push(range);
        }
        let mean = self.params.votes_per_batch.max(1);
        let count = self.rng.u32(mean.div_ceil(2)..=mean + mean / 2).max(1);
        let mut stamps: Vec<u64> = (0..count).map(|_| self.rng.u64(since..=now_ms)).collect();
        stamps.sort_unstable();
        for ts_ms in stamps {
            let terminal = self.rng.usize(..self.term_seqs.len());
            self.term_seqs[terminal] += 1;
            let vote = WireVote {
                seq: self.next_seq,
                terminal: format!("t{}", terminal + 1),
                button: self.button(),
                ts_ms,
                clock_synced: true,
                restamped: false,
                filtered: false,
                term_seq: Some(self.term_seqs[terminal]),
            };
            self.next_seq += 1;
            self.pending.push(vote);
        }
        self.summary.votes_created += u64::from(count);
        self.summary.last_seq = self.next_seq - 1;
        if !(self.connected && self.has_room()) {
            self.summary.held_votes += u64::from(count);
        }
    }

    fn button(&mut self) -> u8 {
        let mut pick = self.rng.u32(0..BUTTON_WEIGHTS.iter().sum());
        for (button, weight) in (1u8..).zip(BUTTON_WEIGHTS) {
            if pick < weight {
                return button;
            }
            pick -= weight;
        }
        4
    }

    /// Whether a fresh batch may go out: fewer than `max_in_flight` publishes unacknowledged.
    fn has_room(&self) -> bool {
        self.unacked.len() + self.redeliveries_outstanding < self.params.max_in_flight
    }

    /// The next payload to publish now, if any: republished and redelivered batches first, then
    /// a fresh batch of the waiting votes when flow control allows. Records the publish as
    /// requested: call [`GatewaySim::written`] with its packet id, in request order. A fresh
    /// batch's newest vote is stamped with `now_ms`, the wall clock right before publishing
    /// (the ingest measures publish → COMMIT from it); republished and redelivered batches go
    /// out byte for byte as first published.
    pub fn next_publish(&mut self, now_ms: u64) -> Option<Publish> {
        if !self.connected {
            return None;
        }
        if let Some((tag, payload)) = self.queue.pop_front() {
            let (kind, batch_id) = match tag {
                Tag::Batch(id) => (PublishKind::Republish, id),
                Tag::Redelivery(id) => {
                    self.summary.redelivered_batches += 1;
                    (PublishKind::Redelivery, id)
                }
            };
            self.requested.push_back(tag);
            self.summary.publishes += 1;
            return Some(Publish {
                kind,
                batch_id,
                payload,
            });
        }
        if self.pending.is_empty() || !self.has_room() {
            return None;
        }
        let reported = &self.to_report[..self.to_report.len().min(DROPPED_PER_BATCH)];
        let (mut batch, taken) = batch::cut(
            &self.pending,
            reported,
            &self.gateway_id,
            &self.site,
            self.params.format,
            self.params.max_batch_votes,
            self.params.max_payload_bytes,
        )?;
        if let Some(newest) = batch.votes.last_mut() {
            newest.ts_ms = newest.ts_ms.max(now_ms);
        }
        self.pending.drain(..taken);
        let payload = encode(&batch, self.params.format);
        self.unacked.insert(
            batch.batch_id,
            SimBatch {
                votes: taken as u64,
                drops_through: batch.dropped.last().map(|range| range.last_seq),
                payload: payload.clone(),
            },
        );
        self.requested.push_back(Tag::Batch(batch.batch_id));
        self.summary.batches += 1;
        self.summary.publishes += 1;
        Some(Publish {
            kind: PublishKind::Fresh,
            batch_id: batch.batch_id,
            payload,
        })
    }

    /// The session wrote the oldest requested publish with packet id `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(tag) = self.requested.pop_front() {
            self.by_pkid.insert(pkid, tag);
        }
    }

    /// The broker acknowledged `pkid`. Returns the id of the batch it acknowledged for the first
    /// time, if it did. Decides whether to redeliver that batch.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        match self.by_pkid.remove(&pkid)? {
            Tag::Batch(id) => {
                let batch = self.unacked.remove(&id)?;
                self.summary.votes_acked += batch.votes;
                if let Some(through) = batch.drops_through {
                    // This batch carried every range still unreported up to `through`.
                    self.to_report.retain(|range| range.last_seq > through);
                }
                if self.params.redeliver > 0.0 && self.rng.f64() < self.params.redeliver {
                    self.queue
                        .push_back((Tag::Redelivery(id), batch.payload.clone()));
                    self.redeliveries_outstanding += 1;
                }
                Some(id)
            }
            Tag::Redelivery(_) => {
                self.redeliveries_outstanding = self.redeliveries_outstanding.saturating_sub(1);
                None
            }
        }
    }

    /// The broker accepted a connection (ConnAck).
    pub fn connected(&mut self) {
        self.connected = true;
        self.connections += 1;
        if self.connections > 1 {
            self.summary.reconnects += 1;
        }
    }

    /// The connection is over (`deliberate`: the simulator dropped it). Publishes not yet
    /// acknowledged are forgotten; every unacknowledged batch is queued to go again, unchanged,
    /// oldest first, ahead of the redeliveries not yet sent.
    pub fn lost(&mut self, deliberate: bool) {
        if !deliberate && self.connected {
            self.summary.lost_connections += 1;
        }
        self.connected = false;
        self.requested.clear();
        self.by_pkid.clear();
        let redeliveries: Vec<(Tag, Vec<u8>)> = self
            .queue
            .drain(..)
            .filter(|(tag, _)| matches!(tag, Tag::Redelivery(_)))
            .collect();
        self.redeliveries_outstanding = redeliveries.len();
        self.queue = self
            .unacked
            .iter()
            .map(|(id, batch)| (Tag::Batch(*id), batch.payload.clone()))
            .chain(redeliveries)
            .collect();
    }

    /// Whether the gateway is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Votes waiting for a batch.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    /// Nothing left to do: every vote is in a batch, every batch and redelivery acknowledged.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
            && self.unacked.is_empty()
            && self.queue.is_empty()
            && self.redeliveries_outstanding == 0
    }

    /// Every vote made is in an acknowledged batch (redeliveries may still be out).
    pub fn all_acked(&self) -> bool {
        self.pending.is_empty() && self.unacked.is_empty()
    }

    /// The gateway's line of the summary.
    pub fn summary(&self) -> GatewaySummary {
        GatewaySummary {
            dropped: self
                .dropped
                .iter()
                .map(|range| [range.first_seq, range.last_seq])
                .collect(),
            unacked_batches: self.unacked.len() as u64,
            unsent_votes: self.pending.len() as u64,
            ..self.summary.clone()
        }
    }
}

/// The fleet's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetTotals {
    /// Gateways.
    pub gateways: u64,
    /// Batches made.
    pub batches: u64,
    /// Votes made.
    pub votes_created: u64,
    /// Votes in acknowledged batches.
    pub votes_acked: u64,
    /// Acknowledged batches published again.
    pub redelivered_batches: u64,
    /// Seqs dropped.
    pub dropped_seqs: u64,
    /// Dropped ranges.
    pub dropped_ranges: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Connections lost without being dropped deliberately.
    pub lost_connections: u64,
    /// Votes that waited at their tick (flow control full, or offline).
    pub held_votes: u64,
    /// Publishes of any kind.
    pub publishes: u64,
    /// Batches unacknowledged at the end.
    pub unacked_batches: u64,
    /// Votes never put in a batch.
    pub unsent_votes: u64,
}

/// What `--summary` writes: the ground truth to compare `votegate ingest report` with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// One line per gateway, by id.
    pub gateways: Vec<GatewaySummary>,
    /// Their sums.
    pub totals: FleetTotals,
    /// Wall clock (ms) at the start.
    pub started_ms: u64,
    /// Wall clock (ms) when votes stopped being made.
    pub stopped_ms: u64,
    /// Wall clock (ms) at the end (everything acknowledged, or the wait given up).
    pub ended_ms: u64,
    /// The seed that replays the run's decisions.
    pub seed: u64,
}

impl FleetSummary {
    /// Sums the gateways' lines.
    pub fn new(
        gateways: Vec<GatewaySummary>,
        seed: u64,
        started_ms: u64,
        stopped_ms: u64,
        ended_ms: u64,
    ) -> FleetSummary {
        let mut totals = FleetTotals {
            gateways: gateways.len() as u64,
            ..FleetTotals::default()
        };
        for g in &gateways {
            totals.batches += g.batches;
            totals.votes_created += g.votes_created;
            totals.votes_acked += g.votes_acked;
            totals.redelivered_batches += g.redelivered_batches;
            totals.dropped_seqs += g.dropped_seqs();
            totals.dropped_ranges += g.dropped.len() as u64;
            totals.reconnects += g.reconnects;
            totals.lost_connections += g.lost_connections;
            totals.held_votes += g.held_votes;
            totals.publishes += g.publishes;
            totals.unacked_batches += g.unacked_batches;
            totals.unsent_votes += g.unsent_votes;
        }
        FleetSummary {
            gateways,
            totals,
            started_ms,
            stopped_ms,
            ended_ms,
            seed,
        }
    }

    /// Whether every vote made was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.totals.unacked_batches == 0 && self.totals.unsent_votes == 0
    }

    /// One line for people.
    pub fn human_line(&self) -> String {
        let t = &self.totals;
        let making_s = (self.stopped_ms.saturating_sub(self.started_ms) as f64 / 1000.0).max(0.001);
        let total_s = self.ended_ms.saturating_sub(self.started_ms) as f64 / 1000.0;
        let verdict = if self.all_acked() {
            "everything acknowledged".to_string()
        } else {
            format!(
                "{} batches unacknowledged, {} votes never sent",
                t.unacked_batches, t.unsent_votes
            )
        };
        format!(
            "fleet-sim: {} gateways, {} batches ({} redelivered), {} votes ({} acknowledged), \
             {} seqs dropped in {} ranges, {} reconnects ({} lost connections), \
             {:.0} votes/s and {:.1} batches/s over {:.1} s ({:.1} s with the final wait), \
             {} votes held by flow control; {verdict}",
            t.gateways,
            t.batches,
            t.redelivered_batches,
            t.votes_created,
            t.votes_acked,
            t.dropped_seqs,
            t.dropped_ranges,
            t.reconnects,
            t.lost_connections,
            t.votes_created as f64 / making_s,
            t.batches as f64 / making_s,
            making_s,
            total_s,
            t.held_votes,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::uplink::payload::{decode, BatchPayload};

    fn params() -> FleetParams {
        FleetParams {
            gateways: 10,
            gateway_prefix: "sim".into(),
            sites: 3,
            rate: 1.0,
            votes_per_batch: 20,
            terminals: 4,
            redeliver: 0.0,
            drop: 0.0,
            reconnects_per_hour: 0.0,
            max_in_flight: 8,
            start_seq: 1,
            format: PayloadFormat::Postcard,
            max_batch_votes: 1000,
            max_payload_bytes: 128 * 1024,
        }
    }

    fn online(params: FleetParams, seed: u64) -> GatewaySim {
        let mut sim = GatewaySim::new(Arc::new(params), 7, fastrand::Rng::with_seed(seed));
        sim.connected();
        sim
    }

    /// A broker in miniature: packet ids in write order, acks in any order.
    struct Broker {
        next_pkid: u16,
        written: Vec<(u16, Publish)>,
        /// Every acknowledged publish.
        acked: Vec<Publish>,
        /// Every publish written (`false`) and acknowledged (`true`), in order.
        log: Vec<(bool, Publish)>,
    }

    impl Broker {
        fn new() -> Broker {
            Broker {
                next_pkid: 1,
                written: Vec::new(),
                acked: Vec::new(),
                log: Vec::new(),
            }
        }

        /// Publishes everything the gateway wants to, writing each.
        fn pump(&mut self, sim: &mut GatewaySim, now_ms: u64) -> usize {
            let mut count = 0;
            while let Some(publish) = sim.next_publish(now_ms) {
                sim.written(self.next_pkid);
                self.log.push((false, publish.clone()));
                self.written.push((self.next_pkid, publish));
                self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
                count += 1;
            }
            count
        }

        /// Acknowledges the written publish at `index`.
        fn ack(&mut self, sim: &mut GatewaySim, index: usize) {
            let (pkid, publish) = self.written.remove(index);
            sim.acked(pkid);
            self.log.push((true, publish.clone()));
            self.acked.push(publish);
        }

        fn ack_all(&mut self, sim: &mut GatewaySim) {
            while !self.written.is_empty() {
                self.ack(sim, 0);
            }
        }

        /// The connection drops: what was written and not acknowledged is gone.
        fn drop_connection(&mut self, sim: &mut GatewaySim) {
            self.written.clear();
            sim.lost(false);
            sim.connected();
        }
    }

    fn decoded(publish: &Publish) -> BatchPayload {
        decode(&publish.payload).expect("a batch")
    }

    /// Runs a gateway through `ticks` ticks with random acks, lost acks, reconnects; then lets
    /// everything be acknowledged. Returns the sim and the broker.
    fn chaos(mut params: FleetParams, seed: u64, ticks: u64) -> (GatewaySim, Broker) {
        params.redeliver = 0.2;
        params.drop = 0.2;
        let mut sim = online(params, seed);
        let mut broker = Broker::new();
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xfeed);
        let mut now = 1_795_000_000_000;
        for _ in 0..ticks {
            now += 1000;
            sim.tick(now);
            broker.pump(&mut sim, now);
            while !broker.written.is_empty() && rng.f64() < 0.6 {
                let index = rng.usize(..broker.written.len());
                broker.ack(&mut sim, index);
                broker.pump(&mut sim, now);
            }
            if rng.f64() < 0.1 {
                broker.drop_connection(&mut sim);
                broker.pump(&mut sim, now);
            }
        }
        for _ in 0..1000 {
            if sim.is_settled() {
                break;
            }
            broker.pump(&mut sim, now);
            broker.ack_all(&mut sim);
        }
        assert!(sim.is_settled());
        (sim, broker)
    }

    #[test]
    fn every_seq_is_acknowledged_or_dropped_exactly_once() {
        for seed in 0..20 {
            let (sim, broker) = chaos(params(), seed, 200);
            let summary = sim.summary();
            let mut acked = BTreeSet::new();
            for publish in &broker.acked {
                for vote in decoded(publish).votes {
                    acked.insert(vote.seq);
                }
            }
            assert_eq!(acked.len() as u64, summary.votes_acked, "seed {seed}");
            assert_eq!(summary.votes_acked, summary.votes_created, "seed {seed}");
            let mut dropped = BTreeSet::new();
            for [first, last] in &summary.dropped {
                for seq in *first..=*last {
                    assert!(dropped.insert(seq), "seq {seq} dropped twice");
                }
            }
            assert!(acked.is_disjoint(&dropped), "seed {seed}");
            let all: BTreeSet<u64> = (summary.first_seq..=summary.last_seq).collect();
            let accounted: BTreeSet<u64> = acked.union(&dropped).copied().collect();
            assert_eq!(accounted, all, "seed {seed}");
            assert!(summary.dropped_seqs() > 0 && summary.redelivered_batches > 0);
            assert_eq!((summary.unacked_batches, summary.unsent_votes), (0, 0));
        }
    }

    #[test]
    fn a_dropped_range_is_reported_until_a_batch_carrying_it_is_acknowledged_then_never() {
        let (sim, broker) = chaos(params(), 42, 300);
        let summary = sim.summary();
        assert!(summary.dropped.len() > 10, "{:?}", summary.dropped);
        let log: Vec<(bool, PublishKind, BatchPayload)> = broker
            .log
            .iter()
            .map(|(ack, publish)| (*ack, publish.kind, decoded(publish)))
            .collect();
        for range in &summary.dropped {
            let carries = |batch: &BatchPayload| {
                batch
                    .dropped
                    .iter()
                    .any(|r| [r.first_seq, r.last_seq] == *range)
            };
            let (mut acknowledged, mut carriers) = (false, 0usize);
            for (ack, kind, batch) in &log {
                match (ack, kind) {
                    (true, PublishKind::Fresh | PublishKind::Republish) => {
                        acknowledged |= carries(batch);
                    }
                    (false, PublishKind::Fresh) if batch.first_seq > range[1] => {
                        // Made after the drop: it carries the range until a carrier is
                        // acknowledged, and never after.
                        assert_eq!(carries(batch), !acknowledged, "{range:?} in {batch:?}");
                        carriers += usize::from(carries(batch));
                    }
                    _ => {}
                }
            }
            assert!(acknowledged && carriers > 0, "{range:?}");
        }
        // Never again: with acks one by one in order, no batch made after the ack carries it.
        let mut p = params();
        p.drop = 1.0;
        p.max_in_flight = 1;
        let mut sim = online(p, 3);
        let mut broker = Broker::new();
        sim.tick(1_000);
        broker.pump(&mut sim, 1_000);
        let first = decoded(&broker.written[0].1);
        assert_eq!(first.dropped.len(), 1);
        let range = first.dropped[0];
        sim.tick(2_000); // flow control: held
        assert_eq!(broker.pump(&mut sim, 2_000), 0);
        broker.drop_connection(&mut sim); // not acknowledged: goes again
        broker.pump(&mut sim, 2_000);
        broker.ack_all(&mut sim);
        broker.pump(&mut sim, 2_000);
        let second = decoded(&broker.written[0].1);
        assert!(
            !second.dropped.contains(&range),
            "{range:?} reported again after its carrier was acknowledged: {:?}",
            second.dropped
        );
        assert_eq!(second.dropped.len(), 1, "the second tick's own drop");
    }

    #[test]
    fn redelivered_and_republished_batches_are_byte_identical() {
        let mut p = params();
        p.redeliver = 1.0;
        p.drop = 0.5;
        let mut sim = online(p, 9);
        let mut broker = Broker::new();
        let mut first_payload: HashMap<u64, Vec<u8>> = HashMap::new();
        for t in 1..=30u64 {
            sim.tick(t * 1000);
            broker.pump(&mut sim, t * 1000 + 1);
            if t % 7 == 0 {
                broker.drop_connection(&mut sim);
                broker.pump(&mut sim, t * 1000 + 500);
            }
            for (_, publish) in &broker.written {
                let first = first_payload
                    .entry(publish.batch_id)
                    .or_insert_with(|| publish.payload.clone());
                assert_eq!(first, &publish.payload, "batch {}", publish.batch_id);
            }
            if t % 2 == 0 {
                broker.ack_all(&mut sim);
            }
        }
        let summary = sim.summary();
        assert!(summary.redelivered_batches > 5 && summary.reconnects == 4);
        assert!(broker
            .acked
            .iter()
            .any(|p| p.kind == PublishKind::Republish));
    }

    #[test]
    fn flow_control_holds_votes_until_a_slot_frees_and_they_join_the_next_batch() {
        let mut p = params();
        p.max_in_flight = 2;
        let mut sim = online(p, 5);
        let mut broker = Broker::new();
        for t in 1..=5u64 {
            sim.tick(t * 1000);
            broker.pump(&mut sim, t * 1000);
        }
        assert_eq!(broker.written.len(), 2, "two in flight at most");
        let held = sim.backlog();
        assert!(held >= 30, "three ticks of votes wait: {held}");
        assert!(sim.summary().held_votes as usize == held);
        broker.ack(&mut sim, 0);
        assert_eq!(broker.pump(&mut sim, 6_000), 1);
        let batch = decoded(&broker.written[1].1);
        assert_eq!(batch.votes.len(), held, "the held votes go in one batch");
        assert_eq!(sim.backlog(), 0);
        assert_eq!(batch.votes.last().map(|v| v.ts_ms), Some(6_000));
        // A redelivery takes a slot too.
        let mut p = params();
        p.max_in_flight = 1;
        p.redeliver = 1.0;
        let mut sim = online(p, 5);
        let mut broker = Broker::new();
        sim.tick(1_000);
        broker.pump(&mut sim, 1_000);
        sim.tick(2_000);
        broker.ack_all(&mut sim);
        assert_eq!(broker.pump(&mut sim, 2_000), 1);
        assert_eq!(broker.written[0].1.kind, PublishKind::Redelivery);
        broker.ack_all(&mut sim);
        assert_eq!(broker.pump(&mut sim, 2_000), 1);
        assert_eq!(broker.written[0].1.kind, PublishKind::Fresh);
    }

    #[test]
    fn votes_look_like_a_gateways() {
        let mut sim = online(params(), 11);
        let mut broker = Broker::new();
        let mut buttons = [0u64; 4];
        let mut term_seqs: HashMap<String, u64> = HashMap::new();
        let mut last_seq = 0;
        let mut sizes = Vec::new();
        for t in 1..=500u64 {
            let now = 1_795_000_000_000 + t * 1000;
            sim.tick(now);
            broker.pump(&mut sim, now + 3);
            broker.ack(&mut sim, 0);
            let batch = decoded(broker.acked.last().expect("acknowledged"));
            sizes.push(batch.votes.len());
            assert_eq!(batch.votes.last().map(|v| v.ts_ms), Some(now + 3));
            for vote in &batch.votes {
                assert!(vote.ts_ms >= now - 1000 && vote.ts_ms <= now + 3);
                assert_eq!(vote.seq, last_seq + 1);
                last_seq = vote.seq;
                assert!(vote.clock_synced && !vote.filtered && !vote.restamped);
                let term_seq = term_seqs.entry(vote.terminal.clone()).or_default();
                assert_eq!(vote.term_seq, Some(*term_seq + 1), "{}", vote.terminal);
                *term_seq += 1;
                buttons[usize::from(vote.button) - 1] += 1;
            }
            assert!(batch.votes.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        }
        let mut terminals: Vec<&String> = term_seqs.keys().collect();
        terminals.sort();
        assert_eq!(terminals, ["t1", "t2", "t3", "t4"]);
        assert!(sizes.iter().all(|n| (10..=30).contains(n)), "{sizes:?}");
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((18.0..22.0).contains(&mean), "{mean}");
        let total = buttons.iter().sum::<u64>() as f64;
        for (count, weight) in buttons.iter().zip(BUTTON_WEIGHTS) {
            let share = *count as f64 / total * 100.0;
            assert!((share - f64::from(weight)).abs() < 3.0, "{buttons:?}");
        }
        // One vote at least, whatever the mean.
        let mut p = params();
        p.votes_per_batch = 1;
        let mut sim = online(p, 1);
        sim.tick(5);
        assert_eq!(sim.backlog(), 1);
    }

    #[test]
    fn the_same_seed_makes_the_same_batches() {
        let run = |seed| {
            let (_, broker) = chaos(params(), seed, 50);
            broker
                .acked
                .iter()
                .map(|p| p.payload.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(77), run(77));
        assert_ne!(run(77), run(78));
    }

    #[test]
    fn timing_spreads_ticks_and_reconnects() {
        let mut p = params();
        p.rate = 2.0;
        p.reconnects_per_hour = 3600.0;
        let mut sim = online(p.clone(), 1);
        for _ in 0..1000 {
            let first = sim.first_tick_delay();
            assert!(first < Duration::from_millis(500));
            let next = sim.next_tick_delay();
            assert!(
                next >= Duration::from_millis(450) && next <= Duration::from_millis(550),
                "{next:?}"
            );
        }
        let delays: Vec<f64> = (0..5000)
            .map(|_| sim.next_reconnect_delay().expect("some").as_secs_f64())
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!((0.9..1.1).contains(&mean), "mean {mean} s for 3600/h");
        p.reconnects_per_hour = 0.0;
        assert_eq!(sim_without(p).next_reconnect_delay(), None);
        let p = params();
        assert_eq!(p.connect_delay(1), Duration::ZERO);
        assert_eq!(p.connect_delay(6), Duration::from_secs(1));
        assert!(p.connect_delay(10) < CONNECT_SPREAD);
    }

    fn sim_without(p: FleetParams) -> GatewaySim {
        GatewaySim::new(Arc::new(p), 1, fastrand::Rng::with_seed(0))
    }

    #[test]
    fn ids_sites_and_settings_follow_the_contract() {
        let p = params();
        assert_eq!(p.gateway_id(7), "sim-0007");
        assert_eq!(p.site(7), "site-1");
        assert_eq!(FleetParams::default_sites(10), 1);
        assert_eq!(FleetParams::default_sites(11), 2);
        assert_eq!(FleetParams::default_sites(1000), 100);
        let mqtt = MqttSettings {
            host: "broker".into(),
            port: 8883,
            tls: true,
            ca_file: Some("/ca.pem".into()),
            client_cert: Some(("/c.pem".into(), "/c.key".into())),
            credentials: Some(("u".into(), "/pw".into())),
            topic: crate::ingest::DEFAULT_TOPIC.into(),
            group: crate::ingest::DEFAULT_GROUP.into(),
            client_id: "ingest".into(),
        };
        let settings = p.uplink_settings(&mqtt, "sim-0007", "site-1");
        assert_eq!(settings.votes_topic(), "votegate/site-1/sim-0007/votes");
        assert_eq!(settings.client_id, "sim-0007");
        assert_eq!(settings.username.as_deref(), Some("u"));
        let tls = settings.tls.expect("TLS");
        assert_eq!(tls.ca, crate::uplink::CaSource::File("/ca.pem".into()));
        assert!(tls.client_auth.is_some());
        let sim = sim_without(p);
        assert_eq!((sim.gateway_id(), sim.site()), ("sim-0001", "site-1"));
        assert_eq!(sim.summary().last_seq, 0);
    }

    type Change = fn(&mut FleetParams);

    #[test]
    fn bad_values_name_their_option() {
        let cases: Vec<(Change, &str)> = vec![
            (|p| p.gateways = 0, "--gateways 0"),
            (|p| p.rate = 0.0, "--rate 0"),
            (|p| p.drop = 1.5, "--drop 1.5"),
            (|p| p.redeliver = -0.1, "--redeliver -0.1"),
            (|p| p.reconnects_per_hour = f64::NAN, "--reconnect NaN"),
            (
                |p| p.gateway_prefix = "a/b".into(),
                "--gateway-prefix \"a/b\"",
            ),
            (|p| p.start_seq = 0, "--start-seq 0"),
            (|p| p.max_in_flight = 0, "--max-in-flight 0"),
        ];
        for (change, start) in cases {
            let mut p = params();
            change(&mut p);
            let err = p.validate().expect_err(start).to_string();
            assert!(err.starts_with(start), "{err}");
        }
        assert_eq!(params().validate(), Ok(()));
    }

    #[test]
    fn the_summary_sums_and_says_what_is_left() {
        let (sim, _) = chaos(params(), 1, 20);
        let line = sim.summary();
        let summary = FleetSummary::new(vec![line.clone(), line.clone()], 5, 0, 10_000, 12_000);
        assert_eq!(summary.totals.votes_acked, 2 * line.votes_acked);
        assert_eq!(summary.totals.dropped_seqs, 2 * line.dropped_seqs());
        assert!(summary.all_acked());
        let text = summary.human_line();
        assert!(text.contains("2 gateways") && text.ends_with("everything acknowledged"));
        let mut unfinished = line;
        unfinished.unacked_batches = 1;
        let summary = FleetSummary::new(vec![unfinished], 5, 0, 10_000, 40_000);
        assert!(!summary.all_acked());
        assert!(summary.human_line().contains("1 batches unacknowledged"));
        let json: serde_json::Value = serde_json::to_value(&summary).expect("JSON");
        for key in [
            "gateway_id",
            "site",
            "first_seq",
            "last_seq",
            "votes_acked",
            "dropped",
            "batches",
            "redelivered_batches",
            "reconnects",
        ] {
            assert!(json["gateways"][0].get(key).is_some(), "{key}");
        }
        assert!(json["totals"].is_object() && json["started_ms"].is_u64());
    }
}
