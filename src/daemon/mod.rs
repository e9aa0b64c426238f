//! Wiring: opens the journal, starts a task per source unit, reloads the config on SIGHUP, and
//! shuts everything down in order.
//!
//! Reload (SIGHUP): the file is read and validated; an invalid file is logged (naming key and
//! line) and the gateway runs on unchanged. A valid one is applied without a restart: only the
//! source units that changed are stopped and started, the uplink reconnects if its settings
//! changed, tallies, display and health limits follow. What cannot change at runtime refuses
//! the whole file ([`reload`]).
//!
//! Shutdown (SIGTERM or SIGINT): the sources are cancelled and given [`SOURCE_GRACE`] to finish
//! the press they are handling; then the journal answers every request already queued, makes
//! everything durable and stops. The whole sequence stays well inside systemd's default 90 s and
//! the contract's 5 s.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::outbox::{AlertSink, Outbox, ALERTS_DIR};
use crate::alerts::AlertsState;
use crate::clock::Clock;
use crate::config::{Config, DisplayConfig, GpioBackend};
use crate::display::{self, DisplayState};
use crate::health::{HealthSettings, SourceState};
use crate::journal::{self, Journal, JournalError, JournalHandle, JournalService, JournalStats};
use crate::sources::registry::Registry;
use crate::sources::serial::{self, PortContext};
use crate::sources::{gpio, simulated, Intake};
use crate::status::StatusSource;
use crate::tallies::task::{AlertsSetup, TallySetup};
use crate::uplink::task::Uplink;
use crate::uplink::{Connection, UplinkSettings, UplinkState};
use reload::{ReloadPlan, UnitKey, UnitSpec, UplinkChange};
use systemd::{Notifier, StatusNotice};

pub mod reload;
pub mod systemd;

/// File descriptors kept free for everything but HTTP connections (journal, serial ports,
/// broker, GPIO), checked against the open-files limit at start.
const FILES_BESIDES_HTTP: u64 = 128;

/// How long sources get to finish after shutdown begins (or a reload stops them).
const SOURCE_GRACE: Duration = Duration::from_secs(2);
/// How long a reload waits for the old uplink to say goodbye to the broker.
const UPLINK_GRACE: Duration = Duration::from_secs(5);

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

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads the config, SIGUSR1 and SIGUSR2 are
/// ignored.
pub async fn run(config: Config, clock: Arc<dyn Clock>) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    let (reloads, reload_requests) = mpsc::channel(1);
    let signals = spawn_signal_listener(shutdown.clone(), reloads).map_err(DaemonError::Signals)?;
    let result = run_until(config, clock, shutdown, reload_requests).await;
    signals.abort();
    result
}

/// Runs the daemon until `shutdown` is cancelled, reloading its config file whenever
/// `reloads` delivers.
pub async fn run_until(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<()>,
) -> Result<(), DaemonError> {
    log::info!(
        version = env!("CARGO_PKG_VERSION"), gateway:% = config.gateway_id, site:% = config.site;
        "votegate starting with config {}", config.path.display()
    );
    let journal = open_journal(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|cause| DaemonError::Listen {
            addr: config.listen,
            cause,
        })?;
    let mut daemon = Daemon::new(config, clock, &journal, shutdown.clone());
    daemon.start_display(&journal, listener).await?;
    if let Some(settings) = daemon.config.uplink.clone() {
        daemon.start_uplink(&settings);
    } else {
        log::warn!(
            "no [uplink] configured: votes stay in the journal (bounded by journal.max-disk-size)"
        );
    }
    for (key, spec) in reload::units(&daemon.config) {
        daemon.start_unit(key, &spec)?;
    }
    log::info!(terminals = daemon.config.terminals.len(); "votegate running");
    let mut notice = StatusNotice::default();
    let first = daemon.status.snapshot();
    notice.due(&first, tokio::time::Instant::now());
    daemon
        .notifier
        .notify(&format!("READY=1\nSTATUS={}", StatusNotice::line(&first)));
    daemon.tasks.spawn(report_status(
        daemon.notifier.clone(),
        notice,
        daemon.status.clone(),
        shutdown.clone(),
    ));
    if let Some(interval) = systemd::watchdog_interval() {
        daemon.tasks.spawn(feed_watchdog(
            daemon.notifier.clone(),
            journal.heartbeat(),
            interval,
            shutdown.clone(),
        ));
    }

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reloads.recv() => {
                // SIGTERM during a reload stops at once: every task is a child of `shutdown`.
                tokio::select! {
                    _ = daemon.reload() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    log::info!("shutting down");
    daemon.notifier.notify("STOPPING=1");
    daemon.tasks.close();
    daemon.sources.close();
    let stopped = async { tokio::join!(daemon.sources.wait(), daemon.tasks.wait()) };
    if tokio::time::timeout(SOURCE_GRACE, stopped).await.is_err() {
        log::warn!("tasks did not stop within {SOURCE_GRACE:?}; closing the journal anyway");
    }
    drop(daemon);
    let stats = journal.stats().borrow().clone();
    journal.shutdown().await?;
    log::info!(depth = stats.depth, next_seq = stats.next_seq; "journal flushed, votegate stopped");
    Ok(())
}

/// A task the daemon can stop on its own: a source unit or the uplink.
struct RunningTask {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningTask {
    /// Cancels the task and waits up to `grace` for it to end (then aborts it).
    async fn stop(self, what: &dyn std::fmt::Display, grace: Duration) {
        self.stop.cancel();
        let mut handle = self.handle;
        if tokio::time::timeout(grace, &mut handle).await.is_err() {
            log::warn!("{what} did not stop within {grace:?}; aborted");
            handle.abort();
        }
    }
}

/// The running gateway: its config and every part a reload may change.
struct Daemon {
    config: Config,
    clock: Arc<dyn Clock>,
    journal: JournalHandle,
    journal_stats: watch::Receiver<JournalStats>,
    intake: Arc<Intake>,
    registry: Arc<Registry>,
    status: StatusSource,
    notifier: Arc<Notifier>,
    /// The source units running, by key.
    units: BTreeMap<UnitKey, RunningTask>,
    /// Every source task (waited for at shutdown).
    sources: TaskTracker,
    uplink: Option<RunningTask>,
    uplink_state: watch::Sender<UplinkState>,
    health: watch::Sender<HealthSettings>,
    display: watch::Sender<DisplayConfig>,
    tallies: watch::Sender<TallySetup>,
    /// Alert messages waiting for the broker (none if the folder could not be opened).
    alerts_outbox: Option<Arc<Outbox>>,
    /// The GPIO header, once a GPIO terminal needed it (or why it cannot be used).
    gpio_header: Option<Result<Arc<dyn gpio::pins::Header>, String>>,
    /// Long-lived tasks: HTTP, tallies, status, watchdog, the simulated header.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Daemon {
    fn new(
        config: Config,
        clock: Arc<dyn Clock>,
        journal: &JournalService,
        shutdown: CancellationToken,
    ) -> Daemon {
        let intake = Arc::new(Intake::new(journal.handle(), clock.clone()));
        let registry = Arc::new(Registry::new(&config.terminals));
        let (uplink_state, uplink) = watch::channel(UplinkState::not_configured());
        let (health, health_settings) = watch::channel(config.health);
        let status = StatusSource {
            gateway_id: config.gateway_id.clone(),
            site: config.site.clone(),
            started: Instant::now(),
            journal: journal.stats(),
            registry: registry.clone(),
            clock: clock.clone(),
            uplink,
            health: health_settings,
        };
        Daemon {
            display: watch::channel(config.display.clone()).0,
            tallies: watch::channel(tally_setup(&config)).0,
            config,
            clock,
            journal: journal.handle(),
            journal_stats: journal.stats(),
            intake,
            registry,
            status,
            notifier: Arc::new(Notifier::from_env()),
            units: BTreeMap::new(),
            sources: TaskTracker::new(),
            uplink: None,
            alerts_outbox: None,
            uplink_state,
            health,
            gpio_header: None,
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// Starts the tallies (rebuilt from the journal) and the HTTP server on `listener`.
    async fn start_display(
        &mut self,
        journal: &JournalService,
        listener: tokio::net::TcpListener,
    ) -> Result<(), DaemonError> {
        let (outbox, state) = open_alerts_outbox(&self.config);
        let sink = outbox.clone().map(|outbox| {
            let (sink, writer) = AlertSink::new(outbox, &self.config.gateway_id, &self.config.site);
            self.tasks.spawn(writer);
            sink
        });
        self.alerts_outbox = outbox;
        let (tallies, follower) = crate::tallies::task::start_following(
            self.tallies.subscribe(),
            AlertsSetup { state, sink },
            journal.handle(),
            journal.subscribe(),
            self.clock.clone(),
            self.shutdown.clone(),
        )
        .await?;
        self.tasks.spawn(follower);
        let settings = self.display.subscribe();
        let state = DisplayState::new(
            tallies,
            self.status.clone(),
            settings.clone(),
            self.shutdown.clone(),
        );
        let gate = state.connections.clone();
        let router = display::router(state);
        let bound = listener.local_addr().unwrap_or(self.config.listen);
        let max_connections = self.config.display.max_connections;
        log::info!(
            listen:% = bound, max_connections = max_connections;
            "display and HTTP API on http://{bound}/"
        );
        warn_if_few_files(max_connections);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            if let Err(err) = display::serve(listener, router, gate, settings, shutdown).await {
                log::error!("HTTP server stopped: {err}");
            }
        });
        Ok(())
    }

    /// Starts the MQTT uplink with `settings`.
    fn start_uplink(&mut self, settings: &UplinkSettings) {
        let telemetry_source = self.status.clone();
        let uplink = Uplink::new(
            settings.clone(),
            &self.config.gateway_id,
            &self.config.site,
            self.journal.clone(),
            self.journal_stats.clone(),
            self.clock.clone(),
            Arc::new(move || telemetry_source.telemetry()),
            self.uplink_state.clone(),
            self.alerts_outbox.clone(),
        );
        log::info!(
            broker:% = format!("{}:{}", settings.host, settings.port), topic:% = settings.topic_prefix, tls = settings.tls.is_some();
            "uplink configured"
        );
        let stop = self.shutdown.child_token();
        let handle = self.tasks.spawn(uplink.run(stop.clone()));
        self.uplink = Some(RunningTask { stop, handle });
    }

    /// Starts one source unit. Only the simulated GPIO header's socket failing to bind is an
    /// error (at start, fatal; at a reload, logged).
    fn start_unit(&mut self, key: UnitKey, spec: &UnitSpec) -> Result<(), DaemonError> {
        let stop = self.shutdown.child_token();
        let handle = match (&key, spec) {
            (UnitKey::Simulated(id), UnitSpec::Simulated(presses_per_minute)) => {
                self.sources.spawn(simulated::run(
                    id.clone(),
                    *presses_per_minute,
                    self.intake.clone(),
                    self.registry.clone(),
                    self.clock.clone(),
                    stop.clone(),
                ))
            }
            (UnitKey::Port(_), UnitSpec::Port(port)) => {
                let context = PortContext {
                    intake: self.intake.clone(),
                    registry: self.registry.clone(),
                    clock: self.clock.clone(),
                    port: port.path.display().to_string(),
                };
                self.sources
                    .spawn(serial::run_port(port.clone(), context, stop.clone()))
            }
            (UnitKey::Gpio(id), UnitSpec::Gpio(settings)) => match self.gpio_header()? {
                Ok(header) => {
                    let context = gpio::GpioContext {
                        intake: self.intake.clone(),
                        registry: self.registry.clone(),
                        clock: self.clock.clone(),
                        header,
                    };
                    self.sources.spawn(gpio::run_terminal(
                        id.clone(),
                        settings.clone(),
                        context,
                        stop.clone(),
                    ))
                }
                Err(error) => {
                    self.registry.source(id, SourceState::Failed { error });
                    return Ok(());
                }
            },
            _ => return Ok(()), // a key always comes with its own kind of spec
        };
        self.units.insert(key, RunningTask { stop, handle });
        Ok(())
    }

    /// The GPIO header, opened the first time a GPIO terminal needs it.
    #[allow(clippy::type_complexity)]
    fn gpio_header(&mut self) -> Result<Result<Arc<dyn gpio::pins::Header>, String>, DaemonError> {
        if let Some(header) = &self.gpio_header {
            return Ok(header.clone());
        }
        let header = open_gpio_header(&self.config.gpio, &self.tasks, &self.shutdown)?;
        self.gpio_header = Some(header.clone());
        Ok(header)
    }

    /// SIGHUP: reads and validates the config file, then applies what changed, or refuses it
    /// and runs on (see [`reload`] for what can change). systemd hears `RELOADING=1` first and
    /// `READY=1` when done, either way.
    async fn reload(&mut self) {
        self.notifier.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            systemd::monotonic_usec()
        ));
        let path = self.config.path.clone();
        log::info!("SIGHUP: reloading {}", path.display());
        match Config::load(&path) {
            Err(err) => log::error!("reload refused, still running on the previous config: {err}"),
            Ok(file) => match reload::plan(&self.config, &file) {
                Err(immovable) => {
                    let keys: Vec<String> = immovable.iter().map(ToString::to_string).collect();
                    log::error!(
                        "reload refused, still running on the previous config (nothing applied): {}; \
                         restart votegate to apply them (systemctl restart votegate), or set them back to reload the rest",
                        keys.join("; ")
                    );
                }
                Ok(plan) => {
                    self.apply(file, &plan).await;
                    log::info!("config reloaded from {}: {plan}", path.display());
                }
            },
        }
        self.notifier.notify(&format!(
            "READY=1\nSTATUS={}",
            StatusNotice::line(&self.status.snapshot())
        ));
    }

    /// Carries out a reload plan. Changed sources are stopped before any is started (a serial
    /// port opens exclusively). A source stopped while it handles a vote leaves that vote
    /// unacknowledged or acknowledged as the journal decided: the terminal resends an
    /// unacknowledged one to the new task and the journal deduplicates it, so nothing is lost
    /// or counted twice.
    async fn apply(&mut self, file: Config, plan: &ReloadPlan) {
        if plan.terminals {
            self.registry.configure(&file.terminals);
        }
        for key in &plan.stop {
            if let Some(unit) = self.units.remove(key) {
                unit.stop(key, SOURCE_GRACE).await;
            }
        }
        if plan.filter {
            let (default, intervals) = filter_intervals(&file);
            if let Err(err) = self.journal.set_filter(default, intervals) {
                log::warn!("the new filter intervals were not applied: {err}");
            }
        }
        let old = std::mem::replace(&mut self.config, file);
        let specs = reload::units(&self.config);
        for key in &plan.start {
            if let Some(spec) = specs.get(key) {
                if let Err(err) = self.start_unit(key.clone(), spec) {
                    log::error!("{key} not started: {err}");
                    if let UnitKey::Gpio(id) = key {
                        let error = err.to_string();
                        self.registry.source(id, SourceState::Failed { error });
                    }
                }
            }
        }
        if plan.tallies {
            self.tallies.send_replace(tally_setup(&self.config));
        }
        if plan.display {
            self.display.send_replace(self.config.display.clone());
        }
        if plan.health {
            self.health.send_replace(self.config.health);
        }
        if plan.log_level {
            let level = crate::logging::set_level(self.config.log_level);
            log::info!("log level now {level}");
        }
        match plan.uplink {
            UplinkChange::Keep => {}
            UplinkChange::Stop | UplinkChange::Restart => {
                if let Some(uplink) = self.uplink.take() {
                    uplink.stop(&"the uplink", UPLINK_GRACE).await;
                }
            }
            UplinkChange::Start => {}
        }
        match (&plan.uplink, self.config.uplink.clone()) {
            (UplinkChange::Start | UplinkChange::Restart, Some(settings)) => {
                self.start_uplink(&settings)
            }
            (UplinkChange::Stop, _) => {
                self.uplink_state.send_modify(|s| {
                    s.connection = Connection::NotConfigured;
                    s.undelivered_since = None;
                });
                log::warn!("[uplink] removed: votes stay in the journal (bounded by journal.max-disk-size)");
            }
            _ => {}
        }
        drop(old);
    }
}

/// The anti-abuse filter's intervals: the default for terminals not configured, and each
/// configured terminal's own (`min-interval`, or the `[filter]` default).
fn filter_intervals(config: &Config) -> (Duration, HashMap<crate::model::TerminalId, Duration>) {
    let intervals = reload::filter_intervals(config).into_iter().collect();
    (crate::config::DEFAULT_MIN_INTERVAL, intervals)
}

/// What the tallies count by, from a config.
fn tally_setup(config: &Config) -> TallySetup {
    TallySetup {
        rules: config.tally_rules(),
        terminals: config.terminals.iter().map(|t| t.id.clone()).collect(),
        alerts: config.alerts.clone(),
    }
}

/// Opens the alerts' outbox in the data folder; without it alerts still reach screens.
fn open_alerts_outbox(config: &Config) -> (Option<Arc<Outbox>>, AlertsState) {
    match Outbox::open(&config.data_dir.join(ALERTS_DIR)) {
        Ok((outbox, state)) => (Some(Arc::new(outbox)), state),
        Err(err) => {
            log::error!("{err}; alerts reach screens but not the cloud");
            (None, AlertsState::default())
        }
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

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP asks for a reload (a second one while one is
/// pending is folded into it); SIGUSR1 and SIGUSR2 are logged and ignored (their default
/// action would end the daemon).
fn spawn_signal_listener(
    shutdown: CancellationToken,
    reloads: mpsc::Sender<()>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    log::info!("SIGTERM received");
                    break;
                }
                _ = int.recv() => {
                    log::info!("SIGINT received");
                    break;
                }
                _ = hup.recv() => {
                    let _ = reloads.try_send(());
                }
                _ = usr1.recv() => log::info!("SIGUSR1 received: ignored"),
                _ = usr2.recv() => log::info!("SIGUSR2 received: ignored"),
            }
        }
        shutdown.cancel();
    }))
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
    // rlim_t is u32 on 32-bit ARM (armv7) and u64 elsewhere.
    #[allow(clippy::useless_conversion)]
    let current = u64::from(limit.rlim_cur);
    if current < needed {
        log::warn!(
            "the open-files limit ({}) is below display.max-connections ({max_connections}) + {FILES_BESIDES_HTTP}: \
             under many connections the gateway could run out of files; lower display.max-connections or raise LimitNOFILE",
            current
        );
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
    let mut journal = Journal::open(&config.data_dir, config.journal)?;
    let (default, intervals) = filter_intervals(config);
    journal.set_filter(default, intervals);
    let stats = journal.stats();
    log::info!(
        data_dir:% = config.data_dir.display(), depth = stats.depth, next_seq = stats.next_seq,
        dropped = stats.dropped;
        "journal open"
    );
    journal::spawn(journal).map_err(DaemonError::Thread)
}
