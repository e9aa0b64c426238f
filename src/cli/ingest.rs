//! `votegate ingest`: the cloud-side consumer and its report (README § Cloud ingest). Only in
//! builds with the cargo feature `ingest`; without it the command says how to get one.

use std::process::ExitCode;

use super::args::IngestArgs;
#[cfg(feature = "ingest")]
use super::args::IngestCommand;
use super::UsageError;

/// Runs `votegate ingest …`.
#[cfg(not(feature = "ingest"))]
pub fn ingest(_args: IngestArgs) -> anyhow::Result<ExitCode> {
    Err(UsageError(
        "this votegate was built without the ingest (the gateway's build leaves it out): build it with `cargo build --release --features ingest`"
            .into(),
    )
    .into())
}

/// Runs `votegate ingest …`.
#[cfg(feature = "ingest")]
pub fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;

    use crate::config::units::parse_duration;
    use crate::ingest::metrics::{self, IngestMetrics};
    use crate::ingest::report::Report;
    use crate::ingest::store::Store;
    use crate::ingest::IngestConfig;

    crate::logging::init(log::LevelFilter::Info);
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    match args.command {
        None => {
            let path = args.config.ok_or_else(|| {
                UsageError(
                    "votegate ingest needs --config FILE (or a subcommand: report, load)".into(),
                )
            })?;
            let config = IngestConfig::load(&path)?;
            let Some(mqtt) = config.mqtt.clone() else {
                return Err(UsageError(format!(
                    "{}: no [mqtt] table: the ingest needs a broker to consume from",
                    path.display()
                ))
                .into());
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("votegate-ingest")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let signals = shutdown.clone();
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
                    }
                    signals.cancel();
                });
                let metrics = std::sync::Arc::new(IngestMetrics::default());
                if let Some(addr) = config.metrics_listen {
                    let listener = metrics::bind(addr).await.map_err(anyhow::Error::msg)?;
                    log::info!("ingest: /metrics and /healthz on http://{}", listener.local_addr()?);
                    tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
                    tokio::spawn(crate::ingest::consumer::watch_ledger(
                        config.clone(),
                        metrics.clone(),
                        shutdown.clone(),
                    ));
                }
                log::info!(
                    "votegate {} ingest: PostgreSQL {} ({} connections), broker {}:{} ({}), subscription {}",
                    env!("CARGO_PKG_VERSION"),
                    crate::ingest::store::redact(&config.postgres_url),
                    config.connections,
                    mqtt.host,
                    mqtt.port,
                    if mqtt.tls { "TLS" } else { "plain" },
                    mqtt.shared_filter()
                );
                crate::ingest::consumer::run(&config, &mqtt, metrics, shutdown).await;
                log::info!("ingest stopped");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(IngestCommand::Report {
            config,
            grace,
            json,
        }) => {
            let grace = parse_duration(&grace)
                .map_err(|problem| UsageError(format!("--grace {grace:?}: {problem}")))?;
            let config = IngestConfig::load(&config)?;
            let (now, records) = current_thread()?.block_on(async {
                let store = Store::open(&config.postgres_url).await?;
                store.gateway_records().await
            })?;
            let report = Report::build(&records, now, grace.as_millis() as i64);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::EXIT_FAILED)
            })
        }
        Some(IngestCommand::Load { config, files }) => {
            let config = IngestConfig::load(&config)?;
            current_thread()?.block_on(async {
                let mut store = Store::open(&config.postgres_url).await?;
                for file in files {
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let batch = crate::uplink::payload::decode(&bytes)
                        .with_context(|| format!("{}", file.display()))?;
                    let outcome = store.ingest_batch(&batch).await?;
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": file.display().to_string(),
                            "gateway_id": batch.gateway_id,
                            "batch_id": batch.batch_id,
                            "inserted": outcome.inserted,
                            "duplicates": outcome.duplicates,
                            "conflicts": outcome.conflicts,
                            "dropped_ranges": outcome.dropped_ranges,
                        })
                    );
                }
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
    }
}
