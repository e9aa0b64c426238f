//! Wiring: opens the journal, starts a task per source, and shuts everything down in order.
//!
//! Shutdown (SIGTERM or SIGINT): the sources are cancelled and given [`SOURCE_GRACE`] to finish
//! the press they are handling; then the journal answers every request already queued, makes
//! everything durable and stops. The whole sequence stays well inside systemd's default 90 s and
//! the contract's 5 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Config, GpioBackend, SourceConfig};
use crate::display::{self, DisplayState};
use crate::health::SourceState;
use crate::journal::{self, Journal, JournalError, JournalService};
use crate::sources::registry::Registry;
use crate::sources::serial::{self, PortContext};
use crate::sources::{gpio, simulated, Intake};
use crate::status::StatusSource;
use crate::uplink::task::Uplink;
use crate::uplink::{UplinkSettings, UplinkState};
use systemd::{Notifier, StatusNotice};

pub mod systemd;

/// File descriptors kept free for everything but HTTP connections (journal, serial ports,
/// broker, GPIO), checked against the open-files limit at start.
const FILES_BESIDES_HTTP: u64 = 128;

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
    /// The simulated GPIO header's socket could not be bound.
    #[error(transparent)]
    Gpio(#[from] crate::sources::gpio::pins::GpioError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr} (config key `listen`): {cause}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// Why (often: another program has the port).
        cause: std::io::Error,
    },
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
    let started = Instant::now();
    let journal = open_journal(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|cause| DaemonError::Listen {
            addr: config.listen,
            cause,
        })?;
    let tasks = TaskTracker::new();
    let intake = Arc::new(Intake::new(
        journal.handle(),
        clock.clone(),
        &config.terminals,
    ));
    let registry = Arc::new(Registry::new(&config.terminals));
    let (uplink_state, uplink_receiver) =
        tokio::sync::watch::channel(UplinkState::not_configured());
    let (_health_settings, health_receiver) = tokio::sync::watch::channel(config.health);
    let status = StatusSource {
        gateway_id: config.gateway_id.clone(),
        site: config.site.clone(),
        started,
        journal: journal.stats(),
        registry: registry.clone(),
        clock: clock.clone(),
        uplink: uplink_receiver,
        health: health_receiver,
    };
    if let Some(settings) = &config.uplink {
        start_uplink(
            settings,
            &config,
            &journal,
            &status,
            &clock,
            &tasks,
            &shutdown,
            uplink_state,
        );
    } else {
        log::warn!(
            "no [uplink] configured: votes stay in the journal (bounded by journal.max-disk-size)"
        );
    }
    start_display(
        &config,
        &journal,
        status.clone(),
        listener,
        &clock,
        &tasks,
        &shutdown,
    )
    .await?;
    let sources = spawn_sources(&config, &intake, &registry, &clock, &shutdown)?;
    log::info!(terminals = config.terminals.len(); "votegate running");
    let notifier = Arc::new(Notifier::from_env());
    let mut notice = StatusNotice::default();
    let first = status.snapshot();
    notice.due(&first, tokio::time::Instant::now());
    notifier.notify(&format!("READY=1\nSTATUS={}", StatusNotice::line(&first)));
    tasks.spawn(report_status(
        notifier.clone(),
        notice,
        status,
        shutdown.clone(),
    ));
    if let Some(interval) = systemd::watchdog_interval() {
        tasks.spawn(feed_watchdog(
            notifier.clone(),
            journal.heartbeat(),
            interval,
            shutdown.clone(),
        ));
    }

    shutdown.cancelled().await;
    log::info!("shutting down");
    notifier.notify("STOPPING=1");
    tasks.close();
    let stopped = async { tokio::join!(sources.wait(), tasks.wait()) };
    if tokio::time::timeout(SOURCE_GRACE, stopped).await.is_err() {
        log::warn!("tasks did not stop within {SOURCE_GRACE:?}; closing the journal anyway");
    }
    drop(intake);
    let stats = journal.stats().borrow().clone();
    journal.shutdown().await?;
    log::info!(depth = stats.depth, next_seq = stats.next_seq; "journal flushed, votegate stopped");
    Ok(())
}

/// Starts the tallies (rebuilt from the journal) and the HTTP server on `listener`.
async fn start_display(
    config: &Config,
    journal: &JournalService,
    status: StatusSource,
    listener: tokio::net::TcpListener,
    clock: &Arc<dyn Clock>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DaemonError> {
    let terminal_ids: Vec<_> = config.terminals.iter().map(|t| t.id.clone()).collect();
    let (tallies, follower) = crate::tallies::task::start(
        config.tally_rules(),
        terminal_ids,
        journal.handle(),
        journal.subscribe(),
        clock.clone(),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(follower);
    let (_display_settings, settings) = tokio::sync::watch::channel(config.display.clone());
    let state = DisplayState::new(tallies, status, settings.clone(), shutdown.clone());
    let gate = state.connections.clone();
    let router = display::router(state);
    let bound = listener.local_addr().unwrap_or(config.listen);
    log::info!(
        listen:% = bound, max_connections = config.display.max_connections;
        "display and HTTP API on http://{bound}/"
    );
    warn_if_few_files(config.display.max_connections);
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = display::serve(listener, router, gate, settings, shutdown).await {
            log::error!("HTTP server stopped: {err}");
        }
    });
    Ok(())
}

/// Warns when the open-files limit leaves too little room above `display.max-connections` (the
/// unit sets `LimitNOFILE=4096`; a shell's default is often 1024).
fn warn_if_few_files(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let needed = max_connections as u64 + FILES_BESIDES_HTTP;
    if limit.rlim_cur < needed {
        log::warn!(
            "the open-files limit ({}) is below display.max-connections ({max_connections}) + {FILES_BESIDES_HTTP}: \
             under many connections the gateway could run out of files; lower display.max-connections or raise LimitNOFILE",
            limit.rlim_cur
        );
    }
}

/// Keeps systemd's `STATUS=` current: sent when the health or the connections change, and at
/// least every [`systemd::STATUS_REFRESH`].
async fn report_status(
    notifier: Arc<Notifier>,
    mut notice: StatusNotice,
    status: StatusSource,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(systemd::STATUS_CHECK);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = status.snapshot();
        if notice.due(&snapshot, tokio::time::Instant::now()) {
            notifier.notify(&format!("STATUS={}", StatusNotice::line(&snapshot)));
        }
    }
}

/// Sends `WATCHDOG=1` every `interval` while the journal thread shows signs of life; a wedged
/// journal (stuck in fsync on a dying SD card, say) stops the pings and systemd restarts us.
async fn feed_watchdog(
    notifier: Arc<Notifier>,
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = heartbeat.load(std::sync::atomic::Ordering::Relaxed);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        if now != last {
            notifier.notify("WATCHDOG=1");
            warned = false;
        } else if !warned {
            log::error!("the journal thread has not run for {interval:?}: not feeding the systemd watchdog, which will restart votegate");
            warned = true;
        }
        last = now;
    }
}

/// Starts the MQTT uplink, reporting on `state`.
#[allow(clippy::too_many_arguments)]
fn start_uplink(
    settings: &UplinkSettings,
    config: &Config,
    journal: &JournalService,
    status: &StatusSource,
    clock: &Arc<dyn Clock>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    state: tokio::sync::watch::Sender<UplinkState>,
) {
    let telemetry_source = status.clone();
    let uplink = Uplink::new(
        settings.clone(),
        &config.gateway_id,
        &config.site,
        journal.handle(),
        journal.stats(),
        clock.clone(),
        Arc::new(move || telemetry_source.telemetry()),
        state,
    );
    log::info!(
        broker:% = format!("{}:{}", settings.host, settings.port), topic:% = settings.topic_prefix, tls = settings.tls.is_some();
        "uplink configured"
    );
    tasks.spawn(uplink.run(shutdown.clone()));
}

/// Starts one task per simulated terminal, per serial port and per GPIO terminal.
fn spawn_sources(
    config: &Config,
    intake: &Arc<Intake>,
    registry: &Arc<Registry>,
    clock: &Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> Result<TaskTracker, DaemonError> {
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
    let gpio_terminals: Vec<_> = config
        .terminals
        .iter()
        .filter_map(|t| match &t.source {
            SourceConfig::Gpio(settings) => Some((t.id.clone(), settings.clone())),
            _ => None,
        })
        .collect();
    if !gpio_terminals.is_empty() {
        let header = open_gpio_header(&config.gpio, &sources, shutdown)?;
        if let Err(error) = &header {
            for (id, _) in &gpio_terminals {
                registry.source(
                    id,
                    SourceState::Failed {
                        error: error.clone(),
                    },
                );
            }
        }
        if let Ok(header) = header {
            let context = gpio::GpioContext {
                intake: intake.clone(),
                registry: registry.clone(),
                clock: clock.clone(),
                header,
            };
            for (id, settings) in gpio_terminals {
                sources.spawn(gpio::run_terminal(
                    id,
                    settings,
                    context.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    sources.close();
    Ok(sources)
}

/// The GPIO header the config asks for. The Pi's header failing to open (not a Pi, no
/// permission) is logged and returned as the inner error: the GPIO terminals stay offline (and
/// make the gateway unhealthy), the other terminals go on.
#[allow(clippy::type_complexity)]
fn open_gpio_header(
    backend: &GpioBackend,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Result<Arc<dyn gpio::pins::Header>, String>, DaemonError> {
    match backend {
        GpioBackend::Header => match gpio::pins::RppalHeader::open() {
            Ok(header) => Ok(Ok(Arc::new(header))),
            Err(err) => {
                log::error!("GPIO terminals not started: {err}");
                Ok(Err(err.to_string()))
            }
        },
        GpioBackend::Simulated { socket } => {
            let header = Arc::new(gpio::pins::SimulatedHeader::default());
            tasks.spawn(header.clone().serve(socket, shutdown.clone())?);
            Ok(Ok(header))
        }
    }
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
