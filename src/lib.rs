//! # votegate
//!
//! An edge gateway for customer-feedback button terminals: it reads presses from the terminals of
//! a site, makes every accepted press durable before acknowledging it, keeps live tallies for an
//! in-store screen and forwards the votes to the cloud.
//!
//! ## The pipeline is the module tree
//!
//! ```text
//! sources (simulated, serial, gpio) ──Append{press, reply}──▶ journal (log, blocks, sled; group commit)
//!                                                     │ accepted votes (broadcast)
//!                         ┌───────────────────────────┼──────────────────────┐
//!                         ▼                           ▼                      ▼
//!                  tallies → display          uplink (MQTT/TLS)          status
//!                                                     │ ack_through(seq)
//!                                                     ▼
//!                                     journal releases acked votes
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`model`] | `Vote`, `Press`, `Button`, `TerminalId`: plain data, no I/O |
//! | [`clock`] | wall clock, boot-relative monotonic time, boot id, NTP sync state, re-stamping |
//! | [`config`] | the TOML file: raw serde structs → validated [`config::Config`] |
//! | [`sources`] | the hand-off to the journal ([`sources::Intake`]), the sources (simulated, serial, gpio) |
//! | [`backoff`] | exponential backoff with jitter for everything that reconnects |
//! | [`tallies`] | windows and scores, the live feed |
//! | [`display`] | the HTTP API and the display page |
//! | [`labels`] | the display page's languages and built-in labels (pure) |
//! | [`uplink`] | batches to MQTT/TLS, acknowledged delivery |
//! | [`status`] | the status snapshot |
//! | [`health`] | healthy or not, and every reason why (pure) |
//! | [`journal`] | the durable store of votes: write-ahead log, blocks, group commit, dedup, the press filter, counts, folder bound, compaction, acks |
//! | [`daemon`] | wiring and ordered shutdown |
//! | [`cli`] | one file per command of the contract |
//! | `ingest` | (cargo feature `ingest`) the cloud-side consumer: PostgreSQL schema, batch writes, completeness ledger |
//! | [`logging`] | operator logs with structured fields |
//! | [`throttle`] | at most one log line per interval for a repeating event |
//!
//! ## Dependency rule
//! Checked by `tests/it/architecture.rs`, which scans `src/`:
//! - sled is imported only in `journal/store.rs`, tokio-serial only in `sources/serial/port.rs`,
//!   rumqttc only in `uplink/mqtt.rs`, rustls only there and in `uplink/files.rs` (which checks the
//!   key files offline, with x509-parser, imported nowhere else), axum and hyper only in `display/`,
//!   tokio-postgres only in `ingest/store.rs`;
//! - only `daemon/` and `cli/` wire pipeline modules together: `sources` may use the journal's
//!   handle, but the journal knows nothing of sources, and pure modules (`model`, `clock`,
//!   `backoff`, `journal/record.rs`, `journal/dedup.rs`, `journal/filter.rs`, `journal/block.rs`,
//!   `journal/counts.rs`, `sources/serial/frame.rs`, `labels`) do no I/O;
//! - `anyhow` is used only in `main.rs` and `cli/`.

pub mod alerts;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod display;
pub mod health;
#[cfg(feature = "ingest")]
pub mod ingest;
pub mod journal;
pub mod labels;
pub mod logging;
pub mod model;
pub mod sources;
pub mod status;
pub mod tallies;
pub mod throttle;
pub mod uplink;
