//! `votegate`: argv → [`votegate::cli`]; an error becomes one sentence on stderr and an exit code
//! (0 success, 1 a check or operation failed, 2 usage or config error).

use std::process::ExitCode;

use clap::Parser;
use votegate::cli::{self, Cli, UsageError, EXIT_FAILED, EXIT_USAGE};
use votegate::config::ConfigError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("votegate: {err:#}");
            if err.downcast_ref::<ConfigError>().is_some()
                || err.downcast_ref::<UsageError>().is_some()
            {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
    }
}
