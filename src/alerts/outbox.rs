//! The alerts' durable outbox, in `{data-dir}/alerts/`: one file per MQTT message waiting for
//! the broker's PubAck, and `state.json` with the open alerts and the next id.
//!
//! Alerts are rare (a few a day), so each is written on its own: the message file and the
//! state are written to a temporary name, fsynced and renamed, then the folder is fsynced. A
//! message leaves the outbox only after the broker acknowledged it, so an alert raised during an
//! outage, or before a power cut, is delivered when the link returns (at least once: after a
//! crash between the PubAck and the delete it is sent again, with the same alert id). At most
//! [`MAX_MESSAGES`] wait; past that the oldest are dropped and counted, so that a gateway cut off
//! for months cannot fill its card with alerts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use super::{Alert, AlertEvent, AlertsState};

/// Messages kept at most.
pub const MAX_MESSAGES: usize = 1000;
/// The outbox's folder inside the data folder.
pub const ALERTS_DIR: &str = "alerts";
const STATE_FILE: &str = "state.json";
const MESSAGE_SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("alerts outbox: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `state.json` is not what this version writes.
    #[error("alerts outbox: {path} is not readable state ({problem}); remove it to start afresh")]
    State {
        /// The file.
        path: PathBuf,
        /// The parse error.
        problem: String,
    },
}

/// The MQTT message for an alert opening or closing.
#[derive(Serialize)]
struct AlertMessage<'a> {
    /// `opened` or `closed`.
    event: &'static str,
    gateway_id: &'a str,
    site: &'a str,
    alert: &'a Alert,
}

/// The message bytes for `event` (JSON).
pub fn message(event: &AlertEvent, gateway_id: &str, site: &str) -> Vec<u8> {
    let name = match event {
        AlertEvent::Opened(_) => "opened",
        AlertEvent::Closed(_) => "closed",
    };
    serde_json::to_vec(&AlertMessage {
        event: name,
        gateway_id,
        site,
        alert: event.alert(),
    })
    .unwrap_or_default()
}

/// The outbox: messages by number, oldest first.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    pending: Mutex<BTreeMap<u64, Arc<Vec<u8>>>>,
    next_number: AtomicU64,
    dropped: AtomicU64,
    changed: Notify,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, with the state it kept.
    pub fn open(dir: &Path) -> Result<(Outbox, AlertsState), OutboxError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let state_path = dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| OutboxError::State {
                path: state_path.clone(),
                problem: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => AlertsState::default(),
            Err(err) => return Err(io("read", &state_path)(err)),
        };
        let mut pending = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let entry = entry.map_err(io("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(TMP_SUFFIX) {
                // A write cut short: its message or state was never in place.
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                continue;
            }
            let Some(number) = name
                .strip_suffix(MESSAGE_SUFFIX)
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(io("read", &path))?;
            pending.insert(number, Arc::new(bytes));
        }
        let next_number = pending.keys().next_back().map_or(1, |n| n + 1);
        let outbox = Outbox {
            dir: dir.to_path_buf(),
            pending: Mutex::new(pending),
            next_number: AtomicU64::new(next_number),
            dropped: AtomicU64::new(0),
            changed: Notify::new(),
        };
        Ok((outbox, state))
    }

    /// Makes `messages` and `state` durable, then offers the messages to the uplink.
    /// Blocking (fsync): call it off the async threads.
    pub fn record(&self, messages: Vec<Vec<u8>>, state: &AlertsState) -> Result<(), OutboxError> {
        let mut written = Vec::with_capacity(messages.len());
        for bytes in messages {
            let number = self.next_number.fetch_add(1, Ordering::Relaxed);
            let name = format!("{number:020}{MESSAGE_SUFFIX}");
            self.write_file(&name, &bytes)?;
            written.push((number, bytes));
        }
        let state_bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        self.write_file(STATE_FILE, &state_bytes)?;
        File::open(&self.dir)
            .and_then(|folder| folder.sync_all())
            .map_err(io("fsync", &self.dir))?;
        let overflow = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (number, bytes) in written {
                pending.insert(number, Arc::new(bytes));
            }
            let mut overflow = Vec::new();
            while pending.len() > MAX_MESSAGES {
                if let Some((number, _)) = pending.pop_first() {
                    overflow.push(number);
                }
            }
            overflow
        };
        for number in &overflow {
            self.remove_file(*number)?;
        }
        if !overflow.is_empty() {
            self.dropped
                .fetch_add(overflow.len() as u64, Ordering::Relaxed);
            log::warn!(
                dropped = overflow.len();
                "alerts outbox: more than {MAX_MESSAGES} alert messages waiting for the broker; the oldest were dropped"
            );
        }
        // One consumer (the uplink): a permit is kept if it is busy, so no change is missed.
        self.changed.notify_one();
        Ok(())
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), OutboxError> {
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let path = self.dir.join(name);
        let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))
    }

    fn remove_file(&self, number: u64) -> Result<(), OutboxError> {
        let path = self.dir.join(format!("{number:020}{MESSAGE_SUFFIX}"));
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(err)),
            _ => Ok(()),
        }
    }

    /// The messages waiting, oldest first, from message number `after` on.
    pub fn waiting_after(&self, after: u64, max: usize) -> Vec<(u64, Arc<Vec<u8>>)> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending
            .range(after + 1..)
            .take(max)
            .map(|(number, bytes)| (*number, bytes.clone()))
            .collect()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages dropped because too many waited.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The broker acknowledged message `number`: it leaves the outbox. Blocking.
    pub fn delivered(&self, number: u64) -> Result<(), OutboxError> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&number);
        self.remove_file(number)
    }

    /// Resolves when messages were added (after this was called).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Where the tallies send the alerts that opened or closed: to the outbox's writer, which makes
/// them durable in order, off the async threads.
#[derive(Clone, Debug)]
pub struct AlertSink {
    sender: mpsc::UnboundedSender<(Vec<Vec<u8>>, AlertsState)>,
    gateway_id: String,
    site: String,
}

impl AlertSink {
    /// A sink for `outbox` and the task that writes what it is sent (spawn it).
    pub fn new(
        outbox: Arc<Outbox>,
        gateway_id: &str,
        site: &str,
    ) -> (AlertSink, impl std::future::Future<Output = ()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let sink = AlertSink {
            sender,
            gateway_id: gateway_id.to_string(),
            site: site.to_string(),
        };
        (sink, write(outbox, receiver))
    }

    /// Records `events` (and the state after them).
    pub fn send(&self, events: &[AlertEvent], state: AlertsState) {
        let messages = events
            .iter()
            .map(|event| message(event, &self.gateway_id, &self.site))
            .collect();
        if self.sender.send((messages, state)).is_err() {
            log::warn!("alerts outbox: the writer has stopped; these alerts reach screens only");
        }
    }
}

async fn write(
    outbox: Arc<Outbox>,
    mut receiver: mpsc::UnboundedReceiver<(Vec<Vec<u8>>, AlertsState)>,
) {
    while let Some((messages, state)) = receiver.recv().await {
        let outbox = outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.record(messages, &state)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => log::error!("{err}; the alert reaches screens but not the cloud"),
            Err(err) => log::error!("alerts outbox: the writer failed: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertKind, AlertState};

    fn alert(id: u64) -> Alert {
        Alert {
            id,
            scope: "entrance".into(),
            rule: "negative-share >= 50 over 15m, min 4 votes".into(),
            kind: AlertKind::NegativeShare,
            threshold: 50.0,
            window: "15m".into(),
            min_votes: 4,
            button: None,
            state: AlertState::Open,
            opened_at: "2026-11-28T10:00:00.000Z".into(),
            closed_at: None,
            value: 75.0,
            votes: 4,
        }
    }

    #[test]
    fn messages_and_state_survive_a_reopen_until_delivered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (outbox, state) = Outbox::open(dir.path()).expect("open");
        assert_eq!(state, AlertsState::default());
        let opened = AlertEvent::Opened(alert(7));
        let state = AlertsState {
            next_id: 8,
            open: vec![alert(7)],
        };
        let bytes = message(&opened, "gw-1", "store-9");
        outbox.record(vec![bytes.clone()], &state).expect("record");
        drop(outbox);

        let (outbox, reopened) = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(reopened, state);
        let waiting = outbox.waiting_after(0, 10);
        assert_eq!(waiting.len(), 1);
        assert_eq!(*waiting[0].1, bytes);
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(json["event"], "opened");
        assert_eq!(json["gateway_id"], "gw-1");
        assert_eq!(json["alert"]["id"], 7);
        outbox.delivered(waiting[0].0).expect("delivered");
        drop(outbox);
        let (outbox, _) = Outbox::open(dir.path()).expect("reopen");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_write_cut_short_is_cleared_and_numbers_go_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("00000000000000000003.json"), b"{}").expect("write");
        std::fs::write(dir.path().join("00000000000000000004.json.tmp"), b"{").expect("write");
        let (outbox, _) = Outbox::open(dir.path()).expect("open");
        assert!(!dir.path().join("00000000000000000004.json.tmp").exists());
        outbox
            .record(vec![b"{\"n\":1}".to_vec()], &AlertsState::default())
            .expect("record");
        let numbers: Vec<u64> = outbox.waiting_after(0, 10).iter().map(|m| m.0).collect();
        assert_eq!(numbers, [3, 4]);
        assert_eq!(outbox.waiting_after(3, 10).len(), 1);
    }

    #[test]
    fn the_oldest_messages_go_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (outbox, _) = Outbox::open(dir.path()).expect("open");
        let messages = (0..MAX_MESSAGES + 3)
            .map(|n| n.to_string().into_bytes())
            .collect();
        outbox
            .record(messages, &AlertsState::default())
            .expect("record");
        assert_eq!(outbox.len(), MAX_MESSAGES);
        assert_eq!(outbox.dropped(), 3);
        assert_eq!(outbox.waiting_after(0, 1)[0].0, 4);
        assert!(!dir.path().join("00000000000000000001.json").exists());
    }

    #[test]
    fn unreadable_state_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(STATE_FILE), b"not json").expect("write");
        let err = Outbox::open(dir.path()).expect_err("refused");
        assert!(
            err.to_string().contains("remove it to start afresh"),
            "{err}"
        );
    }
}
