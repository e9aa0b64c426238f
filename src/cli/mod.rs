//! The `votegate` command line (CONTRACT.md § Command line): one file per command.

pub mod check;
pub mod decode;
pub mod run;
pub mod simulate;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Exit code: a check or an operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or an invalid config.
pub const EXIT_USAGE: u8 = 2;

/// Bad command-line usage that clap cannot see (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Edge gateway for customer-feedback button terminals.
#[derive(Debug, Parser)]
#[command(name = "votegate", version, about, long_about = None)]
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
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the config and probe every part; exit 0 only if all checks pass.
    Check {
        /// The config file.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only what needs no network or hardware: the config and the data dir (what systemd
        /// runs before starting the daemon, which must start during an outage).
        #[arg(long)]
        offline: bool,
    },
    /// Ask a running daemon for its terminals, tallies, buffer depth and uplink state.
    Status {
        /// The daemon's HTTP address (its `listen` key).
        #[arg(long, value_name = "URL", default_value = status::DEFAULT_URL)]
        url: String,
    },
    /// Print a batch payload (postcard or JSON, as published on {prefix}/votes) as JSON.
    Decode {
        /// The payload file; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Play serial terminals on a port (hardware/PROTOCOL.md); print each acknowledged vote as JSON.
    Simulate(simulate::SimulateArgs),
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Check { config, offline } => check::check(&config, offline),
        Command::Simulate(args) => simulate::simulate(args),
        Command::Status { url } => status::status(&url),
        Command::Decode { file } => decode::decode(file.as_deref()),
    }
}
