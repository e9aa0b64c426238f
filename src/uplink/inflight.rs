//! Which batches are on their way to the broker, and how far the journal may delete. Pure.
//!
//! rumqttc reports the packet id it gave each publish (`Outgoing::Publish(pkid)`) in the order
//! the publishes were requested, and the broker's `PubAck(pkid)` later. [`InFlight`] matches
//! the two and computes the **ack frontier**: the highest seq below which every vote has been
//! acknowledged. Each batch records the cursor it was read after, so batches chain: the frontier
//! only moves along an unbroken chain of acknowledged batches, never over votes not yet sent
//! (live votes may be sent, and acknowledged, before an older backlog).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::model::Seq;

/// What a publish carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// Votes `(after, last]`.
    Batch {
        /// The cursor the batch was read after.
        after: Seq,
        /// Its last seq.
        last: Seq,
        /// The last dropped seq it reports, if it reports any.
        drops_through: Option<Seq>,
    },
    /// Message `n` of the alerts' outbox.
    Alert(u64),
    /// Status or telemetry: nothing to acknowledge in the journal.
    Other,
}

/// The publishes of one connection.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Requested, waiting for rumqttc to assign a packet id (request order).
    requested: VecDeque<Tag>,
    /// Packet id → the batch's `after`.
    by_pkid: HashMap<u16, Seq>,
    /// Packet id → the alert message's number.
    alerts_by_pkid: HashMap<u16, u64>,
    /// Packet id → the last dropped seq the batch reports.
    drops_by_pkid: HashMap<u16, Seq>,
    /// `after` → (`last`, acknowledged), for batches not yet under the frontier.
    chain: BTreeMap<Seq, (Seq, bool)>,
    /// Every vote up to here is acknowledged.
    frontier: Seq,
    unacked_batches: usize,
}

impl InFlight {
    /// A connection whose journal had everything up to `frontier` acknowledged already.
    pub fn new(frontier: Seq) -> InFlight {
        InFlight {
            frontier,
            ..InFlight::default()
        }
    }

    /// The ack frontier.
    pub fn frontier(&self) -> Seq {
        self.frontier
    }

    /// Batches published but not acknowledged.
    pub fn batches_in_flight(&self) -> usize {
        self.unacked_batches
    }

    /// The `after` of the oldest batch not yet acknowledged.
    pub fn oldest_unacked(&self) -> Option<Seq> {
        self.chain
            .iter()
            .find(|(_, (_, acked))| !acked)
            .map(|(after, _)| *after)
    }

    /// A publish was handed to the client.
    pub fn requested(&mut self, tag: Tag) {
        if let Tag::Batch { after, last, .. } = tag {
            self.chain.insert(after, (last, false));
            self.unacked_batches += 1;
        }
        self.requested.push_back(tag);
    }

    /// Links `(after, last]` as already acknowledged, e.g. a range of the journal that held no
    /// votes to send. Returns the new frontier if it moved.
    pub fn skip(&mut self, after: Seq, last: Seq) -> Option<Seq> {
        self.chain.insert(after, (last, true));
        self.advance()
    }

    /// rumqttc wrote the next requested publish with packet id `pkid` (0 for QoS 0).
    pub fn written(&mut self, pkid: u16) {
        match self.requested.pop_front() {
            Some(Tag::Batch {
                after,
                drops_through,
                ..
            }) => {
                self.by_pkid.insert(pkid, after);
                if let Some(through) = drops_through {
                    self.drops_by_pkid.insert(pkid, through);
                }
            }
            Some(Tag::Alert(number)) => {
                self.alerts_by_pkid.insert(pkid, number);
            }
            Some(Tag::Other) | None => {}
        }
    }

    /// The broker acknowledged `pkid`: the last dropped seq its batch reported, if any.
    pub fn acked_drops(&mut self, pkid: u16) -> Option<Seq> {
        self.drops_by_pkid.remove(&pkid)
    }

    /// The broker acknowledged `pkid`: the alert message it carried, if it was one.
    pub fn acked_alert(&mut self, pkid: u16) -> Option<u64> {
        self.alerts_by_pkid.remove(&pkid)
    }

    /// The broker acknowledged `pkid`. Returns the new frontier if it moved.
    pub fn acked(&mut self, pkid: u16) -> Option<Seq> {
        let after = self.by_pkid.remove(&pkid)?;
        if let Some(entry) = self.chain.get_mut(&after) {
            if !entry.1 {
                entry.1 = true;
                self.unacked_batches -= 1;
            }
        }
        self.advance()
    }

    fn advance(&mut self) -> Option<Seq> {
        let before = self.frontier;
        while let Some(&(last, true)) = self.chain.get(&self.frontier) {
            self.chain.remove(&self.frontier);
            self.frontier = last;
        }
        (self.frontier != before).then_some(self.frontier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_in_order_move_the_frontier_batch_by_batch() {
        let mut inflight = InFlight::new(10);
        inflight.requested(Tag::Batch {
            after: 10,
            last: 20,
            drops_through: None,
        });
        inflight.requested(Tag::Other);
        inflight.requested(Tag::Batch {
            after: 20,
            last: 25,
            drops_through: None,
        });
        inflight.written(1);
        inflight.written(0);
        inflight.written(2);
        assert_eq!(inflight.batches_in_flight(), 2);
        assert_eq!(inflight.acked(1), Some(20));
        assert_eq!(inflight.acked(2), Some(25));
        assert_eq!(inflight.batches_in_flight(), 0);
    }

    #[test]
    fn alert_messages_are_matched_to_their_acks_apart_from_the_batches() {
        let mut inflight = InFlight::new(10);
        inflight.requested(Tag::Alert(3));
        inflight.requested(Tag::Batch {
            after: 10,
            last: 20,
            drops_through: None,
        });
        inflight.requested(Tag::Alert(4));
        inflight.written(5);
        inflight.written(6);
        inflight.written(7);
        assert_eq!(inflight.batches_in_flight(), 1);
        assert_eq!(inflight.acked_alert(7), Some(4));
        assert_eq!(inflight.acked_alert(6), None);
        assert_eq!(inflight.acked(6), Some(20));
        assert_eq!(inflight.acked_alert(5), Some(3));
        assert_eq!(inflight.acked(5), None);
    }

    #[test]
    fn a_batch_reporting_drops_gives_their_end_when_acknowledged() {
        let mut inflight = InFlight::new(0);
        inflight.requested(Tag::Batch {
            after: 0,
            last: 5,
            drops_through: None,
        });
        inflight.requested(Tag::Batch {
            after: 5,
            last: 9,
            drops_through: Some(3),
        });
        inflight.written(1);
        inflight.written(2);
        assert_eq!(inflight.acked_drops(1), None);
        assert_eq!(inflight.acked_drops(2), Some(3));
        assert_eq!(inflight.acked_drops(2), None);
    }

    #[test]
    fn a_later_ack_waits_for_the_earlier_batch() {
        let mut inflight = InFlight::new(0);
        inflight.requested(Tag::Batch {
            after: 0,
            last: 5,
            drops_through: None,
        });
        inflight.requested(Tag::Batch {
            after: 5,
            last: 9,
            drops_through: None,
        });
        inflight.written(7);
        inflight.written(8);
        assert_eq!(inflight.acked(8), None);
        assert_eq!(inflight.frontier(), 0);
        assert_eq!(inflight.acked(7), Some(9));
    }

    #[test]
    fn live_votes_acked_first_never_release_an_unsent_backlog() {
        // Backlog (0, 100] not sent yet; live votes (100, 110] sent and acknowledged.
        let mut inflight = InFlight::new(0);
        inflight.requested(Tag::Batch {
            after: 100,
            last: 110,
            drops_through: None,
        });
        inflight.written(1);
        assert_eq!(
            inflight.acked(1),
            None,
            "the backlog below is not acknowledged"
        );
        inflight.requested(Tag::Batch {
            after: 0,
            last: 60,
            drops_through: None,
        });
        inflight.written(2);
        assert_eq!(inflight.acked(2), Some(60));
        // The backlog turns out to end at 60 (votes 61-100 were dropped): close the chain.
        assert_eq!(inflight.skip(60, 100), Some(110));
    }

    #[test]
    fn unknown_and_repeated_acks_are_ignored() {
        let mut inflight = InFlight::new(3);
        assert_eq!(inflight.acked(42), None);
        inflight.requested(Tag::Batch {
            after: 3,
            last: 4,
            drops_through: None,
        });
        inflight.written(9);
        assert_eq!(inflight.acked(9), Some(4));
        assert_eq!(inflight.acked(9), None);
    }
}
