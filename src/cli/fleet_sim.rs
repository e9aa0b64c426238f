//! `votegate fleet-sim`: a fleet of simulated gateways in one process, for testing and measuring
//! the ingest (issue 17). Only in builds with the cargo feature `ingest`; without it the command
//! says how to get one.
//!
//! Each gateway is a real MQTT client (its own [`crate::uplink::mqtt::Session`], client id and
//! mutual TLS, like a gateway) publishing real batches (the gateway's own encoder) on
//! `votegate/{site}/{gateway_id}/votes` at QoS 1. Every decision is made by the gateway's pure
//! [`crate::ingest::fleet::GatewaySim`]; the task here only moves bytes: timers and session
//! events in, publishes out. The newest vote of each fresh batch carries the wall clock of its
//! publish, from which the ingest measures publish → COMMIT.

use std::process::ExitCode;

use super::args::FleetSimArgs;
#[cfg(not(feature = "ingest"))]
use super::UsageError;

/// Runs `votegate fleet-sim …`.
#[cfg(not(feature = "ingest"))]
pub fn fleet_sim(_args: FleetSimArgs) -> anyhow::Result<ExitCode> {
    Err(UsageError(
        "this votegate was built without the ingest and its fleet simulator (the gateway's build leaves them out): build it with `cargo build --release --features ingest`"
            .into(),
    )
    .into())
}

/// Runs `votegate fleet-sim …`: exit 0 when every batch was acknowledged, 1 otherwise.
#[cfg(feature = "ingest")]
pub fn fleet_sim(args: FleetSimArgs) -> anyhow::Result<ExitCode> {
    run::fleet_sim(args)
}

#[cfg(feature = "ingest")]
mod run {
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use anyhow::Context;
    use tokio::time::{sleep_until, Instant};
    use tokio_util::sync::CancellationToken;

    use super::super::args::{FleetSimArgs, SimFormat};
    use super::super::UsageError;
    use crate::backoff::Backoff;
    use crate::config::units::parse_duration;
    use crate::ingest::fleet::{FleetParams, FleetSummary, GatewaySim};
    use crate::ingest::IngestConfig;
    use crate::uplink::mqtt::{Session, SessionEvent, UplinkError};
    use crate::uplink::payload::PayloadFormat;
    use crate::uplink::{FaultKind, UplinkSettings};

    /// The gateway's defaults for batches (config/uplink.rs).
    const MAX_BATCH_VOTES: usize = 1000;
    const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

    /// The wall clock, ms since the epoch.
    fn wall_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn duration_option(option: &str, text: &str) -> Result<Duration, UsageError> {
        parse_duration(text)
            .map_err(|problem| UsageError(format!("--{option} {text:?}: {problem}")))
    }

    pub(super) fn fleet_sim(args: FleetSimArgs) -> anyhow::Result<ExitCode> {
        crate::logging::init(log::LevelFilter::Info);
        let duration = duration_option("duration", &args.duration)?;
        let drain = duration_option("drain-timeout", &args.drain_timeout)?;
        let config = IngestConfig::load(&args.config)?;
        let Some(mqtt) = config.mqtt.clone() else {
            return Err(UsageError(format!(
                "{}: no [mqtt] table: the simulator needs a broker to publish to",
                args.config.display()
            ))
            .into());
        };
        let params = FleetParams {
            gateways: args.gateways,
            sites: args
                .sites
                .unwrap_or_else(|| FleetParams::default_sites(args.gateways)),
            gateway_prefix: args.gateway_prefix,
            rate: args.rate,
            votes_per_batch: args.votes_per_batch,
            terminals: args.terminals,
            redeliver: args.redeliver,
            drop: args.drop,
            reconnects_per_hour: args.reconnect,
            max_in_flight: args.max_in_flight,
            start_seq: args.start_seq,
            format: match args.format {
                SimFormat::Postcard => PayloadFormat::Postcard,
                SimFormat::Json => PayloadFormat::Json,
            },
            max_batch_votes: MAX_BATCH_VOTES,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
        };
        params
            .validate()
            .map_err(|err| UsageError(err.to_string()))?;
        let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("votegate-fleet-sim")
            .build()
            .context("cannot start the async runtime")?;
        log::info!(
            "votegate {} fleet-sim: {} gateways on {} sites, {} batches/s each of {} votes on average, for {duration:?}; broker {}:{} ({}); seed {seed}",
            env!("CARGO_PKG_VERSION"),
            params.gateways,
            params.sites,
            params.rate,
            params.votes_per_batch,
            mqtt.host,
            mqtt.port,
            if mqtt.tls { "TLS" } else { "plain" },
        );
        let summary = runtime.block_on(fleet(Arc::new(params), mqtt, seed, duration, drain))?;
        if let Some(path) = &args.summary {
            let json = serde_json::to_vec_pretty(&summary).context("cannot encode the summary")?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write the summary to {}", path.display()))?;
        }
        eprintln!("{}", summary.human_line());
        Ok(if summary.all_acked() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(super::super::EXIT_FAILED)
        })
    }

    /// The whole run: every gateway's task, then the summary. Stops making votes after
    /// `duration` (or at SIGINT/SIGTERM), then waits up to `drain` for the acks.
    async fn fleet(
        params: Arc<FleetParams>,
        mqtt: crate::ingest::MqttSettings,
        seed: u64,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<FleetSummary> {
        let started_ms = wall_ms();
        let start = Instant::now();
        let times = Times {
            stop: start + duration,
            deadline: start + duration + drain,
            interrupt: CancellationToken::new(),
            give_up: CancellationToken::new(),
        };
        let interrupted_ms = Arc::new(AtomicU64::new(0));
        let (interrupt, give_up, at) = (
            times.interrupt.clone(),
            times.give_up.clone(),
            interrupted_ms.clone(),
        );
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                log::info!(
                    "fleet-sim: stopping: no new votes; waiting up to {drain:?} for the outstanding batches"
                );
                at.store(wall_ms(), Ordering::Relaxed);
                interrupt.cancel();
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = tokio::time::sleep(drain) => {}
                }
                give_up.cancel();
            }
        });
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut tasks = Vec::with_capacity(params.gateways);
        for n in 1..=params.gateways {
            let sim = GatewaySim::new(params.clone(), n, rng.fork());
            let settings = params.uplink_settings(&mqtt, sim.gateway_id(), sim.site());
            let begin = start + params.connect_delay(n);
            tasks.push(tokio::spawn(gateway(sim, settings, begin, times.clone())));
        }
        let mut lines = Vec::with_capacity(tasks.len());
        let mut fatal = None;
        for task in tasks {
            match task.await {
                Ok(Ok(sim)) => lines.push(sim.summary()),
                Ok(Err((sim, err))) => {
                    lines.push(sim.summary());
                    fatal.get_or_insert(err);
                }
                Err(err) => anyhow::bail!("a simulated gateway's task failed: {err}"),
            }
        }
        if let Some(err) = fatal {
            anyhow::bail!("a simulated gateway cannot connect: {err}");
        }
        let ended_ms = wall_ms();
        let stopped_ms = match interrupted_ms.load(Ordering::Relaxed) {
            0 => started_ms + duration.as_millis() as u64,
            at => at,
        };
        Ok(FleetSummary::new(
            lines,
            seed,
            started_ms,
            stopped_ms.min(ended_ms),
            ended_ms,
        ))
    }

    /// When the run's phases end; shared by every gateway.
    #[derive(Clone)]
    struct Times {
        /// Votes stop being made.
        stop: Instant,
        /// Waiting for acks stops.
        deadline: Instant,
        /// SIGINT or SIGTERM: votes stop being made now.
        interrupt: CancellationToken,
        /// Stop waiting now: a gateway met a configuration fault, or the wait after an
        /// interrupt is over (or a second signal came).
        give_up: CancellationToken,
    }

    /// What a gateway task returns: its sim, and the fault that stopped the run, if one did.
    type Outcome = Result<GatewaySim, (GatewaySim, UplinkError)>;

    /// One gateway: connects at `begin`, ticks, publishes, reconnects; after `times.stop` waits
    /// for its outstanding batches, then disconnects cleanly.
    async fn gateway(
        mut sim: GatewaySim,
        settings: UplinkSettings,
        begin: Instant,
        times: Times,
    ) -> Outcome {
        let topic = settings.votes_topic();
        let mut rng = sim.fork_rng();
        let mut backoff = Backoff::new(Duration::from_millis(200), settings.backoff_cap);
        tokio::select! {
            _ = times.give_up.cancelled() => return Ok(sim),
            _ = sleep_until(begin) => {}
        }
        let far = begin + Duration::from_secs(365 * 24 * 3600);
        let mut session: Option<Session> = None;
        let mut retry_at = Some(begin);
        let mut ever_connected = false;
        let mut next_tick = Instant::now() + sim.first_tick_delay();
        let mut next_reconnect = sim.next_reconnect_delay().map(|d| Instant::now() + d);
        loop {
            let making = Instant::now() < times.stop && !times.interrupt.is_cancelled();
            if !making && sim.is_settled() {
                break;
            }
            let connected = session.is_some() && sim.is_connected();
            tokio::select! {
                biased;
                _ = times.give_up.cancelled() => break,
                _ = sleep_until(times.deadline) => break,
                _ = times.interrupt.cancelled(), if making => continue,
                _ = sleep_until(times.stop), if making => continue,
                event = next_event(&mut session), if session.is_some() => match event {
                    SessionEvent::Connected => {
                        sim.connected();
                        backoff.reset();
                        ever_connected = true;
                        log::debug!("{}: connected", sim.gateway_id());
                        pump(&mut sim, session.as_ref(), &topic).await;
                    }
                    SessionEvent::Written(pkid) => sim.written(pkid),
                    SessionEvent::Acked(pkid) => {
                        sim.acked(pkid);
                        pump(&mut sim, session.as_ref(), &topic).await;
                    }
                    SessionEvent::Lost(err) => {
                        session = None;
                        sim.lost(false);
                        if !ever_connected && err.fault() == FaultKind::Configuration {
                            times.give_up.cancel();
                            return Err((sim, err));
                        }
                        let delay = backoff.next_delay(&mut rng);
                        log::warn!(
                            "{}: {err}; reconnecting in {} ms",
                            sim.gateway_id(),
                            delay.as_millis()
                        );
                        retry_at = Some(Instant::now() + delay);
                    }
                },
                _ = sleep_until(next_tick), if making => {
                    sim.tick(wall_ms());
                    next_tick += sim.next_tick_delay();
                    pump(&mut sim, session.as_ref(), &topic).await;
                }
                _ = sleep_until(next_reconnect.unwrap_or(far)), if making && next_reconnect.is_some() => {
                    next_reconnect = sim.next_reconnect_delay().map(|d| Instant::now() + d);
                    if connected {
                        if let Some(old) = session.take() {
                            old.disconnect().await;
                        }
                        sim.lost(true);
                        log::debug!("{}: reconnecting (simulated)", sim.gateway_id());
                        retry_at = Some(Instant::now());
                    }
                }
                _ = sleep_until(retry_at.unwrap_or(far)), if session.is_none() && retry_at.is_some() => {
                    retry_at = None;
                    match Session::open(&settings) {
                        Ok(opened) => session = Some(opened),
                        Err(err) => {
                            times.give_up.cancel();
                            return Err((sim, err));
                        }
                    }
                }
            }
        }
        if let Some(session) = session {
            session.disconnect().await;
        }
        Ok(sim)
    }

    /// The session's next event; a session whose task ended reads as lost.
    async fn next_event(session: &mut Option<Session>) -> SessionEvent {
        match session {
            Some(session) => session.events.recv().await.unwrap_or_else(|| {
                SessionEvent::Lost(UplinkError::Closed("the connection task ended".into()))
            }),
            None => std::future::pending().await,
        }
    }

    /// Publishes whatever the gateway wants to publish now.
    async fn pump(sim: &mut GatewaySim, session: Option<&Session>, topic: &str) {
        let Some(session) = session else {
            return;
        };
        while let Some(publish) = sim.next_publish(wall_ms()) {
            if session
                .publish(topic, publish.payload, true, false)
                .await
                .is_err()
            {
                // The session is over; its Lost event follows.
                return;
            }
        }
    }
}
