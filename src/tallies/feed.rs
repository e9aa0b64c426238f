//! The live feed behind `GET /api/v1/events`: every accepted vote (with the tallies it produced)
//! and every tally update of the windows rolling, serialised once and shared by all screens. The last
//! [`REPLAY_CAPACITY`] vote events are kept so that a reconnecting screen gets exactly what it
//! missed (`Last-Event-ID`); one that was away longer, or names an id this gateway has not
//! given out (it is ahead of the journal: the data folder was wiped, the gateway swapped), gets
//! a full snapshot instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::model::Seq;

/// Vote events kept for replay…
pub const REPLAY_CAPACITY: usize = 1024;
/// …and at most this many bytes of them: a vote event carries the tallies of every terminal,
/// 100 KB at a site of 256 terminals, and 1,024 of those were 100 MiB of a burst's RSS.
pub const REPLAY_BYTES: usize = 1024 * 1024;
/// Events buffered per screen; one that lags further is resynchronised with a snapshot.
const CHANNEL_CAPACITY: usize = 256;

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEvent {
    /// The vote's seq, for vote events (the SSE `id`).
    pub id: Option<Seq>,
    /// `vote`, `tallies` or `reset`.
    pub kind: &'static str,
    /// JSON.
    pub data: String,
}

/// What a (re)connecting screen gets first.
#[derive(Debug)]
pub enum Catchup {
    /// The events it missed, in order (possibly none).
    Replay(Vec<Arc<LiveEvent>>),
    /// It missed too much (or is new): start from a snapshot.
    Snapshot,
}

/// The feed: a broadcast plus a replay buffer of vote events.
#[derive(Debug)]
pub struct LiveFeed {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    recent: Mutex<Recent>,
}

#[derive(Debug)]
struct Recent {
    events: VecDeque<Arc<LiveEvent>>,
    /// Bytes of the events' data.
    bytes: usize,
    /// One past the highest seq this feed can have sent: the journal's `next_seq` at start,
    /// then past every vote event.
    next_seq: Seq,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed::new(1)
    }
}

impl LiveFeed {
    /// An empty feed for a journal whose next vote gets `next_seq`.
    pub fn new(next_seq: Seq) -> LiveFeed {
        LiveFeed {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            recent: Mutex::new(Recent {
                events: VecDeque::new(),
                bytes: 0,
                next_seq,
            }),
        }
    }

    /// Sends an event to every screen (and keeps vote events for replay).
    pub fn publish(&self, event: LiveEvent) {
        let event = Arc::new(event);
        if let Some(id) = event.id {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.bytes += event.data.len();
            recent.events.push_back(event.clone());
            while recent.events.len() > REPLAY_CAPACITY
                || (recent.bytes > REPLAY_BYTES && recent.events.len() > 1)
            {
                if let Some(old) = recent.events.pop_front() {
                    recent.bytes -= old.data.len();
                }
            }
            recent.next_seq = recent.next_seq.max(id + 1);
        }
        // No screen connected is fine.
        let _ = self.sender.send(event);
    }

    /// Subscribes a screen that last saw `last_id` (none for a new screen). Subscribing happens
    /// before the replay is read, so no event falls between them; the caller skips events whose
    /// id it already sent.
    pub fn subscribe(
        &self,
        last_id: Option<Seq>,
    ) -> (Catchup, broadcast::Receiver<Arc<LiveEvent>>) {
        let receiver = self.sender.subscribe();
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let catchup = match last_id {
            None => Catchup::Snapshot,
            // Not an id of ours: the screen's numbers belong to another journal.
            Some(last) if last >= recent.next_seq => Catchup::Snapshot,
            Some(last) => {
                let recent = &recent.events;
                let newest = recent.back().and_then(|e| e.id);
                let oldest = recent.front().and_then(|e| e.id);
                match (oldest, newest) {
                    // Nothing happened since, or everything since is still here.
                    (_, Some(newest)) if last >= newest => Catchup::Replay(Vec::new()),
                    (Some(oldest), _) if last + 1 >= oldest => Catchup::Replay(
                        recent
                            .iter()
                            .filter(|e| e.id.is_some_and(|id| id > last))
                            .cloned()
                            .collect(),
                    ),
                    (None, None) => Catchup::Replay(Vec::new()),
                    _ => Catchup::Snapshot,
                }
            }
        };
        (catchup, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote_event(id: Seq) -> LiveEvent {
        LiveEvent {
            id: Some(id),
            kind: "vote",
            data: format!("{{\"seq\":{id}}}"),
        }
    }

    #[test]
    fn a_reconnecting_screen_gets_exactly_what_it_missed() {
        let feed = LiveFeed::new(1);
        for id in 1..=10 {
            feed.publish(vote_event(id));
        }
        feed.publish(LiveEvent {
            id: None,
            kind: "tallies",
            data: "{}".into(),
        });
        let (catchup, _) = feed.subscribe(Some(7));
        let Catchup::Replay(events) = catchup else {
            panic!("expected a replay")
        };
        assert_eq!(
            events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [Some(8), Some(9), Some(10)]
        );
        assert!(matches!(feed.subscribe(Some(10)).0, Catchup::Replay(e) if e.is_empty()));
        assert!(matches!(feed.subscribe(None).0, Catchup::Snapshot));
    }

    #[test]
    fn a_screen_ahead_of_the_journal_gets_a_snapshot() {
        // The journal restarted at seq 40 (its votes before were sent and deleted).
        let feed = LiveFeed::new(40);
        assert!(matches!(feed.subscribe(Some(39)).0, Catchup::Replay(e) if e.is_empty()));
        assert!(matches!(feed.subscribe(Some(40)).0, Catchup::Snapshot));
        assert!(matches!(feed.subscribe(Some(90_000)).0, Catchup::Snapshot));
        feed.publish(vote_event(40));
        assert!(matches!(feed.subscribe(Some(40)).0, Catchup::Replay(e) if e.is_empty()));
        assert!(matches!(feed.subscribe(Some(41)).0, Catchup::Snapshot));
    }

    #[test]
    fn a_screen_away_too_long_gets_a_snapshot() {
        let feed = LiveFeed::new(1);
        for id in 1..=(REPLAY_CAPACITY as u64 + 100) {
            feed.publish(vote_event(id));
        }
        assert!(matches!(feed.subscribe(Some(50)).0, Catchup::Snapshot));
        assert!(
            matches!(feed.subscribe(Some(100)).0, Catchup::Replay(e) if e.len() == REPLAY_CAPACITY)
        );
    }

    #[test]
    fn the_replay_buffer_holds_at_most_a_mebibyte() {
        let feed = LiveFeed::new(1);
        // Events as large as a site of 256 terminals makes them.
        let big = |id: Seq| LiveEvent {
            id: Some(id),
            kind: "vote",
            data: "x".repeat(100_000),
        };
        for id in 1..=100 {
            feed.publish(big(id));
        }
        let recent = feed.recent.lock().expect("lock");
        assert!(recent.bytes <= REPLAY_BYTES, "{} bytes kept", recent.bytes);
        assert_eq!(recent.events.len(), REPLAY_BYTES / 100_000);
        drop(recent);
        // A screen that missed more than that gets a snapshot; a recent one its replay.
        assert!(matches!(feed.subscribe(Some(50)).0, Catchup::Snapshot));
        assert!(matches!(feed.subscribe(Some(98)).0, Catchup::Replay(e) if e.len() == 2));
    }

    #[test]
    fn events_published_after_subscribing_arrive() {
        let feed = LiveFeed::new(1);
        let (_, mut receiver) = feed.subscribe(None);
        feed.publish(vote_event(1));
        assert_eq!(receiver.try_recv().map(|e| e.id), Ok(Some(1)));
    }
}
