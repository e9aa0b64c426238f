//! Wiring: opens the journal, starts a task per source, and shuts everything down in order.
//!
//! Shutdown (SIGTERM or SIGINT): the sources are cancelled and given [`SOURCE_GRACE`] to finish
//! the press they are handling; then the journal answers every request already queued, makes
//! everything durable and stops. The whole sequence stays well inside systemd's default 90 s and
//! the contract's 5 s.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::journal::{self, Journal, JournalError, JournalService};
use crate::sources::registry::Registry;
use crate::sources::serial::{self, PortContext};
use crate::sources::{simulated, Intake};

/// How long sources get to finish after shutdown begins.
const SOURCE_GRACE: Duration = Duration::from_secs(2);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The journal could not be opened or flushed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal thread could not be started.
    #[error("cannot start the journal thread: {0}")]
    Thread(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot listen for SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config, clock: Arc<dyn Clock>) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    let signals = spawn_signal_listener(shutdown.clone()).map_err(DaemonError::Signals)?;
    let result = run_until(config, clock, shutdown).await;
    signals.abort();
    result
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run_until(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    log::info!(
        version = env!("CARGO_PKG_VERSION"), gateway:% = config.gateway_id, site:% = config.site;
        "votegate starting with config {}", config.path.display()
    );
    let journal = open_journal(&config)?;
    let intake = Arc::new(Intake::new(
        journal.handle(),
        clock.clone(),
        &config.terminals,
    ));
    let registry = Arc::new(Registry::new(&config.terminals));
    let sources = TaskTracker::new();
    for terminal in &config.terminals {
        if let SourceConfig::Simulated { presses_per_minute } = &terminal.source {
            sources.spawn(simulated::run(
                terminal.id.clone(),
                *presses_per_minute,
                intake.clone(),
                registry.clone(),
                clock.clone(),
                shutdown.clone(),
            ));
        }
    }
    for port in &config.serial_ports {
        let context = PortContext {
            intake: intake.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            port: port.path.display().to_string(),
        };
        sources.spawn(serial::run_port(port.clone(), context, shutdown.clone()));
    }
    sources.close();
    log::info!(terminals = config.terminals.len(); "votegate running");

    shutdown.cancelled().await;
    log::info!("shutting down");
    if tokio::time::timeout(SOURCE_GRACE, sources.wait())
        .await
        .is_err()
    {
        log::warn!("sources did not stop within {SOURCE_GRACE:?}; closing the journal anyway");
    }
    drop(intake);
    let stats = journal.stats().borrow().clone();
    journal.shutdown().await?;
    log::info!(depth = stats.depth, next_seq = stats.next_seq; "journal flushed, votegate stopped");
    Ok(())
}

fn open_journal(config: &Config) -> Result<JournalService, DaemonError> {
    let journal = Journal::open(&config.data_dir, config.journal)?;
    let stats = journal.stats();
    log::info!(
        data_dir:% = config.data_dir.display(), depth = stats.depth, next_seq = stats.next_seq,
        dropped = stats.dropped;
        "journal open"
    );
    journal::spawn(journal).map_err(DaemonError::Thread)
}

fn spawn_signal_listener(
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received"),
            _ = int.recv() => log::info!("SIGINT received"),
        }
        shutdown.cancel();
    }))
}
