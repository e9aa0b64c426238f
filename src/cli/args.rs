//! The command line's definition, and nothing else: `build.rs` includes this file to generate
//! the man pages and shell completions, so it may use only `std` and `clap` (no `crate::`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where `run` and `check` look without `--config` (`config::DEFAULT_CONFIG_PATH`; a unit test
/// keeps the two equal).
pub const DEFAULT_CONFIG: &str = "/etc/votegate/votegate.toml";
/// Where `status` asks without `--url` (the default `listen`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// `votegate --version`: the version, the git commit (`+dirty` when built from a changed tree)
/// and the target, from build.rs; the plain version where build.rs has not run (build.rs itself).
pub const LONG_VERSION: &str = match option_env!("VOTEGATE_LONG_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// Edge gateway for customer-feedback button terminals.
#[derive(Debug, Parser)]
#[command(name = "votegate", version = LONG_VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run {
        /// The config file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the config and probe every part; exit 0 only if no check fails.
    Check {
        /// The config file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only what needs no network or hardware: the config, the data dir, the listen
        /// address and the uplink's key files (what systemd runs before starting the daemon,
        /// which must start during an outage).
        #[arg(long)]
        offline: bool,
        /// Print one JSON object: `result` (ok, warn or fail) and `checks`, each with `name`,
        /// `result` and `message`.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running daemon for its terminals, tallies, buffer depth and uplink state.
    Status {
        /// The daemon's HTTP address (its `listen` key).
        #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
        url: String,
        /// Print one JSON object: `result` (ok or fail), the daemon's `status` and `tallies`.
        #[arg(long)]
        json: bool,
    },
    /// Print a batch payload (postcard or JSON, as published on {prefix}/votes) as JSON.
    Decode {
        /// The payload file; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Play serial terminals on a port (hardware/PROTOCOL.md); print each acknowledged vote as JSON.
    Simulate(SimulateArgs),
}

/// The command's options.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The serial port the simulated terminals are attached to.
    #[arg(long, value_name = "PATH")]
    pub serial: PathBuf,
    /// Line speed (8N1).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// A terminal to play: `LABEL` for one point-to-point terminal, or `LABEL@ADDRESS` (repeat
    /// for each) for terminals on an RS-485 bus. Default: one point-to-point terminal `sim`.
    #[arg(long = "terminal", value_name = "LABEL[@ADDRESS]")]
    pub terminals: Vec<String>,
    /// Random presses per minute, per terminal.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Read presses from stdin, one `BUTTON` or `LABEL BUTTON` per line (any number 0–255, so
    /// invalid buttons can be tried).
    #[arg(long)]
    pub stdin: bool,
    /// Stop after this many votes were answered.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// The first term_seq of each terminal (a real terminal continues from its flash).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub first_term_seq: u32,
    /// Point-to-point retransmission interval (the protocol says 1000).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub retransmit_ms: u64,
    /// Point-to-point status interval (the protocol says 60).
    #[arg(long, default_value_t = 60, value_name = "S")]
    pub status_interval_s: u64,
}
