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
    /// The cloud-side reference consumer: batches from MQTT into PostgreSQL, and the completeness
    /// report (in builds with the cargo feature `ingest`).
    Ingest(IngestArgs),
    /// Simulate a fleet of gateways publishing real batches to a broker over MQTT, for testing
    /// and measuring the ingest (in builds with the cargo feature `ingest`).
    FleetSim(FleetSimArgs),
}

/// How `fleet-sim` encodes batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimFormat {
    /// postcard: compact binary (the gateway's default).
    Postcard,
    /// JSON.
    Json,
}

/// `votegate fleet-sim`: N simulated gateways in one process, each its own MQTT session.
#[derive(Debug, clap::Args)]
pub struct FleetSimArgs {
    /// An ingest config file: its `[mqtt]` table gives the broker and the one identity every
    /// simulated gateway uses (its `postgres-url` is required by the format, and not used).
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// How many gateways.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub gateways: usize,
    /// Gateway ids (and MQTT client ids) are `PREFIX-0001`, `PREFIX-0002`…
    #[arg(long, default_value = "sim", value_name = "PREFIX")]
    pub gateway_prefix: String,
    /// How many sites; gateway n belongs to `site-{n % sites}`. Default: gateways / 10, rounded up.
    #[arg(long, value_name = "N")]
    pub sites: Option<usize>,
    /// Batches per second per gateway (ticks at a random phase, ±10 % jitter).
    #[arg(long, default_value_t = 1.0, value_name = "PER_SECOND")]
    pub rate: f64,
    /// Mean votes per batch (each tick makes 50 to 150 % of it, at least 1).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub votes_per_batch: u32,
    /// How long to make votes (e.g. `30s`, `10m`); then every batch is waited for. Gateways
    /// connect (and start ticking) spread over the first 2 s.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub duration: String,
    /// Terminals per gateway (`t1`…).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub terminals: u32,
    /// Probability per acknowledged batch of publishing it again, byte for byte (a lost PubAck).
    #[arg(long, default_value_t = 0.01, value_name = "P")]
    pub redeliver: f64,
    /// Probability per batch of dropping a run of 1 to 50 seqs first (reported in `dropped`).
    #[arg(long, default_value_t = 0.001, value_name = "P")]
    pub drop: f64,
    /// Mean deliberate reconnects per gateway per hour (unacknowledged batches go again).
    #[arg(long, default_value_t = 6.0, value_name = "PER_HOUR")]
    pub reconnect: f64,
    /// Unacknowledged batches per gateway at most; beyond it votes wait for the next batch.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_in_flight: usize,
    /// Payload encoding.
    #[arg(long, value_enum, default_value_t = SimFormat::Postcard)]
    pub format: SimFormat,
    /// Write the ground truth here as JSON: per gateway first_seq, last_seq, votes_acked,
    /// dropped ranges, batches, redelivered_batches, reconnects; totals; started_ms, ended_ms.
    #[arg(long, value_name = "PATH")]
    pub summary: Option<PathBuf>,
    /// Seed for every random decision (printed when not given), to replay a run.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Every gateway's first seq.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub start_seq: u64,
    /// After `--duration`, how long to wait for outstanding batches to be acknowledged.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub drain_timeout: String,
}

/// `votegate ingest`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IngestArgs {
    /// What to do instead of consuming.
    #[command(subcommand)]
    pub command: Option<IngestCommand>,
    /// The ingest's config file (`postgres-url`, `[mqtt]`).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// `votegate ingest …`.
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Per gateway: received, dropped at the gateway, missing, pending, duplicates, conflicts;
    /// exit 1 if anything is missing or conflicting.
    Report {
        /// The ingest's config file.
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// A gap is missing (not pending) once the seq above it is this old.
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        grace: String,
        /// Print one JSON object: `result` (ok or fail), `grace_s` and `gateways`.
        #[arg(long)]
        json: bool,
    },
    /// Write batch payload files (postcard or JSON, as published) to PostgreSQL as if they had
    /// arrived over MQTT: for replays and tests. Prints one JSON line per file.
    Load {
        /// The ingest's config file.
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// The payload files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
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
