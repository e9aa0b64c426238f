//! votegate's integration tests: one binary, one module per area, a shared harness.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod alerts;
mod architecture;
mod browser;
mod bus;
mod check_files;
mod cli;
#[cfg(feature = "ingest")]
mod cloud;
mod config_files;
mod display;
mod filter;
#[cfg(feature = "ingest")]
mod fleet;
mod gpio;
mod harness;
mod health;
mod http_limits;
#[cfg(feature = "ingest")]
mod ingest;
mod journal_crash;
mod journal_legacy;
mod journal_model;
mod package;
mod protocol_spec;
mod reload;
mod serial;
mod soak;
mod supply_chain;
mod systemd;
mod uplink;
