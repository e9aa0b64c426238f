//! The `votegate` command line (CONTRACT.md § Command line): one file per command.

pub mod args;
pub mod check;
pub mod decode;
pub mod fleet_sim;
pub mod ingest;
pub mod run;
pub mod simulate;
pub mod status;

use std::process::ExitCode;

pub use args::{Cli, Command};

/// Exit code: a check or an operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or an invalid config.
pub const EXIT_USAGE: u8 = 2;

/// Bad command-line usage that clap cannot see (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs a parsed command line.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run::run(&config),
        Command::Check {
            config,
            offline,
            json,
        } => check::check(&config, offline, json),
        Command::Simulate(args) => simulate::simulate(args),
        Command::Status { url, json } => status::status(&url, json),
        Command::Decode { file } => decode::decode(file.as_deref()),
        Command::Ingest(args) => ingest::ingest(args),
        Command::FleetSim(args) => fleet_sim::fleet_sim(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::args;

    #[test]
    fn the_defaults_agree_with_the_config() {
        assert_eq!(args::DEFAULT_CONFIG, crate::config::DEFAULT_CONFIG_PATH);
        assert_eq!(
            args::DEFAULT_URL,
            format!("http://{}", crate::config::DEFAULT_LISTEN)
        );
        super::Cli::command().debug_assert();
    }
}
