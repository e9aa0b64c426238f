//! The `votegate` command line (CONTRACT.md § Command line): one file per command.

pub mod check;
pub mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// Exit code: a check or an operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or an invalid config.
pub const EXIT_USAGE: u8 = 2;

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
    },
}

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Check { config } => check::check(&config),
    }
}
