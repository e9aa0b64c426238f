//! What `votegate ingest report` says about each gateway, from what the store holds. Pure.

use serde::Serialize;

use super::ledger::{self, Gap};
use super::store::GatewayRecord;

/// One gateway's line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayReport {
    /// The gateway.
    pub gateway_id: String,
    /// Its site.
    pub site: String,
    /// Votes in `votes`.
    pub received: u64,
    /// Seqs the gateway reported dropped (and that were not received).
    pub dropped: u64,
    /// Seqs unaccounted for longer than the grace period.
    pub missing: u64,
    /// The missing seqs, as ranges.
    pub missing_ranges: Vec<Gap>,
    /// Seqs unaccounted for, but for less than the grace period (probably in flight).
    pub pending: u64,
    /// Redelivered votes absorbed.
    pub duplicates: u64,
    /// Votes redelivered with different content (the first content is kept).
    pub conflicts: u64,
    /// Every seq from 1 to this one is received or dropped.
    pub contiguous_through: u64,
    /// The highest seq accounted for.
    pub highest_seq: u64,
}

impl GatewayReport {
    /// Whether this gateway passes: nothing missing, no conflict.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.conflicts == 0
    }
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `ok` or `fail`.
    pub result: &'static str,
    /// The grace period, in seconds.
    pub grace_s: u64,
    /// One entry per gateway, by id.
    pub gateways: Vec<GatewayReport>,
}

impl Report {
    /// Audits every gateway: a gap is missing once the span above it is `grace_ms` old.
    pub fn build(records: &[GatewayRecord], now_ms: i64, grace_ms: i64) -> Report {
        Report::from_audits(records, grace_ms, |record| {
            ledger::audit(
                &record.runs,
                &record.dropped,
                record.highest_known,
                now_ms,
                grace_ms,
            )
        })
    }

    /// The ledger's live view (`/metrics`), from [`super::store::Store::live_records`]: trusts
    /// each gateway's contiguous mark ([`ledger::audit_live`]).
    pub fn build_live(records: &[GatewayRecord], now_ms: i64, grace_ms: i64) -> Report {
        Report::from_audits(records, grace_ms, |record| {
            ledger::audit_live(
                record.contiguous_through,
                record.inserted,
                &record.runs,
                &record.dropped,
                record.highest_known,
                now_ms,
                grace_ms,
            )
        })
    }

    fn from_audits(
        records: &[GatewayRecord],
        grace_ms: i64,
        audit_of: impl Fn(&GatewayRecord) -> ledger::Audit,
    ) -> Report {
        let gateways: Vec<GatewayReport> = records
            .iter()
            .map(|record| {
                let audit = audit_of(record);
                GatewayReport {
                    gateway_id: record.gateway_id.clone(),
                    site: record.site.clone(),
                    received: audit.received,
                    dropped: audit.dropped,
                    missing: audit.missing_count(),
                    missing_ranges: audit.missing.clone(),
                    pending: audit.pending_count(),
                    duplicates: record.duplicates,
                    conflicts: record.conflicted_votes,
                    contiguous_through: audit.contiguous_through,
                    highest_seq: audit.highest,
                }
            })
            .collect();
        let ok = gateways.iter().all(GatewayReport::ok);
        Report {
            result: if ok { "ok" } else { "fail" },
            grace_s: (grace_ms / 1000).max(0) as u64,
            gateways,
        }
    }

    /// Whether every gateway passes.
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }

    /// The report for people: a line per gateway, then the verdict.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for g in &self.gateways {
            let ranges: Vec<String> = g
                .missing_ranges
                .iter()
                .map(|r| match r.first == r.last {
                    true => r.first.to_string(),
                    false => format!("{}-{}", r.first, r.last),
                })
                .collect();
            let missing = match ranges.is_empty() {
                true => g.missing.to_string(),
                false => format!("{} (seq {})", g.missing, ranges.join(", ")),
            };
            text.push_str(&format!(
                "{} {} (site {}): received {}, dropped at the gateway {}, missing {missing}, pending {}, duplicates {}, conflicts {}; contiguous through seq {}, highest {}\n",
                if g.ok() { "ok  " } else { "FAIL" },
                g.gateway_id,
                g.site,
                g.received,
                g.dropped,
                g.pending,
                g.duplicates,
                g.conflicts,
                g.contiguous_through,
                g.highest_seq,
            ));
        }
        let failing = self.gateways.iter().filter(|g| !g.ok()).count();
        text.push_str(&match (self.gateways.len(), failing) {
            (0, _) => "no gateway has sent anything yet\n".to_string(),
            (n, 0) => format!(
                "{n} gateway(s): nothing missing (grace {} s), no conflicts\n",
                self.grace_s
            ),
            (n, f) => format!(
                "{f} of {n} gateway(s) with missing votes or conflicts (grace {} s)\n",
                self.grace_s
            ),
        });
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::ledger::Span;

    fn record(runs: &[(u64, u64)], conflicted: u64) -> GatewayRecord {
        GatewayRecord {
            gateway_id: "gw-1".into(),
            site: "store-042".into(),
            runs: runs
                .iter()
                .map(|&(first, last)| Span {
                    first,
                    last,
                    arrived_ms: 0,
                })
                .collect(),
            duplicates: 3,
            conflicted_votes: conflicted,
            ..GatewayRecord::default()
        }
    }

    #[test]
    fn a_gap_or_a_conflict_fails_the_report() {
        let good = Report::build(&[record(&[(1, 10)], 0)], 1000, 0);
        assert!(good.ok());
        assert!(good.render().contains("ok   gw-1 (site store-042): received 10, dropped at the gateway 0, missing 0, pending 0, duplicates 3, conflicts 0"), "{}", good.render());
        let gap = Report::build(&[record(&[(1, 4), (6, 10)], 0)], 1000, 0);
        assert!(!gap.ok());
        assert!(
            gap.render().contains("missing 1 (seq 5)"),
            "{}",
            gap.render()
        );
        assert!(!Report::build(&[record(&[(1, 10)], 1)], 1000, 0).ok());
    }
}
