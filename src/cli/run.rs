//! `votegate run`: load the config, start logging, run the daemon until SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::{daemon, logging};

/// Runs the daemon with the config at `path`.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let (level, destination) = logging::init(config.log_level);
    log::debug!("logging at {level} to {destination:?}");
    let clock = Arc::new(SystemClock::new()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("votegate")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(config, clock))?;
    Ok(ExitCode::SUCCESS)
}
